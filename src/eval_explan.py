"""Judge the generated explanations and write Table 2 (paper 3.4.1, Appendix A).

``python -m src.eval_explan --config X [--model_names a,b] [--model_response_files f1,f2]
[--split valid] [--no_judge] [--allow_partial] [--force]``

For every method (default: every ``explain/<method>_<split>.jsonl`` present) the same
(user, item) pairs are selected (sorted by uid, iid; ``explain.judge_max_samples`` of them,
the paper used 500), then:

* the **deterministic decision check** (first yes/no phrase vs label) is always computed;
* the **LLM judge** (Appendix A prompt, through :class:`core.api_client.ChatClient`) runs
  when an endpoint is configured. Judged rows are cached in ``judge/<method>.jsonl`` keyed
  by sample id and explanation hash, and every request is in the API disk cache, so a
  re-run sends nothing. Without an endpoint the ratings already cached are used (a re-run
  with no API variables rebuilds the same Table 2); with nothing cached the judge is
  reported as skipped and the table still shows the deterministic check.

When an endpoint is configured and some rows are left unjudged (failed requests, a tripped
circuit breaker), the stage exits non-zero without touching Table 2 (the GPT-4-ICL rows of
``src.infer_alignment`` behave the same); ``--allow_partial`` writes it anyway with those cells
marked "partial". ``--model_names`` judges a subset and merges it into the summary of the
other methods.

Outputs: ``judge/summary.json``, ``tables/table2.md`` and ``.csv`` (printed too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from core.api_client import ChatClient, FatalAPIError, request_key
from core.config import Config, ConfigError, add_config_args, config_from_args
from core.registry import EXPLAIN_METHODS as METHOD_ORDER, explain_file, method_display
from core.metrics import decision_summary, normalise_label, rating_summary
from core.tables import render_titled, with_interval
from src.judge import explanation_sha, judge_many, judge_messages
from core.utils import JsonlAppender, StageError, iter_jsonl, run_stage, write_json, write_text

log = logging.getLogger("src.eval_explan")

REQUIRED = ("id", "label", "explanation")


def judge_file(cfg: Config, method: str, split: str) -> Path:
    """judge/<method>.jsonl for the valid split (the paper's test prompts), <method>_<split>.jsonl otherwise."""
    return cfg.judge_dir / (f"{method}.jsonl" if split == "valid" else f"{method}_{split}.jsonl")


def load_explanations(path: Path) -> list[dict]:
    """Rows of an explanation file, last row per id winning (a regenerated row replaces the old)."""
    rows: dict[str, dict] = {}
    for lineno, row in enumerate(iter_jsonl(path, what="explanation file"), 1):
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise StageError(f"{path}: row {lineno} lacks {', '.join(missing)} (expected {', '.join(REQUIRED)})")
        try:
            row["label"] = normalise_label(row["label"])
        except ValueError as e:
            raise StageError(f"{path}: row {lineno}: {e}") from None
        if not isinstance(row["explanation"], str):
            raise StageError(f"{path}: row {lineno}: 'explanation' must be a string")
        rows[str(row["id"])] = row
    if not rows:
        raise StageError(f"{path}: no explanations")
    return list(rows.values())


def select_rows(rows: list[dict], cap: int) -> list[dict]:
    """The same (uid, iid) pairs for every method: sorted by pair, then the first `cap`."""
    def key(r: dict) -> tuple:
        return (int(r.get("uid", 0) or 0), int(r.get("iid", 0) or 0), str(r["id"]))

    rows = sorted(rows, key=key)
    return rows[:cap] if cap and cap > 0 else rows


class _Titles:
    """History / target titles for rows that do not carry them (loaded once, lazily)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._titles: list[str] | None = None

    def context(self, row: dict, where: str) -> tuple[list[str], str]:
        if isinstance(row.get("history_titles"), list) and isinstance(row.get("item_title"), str):
            return [str(t) for t in row["history_titles"]], row["item_title"]
        if self._titles is None:
            from preprocess.dataset import load_canonical

            self._titles = load_canonical(self.cfg).titles
        titles = self._titles
        try:
            hist = [int(i) for i in row["history"]][-self.cfg.data_gen.max_hist_len:]
            return [titles[i] for i in hist], titles[int(row["iid"])]
        except (KeyError, TypeError, ValueError, IndexError):
            raise StageError(
                f"{where}: row {row.get('id')!r} has neither history_titles/item_title nor valid history/iid ids"
            ) from None


def judge_method(
    cfg: Config, client: ChatClient | None, method: str, rows: list[dict], cache_path: Path, titles: _Titles,
    judge_model: str, where: str, errors: list[str] | None = None,
) -> dict[str, dict]:
    """Judge rows not yet in the judge cache; return the cached judge row per sample id.

    A fatal API error (bad key, the circuit breaker) leaves the rest unjudged and is
    appended to `errors`; the answers received before it are cached either way.
    """
    errors = [] if errors is None else errors
    params: dict[str, Any] = {"max_tokens": cfg.explain.judge_max_tokens}
    if cfg.explain.judge_model:
        params["model"] = cfg.explain.judge_model
    convs = {}
    for row in rows:
        hist, item = titles.context(row, where)
        convs[str(row["id"])] = judge_messages(hist, item, row["label"], row["explanation"])
    # what a cached rating answered: the whole request (rubric, titles, label, explanation,
    # max tokens), so a changed judge prompt or setting is judged again, never reused
    asked = {sid: request_key(params.get("model", ""), msgs, params) for sid, msgs in convs.items()}
    with JsonlAppender(cache_path) as app:
        cached = {str(r["id"]): r for r in app.rows}
        todo = [row for row in rows if not _current(cached.get(str(row["id"])), row, judge_model, asked[str(row["id"])])]
        if todo and client is not None:
            log.info("%s: judging %d explanation(s) (%d cached)", method, len(todo), len(rows) - len(todo))
            try:
                outcomes = judge_many(client, [convs[str(r["id"])] for r in todo], cfg.explain.judge_retries,
                                      desc=f"judge {method}", **params)
            except FatalAPIError as e:  # bad key, tripped breaker: these rows stay unjudged, the caller decides
                log.error("judge %s: %s", method, e)
                errors.append(f"{method}: {e}")
                outcomes = []
            for row, out in zip(todo, outcomes):
                if out.failed:
                    continue  # not cached: a later run asks again
                jrow = {
                    "id": row["id"], "method": method, "uid": row.get("uid"), "iid": row.get("iid"),
                    "label": row["label"], "rating": out.rating, "answer": out.answer, "attempts": out.attempts,
                    "first_unparseable": out.first_unparseable, "truncated": out.truncated,
                    "explanation_sha": explanation_sha(row["explanation"]),
                    "request_sha": asked[str(row["id"])],
                    "judge_model": judge_model,
                }
                app.append(jrow)
                cached[str(row["id"])] = jrow
        elif todo:
            log.info("%s: %d explanation(s) not judged (no endpoint)", method, len(todo))
    return {str(r["id"]): cached[str(r["id"])] for r in rows
            if _current(cached.get(str(r["id"])), r, judge_model, asked[str(r["id"])])}


def _current(cached: dict | None, row: dict, judge_model: str, request_sha: str) -> bool:
    """A cached judge row still answers for `row`: the same judge request (rows cached
    before requests were recorded: the same explanation) and the same judge. An unknown
    judge ("": no api.model / ENGINE on a cache-only re-run) accepts the cached one's."""
    if cached is None or (judge_model and cached.get("judge_model") != judge_model):
        return False
    if "request_sha" in cached:
        return cached["request_sha"] == request_sha
    return cached.get("explanation_sha") == explanation_sha(row["explanation"])


def discover_methods(cfg: Config, split: str) -> list[str]:
    """Methods with an explanation file for `split`, in the paper's table order."""
    found = [m for m in METHOD_ORDER if explain_file(cfg, m, split).is_file()]
    extra = sorted(
        p.name[: -len(f"_{split}.jsonl")]
        for p in cfg.explain_dir.glob(f"*_{split}.jsonl")
        if p.name[: -len(f"_{split}.jsonl")] not in METHOD_ORDER
    ) if cfg.explain_dir.is_dir() else []
    return found + extra


def evaluate(
    cfg: Config, methods: list[str], files: list[Path], split: str = "valid", use_judge: bool = True,
    force: bool = False, environ: Any = None,
) -> dict[str, Any]:
    """Decision check and (when possible) the LLM judge for every method; returns the summary."""
    if not methods:
        raise StageError(
            f"no explanation files for split '{split}' in {cfg.explain_dir} "
            "(written by python -m src.infer_explan / bash shell/infer_explan.sh; run that stage first)"
        )
    available = use_judge and ChatClient.available(cfg, environ)
    client = ChatClient(cfg, environ=environ) if available else None
    judge_model = cfg.explain.judge_model or (client.model if client else cfg.api.model) or ""
    if not use_judge:
        why = "--no_judge"
    elif not available:
        why = "no API endpoint configured: set OPENAI_API_KEY + ENGINE, or api.base_url + api.model"
    else:
        why = ""
    titles = _Titles(cfg)
    errors: list[str] = []
    judged_rows: list[dict] = []
    summary: dict[str, Any] = {
        "split": split,
        "judge": {"model": judge_model, "status": "", "attempted": client is not None, "errors": [],
                  "retries": cfg.explain.judge_retries,
                  "note": "the paper's judge was GPT-4; this run's judge is the model named here"},
        "max_samples": cfg.explain.judge_max_samples,
        "methods": {},
    }
    for method, path in zip(methods, files):
        rows = select_rows(load_explanations(path), cfg.explain.judge_max_samples)
        decision = decision_summary([r["explanation"] for r in rows], [r["label"] for r in rows])
        cache_path = judge_file(cfg, method, split)
        if force and cache_path.exists():
            cache_path.unlink()
        # without an endpoint (or with --no_judge) the cached ratings still count: nothing is sent
        judged = judge_method(cfg, client, method, rows, cache_path, titles, judge_model, str(path), errors) if (
            client is not None or cache_path.exists()) else {}
        judged_rows.extend(judged.values())
        ratings = [judged[str(r["id"])]["rating"] if str(r["id"]) in judged else None for r in rows]
        jsum = rating_summary(ratings)
        jsum.update(
            n_judged=len(judged),
            unparseable_first=sum(1 for j in judged.values() if j.get("first_unparseable")),
            unparseable_final=sum(1 for j in judged.values() if j.get("rating") is None),
            truncated=sum(int(j.get("truncated") or 0) for j in judged.values()),
            not_judged=len(rows) - len(judged),
        )
        summary["methods"][method] = {
            "display": method_display(cfg, method), "file": str(path), "n": len(rows),
            "judge": jsum, "decision": decision, "fluency": fluency_summary([r["explanation"] for r in rows]),
        }
        log.info(
            "%s: n=%d judge mean=%s decision agreement=%.3f", method, len(rows),
            f"{jsum['mean']:.3f}" if jsum["mean"] is not None else "-", decision["agreement"] or 0.0,
        )
    summary["judge"]["status"] = judge_status(summary["methods"], client is not None, why)
    summary["judge"]["errors"] = errors
    if not judge_model:  # a cache-only re-run names the judge that the cached ratings came from
        used = sorted({str(r.get("judge_model")) for r in judged_rows if r.get("judge_model")})
        summary["judge"]["model"] = ", ".join(used)
    if not summary["judge"]["status"].startswith("ran"):
        log.warning("LLM judge %s", summary["judge"]["status"])
    return summary


def judge_status(methods: dict[str, Any], sent: bool, why: str) -> str:
    """What Table 2's judge columns rest on: every row, some rows (partial), or none."""
    n = sum(m["n"] for m in methods.values())
    left = sum(m["judge"]["not_judged"] for m in methods.values())
    source = "ran" if sent else "from cache"
    if n and not left:
        return source + ("" if sent else f" ({why}; every row was cached)")
    if left == n:
        return f"skipped ({why})" if why else "skipped (no row judged)"
    return f"partial: {left} of {n} rows not judged ({source}{'; ' + why if why else ''})"


def unjudged(summary: dict[str, Any]) -> dict[str, int]:
    """Methods with rows left unjudged, and how many."""
    return {m: s["judge"]["not_judged"] for m, s in summary["methods"].items() if s["judge"]["not_judged"]}


def merge_summaries(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A subset run's summary laid over the previous one (same split): other methods are kept."""
    if old.get("split") != new["split"]:
        return new
    methods = {**old.get("methods", {}), **new["methods"]}
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    merged = {**new, "methods": dict(sorted(methods.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))}
    if old.get("judge", {}).get("status") != new["judge"]["status"]:
        merged["judge"] = {**new["judge"], "status": f"{new['judge']['status']} (kept from an earlier run for "
                           f"{', '.join(m for m in methods if m not in new['methods']) or 'no method'})"}
    return merged


def distinct_bigram_ratio(text: str) -> float | None:
    """Distinct word bigrams / all word bigrams of one text (1.0 = no bigram repeats).

    WHY: a degenerate explanation ("The user has liked the item: Love, Love, Love; ...")
    repeats itself; the share of distinct bigrams measures that without a judge. None for
    texts of fewer than two words.
    """
    words = text.lower().split()
    grams = list(zip(words, words[1:]))
    return len(set(grams)) / len(grams) if grams else None


#: below this distinct-bigram ratio an explanation counts as degenerate (repeats itself)
DEGENERATE_BELOW = 0.5


def fluency_summary(texts: list[str]) -> dict[str, Any]:
    """Mean distinct-bigram ratio and the share of degenerate (repetitive) explanations."""
    ratios = [r for r in (distinct_bigram_ratio(t) for t in texts) if r is not None]
    return {
        "distinct2_mean": sum(ratios) / len(ratios) if ratios else None,
        "degenerate_share": sum(r < DEGENERATE_BELOW for r in ratios) / len(ratios) if ratios else None,
        "n": len(ratios),
    }


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


TABLE2_COLUMNS = [
    "Method", "Judge mean (0-3)", "n rated", "RATING-0", "RATING-1", "RATING-2", "RATING-3",
    "unparseable (first / final)", "Decision = label (rule) [95% CI]", "on Yes / No labels", "undecided",
    "distinct-2", "repetitive",
]


def table2_rows(summary: dict[str, Any]) -> list[list[str]]:
    out = []
    for method, s in summary["methods"].items():
        j, d = s["judge"], s["decision"]
        shares = j["shares"]
        partial = " (partial)" if j["n_judged"] and j["not_judged"] else ""
        out.append([
            s["display"], _fmt(j["mean"]) + partial, f"{j['n_rated']}/{s['n']}",
            *[(_fmt(shares[str(r)], 3) if j["n_rated"] else "-") for r in range(4)],
            f"{j['unparseable_first']} / {j['unparseable_final']}" if j["n_judged"] else "-",
            with_interval(d["agreement"], d.get("agreement_ci95")),
            f"{_fmt(d.get('agreement_on_yes'), 2)} / {_fmt(d.get('agreement_on_no'), 2)}", _fmt(d["undecided_share"], 3),
            _fmt(s.get("fluency", {}).get("distinct2_mean"), 3), _fmt(s.get("fluency", {}).get("degenerate_share"), 3),
        ])
    return out


def render_table2(summary: dict[str, Any]) -> tuple[str, str]:
    """(markdown, csv) of Table 2."""
    rows = table2_rows(summary)
    j = summary["judge"]
    title = (
        f"Table 2. Explanation quality on the {summary['split']} prompts. Judge: "
        f"{j['model'] or 'none'} ({j['status']}); the paper's judge was GPT-4. RATING columns are "
        "shares of rated answers; 'Decision = label (rule)' is the deterministic check (first "
        "yes/no phrase of the explanation vs the label; Wilson 95% interval), no LLM involved, and 'on Yes / No "
        "labels' the same within each label (an explainer that always says Yes: 1.00 / 0.00, agreeing with "
        "every Yes-labelled prompt); 'distinct-2' is the mean "
        "share of distinct word bigrams per explanation and 'repetitive' the share below "
        f"{DEGENERATE_BELOW} (degenerate repetition)."
    )
    return render_titled(title, rows, TABLE2_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model_names", default="", help="comma-separated methods (behaviour,intention,both,none,chatgpt); default: every explanation file present")
    parser.add_argument("--model_response_files", default="", help="comma-separated explanation files, one per --model_names entry (default explain/<method>_<split>.jsonl)")
    parser.add_argument("--split", default="valid", help="explanation split to judge (default: %(default)s)")
    parser.add_argument("--no_judge", action="store_true", help="deterministic check only, no API calls (cached ratings are still used)")
    parser.add_argument("--allow_partial", action="store_true",
                        help="write Table 2 even when some rows could not be judged (those cells are marked partial)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        methods = [m.strip() for m in args.model_names.split(",") if m.strip()] or discover_methods(cfg, args.split)
        if args.model_response_files:
            files = [Path(f.strip()) for f in args.model_response_files.split(",") if f.strip()]
            if len(files) != len(methods):
                raise ConfigError(
                    f"--model_response_files has {len(files)} file(s) but --model_names names {len(methods)} method(s)"
                )
        else:
            files = [explain_file(cfg, m, args.split) for m in methods]
        summary = evaluate(cfg, methods, files, args.split, use_judge=not args.no_judge, force=args.force)
        left = unjudged(summary)
        if left and summary["judge"]["attempted"] and not args.allow_partial:
            errs = summary["judge"]["errors"]
            raise StageError(
                "LLM judge: rows left unjudged (" + ", ".join(f"{m}: {k}" for m, k in left.items()) + ")"
                + (f" after: {errs[0]}" if errs else "") + ". The answers received are cached, so a re-run "
                "asks only for the rest. Table 2 was not written; --allow_partial writes it with those cells "
                "marked partial"
            )
        summary_path = cfg.judge_dir / "summary.json"
        if args.model_names and summary_path.is_file():
            try:
                summary = merge_summaries(json.loads(summary_path.read_text(encoding="utf-8")), summary)
            except (OSError, ValueError) as e:
                log.warning("%s unreadable (%s); Table 2 shows this run's methods only", summary_path, e)
        md, csv_text = render_table2(summary)
        write_json(summary_path, summary)
        write_text(cfg.tables_dir / "table2.md", md)
        write_text(cfg.tables_dir / "table2.csv", csv_text)
        print(md)
        log.info("wrote %s, %s", cfg.judge_dir / "summary.json", cfg.tables_dir / "table2.md")

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
