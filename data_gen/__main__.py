"""``python -m data_gen --config X.yaml [--set key=value] [--force]``: build every task file.

See data_gen/pipeline.py for what is written where and why.
"""

from __future__ import annotations

import argparse
import sys

from core.config import add_config_args, config_from_args
from core.utils import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_gen",
        description="Alignment tasks 1-6 and explanation prompts (behaviour/intention/hybrid) -> tasks/*.json",
    )
    add_config_args(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        from data_gen.pipeline import run

        run(cfg, force=args.force)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
