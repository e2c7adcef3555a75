"""The canonical dataset as every later stage sees it: `load_canonical(cfg)`.

Files (cfg.data_dir): sequences.txt (``uid iid iid ...``, time order, ids from 1),
items.jsonl (line k = item k+1), dataset.json (counts, settings, raw-file hashes).

Loading is strict on purpose: a stale or hand-edited file (an unknown item id, a user
listed twice, counts that disagree with dataset.json) stops with a StageError naming the
file and line, because a recommender trained on silently repaired data would be measuring
something else than the dataset its report describes.

Split: leave-one-out by time. For a user sequence s: train = s[:-2], valid target = s[-2],
test target = s[-1]; the valid history is s[:-2], the test history s[:-1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config import Config
from core.utils import StageError, read_json, utf8_lines

SEQUENCES = "sequences.txt"
ITEMS = "items.jsonl"
DATASET_JSON = "dataset.json"
STATS_MD = "stats.md"

Split = Literal["train", "valid", "test"]


def canonical_paths(data_dir: Path) -> dict[str, Path]:
    return {name: data_dir / name for name in (SEQUENCES, ITEMS, DATASET_JSON)}


@dataclass(frozen=True)
class UserSplit:
    """One user's leave-one-out split."""

    train: list[int]
    valid: int
    test: int


def leave_one_out(seq: list[int]) -> UserSplit:
    """train = seq[:-2], valid = seq[-2], test = seq[-1]; needs at least 3 items."""
    if len(seq) < 3:
        raise ValueError(f"leave-one-out needs >= 3 interactions, got {len(seq)}")
    return UserSplit(train=list(seq[:-2]), valid=seq[-2], test=seq[-1])


@dataclass
class CanonicalData:
    """Sequences and items of one dataset; ids start at 1 (0 is padding)."""

    sequences: dict[int, list[int]]
    #: items[iid - 1] is item iid's metadata dict (always has "iid" and "title")
    items: list[dict[str, Any]]
    #: dataset.json contents (counts, settings, hashes)
    info: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        self.titles: list[str] = [""] + [it["title"] for it in self.items]

    # ------------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())

    @property
    def users(self) -> list[int]:
        """User ids in increasing order."""
        return sorted(self.sequences)

    # ------------------------------------------------------------------ items
    def item(self, iid: int) -> dict[str, Any]:
        if not 1 <= iid <= len(self.items):
            raise KeyError(f"unknown item id {iid} (valid: 1..{len(self.items)})")
        return self.items[iid - 1]

    def title(self, iid: int) -> str:
        return self.item(iid)["title"]

    # ------------------------------------------------------------------ split views
    def split(self, uid: int) -> UserSplit:
        return leave_one_out(self.sequences[uid])

    def train_seq(self, uid: int) -> list[int]:
        """The training part of a user's sequence (all but the last two)."""
        return self.sequences[uid][:-2]

    def target(self, uid: int, split: Split) -> int:
        """The held-out item of `split` (valid: second last, test: last)."""
        s = self.sequences[uid]
        if split == "valid":
            return s[-2]
        if split == "test":
            return s[-1]
        raise ValueError(f"split must be 'valid' or 'test' for a single target, got {split!r}")

    def history(self, uid: int, split: Split) -> list[int]:
        """The items a model may see when predicting `split`'s target.

        train -> s[:-2] (the whole training part), valid -> s[:-2], test -> s[:-1].
        """
        s = self.sequences[uid]
        if split in ("train", "valid"):
            return s[:-2]
        if split == "test":
            return s[:-1]
        raise ValueError(f"split must be train | valid | test, got {split!r}")

    def train_pairs(self, uid: int) -> list[tuple[list[int], int]]:
        """Every (prefix, next item) inside the training part, oldest first."""
        t = self.train_seq(uid)
        return [(t[:k], t[k]) for k in range(1, len(t))]

    def stats(self) -> dict[str, Any]:
        return sequence_stats(self.sequences.values(), self.n_items)


# --------------------------------------------------------------------------- statistics


def sequence_stats(sequences: Any, n_items: int) -> dict[str, Any]:
    """#users, #items, #interactions, sparsity (Table B1) and sequence-length summary."""
    lengths = [len(s) for s in sequences]
    n_users, n_inter = len(lengths), sum(lengths)
    denom = n_users * n_items
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_inter,
        "sparsity": 1.0 - n_inter / denom if denom else 0.0,
        "avg_seq_len": n_inter / n_users if n_users else 0.0,
        "min_seq_len": min(lengths) if lengths else 0,
        "max_seq_len": max(lengths) if lengths else 0,
    }


def stats_table(name: str, stats: dict[str, Any]) -> str:
    """Table B1's row format as a Markdown table."""
    return (
        "| Dataset | #Users | #Items | #Inters | Sparsity |\n"
        "|---|---:|---:|---:|---:|\n"
        f"| {name} | {stats['n_users']:,} | {stats['n_items']:,} | {stats['n_interactions']:,} "
        f"| {100 * stats['sparsity']:.3f}% |\n"
    )


# --------------------------------------------------------------------------- loading


def _read_sequences(path: Path, n_items: int) -> dict[int, list[int]]:
    if not path.is_file():
        raise StageError(f"missing canonical sequences: {path} (written by python -m preprocess; run that stage first)")
    sequences: dict[int, list[int]] = {}
    for lineno, line in utf8_lines(path):
        parts = line.split()
        if not parts:
            continue
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise StageError(f"{path}:{lineno}: expected integers 'uid iid iid ...', got {line.strip()[:80]!r}") from None
        uid, seq = ids[0], ids[1:]
        if uid in sequences:
            raise StageError(f"{path}:{lineno}: user {uid} listed twice")
        if len(seq) < 3:
            raise StageError(f"{path}:{lineno}: user {uid} has {len(seq)} items; leave-one-out needs >= 3")
        bad = [i for i in seq if not 1 <= i <= n_items]
        if bad:
            raise StageError(f"{path}:{lineno}: unknown item id {bad[0]} (items.jsonl has 1..{n_items})")
        sequences[uid] = seq
    if not sequences:
        raise StageError(f"{path}: no users")
    expected = set(range(1, len(sequences) + 1))
    if set(sequences) != expected:
        missing = sorted(expected - set(sequences))[:5]
        raise StageError(f"{path}: user ids must be 1..{len(sequences)} without gaps (missing e.g. {missing})")
    return sequences


def _read_items(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise StageError(f"missing canonical items: {path} (written by python -m preprocess; run that stage first)")
    items: list[dict[str, Any]] = []
    for lineno, line in utf8_lines(path):
        if not line.strip():
            raise StageError(f"{path}:{lineno}: empty line (line k must hold item k)")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
        if not isinstance(obj, dict) or obj.get("iid") != lineno:
            got = obj.get("iid") if isinstance(obj, dict) else type(obj).__name__
            raise StageError(f"{path}:{lineno}: expected item {{\"iid\": {lineno}, ...}}, got iid {got!r}")
        if not isinstance(obj.get("title"), str) or not obj["title"]:
            raise StageError(f"{path}:{lineno}: item {lineno} has no title")
        items.append(obj)
    if not items:
        raise StageError(f"{path}: no items")
    return items


def load_canonical(cfg: Config | Path | str) -> CanonicalData:
    """Read cfg.data_dir (or a data folder) strictly into a CanonicalData."""
    data_dir = cfg.data_dir if isinstance(cfg, Config) else Path(cfg)
    paths = canonical_paths(data_dir)
    info = read_json(paths[DATASET_JSON], "canonical dataset.json")
    items = _read_items(paths[ITEMS])
    sequences = _read_sequences(paths[SEQUENCES], len(items))
    data = CanonicalData(sequences=sequences, items=items, info=info, data_dir=data_dir)
    for key, have in (("n_users", data.n_users), ("n_items", data.n_items), ("n_interactions", data.n_interactions)):
        if key in info and info[key] != have:
            raise StageError(
                f"{paths[DATASET_JSON]}: {key}={info[key]} but the data files hold {have}; "
                "the folder is stale or mixed, re-run python -m preprocess --force"
            )
    used = {i for s in sequences.values() for i in s}
    if len(used) != len(items):
        unused = sorted(set(range(1, len(items) + 1)) - used)[:5]
        raise StageError(f"{paths[ITEMS]}: item(s) {unused} never occur in {paths[SEQUENCES]}")
    return data
