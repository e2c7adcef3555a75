"""Explanation classifier: can a model tell which LLM wrote an explanation? (paper 3.4.2, Figure 4)

``python -m discriminator.run_cls --config X [--force]``

Fine-tunes ``discriminator.encoder`` with a K-way head on ``discriminator/datasets/cls_train.jsonl``
and evaluates on ``cls_test.jsonl``. Writes to ``discriminator/cls/``: ``metrics.json``
(accuracy, per-class precision / recall / F1 / support from scikit-learn, the confusion
matrix), ``predictions.jsonl``, ``confusion.csv`` and ``confusion.png`` (Figure 4).
High accuracy means the aligned model's explanations are distinct from the unaligned
models' (the paper's reading of Figure 4).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from discriminator.files import data_dir, model_fingerprint, reusable
from discriminator.finetune import fine_tune_predict
from core.config import Config, config_stage_main
from core.metrics import classification_metrics
from core.utils import StageError, read_json, read_jsonl, write_json, write_jsonl, write_text

log = logging.getLogger("discriminator.run_cls")


def out_dir(cfg: Config) -> Path:
    return cfg.discriminator_dir / "cls"


def plot_confusion(cm: list[list[int]], names: list[str], path: Path, title: str) -> None:
    """Figure 4: counts with the row-normalised share (recall) under each count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=float)
    share = m / np.clip(m.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 1.3 * len(names) + 2))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), labels=names, rotation=25, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.2f}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def run(cfg: Config, force: bool = False) -> dict[str, Any]:
    out = out_dir(cfg)
    metrics_path = out / "metrics.json"
    dd = data_dir(cfg)
    labels = read_json(dd / "labels.json", what="discriminator labels (python -m discriminator.data_gen)")
    methods: list[str] = labels.get("cls_labels") or []
    if len(methods) < 2 or not (dd / "cls_train.jsonl").is_file():
        raise StageError(
            f"{dd}: no classifier data (needs explanations of >= 2 methods of discriminator.cls_methods; "
            "run python -m src.infer_explan for them, then python -m discriminator.data_gen --force)"
        )
    fp = model_fingerprint(cfg, dd / "cls_train.jsonl", dd / "cls_test.jsonl")
    done = reusable(metrics_path, fp, force)
    if done is not None:
        return done
    names = [labels.get("display", {}).get(m, m) for m in methods]
    train = read_jsonl(dd / "cls_train.jsonl", what="classifier train data")
    test = read_jsonl(dd / "cls_test.jsonl", what="classifier test data")
    logits = fine_tune_predict(
        cfg, [r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test],
        num_labels=len(methods), regression=False, work_dir=out,
        save_dir=out / "model" if cfg.discriminator.save_model else None,
        id2label=dict(enumerate(methods)),
    )
    pred = logits.argmax(-1).tolist()
    truth = [int(r["label"]) for r in test]
    metrics = classification_metrics(truth, pred, names)
    metrics.update(methods=methods, n_train=len(train), encoder=cfg.discriminator.encoder,
                   epochs=cfg.discriminator.epochs, fingerprint=fp)
    write_jsonl(out / "predictions.jsonl", (
        {"id": r["id"], "method": r["method"], "label": t, "pred": p, "pred_method": methods[p]}
        for r, t, p in zip(test, truth, pred)))
    cm = metrics["confusion_matrix"]
    write_text(out / "confusion.csv", "true\\pred," + ",".join(names) + "\n" + "".join(
        f"{n}," + ",".join(str(v) for v in row) + "\n" for n, row in zip(names, cm)))
    plot_confusion(cm, names, out / "confusion.png",
                   f"Explanation discrimination (acc {metrics['accuracy']:.3f}, n={len(test)})")
    write_json(metrics_path, metrics)
    lines = [f"Explanation classifier ({cfg.discriminator.encoder}): accuracy {metrics['accuracy']:.4f} on {len(test)} test explanations",
             "| Method | precision | recall | support |", "|---|---|---|---|"]
    lines += [f"| {n} | {v['precision']:.4f} | {v['recall']:.4f} | {v['support']} |" for n, v in metrics["per_class"].items()]
    print("\n".join(lines) + f"\nFigure 4 (confusion matrix): {out / 'confusion.png'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: run(cfg, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
