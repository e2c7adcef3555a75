"""The data_gen stage: canonical dataset + recommender exports -> every task file.

Splits (DESIGN.md keeps valid and test apart; the original code used valid == test):
  * ``*_train.json`` come from ``train_top.jsonl`` (train positions only, s[1..-3]);
  * ``*_valid.json`` -- the files the evaluation stages read -- come from the split named
    by ``data_gen.eval_split``. The default is ``test`` (last item of each sequence),
    because Table 1 of the paper is a leave-one-out *test* evaluation; set it to
    ``valid`` (second-last item) to tune on validation rows without touching test;
  * ``*_test.json`` always come from ``test_top.jsonl``, the final test split. With the
    default eval_split both files hold the same records.
Sample ids and seeds derive from the source split, so with eval_split=test the
``_valid`` and ``_test`` files are byte-identical.

Files (cfg.tasks_dir):
  {behaviour,intention,both}_{train,valid,test}.json   alignment records
  explan_{behaviour,intention,both,none}_{train,valid,test}.json   explanation prompts
  explan_chatgpt_{train,valid,test}.csv   (id, uid, iid, label, question) for API models
  stats.json, stats.md   Table B2-style counts

Which records go where (paper 2.2-2.4): behaviour = behaviour form; intention =
intention form, plus task 6; both (train) = behaviour + intention records + the hybrid
third form. The evaluation files of ``both`` hold the hybrid form for tasks 1-3 (the
prompt RecExplainer-H is evaluated on) and the intention form for uid2hist / iid2title,
whose hybrid form would contain its own answer. ShareGPT (task 5) goes into every form:
with ``data_gen.sharegpt_multi_turn`` (default, the original) each record carries the whole
conversation as ``messages`` (role/content turns) and every assistant turn is trained;
otherwise only its first turn (``question``/``answer``; the raw turns kept as
``conversations``).

Determinism: every random choice comes from a generator derived from data_gen.seed and
its purpose, records are built in (uid, position) order, and files are written with a
fixed layout, so the same inputs and seed give byte-identical files. All records are
built in memory before the first file is written, so a bad input leaves no new file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from data_gen import templates as T
from data_gen.generate import (
    Renderer, Sample, SplitContext, derived_rng, explan_samples, iid2title_eval_samples,
    item_samples, per_user_cap, registered_samples, summary_samples, user_samples,
)
from data_gen.inputs import TopRow, load_canonical_data, load_item_sim, load_sharegpt, load_top
from core.config import Config, ConfigError
from core.registry import EXPLAN_FILES, FORM_CODE, TASK_OF_TYPE, TRAIN_TYPES, TYPE_FORMS
from core.stamps import current, fingerprint, write_stamp
from core.utils import StageError, atomic_open, sha256_file

log = logging.getLogger(__name__)

#: alignment data files tasks/<name>_<split>.json: one per trained method (core.registry)
ALIGN_FILES = TRAIN_TYPES
FILE_SPLITS = ("train", "valid", "test")


def output_paths(cfg: Config) -> list[Path]:
    d = cfg.tasks_dir
    out = [d / f"{f}_{s}.json" for f in ALIGN_FILES for s in FILE_SPLITS]
    out += [d / f"explan_{f}_{s}.json" for f in EXPLAN_FILES for s in FILE_SPLITS]
    out += [d / f"explan_chatgpt_{s}.csv" for s in FILE_SPLITS]
    return out + [d / "stats.json", d / "stats.md"]


#: fingerprint of the task files (core.stamps), written after every one of them
STAMP_FILE = "stamp.json"


def input_files(cfg: Config) -> list[Path]:
    """The files the task data is built from: the dataset, the recommender's exports, ShareGPT
    or its stand-in."""
    g = cfg.data_gen
    splits = sorted({"train", "test", g.eval_split})
    files = [cfg.data_dir / "sequences.txt", cfg.data_dir / "items.jsonl", cfg.recmodel_dir / "item_sim.json"]
    files += [cfg.recmodel_dir / f"{s}_top.jsonl" for s in splits]
    if g.sharegpt_file:
        files.append(cfg.raw_dir / g.sharegpt_file)
    elif g.sharegpt_replay > 0:
        files.append(cfg.replay_file)
    return files


def data_fingerprint(cfg: Config) -> dict[str, Any]:
    return fingerprint(cfg, ["data_gen", "seed"], input_files(cfg), base=cfg.root)


def _check_config(cfg: Config) -> None:
    g = cfg.data_gen
    if g.eval_split not in ("valid", "test"):
        raise ConfigError(f"{cfg.source_file}: data_gen.eval_split must be 'valid' or 'test', got {g.eval_split!r}")
    for key in ("train_cap_per_user", "max_hist_len", "num_sim", "sharegpt_train", "sharegpt_valid",
                "sharegpt_max_chars", "explan_valid_users", "explan_train_users", "max_train_per_task",
                "max_eval_per_task", "eval_iid2title_items", "max_field_chars"):
        if getattr(g, key) < 0:
            raise ConfigError(f"{cfg.source_file}: data_gen.{key} must be >= 0, got {getattr(g, key)}")


# --------------------------------------------------------------------------- summaries


def fetch_summaries(cfg: Config, users: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
                    titles: list[str], notes: list[str]) -> list[str | None] | None:
    """Per-user preference summaries from the project's API client, or None when skipped.

    The client caches every answer on disk, so a re-run sends no request twice.
    """
    if not cfg.data_gen.summaries:
        notes.append("uid2summary skipped: data_gen.summaries is false")
        log.info(notes[-1])
        return None
    try:
        from core.api_client import ChatClient
    except ImportError as e:
        notes.append(f"uid2summary skipped: core.api_client not importable ({e})")
        log.info(notes[-1])
        return None
    if not ChatClient.available(cfg):
        notes.append("uid2summary skipped: no API endpoint configured (set api.base_url/api.model or "
                     "OPENAI_API_KEY / ENGINE)")
        log.info(notes[-1])
        return None
    requests = [[{"role": "user", "content": T.SUMMARY_REQUEST.format(
        history=T.join_titles([titles[i] for i in shown]))}] for _, _, shown in users]
    log.info("uid2summary: requesting %d user summaries", len(requests))
    answers = ChatClient(cfg).complete_many(requests, desc="uid2summary")
    missing = sum(1 for a in answers if a is None or not a.strip())
    if missing:
        notes.append(f"uid2summary: {missing} of {len(answers)} users got no summary and were left out")
        log.warning(notes[-1])
    return answers


# --------------------------------------------------------------------------- main


def run(cfg: Config, force: bool = False) -> dict[str, Any] | None:
    """Generate every task file; returns the statistics (None when skipped as up to date)."""
    _check_config(cfg)
    g = cfg.data_gen
    outputs = output_paths(cfg)
    if not force and all(p.exists() for p in outputs) and current(
            cfg.tasks_dir / STAMP_FILE, data_fingerprint(cfg), f"the task files in {cfg.tasks_dir}"):
        log.info("data_gen: all %d outputs exist in %s; skipping (use --force to redo)", len(outputs), cfg.tasks_dir)
        return None

    data = load_canonical_data(cfg)
    titles: list[str] = list(data.titles)
    n_items = data.n_items
    sources = {"train": "train", "test": "test", g.eval_split: g.eval_split}
    rows: dict[str, list[TopRow]] = {
        s: load_top(cfg.recmodel_dir / f"{s}_top.jsonl", s, data.sequences, n_items) for s in sorted(set(sources))
    }
    sim_path = cfg.recmodel_dir / "item_sim.json"
    item_sim = load_item_sim(sim_path, n_items)
    notes: list[str] = []

    # ShareGPT is read before any record is built so that a bad file stops early too
    sharegpt: dict[str, list[dict]] = {"train": [], "valid": []}
    sg_path = None
    if g.sharegpt_file:
        sg_path = cfg.raw_dir / g.sharegpt_file
    elif g.sharegpt_replay > 0:
        sg_path = cfg.replay_file  # the offline stand-in (src.replay), read like ShareGPT itself
        if not sg_path.is_file():
            raise StageError(f"{sg_path}: data_gen.sharegpt_replay is {g.sharegpt_replay} but the ShareGPT "
                             f"stand-in is not built; run `python -m src.replay --config {cfg.source_file}` (bash shell/replay.sh) first")
    if sg_path is not None:
        kept, drops = load_sharegpt(sg_path, g.sharegpt_max_chars, multi_turn=g.sharegpt_multi_turn)
        for reason, n in sorted(drops.items()):
            log.info("ShareGPT: dropped %d conversations: %s", n, reason)
        order = list(range(len(kept)))
        derived_rng(g.seed, "sharegpt", "sample").shuffle(order)
        n_tr = min(g.sharegpt_train, len(order))
        parts = {"train": order[:n_tr], "valid": order[n_tr:n_tr + g.sharegpt_valid]}
        for split, idx in parts.items():
            for k, j in enumerate(idx):
                c = kept[j]
                rec = {
                    "id": f"sharegpt-{split}-{k:06d}", "type": "sharegpt", "form": "text", "uid": 0, "iid": 0,
                    "history": [], "candidates": [], "iids_in_question": [],
                    "question": c["conversations"][0]["value"], "answer": c["conversations"][1]["value"],
                }
                if g.sharegpt_multi_turn:
                    # every turn is trained (src.data encodes "messages"; loss on each assistant turn)
                    rec["messages"] = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                                       for t in c["conversations"]]
                else:
                    rec["conversations"] = c["conversations"]  # kept for reference; only the first turn trains
                rec["source_id"] = c["source_id"]
                sharegpt[split].append(rec)
        log.info("ShareGPT: %d usable of %d; sampled %d train / %d valid", len(kept), len(kept) + sum(drops.values()),
                 len(sharegpt["train"]), len(sharegpt["valid"]))
        if len(sharegpt["train"]) < g.sharegpt_train or len(sharegpt["valid"]) < g.sharegpt_valid:
            notes.append(f"ShareGPT: only {len(kept)} usable conversations for {g.sharegpt_train} train + "
                         f"{g.sharegpt_valid} valid")
            log.warning(notes[-1])
    else:
        notes.append("task 5 (ShareGPT) skipped: data_gen.sharegpt_file is empty")
        log.info(notes[-1])

    renderer = Renderer(titles)
    max_len = cfg.recmodel.max_seq_len

    # ---------------------------------------------------------------- samples per source split
    samples: dict[str, dict[str, list[Sample]]] = {}
    train_rows = per_user_cap(rows["train"], g.train_cap_per_user)
    samples["train"] = user_samples(train_rows, "train", titles, g.seed, g.max_hist_len, g.max_train_per_task,
                                    g.binary_rows_per_user)
    samples["train"].update(registered_samples(SplitContext(train_rows, "train", titles, g.seed, g.max_hist_len),
                                               g.max_train_per_task))
    samples["train"].update(item_samples(data.items, titles, item_sim, g.seed, g.num_sim, g.max_field_chars,
                                         g.max_train_per_task))
    # uid2summary: one per user, from the train part s[:-2] only (valid/test items never leak)
    users = []
    for uid in sorted(data.sequences):
        part = data.sequences[uid][:-2]
        if part:
            hist = tuple(part[-max_len:]) if max_len > 0 else tuple(part)
            users.append((uid, hist, hist[-g.max_hist_len:] if g.max_hist_len > 0 else hist))
    if g.max_train_per_task > 0 and len(users) > g.max_train_per_task:
        keep = sorted(derived_rng(g.seed, "train", "uid2summary", "cap").sample(range(len(users)), g.max_train_per_task))
        users = [users[k] for k in keep]
    answers = fetch_summaries(cfg, users, titles, notes)
    samples["train"]["uid2summary"] = summary_samples(users, answers, g.seed) if answers is not None else []

    for split in sorted(set(sources.values()) - {"train"}):
        samples[split] = user_samples(rows[split], split, titles, g.seed, g.max_hist_len, g.max_eval_per_task)
        samples[split]["iid2title"] = iid2title_eval_samples(titles, g.eval_iid2title_items, split, g.seed)
        samples[split].update(registered_samples(SplitContext(rows[split], split, titles, g.seed, g.max_hist_len),
                                                 g.max_eval_per_task))

    # ---------------------------------------------------------------- records per file
    files: dict[str, list[dict]] = {}
    for file_split, src in (("train", "train"), ("valid", g.eval_split), ("test", "test")):
        per_form: dict[str, list[dict]] = {"behaviour": [], "intention": [], "hybrid": []}
        for t, ss in samples[src].items():
            for form in TYPE_FORMS[t]:
                for k, s in enumerate(ss):
                    per_form[form].append(renderer.record(s, form, f"{FORM_CODE[form]}-{src}-{t}-{k:06d}"))
        sg = sharegpt["train" if file_split == "train" else "valid"]
        files[f"behaviour_{file_split}"] = per_form["behaviour"] + sg
        files[f"intention_{file_split}"] = per_form["intention"] + sg
        if file_split == "train":
            files["both_train"] = per_form["behaviour"] + per_form["intention"] + per_form["hybrid"] + sg
        else:
            hybrid_types = {r["type"] for r in per_form["hybrid"]}
            files[f"both_{file_split}"] = (
                per_form["hybrid"] + [r for r in per_form["intention"] if r["type"] not in hybrid_types] + sg
            )

    csv_text: dict[str, str] = {}
    for file_split, src in (("train", "train"), ("valid", g.eval_split), ("test", "test")):
        n = g.explan_train_users if src == "train" else g.explan_valid_users
        ex = explan_samples(rows[src], n, src, titles, g.seed, g.max_hist_len)
        for fname, form in EXPLAN_FILES.items():
            files[f"explan_{fname}_{file_split}"] = [renderer.record(s, form, rid) for rid, s in ex]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "uid", "iid", "label", "question"])
        for rid, s in ex:
            w.writerow([rid, s.uid, s.iid, s.label, renderer.record(s, "behaviour", rid)["question"]])
        csv_text[f"explan_chatgpt_{file_split}"] = buf.getvalue()

    for name, recs in files.items():
        ids = Counter(r["id"] for r in recs)
        dup = [i for i, c in ids.items() if c > 1]
        if dup:  # a bug, not a bad input: never write such a file
            raise AssertionError(f"{name}: duplicate record id {dup[0]}")

    stats = build_stats(cfg, files, notes, {
        "train_top.jsonl": rows["train"], f"{g.eval_split}_top.jsonl": rows[g.eval_split], "test_top.jsonl": rows["test"],
    }, [cfg.data_dir / "sequences.txt", cfg.data_dir / "items.jsonl", sim_path]
       + [cfg.recmodel_dir / f"{s}_top.jsonl" for s in sorted(set(sources))])
    table = stats_markdown(stats)

    # ---------------------------------------------------------------- write (atomic, each file)
    for name, recs in files.items():
        write_records(cfg.tasks_dir / f"{name}.json", recs)
    for name, text in csv_text.items():
        with atomic_open(cfg.tasks_dir / f"{name}.csv") as f:
            f.write(text)
    with atomic_open(cfg.tasks_dir / "stats.json") as f:
        json.dump(stats, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    with atomic_open(cfg.tasks_dir / "stats.md") as f:
        f.write(table)
    write_stamp(cfg.tasks_dir / STAMP_FILE, data_fingerprint(cfg))
    print(table, end="")
    log.info("data_gen: wrote %d files to %s", len(outputs), cfg.tasks_dir)
    return stats


def write_records(path: Path, records: list[dict]) -> None:
    """A JSON list with one record per line: valid JSON, diff- and grep-friendly."""
    with atomic_open(path) as f:
        if not records:
            f.write("[]\n")
            return
        f.write("[\n")
        for k, r in enumerate(records):
            f.write(json.dumps(r, ensure_ascii=False))
            f.write(",\n" if k + 1 < len(records) else "\n")
        f.write("]\n")


# --------------------------------------------------------------------------- statistics


def build_stats(cfg: Config, files: dict[str, list[dict]], notes: list[str], rows: dict[str, list[TopRow]],
                inputs: list[Path]) -> dict[str, Any]:
    g = cfg.data_gen
    per_file = {name: dict(sorted(Counter(r["type"] for r in recs).items())) for name, recs in sorted(files.items())}
    table: dict[str, dict[str, int]] = {}
    for form in ALIGN_FILES:
        for split in FILE_SPLITS:
            col = f"{form}_{split}"
            counts: Counter = Counter()
            for t, n in per_file[col].items():
                counts[TASK_OF_TYPE[t]] += n
            table[col] = {task: counts.get(task, 0) for task in sorted(set(TASK_OF_TYPE.values()))}
            table[col]["Total"] = sum(per_file[col].values())
    return {
        "dataset": cfg.dataset.name,
        "eval_split": g.eval_split,
        "table_b2": table,
        "per_file": per_file,
        "explanations": {split: len(files[f"explan_behaviour_{split}"]) for split in FILE_SPLITS},
        "top_rows": {name: {"rows": len(rs), "users": len({r.uid for r in rs})} for name, rs in rows.items()},
        "notes": notes,
        "inputs": {str(p.relative_to(cfg.root)) if p.is_relative_to(cfg.root) else str(p): sha256_file(p)
                   for p in inputs},
    }


def stats_markdown(stats: dict[str, Any]) -> str:
    """Table B2's layout: one row per task, train/test counts per form (test = the `_valid` files)."""
    ev = stats["eval_split"]
    tasks = list(next(iter(stats["table_b2"].values())))  # the registry's tasks in order, then "Total"
    head = ["Task"]
    for f in ALIGN_FILES:
        head += [f"{f} # train", f"{f} # {ev}"]
    lines = [f"Table B2 ({stats['dataset']}): records per task; '# {ev}' = the *_valid.json evaluation files "
             f"(data_gen.eval_split={ev})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        cells = [task]
        for f in ALIGN_FILES:
            cells += [f"{stats['table_b2'][f'{f}_train'][task]:,}", f"{stats['table_b2'][f'{f}_valid'][task]:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    ex = stats["explanations"]
    lines += ["", f"Explanation prompts per form (explan_*): train {ex['train']:,}, valid {ex['valid']:,}, "
              f"test {ex['test']:,} (one positive + one negative item per sampled user/position)"]
    for n in stats["notes"]:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"
