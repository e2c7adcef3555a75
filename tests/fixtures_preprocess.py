"""Raw-format fixtures made by code: RecBole atomic, GroupLens, Amazon 2018, Steam.

One small "world" of events is written in every layout, so tests can check that the
layouts agree and that each filtering step does what its key says.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from core.config import Config, load_config

# (user, item, rating, timestamp); u5 has 2 events only (below any k-core >= 3);
# u1 rates item 3 twice (duplicate event: the earlier one is kept)
EVENTS = [
    ("1", "1", 5, 100), ("1", "2", 4, 200), ("1", "3", 3, 300), ("1", "3", 5, 350), ("1", "4", 4, 400),
    ("2", "2", 5, 110), ("2", "3", 4, 210), ("2", "1", 3, 310), ("2", "4", 2, 410),
    ("3", "3", 4, 120), ("3", "4", 4, 220), ("3", "1", 5, 320), ("3", "2", 1, 420),
    ("4", "4", 3, 130), ("4", "1", 4, 230), ("4", "2", 5, 330), ("4", "3", 5, 430),
    ("5", "1", 4, 140), ("5", "5", 4, 240),
]
# item -> (title, year, genres); item 2's title is non-ASCII
ITEMS = {
    "1": ("Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
    "2": ("Misérables, Les", 1995, ["Drama", "Musical"]),
    "3": ("Heat", 1995, ["Action", "Crime"]),
    "4": ("Fargo", 1996, ["Crime", "Thriller"]),
    "5": ("Nixon", 1995, ["Drama"]),
}
GL_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def make_cfg(tmp: Path, *overrides: str) -> Config:
    """tiny.yaml with every path under `tmp` (plus `overrides`)."""
    return load_config("configs/tiny.yaml", [f"paths.root={tmp}/out", f"paths.raw_dir={tmp}/raw", *overrides])


def write_atomic(folder: Path, name: str = "ml", events=EVENTS, items=ITEMS) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, r, t in events:
            f.write(f"{u}\t{i}\t{r}\t{t}\n")
    with open(folder / f"{name}.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for i, (title, year, genres) in items.items():
            f.write(f"{i}\t{title}\t{year}\t{' '.join(genres)}\n")
    return [f"dataset.raw_subdir={folder.name}", "dataset.fetch=none",
            f"dataset.files={{inter: {name}.inter, item: {name}.item}}"]


def write_grouplens(folder: Path, events=EVENTS, items=ITEMS) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "u.data", "w", encoding="utf-8") as f:
        for u, i, r, t in events:
            f.write(f"{u}\t{i}\t{r}\t{t}\n")
    with open(folder / "u.item", "w", encoding="latin-1") as f:
        for i, (title, year, genres) in items.items():
            flags = "|".join("1" if g in genres else "0" for g in GL_GENRES)
            f.write(f"{i}|{title} ({year})|01-Jan-{year}||http://example.invalid/{i}|{flags}\n")
    with open(folder / "u.genre", "w", encoding="latin-1") as f:
        for k, g in enumerate(GL_GENRES):
            f.write(f"{g}|{k}\n")
    return [f"dataset.raw_subdir={folder.name}", "dataset.fetch=none", "dataset.files={data: u.data, item: u.item}"]


def write_gz_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def amazon_fixture(folder: Path, meta_as_literal: bool = True) -> list[str]:
    """Reviews as JSON lines; meta as Python-literal lines (or JSON). Item B0NOTITLE has no title."""
    reviews = []
    for u, i, _r, t in EVENTS:
        reviews.append(json.dumps({"overall": 5.0, "reviewerID": f"A{u}", "asin": f"B000{i}",
                                   "unixReviewTime": 1_400_000_000 + t, "reviewText": "ok"}))
    # an item without a title: its events are dropped and counted
    for u, t in (("1", 500), ("2", 510), ("3", 520)):
        reviews.append(json.dumps({"reviewerID": f"A{u}", "asin": "B0NOTITLE", "unixReviewTime": 1_400_000_000 + t}))
    metas = []
    for i, (title, year, genres) in ITEMS.items():
        rec = {"asin": f"B000{i}", "title": title + (" &amp; Friends" if i == "1" else ""),
               "description": ["<b>Great</b> game.", "Really."], "feature": ["Online play", "4K"],
               "brand": "Nintendo" if i != "4" else "", "category": ["Video Games", "PC", genres[0]],
               "date": f"June 1, {year}"}
        metas.append(repr(rec) if meta_as_literal else json.dumps(rec))
    metas.append(repr({"asin": "B0NOTITLE", "title": "", "category": ["Video Games"]}))
    write_gz_lines(folder / "Video_Games_5.json.gz", reviews)
    write_gz_lines(folder / "meta_Video_Games.json.gz", metas)
    return [f"dataset.raw_subdir={folder.name}", "dataset.source=amazon", "dataset.fetch=none",
            "dataset.files={reviews: Video_Games_5.json.gz, meta: meta_Video_Games.json.gz}"]


def steam_fixture(folder: Path) -> list[str]:
    """Python-literal reviews (username, product_id, date) + games, one game without id."""
    reviews = []
    for u, i, _r, t in EVENTS:
        day = 1 + t // 100
        reviews.append(repr({"username": f"gamer_{u}", "hours": 1.5, "product_id": f"7{i}",
                             "date": f"2017-0{min(day, 9)}-{10 + t % 100 // 10:02d}", "text": "fun 'quoted'"}))
    games = []
    for i, (title, year, genres) in ITEMS.items():
        games.append(repr({"publisher": "Valve", "genres": genres, "app_name": title, "title": title,
                           "release_date": f"{year}-03-04", "tags": genres + ["Indie"],
                           "specs": ["Single-player"], "id": f"7{i}", "developer": "Dev Studio"}))
    games.append(repr({"app_name": "Orphan", "genres": ["Action"]}))  # no id: skipped, counted
    write_gz_lines(folder / "steam_reviews.json.gz", reviews)
    write_gz_lines(folder / "steam_games.json.gz", games)
    return [f"dataset.raw_subdir={folder.name}", "dataset.source=steam", "dataset.fetch=none",
            "dataset.files={reviews: steam_reviews.json.gz, games: steam_games.json.gz}"]
