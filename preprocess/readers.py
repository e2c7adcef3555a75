"""Readers: each raw source -> one `RawData` (events in file order + item metadata).

Every reader is strict about structure (a line it cannot parse is a StageError naming the
file and line, because a silently dropped row would change the dataset without anyone
noticing) and lenient only where skipping is the documented behaviour (an item with no
title, a Steam game without an id): those are counted in `RawData.skipped` and logged.

Supported layouts (roles are the keys of `dataset.files`):
- movielens, RecBole atomic: ``inter`` (.inter) + ``item`` (.item), tab-separated with a
  typed header (``user_id:token  item_id:token  rating:float  timestamp:float``).
- movielens, GroupLens original: ``data`` (u.data) + ``item`` (u.item, latin-1, ``|``),
  optional ``genre`` (u.genre).
- amazon (2018 / v2): ``reviews`` (``*_5.json.gz``) + ``meta`` (``meta_*.json.gz``); lines are
  JSON objects or Python literals (both occur in the published files).
- steam (SASRec version): ``reviews`` (steam_reviews.json.gz) + ``games``
  (steam_games.json.gz), Python-literal dict lines.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import Config
from core.utils import StageError

log = logging.getLogger(__name__)

#: genre order of the GroupLens u.item flag columns (used when u.genre is absent)
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

_TAG_RE = re.compile(r"<[^>]+>")
_WS_RE = re.compile(r"\s+")
_TITLE_YEAR_RE = re.compile(r"^(.*\S)\s*\((\d{4})\)\s*$")
_YEAR_RE = re.compile(r"\b(1[89]\d{2}|20\d{2})\b")


@dataclass
class RawData:
    """One raw source after reading, before any filtering.

    `users`/`items_in_events`/`times` are parallel lists, one entry per event, in file
    order (the order breaks timestamp ties, so equal-time events keep their file order).
    `items` maps the raw item id to its cleaned metadata (keys of items.jsonl, no iid).
    """

    users: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    ratings: list[float] | None = None
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def add(self, user: str, item: str, ts: float, rating: float | None = None) -> None:
        self.users.append(user)
        self.item_ids.append(item)
        self.times.append(ts)
        if self.ratings is not None:
            self.ratings.append(0.0 if rating is None else rating)

    def skip(self, reason: str, where: str = "") -> None:
        """Count a documented skip; the first few are logged with their location."""
        self.skipped[reason] += 1
        if self.skipped[reason] <= 3 and where:
            log.warning("skipping %s (%s)", reason, where)


# --------------------------------------------------------------------------- line IO


def iter_lines(path: Path, encoding: str = "utf-8", whole_lines: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) from a plain or gzip text file.

    A truncated/corrupt gzip or undecodable text is a StageError naming the file and the
    last good line, instead of the EOFError/zlib.error traceback Python would give.

    `whole_lines` is for delimited files (``.inter``, ``u.data``, ``u.item``): a download
    cut mid-line there still splits into the right number of fields (``196\t242\t3\t8812``,
    the timestamp cut short) and would be read as data, so a last line without its
    newline is an error. JSON-lines files do not need it: a cut record does not parse.
    """
    if not path.is_file():
        raise StageError(f"missing raw file: {path}")
    gz = path.suffix == ".gz"
    lineno = 0
    try:
        opener = gzip.open(path, "rt", encoding=encoding) if gz else open(path, encoding=encoding)
        with opener as f:
            for lineno, line in enumerate(f, 1):
                if whole_lines and not line.endswith("\n") and line.strip():
                    raise StageError(
                        f"{path}:{lineno}: the file ends in the middle of line {lineno} (no newline after "
                        f"{line[-40:]!r}): a cut download or copy? Fetch it again (python -m preprocess.fetch); "
                        "if the file is complete, end it with a newline"
                    )
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise StageError(
            f"{path}: truncated or corrupt gzip file (read {lineno} complete lines): {e}; "
            "delete it and fetch it again (python -m preprocess.fetch)"
        ) from None
    except UnicodeDecodeError as e:
        # text mode decodes ahead in chunks, so the error may come before the lines around it
        # are yielded: find the line in the bytes
        bad = _first_undecodable_line(path, encoding, gz) or lineno + 1
        raise StageError(f"{path}:{bad}: not valid {encoding} text ({e.reason})") from None


def _first_undecodable_line(path: Path, encoding: str, gz: bool) -> int | None:
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return lineno
    return None


def parse_record(line: str, path: Path, lineno: int) -> dict[str, Any]:
    """One JSON object or Python-literal dict per line (Amazon and Steam use both)."""
    text = line.strip()
    obj: Any = None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            try:
                obj = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                obj = None
    if not isinstance(obj, dict):
        raise StageError(
            f"{path}:{lineno}: malformed line, expected a JSON object or Python dict literal: {text[:80]!r}"
        )
    return obj


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line of a JSON/Python-literal lines file."""
    for lineno, line in tqdm(iter_lines(path), desc=f"read {path.name}", unit=" lines", mininterval=2, leave=False):
        if line.strip():
            yield lineno, parse_record(line, path, lineno)


def _field(rec: dict, key: str, path: Path, lineno: int) -> Any:
    if key not in rec or rec[key] in (None, ""):
        raise StageError(f"{path}:{lineno}: required field '{key}' missing (fields: {', '.join(sorted(map(str, rec)))})")
    return rec[key]


def _number(value: Any, what: str, path: Path, lineno: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StageError(f"{path}:{lineno}: {what} must be a number, got {value!r}") from None


# --------------------------------------------------------------------------- text cleaning


def clean_text(value: Any) -> str:
    """HTML entities decoded, tags dropped, whitespace collapsed (Amazon meta has all three)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    text = html.unescape(str(value))
    text = _TAG_RE.sub(" ", text)
    return _WS_RE.sub(" ", text).strip()


def clean_list(values: Any) -> list[str]:
    """A list of cleaned, non-empty, de-duplicated strings (order kept)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        t = clean_text(v)
        if t and t not in out:
            out.append(t)
    return out


def strip_punctuation(text: str) -> str:
    """Drop apostrophes, turn other Unicode punctuation into spaces, collapse whitespace."""
    chars = []
    for ch in text:
        if ch in "'’`":
            continue
        chars.append(" " if unicodedata.category(ch).startswith("P") else ch)
    return _WS_RE.sub(" ", "".join(chars)).strip()


def finish_item(meta: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Apply the text options to one item's metadata and drop empty fields.

    Runs before filtering so that a title that is empty after cleaning counts as missing.
    """
    d = cfg.dataset
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, list):
            value = clean_list(value)
            if d.strip_punct:
                value = [v for v in (strip_punctuation(x) for x in value) if v]
        elif isinstance(value, str):
            value = clean_text(value)
            if d.strip_punct:
                value = strip_punctuation(value)
        if value in ("", [], None):
            continue
        out[key] = value
    title = out.get("title", "")
    if title and d.max_title_chars and len(title) > d.max_title_chars:
        out.pop("title")
    return out


def _year(*candidates: Any) -> int | None:
    for c in candidates:
        if c is None:
            continue
        m = _YEAR_RE.search(str(c))
        if m:
            return int(m.group(1))
    return None


# --------------------------------------------------------------------------- MovieLens


def _atomic_header(path: Path, line: str, need: list[str]) -> dict[str, int]:
    """Column index by field name from a RecBole typed header (``name:type``)."""
    cols = [c.split(":", 1)[0].strip() for c in line.rstrip("\n").split("\t")]
    idx = {name: k for k, name in enumerate(cols)}
    missing = [n for n in need if n not in idx]
    if missing:
        raise StageError(f"{path}:1: header lacks column(s) {missing} (header: {line.strip()!r})")
    return idx


def read_movielens_atomic(inter: Path, item: Path, cfg: Config) -> RawData:
    """RecBole atomic files: `.inter` (user_id, item_id, [rating], timestamp) + `.item`."""
    raw = RawData(ratings=[], files=[inter, item])
    lines = iter_lines(item, whole_lines=True)
    header = next(lines, None)
    if header is None:
        raise StageError(f"{item}: empty file")
    idx = _atomic_header(item, header[1], ["item_id", "movie_title"])
    n_cols = len(header[1].rstrip("\n").split("\t"))
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != n_cols:
            raise StageError(f"{item}:{lineno}: expected {n_cols} tab-separated fields, got {len(parts)}")
        iid = parts[idx["item_id"]].strip()
        if not iid:
            raise StageError(f"{item}:{lineno}: empty item_id")
        genres = parts[idx["class"]].split() if "class" in idx else []
        meta: dict[str, Any] = {"title": parts[idx["movie_title"]]}
        year = _year(parts[idx["release_year"]]) if "release_year" in idx else None
        if year:
            meta["year"] = year
        meta["genres"] = genres
        meta["tags"] = list(genres)
        if iid in raw.items:
            raw.skip("duplicate item row (first kept)", f"{item}:{lineno}")
            continue
        raw.items[iid] = finish_item(meta, cfg)

    lines = iter_lines(inter, whole_lines=True)
    header = next(lines, None)
    if header is None:
        raise StageError(f"{inter}: empty file")
    idx = _atomic_header(inter, header[1], ["user_id", "item_id", "timestamp"])
    n_cols = len(header[1].rstrip("\n").split("\t"))
    has_rating = "rating" in idx
    for lineno, line in tqdm(lines, desc=f"read {inter.name}", unit=" lines", mininterval=2, leave=False):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != n_cols:
            raise StageError(f"{inter}:{lineno}: expected {n_cols} tab-separated fields, got {len(parts)}")
        user, iid = parts[idx["user_id"]].strip(), parts[idx["item_id"]].strip()
        if not user or not iid:
            raise StageError(f"{inter}:{lineno}: empty user_id or item_id")
        ts = _number(parts[idx["timestamp"]], "timestamp", inter, lineno)
        rating = _number(parts[idx["rating"]], "rating", inter, lineno) if has_rating else None
        raw.add(user, iid, ts, rating)
    return raw


def read_movielens_grouplens(data: Path, item: Path, cfg: Config, genre: Path | None = None) -> RawData:
    """GroupLens original layout: u.data (tab) + u.item (latin-1, `|`, 19 genre flags).

    Titles there carry the year ("Toy Story (1995)"); it is moved to `year` so that both
    MovieLens layouts give the same canonical items.
    """
    raw = RawData(ratings=[], files=[data, item] + ([genre] if genre else []))
    genres = list(ML100K_GENRES)
    if genre is not None and genre.is_file():
        genres = []
        for lineno, line in iter_lines(genre, "latin-1"):
            if line.strip():
                name, _, pos = line.strip().partition("|")
                if not pos.isdigit() or int(pos) != len(genres):
                    raise StageError(f"{genre}:{lineno}: expected 'name|{len(genres)}', got {line.strip()!r}")
                genres.append(name)
    n_fixed = 5
    for lineno, line in iter_lines(item, "latin-1", whole_lines=True):
        if not line.strip():
            continue
        parts = line.rstrip("\n").rstrip("\r").split("|")
        if len(parts) != n_fixed + len(genres):
            raise StageError(
                f"{item}:{lineno}: expected {n_fixed + len(genres)} '|'-separated fields, got {len(parts)}"
            )
        iid = parts[0].strip()
        title = parts[1].strip()
        year = None
        m = _TITLE_YEAR_RE.match(title)
        if m:
            title, year = m.group(1), int(m.group(2))
        year = year or _year(parts[2])
        flags = parts[n_fixed:]
        if any(f not in ("0", "1") for f in flags):
            raise StageError(f"{item}:{lineno}: genre flags must be 0/1, got {flags}")
        g = [name for name, f in zip(genres, flags) if f == "1"]
        meta: dict[str, Any] = {"title": title, "genres": g, "tags": list(g)}
        if year:
            meta["year"] = year
        if iid in raw.items:
            raw.skip("duplicate item row (first kept)", f"{item}:{lineno}")
            continue
        raw.items[iid] = finish_item(meta, cfg)

    for lineno, line in tqdm(iter_lines(data, whole_lines=True), desc=f"read {data.name}", unit=" lines", mininterval=2, leave=False):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise StageError(f"{data}:{lineno}: expected 'user item rating timestamp', got {line.strip()!r}")
        user, iid = parts[0], parts[1]
        rating = _number(parts[2], "rating", data, lineno)
        ts = _number(parts[3], "timestamp", data, lineno)
        raw.add(user, iid, ts, rating)
    return raw


# --------------------------------------------------------------------------- Amazon


def read_amazon(reviews: Path, meta: Path, cfg: Config) -> RawData:
    """Amazon 2018 5-core reviews (reviewerID, asin, unixReviewTime) + product metadata."""
    raw = RawData(files=[reviews, meta])
    for lineno, rec in iter_records(meta):
        asin = str(_field(rec, "asin", meta, lineno)).strip()
        if asin in raw.items:
            # the 2018 meta files repeat some products; the first row is kept
            raw.skipped["duplicate meta row (first kept)"] += 1
            continue
        category = clean_list(rec.get("category"))
        # the first category is the store root shared by every item ("Video Games")
        tags = category[1:] if len(category) > 1 else category
        item: dict[str, Any] = {
            "title": rec.get("title", ""),
            "description": clean_text(rec.get("description")),
            "tags": tags,
            "brand": rec.get("brand", ""),
            "feature": rec.get("feature") or [],
            "year": _year(rec.get("date")),
        }
        raw.items[asin] = finish_item(item, cfg)

    for lineno, rec in iter_records(reviews):
        user = str(_field(rec, "reviewerID", reviews, lineno))
        asin = str(_field(rec, "asin", reviews, lineno))
        ts = _number(_field(rec, "unixReviewTime", reviews, lineno), "unixReviewTime", reviews, lineno)
        raw.add(user, asin, ts)
    return raw


# --------------------------------------------------------------------------- Steam


def _steam_date(value: Any, path: Path, lineno: int) -> float:
    try:
        return datetime.strptime(str(value).strip(), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise StageError(f"{path}:{lineno}: date must look like YYYY-MM-DD, got {value!r}") from None


def read_steam(reviews: Path, games: Path, cfg: Config) -> RawData:
    """SASRec-version Steam: reviews (username, product_id, date) + games (id, app_name, ...)."""
    raw = RawData(files=[reviews, games])
    for lineno, rec in iter_records(games):
        gid = rec.get("id")
        if gid in (None, ""):
            # a few catalogue rows have no id; nothing can refer to them
            raw.skip("game without id", f"{games}:{lineno}")
            continue
        gid = str(gid).strip()
        if gid in raw.items:
            raw.skipped["duplicate game row (first kept)"] += 1
            continue
        item: dict[str, Any] = {
            "title": rec.get("app_name") or rec.get("title") or "",
            "tags": rec.get("tags") or [],
            "genres": rec.get("genres") or [],
            "feature": rec.get("specs") or [],
            "brand": rec.get("developer") or rec.get("publisher") or "",
            "year": _year(rec.get("release_date")),
        }
        raw.items[gid] = finish_item(item, cfg)

    for lineno, rec in iter_records(reviews):
        user = str(_field(rec, "username", reviews, lineno))
        pid = str(_field(rec, "product_id", reviews, lineno)).strip()
        ts = _steam_date(_field(rec, "date", reviews, lineno), reviews, lineno)
        raw.add(user, pid, ts)
    return raw


# --------------------------------------------------------------------------- dispatch


def source_roles(cfg: Config) -> list[str]:
    """The `dataset.files` roles the configured source reads, in reading order.

    Only these roles are used: `files` is merged key by key through `base:` chains, so a
    profile built on ml100k.yaml still lists ML-100K's inter/item, which are ignored here.
    """
    source = cfg.dataset.source
    if source == "movielens":
        return ["data", "item"] if "data" in cfg.dataset.files else ["inter", "item"]
    if source == "amazon":
        return ["reviews", "meta"]
    if source == "steam":
        return ["reviews", "games"]
    raise StageError(
        f"{cfg.source_file or 'config'}: dataset.source must be movielens | amazon | steam, got {source!r}"
    )


def raw_paths(cfg: Config) -> dict[str, Path]:
    """The raw files the source reads, by role, resolved under cfg.dataset_raw_dir."""
    files = cfg.dataset.files
    missing = [r for r in source_roles(cfg) if not files.get(r)]
    if missing:
        raise StageError(
            f"{cfg.source_file or 'config'}: dataset.files needs role(s) {missing} for source "
            f"'{cfg.dataset.source}' (got {sorted(files)})"
        )
    return {role: cfg.dataset_raw_dir / files[role] for role in source_roles(cfg)}


def _need(cfg: Config, roles: list[str]) -> list[Path]:
    paths = raw_paths(cfg)
    out = [paths[r] for r in roles]
    for p in out:
        if not p.is_file():
            raise StageError(
                f"missing raw file: {p} (run: bash shell/download_data.sh {cfg.source_file or 'CONFIG'}, "
                "or place the file there by hand)"
            )
    return out


def read_raw(cfg: Config) -> RawData:
    """Read the configured source; the layout is chosen by source and the roles in `files`."""
    source = cfg.dataset.source
    roles = source_roles(cfg)
    paths = _need(cfg, roles)
    if source == "movielens" and roles[0] == "data":
        data, item = paths
        genre_name = cfg.dataset.files.get("genre")
        genre = cfg.dataset_raw_dir / genre_name if genre_name else data.parent / "u.genre"
        return read_movielens_grouplens(data, item, cfg, genre if genre.is_file() else None)
    if source == "movielens":
        return read_movielens_atomic(*paths, cfg)
    if source == "amazon":
        return read_amazon(*paths, cfg)
    return read_steam(*paths, cfg)
