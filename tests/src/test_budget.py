"""train.time_budget_s: the records a variant keeps for a wall-clock budget (src.budget)."""

from __future__ import annotations

import pytest

import src.budget as budget
from core.config import ConfigError
from core.utils import read_json
from src.train import train, train_fingerprint
from tests.fixtures_llm import FakeEncoder, mixed_records, one_thread, stop_at, tiny_cfg, write_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_within_keeps_the_longest_prefix_that_fits():
    lengths = [10, 20, 30, 40]

    def within(seconds, epochs=1.0, min_rows=1, step_s=0.0, rows_per_step=1):
        return budget.rows_within(lengths, seconds, 1.0, step_s, rows_per_step, epochs, min_rows)

    assert within(60) == 3  # 10+20+30 = 60 token-seconds fit, +40 does not
    assert within(59) == 2
    assert within(60, epochs=2.0) == 2  # two passes: 30 a pass
    assert within(5, min_rows=3) == 3  # at least one optimizer step's rows
    assert within(1e9) == 4
    assert within(5, min_rows=9) == 4  # never more rows than there are
    # optimizer steps cost too: 2 rows a step at 5 s; 3 rows = 60 tokens + 2 steps = 70 s
    assert within(70, step_s=5, rows_per_step=2) == 3
    assert within(69, step_s=5, rows_per_step=2) == 2  # 30 tokens + 1 step = 35 s
    assert budget.rows_within(lengths, 40, 0.5, 5, 2, 1.0, 1) == 3  # 60 tokens at 0.5 s + 2 steps at 5 s
    assert budget.rows_within(lengths, 39, 0.5, 5, 2, 1.0, 1) == 2


def test_calibration_batches_are_drawn_as_the_trainer_draws_them():
    lengths = [5, 50, 6, 51, 7, 52, 8, 53]
    order = sorted(range(8), key=lengths.__getitem__)
    grouped = budget._batches(lengths, 2, 20, grouped=True, seed=0)
    windows = [order[s:s + 2] for s in range(7)]
    assert all(b in windows for b in grouped)  # neighbours in length, as group_by_length batches them
    assert len({tuple(b) for b in grouped}) > 1
    assert grouped == budget._batches(lengths, 2, 20, grouped=True, seed=0)  # seeded
    flat = budget._batches(lengths, 3, 5, grouped=False, seed=1)
    assert all(len(set(b)) == 3 for b in flat)
    assert budget._batches(lengths, 99, 1, grouped=True, seed=0) == [order]


def test_budget_keys_are_checked_and_only_stamped_when_set(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert budget.time_budget_of(cfg, "both") == 0.0
    assert "train.time_budget_s" not in train_fingerprint(cfg, "both")["settings"]  # old stamps stay current
    cfg = tiny_cfg(tmp_path, "train.time_budget_s.both=600")
    assert budget.time_budget_of(cfg, "both") == 600 and budget.time_budget_of(cfg, "intention") == 0
    assert train_fingerprint(cfg, "both")["settings"]["train.time_budget_s"] == 600
    assert "train.time_budget_s" not in train_fingerprint(cfg, "intention")["settings"]
    with pytest.raises(ConfigError, match="unknown task type 'bothh'"):
        budget.time_budget_of(tiny_cfg(tmp_path, "train.time_budget_s.bothh=600"), "both")
    with pytest.raises(ConfigError, match=r"train\.time_budget_s\.both must be >= 0"):
        tiny_cfg(tmp_path, "train.time_budget_s.both=-1")


def test_measuring_leaves_the_weights_and_gradients_untouched(tmp_path):
    import torch

    from src.data import TaskCollator, TaskDataset
    from src.model import build_model

    cfg = tiny_cfg(tmp_path, "train.per_device_batch_size=4", "train.budget_calibration_batches=2")
    model, tok = build_model(cfg, FakeEncoder())
    ds = TaskDataset(mixed_records(12, 0), tok, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spt = budget.seconds_per_token(model, ds, TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len), cfg,
                                   torch.device("cpu"))
    assert 0 < spt < 1
    step_s = budget.seconds_per_step(model, cfg, torch.device("cpu"))
    assert 0 < step_s < 1
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert budget.seconds_per_step(model, tiny_cfg(tmp_path, "train.deepspeed=configs/deepspeed/zero2.json"),
                                   torch.device("cpu")) == 0  # not timed: ZeRO partitions the state


def _budget_cfg(tmp_path, seconds, *extra):
    over = ["train.max_train_samples=40", "train.per_device_batch_size=4", "train.save_steps=2", "train.eval_steps=100",
            "train.logging_steps=1", f"train.time_budget_s.behaviour={seconds}", *extra]
    cfg = tiny_cfg(tmp_path, *over)
    write_tasks(cfg, "behaviour", mixed_records(60, 0), mixed_records(4, 1))
    return cfg


def test_budget_sizes_the_run_records_it_and_a_resume_keeps_the_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "seconds_per_token", lambda *a, **k: 0.001)  # 1,000 tokens a second
    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 0.0)
    cfg = _budget_cfg(tmp_path, 0.5)  # 500 tokens
    enc = FakeEncoder()
    out = train(cfg, "behaviour", rec_encoder=enc, callbacks=[stop_at(2)])  # killed after step 2
    plan = read_json(out / budget.PLAN_FILE)
    assert plan["rows_planned"] == 40 and 8 < plan["rows_kept"] < 40 and plan["tokens_kept"] <= 500
    assert plan["tokens_per_s"] == 1000 and plan["estimated_s"] == pytest.approx(plan["tokens_kept"] / 1000, abs=0.1)

    # the re-run resumes from checkpoint-2 on the same rows: it does not measure again
    def no_measure(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(budget, "seconds_per_token", no_measure)
    monkeypatch.setattr(budget, "seconds_per_step", no_measure)
    (out / "meta.json").unlink(missing_ok=True)
    train(cfg, "behaviour", rec_encoder=enc)
    meta = read_json(out / "meta.json")
    assert meta["resumed_from"].endswith("checkpoint-2")
    assert meta["time_budget"] == plan and meta["n_train"] == plan["rows_kept"]
    assert sum(meta["task_counts"].values()) == plan["rows_kept"]
    assert meta["global_step"] == -(-plan["rows_kept"] // 4)  # the schedule ends where the kept rows end

    # --force measures afresh; a budget that fits everything keeps every row, one too small one step's worth
    monkeypatch.setattr(budget, "seconds_per_token", lambda *a, **k: 1e-9)
    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 0.0)
    train(cfg, "behaviour", rec_encoder=enc, force=True)
    assert read_json(out / "meta.json")["time_budget"]["rows_kept"] == 40
    small = _budget_cfg(tmp_path / "small", 0.001, "train.max_eval_samples=2")
    monkeypatch.setattr(budget, "seconds_per_token", lambda *a, **k: 1.0)
    meta = read_json(train(small, "behaviour", rec_encoder=enc) / "meta.json")
    assert meta["time_budget"]["rows_kept"] == 4 and meta["global_step"] == 1
