"""Projector pre-alignment: a head start for the projectors before the LLM trains.

``train.prealign_steps > 0`` fits, before the first LLM step,

* the item projector so that ``item_proj(e_i)`` is the LLM's mean input embedding of item
  i's title tokens (every catalogue item), and
* the user projector so that ``user_proj(u)`` is the mean title embedding of the
  recommender's top-1 item for that user (the uid2next training records: their
  ``history`` is what the recommender encoded, their ``answer`` its top-1 title), or with
  ``train.prealign_user_topk: k > 1`` the mean over its top-k items (history masked),
  so that the user vector starts near the region of its likely items rather than one title.

WHY: LLaVA trains its projector alone on image-caption pairs first; here the pairs are
free (the recommender's vectors and the LLM's own embedding table), so the regression
needs no LLM forward pass and takes seconds. The projected vector then starts out
pointing at the words the LLM should say, instead of random noise that the first
hundreds of steps on a CPU spend undoing. Off in the paper profiles (the paper trains
the projectors jointly from scratch).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from recmodel.data import padded_full
from recmodel.models import mask_history_
from src.chat import right_align
from core.config import Config
from core.registry import MARKER_TOKENS

log = logging.getLogger(__name__)


def title_embeddings(lm_embeddings: torch.Tensor, tokenizer: Any, titles: list[str]) -> torch.Tensor:
    """Mean input-embedding row of each title's tokens (as the answer would be tokenised)."""
    out = torch.zeros(len(titles), lm_embeddings.shape[1])
    for k, t in enumerate(titles):
        ids = tokenizer(" " + t, add_special_tokens=False)["input_ids"] if t else []
        if ids:
            out[k] = lm_embeddings[ids].float().mean(0)
    return out


def _fit(proj: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, what: str) -> None:
    dtype = next(proj.parameters()).dtype
    x, y = x.to(dtype), y.to(dtype)
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    with torch.no_grad():
        before = F.cosine_similarity(proj(x), y, dim=-1).mean().item()
    for _ in range(steps):
        loss = F.mse_loss(proj(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.cosine_similarity(proj(x), y, dim=-1).mean().item()
    log.info("pre-aligned the %s projector on %d pairs: cosine to target %.3f -> %.3f", what, len(x), before, after)


def prealign_projectors(model: Any, tokenizer: Any, cfg: Config, train_records: list[dict]) -> dict[str, int]:
    """Fit both projectors as described in the module docstring; returns the pair counts.

    Records whose questions never hold a <user>/<item> slot (RecExplainer-B: titles only)
    never send a gradient to the projectors, so there is nothing to give a head start to;
    skipped (~20 s of a CPU run's training stage).
    """
    from preprocess.dataset import load_canonical

    enc = model.encoder
    if enc is None:
        log.warning("train.prealign_steps: no recommender encoder; skipped")
        return {}
    if not any(m in str(r.get("question", "")) for r in train_records for m in MARKER_TOKENS):
        log.info("train.prealign_steps: no training record holds a %s slot; projectors not pre-aligned",
                 "/".join(MARKER_TOKENS))
        return {}
    titles = load_canonical(cfg).titles  # index = iid; 0 is padding
    emb = model.lm.get_input_embeddings().weight.detach()
    steps, lr = cfg.train.prealign_steps, cfg.train.prealign_lr
    dev = model._encoder_device()
    counts: dict[str, int] = {}
    iids = [i for i in range(1, len(titles)) if titles[i]]
    with torch.no_grad():
        e = enc.encode_items(torch.tensor(iids, device=dev)).float().cpu()
    item_targets = title_embeddings(emb, tokenizer, [titles[i] for i in iids])
    _fit(model.item_proj, e.to(model.device), item_targets.to(model.device), steps, lr, "item")
    counts["items"] = len(iids)
    seen: set[tuple] = set()
    recs = []
    for r in train_records:  # one pair per (history, top-1), whichever forms render it
        key = (tuple(r.get("history") or ()), r.get("answer"))
        if r.get("type") == "uid2next" and r.get("history") and key not in seen:
            seen.add(key)
            recs.append(r)
    if recs:
        L = cfg.recmodel.max_seq_len
        hist = torch.tensor([right_align(r["history"], L) for r in recs], device=dev)
        with torch.no_grad():
            u = torch.cat([enc.encode_users(hist[k : k + 512]) for k in range(0, len(hist), 512)]).float().cpu()
        topk = cfg.train.prealign_user_topk
        if topk > 1:
            table = torch.zeros(len(titles), emb.shape[1])  # row = iid; untitled items stay 0
            table[iids] = item_targets
            with torch.no_grad():  # the two towers' dot product, as the recommender ranks
                scores = u @ enc.encode_items(torch.arange(len(titles), device=dev)).float().cpu().T
            mask_history_(scores, padded_full([list(r["history"]) for r in recs]))  # never what was seen
            scores[:, [i for i in range(len(titles)) if not titles[i]]] = float("-inf")
            target = table[scores.topk(topk, dim=1).indices].mean(1)
        else:
            target = title_embeddings(emb, tokenizer, [r["answer"] for r in recs])
        _fit(model.user_proj, u.to(model.device), target.to(model.device), steps, lr, "user")
        counts["users"] = len(recs)
    else:
        log.info("train.prealign_steps: no uid2next records with a history; user projector not pre-aligned")
    return counts
