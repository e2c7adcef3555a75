"""The CPU training recipe: task mix, projector learning rate and pre-alignment, the probe
learning curve, the measured dtype choice, and single-prefill beam search."""

from __future__ import annotations

import collections

import pytest
import torch

from core.config import ConfigError
from src.data import mix_tasks
from core.utils import StageError, read_json, read_jsonl
from tests.fixtures_eval import load_tiny_explainer, make_records, read_sequences, setup_eval_root
from tests.fixtures_llm import FakeEncoder, cluster_records, one_thread, tiny_cfg, write_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _records() -> list[dict]:
    out = []
    for t, forms, n in (("uid2next", ("behaviour", "hybrid"), 50), ("uidiid2binary", ("hybrid",), 10),
                        ("iid2title", ("intention",), 40)):
        for f in forms:
            out += [{"id": f"{t}-{f}-{k}", "type": t, "form": f, "question": "q", "answer": "a"} for k in range(n)]
    return out


def test_mix_tasks_draws_the_proportions_per_type_and_form():
    recs = _records()
    got = mix_tasks(recs, {"uid2next:hybrid": 2, "uidiid2binary": 1, "iid2title": 1}, 40, seed=3, path="x.json")
    counts = collections.Counter((r["type"], r["form"]) for r in got)
    assert counts == {("uid2next", "hybrid"): 20, ("uidiid2binary", "hybrid"): 10, ("iid2title", "intention"): 10}
    assert len({r["id"] for r in got if r["type"] == "uid2next"}) == 20  # enough records: no repeats
    assert got == mix_tasks(recs, {"uid2next:hybrid": 2, "uidiid2binary": 1, "iid2title": 1}, 40, seed=3, path="x")
    # a type smaller than its share is repeated (more than one pass), never silently short
    many = mix_tasks(recs, {"uidiid2binary": 1}, 25, seed=0, path="x")
    assert len(many) == 25 and len({r["id"] for r in many}) == 10
    assert mix_tasks(recs, {}, 0, seed=0, path="x") == recs  # no mix: the old behaviour


def test_mix_tasks_errors_name_the_key():
    recs = _records()
    with pytest.raises(ConfigError, match="uid2nxt.*not a record type"):
        mix_tasks(recs, {"uid2nxt": 1}, 10, seed=0, path="t.json")
    with pytest.raises(ConfigError, match="uid2next:hybird"):
        mix_tasks(recs, {"uid2next:hybird": 1}, 10, seed=0, path="t.json")
    # a key of another training file (uid2hist is intention-only) is skipped; none at all is an error
    assert len(mix_tasks(recs, {"uid2hist": 1, "iid2title": 1}, 10, seed=0, path="t.json")) == 10
    with pytest.raises(StageError, match="selects none"):
        mix_tasks(recs, {"uid2hist": 1}, 10, seed=0, path="t.json")
    with pytest.raises(ConfigError, match="max_train_samples > 0"):
        mix_tasks(recs, {"uid2next": 1}, 0, seed=0, path="t.json")
    with pytest.raises(ConfigError, match="task_mix.uid2next"):
        mix_tasks(recs, {"uid2next": -1}, 10, seed=0, path="t.json")


def test_budget_and_mix_per_variant_and_their_stamps(tmp_path):
    from src.budget import train_budget_of
    from src.train import train_fingerprint

    mixes = "train.task_mix={intention: {uidiid2binary: 1}, both: {uid2next: 1}}"
    cfg = tiny_cfg(tmp_path, "train.max_train_samples=10", "train.max_train_samples_per_type={intention: 30}", mixes)
    assert (train_budget_of(cfg, "intention"), train_budget_of(cfg, "both"), train_budget_of(cfg, "behaviour")) == (30, 10, 10)
    both = train_fingerprint(cfg, "both")["settings"]
    assert both["train.max_train_samples"] == 10 and both["train.task_mix"] == {"uid2next": 1}
    # retuning one variant leaves the others' stamps as they were; its own changes
    other = tiny_cfg(tmp_path, "train.max_train_samples=10", "train.max_train_samples_per_type={intention: 50}",
                     "train.task_mix={intention: {uidiid2binary: 2}, both: {uid2next: 1}}")
    assert train_fingerprint(other, "both")["settings"] == both
    assert train_fingerprint(other, "intention")["settings"] != train_fingerprint(cfg, "intention")["settings"]
    # one budget and a flat mix stamp as they always did (models trained before the per-variant keys stay current)
    flat = tiny_cfg(tmp_path, "train.max_train_samples=12", "train.task_mix={uid2next: 1}")
    stamp = train_fingerprint(flat, "intention")["settings"]
    assert stamp["train.max_train_samples"] == 12 and stamp["train.task_mix"] == {"uid2next": 1}
    assert "train.max_train_samples_per_type" not in stamp
    with pytest.raises(ConfigError, match="max_train_samples_per_type: unknown task type 'intension'"):
        train_budget_of(tiny_cfg(tmp_path, "train.max_train_samples_per_type={intension: 3}"), "intention")
    with pytest.raises(ConfigError, match="max_train_samples_per_type"):
        tiny_cfg(tmp_path, "train.max_train_samples_per_type={both: -1}")


def test_prealign_moves_projectors_onto_title_embeddings(tmp_path):
    from src.model import build_model
    from src.prealign import prealign_projectors, title_embeddings

    cfg = setup_eval_root(tmp_path, "train.prealign_steps=200", "train.prealign_lr=0.01")
    model, tok = load_tiny_explainer(cfg)
    fresh, _ = build_model(cfg, model.encoder)
    recs = make_records(read_sequences(cfg), "emb", "train")
    uid2next = [r for r in recs if r["type"] == "uid2next"]
    from preprocess.dataset import load_canonical

    titles = load_canonical(cfg).titles
    emb = fresh.lm.get_input_embeddings().weight.detach()
    iids = torch.arange(1, len(titles))
    target = title_embeddings(emb, tok, titles[1:])

    def err() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(fresh.item_proj(fresh.encoder.encode_items(iids).float()), target).item()

    before = err()
    titles_only = make_records(read_sequences(cfg), "text", "train")  # RecExplainer-B's records
    assert prealign_projectors(fresh, tok, cfg, titles_only) == {} and err() == before
    counts = prealign_projectors(fresh, tok, cfg, recs)
    assert counts["items"] == len(titles) - 1 and 0 < counts["users"] <= len(uid2next)
    assert err() < 0.5 * before


def test_prealign_user_topk_targets_the_mean_of_the_top_k_titles(tmp_path):
    from src.chat import right_align
    from src.model import build_model
    from src.prealign import prealign_projectors, title_embeddings

    cfg = setup_eval_root(tmp_path, "train.prealign_steps=300", "train.prealign_lr=0.01",
                          "train.prealign_user_topk=3")
    model, tok = load_tiny_explainer(cfg)
    fresh, _ = build_model(cfg, model.encoder)
    recs = [r for r in make_records(read_sequences(cfg), "emb", "train") if r["type"] == "uid2next"]
    from preprocess.dataset import load_canonical

    titles = load_canonical(cfg).titles
    emb = fresh.lm.get_input_embeddings().weight.detach()
    hists = {tuple(r["history"]) for r in recs}
    L = cfg.recmodel.max_seq_len
    u = fresh.encoder.encode_users(torch.tensor([right_align(list(h), L) for h in hists])).float()
    items = fresh.encoder.encode_items(torch.arange(len(titles))).float()
    want: dict[int, list] = {1: [], 3: []}
    for h, scores in zip(hists, u @ items.T):
        scores = scores.clone()
        scores[0] = float("-inf")
        scores[list(h)] = float("-inf")  # the recommender never recommends what the user has seen
        for k in want:
            want[k].append(title_embeddings(emb, tok, [titles[i] for i in scores.topk(k).indices.tolist()]).mean(0))
    targets = {k: torch.stack(v) for k, v in want.items()}

    def err(k: int) -> float:  # of the current `fresh` model
        with torch.no_grad():
            return torch.nn.functional.mse_loss(fresh.user_proj(u), targets[k]).item()

    before = err(3)
    prealign_projectors(fresh, tok, cfg, recs)
    assert err(3) < 0.5 * before
    # the same pre-alignment with the top-1 target lands farther from the top-3 means
    top3 = err(3)
    fresh, _ = build_model(cfg, model.encoder)
    cfg.train.prealign_user_topk = 1
    prealign_projectors(fresh, tok, cfg, recs)
    assert top3 < 0.5 * err(3)
    with pytest.raises(ConfigError, match="prealign_user_topk"):
        setup_eval_root(tmp_path / "bad", "train.prealign_user_topk=0")


def test_projector_lr_gives_the_projectors_their_own_group(tmp_path):
    from src.train import _trainer_classes, training_arguments
    from src.model import build_model

    cfg = tiny_cfg(tmp_path, "train.projector_lr=0.01", "train.lr=0.001")
    write_tasks(cfg, "intention", cluster_records(8, 0), cluster_records(4, 1, "v"))
    model, tok = build_model(cfg, FakeEncoder())
    RecTrainer, _ = _trainer_classes()
    trainer = RecTrainer(model=model, args=training_arguments(cfg, tmp_path / "ck", has_eval=False),
                         processing_class=tok)
    trainer.projector_lr = 0.01
    opt = trainer.create_optimizer()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [0.001, 0.01]
    proj = {id(p) for p in list(model.user_proj.parameters()) + list(model.item_proj.parameters())}
    fast = next(g for g in opt.param_groups if g["lr"] == 0.01)
    assert {id(p) for p in fast["params"]} == proj


def test_probe_rows_during_training_and_the_alignment_curve(tmp_path):
    from src.probe import probe_steps
    from src.report import alignment_curve
    from src.train import train

    assert probe_steps(10, 2) == [0, 5, 10] and probe_steps(10, 0) == []
    cfg = tiny_cfg(tmp_path, "llm.lora.enabled=false", "train.lr=0.003", "train.per_device_batch_size=8",
                   "train.probe_points=2", "train.save_steps=1000", "eval.num_beams=2", "eval.max_new_tokens=4",
                   "train.probe_samples={uid2next: 4, uidiid2binary: 8}")
    train_recs = cluster_records(32, 0)
    valid = cluster_records(12, 1, "v")
    for k, r in enumerate(valid):  # give the probe both of its modes
        if k % 2:
            r.update(type="uidiid2binary", answer="Yes" if k % 4 == 1 else "No")
        else:
            r["type"] = "uid2next"
    write_tasks(cfg, "intention", train_recs, valid)
    out = train(cfg, "intention", rec_encoder=FakeEncoder())
    rows = read_jsonl(out / "probe.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert [r["tokens"] for r in rows] == sorted(r["tokens"] for r in rows) and rows[0]["tokens"] == 0
    for r in rows:
        assert r["uid2next"]["n"] == 4 and r["uidiid2binary"]["n"] == 6  # the sample is the same at each point
        assert 0.0 <= r["uidiid2binary"]["acc"] <= 1.0 and len(r["uid2next"]["ci95"]["hr@5"]) == 2
    assert read_json(out / "meta.json")["done"]
    png = alignment_curve(cfg)
    assert png is not None and png.stat().st_size > 1000
    csv_lines = (cfg.tables_dir / "alignment_curve.csv").read_text().splitlines()
    assert csv_lines[0].startswith("Method,step,tokens,Task 1 HR@5") and len(csv_lines) == 4


def test_auto_dtype_keeps_float32_master_weights_for_full_fine_tuning(tmp_path, monkeypatch):
    import src.precision as precision
    from src.train import resolve_training_dtype

    assert precision.pick_dtype.__doc__
    monkeypatch.setattr(precision, "pick_dtype", lambda path: "bfloat16")
    full = resolve_training_dtype(tiny_cfg(tmp_path, "llm.torch_dtype=auto", "llm.lora.enabled=false"))
    assert (full.llm.torch_dtype, full.train.bf16) == ("float32", True)
    lora = resolve_training_dtype(tiny_cfg(tmp_path, "llm.torch_dtype=auto"))
    assert (lora.llm.torch_dtype, lora.train.bf16) == ("bfloat16", False)
    monkeypatch.setattr(precision, "pick_dtype", lambda path: "float32")
    slow = resolve_training_dtype(tiny_cfg(tmp_path, "llm.torch_dtype=auto", "llm.lora.enabled=false"))
    assert (slow.llm.torch_dtype, slow.train.bf16) == ("float32", False)


def test_measured_dtype_choice_is_one_of_the_two(tmp_path):
    from src.model import base_model_path
    from src.precision import pick_dtype

    cfg = tiny_cfg(tmp_path)
    (cfg.data_dir).mkdir(parents=True, exist_ok=True)
    assert pick_dtype(base_model_path(cfg)) in ("float32", "bfloat16")


def test_single_prefill_beam_search_equals_hf_beam_search(tmp_path):
    """Prefilling once and copying the KV cache per beam must not change a single beam."""
    from src.generation import generate_texts
    from src.model import RecExplainer

    cfg = setup_eval_root(tmp_path)
    model, tok = load_tiny_explainer(cfg)
    seqs = read_sequences(cfg)
    recs = [r for r in make_records(seqs, "emb", "valid") + make_records(seqs, "text", "valid")
            if r["type"] == "uid2next"][:6]
    ours = generate_texts(model, tok, recs, cfg, max_new_tokens=8, num_beams=3, num_return_sequences=3, batch_size=3)

    def hf_generate(self, input_ids, attention_mask=None, user_histories=None, item_ids=None, **kw):
        embeds = self.embed_inputs(input_ids, user_histories, item_ids)
        kw["suppress_tokens"] = sorted(set(kw.pop("suppress_tokens", None) or []) | {self.user_token_id, self.item_token_id})
        kw.setdefault("pad_token_id", self.pad_token_id)
        return self.lm.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    orig = RecExplainer.generate
    RecExplainer.generate = torch.no_grad()(hf_generate)
    try:
        theirs = generate_texts(model, tok, recs, cfg, max_new_tokens=8, num_beams=3, num_return_sequences=3,
                                batch_size=3)
    finally:
        RecExplainer.generate = orig
    assert ours == theirs
