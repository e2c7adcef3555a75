"""Fixtures for the data_gen tests: a small canonical dataset and recommender exports in
exactly the formats of DESIGN.md, made by code (no other stage is run)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.config import Config, load_config

N_ITEMS = 30
N_USERS = 14
MAX_SEQ_LEN = 10  # recmodel.max_seq_len of configs/tiny.yaml


def make_items(rng: random.Random) -> list[dict]:
    """Items with a mix of available fields; some fields are absent on purpose."""
    genres = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]
    items = []
    for k in range(1, N_ITEMS + 1):
        it: dict = {"iid": k, "title": f"Film {k:02d} ({1980 + k})"}
        if k % 3 != 0:
            it["description"] = f"A story number {k} about " + "something long enough to be kept " * 3
        if k % 4 == 0:
            it["genres"] = rng.sample(genres, 2)  # MovieLens-style: tags fall back to genres
        elif k % 4 == 1:
            it["tags"] = [f"tag{k}", "classic"]
        if k % 5 == 0:
            it["brand"] = f"Studio {k % 3}"
        if k % 2 == 0:
            it["feature"] = [f"feature {k}a", f"feature {k}b"]
        items.append(it)
    return items


def make_sequences(rng: random.Random) -> dict[int, list[int]]:
    seqs: dict[int, list[int]] = {}
    for u in range(1, N_USERS + 1):
        seqs[u] = rng.sample(range(1, N_ITEMS + 1), rng.randint(6, 13))
    used = {i for s in seqs.values() for i in s}
    # every item must occur somewhere (load_canonical checks it)
    for i in sorted(set(range(1, N_ITEMS + 1)) - used):
        seqs[1 + i % N_USERS].insert(0, i)
    return seqs


def top_row(rng: random.Random, uid: int, seq: list[int], p: int) -> dict:
    """A recommender export row for target position p, with a fake but consistent ranking."""
    history = seq[:p][-MAX_SEQ_LEN:]
    pool = [i for i in range(1, N_ITEMS + 1) if i not in seq[:p]]
    ranking = rng.sample(pool, len(pool))  # the "model's" full order of non-history items
    cands = sorted(rng.sample(pool, 5), key=ranking.index)
    k = len(ranking)
    pos = rng.choice(ranking[: max(1, k // 5)])
    neg = rng.choice(ranking[k // 2:])
    return {"uid": uid, "history": history, "target": seq[p], "top": ranking[:20], "rank_candidates": cands,
            "pos": pos, "neg": neg, "pos_score": round(5.0 - ranking.index(pos) * 0.1, 4),
            "neg_score": round(-1.0 - ranking.index(neg) * 0.01, 4)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_root(root: Path, seed: int = 0) -> dict:
    """Write data/ and recmodel/ under `root`; return what was written, for assertions."""
    rng = random.Random(seed)
    items = make_items(rng)
    seqs = make_sequences(rng)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "sequences.txt").write_text(
        "".join(f"{u} " + " ".join(map(str, s)) + "\n" for u, s in sorted(seqs.items())), encoding="utf-8")
    write_jsonl(data / "items.jsonl", items)
    (data / "dataset.json").write_text(json.dumps({
        "name": "tiny", "n_users": len(seqs), "n_items": len(items),
        "n_interactions": sum(len(s) for s in seqs.values())}), encoding="utf-8")
    rec = root / "recmodel"
    tops = {
        "train": [top_row(rng, u, s, p) for u, s in sorted(seqs.items()) for p in range(1, len(s) - 2)],
        "valid": [top_row(rng, u, s, len(s) - 2) for u, s in sorted(seqs.items())],
        "test": [top_row(rng, u, s, len(s) - 1) for u, s in sorted(seqs.items())],
    }
    for split, rows in tops.items():
        write_jsonl(rec / f"{split}_top.jsonl", rows)
    sim = {str(i): rng.sample([j for j in range(1, N_ITEMS + 1) if j != i], 5) for i in range(1, N_ITEMS + 1)}
    (rec / "item_sim.json").write_text(json.dumps(sim), encoding="utf-8")
    titles = [""] + [it["title"] for it in items]
    return {"items": items, "seqs": seqs, "tops": tops, "sim": {int(k): v for k, v in sim.items()}, "titles": titles}


def tiny_config(root: Path, *overrides: str) -> Config:
    return load_config("configs/tiny.yaml", [f"paths.root={root}", f"paths.raw_dir={root / 'raw'}",
                                             "recmodel.max_seq_len=10", *overrides])


def sharegpt_fixture() -> list[dict]:
    """ShareGPT_V3_unfiltered_cleaned_split.json format, one case per filtering rule."""
    def conv(cid: str, *turns: tuple[str, str]) -> dict:
        return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}

    return [
        conv("good1", ("human", "What is 2+2?"), ("gpt", "4.")),
        conv("good2", ("human", "Name a color."), ("gpt", "Blue."), ("human", "Another?"), ("gpt", "Red.")),
        conv("trailing_human", ("human", "Hi"), ("gpt", "Hello!"), ("human", "Bye?")),
        conv("starts_gpt", ("gpt", "I start."), ("human", "Odd."), ("gpt", "Yes.")),
        conv("double_human", ("human", "A"), ("human", "B"), ("gpt", "C")),
        conv("system_role", ("system", "Be nice."), ("human", "Hi"), ("gpt", "Hey")),
        conv("empty_value", ("human", "Q"), ("gpt", "  ")),
        conv("too_long", ("human", "x" * 500), ("gpt", "ok")),
        conv("single_turn", ("human", "Only me")),
        {"id": "no_conv"},
        conv("good3", ("human", "Translate 'chat'."), ("gpt", "cat")),
        conv("bing_role", ("human", "Hi"), ("bing", "Hello")),
    ]
