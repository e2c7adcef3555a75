"""End-to-end training on the tiny profile: injection carries information; resume; skip."""

from __future__ import annotations

import pytest
import torch

from src.chat import collate_for_generation
from src.model import load_trained
from src.train import main, train
from core.utils import StageError, read_json, read_jsonl
from tests.fixtures_llm import one_thread, CLUSTERS, FakeEncoder, cluster_records, mixed_records, stop_at, tiny_cfg, write_tasks

FAST = ["llm.lora.enabled=false", "train.epochs=10", "train.lr=0.003", "train.per_device_batch_size=16",
        "train.logging_steps=10", "train.eval_steps=80", "train.save_steps=1000"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_match(cfg, enc, recs) -> float:
    model, tok = load_trained(cfg, "intention", rec_encoder=enc)
    b = collate_for_generation(tok, recs, cfg)
    out = model.generate(**b, max_new_tokens=4, do_sample=False)
    texts = tok.batch_decode(out[:, b["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == r["answer"] for t, r in zip(texts, recs)) / len(recs)


@pytest.mark.slow
def test_intention_training_reads_the_user_embedding(tmp_path):
    """The question text is identical for all samples; only <user>'s vector says the answer."""
    test_recs = cluster_records(48, 7, "t")
    majority = max(sum(r["answer"] == c for r in test_recs) for c in CLUSTERS) / len(test_recs)
    accs = {}
    for name, zero in (("injected", False), ("zeroed", True)):
        cfg = tiny_cfg(tmp_path / name, *FAST)
        write_tasks(cfg, "intention", cluster_records(256, 0), cluster_records(32, 1, "v"))
        enc = FakeEncoder()
        out = train(cfg, "intention", rec_encoder=enc, zero_projectors=zero)
        meta = read_json(out / "meta.json")
        assert meta["done"] and meta["global_step"] == 160 and meta["loss_last"] < meta["loss_first"]
        accs[name] = _exact_match(cfg, enc, test_recs)
    assert accs["injected"] >= 0.9, accs
    assert accs["zeroed"] <= majority + 0.1, accs  # without the vector it can only guess



def _losses(out):
    return {r["step"]: r["loss"] for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "train"}


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path):
    over = ["train.per_device_batch_size=4", "train.logging_steps=1", "train.save_steps=5", "train.eval_steps=100",
            "train.max_train_samples=80", "train.max_eval_samples=4"]
    enc = FakeEncoder()
    recs = mixed_records(100, 0)
    full_cfg = tiny_cfg(tmp_path / "full", *over)
    write_tasks(full_cfg, "behaviour", recs, mixed_records(8, 1))
    full = _losses(train(full_cfg, "behaviour", rec_encoder=enc, max_steps=20))

    cfg = tiny_cfg(tmp_path / "killed", *over)
    write_tasks(cfg, "behaviour", recs, mixed_records(8, 1))
    out = train(cfg, "behaviour", rec_encoder=enc, max_steps=20, callbacks=[stop_at(10)])
    assert (out / "checkpoints" / "checkpoint-10" / "projectors.pt").is_file()
    assert not (out / "checkpoints" / "checkpoint-10" / "model.safetensors").exists()  # trainable parts only
    (out / "meta.json").unlink()  # as if the process had died after checkpoint-10
    train(cfg, "behaviour", rec_encoder=enc, max_steps=20)
    meta = read_json(out / "meta.json")
    assert meta["resumed_from"].endswith("checkpoint-10") and meta["global_step"] == 20
    resumed = _losses(out)
    assert sorted(resumed) == list(range(1, 21))  # every step logged once, none replayed twice
    for step in (11, 15, 20):  # same data order, weights, optimizer and schedule as the full run
        assert resumed[step] == pytest.approx(full[step], rel=1e-4), step


def test_skip_when_done_force_redo_and_cli_errors(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, "train.max_train_samples=8", "train.per_device_batch_size=4", "train.save_steps=1000")
    write_tasks(cfg, "both", mixed_records(12, 0), mixed_records(4, 1))
    enc = FakeEncoder()
    out = train(cfg, "both", rec_encoder=enc)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert train(cfg, "both", rec_encoder=enc) == out and (out / "meta.json").stat().st_mtime_ns == stamp
    train(cfg, "both", rec_encoder=enc, force=True)
    assert (out / "meta.json").stat().st_mtime_ns != stamp
    rows = read_jsonl(out / "train_log.jsonl")
    assert rows[0]["step"] == 1 and "loss" in rows[0]
    assert {"adapter", "projectors.pt", "tokenizer", "meta.json"} <= {p.name for p in out.iterdir()}
    # a missing task file is one clear message and exit code 2
    assert main(["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}/none", "--task_type", "intention"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "intention_train.json" in err and "data_gen" in err


def test_auto_dtype_rerun_skips_and_old_stamps_stay_current(tmp_path, monkeypatch):
    """`llm.torch_dtype: auto` (the CPU profiles): a finished model is current on a re-run
    (the stamp keeps "auto"; it once held the measured dtype, and run_all.sh refused to go on),
    and a stamp written that way is current too, and left byte for byte (the evaluations
    fingerprint it)."""
    import json

    import src.precision as precision

    monkeypatch.setattr(precision, "pick_dtype", lambda path: "bfloat16")
    cfg = tiny_cfg(tmp_path, "llm.torch_dtype=auto", "train.max_train_samples=8", "train.per_device_batch_size=4",
                   "train.save_steps=1000")
    write_tasks(cfg, "both", mixed_records(12, 0), mixed_records(4, 1))
    enc = FakeEncoder()
    out = train(cfg, "both", rec_encoder=enc)
    meta = read_json(out / "meta.json")
    assert (meta["torch_dtype"], meta["bf16_autocast"]) == ("bfloat16", False)
    stamp = read_json(out / "stamp.json")
    assert stamp["settings"]["llm.torch_dtype"] == "auto"
    done = (out / "meta.json").stat().st_mtime_ns
    assert train(cfg, "both", rec_encoder=enc) == out and (out / "meta.json").stat().st_mtime_ns == done
    # a stamp from before: the measured dtype in place of "auto"
    stamp["settings"]["llm.torch_dtype"] = "bfloat16"
    (out / "stamp.json").write_text(json.dumps(stamp))
    before = (out / "stamp.json").read_bytes()
    assert train(cfg, "both", rec_encoder=enc) == out and (out / "meta.json").stat().st_mtime_ns == done
    assert (out / "stamp.json").read_bytes() == before
    # any other difference is still stale
    stamp["settings"]["llm.torch_dtype"], stamp["settings"]["train.lr"] = "bfloat16", 0.5
    (out / "stamp.json").write_text(json.dumps(stamp))
    with pytest.raises(StageError, match="other settings"):
        train(cfg, "both", rec_encoder=enc)


def test_modules_to_save_trains_and_resumes_from_a_checkpoint(tmp_path):
    """embed_tokens/lm_head copies (the original v1) through the Trainer: a killed run resumes
    from its checkpoint with the trained rows and optimizer, and ends where a full run ends."""
    from src.chat import marker_ids
    from src.model import load_base

    over = ["llm.lora.modules_to_save=[embed_tokens,lm_head]", "train.per_device_batch_size=4",
            "train.logging_steps=1", "train.save_steps=2", "train.eval_steps=100", "train.lr=0.01",
            "train.max_train_samples=24", "train.max_eval_samples=4"]
    enc = FakeEncoder()
    recs = mixed_records(30, 0)
    full_cfg = tiny_cfg(tmp_path / "full", *over)
    write_tasks(full_cfg, "both", recs, mixed_records(8, 1))
    full_out = train(full_cfg, "both", rec_encoder=enc, max_steps=4)
    full = _losses(full_out)

    cfg = tiny_cfg(tmp_path / "killed", *over)
    write_tasks(cfg, "both", recs, mixed_records(8, 1))
    out = train(cfg, "both", rec_encoder=enc, max_steps=4, callbacks=[stop_at(2)])
    (out / "meta.json").unlink()
    train(cfg, "both", rec_encoder=enc, max_steps=4)
    meta = read_json(out / "meta.json")
    assert meta["resumed_from"].endswith("checkpoint-2") and meta["modules_to_save"] == ["embed_tokens", "lm_head"]
    resumed = _losses(out)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=1e-4), step

    base, tok = load_base(cfg)
    model, _ = load_trained(cfg, "both", rec_encoder=enc)
    ref, _ = load_trained(full_cfg, "both", rec_encoder=enc)
    emb = model.causal_lm().get_input_embeddings().modules_to_save["default"].weight
    ref_emb = ref.causal_lm().get_input_embeddings().modules_to_save["default"].weight
    torch.testing.assert_close(emb, ref_emb, rtol=1e-4, atol=1e-5)
    for tid in marker_ids(tok):  # the new <user>/<item> rows moved away from their initial values
        assert not torch.allclose(emb[tid], base.get_input_embeddings().weight[tid])


def test_trainer_args_pass_through_validated(tmp_path):
    """train.trainer_args reaches TrainingArguments as given; a misspelt field, one that a
    train.* key already sets, or one the trainer depends on is one clear error (issue 14)."""
    from pathlib import Path

    from core.config import ConfigError
    from src.train import training_arguments

    cfg = tiny_cfg(tmp_path, "train.trainer_args={weight_decay: 0.01, lr_scheduler_type: cosine, max_grad_norm: 0.5}")
    args = training_arguments(cfg, Path(tmp_path) / "o", has_eval=False)
    assert (args.weight_decay, str(args.lr_scheduler_type.value), args.max_grad_norm) == (0.01, "cosine", 0.5)
    assert args.learning_rate == cfg.train.lr  # the mapped keys still come from train.*
    for bad, named in [("{weight_decayy: 0.1}", "did you mean weight_decay"),
                       ("{learning_rate: 0.1}", "set train.lr instead"),
                       ("{remove_unused_columns: true}", "set by src.train itself")]:
        with pytest.raises(ConfigError, match=named):
            training_arguments(tiny_cfg(tmp_path, f"train.trainer_args={bad}"), Path(tmp_path) / "o", has_eval=False)
