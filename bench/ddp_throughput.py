"""Training tokens/s on a CPU: 1 process x 2 threads vs 2 processes x 1 thread (DDP, gloo).

    python bench/ddp_throughput.py [--config configs/ml100k.yaml] [--model models/smollm2-135m-instruct|tiny]
        [--steps 10] [--batch 4] [--set key=value ...]

Both arms run the real trainer (src.train.train) for the same number of optimizer steps on
the same records with the same global batch: arm "1x2" one process with --batch rows per
step and OMP_NUM_THREADS=2; arm "2x1" `accelerate launch --multi_gpu --num_processes 2`
(what shell/train.sh --nproc 2 starts on a CPU) with --batch/2 rows per rank and
OMP_NUM_THREADS=1. Figures are real (non-pad) training tokens per second of trainer.train
(meta.json tokens_per_s: set-up, DDP start and the first step included, so use 10+ steps).

Model: models/smollm2-135m-instruct when present (LoRA, as in the issue's figures), else
the tiny profile; --model picks one. Records: synthetic prompts of the real tasks' shape
(bench.train_throughput.synthetic_records); the recommender is a random embedding table, so
nothing under outputs/ is read or written (everything goes to a temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMOLLM = "models/smollm2-135m-instruct"


def _cfg(args: argparse.Namespace, root: Path, batch: int):
    from core.config import load_config

    model = args.model or (SMOLLM if (REPO / SMOLLM / "config.json").is_file() else "tiny")
    config = args.config or ("configs/tiny.yaml" if model == "tiny" else "configs/ml100k.yaml")
    sets = [f"paths.root={root}/out", f"paths.raw_dir={root}/raw", f"llm.base_model={model}",
            "llm.lora.enabled=true", "train.task_mix={}", "train.max_train_samples=0", "train.probe_points=0",
            "train.prealign_steps=0", f"train.per_device_batch_size={batch}", "train.grad_accum=1",
            "train.group_by_length=false", "train.logging_steps=1000", "train.save_steps=100000", *args.overrides]
    return load_config(config, sets)


def worker(args: argparse.Namespace) -> int:
    """One arm's process (or one rank of it): train --steps steps, meta.json has the figures."""
    import torch

    from bench.train_throughput import RandomEncoder
    from src.train import train
    from core.utils import setup_logging

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setup_logging()
    cfg = _cfg(args, Path(args.root), args.batch)
    train(cfg, "behaviour", force=True, rec_encoder=RandomEncoder(cfg.recmodel.hidden_size), max_steps=args.steps)
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="default: configs/ml100k.yaml (SmolLM2) or configs/tiny.yaml")
    p.add_argument("--model", default=None, help=f"base model (default: {SMOLLM} if present, else tiny)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per arm")
    p.add_argument("--batch", type=int, default=4, help="global batch (rows per step), even")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.batch % 2:
        p.error("--batch must be even (it is split over 2 processes)")

    from bench.train_throughput import synthetic_records
    from src.model import base_model_path
    from core.utils import read_json

    root = Path(tempfile.mkdtemp(prefix="ddp_bench."))
    cfg = _cfg(args, root, args.batch)
    recs = [{**r, "type": "uid2next", "uid": k + 1, "iid": 0, "candidates": []}
            for k, r in enumerate(synthetic_records(args.batch * args.steps, cfg.train.seed))]
    cfg.tasks_dir.mkdir(parents=True, exist_ok=True)
    (cfg.tasks_dir / "behaviour_train.json").write_text(json.dumps(recs), encoding="utf-8")
    base_model_path(cfg)  # the tiny base is built once here, not by two ranks at once
    launcher = Path(sys.executable).parent / "accelerate"
    common = [str(Path(__file__).resolve()), "--worker", "--root", str(root), "--steps", str(args.steps),
              *(["--config", args.config] if args.config else []), *(["--model", args.model] if args.model else []),
              *(a for s in args.overrides for a in ("--set", s))]
    arms = {
        "1x2": (["2"], [sys.executable, *common, "--batch", str(args.batch)]),
        "2x1": (["1"], [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                        *common, "--batch", str(args.batch // 2)]),
    }
    results = {}
    for name, ((threads,), cmd) in arms.items():
        env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
        print(f"[bench] arm {name}: {' '.join(cmd[:8])} ...", flush=True)
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-5000:], f"(work folder kept: {root})", sep="\n", file=sys.stderr)
            return 1
        meta = read_json(cfg.llm_dir / "behaviour" / "meta.json")
        results[name] = meta
    print(f"\nDDP throughput: {cfg.llm.base_model} (LoRA), {args.steps} steps, global batch {args.batch}, "
          f"{os.cpu_count()} cores")
    print(f"{'arm':<24} {'tokens':>8} {'train s':>8} {'tokens/s':>9}")
    for name, label in (("1x2", "1 process x 2 threads"), ("2x1", "2 processes x 1 thread")):
        m = results[name]
        print(f"{label:<24} {m['tokens_trained']:>8} {m['train_runtime_s']:>8.2f} {m['tokens_per_s']:>9.1f}")
    a, b = results["1x2"]["tokens_per_s"], results["2x1"]["tokens_per_s"]
    print(f"2x1 / 1x2 = {b / a:.2f}   (same records: {results['1x2']['tokens_trained'] == results['2x1']['tokens_trained']})")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
