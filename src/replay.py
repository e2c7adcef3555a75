"""Offline ShareGPT stand-in: general instructions answered once by the base LLM.

The paper mixes ShareGPT conversations into alignment (task 5) so that the LLM keeps its
general ability; without them a small model trained only on short answers forgets how to
write prose and answers an explanation prompt with a bare "Yes"/"No". ShareGPT cannot be
downloaded everywhere, so ``data_gen.sharegpt_replay: N`` builds a replacement of the same
shape: N instructions from :data:`data_gen.templates.REPLAY`, filled with seeded catalogue
items, answered greedily by the *unaligned* base model, written as a ShareGPT_V3 json to
``<root>/replay/sharegpt_replay.json``. The data pipeline then reads it exactly as it
would read ShareGPT (``data_gen.pipeline``), so task 5 and its loss path are the paper's.

Why the model's own answers: training on them moves the model towards what it already
does on open instructions (self-distillation), which is what "keeping general ability"
means; no answer contains a recommender decision, so replay cannot leak the unaligned
model's guesses into the aligned one.

    python -m src.replay --config configs/ml100k.yaml [--force]
"""

from __future__ import annotations

import logging
import random
import sys
from typing import Any

from core.config import Config, ConfigError, config_stage_main
from core.utils import StageError, read_json, resolve_device, set_seed, write_json

log = logging.getLogger("src.replay")


def replay_instructions(cfg: Config, items: list[dict[str, Any]], n: int) -> list[str]:
    """`n` distinct instructions, templates in turn, items drawn with ``data_gen.seed``."""
    from data_gen.templates import REPLAY, SEP, render

    if len(items) < 4:
        raise StageError(f"{cfg.data_dir}: the replay instructions need at least 4 items, found {len(items)}")
    rng = random.Random(f"{cfg.data_gen.seed}:replay")
    out: list[str] = []
    seen: set[str] = set()
    for k in range(n * 20):
        if len(out) == n:
            break
        picks = rng.sample(items, 4)
        tags = picks[0].get("tags") or picks[0].get("genres") or []
        slots = {
            "title": picks[0]["title"],
            "tags": ", ".join(tags) if tags else "a title of this catalogue",
            "titles": SEP.join(p["title"] for p in picks[1:4]),
            "other": picks[1]["title"],
        }
        text = render(REPLAY[k % len(REPLAY)], **slots)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_replay(cfg: Config, force: bool = False, model_and_tokenizer: tuple[Any, Any] | None = None) -> Any:
    """Write cfg.replay_file (skipped when present); returns its path."""
    from preprocess.dataset import load_canonical
    from src.generation import generate_texts

    g = cfg.data_gen
    if g.sharegpt_replay < 0:
        raise ConfigError(f"data_gen.sharegpt_replay must be >= 0, got {g.sharegpt_replay}")
    if g.replay_max_new_tokens < 1:
        raise ConfigError(f"data_gen.replay_max_new_tokens must be >= 1, got {g.replay_max_new_tokens}")
    out = cfg.replay_file
    if g.sharegpt_replay == 0:
        log.info("data_gen.sharegpt_replay is 0: no ShareGPT stand-in to build")
        return out
    meta_path = out.with_suffix(".meta.json")
    # what the answers depend on: a changed model, count, length or seed regenerates them
    fingerprint = {"base_model": cfg.llm.base_model, "requested": g.sharegpt_replay,
                   "max_new_tokens": g.replay_max_new_tokens, "seed": g.seed}
    if out.is_file() and meta_path.is_file() and not force:
        if read_json(meta_path, "ShareGPT stand-in settings") == fingerprint:
            log.info("%s exists for these settings; skipping (use --force to redo)", out)
            return out
        log.info("%s was built with other settings; rebuilding", out)
    set_seed(cfg.seed)
    data = load_canonical(cfg)
    questions = replay_instructions(cfg, data.items, g.sharegpt_replay)
    if model_and_tokenizer is None:
        from src.model import load_trained

        model_and_tokenizer = load_trained(cfg, "none", device=resolve_device("auto"))
    model, tokenizer = model_and_tokenizer
    records = [{"id": f"replay-{k:05d}", "type": "sharegpt", "form": "text", "uid": 0, "iid": 0, "history": [],
                "candidates": [], "iids_in_question": [], "question": q, "answer": ""}
               for k, q in enumerate(questions)]
    answers = generate_texts(model, tokenizer, records, cfg, max_new_tokens=g.replay_max_new_tokens,
                             batch_size=cfg.explain.batch_size, desc="replay answers")
    convs = []
    for rec, texts in zip(records, answers):
        text = (texts[0] if texts else "").strip()
        if not text:
            continue  # an empty answer teaches nothing; the loader would drop it anyway
        convs.append({"id": rec["id"], "conversations": [{"from": "human", "value": rec["question"]},
                                                         {"from": "gpt", "value": text}]})
    if not convs:
        raise StageError(f"the base model answered none of the {len(records)} replay instructions")
    write_json(out, convs)
    write_json(meta_path, fingerprint)  # last: a kill before this point rebuilds
    log.info("wrote %s (%d conversations, %d empty answers dropped)", out, len(convs), len(records) - len(convs))
    return out


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: build_replay(cfg, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
