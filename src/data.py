"""Training data: task records -> encoded examples -> dynamically padded batches.

Every record is tokenised once (prompt through :func:`src.chat.encode_prompt`, so that
training and inference see identical prompts), labels are -100 everywhere except the
answer and its end token, and batches are padded only to their longest row. The Trainer's
length-grouped sampler (``train.group_by_length``) puts rows of similar length together,
which is where most of the speed over the original's fixed 1024-token padding comes from.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from src.chat import encode_example, marker_ids, marker_inputs, pad_markers
from src.config import Config
from src.utils import StageError, read_json

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("question", "answer")


def load_task_records(path: str | Path) -> list[dict]:
    """A tasks/*.json file as a list of records; a malformed record names file and index."""
    path = Path(path)
    data = read_json(path, what="task file")
    if not isinstance(data, list):
        raise StageError(f"{path}: expected a JSON list of task records, got {type(data).__name__}")
    for k, r in enumerate(data):
        if not isinstance(r, dict):
            raise StageError(f"{path}: record #{k} is not a JSON object")
        for key in REQUIRED_KEYS:
            if not isinstance(r.get(key), str):
                raise StageError(f"{path}: record #{k} (id={r.get('id', '?')}) has no string '{key}'")
    return data


def subsample(records: list[dict], cap: int, seed: int) -> list[dict]:
    """A seeded random subset of `cap` records in file order (0 = all).

    Random rather than the first `cap`, because task files are grouped by task type.
    """
    if cap <= 0 or cap >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), cap))
    return [records[i] for i in keep]


class TaskDataset(Dataset):
    """Encoded task records; rows that cannot fit `llm.max_length` are dropped and counted."""

    def __init__(self, records: Sequence[dict], tokenizer: Any, cfg: Config, desc: str = "encode") -> None:
        user_id, item_id = marker_ids(tokenizer)
        L = cfg.recmodel.max_seq_len
        self.rows: list[dict[str, Any]] = []
        self.n_truncated = 0
        self.n_dropped = 0
        for rec in tqdm(records, desc=desc, leave=False, mininterval=5):
            ex = encode_example(tokenizer, rec["question"], rec["answer"], cfg)
            if ex is None:
                self.n_dropped += 1
                continue
            users, items = marker_inputs(rec, ex.input_ids, user_id, item_id, L)
            self.n_truncated += int(ex.truncated)
            self.rows.append(
                {"input_ids": ex.input_ids, "labels": ex.labels, "user_histories": users, "item_ids": items}
            )
        if self.n_truncated or self.n_dropped:
            log.warning(
                "%s: %d of %d samples had their question shortened to fit llm.max_length=%d; %d dropped "
                "(answer alone too long)",
                desc, self.n_truncated, len(records), cfg.llm.max_length, self.n_dropped,
            )
        if not self.rows:
            raise StageError(f"{desc}: no sample fits llm.max_length={cfg.llm.max_length}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def num_tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)

    def num_answer_tokens(self) -> int:
        return sum(sum(1 for t in r["labels"] if t != -100) for r in self.rows)


class TaskCollator:
    """Right-pad a list of encoded rows to the longest one (or to `fixed_length`).

    `fixed_length` reproduces the original's pad-everything-to-1024 for the benchmark.
    """

    def __init__(
        self, pad_token_id: int, max_seq_len: int, pad_to_multiple_of: int | None = None, fixed_length: int | None = None
    ) -> None:
        self.pad_token_id = pad_token_id
        self.max_seq_len = max_seq_len
        self.pad_to_multiple_of = pad_to_multiple_of
        self.fixed_length = fixed_length

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        if self.fixed_length:
            width = max(width, self.fixed_length)
        elif self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        users: list[list[int]] = []
        items: list[int] = []
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[b, :n] = torch.tensor(r["input_ids"])
            labels[b, :n] = torch.tensor(r["labels"])
            attention_mask[b, :n] = 1
            users.extend(r["user_histories"])
            items.extend(r["item_ids"])
        u, i = pad_markers(users, items, self.max_seq_len)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "user_histories": u,
            "item_ids": i,
        }
