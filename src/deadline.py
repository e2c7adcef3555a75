"""``pipeline.time_limit_s``: size each training stage of `shell/run_all.sh` to what the run's
wall-clock limit leaves, measured on the machine at hand.

WHY: the CPU recipe's record counts fit an hour on a 2-core machine with AMX and take 1 h 42
min on one with AVX-512-BF16 only (tokens/s differ ~1.7x, and the other stages ~1.7x too), so
no fixed record count keeps the promise of an hour. `train.time_budget_s` turns seconds into
records (src.budget); this module chooses those seconds, just before each variant trains, from

* what is left of the limit: ``time_limit_s`` less the time since run_all.sh started;
* the time the stages after training will take, predicted from this machine's own runs of the
  base model, which run_all.sh schedules before training for that reason: each aligned
  model's Table 1 stage ~1.25x the base model's (ALIGN_FACTOR), its explanations 0.4x of
  that base stage (EXPLAIN_FACTOR), and the explanation scoring, discriminators and report
  together about one base Table 1 stage (measured on an AVX-512-BF16 machine: 173 and 226 s
  against 205 and 216; with AMX 100 against 83);
* the time a training stage spends outside its budget (loading, pre-alignment, probes,
  saving), taken from the variants already trained in this run (90 s before the first);
* ``pipeline.time_shares``: the variants still to train split what is left in these
  proportions, so that an error in one stage's estimate is absorbed by the stages after it.

A variant that already has a plan (``llm/<T>/budget.json``, an interrupted stage) or a finished
model keeps the budget it was trained under, so that a re-run finds its model current. An
explicit ``train.time_budget_s.<T>`` wins. Stage times are appended by run_all.sh to
``<root>/logs/stage_times.tsv`` (run start, stage, seconds), one line per stage and run.

Printed: the budget in whole seconds, or nothing when there is none.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.utils import StageError, read_json
from src.budget import PLAN_FILE, per_variant, time_budget_of

log = logging.getLogger(__name__)

STAGE_TIMES = "stage_times.tsv"
#: an aligned model's Table 1 stage against the base model's: 0.6-1.1 for the record budget's
#: models (221 / 125 / 205 s against 205), 0.8-1.5 for ones the limit cut short (B / I / H 298 /
#: 180 / 322 s against 216: a barely trained model writes to the token limit); the mean of those
ALIGN_FACTOR = 1.25
#: an aligned model's explanation stage against the base model's *Table 1* stage: 0.29-0.34 in three
#: runs on an AVX-512-BF16 machine (61-78 s against 208-231 s). Not against the base model's
#: explanation stage: that one is short enough for the machine's moods to swing it (44-84 s
#: between runs for the same prompts), and 1.5x of it over-predicted the three stages by 170 s
#: in one run, time the limit took from training
EXPLAIN_FACTOR = 0.4
#: explanation scoring + discriminators + report, in base-model Table 1 stages (0.84 / 1.2 measured)
TAIL_FACTOR = 1.0
#: seconds a training stage spends outside its budget, before one has been measured in the run
DEFAULT_OVERHEAD_S = 90.0
#: never plan fewer seconds than this for a variant (one that gets them overruns the limit, and says so)
MIN_BUDGET_S = 60.0


@dataclass
class StageTimes:
    """Seconds per stage: `current` of this run_all.sh run, `longest` over every recorded run
    (a stage that found its outputs and skipped them took seconds; its real run is the longest)."""

    current: dict[str, float]
    longest: dict[str, float]


def read_stage_times(path: Path, started: int) -> StageTimes:
    current: dict[str, float] = {}
    longest: dict[str, float] = {}
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split("\t")
            try:
                run, stage, secs = int(parts[0]), parts[1], float(parts[2])
            except (IndexError, ValueError):
                raise StageError(f"{path}:{n}: expected 'run start<TAB>stage<TAB>seconds', got {line!r}") from None
            if run == started:
                current[stage] = secs
            longest[stage] = max(secs, longest.get(stage, 0.0))
    return StageTimes(current, longest)


def _meta(out: Path) -> dict | None:
    """A finished model's meta.json, else None."""
    path = out / "meta.json"
    meta = read_json(path, "trained model metadata") if path.is_file() else {}
    return meta if meta.get("done") else None


def _recorded_budget(out: Path) -> float | None:
    """The budget a variant was trained (or is being trained) under, if any."""
    meta = _meta(out)
    if meta is not None:
        return float((meta.get("time_budget") or {}).get("time_budget_s") or 0)
    plan = out / PLAN_FILE
    if plan.is_file():
        return float(read_json(plan, "training budget plan").get("time_budget_s") or 0)
    return None


def predict_after(after: list[str], times: StageTimes) -> tuple[float, str]:
    """Seconds that the stages named in `after` (those run_all.sh runs after training) will
    take, predicted from the base model's stages; and the sum written out, for the log."""
    base_t1 = times.longest["align_none"]
    n_align = sum(1 for name in after if name.startswith("align_"))
    n_explain = sum(1 for name in after if name.startswith("explain_"))
    rest = TAIL_FACTOR if len(after) > n_align + n_explain else 0.0
    seconds = (n_align * ALIGN_FACTOR + n_explain * EXPLAIN_FACTOR + rest) * base_t1
    return seconds, (f"{n_align} Table 1 stage(s) at {ALIGN_FACTOR:g} x {base_t1:.0f} s, {n_explain} explanation "
                     f"stage(s) at {EXPLAIN_FACTOR:g} x {base_t1:.0f} s, the rest {rest:g} x {base_t1:.0f} s")


def plan_seconds(limit_s: float, elapsed_s: float, after_s: float, pending: list[str], task_type: str,
                 shares: dict[str, float], overhead_s: float) -> tuple[float, str]:
    """The budget for `task_type` (one of `pending`, the variants not trained yet) and how it
    was reached, for the log."""
    left = limit_s - elapsed_s - after_s
    weight = {t: float(per_variant(shares, "pipeline.time_shares", t, 1.0)) for t in pending}
    stage_s = left * weight[task_type] / sum(weight.values())
    budget = stage_s - overhead_s
    why = (f"{limit_s:.0f} s limit - {elapsed_s:.0f} s elapsed - {after_s:.0f} s predicted after training = "
           f"{left:.0f} s for {', '.join(pending)}; {task_type}'s share {stage_s:.0f} s less {overhead_s:.0f} s "
           "outside the budget")
    if budget < MIN_BUDGET_S:
        log.warning("pipeline.time_limit_s: only %.0f s left for %s (%s); training %.0f s, so the run will take "
                    "longer than its limit", budget, task_type, why, MIN_BUDGET_S)
        budget = MIN_BUDGET_S
    return float(round(budget)), why  # whole seconds: the value is stamped and passed back by --set


def overhead_of(cfg: Config, times: StageTimes) -> float:
    """Seconds outside the budget, as the variants trained under a plan in this run spent them."""
    seen = []
    for t in cfg.pipeline.train_types:
        wall = times.current.get(f"train_{t}")
        planned = _recorded_budget(cfg.llm_dir / t)
        if wall and planned and wall > planned / 2:  # less: its stage found the model and skipped
            seen.append(max(0.0, wall - planned))
    return sum(seen) / len(seen) if seen else DEFAULT_OVERHEAD_S


def deadline_budget(cfg: Config, task_type: str, started: int, now: float, after: list[str],
                    force: bool = False) -> float:
    """Seconds of ``train.time_budget_s`` for `task_type` under ``pipeline.time_limit_s`` (0: none);
    `after` names the stages that run_all.sh runs after the training stages."""
    limit = cfg.pipeline.time_limit_s
    if limit <= 0:
        return 0.0
    if time_budget_of(cfg, task_type) > 0:
        log.info("train.time_budget_s.%s is set; pipeline.time_limit_s leaves it as it is", task_type)
        return 0.0
    if not force:
        kept = _recorded_budget(cfg.llm_dir / task_type)
        if kept is not None:
            log.info("%s keeps the budget it was planned under: %.0f s", task_type, kept)
            return kept
    trained = cfg.pipeline.train_types
    if task_type not in trained:
        raise ConfigError(f"--task_type {task_type} is not in pipeline.train_types {trained}")
    times = read_stage_times(cfg.root / "logs" / STAGE_TIMES, started)
    if not times.longest.get("align_none"):
        log.warning("pipeline.time_limit_s: no time recorded in %s for stage align_none (the base model's Table 1, "
                    "which run_all.sh runs before training), so the stages after training cannot be predicted: "
                    "%s trains every record of its budget", cfg.root / "logs" / STAGE_TIMES, task_type)
        return 0.0
    pending = [t for t in trained if t == task_type or _meta(cfg.llm_dir / t) is None]
    after_s, after_why = predict_after(after, times)
    budget, why = plan_seconds(limit, now - started, after_s, pending, task_type, cfg.pipeline.time_shares,
                               overhead_of(cfg, times))
    log.info("pipeline.time_limit_s: %s (after training: %s): %.0f s of training for %s", why, after_why, budget,
             task_type)
    return budget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--task_type", required=True)
    parser.add_argument("--started", type=int, required=True, help="run_all.sh's start, in seconds since the epoch")
    parser.add_argument("--after", default="", help="the stages run_all.sh runs after training, space-separated")
    args, _ = parser.parse_known_args(argv)  # train.sh's own flags (--nproc) pass through
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[deadline] %(message)s")
    try:
        seconds = deadline_budget(config_from_args(args), args.task_type, args.started, time.time(), args.after.split(),
                                  args.force)
    except (ConfigError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if seconds > 0:  # as stamped: a re-run must pass back the very value its model was made under
        print(int(seconds) if float(seconds).is_integer() else repr(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
