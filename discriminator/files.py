"""Where the discriminator datasets live (what discriminator.data_gen writes and
discriminator.run_cls / run_reg read: stages meet through these files), and the fingerprint
that decides whether a fine-tuned model's metrics can be reused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.config import Config
from core.stamps import embedded_changes, fingerprint
from core.utils import StageError, read_json

log = logging.getLogger(__name__)

#: the discriminator settings a fine-tuned classifier / score predictor depends on (the data
#: settings are in the data files' digests; device and save_model change no number)
TRAINING_KEYS = tuple(f"discriminator.{k}" for k in (
    "encoder", "max_length", "epochs", "lr", "batch_size", "weight_decay", "warmup_ratio", "reg_standardize", "seed"))


def data_dir(cfg: Config) -> Path:
    # not "data": core.utils names the preprocess stage for a missing file under any "data" folder
    return cfg.discriminator_dir / "datasets"


def _require(paths: tuple[Path, ...]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise StageError(f"missing discriminator data {missing[0]} (written by python -m discriminator.data_gen; run it first)")


def model_fingerprint(cfg: Config, *paths: Path, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fingerprint of a model fine-tuned on the data files `paths`: their digests and
    the training settings (+ `extra_keys`), so that a changed lr or encoder retrains instead
    of reusing."""
    _require(paths)
    return fingerprint(cfg, TRAINING_KEYS + tuple(extra_keys), paths, base=cfg.root)


def reusable(metrics_path: Path, fp: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The metrics in `metrics_path` when they were made with fingerprint `fp`, else None
    (retrain; the log says what changed). Cheap stages retrain instead of stopping."""
    if force or not metrics_path.is_file():
        return None
    old = read_json(metrics_path)
    changes = embedded_changes(metrics_path, old, fp)
    if not changes:
        log.info("%s exists for the current data and settings; skipping (use --force to retrain)", metrics_path)
        return read_json(metrics_path)
    log.info("%s was made from other data or settings (%s); retraining", metrics_path, "; ".join(changes))
    return None
