"""Merge a trained LoRA adapter into the base weights: ``python -m src.merge --config X --task_type T``.

Like the original's merge step: the result, cfg.llm_dir/<T>/merged/, is a plain Hugging
Face model directory (model/ + tokenizer/) plus projectors.pt and meta.json, loadable
with ``load_trained(cfg, T, merged=True)`` and servable without peft. Merging removes the
LoRA matmuls from every forward pass, which matters for long generation runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from core.config import Config, add_config_args, config_from_args
from src.model import META_FILE, PROJECTORS_FILE, TASK_TYPES, load_trained_lm
from core.utils import read_json, run_stage, write_json

log = logging.getLogger("src.merge")


def merge(cfg: Config, task_type: str, force: bool = False) -> Path:
    """Write cfg.llm_dir/<task_type>/merged/ and return it (skips if it exists)."""
    out = cfg.llm_dir / task_type / "merged"
    if (out / META_FILE).is_file() and not force:
        log.info("%s exists; use --force to redo", out)
        return out
    lm, tokenizer, proj = load_trained_lm(cfg, task_type)
    meta = read_json(cfg.llm_dir / task_type / META_FILE)
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
    else:
        log.info("%s was fully fine-tuned; copying the weights as they are", task_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merged.", dir=out.parent))
    try:
        lm.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "tokenizer")
        torch.save(proj, tmp / PROJECTORS_FILE)
        write_json(tmp / META_FILE, {**meta, "done": True, "lora": False, "merged_from_lora": bool(meta.get("lora"))})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("merged %s -> %s", task_type, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--task_type", required=True, choices=list(TASK_TYPES))
    args = parser.parse_args(argv)
    return run_stage(lambda: merge(config_from_args(args), args.task_type, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
