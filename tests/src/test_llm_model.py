"""Projector injection, answer-only loss, gradients, generation, save/load and merge."""

from __future__ import annotations

import pytest
import torch

from src.chat import collate_for_generation, marker_ids
from src.data import TaskCollator, TaskDataset
from src.merge import merge
from src.model import META_FILE, build_model, load_trained, save_trained
from core.utils import StageError, write_json
from tests.fixtures_llm import one_thread, FakeEncoder, mixed_records, tiny_cfg, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(model, seed: int = 0) -> None:
    """Give LoRA B (zero at init) and the projectors non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("llm_model"))
    write_tasks(cfg, "intention", mixed_records(16, 0), mixed_records(4, 1))
    enc = FakeEncoder()
    model, tok = build_model(cfg, enc)
    _perturb(model)
    model.eval()
    recs = mixed_records(6, 2)
    return cfg, enc, model, tok, recs


def _train_batch(cfg, tok, recs):
    ds = TaskDataset(recs, tok, cfg)
    return TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len)([ds[i] for i in range(len(ds))])


def test_projected_vectors_land_exactly_on_markers(setup):
    cfg, enc, model, tok, recs = setup
    b = collate_for_generation(tok, recs, cfg)
    ids = b["input_ids"]
    user_id, item_id = marker_ids(tok)
    with torch.no_grad():
        plain = model.lm.get_input_embeddings()(ids)
        inj = model.embed_inputs(ids, b["user_histories"], b["item_ids"])
        changed = (inj - plain).abs().amax(-1) > 0
        assert torch.equal(changed, (ids == user_id) | (ids == item_id))
        want_u = model.user_proj(enc.encode_users(b["user_histories"]))
        want_i = model.item_proj(enc.encode_items(b["item_ids"]))
    torch.testing.assert_close(inj[ids == user_id] - plain[ids == user_id], want_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inj[ids == item_id] - plain[ids == item_id], want_i, rtol=1e-5, atol=1e-6)
    assert len(b["item_ids"]) > 1  # several <item> rows, written in order


def test_injection_changes_logits_from_the_first_marker_on(setup):
    cfg, enc, model, tok, recs = setup
    b = collate_for_generation(tok, recs[:1], cfg)
    ids, mask = b["input_ids"], b["attention_mask"]
    with torch.no_grad():
        with_inj = model(**b).logits
        without = model.lm(input_ids=ids, attention_mask=mask).logits
    first = int(((ids == marker_ids(tok)[0]) | (ids == marker_ids(tok)[1]))[0].nonzero()[0])
    torch.testing.assert_close(with_inj[:, :first], without[:, :first])  # causal: nothing before it moves
    assert (with_inj[:, first:] - without[:, first:]).abs().max() > 1e-3


def test_marker_count_mismatch_is_a_clear_error(setup):
    cfg, enc, model, tok, recs = setup
    b = collate_for_generation(tok, recs, cfg)
    with pytest.raises(StageError, match=r"<user>: the batch has \d+ marker token\(s\) but \d+ encoder input"):
        model.embed_inputs(b["input_ids"], b["user_histories"][1:], b["item_ids"])
    with pytest.raises(StageError, match="<item>"):
        model.embed_inputs(b["input_ids"], b["user_histories"], b["item_ids"][:-1])


def test_answer_position_loss_equals_full_logits_loss(setup):
    cfg, enc, model, tok, recs = setup
    batch = _train_batch(cfg, tok, recs)
    with torch.no_grad():
        fast = model(**batch).loss
        full = model(**batch, full_logits=True).loss
        assert model(**batch).logits is None  # the head really was skipped
        ref = torch.nn.functional.cross_entropy(
            model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].flatten(0, 1),
            batch["labels"][:, 1:].flatten(), ignore_index=-100)
        n = int((batch["labels"] != -100).sum())
        scaled = model(**batch, num_items_in_batch=2 * n).loss
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled, fast / 2, rtol=1e-5, atol=1e-6)


def test_record_weighting_is_the_mean_of_per_record_means(setup):
    cfg, enc, model, tok, recs = setup
    batch = _train_batch(cfg, tok, recs)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        per_record = [torch.nn.functional.cross_entropy(logits[i], batch["labels"][i, 1:], ignore_index=-100)
                      for i in range(logits.shape[0])]
        want = torch.stack(per_record).mean()
        try:
            model.set_loss_weighting("record")
            assert model.accepts_loss_kwargs is False  # the Trainer then divides by accumulation itself
            fast = model(**batch).loss
            full = model(**batch, full_logits=True).loss
            ignored = model(**batch, num_items_in_batch=1000).loss
        finally:
            model.set_loss_weighting("token")
    assert model.accepts_loss_kwargs is True
    lengths = (batch["labels"][:, 1:] != -100).sum(1)
    assert lengths.min() < lengths.max()  # records of different answer lengths: the modes differ
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ignored, want, rtol=1e-5, atol=1e-5)
    assert not torch.isclose(fast, model(**batch).loss)
    with pytest.raises(ValueError, match="token' or 'record"):
        model.set_loss_weighting("sample")


def test_gradients_reach_projectors_and_lora_not_recommender(setup):
    cfg, enc, model, tok, recs = setup
    batch = _train_batch(cfg, tok, recs)
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    model.eval()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("user_proj.0.weight", "user_proj.2.weight", "item_proj.0.weight", "item_proj.2.bias"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in lora)
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    frozen = [n for n in grads if n.startswith("lm.") and "lora_" not in n]  # base LM weights
    assert frozen and all(grads[n] is None for n in frozen)
    assert not enc.training  # recommender stays in eval mode through model.train()
    model.zero_grad(set_to_none=True)


def test_generation_uses_cache_and_never_emits_markers(setup):
    cfg, enc, model, tok, recs = setup
    user_id, item_id = marker_ids(tok)
    b = collate_for_generation(tok, recs[:3], cfg)
    emb = model.lm.get_input_embeddings().weight
    saved = emb[user_id].clone()
    with torch.no_grad():
        emb[user_id] *= 200  # tied head: <user> now dominates every logit
    try:
        with torch.no_grad():
            raw = model.lm.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                    max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert (raw[:, b["input_ids"].shape[1]:] == user_id).any()  # unsuppressed, it would emit it
        cached = model.generate(**b, max_new_tokens=6, do_sample=False)
        nocache = model.generate(**b, max_new_tokens=6, do_sample=False, use_cache=False)
    finally:
        with torch.no_grad():
            emb[user_id] = saved
    assert torch.equal(cached[:, : b["input_ids"].shape[1]], b["input_ids"])  # prompt + new ids, like HF
    new = cached[:, b["input_ids"].shape[1]:]
    assert not ((new == user_id) | (new == item_id)).any()
    assert torch.equal(cached, nocache)
    beams = model.generate(**b, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 6


def test_save_load_identical_logits_and_merge(setup):
    cfg, enc, model, tok, recs = setup
    out = cfg.llm_dir / "intention"
    save_trained(model, tok, out)
    write_json(out / META_FILE, {"done": True, "lora": True, "task_type": "intention"})
    b = collate_for_generation(tok, recs, cfg)
    with torch.no_grad():
        ref = model(**b).logits
        loaded, tok2 = load_trained(cfg, "intention", rec_encoder=enc)
        assert not loaded.training and tok2.get_vocab() == tok.get_vocab()
        assert torch.equal(loaded(**b).logits, ref)
        merged_dir = merge(cfg, "intention")
        assert (merged_dir / "model" / "config.json").is_file() and not (merged_dir / "model" / "adapter_config.json").exists()
        merged, _ = load_trained(cfg, "intention", rec_encoder=enc, merged=True)
        assert not hasattr(merged.lm, "peft_config")
        torch.testing.assert_close(merged(**b).logits, ref, rtol=1e-4, atol=1e-4)


def test_full_finetune_save_load_and_none_baseline(tmp_path):
    cfg = tiny_cfg(tmp_path, "llm.lora.enabled=false")
    enc = FakeEncoder()
    model, tok = build_model(cfg, enc)
    assert all(p.requires_grad for p in model.lm.parameters())
    _perturb(model, 1)
    model.eval()
    save_trained(model, tok, cfg.llm_dir / "both")
    write_json(cfg.llm_dir / "both" / META_FILE, {"done": True, "lora": False})
    b = collate_for_generation(tok, mixed_records(3, 9), cfg)
    with torch.no_grad():
        loaded, _ = load_trained(cfg, "both", rec_encoder=enc)
        assert torch.equal(loaded(**b).logits, model(**b).logits)
        base, _ = load_trained(cfg, "none", rec_encoder=enc)
        plain = base.lm.get_input_embeddings()(b["input_ids"])
        assert torch.equal(base.embed_inputs(b["input_ids"], b["user_histories"], b["item_ids"]), plain)
    with pytest.raises(StageError, match="meta.json"):
        load_trained(cfg, "behaviour", rec_encoder=enc)


def test_activation_checkpointing_keeps_lora_gradients(setup):
    """Batches without markers: no input requires grad, yet LoRA must still get gradients."""
    cfg, enc, model, tok, recs = setup
    plain = [dict(r, question="Recommend a movie, please.", iids_in_question=[]) for r in recs[:3]]
    batch = _train_batch(cfg, tok, plain)
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.activation_checkpointing_enable()
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n})
    model.activation_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    model.eval()
    assert model.causal_lm().is_activation_checkpointing is False
    assert grads[1] and all(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_modules_to_save_train_save_reload_resume_merge(tmp_path):
    """llm.lora.modules_to_save=[embed_tokens, lm_head] (the original v1): the copies train,
    the new marker rows learn, and save / reload / checkpoint restore / merge keep them."""
    from safetensors import safe_open

    from src.train import load_checkpoint_weights

    cfg = tiny_cfg(tmp_path, "llm.lora.modules_to_save=[embed_tokens,lm_head]")
    enc = FakeEncoder()
    model, tok = build_model(cfg, enc)
    lm = model.causal_lm()
    user_id, item_id = marker_ids(tok)
    emb = lm.get_input_embeddings()
    trained, frozen = emb.modules_to_save["default"].weight, emb.original_module.weight
    # the tiny LLaMA ties its embeddings: ONE trained matrix is both embedding and LM head
    assert trained is lm.get_output_embeddings().modules_to_save["default"].weight
    assert trained.requires_grad and not frozen.requires_grad
    start = trained.detach().clone()
    recs = mixed_records(6, 2)
    batch = _train_batch(cfg, tok, recs)
    assert (batch["input_ids"] == item_id).any() and (batch["input_ids"] == user_id).any()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    assert trained.grad[user_id].abs().sum() > 0 and trained.grad[item_id].abs().sum() > 0
    opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    for tid in (user_id, item_id):
        assert not torch.allclose(trained[tid], start[tid])  # the new rows learn
    assert torch.equal(frozen, start)  # the base copy is untouched

    out = cfg.llm_dir / "both"
    save_trained(model, tok, out)
    write_json(out / META_FILE, {"done": True, "lora": True, "task_type": "both"})
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), framework="pt") as st:
        saved = {k: st.get_tensor(k) for k in st.keys() if "lora_" not in k}
    emb_key = next(k for k in saved if "embed_tokens" in k)
    assert torch.equal(saved[emb_key][user_id], trained[user_id].detach())  # the adapter carries them
    b = collate_for_generation(tok, recs, cfg)
    with torch.no_grad():
        ref = model(**b).logits
        loaded, _ = load_trained(cfg, "both", rec_encoder=enc)
        assert torch.equal(loaded(**b).logits, ref)
        c = loaded.causal_lm()
        assert c.get_input_embeddings().modules_to_save["default"].weight is \
            c.get_output_embeddings().modules_to_save["default"].weight  # still tied after reload
        # a checkpoint (same layout) restores into a fresh model: what a resumed run starts from
        fresh, _ = build_model(cfg, enc)
        load_checkpoint_weights(fresh, out)
        fresh.eval()
        assert torch.equal(fresh(**b).logits, ref)
        merged_dir = merge(cfg, "both")
        merged, _ = load_trained(cfg, "both", rec_encoder=enc, merged=True)
        assert not hasattr(merged.lm, "peft_config")
        w = merged.lm.get_input_embeddings().weight
        assert w is merged.lm.get_output_embeddings().weight  # a valid tied checkpoint
        torch.testing.assert_close(w[user_id], trained[user_id].detach())
        torch.testing.assert_close(merged(**b).logits, ref, rtol=1e-4, atol=1e-4)
    assert (merged_dir / "model" / "config.json").is_file()


def test_modules_to_save_on_an_untied_lm_trains_two_copies(tmp_path):
    """Vicuna does not tie its embeddings: embedding and head then get separate trained copies."""
    from torch import nn

    from src.model import apply_lora, embedding_modules, load_base

    cfg = tiny_cfg(tmp_path, "llm.lora.modules_to_save=[embed_tokens,lm_head]")
    lm, tok = load_base(cfg)
    lm.lm_head.weight = nn.Parameter(lm.lm_head.weight.detach().clone())
    lm.config.tie_word_embeddings = False
    assert embedding_modules(lm) == ({"embed_tokens", "lm_head"}, False)
    peft_lm = apply_lora(lm, cfg)
    c = peft_lm.get_base_model()
    e = c.get_input_embeddings().modules_to_save["default"].weight
    h = c.get_output_embeddings().modules_to_save["default"].weight
    assert e is not h and e.requires_grad and h.requires_grad
    assert not peft_lm.peft_config["default"].ensure_weight_tying
