"""Print a config fully resolved, as YAML, each value with the file that set it.

    python -m src.show_config --config configs/games.yaml [--set key=value ...]
    bash shell/show_config.sh configs/games.yaml [--profile full] [--set key=value ...]

Every leaf is followed by ``# from <file>`` (the YAML file of the ``base:`` chain that set
it last), ``# --set`` (a command-line override) or ``# default`` (the dataclass default in
core/config.py). The output is valid YAML: ``yaml.safe_load`` of it gives the resolved
values, so a user sees exactly what a run of that config will do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from core.config import PROV_DEFAULT, PROV_OVERRIDE, REPO_ROOT, Config, load_config

#: comments start at this column at most (longer lines put theirs two spaces after)
COMMENT_COLUMN = 56


def _where(label: str | None) -> str:
    """The comment text for one leaf's provenance label."""
    if not label or label == PROV_DEFAULT:
        return "default"
    if label == PROV_OVERRIDE:
        return "--set"
    p = Path(label)
    try:
        p = p.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return f"from {p}"


def _scalar(value: Any) -> str:
    """One value as a YAML flow scalar / list / mapping that fits on one line."""
    text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    assert text.startswith("[") and text.endswith("]"), text
    return text[1:-1]


def _lines(data: dict, cls: type, provenance: dict[str, str], prefix: str, indent: int) -> list[tuple[str, str]]:
    """(text, comment) per output line; a dataclass section is a header line, then its keys."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str]] = []
    pad = "  " * indent
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            out.append((f"{pad}{key}:", ""))
            out += _lines(value, sub, provenance, name, indent + 1)
        else:
            out.append((f"{pad}{key}: {_scalar(value)}", _where(provenance.get(name))))
    return out


def render(cfg: Config, provenance: dict[str, str], header: str = "") -> str:
    """The resolved config as commented YAML (see the module docstring)."""
    data = dataclasses.asdict(cfg)
    data.pop("source_file", None)
    lines = _lines(data, Config, provenance, "", 0)
    col = min(COMMENT_COLUMN, max(len(text) for text, note in lines if note) + 2)
    out = [f"# {line}" for line in header.splitlines()]
    for text, note in lines:
        out.append(f"{text.ljust(col - 2)}  # {note}" if note else text)
    return "\n".join(out) + "\n"


def show(config: str, overrides: list[str] | None = None) -> str:
    """Load ``config`` with ``overrides`` and render it with its provenance."""
    prov: dict[str, str] = {}
    cfg = load_config(config, overrides, provenance=prov)
    src = _where(cfg.source_file).removeprefix("from ")
    header = f"resolved config of {src}"
    if overrides:
        header += " with --set " + " --set ".join(overrides)
    header += (
        "\neach value: the file that set it, '--set' for an override, 'default' for the"
        " dataclass default in core/config.py"
    )
    return render(cfg, prov, header)


def main(argv: list[str] | None = None) -> int:
    from core.utils import run_stage

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ml100k.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )
    args = parser.parse_args(argv)
    return run_stage(lambda: sys.stdout.write(show(args.config, args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
