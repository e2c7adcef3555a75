"""Figure 7: train.exclude_tasks filtering, and the ablation command end to end on tiny."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
from pathlib import Path

import pytest

from core.config import ConfigError
from src.data import filter_task_types
from src.train import train
from core.utils import StageError, read_json, read_jsonl, write_json
from tests.fixtures_eval import setup_eval_root
from tests.fixtures_llm import FakeEncoder, one_thread  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]


def _recs(**counts: int) -> list[dict]:
    return [{"id": f"{t}{k}", "type": t, "question": "q", "answer": "a"} for t, n in counts.items() for k in range(n)]


def test_filter_task_types_drops_and_counts(caplog):
    recs = _recs(uid2next=3, uidiid2binary=2, uid2hist=4)
    with caplog.at_level(logging.INFO, logger="src.data"):
        kept = filter_task_types(recs, ["uid2next", "uid2hist"], "tasks/both_train.json")
    assert [r["type"] for r in kept] == ["uidiid2binary"] * 2
    assert "dropped 7 of 9 records (uid2next: 3, uid2hist: 4)" in caplog.text
    assert filter_task_types(recs, [], "x.json") is recs


def test_filter_task_types_errors_name_the_key_and_the_types_present():
    recs = _recs(uid2next=2, iid2title=1)
    with pytest.raises(StageError, match=r"train\.exclude_tasks: 'uid2nxt' is not a task type of .*both_train\.json "
                                         r"\(types present: iid2title, uid2next\)"):
        filter_task_types(recs, ["uid2nxt"], "tasks/both_train.json")
    # the valid file need not hold every excluded type ...
    assert len(filter_task_types(recs, ["uid2hist", "iid2title"], "v.json", strict=False)) == 2
    # ... but nothing may be left of neither
    with pytest.raises(StageError, match=r"exclude_tasks=\['uid2next', 'iid2title'\] leaves no records in v\.json"):
        filter_task_types(recs, ["uid2next", "iid2title"], "v.json", strict=False)


def test_train_stops_on_an_unknown_excluded_type_before_building_a_model(tmp_path):
    cfg = setup_eval_root(tmp_path, "train.exclude_tasks=[uid2next, iid2sim]")
    with pytest.raises(StageError, match=r"'iid2sim' is not a task type of .*both_train\.json \(types present: "
                                         r"iid2title, uid2hist, uid2next, uidiid2binary, uidiid2rank\)"):
        train(cfg, "both", rec_encoder=FakeEncoder(16), max_steps=1)
    assert not (cfg.llm_dir / "both").exists()


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"paths.root={tmp_path}/out", f"paths.raw_dir={tmp_path}/raw", "recmodel.hidden_size=16",
            "eval.batch_size=4", "eval.max_new_tokens=8", "eval.max_new_tokens_list=12", "eval.num_beams=2",
            "eval.device=cpu", "eval.max_samples=4", "eval.max_samples_per_mode={}",
            "train.max_eval_samples=0", "train.eval_steps=1000", "train.save_steps=1000"]
    return ["--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)], *extra]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_ablation_command_end_to_end_on_tiny(tmp_path, monkeypatch, caplog):
    import recmodel.encoder
    from src.ablation import main

    cfg = setup_eval_root(tmp_path)  # canonical dataset + task files of every mode (12 users)
    enc = FakeEncoder(16)
    monkeypatch.setattr(recmodel.encoder, "load_rec_encoder", lambda *a, **k: enc)
    argv = _argv(tmp_path, "--task_type", "both", "--tasks", "uidiid2binary,uid2hist", "--max_steps", "2")
    assert main(argv) == 0

    full = read_json(cfg.llm_dir / "both" / "meta.json")
    assert full["exclude_tasks"] == [] and full["task_counts"] == {
        "uid2next": 12, "uidiid2rank": 12, "uidiid2binary": 12, "uid2hist": 12, "iid2title": 12}
    metas = {}
    for t in ("uidiid2binary", "uid2hist"):
        metas[t] = read_json(cfg.llm_dir / "ablation" / f"both-no_{t}" / "meta.json")
        assert metas[t]["done"] and metas[t]["exclude_tasks"] == [t] and metas[t]["global_step"] == 2
        assert t not in metas[t]["task_counts"] and sum(metas[t]["task_counts"].values()) == 48
        assert metas[t]["n_train"] == 48 and metas[t]["n_eval"] == 48  # dropped from the valid file too

    with open(cfg.tables_dir / "figure7.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Variant"] for r in rows] == ["full", "w/o uidiid2binary", "w/o uid2hist"]
    assert [r["Excluded"] for r in rows] == ["", "uidiid2binary", "uid2hist"]
    assert list(rows[0])[3:8] == ["Task1 H@5", "Task1 N@5", "Task2 N@5", "Task3 ACC", "Task6 HCR"]
    for r in rows:
        assert all(0.0 <= float(r[c]) <= 1.0 for c in ("Task1 H@5", "Task1 N@5", "Task2 N@5", "Task3 ACC", "Task6 HCR"))
        assert r["n uid2next"] == r["n uid2hist"] == "4"
    assert [r["Train records"] for r in rows] == ["60", "48", "48"]
    # each cell is the metric that src.infer_alignment wrote for that variant's model
    m = read_json(cfg.eval_dir / "ablation" / "both-no_uid2hist" / "uidiid2binary.metrics.json")
    assert float(rows[2]["Task3 ACC"]) == pytest.approx(m["acc"], abs=5e-5)
    assert len(read_jsonl(cfg.eval_dir / "ablation" / "both-full" / "uid2next.jsonl")) == 4
    png = cfg.tables_dir / "figure7.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # a re-run trains and evaluates nothing: every variant is skipped, files are untouched
    stamps = {p: p.stat().st_mtime_ns for p in (cfg.llm_dir / "ablation").rglob("meta.json")}
    stamps |= {p: p.stat().st_mtime_ns for p in (cfg.eval_dir / "ablation").rglob("*.jsonl")}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert caplog.text.count("already trained") == 3  # the full model (its stamp checked) and the 2 variants
    assert caplog.text.count("every mode already evaluated; skipping") == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a retrained variant (its meta.json changed) is evaluated again, the others are not
    meta_path = cfg.llm_dir / "ablation" / "both-no_uid2hist" / "meta.json"
    write_json(meta_path, {**metas["uid2hist"], "retrained": True})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert "both-no_uid2hist: redoing its evaluation (its model was retrained)" in caplog.text
    assert caplog.text.count("every mode already evaluated; skipping") == 2


def test_shell_command_reports_a_bad_task_name(tmp_path):
    """The shell wrapper reaches src.ablation; a bad --tasks entry is one clear line, exit 2."""
    setup_eval_root(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "shell/ablation.sh", *_argv(tmp_path, "--tasks", "uid2next,iid2sim")[1:]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: --tasks: 'iid2sim' is not a record type of the training file (types present: uid2next, " \
           "uidiid2rank, uidiid2binary, iid2title, uid2hist; or task1..task6)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_task_entries_types_groups_and_paper_tasks():
    from src.ablation import parse_tasks

    present = ["uid2next", "uidiid2binary", "iid2title", "iid2sim", "sharegpt", "uid2hist", "uid2summary"]
    assert [n for n, _ in parse_tasks(None, present)] == [t for t in present if t != "sharegpt"]
    assert parse_tasks("task4, uid2hist+uid2summary,sharegpt", present) == [
        ("task4", ("iid2title", "iid2sim")), ("uid2hist+uid2summary", ("uid2hist", "uid2summary")),
        ("sharegpt", ("sharegpt",))]
    with pytest.raises(ConfigError, match=r"--tasks: 'task2' has no record type in the training file"):
        parse_tasks("task2", present)
    with pytest.raises(ConfigError, match=r"--tasks: 'uid2next' is listed twice"):
        parse_tasks("uid2next,uid2next", present)


def test_full_model_trained_with_other_exclusions_is_refused(tmp_path):
    import copy

    from core.stamps import write_stamp
    from src.ablation import plan_variants, train_variant
    from src.model import STAMP_FILE
    from src.train import train_fingerprint

    cfg = setup_eval_root(tmp_path)
    full = plan_variants(cfg, "both", "uid2next")[0]
    other = copy.deepcopy(cfg)
    other.train.exclude_tasks = ["iid2title"]
    write_json(full.model_dir / "meta.json", {"done": True, "exclude_tasks": ["iid2title"]})
    write_stamp(full.model_dir / STAMP_FILE, train_fingerprint(other, "both", max_steps=1))
    with pytest.raises(StageError, match=r"the both model in .* was made from other settings or inputs than now "
                                         r'\(train\.exclude_tasks: \["iid2title"\] -> \[\]\)'):
        train_variant(cfg, "both", full, force=False, max_steps=1)
