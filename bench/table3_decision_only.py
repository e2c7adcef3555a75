"""How much of the recommender's score an explanation's stated decision alone carries (Table 3).

    python bench/table3_decision_only.py [--config configs/ml100k.yaml] [--folds 5] [--set key=value ...]

Table 3 fine-tunes a BERT-family score predictor on each method's explanations. With the CPU
profiles' 64 training explanations per fitting that predictor is itself a noisy instrument:
on the long profile's second training seed it underfit (training loss 0.80-0.83 of the
standardised target's variance) and read nothing (0.96x the mean predictor, cross-fitted),
although those explanations state the recommender's decision in 85% of cases. This bench
separates the two: it scores, on the same cross-fitted folds as ``discriminator.reg_folds``
(`discriminator.run_reg.fold_of`), two text-blind-but-one predictors beside the mean:

* decision only: the mean score of the training folds' explanations that state the same first
  yes/no decision (``core.metrics.decision_of``: Yes / No / none), i.e. what a score predictor
  that learnt nothing but the decision would reach;
* prompt label only: the mean score of the training folds' pairs with the same label (the
  recommender's own positive / negative), the most any yes/no reading can reach.

Reads ``discriminator/datasets/reg_<method>_{train,test}.jsonl`` of the run (python -m
discriminator.data_gen writes them); writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import add_config_args, config_from_args  # noqa: E402
from core.metrics import decision_of, regression_metrics  # noqa: E402
from core.utils import read_json, read_jsonl  # noqa: E402
from discriminator.files import data_dir  # noqa: E402
from discriminator.run_reg import fold_of  # noqa: E402


def cross_fitted_group_means(y: np.ndarray, groups: list, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's prediction: the mean score of its group in the other folds (the other
    folds' mean where its group is absent there), and that mean itself (the baseline)."""
    g = np.array(groups, dtype=object)
    pred, base = np.empty(len(y)), np.empty(len(y))
    for k in np.unique(fold):
        fit, held = fold != k, np.flatnonzero(fold == k)
        base[held] = y[fit].mean()
        by_group = {v: y[fit & (g == v)].mean() for v in set(g[fit])}
        pred[held] = [by_group.get(v, base[held[0]]) for v in g[held]]
    return pred, base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--folds", type=int, default=5, help="cross-fitting folds (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    dd = data_dir(cfg)
    stats = read_json(dd / "stats.json", what="discriminator data (python -m discriminator.data_gen)")
    print(f"{dd}: cross-fitted over {args.folds} folds; MSE / mean predictor [95% paired bootstrap]")
    for method in stats.get("reg_methods") or []:
        rows = [r for part in ("train", "test")
                for r in read_jsonl(dd / f"reg_{method}_{part}.jsonl", what=f"score predictor data of {method}")]
        y = np.array([float(r["score"]) for r in rows])
        fold = fold_of(rows, args.folds, cfg.discriminator.seed)
        decisions = [decision_of(r["text"]) for r in rows]
        labels = ["pos" if r["id"].endswith("-pos") else "neg" if r["id"].endswith("-neg") else None for r in rows]
        print(f"{method} ({len(rows)} pairs; decisions {dict(Counter(str(d) for d in decisions))})")
        for name, groups in (("decision only", decisions), ("prompt label only", labels)):
            if name == "prompt label only" and None in labels:
                print(f"  {name:18s} n/a (ids without a -pos / -neg suffix)")
                continue
            m = regression_metrics(y, *cross_fitted_group_means(y, groups, fold), seed=cfg.discriminator.seed)
            lo, hi = m["mse_ratio_ci95"]
            print(f"  {name:18s} {m['mse_ratio']:.2f} [{lo:.2f}, {hi:.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
