"""The frozen target recommender as the LLM side sees it: the single `RecEncoder`.

    enc = load_rec_encoder(cfg, device="cpu")
    u = enc.encode_users(histories)   # (B, L) right-aligned, 0-padded ids -> (B, d)
    v = enc.encode_items(iids)        # (...,) ids -> (..., d)
    s = enc.score(histories)          # (B, N + 1) scores, column 0 = padding
    s = enc.score(histories, iids)    # (B,) or (B, K) scores of the given items

Embeddings are never exported as loose vectors; everything that needs a user or item
vector (the LLM's projectors, exports, baselines) computes it through this object, so
the vectors always come from the same weights in the same (eval) mode.

`RecEncoder` is an `nn.Module` so that it moves with `.to(device)` / `.to(dtype)` of a
model that holds it, but it is frozen: parameters have requires_grad=False, every method
runs under no_grad, and `train()` is a no-op, so a parent's `model.train()` cannot switch
its dropout on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recmodel.data import padded_full, realign_right, right_aligned
from recmodel.models import TwoTower, build_model, mask_history_
from core.utils import StageError, atomic_open, resolve_device

log = logging.getLogger(__name__)


class RecEncoder(nn.Module):
    """Frozen, eval-mode wrapper of a trained two-tower recommender (SASRec or MF)."""

    def __init__(self, model: TwoTower, info: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.info = dict(info or {})
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.model.hidden_size

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.model.item_emb.weight.device

    def train(self, mode: bool = True) -> "RecEncoder":
        """Stay in eval mode whatever the parent asks: the recommender is a fixed black box."""
        return super().train(False)

    # ------------------------------------------------------------------ inputs
    def _check_ids(self, ids: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{what} must be an integer tensor of item ids, got dtype {ids.dtype}")
        ids = ids.long().to(self.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > self.n_items):
            bad = ids[(ids < 0) | (ids > self.n_items)][0].item()
            raise ValueError(f"{what}: item id {bad} outside 0..{self.n_items} (0 = padding)")
        return ids

    def prepare_histories(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, <= max_seq_len) right-aligned ids on the encoder's device.

        Rows may be padded on either side; the most recent max_seq_len items are kept.
        An all-padding row has no user to encode and is an error.
        """
        h = self._check_ids(histories, "histories")
        if h.dim() == 1:
            h = h.unsqueeze(0)
        if h.dim() != 2:
            raise ValueError(f"histories must be (B, L), got shape {tuple(h.shape)}")
        empty = (h != 0).sum(1) == 0
        if bool(empty.any()):
            raise ValueError(f"history row {int(empty.nonzero()[0])} is empty (all padding); a user needs >= 1 item")
        h = realign_right(h)
        return h[:, -self.max_seq_len:]

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def encode_users(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) right-aligned 0-padded histories -> (B, dim) user vectors."""
        return self.model.user_repr(self.prepare_histories(histories))

    @torch.no_grad()
    def encode_items(self, iids: torch.Tensor) -> torch.Tensor:
        """Item ids of any shape -> (..., dim) item vectors (the table the scores use)."""
        return self.model.item_table()[self._check_ids(iids, "iids")]

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """(N + 1, dim) all item vectors, row 0 = padding."""
        return self.model.item_table()

    @torch.no_grad()
    def score(self, histories: torch.Tensor, iids: torch.Tensor | None = None) -> torch.Tensor:
        """Dot-product scores: (B, N + 1) over all ids if iids is None (column 0 is padding,
        not masked), else the scores of the given items: iids (B,) -> (B,), (B, K) -> (B, K)."""
        u = self.encode_users(histories)
        if iids is None:
            return u @ self.model.item_table().T
        ids = self._check_ids(iids, "iids")
        v = self.model.item_table()[ids]
        if ids.dim() == 1:
            return (u * v).sum(-1)
        return torch.einsum("bd,bkd->bk", u, v)


MODEL_FORMAT = "recmodel/v1"


def save_model_file(
    path: str | Path, arch: dict[str, Any], n_items: int, state_dict: dict[str, torch.Tensor],
    config: dict[str, Any], metadata: dict[str, Any],
) -> None:
    """Write a model file (atomically): what `load_model_file` needs to rebuild the model.

    Only plain types and tensors go in, so it loads with torch.load(weights_only=True).
    """
    payload = {
        "format": MODEL_FORMAT,
        "arch": dict(arch),
        "n_items": int(n_items),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": config,
        "metadata": metadata,
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def load_model_file(path: str | Path, device: str = "cpu") -> tuple[TwoTower, dict[str, Any]]:
    """Build the model stored in a recmodel/model.pt (weights + architecture) in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise StageError(
            f"missing recommender {path} (written by python -m recmodel.train / bash shell/recmodel_train.sh; "
            "run that stage first)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise StageError(f"{path}: not a readable recmodel checkpoint ({e})") from None
    for key in ("arch", "n_items", "state_dict"):
        if key not in payload:
            raise StageError(f"{path}: not a recmodel model file (missing '{key}')")
    model = build_model(payload["arch"], int(payload["n_items"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload


def load_rec_encoder(cfg: Any, device: str = "cpu", path: str | Path | None = None) -> RecEncoder:
    """The frozen target recommender of `cfg` (cfg.recmodel_dir/model.pt) as a RecEncoder.

    The architecture comes from the file, not from `cfg`, so an encoder always matches
    the weights it was trained with even if the YAML changed since.
    """
    path = Path(path) if path is not None else cfg.recmodel_dir / "model.pt"
    model, payload = load_model_file(path, resolve_device(device))
    info = {"path": str(path), "arch": payload["arch"], **payload.get("metadata", {})}
    log.info("loaded %s recommender from %s (dim %d, %d items)", payload["arch"].get("model"), path,
             model.hidden_size, model.n_items)
    return RecEncoder(model, info)


def masked_scores(encoder: RecEncoder, hists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw scores, scores with the whole history and padding at -inf), both (B, N + 1)."""
    scores = encoder.score(right_aligned(hists, encoder.max_seq_len)).float()
    return scores, mask_history_(scores.clone(), padded_full(hists).to(scores.device))
