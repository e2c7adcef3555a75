"""Generate explanations (paper 3.1.2, 3.4, 3.5.2) for one method and split.

``python -m src.infer_explan --config X --task_type behaviour|intention|both|none|chatgpt
[--split valid|train|test[,SPLIT...]] [--aspect "genres"] [--force]``

Several splits, comma-separated, share one process and one model load.

* ``behaviour`` / ``intention`` / ``both``: RecExplainer-B / -I / -H (``src.model.load_trained``)
  on ``tasks/explan_<task_type>_<split>.json``; ``none``: the unaligned base LLM on the
  behaviour-form prompts (``explan_none_*``). Greedy decoding, at most ``explain.max_new_tokens``
  and at least ``explain.min_new_tokens`` new tokens (the original: 500 / 150), batched with
  ``src.generation.generate_texts``.
* ``chatgpt``: any API model through :class:`core.api_client.ChatClient` on
  ``tasks/explan_chatgpt_<split>.csv`` (model: ``explain.chatgpt_model``, else the
  endpoint's); needs a configured endpoint (or cached answers).
* ``--aspect`` (controllable explanations, paper 3.5.2) appends
  ``explain.aspect_template`` (e.g. "Please explain your decision from the perspective of
  genres.") to every prompt and writes to a separate file.

Output: ``explain/<method>_<split>.jsonl`` (``..._aspect-<slug>.jsonl`` with an aspect), one
row per prompt written as soon as its batch completes, so a killed run resumes where it
stopped: ``{id, uid, iid, label, question, explanation, method, split, history,
history_titles, item_title, score?, aspect?, model?}``. ``history_titles`` / ``item_title``
are what the judge shows; ``score`` is the recommender's score of (user, item) when the task
record carries it (the score predictor's target).
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.registry import EXPLAIN_TASK_TYPES, MODEL_STAMP, TRAIN_TYPES, explain_file
from core.stamps import current, fingerprint, write_stamp
from src.chat import add_aspect
from core.utils import JsonlAppender, StageError, read_json, resolve_device, run_stage, set_seed

log = logging.getLogger("src.infer_explan")

SPLITS = ("valid", "train", "test")


# --------------------------------------------------------------------------- inputs


def _check_records(records: Any, path: Path) -> list[dict]:
    if not isinstance(records, list):
        raise StageError(f"{path}: expected a JSON list of task records")
    for k, r in enumerate(records):
        if not isinstance(r, dict):
            raise StageError(f"{path}: record {k} is not an object")
        missing = [f for f in ("id", "uid", "iid", "question", "label") if f not in r]
        if missing:
            raise StageError(f"{path}: record {k} (id {r.get('id')!r}) lacks {', '.join(missing)}")
        if str(r["label"]) not in ("Yes", "No"):
            raise StageError(f"{path}: record {k} (id {r['id']!r}): label must be Yes or No, got {r['label']!r}")
    return records


def load_model_records(cfg: Config, task_type: str, split: str) -> list[dict]:
    path = cfg.tasks_dir / f"explan_{task_type}_{split}.json"
    return _check_records(read_json(path, what=f"explanation prompts for {task_type}"), path)


def load_chatgpt_records(cfg: Config, split: str) -> list[dict]:
    """Rows of explan_chatgpt_<split>.csv, joined by id with the behaviour-form JSON for history/score."""
    path = cfg.tasks_dir / f"explan_chatgpt_{split}.csv"
    if not path.is_file():
        raise StageError(f"missing explanation prompts for chatgpt: {path} (written by python -m data_gen; run that stage first)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"id", "uid", "iid", "label", "question"}
        if not need <= set(reader.fieldnames or []):
            raise StageError(f"{path}: header must contain {', '.join(sorted(need))}, got {reader.fieldnames}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            try:
                rows.append({"id": row["id"], "uid": int(row["uid"]), "iid": int(row["iid"]),
                             "label": row["label"], "question": row["question"]})
            except (TypeError, ValueError):
                raise StageError(f"{path}:{lineno}: uid and iid must be integers") from None
    _check_records(rows, path)
    extra_path = cfg.tasks_dir / f"explan_none_{split}.json"
    if extra_path.is_file():
        by_id = {r["id"]: r for r in load_model_records(cfg, "none", split)}
        for r in rows:
            src = by_id.get(r["id"])
            if src is not None:
                for k in ("history", "score"):
                    if k in src:
                        r[k] = src[k]
    else:
        log.warning("%s missing: chatgpt rows carry no history (the judge then needs canonical titles)", extra_path)
    return rows


def select(records: list[dict], cap: int) -> list[dict]:
    """The first `cap` prompts by id (ids are shared by every method's file, so every method
    answers the same prompts)."""
    records = sorted(records, key=lambda r: str(r["id"]))
    return records[:cap] if cap and cap > 0 else records


# --------------------------------------------------------------------------- rows


class _Context:
    """History/target titles for the judge, exactly as the prompts show them."""

    def __init__(self, cfg: Config) -> None:
        from preprocess.dataset import load_canonical

        self.titles = load_canonical(cfg).titles
        self.max_hist = cfg.data_gen.max_hist_len

    def fields(self, rec: dict) -> dict[str, Any]:
        out: dict[str, Any] = {"item_title": self.titles[int(rec["iid"])]}
        hist = rec.get("history")
        if isinstance(hist, list):
            shown = hist[-self.max_hist:] if self.max_hist > 0 else hist
            out["history"] = [int(i) for i in hist]
            out["history_titles"] = [self.titles[int(i)] for i in shown]
        return out


def make_row(rec: dict, explanation: str, method: str, split: str, ctx: _Context, aspect: str, model: str = "") -> dict:
    row = {
        "id": rec["id"], "uid": rec["uid"], "iid": rec["iid"], "label": rec["label"],
        "question": rec["question"], "explanation": explanation, "method": method, "split": split,
    }
    row.update(ctx.fields(rec))
    if "score" in rec:
        row["score"] = rec["score"]
    if aspect:
        row["aspect"] = aspect
    if model:
        row["model"] = model
    return row


# --------------------------------------------------------------------------- run

#: explain.* keys that do not change an explanation (speed, the judge's own settings; the
#: sample count only decides how many rows, each kept by id)
_NOT_EXPLAINING = ("explain.batch_size", "explain.max_samples", "explain.judge_retries", "explain.judge_max_samples",
                   "explain.judge_model", "explain.judge_max_tokens")


def explain_fingerprint(cfg: Config, task_type: str, split: str) -> dict[str, Any]:
    """What one explanation file depends on: decoding settings, its prompts and its model."""
    prompts = (cfg.tasks_dir / f"explan_chatgpt_{split}.csv" if task_type == "chatgpt"
               else cfg.tasks_dir / f"explan_{task_type}_{split}.json")
    inputs = [prompts] + ([cfg.llm_dir / task_type / MODEL_STAMP] if task_type in TRAIN_TYPES else [])
    keys = ["explain", "llm.base_model", "llm.chat_format", "llm.max_length", "seed"]
    if task_type == "chatgpt":
        keys += ["api.model", "api.temperature", "api.max_tokens"]
    return fingerprint(cfg, keys, inputs, exclude=_NOT_EXPLAINING, base=cfg.root)


def run(
    cfg: Config, task_type: str, split: str = "valid", aspect: str = "", force: bool = False,
    environ: Any = None, model_and_tokenizer: tuple[Any, Any] | Callable[[], tuple[Any, Any]] | None = None,
) -> Path:
    """Generate the missing explanations of one method/split; returns the output file.

    `model_and_tokenizer` lets a caller reuse an already-loaded model (e.g. several aspects
    or splits), or a function that loads it on first use (see `main`).
    """
    if task_type not in EXPLAIN_TASK_TYPES:
        raise ConfigError(f"--task_type must be one of {', '.join(EXPLAIN_TASK_TYPES)}, got {task_type!r}")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    set_seed(cfg.seed)
    out_path = explain_file(cfg, task_type, split, aspect)
    records = load_chatgpt_records(cfg, split) if task_type == "chatgpt" else load_model_records(cfg, task_type, split)
    records = select(records, cfg.explain.max_samples)
    if aspect:
        records = [dict(r, question=add_aspect(r["question"], aspect, cfg)) for r in records]
    stamp = out_path.with_name(out_path.name[: -len(".jsonl")] + ".stamp.json")
    fp = explain_fingerprint(cfg, task_type, split)
    if force and out_path.exists():
        out_path.unlink()
    if out_path.exists():  # rows to resume from or skip on: only if made with what is asked now
        current(stamp, fp, f"the explanations in {out_path}")
    else:
        write_stamp(stamp, fp)
    ctx = _Context(cfg)
    try:
        with JsonlAppender(out_path) as app:
            todo = [r for r in records if r["id"] not in app.done]
            if not todo:
                log.info("%s: all %d explanations present; skipping (use --force to redo)", out_path, len(records))
                return out_path
            log.info("%s: %d of %d explanations to generate", out_path.name, len(todo), len(records))
            if task_type == "chatgpt":
                _run_api(cfg, todo, app, split, ctx, aspect, environ)
            else:
                _run_model(cfg, task_type, todo, app, split, ctx, aspect, model_and_tokenizer)
            done = sum(1 for r in records if r["id"] in app.done)
    finally:
        if out_path.exists() and out_path.stat().st_size == 0:
            out_path.unlink()  # a run that produced nothing leaves no file for later stages to find
    if done < len(records):
        raise StageError(f"{out_path}: only {done} of {len(records)} explanations were produced; re-run to retry the rest")
    log.info("wrote %s (%d explanations)", out_path, done)
    return out_path


def _run_model(
    cfg: Config, task_type: str, todo: list[dict], app: JsonlAppender, split: str, ctx: _Context, aspect: str,
    model_and_tokenizer: tuple[Any, Any] | Callable[[], tuple[Any, Any]] | None,
) -> None:
    from src.generation import explanation_kwargs, generate_texts

    if model_and_tokenizer is None:
        model_and_tokenizer = load_model(cfg, task_type)
    model, tokenizer = model_and_tokenizer() if callable(model_and_tokenizer) else model_and_tokenizer

    def write(recs: list[dict], outs: list[list[str]]) -> None:
        for rec, texts in zip(recs, outs):
            app.append(make_row(rec, texts[0] if texts else "", task_type, split, ctx, aspect))

    generate_texts(
        model, tokenizer, todo, cfg, max_new_tokens=cfg.explain.max_new_tokens, num_beams=1,
        num_return_sequences=1, batch_size=cfg.explain.batch_size, on_batch=write,
        desc=f"explain {task_type}/{split}", **explanation_kwargs(cfg),
    )


def load_model(cfg: Config, task_type: str) -> tuple[Any, Any]:
    """The method's (model, tokenizer) (torch is imported only here)."""
    from src.model import load_trained

    return load_trained(cfg, task_type, device=resolve_device("auto"))


def parse_splits(value: str) -> list[str]:
    """`--split` value: one prompt split or several, comma-separated, each known, none twice."""
    splits = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad or len(set(splits)) < len(splits):
        raise argparse.ArgumentTypeError(
            f"--split: expected one or more of {', '.join(SPLITS)} (comma-separated, each once), got {value!r}")
    return splits


def _run_api(
    cfg: Config, todo: list[dict], app: JsonlAppender, split: str, ctx: _Context, aspect: str, environ: Any,
) -> None:
    from core.api_client import ChatClient

    client = ChatClient(cfg, environ=environ)
    model = cfg.explain.chatgpt_model or client.model
    params: dict[str, Any] = {"max_tokens": cfg.explain.max_new_tokens}
    if cfg.explain.chatgpt_model:
        params["model"] = cfg.explain.chatgpt_model
    # chunks keep the resumability of the model path: rows land on disk as each chunk ends
    step = max(1, cfg.api.max_concurrency * 4)
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        answers = client.complete_many(
            [[{"role": "user", "content": r["question"]}] for r in chunk], desc=f"explain chatgpt/{split}", **params
        )
        for rec, ans in zip(chunk, answers):
            if ans is not None:
                app.append(make_row(rec, ans.strip(), "chatgpt", split, ctx, aspect, model=model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--task_type", required=True, choices=EXPLAIN_TASK_TYPES,
                        help="behaviour|intention|both (RecExplainer-B/I/H), none (base LLM), chatgpt (API model)")
    parser.add_argument("--split", default=["valid"], type=parse_splits, metavar="SPLIT[,SPLIT...]",
                        help=f"prompt split(s): {', '.join(SPLITS)}, several comma-separated (default: valid)")
    parser.add_argument("--aspect", default=None, help="controllable explanation: the perspective to explain from (default: explain.aspect)")
    parser.add_argument("--data_names", default="", help="accepted for compatibility with the original scripts; the file is explan_<task_type>_<split>")
    parser.add_argument("--inference_mode", default="case study", help="accepted for compatibility (only 'case study' exists)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        aspect = cfg.explain.aspect if args.aspect is None else args.aspect
        # loaded on the first split with work to do, then shared by the others
        loaded = functools.cache(functools.partial(load_model, cfg, args.task_type))
        for split in args.split:
            run(cfg, args.task_type, split, aspect=aspect.strip(), force=args.force, model_and_tokenizer=loaded)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
