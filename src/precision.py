"""``llm.torch_dtype: auto``: load the LLM in whichever of float32 / bfloat16 runs faster here.

WHY measured, not assumed: on CPUs the answer flips from machine to machine (on one of
this project's machines bf16 matmuls ran 5x faster than fp32, on an AVX2-only one 150x
slower), and a raw matmul benchmark is not enough either: elementwise ops, softmax and
the dtype casts around LoRA decide the whole-model speed. So we time one real decoder
layer of the model's own architecture (built from its config, random weights), forward
and backward on a prompt-sized batch, in both dtypes, and keep the faster. On a GPU,
bf16 where supported, else float16 is not chosen (float32), as the paper profiles set
their dtype explicitly anyway.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

#: bf16 must beat float32 by this factor to be chosen (rounding costs some accuracy)
MIN_SPEEDUP = 1.2


def _time_layer(config: Any, dtype: torch.dtype, tokens: int, reps: int) -> float:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    base_cls = MODEL_MAPPING[type(config)]
    cfg = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": 1})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = base_cls(cfg).to(dtype)
    x = torch.randint(0, min(cfg.vocab_size, 1000), (4, tokens))
    best = float("inf")
    for k in range(reps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=x).last_hidden_state
        out.float().pow(2).mean().backward()
        if k:  # the first pass warms up kernels and allocators
            best = min(best, time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return best


@functools.lru_cache(maxsize=8)
def _pick_cached(model_path: str, threads: int) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    t32 = _time_layer(config, torch.float32, 128, 3)
    t16 = _time_layer(config, torch.bfloat16, 128, 3)
    choice = "bfloat16" if t32 / t16 >= MIN_SPEEDUP else "float32"
    log.info("llm.torch_dtype=auto: one decoder layer fwd+bwd takes %.0f ms in float32, %.0f ms in bfloat16 "
             "(%d threads) -> %s", t32 * 1000, t16 * 1000, threads, choice)
    return choice


def pick_dtype(model_path: str) -> str:
    """'float32' or 'bfloat16' for this machine (measured once per process and model)."""
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return _pick_cached(str(model_path), torch.get_num_threads())
