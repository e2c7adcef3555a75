"""Sequences for the recommender: leave-one-out splits and the padded tensors built from them.

Everything the training loop touches in its hot path is built here once, up front, as
dense tensors (training windows, padded histories), so that an epoch is a handful of
tensor gathers and matrix products rather than a Python loop over samples.

Padding convention (shared with the LLM side through `RecEncoder`): id 0 is padding and
histories are *right-aligned* (left-padded), so the most recent item is always in the
last column and "the user representation is the output at the last position" holds for
every row regardless of history length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.utils import StageError

#: a user needs one train item (the first history), a valid target and a test target
MIN_SEQ_LEN = 3


@dataclass
class RecData:
    """The part of the canonical dataset the recommender needs."""

    #: uid -> item ids in time order (ids from 1, every user has >= MIN_SEQ_LEN items)
    sequences: dict[int, list[int]]
    n_items: int
    n_users: int

    @property
    def uids(self) -> list[int]:
        return sorted(self.sequences)

    def train_part(self, uid: int) -> list[int]:
        """Items the recommender may train on: s[:-2] (valid and test targets held out)."""
        return self.sequences[uid][:-2]

    def eval_examples(self, split: str) -> tuple[list[int], list[list[int]], list[int]]:
        """(uids, full histories, targets) for leave-one-out evaluation.

        valid: history s[:-2] -> target s[-2]; test: history s[:-1] -> target s[-1]
        (the valid target becomes history for test, as in every leave-one-out protocol).
        """
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        cut = 2 if split == "valid" else 1
        uids = self.uids
        hists = [self.sequences[u][:-cut] for u in uids]
        targets = [self.sequences[u][-cut] for u in uids]
        return uids, hists, targets

    def item_popularity(self) -> torch.Tensor:
        """Interaction counts per item id over the train parts only (index 0 stays 0)."""
        counts = torch.zeros(self.n_items + 1, dtype=torch.float64)
        flat = [i for u in self.uids for i in self.train_part(u)]
        if flat:
            counts.index_add_(0, torch.tensor(flat), torch.ones(len(flat), dtype=torch.float64))
        return counts


def load_rec_data(cfg) -> RecData:
    """The canonical dataset of `cfg` (cfg.data_dir), read by the preprocess stage's loader.

    `preprocess.dataset.load_canonical` is the single strict reader of the canonical
    files (ids, counts, >= 3 items per user are checked there).
    """
    from preprocess.dataset import load_canonical

    cd = load_canonical(cfg)
    short = [u for u, s in cd.sequences.items() if len(s) < MIN_SEQ_LEN]
    if short:  # load_canonical rejects these today; keep the recommender safe if that changes
        raise StageError(f"{cfg.data_dir}: user {short[0]} has fewer than {MIN_SEQ_LEN} items")
    return RecData(sequences={u: list(s) for u, s in cd.sequences.items()}, n_items=cd.n_items, n_users=cd.n_users)


# --------------------------------------------------------------------------- tensors


def right_aligned(seqs: list[list[int]], length: int) -> torch.LongTensor:
    """(B, length) tensor holding the last `length` items of each sequence, left-padded with 0."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        tail = s[-length:] if length else []
        if tail:
            out[r, length - len(tail):] = tail
    return torch.from_numpy(out)


def padded_full(seqs: list[list[int]]) -> torch.LongTensor:
    """(B, max_len) tensor of whole histories (0-padded; order irrelevant): the masking index."""
    width = max((len(s) for s in seqs), default=0) or 1
    return right_aligned(seqs, width)


def realign_right(histories: torch.Tensor) -> torch.Tensor:
    """Move the non-zero ids of each row to the right end, keeping their order.

    Makes encoders robust to left-aligned (right-padded) input: a stable sort on the
    "is real item" flag puts padding first and items after, in their original order.
    """
    real = (histories != 0).to(torch.int8)
    order = torch.argsort(real, dim=1, stable=True)
    return torch.gather(histories, 1, order)


def train_windows(train_seqs: list[list[int]], max_len: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Next-item training windows: inputs x[t] -> target x[t+1], right-aligned, length max_len.

    Standard SASRec training feeds s[:-1] and predicts s[1:] at every position. Sequences
    longer than max_len + 1 are cut from the end into consecutive, non-overlapping chunks,
    so every train transition is a target exactly once (Kang & McAuley keep only the
    last max_len transitions, which throws away most of a long MovieLens history); each
    chunk's first position sees the item just before it as its input, so no transition is
    lost at chunk borders.
    """
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for s in train_seqs:
        n = len(s)
        end = n  # exclusive index of the last target + 1
        while end > 1:
            start = max(0, end - max_len - 1)  # window s[start:end] has <= max_len + 1 items
            w = s[start:end]
            inputs.append(w[:-1])
            targets.append(w[1:])
            end = start + 1  # next window ends with the item this one starts from
    if not inputs:
        raise StageError("no training transitions: every user's train part has a single item")
    return right_aligned(inputs, max_len), right_aligned(targets, max_len)
