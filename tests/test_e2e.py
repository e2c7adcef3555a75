"""End to end: `bash shell/run_all.sh configs/tiny.yaml` runs every stage and prints the tables.

This is the CI guard that the stages still plug into each other: each stage's outputs must
exist and parse, the tables must be printed, and a second run must redo nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from core.utils import read_json, read_jsonl

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run_all(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("OPENAI_API_KEY", None)  # the API methods must be skipped cleanly here
    cmd = [
        "bash", "shell/run_all.sh", "configs/tiny.yaml",
        "--set", f"paths.root={tmp / 'out'}",
        "--set", f"paths.raw_dir={tmp / 'raw'}",
        "--set", f"paths.models_dir={tmp / 'models'}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    proc = _run_all(tmp)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return tmp / "out", proc.stdout, tmp


def test_every_stage_output_exists_and_parses(e2e):
    out, _, _ = e2e
    data = read_json(out / "data/dataset.json")
    assert data["n_users"] == sum(1 for _ in open(out / "data/sequences.txt"))
    assert read_json(out / "recmodel/metrics.json")["test"]["hr@10"] >= 0
    for split in ("train", "valid", "test"):
        rows = read_jsonl(out / f"recmodel/{split}_top.jsonl")
        assert rows and all(len(r["rank_candidates"]) == 5 for r in rows)
    for name in ("behaviour", "intention", "both"):
        for split in ("train", "valid"):
            recs = read_json(out / f"tasks/{name}_{split}.json")
            assert isinstance(recs, list) and recs
        assert (out / f"llm/{name}/projectors.pt").is_file()
    for method in ("none", "none_icl", "behaviour", "intention", "both"):
        for mode in ("uid2next", "uidiid2rank", "uidiid2binary"):
            m = read_json(out / f"eval/{method}/{mode}.metrics.json")
            assert m["n"] > 0
    for method in ("intention", "both"):
        assert 0.0 <= read_json(out / f"eval/{method}/uid2hist.metrics.json")["hcr"] <= 1.0
    for method in ("none", "behaviour", "intention", "both"):
        rows = read_jsonl(out / f"explain/{method}_valid.jsonl")
        assert rows and all({"id", "explanation", "label"} <= r.keys() for r in rows)
    assert read_json(out / "judge/summary.json")
    assert (out / "discriminator/cls/confusion.png").stat().st_size > 0
    for t in ("table1", "table2", "table3"):
        md = (out / f"tables/{t}.md").read_text()
        assert f"Table {t[-1]}" in md and "| Method" in md
        with open(out / f"tables/{t}.csv", newline="") as f:
            assert len(list(csv.reader(f))) >= 2


def test_training_is_sized_to_the_run_time_limit(e2e):
    """tiny.yaml inherits cpu.yaml's pipeline.time_limit_s: the base model's stages run before
    training, and each variant trained under the budget src.deadline gave it."""
    out, stdout, _ = e2e
    rows = [line.split("\t") for line in (out / "logs/stage_times.tsv").read_text().splitlines()]
    order = [stage for _, stage, _ in rows]
    assert order.index("align_none") < order.index("explain_none") < order.index("train_behaviour")
    assert order.index("train_both") < order.index("align_behaviour")
    for name in ("behaviour", "intention", "both"):
        plan = read_json(out / f"llm/{name}/meta.json")["time_budget"]
        assert plan and plan["time_budget_s"] >= 60 and plan["rows_kept"] > 0


def test_tables_are_printed_with_every_method(e2e):
    _, stdout, _ = e2e
    assert "Table 1" in stdout and "Table 3" in stdout
    for row in ("Random", "Popularity", "KD-SASRec", "RecExplainer-B", "RecExplainer-I", "RecExplainer-H"):
        assert row in stdout
    assert "summary" in stdout and "total" in stdout


def test_rerun_skips_finished_stages_and_keeps_outputs(e2e):
    out, _, tmp = e2e
    table1 = (out / "tables/table1.md").read_text()
    rows_before = (out / "eval/both/uid2next.jsonl").read_text()
    proc = _run_all(tmp)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (out / "tables/table1.md").read_text() == table1
    assert (out / "eval/both/uid2next.jsonl").read_text() == rows_before
    # the trainer and the evaluation say they skipped instead of redoing work
    assert "skip" in (proc.stdout + proc.stderr).lower()


def test_seeds_retrain_a_variant_in_its_own_root(e2e):
    """`bash shell/seeds.sh`: the seed-7 run trains and evaluates RecExplainer-B in
    <root>_seed7, reading the main run's inputs through links and leaving the main run as it
    was; the seeds table summarises both seeds."""
    out, _, tmp = e2e
    main_rows = (out / "eval/behaviour/uidiid2binary.jsonl").read_text()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        ["bash", "shell/seeds.sh", "configs/tiny.yaml", "--seeds", "42,7", "--task_types", "behaviour",
         "--set", f"paths.root={out}", "--set", f"paths.raw_dir={tmp / 'raw'}",
         "--set", f"paths.models_dir={tmp / 'models'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    seed7 = tmp / "out_seed7"
    assert (seed7 / "tasks").is_symlink() and (seed7 / "tasks").resolve() == (out / "tasks").resolve()
    assert read_json(seed7 / "llm/behaviour/meta.json")
    assert read_json(seed7 / "eval/behaviour/uidiid2binary.metrics.json")["n"] > 0
    assert not (seed7 / "llm/both").exists()  # only the variant asked for
    assert (out / "eval/behaviour/uidiid2binary.jsonl").read_text() == main_rows
    md = (out / "tables/table1_seeds.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| RecExplainer-B "))
    assert "±" in row and "train.seed = 42, 7" in md
    assert "RecExplainer-H" not in md  # the variants asked for only
