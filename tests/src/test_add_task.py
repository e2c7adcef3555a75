"""Adding a task is a registry entry + its template + its generator + its metric formula.

A toy task, uid2last ("which title did the user see last?"), is registered the documented
way (core.registry.register_task, data_gen.templates.TEMPLATES,
data_gen.generate.SPLIT_GENERATORS, core.metrics.SCORERS) and runs through data_gen ->
src.train -> src.infer_alignment on the tiny profile with no other code change.
"""

from __future__ import annotations

import pytest

from core import metrics, registry
from core.metrics import exact_match
from core.registry import InferenceTask, eval_paths
from core.utils import read_json
from data_gen import generate, templates
from data_gen.generate import Sample, SplitContext
from data_gen.pipeline import run as data_gen_run
from tests.fixtures_data_gen import build_root, tiny_config
from tests.fixtures_llm import FakeEncoder

TOY = "uid2last"
TOY_TEMPLATES = ("Given the user history: {history}, which title did the user see last?",)


def _toy_samples(ctx: SplitContext) -> list[Sample]:
    out = []
    for r in ctx.rows:
        shown = ctx.shown(r)
        out.append(Sample(TOY, TOY_TEMPLATES[0], ctx.titles[shown[-1]], uid=r.uid, iid=shown[-1],
                          history=tuple(r.history), shown=shown))
    return out


def _toy_score(row: dict, key: str) -> dict[str, float]:
    return {"acc": exact_match((row.get(key) or [""])[0], row["answer"])}


@pytest.fixture
def toy_task(monkeypatch):
    """The registration, undone after the test. The registries are module-level containers
    that other modules imported by name, so they are restored in place, not replaced."""
    kept = {name: getattr(registry, name) for name in
            ("TYPE_FORMS", "TASK_OF_TYPE", "INFERENCE_TASKS", "MODE_METRICS", "MODES", "LIST_MODES")}
    saved = {name: c.copy() for name, c in kept.items()}
    registry.register_task(TOY, ("behaviour",), "Task 7 (toy)", InferenceTask(TOY, ("acc",)))
    monkeypatch.setitem(templates.TEMPLATES, TOY, TOY_TEMPLATES)
    monkeypatch.setitem(generate.SPLIT_GENERATORS, TOY, _toy_samples)
    monkeypatch.setitem(metrics.SCORERS, TOY, _toy_score)
    yield
    for name, c in kept.items():
        if isinstance(c, dict):
            c.clear()
            c.update(saved[name])
        else:
            c[:] = saved[name]


def test_registered_toy_task_runs_from_data_gen_to_its_metrics(tmp_path, toy_task):
    from src.infer_alignment import evaluate
    from src.model import load_trained
    from src.train import train

    build_root(tmp_path)
    cfg = tiny_config(tmp_path, "train.max_train_samples=48", "eval.max_samples=8")
    data_gen_run(cfg)
    train_recs = read_json(cfg.tasks_dir / "behaviour_train.json")
    valid_recs = [r for r in read_json(cfg.tasks_dir / "behaviour_valid.json") if r["type"] == TOY]
    toy = [r for r in train_recs if r["type"] == TOY]
    assert toy and valid_recs
    prefix = "Given the user history: "
    assert all(r["question"].startswith(prefix) and r["form"] == "behaviour" for r in toy)
    assert all(r["answer"] == r["question"][len(prefix):].split(", which title")[0].split("; ")[-1] for r in toy)
    assert not any(r["type"] == TOY for r in read_json(cfg.tasks_dir / "intention_train.json"))  # its forms only
    stats = read_json(cfg.tasks_dir / "stats.json")  # Table B2 gets a row for the new task
    assert stats["table_b2"]["behaviour_train"]["Task 7 (toy)"] == len(toy)
    assert f"| Task 7 (toy) | {len(toy)} | {len(valid_recs)} |" in (cfg.tasks_dir / "stats.md").read_text()

    enc = FakeEncoder(cfg.recmodel.hidden_size)
    out = train(cfg, "behaviour", rec_encoder=enc, max_steps=3)
    assert read_json(out / "meta.json")["task_counts"].get(TOY, 0) > 0

    loaded = load_trained(cfg, "behaviour", rec_encoder=enc)
    m = evaluate(cfg, "behaviour", TOY, loaded=loaded)
    assert m is not None and m["n"] == min(8, len(valid_recs)) and 0.0 <= m["acc"] <= 1.0
    assert set(m["ci95"]) == {"acc"}
    assert read_json(eval_paths(cfg, "behaviour", TOY, "valid")["metrics"])["acc"] == m["acc"]
