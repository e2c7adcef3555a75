"""python -m preprocess --config X.yaml [--set k=v] [--force]: raw files -> canonical dataset."""

from __future__ import annotations

import argparse
import sys

from core.config import add_config_args, config_from_args
from core.utils import run_stage, set_seed

from .build import preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        set_seed(cfg.dataset.seed)
        preprocess(cfg, force=args.force)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
