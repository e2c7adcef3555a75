"""tables/REPORT.md: every table and figure of a run on one page, plus three case studies.

Written by ``python -m src.report`` (after Table 1 and the learning curve) from files that
earlier stages wrote; nothing is recomputed. Sections, each only when its file exists
(otherwise one line names the command that produces it, with no link):

* Table 1 (``tables/table1.md``, or ``table1_test.md`` for ``--split test``; cells carry
  their 95% intervals and n), Table 2 (``tables/table2.md``), Table 3 (``tables/table3.md``);
* Figure 4, the explanation classifier's confusion matrix (``discriminator/cls/confusion.png``);
* the alignment learning curve (``tables/alignment_curve.png``) and Figure 7
  (``tables/figure7.png`` / ``figure7.md``) when present;
* three case studies from ``explain/<method>_<split>.jsonl`` (every method's explanation
  of the same prompt id), chosen by a seeded rule (:func:`pick_cases`): one where the
  methods agree, one where only the aligned models match the recommender, one with a
  negative item. A method's decision is the explanation's first yes/no phrase
  (:func:`core.metrics.decision_of`, the deterministic check of Table 2); "the recommender"
  is the prompt's label (positive items are drawn from the top 20% of its ranking,
  negative ones from the bottom 50%).

Links and images are relative to ``tables/`` so the page renders as it is on a code
hosting site; only files that exist are linked.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from pathlib import Path

from core.config import Config
from core.registry import ALIGNED, EXPLAIN_METHODS, UNALIGNED, method_display
from core.utils import read_json, read_jsonl, write_text

log = logging.getLogger(__name__)

REPORT_FILE = "REPORT.md"
#: explanation methods in Table 2's order; the first two are not aligned to the recommender
CASE_RULES = (
    ("agree", "the methods agree"),
    ("aligned_only", "only the aligned models match the recommender"),
    ("negative", "a negative item (the recommender ranks it in its bottom half)"),
)


def rel(path: Path, start: Path) -> str:
    """`path` relative to `start`, with forward slashes (what Markdown links need)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _escape(text: str) -> str:
    """Model text as Markdown-safe inline text (no raw HTML, no table breaks)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\|*_`\[\]])", r"\\\1", text)


# --------------------------------------------------------------------------- case studies


def explain_rows(cfg: Config, split: str) -> dict[str, dict[str, dict]]:
    """{method: {prompt id: row}} of every explanation file of `split` that exists."""
    out: dict[str, dict[str, dict]] = {}
    for m in EXPLAIN_METHODS:
        path = cfg.explain_dir / f"{m}_{split}.jsonl"
        if path.is_file():
            rows = read_jsonl(path, what="explanations")
            if rows:
                out[m] = {str(r.get("id")): r for r in rows}
    return out


def _decisions(by_method: dict[str, dict[str, dict]], rid: str) -> dict[str, str | None]:
    from core.metrics import decision_of

    return {m: decision_of(rows[rid].get("explanation")) for m, rows in by_method.items()}


def pick_cases(by_method: dict[str, dict[str, dict]], seed: int) -> list[tuple[str, str | None]]:
    """[(rule, prompt id or None)] for the rules of CASE_RULES, drawn with a seeded generator.

    Only prompts that every present method answered are candidates; a method whose
    explanation states no decision is "undecided". agree: every decided method gives the
    same decision, at least two decided (most decided first, then those whose decision is
    the label); when no prompt has that, the one with the largest majority (the page says
    so); aligned_only: no unaligned method matches the label and at least one
    aligned method does (most aligned matches first; needs both kinds present); negative:
    label "No" (most aligned methods saying No first). Within the best-scored candidates,
    sorted by id, one is drawn with ``random.Random(f"{seed}:report-cases:{rule}")``; a
    prompt used by an earlier rule is avoided when another fits.
    """
    if not by_method:
        return [(rule, None) for rule, _ in CASE_RULES]
    ids = sorted(set.intersection(*(set(rows) for rows in by_method.values())))
    label = {rid: str(next(iter(by_method.values()))[rid].get("label")) for rid in ids}
    dec = {rid: _decisions(by_method, rid) for rid in ids}
    aligned = [m for m in ALIGNED if m in by_method]
    unaligned = [m for m in UNALIGNED if m in by_method]

    def agree(rid: str) -> tuple[int, int, int] | None:
        decided = [d for d in dec[rid].values() if d is not None]
        if len(decided) < 2:
            return None
        top, n_top = Counter(decided).most_common(1)[0]
        return int(n_top == len(decided)), n_top, int(top == label[rid])

    def aligned_only(rid: str) -> int | None:
        if not aligned or not unaligned or any(dec[rid][m] == label[rid] for m in unaligned):
            return None
        hits = sum(dec[rid][m] == label[rid] for m in aligned)
        return hits or None

    def negative(rid: str) -> int | None:
        if label[rid] != "No":
            return None
        return sum(dec[rid][m] == "No" for m in aligned)

    used: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for rule, fn in (("agree", agree), ("aligned_only", aligned_only), ("negative", negative)):
        scored = [(fn(rid), rid) for rid in ids]
        scored = [(s, rid) for s, rid in scored if s is not None]
        if not scored:
            out.append((rule, None))
            continue
        best = max(s for s, _ in scored)
        pool = [rid for s, rid in scored if s == best]
        fresh = [rid for rid in pool if rid not in used] or [rid for s, rid in scored if rid not in used] or pool
        choice = random.Random(f"{seed}:report-cases:{rule}").choice(fresh)
        used.add(choice)
        out.append((rule, choice))
    return out


def render_case(cfg: Config, k: int, rule: str, rid: str, by_method: dict[str, dict[str, dict]],
                split: str) -> str:

    first = next(iter(by_method.values()))[rid]
    label = str(first.get("label"))
    dec = _decisions(by_method, rid)
    hist = first.get("history_titles") or []
    lines = [f"### Case {k}: {dict(CASE_RULES)[rule]}", "",
             f"Prompt `{rid}` of `explain/*_{split}.jsonl`. User {first.get('uid')}; history as the prompt shows it "
             f"(oldest first): {_escape('; '.join(hist)) if hist else '(not recorded)'}.", "",
             f"Item {first.get('iid')}: **{_escape(str(first.get('item_title', '')))}**. Recommender: **{label}**"
             + (f" (score {float(first['score']):.4f})" if isinstance(first.get("score"), (int, float)) else "")
             + ".", "",
             "| Method | Decision in the explanation | Matches the recommender |", "|---|---|---|"]
    decided = [d for d in dec.values() if d is not None]
    if rule == "agree" and len(set(decided)) > 1:
        n_top = Counter(decided).most_common(1)[0][1]
        lines[2:2] = [f"No prompt has every decided method agreeing; this one has the largest majority "
                      f"({n_top} of the {len(decided)} methods that state a decision).", ""]
    for m in by_method:
        d = dec[m]
        lines.append(f"| {_escape(method_display(cfg, m))} | {d or 'undecided'} | {'yes' if d == label else 'no'} |")
    lines.append("")
    for m, rows in by_method.items():
        text = str(rows[rid].get("explanation") or "").strip() or "(empty)"
        lines.append(f"**{_escape(method_display(cfg, m))}**")
        lines.append("")
        lines += ["> " + _escape(line) if line.strip() else ">" for line in text.splitlines()]
        lines.append("")
    return "\n".join(lines)


def case_studies(cfg: Config, split: str) -> str:
    by_method = explain_rows(cfg, split)
    head = ["## Case studies", ""]
    if not by_method:
        return "\n".join(head + [f"No explanations yet (`explain/<method>_{split}.jsonl`; written by "
                                 f"`python -m src.infer_explan --config {_conf(cfg)} --task_type T`).", ""])
    links = ", ".join(f"[{m}]({rel(cfg.explain_dir / f'{m}_{split}.jsonl', cfg.tables_dir)})" for m in by_method)
    head += [f"Chosen by a seeded rule (seed {cfg.seed}; src.report_md.pick_cases) among the prompts every method "
             f"answered. Decisions are each explanation's first yes/no phrase; the recommender's answer is the "
             f"prompt's label. Sources: {links}.", ""]
    body: list[str] = []
    for k, (rule, rid) in enumerate(pick_cases(by_method, cfg.seed), 1):
        text = dict(CASE_RULES)[rule]
        if rid is None:
            body += [f"### Case {k}: {text}", "", "No prompt fits this rule in the current explanations.", ""]
        else:
            body += [render_case(cfg, k, rule, rid, by_method, split)]
    return "\n".join(head + body)


# --------------------------------------------------------------------------- page


def _conf(cfg: Config) -> str:
    from core.config import config_arg

    return config_arg(cfg)


def _table_section(cfg: Config, title: str, path: Path, command: str) -> tuple[str, bool]:
    if not path.is_file():
        return f"## {title}\n\nNot produced yet (`{command}`).\n", False
    body = path.read_text(encoding="utf-8").strip()
    csv = path.with_suffix(".csv")
    src = f"Source: [{path.name}]({rel(path, cfg.tables_dir)})"
    if csv.is_file():
        src += f", [{csv.name}]({rel(csv, cfg.tables_dir)})"
    return f"## {title}\n\n{body}\n\n{src}.\n", True


def _figure_section(cfg: Config, title: str, image: Path, command: str, extra: list[Path] = (),
                    caption: str = "") -> tuple[str, bool]:
    if not image.is_file():
        return f"## {title}\n\nNot produced yet (`{command}`).\n", False
    out = [f"## {title}", "", f"![{title}]({rel(image, cfg.tables_dir)})", ""]
    if caption:
        out += [caption, ""]
    for p in extra:
        if p.is_file():
            if p.suffix == ".md":
                out += [p.read_text(encoding="utf-8").strip(), ""]
            out.append(f"Source: [{p.name}]({rel(p, cfg.tables_dir)})")
            out.append("")
    return "\n".join(out), True


def _figure4_caption(cfg: Config) -> str:
    path = cfg.discriminator_dir / "cls" / "metrics.json"
    if not path.is_file():
        return ""
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("accuracy"), (int, float)):
        return ""
    labels = ", ".join(str(x) for x in m.get("labels", []))
    return (f"Which model wrote an explanation: accuracy {float(m['accuracy']):.3f} on {m.get('n_test', '?')} test "
            f"explanations ({labels}). Rows are the true method.")


def write_report_md(cfg: Config, split: str = "valid") -> Path:
    """Write tables/REPORT.md (see the module docstring); returns its path."""
    conf = _conf(cfg)
    t1 = cfg.tables_dir / ("table1.md" if split == "valid" else f"table1_{split}.md")
    sections: list[tuple[str, str, bool]] = []
    for title, path, cmd in (
        ("Table 1: alignment", t1, f"python -m src.report --config {conf}"),
        ("Table 2: explanation quality", cfg.tables_dir / "table2.md", f"python -m src.eval_explan --config {conf}"),
        ("Table 3: score predictors", cfg.tables_dir / "table3.md", f"python -m discriminator.run_reg --config {conf}"),
    ):
        text, ok = _table_section(cfg, title, path, cmd)
        sections.append((title, text, ok))
    cls = cfg.discriminator_dir / "cls"
    for title, image, cmd, extra, cap in (
        ("Figure 4: explanation classifier", cls / "confusion.png", f"python -m discriminator.run_cls --config {conf}",
         [cls / "confusion.csv"], _figure4_caption(cfg)),
        ("Alignment learning curve", cfg.tables_dir / "alignment_curve.png",
         f"python -m src.train --config {conf} --task_type T --set train.probe_points=N",
         [cfg.tables_dir / "alignment_curve.csv"], ""),
        ("Figure 7: ablation", cfg.tables_dir / "figure7.png", f"python -m src.ablation --config {conf}",
         [cfg.tables_dir / "figure7.md", cfg.tables_dir / "figure7.csv"], ""),
    ):
        text, ok = _figure_section(cfg, title, image, cmd, extra, cap)
        sections.append((title, text, ok))
    present = [t for t, _, ok in sections if ok]
    missing = [t for t, _, ok in sections if not ok]
    head = [f"# RecExplainer results: {cfg.dataset.name}", "",
            f"Written by `python -m src.report --config {conf}`{'' if split == 'valid' else f' --split {split}'} "
            f"from the files under `{cfg.paths.root.format(name=cfg.dataset.name)}/`; "
            "re-run it after any stage to refresh this page.", "",
            "Contents: " + (", ".join(present) if present else "no table or figure yet") + "; case studies."
            + (f" Not produced yet: {', '.join(missing)}." if missing else ""), ""]
    md = "\n".join(head) + "\n" + "\n".join(text for _, text, _ in sections) + "\n" + case_studies(cfg, split)
    path = cfg.tables_dir / REPORT_FILE
    write_text(path, md.rstrip() + "\n")
    log.info("wrote %s", path)
    return path
