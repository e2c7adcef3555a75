"""The table writer: one Markdown + CSV format for every table of the project.

A cell is a number (4 decimals), a :class:`Cell` (value, 95% interval, n), ``-`` for a
missing run or ``N/A`` where the method cannot do the task; a column holding Cells gets
"<col> lo", "<col> hi" and "<col> n" beside it in the CSV.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from core.config import Config
from core.utils import StageError, write_text

NA = "N/A"
MISSING = "-"


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


def with_interval(value: float | None, ci: list[float] | None, digits: int = 3, ci_digits: int = 2) -> str:
    """'value [lo, hi]' for the small tables (2-3) that store value and interval apart; the
    value alone where the interval is missing or nan (older caches, too few records)."""
    if value is None or math.isnan(value):
        return MISSING
    if not ci or len(ci) != 2 or any(c is None or math.isnan(c) for c in ci):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{ci_digits}f}, {ci[1]:.{ci_digits}f}]"


def cell_of(d: dict | None, metric: str) -> Cell | None:
    """The Cell of `metric` in a metrics dict (value, its ``ci95`` and ``n`` when present)."""
    value = metric_value(d, metric)
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


def render_titled(title: str, rows: list[list[str]], columns: list[str]) -> tuple[str, str]:
    """(markdown, csv) of a table whose cells are already formatted strings, under a plain
    title paragraph (Tables 2 and 3: their cells mix counts, shares and "a / b" pairs)."""
    md = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return "\n".join(md) + "\n", buf.getvalue()


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


def metric_value(d: dict | None, metric: str) -> float | None:
    if d is None or metric not in d:
        return None
    v = d[metric]
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise StageError(f"metric '{metric}' must be a number, got {v!r}")
    return float(v)
