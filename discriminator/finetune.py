"""Fine-tune a BERT-family encoder with a classification or regression head (HF Trainer).

Shared by the classifier (``run_cls``) and the score predictors (``run_reg``) so both use
exactly the same encoder, tokenisation, optimiser and schedule; only the head differs
(``num_labels=K`` with cross-entropy, or ``num_labels=1`` with ``problem_type="regression"``
and MSE), as in the paper (section 3.4.2, both on BERT-base; the default here is the
smaller all-MiniLM-L6-v2 from the fetch stage, any path or hub id by config).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config
from core.utils import StageError, model_dir_or_hub_id, resolve_device, set_seed

log = logging.getLogger(__name__)


def encoder_path(cfg: Config) -> str:
    """Local directory of discriminator.encoder, or the name itself if it is a hub id."""
    return model_dir_or_hub_id(
        cfg, cfg.discriminator.encoder, "discriminator.encoder",
        "bash shell/download_data.sh fetches all-MiniLM-L6-v2 to models/all-minilm-l6-v2; or set "
        "discriminator.encoder to a local BERT-family model directory or a hub id such as bert-base-uncased",
    )


def _dataset(tokenizer: Any, texts: Sequence[str], targets: Sequence[float] | None, max_length: int, regression: bool):
    from datasets import Dataset

    data: dict[str, list] = {"text": list(texts)}
    if targets is not None:
        data["labels"] = [float(t) for t in targets] if regression else [int(t) for t in targets]
    ds = Dataset.from_dict(data)
    return ds.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
        batched=True, remove_columns=["text"], desc="tokenise",
    )


def fine_tune_predict(
    cfg: Config,
    train_texts: Sequence[str],
    train_targets: Sequence[float],
    test_texts: Sequence[str],
    num_labels: int,
    regression: bool,
    work_dir: Path,
    save_dir: Path | None = None,
    id2label: dict[int, str] | None = None,
) -> np.ndarray:
    """Train on (texts, targets) and return the raw test outputs: logits (N, K), or (N,) for regression.

    Trainer scratch files go to a temporary folder inside `work_dir` (removed afterwards);
    the fine-tuned model is kept only when `save_dir` is given.
    """
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    d = cfg.discriminator
    path = encoder_path(cfg)
    set_seed(d.seed)
    transformers.set_seed(d.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs: dict[str, Any] = {"num_labels": num_labels,
                              "problem_type": "regression" if regression else "single_label_classification"}
    if id2label:
        kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    # the encoder's own head (if any) is replaced; its weights being "newly initialised" is expected
    prev = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        # a checkpoint that already has a head of another size gets a fresh one of ours
        model = AutoModelForSequenceClassification.from_pretrained(path, ignore_mismatched_sizes=True, **kwargs)
    except OSError as e:
        raise StageError(f"discriminator.encoder={d.encoder!r}: cannot load a sequence classifier from {path}: {e}") from None
    finally:
        transformers.logging.set_verbosity(prev)
    train_ds = _dataset(tokenizer, train_texts, train_targets, d.max_length, regression)
    test_ds = _dataset(tokenizer, test_texts, None, d.max_length, regression)
    device = resolve_device(d.device)
    work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".trainer-", dir=work_dir))
    try:
        args = TrainingArguments(
            output_dir=str(work),
            num_train_epochs=d.epochs,
            learning_rate=d.lr,
            per_device_train_batch_size=d.batch_size,
            per_device_eval_batch_size=max(1, d.batch_size * 2),
            weight_decay=d.weight_decay,
            warmup_steps=d.warmup_ratio,
            lr_scheduler_type="linear",
            eval_strategy="no",
            save_strategy="no",
            logging_steps=max(1, int(math.ceil(len(train_ds) / max(1, d.batch_size)) * d.epochs) // 10),
            report_to=[],
            seed=d.seed,
            data_seed=d.seed,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer)
        result = trainer.train()
        log.info("fine-tuned %s: %d samples, final train loss %.4f", Path(path).name, len(train_ds), result.training_loss)
        preds = trainer.predict(test_ds).predictions
        if save_dir is not None:
            trainer.save_model(str(save_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    preds = np.asarray(preds[0] if isinstance(preds, tuple) else preds)
    return preds.reshape(-1) if regression else preds
