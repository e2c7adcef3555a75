"""Turn a config's `pipeline` section into the stage list that `shell/run_all.sh` runs.

Printed as shell assignments (`eval "$(python -m src.pipeline_plan --config X)"`) so that
the shell script stays a flat, readable list of stages while the decisions (which methods
apply to which task, whether an API endpoint is there) live in one tested Python place.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from core.config import Config, ConfigError, add_config_args, config_from_args
from core.registry import API_METHODS, EMBEDDING_METHODS, EXPLAIN_METHODS, TABLE1_METHODS, TRAIN_TYPES

log = logging.getLogger(__name__)

KNOWN_TRAIN = set(TRAIN_TYPES)
KNOWN_ALIGN = {m.name for m in TABLE1_METHODS if m.kind != "baseline"}
KNOWN_EXPLAIN = set(EXPLAIN_METHODS)


def api_available(cfg: Config) -> bool:
    from core.api_client import ChatClient

    return ChatClient.available(cfg)


def plan(cfg: Config, api: bool | None = None) -> dict[str, list[str]]:
    """Stages to run: train types, alignment runs (method:mode,mode,...[:flag]), explanation
    runs (method:split,split,...)."""
    p = cfg.pipeline
    for key, values, known in (
        ("pipeline.train_types", p.train_types, KNOWN_TRAIN),
        ("pipeline.align_methods", p.align_methods, KNOWN_ALIGN),
        ("pipeline.explain_methods", p.explain_methods, KNOWN_EXPLAIN),
    ):
        bad = [v for v in values if v not in known]
        if bad:
            raise ConfigError(f"{cfg.source_file}: '{key}' has unknown method {bad[0]!r}; known: {sorted(known)}")
    if api is None:
        api = api_available(cfg)
    trained = set(p.train_types)

    def runnable(method: str) -> bool:
        if method in API_METHODS and not api:
            log.info("skipping %s: no OpenAI-compatible endpoint configured (see README, 'API endpoint')", method)
            return False
        if method in KNOWN_TRAIN and method not in trained:
            log.info("skipping %s: not in pipeline.train_types", method)
            return False
        return True

    # one run (one process, one model load) per method: its modes / splits comma-separated
    align: list[str] = []
    for method in p.align_methods:
        if not runnable(method):
            continue
        # uid2hist is N/A in Table 1 without a user embedding to reconstruct from
        modes = ",".join(m for m in p.align_modes if m != "uid2hist" or method in EMBEDDING_METHODS)
        if not modes:
            continue
        if method == "none_icl":
            align.append(f"none:{modes}:icl")
        elif method == "gpt4_icl":
            align.append(f"gpt4:{modes}:icl")
        else:
            align.append(f"{method}:{modes}")
    splits = ",".join(p.explain_splits)
    explain = [f"{m}:{splits}" for m in p.explain_methods if runnable(m)] if splits else []
    return {"TRAIN_TYPES": list(p.train_types), "ALIGN_RUNS": align, "EXPLAIN_RUNS": explain}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[plan] %(message)s")
    try:
        cfg = config_from_args(args)
        stages = plan(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ROOT={shlex.quote(str(cfg.root))}")
    for name, values in stages.items():
        print(f"{name}={shlex.quote(' '.join(values))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
