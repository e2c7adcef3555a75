"""Training throughput: this trainer vs the original's fixed 1024-token padding.

    python bench/train_throughput.py --config configs/tiny.yaml [--set llm.base_model=...]
        [--task_type both] [--batch 4] [--steps 3] [--padded_length 1024]

Both arms train the same model (same LoRA/projector init, same optimizer) on the same
samples for the same number of optimizer steps:
  (a) ours: length-grouped batches, padding to the longest row, LM head only at answer
      positions (RecExplainer.forward with labels);
  (b) original: every row padded to 1024, LM head over every position (full logits).
Each arm runs in its own subprocess so that peak memory (max RSS on CPU,
torch.cuda.max_memory_allocated on GPU) is its own. We print real (non-pad) tokens/s,
padded tokens/s, peak memory, the ratio (a)/(b), and the achieved fraction of the
machine's measured matmul peak (bf16 and the training dtype).

Samples come from cfg.tasks_dir/<task_type>_train.json when it exists, synthetic
prompts of realistic shape otherwise. The recommender is the trained one when present,
a random embedding table of the same width otherwise (its cost is negligible either way).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Config, load_config  # noqa: E402
from src.data import TaskCollator, TaskDataset, load_task_records, subsample  # noqa: E402
from src.model import _load_encoder, build_model  # noqa: E402
from core.utils import set_seed  # noqa: E402

log = logging.getLogger("bench.train_throughput")


class RandomEncoder(nn.Module):
    """Stand-in recommender when none is trained: a seeded random item table."""

    def __init__(self, dim: int, n_items: int = 5000) -> None:
        super().__init__()
        self.dim = dim
        self.table = nn.Embedding(n_items + 1, dim)
        self.n_items = n_items

    def encode_users(self, h: torch.Tensor) -> torch.Tensor:
        return self.table(h.clamp(max=self.n_items)).mean(1)

    def encode_items(self, i: torch.Tensor) -> torch.Tensor:
        return self.table(i.clamp(max=self.n_items))


def synthetic_records(n: int, seed: int) -> list[dict]:
    """Prompts shaped like the real tasks: a user, 5-20 history titles, a short answer."""
    rng = random.Random(seed)
    words = "the of and a in story love war night city man girl last return star dark life".split()
    out = []
    for k in range(n):
        hist = [rng.randint(1, 1600) for _ in range(rng.randint(5, 20))]
        titles = "; ".join(" ".join(rng.choice(words).title() for _ in range(rng.randint(1, 4))) + f" ({rng.randint(1950, 1998)})" for _ in hist)
        q = f"The user <user> has watched the following movies in order: {titles}. Predict the next movie the user will watch."
        a = " ".join(rng.choice(words).title() for _ in range(rng.randint(1, 4))) + f" ({rng.randint(1950, 1998)})"
        out.append({"id": f"syn{k}", "question": q, "answer": a, "history": hist, "iids_in_question": []})
    return out


def matmul_peak(dtype: torch.dtype, device: str, reps: int = 3) -> float:
    """Measured dense matmul FLOP/s of this machine in `dtype` (best of `reps`).

    Small on CPU: without native bf16 units a CPU runs bf16 matmuls 100x slower than fp32.
    """
    n = 8192 if device == "cuda" else 768
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    for _ in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt)
    return best


def run_arm(cfg: Config, arm: str, args: argparse.Namespace) -> dict:
    """One arm in this process; returns its measurements."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    set_seed(cfg.train.seed)
    enc = _load_encoder(cfg, device, required=False) or RandomEncoder(cfg.recmodel.hidden_size)
    model, tok = build_model(cfg, enc, device=device)
    path = cfg.tasks_dir / f"{args.task_type}_train.json"
    n = args.batch * (args.steps + args.warmup)
    records = subsample(load_task_records(path), n, 0) if path.is_file() else synthetic_records(n, 0)
    ds = TaskDataset(records, tok, cfg, desc="bench")
    rows = list(ds.rows)
    if arm == "ours":
        # length grouping as the Trainer's LengthGroupedSampler does: sort, then batch
        rows.sort(key=lambda r: len(r["input_ids"]), reverse=True)
        collate = TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len)
    else:
        random.Random(0).shuffle(rows)
        collate = TaskCollator(tok.pad_token_id, cfg.recmodel.max_seq_len, fixed_length=args.padded_length)
    batches = [collate(rows[i : i + args.batch]) for i in range(0, len(rows), args.batch)]
    random.Random(1).shuffle(batches)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    model.train()
    amp = torch.autocast(device, dtype=torch.bfloat16) if cfg.train.bf16 else torch.autocast(device, enabled=False)
    real = padded = head_rows = 0
    t0 = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k, b in enumerate(batches):
        if k == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = {key: v.to(device) for key, v in b.items()}
        with amp:
            loss = model(**b, full_logits=(arm == "original")).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= args.warmup:
            real += int(b["attention_mask"].sum())
            padded += b["input_ids"].numel()
            head_rows = head_rows + (b["input_ids"].numel() if arm == "original" else int((b["labels"] != -100).sum()))
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - (t0 or time.perf_counter())
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    emb = model.lm.get_input_embeddings().weight
    n_body = n_total - emb.numel() - sum(p.numel() for p in enc.parameters()) if isinstance(enc, nn.Module) else n_total - emb.numel()
    # forward 2N + input-gradients 2N per token for the body, weight-gradients 2N_trainable;
    # the head (V x H) forward + input-gradient only on the rows that get logits
    flops = padded * (4 * n_body + 2 * n_train) + head_rows * 4 * emb.numel()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "arm": arm, "device": device, "base_model": cfg.llm.base_model, "batch": args.batch,
        "timed_steps": len(batches) - args.warmup, "seconds": dt,
        "real_tokens": real, "padded_tokens": padded,
        "real_tok_s": real / dt if dt else float("nan"), "padded_tok_s": padded / dt if dt else float("nan"),
        "peak_mem_mib": peak / 2**20, "flop_s": flops / dt if dt else float("nan"), "params": n_total, "trainable": n_train,
        "mean_len": sum(len(r["input_ids"]) for r in rows) / len(rows),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--task_type", default="both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per arm")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--padded_length", type=int, default=1024)
    p.add_argument("--arm", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, args.overrides)
    cfg.llm.max_length = min(cfg.llm.max_length, args.padded_length)
    if args.arm:  # child process: one arm, JSON on the last stdout line
        print(json.dumps(run_arm(cfg, args.arm, args)))
        return 0
    results = {}
    for arm in ("ours", "original"):
        cmd = [sys.executable, __file__, "--arm", arm, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    device = results["ours"]["device"]
    dtype = torch.bfloat16 if cfg.train.bf16 else torch.float32
    peaks = {"bf16": matmul_peak(torch.bfloat16, device), "train_dtype": matmul_peak(dtype, device)}
    a, b = results["ours"], results["original"]
    print(f"\nTraining throughput: {cfg.llm.base_model} on {device} ({torch.get_num_threads()} threads), "
          f"batch {args.batch}, {a['timed_steps']} timed steps, params {a['params']/1e6:.1f}M "
          f"(trainable {a['trainable']/1e6:.2f}M), mean sample {a['mean_len']:.0f} tokens")
    dname = str(dtype).split(".")[-1]
    print(f"{'arm':<40}{'real tok/s':>12}{'padded tok/s':>14}{'peak MiB':>10}{'s':>8}"
          f"{'%bf16 peak':>12}{'%' + dname + ' peak':>15}")
    for name, r in (("ours (dynamic pad, answer-only head)", a), (f"original (pad {args.padded_length}, full head)", b)):
        flops = r["flop_s"]
        print(f"{name:<40}{r['real_tok_s']:>12.1f}{r['padded_tok_s']:>14.1f}{r['peak_mem_mib']:>10.0f}"
              f"{r['seconds']:>8.1f}{100 * flops / peaks['bf16']:>11.1f}%{100 * flops / peaks['train_dtype']:>14.1f}%")
    print(f"ratio ours/original, real tokens/s: {a['real_tok_s'] / b['real_tok_s']:.2f}x; "
          f"peak memory: {a['peak_mem_mib'] / b['peak_mem_mib']:.2f}x")
    print("(% of peak: executed matmul FLOPs incl. padding, body 4N+2N_trainable per token, head 4VH per "
          "row that gets logits, attention scores excluded)")
    print(f"measured matmul peak: bf16 {peaks['bf16']/1e9:.1f} GFLOP/s, {dname} "
          f"{peaks['train_dtype']/1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
