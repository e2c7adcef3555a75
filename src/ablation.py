"""Figure 7 ablation: one model trained without each task type, measured on Table 1's tasks.

    python -m src.ablation --config configs/ml100k.yaml [--task_type both]
        [--tasks uid2next,uidiid2rank,...] [--modes uid2next,uidiid2binary,...]
        [--max_steps N] [--force] [--set key=value ...]

For every entry of ``--tasks`` (default: each record type of ``tasks/<T>_train.json``
except sharegpt), trains ``llm/ablation/<T>-no_<type>/`` with ``train.exclude_tasks``
set to that type (plus whatever the config already excludes); the full model is the
normal ``llm/<T>/`` (trained here if missing, never retrained). An entry may be a record
type (``iid2sim``), several joined by ``+`` (``uid2hist+uid2summary``), or a paper task
(``task4`` = every task-4 type in the file), so the paper's "remove each task" is one run.

Each variant, full included, is then evaluated by src.infer_alignment on the Table 1
modes (default: pipeline.align_modes that the valid file has; free decoding, no
title-constrained or pointwise pass) into ``eval/ablation/<variant>/``, and the figure is written:
``tables/figure7.{csv,md}`` (one row per variant, one column per metric) and
``tables/figure7.png`` (one group of bars per metric, one bar per variant).

Re-runs skip what is done: a trained variant (its meta.json), an evaluated mode (its
metrics file). Each variant's eval folder records the sha256 of the model's meta.json it
was measured on; if the model was retrained since, its evaluation is redone. ``--force``
retrains and re-evaluates the ablation variants (the full model's training is left to
``python -m src.train --force``).

The paper's Figure 7 scores the *explanations* of each variant with GPT-4; this command
measures alignment (Table 1), which needs no API. Explanations of a variant can be
generated from its model folder with the same seam (src.model.load_trained(model_dir=)).
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.utils import StageError, atomic_open, read_json, resolve_device, run_stage, sha256_file, write_json

log = logging.getLogger(__name__)

#: folder under llm/ and eval/ that holds the variants
ABLATION = "ablation"
#: record types not ablated unless asked for (general chat, not a recommendation task)
NOT_BY_DEFAULT = ("sharegpt",)
#: per-variant record of the model its evaluation was measured on
MODEL_RECORD = "model.json"
FIGURE = "figure7"


@dataclass(frozen=True)
class Variant:
    name: str  # folder name: "<T>-full" (evaluation only) or "<T>-no_<entry>"
    label: str  # bar / row label: "full" or "w/o <entry>"
    exclude: tuple[str, ...]  # record types dropped on top of the config's train.exclude_tasks
    model_dir: Path


# --------------------------------------------------------------------------- planning


def task_order() -> dict[str, int]:
    """Record types in the paper's task order (Table B2), for stable rows and bars."""
    from core.registry import TASK_OF_TYPE

    return {t: k for k, t in enumerate(TASK_OF_TYPE)}


def types_in(path: Path) -> list[str]:
    """Record types of a task file, in task order (unknown types last, by name)."""
    from src.data import load_task_records

    found = {str(r.get("type")) for r in load_task_records(path)}
    order = task_order()
    return sorted(found, key=lambda t: (order.get(t, len(order)), t))


def parse_tasks(spec: str | None, present: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``--tasks`` as (entry name, record types it drops); default: each present type but sharegpt."""
    if not spec:
        return [(t, (t,)) for t in present if t not in NOT_BY_DEFAULT]
    from core.registry import TASK_OF_TYPE

    out: list[tuple[str, tuple[str, ...]]] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        m = re.fullmatch(r"task\s*(\d+)", entry, flags=re.IGNORECASE)
        if m:
            types = tuple(t for t in present if TASK_OF_TYPE.get(t) == f"Task {m.group(1)}")
            if not types:
                raise ConfigError(f"--tasks: {entry!r} has no record type in the training file "
                                  f"(types present: {', '.join(present)})")
            name = f"task{m.group(1)}"
        else:
            types = tuple(t.strip() for t in entry.split("+") if t.strip())
            unknown = [t for t in types if t not in present]
            if unknown:
                raise ConfigError(f"--tasks: {unknown[0]!r} is not a record type of the training file "
                                  f"(types present: {', '.join(present)}; or task1..task6)")
            name = "+".join(types)
        if name in (n for n, _ in out):
            raise ConfigError(f"--tasks: {entry!r} is listed twice")
        out.append((name, types))
    if not out:
        raise ConfigError("--tasks: no task type given")
    return out


def plan_variants(cfg: Config, task_type: str, tasks: str | None) -> list[Variant]:
    """The full model first, then one variant per ``--tasks`` entry."""
    train_path = cfg.tasks_dir / f"{task_type}_train.json"
    present = types_in(train_path)
    full = Variant(f"{task_type}-full", "full", (), cfg.llm_dir / task_type)
    out = [full]
    entries = parse_tasks(tasks, present)
    if not tasks:  # a type the config already drops from every model has no variant of its own
        entries = [(n, t) for n, t in entries if n not in cfg.train.exclude_tasks]
    for name, types in entries:
        left = [t for t in present if t not in types and t not in cfg.train.exclude_tasks]
        if not left:
            raise ConfigError(f"--tasks: dropping {name} (with train.exclude_tasks={cfg.train.exclude_tasks}) "
                              f"leaves nothing to train on in {train_path}")
        v = f"{task_type}-no_{name}"
        out.append(Variant(v, f"w/o {name}", types, cfg.llm_dir / ABLATION / v))
    return out


def eval_modes(cfg: Config, task_type: str, modes: str | None) -> list[str]:
    """Modes to measure: ``--modes`` (checked), else pipeline.align_modes the valid file has."""
    from core.registry import MODES, task_file

    path = task_file(cfg, task_type, "valid")
    present = set(types_in(path))
    if modes:
        wanted = [m.strip() for m in modes.split(",") if m.strip()]
        for m in wanted:
            if m not in MODES:
                raise ConfigError(f"--modes: unknown inference mode {m!r} (known: {', '.join(MODES)})")
            if m not in present:
                raise ConfigError(f"--modes: {path} has no {m!r} records (types present: {', '.join(sorted(present))})")
        return wanted
    chosen = [m for m in cfg.pipeline.align_modes if m in present]
    skipped = [m for m in cfg.pipeline.align_modes if m not in present]
    if skipped:
        log.info("not evaluated (no records in %s): %s", path.name, ", ".join(skipped))
    if not chosen:
        raise ConfigError(f"pipeline.align_modes={cfg.pipeline.align_modes}: none has records in {path}")
    return chosen


def variant_config(cfg: Config, v: Variant) -> Config:
    """`cfg` with the variant's types added to train.exclude_tasks."""
    c = copy.deepcopy(cfg)
    c.train.exclude_tasks = list(dict.fromkeys([*cfg.train.exclude_tasks, *v.exclude]))
    return c


# --------------------------------------------------------------------------- train / evaluate


def train_variant(cfg: Config, task_type: str, v: Variant, force: bool, max_steps: int | None,
                  rec_encoder: Any = None) -> dict:
    """Train (or skip) one variant; return its meta.json."""
    from src.model import META_FILE
    from src.train import train

    meta_path = v.model_dir / META_FILE
    if not v.exclude:
        # the full model is the normal llm/<T>/: trained if missing, never forced from here;
        # train() stops with the changed settings named when it was made from other ones
        # (another budget, train.exclude_tasks, a retrained recommender), so the variants
        # are always compared with a full model of their own settings
        train(cfg, task_type, rec_encoder=rec_encoder, max_steps=max_steps)
        return read_json(meta_path)
    train(variant_config(cfg, v), task_type, force=force, rec_encoder=rec_encoder, max_steps=max_steps,
          out_dir=v.model_dir)
    return read_json(meta_path)


def evaluate_variant(cfg: Config, task_type: str, v: Variant, modes: list[str], force: bool,
                     rec_encoder: Any = None) -> dict[str, dict]:
    """Table 1 metrics of one variant's model, per mode, under eval/ablation/<variant>/."""
    from src.infer_alignment import evaluate
    from core.registry import eval_paths
    from src.model import META_FILE, load_trained

    method = f"{ABLATION}/{v.name}"
    eval_dir = cfg.eval_dir / ABLATION / v.name
    sha = sha256_file(v.model_dir / META_FILE)
    record_path = eval_dir / MODEL_RECORD
    record = read_json(record_path) if record_path.is_file() else None
    if force or record is None or record.get("meta_sha256") != sha:
        if eval_dir.exists():
            why = "--force" if force else "its model was retrained" if record else "no record of the model it measured"
            log.info("%s: redoing its evaluation (%s)", v.name, why)
            shutil.rmtree(eval_dir)
        write_json(record_path, {"variant": v.name, "model_dir": str(v.model_dir), "meta_sha256": sha,
                                 "exclude": list(v.exclude)})
    todo = [m for m in modes if not eval_paths(cfg, method, m, "valid")["metrics"].is_file()]
    if not todo:
        log.info("%s: every mode already evaluated; skipping", v.name)
    loaded = None
    if todo:
        loaded = load_trained(cfg, task_type, device=resolve_device(cfg.eval.device), rec_encoder=rec_encoder,
                              model_dir=v.model_dir)
    out: dict[str, dict] = {}
    for mode in modes:
        # modes already measured skip inside evaluate() before touching the model
        m = evaluate(cfg, task_type, mode, constrained=False, pointwise=False,
                     loaded=loaded if mode in todo else None, method=method)
        if m is None:
            raise StageError(f"{v.name} {mode}: evaluation returned nothing")
        out[mode] = m
    del loaded
    gc.collect()
    return out


# --------------------------------------------------------------------------- figure


def figure_columns(modes: list[str]) -> list[Any]:
    """Table 1 columns (src.report) of the evaluated modes, in the paper's order."""
    from core.registry import TABLE1_COLUMNS

    return [c for c in TABLE1_COLUMNS if c.mode in modes]


def write_figure(cfg: Config, task_type: str, variants: list[Variant], metas: dict[str, dict],
                 results: dict[str, dict[str, dict]], modes: list[str]) -> Path:
    """tables/figure7.{csv,md,png}; returns the CSV path."""
    from core.tables import write_table

    cols = figure_columns(modes)
    header = ["Variant", "Excluded", "Train records", *[c.header for c in cols], *[f"n {m}" for m in modes]]
    rows = []
    for v in variants:
        res = results[v.name]
        rows.append([v.label, "+".join(v.exclude), str(metas[v.name].get("n_train", "")),
                     *[res[c.mode].get(c.metric) for c in cols], *[str(res[m].get("n", "")) for m in modes]])
    title = f"Figure 7: training without one task ({task_type} data, Table 1 metrics on the valid split)"
    notes = ["The paper's Figure 7 rates explanations with GPT-4; these are the alignment metrics of the same "
             "variants. Excluded = record types dropped from training (train.exclude_tasks)."]
    write_table(cfg, FIGURE, rows, header, title=title, notes=notes)
    plot_figure(cfg.tables_dir / f"{FIGURE}.png", [c.header for c in cols], [v.label for v in variants],
                [[results[v.name][c.mode].get(c.metric) or 0.0 for c in cols] for v in variants], title)
    return cfg.tables_dir / f"{FIGURE}.csv"


def plot_figure(path: Path, groups: list[str], labels: list[str], values: list[list[float]], title: str) -> None:
    """Grouped bars: one group per metric, one bar per variant (values[variant][metric])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(labels)
    width = 0.8 / max(n, 1)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(groups) * (0.35 * n + 0.6)), 4.2))
    cmap = plt.get_cmap("tab10" if n <= 11 else "tab20")
    for k, (label, vals) in enumerate(zip(labels, values)):  # the full model first, in black
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width, label=label, color="black" if k == 0 else cmap((k - 1) % 20),
               edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, labels=groups)
    ax.set_ylabel("score")
    top = max([v for vals in values for v in vals] + [0.0])
    ax.set_ylim(0, max(0.05, top * 1.15))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, n), loc="upper right", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


def run_ablation(cfg: Config, task_type: str = "both", tasks: str | None = None, modes: str | None = None,
                 max_steps: int | None = None, force: bool = False, rec_encoder: Any = None) -> Path:
    """Train and evaluate every variant, then write the figure; returns tables/figure7.csv.

    `rec_encoder` overrides the recommender loaded from recmodel/ (tests, benchmarks).
    """
    from core.registry import TRAIN_TYPES as TASK_TYPES

    if task_type not in TASK_TYPES:
        raise ConfigError(f"--task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    variants = plan_variants(cfg, task_type, tasks)
    mode_list = eval_modes(cfg, task_type, modes)
    log.info("figure 7 (%s): %d variants (%s), modes %s", task_type, len(variants),
             ", ".join(v.label for v in variants), ", ".join(mode_list))
    metas: dict[str, dict] = {}
    results: dict[str, dict[str, dict]] = {}
    for v in tqdm(variants, desc="figure7 variants", unit="variant"):
        metas[v.name] = train_variant(cfg, task_type, v, force, max_steps, rec_encoder)
        results[v.name] = evaluate_variant(cfg, task_type, v, mode_list, force, rec_encoder)
    path = write_figure(cfg, task_type, variants, metas, results, mode_list)
    log.info("wrote %s and %s", path, path.with_suffix(".png"))
    return path


def build_parser() -> argparse.ArgumentParser:
    from core.registry import TRAIN_TYPES as TASK_TYPES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--task_type", default="both", choices=list(TASK_TYPES), help="training data form (default: both)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated entries to drop one at a time: a record type, types joined by '+', "
                        "or taskN (default: every type of the training file but sharegpt)")
    p.add_argument("--modes", default=None, help="comma-separated inference modes (default: pipeline.align_modes)")
    p.add_argument("--max_steps", type=int, default=None, help="stop each training after this many optimizer steps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        run_ablation(cfg, args.task_type, tasks=args.tasks, modes=args.modes, max_steps=args.max_steps,
                     force=args.force)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
