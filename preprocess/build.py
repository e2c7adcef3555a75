"""The preprocess stage: raw files -> data/{sequences.txt, items.jsonl, dataset.json}.

All three files are computed in memory first and only then written, each atomically, with
dataset.json last: it is the completion marker, so a run killed between two renames is
seen as unfinished (and redone) rather than taken for a finished dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from core.config import Config
from core.stamps import differences, digest, stale_error
from core.utils import StageError, atomic_open, read_json, sha256_file, write_json, write_jsonl, write_text

from .dataset import DATASET_JSON, ITEMS, SEQUENCES, STATS_MD, canonical_paths, sequence_stats, stats_table
from .pipeline import run_filters
from .readers import read_raw, source_roles

log = logging.getLogger(__name__)

#: bumped when the canonical format or the filtering semantics change
FORMAT_VERSION = 1


def _settings(cfg: Config) -> dict[str, Any]:
    """The dataset settings that determine the output (fetch-only keys left out)."""
    d = dataclasses.asdict(cfg.dataset)
    for key in ("fetch", "urls", "synthetic_users", "synthetic_items"):
        d.pop(key, None)
    d["files"] = {role: cfg.dataset.files[role] for role in source_roles(cfg)}
    return d


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _changes_since(cfg: Config, info: dict[str, Any]) -> list[str]:
    """What differs between a built dataset (its dataset.json) and the config and raw files now.

    Raw files are compared by the sha256 recorded at build time; a raw file that is gone
    (raw/ cleaned after preprocessing) is not a change.
    """
    def named(d: dict[str, Any]) -> dict[str, Any]:
        return {"settings": {f"dataset.{k}": v for k, v in d.items()}}

    changes = differences(named(info.get("settings") or {}), named(_settings(cfg)))
    for rel, meta in sorted((info.get("raw_files") or {}).items()):
        now = digest(cfg.raw_dir / rel)
        if now != "missing" and isinstance(meta, dict) and meta.get("sha256") not in (None, now):
            changes.append(f"raw file {rel} changed since the dataset was built")
    return changes


def outputs_complete(cfg: Config) -> bool:
    return all(p.is_file() for p in canonical_paths(cfg.data_dir).values())


def ensure_raw(cfg: Config) -> None:
    """For the synthetic profile, generate the raw files when missing (no network needed)."""
    if cfg.dataset.fetch != "synthetic":
        return
    from .synthetic import write_synthetic

    paths = [cfg.dataset_raw_dir / n for n in cfg.dataset.files.values()]
    if not all(p.is_file() for p in paths):
        log.info("raw files of the synthetic dataset missing; generating them in %s", cfg.dataset_raw_dir)
        write_synthetic(cfg)


def preprocess(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Build the canonical dataset of `cfg` (skipped when it exists, unless force)."""
    out = canonical_paths(cfg.data_dir)
    if outputs_complete(cfg) and not force:
        info = read_json(out[DATASET_JSON])
        changes = _changes_since(cfg, info)
        if changes:
            raise stale_error(f"the dataset in {cfg.data_dir}", changes)
        log.info("canonical dataset exists in %s; skipping (use --force to redo)", cfg.data_dir)
        print(stats_table(cfg.dataset.name, info))
        return info

    if cfg.dataset.min_seq_len < 3:
        raise StageError(
            f"{cfg.source_file}: dataset.min_seq_len must be >= 3 (leave-one-out needs a train item, "
            f"a valid and a test target), got {cfg.dataset.min_seq_len}"
        )
    ensure_raw(cfg)
    raw = read_raw(cfg)
    for reason, n in sorted(raw.skipped.items()):
        log.warning("skipped %d x %s", n, reason)
    log.info("read %d events, %d item metadata rows from %s", len(raw.users), len(raw.items), cfg.dataset_raw_dir)
    res = run_filters(raw, cfg.dataset)

    items = []
    for iid, key in enumerate(res.item_raw, 1):
        meta = raw.items[key]
        items.append({"iid": iid, **meta, "raw_id": key})
    stats = sequence_stats(res.sequences, len(items))
    untitled = sum(1 for k in set(raw.item_ids) if not raw.items.get(k, {}).get("title"))
    info: dict[str, Any] = {
        "name": cfg.dataset.name,
        "source": cfg.dataset.source,
        "format_version": FORMAT_VERSION,
        **stats,
        "split": "leave-one-out by time: train = s[:-2], valid = s[-2], test = s[-1]",
        "settings": _settings(cfg),
        "seed": cfg.dataset.seed,
        "steps": res.steps,
        "skipped": {**dict(raw.skipped), "items without title": untitled},
        "raw_files": {
            _rel(p, cfg.raw_dir): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in raw.files
            if p.is_file()
        },
    }
    if not any(res.sequences):
        raise StageError("no sequences to write")

    # the old completion marker goes first, so a crash between the renames below is seen
    # as an unfinished dataset rather than a finished one with mixed files
    out[DATASET_JSON].unlink(missing_ok=True)
    with atomic_open(out[SEQUENCES]) as f:
        for uid, seq in enumerate(res.sequences, 1):
            f.write(f"{uid} {' '.join(map(str, seq))}\n")
    write_jsonl(out[ITEMS], items)
    table = stats_table(cfg.dataset.name, stats)
    write_text(cfg.data_dir / STATS_MD, table)
    write_json(out[DATASET_JSON], info)
    log.info("wrote %s (%d users, %d items, %d interactions)", cfg.data_dir, stats["n_users"],
             stats["n_items"], stats["n_interactions"])
    print(table)
    return info
