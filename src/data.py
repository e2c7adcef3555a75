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

from src.chat import check_messages, encode_conversation, encode_example, marker_ids, marker_inputs, pad_markers
from core.config import Config, ConfigError
from core.utils import StageError, read_json

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


def filter_task_types(
    records: list[dict], exclude: Sequence[str], path: str | Path, strict: bool = True
) -> list[dict]:
    """`records` without those whose ``type`` is in `exclude` (``train.exclude_tasks``).

    `strict` (the train file): every excluded name must be a type present in the file, so
    a typo, or a type the chosen task_type never has, stops the run instead of silently
    training the full model. Without it (the valid file) absent names are fine. Leaving
    no record at all is always an error. Each dropped type is logged with its count.
    """
    if not exclude:
        return records
    present: dict[str, int] = {}
    for r in records:
        present[str(r.get("type"))] = present.get(str(r.get("type")), 0) + 1
    missing = [t for t in exclude if t not in present]
    if strict and missing:
        raise StageError(
            f"train.exclude_tasks: {missing[0]!r} is not a task type of {path} "
            f"(types present: {', '.join(sorted(present))})"
        )
    drop = set(exclude)
    kept = [r for r in records if r.get("type") not in drop]
    dropped = {t: present[t] for t in exclude if t in present}
    log.info("%s: train.exclude_tasks dropped %d of %d records (%s)", Path(path).name, len(records) - len(kept),
             len(records), ", ".join(f"{t}: {n}" for t, n in dropped.items()) or "none present")
    if not kept:
        raise StageError(
            f"train.exclude_tasks={list(exclude)} leaves no records in {path} "
            f"(types present: {', '.join(sorted(present))})"
        )
    return kept


def mix_tasks(records: list[dict], mix: dict[str, float], total: int, seed: int, path: str | Path) -> list[dict]:
    """`total` records drawn per ``type`` in the proportions of `mix` (``train.task_mix``).

    WHY: on a CPU budget a few hundred steps are shared by every task type, and a uniform
    sample spends them in the file's proportions (task 4 item records outnumber task 3);
    the mix says where the budget goes. A key is a record type (every form of it) or
    ``type:form`` (e.g. ``uid2next:hybrid``: one form of the hybrid file's three). Types
    absent from `mix` (or weighted 0) are not trained. A type with fewer records than its share is repeated (seeded), i.e. trained
    for more than one pass, and the log says so. Output order is seeded-random.
    """
    if not mix:
        return subsample(records, total, seed)
    if total <= 0:
        raise ConfigError("train.task_mix needs train.max_train_samples > 0 (the budget it divides)")
    by_type: dict[str, list[dict]] = {}
    for r in records:  # each record joins the most specific key: "uid2next:hybrid" before "uid2next"
        specific = f"{r.get('type')}:{r.get('form')}"
        by_type.setdefault(specific if specific in mix else str(r.get("type")), []).append(r)
    bad = [t for t, w in mix.items() if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0]
    if bad:
        raise ConfigError(f"train.task_mix.{bad[0]} must be a non-negative number, got {mix[bad[0]]!r}")
    from core.registry import FORMS, TYPE_FORMS

    known_types = set(TYPE_FORMS) | {"sharegpt"}
    for key in mix:
        t, _, form = key.partition(":")
        if t not in known_types or (form and form not in FORMS):
            raise ConfigError(f"train.task_mix: {key!r} is not a record type or type:form "
                              f"(types: {', '.join(sorted(known_types))}; forms: {', '.join(FORMS)})")
    # one mix serves the three training files: keys a file does not have (e.g. a hybrid form
    # in behaviour_train.json) are skipped there, and said so
    absent = [t for t, w in mix.items() if w > 0 and t not in by_type]
    present = sorted({str(r.get("type")) for r in records})
    if absent:
        log.info("%s: train.task_mix keys not in this file, skipped: %s", Path(path).name, ", ".join(absent))
    weights = {t: float(w) for t, w in mix.items() if w > 0 and t in by_type}
    if not weights:
        raise StageError(f"train.task_mix selects none of the record types of {path} "
                         f"(types present: {', '.join(present)})")
    rng = random.Random(seed)
    norm = sum(weights.values())
    out: list[dict] = []
    counts = []
    for t, w in weights.items():
        pool = by_type[t]
        n = max(1, round(total * w / norm))
        picked = [pool[i] for i in rng.sample(range(len(pool)), min(n, len(pool)))]
        while len(picked) < n:  # more than one pass over a small type
            picked.append(pool[rng.randrange(len(pool))])
        out.extend(picked)
        counts.append(f"{t}: {n}" + (f" ({n / len(pool):.1f} passes)" if n > len(pool) else ""))
    rng.shuffle(out)
    log.info("%s: train.task_mix drew %d records (%s)", Path(path).name, len(out), ", ".join(counts))
    return out


def subsample(records: list[dict], cap: int, seed: int | str) -> list[dict]:
    """A seeded random subset of `cap` records in file order (0 = all).

    Random rather than the first `cap`, because task files are grouped by task type.
    """
    if cap <= 0 or cap >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), cap))
    return [records[i] for i in keep]


class TaskDataset(Dataset):
    """Encoded task records; rows that cannot fit `llm.max_length` are dropped and counted.

    A record with ``messages`` (a whole multi-turn conversation, task 5 with
    ``data_gen.sharegpt_multi_turn``) is encoded with :func:`src.chat.encode_conversation`:
    loss on every assistant turn, whole turns within ``llm.max_length``; any other record is
    one question/answer pair (:func:`src.chat.encode_example`).
    """

    def __init__(self, records: Sequence[dict], tokenizer: Any, cfg: Config, desc: str = "encode") -> None:
        user_id, item_id = marker_ids(tokenizer)
        L = cfg.recmodel.max_seq_len
        self.rows: list[dict[str, Any]] = []
        #: which of `records` each row was encoded from (dropped records leave gaps)
        self.record_index: list[int] = []
        self.n_truncated = 0
        self.n_dropped = 0
        #: multi-turn conversations whose later turns did not fit llm.max_length
        self.n_turns_cut = 0
        for k, rec in enumerate(tqdm(records, desc=desc, leave=False, mininterval=5)):
            if rec.get("messages") is not None:
                msgs = check_messages(rec["messages"], str(rec.get("id", "?")))
                ex = encode_conversation(tokenizer, msgs, cfg)
            else:
                ex = encode_example(tokenizer, rec["question"], rec["answer"], cfg)
            if ex is None:
                self.n_dropped += 1
                continue
            users, items = marker_inputs(rec, ex.input_ids, user_id, item_id, L)
            self.n_truncated += int(ex.truncated)
            self.n_turns_cut += int(ex.turns_kept < ex.turns_total)
            self.rows.append(
                {"input_ids": ex.input_ids, "labels": ex.labels, "user_histories": users, "item_ids": items}
            )
            self.record_index.append(k)
        if self.n_truncated or self.n_dropped:
            log.warning(
                "%s: %d of %d samples were shortened to fit llm.max_length=%d (the question cut from its "
                "middle, or, in %d multi-turn conversations, the later turns dropped); %d dropped "
                "(answer alone too long)",
                desc, self.n_truncated, len(records), cfg.llm.max_length, self.n_turns_cut, self.n_dropped,
            )
        if not self.rows:
            raise StageError(f"{desc}: no sample fits llm.max_length={cfg.llm.max_length}")

    def __len__(self) -> int:
        return len(self.rows)

    def keep_first(self, n: int) -> None:
        """Train on the first `n` rows only (train.time_budget_s; the rows are in seeded random order)."""
        del self.rows[n:], self.record_index[n:]

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
