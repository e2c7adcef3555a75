"""Throughput of batched vs one-at-a-time generation on the same inputs.

    PYTHONPATH=. python bench/infer_throughput.py [--config configs/tiny.yaml] [--smollm2]
        [--samples 32] [--batch_size 8] [--max_new_tokens 32] [--num_beams 1] [--device auto]

Runs ``src.generation.generate_texts`` twice over the same prompts -- once with
``batch_size`` prompts per generate() call (left-padded, KV cache) and once with one
prompt per call -- and prints samples/s for both and their ratio, plus how many greedy
outputs agree (they should all agree: batching must not change results).

It also prints the batched run's executed weight-matmul FLOP/s against this machine's
measured matmul peak in the model's dtype: the decoder layers' 2 x params per position they
run (padding and rows that already finished included; attention scores not counted) plus
the LM head's 2 x V x H per row it scores. WHY: it says whether decoding still has speed to
win (a low fraction) or is bound by arithmetic, where only fewer tokens help. On a 2-core
AVX2 machine in float32, 48 task-1 prompts x 72 tokens: 44%, against 77% for a training
step (bench/train_throughput.py).

Prompts are the config's task-1 evaluation records (``tasks/behaviour_valid.json``) when
they exist, otherwise task-1 questions rendered from the data_gen templates with
synthetic titles, so the benchmark runs on a fresh checkout. The default model is the
tiny profile's LLaMA (seconds); ``--smollm2`` uses ``models/smollm2-135m-instruct``
(written by ``bash shell/download_data.sh``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.config import ConfigError, load_config  # noqa: E402
from core.utils import StageError, resolve_device, set_seed, setup_logging  # noqa: E402
from bench.train_throughput import matmul_peak  # noqa: E402

log = logging.getLogger("bench.infer_throughput")


def prompts(cfg, n: int, seed: int) -> list[dict]:
    """n task-1 records: the real evaluation file when present, else synthetic ones."""
    path = cfg.tasks_dir / "behaviour_valid.json"
    if path.is_file():
        recs = [r for r in json.loads(path.read_text(encoding="utf-8")) if r.get("type") == "uid2next"]
        if len(recs) >= n:
            log.info("prompts: first %d uid2next records of %s", n, path)
            return recs[:n]
    from data_gen.templates import UID2NEXT

    rng = random.Random(seed)
    out = []
    for k in range(n):
        hist = "; ".join(f"Movie {rng.randint(1, 500)} ({rng.randint(1950, 1998)})" for _ in range(rng.randint(3, 9)))
        out.append({"id": f"bench{k}", "type": "uid2next", "question": rng.choice(UID2NEXT).format(history=hist),
                    "answer": "", "history": [], "iids_in_question": []})
    log.info("prompts: %d synthetic task-1 questions", n)
    return out


class FlopCounter:
    """Counts the positions the decoder layers and the LM head execute (forward hooks)."""

    def __init__(self, model) -> None:
        layers = model.get_decoder().layers
        self.body_params = sum(p.numel() for p in layers.parameters())
        head = model.get_output_embeddings()
        self.head_params = head.weight.numel()
        self.positions = self.head_rows = 0
        self._hooks = [layers[0].register_forward_hook(self._layer), head.register_forward_hook(self._head)]

    def _layer(self, module, args, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        self.positions += hidden.shape[:-1].numel()

    def _head(self, module, args, output) -> None:
        self.head_rows += args[0].shape[:-1].numel()

    def flops(self) -> int:
        return 2 * (self.body_params * self.positions + self.head_params * self.head_rows)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def timed_run(model, tok, recs, cfg, batch_size: int, max_new_tokens: int, num_beams: int) -> tuple[float, list]:
    from src.generation import generate_texts

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate_texts(model, tok, recs, cfg, max_new_tokens=max_new_tokens, num_beams=num_beams,
                         num_return_sequences=1, batch_size=batch_size, desc=f"batch={batch_size}")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smollm2", action="store_true", help="use models/smollm2-135m-instruct instead of the tiny LLaMA")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    args = p.parse_args(argv)
    setup_logging()
    try:
        overrides = list(args.overrides) + (["llm.base_model=models/smollm2-135m-instruct"] if args.smollm2 else [])
        cfg = load_config(args.config, overrides)
        set_seed(cfg.seed)
        from src.model import load_base

        device = resolve_device(args.device)
        model, tok = load_base(cfg, device=device)
        model.eval()
        recs = prompts(cfg, args.samples, cfg.seed)
        # warm-up (first-call allocations, kernel selection) outside the timings
        timed_run(model, tok, recs[:2], cfg, 2, 4, args.num_beams)
        counter = FlopCounter(model)
        t_batched, out_b = timed_run(model, tok, recs, cfg, args.batch_size, args.max_new_tokens, args.num_beams)
        counter.close()
        dtype = next(model.parameters()).dtype
        peak = matmul_peak(dtype, device)
        t_single, out_s = timed_run(model, tok, recs, cfg, 1, args.max_new_tokens, args.num_beams)
    except (StageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(recs)
    same = sum(a == b for a, b in zip(out_b, out_s))
    name = cfg.llm.base_model
    print(f"model {name} on {device} (torch threads {torch.get_num_threads()}), {n} prompts, "
          f"max_new_tokens {args.max_new_tokens}, beams {args.num_beams}")
    print(f"batched (batch_size={args.batch_size}): {n / t_batched:8.2f} samples/s  ({t_batched:.2f}s)")
    print(f"one at a time (batch_size=1): {n / t_single:8.2f} samples/s  ({t_single:.2f}s)")
    print(f"speed-up: {t_single / t_batched:.2f}x; identical outputs: {same}/{n}")
    rate = counter.flops() / t_batched
    print(f"batched run: {counter.positions} decoder positions, {counter.head_rows} LM-head rows, "
          f"{rate / 1e9:.1f} GFLOP/s = {100 * rate / peak:.0f}% of the measured {str(dtype).replace('torch.', '')} "
          f"matmul peak ({peak / 1e9:.1f} GFLOP/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
