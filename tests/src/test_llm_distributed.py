"""src.train under 2 processes on CPU, for real: `accelerate launch --multi_gpu` over gloo.

Each launch runs tests/ddp_worker.py (src.train.train with the fake recommender) as two
ranks with one thread each. Checked: the ranks see disjoint records that cover the epoch
(group_by_length sampler included); only rank 0 writes the model, meta.json and the logs;
the trained adapter + projectors equal a single-process run with the same total batch and
seed (token and record loss weighting); a 2-process run stopped at a checkpoint resumes to
the same weights and losses as an uninterrupted one; DeepSpeed ZeRO-2 (DeepSpeed's CPU
accelerator) trains with projectors that some ranks' batches do not use.

(`accelerate launch --cpu --num_processes 2` starts ONE process - accelerate's simple
launcher - which is why shell/train.sh and these tests use --multi_gpu on a CPU.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import REPO_ROOT
from src.model import PROJECTORS_FILE, build_tiny_base
from src.train import train
from core.utils import read_json, read_jsonl
from tests.fixtures_llm import FakeEncoder, mixed_records, one_thread, tiny_cfg, write_tasks  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

WORKER = REPO_ROOT / "tests" / "ddp_worker.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
N_TRAIN = 32
# 32 records / (2 ranks x 2 per device) = 8 steps; a checkpoint every 4; evaluation at the end
BASE = ["train.per_device_batch_size=2", "train.logging_steps=1", "train.save_steps=4", "train.eval_steps=100",
        "train.max_eval_samples=4", "llm.lora.dropout=0.0"]
# the seedable random sampler draws the same permutation whatever the world size, so the
# global batch of step k holds the same records under 1 x 4 and 2 x 2
SAME_ORDER = ["train.group_by_length=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(root: Path, *sets: str):
    cfg = tiny_cfg(root, *sets)
    write_tasks(cfg, "behaviour", mixed_records(N_TRAIN, 0), mixed_records(8, 1))
    build_tiny_base(cfg)  # once, here: the two ranks would otherwise both build it
    return cfg


def _launch(root: Path, *sets: str, extra: tuple[str, ...] = (), timeout: int = 300) -> str:
    if not ACCELERATE.is_file():
        pytest.skip(f"no accelerate launcher at {ACCELERATE}")
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(WORKER), "--root", str(root), "--trace", *extra, *(a for s in sets for a in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO_ROOT), "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"launch failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r.stdout + r.stderr


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    w = {f"adapter.{k}": v for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items()}
    proj = torch.load(out / PROJECTORS_FILE, map_location="cpu", weights_only=True)
    w.update({f"proj.{k}": v for k, v in _flat(proj).items()})
    return w


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif torch.is_tensor(v):
            out[f"{prefix}{k}"] = v
    return out


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert sorted(a) == sorted(b)
    assert any(k.startswith("proj.") for k in a) and any("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "train"}


def _trace(root: Path, rank: int) -> list[int]:
    return [i for row in read_jsonl(root / f"trace.rank{rank}.jsonl") for i in row["idx"]]


def test_two_ranks_share_the_epoch_and_only_rank0_writes(tmp_path):
    """group_by_length (the paper's sampler) on 2 ranks, with a learning-curve probe on rank 0."""
    sets = [*BASE, "train.probe_points=1", "train.probe_samples={uid2next: 2}", "eval.num_beams=2"]
    cfg = _prepare(tmp_path, *sets)
    assert cfg.train.group_by_length
    _launch(tmp_path, *sets)
    out = cfg.llm_dir / "behaviour"

    r0, r1 = _trace(tmp_path, 0), _trace(tmp_path, 1)
    assert len(r0) == len(r1) == N_TRAIN // 2
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(N_TRAIN))  # each record once

    meta = read_json(out / "meta.json")
    assert meta["done"] and meta["world_size"] == 2 and meta["effective_batch_size"] == 4
    assert meta["global_step"] == 8 and meta["n_train"] == N_TRAIN
    assert meta["eval_loss"] is not None  # evaluation (sharded over both ranks) reported

    assert not (tmp_path / "writes.rank1.jsonl").exists()  # rank 1 wrote nothing at all
    writes = read_jsonl(tmp_path / "writes.rank0.jsonl")
    final = [w for w in writes if w["kind"] == "save_trained" and Path(w["path"]) == out]
    assert len(final) == 1
    assert [w["path"] for w in writes if w["kind"] == "write_json"] == [str(out / "meta.json")]
    saves = sorted(Path(w["path"]).name for w in writes if w["kind"] == "save_trained" and Path(w["path"]) != out)
    assert saves == ["checkpoint-4", "checkpoint-8"]

    keys = [r["key"] for r in read_jsonl(out / "train_log.jsonl")]
    assert len(keys) == len(set(keys)) and sorted(_losses(out)) == list(range(1, 9))
    assert [r["step"] for r in read_jsonl(out / "probe.jsonl")] == [0, 8]  # probed once per point
    ckpt = out / "checkpoints" / "checkpoint-8"
    assert {p.name for p in ckpt.glob("rng_state*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert len(list(ckpt.glob("optimizer*.pt"))) == 1
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("weighting", ["token", "record"])
def test_two_processes_equal_one_with_the_same_total_batch(tmp_path, weighting):
    """2 ranks x 2 records == 1 process x 4 records (same seed); token mode also resumes."""
    sets = [*BASE, *SAME_ORDER, f"train.loss_weighting={weighting}"]
    single_cfg = _prepare(tmp_path / "single", *sets, "train.per_device_batch_size=4")
    single = train(single_cfg, "behaviour", rec_encoder=FakeEncoder())
    assert read_json(single / "meta.json")["global_step"] == 8

    ddp_cfg = _prepare(tmp_path / "ddp", *sets)
    _launch(tmp_path / "ddp", *sets)
    ddp = ddp_cfg.llm_dir / "behaviour"
    assert read_json(ddp / "meta.json")["effective_batch_size"] == 4
    _assert_close(_weights(ddp), _weights(single), atol=2e-5)
    assert sorted(_losses(ddp)) == sorted(_losses(single)) == list(range(1, 9))
    if weighting != "token":
        return

    # killed after checkpoint-4 (stopped there, and meta.json gone), then the same command again
    cfg = _prepare(tmp_path / "killed", *sets)
    _launch(tmp_path / "killed", *sets, extra=("--stop_at", "4"))
    out = cfg.llm_dir / "behaviour"
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    (out / "meta.json").unlink()
    log = _launch(tmp_path / "killed", *sets)
    assert "resuming from" in log
    meta = read_json(out / "meta.json")
    assert meta["resumed_from"].endswith("checkpoint-4") and meta["global_step"] == 8
    resumed, full = _losses(out), _losses(ddp)
    assert sorted(resumed) == list(range(1, 9))  # every step logged once
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=1e-4), step
    _assert_close(_weights(out), _weights(ddp), atol=1e-6)
    # killed run + resumed run: still every record once across the two ranks (skipped
    # batches are not fed again)
    r0, r1 = _trace(tmp_path / "killed", 0), _trace(tmp_path / "killed", 1)
    assert sorted(r0 + r1) == list(range(N_TRAIN))


def test_deepspeed_zero2_on_cpu_with_two_processes(tmp_path):
    """ZeRO-2 through DeepSpeed's CPU accelerator (gloo): trains, and matches plain DDP.

    The batches mix records with and without <item>, so some ranks leave the item
    projector unused in a step: ZeRO-2 needs RecExplainer.touch_unused_projectors for that.
    """
    pytest.importorskip("deepspeed")
    sets = [*BASE, *SAME_ORDER, "train.deepspeed=configs/deepspeed/zero2.json", "train.save_steps=100"]
    cfg = _prepare(tmp_path / "zero2", *sets)
    _launch(tmp_path / "zero2", *sets, timeout=600)  # first use compiles DeepSpeed's shm op with g++
    out = cfg.llm_dir / "behaviour"
    meta = read_json(out / "meta.json")
    assert meta["done"] and meta["world_size"] == 2 and meta["global_step"] == 8
    assert not (tmp_path / "zero2" / "writes.rank1.jsonl").exists()
    ddp_sets = [s for s in sets if not s.startswith("train.deepspeed")]
    ddp_cfg = _prepare(tmp_path / "ddp", *ddp_sets)
    _launch(tmp_path / "ddp", *ddp_sets)
    _assert_close(_weights(out), _weights(ddp_cfg.llm_dir / "behaviour"), atol=2e-5)


def test_unused_projector_gets_a_zero_gradient_only_when_asked(tmp_path):
    """What ZeRO-2 needs: a batch without <item> still gives item_proj a (zero) gradient."""
    from src.data import TaskCollator, TaskDataset
    from src.model import build_model

    cfg = _prepare(tmp_path, *BASE)
    no_items = [r for r in mixed_records(N_TRAIN, 0) if not r["iids_in_question"]][:2]
    model, tok = build_model(cfg, FakeEncoder())
    batch = TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len)(list(TaskDataset(no_items, tok, cfg)))
    grads = {}
    for touch in (False, True):
        model.zero_grad(set_to_none=True)
        model.touch_unused_projectors = touch
        model(**batch).loss.backward()
        grads[touch] = [p.grad for p in model.item_proj.parameters()]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.user_proj.parameters())
    assert all(g is None for g in grads[False])
    assert all(g is not None and not g.any() for g in grads[True])


def test_train_sh_takes_nproc_and_keeps_it_from_src_train(tmp_path):
    r = subprocess.run(["bash", "shell/train.sh", "configs/tiny.yaml", "--nproc", "two"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--nproc must be a positive integer" in r.stderr
    text = (REPO_ROOT / "shell" / "train.sh").read_text()
    assert "--multi_gpu --num_processes" in text and "OMP_NUM_THREADS" in text
    run_all = (REPO_ROOT / "shell" / "run_all.sh").read_text()
    assert 'export NPROC="$2"' in run_all  # run_all hands it to train.sh by the environment, not ARGS
