"""Table 1's rows, read from every method's metrics file (one builder for every table that
shows Table 1's cells: `src.report` writes Table 1 from it, `src.seeds` its per-seed summary).

A cell is

* a :class:`core.tables.Cell` (value, 95% interval, n) read from the method's metrics file;
* ``N/A`` where the method cannot do the task (paper Table 1: only models that read the
  recommender's user embedding can reconstruct a history, and Popularity cannot classify);
* ``-`` where the run is missing; the command that would produce it is returned beside the rows.

Constrained decoding (``eval.constrained_modes``) is shown on its own "(title-constrained)" row
right below its method, and task 2 ranked candidate by candidate (``eval.pointwise_rank``) on a
"(pointwise)" row below that: never in place of the free-decoding figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Config, config_arg
from core.registry import (
    TABLE1_COLUMNS, TABLE1_METHODS, Method, baseline_metrics_path, eval_metrics_path, method_label, not_applicable,
)
from core.tables import MISSING, NA, cell_of
from core.utils import StageError, read_json

#: the extra blocks a metrics file may carry, each shown on its own row below its method:
#: (key in the metrics json, row suffix)
VARIANT_ROWS = (("constrained", "title-constrained"), ("pointwise", "pointwise"))


def read_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def command_for(cfg: Config, method: Method, mode: str, split: str) -> str:
    conf = config_arg(cfg)
    if method.kind == "baseline":
        return f"python -m recmodel.baselines --config {conf}"
    cmd = f"python -m src.infer_alignment --config {conf} --task_type {method.task_type} --inference_mode {mode}"
    if method.icl:
        cmd += " --icl"
    if split != "valid":
        cmd += f" --split {split}"
    return cmd


def table1(
    cfg: Config, split: str = "valid", notes: list[str] | None = None
) -> tuple[list[list[Any]], list[str], list[str]]:
    """Rows, columns and the commands for missing cells of Table 1.

    `notes` (if given) receives the remarks the metrics files carry (e.g. a baseline that
    reports a cell the paper leaves N/A, or one scored on another split).
    """
    columns = ["Method"] + [c.header for c in TABLE1_COLUMNS]
    rows: list[list[Any]] = []
    commands: list[str] = []
    for m in TABLE1_METHODS:
        row: list[Any] = [method_label(m.name, cfg)]
        variant_rows: dict[str, list[Any]] = {key: [f"{method_label(m.name, cfg)} ({suffix})"]
                                              for key, suffix in VARIANT_ROWS}
        has_variant: set[str] = set()
        baseline = read_optional(baseline_metrics_path(cfg, m.name)) if m.kind == "baseline" else None
        if baseline is not None and notes is not None:
            if baseline.get("note"):
                notes.append(f"{method_label(m.name, cfg)}: {baseline['note']}.")
            want = cfg.data_gen.eval_split if split == "valid" else split
            if baseline.get("split") and baseline["split"] != want:
                notes.append(f"{method_label(m.name, cfg)}: scored on the recommender's {baseline['split']} rows, "
                             f"the LLM rows on {want} rows.")
        for col in TABLE1_COLUMNS:
            try:
                if m.kind == "baseline":
                    d = baseline.get(col.mode) if baseline else None
                    path = baseline_metrics_path(cfg, m.name)
                else:
                    path = eval_metrics_path(cfg, m.name, col.mode, split)
                    d = read_optional(path)
                value = cell_of(d, col.metric)
                vvalues = {key: cell_of(d[key], col.metric) if isinstance(d, dict) and isinstance(d.get(key), dict)
                           else None for key, _ in VARIANT_ROWS}
            except StageError as e:
                raise StageError(f"{path}: {e}") from None
            if value is not None:
                row.append(value)
            elif not_applicable(m.name, col.mode):
                row.append(NA)
            else:
                row.append(MISSING)
                cmd = command_for(cfg, m, col.mode, split)
                if cmd not in commands:
                    commands.append(cmd)
            for key, v in vvalues.items():
                if v is not None:
                    has_variant.add(key)
                variant_rows[key].append(v if v is not None else "")
        rows.append(row)
        rows.extend(variant_rows[key] for key, _ in VARIANT_ROWS if key in has_variant)
    return rows, columns, commands
