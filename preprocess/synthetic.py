"""A small synthetic MovieLens dataset in RecBole atomic format, made by code.

Why: tests and the CI end-to-end run need a dataset with no network, and it has to be
*learnable* so that a recommender trained on it beats popularity and an LLM aligned to
it has something to align to. The structure is simple and known:
- items come in genre blocks (block g holds items of genre g, each with one extra genre);
- every user has one or two favourite genres and mostly stays in them;
- within a block, item i is usually followed by item i+1 (wrapping inside the block),
  so the next item is predictable from the last one, which is what SASRec picks up.

Usage: python -m preprocess.synthetic --config configs/tiny.yaml [--force]
Writes cfg.dataset_raw_dir/<files.inter> and <files.item>; deterministic in dataset.seed.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

from core.config import Config, config_stage_main
from core.utils import StageError, atomic_open

log = logging.getLogger(__name__)

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
_ADJ = [
    "Silent", "Crimson", "Last", "Hidden", "Golden", "Broken", "Endless", "Wild", "Frozen",
    "Midnight", "Lost", "Burning", "Velvet", "Iron", "Secret", "Distant", "Electric", "Quiet",
]
_NOUN = [
    "Harbor", "Empire", "Garden", "Signal", "River", "Voyage", "Kingdom", "Mirror", "Storm",
    "Orchard", "Horizon", "Circus", "Lantern", "Frontier", "Canyon", "Symphony", "Station",
]
#: a few non-ASCII titles so every stage is exercised on Unicode text
_UNICODE = ["Café Noir", "Amélie's Garden", "Señor Tormenta", "Über den Wolken", "Noël à Paris", "Ça Ira"]
#: mostly-follow-the-chain probabilities: next in block, other favourite-genre item, anything
P_NEXT, P_FAV = 0.6, 0.25


def _titles(n: int, rng: random.Random) -> list[str]:
    pool = [f"The {a} {b}" for a in _ADJ for b in _NOUN]
    rng.shuffle(pool)
    titles = list(_UNICODE[: max(0, min(len(_UNICODE), n // 10))])
    titles += pool[: n - len(titles)]
    if len(titles) < n:
        titles += [f"Untitled Feature {k}" for k in range(n - len(titles))]
    rng.shuffle(titles)
    return titles


def generate(n_users: int, n_items: int, seed: int) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, str, int, list[str]]]]:
    """Return (events [(user, item, rating, timestamp)], items [(item, title, year, genres)])."""
    if n_items < len(GENRES) * 3 or n_users < 3:
        raise StageError(f"synthetic dataset needs >= {len(GENRES) * 3} items and >= 3 users, got {n_items}/{n_users}")
    rng = random.Random(seed)
    block = n_items // len(GENRES)
    genre_of = {i: min((i - 1) // block, len(GENRES) - 1) for i in range(1, n_items + 1)}
    members: dict[int, list[int]] = {g: [i for i in genre_of if genre_of[i] == g] for g in range(len(GENRES))}
    titles = _titles(n_items, rng)
    items = []
    for i in range(1, n_items + 1):
        g = genre_of[i]
        extra = rng.choice([x for x in range(len(GENRES)) if x != g])
        items.append((i, titles[i - 1], rng.randint(1960, 2020), [GENRES[g], GENRES[extra]]))

    seqs: list[list[int]] = []
    for _u in range(n_users):
        favs = rng.sample(range(len(GENRES)), k=rng.choice([1, 1, 2]))
        fav_items = [i for g in favs for i in members[g]]
        length = rng.randint(8, 20)
        seq = [rng.choice(fav_items)]
        while len(seq) < length:
            last = seq[-1]
            blk = members[genre_of[last]]
            r = rng.random()
            if r < P_NEXT:
                cand = blk[(blk.index(last) + 1) % len(blk)]
            elif r < P_NEXT + P_FAV:
                cand = rng.choice(fav_items)
            else:
                cand = rng.randint(1, n_items)
            if cand in seq:
                unseen = [i for i in fav_items if i not in seq] or [i for i in range(1, n_items + 1) if i not in seq]
                cand = rng.choice(unseen)
            seq.append(cand)
        seqs.append(seq)
    # every item must occur at least once, so that "keep all items" holds
    used = {i for s in seqs for i in s}
    for i in range(1, n_items + 1):
        if i not in used:
            seqs[i % n_users].append(i)

    events = []
    for u, seq in enumerate(seqs, 1):
        t = 880_000_000 + rng.randint(0, 20_000_000)
        for i in seq:
            t += rng.randint(60, 86_400)
            events.append((u, i, rng.randint(3, 5), t))
    rng.shuffle(events)  # raw files are not sorted; preprocessing sorts by time
    return events, items


def write_synthetic(cfg: Config, force: bool = False) -> list[Path]:
    """Write the .inter/.item files of cfg's synthetic dataset (skips existing unless force)."""
    files = cfg.dataset.files
    if "inter" not in files or "item" not in files:
        raise StageError(f"{cfg.source_file}: dataset.files needs 'inter' and 'item' for the synthetic dataset")
    inter = cfg.dataset_raw_dir / files["inter"]
    item = cfg.dataset_raw_dir / files["item"]
    if inter.is_file() and item.is_file() and not force:
        log.info("synthetic raw files exist in %s; skipping (use --force to redo)", cfg.dataset_raw_dir)
        return [inter, item]
    events, items = generate(cfg.dataset.synthetic_users, cfg.dataset.synthetic_items, cfg.dataset.seed)
    with atomic_open(item) as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for iid, title, year, genres in items:
            f.write(f"{iid}\t{title}\t{year}\t{' '.join(genres)}\n")
    with atomic_open(inter) as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, r, t in events:
            f.write(f"{u}\t{i}\t{r}\t{t}\n")
    log.info("wrote synthetic dataset: %d users, %d items, %d events -> %s",
             cfg.dataset.synthetic_users, len(items), len(events), cfg.dataset_raw_dir)
    return [inter, item]


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: write_synthetic(cfg, force=args.force),
                             prog="python -m preprocess.synthetic")


if __name__ == "__main__":
    sys.exit(main())
