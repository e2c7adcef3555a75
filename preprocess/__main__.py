"""python -m preprocess --config X.yaml [--set k=v] [--force]: raw files -> canonical dataset."""

from __future__ import annotations

import argparse
import sys

from src.config import ConfigError, add_config_args, config_from_args
from src.utils import StageError, set_seed, setup_logging

from .build import preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = config_from_args(args)
        set_seed(cfg.dataset.seed)
        preprocess(cfg, force=args.force)
    except (StageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
