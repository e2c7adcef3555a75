"""Table 1 baselines scored on the target recommender's test exports: Random, Popularity, KD-SASRec.

    python -m recmodel.baselines --config configs/ml100k.yaml [--force] [--methods random,popularity,kd_sasrec]

Reads recmodel/test_top.jsonl (python -m recmodel.infer) and, for KD-SASRec, the teacher
recmodel/model.pt; writes recmodel/baselines/<method>.metrics.json::

    {"uid2next": {"hr@5", "ndcg@5"}, "uidiid2rank": {"ndcg@5"}, "uidiid2binary": {"acc"}, ...}

The definitions are the ones the LLM is scored with (paper 3.1.1, the original code's
``calculate_rec_metrics`` / ``calculate_rank_metrics``), so the rows of Table 1 compare:

* task 1 (uid2next): the method's 5 retrieved items vs the target's top-1 item:
  HR@5 = 1 if it is among them, NDCG@5 = 1 / log2(position + 2) (0-based position).
* task 2 (uidiid2rank): `ranking_ndcg` of the method's order of the 5 candidates against
  the target's order (see that function for the formula).
* task 3 (uidiid2binary): accuracy of yes/no on the row's pos item (truth: yes) and neg
  item (truth: no), two questions per row; see `binary_yes` for how a score-based method
  answers.

Methods (paper 3.2.3), all with the user's history excluded from retrieval:
* random: 5 items uniformly at random; candidates shuffled; yes/no from a random rank.
* popularity: 5 items sampled with probability proportional to train popularity (the
  paper's "sample k items based on the item popularity distribution"); candidates sorted
  by popularity (ties broken at random, never by the target's order); yes/no from the
  popularity rank (the paper reports N/A for this cell; we report the number and flag it).
* kd_sasrec: the distilled student (recmodel/kd.py) ranks by its own scores.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from recmodel.data import RecData, load_rec_data, padded_full, right_aligned
from recmodel.encoder import load_model_file
from recmodel.kd import train_student
from recmodel.models import TwoTower, mask_history_
from recmodel.models import validate_recmodel_config
from core.config import ConfigError, add_config_args, config_from_args
from core.metrics import ci95, next_item_hit_ndcg, ranking_ndcg
from core.registry import BASELINES
from core.stamps import embedded_changes, fingerprint, stale_error
from core.utils import StageError, read_json, read_jsonl, resolve_device, run_stage, write_json

log = logging.getLogger("recmodel.baselines")

METHODS = BASELINES


# --------------------------------------------------------------------------- answers of score-based methods


def yes_cut(pos_cut: float, neg_cut: float) -> float:
    """Share of the ranking a score-based method answers "yes" for: the middle of the gap.

    Task 3 positives come from the target's top pos_cut (20%) and negatives from its
    bottom neg_cut (50%) of non-history items; nothing is asked about the band between.
    A method that ranks like the target therefore separates them best with a cut in the
    middle of that band: (pos_cut + (1 - neg_cut)) / 2 = 0.35 for the paper's cuts.
    """
    return (pos_cut + (1.0 - neg_cut)) / 2.0


def binary_yes(rank: int, n_valid: int, pos_cut: float, neg_cut: float) -> bool:
    """A score-based method's task-3 answer for an item at 0-based `rank` of `n_valid`
    non-history items (by the method's own scores): yes iff rank < yes_cut * n_valid."""
    return rank < yes_cut(pos_cut, neg_cut) * n_valid


# --------------------------------------------------------------------------- scoring


#: scorer(rows, histories (B, L), full histories (B, M), generator) -> (retrieval, ranking, binary) scores,
#: each (B, N + 1); higher = better; the caller masks history and padding
Scorer = Callable[[list[dict], torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def random_scorer(n_items: int) -> Scorer:
    def score(rows, hist, full, gen):
        b = len(rows)
        return tuple(torch.rand(b, n_items + 1, generator=gen, dtype=torch.float64) for _ in range(3))  # type: ignore[return-value]

    return score


def popularity_scorer(popularity: torch.Tensor) -> Scorer:
    """Gumbel-top-k on log-popularity = sampling k items without replacement ∝ popularity."""
    logp = torch.where(popularity > 0, popularity.log(), torch.full_like(popularity, -1.0e9))

    def score(rows, hist, full, gen):
        b = len(rows)
        u = torch.rand(b, popularity.numel(), generator=gen, dtype=torch.float64).clamp_min(1e-12)
        retrieval = logp.unsqueeze(0) - torch.log(-torch.log(u))
        tie = torch.rand(b, popularity.numel(), generator=gen, dtype=torch.float64) * 0.5
        ordered = popularity.unsqueeze(0) + tie  # counts are integers: the noise only breaks ties
        return retrieval, ordered, ordered

    return score


def model_scorer(model: TwoTower, device: str = "cpu") -> Scorer:
    @torch.no_grad()
    def score(rows, hist, full, gen):
        s = model.full_scores(hist.to(device)).double().cpu()
        return s, s, s

    return score


def evaluate_rows(
    rows: list[dict], full_histories: list[list[int]], scorer: Scorer, n_items: int, max_seq_len: int,
    pos_cut: float, neg_cut: float, seed: int, batch_size: int = 512, desc: str = "",
) -> dict[str, Any]:
    """Tasks 1-3 metrics of one method over export rows (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    hits, ndcgs, rank_ndcgs, correct = [], [], [], []
    for lo in tqdm(range(0, len(rows), batch_size), desc=desc or "baseline", unit="batch"):
        batch = rows[lo:lo + batch_size]
        fulls = full_histories[lo:lo + batch_size]
        hist = right_aligned(fulls, max_seq_len)
        full = padded_full(fulls)
        retrieval, ranking, binary = scorer(batch, hist, full, gen)
        retrieval = mask_history_(retrieval.clone(), full)
        binary = mask_history_(binary.clone(), full)
        n_valid = torch.isfinite(binary).sum(1)
        top5 = retrieval.topk(5, dim=1).indices.tolist()
        for r, row in enumerate(batch):
            h, n = next_item_hit_ndcg(top5[r], row["top"][0], 5)
            hits.append(h)
            ndcgs.append(n)
            cands = row["rank_candidates"]
            cs = ranking[r, torch.tensor(cands)]
            pred = [cands[j] for j in torch.argsort(cs, descending=True, stable=True).tolist()]
            rank_ndcgs.append(ranking_ndcg(pred, cands, 5))
            for item, truth in ((row["pos"], True), (row["neg"], False)):
                rank = int((binary[r] > binary[r, item]).sum())
                correct.append(binary_yes(rank, int(n_valid[r]), pos_cut, neg_cut) == truth)
    n = max(len(rows), 1)
    return {
        "uid2next": {"hr@5": sum(hits) / n, "ndcg@5": sum(ndcgs) / n, "n": len(rows),
                     "ci95": {"hr@5": ci95(hits), "ndcg@5": ci95(ndcgs)}},
        "uidiid2rank": {"ndcg@5": sum(rank_ndcgs) / n, "n": len(rows), "ci95": {"ndcg@5": ci95(rank_ndcgs)}},
        "uidiid2binary": {"acc": sum(correct) / max(len(correct), 1), "n": len(correct),
                          "ci95": {"acc": ci95([float(c) for c in correct])}},
        "n_rows": len(rows),
    }


def full_histories_for(rows: list[dict], data: RecData, split: str, path: Path) -> list[list[int]]:
    """Whole histories of valid/test export rows, checked against the rows' shown histories."""
    cut = 1 if split == "test" else 2
    out = []
    for lineno, row in enumerate(rows, 1):
        for key in ("uid", "history", "top", "rank_candidates", "pos", "neg"):
            if key not in row:
                raise StageError(f"{path}:{lineno}: missing key '{key}'")
        seq = data.sequences.get(row["uid"])
        if seq is None:
            raise StageError(f"{path}:{lineno}: user {row['uid']} is not in the dataset")
        full = seq[:-cut]
        if full[-len(row["history"]):] != row["history"] or not row["top"]:
            raise StageError(f"{path}:{lineno}: row does not match the current dataset; "
                             "re-run python -m recmodel.infer --force")
        out.append(full)
    return out


# --------------------------------------------------------------------------- stage


def baseline_fingerprint(cfg: Any, method: str, rows_path: Path) -> dict[str, Any]:
    """What a baseline's cells depend on (core.stamps): the scoring cuts, the seed, the
    export it scores, the dataset; KD-SASRec also its own settings and the teacher."""
    keys = ["recmodel.max_seq_len", "recmodel.pos_cut", "recmodel.neg_cut", "seed"]
    inputs = [rows_path, cfg.data_dir / "sequences.txt"]
    if method == "kd_sasrec":
        keys.append("recmodel.kd")
        inputs.append(cfg.recmodel_dir / "model.pt")
    return fingerprint(cfg, keys, inputs, base=cfg.root)


def run(cfg: Any, *, methods: Sequence[str] = METHODS, force: bool = False, progress: bool = True,
        data: RecData | None = None, split: str = "test") -> dict[str, dict]:
    """Score each baseline on recmodel/<split>_top.jsonl; write and return their metrics."""
    rc = cfg.recmodel
    validate_recmodel_config(rc)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown baseline '{unknown[0]}' (choose from {', '.join(METHODS)})")
    out_dir = cfg.recmodel_dir / "baselines"
    rows_path = cfg.recmodel_dir / f"{split}_top.jsonl"
    results: dict[str, dict] = {}
    todo = []
    for m in methods:
        p = out_dir / f"{m}.metrics.json"
        if p.exists() and not force:
            changes = embedded_changes(p, read_json(p), baseline_fingerprint(cfg, m, rows_path))
            if changes:
                raise stale_error(str(p), changes)
            log.info("%s exists; skipping (use --force to redo)", p)
        else:
            todo.append(m)
    if not todo:
        return results
    rows = read_jsonl(rows_path, what="recommender export")
    if not rows:
        raise StageError(f"{rows_path}: no rows")
    data = data if data is not None else load_rec_data(cfg)
    fulls = full_histories_for(rows, data, split, rows_path)
    common = dict(n_items=data.n_items, max_seq_len=rc.max_seq_len, pos_cut=rc.pos_cut, neg_cut=rc.neg_cut)
    for i, m in enumerate(todo):
        extra: dict[str, Any] = {}
        if m == "random":
            scorer = random_scorer(data.n_items)
        elif m == "popularity":
            scorer = popularity_scorer(data.item_popularity())
            extra["note"] = "uidiid2binary is N/A in the paper for Popularity; reported here by popularity rank"
        else:
            if not rc.kd.enabled:
                log.info("recmodel.kd.enabled is false; skipping kd_sasrec")
                continue
            device = resolve_device(rc.device)
            student_path = out_dir / "kd_sasrec.pt"
            if student_path.exists() and not force:
                student, _ = load_model_file(student_path, device)
                log.info("using the existing student %s", student_path)
            else:
                teacher, _ = load_model_file(cfg.recmodel_dir / "model.pt", device)
                student = train_student(cfg, teacher, data, student_path, device=device, progress=progress)
            student.eval()
            scorer = model_scorer(student, device)
        res = evaluate_rows(rows, fulls, scorer, seed=cfg.seed * 1000 + 17 + i, desc=m, **common)
        res.update(method=m, split=split, source=str(rows_path), fingerprint=baseline_fingerprint(cfg, m, rows_path),
                   **extra)
        write_json(out_dir / f"{m}.metrics.json", res)
        results[m] = res
        log.info("%s: task1 HR@5 %.4f NDCG@5 %.4f | task2 NDCG@5 %.4f | task3 acc %.4f", m,
                 res["uid2next"]["hr@5"], res["uid2next"]["ndcg@5"], res["uidiid2rank"]["ndcg@5"],
                 res["uidiid2binary"]["acc"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    def body() -> None:
        res = run(config_from_args(args), methods=[m for m in args.methods.split(",") if m], force=args.force,
                  progress=not args.no_progress)
        if res:
            print(f"{'method':<12}{'T1 HR@5':>10}{'T1 N@5':>10}{'T2 N@5':>10}{'T3 acc':>10}")
            for m, r in res.items():
                print(f"{m:<12}{r['uid2next']['hr@5']:>10.4f}{r['uid2next']['ndcg@5']:>10.4f}"
                      f"{r['uidiid2rank']['ndcg@5']:>10.4f}{r['uidiid2binary']['acc']:>10.4f}")

    return run_stage(body)


if __name__ == "__main__":
    sys.exit(main())
