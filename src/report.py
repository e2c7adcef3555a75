"""Gather every metrics file into the paper's tables (Markdown + CSV, printed too).

    python -m src.report --config configs/ml100k.yaml [--split valid|test]

Table 1 (alignment, paper section 3.3) has one row per method and the columns
Task1 H@5, N@5 / Task2 N@5 / Task3 ACC / Task6 HCR. A cell is

* a number (4 decimals) read from the method's metrics file;
* ``N/A`` where the method cannot do the task (paper Table 1: only models that read the
  recommender's user embedding can reconstruct a history, and Popularity cannot classify);
* ``-`` where the run is missing; the commands that would produce the missing cells are
  listed under the table, so a reader knows exactly what to run.

Title-constrained decoding (task 1) is shown on its own "(title-constrained)" row right
below its method, never in place of the free-decoding figures.

Other stages reuse :func:`render_table` / :func:`write_table` so every table of the
project has one format.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config, add_config_args, config_from_args
from core.utils import StageError, read_json, run_stage, write_text

log = logging.getLogger(__name__)

NA = "N/A"
MISSING = "-"


@dataclass(frozen=True)
class Column:
    header: str
    mode: str
    metric: str


#: Table 1 columns in the paper's order
TABLE1_COLUMNS: tuple[Column, ...] = (
    Column("Task1 H@5", "uid2next", "hr@5"),
    Column("Task1 N@5", "uid2next", "ndcg@5"),
    Column("Task2 N@5", "uidiid2rank", "ndcg@5"),
    Column("Task3 ACC", "uidiid2binary", "acc"),
    Column("Task6 HCR", "uid2hist", "hcr"),
)


@dataclass(frozen=True)
class Method:
    key: str  # method name on disk
    kind: str  # "baseline" (recmodel/baselines) | "llm" (eval/<key>/)
    task_type: str = ""  # --task_type for src.infer_alignment
    icl: bool = False


#: Table 1 rows in the paper's order
TABLE1_METHODS: tuple[Method, ...] = (
    Method("random", "baseline"),
    Method("popularity", "baseline"),
    Method("none", "llm", "none"),
    Method("none_icl", "llm", "none", icl=True),
    Method("gpt4_icl", "llm", "gpt4", icl=True),
    Method("kd_sasrec", "baseline"),
    Method("behaviour", "llm", "behaviour"),
    Method("intention", "llm", "intention"),
    Method("both", "llm", "both"),
)

#: methods whose prompts carry the recommender's user embedding: the only ones that can do
#: task 6 (history reconstruction) -- the paper's Table 1 marks it N/A for every other row
EMBEDDING_METHODS = frozenset({"intention", "both"})


def not_applicable(method: str, mode: str) -> bool:
    """Whether the paper's Table 1 marks (method, task) N/A (a file with a value wins)."""
    if mode == "uid2hist":
        return method not in EMBEDDING_METHODS
    if mode == "uidiid2binary":
        return method == "popularity"  # no per-user score to threshold
    return False


def base_model_name(cfg: Config) -> str:
    """Row label of the unaligned LLM: the last path part of llm.base_model."""
    name = Path(cfg.llm.base_model.rstrip("/")).name or cfg.llm.base_model
    return "tiny-llama" if name == "tiny" else name


def method_label(method: str, cfg: Config) -> str:
    base = base_model_name(cfg)
    return {
        "random": "Random",
        "popularity": "Popularity",
        "none": base,
        "none_icl": f"{base}-ICL",
        "gpt4_icl": "GPT4-ICL",
        "kd_sasrec": "KD-SASRec",
        "behaviour": "RecExplainer-B",
        "intention": "RecExplainer-I",
        "both": "RecExplainer-H",
    }.get(method, method)


def eval_metrics_path(cfg: Config, method: str, mode: str, split: str = "valid") -> Path:
    """Where src.infer_alignment writes a method's metrics (valid at the top, test below)."""
    base = cfg.eval_dir / method
    if split != "valid":
        base = base / split
    return base / f"{mode}.metrics.json"


def baseline_metrics_path(cfg: Config, method: str) -> Path:
    return cfg.recmodel_dir / "baselines" / f"{method}.metrics.json"


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Cell:
    """A measured value with its 95% interval and the number of records it rests on."""

    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        text = f"{self.value:.4f}"
        if self.lo is not None and self.hi is not None and not (math.isnan(self.lo) or math.isnan(self.hi)):
            text += f" [{self.lo:.3f}, {self.hi:.3f}]"
        if self.n is not None:
            text += f" n={self.n}"
        return text


def cell_of(d: dict | None, metric: str) -> Cell | None:
    """The Cell of `metric` in a metrics dict (value, its ``ci95`` and ``n`` when present)."""
    value = _value(d, metric)
    if value is None:
        return None
    ci = (d.get("ci95") or {}).get(metric) if isinstance(d.get("ci95"), dict) else None
    lo, hi = (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    n = d.get("n")
    return Cell(value, lo, hi, int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None)


def fmt(value: Any) -> str:
    """A cell: numbers with 4 decimals, None as missing, strings unchanged."""
    if isinstance(value, Cell):
        return str(value)
    if value is None:
        return MISSING
    if isinstance(value, (bool, int)):  # counts and steps; metric values are floats
        return str(value)
    if isinstance(value, float):
        return MISSING if math.isnan(float(value)) else f"{float(value):.4f}"
    return str(value)


def render_table(rows: list[list[Any]], columns: list[str]) -> str:
    """A Markdown pipe table, padded so it also reads well as plain text."""
    cells = [[fmt(c) for c in row] for row in rows]
    for r in cells:
        if len(r) != len(columns):
            raise ValueError(f"row {r} has {len(r)} cells, table has {len(columns)} columns")
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(columns)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    out = [line(list(columns)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out) + "\n"


def render_csv(rows: list[list[Any]], columns: list[str]) -> str:
    """CSV of a table; a column holding Cells gets "<col> lo", "<col> hi" and "<col> n" beside it."""
    wide = [any(isinstance(r[i], Cell) for r in rows) for i in range(len(columns))]
    header: list[str] = []
    for c, w in zip(columns, wide):
        header += [c, f"{c} lo", f"{c} hi", f"{c} n"] if w else [c]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(header)
    for r in rows:
        line: list[str] = []
        for c, w in zip(r, wide):
            if not w:
                line.append(fmt(c))
            elif isinstance(c, Cell):
                line += [fmt(c.value), fmt(c.lo), fmt(c.hi), "" if c.n is None else str(c.n)]
            else:
                line += [fmt(c), "", "", ""]
        out.writerow(line)
    return buf.getvalue()


def write_table(
    cfg: Config, name: str, rows: list[list[Any]], columns: list[str], title: str = "", notes: list[str] | None = None,
) -> str:
    """Write tables/<name>.md and tables/<name>.csv atomically; return the Markdown."""
    md = (f"**{title}**\n\n" if title else "") + render_table(rows, columns)
    if notes:
        md += "\n" + "\n".join(notes) + "\n"
    write_text(cfg.tables_dir / f"{name}.md", md)
    write_text(cfg.tables_dir / f"{name}.csv", render_csv(rows, columns))
    return md


# --------------------------------------------------------------------------- table 1


def _read_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def _value(d: dict | None, metric: str) -> float | None:
    if d is None or metric not in d:
        return None
    v = d[metric]
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise StageError(f"metric '{metric}' must be a number, got {v!r}")
    return float(v)


def config_arg(cfg: Config) -> str:
    """The --config value to print in a hint (relative to the repository when inside it)."""
    conf = cfg.source_file or "configs/ml100k.yaml"
    try:
        return str(Path(conf).resolve().relative_to(cfg.resolve(".").resolve()))
    except ValueError:
        return conf


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
        row: list[Any] = [method_label(m.key, cfg)]
        constrained_row: list[Any] = [f"{method_label(m.key, cfg)} (title-constrained)"]
        has_constrained = False
        baseline = _read_optional(baseline_metrics_path(cfg, m.key)) if m.kind == "baseline" else None
        if baseline is not None and notes is not None:
            if baseline.get("note"):
                notes.append(f"{method_label(m.key, cfg)}: {baseline['note']}.")
            want = cfg.data_gen.eval_split if split == "valid" else split
            if baseline.get("split") and baseline["split"] != want:
                notes.append(f"{method_label(m.key, cfg)}: scored on the recommender's {baseline['split']} rows, "
                             f"the LLM rows on {want} rows.")
        for col in TABLE1_COLUMNS:
            try:
                if m.kind == "baseline":
                    d = baseline.get(col.mode) if baseline else None
                    path = baseline_metrics_path(cfg, m.key)
                else:
                    path = eval_metrics_path(cfg, m.key, col.mode, split)
                    d = _read_optional(path)
                value = cell_of(d, col.metric)
                cvalue = cell_of(d.get("constrained"), col.metric) if isinstance(d, dict) and isinstance(
                    d.get("constrained"), dict) else None
            except StageError as e:
                raise StageError(f"{path}: {e}") from None
            if value is not None:
                row.append(value)
            elif not_applicable(m.key, col.mode):
                row.append(NA)
            else:
                row.append(MISSING)
                cmd = command_for(cfg, m, col.mode, split)
                if cmd not in commands:
                    commands.append(cmd)
            if cvalue is not None:
                has_constrained = True
            constrained_row.append(cvalue if cvalue is not None else "")
        rows.append(row)
        if has_constrained:
            rows.append(constrained_row)
    return rows, columns, commands


def report_table1(cfg: Config, split: str = "valid") -> str:
    remarks: list[str] = []
    rows, columns, commands = table1(cfg, split, remarks)
    notes = [f'"{NA}": the method cannot do that task; "{MISSING}": not run yet. '
             "Cells: value [95% interval] n=records (Wilson for 0/1 scores, Student-t for graded ones)."] + remarks
    if commands:
        notes += ["", "Commands that produce the missing cells:", ""] + [f"    {c}" for c in commands]
    title = (f"Table 1. Alignment to the target recommender ({cfg.dataset.name}; "
             f"tasks/*_{split}.json; LLM: {base_model_name(cfg)})")
    return write_table(cfg, "table1" if split == "valid" else f"table1_{split}", rows, columns, title, notes)


#: the explanation tables, written by their own stages; the report prints them when present
OTHER_TABLES = (
    ("table2", "Table 2 (explanation ratings)", "python -m src.eval_explan"),
    ("table3", "Table 3 (score predictors)", "python -m discriminator.run_reg"),
)


def other_tables(cfg: Config) -> str:
    """Tables 2 and 3 as their stages wrote them, or the command that writes each."""
    conf = config_arg(cfg)
    out = []
    for name, what, cmd in OTHER_TABLES:
        path = cfg.tables_dir / f"{name}.md"
        if path.is_file():
            out.append(path.read_text(encoding="utf-8"))
        else:
            out.append(f"{what}: not produced yet ({cmd} --config {conf})\n")
    return "\n".join(out)


#: the learning-curve panels: (mode, metric, axis label)
CURVE_PANELS = (("uid2next", "hr@5", "Task 1 HR@5"), ("uidiid2binary", "acc", "Task 3 ACC"))
CURVE_METHODS = ("behaviour", "intention", "both")


def alignment_curve(cfg: Config) -> Path | None:
    """tables/alignment_curve.{csv,png} from the probe rows of each trained variant.

    Reference lines: the unaligned LLM and KD-SASRec on the same metric (their Table 1
    values, on the full evaluation sample rather than the probe sample). None when no
    variant was trained with train.probe_points.
    """
    from src.probe import PROBE_FILE
    from core.utils import read_jsonl

    curves = {m: read_jsonl(cfg.llm_dir / m / PROBE_FILE) for m in CURVE_METHODS
              if (cfg.llm_dir / m / PROBE_FILE).is_file()}
    curves = {m: rows for m, rows in curves.items() if rows}
    if not curves:
        return None
    columns = ["Method", "step", "tokens"] + [f"{label}" for _, _, label in CURVE_PANELS]
    rows: list[list[Any]] = []
    for m, probe in curves.items():
        for r in sorted(probe, key=lambda r: r["step"]):
            rows.append([method_label(m, cfg), r["step"], r["tokens"],
                         *[cell_of(r.get(mode), metric) for mode, metric, _ in CURVE_PANELS]])
    write_text(cfg.tables_dir / "alignment_curve.csv", render_csv(rows, columns))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    refs = {
        base_model_name(cfg): lambda mode: _read_optional(eval_metrics_path(cfg, "none", mode)),
        "KD-SASRec": lambda mode: (_read_optional(baseline_metrics_path(cfg, "kd_sasrec")) or {}).get(mode),
    }
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 3.6))
    for ax, (mode, metric, label) in zip(axes, CURVE_PANELS):
        for m, probe in curves.items():
            pts = sorted((r["tokens"], r[mode][metric]) for r in probe if isinstance(r.get(mode), dict))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method_label(m, cfg))
        for (name, get), style in zip(refs.items(), ("--", ":")):
            v = _value(get(mode), metric)
            if v is not None:
                ax.axhline(v, linestyle=style, color="grey", label=name)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n = {mode: next((r[mode].get("n") for p in curves.values() for r in p if isinstance(r.get(mode), dict)), "?")
         for mode, _, _ in CURVE_PANELS}
    fig.suptitle(f"Alignment during training ({cfg.dataset.name}; probe n = "
                 + ", ".join(f"{label.split()[0]} {label.split()[1]}: {n[mode]}" for mode, _, label in CURVE_PANELS) + ")",
                 fontsize=9)
    fig.tight_layout()
    out = cfg.tables_dir / "alignment_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_report(cfg: Config, split: str = "valid") -> Path:
    """tables/REPORT.md: every table and figure present, and three case studies (src.report_md)."""
    from src.report_md import write_report_md

    return write_report_md(cfg, split)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--split", choices=["valid", "test"], default="valid", help="evaluation split (default: valid)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        md = report_table1(cfg, args.split)
        print(md)
        curve = alignment_curve(cfg)
        if curve is not None:
            print(f"Alignment learning curve: {curve}\n")
        print(other_tables(cfg))
        print(f"Report page: {write_report(cfg, args.split)}\n")
        log.info("wrote %s", cfg.tables_dir)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
