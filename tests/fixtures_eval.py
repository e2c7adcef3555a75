"""Fixtures for the evaluation tests: a canonical dataset and task files written by code.

40 items titled like MovieLens ("Movie 7 (1987)"), users with histories over them, and
task records of every inference mode in the shapes data_gen writes: text-only
(behaviour) records and ``<user>``/``<item>`` (intention) records. The recommender is
``tests.fixtures_llm.FakeEncoder`` (ids 1..40).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.config import Config, load_config
from tests.fixtures_llm import N_ITEMS

TITLES = [f"Movie {i} ({1950 + i})" for i in range(1, N_ITEMS + 1)]


def eval_cfg(tmp_path: Path, *overrides: str) -> Config:
    return load_config(
        "configs/tiny.yaml",
        [
            f"paths.root={tmp_path}/out", f"paths.raw_dir={tmp_path}/raw", "recmodel.hidden_size=16",
            "eval.batch_size=3", "eval.max_new_tokens=12", "eval.max_new_tokens_list=20", "eval.num_beams=3",
            "eval.device=cpu", *overrides,
        ],
    )


def write_dataset(cfg: Config, n_users: int = 12, seed: int = 0) -> dict[int, list[int]]:
    rng = random.Random(seed)
    seqs = {u: rng.sample(range(1, N_ITEMS + 1), rng.randint(5, 9)) for u in range(1, n_users + 1)}
    used = {i for s in seqs.values() for i in s}
    for i in range(1, N_ITEMS + 1):  # every item must occur somewhere
        if i not in used:
            seqs[1 + i % n_users].append(i)
    d = cfg.data_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "sequences.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in seqs.items()))
    (d / "items.jsonl").write_text("".join(json.dumps({"iid": i, "title": t}) + "\n" for i, t in enumerate(TITLES, 1)))
    (d / "dataset.json").write_text(json.dumps({"n_users": len(seqs), "n_items": N_ITEMS}))
    return seqs


def _t(iids: list[int]) -> str:
    return "; ".join(TITLES[i - 1] for i in iids)


def make_records(seqs: dict[int, list[int]], form: str, split: str, seed: int = 1) -> list[dict]:
    """Records of every mode for each user; form 'text' (titles) or 'emb' (<user>/<item>)."""
    rng = random.Random(f"{seed}:{form}:{split}")
    out: list[dict] = []
    for u, seq in seqs.items():
        hist = seq[:-2] if split == "valid" else seq[:-3]
        hist_txt = _t(hist) if form == "text" else "<user>"
        top = rng.randint(1, N_ITEMS)
        cands = rng.sample(range(1, N_ITEMS + 1), 5)
        pos = rng.randint(1, N_ITEMS)
        base = {"uid": u, "history": hist, "candidates": [], "form": "behaviour" if form == "text" else "intention"}
        out.append({**base, "id": f"{split}-{form}-next-{u}", "type": "uid2next", "iid": top, "iids_in_question": [],
                    "question": f"Given the user purchase history: {hist_txt} , generate the next most likely clicked item title.",
                    "answer": TITLES[top - 1]})
        items_txt = _t(cands) if form == "text" else "; ".join("<item>" for _ in cands)
        out.append({**base, "id": f"{split}-{form}-rank-{u}", "type": "uidiid2rank", "iid": cands[0],
                    "candidates": cands, "iids_in_question": [] if form == "text" else list(cands),
                    "question": f"Given the user history: {hist_txt} and next items to be ranked: {items_txt} , generate the sorted item titles.",
                    "answer": _t(sorted(cands))})
        item_txt = TITLES[pos - 1] if form == "text" else "<item>"
        out.append({**base, "id": f"{split}-{form}-bin-{u}", "type": "uidiid2binary", "iid": pos,
                    "iids_in_question": [] if form == "text" else [pos], "label": "Yes" if u % 2 else "No",
                    "question": f"The user has the following purchase history: {hist_txt} . Will the user like the item: {item_txt} ?",
                    "answer": "Yes" if u % 2 else "No"})
        if form == "emb":
            out.append({**base, "id": f"{split}-{form}-hist-{u}", "type": "uid2hist", "iid": 0, "iids_in_question": [],
                        "question": "What are the history titles of the user: <user> ?", "answer": _t(hist[-9:])})
            out.append({**base, "id": f"{split}-{form}-title-{u}", "type": "iid2title", "iid": pos,
                        "iids_in_question": [pos], "question": "What is the title of the item: <item> ?",
                        "answer": TITLES[pos - 1]})
    return out


def write_eval_tasks(cfg: Config, seqs: dict[int, list[int]]) -> None:
    cfg.tasks_dir.mkdir(parents=True, exist_ok=True)
    for tt, form in (("behaviour", "text"), ("intention", "emb"), ("both", "emb")):
        for split in ("train", "valid"):
            recs = make_records(seqs, form, split)
            (cfg.tasks_dir / f"{tt}_{split}.json").write_text(json.dumps(recs), encoding="utf-8")


def setup_eval_root(tmp_path: Path, *overrides: str) -> Config:
    cfg = eval_cfg(tmp_path, *overrides)
    write_eval_tasks(cfg, write_dataset(cfg))
    return cfg


def load_tiny_explainer(cfg: Config):
    """The tiny base LM as a RecExplainer over FakeEncoder, projectors given random weights.

    Untrained ("none") projectors output zero; random ones make the markers really change
    the model input, so marker handling (batching, left padding) is exercised.
    """
    import torch

    from src.model import load_trained
    from tests.fixtures_llm import FakeEncoder

    torch.manual_seed(0)
    model, tok = load_trained(cfg, "none", rec_encoder=FakeEncoder(16))
    with torch.no_grad():
        for p in list(model.user_proj.parameters()) + list(model.item_proj.parameters()):
            p.normal_(0, 0.5)
    return model, tok


def read_sequences(cfg: Config) -> dict[int, list[int]]:
    rows = [line.split() for line in (cfg.data_dir / "sequences.txt").read_text().splitlines() if line.strip()]
    return {int(r[0]): [int(x) for x in r[1:]] for r in rows}
