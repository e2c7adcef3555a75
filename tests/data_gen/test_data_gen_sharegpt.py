"""data_gen task 5: the ShareGPT reader and its place in every form's files."""

from __future__ import annotations

import json

import pytest

from data_gen.inputs import load_sharegpt
from data_gen.pipeline import run
from core.utils import StageError
from tests.fixtures_data_gen import build_root, sharegpt_fixture, tiny_config
from tests.fixtures_explan import clear_api_env

GOOD = {"good1", "good2", "good3", "trailing_human"}


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch):
    clear_api_env(monkeypatch)


def test_reader_keeps_strict_alternation_within_budget(tmp_path):
    path = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
    path.write_text(json.dumps(sharegpt_fixture()), encoding="utf-8")
    kept, drops = load_sharegpt(path, max_chars=100)
    assert {c["source_id"] for c in kept} == GOOD
    assert [c["source_id"] for c in kept] == ["good1", "good2", "trailing_human", "good3"]  # file order
    for c in kept:
        roles = [t["from"] for t in c["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
    trailing = next(c for c in kept if c["source_id"] == "trailing_human")
    assert len(trailing["conversations"]) == 2  # unanswered last human turn dropped
    assert drops["roles not strictly human/gpt alternating"] == 4  # starts_gpt, double_human, system, bing
    assert drops["empty turn"] == 1
    assert drops["first turn over the length budget"] == 1
    assert drops["fewer than one human/gpt pair"] == 1
    assert drops["no conversations list"] == 1
    assert sum(drops.values()) + len(kept) == len(sharegpt_fixture())
    kept_all, _ = load_sharegpt(path, max_chars=0)  # 0 = no budget
    assert "too_long" in {c["source_id"] for c in kept_all}


def test_reader_errors(tmp_path):
    with pytest.raises(StageError, match="ShareGPT file not found"):
        load_sharegpt(tmp_path / "nope.json", 100)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "conversations": [', encoding="utf-8")
    with pytest.raises(StageError, match="bad.json: malformed JSON"):
        load_sharegpt(bad, 100)
    bad.write_text('{"id": "x"}', encoding="utf-8")
    with pytest.raises(StageError, match="expected a JSON list"):
        load_sharegpt(bad, 100)


def test_sharegpt_in_every_form(tmp_path):
    build_root(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sg.json").write_text(json.dumps(sharegpt_fixture()), encoding="utf-8")
    cfg = tiny_config(tmp_path, "data_gen.sharegpt_file=sg.json", "data_gen.sharegpt_train=3",
                      "data_gen.sharegpt_valid=5", "data_gen.sharegpt_max_chars=100")
    stats = run(cfg)
    files = {}
    for f in ("behaviour", "intention", "both"):
        for s in ("train", "valid", "test"):
            files[f"{f}_{s}"] = [r for r in json.loads((tmp_path / "tasks" / f"{f}_{s}.json").read_text())
                                 if r["type"] == "sharegpt"]
    train_ids = [r["source_id"] for r in files["behaviour_train"]]
    valid_ids = [r["source_id"] for r in files["behaviour_valid"]]
    assert len(train_ids) == 3 and len(valid_ids) == 1  # only 4 usable conversations
    assert set(train_ids) | set(valid_ids) == GOOD and not set(train_ids) & set(valid_ids)
    for name, recs in files.items():
        split = "train" if name.endswith("train") else "valid"
        assert [r["source_id"] for r in recs] == (train_ids if split == "train" else valid_ids)
        for r in recs:
            msgs = r["messages"]  # data_gen.sharegpt_multi_turn (default): the whole conversation
            assert r["question"] == msgs[0]["content"] and r["answer"] == msgs[1]["content"]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
            assert "conversations" not in r  # one copy of the turns, not two
            assert "<user>" not in r["question"] and r["iids_in_question"] == []
    good2 = next(r for r in files["behaviour_train"] + files["behaviour_valid"] if r["source_id"] == "good2")
    assert [m["content"] for m in good2["messages"]] == ["Name a color.", "Blue.", "Another?", "Red."]
    assert stats["table_b2"]["both_train"]["Task 5"] == 3
    assert any("only 4 usable" in n for n in stats["notes"])
    # seeded sample: the same seed picks the same conversations
    run(cfg, force=True)
    again = [r["source_id"] for r in json.loads((tmp_path / "tasks" / "behaviour_train.json").read_text())
             if r["type"] == "sharegpt"]
    assert again == train_ids


def test_sharegpt_skipped_when_not_configured(tmp_path):
    build_root(tmp_path)
    stats = run(tiny_config(tmp_path))
    assert any("task 5 (ShareGPT) skipped" in n for n in stats["notes"])
    assert stats["table_b2"]["both_train"]["Task 5"] == 0


def test_configured_but_missing_file_is_an_error(tmp_path):
    build_root(tmp_path)
    with pytest.raises(StageError, match="ShareGPT file not found"):
        run(tiny_config(tmp_path, "data_gen.sharegpt_file=missing.json"))
    assert not (tmp_path / "tasks").exists()


def test_first_turn_only_mode_and_marker_strings(tmp_path):
    """data_gen.sharegpt_multi_turn=false keeps the first-turn records; literal <user>/<item>
    strings (e.g. RSS tags) in trained turns drop the conversation in either mode."""
    data = sharegpt_fixture() + [
        {"id": "rss_first", "conversations": [{"from": "human", "value": "Parse <item>x</item>"},
                                              {"from": "gpt", "value": "ok"}]},
        {"id": "rss_later", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                              {"from": "human", "value": "RSS?"}, {"from": "gpt", "value": "<item>"}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    first, d1 = load_sharegpt(path, max_chars=100)
    multi, d2 = load_sharegpt(path, max_chars=100, multi_turn=True)
    assert {c["source_id"] for c in first} == GOOD | {"rss_later"}  # its first pair is clean
    assert {c["source_id"] for c in multi} == GOOD
    assert d1["contains a <user>/<item> marker string"] == 1 and d2["contains a <user>/<item> marker string"] == 2

    build_root(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sg.json").write_text(json.dumps(sharegpt_fixture()), encoding="utf-8")
    cfg = tiny_config(tmp_path, "data_gen.sharegpt_file=sg.json", "data_gen.sharegpt_train=3",
                      "data_gen.sharegpt_valid=5", "data_gen.sharegpt_max_chars=100",
                      "data_gen.sharegpt_multi_turn=false")
    run(cfg)
    recs = [r for r in json.loads((tmp_path / "tasks" / "both_train.json").read_text()) if r["type"] == "sharegpt"]
    assert recs and all("messages" not in r for r in recs)
    for r in recs:
        assert r["question"] == r["conversations"][0]["value"] and r["answer"] == r["conversations"][1]["value"]
