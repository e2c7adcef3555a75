"""Train the target recommender: leave-one-out, full-ranking evaluation, early stopping, resume.

    python -m recmodel.train --config configs/ml100k.yaml [--force] [--max-epochs N]

Writes recmodel/model.pt (best-on-valid weights + architecture + metadata; what
`recmodel.encoder.load_rec_encoder` reads) and recmodel/metrics.json (valid and test
HR/NDCG/MRR@k, epochs, seconds). While training, recmodel/checkpoint_last.pt holds the
last finished epoch (weights, optimiser, RNG states, early-stopping state, best weights),
so a killed run started again with the same command continues from there and ends with
exactly the weights an uninterrupted run would have produced (on CPU). `--max-epochs N`
stops after epoch N without finishing (an interruption on purpose; used by the tests).

Evaluation ranks the target against *all* items ("full ranking"): valid = history
s[:-2] -> s[-2], test = history s[:-1] -> s[-1]. Which items are taken out of the ranking
is `recmodel.eval_mask_history`: true (the default, ours) masks the user's whole history
and padding item 0, as UniRec's ``one_vs_all`` protocol with a user_history file (what the
original RecExplainer ran) does; false masks only the padding item, RecBole's protocol for
sequential models, where history items compete with the target. The two give different
numbers (on ML-100K SASRec, HR@10 about 0.21 masked vs 0.135 unmasked), so every number
must say which one it uses: metrics.json records it under "eval_protocol" and also holds
the test metrics under both protocols ("test_by_protocol"). Ties count in the target's
favour (rank = number of items scoring strictly higher, so items scoring the same as the
target do not push it down).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recmodel.data import RecData, load_rec_data, padded_full, right_aligned, train_windows
from recmodel.encoder import save_model_file
from recmodel.models import (
    ARCH_KEYS, TwoTower, build_model, mask_history_, next_item_loss, train_epoch, validate_recmodel_config,
)
from core.config import add_config_args, config_from_args
from core.stamps import current, fingerprint, write_stamp
from core.utils import StageError, atomic_open, read_json, resolve_device, run_stage, set_seed, write_json

log = logging.getLogger("recmodel.train")

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint_last.pt"
#: the settings and input the trained model was made from (core.stamps)
STAMP_FILE = "train.stamp.json"
#: recmodel keys that do not change the trained model (exports, KD and the device have their
#: own stages or none)
_NOT_TRAINING = ("recmodel.kd", "recmodel.device", "recmodel.export_topk", "recmodel.export_train_cap",
                 "recmodel.sim_topk", "recmodel.pos_cut", "recmodel.neg_cut")
#: the keys whose change makes an old checkpoint unusable for resuming
_RESUME_KEYS = ARCH_KEYS + ("loss", "num_negatives", "lr", "weight_decay", "batch_size")
#: keys that join the resume signature only when they differ from these values (so that
#: checkpoints written before the keys existed still resume)
_RESUME_KEYS_IF_SET = {"grad_clip": 0.0, "lr_plateau_factor": 0.0, "eval_mask_history": True}
#: names of the two evaluation protocols (metrics.json "eval_protocol")
PROTOCOLS = {True: "history_masked", False: "padding_only"}


# --------------------------------------------------------------------------- helpers


def arch_of(rc: Any) -> dict[str, Any]:
    return {k: getattr(rc, k) for k in ARCH_KEYS}


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a temp file + rename, so a kill never leaves a torn checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


@torch.no_grad()
def rank_of_targets(
    model: TwoTower, histories: torch.Tensor, full_histories: torch.Tensor, targets: torch.Tensor,
    batch_size: int = 1024, device: str = "cpu", mask_history: bool = True,
) -> torch.Tensor:
    """0-based rank of each target among all items (ties in the target's favour).

    `mask_history`: the user's full history and padding are masked (ours / UniRec
    one_vs_all); False masks only padding item 0 (RecBole's sequential protocol).
    """
    was_training = model.training
    model.eval()
    ranks = []
    for lo in range(0, histories.shape[0], batch_size):
        h = histories[lo:lo + batch_size].to(device)
        scores = model.full_scores(h)
        tgt = targets[lo:lo + batch_size].to(device)
        target_score = scores.gather(1, tgt.unsqueeze(1))
        if mask_history:
            mask_history_(scores, full_histories[lo:lo + batch_size].to(device))
        else:
            scores[:, 0] = -math.inf
        ranks.append((scores > target_score).sum(1).cpu())
    model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def ranking_metrics(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item: 1/log2(rank+2)) and MRR@k from 0-based ranks."""
    r = ranks.double()
    out: dict[str, float] = {}
    for k in sorted(ks):
        hit = r < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (r + 1.0), torch.zeros_like(r)).mean().item()
    return out


class EvalSet:
    """One leave-one-out split as tensors: truncated histories, full histories, targets."""

    def __init__(self, data: RecData, split: str, max_len: int):
        uids, hists, targets = data.eval_examples(split)
        self.split = split
        self.uids = uids
        self.histories = right_aligned(hists, max_len)
        self.full = padded_full(hists)
        self.targets = torch.tensor(targets, dtype=torch.long)

    def evaluate(
        self, model: TwoTower, ks: list[int], device: str = "cpu", mask_history: bool = True
    ) -> dict[str, float]:
        ranks = rank_of_targets(model, self.histories, self.full, self.targets, device=device,
                                mask_history=mask_history)
        return ranking_metrics(ranks, ks)


# --------------------------------------------------------------------------- training


def train_fingerprint(cfg: Any) -> dict[str, Any]:
    """What model.pt depends on: the training settings, the seed and the canonical sequences."""
    from preprocess.dataset import SEQUENCES

    return fingerprint(cfg, ["recmodel", "seed"], [cfg.data_dir / SEQUENCES], exclude=_NOT_TRAINING, base=cfg.root)


def fit(
    cfg: Any,
    *,
    out_dir: Path | None = None,
    data: RecData | None = None,
    force: bool = False,
    max_epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume, or skip) the recommender of `cfg`; return the metrics dict.

    Returns the contents of metrics.json when training finished (now or earlier), and a
    progress dict with "finished": False when `max_epochs` stopped it first.
    """
    rc = cfg.recmodel
    validate_recmodel_config(rc)
    out_dir = Path(out_dir) if out_dir is not None else cfg.recmodel_dir
    model_path, metrics_path, ckpt_path = out_dir / MODEL_FILE, out_dir / METRICS_FILE, out_dir / CHECKPOINT_FILE
    if force:
        for p in (model_path, metrics_path, ckpt_path):
            p.unlink(missing_ok=True)
    elif model_path.exists() and metrics_path.exists() and current(
            out_dir / STAMP_FILE, train_fingerprint(cfg), f"the recommender in {out_dir}"):
        log.info("%s and %s exist; skipping training (use --force to retrain)", model_path, metrics_path)
        return read_json(metrics_path)

    device = resolve_device(rc.device)
    set_seed(cfg.seed)
    data = data if data is not None else load_rec_data(cfg)
    uids = data.uids
    train_x, train_y = train_windows([data.train_part(u) for u in uids], rc.max_seq_len)
    n_windows = train_x.shape[0]
    n_transitions = int((train_y > 0).sum())
    valid, test = EvalSet(data, "valid", rc.max_seq_len), EvalSet(data, "test", rc.max_seq_len)
    log.info(
        "%s on %d users, %d items: %d train transitions in %d windows of %d; device %s",
        rc.model, len(uids), data.n_items, n_transitions, n_windows, rc.max_seq_len, device,
    )

    arch = arch_of(rc)
    signature = {k: getattr(rc, k) for k in _RESUME_KEYS} | {
        "seed": cfg.seed, "n_items": data.n_items, "n_users": len(uids), "n_transitions": n_transitions,
    } | {k: getattr(rc, k) for k, off in _RESUME_KEYS_IF_SET.items() if getattr(rc, k) != off}
    model = build_model(arch, data.n_items).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    # UniRec's "reduce" scheduler (the original's run): lr x factor after 1 epoch without gain
    scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=rc.lr_plateau_factor, patience=1, threshold=1e-4, threshold_mode="rel")
        if rc.lr_plateau_factor > 0 else None)
    mask_hist = rc.eval_mask_history
    key = "ndcg@10" if 10 in rc.eval_ks else f"ndcg@{sorted(rc.eval_ks)[0]}"

    state: dict[str, Any] = {
        "epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "best_state": None,
        "history": [], "stopped_early": False, "seconds": 0.0,
    }
    if ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling problem means an unusable file
            raise StageError(f"{ckpt_path}: unreadable checkpoint ({e}); re-run with --force to start over") from None
        if ckpt.get("signature") != signature:
            diff = sorted(k for k in signature if ckpt.get("signature", {}).get(k) != signature[k])
            raise StageError(
                f"{ckpt_path} was written with different settings ({', '.join(diff)}); "
                "re-run with --force to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        log.info("resuming from %s after epoch %d (best %s %.4f at epoch %d)",
                 ckpt_path, state["epoch"], key, state["best_score"], state["best_epoch"])

    gen = torch.Generator()
    epochs = range(state["epoch"], rc.epochs)
    bar = tqdm(epochs, desc=f"{rc.model} epochs", initial=state["epoch"], total=rc.epochs, disable=not progress)
    finished = state["stopped_early"] or state["epoch"] >= rc.epochs
    for epoch in bar:
        if state["stopped_early"]:
            break
        if max_epochs is not None and epoch >= max_epochs:
            log.info("stopping after epoch %d as asked (--max-epochs); re-run to continue", epoch)
            break
        t0 = time.perf_counter()
        gen.manual_seed(cfg.seed * 100003 + epoch)  # epoch-keyed order: identical after a resume
        mean_loss = train_epoch(
            model, optimizer, torch.randperm(n_windows, generator=gen), rc.batch_size,
            lambda idx: next_item_loss(model, train_x[idx].to(device), train_y[idx].to(device), rc.loss,
                                       rc.num_negatives),
            grad_clip=rc.grad_clip, desc=f"epoch {epoch + 1}", progress=progress)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = valid.evaluate(model, rc.eval_ks, device, mask_history=mask_hist)
        eval_s = time.perf_counter() - t1
        score = metrics[key]
        state["epoch"] = epoch + 1
        state["seconds"] += train_s + eval_s
        state["history"].append({"epoch": epoch + 1, "loss": mean_loss, f"valid_{key}": score,
                                 "train_s": round(train_s, 3), "eval_s": round(eval_s, 3)})
        if score >= state["best_score"]:
            # a tie keeps the later, longer-trained weights (matters once a metric saturates,
            # e.g. on tiny data); only a strict gain resets the patience counter
            state["bad_epochs"] = 0 if score > state["best_score"] else state["bad_epochs"] + 1
            state.update(best_score=score, best_epoch=epoch + 1,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        if state["bad_epochs"] >= rc.patience:
            state["stopped_early"] = True
        elif scheduler is not None and epoch > 0:  # as UniRec: from the second epoch on
            scheduler.step(score)
        bar.set_postfix(loss=f"{mean_loss:.4f}", **{key: f"{score:.4f}"}, best=f"{state['best_score']:.4f}")
        log.info("epoch %d: loss %.4f  valid %s %.4f  hr@10 %.4f  (best %.4f @ %d)  %.1fs + %.1fs eval",
                 epoch + 1, mean_loss, key, score, metrics.get("hr@10", float("nan")),
                 state["best_score"], state["best_epoch"], train_s, eval_s)
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "state": state, "signature": signature}, ckpt_path)
        if state["stopped_early"]:
            log.info("early stop: no valid %s gain for %d epochs", key, rc.patience)
            finished = True
            break
    else:
        finished = state["epoch"] >= rc.epochs or finished
    bar.close()

    if not finished:
        return {"finished": False, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                f"best_valid_{key}": state["best_score"]}

    if state["best_state"] is None:
        raise StageError(f"{ckpt_path}: no epoch finished; cannot write {model_path}")
    model.load_state_dict(state["best_state"])
    model.eval()
    valid_m = valid.evaluate(model, rc.eval_ks, device, mask_history=mask_hist)
    t1 = time.perf_counter()
    test_m = test.evaluate(model, rc.eval_ks, device, mask_history=mask_hist)
    test_eval_s = time.perf_counter() - t1
    # the same weights scored under the other protocol too, so both numbers are on record
    other = test.evaluate(model, rc.eval_ks, device, mask_history=not mask_hist)
    by_protocol = {PROTOCOLS[mask_hist]: test_m, PROTOCOLS[not mask_hist]: other}
    hist = state["history"]
    result = {
        "finished": True,
        "model": rc.model,
        "loss": rc.loss,
        "eval_protocol": PROTOCOLS[mask_hist],
        "valid": valid_m,
        "test": test_m,
        "test_by_protocol": by_protocol,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "seconds": round(state["seconds"], 2),
        "seconds_per_epoch": round(float(np.mean([h["train_s"] for h in hist])), 3),
        "seconds_per_eval": round(float(np.mean([h["eval_s"] for h in hist])), 3),
        "seconds_test_eval": round(test_eval_s, 3),
        "n_users": len(uids),
        "n_items": data.n_items,
        "n_train_transitions": n_transitions,
        "n_train_windows": n_windows,
        "device": device,
        "history": hist,
    }
    save_model_file(
        model_path, arch, data.n_items, state["best_state"],
        config={k: v for k, v in asdict(rc).items() if k != "kd"},
        metadata={"best_epoch": state["best_epoch"], "eval_protocol": PROTOCOLS[mask_hist], "valid": valid_m,
                  "test": test_m, "seed": cfg.seed, "n_users": len(uids), "dataset": cfg.dataset.name},
    )
    write_json(metrics_path, result)
    write_stamp(out_dir / STAMP_FILE, train_fingerprint(cfg))
    log.info("best epoch %d; valid %s; test %s (%s); test %s (%s)", state["best_epoch"], _fmt(valid_m), _fmt(test_m),
             PROTOCOLS[mask_hist], _fmt(other), PROTOCOLS[not mask_hist])
    log.info("wrote %s and %s", model_path, metrics_path)
    return result


def _fmt(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.endswith("@10"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="stop after this epoch (total) without finishing; re-run to continue")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        res = fit(cfg, force=args.force, max_epochs=args.max_epochs, progress=not args.no_progress)
        if res.get("finished"):
            ks = sorted(cfg.recmodel.eval_ks)
            print(f"{'split':<6}" + "".join(f"{m + '@' + str(k):>10}" for k in ks for m in ("hr", "ndcg", "mrr")))
            for split in ("valid", "test"):
                print(f"{split:<6}" + "".join(f"{res[split][f'{m}@{k}']:>10.4f}" for k in ks for m in ("hr", "ndcg", "mrr")))

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
