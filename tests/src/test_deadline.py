"""pipeline.time_limit_s: the training seconds each variant gets under run_all.sh's limit (src.deadline)."""

from __future__ import annotations

import pytest

import src.deadline as deadline
from core.config import ConfigError
from core.utils import StageError, write_json
from tests.fixtures_llm import tiny_cfg

START = 1_000_000


def _times(cfg, *rows, started=START):
    path = cfg.root / "logs" / deadline.STAGE_TIMES
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for stage, secs in rows:
            f.write(f"{started}\t{stage}\t{secs}\n")


def _limited(tmp_path, *sets):
    return tiny_cfg(tmp_path, "pipeline.time_limit_s=3600", "pipeline.time_shares.behaviour=1",
                    "pipeline.time_shares.intention=2", "pipeline.time_shares.both=5", *sets)


AFTER = ["align_behaviour", "align_intention", "align_both", "explain_behaviour", "explain_intention",
         "explain_both", "eval_explan", "disc_data", "disc_cls", "disc_reg", "report"]


def test_the_stages_after_training_are_predicted_from_the_base_models():
    times = deadline.StageTimes(current={}, longest={"align_none": 200.0, "explain_none": 40.0})
    seconds, why = deadline.predict_after(AFTER, times)
    # B/I/H Table 1, B/I/H explanations at 0.4 of it, the rest as one more (explain_none is not used)
    assert seconds == pytest.approx((3 * 1.25 + 3 * 0.4 + 1) * 200)
    assert "3 Table 1 stage(s) at 1.25 x 200 s" in why
    assert deadline.predict_after(["align_both"], times)[0] == 250  # `--only`-like lists: nothing else
    assert deadline.predict_after([], times)[0] == 0


def test_plan_seconds_by_hand():
    budget, why = deadline.plan_seconds(3600, 1000, 980, ["behaviour", "intention", "both"], "intention",
                                        {"behaviour": 1, "intention": 2, "both": 5}, overhead_s=100)
    # left 3600 - 1000 - 980 = 1620 s; intention's 2 of 8 shares = 405 s of stage, less 100 s
    assert budget == 305 and "1620 s for behaviour, intention, both" in why
    # the last variant gets all that is left; a share missing from the mapping counts 1
    budget, _ = deadline.plan_seconds(3600, 2000, 980, ["both"], "both", {}, 100)
    assert budget == 3600 - 2000 - 980 - 100
    # a limit already spent still trains a little (and warns)
    budget, _ = deadline.plan_seconds(3600, 3590, 980, ["both"], "both", {}, 100)
    assert budget == deadline.MIN_BUDGET_S
    with pytest.raises(ConfigError, match="pipeline.time_shares: unknown task type 'bothh'"):
        deadline.plan_seconds(3600, 0, 0, ["both"], "both", {"bothh": 1}, 0)


def test_stage_times_of_this_run_and_the_longest_of_any(tmp_path):
    cfg = tiny_cfg(tmp_path)
    _times(cfg, ("align_none", 200), ("train_behaviour", 500), started=START - 50)
    _times(cfg, ("align_none", 3), ("train_behaviour", 7))  # a re-run: its stages found their outputs
    t = deadline.read_stage_times(cfg.root / "logs" / deadline.STAGE_TIMES, START)
    assert t.current == {"align_none": 3.0, "train_behaviour": 7.0}
    assert t.longest["align_none"] == 200.0
    (cfg.root / "logs" / deadline.STAGE_TIMES).write_text("1\talign_none\n")
    with pytest.raises(StageError, match=r"stage_times\.tsv:1: expected 'run start<TAB>stage<TAB>seconds'"):
        deadline.read_stage_times(cfg.root / "logs" / deadline.STAGE_TIMES, START)


def test_deadline_budget_splits_what_is_left_and_learns_the_overhead(tmp_path):
    cfg = _limited(tmp_path)
    _times(cfg, ("align_none", 100), ("explain_none", 20))
    n_after = (3 * 1.25 + 3 * 0.4 + 1) * 100  # B/I/H Table 1 and explanations, the rest
    first = deadline.deadline_budget(cfg, "behaviour", START, START + 600, AFTER)
    assert first == round((3600 - 600 - n_after) * 1 / 8 - deadline.DEFAULT_OVERHEAD_S)
    # B trained under `first` seconds and its stage took 150 s more: I's estimate uses 150
    write_json(cfg.llm_dir / "behaviour" / "meta.json", {"done": True, "time_budget": {"time_budget_s": first}})
    _times(cfg, ("train_behaviour", first + 150))
    second = deadline.deadline_budget(cfg, "intention", START, START + 1000, AFTER)
    assert second == round((3600 - 1000 - n_after) * 2 / 7 - 150)


def test_a_planned_or_trained_variant_keeps_its_budget(tmp_path):
    cfg = _limited(tmp_path)
    _times(cfg, ("align_none", 100))
    out = cfg.llm_dir / "both"
    write_json(out / "budget.json", {"time_budget_s": 777})  # an interrupted stage: same plan on resume
    assert deadline.deadline_budget(cfg, "both", START, START + 3000, AFTER) == 777
    write_json(out / "meta.json", {"done": True, "time_budget": None})  # trained without a budget
    assert deadline.deadline_budget(cfg, "both", START, START + 3000, AFTER) == 0
    # --force retrains: a new plan from what is left now, shared with B and I (not trained yet)
    assert deadline.deadline_budget(cfg, "both", START, START + 1000, AFTER, force=True) == round(
        (3600 - 1000 - 5.95 * 100) * 5 / 8 - deadline.DEFAULT_OVERHEAD_S)


def test_no_budget_without_a_limit_or_with_an_explicit_one(tmp_path):
    assert deadline.deadline_budget(tiny_cfg(tmp_path, "pipeline.time_limit_s=0"), "both", START, START, AFTER) == 0
    cfg = _limited(tmp_path, "train.time_budget_s.both=123")
    assert deadline.deadline_budget(cfg, "both", START, START, AFTER) == 0  # src.train uses its own 123
    # `run_all.sh --only train_both` in a root where the base model never ran: no prediction
    assert deadline.deadline_budget(_limited(tmp_path), "intention", START, START, AFTER) == 0
    with pytest.raises(ConfigError, match="not in pipeline.train_types"):
        deadline.deadline_budget(_limited(tmp_path, "pipeline.train_types=[both]"), "intention", START, START, AFTER)
    with pytest.raises(ConfigError, match=r"pipeline\.time_limit_s must be >= 0"):
        tiny_cfg(tmp_path, "pipeline.time_limit_s=-5")


def test_main_prints_whole_seconds_or_nothing(tmp_path, capsys):
    cfg = _limited(tmp_path)
    _times(cfg, ("align_none", 100))
    conf = cfg.source_file
    sets = ["--set", f"paths.root={cfg.root}", "--set", "pipeline.time_limit_s=3600"]
    assert deadline.main(["--config", conf, *sets, "--task_type", "both", "--started", str(START),
                          "--after", " ".join(AFTER), "--nproc", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.isdigit() and int(printed) > 0
    assert deadline.main(["--config", conf, "--set", f"paths.root={cfg.root}", "--set", "pipeline.time_limit_s=0",
                          "--task_type", "both", "--started", str(START)]) == 0
    assert capsys.readouterr().out == ""
    (cfg.root / "logs" / deadline.STAGE_TIMES).write_text("garbled\n")
    assert deadline.main(["--config", conf, *sets, "--task_type", "both", "--started", str(START)]) == 2
    printed = capsys.readouterr()
    assert "stage_times.tsv:1: expected" in printed.err and printed.out == ""
