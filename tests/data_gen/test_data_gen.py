"""data_gen: alignment tasks 1-6 and explanation prompts, checked against the recommender's
exports they are generated from (fixtures in tests/fixtures_data_gen.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from data_gen import templates as T
from data_gen.__main__ import main as cli_main
from data_gen.pipeline import output_paths, run
from core.config import ConfigError
from core.utils import StageError
from tests.fixtures_data_gen import build_root, tiny_config

REQUIRED = {"id": str, "type": str, "uid": int, "iid": int, "history": list, "candidates": list,
            "iids_in_question": list, "question": str, "answer": str}
ALIGN = [f"{f}_{s}" for f in ("behaviour", "intention", "both") for s in ("train", "valid", "test")]
EXPLAN = [f"explan_{f}_{s}" for f in ("behaviour", "intention", "both", "none") for s in ("train", "valid", "test")]


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch):
    """No endpoint unless a test installs one: keys from the developer's shell must not leak in."""
    for k in list(os.environ):
        if k.startswith(("OPENAI_", "AZURE_OPENAI", "ENGINE")):
            monkeypatch.delenv(k, raising=False)


def load(root: Path, name: str) -> list[dict]:
    return json.loads((root / "tasks" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("dg")
    fx = build_root(root)
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith(("OPENAI_", "AZURE_OPENAI", "ENGINE")):
            mp.delenv(k, raising=False)
    # no per-task caps here, so every count can be checked exactly against the exports
    cfg = tiny_config(root, "data_gen.max_train_per_task=0", "data_gen.max_eval_per_task=0")
    stats = run(cfg)
    mp.undo()
    return root, fx, cfg, stats


def by_key(rows):
    return {(r["uid"], tuple(r["history"])): r for r in rows}


# --------------------------------------------------------------------------- schema


def test_all_files_and_schema(gen):
    root, fx, cfg, _ = gen
    for p in output_paths(cfg):
        assert p.is_file(), p
    for name in ALIGN + EXPLAN:
        recs = load(root, name)
        assert recs, name
        ids = [r["id"] for r in recs]
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        for r in recs:
            for key, tp in REQUIRED.items():
                assert isinstance(r[key], tp), (name, key, r)
            assert all(isinstance(i, int) and 1 <= i <= 30 for i in r["history"] + r["candidates"] + r["iids_in_question"])
            assert r["question"].strip() and r["answer"].strip()
            assert "{" not in r["question"] or "}" not in r["question"], r["question"]  # no unfilled slot
            if r["type"] in ("uidiid2binary", "explan"):
                assert r["label"] in ("Yes", "No") and r["answer"] == r["label"]
        if name.startswith("explan"):
            assert {r["type"] for r in recs} == {"explan"}


def test_titles_joined_and_history_window(gen):
    root, fx, cfg, _ = gen
    titles = fx["titles"]
    for r in load(root, "behaviour_train"):
        if r["type"] == "uid2next":
            shown = r["history"][-cfg.data_gen.max_hist_len:]
            assert "; ".join(titles[i] for i in shown) in r["question"]
            older = r["history"][:-cfg.data_gen.max_hist_len]
            assert all(titles[i] not in r["question"] for i in older)


# --------------------------------------------------------------------------- answers agree with the exports


def test_task1_answer_is_top1_not_true_next(gen):
    root, fx, cfg, _ = gen
    titles = fx["titles"]
    rows = by_key(fx["tops"]["train"])
    recs = [r for r in load(root, "behaviour_train") if r["type"] == "uid2next"]
    n_expected = sum(min(cfg.data_gen.train_cap_per_user, len(s) - 3) for s in fx["seqs"].values())
    assert len(recs) == n_expected
    differs = 0
    for r in recs:
        row = rows[(r["uid"], tuple(r["history"]))]
        assert r["answer"] == titles[row["top"][0]] and r["iid"] == row["top"][0]
        differs += row["top"][0] != row["target"]
    assert differs > 0  # the fixture's top-1 is not the true next item: answers follow the model
    # per-user cap keeps the most recent positions
    for uid, s in fx["seqs"].items():
        users = [r for r in recs if r["uid"] == uid]
        longest = max(len(r["history"]) for r in users)
        assert longest == min(len(s) - 3, 10)
    for split in ("valid", "test"):
        tops = by_key(fx["tops"]["test"])
        ev = [r for r in load(root, f"behaviour_{split}") if r["type"] == "uid2next"]
        assert len(ev) == len(fx["seqs"])  # one per user
        for r in ev:
            assert r["answer"] == titles[tops[(r["uid"], tuple(r["history"]))]["top"][0]]


def test_task2_order_is_model_order_and_prompt_is_permutation(gen):
    root, fx, _, _ = gen
    titles = fx["titles"]
    for name, split in (("behaviour_train", "train"), ("intention_valid", "test"), ("both_train", "train")):
        rows = by_key(fx["tops"][split])
        recs = [r for r in load(root, name) if r["type"] == "uidiid2rank"]
        assert recs
        shuffled = 0
        for r in recs:
            row = rows[(r["uid"], tuple(r["history"]))]
            assert r["answer"] == "; ".join(titles[i] for i in row["rank_candidates"])
            assert sorted(r["candidates"]) == sorted(row["rank_candidates"])
            assert sorted(r["answer"].split("; ")) == sorted(titles[i] for i in r["candidates"])
            shuffled += r["candidates"] != row["rank_candidates"]
            if r["form"] == "behaviour":
                assert "; ".join(titles[i] for i in r["candidates"]) in r["question"]
            elif r["form"] == "hybrid":
                assert "; ".join(f"<item> {titles[i]}" for i in r["candidates"]) in r["question"]
            if r["form"] != "behaviour":
                assert r["iids_in_question"] == r["candidates"]
        assert shuffled > len(recs) // 2  # prompts are not given in the answer's order


def test_pointwise_questions_are_task3_questions_per_candidate_in_the_record_form(gen):
    from data_gen.generate import pointwise_records

    root, fx, cfg, _ = gen
    titles = fx["titles"]
    n = cfg.data_gen.max_hist_len
    for name in ("behaviour_valid", "intention_valid", "both_valid"):
        for r in [r for r in load(root, name) if r["type"] == "uidiid2rank"][:6]:
            qs = pointwise_records(r, titles, n, 7)
            assert [q["iid"] for q in qs] == r["candidates"] and all(q["type"] == "uidiid2binary" for q in qs)
            assert all(q["form"] == r["form"] and q["history"] == r["history"] for q in qs)
            # one template per record: the questions differ only by the item
            assert len({q["question"].replace(titles[q["iid"]], "").replace("<item>", "") for q in qs}) == 1
            for q in qs:
                shown = "; ".join(titles[i] for i in r["history"][-n:])
                if r["form"] == "behaviour":
                    assert q["iids_in_question"] == [] and "<" not in q["question"]
                    assert shown in q["question"] and titles[q["iid"]] in q["question"]
                elif r["form"] == "intention":
                    assert q["iids_in_question"] == [q["iid"]] and titles[q["iid"]] not in q["question"]
                    assert q["question"].count("<user>") == 1 and q["question"].count("<item>") == 1
                else:
                    assert q["iids_in_question"] == [q["iid"]]
                    assert f"<user> {shown}" in q["question"] and f"<item> {titles[q['iid']]}" in q["question"]
            assert [q["question"] for q in pointwise_records(r, titles, n, 7)] == [q["question"] for q in qs]
    rec = [r for r in load(root, "both_valid") if r["type"] == "uidiid2rank"][0]
    with pytest.raises(ValueError, match="no 'candidates'"):
        pointwise_records({**rec, "candidates": []}, titles, n, 7)
    with pytest.raises(ValueError, match=f"{rec['id']}: 'form' must be one of"):
        pointwise_records({k: v for k, v in rec.items() if k != "form"}, titles, n, 7)


def test_task3_labels_follow_cut_rules(gen):
    root, fx, _, _ = gen
    for name, split in (("behaviour_train", "train"), ("intention_test", "test"), ("both_valid", "test")):
        recs = [r for r in load(root, name) if r["type"] == "uidiid2binary"]
        rows = by_key(fx["tops"][split])
        per_user = Counter((r["uid"], r["form"]) for r in recs)
        assert set(per_user.values()) == {2}  # one positive and one negative per user
        for r in recs:
            row = rows[(r["uid"], tuple(r["history"]))]
            want = row["pos"] if r["label"] == "Yes" else row["neg"]
            assert r["iid"] == want and r["candidates"] == [want]
            assert r["score"] == (row["pos_score"] if r["label"] == "Yes" else row["neg_score"])
        if split == "train":  # from each user's most recent train position
            for r in recs:
                assert len(r["history"]) == min(len(fx["seqs"][r["uid"]]) - 3, 10)


def test_task3_pairs_from_several_rows_per_user(tmp_path):
    """data_gen.binary_rows_per_user: a pair from each of a user's most recent train rows."""
    fx = build_root(tmp_path)
    for n in (2, 0):
        run(tiny_config(tmp_path, "data_gen.max_train_per_task=0", f"data_gen.binary_rows_per_user={n}"), force=True)
        recs = [r for r in load(tmp_path, "behaviour_train") if r["type"] == "uidiid2binary"]
        rows = by_key(fx["tops"]["train"])
        per_user_rows: dict[int, list] = {}
        for row in fx["tops"]["train"]:
            per_user_rows.setdefault(row["uid"], []).append(row)
        cap = 3  # the tiny profile's train_cap_per_user
        for uid, urows in per_user_rows.items():
            urows = urows[-cap:]  # the fixture writes each user's rows in position order
            want = urows[-n:] if n else urows
            got = [r for r in recs if r["uid"] == uid]
            assert len(got) == 2 * len(want), (n, uid)
            assert {tuple(r["history"]) for r in got} == {tuple(row["history"]) for row in want}
        for r in recs:  # each pair still matches its own row
            row = rows[(r["uid"], tuple(r["history"]))]
            assert r["iid"] == (row["pos"] if r["label"] == "Yes" else row["neg"])
        assert Counter(r["label"] for r in recs)["Yes"] == len(recs) // 2
    with pytest.raises(ConfigError, match="binary_rows_per_user"):
        run(tiny_config(tmp_path, "data_gen.binary_rows_per_user=-1"), force=True)


def test_uid2hist_and_task6_forms(gen):
    root, fx, cfg, _ = gen
    titles = fx["titles"]
    assert not [r for r in load(root, "behaviour_train") if r["type"].startswith("uid2")
                and r["type"] not in ("uid2next",)]
    hist = [r for r in load(root, "intention_valid") if r["type"] == "uid2hist"]
    assert len(hist) == len(fx["seqs"])
    for r in hist:
        assert r["question"].count("<user>") == 1
        assert r["answer"] == "; ".join(titles[i] for i in r["history"][-cfg.data_gen.max_hist_len:])
        assert all(titles[i] not in r["question"] for i in r["history"])
    both = [r for r in load(root, "both_train") if r["type"] == "uid2hist"]
    assert both and all(r["form"] == "intention" for r in both)


# --------------------------------------------------------------------------- forms and markers


def test_markers_only_in_embedding_forms_with_bindings(gen):
    root, fx, cfg, _ = gen
    titles = fx["titles"]
    for name in ALIGN + EXPLAN:
        for r in load(root, name):
            q = r["question"]
            nu, ni = q.count("<user>"), q.count("<item>")
            if name.startswith(("behaviour", "explan_behaviour", "explan_none")) or r["form"] in ("behaviour", "text"):
                assert nu == 0 and ni == 0, (name, q)
                assert r["iids_in_question"] == []
                continue
            assert ni == len(r["iids_in_question"]), (name, q)
            assert nu <= 1 and (nu == 0 or r["history"]), (name, q)
            if r["form"] == "intention":  # the embedding replaces the titles
                assert all(titles[i] not in q for i in r["iids_in_question"])
            if r["form"] == "hybrid":  # ... or precedes them
                for i in r["iids_in_question"]:
                    assert f"<item> {titles[i]}" in q
                if nu:
                    shown = r["history"][-cfg.data_gen.max_hist_len:]
                    assert "<user> " + "; ".join(titles[i] for i in shown) in q
    # user-side tasks all carry a <user> in the embedding forms
    for r in load(root, "intention_train"):
        if r["type"] in ("uid2next", "uidiid2rank", "uidiid2binary", "uid2hist"):
            assert r["question"].count("<user>") == 1


def test_both_is_union_plus_hybrid_form(gen):
    root, _, _, _ = gen
    b, i, h = load(root, "behaviour_train"), load(root, "intention_train"), load(root, "both_train")
    hb = {r["id"]: r for r in h}
    for r in b + i:
        assert hb[r["id"]] == r
    third = [r for r in h if r["form"] == "hybrid"]
    assert len(h) == len(b) + len(i) + len(third)
    assert {r["type"] for r in third} >= {"uid2next", "uidiid2rank", "uidiid2binary", "iid2sim"}
    assert not {"iid2title", "uid2hist", "description2iid"} & {r["type"] for r in third}
    # evaluation file of the hybrid model: hybrid form for tasks 1-3, intention for uid2hist/iid2title
    ev = load(root, "both_valid")
    forms = {(r["type"], r["form"]) for r in ev}
    assert forms == {("uid2next", "hybrid"), ("uidiid2rank", "hybrid"), ("uidiid2binary", "hybrid"),
                     ("uid2hist", "intention"), ("iid2title", "intention")}
    assert {r["type"] for r in load(root, "behaviour_valid")} == {"uid2next", "uidiid2rank", "uidiid2binary"}


def test_task4_fields_present_only(gen):
    root, fx, cfg, _ = gen
    titles, items = fx["titles"], fx["items"]
    recs = load(root, "both_train")
    got = Counter((r["type"], r["form"]) for r in recs)
    n = len(items)
    has = {f: sum(1 for it in items if f in it) for f in ("description", "brand", "feature")}
    has["tags"] = sum(1 for it in items if "tags" in it or "genres" in it)
    assert got[("iid2title", "intention")] == n and got[("iid2title", "behaviour")] == 0
    for f in ("description", "tags", "brand", "feature"):
        for form in ("behaviour", "intention", "hybrid"):
            assert got[(f"iid2{f}", form)] == has[f], (f, form)
    assert got[("description2iid", "behaviour")] == has["description"]
    assert got[("feature2iid", "behaviour")] == has["feature"]
    assert got[("description2iid", "intention")] == 0
    for r in recs:
        it = items[r["iid"] - 1] if r["iid"] else None
        if r["type"] == "iid2tags":
            src = it.get("tags") or it.get("genres")
            assert r["answer"] == "; ".join(src)
        if r["type"] == "iid2brand":
            assert r["answer"] == it["brand"]
        if r["type"] == "iid2sim":
            assert r["answer"] == "; ".join(titles[i] for i in fx["sim"][r["iid"]][: cfg.data_gen.num_sim])
            assert "similar item titles" in r["question"].lower()
        if r["type"] in ("description2iid", "feature2iid"):
            assert r["answer"] == titles[r["iid"]]
    assert not any(r["type"].startswith("iid2") and r["type"] != "iid2title" for r in load(root, "intention_valid"))


def test_every_template_used(gen):
    root, _, _, _ = gen
    questions = [r["question"] for name in ALIGN for r in load(root, name)]
    families = dict(T.FIGURE_B2)
    families["reverse"] = T.ITEM_REVERSE
    for fam, temps in families.items():
        for t in temps:
            rx = T.template_regex(t)
            assert any(rx.match(q) for q in questions), f"{fam}: template never used: {t}"
    assert len(T.FIGURE_B2["task1"]) == 9 and len(T.FIGURE_B2["task2"]) == 9
    assert len(T.FIGURE_B2["task3"]) == 8 and len(T.FIGURE_B2["task4"]) == 8 and len(T.FIGURE_B2["task6"]) == 8
    assert T.FIGURE_B2["task1"][0] == ("Given the user purchase history: {history} , generate the next most likely "
                                       "clicked item title.")


# --------------------------------------------------------------------------- explanations


def test_explanation_prompts(gen):
    root, fx, cfg, _ = gen
    titles = fx["titles"]
    g = cfg.data_gen
    for split, n in (("train", g.explan_train_users), ("valid", g.explan_valid_users), ("test", g.explan_valid_users)):
        files = {f: load(root, f"explan_{f}_{split}") for f in ("behaviour", "intention", "both", "none")}
        src = "train" if split == "train" else "test"
        avail = len(fx["tops"][src])
        assert len(files["behaviour"]) == 2 * min(n, avail)
        ids = [r["id"] for r in files["behaviour"]]
        for f, recs in files.items():
            assert [r["id"] for r in recs] == ids  # joinable across methods
        assert [r["question"] for r in files["none"]] == [r["question"] for r in files["behaviour"]]
        rows = by_key(fx["tops"][src])
        for rb, ri, rh in zip(files["behaviour"], files["intention"], files["both"]):
            row = rows[(rb["uid"], tuple(rb["history"]))]
            assert rb["iid"] == (row["pos"] if rb["label"] == "Yes" else row["neg"])
            assert rb["question"].startswith("The user has the following purchase history: ")
            assert "from the perspective of a recommender model" in rb["question"]
            assert titles[rb["iid"]] in rb["question"]
            assert ri["question"].count("<user>") == 1 and ri["iids_in_question"] == [ri["iid"]]
            assert titles[ri["iid"]] not in ri["question"]
            assert f"<item> {titles[rh['iid']]}" in rh["question"]
        labels = Counter(r["label"] for r in files["behaviour"])
        assert labels["Yes"] == labels["No"]
        with open(root / "tasks" / f"explan_chatgpt_{split}.csv", newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        assert list(table[0]) == ["id", "uid", "iid", "label", "question"]
        assert [r["id"] for r in table] == ids
        assert [r["question"] for r in table] == [r["question"] for r in files["behaviour"]]
    # train prompts may hold several positions of one user
    train = load(root, "explan_behaviour_train")
    assert len({(r["uid"], len(r["history"])) for r in train}) > len({r["uid"] for r in train})


# --------------------------------------------------------------------------- statistics, splits, determinism


def test_stats_table_b2(gen):
    root, _, _, stats = gen
    saved = json.loads((root / "tasks" / "stats.json").read_text())
    assert saved == json.loads(json.dumps(stats, sort_keys=True))
    for name in ALIGN:
        recs = load(root, name)
        assert saved["table_b2"][name]["Total"] == len(recs)
        assert saved["table_b2"][name]["Task 1"] == sum(r["type"] == "uid2next" for r in recs)
        assert saved["table_b2"][name]["Task 6"] == sum(r["type"] in ("uid2hist", "uid2summary") for r in recs)
    md = (root / "tasks" / "stats.md").read_text()
    assert "| Task 1 |" in md and "| Total |" in md and "behaviour # train" in md


def test_valid_files_follow_eval_split(gen, tmp_path):
    root, fx, _, _ = gen
    # default eval_split=test: the evaluation files are the test files
    for f in ("behaviour", "intention", "both"):
        assert (root / "tasks" / f"{f}_valid.json").read_bytes() == (root / "tasks" / f"{f}_test.json").read_bytes()
    fx2 = build_root(tmp_path)
    run(tiny_config(tmp_path, "data_gen.eval_split=valid"))
    titles = fx2["titles"]
    for split, src in (("valid", "valid"), ("test", "test")):
        rows = by_key(fx2["tops"][src])
        recs = [r for r in load(tmp_path, f"behaviour_{split}") if r["type"] == "uid2next"]
        assert len(recs) == len(fx2["seqs"])
        for r in recs:
            assert r["answer"] == titles[rows[(r["uid"], tuple(r["history"]))]["top"][0]]
    with pytest.raises(ConfigError, match="eval_split"):
        run(tiny_config(tmp_path, "data_gen.eval_split=dev"), force=True)


def test_same_seed_byte_identical_and_caps(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_root(a)
    build_root(b)
    run(tiny_config(a))
    run(tiny_config(b))
    files = sorted(p.name for p in (a / "tasks").iterdir())
    assert len(files) == len(output_paths(tiny_config(a))) + 1 and "stamp.json" in files  # + the fingerprint
    for name in files:
        assert (a / "tasks" / name).read_bytes() == (b / "tasks" / name).read_bytes(), name
    # another seed changes template choices / shuffles, not the answers' source
    run(tiny_config(b, "data_gen.seed=7"), force=True)
    assert (a / "tasks" / "behaviour_train.json").read_bytes() != (b / "tasks" / "behaviour_train.json").read_bytes()
    # the tiny profile's caps apply per task type
    capped = tiny_config(a, "data_gen.max_train_per_task=5", "data_gen.max_eval_per_task=4")
    run(capped, force=True)
    cnt = Counter(r["type"] for r in load(a, "behaviour_train"))
    assert max(cnt.values()) <= 5 and cnt["uidiid2binary"] == 4
    cnt = Counter(r["type"] for r in load(a, "intention_valid"))
    assert cnt["uid2next"] == 4 and cnt["uidiid2binary"] == 4


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case", ["missing_test_top", "malformed_train_line", "stale_row", "bad_item_sim",
                                  "missing_key", "unknown_item"])
def test_bad_input_clear_error_no_partial_output(tmp_path, case):
    build_root(tmp_path)
    rec = tmp_path / "recmodel"
    if case == "missing_test_top":
        (rec / "test_top.jsonl").unlink()
        match = r"missing recommender export: .*test_top\.jsonl"
    elif case == "malformed_train_line":
        lines = (rec / "train_top.jsonl").read_text().splitlines(keepends=True)
        lines[2] = lines[2][:20] + "\n"
        (rec / "train_top.jsonl").write_text("".join(lines))
        match = r"train_top\.jsonl:3: malformed JSON"
    elif case == "stale_row":
        rows = [json.loads(x) for x in (rec / "test_top.jsonl").read_text().splitlines()]
        rows[1]["target"] = rows[1]["history"][0]
        (rec / "test_top.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        match = r"test_top\.jsonl:2: .*do not match the canonical dataset"
    elif case == "bad_item_sim":
        (rec / "item_sim.json").write_text('{"1": [2, 3], "2": "oops"}')
        match = r"item_sim\.json: entry '2'"
    elif case == "missing_key":
        rows = [json.loads(x) for x in (rec / "train_top.jsonl").read_text().splitlines()]
        del rows[0]["rank_candidates"]
        (rec / "train_top.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        match = r"train_top\.jsonl:1: missing key 'rank_candidates'"
    else:
        rows = [json.loads(x) for x in (rec / "test_top.jsonl").read_text().splitlines()]
        rows[0]["top"][0] = 999
        (rec / "test_top.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        match = r"test_top\.jsonl:1: 'top' holds unknown item id 999"
    with pytest.raises(StageError, match=match):
        run(tiny_config(tmp_path))
    assert not (tmp_path / "tasks").exists() or not any((tmp_path / "tasks").iterdir())


def test_missing_canonical_data(tmp_path):
    build_root(tmp_path)
    (tmp_path / "data" / "items.jsonl").unlink()
    with pytest.raises(StageError, match="items.jsonl"):
        run(tiny_config(tmp_path))
    assert not (tmp_path / "tasks").exists()


def test_cli_exit_codes_and_skip(tmp_path, capsys):
    build_root(tmp_path)
    args = ["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}", "--set", "recmodel.max_seq_len=10"]
    shutil.move(tmp_path / "recmodel" / "item_sim.json", tmp_path / "item_sim.json")
    assert cli_main(args) == 2
    assert "item_sim.json" in capsys.readouterr().err
    shutil.move(tmp_path / "item_sim.json", tmp_path / "recmodel" / "item_sim.json")
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "| Task 1 |" in out
    stamp = (tmp_path / "tasks" / "both_train.json").stat().st_mtime_ns
    assert cli_main(args) == 0  # up to date: skipped
    assert (tmp_path / "tasks" / "both_train.json").stat().st_mtime_ns == stamp
    assert cli_main(args + ["--force"]) == 0
    assert cli_main(["--config", "configs/tiny.yaml", "--set", "data_gen.max_hist_lenn=3"]) == 2
    # a changed setting or input stops the reuse (issue 13): named, nothing rewritten
    capsys.readouterr()
    stamp = (tmp_path / "tasks" / "both_train.json").stat().st_mtime_ns
    assert cli_main(args + ["--set", "data_gen.max_hist_len=3"]) == 2
    err = capsys.readouterr().err
    assert "data_gen.max_hist_len: 5 -> 3" in err and "--force" in err
    with open(tmp_path / "recmodel" / "train_top.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    assert cli_main(args) == 2
    assert "input recmodel/train_top.jsonl changed" in capsys.readouterr().err
    assert (tmp_path / "tasks" / "both_train.json").stat().st_mtime_ns == stamp
    assert cli_main(args + ["--force"]) == 0 and cli_main(args) == 0


# --------------------------------------------------------------------------- summaries (task 6, uid2summary)


def test_summaries_skipped_without_endpoint(gen):
    root, _, _, stats = gen
    assert any("uid2summary skipped" in n for n in stats["notes"])
    for name in ALIGN:
        assert not any(r["type"] == "uid2summary" for r in load(root, name))
    assert "uid2summary skipped" in (root / "tasks" / "stats.md").read_text()


def test_summaries_through_api_client(tmp_path, monkeypatch):
    fx = build_root(tmp_path)
    sent: list = []

    class FakeClient:
        def __init__(self, cfg):
            self.cfg = cfg

        @staticmethod
        def available(cfg):
            return True

        def complete_many(self, list_of_messages, desc=""):
            sent.extend(list_of_messages)
            # one failed request: that user is left out, not invented
            return [None if k == 0 else f"Summary {k}: likes films." for k in range(len(list_of_messages))]

    fake = types.ModuleType("core.api_client")
    fake.ChatClient = FakeClient
    monkeypatch.setitem(sys.modules, "core.api_client", fake)
    cfg = tiny_config(tmp_path, "data_gen.max_train_per_task=0")
    stats = run(cfg)
    titles = fx["titles"]
    assert len(sent) == len(fx["seqs"])
    first_user_part = fx["seqs"][1][:-2]
    shown = first_user_part[-cfg.data_gen.max_hist_len:]
    assert sent[0][0]["role"] == "user" and "; ".join(titles[i] for i in shown) in sent[0][0]["content"]
    for held_out in fx["seqs"][1][-2:]:  # valid/test items never reach the summary request
        assert titles[held_out] not in sent[0][0]["content"]
    intent = [r for r in load(tmp_path, "intention_train") if r["type"] == "uid2summary"]
    assert len(intent) == len(fx["seqs"]) - 1
    assert all(r["question"].count("<user>") == 1 and r["answer"].startswith("Summary ") for r in intent)
    assert all(r["history"] == fx["seqs"][r["uid"]][:-2][-10:] for r in intent)
    both = [r for r in load(tmp_path, "both_train") if r["type"] == "uid2summary"]
    assert Counter(r["form"] for r in both) == {"intention": len(intent), "hybrid": len(intent)}
    assert not any(r["type"] == "uid2summary" for r in load(tmp_path, "behaviour_train"))
    assert not any(r["type"] == "uid2summary" for r in load(tmp_path, "intention_valid"))
    qs = [r["question"] for r in intent]
    for t in T.UID2SUMMARY:
        assert any(T.template_regex(t).match(q) for q in qs)
    assert stats["table_b2"]["intention_train"]["Task 6"] == len(intent) + sum(
        r["type"] == "uid2hist" for r in load(tmp_path, "intention_train"))
