"""Throughput per dtype on the machine at hand: what ``llm.torch_dtype: auto`` decides on.

    python bench/dtype_throughput.py [--config configs/ml100k.yaml] [--threads 2] [--steps 3]

Prints, for float32 and bfloat16 (the model is SmolLM2 by default, any llm.base_model works):

* one decoder layer, forward + backward (the measurement src/precision.py makes);
* a LoRA training step (frozen base stored in the dtype, adapter float32);
* a full fine-tuning step (float32 master weights; "bfloat16" = under bf16 autocast);
* prefill tokens/s and the cost of one decoding step at batch 8 and 64 (inference).

Synthetic token ids, batch 8 x 140 tokens with loss on the last 15 (the shape of a task
record); no recommender, no task files needed. Each arm runs in this process one after the
other, so run it on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_config  # noqa: E402
from src.model import base_model_path, build_model, load_base  # noqa: E402
from src.precision import _time_layer  # noqa: E402


def train_step_tokens_per_s(cfg_path: str, dtype: str, lora: bool, autocast: bool, steps: int) -> float:
    cfg = load_config(cfg_path, [f"llm.torch_dtype={dtype}", f"llm.lora.enabled={str(lora).lower()}"])
    model, _ = build_model(cfg, None)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b, n = 8, 140
    ids = torch.randint(100, 20000, (b, n))
    labels = ids.clone()
    labels[:, :-15] = -100
    t0 = 0.0
    for k in range(steps + 1):
        if k == 1:
            t0 = time.perf_counter()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * b * n / (time.perf_counter() - t0)


@torch.no_grad()
def inference(cfg_path: str, dtype: str) -> dict[str, float]:
    cfg = load_config(cfg_path, [f"llm.torch_dtype={dtype}"])
    lm, _ = load_base(cfg)
    lm.eval()
    out: dict[str, float] = {}
    for b in (8, 64):
        ids = torch.randint(100, 20000, (b, 100))
        mask = torch.ones_like(ids)
        lm(input_ids=ids[:, :8], attention_mask=mask[:, :8])  # warm-up
        t = time.perf_counter()
        lm(input_ids=ids, attention_mask=mask)
        out[f"prefill tok/s (batch {b})"] = b * 100 / (time.perf_counter() - t)
        times = []
        for new in (2, 12):
            t = time.perf_counter()
            lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            times.append(time.perf_counter() - t)
        out[f"decode step s (batch {b})"] = (times[1] - times[0]) / 10
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/ml100k.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    path = base_model_path(cfg)
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path)
    rows: dict[str, dict[str, float]] = {"float32": {}, "bfloat16": {}}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rows[name]["one layer fwd+bwd ms"] = 1000 * _time_layer(conf, dt, 128, 3)
        rows[name]["LoRA train tok/s"] = train_step_tokens_per_s(args.config, name, True, False, args.steps)
        rows[name]["full FT train tok/s"] = train_step_tokens_per_s(
            args.config, "float32", False, name == "bfloat16", args.steps)
        rows[name].update(inference(args.config, name))
    print(f"model {cfg.llm.base_model}, {args.threads} threads, torch {torch.__version__}")
    keys = list(rows["float32"])
    print(f"{'measure':<28}{'float32':>12}{'bfloat16':>12}{'bf16/fp32':>11}")
    for k in keys:
        a, b = rows["float32"][k], rows["bfloat16"][k]
        print(f"{k:<28}{a:>12.2f}{b:>12.2f}{b / a:>11.2f}")


if __name__ == "__main__":
    main()
