"""Every metric formula of the project, in one place: Table 1 alignment metrics (paper
section 3.1.1) for the LLMs and the recommender baselines alike, the 95% interval of every
cell, the explanation decision check and rating summary (Table 2), and the discriminator
metrics (Table 3, Figure 4). Stages compute their inputs and call these; none re-derives one.

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

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: separator of titles inside one answer (task records join lists with it)
TITLE_SEP = "; "

#: inference modes and the metric keys each one reports (the registry's)
from core.registry import MODE_METRICS  # noqa: E402

# One formula per metric for every row of Table 1: the recommender baselines (Random,
# Popularity, KD-SASRec; recmodel.baselines) are scored with ranking_ndcg / next_item_hit_ndcg on
# item ids, the LLMs on normalized titles.

#: graded relevance of the target's 1st..5th candidate (the original RecExplainer code)
RANK_RELEVANCE = (1000.0, 100.0, 10.0, 1.0, 0.0)


def ranking_ndcg(pred_order: Sequence[Any], true_order: Sequence[Any], k: int = 5) -> float:
    """Task 2 NDCG@k of a predicted order of the candidates against the target model's order.

    Relevance is by position in the TRUE order: rel = (1000, 100, 10, 1, 0) for the
    target's 1st, 2nd, 3rd, 4th, 5th item (the RecExplainer code's calculate_rank_metrics).
    With pred = pred_order[:k] and j the 0-based position in pred::

        DCG  = sum over true items i (in true order) that occur in pred, matched to the
               first not-yet-matched occurrence j:   rel[i] / log2(j + 2)
        IDCG = sum_i rel[i] / log2(i + 2)              (pred == true)
        NDCG = DCG / IDCG

    Items in pred that are not candidates (e.g. an unparseable title) and repeats score 0;
    a shorter pred simply gets less DCG. Values: identical order 1.0; a uniformly random
    permutation 0.6131 in expectation (the paper's Random row: 0.6153 / 0.6100 / 0.6139);
    only the 5th item right 0.0.
    """
    rel = list(RANK_RELEVANCE) + [0.0] * max(0, len(true_order) - len(RANK_RELEVANCE))
    idcg = sum(rel[i] / math.log2(i + 2) for i in range(min(k, len(true_order))))
    if idcg == 0:
        return 0.0
    pred = list(pred_order)[:k]
    used: set[int] = set()
    dcg = 0.0
    for i, item in enumerate(true_order):
        for j, p in enumerate(pred):
            if p == item and j not in used:
                dcg += rel[i] / math.log2(j + 2)
                used.add(j)
                break
    return dcg / idcg


def next_item_hit_ndcg(pred_top: Sequence[Any], target: Any, k: int = 5) -> tuple[float, float]:
    """Task 1: (HR@k, NDCG@k) of one retrieved list against the target model's top-1 item."""
    for j, p in enumerate(list(pred_top)[:k]):
        if p == target:
            return 1.0, 1.0 / math.log2(j + 2)
    return 0.0, 0.0


def ci95(values: Sequence[float]) -> list[float]:
    """95% confidence interval of the mean of per-sample scores, as [low, high].

    Scores that are all 0/1 (hits, accuracy) get the Wilson score interval, which stays
    inside [0, 1] and is honest at 0 or 1 successes; graded scores (NDCG, coverage) get
    the Student-t interval of the mean. One sample, or none, gives [nan, nan].

    Scores that all lie in [0, 1] get an interval inside [0, 1]: a t-interval around a small
    NDCG with a few nonzero values reaches below 0 (a probe's 0.037 gave [-0.016, 0.090]),
    and cutting it at the bounds the mean cannot cross keeps its coverage.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2:
        return [math.nan, math.nan]
    mean = sum(vals) / n
    if all(v in (0.0, 1.0) for v in vals):
        z = 1.959963984540054
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
        # at 0 (or n) successes the bound is exactly 0 (1); the formula leaves ~1e-18
        lo = 0.0 if mean == 0.0 else max(0.0, centre - half)
        hi = 1.0 if mean == 1.0 else min(1.0, centre + half)
        return [lo, hi]
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if all(0.0 <= v <= 1.0 for v in vals):
        return [max(0.0, mean - half), min(1.0, mean + half)]
    return [mean - half, mean + half]


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
    candidates take a position but earn nothing (:func:`ranking_ndcg`).
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


def _first_generation(row: dict, key: str) -> str:
    return (row.get(key) or [""])[0]


def _score_next(row: dict, key: str) -> dict[str, float]:
    hr, ndcg = hit_ndcg_at_k(row.get(key) or [], row.get("answer", ""), k=5)
    return {"hr@5": hr, "ndcg@5": ndcg}


def _score_binary(row: dict, key: str) -> dict[str, float]:
    return {"acc": binary_correct(row.get("pred"), row.get("answer", ""))}


def _score_rank(row: dict, key: str) -> dict[str, float]:
    return {"ndcg@5": rank_ndcg_from_text(_first_generation(row, key), row.get("answer", ""), k=5)}


def _score_hist(row: dict, key: str) -> dict[str, float]:
    return {"hcr": history_coverage(_first_generation(row, key), split_titles(row.get("answer", "")))}


def _score_title(row: dict, key: str) -> dict[str, float]:
    return {"acc": exact_match(_first_generation(row, key), row.get("answer", ""))}


#: the per-row formula of each inference mode: (row, generations key) -> {metric: value}.
#: A new task's formula goes here, its metric keys in core.registry's InferenceTask.
SCORERS: dict[str, Callable[[dict, str], dict[str, float]]] = {
    "uid2next": _score_next, "uidiid2binary": _score_binary, "uidiid2rank": _score_rank,
    "uid2hist": _score_hist, "iid2title": _score_title,
}


def sample_scores(mode: str, row: dict, key: str = "generations") -> dict[str, float]:
    """Metric values of one evaluation row (as written by src.infer_alignment).

    Rows hold ``answer`` plus, for generative modes, ``generations`` (list of strings,
    ranked) and for uidiid2binary ``pred`` ("Yes"/"No" or None).
    """
    if mode not in SCORERS:
        raise ValueError(f"unknown inference mode {mode!r}; known: {sorted(MODE_METRICS)}")
    return SCORERS[mode](row, key)


def compute_metrics(mode: str, rows: Sequence[dict], key: str = "generations") -> dict[str, float]:
    """Mean of every per-sample metric of `mode` over `rows`, plus ``n``."""
    if mode not in MODE_METRICS:
        raise ValueError(f"unknown inference mode {mode!r}; known: {sorted(MODE_METRICS)}")
    per = [sample_scores(mode, r, key) for r in rows]
    out: dict[str, Any] = {m: _mean(p[m] for p in per) for m in MODE_METRICS[mode]}
    out["n"] = len(rows)
    out["ci95"] = {m: ci95([p[m] for p in per]) for m in MODE_METRICS[mode]}
    return out


# --------------------------------------------------------------------------- explanation decision check (paper 3.1.2; no LLM)

_VERBS = r"(?:like|enjoy|love|prefer|appreciate|favou?r|be\s+interested|be\s+into|be\s+drawn\s+to|want|purchase|buy|watch|click)"
_ADV = r"(?:(?:probably|definitely|most\s+likely|likely|certainly|really|highly|still)\s+)?"
_YES_PATTERNS = [
    r"^\W*yes\b",
    r"(?:^|(?<=[\s*\"'(\[:>]))yes(?=\s*(?:[,.!:;)\]*\"'<\n]|$))",
    rf"\b(?:will|would|should|does|do|might|may|can|could|is\s+going\s+to|are\s+going\s+to)\s+{_ADV}{_VERBS}\b",
    rf"\b(?:is|are)\s+{_ADV}likely\s+to\s+{_VERBS}\b",
    r"\b(?:i|we)\s+(?:would\s+|will\s+|do\s+|can\s+|strongly\s+|highly\s+)?recommend\b",
    r"\b(?:would|will|should|can)\s+(?:be\s+)?recommend(?:ed)?\b",
    r"\b(?:is|are)\s+recommended\b",
    r"\b(?:good|great|strong|excellent|perfect)\s+(?:fit|match|choice|recommendation)\b",
    r"\b(?:is|are)\s+interested\b",
]
_NOT = r"(?:\s+not|n't|not)"
_NO_PATTERNS = [
    r"^\W*no\b",
    r"(?:^|(?<=[\s*\"'(\[:>]))no(?=\s*(?:[,.!:;)\]*\"'<\n]|$))",
    rf"\b(?:will|would|should|does|do|might|may|can|could|is|are|wo|ca|did){_NOT}\s+{_ADV}(?:{_VERBS}|recommend|be\s+recommended)\b",
    r"\b(?:won't|wouldn't|doesn't|don't|shouldn't|isn't|aren't|cannot)\s+" + _ADV + r"(?:" + _VERBS + r"|recommend|be\s+recommended)\b",
    r"\b(?:unlikely|not\s+likely|less\s+likely)\s+to\b",
    r"\bnot\s+(?:be\s+)?(?:interested|recommended|a\s+good|a\s+great|a\s+strong|a\s+suitable|suitable)\b",
    r"(?:\bnot|n't)\s+(?:a\s+)?(?:good|great|strong|suitable|perfect)\s+(?:fit|match|choice)\b",
    r"\b(?:poor|bad|weak)\s+(?:fit|match|choice)\b",
    r"\b(?:dislike|not\s+recommend|against\s+recommending)\b",
    r"\b(?:i|we)\s+(?:would|do|will|can)\s*(?:not|n't)\s+recommend\b",
]
_YES_RE = [re.compile(p, re.I | re.M) for p in _YES_PATTERNS]
_NO_RE = [re.compile(p, re.I | re.M) for p in _NO_PATTERNS]


def _first(patterns: list[re.Pattern], text: str) -> int | None:
    starts = [m.start() for p in patterns if (m := p.search(text))]
    return min(starts) if starts else None


def decision_of(text: str | None) -> str | None:
    """"Yes", "No" or None: the explanation's first yes/no-like decision phrase.

    The earliest phrase wins (explanations state the decision first, then argue); negated
    phrases are separate patterns that start before their positive core ("would not like"),
    so at the same position the negation wins.
    """
    if not text:
        return None
    y, n = _first(_YES_RE, text), _first(_NO_RE, text)
    if y is None and n is None:
        return None
    if n is not None and (y is None or n <= y):
        return "No"
    return "Yes"


def normalise_label(label: Any) -> str:
    """"Yes"/"No" from the task label (also true/false, 1/0)."""
    s = str(label).strip().lower()
    if s in {"yes", "true", "1", "y"}:
        return "Yes"
    if s in {"no", "false", "0", "n"}:
        return "No"
    raise ValueError(f"label must be Yes/No, got {label!r}")


# --------------------------------------------------------------------------- explanation ratings and regression

#: the judge's rating scale (Appendix A)
RATINGS = (0, 1, 2, 3)


def rating_summary(ratings: Sequence[int | None]) -> dict[str, Any]:
    """Mean over parsed ratings and the distribution (counts and shares) of 0..3."""
    parsed = [r for r in ratings if r is not None]
    counts = {str(r): sum(1 for x in parsed if x == r) for r in RATINGS}
    n = len(parsed)
    return {
        "n_rated": n,
        "mean": (sum(parsed) / n) if n else None,
        "counts": counts,
        "shares": {k: (v / n if n else None) for k, v in counts.items()},
    }


def decision_summary(explanations: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Share of explanations whose first decision phrase matches the label (undecided = wrong),
    with its Wilson 95% interval (Table 2 rates a few dozen prompts per method), and the same
    share within each label (sklearn's per-label recall, undecided = a miss).

    WHY per label: Table 2's prompts are half positive, so an explainer that always says "Yes"
    agrees with half of them (0.5, against the unaligned model's ~0.03, which mostly decides
    nothing) while reading nothing of the recommender; its per-label shares, 1.0 / 0.0, say so.
    """
    from sklearn.metrics import recall_score

    decisions = [decision_of(t) for t in explanations]
    truth = [normalise_label(lab) for lab in labels]
    n = len(decisions)
    hits = [1.0 if d is not None and d == t else 0.0 for d, t in zip(decisions, truth)]
    per_label = (recall_score(truth, [d or "undecided" for d in decisions], labels=["Yes", "No"], average=None,
                              zero_division=0.0).tolist() if n else [None, None])
    agree = int(sum(hits))
    undecided = sum(1 for d in decisions if d is None)
    return {
        "n": n,
        "agree": agree,
        "agreement": agree / n if n else None,
        "agreement_ci95": ci95(hits),
        "undecided": undecided,
        "undecided_share": undecided / n if n else None,
        "said_yes": sum(1 for d in decisions if d == "Yes"),
        "said_no": sum(1 for d in decisions if d == "No"),
        #: agreement on the prompts labelled Yes / No (None where a label has no prompt)
        "agreement_on_yes": per_label[0] if "Yes" in truth else None,
        "agreement_on_no": per_label[1] if "No" in truth else None,
    }


# --------------------------------------------------------------------------- discriminators (Table 3, Figure 4)


def classification_metrics(y_true: list[int], y_pred: list[int], names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n_test": len(y_true),
        "per_class": {
            n: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, n in enumerate(names)
        },
        "labels": names,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: Any, pred: Any, train_mean: float | Sequence[float], seed: int = 0,
                       resamples: int = 2000) -> dict[str, Any]:
    """Score predictor: test MSE, the MSE of always predicting the train mean, their ratio,
    Pearson r, and a 95% interval for the ratio and for r.

    `train_mean` is one value, or one per pair where each pair was predicted by a model
    fitted on its own training part (cross-fitting: the text-blind predictor of a pair is the
    mean of the part its predictor saw).

    Table 3 is read as "how far below the mean predictor" on a few dozen test pairs, so the
    ratio needs its own interval: a paired percentile bootstrap over the test pairs (both
    MSEs are recomputed on each resample, which keeps their correlation), seeded so that a
    table rebuilt from the same predictions prints the same interval. r gets the Fisher-z
    interval (scipy's ``pearsonr(...).confidence_interval``). Intervals need >= 4 pairs and a
    non-constant target (r: and prediction); otherwise they are ``[nan, nan]``.
    """
    import numpy as np
    from scipy import stats
    from sklearn.metrics import mean_squared_error

    y = np.asarray(y_true, dtype=float)
    p = np.asarray(pred, dtype=float)
    m = np.broadcast_to(np.asarray(train_mean, dtype=float), y.shape)
    mse = float(mean_squared_error(y, p))
    base = float(mean_squared_error(y, m))
    nan2 = [math.nan, math.nan]
    out: dict[str, Any] = {"mse": mse, "baseline_mse": base, "mse_ratio": mse / base if base > 0 else math.nan,
                           "mse_ratio_ci95": nan2, "pearson": None, "pearson_ci95": nan2}
    varied = len(y) > 1 and p.std() > 0 and y.std() > 0
    if varied:
        out["pearson"] = float(np.corrcoef(y, p)[0, 1])
        if len(y) >= 4:
            ci = stats.pearsonr(y, p).confidence_interval(confidence_level=0.95)
            out["pearson_ci95"] = [float(ci.low), float(ci.high)]
    if len(y) < 4 or base <= 0:
        return out

    def ratio(a: Any, b: Any, c: Any, axis: int = -1) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean((a - b) ** 2, axis=axis) / np.mean((a - c) ** 2, axis=axis)

    boot = stats.bootstrap((y, p, np.array(m)), ratio, paired=True, vectorized=True, n_resamples=resamples,
                           confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    out["mse_ratio_ci95"] = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    return out
