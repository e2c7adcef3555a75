"""Generation helpers: title trie, constrained decoding, batching, Yes/No scoring, ICL prompts."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src.chat import build_prompt, encode_answer
from src.generation import (
    TitleTrie,
    build_icl_prompt,
    build_ranking_trie,
    build_title_trie,
    collate,
    generate_texts,
    score_yes_no,
    score_yes_no_groups,
    suppressed_token_ids,
    yes_no_token_ids,
)
from core.utils import StageError
from tests.fixtures_eval import TITLES, load_tiny_explainer, make_records, read_sequences, setup_eval_root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cfg = setup_eval_root(tmp_path_factory.mktemp("gen"))
    model, tok = load_tiny_explainer(cfg)
    seqs = read_sequences(cfg)
    return SimpleNamespace(cfg=cfg, model=model, tok=tok, text=make_records(seqs, "text", "valid"),
                           emb=make_records(seqs, "emb", "valid"))


def test_trie_next_tokens_and_completion():
    trie = TitleTrie()
    trie.add([1, 2, 9])
    trie.add([1, 3, 9])
    trie.add([4, 9])
    assert trie.next_tokens([]) == [1, 4]
    assert trie.next_tokens([1]) == [2, 3]
    assert trie.next_tokens([1, 2]) == [9]
    assert trie.next_tokens([1, 2, 9]) == []  # complete: nothing may follow
    assert trie.next_tokens([7]) == []  # off the trie
    assert trie.contains([4, 9]) and not trie.contains([1, 2]) and len(trie) == 3


def test_trie_holds_titles_as_trained_answers(env):
    trie = build_title_trie(env.tok, TITLES, env.cfg)
    assert len(trie) == len(TITLES)
    for t in TITLES[:5]:
        assert trie.contains(encode_answer(env.tok, "q", t, env.cfg))


def test_constrained_decoding_only_emits_real_titles(env):
    trie = build_title_trie(env.tok, TITLES, env.cfg)
    recs = [r for r in env.text + env.emb if r["type"] == "uid2next"]
    free = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=12, num_beams=3, num_return_sequences=3)
    cons = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=12, num_beams=3,
                          num_return_sequences=3, trie=trie)
    assert len(cons) == len(recs) and all(len(c) == 3 for c in cons)
    assert all(t in TITLES for c in cons for t in c)
    assert all(len(set(c)) == 3 for c in cons)  # distinct beams = distinct titles
    # the untrained model does not produce titles on its own: the constraint did the work
    assert not all(t in TITLES for c in free for t in c)


def test_ranking_trie_holds_every_order_of_the_candidates_as_trained_answers(env):
    from itertools import permutations

    from data_gen.templates import join_titles

    cands = TITLES[:3]
    trie = build_ranking_trie(env.tok, cands + [cands[0]], env.cfg)  # a repeated title counts once
    assert len(trie) == 6
    for order in permutations(cands):
        assert trie.contains(encode_answer(env.tok, "q", join_titles(order), env.cfg))
    assert not trie.contains(encode_answer(env.tok, "q", join_titles(cands[:2]), env.cfg))  # one left out
    with pytest.raises(StageError, match="more than 7"):
        build_ranking_trie(env.tok, TITLES[:8], env.cfg)


def test_candidate_constrained_ranking_answers_an_order_of_each_records_own_candidates(env):
    from core.metrics import split_titles

    recs = [r for r in env.text + env.emb if r["type"] == "uidiid2rank"]
    tries = {r["id"]: build_ranking_trie(env.tok, [TITLES[i - 1] for i in r["candidates"]], env.cfg) for r in recs}
    cons = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=80, batch_size=3,
                          trie=lambda rec: tries[rec["id"]])
    for r, (answer,) in zip(recs, cons):
        assert sorted(split_titles(answer)) == sorted(TITLES[i - 1] for i in r["candidates"])


def test_batched_generation_equals_one_at_a_time(env):
    recs = [r for r in env.text + env.emb if r["type"] in ("uid2next", "uidiid2rank")][:8]
    batched = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=8, batch_size=4)
    single = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=8, batch_size=1)
    assert batched == single
    batch = collate(env.tok, recs[:4], env.cfg, 200)
    # left padding: every row ends with its prompt, pads only at the start
    assert bool((batch["attention_mask"][:, -1] == 1).all())


def test_beam_search_runs_in_calls_of_beam_batch_size_prompts(env, monkeypatch):
    import dataclasses

    import src.generation as gen

    recs = [r for r in env.text + env.emb if r["type"] == "uid2next"][:5]
    calls: list[int] = []
    real = gen._run_generate

    def counting(model, batch, **kw):
        calls.append(int(batch["input_ids"].shape[0]))
        return real(model, batch, **kw)

    monkeypatch.setattr(gen, "_run_generate", counting)
    small = dataclasses.replace(env.cfg, eval=dataclasses.replace(env.cfg.eval, beam_batch_size=2))
    beams = generate_texts(env.model, env.tok, recs, small, max_new_tokens=6, num_beams=2, num_return_sequences=2,
                           batch_size=5)
    assert calls == [2, 2, 1]
    calls.clear()
    assert generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=6, num_beams=2, num_return_sequences=2,
                          batch_size=5) == beams
    assert calls == [5]
    calls.clear()
    generate_texts(env.model, env.tok, recs, small, max_new_tokens=6, batch_size=5)  # greedy: not capped
    assert calls == [5]


def test_special_tokens_are_never_generated(env):
    stop = [env.tok.eos_token_id]
    sup = suppressed_token_ids(env.tok, stop)
    for t in ("<user>", "<item>", env.tok.pad_token, env.tok.bos_token):
        assert env.tok.convert_tokens_to_ids(t) in sup
    assert env.tok.eos_token_id not in sup
    recs = [r for r in env.emb if r["type"] == "uid2hist"]
    outs = generate_texts(env.model, env.tok, recs, env.cfg, max_new_tokens=10)
    assert not any("<user>" in o[0] or "<item>" in o[0] for o in outs)


def test_yes_no_scores_match_an_unpadded_forward(env):
    recs = [r for r in env.text + env.emb if r["type"] == "uidiid2binary"]
    got = score_yes_no(env.model, env.tok, recs, env.cfg, batch_size=5)
    yes, no = yes_no_token_ids(env.tok, env.cfg)
    assert yes == encode_answer(env.tok, "q", "Yes", env.cfg)[0] and no == encode_answer(env.tok, "q", "No", env.cfg)[0]
    for rec, g in zip(recs, got):
        b = collate(env.tok, [rec], env.cfg, 250)
        with torch.no_grad():
            logits = env.model(b["input_ids"], b["attention_mask"], user_histories=b["user_histories"],
                               item_ids=b["item_ids"]).logits[0, -1]
        lp = torch.log_softmax(logits.float(), -1)
        assert g["logp_yes"] == pytest.approx(float(lp[yes]), abs=1e-4)
        assert g["logp_no"] == pytest.approx(float(lp[no]), abs=1e-4)
        assert g["pred"] == ("Yes" if g["logp_yes"] >= g["logp_no"] else "No")


def test_grouped_yes_no_scores_equal_the_one_by_one_scores(env):
    """A group's prompt prefix run once and its cache copied must give each row's own scores."""
    from src.generation import _shared_prefix_length

    bins = [r for recs in (env.text, env.emb) for r in [r for r in recs if r["type"] == "uidiid2binary"][:4]]
    # a group per user: the same question about different items (text titles or <item> vectors),
    # in groups of 1 to 4 rows and of different prompt lengths
    groups = []
    for k, rec in enumerate(bins[:8]):
        items = [(rec["iid"] + j) % len(TITLES) + 1 for j in range(1 + k % 4)]
        groups.append([{**rec, "id": f"{rec['id']}:{i}", "iid": i, "iids_in_question": rec["iids_in_question"] and [i],
                        "question": rec["question"].replace(TITLES[rec["iid"] - 1], TITLES[i - 1])
                        if not rec["iids_in_question"] else rec["question"]} for i in items])
    got = score_yes_no_groups(env.model, env.tok, groups, env.cfg, batch_size=6)
    assert [len(g) for g in got] == [len(g) for g in groups]
    want = score_yes_no(env.model, env.tok, [q for g in groups for q in g], env.cfg, batch_size=5)
    flat = [o for g in got for o in g]
    for a, b in zip(flat, want):
        assert a["logp_yes"] == pytest.approx(b["logp_yes"], abs=1e-4)
        assert a["logp_no"] == pytest.approx(b["logp_no"], abs=1e-4)
        assert a["pred"] == b["pred"]
    # the <item> rows differ only in the vector at the marker: the shared prefix stops there
    emb_group = next(g for g in groups if g[0]["iids_in_question"] and len(g) > 1)
    b = collate(env.tok, emb_group, env.cfg, 250)
    ids = b["input_ids"]
    with torch.no_grad():
        embeds = env.model.embed_inputs(ids, b["user_histories"], b["item_ids"])
    marker = int((ids[0] == env.model.item_token_id).nonzero()[0])
    assert _shared_prefix_length(list(embeds)) == marker
    # one row: everything but its last token is the prefix
    assert _shared_prefix_length([embeds[0]]) == ids.shape[1] - 1


def test_yes_no_head_runs_in_float32_under_bf16_weights(env):
    """bf16 logits move in steps of 0.125 at magnitude 16-32: the scorer must not round them."""
    import copy

    recs = [r for r in env.text + env.emb if r["type"] == "uidiid2binary"][:4]
    model = copy.deepcopy(env.model).to(torch.bfloat16)
    got = score_yes_no(model, env.tok, recs, env.cfg, batch_size=4)
    yes, no = yes_no_token_ids(env.tok, env.cfg)
    lm = model.causal_lm()
    for rec, g in zip(recs, got):
        b = collate(env.tok, [rec], env.cfg, 250)
        with torch.no_grad():
            emb = model.embed_inputs(b["input_ids"], b["user_histories"], b["item_ids"])
            h = lm.get_decoder()(inputs_embeds=emb, attention_mask=b["attention_mask"]).last_hidden_state[0, -1]
            want = torch.log_softmax(h.float() @ lm.get_output_embeddings().weight.float().T, -1)
        assert g["logp_yes"] == pytest.approx(float(want[yes]), abs=1e-4)
        assert g["logp_no"] == pytest.approx(float(want[no]), abs=1e-4)


class _ScriptedLM(nn.Module):
    """An LM whose next-token scores favour "Yes" on prompts of even length, "No" otherwise."""

    def __init__(self, vocab: int, yes: int, no: int) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab, self.yes, self.no = vocab, yes, no

    def forward(self, input_ids, attention_mask, **kw):
        B = input_ids.shape[0]
        logits = torch.zeros(B, 1, self.vocab)
        even = attention_mask.sum(-1) % 2 == 0
        logits[:, 0, self.yes] = torch.where(even, 3.0, 1.0)
        logits[:, 0, self.no] = torch.where(even, 1.0, 3.0)
        return SimpleNamespace(logits=logits)


def test_yes_no_scorer_picks_the_more_probable_token(env):
    yes, no = yes_no_token_ids(env.tok, env.cfg)
    lm = _ScriptedLM(len(env.tok), yes, no)
    recs = [r for r in env.text if r["type"] == "uidiid2binary"]
    got = score_yes_no(lm, env.tok, recs, env.cfg, batch_size=4)
    for rec, g in zip(recs, got):
        n = len(collate(env.tok, [rec], env.cfg, 250)["input_ids"][0])
        assert g["pred"] == ("Yes" if n % 2 == 0 else "No")
        assert g["logp_yes"] != g["logp_no"]
    assert {g["pred"] for g in got} == {"Yes", "No"}


def test_icl_prompt_places_examples_before_the_question(env):
    ex = [{"question": "Q-one?", "answer": "A-one"}, {"question": "Q-two?", "answer": "A-two"}]
    p = build_icl_prompt(env.tok, ex, "Final question?", env.cfg)
    assert p.index("Q-one?") < p.index("A-one") < p.index("Q-two?") < p.index("A-two") < p.index("Final question?")
    assert p.endswith(build_prompt(env.tok, "Final question?", env.cfg).split("Final question?")[-1])
    rec = {**env.text[0], "icl": [{"id": "e", **e} for e in ex]}
    with_icl = collate(env.tok, [rec], env.cfg, 500)["input_ids"]
    without = collate(env.tok, [env.text[0]], env.cfg, 500)["input_ids"]
    assert with_icl.shape[1] > without.shape[1]
    # too little room: examples are dropped rather than the question cut
    assert collate(env.tok, [rec], env.cfg, without.shape[1])["input_ids"].shape[1] == without.shape[1]
