"""Prompt encoding, label masking, truncation and batching for the LLM trainer."""

from __future__ import annotations

import pytest
import torch

from src.chat import (
    VICUNA_SYSTEM,
    build_prompt,
    collate_for_generation,
    encode_example,
    encode_prompt,
    marker_ids,
)
from src.data import TaskCollator, TaskDataset, load_task_records, subsample
from src.model import load_base
from core.utils import StageError
from tests.fixtures_llm import one_thread, cluster_records, mixed_records, tiny_cfg, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("llm_data"))
    write_tasks(cfg, "both", mixed_records(20, 0), mixed_records(5, 1))
    _, tok = load_base(cfg)
    return cfg, tok


def _answer_part(tok, ex) -> list[int]:
    return [t for t in ex.labels if t != -100]


@pytest.mark.parametrize("fmt", ["auto", "vicuna"])
def test_labels_only_on_answer_and_eos(base, fmt):
    cfg, tok = base
    cfg.llm.chat_format = fmt
    try:
        q, a = "Is the user <user> going to like <item>?", "Yes, the user will like it"
        ex = encode_example(tok, q, a, cfg)
        n_ans = sum(t != -100 for t in ex.labels)
        # the labelled span is one contiguous suffix: the answer tokens followed by EOS
        assert ex.labels[: len(ex.labels) - n_ans] == [-100] * (len(ex.labels) - n_ans)
        assert ex.labels[-n_ans:] == ex.input_ids[-n_ans:]
        assert ex.labels[-1] == tok.eos_token_id
        assert tok.decode(ex.labels[-n_ans:-1]).strip() == a
        # the unlabelled prefix is exactly the inference prompt
        prompt_ids, truncated = encode_prompt(tok, q, cfg)
        assert not truncated and ex.input_ids[: len(ex.input_ids) - n_ans] == prompt_ids
        text = build_prompt(tok, q, cfg)
        if fmt == "vicuna":
            assert text == f"{VICUNA_SYSTEM} USER: {q} ASSISTANT:"
        else:
            assert text.endswith("<|assistant|>\n") and q in text
    finally:
        cfg.llm.chat_format = "auto"


def test_truncation_cuts_question_middle_never_answer_or_markers(base):
    cfg, tok = base
    user_id, item_id = marker_ids(tok)
    hist = "; ".join(f"Movie {i}" for i in range(200))
    q = f"The user <user> watched {hist}. Will they like <item> or <item>? Answer Yes or No."
    a = "Yes they will"
    full = encode_example(tok, q, a, cfg, max_length=10_000)
    assert not full.truncated
    ex = encode_example(tok, q, a, cfg, max_length=120)
    assert ex.truncated and len(ex.input_ids) <= 120
    assert _answer_part(tok, ex) == _answer_part(tok, full)
    assert ex.input_ids.count(user_id) == 1 and ex.input_ids.count(item_id) == 2
    text = tok.decode(ex.input_ids)
    assert "The user" in text and "Answer Yes or No." in text and "Movie 100" not in text
    # impossible: the answer alone does not fit -> dropped, not cut
    assert encode_example(tok, q, "word " * 200, cfg, max_length=120) is None


def test_dataset_counts_truncated_and_dropped(base):
    cfg, tok = base
    recs = mixed_records(6, 3)
    recs[0]["question"] = "The user <user> saw " + "; ".join(f"Movie {i}" for i in range(300)) + ". Next?"
    recs[0]["iids_in_question"] = []
    recs[1]["answer"] = "Movie 1; " * 200
    cfg.llm.max_length = 200
    try:
        ds = TaskDataset(recs, tok, cfg)
    finally:
        cfg.llm.max_length = 256
    assert ds.n_truncated == 1 and ds.n_dropped == 1 and len(ds) == 5
    assert max(len(r["input_ids"]) for r in ds.rows) <= 200


def test_collator_pads_to_longest_and_stacks_marker_inputs(base):
    cfg, tok = base
    recs = mixed_records(7, 4)
    ds = TaskDataset(recs, tok, cfg)
    batch = TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len)([ds[i] for i in range(len(ds))])
    lengths = [len(r["input_ids"]) for r in ds.rows]
    assert batch["input_ids"].shape == (7, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    user_id, item_id = marker_ids(tok)
    assert batch["user_histories"].shape == (int((batch["input_ids"] == user_id).sum()), cfg.recmodel.max_seq_len)
    expected_items = [i for r in recs for i in r["iids_in_question"]]
    assert batch["item_ids"].tolist() == expected_items
    # right-aligned, 0-padded, most recent item last
    h = recs[0]["history"][-cfg.recmodel.max_seq_len:]
    assert batch["user_histories"][0].tolist() == [0] * (cfg.recmodel.max_seq_len - len(h)) + h
    fixed = TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len, fixed_length=128)([ds[0], ds[1]])
    assert fixed["input_ids"].shape == (2, 128)


def test_collate_for_generation_left_pads(base):
    cfg, tok = base
    recs = mixed_records(5, 5)
    batch = collate_for_generation(tok, recs, cfg)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for b, rec in enumerate(recs):
        n = int(mask[b].sum())
        assert mask[b, -n:].all() and not mask[b, :-n].any()
        assert ids[b, -n:].tolist() == encode_prompt(tok, rec["question"], cfg)[0]
    assert batch["item_ids"].tolist() == [i for r in recs for i in r["iids_in_question"]]
    assert batch["user_histories"].shape[0] == len(recs)  # one <user> per question


def test_marker_mismatch_and_bad_files_are_clear_errors(base, tmp_path):
    cfg, tok = base
    rec = mixed_records(1, 6)[0]
    rec["question"] += " and <item>"
    with pytest.raises(StageError, match=r"m0.*<item> marker"):
        collate_for_generation(tok, [rec], cfg)
    rec = cluster_records(1, 0)[0]
    rec["history"] = []
    with pytest.raises(StageError, match="empty 'history'"):
        collate_for_generation(tok, [rec], cfg)
    bad = tmp_path / "x.json"
    bad.write_text('[{"question": "q"}]')
    with pytest.raises(StageError, match=r"x.json: record #0.*'answer'"):
        load_task_records(bad)
    bad.write_text('[{"question": "q",')
    with pytest.raises(StageError, match="malformed JSON"):
        load_task_records(bad)


def test_subsample_is_seeded_and_ordered():
    recs = [{"i": i} for i in range(100)]
    a, b = subsample(recs, 10, 1), subsample(recs, 10, 1)
    assert a == b and len(a) == 10 and [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert subsample(recs, 0, 1) is recs


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of labelled positions."""
    out, start = [], None
    for i, t in enumerate(labels + [-100]):
        if t != -100 and start is None:
            start = i
        elif t == -100 and start is not None:
            out.append((start, i))
            start = None
    return out


CONV = [
    {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour"},
    {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "Red"},
    {"role": "user", "content": "And a third?"}, {"role": "assistant", "content": "Green, like grass"},
]


@pytest.mark.parametrize("fmt", ["auto", "vicuna"])
def test_conversation_labels_every_assistant_turn(base, fmt):
    """Task 5 multi-turn (the original): loss on each assistant turn and its end token only."""
    from src.chat import encode_conversation

    cfg, tok = base
    cfg.llm.chat_format = fmt
    try:
        ex = encode_conversation(tok, CONV, cfg)
        assert not ex.truncated and ex.turns_kept == ex.turns_total == 3
        spans = _spans(ex.labels)
        assert len(spans) == 3
        for (a, b), m in zip(spans, CONV[1::2]):
            assert ex.labels[a:b] == ex.input_ids[a:b] and ex.labels[b - 1] == tok.eos_token_id
            assert tok.decode(ex.labels[a:b - 1]).strip() == m["content"]
        # the user turns are in the unlabelled part, in order
        text = tok.decode(ex.input_ids)
        assert text.index("Name a colour.") < text.index("Another one?") < text.index("And a third?")
        # the first turn is encoded exactly as the single-turn path (and the inference prompt)
        one = encode_example(tok, CONV[0]["content"], CONV[1]["content"], cfg)
        assert ex.input_ids[: len(one.input_ids)] == one.input_ids and ex.labels[: len(one.labels)] == one.labels
        assert encode_conversation(tok, CONV[:2], cfg).input_ids == one.input_ids
        if fmt == "auto":  # the whole conversation as the tokenizer's chat template renders it
            assert tok.decode(ex.input_ids, skip_special_tokens=False).replace("<s>", "") == \
                tok.apply_chat_template(CONV, tokenize=False).replace("<s>", "").rstrip("\n")
        # within max_length: whole pairs from the start; a too-long first pair is the single-turn path
        two = _spans(encode_conversation(tok, CONV, cfg).labels)[1][1]
        cut = encode_conversation(tok, CONV, cfg, max_length=two + 2)
        assert cut.truncated and cut.turns_kept == 2 and len(_spans(cut.labels)) == 2
        assert cut.input_ids == ex.input_ids[:two] and len(cut.input_ids) <= two + 2
        short = encode_conversation(tok, CONV, cfg, max_length=len(one.input_ids) - 2)
        assert short.turns_kept == 1 and short.truncated and len(short.input_ids) <= len(one.input_ids) - 2
    finally:
        cfg.llm.chat_format = "auto"


def test_dataset_encodes_messages_records_and_checks_them(base):
    cfg, tok = base
    rec = {"id": "sharegpt-train-000000", "type": "sharegpt", "history": [], "iids_in_question": [],
           "question": CONV[0]["content"], "answer": CONV[1]["content"], "messages": CONV}
    first_only = {k: v for k, v in rec.items() if k != "messages"}
    cfg.llm.max_length = 60
    try:
        ds = TaskDataset([rec, first_only], tok, cfg)
    finally:
        cfg.llm.max_length = 256
    assert len(_spans(ds.rows[0]["labels"])) >= 2 and len(_spans(ds.rows[1]["labels"])) == 1
    assert len(ds.rows[0]["input_ids"]) <= 60
    assert ds.n_turns_cut == int(len(_spans(ds.rows[0]["labels"])) < 3)
    bad = dict(rec, messages=[CONV[0], CONV[0]])
    with pytest.raises(StageError, match="sharegpt-train-000000.*strictly alternating"):
        TaskDataset([bad], tok, cfg)
