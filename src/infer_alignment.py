"""Alignment evaluation (paper 3.1.1, Table 1): how well an explainer mimics the recommender.

    python -m src.infer_alignment --config configs/ml100k.yaml \
        --task_type behaviour|intention|both|none|gpt4 \
        --inference_mode uid2next|uidiid2rank|uidiid2binary|uid2hist|iid2title[,MODE...] \
        [--icl] [--constrained | --no-constrained] [--pointwise | --no-pointwise] [--split valid|test] [--force]

Several modes, comma-separated, run in one process and load the model once (the pipeline
runs each method's modes this way; a model load and the imports cost ~5 s per process here).

Reads ``tasks/<task_type>_<split>.json`` (``behaviour_<split>.json`` for the unaligned
``none`` and ``gpt4`` baselines, which read titles, not embeddings), keeps the records
whose ``type`` is the inference mode, and writes under ``eval/<method>/``:

* ``<mode>.jsonl``: one row per sample (question, generations or Yes/No log-probs,
  target), appended as each batch completes, so a killed run resumes where it stopped;
* ``<mode>.metrics.json``: the Table 1 numbers (core.metrics), plus, for the modes of
  ``eval.constrained_modes`` with ``eval.constrained``, a separate ``"constrained"`` block
  (its rows in ``<mode>.constrained.jsonl``) -- never replacing the free-decoding figures:
  uid2next beams restricted to catalogue titles, uidiid2rank answers restricted to an order
  of the record's own candidates;
* with ``eval.pointwise_rank``, for uidiid2rank a ``"pointwise"`` block (rows in
  ``uidiid2rank.pointwise.jsonl``): each candidate asked as a task-3 question and the
  candidates ordered by logp(Yes) - logp(No), scored with the same NDCG@5. It shows whether
  the model knows the recommender's order when it cannot yet write the ordered list.

Methods: ``none`` (base LLM), ``none_icl`` (base LLM with two seeded training examples of
the same task as earlier chat turns), ``gpt4_icl`` (same prompts through the project's
OpenAI-compatible client; skipped with a log line when no endpoint is configured),
``behaviour`` / ``intention`` / ``both`` (RecExplainer-B/I/H). Test-split outputs go to
``eval/<method>/test/``.

Decoding follows the paper and the original code: uid2next = beam search with 5 beams, 5
returned; every other generative mode greedy; uidiid2binary compares the next-token
probabilities of "Yes" and "No" (no generation).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any, Callable

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.metrics import compute_metrics, parse_ranked_titles
from core.registry import ALIGN_TASK_TYPES, CONSTRAINABLE_MODES, LIST_MODES, MODE_METRICS, MODEL_STAMP, MODES, TRAIN_TYPES, eval_paths, task_file
from core.stamps import changed_setting, embedded_changes, fingerprint, stale_error
from core.utils import JsonlAppender, StageError, read_json, resolve_device, run_stage, set_seed, write_json

log = logging.getLogger(__name__)

TASK_TYPES = ALIGN_TASK_TYPES
#: the "Yes"/"No" mode: scored, not generated
BINARY_MODE = "uidiid2binary"
#: task 2, which eval.pointwise_rank also ranks candidate by candidate
RANK_MODE = "uidiid2rank"
#: how many API requests are sent between two writes of the rows file
API_CHUNK = 32


def method_name(task_type: str, icl: bool) -> str:
    """Folder name of a method under eval/ (report.py reads the same names)."""
    return f"{task_type}_icl" if icl else task_type


# --------------------------------------------------------------------------- records


REQUIRED = ("id", "type", "question", "answer")


def read_tasks(path: Path) -> list[dict]:
    """A task file, checked: a JSON list of objects with id/type/question/answer, unique ids."""
    data = read_json(path, what="task file")
    if not isinstance(data, list):
        raise StageError(f"{path}: expected a JSON list of task records, got {type(data).__name__}")
    seen: set[str] = set()
    for k, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise StageError(f"{path}: record {k} is not a JSON object")
        missing = [f for f in REQUIRED if f not in rec]
        if missing:
            raise StageError(f"{path}: record {k} (id {rec.get('id', '?')}) lacks field(s) {', '.join(missing)}")
        rid = str(rec["id"])
        if rid in seen:
            raise StageError(f"{path}: duplicate record id {rid!r}")
        seen.add(rid)
    return data


def load_eval_records(cfg: Config, task_type: str, mode: str, split: str, icl: bool = False) -> list[dict]:
    """Records of one inference mode; over eval.max_samples a seeded random sample (stable).

    `icl`: an ICL baseline, whose sample is cut further to eval.icl_max_samples, a seeded
    subset of the one every other method gets (so its cells compare on the same records).
    """
    from src.data import subsample

    path = task_file(cfg, task_type, split)
    records = [r for r in read_tasks(path) if r["type"] == mode]
    if not records:
        raise StageError(
            f"{path}: no records of type '{mode}'; task_type {task_type} cannot be evaluated on it "
            "(N/A in Table 1) or data_gen did not generate it"
        )
    cap = max_samples(cfg, mode)
    if cap and len(records) > cap:
        # a seeded random draw, not the first N: task files are ordered by user, and the
        # first users are no random sample of them; eval.sample_seed redraws it
        log.info("evaluating a seeded random %d of %d %s records (eval.max_samples, eval.sample_seed=%d)",
                 cap, len(records), mode, cfg.eval.sample_seed)
        records = subsample(records, cap, f"{cfg.eval.sample_seed}:{mode}")
    icl_cap = cfg.eval.icl_max_samples
    if icl and icl_cap and len(records) > icl_cap:
        log.info("ICL baseline: a seeded random %d of those %d records (eval.icl_max_samples)", icl_cap, len(records))
        records = subsample(records, icl_cap, f"{cfg.eval.sample_seed}:{mode}:icl")
    return records


def max_samples(cfg: Config, mode: str) -> int:
    """Sample cap of one mode: eval.max_samples_per_mode[mode], else eval.max_samples (0 = all)."""
    per = cfg.eval.max_samples_per_mode
    unknown = sorted(set(per) - set(MODES))
    if unknown:
        raise ConfigError(f"eval.max_samples_per_mode: unknown inference mode '{unknown[0]}' (known: {', '.join(MODES)})")
    value = per.get(mode, cfg.eval.max_samples)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"eval.max_samples_per_mode.{mode} must be a non-negative integer, got {value!r}")
    return value


def attach_icl_examples(cfg: Config, records: list[dict], mode: str) -> list[dict]:
    """Copies of `records`, each with ``"icl"``: k random training examples of the same task.

    The paper: "we randomly select two instances from the training set of that task and
    place them at the beginning of the LLM's context". Examples come from the text-only
    (behaviour) training file and are drawn per record with a seed derived from the config
    seed and the record id, so a resumed run draws exactly the same examples.
    """
    path = cfg.tasks_dir / "behaviour_train.json"
    pool = [r for r in read_tasks(path) if r["type"] == mode]
    k = cfg.eval.icl_examples
    if len(pool) < k:
        raise StageError(f"{path}: {len(pool)} '{mode}' training records, in-context learning needs {k}")
    out = []
    for rec in records:
        rng = random.Random(f"{cfg.seed}:{mode}:{rec['id']}")
        ex = rng.sample(pool, k)
        out.append({**rec, "icl": [{"id": e["id"], "question": e["question"], "answer": e["answer"]} for e in ex]})
    return out


def item_titles(cfg: Config) -> list[str]:
    """Every item title of the canonical dataset (for title-constrained decoding)."""
    from preprocess.dataset import load_canonical

    return [t for t in load_canonical(cfg).titles[1:] if t]


def constraint_for(cfg: Config, tokenizer: Any, mode: str) -> Any:
    """The ``trie=`` of generate_texts for a constrained run of `mode`.

    uid2next: one trie over every catalogue title. uidiid2rank: per record, a trie over the
    orders of its own candidates (the items its prompt lists, by id), so that the answer is
    a ranking of them whatever the model can spell.
    """
    from src.generation import build_ranking_trie, build_title_trie

    if mode == "uid2next":
        trie = build_title_trie(tokenizer, item_titles(cfg), cfg)
        log.info("title-constrained decoding over %d titles", len(trie))
        return trie
    from preprocess.dataset import load_canonical

    titles = load_canonical(cfg).titles

    def per_record(rec: dict) -> Any:
        cands = rec.get("candidates") or []
        if not cands:
            raise StageError(f"record {rec.get('id')}: no 'candidates' to constrain the ranking to")
        bad = [i for i in cands if not isinstance(i, int) or not 0 < i < len(titles)]
        if bad:
            raise StageError(f"record {rec.get('id')}: candidate {bad[0]!r} is not an item id of the dataset "
                             f"(1..{len(titles) - 1})")
        return build_ranking_trie(tokenizer, [titles[i] for i in cands], cfg)

    log.info("candidate-constrained ranking: each answer is an order of the record's candidates")
    return per_record


# --------------------------------------------------------------------------- rows


def _base_row(rec: dict) -> dict:
    row = {"id": str(rec["id"]), "uid": rec.get("uid"), "iid": rec.get("iid"), "question": rec["question"],
           "answer": rec["answer"]}
    if rec.get("icl"):
        row["icl_ids"] = [e["id"] for e in rec["icl"]]
    return row


def _todo(app: JsonlAppender, records: list[dict]) -> list[dict]:
    todo = [r for r in records if str(r["id"]) not in app.done]
    if len(todo) < len(records):
        log.info("%s: %d of %d samples already done, resuming", app.path.name, len(records) - len(todo), len(records))
    return todo


def _rows_for(app_rows: list[dict], records: list[dict], path: Path) -> list[dict]:
    by_id = {str(r.get("id")): r for r in app_rows}
    missing = [str(r["id"]) for r in records if str(r["id"]) not in by_id]
    if missing:
        raise StageError(f"{path}: {len(missing)} sample(s) have no row (first: {missing[0]}); re-run to complete")
    return [by_id[str(r["id"])] for r in records]


def run_local(
    cfg: Config, model: Any, tokenizer: Any, records: list[dict], mode: str, rows_path: Path, trie: Any = None,
) -> list[dict]:
    """Generate (or score) every record not yet in `rows_path`; return rows in record order."""
    from src.generation import generate_texts, score_yes_no

    with JsonlAppender(rows_path) as app:
        todo = _todo(app, records)
        if todo and mode == BINARY_MODE:
            def write(recs: list[dict], outs: list[dict]) -> None:
                for rec, o in zip(recs, outs):
                    app.append({**_base_row(rec), **o})

            score_yes_no(model, tokenizer, todo, cfg, cfg.eval.batch_size, on_batch=write, desc=f"{mode} yes/no")
        elif todo:
            beams = cfg.eval.num_beams if mode == "uid2next" else 1
            max_new = cfg.eval.max_new_tokens_list if mode in LIST_MODES else cfg.eval.max_new_tokens

            def write(recs: list[dict], outs: list[list[str]]) -> None:
                for rec, gens in zip(recs, outs):
                    app.append({**_base_row(rec), "generations": gens})

            generate_texts(
                model, tokenizer, todo, cfg, max_new_tokens=max_new, num_beams=beams, num_return_sequences=beams,
                batch_size=cfg.eval.batch_size, trie=trie, on_batch=write,
                desc=f"{mode}{' constrained' if trie is not None else ''}",
            )
        return _rows_for(app.rows, records, rows_path)


def run_pointwise(cfg: Config, model: Any, tokenizer: Any, records: list[dict], rows_path: Path) -> list[dict]:
    """Task 2 ranked pointwise: each record's candidates ordered by their task-3 Yes/No margin.

    A row is the free row's shape (``generations``: the candidates' titles in that order, so
    core.metrics scores it like a generated ranking) plus each candidate's margin
    logp(Yes) - logp(No). Rows are appended per chunk of records, so a killed run resumes.
    """
    from tqdm.auto import tqdm

    from data_gen.generate import pointwise_records
    from data_gen.templates import join_titles
    from preprocess.dataset import load_canonical
    from src.generation import score_yes_no_groups

    titles = load_canonical(cfg).titles
    chunk = max(1, cfg.eval.batch_size)
    with JsonlAppender(rows_path) as app:
        todo = _todo(app, records)
        for lo in tqdm(range(0, len(todo), chunk), desc="uidiid2rank pointwise", unit="chunk", leave=False):
            recs = todo[lo:lo + chunk]
            try:
                asks = [pointwise_records(r, titles, cfg.data_gen.max_hist_len, cfg.seed) for r in recs]
            except (ValueError, IndexError) as e:
                raise StageError(f"{rows_path.name}: {e}") from None
            scored = score_yes_no_groups(model, tokenizer, asks, cfg, cfg.eval.batch_size, desc="candidates yes/no")
            for rec, qs, outs in zip(recs, asks, scored):
                margins = [o["logp_yes"] - o["logp_no"] for o in outs]
                order = sorted(range(len(qs)), key=lambda j: -margins[j])  # ties keep the prompt's order
                app.append({**_base_row(rec), "candidates": [q["iid"] for q in qs],
                            "margins": [round(m, 4) for m in margins],
                            "generations": [join_titles([titles[qs[j]["iid"]] for j in order])]})
        return _rows_for(app.rows, records, rows_path)


def api_messages(rec: dict, instruction: str = "") -> list[dict[str, str]]:
    """The ICL conversation for the API: examples as earlier turns, then the question
    (with `instruction` appended to the final question only; the examples keep their
    recorded answers)."""
    msgs: list[dict[str, str]] = []
    for ex in rec.get("icl") or []:
        msgs += [{"role": "user", "content": ex["question"]}, {"role": "assistant", "content": ex["answer"]}]
    msgs.append({"role": "user", "content": f"{rec['question']} {instruction}" if instruction else rec["question"]})
    return msgs


def api_uid2next_instruction(cfg: Config) -> str:
    """What the API model is told on task 1: rank eval.api_uid2next_k titles ('' for k <= 1)."""
    k = cfg.eval.api_uid2next_k
    if k < 1:
        raise ConfigError(f"eval.api_uid2next_k must be >= 1, got {k}")
    if k == 1:
        return ""
    try:
        return cfg.eval.api_uid2next_instruction.format(k=k).strip()
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"eval.api_uid2next_instruction may contain only the field {{k}}: {e}") from None


def _drop_stale_api_rows(rows_path: Path, k: int) -> None:
    """Rows of an earlier uid2next API run asked for a different number of titles: redo them."""
    if not rows_path.is_file():
        return
    with JsonlAppender(rows_path) as app:
        stale = sum(1 for r in app.rows if r.get("api_k") != k)
    if stale:
        log.warning("%s: %d row(s) were asked for a different number of titles than eval.api_uid2next_k=%d; "
                    "asking again", rows_path, stale, k)
        rows_path.unlink()


def run_api(cfg: Config, client: Any, records: list[dict], mode: str, rows_path: Path) -> list[dict]:
    """GPT-4-ICL rows: one completion per record (the client caches every request).

    Task 1 with an API model: a chat model returns one answer, not five beams, so the
    question asks for ``eval.api_uid2next_k`` (paper: 5) titles, most likely first
    (``eval.api_uid2next_instruction``), and the reply is read as a ranked list
    (:func:`core.metrics.parse_ranked_titles`: numbered / bulleted lines, "; " or inline
    numbering) for HR@5 / NDCG@5. Task 3: the reply's first yes/no decision
    (core.metrics.decision_of, the same reading the explanation judge uses). A request that
    fails for good is left out and reported; re-running retries it.
    """
    from core.metrics import decision_of

    instruction = ""
    if mode == "uid2next":
        instruction = api_uid2next_instruction(cfg)
        _drop_stale_api_rows(rows_path, cfg.eval.api_uid2next_k)
    with JsonlAppender(rows_path) as app:
        todo = _todo(app, records)
        failed = 0
        for start in range(0, len(todo), API_CHUNK):
            chunk = todo[start : start + API_CHUNK]
            replies = client.complete_many([api_messages(r, instruction) for r in chunk], desc=f"{mode} api")
            for rec, text in zip(chunk, replies):
                if text is None:
                    failed += 1
                    continue
                row = {**_base_row(rec), "raw": text}
                if mode == BINARY_MODE:
                    row["pred"] = decision_of(text)
                elif mode == "uid2next":
                    k = cfg.eval.api_uid2next_k
                    row["generations"] = parse_ranked_titles(text, k) or [text.strip()]
                    row["api_k"] = k
                else:
                    row["generations"] = [text.strip()]
                app.append(row)
        if failed:
            raise StageError(f"{rows_path}: {failed} API request(s) failed after retries; re-run to retry them")
        return _rows_for(app.rows, records, rows_path)


# --------------------------------------------------------------------------- driver


#: eval.* keys that change how fast a cell is measured, not what it measures (whether a
#: constrained block is wanted is checked apart from the fingerprint, below)
_NOT_MEASURING = ("eval.batch_size", "eval.beam_batch_size", "eval.device", "eval.icl_constrained")
#: eval.* keys of the ICL baselines only
_ICL_KEYS = ("eval.icl_max_samples",)
#: keys whose change re-measures from the rows there are: the sample keys only change which
#: records are measured (rows are kept per record id); rows asked with another API question
#: are dropped by run_api itself; switching the constrained / pointwise runs adds or drops
#: their block and keeps the free rows
_REMEASURED = ("eval.max_samples", "eval.max_samples_per_mode", "eval.sample_seed", "eval.icl_max_samples",
               "eval.api_uid2next_k", "eval.api_uid2next_instruction", "eval.pointwise_rank",
               "eval.constrained", "eval.constrained_modes")
#: eval keys of the pointwise task-2 ranking only (the cells it can add to: RANK_MODE, local, no ICL)
_POINTWISE_KEYS = ("eval.pointwise_rank",)
#: eval keys of the API model only
_API_KEYS = ("eval.api_uid2next_k", "eval.api_uid2next_instruction")


def evaluate(
    cfg: Config,
    task_type: str,
    mode: str,
    icl: bool = False,
    constrained: bool | None = None,
    pointwise: bool | None = None,
    split: str = "valid",
    force: bool = False,
    loaded: tuple[Any, Any] | Callable[[], tuple[Any, Any]] | None = None,
    client: Any = None,
    method: str | None = None,
) -> dict | None:
    """Run one (method, inference mode) evaluation; return its metrics (None if skipped).

    `loaded` = (model, tokenizer), or a function returning it (called only if this mode has
    work: see `main`), bypasses src.model.load_trained (tests, benchmarks, several modes);
    `client` bypasses the construction of core.api_client.ChatClient. `method` replaces the
    output folder name under eval/ (src.ablation: ``ablation/<variant>`` with `loaded`
    holding that variant's model).
    """
    if task_type not in TASK_TYPES:
        raise ConfigError(f"--task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    if mode not in MODES:
        raise ConfigError(f"--inference_mode must be one of {', '.join(MODES)}, got {mode!r}")
    if split not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {split!r}")
    use_api = task_type == "gpt4"
    if constrained is None:
        constrained = cfg.eval.constrained and (cfg.eval.icl_constrained or not icl)
    bad = [m for m in cfg.eval.constrained_modes if m not in CONSTRAINABLE_MODES]
    if bad:
        raise ConfigError(f"eval.constrained_modes: {bad[0]!r} cannot be decoded under a constraint "
                          f"(constrainable: {', '.join(CONSTRAINABLE_MODES)})")
    constrained = constrained and mode in cfg.eval.constrained_modes and not use_api
    # the cells a pointwise ranking can exist for: task 2 of a local model, no ICL examples
    pointwise_applies = mode == RANK_MODE and not use_api and not icl
    pointwise = (cfg.eval.pointwise_rank if pointwise is None else pointwise) and pointwise_applies
    # the extra blocks of this cell's metrics: name -> wanted
    blocks = {"constrained": constrained, "pointwise": pointwise}
    method = method or method_name(task_type, icl)
    paths = eval_paths(cfg, method, mode, split)

    # what a cell depends on: the evaluation settings, the records and (for a trained variant
    # measured under its own name; src.ablation guards its variants itself) the model's stamp
    inputs = [task_file(cfg, task_type, split)]
    if task_type in TRAIN_TYPES and method == method_name(task_type, icl):
        inputs.append(cfg.llm_dir / task_type / MODEL_STAMP)
    fp = fingerprint(cfg, ["eval", "llm.base_model", "llm.chat_format", "llm.max_length", "seed"], inputs,
                     exclude=_NOT_MEASURING + (() if use_api else _API_KEYS) + (() if icl else _ICL_KEYS)
                     + (() if pointwise_applies else _POINTWISE_KEYS),
                     base=cfg.root)
    if force:
        for key in ("rows", "constrained_rows", "pointwise_rows", "metrics"):
            paths[key].unlink(missing_ok=True)
    elif paths["metrics"].is_file():
        done = read_json(paths["metrics"])
        changes = embedded_changes(paths["metrics"], done, fp)
        if changes and all(changed_setting(c) in _REMEASURED for c in changes):
            log.info("%s: %s; measuring again (rows of records measured before are reused)", paths["metrics"],
                     "; ".join(changes))
        elif changes:
            raise stale_error(str(paths["metrics"]), changes)
        stale_api = (use_api and mode == "uid2next"
                     and done.get("settings", {}).get("api_uid2next_k") != cfg.eval.api_uid2next_k)
        if changes:
            pass  # resampled: measured again below
        elif stale_api:
            log.info("%s was measured with another eval.api_uid2next_k; measuring again", paths["metrics"])
        elif all(not wanted or isinstance(done.get(block), dict) for block, wanted in blocks.items()):
            log.info("%s exists; skipping (use --force to redo)", paths["metrics"])
            return done

    if use_api:
        from core.api_client import ChatClient

        if client is None:
            if not ChatClient.available(cfg):
                log.info("skipping %s %s: no OpenAI-compatible endpoint configured (see README, 'API endpoint')",
                         method, mode)
                return None
            client = ChatClient(cfg)

    set_seed(cfg.seed)
    records = load_eval_records(cfg, task_type, mode, split, icl=icl)
    if icl:
        records = attach_icl_examples(cfg, records, mode)
    log.info("%s / %s / %s: %d samples from %s", method, mode, split, len(records), task_file(cfg, task_type, split))

    if use_api:
        rows = run_api(cfg, client, records, mode, paths["rows"])
        crows = prows = None
    else:
        if loaded is None:
            loaded = load_model(cfg, task_type)
        model, tokenizer = loaded() if callable(loaded) else loaded
        rows = run_local(cfg, model, tokenizer, records, mode, paths["rows"])
        crows = None
        if constrained:
            crows = run_local(cfg, model, tokenizer, records, mode, paths["constrained_rows"],
                              trie=constraint_for(cfg, tokenizer, mode))
        prows = run_pointwise(cfg, model, tokenizer, records, paths["pointwise_rows"]) if pointwise else None

    metrics: dict[str, Any] = {
        "method": method, "task_type": task_type, "inference_mode": mode, "split": split, "icl": icl,
        **compute_metrics(mode, rows),
        "settings": {
            "num_beams": cfg.eval.num_beams if mode == "uid2next" else 1,
            "max_new_tokens": cfg.eval.max_new_tokens_list if mode in LIST_MODES else cfg.eval.max_new_tokens,
            "max_samples": max_samples(cfg, mode), "base_model": cfg.llm.base_model,
            **({"icl_max_samples": cfg.eval.icl_max_samples} if icl else {}),
            "task_file": str(task_file(cfg, task_type, split)),
            **({"api_uid2next_k": cfg.eval.api_uid2next_k,
                "api_uid2next_instruction": api_uid2next_instruction(cfg)}
               if use_api and mode == "uid2next" else {}),
        },
    }
    if crows is not None:
        metrics["constrained"] = compute_metrics(mode, crows)
    if prows is not None:
        metrics["pointwise"] = compute_metrics(mode, prows)
    metrics["fingerprint"] = fp
    write_json(paths["metrics"], metrics)

    def shown(d: dict) -> str:
        return json.dumps({k: round(v, 4) for k, v in d.items() if k in MODE_METRICS[mode]})

    log.info("%s %s: %s (n=%d)%s", method, mode, shown(metrics), metrics["n"],
             "".join(f"; {block} {shown(metrics[block])}" for block in blocks if block in metrics))
    return metrics


def load_model(cfg: Config, task_type: str) -> tuple[Any, Any]:
    """The method's (model, tokenizer) on eval.device (torch is imported only here)."""
    from src.model import load_trained

    return load_trained(cfg, task_type, device=resolve_device(cfg.eval.device))


def parse_modes(value: str) -> list[str]:
    """`--inference_mode` value: one mode or several, comma-separated, each known, none twice."""
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(
            f"unknown inference mode {bad[0] if bad else value!r} (choose from {', '.join(MODES)}; several: comma-separated)")
    if len(set(modes)) < len(modes):
        raise argparse.ArgumentTypeError(f"a mode is named twice in {value!r}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--task_type", required=True, choices=TASK_TYPES,
                   help="trained model (behaviour|intention|both), base LLM (none), or the API model (gpt4)")
    p.add_argument("--inference_mode", required=True, type=parse_modes, metavar="MODE[,MODE...]",
                   help=f"one of {', '.join(MODES)}, or several comma-separated (one model load)")
    p.add_argument("--icl", action="store_true", help="prepend eval.icl_examples seeded training examples")
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                   help="also run constrained decoding for the modes of eval.constrained_modes "
                        "(default: eval.constrained, and for --icl eval.icl_constrained)")
    p.add_argument("--pointwise", action=argparse.BooleanOptionalAction, default=None,
                   help="also rank task 2 pointwise, by each candidate's task-3 Yes/No margin "
                        "(default: eval.pointwise_rank; never for --icl or the API model)")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        # loaded on the first mode with work to do, then shared by the others
        loaded = functools.cache(functools.partial(load_model, cfg, args.task_type))
        for mode in args.inference_mode:
            evaluate(cfg, args.task_type, mode, icl=args.icl, constrained=args.constrained,
                     pointwise=args.pointwise, split=args.split, force=args.force, loaded=loaded)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
