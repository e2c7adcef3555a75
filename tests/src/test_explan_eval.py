"""src.eval_explan end to end: Table 2 against a real OpenAI-compatible server, and without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src import eval_explan
from src.judge import REASK
from core.utils import read_json, read_jsonl
from tests.fixtures_explan import FakeOpenAI, clear_api_env, tiny_cfg

KEY = "sk-eval-SECRET-42"

# (label, explanation) per method; the fake judge rates by a tag inside the explanation
ROWS = {
    "none": [("Yes", "Yes, the user will like it. [R2]"), ("No", "Yes, the user would enjoy it. [R0]"),
             ("Yes", "Hard to say. [BAD]"), ("No", "No. They dislike musicals. [R1]")],
    "both": [("Yes", "Yes. The user loves comedies, consistent with the item. [R3]"),
             ("No", "No, the user is unlikely to like this horror film. [R3]"),
             ("Yes", "Yes, a good fit for this user's taste. [R2]"),
             ("No", "No, the user won't enjoy it. [BAD]")],
}


def _write_explanations(cfg, method: str, rows=None) -> Path:
    path = cfg.explain_dir / f"{method}_valid.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for k, (label, text) in enumerate(rows or ROWS[method]):
            f.write(json.dumps({
                "id": f"explan-valid-{k:05d}-{'pos' if label == 'Yes' else 'neg'}", "uid": k + 1, "iid": 10 + k,
                "label": label, "question": "q", "explanation": text, "method": method,
                "history_titles": ["Toy Story (1995)", "Heat (1995)"], "item_title": f"Movie {k}",
            }) + "\n")
    return path


def _judge(body: dict, n: int):
    prompt = body["messages"][0]["content"]
    if body["messages"][-1]["content"] == REASK:
        return 200, "<br>RATING-1</br>"
    for tag in ("R0", "R1", "R2", "R3"):
        if f"[{tag}]" in prompt:
            return 200, f"Assessment done.\n<br>RATING-{tag[1]}</br>"
    return 200, "The explanation is vague."  # [BAD]: unparseable first, re-asked


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"paths.root={tmp_path / 'out'}", f"paths.raw_dir={tmp_path / 'raw'}",
            "api.backoff_base_s=0.001", "api.backoff_max_s=0.01", "api.max_retries=2", *extra]
    return ["--config", "configs/tiny.yaml", *[x for s in sets for x in ("--set", s)]]


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    clear_api_env(monkeypatch)
    # main() installs a stderr log handler once per process; pytest swaps stderr per test


def test_without_endpoint_reports_decision_check_and_skips_judge(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    for m in ROWS:
        _write_explanations(cfg, m)
    assert eval_explan.main(_argv(tmp_path)) == 0
    summary = read_json(cfg.judge_dir / "summary.json")
    assert summary["judge"]["status"].startswith("skipped")
    assert list(summary["methods"]) == ["none", "both"]  # the paper's table order
    none, both = summary["methods"]["none"], summary["methods"]["both"]
    assert none["decision"]["agreement"] == pytest.approx(0.5) and none["decision"]["undecided"] == 1
    assert both["decision"]["agreement"] == pytest.approx(1.0)
    assert none["judge"]["mean"] is None and none["judge"]["not_judged"] == 4
    out = capsys.readouterr().out
    assert "Table 2" in out and "RecExplainer-H" in out and "skipped" in out
    table = (cfg.tables_dir / "table2.md").read_text()
    assert "| RecExplainer-H | - | 0/4 |" in table
    assert "0.500 [0.15, 0.85] | 0.50 / 0.50 |" in table  # 2 of 4 agree (Wilson interval), one per label
    assert "| 1.000 [0.51, 1.00] | 1.00 / 1.00 |" in table and "on Yes / No labels" in table
    assert not list(cfg.judge_dir.glob("*.jsonl"))


def test_judge_end_to_end_with_cache(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg(tmp_path)
    for m in ROWS:
        _write_explanations(cfg, m)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(_judge) as srv:
        argv = _argv(tmp_path, f"api.base_url={srv.base_url}", "api.model=local-judge", "explain.judge_retries=2")
        assert eval_explan.main(argv) == 0
        # 8 explanations + one re-ask for each of the 2 [BAD] ones
        assert len(srv.requests) == 10
        prompts = [r["messages"][0]["content"] for r in srv.requests]
        assert all(p.startswith("Please act as an impartial judge") for p in prompts)
        assert any("User history: Toy Story (1995); Heat (1995), Target item: Movie 0, Label: Yes. "
                   "Assistant's output: Yes, the user will like it. [R2]" in p for p in prompts)
        summary = read_json(cfg.judge_dir / "summary.json")
        assert summary["judge"] == {**summary["judge"], "model": "local-judge", "status": "ran"}
        none, both = summary["methods"]["none"]["judge"], summary["methods"]["both"]["judge"]
        assert none["counts"] == {"0": 1, "1": 2, "2": 1, "3": 0} and none["mean"] == pytest.approx(1.0)
        assert both["counts"] == {"0": 0, "1": 1, "2": 1, "3": 2} and both["mean"] == pytest.approx(2.25)
        assert none["unparseable_first"] == 1 and none["unparseable_final"] == 0
        table = (cfg.tables_dir / "table2.md").read_text()
        assert "| RecExplainer-H | 2.2500 | 4/4 | 0.000 | 0.250 | 0.250 | 0.500 | 1 / 0 | 1.000 [0.51, 1.00] | 1.00 / 1.00 | 0.000 |" in table
        assert "local-judge" in table and "GPT-4" in table
        csv_lines = (cfg.tables_dir / "table2.csv").read_text().splitlines()
        assert csv_lines[0].startswith("Method,Judge mean") and len(csv_lines) == 3
        judged = read_jsonl(cfg.judge_dir / "both.jsonl")
        assert len(judged) == 4 and {r["rating"] for r in judged} == {1, 2, 3}
        assert KEY not in json.dumps(judged) and KEY not in table

        # second run: judge rows and API cache -> zero requests, same table
        assert eval_explan.main(argv) == 0
        assert len(srv.requests) == 10
        assert (cfg.tables_dir / "table2.md").read_text() == table
        # --force drops the judge rows but the API cache still answers: still zero requests
        assert eval_explan.main([*argv, "--force"]) == 0
        assert len(srv.requests) == 10
        # a regenerated explanation is judged again (only that one)
        rows = list(ROWS["both"])
        rows[0] = ("Yes", "Yes! Totally new text. [R2]")
        _write_explanations(cfg, "both", rows)
        assert eval_explan.main([*argv, "--model_names", "both"]) == 0
        assert len(srv.requests) == 11
        assert read_json(cfg.judge_dir / "summary.json")["methods"]["both"]["judge"]["mean"] == pytest.approx(2.0)
    assert KEY not in capsys.readouterr().err


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    path = _write_explanations(cfg, "none")
    with open(path, "a") as f:
        f.write(json.dumps({"id": "x", "label": "Yes"}) + "\n")
    assert eval_explan.main(_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "none_valid.jsonl" in err and "row 5" in err and "explanation" in err
    assert not (cfg.judge_dir / "summary.json").exists()
    assert eval_explan.main(_argv(tmp_path, "paths.root=" + str(tmp_path / "empty"))) == 2
    assert "no explanation files" in capsys.readouterr().err
    assert eval_explan.main([*_argv(tmp_path), "--model_names", "none,both", "--model_response_files", str(path)]) == 2


def test_fluency_measures_repetition():
    from src.eval_explan import distinct_bigram_ratio, fluency_summary

    assert distinct_bigram_ratio("the user likes dark comedies") == 1.0
    loop = "The user has liked the item: Love, Love, Love; " * 4
    assert distinct_bigram_ratio(loop) < 0.5
    assert distinct_bigram_ratio("Yes") is None
    s = fluency_summary(["a fine and varied text here", loop, "x"])
    assert s["n"] == 2 and s["degenerate_share"] == 0.5 and 0.5 < s["distinct2_mean"] < 1.0


def test_judge_faults_partial_cache_only_and_subset_merge(tmp_path, monkeypatch, capsys):
    """A dead endpoint exits non-zero and leaves Table 2 alone (unless --allow_partial, which
    marks the cells); a re-run with no API variables rebuilds Table 2 from the cached ratings;
    a subset run merges into the other methods' summary."""
    import socket

    cfg = tiny_cfg(tmp_path)
    for m in ROWS:
        _write_explanations(cfg, m)
    with FakeOpenAI(_judge) as srv:
        argv = _argv(tmp_path, f"api.base_url={srv.base_url}", "api.model=local-judge", "explain.judge_retries=2")
        assert eval_explan.main(argv) == 0
        table = (cfg.tables_dir / "table2.md").read_text()
    def rows_of(md: str) -> list[str]:
        return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Method")]

    # no API variables, no base_url: every rating comes from the judge cache, nothing is "skipped"
    assert eval_explan.main(_argv(tmp_path)) == 0
    again = (cfg.tables_dir / "table2.md").read_text()
    assert rows_of(again) == rows_of(table) and "from cache" in again and "skipped" not in again
    # a changed judge setting is a different request: no cached rating answers for it
    assert eval_explan.main(_argv(tmp_path, "explain.judge_max_tokens=900")) == 0
    assert "skipped" in (cfg.tables_dir / "table2.md").read_text()
    assert eval_explan.main(_argv(tmp_path)) == 0
    assert (cfg.tables_dir / "table2.md").read_text() == again

    # a regenerated explanation against a dead endpoint: non-zero, Table 2 untouched, in seconds
    rows = list(ROWS["none"])
    rows[1] = ("No", "No, a changed text.")
    _write_explanations(cfg, "none", rows)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = _argv(tmp_path, f"api.base_url=http://127.0.0.1:{port}/v1", "api.model=local-judge",
                 "api.max_consecutive_failures=3", "api.max_retries=6")
    capsys.readouterr()
    assert eval_explan.main(dead) == 2
    err = capsys.readouterr().err
    assert "rows left unjudged (none: 1)" in err and "consecutive attempts failed" in err and "--allow_partial" in err
    assert (cfg.tables_dir / "table2.md").read_text() == again
    assert eval_explan.main([*dead, "--allow_partial"]) == 0
    partial = (cfg.tables_dir / "table2.md").read_text()
    assert "partial: 1 of 8 rows not judged" in partial and "(partial) | 3/4 |" in partial

    # a subset run (--model_names both) keeps the other method's rows in summary and table
    assert eval_explan.main([*_argv(tmp_path), "--model_names", "both"]) == 0
    summary = read_json(cfg.judge_dir / "summary.json")
    assert list(summary["methods"]) == ["none", "both"]
    merged = rows_of((cfg.tables_dir / "table2.md").read_text())
    assert len(merged) == 2 and merged[0] == rows_of(partial)[0]
