"""Task-5 stand-in (src.replay): base-model answers as a ShareGPT file, read by data_gen."""

from __future__ import annotations

import json

import pytest

from data_gen.pipeline import run as run_data_gen
from data_gen.templates import REPLAY
from src.replay import build_replay, replay_instructions
from core.utils import StageError
from tests.fixtures_data_gen import build_root, tiny_config
from tests.fixtures_llm import one_thread  # noqa: F401  (fixture)
from tests.fixtures_explan import clear_api_env

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch):
    clear_api_env(monkeypatch)


def test_instructions_are_seeded_distinct_and_use_every_template(tmp_path):
    made = build_root(tmp_path)
    cfg = tiny_config(tmp_path)
    qs = replay_instructions(cfg, made["items"], 2 * len(REPLAY))
    assert len(qs) == len(set(qs)) == 2 * len(REPLAY)
    assert qs == replay_instructions(cfg, made["items"], 2 * len(REPLAY))
    assert qs != replay_instructions(tiny_config(tmp_path, "data_gen.seed=7"), made["items"], 2 * len(REPLAY))
    titles = {it["title"] for it in made["items"]}
    assert all(any(t in q for t in titles) for q in qs)
    assert all("<user>" not in q and "<item>" not in q and "{" not in q for q in qs)
    with pytest.raises(StageError, match="at least 4 items"):
        replay_instructions(cfg, made["items"][:3], 2)


def test_replay_file_is_sharegpt_and_becomes_task5_records(tmp_path, monkeypatch):
    import src.generation

    build_root(tmp_path)
    calls = []
    real = src.generation.generate_texts

    def fake_generate(model, tokenizer, records, cfg, **kw):
        """The real decoder runs (the tiny LM writes nothing readable); answers are then stood in."""
        calls.append(kw)
        real(model, tokenizer, records[:1], cfg, max_new_tokens=2)
        return [[""] if k == 0 else [f"  Prose about: {r['question']}  "] for k, r in enumerate(records)]

    monkeypatch.setattr(src.generation, "generate_texts", fake_generate)
    overrides = ("data_gen.sharegpt_replay=6", "data_gen.replay_max_new_tokens=8", "data_gen.sharegpt_train=4",
                 "data_gen.sharegpt_valid=2")
    cfg = tiny_config(tmp_path, *overrides)
    with pytest.raises(StageError, match="stand-in is not built; run `python -m src.replay"):
        run_data_gen(cfg)  # the data stage refuses to run without it rather than skipping task 5
    path = build_replay(cfg)
    convs = json.loads(path.read_text())
    assert path == tmp_path / "replay" / "sharegpt_replay.json"
    assert len(convs) == 5  # the empty answer is dropped
    assert calls[0]["max_new_tokens"] == 8
    for c in convs:
        assert [t["from"] for t in c["conversations"]] == ["human", "gpt"]
        assert c["conversations"][1]["value"] == f"Prose about: {c['conversations'][0]['value']}"
    mtime = path.stat().st_mtime_ns
    build_replay(cfg)  # cached: not regenerated
    assert path.stat().st_mtime_ns == mtime and len(calls) == 1
    build_replay(tiny_config(tmp_path, *overrides, "data_gen.replay_max_new_tokens=9"))  # settings changed
    assert len(calls) == 2 and calls[1]["max_new_tokens"] == 9
    run_data_gen(cfg)
    recs = [r for r in json.loads((tmp_path / "tasks" / "behaviour_train.json").read_text()) if r["type"] == "sharegpt"]
    asked = {c["conversations"][0]["value"] for c in convs}
    assert recs and {r["question"] for r in recs} <= asked
    answers = {c["conversations"][0]["value"]: c["conversations"][1]["value"] for c in convs}
    assert all(r["answer"] == answers[r["question"]] for r in recs)


def test_replay_off_writes_nothing(tmp_path):
    build_root(tmp_path)
    cfg = tiny_config(tmp_path)
    assert cfg.data_gen.sharegpt_replay == 0
    assert not build_replay(cfg).exists()
