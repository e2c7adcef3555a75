"""The paper's filtering pipeline on integer arrays, one config key per step.

Order (paper Appendix B.2 plus the usual clean-up): keep items with a title -> (MovieLens)
rating cut -> sort by time -> drop repeated (user, item) keeping the first -> iterative
k-core -> top-N most frequent items -> users with >= m interactions on them -> sample M
users (seeded) -> k-core again -> drop users too short for leave-one-out -> re-index from 1.

Events are numpy arrays so that the multi-million-row Amazon/Steam files filter in
seconds; every step records how many users/items/events it kept, for dataset.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import DatasetConfig
from core.utils import StageError

from .readers import RawData

log = logging.getLogger(__name__)


def natural_order(keys: list[str]) -> list[str]:
    """Numeric order when every id is an integer (MovieLens, Steam), else lexicographic.

    Re-indexing in this order (not in file order) makes the canonical ids independent of
    how the raw file happens to be sorted, and keeps ML-100K's ids equal to the original.
    """
    if keys and all(k.isdigit() for k in keys):
        return sorted(keys, key=lambda k: (int(k), k))
    return sorted(keys)


@dataclass
class Events:
    """Parallel arrays, one row per event: user code, item code, time, file position."""

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    order: np.ndarray
    rating: np.ndarray | None = None

    def take(self, mask_or_idx: np.ndarray) -> "Events":
        return Events(
            self.user[mask_or_idx], self.item[mask_or_idx], self.time[mask_or_idx], self.order[mask_or_idx],
            None if self.rating is None else self.rating[mask_or_idx],
        )

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def counts(self) -> tuple[int, int, int]:
        return int(np.unique(self.user).size), int(np.unique(self.item).size), len(self)


@dataclass
class FilterResult:
    """The filtered dataset in canonical ids plus the per-step log."""

    #: sequences[u-1] = item ids (1-based) of canonical user u in time order
    sequences: list[list[int]]
    #: raw user / item id of each canonical id (index 0 = id 1)
    user_raw: list[str]
    item_raw: list[str]
    steps: list[dict[str, Any]] = field(default_factory=list)


def _kcore(ev: Events, k: int, n_users: int, n_items: int) -> Events:
    """Iterative k-core: repeat until every user and item has >= k events."""
    if k <= 0:
        return ev
    while len(ev):
        cu = np.bincount(ev.user, minlength=n_users)
        ci = np.bincount(ev.item, minlength=n_items)
        keep = (cu[ev.user] >= k) & (ci[ev.item] >= k)
        if keep.all():
            break
        ev = ev.take(keep)
    return ev


def run_filters(raw: RawData, d: DatasetConfig) -> FilterResult:
    """Apply the configured steps to `raw`; raises StageError if nothing survives."""
    user_keys = natural_order(list(set(raw.users)))
    item_keys = natural_order(list(set(raw.item_ids) | set(raw.items)))
    ucode = {k: n for n, k in enumerate(user_keys)}
    icode = {k: n for n, k in enumerate(item_keys)}
    n_users, n_items = len(user_keys), len(item_keys)
    ev = Events(
        user=np.fromiter((ucode[u] for u in raw.users), dtype=np.int64, count=len(raw.users)),
        item=np.fromiter((icode[i] for i in raw.item_ids), dtype=np.int64, count=len(raw.item_ids)),
        time=np.asarray(raw.times, dtype=np.float64),
        order=np.arange(len(raw.users), dtype=np.int64),
        rating=None if raw.ratings is None else np.asarray(raw.ratings, dtype=np.float64),
    )
    steps: list[dict[str, Any]] = []

    def record(name: str, ev: Events, setting: Any = None) -> None:
        u, i, n = ev.counts()
        prev = steps[-1]["interactions"] if steps else n
        steps.append({"step": name, "setting": setting, "users": u, "items": i, "interactions": n,
                      "dropped": prev - n})
        log.info("%-16s %-8s users=%-8d items=%-7d interactions=%-9d dropped=%d",
                 name, "" if setting is None else setting, u, i, n, prev - n)

    record("raw", ev)
    if d.require_title:
        has_title = np.array([bool(raw.items.get(k, {}).get("title")) for k in item_keys], dtype=bool)
        n_missing_meta = sum(1 for k in set(raw.item_ids) if k not in raw.items)
        n_untitled = int((~has_title[np.unique(ev.item)]).sum())  # among items that have events
        if n_untitled:
            log.warning("%d item(s) have no title (%d with no metadata row at all); their events are dropped",
                        n_untitled, n_missing_meta)
        ev = ev.take(has_title[ev.item])
        record("require_title", ev, True)
    if d.min_rating > 0:
        if ev.rating is None:
            raise StageError(f"dataset.min_rating={d.min_rating} but source '{d.source}' has no ratings")
        ev = ev.take(ev.rating >= d.min_rating)
        record("min_rating", ev, d.min_rating)

    # time order per user; equal times keep their file order
    ev = ev.take(np.lexsort((ev.order, ev.time, ev.user)))
    if d.dedup and len(ev):
        pair = ev.user * n_items + ev.item
        _, first = np.unique(pair, return_index=True)
        ev = ev.take(np.sort(first))
        record("dedup", ev, True)
    if d.kcore > 0:
        ev = _kcore(ev, d.kcore, n_users, n_items)
        record("kcore", ev, d.kcore)
    if d.top_n_items > 0:
        ci = np.bincount(ev.item, minlength=n_items)
        # most frequent first; equal counts in canonical (natural) id order
        ranked = np.argsort(-ci, kind="stable")[: d.top_n_items]
        ranked = ranked[ci[ranked] > 0]
        keep_item = np.zeros(n_items, dtype=bool)
        keep_item[ranked] = True
        ev = ev.take(keep_item[ev.item])
        record("top_n_items", ev, d.top_n_items)
    if d.min_user_inters > 0:
        cu = np.bincount(ev.user, minlength=n_users)
        ev = ev.take(cu[ev.user] >= d.min_user_inters)
        record("min_user_inters", ev, d.min_user_inters)
    if d.sample_users > 0:
        present = np.unique(ev.user)
        if present.size > d.sample_users:
            rng = np.random.default_rng(d.seed)
            chosen = np.zeros(n_users, dtype=bool)
            chosen[rng.choice(present, size=d.sample_users, replace=False)] = True
            ev = ev.take(chosen[ev.user])
        record("sample_users", ev, d.sample_users)
    if d.final_kcore > 0:
        ev = _kcore(ev, d.final_kcore, n_users, n_items)
        record("final_kcore", ev, d.final_kcore)
    if d.min_seq_len > 0:
        cu = np.bincount(ev.user, minlength=n_users)
        ev = ev.take(cu[ev.user] >= d.min_seq_len)
        record("min_seq_len", ev, d.min_seq_len)
    if not len(ev):
        raise StageError(
            "no interactions left after filtering (see the step log above); loosen dataset.kcore / "
            "top_n_items / min_user_inters / final_kcore"
        )

    # re-index from 1 in natural raw-id order (codes are already in that order)
    users_left = np.unique(ev.user)
    items_left = np.unique(ev.item)
    new_uid = np.zeros(n_users, dtype=np.int64)
    new_uid[users_left] = np.arange(1, users_left.size + 1)
    new_iid = np.zeros(n_items, dtype=np.int64)
    new_iid[items_left] = np.arange(1, items_left.size + 1)
    uids = new_uid[ev.user]
    iids = new_iid[ev.item]
    # events are sorted by (user code, time, order); user codes map monotonically to uids
    bounds = np.flatnonzero(np.diff(uids)) + 1
    sequences = [chunk.tolist() for chunk in np.split(iids, bounds)]
    return FilterResult(
        sequences=sequences,
        user_raw=[user_keys[c] for c in users_left.tolist()],
        item_raw=[item_keys[c] for c in items_left.tolist()],
        steps=steps,
    )
