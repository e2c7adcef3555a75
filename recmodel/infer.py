"""Export the target recommender's predictions that the alignment tasks are built from.

    python -m recmodel.infer --config configs/ml100k.yaml [--force]

Writes, under recmodel/:

* ``{train,valid,test}_top.jsonl``, one row per (user, position)::

    {"uid", "history": [iid...]  (last max_seq_len items before the position),
     "target": iid, "top": [iid x export_topk]  (model ranking, history masked),
     "rank_candidates": [5 iids sorted by model score, best first],
     "pos": iid, "neg": iid, "pos_score": float, "neg_score": float}

  valid/test: one row per user (history s[:-2] -> s[-2], s[:-1] -> s[-1]); train: one row
  per train position (history s[:p] -> s[p], p >= 1), most recent first, at most
  ``export_train_cap`` per user.
  Task 2 candidates are 5 items drawn uniformly from the items *not* in the history,
  then ordered by the model. Task 3 (paper 3.2.1): with the n non-history items sorted by
  score, ``pos`` is drawn uniformly from the top floor(pos_cut * n) (top 20%) and ``neg``
  from the bottom floor(neg_cut * n) (bottom 50%); scores are the raw dot products.
  "History" for masking is the user's whole past before the position, not only the
  max_seq_len shown.
* ``item_sim.json``: {"<iid>": [the sim_topk most cosine-similar items, best first]},
  from the item embeddings by blocked matrix products.

All draws come from a seeded generator per split, so re-running gives identical files.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recmodel.data import RecData, load_rec_data
from recmodel.encoder import RecEncoder, load_rec_encoder, masked_scores
from recmodel.models import validate_recmodel_config
from core.config import config_stage_main
from core.stamps import current, fingerprint, write_stamp
from core.utils import StageError, write_json, write_jsonl

log = logging.getLogger("recmodel.infer")

SPLITS = ("train", "valid", "test")
#: fingerprint of the exports (core.stamps)
EXPORT_STAMP = "exports.stamp.json"
N_CANDIDATES = 5
_SPLIT_SEED = {"train": 0, "valid": 1, "test": 2}

#: (uid, whole history before the position, target)
Position = tuple[int, list[int], int]


def positions(data: RecData, split: str, train_cap: int) -> list[Position]:
    """The (user, position) pairs exported for `split`, in file order."""
    out: list[Position] = []
    for uid in data.uids:
        s = data.sequences[uid]
        if split == "test":
            out.append((uid, s[:-1], s[-1]))
        elif split == "valid":
            out.append((uid, s[:-2], s[-2]))
        elif split == "train":
            train = s[:-2]
            for p in range(len(train) - 1, 0, -1)[: train_cap or None]:  # 0 = every position
                out.append((uid, train[:p], train[p]))
        else:
            raise ValueError(f"unknown split {split!r}")
    return out


@torch.no_grad()
def export_rows(
    encoder: RecEncoder, items: list[Position], rc: Any, seed: int, batch_size: int = 512, desc: str = "export",
) -> list[dict]:
    """One export row per position (see the module docstring for the fields)."""
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    short = 0
    for lo in tqdm(range(0, len(items), batch_size), desc=desc, unit="batch"):
        batch = items[lo:lo + batch_size]
        hists = [h for _, h, _ in batch]
        scores, masked = masked_scores(encoder, hists)
        scores, masked = scores.cpu(), masked.cpu()
        b = len(batch)
        valid = torch.isfinite(masked)
        n_valid = valid.sum(1)
        sorted_s, sorted_i = masked.sort(dim=1, descending=True, stable=True)
        # task 2: uniform sample without replacement among non-history items (random keys)
        keys = torch.rand(masked.shape, generator=gen)
        keys[~valid] = -1.0
        n_cand = min(N_CANDIDATES, masked.shape[1])
        cand = keys.topk(n_cand, dim=1).indices
        cand_s = scores.gather(1, cand)
        order = cand_s.argsort(dim=1, descending=True, stable=True)
        cand = cand.gather(1, order)
        # task 3: uniform draws inside the top pos_cut and bottom neg_cut of the ranking
        n_pos = (n_valid.double() * rc.pos_cut).floor().long().clamp_min(1)
        n_neg = (n_valid.double() * rc.neg_cut).floor().long().clamp_min(1)
        u = torch.rand(b, 2, generator=gen, dtype=torch.float64)
        r_pos = (u[:, 0] * n_pos).floor().long().unsqueeze(1)
        r_neg = (n_valid - n_neg + (u[:, 1] * n_neg).floor().long()).unsqueeze(1)
        pos, pos_s = sorted_i.gather(1, r_pos)[:, 0], sorted_s.gather(1, r_pos)[:, 0]
        neg, neg_s = sorted_i.gather(1, r_neg)[:, 0], sorted_s.gather(1, r_neg)[:, 0]
        top = sorted_i[:, : rc.export_topk]
        for r, (uid, hist, target) in enumerate(batch):
            nv = int(n_valid[r])
            if nv < N_CANDIDATES:
                short += 1
            cands = [int(i) for i, k in zip(cand[r].tolist(), keys[r, cand[r]].tolist()) if k >= 0]
            rows.append({
                "uid": uid,
                "history": hist[-rc.max_seq_len:],
                "target": target,
                "top": top[r, : min(rc.export_topk, nv)].tolist(),
                "rank_candidates": cands,
                "pos": int(pos[r]),
                "neg": int(neg[r]),
                "pos_score": round(float(pos_s[r]), 6),
                "neg_score": round(float(neg_s[r]), 6),
            })
    if short:
        log.warning("%s: %d rows have fewer than %d non-history items; their lists are shorter", desc, short, N_CANDIDATES)
    return rows


@torch.no_grad()
def item_similarities(encoder: RecEncoder, topk: int, block: int = 2048) -> dict[str, list[int]]:
    """{"<iid>": top-k other items by cosine similarity of item embeddings}, blockwise."""
    emb = F.normalize(encoder.item_embeddings()[1:].float(), dim=1)
    n = emb.shape[0]
    k = min(topk, n - 1)
    out: dict[str, list[int]] = {}
    for lo in tqdm(range(0, n, block), desc="item_sim", unit="block"):
        sim = emb[lo:lo + block] @ emb.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + lo] = -math.inf
        idx = sim.topk(k, dim=1).indices.cpu() + 1
        for r, ids in enumerate(idx.tolist()):
            out[str(lo + r + 1)] = ids
    return out


def output_paths(out_dir: Path) -> dict[str, Path]:
    paths = {s: out_dir / f"{s}_top.jsonl" for s in SPLITS}
    paths["item_sim"] = out_dir / "item_sim.json"
    return paths


def run(cfg: Any, *, force: bool = False, out_dir: Path | None = None, data: RecData | None = None,
        encoder: RecEncoder | None = None) -> dict[str, Path]:
    """Write every export of `cfg` (skipping those that exist unless force); return their paths."""
    rc = cfg.recmodel
    validate_recmodel_config(rc)
    out_dir = Path(out_dir) if out_dir is not None else cfg.recmodel_dir
    paths = output_paths(out_dir)
    model_path = out_dir / "model.pt"
    todo = [k for k, p in paths.items() if force or not p.exists()]
    stamp = out_dir / EXPORT_STAMP
    # the exports depend on the model and on these keys; a changed one stops the reuse
    fp = fingerprint(cfg, ["recmodel.export_topk", "recmodel.export_train_cap", "recmodel.sim_topk",
                           "recmodel.pos_cut", "recmodel.neg_cut", "seed"], [model_path], base=cfg.root)
    if not force and any(p.exists() for p in paths.values()):
        current(stamp, fp, f"the recommender's exports in {out_dir}")  # raises when they are stale
    if not todo:
        log.info("all exports exist in %s; skipping (use --force to redo)", out_dir)
        return paths
    if model_path.exists():
        stale = [p.name for p in paths.values() if p.exists() and p.stat().st_mtime < model_path.stat().st_mtime]
        if stale and not force:
            log.warning("%s older than %s; use --force to regenerate them", ", ".join(stale), model_path.name)
    encoder = encoder if encoder is not None else load_rec_encoder(cfg, device="cpu", path=model_path)
    data = data if data is not None else load_rec_data(cfg)
    if data.n_items != encoder.n_items:
        raise StageError(f"{model_path} was trained on {encoder.n_items} items but {cfg.data_dir} has {data.n_items}; "
                         "retrain with python -m recmodel.train --force")
    for split in SPLITS:
        if split not in todo:
            continue
        items = positions(data, split, rc.export_train_cap)
        rows = export_rows(encoder, items, rc, seed=cfg.seed * 1000 + _SPLIT_SEED[split], desc=f"{split}_top")
        n = write_jsonl(paths[split], rows)
        log.info("wrote %s (%d rows)", paths[split], n)
    if "item_sim" in todo:
        sim = item_similarities(encoder, rc.sim_topk)
        write_json(paths["item_sim"], sim, indent=None)
        log.info("wrote %s (%d items x %d)", paths["item_sim"], len(sim), min(rc.sim_topk, encoder.n_items - 1))
    write_stamp(stamp, fp)
    return paths


def main(argv: list[str] | None = None) -> int:
    return config_stage_main(argv, __doc__, lambda cfg, args: run(cfg, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
