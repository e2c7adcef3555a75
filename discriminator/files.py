"""Where the discriminator datasets live and their fingerprint: what discriminator.data_gen
writes and discriminator.run_cls / run_reg read (stages meet through these files)."""

from __future__ import annotations

from pathlib import Path

from core.config import Config
from core.utils import StageError, sha256_file


def data_dir(cfg: Config) -> Path:
    # not "data": core.utils names the preprocess stage for a missing file under any "data" folder
    return cfg.discriminator_dir / "datasets"


def data_fingerprint(*paths: Path) -> str:
    """sha256 over data files: a trained model's metrics are reused only for the same data."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise StageError(f"missing discriminator data {missing[0]} (written by python -m discriminator.data_gen; run it first)")
    return "-".join(sha256_file(p)[:16] for p in paths)
