"""Readers for data_gen's inputs, each one strict: a bad file stops the stage by name.

Inputs are the canonical dataset (through `preprocess.dataset.load_canonical`, the single
reader of those files), the recommender's exports ``{train,valid,test}_top.jsonl`` and
``item_sim.json``, and optionally a ShareGPT json. The exports are checked against the
canonical sequences (every row's history must be the items right before its target,
valid/test targets must be the leave-one-out items): stale exports from another
dataset/run would otherwise yield fluent but wrong alignment labels that nothing later
could detect.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from data_gen.templates import ITEM_TOKEN, USER_TOKEN
from core.utils import StageError, iter_jsonl, read_json

#: strings the LLM's tokenizer turns into recommender-embedding markers
MARKERS = (USER_TOKEN, ITEM_TOKEN)

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TopRow:
    """One exported (user, position) of the recommender, validated."""

    uid: int
    #: index of `target` in the user's full sequence (train: 1..len-3, valid: len-2, test: len-1)
    position: int
    #: last recmodel.max_seq_len items before the position, oldest first
    history: tuple[int, ...]
    target: int
    #: the model's ranking (history masked); top[0] is task 1's answer
    top: tuple[int, ...]
    #: task 2: candidates sorted by model score, best first
    rank_candidates: tuple[int, ...]
    pos: int
    neg: int
    pos_score: float | None
    neg_score: float | None
    #: "file:line" for messages
    where: str


def load_canonical_data(cfg: Any) -> Any:
    """`preprocess.dataset.load_canonical(cfg)`, with its absence reported as a StageError."""
    try:
        from preprocess.dataset import load_canonical
    except ImportError as e:  # pragma: no cover - the module is part of the repository
        raise StageError(f"cannot import preprocess.dataset.load_canonical ({e})") from None
    data = load_canonical(cfg)
    if not data.sequences:
        raise StageError(f"{cfg.data_dir / 'sequences.txt'}: no users")
    return data


def _jsonl_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, object); the shared reader reports missing files and malformed lines."""
    return enumerate(iter_jsonl(path, "recommender export"), 1)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _id_list(row: dict, key: str, where: str, n_items: int, min_len: int = 1) -> tuple[int, ...]:
    v = row.get(key)
    if not isinstance(v, list) or not all(_int(x) for x in v):
        raise StageError(f"{where}: '{key}' must be a list of item ids, got {v!r:.120}")
    if len(v) < min_len:
        raise StageError(f"{where}: '{key}' needs at least {min_len} item ids, got {len(v)}")
    bad = [x for x in v if not 1 <= x <= n_items]
    if bad:
        raise StageError(f"{where}: '{key}' holds unknown item id {bad[0]} (items are 1..{n_items})")
    return tuple(v)


def _id(row: dict, key: str, where: str, n_items: int) -> int:
    v = row.get(key)
    if not _int(v) or not 1 <= v <= n_items:
        raise StageError(f"{where}: '{key}' must be an item id in 1..{n_items}, got {v!r}")
    return v


def _score(row: dict, key: str, where: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StageError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def _locate(seq: list[int], history: tuple[int, ...], target: int, lo: int, hi: int) -> int | None:
    """The position p in [lo, hi] with seq[p] == target and seq[:p] ending with history."""
    h = list(history)
    for p in range(min(hi, len(seq) - 1), lo - 1, -1):
        if seq[p] == target and p >= len(h) and seq[p - len(h):p] == h:
            return p
    return None


def load_top(path: Path, split: str, sequences: dict[int, list[int]], n_items: int) -> list[TopRow]:
    """Read and validate one ``*_top.jsonl``; rows come back sorted by (uid, position)."""
    rows: list[TopRow] = []
    seen: set[tuple[int, int]] = set()
    for lineno, r in tqdm(_jsonl_lines(path), desc=f"read {path.name}", leave=False):
        where = f"{path}:{lineno}"  # row number (= line number: the exports have no blank lines)
        missing = [k for k in ("uid", "history", "target", "top", "rank_candidates", "pos", "neg") if k not in r]
        if missing:
            raise StageError(f"{where}: missing key '{missing[0]}' (a *_top.jsonl row needs uid, history, "
                             "target, top, rank_candidates, pos, neg)")
        uid = r["uid"]
        if not _int(uid) or uid not in sequences:
            raise StageError(f"{where}: 'uid' {uid!r} is not a user of the canonical dataset")
        history = _id_list(r, "history", where, n_items)
        target = _id(r, "target", where, n_items)
        top = _id_list(r, "top", where, n_items)
        cands = _id_list(r, "rank_candidates", where, n_items, min_len=2)
        if len(set(cands)) != len(cands):
            raise StageError(f"{where}: 'rank_candidates' has repeated items: {list(cands)}")
        pos, neg = _id(r, "pos", where, n_items), _id(r, "neg", where, n_items)
        if pos == neg:
            raise StageError(f"{where}: 'pos' and 'neg' are the same item {pos}")
        ps, ns = _score(r, "pos_score", where), _score(r, "neg_score", where)
        if ps is not None and ns is not None and ps < ns:
            raise StageError(f"{where}: pos_score {ps} is below neg_score {ns}; pos/neg swapped?")
        seq = sequences[uid]
        n = len(seq)
        lo, hi = {"train": (1, n - 3), "valid": (n - 2, n - 2), "test": (n - 1, n - 1)}[split]
        p = _locate(seq, history, target, lo, hi)
        if p is None:
            want = {"train": "a train position (s[1..-3])", "valid": "the second-last item s[-2]",
                    "test": "the last item s[-1]"}[split]
            raise StageError(
                f"{where}: target {target} with this history is not {want} of user {uid}'s sequence in "
                "data/sequences.txt; the recommender exports do not match the canonical dataset "
                "(re-run recmodel infer after preprocess)"
            )
        if (uid, p) in seen:
            raise StageError(f"{where}: duplicate row for user {uid} at position {p}")
        seen.add((uid, p))
        rows.append(TopRow(uid, p, history, target, top, cands, pos, neg, ps, ns, where))
    if not rows:
        raise StageError(f"{path}: no rows")
    rows.sort(key=lambda t: (t.uid, t.position))
    log.info("%s: %d rows, %d users", path.name, len(rows), len({t.uid for t in rows}))
    return rows


def load_item_sim(path: Path, n_items: int) -> dict[int, list[int]]:
    """``{"<iid>": [iid, ...]}`` -> {iid: [similar iids]}, validated."""
    raw = read_json(path, "recommender export")
    if not isinstance(raw, dict):
        raise StageError(f"{path}: expected an object {{\"<iid>\": [iid, ...]}}, got {type(raw).__name__}")
    out: dict[int, list[int]] = {}
    for k, v in raw.items():
        try:
            iid = int(k)
        except ValueError:
            raise StageError(f"{path}: key {k!r} is not an item id") from None
        if not 1 <= iid <= n_items:
            raise StageError(f"{path}: key {k!r} is not an item id in 1..{n_items}")
        if not isinstance(v, list) or not all(_int(x) and 1 <= x <= n_items for x in v):
            raise StageError(f"{path}: entry {k!r} must be a list of item ids in 1..{n_items}, got {v!r:.120}")
        out[iid] = [x for x in v if x != iid]
    return out


# --------------------------------------------------------------------------- ShareGPT


def load_sharegpt(path: Path, max_chars: int, multi_turn: bool = False) -> tuple[list[dict], Counter]:
    """Conversations of a ShareGPT_V3 json that are usable as training dialogues.

    Kept: a list of turns whose roles are exactly human, gpt, human, gpt, ... (strict
    alternation, starting with the human), every value a non-empty string, at least one
    human/gpt pair, and a first human turn of at most `max_chars` characters (the length
    budget: the first turn is what every training sample keeps). A trailing unanswered
    human turn is dropped, since there is nothing to learn from it. Conversations whose
    trained text (the first pair, or every turn with `multi_turn`) contains the literal
    marker strings ``<user>`` / ``<item>`` (e.g. RSS ``<item>`` tags) are dropped too: the
    tokenizer would read them as recommender-embedding markers with no id to bind.
    Returns the kept conversations (in file order) and a count of drops by reason, which
    the caller logs.
    """
    if not path.is_file():
        raise StageError(f"ShareGPT file not found: {path} (data_gen.sharegpt_file, relative to paths.raw_dir)")
    raw = read_json(path, "ShareGPT file")
    if not isinstance(raw, list):
        raise StageError(f"{path}: expected a JSON list of {{\"id\", \"conversations\"}}, got {type(raw).__name__}")
    kept: list[dict] = []
    drops: Counter = Counter()
    for k, conv in enumerate(tqdm(raw, desc="ShareGPT", leave=False)):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            drops["no conversations list"] += 1
            continue
        if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
            drops["malformed turn"] += 1
            continue
        if turns and turns[-1].get("from") == "human":
            turns = turns[:-1]
        if len(turns) < 2:
            drops["fewer than one human/gpt pair"] += 1
            continue
        if any(t.get("from") != ("human", "gpt")[j % 2] for j, t in enumerate(turns)):
            drops["roles not strictly human/gpt alternating"] += 1
            continue
        if any(not t["value"].strip() for t in turns):
            drops["empty turn"] += 1
            continue
        if max_chars > 0 and len(turns[0]["value"]) > max_chars:
            drops["first turn over the length budget"] += 1
            continue
        if any(m in t["value"] for t in (turns if multi_turn else turns[:2]) for m in MARKERS):
            drops["contains a <user>/<item> marker string"] += 1
            continue
        cid = conv.get("id")
        kept.append({
            "source_id": str(cid) if cid is not None else f"#{k}",
            "conversations": [{"from": t["from"], "value": t["value"]} for t in turns],
        })
    return kept, drops
