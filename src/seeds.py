"""Table 1 over several training seeds: how much of a cell is one training run's luck.

    python -m src.seeds --config configs/ml100k.yaml --seeds 42,7,1 [--link]

One training run of an aligned variant moves its Table 1 cells by several points on the CPU
budget (README "Other training seeds"), so a single run cannot say whether two methods
differ. `bash shell/seeds.sh` retrains and re-evaluates the aligned variants with
``train.seed`` = S (which draws the training mix, the probe and the initialisation), each seed
in its own output root ``<root>_seed<S>`` that links the main run's data, recommender,
replay and task files, since no training seed changes them. The seed the config names is the
main run itself (its root as it is).

``--link`` creates those roots and prints one ``SEED ROOT`` line per seed (the shell script
reads them); without it, this writes ``tables/table1_seeds.md`` (+ ``.csv``) in the main root:
for every trained variant's Table 1 row (and its title-constrained / pointwise rows), mean
+- sample standard deviation over the seeds, then each seed's value. Every seed is scored on
the same evaluation records (``eval.sample_seed``), so the spread is the training runs' alone.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from core.config import Config, add_config_args, config_arg, config_from_args, load_config
from core.registry import TRAIN_TYPES, base_model_name, method_label
from core.tables import MISSING, NA, Cell, write_table
from core.utils import StageError, read_json, run_stage
from src.table1 import table1

log = logging.getLogger(__name__)

#: folders of the main root that a seed root links: what the stages before training write
#: (replay/ only where the config replays the base model's answers, data_gen.sharegpt_replay)
SHARED = ("data", "recmodel", "replay", "tasks")


def _shared(cfg: Config) -> list[str]:
    return [n for n in SHARED if n != "replay" or cfg.data_gen.sharegpt_replay > 0]


def parse_seeds(text: str) -> list[int]:
    """`--seeds 42,7,1` -> [42, 7, 1]: distinct integers, order kept (it is the cells' order)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise StageError(f"--seeds: expected comma-separated integers, e.g. 42,7,1; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise StageError(f"--seeds: expected distinct integers, e.g. 42,7,1; got {text!r}")
    return seeds


def seed_root(cfg: Config, seed: int) -> Path:
    """The output root of training seed `seed`: the main root for the config's own seed."""
    return cfg.root if seed == cfg.train.seed else cfg.root.with_name(f"{cfg.root.name}_seed{seed}")


def seed_config(cfg: Config, seed: int, overrides: list[str] | None = None) -> Config:
    """`cfg` (its file and `overrides`) with seed `seed`'s root and training seed."""
    return load_config(cfg.source_file, list(overrides or []) + [f"paths.root={seed_root(cfg, seed)}",
                                                                  f"train.seed={seed}"])


def same_records(cfg: Config, task_type: str) -> list[str]:
    """Settings (``--set`` values) under which a seed root trains `task_type` on as many records
    as the main run did. WHY: under ``pipeline.time_limit_s`` the main run kept what its time
    allowed (``meta.json`` ``time_budget.rows_kept``); a seed run sized anew by its own clock
    would differ in budget as well as in seed."""
    meta = cfg.llm_dir / task_type / "meta.json"
    if not meta.is_file():
        raise StageError(f"{meta}: missing; train the main run's {task_type} first "
                         f"(bash shell/run_all.sh {config_arg(cfg)}), then the seeds")
    plan = read_json(meta, "trained model metadata").get("time_budget") or {}
    sets = ["pipeline.time_limit_s=0"]
    if plan.get("rows_kept"):
        sets.append(f"train.max_train_samples_per_type.{task_type}={plan['rows_kept']}")
    return sets


def link_root(cfg: Config, seed: int) -> Path:
    """Create seed `seed`'s root with links to the main root's shared folders (idempotent)."""
    root = seed_root(cfg, seed)
    if root == cfg.root:
        return root
    links = [(root / name, cfg.root / name) for name in _shared(cfg)]
    for link, target in links:  # every check first: a refused root is left as it was
        if not target.is_dir():
            raise StageError(f"{target}: missing; run the main pipeline first "
                             f"(bash shell/run_all.sh {config_arg(cfg)}), then the seeds")
        if (link.exists() or link.is_symlink()) and not (link.is_symlink() and link.resolve() == target.resolve()):
            raise StageError(f"{link}: exists and is not a link to {target}; remove it or pick another seed")
    root.mkdir(parents=True, exist_ok=True)
    for link, target in links:
        if not link.is_symlink():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return root


def _summary(cells: list[Any]) -> Any:
    """One seeds cell: mean +- sd (each seed's value), N/A, or missing if any seed lacks it."""
    if all(c == NA for c in cells) or all(c == "" for c in cells):  # "": no such variant cell
        return cells[0]
    if not all(isinstance(c, Cell) for c in cells):
        return MISSING
    values = [c.value for c in cells]
    each = " / ".join(f"{v:.3f}" for v in values)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({each})"


def table1_seeds(cfg: Config, seeds: list[int], overrides: list[str] | None = None, split: str = "valid",
                 task_types: list[str] | None = None) -> tuple[list[list[Any]], list[str], list[str]]:
    """Rows, columns and notes of the seeds table: the trained variants' rows (`task_types`,
    default all; the rest of Table 1 does not depend on the training seed)."""
    labels = [method_label(t, cfg) for t in task_types or TRAIN_TYPES]
    per_seed: list[dict[str, list[Any]]] = []
    columns: list[str] = []
    missing: list[str] = []
    for seed in seeds:
        scfg = seed_config(cfg, seed, overrides)
        rows, columns, _ = table1(scfg, split)
        mine = {str(r[0]): r[1:] for r in rows if str(r[0]).split(" (")[0] in labels}
        per_seed.append(mine)
        if any(c == MISSING for r in mine.values() for c in r):
            missing.append(f"seed {seed} ({scfg.root}) lacks cells; "
                           f"bash shell/seeds.sh {config_arg(cfg)} --seeds {seed}"
                           + (f" --task_types {','.join(task_types)}" if task_types else ""))
    order = [name for name in per_seed[0] if all(name in s for s in per_seed)]
    out_rows = [[name] + [_summary([s[name][i] for s in per_seed]) for i in range(len(columns) - 1)]
                for name in order]
    notes = [f"Cells: mean ± sample standard deviation over {len(seeds)} training seed(s) "
             f"(train.seed = {', '.join(map(str, seeds))}), then each seed's value in that order. Every "
             f"seed is scored on the same evaluation records (eval.sample_seed = {cfg.eval.sample_seed}), "
             "so the spread is the training runs' alone; the 95% interval of one run is in Table 1. "
             f'"{MISSING}": a seed lacks the cell.'] + missing
    return out_rows, columns, notes


def report(cfg: Config, seeds: list[int], overrides: list[str] | None = None, split: str = "valid",
           task_types: list[str] | None = None) -> str:
    rows, columns, notes = table1_seeds(cfg, seeds, overrides, split, task_types)
    title = (f"Table 1 over training seeds ({cfg.dataset.name}; tasks/*_{split}.json; "
             f"LLM: {base_model_name(cfg)})")
    return write_table(cfg, "table1_seeds" if split == "valid" else f"table1_seeds_{split}",
                       rows, columns, title, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--seeds", required=True, help="training seeds, comma-separated (e.g. 42,7,1)")
    parser.add_argument("--link", action="store_true", help="create the seed roots; print 'SEED ROOT' lines")
    parser.add_argument("--split", choices=["valid", "test"], default="valid", help="evaluation split")
    parser.add_argument("--task_types", default="", help="variants to report, comma-separated (default: all)")
    parser.add_argument("--same_records", metavar="VARIANT", default="",
                        help="print the --set values that train VARIANT on the main run's record count")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        seeds = parse_seeds(args.seeds)
        if args.same_records:
            print("\n".join(same_records(cfg, args.same_records)))
            return
        if args.link:
            for seed in seeds:
                print(seed, link_root(cfg, seed))
            return
        types = [t for t in args.task_types.split(",") if t]
        unknown = [t for t in types if t not in TRAIN_TYPES]
        if unknown:
            raise StageError(f"--task_types: unknown variant {unknown[0]!r}; known: {', '.join(TRAIN_TYPES)}")
        print(report(cfg, seeds, args.overrides, args.split, types or None))
        log.info("wrote %s", cfg.tables_dir / "table1_seeds.md")

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
