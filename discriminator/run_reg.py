"""Score predictors: how much of the recommender's score can be read from an explanation? (paper 3.4.2, Table 3)

``python -m discriminator.run_reg --config X [--methods both,none] [--force]``

For each method, fine-tunes ``discriminator.encoder`` with a one-output regression head
(MSE loss) from explanation text to the target recommender's score of that (user, item),
on ``discriminator/datasets/reg_<method>_train.jsonl``, and reports the MSE on the test part
(the same (user, item) pairs for every method). Lower MSE = the explanations carry more of
what the recommender predicted. Beside it: the MSE of always predicting the train mean,
the floor any text-blind predictor reaches.

With ``discriminator.reg_folds`` K >= 2 the train and test pairs are pooled and split into
K folds (the same folds for every method: by pair id), each fold scored by a predictor
fine-tuned on the other K-1, against the mean of those K-1 parts: every pair becomes a test
pair. WHY: with the CPU profiles' 80 explanations per method the paper's 4:1 split leaves 16
test pairs, on which one training seed moved RecExplainer-H from 0.46x to 0.87x the mean
predictor (cross-fitted over all 80: 0.56x and 0.96x); cross-fitting measures the same
predictor on five times the pairs for K times the fine-tuning.

Writes ``discriminator/reg/metrics.json`` (+ ``metrics_<method>.json``, ``pred_<method>.jsonl``)
and Table 3 to ``tables/table3.md`` / ``.csv`` (printed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from discriminator.files import data_dir, model_fingerprint, reusable
from discriminator.finetune import fine_tune_predict
from core.config import Config, add_config_args, config_from_args
from core.metrics import regression_metrics
from core.registry import EXPLAIN_METHODS
from core.tables import render_titled, with_interval
from core.utils import StageError, read_json, read_jsonl, run_stage, write_json, write_jsonl, write_text

log = logging.getLogger("discriminator.run_reg")


def out_dir(cfg: Config) -> Path:
    return cfg.discriminator_dir / "reg"


def _fit_predict(cfg: Config, train: list[dict], test: list[dict], work_dir: Path,
                 save_dir: Path | None) -> tuple[np.ndarray, float]:
    """Fine-tune on `train`, predict `test` in raw score units; also the train mean."""
    y = np.array([float(r["score"]) for r in train])
    mean, std = float(y.mean()), float(y.std())
    scale = std if (cfg.discriminator.reg_standardize and std > 1e-8) else 1.0
    shift = mean if cfg.discriminator.reg_standardize else 0.0
    raw = fine_tune_predict(
        cfg, [r["text"] for r in train], ((y - shift) / scale).tolist(), [r["text"] for r in test],
        num_labels=1, regression=True, work_dir=work_dir, save_dir=save_dir,
    )
    return raw * scale + shift, mean


def fold_of(rows: list[dict], folds: int, seed: int) -> np.ndarray:
    """Fold index of each row: a seeded KFold over the sorted pair ids, so that every method
    (whose files hold the same ids) is cross-fitted on the same folds."""
    from sklearn.model_selection import KFold

    ids = sorted(r["id"] for r in rows)
    index = {rid: k for k, rid in enumerate(ids)}
    by_id = np.empty(len(ids), dtype=int)
    for k, (_, part) in enumerate(KFold(n_splits=folds, shuffle=True, random_state=seed).split(ids)):
        by_id[part] = k
    return np.array([by_id[index[r["id"]]] for r in rows])


def train_method(cfg: Config, method: str, force: bool = False) -> dict[str, Any]:
    """One score predictor (or K cross-fitted ones); cached in metrics_<method>.json."""
    d = cfg.discriminator
    out = out_dir(cfg)
    path = out / f"metrics_{method}.json"
    dd = data_dir(cfg)
    files = (dd / f"reg_{method}_train.jsonl", dd / f"reg_{method}_test.jsonl")
    fp = model_fingerprint(cfg, *files, extra_keys=("discriminator.reg_folds",) if d.reg_folds else ())
    done = reusable(path, fp, force)
    if done is not None and "mse_ratio_ci95" not in done:
        # cached before Table 3 had intervals: they come from the saved predictions, no retraining
        rows = read_jsonl(out / f"pred_{method}.jsonl", what=f"score predictions of {method}")
        done.update(regression_metrics([r["score"] for r in rows], [r["pred"] for r in rows],
                                       [r.get("train_mean", done["target_mean"]) for r in rows], seed=d.seed))
        write_json(path, done)
    if done is not None:
        return done
    train = read_jsonl(files[0], what=f"score predictor data for {method}")
    test = read_jsonl(files[1], what=f"score predictor data for {method}")
    save_dir = out / f"model_{method}" if d.save_model else None
    if d.reg_folds:
        if d.reg_folds < 2 or d.reg_folds > len(train) + len(test):
            raise StageError(f"discriminator.reg_folds={d.reg_folds}: expected 0 (one train/test split) or 2 to "
                             f"{len(train) + len(test)} (the pairs of {method}) folds")
        scored = train + test
        fold = fold_of(scored, d.reg_folds, d.seed)
        pred, means = np.empty(len(scored)), np.empty(len(scored))
        for k in range(d.reg_folds):
            part = fold == k
            fit = [r for r, f in zip(scored, fold) if f != k]
            held = [r for r, f in zip(scored, fold) if f == k]
            pred[part], means[part] = _fit_predict(cfg, fit, held, out, save_dir / f"fold{k}" if save_dir else None)
            log.info("%s: fold %d/%d fitted on %d pairs, scored %d", method, k + 1, d.reg_folds, len(fit), len(held))
        fitted_on, n_train = scored, len(scored) - len(scored) // d.reg_folds
    else:
        scored, fold = test, None
        pred, mean = _fit_predict(cfg, train, test, out, save_dir)
        means, fitted_on, n_train = np.full(len(test), mean), train, len(train)
    y_test = np.array([float(r["score"]) for r in scored])
    scores = np.array([float(r["score"]) for r in fitted_on])
    metrics = {
        "method": method,
        **regression_metrics(y_test, pred, means, seed=d.seed),
        "n_train": n_train, "n_test": len(scored), "folds": d.reg_folds,
        "target_mean": float(scores.mean()), "target_std": float(scores.std()),
        "encoder": d.encoder, "standardized": bool(d.reg_standardize),
        "fingerprint": fp,
    }
    write_jsonl(out / f"pred_{method}.jsonl", (
        {"id": r["id"], "uid": r.get("uid"), "iid": r.get("iid"), "score": float(y), "pred": float(p),
         "train_mean": float(m), **({"fold": int(fold[k])} if fold is not None else {})}
        for k, (r, y, p, m) in enumerate(zip(scored, y_test, pred, means))))
    write_json(path, metrics)
    log.info("%s: test MSE %.4f (mean-predictor %.4f, ratio %.2f [%.2f, %.2f])", method, metrics["mse"],
             metrics["baseline_mse"], metrics["mse_ratio"], *metrics["mse_ratio_ci95"])
    return metrics


TABLE3_COLUMNS = ["Method", "MSE", "MSE of train mean", "MSE / mean [95% CI]", "Pearson r [95% CI]", "n train", "n test"]


def render_table3(results: dict[str, dict], display: dict[str, str], dataset: str) -> tuple[str, str]:
    rows = []
    for m, r in results.items():
        rows.append([display.get(m, m), f"{r['mse']:.4f}", f"{r['baseline_mse']:.4f}",
                     with_interval(r.get("mse_ratio"), r.get("mse_ratio_ci95"), 2),
                     with_interval(r.get("pearson"), r.get("pearson_ci95"), 2), str(r["n_train"]), str(r["n_test"])])
    title = (f"Table 3. Score predictors on {dataset}: MSE between the recommender's score and the score "
             "predicted from each method's explanation (lower is better; same test pairs for every method). "
             "MSE / mean: against always predicting the train mean, with a paired bootstrap 95% interval "
             "over the test pairs; r with its Fisher 95% interval.")
    folds = sorted({r.get("folds") or 0 for r in results.values()})
    if folds != [0]:
        title += (f" Cross-fitted (discriminator.reg_folds = {', '.join(map(str, folds))}): every pair is a test "
                  "pair, scored by a predictor fine-tuned on the other folds (n train: pairs per fitting).")
    return render_titled(title, rows, TABLE3_COLUMNS)


def run(cfg: Config, methods: list[str] | None = None, force: bool = False) -> dict[str, dict]:
    dd = data_dir(cfg)
    stats = read_json(dd / "stats.json", what="discriminator data (python -m discriminator.data_gen)")
    labels = read_json(dd / "labels.json", what="discriminator labels (python -m discriminator.data_gen)")
    available = stats.get("reg_methods") or []
    methods = methods or available
    unknown = [m for m in methods if m not in available]
    if unknown or not methods:
        raise StageError(
            f"{dd}: no score-predictor data for {', '.join(unknown) or 'any method'} (available: {available or 'none'}); "
            "generate their explanations, then python -m discriminator.data_gen --force"
        )
    order = {m: k for k, m in enumerate(EXPLAIN_METHODS)}
    methods = sorted(methods, key=lambda m: (order.get(m, len(order)), m))
    results = {m: train_method(cfg, m, force) for m in methods}
    write_json(out_dir(cfg) / "metrics.json", results)
    md, csv_text = render_table3(results, labels.get("display", {}), cfg.dataset.name)
    write_text(cfg.tables_dir / "table3.md", md)
    write_text(cfg.tables_dir / "table3.csv", csv_text)
    print(md)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every method with data)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        run(cfg, [m.strip() for m in args.methods.split(",") if m.strip()] or None, force=args.force)

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
