"""Discriminator and score-predictor data from the explanations present (paper 3.4.2).

``python -m discriminator.data_gen --config X [--force]``

Reads ``explain/<method>_<split>.jsonl`` for every method in ``discriminator.cls_methods``
and ``discriminator.reg_methods`` and every split in ``discriminator.splits`` that exists,
and writes under ``discriminator/datasets/``:

* ``cls_{train,test}.jsonl`` -- ``{id, text, label, method}``: the classifier's data, label =
  index of the method in ``labels.json``. The paper used 2,500 explanations per method
  (RecExplainer-H, Vicuna, ChatGPT) split 4:1;
* ``reg_<method>_{train,test}.jsonl`` -- ``{id, uid, iid, text, score, method}``: one score
  predictor per method, target = the recommender's score of (user, item);
* ``labels.json`` and ``stats.json``.

WHY the same prompts for every method: explanation ids are shared by every method's file
(one id per (user, item) prompt), so sampling ids from the ids all methods answered and
splitting by id puts the *same* prompts in every method's test part. The classifier then
cannot tell methods apart by which users/items they talk about, only by how they explain,
and Table 3's MSEs are measured on the same (user, item) pairs.

Targets come from the ``score`` the task record carried (the recommender's score exported
with the prompt); rows without one are scored with ``recmodel.encoder.load_rec_encoder``
from their history and item.
"""

from __future__ import annotations

import logging
import random
import sys
from typing import Any

from core.config import Config, ConfigError, config_stage_main
from discriminator.files import data_dir
from core.registry import explain_file, method_display
from core.utils import StageError, iter_jsonl, read_json, sha256_file, write_json, write_jsonl

log = logging.getLogger("discriminator.data_gen")


def input_files(cfg: Config, methods: list[str]) -> dict[str, str]:
    """name -> sha256 of every explanation file this stage would read: the data is rebuilt
    when one appears or changes (e.g. a method generated after a first run)."""
    return {
        p.name: sha256_file(p)
        for m in methods for split in cfg.discriminator.splits
        if (p := explain_file(cfg, m, split)).is_file()
    }


def load_method(cfg: Config, method: str) -> dict[str, dict]:
    """id -> row over the configured splits (empty explanations dropped and counted)."""
    rows: dict[str, dict] = {}
    empty = 0
    for split in cfg.discriminator.splits:
        path = explain_file(cfg, method, split)
        if not path.is_file():
            continue
        for lineno, row in enumerate(iter_jsonl(path, what="explanation file"), 1):
            if "id" not in row or not isinstance(row.get("explanation"), str):
                raise StageError(f"{path}: row {lineno} needs 'id' and a string 'explanation'")
            text = row["explanation"].strip()
            if not text:
                empty += 1
                continue
            # ids name their source split (explan-<split>-...); a file read twice (valid == test
            # when data_gen.eval_split=test) must not put one explanation in both parts
            rows.setdefault(str(row["id"]), dict(row, text=text, split=split))
    if empty:
        log.warning("%s: %d empty explanation(s) left out", method, empty)
    return rows


def test_ids(all_ids: set[str], ratio: float, seed: int) -> set[str]:
    """A seeded 1-in-(1/ratio) choice of ids for the test part, the same for every method."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"discriminator.test_ratio must be in (0, 1), got {ratio}")
    ids = sorted(all_ids)
    random.Random(f"{seed}:split").shuffle(ids)
    n_test = max(1, round(len(ids) * ratio)) if len(ids) > 1 else 0
    return set(ids[:n_test])


def sample_common(by_method: dict[str, dict[str, dict]], n: int, seed: int, what: str) -> list[str]:
    """Up to `n` ids answered by every method, seeded; warns when fewer exist."""
    common = set.intersection(*(set(rows) for rows in by_method.values()))
    ids = sorted(common)
    if not ids:
        raise StageError(f"{what}: the methods {', '.join(by_method)} share no explanation id; generate them on the same prompts")
    if n > 0 and len(ids) > n:
        ids = sorted(random.Random(f"{seed}:{what}").sample(ids, n))
    elif n > 0 and len(ids) < n:
        log.warning("%s: only %d common explanations per method (discriminator.per_method=%d)", what, len(ids), n)
    return ids


def fill_scores(cfg: Config, rows: list[dict], where: str) -> int:
    """Give every row a 'score' (the recommender's score of its user/item); returns how many were computed."""
    missing = [r for r in rows if not isinstance(r.get("score"), (int, float))]
    if not missing:
        return 0
    bad = [r["id"] for r in missing if not isinstance(r.get("history"), list) or not r["history"]]
    if bad:
        raise StageError(f"{where}: row {bad[0]!r} has neither a 'score' nor a 'history' to compute it from")
    import torch

    from recmodel.encoder import load_rec_encoder

    enc = load_rec_encoder(cfg)
    L = cfg.recmodel.max_seq_len
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        hist = torch.zeros((len(chunk), L), dtype=torch.long)
        for b, r in enumerate(chunk):
            h = [int(i) for i in r["history"]][-L:]
            hist[b, L - len(h) :] = torch.tensor(h, dtype=torch.long)
        iids = torch.tensor([int(r["iid"]) for r in chunk], dtype=torch.long)
        scores = enc.score(hist, iids).float().tolist()
        for r, s in zip(chunk, scores):
            r["score"] = float(s)
    log.info("%s: computed %d recommender score(s) with recmodel.encoder", where, len(missing))
    return len(missing)


def build(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the classifier and regressor data; returns the stats written to stats.json."""
    out = data_dir(cfg)
    stats_path = out / "stats.json"
    d = cfg.discriminator
    wanted = list(dict.fromkeys([*d.cls_methods, *d.reg_methods]))
    inputs = input_files(cfg, wanted)
    settings = {"per_method": d.per_method, "test_ratio": d.test_ratio, "seed": d.seed,
                "cls_methods": list(d.cls_methods), "reg_methods": list(d.reg_methods)}
    if stats_path.is_file() and not force:
        old = read_json(stats_path)
        if old.get("inputs") == inputs and old.get("settings") == settings:
            log.info("%s is up to date with the explanation files; skipping (use --force to rebuild)", stats_path)
            return old
        log.info("explanation files or settings changed since %s; rebuilding", stats_path)
    loaded = {m: load_method(cfg, m) for m in wanted}
    present = {m: rows for m, rows in loaded.items() if rows}
    for m in wanted:
        if m not in present:
            log.warning("no explanations for method %r in %s (splits %s); left out", m, cfg.explain_dir, d.splits)
    cls_methods = [m for m in d.cls_methods if m in present]
    reg_methods = [m for m in d.reg_methods if m in present]
    if len(cls_methods) < 2 and not reg_methods:
        raise StageError(
            f"no discriminator data: need explanations of >= 2 of {d.cls_methods} or of one of {d.reg_methods} "
            f"in {cfg.explain_dir} (written by python -m src.infer_explan; run that stage first)"
        )
    held_out = test_ids(set().union(*(set(r) for r in present.values())), d.test_ratio, d.seed)
    stats: dict[str, Any] = {"cls_methods": cls_methods, "reg_methods": reg_methods, "test_ratio": d.test_ratio,
                             "seed": d.seed, "splits": list(d.splits), "cls": {}, "reg": {},
                             "inputs": inputs, "settings": settings}
    files: dict[str, list[dict]] = {}

    if len(cls_methods) >= 2:
        ids = sample_common({m: present[m] for m in cls_methods}, d.per_method, d.seed, "classifier")
        parts: dict[str, list[dict]] = {"train": [], "test": []}
        for label, m in enumerate(cls_methods):
            for i in ids:
                r = present[m][i]
                parts["test" if i in held_out else "train"].append(
                    {"id": r["id"], "split": r["split"], "text": r["text"], "label": label, "method": m})
        if not parts["test"] or not parts["train"]:
            raise StageError(f"classifier: {len(ids)} common explanations are too few for a train/test split")
        random.Random(f"{d.seed}:cls-order").shuffle(parts["train"])
        files["cls_train"], files["cls_test"] = parts["train"], parts["test"]
        stats["cls"] = {"per_method": len(ids), "train": len(parts["train"]), "test": len(parts["test"]),
                        "labels": cls_methods}
    else:
        log.warning("classifier data skipped: explanations of fewer than 2 of %s are present", d.cls_methods)

    if reg_methods:
        ids = sample_common({m: present[m] for m in reg_methods}, d.per_method, d.seed, "score predictor")
        for m in reg_methods:
            rows = [present[m][i] for i in ids]
            computed = fill_scores(cfg, rows, f"explanations of {m}")
            parts = {"train": [], "test": []}
            for i, r in zip(ids, rows):
                parts["test" if i in held_out else "train"].append(
                    {"id": r["id"], "split": r["split"], "uid": r.get("uid"), "iid": r.get("iid"),
                     "text": r["text"], "score": float(r["score"]), "method": m})
            if len(parts["train"]) < 2 or not parts["test"]:
                raise StageError(f"score predictor {m}: {len(ids)} explanations are too few for a train/test split")
            files[f"reg_{m}_train"], files[f"reg_{m}_test"] = parts["train"], parts["test"]
            stats["reg"][m] = {"train": len(parts["train"]), "test": len(parts["test"]), "scores_computed": computed}

    for name, rows in files.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    for stale in [*out.glob("cls_*.jsonl"), *out.glob("reg_*.jsonl")]:
        if stale.stem not in files:  # from an earlier build with other methods
            stale.unlink()
    write_json(out / "labels.json", {"cls_labels": cls_methods,
                                     "display": {m: method_display(cfg, m) for m in present}})
    write_json(stats_path, stats)
    log.info("discriminator data: classifier %s, score predictors %s", stats["cls"] or "skipped", stats["reg"] or "skipped")
    return stats


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: build(cfg, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
