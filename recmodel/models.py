"""The target recommenders: SASRec and a history-based matrix factorisation, plus their losses.

Both are two-tower models with one contract, which is all that training, export and the
LLM side rely on:

* ``sequence_output(seqs)``: (B, L) right-aligned item ids -> (B, L, d), the user state
  after each position (causal: position t sees items 0..t only);
* ``user_repr(seqs)``: (B, d), the state at the last position (the most recent item);
* ``item_table()``: (N + 1, d) item embeddings, row 0 = padding;
* score(user, item) = dot product of the two.

Because the user side is a function of the history and not of a user id, a user vector
can be computed for *any* history, including the truncated histories at every train
position that the LLM tasks are built from. That is why the MF variant below is the
asymmetric ("item-based") factorisation rather than a user-id table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.config import ConfigError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}
MODELS = ("sasrec", "mf")
LOSSES = ("ce", "bce")

#: the RecModelConfig fields that define the architecture (saved inside model.pt)
ARCH_KEYS = (
    "model", "hidden_size", "num_layers", "num_heads", "inner_size", "hidden_act",
    "hidden_dropout", "attn_dropout", "max_seq_len",
)


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style init (normal 0.02, zero bias), as in RecBole's SASRec; padding row stays 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TwoTower(nn.Module):
    """Shared scoring code; subclasses define `sequence_output` and own `item_emb`."""

    item_emb: nn.Embedding
    n_items: int
    hidden_size: int
    max_seq_len: int

    def sequence_output(self, seqs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        # the one abstract hook of TwoTower: SASRec and MF each define it
        raise NotImplementedError(f"{type(self).__name__} must define sequence_output (B, L) -> (B, L, d)")

    def user_repr(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) right-aligned histories -> (B, d) user vectors (state after the last item)."""
        return self.sequence_output(seqs)[:, -1, :]

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight

    def full_scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, N + 1) dot-product scores against every item id (column 0 = padding)."""
        return self.user_repr(seqs) @ self.item_table().T


class _CausalBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + FFN(LN(x)), dropout on both branches."""

    def __init__(self, d: int, heads: int, inner: int, act: str, hidden_dropout: float, attn_dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"recmodel.hidden_size ({d}) must be divisible by recmodel.num_heads ({heads})")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, inner)
        self.ff2 = nn.Linear(inner, d)
        self.act = ACTIVATIONS[act]()
        self.drop = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff2(self.drop(self.act(self.ff1(self.ln2(x))))))


class SASRec(TwoTower):
    """Self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

    Item embedding + learned absolute position embedding, a stack of causal multi-head
    self-attention blocks (layer norm, residuals, dropout, point-wise feed-forward), a
    final layer norm; the user vector is the output at the last position and items are
    scored by dot product with the *same* item embedding table (weight tying, as in the
    paper). Attention never looks at padding keys: each query attends to the real items
    at or before it, and a padding query only to itself (which keeps softmax defined).
    """

    def __init__(
        self, n_items: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
        inner_size: int = 256, hidden_act: str = "gelu", hidden_dropout: float = 0.2,
        attn_dropout: float = 0.2, max_seq_len: int = 50,
    ):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"recmodel.hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.n_items, self.hidden_size, self.max_seq_len = n_items, hidden_size, max_seq_len
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_seq_len, hidden_size)
        self.emb_drop = nn.Dropout(hidden_dropout)
        self.blocks = nn.ModuleList(
            _CausalBlock(hidden_size, num_heads, inner_size, hidden_act, hidden_dropout, attn_dropout)
            for _ in range(num_layers)
        )
        self.final_ln = nn.LayerNorm(hidden_size)
        self.register_buffer("_causal", torch.ones(max_seq_len, max_seq_len, dtype=torch.bool).tril(), persistent=False)
        self.apply(_init_weights)

    def sequence_output(self, seqs: torch.Tensor) -> torch.Tensor:
        b, length = seqs.shape
        if length > self.max_seq_len:
            raise ValueError(f"history length {length} exceeds max_seq_len {self.max_seq_len}")
        # right-aligned input: the last column always gets the last position embedding
        pos = torch.arange(self.max_seq_len - length, self.max_seq_len, device=seqs.device)
        real = seqs != 0
        x = self.emb_drop(self.item_emb(seqs) + self.pos_emb(pos).unsqueeze(0))
        x = x * real.unsqueeze(-1)
        causal = self._causal[:length, :length]
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        mask = (causal & real.unsqueeze(1)) | eye  # (B, L, L): query t -> real keys <= t, or itself
        mask = mask.unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask) * real.unsqueeze(-1)
        return self.final_ln(x)


class HistoryMF(TwoTower):
    """Matrix factorisation whose user factor is built from the user's items (asymmetric MF).

    score(u, i) = p_u . q_i with p_u = W * mean_{j in history(u)} y_j  (Paterek's NSVD /
    Koren's asymmetric SVD / FISM family). Two item tables: q (target side, scored and
    exported) and y (history side). A classic user-id table p_u cannot give a vector for
    a history it was not trained on (every train prefix, every test history), which the
    RecExplainer tasks need; the asymmetric form is the standard fix and keeps the model
    a pure dot-product factorisation, with no order information (unlike SASRec).
    `sequence_output` returns the running mean over positions, so the same next-item
    training loop (every position predicts the next item) trains it.
    """

    def __init__(self, n_items: int, hidden_size: int = 64, hidden_dropout: float = 0.2, max_seq_len: int = 50, **_: Any):
        super().__init__()
        self.n_items, self.hidden_size, self.max_seq_len = n_items, hidden_size, max_seq_len
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.hist_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.user_map = nn.Linear(hidden_size, hidden_size)
        self.drop = nn.Dropout(hidden_dropout)
        self.apply(_init_weights)
        nn.init.eye_(self.user_map.weight)

    def sequence_output(self, seqs: torch.Tensor) -> torch.Tensor:
        real = (seqs != 0).unsqueeze(-1).to(self.hist_emb.weight.dtype)
        summed = torch.cumsum(self.drop(self.hist_emb(seqs)) * real, dim=1)
        count = torch.cumsum(real, dim=1).clamp_min(1.0)
        return self.user_map(summed / count)


def build_model(arch: dict[str, Any], n_items: int) -> TwoTower:
    """Model from the architecture keys of RecModelConfig (see ARCH_KEYS)."""
    kind = arch.get("model", "sasrec")
    kwargs = {k: arch[k] for k in ARCH_KEYS if k in arch and k != "model"}
    if kind == "sasrec":
        return SASRec(n_items, **kwargs)
    if kind == "mf":
        return HistoryMF(n_items, **kwargs)
    raise ValueError(f"recmodel.model must be one of {MODELS}, got {kind!r}")


# --------------------------------------------------------------------------- losses


def next_item_loss(
    model: TwoTower, inputs: torch.Tensor, targets: torch.Tensor, loss: str = "ce", num_negatives: int = 1
) -> torch.Tensor:
    """Mean next-item loss over the non-padding positions of a batch of windows.

    ce: full softmax cross-entropy over all N items (UniRec's "fullsoftmax", the setting
    the paper's target was trained with). bce: binary cross-entropy of the target against
    `num_negatives` items drawn uniformly per position (the SASRec paper's objective);
    a draw that hits the target is shifted to the next id so it is always a negative.
    Only positions with a real target are projected onto the item table, which is the
    bulk of the compute.
    """
    keep = targets > 0
    h = model.sequence_output(inputs)[keep]  # (P, d)
    tgt = targets[keep]
    table = model.item_table()
    if loss == "ce":
        logits = h @ table[1:].T
        return F.cross_entropy(logits, tgt - 1)
    if loss == "bce":
        n = model.n_items
        neg = torch.randint(1, n + 1, (tgt.numel(), num_negatives), device=tgt.device)
        clash = neg == tgt.unsqueeze(1)
        neg = torch.where(clash, neg % n + 1, neg)
        pos_logit = (h * table[tgt]).sum(-1)
        neg_logit = torch.einsum("pd,pkd->pk", h, table[neg])
        return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()
    raise ValueError(f"recmodel.loss must be one of {LOSSES}, got {loss!r}")


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, order: torch.Tensor, batch_size: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor], *, grad_clip: float = 0.0, desc: str = "epoch",
    progress: bool = True,
) -> float:
    """One pass over the training windows in `order`: the one training loop of the target
    recommender (recmodel.train, next-item loss) and its KD student (recmodel.kd, the
    distillation loss), which differ only in `batch_loss` (window indices -> mean loss).
    Returns the mean loss per window."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=not progress)
    for lo in bar:
        idx = order[lo:lo + batch_size]
        loss = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.item() * idx.numel()
        count += idx.numel()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(count, 1)


def mask_history_(scores: torch.Tensor, full_histories: torch.Tensor) -> torch.Tensor:
    """In place: -inf at every history item and at padding id 0 (row-wise), return scores."""
    scores.scatter_(1, full_histories, -math.inf)
    scores[:, 0] = -math.inf
    return scores


def validate_recmodel_config(rc: Any, where: str = "recmodel") -> None:
    """Reject impossible settings up front, naming the key (ConfigError)."""
    if rc.model not in MODELS:
        raise ConfigError(f"{where}.model must be one of {MODELS}, got {rc.model!r}")
    if rc.loss not in LOSSES:
        raise ConfigError(f"{where}.loss must be one of {LOSSES}, got {rc.loss!r}")
    for key in ("hidden_size", "num_layers", "num_heads", "inner_size", "max_seq_len", "batch_size", "epochs",
                "patience", "num_negatives", "export_topk", "sim_topk"):
        if getattr(rc, key) < (0 if key == "num_layers" else 1):
            raise ConfigError(f"{where}.{key} must be positive, got {getattr(rc, key)}")
    if rc.hidden_size % rc.num_heads:
        raise ConfigError(f"{where}.hidden_size ({rc.hidden_size}) must be divisible by num_heads ({rc.num_heads})")
    if not 0 < rc.pos_cut < 1 or not 0 < rc.neg_cut < 1 or rc.pos_cut + rc.neg_cut > 1:
        raise ConfigError(f"{where}.pos_cut/neg_cut must be in (0, 1) with pos_cut + neg_cut <= 1")
    if not rc.eval_ks or min(rc.eval_ks) < 1:
        raise ConfigError(f"{where}.eval_ks must be a non-empty list of positive integers")
    if rc.grad_clip < 0:
        raise ConfigError(f"{where}.grad_clip must be >= 0 (0 = no clipping), got {rc.grad_clip}")
    if not 0 <= rc.lr_plateau_factor < 1:
        raise ConfigError(f"{where}.lr_plateau_factor must be in [0, 1) (0 = constant lr), got {rc.lr_plateau_factor}")
