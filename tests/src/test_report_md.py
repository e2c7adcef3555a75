"""tables/REPORT.md (src.report_md via python -m src.report): every table and figure that
exists is on the page, only existing files are linked (relative paths), and the three case
studies follow their seeded rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.config import load_config
from core.metrics import decision_of
from src.report import main as report_main
from src.report_md import pick_cases

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}/out", *extra]


def _cfg(tmp_path: Path, *extra: str):
    return load_config("configs/tiny.yaml", [f"paths.root={tmp_path}/out", *extra])


def _report(tmp_path: Path, capsys, *extra: str) -> str:
    rc = report_main(_argv(tmp_path, *extra))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    cfg = _cfg(tmp_path)
    path = cfg.tables_dir / "REPORT.md"
    assert f"Report page: {path}" in cap.out
    return path.read_text(encoding="utf-8")


def _links(md: str) -> list[str]:
    return LINK.findall(md)


def _assert_links_exist(md: str, tables_dir: Path) -> None:
    for link in _links(md):
        assert not link.startswith(("/", "http")), f"link {link} is not relative"
        assert (tables_dir / link).is_file(), f"REPORT.md links {link}, which does not exist"


EXPLANATIONS = {
    # id: (label, uid, iid, {method: explanation})
    "explan-valid-00000-pos": ("Yes", 1, 3, {"none": "Yes, the user will like it.", "behaviour": "Yes, likely.",
                                             "intention": "Yes. The user enjoys it.", "both": "Yes, a good fit."}),
    "explan-valid-00000-neg": ("No", 1, 9, {"none": "Yes, the user will like it.", "behaviour": "No, not a fit.",
                                            "intention": "No. The user <user> dislikes it | badly.",
                                            "both": "No, the user would not like it."}),
    "explan-valid-00001-pos": ("Yes", 2, 4, {"none": "No, the user will not like it.", "behaviour": "Yes, a fit.",
                                             "intention": "Yes, they will.", "both": "Yes, sure."}),
    "explan-valid-00001-neg": ("No", 2, 8, {"none": "", "behaviour": "Yes, maybe.", "intention": "No.",
                                            "both": "Yes, perhaps."}),
}


def _write_explanations(cfg, explanations=EXPLANATIONS) -> None:
    cfg.explain_dir.mkdir(parents=True, exist_ok=True)
    for m in ("none", "behaviour", "intention", "both"):
        with open(cfg.explain_dir / f"{m}_valid.jsonl", "w", encoding="utf-8") as f:
            for rid, (label, uid, iid, texts) in explanations.items():
                f.write(json.dumps({"id": rid, "uid": uid, "iid": iid, "label": label, "question": "q",
                                    "explanation": texts[m], "method": m, "split": "valid",
                                    "item_title": f"Movie {iid}", "history": [1, 2],
                                    "history_titles": ["Movie 1", "Movie 2"], "score": 0.5}) + "\n")


def _write_everything(cfg) -> None:
    t = cfg.tables_dir
    t.mkdir(parents=True, exist_ok=True)
    (t / "table2.md").write_text("Table 2. Explanation quality\n\n| Method | Judge |\n|---|---|\n| B | 2.1 [1.9, 2.3] |\n")
    (t / "table2.csv").write_text("Method,Judge\nB,2.1\n")
    (t / "table3.md").write_text("Table 3. Score predictors\n\n| Method | MSE |\n|---|---|\n| H | 0.5 |\n")
    (t / "alignment_curve.png").write_bytes(PNG)
    (t / "alignment_curve.csv").write_text("Method,step\n")
    (t / "figure7.png").write_bytes(PNG)
    (t / "figure7.md").write_text("**Figure 7: training without one task**\n\n| Variant | ACC |\n|---|---|\n| -task3 | 0.5 |\n")
    cls = cfg.discriminator_dir / "cls"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / "confusion.png").write_bytes(PNG)
    (cls / "metrics.json").write_text(json.dumps({"accuracy": 0.75, "n_test": 32, "labels": ["RecExplainer-H", "base"]}))
    _write_explanations(cfg)


def test_report_md_with_only_table1_links_nothing_missing(tmp_path, capsys):
    md = _report(tmp_path, capsys)
    cfg = _cfg(tmp_path)
    assert md.startswith("# RecExplainer results: tiny")
    assert "## Table 1: alignment" in md and "Table 1. Alignment to the target recommender" in md
    assert "[table1.md](table1.md)" in md and "[table1.csv](table1.csv)" in md
    for title in ("Table 2: explanation quality", "Table 3: score predictors", "Figure 4: explanation classifier",
                  "Alignment learning curve", "Figure 7: ablation"):
        assert f"## {title}\n\nNot produced yet (`python -m" in md
    assert "No explanations yet" in md
    assert not any(link.endswith(".png") for link in _links(md))
    _assert_links_exist(md, cfg.tables_dir)


def test_report_md_lists_every_table_and_figure_that_exists(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _write_everything(cfg)
    md = _report(tmp_path, capsys)
    _assert_links_exist(md, cfg.tables_dir)
    links = _links(md)
    for expected in ("table1.md", "table2.md", "table2.csv", "table3.md", "../discriminator/cls/confusion.png",
                     "alignment_curve.png", "alignment_curve.csv", "figure7.png", "figure7.md",
                     "../explain/both_valid.jsonl"):
        assert expected in links, expected
    assert "table3.csv" not in links  # not written, so not linked
    assert "![Figure 4: explanation classifier](../discriminator/cls/confusion.png)" in md
    assert "accuracy 0.750 on 32 test explanations" in md
    assert "| B | 2.1 [1.9, 2.3] |" in md and "| -task3 | 0.5 |" in md
    assert "Not produced yet:" not in md and "Not produced yet (" not in md
    contents = md.split("\n")[4]
    for title in ("Table 1", "Table 2", "Table 3", "Figure 4", "Alignment learning curve", "Figure 7"):
        assert title in contents
    # a figure whose file is gone is not linked any more
    (cfg.tables_dir / "figure7.png").unlink()
    md = _report(tmp_path, capsys)
    assert "figure7.png" not in _links(md) and "## Figure 7: ablation\n\nNot produced yet" in md
    _assert_links_exist(md, cfg.tables_dir)


def _by_method(cfg) -> dict:
    from src.report_md import explain_rows

    return explain_rows(cfg, "valid")


def test_case_studies_follow_the_seeded_rule(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _write_explanations(cfg)
    by = _by_method(cfg)
    cases = pick_cases(by, cfg.seed)
    assert [r for r, _ in cases] == ["agree", "aligned_only", "negative"]
    ids = [rid for _, rid in cases]
    assert None not in ids and len(set(ids)) == 3
    dec = {rid: {m: decision_of(rows[rid]["explanation"]) for m, rows in by.items()} for rid in ids}
    label = {rid: EXPLANATIONS[rid][0] for rid in ids}
    agree, aligned, negative = ids
    assert len(set(dec[agree].values())) == 1 and None not in dec[agree].values()
    assert all(dec[aligned][m] == label[aligned] for m in ("behaviour", "intention", "both"))
    assert dec[aligned]["none"] != label[aligned]
    assert label[negative] == "No"
    assert pick_cases(by, cfg.seed) == cases  # seeded: the same page every run
    md = _report(tmp_path, capsys)
    assert "### Case 1: the methods agree" in md and "### Case 2: only the aligned models match" in md
    assert "### Case 3: a negative item" in md
    for rid in ids:
        assert f"Prompt `{rid}`" in md
    # model text cannot inject HTML or break the tables
    if "explan-valid-00000-neg" in ids:
        assert "&lt;user&gt; dislikes it \\| badly" in md
    assert "<user>" not in md
    _assert_links_exist(md, cfg.tables_dir)


def test_case_rule_without_a_fitting_prompt_says_so(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    only = {k: v for k, v in EXPLANATIONS.items() if k == "explan-valid-00000-pos"}
    _write_explanations(cfg, only)
    cases = pick_cases(_by_method(cfg), cfg.seed)
    assert cases == [("agree", "explan-valid-00000-pos"), ("aligned_only", None), ("negative", None)]
    md = _report(tmp_path, capsys)
    assert md.count("No prompt fits this rule in the current explanations.") == 2


def test_agree_falls_back_to_the_largest_majority_and_says_so(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    split = {k: v for k, v in EXPLANATIONS.items() if k in ("explan-valid-00001-neg", "explan-valid-00000-neg")}
    _write_explanations(cfg, split)
    cases = dict(pick_cases(_by_method(cfg), cfg.seed))
    assert cases["agree"] == "explan-valid-00000-neg"  # 3 of 4 decided say No; the other prompt splits 2 to 1
    md = _report(tmp_path, capsys)
    assert "No prompt has every decided method agreeing; this one has the largest majority (3 of the 4 methods" in md
