"""Gather every metrics file into the paper's tables (Markdown + CSV, printed too).

    python -m src.report --config configs/ml100k.yaml [--split valid|test]

Table 1 (alignment, paper section 3.3) has one row per method and the columns
Task1 H@5, N@5 / Task2 N@5 / Task3 ACC / Task6 HCR; its rows come from :mod:`src.table1`
(numbers, ``N/A``, ``-`` for a missing run), and the commands that would produce the missing
cells are listed under the table, so a reader knows exactly what to run.

The table writer (:func:`core.tables.render_table` / :func:`core.tables.write_table`) is
shared by every stage, so every table of the project has one format.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from core.config import Config, add_config_args, config_arg, config_from_args
from core.registry import TRAIN_TYPES, base_model_name, baseline_metrics_path, eval_metrics_path, method_label
from core.tables import MISSING, NA, cell_of, metric_value, render_csv, write_table
from core.utils import run_stage, write_text
from src.table1 import read_optional, table1

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- table 1


def report_table1(cfg: Config, split: str = "valid") -> str:
    remarks: list[str] = []
    rows, columns, commands = table1(cfg, split, remarks)
    notes = [f'"{NA}": the method cannot do that task; "{MISSING}": not run yet. '
             "Cells: value [95% interval] n=records (Wilson for 0/1 scores, Student-t for graded ones)."] + remarks
    if any(str(r[0]).endswith("(pointwise)") for r in rows):
        notes.append("(pointwise): task 2's candidates asked one by one as task-3 questions and ordered by the "
                     "model's logp(Yes) - logp(No) (eval.pointwise_rank); the free row is the paper's protocol "
                     "(the model writes the ordered list).")
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
CURVE_METHODS = TRAIN_TYPES


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
        base_model_name(cfg): lambda mode: read_optional(eval_metrics_path(cfg, "none", mode)),
        "KD-SASRec": lambda mode: (read_optional(baseline_metrics_path(cfg, "kd_sasrec")) or {}).get(mode),
    }
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 3.6))
    for ax, (mode, metric, label) in zip(axes, CURVE_PANELS):
        for m, probe in curves.items():
            pts = sorted((r["tokens"], r[mode][metric]) for r in probe if isinstance(r.get(mode), dict))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method_label(m, cfg))
        for (name, get), style in zip(refs.items(), ("--", ":")):
            v = metric_value(get(mode), metric)
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
