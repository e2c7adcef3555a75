"""Align the LLM to the recommender: ``python -m src.train --config X --task_type T [--force]``.

Reads tasks/<T>_train.json and <T>_valid.json (T = behaviour | intention | both), trains
LoRA (or the full model, ``llm.lora.enabled=false``) plus the two projectors with the HF
``Trainer`` and writes cfg.llm_dir/<T>/: adapter/ or model/, projectors.pt, tokenizer/,
train_log.jsonl (one row per logging/eval step), meta.json (done marker + numbers) and, under
``train.time_budget_s``, budget.json (the measured speed and the records kept: src.budget).
Checkpoints under <T>/checkpoints/ hold only the trainable weights plus optimizer state;
a killed run resumes from the newest complete one (a damaged one is set aside with a
warning: see _last_checkpoint). The same entry point runs on CPU, one GPU, or
many GPUs under ``accelerate launch`` with ``train.deepspeed=configs/deepspeed/zero2.json``
(see shell/train.sh).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.stamps import current, fingerprint, write_stamp
from src.budget import PLAN_FILE as BUDGET_FILE, plan_budget, time_budget_of, train_budget_of
from src.data import TaskCollator, TaskDataset, filter_task_types, load_task_records, mix_tasks, subsample
from src.model import (
    META_FILE,
    STAMP_FILE,
    PROJECTORS_FILE,
    TASK_TYPES,
    RecEncoder,
    RecExplainer,
    _load_encoder,
    build_model,
    save_trained,
    saved_model_problem,
)
from core.utils import JsonlAppender, StageError, read_json, run_stage, set_seed, weight_file_problem, write_json

log = logging.getLogger("src.train")


def _trainer_classes() -> tuple[type, type]:
    """Trainer subclass + log callback (built lazily: importing Trainer is slow)."""
    from transformers import Trainer, TrainerCallback

    class RecTrainer(Trainer):
        """Trainer whose checkpoints hold only what trains (adapter/weights + projectors).

        ``projector_lr`` (set after construction; 0 = the Trainer's lr) gives the
        projectors their own learning rate (ignored under a DeepSpeed optimizer).

        WHY: the wrapper is not a PreTrainedModel, so the stock Trainer would write the
        whole base model (13 GB for Vicuna-7B) into every checkpoint.
        """

        projector_lr: float = 0.0

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return
            model = self.accelerator.unwrap_model(self.model)
            os.makedirs(output_dir, exist_ok=True)
            save_trained(model, self.processing_class, output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

        def create_optimizer(self, model: Any = None) -> Any:
            """The stock optimizer, with the projectors in their own group at train.projector_lr."""
            proj_lr = self.projector_lr
            if self.optimizer is not None or not proj_lr or self.is_deepspeed_enabled:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            proj, rest = [], []
            for name, p in opt_model.named_parameters():
                if p.requires_grad:
                    (proj if name.startswith(("user_proj.", "item_proj.")) else rest).append(p)
            groups = [g for g in ({"params": rest, "lr": self.args.learning_rate, "weight_decay": self.args.weight_decay},
                                  {"params": proj, "lr": proj_lr, "weight_decay": self.args.weight_decay}) if g["params"]]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            load_checkpoint_weights(model or self.model, Path(resume_from_checkpoint))

    class JsonlLogCallback(TrainerCallback):
        """Append each Trainer log (train loss, eval loss) to train_log.jsonl.

        Rows are keyed by step and kind, so steps replayed after a resume are not doubled.
        """

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            kind = "eval" if any(k.startswith("eval_") for k in logs) else ("summary" if "train_loss" in logs else "train")
            row = {"key": f"{state.global_step}:{kind}", "step": state.global_step, "kind": kind, **logs}
            with JsonlAppender(self.path, key="key") as app:
                if row["key"] not in app.done:
                    app.append(row)

    return RecTrainer, JsonlLogCallback


def load_checkpoint_weights(model: RecExplainer, ckpt: Path) -> None:
    """Restore trainable weights written by RecTrainer._save into `model`."""
    from safetensors.torch import load_file

    if (ckpt / "adapter").is_dir():
        from peft import set_peft_model_state_dict

        f = ckpt / "adapter" / "adapter_model.safetensors"
        if not f.is_file():
            raise StageError(f"{ckpt}: checkpoint has no adapter weights at {f}")
        set_peft_model_state_dict(model.lm, load_file(str(f)))
    elif (ckpt / "model").is_dir():
        from transformers import AutoModelForCausalLM

        src = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=model.lm.dtype)
        model.lm.load_state_dict(src.state_dict())
    else:
        raise StageError(f"{ckpt}: not a checkpoint of src.train (no adapter/ or model/)")
    model.load_projector_state(torch.load(ckpt / PROJECTORS_FILE, map_location="cpu", weights_only=True), str(ckpt))


def training_arguments(cfg: Config, output_dir: Path, has_eval: bool, **extra: Any) -> Any:
    """TrainingArguments from cfg.train (one place, so tests and the bench agree)."""
    from transformers import TrainingArguments

    t = cfg.train
    if t.bf16 and t.fp16:
        raise ConfigError("train.bf16 and train.fp16 cannot both be true")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=0.0,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        bf16=t.bf16,
        fp16=t.fp16,
        activation_checkpointing=t.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        remove_unused_columns=False,
        prediction_loss_only=True,
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),
        optim="adamw_torch",
        # without a GPU: say so, which is what lets bf16 autocast (and gloo) run on a CPU
        use_cpu=not torch.cuda.is_available(),
        # Under N processes (DDP): the projectors (and, in batches without markers, one of
        # them) take no part in some forwards - the behaviour variant never feeds them - so
        # DDP must look for unused parameters or it stops with "Expected to have finished
        # reduction". Non-reentrant activation checkpointing (RecExplainer) allows it.
        ddp_find_unused_parameters=True,
        # rank 0 runs the learning-curve probes (src.probe) alone while the others wait in
        # the next collective; a probe of a real model takes minutes, so allow hours
        ddp_timeout=4 * 3600,
    )
    if t.deepspeed:
        ds = cfg.resolve(t.deepspeed)
        if not ds.is_file():
            raise ConfigError(f"train.deepspeed: no DeepSpeed config at {ds}")
        kwargs["deepspeed"] = str(ds)
    kwargs.update(trainer_passthrough(t.trainer_args))
    kwargs.update(extra)
    return TrainingArguments(**kwargs)


#: TrainingArguments set from a train.* key, and which key (a pass-through may not set them twice)
_MAPPED = {"num_train_epochs": "epochs", "learning_rate": "lr", "warmup_steps": "warmup_ratio",
           "per_device_train_batch_size": "per_device_batch_size", "per_device_eval_batch_size": "per_device_batch_size",
           "gradient_accumulation_steps": "grad_accum", "logging_steps": "logging_steps", "eval_steps": "eval_steps",
           "save_steps": "save_steps", "bf16": "bf16", "fp16": "fp16", "activation_checkpointing": "gradient_checkpointing",
           "train_sampling_strategy": "group_by_length", "seed": "seed", "data_seed": "seed", "deepspeed": "deepspeed"}


def trainer_passthrough(args: dict[str, Any]) -> dict[str, Any]:
    """``train.trainer_args`` checked against the fields of TrainingArguments.

    WHY: a Trainer option a researcher wants (weight decay, a cosine schedule, gradient
    clipping, torch.compile) should not need a code change in two files; a misspelt one
    must not be dropped silently, and one that a train.* key already sets must have one
    source, not two. Our other defaults (weight_decay 0, linear schedule, adamw_torch,
    save_total_limit 2, ...) may be overridden.
    """
    import dataclasses
    import difflib

    from transformers import TrainingArguments

    if not isinstance(args, dict):
        raise ConfigError(f"train.trainer_args must be a mapping of TrainingArguments fields, got {args!r}")
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for name in args:
        if name not in fields:
            close = difflib.get_close_matches(str(name), sorted(fields), n=3)
            raise ConfigError(f"train.trainer_args.{name} is not a field of transformers.TrainingArguments"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if name in _MAPPED:
            raise ConfigError(f"train.trainer_args.{name}: set train.{_MAPPED[name]} instead (it sets {name})")
        if name in _STRUCTURAL:
            raise ConfigError(f"train.trainer_args.{name} is set by src.train itself (the trainer depends on it) "
                              "and cannot be passed through")
    return dict(args)


#: TrainingArguments the RecExplainer trainer relies on: not overridable
_STRUCTURAL = frozenset({"output_dir", "remove_unused_columns", "prediction_loss_only", "include_num_input_tokens_seen",
                         "eval_strategy", "save_strategy", "ddp_find_unused_parameters"})


def task_mix_of(cfg: Config, task_type: str) -> dict[str, float]:
    """train.task_mix for one training file: a flat mix, or ``{behaviour: {...}, both: {...}}``."""
    mix = cfg.train.task_mix
    nested = {k: v for k, v in mix.items() if k in TASK_TYPES}
    if nested:
        if len(nested) != len(mix) or not all(isinstance(v, dict) for v in nested.values()):
            raise ConfigError("train.task_mix: either record types with weights, or one mapping per task type "
                              f"({', '.join(TASK_TYPES)}), not both")
        return dict(nested.get(task_type, {}))
    return dict(mix)


def resolve_training_dtype(cfg: Config) -> Config:
    """``llm.torch_dtype: auto`` for training: bf16 compute only where it is measured faster.

    With LoRA the frozen base weights may simply be stored in bf16 (the adapter and the
    projectors stay float32). Full fine-tuning must keep float32 master weights, or small
    updates vanish in bf16 rounding; there "bf16" means float32 weights under bf16
    autocast (``train.bf16``). Returns a copy of `cfg` with the choice made explicit.
    """
    if cfg.llm.torch_dtype != "auto":
        return cfg
    import copy

    from src.model import base_model_path
    from src.precision import pick_dtype

    cfg = copy.deepcopy(cfg)
    choice = pick_dtype(base_model_path(cfg))
    if cfg.llm.lora.enabled:
        cfg.llm.torch_dtype = choice
    else:
        cfg.llm.torch_dtype = "float32"
        cfg.train.bf16 = cfg.train.bf16 or choice == "bfloat16"
    log.info("llm.torch_dtype=auto: training with %s weights%s", cfg.llm.torch_dtype,
             " under bf16 autocast" if cfg.train.bf16 else "")
    return cfg


#: the settings that `resolve_training_dtype` turns from ``auto`` into the measured choice
_DTYPE_KEYS = ("llm.torch_dtype", "train.bf16")


def _as_stamped(stamp_path: Path, fp: dict[str, Any]) -> dict[str, Any]:
    """`fp`, or the stamp itself where it differs from `fp` only by holding the dtype that
    ``auto`` resolved to (stamps written before the stamp kept ``auto``): the same settings,
    so the model is current. The stamp stays as it is: the evaluation stages fingerprint its
    bytes as the model's identity, and rewriting it would make their outputs stale."""
    if fp["settings"].get("llm.torch_dtype") != "auto" or not stamp_path.is_file():
        return fp
    try:
        old = read_json(stamp_path)
    except StageError:
        return fp  # current() reports it
    settings = old.get("settings") if isinstance(old, dict) else None
    if not isinstance(settings, dict) or settings.get("llm.torch_dtype") not in ("float32", "bfloat16"):
        return fp
    same = {**old, "settings": {**settings, **{k: fp["settings"].get(k) for k in _DTYPE_KEYS}}} == fp
    return old if same else fp


#: where a damaged checkpoint is moved (the Trainer's rotation only sees ``checkpoint-*``)
INCOMPLETE_PREFIX = "incomplete-"


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why Trainer checkpoint `ckpt` cannot be resumed from (None = complete).

    The Trainer writes, in order: the weights (RecTrainer._save: adapter/ or model/,
    projectors.pt, tokenizer/, training_args.bin), optimizer.pt + scheduler.pt (DeepSpeed:
    global_step*/), rng_state*.pth, and trainer_state.json last, so a save killed midway
    lacks trainer_state.json. Every file is still checked at header level, since a full
    disk or a copy can also cut one short.
    """
    state = ckpt / "trainer_state.json"
    problem = weight_file_problem(state)
    if problem is None and not isinstance(read_json(state), dict):
        problem = "not a JSON object"
    if problem:
        return f"{state}: {problem}"
    problem = saved_model_problem(ckpt)
    if problem:
        return problem
    deepspeed = any(p.is_dir() for p in ckpt.glob("global_step*"))
    required = [] if deepspeed else [ckpt / "optimizer.pt", ckpt / "scheduler.pt"]
    present = sorted(f for f in ckpt.iterdir() if f.is_file() and f.suffix in (".pt", ".pth", ".bin"))
    for f in [*required, *(f for f in present if f not in required)]:
        problem = weight_file_problem(f)
        if problem:
            return f"{f}: {problem}"
    return None


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest *complete* checkpoint under `ckpt_dir`, or None (train from scratch).

    WHY: resuming the newest one blindly made a kill during a checkpoint save fail every
    later re-run, although the previous checkpoint was intact. A damaged one is logged
    (WARNING, naming the bad file) and, on the main process, moved aside to
    ``incomplete-checkpoint-N`` so that the Trainer writes step N afresh instead of into
    the leftovers (and its rotation never counts it).
    """
    if not ckpt_dir.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p) for p in ckpt_dir.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    main_process = os.environ.get("RANK", "0") == "0"
    for _, ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        aside = ckpt.with_name(INCOMPLETE_PREFIX + ckpt.name)
        log.warning("checkpoint %s is incomplete or damaged (%s); falling back to an older one%s", ckpt, problem,
                    f" (moved to {aside})" if main_process else "")
        if main_process:
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(ckpt, aside)
    if found:
        log.warning("no complete checkpoint under %s; training starts from scratch", ckpt_dir)
    return None


#: train.* keys that change how a run is logged, checkpointed or launched, not what it learns
_NOT_LEARNING = ("train.eval_steps", "train.save_steps", "train.logging_steps", "train.probe_points",
                 "train.probe_samples", "train.max_eval_samples", "train.gradient_checkpointing", "train.deepspeed",
                 "train.budget_calibration_batches")
#: settings stamped as their value for the variant at hand (train_fingerprint)
_PER_VARIANT = ("train.task_mix", "train.max_train_samples", "train.max_train_samples_per_type",
                "train.time_budget_s")


def train_fingerprint(cfg: Config, task_type: str, zero_projectors: bool = False,
                      max_steps: int | None = None) -> dict[str, Any]:
    """What a trained model depends on: the LLM and training settings, its task file and the
    recommender whose vectors it reads."""
    fp = fingerprint(cfg, ["llm", "train"], [cfg.tasks_dir / f"{task_type}_train.json", cfg.recmodel_dir / "model.pt"],
                     exclude=_NOT_LEARNING + _PER_VARIANT, base=cfg.root)
    # this variant's own mix and budget, so that retuning one variant leaves the other two
    # current (for a flat mix and one budget the stamp is what it was before the per-variant keys)
    fp["settings"].update({"train.task_mix": task_mix_of(cfg, task_type),
                           "train.max_train_samples": train_budget_of(cfg, task_type)},
                          zero_projectors=zero_projectors, max_steps=max_steps)
    budget_s = time_budget_of(cfg, task_type)
    if budget_s:  # only when set: stamps of unbudgeted models stay what they were
        fp["settings"]["train.time_budget_s"] = budget_s
    return fp


def train(
    cfg: Config,
    task_type: str,
    force: bool = False,
    rec_encoder: RecEncoder | None = None,
    max_steps: int | None = None,
    callbacks: list[Any] | None = None,
    zero_projectors: bool = False,
    out_dir: str | Path | None = None,
) -> Path:
    """Train one task_type; returns the output directory. Skips if already done.

    `zero_projectors` is the "injection off" ablation: both projectors output exactly
    zero and stay frozen, so the LLM gets no information from the recommender vectors.
    `out_dir` replaces the default cfg.llm_dir/<task_type>/ (the Figure 7 variants of
    src.ablation); ``train.exclude_tasks`` drops record types from both files first.
    """
    if task_type not in TASK_TYPES:
        raise ConfigError(f"--task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    out = Path(out_dir) if out_dir else cfg.llm_dir / task_type
    meta_path = out / META_FILE
    # taken before `llm.torch_dtype: auto` is resolved below: the stamp holds the settings as
    # the config states them, so that a re-run compares like with like (meta.json has the dtype used)
    fp = train_fingerprint(cfg, task_type, zero_projectors, max_steps)
    if meta_path.is_file() and read_json(meta_path).get("done") and not force and current(
            out / STAMP_FILE, _as_stamped(out / STAMP_FILE, fp), f"the {task_type} model in {out}"):
        log.info("%s already trained (%s); use --force to redo", task_type, meta_path)
        return out
    set_seed(cfg.train.seed)

    train_path = cfg.tasks_dir / f"{task_type}_train.json"
    valid_path = cfg.tasks_dir / f"{task_type}_valid.json"
    exclude = cfg.train.exclude_tasks
    all_train = filter_task_types(load_task_records(train_path), exclude, train_path)
    train_recs = mix_tasks(all_train, task_mix_of(cfg, task_type), train_budget_of(cfg, task_type), cfg.train.seed,
                           train_path)
    valid_recs = []
    if valid_path.is_file():
        valid_recs = filter_task_types(load_task_records(valid_path), exclude, valid_path, strict=False)
        valid_recs = subsample(valid_recs, cfg.train.max_eval_samples, cfg.train.seed)
    else:
        log.warning("no %s; training without evaluation", valid_path)

    if cfg.train.loss_weighting not in ("token", "record"):
        raise ConfigError(f"train.loss_weighting must be 'token' or 'record', got {cfg.train.loss_weighting!r}")
    cfg = resolve_training_dtype(cfg)
    enc = rec_encoder if rec_encoder is not None else _load_encoder(cfg, "cpu", required=True)
    model, tokenizer = build_model(cfg, enc)
    model.set_loss_weighting(cfg.train.loss_weighting)
    if zero_projectors:
        for proj in (model.user_proj, model.item_proj):
            proj.zero_().requires_grad_(False)
    elif cfg.train.prealign_steps > 0:
        from src.prealign import prealign_projectors

        prealign_projectors(model, tokenizer, cfg, all_train)  # pairs are free: every record, not the sample
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %d trainable parameters (LoRA=%s)", task_type, n_train, cfg.llm.lora.enabled)
    train_ds = TaskDataset(train_recs, tokenizer, cfg, desc=f"{task_type}_train")
    eval_ds = TaskDataset(valid_recs, tokenizer, cfg, desc=f"{task_type}_valid") if valid_recs else None
    collator = TaskCollator(tokenizer.pad_token_id, cfg.recmodel.max_seq_len,
                            pad_to_multiple_of=8 if torch.cuda.is_available() else None)

    ckpt_dir = out / "checkpoints"
    extra = {"max_steps": max_steps} if max_steps else {}
    args = training_arguments(cfg, ckpt_dir, has_eval=eval_ds is not None, **extra)
    world = max(1, args.world_size)
    effective = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    if args.process_index == 0:
        log.info("effective batch %d = %d per device x %d process(es) x %d accumulation steps (%s)", effective,
                 args.per_device_train_batch_size, world, args.gradient_accumulation_steps, args.parallel_mode.value)
    if force:
        # only now: the config, the task files, the base model and the recommender all
        # loaded, so a bad setting under --force cannot cost the model that is there.
        # Under N processes rank 0 deletes while the others wait (no two rmtree races).
        with args.main_process_first(local=False, desc="--force cleanup"):
            if args.process_index == 0:
                for p in (meta_path, ckpt_dir, out / "train_log.jsonl", out / BUDGET_FILE):
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
    budget_s = time_budget_of(cfg, task_type)
    plan = None
    if budget_s > 0:  # rank 0 measures and writes the plan; the others then read it
        with args.main_process_first(local=False, desc="train.time_budget_s"):
            plan = plan_budget(model.to(args.device), train_ds, collator, cfg, budget_s, out, args.device, world,
                               min_rows=effective)
        train_ds.keep_first(plan.rows_kept)
        train_recs = [train_recs[i] for i in train_ds.record_index]
    model.touch_unused_projectors = bool(args.deepspeed)  # ZeRO-2: same gradients on every rank
    RecTrainer, JsonlLogCallback = _trainer_classes()
    log_path = out / "train_log.jsonl"
    trainer = RecTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(log_path), *(callbacks or [])],
    )
    trainer.projector_lr = cfg.train.projector_lr
    if cfg.train.probe_points > 0:
        from src.probe import probe_callback, probe_records

        probe_pool = load_task_records(valid_path) if valid_path.is_file() else []
        probes = probe_records(cfg, probe_pool)
        if probes:
            trainer.add_callback(probe_callback(cfg, tokenizer, probes, out))
        else:
            log.warning("train.probe_points is set but %s has none of the probed modes", valid_path)
    with args.main_process_first(local=False, desc="checkpoint scan"):
        resume = _last_checkpoint(ckpt_dir)  # rank 0 first: it moves a damaged one aside
    tokens_before = 0
    if resume:
        log.info("resuming from %s", resume)
        tokens_before = read_json(Path(resume) / "trainer_state.json").get("num_input_tokens_seen", 0)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    eval_metrics: dict[str, float] = {}
    if eval_ds is not None:  # the Trainer usually evaluated at the last step already; reuse it
        last = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        eval_metrics = last[-1] if last else trainer.evaluate()

    if trainer.is_world_process_zero():
        save_trained(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out)
        steps_done = trainer.state.global_step
        tokens = trainer.state.num_input_tokens_seen - tokens_before  # real tokens of this session
        losses = [r["loss"] for r in _read_log(log_path) if r.get("kind") == "train" and "loss" in r]
        q = max(1, len(losses) // 4)  # single logged steps are noisy (mixed task types per batch)
        meta = {
            "done": True,
            "task_type": task_type,
            "base_model": cfg.llm.base_model,
            "lora": bool(cfg.llm.lora.enabled),
            "modules_to_save": list(cfg.llm.lora.modules_to_save) if cfg.llm.lora.enabled else [],
            "chat_format": cfg.llm.chat_format,
            "torch_dtype": cfg.llm.torch_dtype,  # as trained (auto resolved), with bf16 autocast or not
            "bf16_autocast": bool(cfg.train.bf16),
            "exclude_tasks": list(exclude),
            "task_counts": _type_counts(train_recs),  # what it trained on, per record type
            "time_budget": asdict(plan) if plan else None,
            "n_train": len(train_ds),
            "n_eval": len(eval_ds) if eval_ds is not None else 0,
            "n_truncated": train_ds.n_truncated + (eval_ds.n_truncated if eval_ds else 0),
            "n_dropped": train_ds.n_dropped + (eval_ds.n_dropped if eval_ds else 0),
            "trainable_params": n_train,
            "world_size": world,
            "effective_batch_size": effective,
            "global_step": steps_done,
            "resumed_from": resume,
            "train_runtime_s": round(wall, 2),
            "tokens_trained": tokens,
            "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "loss_first_quarter_mean": sum(losses[:q]) / q if losses else None,
            "loss_last_quarter_mean": sum(losses[-q:]) / q if losses else None,
            "train_loss": result.training_loss,
            "eval_loss": eval_metrics.get("eval_loss"),
        }
        write_stamp(out / STAMP_FILE, fp)
        write_json(meta_path, meta)  # the done marker, last
        log.info(
            "%s done: %d steps, loss %s -> %s, eval_loss %s, %.1f tokens/s -> %s",
            task_type, steps_done, meta["loss_first"], meta["loss_last"], meta["eval_loss"],
            meta["tokens_per_s"] or math.nan, out,
        )
    return out


def _type_counts(records: list[dict]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(str(r.get("type")) for r in records))


def _read_log(path: Path) -> list[dict]:
    from core.utils import read_jsonl

    return read_jsonl(path) if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--task_type", required=True, choices=list(TASK_TYPES))
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    args = parser.parse_args(argv)
    rc = run_stage(lambda: train(config_from_args(args), args.task_type, force=args.force, max_steps=args.max_steps))
    if rc == 0:  # only after success: a rank that failed must not wait in a collective teardown
        close_process_group()
    return rc


def close_process_group() -> None:
    """Tear down the distributed process group while the interpreter is still alive.

    WHY: a gloo group left to interpreter shutdown can abort a rank with SIGABRT
    ("terminate called without an active exception") after the model is saved, and the
    launcher then reports the whole run as failed. The barrier first: a rank with nothing to
    save (rank 1) otherwise reached the teardown while rank 0 was still writing the model, and
    aborted the same way (seen in the two-process test). A no-op in a single-process run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
