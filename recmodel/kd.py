"""KD-SASRec: a student SASRec distilled from the target recommender's scores (Table 1 baseline).

The paper's "SASRec" row is another sequential recommender aligned to the target by
knowledge distillation as in EMKD (Du et al., SIGIR 2023): minimise the KL divergence
between the teacher's and the student's softmax over the entire item set. Here, at every
position of every training window the student sees the same history as the teacher and
is trained on

    T^2 * KL( softmax(teacher_logits / T) || softmax(student_logits / T) )

with the items already in the history (up to that position) and padding masked out of
both distributions, because the tasks the student is scored on only ever rank
non-history items. The ground-truth next items are not used: the student learns the
teacher, not the data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recmodel.data import RecData, train_windows
from recmodel.encoder import save_model_file
from recmodel.models import SASRec, TwoTower, train_epoch
from core.config import ConfigError
from core.utils import set_seed

log = logging.getLogger(__name__)

#: finite stand-in for -inf so that masked entries have zero probability but finite log-probability
_MASKED = -1.0e9


def student_arch(cfg: Any) -> dict[str, Any]:
    """Architecture of the student from recmodel.kd (sequence length / activation as the teacher).

    A size of 0 (hidden_size, num_layers, num_heads, inner_size) takes the teacher's, so by
    default the student is as large as the target SASRec (paper 3.2.2 sizes per dataset).
    """
    kd, rc = cfg.recmodel.kd, cfg.recmodel
    sizes = {}
    for key in ("hidden_size", "num_layers", "num_heads", "inner_size"):
        value = getattr(kd, key)
        if value < 0:
            raise ConfigError(f"recmodel.kd.{key} must be >= 0 (0 = the teacher's recmodel.{key}), got {value}")
        sizes[key] = value or getattr(rc, key)
    if sizes["num_heads"] < 1 or sizes["hidden_size"] % sizes["num_heads"]:
        raise ConfigError(f"recmodel.kd.hidden_size ({sizes['hidden_size']}) must be divisible by num_heads "
                          f"({sizes['num_heads']}) (0 = the teacher's)")
    if kd.temperature <= 0 or kd.epochs < 1:
        raise ConfigError("recmodel.kd.temperature must be > 0 and recmodel.kd.epochs >= 1")
    return {
        "model": "sasrec", **sizes, "hidden_act": rc.hidden_act, "hidden_dropout": kd.dropout,
        "attn_dropout": kd.dropout, "max_seq_len": rc.max_seq_len,
    }


def prefix_history_mask(inputs: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, L) inputs -> (B, L, N + 1) bool: item i occurs in inputs[b, :t+1] (column 0 always)."""
    seen = torch.zeros(*inputs.shape, n_items + 1, dtype=torch.uint8, device=inputs.device)
    seen.scatter_(2, inputs.unsqueeze(-1), 1)
    seen = seen.cummax(dim=1).values.bool()
    seen[..., 0] = True
    return seen


def distillation_loss(
    student: TwoTower, teacher: TwoTower, inputs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over real positions of T^2 * KL(teacher || student) on history-masked softmaxes."""
    keep = inputs > 0
    mask = prefix_history_mask(inputs, student.n_items)[keep]  # (P, N + 1)
    with torch.no_grad():
        t_logits = teacher.sequence_output(inputs)[keep] @ teacher.item_table().T
        t_logp = F.log_softmax(t_logits.masked_fill(mask, _MASKED) / temperature, dim=-1)
    s_logits = student.sequence_output(inputs)[keep] @ student.item_table().T
    s_logp = F.log_softmax(s_logits.masked_fill(mask, _MASKED) / temperature, dim=-1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    return kl * temperature**2


def train_student(
    cfg: Any, teacher: TwoTower, data: RecData, out_path: Path, *, device: str = "cpu", progress: bool = True,
) -> SASRec:
    """Distil `teacher` into a fresh student SASRec on the train windows; save it to out_path.

    The file has the layout of recmodel/model.pt, so `recmodel.encoder.load_model_file`
    (and `load_rec_encoder(..., path=...)`) read it.
    """
    kd, rc = cfg.recmodel.kd, cfg.recmodel
    arch = student_arch(cfg)
    set_seed(cfg.seed + 7)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = SASRec(data.n_items, **{k: v for k, v in arch.items() if k != "model"}).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=kd.lr, weight_decay=0.0)
    train_x, _ = train_windows([data.train_part(u) for u in data.uids], rc.max_seq_len)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    history = []
    t_start = time.perf_counter()
    for epoch in tqdm(range(kd.epochs), desc="kd-sasrec epochs", disable=not progress):
        kl = train_epoch(
            student, opt, torch.randperm(train_x.shape[0], generator=gen), rc.batch_size,
            lambda idx: distillation_loss(student, teacher, train_x[idx].to(device), kd.temperature),
            desc=f"kd epoch {epoch + 1}", progress=progress)
        history.append({"epoch": epoch + 1, "kl": kl})
        log.info("kd epoch %d: KL %.4f", epoch + 1, kl)
    student.eval()
    save_model_file(
        out_path, arch, data.n_items, student.state_dict(), config=asdict(kd),
        metadata={"kind": "kd_student", "history": history, "seconds": round(time.perf_counter() - t_start, 2),
                  "seed": cfg.seed},
    )
    log.info("wrote %s", out_path)
    return student
