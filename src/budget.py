"""``train.time_budget_s``: train a variant on as many of its records as fit a wall-clock budget.

WHY: the same default recipe trains in 23 minutes on a 2-core machine with AMX and in 78 on
an AVX2-only one (tokens/s differ by 2-3x), so a fixed record count cannot promise a run
length. A budget in seconds can, if it is turned into records *before* training: the
learning-rate schedule then decays over the steps that will really run, and a resumed run
trains on the same records as its checkpoint. Stopping a run at a deadline instead (as
Lightning's ``max_time`` does) would cut the linear decay off at whatever learning rate it had
reached.

How: time forward+backward of real micro-batches of the training file
(``train.budget_calibration_batches``, after one warm-up) on the model about to be trained,
in the precision, checkpointing and batch grouping that the Trainer will use, and a few
optimizer updates; keep the longest prefix of the (seeded, shuffled) training rows whose
tokens and steps fit in what the measurement left of the budget. Not covered, and the log
says so: evaluation passes, learning-curve probes and checkpoints. The plan is written to
``budget.json`` beside the model and reused on a re-run.

Also here: how many records (``train_budget_of``) and seconds (``time_budget_of``) a variant's
settings give it, read by src.train, src.deadline and the tests alike.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from core.config import Config, ConfigError
from core.registry import TRAIN_TYPES
from core.utils import StageError, read_json, write_json

log = logging.getLogger(__name__)

PLAN_FILE = "budget.json"


def per_variant(per: dict[str, Any], key: str, task_type: str, default: float) -> float:
    """`per[task_type]` of a per-variant mapping (config key `key`), else `default`; a key that
    is not a variant is an error (a misspelt variant would silently get the default)."""
    unknown = sorted(set(per) - set(TRAIN_TYPES))
    if unknown:
        raise ConfigError(f"{key}: unknown task type '{unknown[0]}' (known: {', '.join(TRAIN_TYPES)})")
    return per.get(task_type, default)


def train_budget_of(cfg: Config, task_type: str) -> int:
    """Records one variant trains on: train.max_train_samples_per_type[task_type], else
    train.max_train_samples (0 = all)."""
    t = cfg.train
    return int(per_variant(t.max_train_samples_per_type, "train.max_train_samples_per_type", task_type,
                           t.max_train_samples))


def time_budget_of(cfg: Config, task_type: str) -> float:
    """Seconds of training for one variant (``train.time_budget_s[task_type]``; 0 = no budget: src.budget)."""
    return float(per_variant(cfg.train.time_budget_s, "train.time_budget_s", task_type, 0) or 0)


@dataclass
class BudgetPlan:
    """What the budget kept, and from which measured speed (written to budget.json and meta.json)."""

    time_budget_s: float
    seconds_per_token: float
    tokens_per_s: float
    rows_planned: int
    rows_kept: int
    tokens_kept: int
    epochs: float
    world_size: int
    estimated_s: float
    #: seconds of one optimizer update (0 in plans made before it was timed)
    step_s: float = 0.0


#: the Trainer's length grouping sorts random "megabatches" of this many batches
MEGABATCH = 50


def _batches(lengths: Sequence[int], size: int, n: int, grouped: bool, seed: int) -> list[list[int]]:
    """`n` micro-batches of row indices, drawn as the Trainer draws them (the padding, and so the
    cost per real token, depends on it): under length grouping one batch-sized window of a
    length-sorted random megabatch, as transformers' LengthGroupedSampler cuts them; else
    uniformly at random."""
    rng = random.Random(seed)
    size = min(size, len(lengths))
    out = []
    for _ in range(n):
        if not grouped:
            out.append(rng.sample(range(len(lengths)), size))
            continue
        mega = sorted(rng.sample(range(len(lengths)), min(len(lengths), MEGABATCH * size)), key=lengths.__getitem__)
        start = rng.randrange(len(mega) - size + 1)
        out.append(mega[start:start + size])
    return out


def seconds_per_token(model: Any, dataset: Any, collator: Any, cfg: Config, device: torch.device) -> float:
    """Wall seconds per (non-padding) training token of forward+backward on this machine.

    The gradients are thrown away: the weights the Trainer starts from are untouched.
    """
    rows = dataset.rows
    n = cfg.train.budget_calibration_batches
    picks = _batches([len(r["input_ids"]) for r in rows], cfg.train.per_device_batch_size, n + 1,
                     cfg.train.group_by_length, cfg.train.seed)
    if cfg.train.gradient_checkpointing:  # as the Trainer will run it (it enables this again, harmlessly)
        model.activation_checkpointing_enable()
    was_training = model.training
    model.train()
    seconds = tokens = 0.0
    try:
        for k, idx in enumerate(picks):
            batch = {key: v.to(device) for key, v in collator([rows[i] for i in idx]).items()}
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16 if cfg.train.bf16 else torch.float16,
                                enabled=cfg.train.bf16 or cfg.train.fp16):
                loss = model(**batch).loss
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:  # the first batch warms up kernels and allocators
                seconds += time.perf_counter() - t0
                tokens += float(batch["attention_mask"].sum())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return seconds / max(tokens, 1.0)


def seconds_per_step(model: Any, cfg: Config, device: torch.device, repeats: int = 3) -> float:
    """Wall seconds of one optimizer update (gradient clipping and an AdamW step over the
    trainable weights), which forward+backward does not include.

    WHY: with the embedding and LM head trained beside LoRA (``llm.lora.modules_to_save``) that
    is 30M weights for SmolLM2 (0.09 s a step on 2 AVX-512 cores: ~18 s over RecExplainer-H's
    ~200 steps), and with full fine-tuning every weight. Timed at learning rate 0 on zero
    gradients, so the weights stay exactly as they were; the optimizer state is thrown away. Not
    timed under DeepSpeed (ZeRO partitions that state, and a full copy of a 7B model's would
    not fit).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or cfg.train.deepspeed:
        return 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    seconds = 0.0
    try:
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:  # the first step allocates the optimizer state
                seconds += time.perf_counter() - t0
    finally:
        del opt
        model.zero_grad(set_to_none=True)
    return seconds / repeats


def rows_within(lengths: Sequence[int], seconds: float, token_s: float, step_s: float, rows_per_step: int,
                epochs: float, min_rows: int) -> int:
    """The longest prefix of rows whose tokens (`token_s` each) and optimizer steps (`step_s`
    each, one per `rows_per_step` rows), times `epochs` passes, stay within `seconds`; never
    fewer than `min_rows` (one optimizer step), never more than there are."""
    per_pass = seconds / max(epochs, 1e-9)
    tokens = kept = 0
    for n in lengths:
        if (tokens + n) * token_s + math.ceil((kept + 1) / rows_per_step) * step_s > per_pass:
            break
        tokens += n
        kept += 1
    return min(len(lengths), max(kept, min_rows))


def plan_budget(model: Any, dataset: Any, collator: Any, cfg: Config, budget_s: float, out_dir: Path,
                device: torch.device, world_size: int = 1, min_rows: int = 1) -> BudgetPlan:
    """Measure, size and record the plan; a plan already in `out_dir` for the same budget and
    training rows is reused (a resumed run must train on the rows its checkpoint saw)."""
    path = out_dir / PLAN_FILE
    n_rows = len(dataset)
    if path.is_file():
        try:
            old = BudgetPlan(**read_json(path))
        except (StageError, TypeError) as e:
            log.warning("%s cannot be read (%s); measuring again", path, e)
        else:
            if (old.time_budget_s, old.rows_planned, old.world_size) == (budget_s, n_rows, world_size):
                log.info("train.time_budget_s=%g: keeping the plan in %s (%d of %d rows)", budget_s, path,
                         old.rows_kept, n_rows)
                return old
    t0 = time.perf_counter()
    spt = seconds_per_token(model, dataset, collator, cfg, device)
    step_s = seconds_per_step(model, cfg, device)
    left = max(0.0, budget_s - (time.perf_counter() - t0))  # measuring was part of the budget
    lengths = [len(r["input_ids"]) for r in dataset.rows]
    # every process trains its share of the rows at the measured speed; min_rows is one
    # optimizer step's rows over all processes
    kept = rows_within(lengths, left, spt / world_size, step_s, min_rows, cfg.train.epochs, min_rows)
    tokens_kept = sum(lengths[:kept])
    steps = math.ceil(kept / min_rows) * cfg.train.epochs
    plan = BudgetPlan(
        time_budget_s=budget_s, seconds_per_token=spt, tokens_per_s=round(1.0 / spt, 2), rows_planned=n_rows,
        rows_kept=kept, tokens_kept=tokens_kept, epochs=cfg.train.epochs, world_size=world_size,
        estimated_s=round(tokens_kept * cfg.train.epochs * spt / world_size + steps * step_s, 1), step_s=step_s,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, asdict(plan))
    log.info("train.time_budget_s=%g: forward+backward measured at %.0f tokens/s per process, an optimizer step at "
             "%.2f s; training on %d of %d rows (%d tokens, ~%.0f s; evaluation, probes and checkpoints come on top)",
             budget_s, plan.tokens_per_s, step_s, kept, n_rows, tokens_kept, plan.estimated_s)
    return plan
