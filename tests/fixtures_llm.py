"""Fixtures for the LLM-side tests: a fake recommender and synthetic task files.

The fake encoder satisfies the RecEncoder protocol with a tiny embedding table, so the
LLM tests do not depend on a trained SASRec. Synthetic intention data make the answer a
function of the <user> embedding alone: the encoder maps a history to one of four cluster
centres, and the answer is that cluster's name; the question text is identical for all.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import Config, load_config

CLUSTERS = ["alpha", "beta", "gamma", "delta"]
N_ITEMS = 40
ITEMS_PER_CLUSTER = N_ITEMS // len(CLUSTERS)


class FakeEncoder(nn.Module):
    """RecEncoder stand-in: users -> their cluster centre (+ small noise from history)."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.items = nn.Embedding(N_ITEMS + 1, dim, padding_idx=0)
        with torch.no_grad():
            self.items.weight.copy_(torch.randn(N_ITEMS + 1, dim, generator=g))
            self.items.weight[0].zero_()
        self.centres = nn.Parameter(torch.randn(len(CLUSTERS), dim, generator=g) * 2)
        self.eval()

    @staticmethod
    def cluster_of(history: list[int]) -> int:
        return (history[-1] - 1) // ITEMS_PER_CLUSTER

    def encode_users(self, histories: torch.Tensor) -> torch.Tensor:
        last = histories[:, -1]
        return self.centres[(last - 1) // ITEMS_PER_CLUSTER] + 0.05 * self.items(histories).mean(1)

    def encode_items(self, iids: torch.Tensor) -> torch.Tensor:
        return self.items(iids)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded, and the test machine is shared.

    Thread hand-off costs more than these matmuls; with other processes on the cores,
    two threads made the training tests 7x slower. Restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(tmp_path: Path, *overrides: str) -> Config:
    return load_config(
        "configs/tiny.yaml",
        [f"paths.root={tmp_path}/out", f"paths.raw_dir={tmp_path}/raw", "recmodel.hidden_size=16", *overrides],
    )


def cluster_records(n: int, seed: int, prefix: str = "s") -> list[dict]:
    """Records whose answer is determined by the <user> embedding alone."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        c = rng.randrange(len(CLUSTERS))
        hist = [rng.randint(1, N_ITEMS) for _ in range(rng.randint(2, 6))]
        hist.append(c * ITEMS_PER_CLUSTER + rng.randint(1, ITEMS_PER_CLUSTER))
        out.append({
            "id": f"{prefix}{k}", "type": "uid2summary", "uid": k + 1, "iid": 0, "history": hist,
            "candidates": [], "iids_in_question": [],
            "question": "Which group does the user <user> belong to?", "answer": CLUSTERS[c],
        })
    return out


def mixed_records(n: int, seed: int, prefix: str = "m") -> list[dict]:
    """Records with both markers and varied lengths (prompt shapes of the real tasks)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        hist = [rng.randint(1, N_ITEMS) for _ in range(rng.randint(1, 8))]
        iids = [rng.randint(1, N_ITEMS) for _ in range(rng.randint(0, 2))]
        q = "Given the user <user> with history " + "; ".join(f"Movie {i}" for i in hist)
        q += ", " + " ".join("is <item> good?" for _ in iids) if iids else ", what next?"
        out.append({
            "id": f"{prefix}{k}", "type": "uid2next", "uid": k + 1, "iid": iids[0] if iids else 0,
            "history": hist, "candidates": [], "iids_in_question": iids,
            "question": q, "answer": f"Movie {rng.randint(1, N_ITEMS)}",
        })
    return out


def write_tasks(cfg: Config, task_type: str, train: list[dict], valid: list[dict]) -> None:
    cfg.tasks_dir.mkdir(parents=True, exist_ok=True)
    (cfg.tasks_dir / f"{task_type}_train.json").write_text(json.dumps(train), encoding="utf-8")
    (cfg.tasks_dir / f"{task_type}_valid.json").write_text(json.dumps(valid), encoding="utf-8")


def stop_at(n: int):
    """A Trainer callback that simulates a killed run: training stops right after step `n`
    (the checkpoints written up to that step are on disk)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == n:
                control.should_training_stop = True
            return control

    return StopAt()
