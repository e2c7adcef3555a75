"""recmodel exports and the RecEncoder: the *_top.jsonl contract, item_sim, the frozen encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recmodel import infer as rinfer
from recmodel import train as rtrain
from recmodel.encoder import RecEncoder, load_rec_encoder
from core.utils import StageError, read_json, read_jsonl
from tests.fixtures_recmodel import cluster_sequences, make_cfg, write_canonical

SEQS = cluster_sequences(n_users=50, n_clusters=3, per_cluster=12, length=9)
N_ITEMS = 36


@pytest.fixture(scope="module", params=["sasrec", "mf"])
def trained(request, tmp_path_factory):
    """A small trained recommender of each kind with its exports."""
    root = tmp_path_factory.mktemp(request.param)
    write_canonical(root, SEQS, N_ITEMS)
    cfg = make_cfg(root, f"recmodel.model={request.param}", "recmodel.epochs=8", "recmodel.lr=0.01",
                   "recmodel.max_seq_len=6")
    rtrain.fit(cfg, progress=False)
    rinfer.run(cfg)
    return cfg


def _cut_scores(enc: RecEncoder, history: list[int], full: list[int], pos_cut: float, neg_cut: float):
    """(scores, lowest score inside the top pos_cut, highest score inside the bottom neg_cut)."""
    s = enc.score(torch.tensor([history]))[0]
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask[0] = True
    mask[torch.tensor(full)] = True
    valid = s[~mask].sort(descending=True).values
    n = valid.numel()
    n_pos, n_neg = max(1, int(pos_cut * n)), max(1, int(neg_cut * n))
    return s, float(valid[n_pos - 1]), float(valid[n - n_neg])


def test_export_rows_satisfy_contract(trained):
    cfg = trained
    rc = cfg.recmodel
    enc = load_rec_encoder(cfg)
    for split in ("train", "valid", "test"):
        rows = read_jsonl(cfg.recmodel_dir / f"{split}_top.jsonl")
        if split == "train":
            per_user: dict[int, list[dict]] = {}
            for r in rows:
                per_user.setdefault(r["uid"], []).append(r)
            assert set(per_user) == set(SEQS)
            for uid, rs in per_user.items():
                train = SEQS[uid][:-2]
                want_pos = list(range(len(train) - 1, 0, -1))[: rc.export_train_cap]  # most recent first
                assert [r["target"] for r in rs] == [train[p] for p in want_pos]
        else:
            assert [r["uid"] for r in rows] == sorted(SEQS)
        for r in rows:
            assert set(r) == {"uid", "history", "target", "top", "rank_candidates", "pos", "neg", "pos_score", "neg_score"}
            seq = SEQS[r["uid"]]
            p = {"valid": len(seq) - 2, "test": len(seq) - 1}.get(split)
            if p is None:
                p = seq.index(r["target"])
            full = seq[:p]
            assert r["target"] == seq[p] and r["history"] == full[-rc.max_seq_len:]
            s, pos_cut, neg_cut = _cut_scores(enc, r["history"], full, rc.pos_cut, rc.neg_cut)
            # top-k: history masked, sorted by score, no padding, no repeats
            assert len(r["top"]) == rc.export_topk and len(set(r["top"])) == rc.export_topk
            assert not set(r["top"]) & set(full) and 0 not in r["top"]
            top_s = s[torch.tensor(r["top"])]
            assert bool((top_s[:-1] >= top_s[1:]).all())
            # the best non-history item is the first of top
            masked = s.clone()
            masked[0] = -float("inf")
            masked[torch.tensor(full)] = -float("inf")
            assert r["top"][0] == int(masked.argmax())
            # task 2: 5 distinct non-history candidates, sorted by the model's score
            c = r["rank_candidates"]
            assert len(c) == 5 and len(set(c)) == 5 and not set(c) & set(full) and 0 not in c
            cs = s[torch.tensor(c)]
            assert bool((cs[:-1] >= cs[1:]).all())
            # task 3: pos above the top-20% cut, neg below the bottom-50% cut, scores as exported
            assert r["pos"] not in full and r["neg"] not in full
            assert r["pos_score"] == pytest.approx(float(s[r["pos"]]), abs=1e-5)
            assert r["neg_score"] == pytest.approx(float(s[r["neg"]]), abs=1e-5)
            assert r["pos_score"] >= pos_cut - 1e-5 and r["neg_score"] <= neg_cut + 1e-5
            assert r["pos_score"] > r["neg_score"]


def test_candidates_are_spread_over_the_item_set(trained):
    """Uniform sampling from non-history items, not the model's top: candidates vary and reach low ranks."""
    rows = read_jsonl(trained.recmodel_dir / "train_top.jsonl")
    seen = {i for r in rows for i in r["rank_candidates"]}
    assert len(seen) > 0.8 * N_ITEMS
    not_top = sum(1 for r in rows for i in r["rank_candidates"] if i not in r["top"])
    assert not_top > 0.5 * 5 * len(rows)


def test_item_sim_is_cosine_topk(trained):
    cfg = trained
    sim = read_json(cfg.recmodel_dir / "item_sim.json")
    enc = load_rec_encoder(cfg)
    emb = F.normalize(enc.item_embeddings()[1:], dim=1)
    cos = emb @ emb.T
    assert sorted(int(k) for k in sim) == list(range(1, N_ITEMS + 1))
    for k, ids in sim.items():
        i = int(k)
        assert len(ids) == cfg.recmodel.sim_topk and i not in ids and len(set(ids)) == len(ids)
        row = cos[i - 1].clone()
        row[i - 1] = -2
        assert ids[0] == int(row.argmax()) + 1
        vals = row[torch.tensor(ids) - 1]
        assert bool((vals[:-1] >= vals[1:] - 1e-6).all())


def test_exports_are_deterministic_and_skipped_unless_forced(trained):
    cfg = trained
    path = cfg.recmodel_dir / "test_top.jsonl"
    before = path.read_text()
    mtime = path.stat().st_mtime_ns
    rinfer.run(cfg)  # everything exists: nothing rewritten
    assert path.stat().st_mtime_ns == mtime
    rinfer.run(cfg, force=True)
    assert path.read_text() == before


def test_encoder_protocol(trained):
    enc = load_rec_encoder(trained)
    assert isinstance(enc.dim, int) and enc.dim == trained.recmodel.hidden_size
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()  # a parent's train() must not switch dropout on
    assert not enc.training and not enc.model.training
    right = torch.tensor([[0, 0, 0, 3, 5, 7], [0, 0, 0, 0, 0, 2]])
    left = torch.tensor([[3, 5, 7, 0, 0, 0], [2, 0, 0, 0, 0, 0]])
    u = enc.encode_users(right)
    assert u.shape == (2, enc.dim) and not u.requires_grad
    assert torch.allclose(u, enc.encode_users(left))
    # longer than max_seq_len: the most recent items count
    long = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert torch.allclose(enc.encode_users(long), enc.encode_users(long[:, -6:]))
    iids = torch.tensor([1, 4, 9])
    assert enc.encode_items(iids).shape == (3, enc.dim)
    full = enc.score(right)
    assert full.shape == (2, N_ITEMS + 1)
    assert torch.allclose(full, u @ enc.item_embeddings().T, atol=1e-5)
    assert torch.allclose(enc.score(right, torch.tensor([4, 9])), full[[0, 1], [4, 9]], atol=1e-5)
    assert torch.allclose(enc.score(right, torch.tensor([[1, 2], [3, 4]])), full.gather(1, torch.tensor([[1, 2], [3, 4]])), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        enc.encode_users(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        enc.encode_items(torch.tensor([N_ITEMS + 1]))
    # eval mode means no dropout: repeated calls agree exactly
    assert torch.equal(enc.encode_users(right), enc.encode_users(right))


def test_infer_without_model_is_a_clear_error(tmp_path):
    write_canonical(tmp_path, SEQS, N_ITEMS)
    cfg = make_cfg(tmp_path)
    with pytest.raises(StageError, match="recmodel.train"):
        rinfer.run(cfg)
    assert rinfer.main(["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}"]) == 2
    assert not list((tmp_path / "recmodel").glob("*_top.jsonl")) if (tmp_path / "recmodel").exists() else True
