"""Fixtures for the recmodel tests: canonical datasets written by code, tiny configs.

Data is written in the canonical format of DESIGN.md (data/sequences.txt, items.jsonl,
dataset.json) straight into a temp `paths.root`, so these tests do not depend on the
preprocess stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.config import Config, load_config


def write_canonical(root: Path, sequences: dict[int, list[int]], n_items: int) -> Path:
    """Write a canonical dataset under root/data; return that folder."""
    d = Path(root) / "data"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "sequences.txt", "w", encoding="utf-8") as f:
        for uid in sorted(sequences):
            f.write(" ".join(str(x) for x in [uid, *sequences[uid]]) + "\n")
    with open(d / "items.jsonl", "w", encoding="utf-8") as f:
        for iid in range(1, n_items + 1):
            f.write(json.dumps({"iid": iid, "title": f"Item {iid}", "genres": "x"}) + "\n")
    used = {i for s in sequences.values() for i in s}
    assert used == set(range(1, n_items + 1)), "every item id must occur in some sequence"
    n_inter = sum(len(s) for s in sequences.values())
    (d / "dataset.json").write_text(json.dumps({
        "name": "synthetic", "n_users": len(sequences), "n_items": n_items, "n_interactions": n_inter,
    }))
    return d


def successor_sequences(n_users: int = 40, n_items: int = 30, min_len: int = 6, max_len: int = 12) -> dict[int, list[int]]:
    """Each user reads a run of consecutive ids: item i is always followed by i % n_items + 1.

    Runs wrap around the id cycle and start at evenly spread ids, so every id occurs and
    every transition that a valid/test target needs also occurs in other users' train parts.
    """
    seqs = {}
    for u in range(1, n_users + 1):
        length = min_len + (u * 5) % (max_len - min_len + 1)
        start = (u * 7) % n_items
        seqs[u] = [(start + k) % n_items + 1 for k in range(length)]
    return seqs


def cluster_sequences(n_users: int = 60, n_clusters: int = 3, per_cluster: int = 10, length: int = 8,
                      seed: int = 0) -> dict[int, list[int]]:
    """Each user draws `length` distinct items from one cluster of ids, in random order.

    The first n_clusters users read their whole cluster, so that every id occurs.
    """
    rng = random.Random(seed)
    seqs = {}
    for u in range(1, n_users + 1):
        c = u - 1 if u <= n_clusters else rng.randrange(n_clusters)
        pool = list(range(c * per_cluster + 1, (c + 1) * per_cluster + 1))
        rng.shuffle(pool)
        seqs[u] = pool if u <= n_clusters else pool[:length]
    return seqs


def make_cfg(root: Path, *overrides: str) -> Config:
    """The tiny profile with outputs under `root`, CPU, and small fast training settings."""
    base = [
        f"paths.root={root}",
        "recmodel.device=cpu",
        "recmodel.hidden_size=32",
        "recmodel.inner_size=64",
        "recmodel.num_layers=1",
        "recmodel.num_heads=2",
        "recmodel.max_seq_len=10",
        "recmodel.batch_size=32",
        "recmodel.export_topk=5",
        "recmodel.export_train_cap=3",
        "recmodel.sim_topk=4",
        "recmodel.kd.hidden_size=16",
        "recmodel.kd.num_heads=1",
        "recmodel.kd.num_layers=1",
        "recmodel.kd.inner_size=32",
    ]
    return load_config("configs/tiny.yaml", base + list(overrides))
