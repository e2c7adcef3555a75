"""Every alignment metric of Table 1, in one place (paper section 3.1.1).

The paper asks whether the explainer *mimics the recommender*, so every target here is
the recommender's output (its top-1 title, its candidate order, its yes/no decision),
never the user's real next item. Titles match by exact string equality after
``strip().lower()``: the paper counts "a successful output when there is a strict string
match between generated item names and their ground-truth names", and the original code
lower-cased both sides.

Per-sample functions take plain strings/lists so that they can be unit-tested against
hand-computed numbers; :func:`compute_metrics` turns the rows that
``src.infer_alignment`` writes (one per sample) into the numbers of the metrics file, so
that a metric fix never needs the model to run again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# One formula per metric for every row of Table 1: the recommender baselines (Random,
# Popularity, KD-SASRec) are scored with these two functions on item ids, the LLMs here on
# normalized titles. Task 2's graded relevance (1000, 100, 10, 1, 0 for the recommender's
# 1st..5th candidate) is the original RecExplainer code's; see recmodel.baselines.
from recmodel.baselines import ci95, next_item_hit_ndcg, ranking_ndcg  # noqa: F401 (ci95 re-exported)

#: separator of titles inside one answer (task records join lists with it)
TITLE_SEP = "; "

#: inference modes and the metric keys each one reports
MODE_METRICS: dict[str, tuple[str, ...]] = {
    "uid2next": ("hr@5", "ndcg@5"),
    "uidiid2rank": ("ndcg@5",),
    "uidiid2binary": ("acc",),
    "uid2hist": ("hcr",),
    "iid2title": ("acc",),
}


def normalize_title(text: str | None) -> str:
    """The form two titles are compared in: surrounding whitespace dropped, lower case."""
    return (text or "").strip().lower()


def split_titles(text: str | None, sep: str = TITLE_SEP) -> list[str]:
    """Split a generated list of titles on ``"; "``; empty pieces are dropped."""
    if not text:
        return []
    return [p.strip() for p in text.split(sep) if p.strip()]


#: a list-item marker at the start of a line: "1.", "2)", "(3)", "-", "*", "•"
_ITEM_MARK = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022])\s+")
#: an enumerator inside one line ("1. A 2. B"): a 1-2 digit number + "." or ")" + space
_INLINE_NUM = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})[.)]\s+")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "*": "*", "_": "_", "`": "`"}


def _clean_title(piece: str) -> str:
    """One listed title without its list marker, markdown emphasis or wrapping quotes."""
    p = _ITEM_MARK.sub("", piece, count=1).strip()
    for _ in range(3):  # **"Title"** -> Title
        if len(p) >= 2 and p[0] in _QUOTES and p.endswith(_QUOTES[p[0]]):
            n = len(p) - len(p.lstrip(p[0])) if p[0] in "*_" else 1
            p = p[n:len(p) - n].strip() if len(p) > 2 * n else p
        else:
            break
    return p


def parse_ranked_titles(text: str | None, k: int = 0) -> list[str]:
    """The ranked titles of a chat model's list answer (GPT4-ICL on task 1), best first.

    Accepted shapes: one title per line (numbered "1." / "1)" / "(1)", bulleted or bare; when
    some lines are numbered or bulleted, only those count, so a lead-in line such as "Here
    are the titles:" takes no rank), titles joined by ``"; "`` on one line, or an inline
    numbered list ("1. A 2. B"). Markers, markdown emphasis and wrapping quotes are
    removed; matching is left to the metric (strip + lower case). `k` > 0 keeps the first k.
    """
    if not text or not text.strip():
        return []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        marked = [ln for ln in lines if _ITEM_MARK.match(ln)]
        pieces = marked if marked else lines
    elif TITLE_SEP in text:
        pieces = text.split(TITLE_SEP)
    else:
        nums = list(_INLINE_NUM.finditer(text))
        if len(nums) >= 2 and [int(m.group(1)) for m in nums] == list(range(1, len(nums) + 1)) \
                and not text[: nums[0].start()].strip():
            cuts = [m.start() for m in nums] + [len(text)]
            pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
        else:
            pieces = [text]
    out = [t for t in (_clean_title(p) for p in pieces) if t]
    return out[:k] if k > 0 else out


# --------------------------------------------------------------------------- task 1


def hit_ndcg_at_k(predictions: Sequence[str], target: str, k: int = 5) -> tuple[float, float]:
    """HR@k and NDCG@k of a ranked list of generated titles against one target title.

    The first position whose title equals the target counts (a duplicated title never
    scores twice, and duplicates before the target push it down, as in the original
    evaluation). Fewer than k predictions are fine; an empty target never matches.
    """
    t = normalize_title(target)
    if not t:
        return 0.0, 0.0
    return next_item_hit_ndcg([normalize_title(p) for p in predictions], t, k=k)


# --------------------------------------------------------------------------- task 2


def rank_ndcg_from_text(generation: str, answer: str, k: int = 5) -> float:
    """Task-2 NDCG@k from generated text: split on ``"; "``, keep the first k titles.

    Each predicted title is matched at most once; titles that are not among the
    candidates take a position but earn nothing (:func:`recmodel.baselines.ranking_ndcg`).
    """
    preds = [normalize_title(t) for t in split_titles(generation)][:k]
    truth = [normalize_title(t) for t in split_titles(answer)]
    return ranking_ndcg(preds, truth, k=k)


# --------------------------------------------------------------------------- task 3


def yes_no_decision(logp_yes: float, logp_no: float) -> str:
    """The classifier's answer: the more probable of the two first answer tokens (ties: Yes)."""
    return "Yes" if logp_yes >= logp_no else "No"


def binary_correct(pred: str | None, label: str) -> float:
    """1.0 when the predicted Yes/No equals the label (case-insensitive), else 0.0."""
    return float(pred is not None and normalize_title(pred) == normalize_title(label))


# --------------------------------------------------------------------------- task 6 / iid2title


def history_coverage(generation: str, history_titles: Sequence[str]) -> float:
    """History coverage ratio: share of the (distinct) true history titles in the output.

    The output is split on ``"; "``; a true title counts once however often it is repeated,
    so a model cannot inflate the ratio by repeating one title.
    """
    truth = {normalize_title(t) for t in history_titles if normalize_title(t)}
    if not truth:
        return 0.0
    generated = {normalize_title(t) for t in split_titles(generation)}
    return len(truth & generated) / len(truth)


def exact_match(prediction: str | None, target: str) -> float:
    return float(bool(normalize_title(target)) and normalize_title(prediction) == normalize_title(target))


# --------------------------------------------------------------------------- aggregation


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0


def sample_scores(mode: str, row: dict, key: str = "generations") -> dict[str, float]:
    """Metric values of one evaluation row (as written by src.infer_alignment).

    Rows hold ``answer`` plus, for generative modes, ``generations`` (list of strings,
    ranked) and for uidiid2binary ``pred`` ("Yes"/"No" or None).
    """
    answer = row.get("answer", "")
    if mode == "uid2next":
        hr, ndcg = hit_ndcg_at_k(row.get(key) or [], answer, k=5)
        return {"hr@5": hr, "ndcg@5": ndcg}
    if mode == "uidiid2binary":
        return {"acc": binary_correct(row.get("pred"), answer)}
    first = (row.get(key) or [""])[0]
    if mode == "uidiid2rank":
        return {"ndcg@5": rank_ndcg_from_text(first, answer, k=5)}
    if mode == "uid2hist":
        return {"hcr": history_coverage(first, split_titles(answer))}
    if mode == "iid2title":
        return {"acc": exact_match(first, answer)}
    raise ValueError(f"unknown inference mode {mode!r}; known: {sorted(MODE_METRICS)}")


def compute_metrics(mode: str, rows: Sequence[dict], key: str = "generations") -> dict[str, float]:
    """Mean of every per-sample metric of `mode` over `rows`, plus ``n``."""
    if mode not in MODE_METRICS:
        raise ValueError(f"unknown inference mode {mode!r}; known: {sorted(MODE_METRICS)}")
    per = [sample_scores(mode, r, key) for r in rows]
    out: dict[str, Any] = {m: _mean(p[m] for p in per) for m in MODE_METRICS[mode]}
    out["n"] = len(rows)
    out["ci95"] = {m: ci95([p[m] for p in per]) for m in MODE_METRICS[mode]}
    return out
