"""Prompt rendering and tokenisation shared by training and inference.

API summary: ``build_prompt(tokenizer, question, cfg) -> str`` renders one user turn plus
the assistant generation prompt (the tokenizer's chat template when it has one and
``llm.chat_format`` is ``auto``, Vicuna v1.1 otherwise). ``encode_prompt`` turns that into
token ids, shortening the question from its middle if it does not fit (markers are never
removed). ``encode_example`` adds the answer ids (answer + end-of-turn token) that carry
the loss; the answer is never cut. ``encode_conversation(tokenizer, messages, cfg)`` does
the same for a whole multi-turn conversation (task 5), with labels on every assistant turn
and whole turns kept within ``llm.max_length``. ``collate_for_generation(tokenizer, records, cfg)``
builds a left-padded batch plus ``user_histories`` (one row per ``<user>`` marker, in
order, right-aligned and 0-padded to ``recmodel.max_seq_len``) and ``item_ids`` (one per
``<item>`` marker) for :meth:`src.model.RecExplainer.generate`.

WHY one module: the exact same token sequence must be produced for a prompt at training
time and at generation time, otherwise the model is evaluated on a format it never saw.
Both paths go through :func:`encode_prompt`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.config import Config, ConfigError
from core.registry import ITEM_TOKEN, MARKER_TOKENS, USER_TOKEN
from core.utils import StageError

log = logging.getLogger(__name__)


#: FastChat's Vicuna v1.1 system prompt (the original code trains Vicuna-7B with it)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
#: inserted where the middle of an over-long question was removed
ELLIPSIS = " ... "


# --------------------------------------------------------------------------- formats


def chat_format(tokenizer: Any, cfg: Config) -> str:
    """``template`` (the tokenizer's own chat template) or ``vicuna``."""
    fmt = cfg.llm.chat_format
    if fmt not in ("auto", "vicuna", "template"):
        raise ConfigError(f"llm.chat_format must be auto | vicuna | template, got {fmt!r}")
    if fmt == "vicuna":
        return "vicuna"
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt == "template" and not has_template:
        raise ConfigError("llm.chat_format=template but the tokenizer has no chat_template")
    return "template" if has_template else "vicuna"


def build_prompt(tokenizer: Any, question: str, cfg: Config) -> str:
    """The text the model sees before it starts answering (ends with the assistant cue)."""
    if chat_format(tokenizer, cfg) == "vicuna":
        return f"{VICUNA_SYSTEM} USER: {question} ASSISTANT:"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def _answer_suffix(tokenizer: Any, question: str, answer: str, cfg: Config) -> str:
    """Text that follows the prompt in a full two-turn conversation (answer + turn end)."""
    if chat_format(tokenizer, cfg) == "vicuna":
        return f" {answer}"
    prompt = build_prompt(tokenizer, question, cfg)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
    )
    if full.startswith(prompt):
        return full[len(prompt):]
    # exotic templates re-render earlier turns; the answer text alone is the safe choice
    return answer


def _adds_bos(tokenizer: Any, text: str) -> bool:
    """Whether tokenising `text` must add the tokenizer's special prefix (BOS).

    A chat template that already writes the BOS token must not get a second one.
    """
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def marker_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of ``<user>`` and ``<item>``; an error if the tokenizer lacks them."""
    out = []
    for tok in MARKER_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
            raise StageError(f"tokenizer has no special token {tok}; load it through src.model.load_base")
        out.append(int(tid))
    return out[0], out[1]


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise StageError("tokenizer has no eos_token; set one before training")
    return int(tokenizer.eos_token_id)


# --------------------------------------------------------------------------- encoding


def encode_answer(tokenizer: Any, question: str, answer: str, cfg: Config) -> list[int]:
    """Ids of the answer as the model must produce it: answer tokens + one end token.

    Text the template adds after the end token (e.g. a newline) is dropped: generation
    stops at the end token, so the model is never asked to produce what follows it.
    """
    ids = _ids(tokenizer, _answer_suffix(tokenizer, question, answer, cfg), special=False)
    eos = eos_id(tokenizer)
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    return _ids(tokenizer, _answer_suffix(tokenizer, question, answer, cfg).rstrip(), special=False) + [eos]


def _cut_middle(tokenizer: Any, q_ids: list[int], n_remove: int, protected: set[int]) -> str | None:
    """The question with `n_remove` ordinary tokens removed around its middle.

    Marker tokens inside the removed span are kept (in order) so that the number of
    ``<user>``/``<item>`` markers, and thus their binding to ids, never changes.
    None if the question does not have that many removable tokens.
    """
    free = [i for i, t in enumerate(q_ids) if t not in protected]
    if n_remove >= len(free):
        return None
    start = max(0, len(free) // 2 - n_remove // 2)
    start = min(start, len(free) - n_remove)
    lo, hi = free[start], free[start + n_remove - 1]
    kept_markers = [t for t in q_ids[lo : hi + 1] if t in protected]
    left = tokenizer.decode(q_ids[:lo], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    mid = tokenizer.decode(kept_markers, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    right = tokenizer.decode(q_ids[hi + 1 :], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return left.rstrip() + ELLIPSIS + (mid + " " if mid else "") + right.lstrip()


def encode_prompt(
    tokenizer: Any, question: str, cfg: Config, max_length: int | None = None
) -> tuple[list[int], bool] | None:
    """Token ids of the rendered prompt, at most `max_length` long.

    Returns (ids, truncated) or None when even the markers plus template do not fit.
    Truncation removes the middle of the question (where the history lists are), which
    keeps the instruction at the start and the request at the end intact.
    """
    max_length = cfg.llm.max_length if max_length is None else max_length
    text = build_prompt(tokenizer, question, cfg)
    ids = _ids(tokenizer, text, special=_adds_bos(tokenizer, text))
    if len(ids) <= max_length:
        return ids, False
    protected = set(marker_ids(tokenizer))
    q_ids = _ids(tokenizer, question, special=False)
    n_remove = len(ids) - max_length + len(_ids(tokenizer, ELLIPSIS, special=False))
    for _ in range(8):  # re-tokenisation can shift by a token or two; converge quickly
        short_q = _cut_middle(tokenizer, q_ids, n_remove, protected)
        if short_q is None:
            return None
        text = build_prompt(tokenizer, short_q, cfg)
        ids = _ids(tokenizer, text, special=_adds_bos(tokenizer, text))
        if len(ids) <= max_length:
            return ids, True
        n_remove += len(ids) - max_length
    return None


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    #: user/assistant pairs encoded / in the record (multi-turn records, see encode_conversation)
    turns_kept: int = 1
    turns_total: int = 1


def encode_example(
    tokenizer: Any, question: str, answer: str, cfg: Config, max_length: int | None = None
) -> EncodedExample | None:
    """Prompt + answer ids with labels -100 on the prompt; None if the answer cannot fit."""
    max_length = cfg.llm.max_length if max_length is None else max_length
    ans = encode_answer(tokenizer, question, answer, cfg)
    if len(ans) >= max_length:
        return None
    enc = encode_prompt(tokenizer, question, cfg, max_length - len(ans))
    if enc is None:
        return None
    prompt, truncated = enc
    return EncodedExample(prompt + ans, [-100] * len(prompt) + ans, truncated)


def check_messages(messages: Any, rid: str = "?") -> list[dict[str, str]]:
    """A multi-turn record's ``messages``: user/assistant pairs, strictly alternating."""
    ok = isinstance(messages, list) and len(messages) >= 2 and len(messages) % 2 == 0
    if ok:
        for j, m in enumerate(messages):
            if not (isinstance(m, dict) and m.get("role") == ("user", "assistant")[j % 2]
                    and isinstance(m.get("content"), str)):
                ok = False
                break
    if not ok:
        raise StageError(
            f"task record {rid}: 'messages' must be a list of user/assistant turns "
            '({"role": "user"|"assistant", "content": str}), strictly alternating, starting with the user, '
            "ending with the assistant"
        )
    return messages


def _pair_texts(tokenizer: Any, messages: Sequence[dict[str, str]], cfg: Config) -> list[tuple[str, str]] | None:
    """For each user/assistant pair: (text that precedes the answer, answer text with its turn end).

    Concatenated they are the whole conversation as the chat format renders it; the first
    prefix is exactly :func:`build_prompt` of the first question (the inference prompt).
    None when the tokenizer's template does not render a conversation as a growing prefix
    (then only the first turn can be trained).
    """
    out: list[tuple[str, str]] = []
    if chat_format(tokenizer, cfg) == "vicuna":
        for k in range(0, len(messages), 2):
            q, a = messages[k]["content"], messages[k + 1]["content"]
            out.append((f"{VICUNA_SYSTEM} USER: {q} ASSISTANT:" if k == 0 else f"USER: {q} ASSISTANT:", f" {a}"))
        return out
    done = ""
    for k in range(0, len(messages), 2):
        prompt = tokenizer.apply_chat_template(list(messages[: k + 1]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages[: k + 2]), tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            return None
        out.append((prompt[len(done):], full[len(prompt):]))
        done = full
    return out


def encode_conversation(
    tokenizer: Any, messages: Sequence[dict[str, str]], cfg: Config, max_length: int | None = None
) -> EncodedExample | None:
    """A whole multi-turn conversation with labels on every assistant turn (task 5, ShareGPT).

    Turns are rendered by the chat format (the tokenizer's template, or Vicuna v1.1 as in
    the original) and kept as whole user/assistant pairs from the start while they fit
    `max_length` (default ``llm.max_length``); later pairs are dropped, and ``truncated`` /
    ``turns_kept`` say so. Each assistant turn carries the loss on its text and its end
    token, exactly as :func:`encode_example` labels a single answer; text the template
    puts after the end token belongs to the next (unlabelled) user segment. A conversation
    of one pair, or whose first pair alone does not fit, is :func:`encode_example` of its
    first turn (the question shortened from its middle if needed).
    """
    max_length = cfg.llm.max_length if max_length is None else max_length
    n_pairs = len(messages) // 2
    first = encode_example(tokenizer, messages[0]["content"], messages[1]["content"], cfg, max_length)
    texts = _pair_texts(tokenizer, messages, cfg) if n_pairs > 1 else None
    if texts is None:
        if first is not None:
            first.turns_total = n_pairs
            first.truncated = first.truncated or n_pairs > 1
        return first
    eos = eos_id(tokenizer)
    eos_text = tokenizer.eos_token or ""
    ids: list[int] = []
    labels: list[int] = []
    carry = ""
    kept = 0
    for k, (prefix, answer) in enumerate(texts):
        prefix = carry + prefix
        p_ids = _ids(tokenizer, prefix, special=_adds_bos(tokenizer, prefix)) if k == 0 else _ids(tokenizer, prefix, special=False)
        content = messages[2 * k + 1]["content"]
        at = answer.find(content)
        cut = answer.find(eos_text, at + len(content) if at >= 0 else 0) if eos_text else -1
        if cut >= 0:
            a_ids, carry = _ids(tokenizer, answer[: cut + len(eos_text)], special=False), answer[cut + len(eos_text):]
        else:
            a_ids, carry = _ids(tokenizer, answer.rstrip(), special=False) + [eos], ""
        if len(ids) + len(p_ids) + len(a_ids) > max_length:
            break
        ids += p_ids + a_ids
        labels += [-100] * len(p_ids) + a_ids
        kept += 1
    if kept == 0:  # the first pair alone is too long: the single-turn path shortens its question
        if first is not None:
            first.turns_total = n_pairs
            first.truncated = True
        return first
    return EncodedExample(ids, labels, truncated=kept < n_pairs, turns_kept=kept, turns_total=n_pairs)


# --------------------------------------------------------------------------- markers


def right_align(history: Sequence[int], max_len: int) -> list[int]:
    """Last `max_len` ids of a history, right-aligned, 0-padded on the left (SASRec input)."""
    h = [int(i) for i in history][-max_len:]
    return [0] * (max_len - len(h)) + h


def marker_inputs(
    record: dict, ids: Sequence[int], user_id: int, item_id: int, max_seq_len: int
) -> tuple[list[list[int]], list[int]]:
    """Encoder inputs for one record: one history row per ``<user>``, one iid per ``<item>``.

    The counts are checked against the tokenised prompt, so a template/record mismatch
    stops here with the record id instead of deep inside the model.
    """
    rid = record.get("id", "?")
    n_user = sum(1 for t in ids if t == user_id)
    n_item = sum(1 for t in ids if t == item_id)
    users: list[list[int]] = []
    if n_user:
        hist = record.get("history") or []
        if not hist:
            raise StageError(f"task record {rid}: question has {n_user} <user> marker(s) but an empty 'history'")
        users = [right_align(hist, max_seq_len)] * n_user
    items = [int(i) for i in (record.get("iids_in_question") or [])]
    if len(items) != n_item:
        raise StageError(
            f"task record {rid}: question has {n_item} <item> marker(s) but 'iids_in_question' has {len(items)} ids"
        )
    return users, items


def pad_markers(users: list[list[int]], items: list[int], max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack marker inputs of a whole batch (row-major order = order of markers in the batch)."""
    u = torch.tensor(users, dtype=torch.long) if users else torch.zeros((0, max_seq_len), dtype=torch.long)
    i = torch.tensor(items, dtype=torch.long) if items else torch.zeros((0,), dtype=torch.long)
    return u, i


def collate_for_generation(
    tokenizer: Any, records: Sequence[dict], cfg: Config, max_prompt_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded batch of prompts (no answers) plus marker inputs, ready for generate()."""
    user_id, item_id = marker_ids(tokenizer)
    max_prompt_length = cfg.llm.max_length if max_prompt_length is None else max_prompt_length
    L = cfg.recmodel.max_seq_len
    rows: list[list[int]] = []
    users: list[list[int]] = []
    items: list[int] = []
    for rec in records:
        enc = encode_prompt(tokenizer, rec["question"], cfg, max_prompt_length)
        if enc is None:
            raise StageError(
                f"task record {rec.get('id', '?')}: prompt cannot be shortened to {max_prompt_length} tokens"
            )
        ids, truncated = enc
        if truncated:
            log.debug("record %s: question shortened to fit %d tokens", rec.get("id"), max_prompt_length)
        u, i = marker_inputs(rec, ids, user_id, item_id, L)
        rows.append(ids)
        users.extend(u)
        items.extend(i)
    return left_padded_batch(tokenizer, rows, users, items, L)


def left_padded_batch(
    tokenizer: Any, rows: list[list[int]], users: list[list[int]], items: list[int], max_seq_len: int
) -> dict[str, torch.Tensor]:
    """Prompt token rows padded on the left, with the marker inputs, as generate() takes them.

    Left padding keeps every prompt's last token at the end of the row, so a batched
    generate() continues each prompt from the right place.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention_mask[b, width - len(r) :] = 1
    u, i = pad_markers(users, items, max_seq_len)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "user_histories": u, "item_ids": i}


def add_aspect(question: str, aspect: str, cfg: Config) -> str:
    """The question with the controllable-explanation instruction appended."""
    try:
        instruction = cfg.explain.aspect_template.format(aspect=aspect.strip())
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"explain.aspect_template must contain only the field {{aspect}}: {e}") from None
    return f"{question.rstrip()} {instruction}"
