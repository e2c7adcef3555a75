"""The alignment learning curve: a fixed probe set evaluated while the LLM trains.

``train.probe_points = P`` evaluates, at step 0 and at P evenly spaced steps, task 1
(HR@5/NDCG@5 of the beams against the recommender's top-1) and task 3 (Yes/No accuracy)
on a seeded sample of the evaluation file (``train.probe_samples`` records per mode),
with exactly the decoding of Table 1 (src.generation). One row per probe point goes to
``llm/<T>/probe.jsonl`` with the training tokens seen so far; src.report draws
``tables/alignment_curve.png`` from those rows.

WHY: a single Table 1 number cannot say whether a CPU-sized run stopped early on a rising
curve or on a plateau; the curve shows how alignment grows with budget, and so what a
longer run or a GPU buys. The probe records are drawn from the evaluation file, so probe
figures are not independent of Table 1's; they are never used to pick a checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from core.config import Config, ConfigError
from src.data import subsample
from core.metrics import MODE_METRICS, compute_metrics
from core.registry import LIST_MODES, PROBE_MODES
from core.utils import JsonlAppender

log = logging.getLogger(__name__)

PROBE_FILE = "probe.jsonl"
#: modes a probe can measure (generation with beams, or Yes/No scoring)


def probe_records(cfg: Config, records: list[dict]) -> dict[str, list[dict]]:
    """Seeded sample of each probed mode's records (the same whatever the run's state)."""
    out: dict[str, list[dict]] = {}
    unknown = sorted(set(cfg.train.probe_samples) - set(PROBE_MODES))
    if unknown:
        raise ConfigError(f"train.probe_samples: unknown mode {unknown[0]!r} (known: {', '.join(PROBE_MODES)})")
    for mode, n in cfg.train.probe_samples.items():
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"train.probe_samples.{mode} must be a non-negative integer, got {n!r}")
        pool = [r for r in records if r.get("type") == mode]
        if n and pool:
            out[mode] = subsample(pool, n, f"{cfg.train.seed}:probe:{mode}")
    return out


def probe_steps(max_steps: int, points: int) -> list[int]:
    """Step 0 plus `points` evenly spaced steps ending at the last one."""
    if points <= 0 or max_steps <= 0:
        return []
    return sorted({0, *(max(1, round(k * max_steps / points)) for k in range(1, points + 1))})


def run_probe(model: Any, tokenizer: Any, cfg: Config, records: dict[str, list[dict]]) -> dict[str, dict]:
    """Table 1 metrics of each probed mode, computed with the Table 1 decoding."""
    from src.generation import generate_texts, score_yes_no

    import contextlib

    was_training = model.training
    model.eval()
    out: dict[str, dict] = {}
    # under bf16 autocast training (float32 master weights) the probe computes like training
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.train.bf16 and not torch.cuda.is_available() \
        else contextlib.nullcontext()
    try:
        with torch.no_grad(), amp:
            for mode, recs in records.items():
                if mode == "uidiid2binary":
                    preds = score_yes_no(model, tokenizer, recs, cfg, desc="probe yes/no")
                    rows = [{"answer": r["answer"], **p} for r, p in zip(recs, preds)]
                else:
                    beams = cfg.eval.num_beams if mode == "uid2next" else 1
                    max_new = cfg.eval.max_new_tokens_list if mode in LIST_MODES else cfg.eval.max_new_tokens
                    gens = generate_texts(model, tokenizer, recs, cfg, max_new_tokens=max_new, num_beams=beams,
                                          num_return_sequences=beams, desc=f"probe {mode}")
                    rows = [{"answer": r["answer"], "generations": g} for r, g in zip(recs, gens)]
                out[mode] = compute_metrics(mode, rows)
    finally:
        model.train(was_training)
    return out


def probe_callback(cfg: Config, tokenizer: Any, records: dict[str, list[dict]], out_dir: Path) -> Any:
    """A TrainerCallback that appends one probe row per probe step to out_dir/probe.jsonl."""
    from transformers import TrainerCallback

    path = out_dir / PROBE_FILE

    class ProbeCallback(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def _probe(self, state: Any, model: Any) -> None:
            if not state.is_world_process_zero or state.global_step not in self.steps:
                return
            with JsonlAppender(path, key="step") as app:
                if state.global_step in app.done:  # replayed after a resume
                    return
                t0 = time.time()
                metrics = run_probe(model, tokenizer, cfg, records)
                row = {"step": state.global_step, "tokens": int(state.num_input_tokens_seen or 0),
                       "probe_s": round(time.time() - t0, 1), **metrics}
                app.append(row)
            log.info("probe at step %d (%d tokens): %s", state.global_step, row["tokens"],
                     {m: {k: round(v, 3) for k, v in d.items() if k in MODE_METRICS[m]} for m, d in metrics.items()})

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.steps = probe_steps(state.max_steps, cfg.train.probe_points)
            if model is not None:
                self._probe(state, model)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if model is not None:
                self._probe(state, model)

    return ProbeCallback()
