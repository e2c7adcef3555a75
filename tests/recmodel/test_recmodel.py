"""recmodel training: the model learns, evaluation masks history, runs resume and are deterministic."""

from __future__ import annotations

import math

import pytest
import torch

from recmodel import train as rtrain
from recmodel.data import RecData, realign_right, right_aligned, train_windows
from recmodel.models import SASRec, TwoTower, build_model, next_item_loss
from core.config import ConfigError
from core.utils import StageError, read_json
from tests.fixtures_recmodel import cluster_sequences, make_cfg, successor_sequences, write_canonical


def test_train_windows_cover_every_transition_once():
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 5], [7]]
    x, y = train_windows(seqs, max_len=3)
    pairs = sorted((int(a), int(b)) for a, b in zip(x.flatten(), y.flatten()) if b > 0)
    want = sorted((s[i], s[i + 1]) for s in seqs for i in range(len(s) - 1))
    assert pairs == want
    assert x.shape[1] == 3 and bool(((x == 0) == (y == 0)).all())  # a target exactly where an input is
    # right-aligned: padding only on the left
    for row in x.tolist():
        nz = [i for i, v in enumerate(row) if v]
        assert nz == list(range(3 - len(nz), 3))


def test_right_aligned_and_realign():
    t = right_aligned([[1, 2, 3, 4], [5]], 3)
    assert t.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert realign_right(torch.tensor([[5, 6, 0, 0], [0, 7, 0, 8]])).tolist() == [[0, 0, 5, 6], [0, 0, 7, 8]]


def test_sasrec_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    m = SASRec(20, hidden_size=16, num_layers=2, num_heads=2, inner_size=32, max_seq_len=6).eval()
    a = torch.tensor([[0, 0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 0, 3, 4, 5, 9]])  # differs only in the last item
    oa, ob = m.sequence_output(a), m.sequence_output(b)
    assert torch.allclose(oa[:, :5], ob[:, :5], atol=1e-6)  # earlier positions cannot see the future
    assert not torch.allclose(oa[:, 5], ob[:, 5])
    # a shorter input with the same items gives the same user vector (padding is inert)
    assert torch.allclose(m.user_repr(a), m.user_repr(torch.tensor([[3, 4, 5, 6]])), atol=1e-5)
    assert torch.isfinite(m.sequence_output(torch.zeros(1, 6, dtype=torch.long))).all()


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_losses_decrease(loss):
    torch.manual_seed(0)
    m = SASRec(10, hidden_size=16, num_layers=1, num_heads=1, inner_size=32, hidden_dropout=0.0,
               attn_dropout=0.0, max_seq_len=5)
    x, y = train_windows([[1, 2, 3, 4, 5, 6, 7]] * 4, 5)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    first = None
    for _ in range(60):
        lo = next_item_loss(m, x, y, loss, num_negatives=2)
        first = first if first is not None else lo.item()
        opt.zero_grad()
        lo.backward()
        opt.step()
    assert lo.item() < 0.3 * first


class _FixedScores(TwoTower):
    """A stub recommender whose score of item i is i, whatever the history."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items, self.hidden_size, self.max_seq_len = n_items, 1, 5
        self.item_emb = torch.nn.Embedding(n_items + 1, 1)
        with torch.no_grad():
            self.item_emb.weight.copy_(torch.arange(n_items + 1, dtype=torch.float).unsqueeze(1))

    def sequence_output(self, seqs):
        return torch.ones(*seqs.shape, 1)


def test_evaluation_masks_history_and_padding():
    m = _FixedScores(10)
    hist = right_aligned([[10, 9], [1]], 5)
    full = right_aligned([[10, 9, 2], [1]], 5)  # the full history may be longer than what the model sees
    targets = torch.tensor([8, 9])
    ranks = rtrain.rank_of_targets(m, hist, full, targets)
    # user 1: items 10, 9 are history -> 8 is the best remaining item; user 2: 10 beats 9
    assert ranks.tolist() == [0, 1]
    metrics = rtrain.ranking_metrics(ranks, [1, 5])
    assert metrics["hr@1"] == 0.5 and metrics["hr@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert metrics["mrr@5"] == pytest.approx(0.75)


def test_padding_only_protocol_lets_history_compete_and_ties_favour_the_target():
    """recmodel.eval_mask_history=False is RecBole's protocol: only item 0 is masked."""
    m = _FixedScores(10)  # score of item i is i
    hist = right_aligned([[10, 9], [1], [3, 7]], 5)
    full = right_aligned([[10, 9, 2], [1], [3, 7]], 5)
    targets = torch.tensor([8, 9, 5])
    masked = rtrain.rank_of_targets(m, hist, full, targets)
    plain = rtrain.rank_of_targets(m, hist, full, targets, mask_history=False)
    # user 1: history 10, 9 out of the way (rank 0) vs both above the target (rank 2);
    # user 2: the history item 1 scores below 9, so both protocols agree;
    # user 3: 7 (history) beats 5 only when history is not masked
    assert masked.tolist() == [0, 1, 4] and plain.tolist() == [2, 1, 5]
    assert (plain >= masked).all()  # unmasking can only push a target down
    # padding (item 0) is out of the ranking under both protocols: a model that scores
    # padding highest does not change the ranks
    m.item_emb.weight.data[0] = 100.0
    assert rtrain.rank_of_targets(m, hist, full, targets, mask_history=False).tolist() == [2, 1, 5]
    # ties count in the target's favour: items scoring exactly the target's score do not count
    m.item_emb.weight.data[:] = 1.0
    assert rtrain.rank_of_targets(m, hist, full, targets, mask_history=False).tolist() == [0, 0, 0]
    assert rtrain.rank_of_targets(m, hist, full, targets).tolist() == [0, 0, 0]


def test_fit_reports_both_protocols_and_trains_with_clipping_and_plateau(tmp_path):
    write_canonical(tmp_path, cluster_sequences(n_users=40, per_cluster=10, length=8), 30)
    cfg = make_cfg(tmp_path, "recmodel.epochs=4", "recmodel.patience=10", "recmodel.eval_mask_history=false",
                   "recmodel.grad_clip=1.0", "recmodel.lr_plateau_factor=0.1", "recmodel.eval_ks=[10]")
    res = rtrain.fit(cfg, progress=False)
    assert res["eval_protocol"] == "padding_only"
    by = res["test_by_protocol"]
    assert by["padding_only"] == res["test"]
    assert by["history_masked"]["hr@10"] >= by["padding_only"]["hr@10"]
    # the resume signature carries the non-default keys: a changed clip is refused
    (cfg.recmodel_dir / "model.pt").unlink()
    with pytest.raises(StageError, match="grad_clip"):
        rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=4", "recmodel.patience=10", "recmodel.eval_mask_history=false",
                            "recmodel.grad_clip=2.0", "recmodel.lr_plateau_factor=0.1", "recmodel.eval_ks=[10]"),
                   progress=False)
    with pytest.raises(ConfigError, match="lr_plateau_factor"):
        rtrain.fit(make_cfg(tmp_path / "bad", "recmodel.lr_plateau_factor=1.5"), progress=False)


def test_sasrec_overfits_successor_pattern_to_hr1(tmp_path):
    write_canonical(tmp_path, successor_sequences(), 30)
    cfg = make_cfg(tmp_path, "recmodel.epochs=60", "recmodel.patience=60", "recmodel.lr=0.01",
                   "recmodel.hidden_dropout=0.0", "recmodel.attn_dropout=0.0", "recmodel.eval_ks=[1,5,10]")
    res = rtrain.fit(cfg, progress=False)
    assert res["finished"]
    assert res["test"]["hr@1"] == 1.0 and res["valid"]["hr@1"] == 1.0
    assert (cfg.recmodel_dir / "model.pt").exists()
    saved = read_json(cfg.recmodel_dir / "metrics.json")
    assert saved["test"] == res["test"] and saved["best_epoch"] >= 1
    assert {"hr@10", "ndcg@10", "mrr@10", "hr@5", "ndcg@5", "mrr@5"} <= set(saved["valid"])
    assert saved["seconds"] > 0 and len(saved["history"]) == saved["epochs_run"]
    # a second run skips (outputs exist) and returns the same metrics
    assert rtrain.fit(cfg, progress=False)["test"] == res["test"]


def _state(cfg):
    return torch.load(cfg.recmodel_dir / "model.pt", weights_only=True)["state_dict"]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    seqs = cluster_sequences()
    over = ["recmodel.epochs=4", "recmodel.patience=10", "recmodel.loss=bce", "recmodel.num_negatives=3"]
    write_canonical(tmp_path / "a", seqs, 30)
    write_canonical(tmp_path / "b", seqs, 30)
    full = make_cfg(tmp_path / "a", *over)
    rtrain.fit(full, progress=False)

    part = make_cfg(tmp_path / "b", *over)
    res = rtrain.fit(part, progress=False, max_epochs=2)
    assert res == {"finished": False, "epochs_run": 2, "best_epoch": res["best_epoch"],
                   "best_valid_ndcg@10": res["best_valid_ndcg@10"]}
    assert (part.recmodel_dir / "checkpoint_last.pt").exists()
    assert not (part.recmodel_dir / "model.pt").exists() and not (part.recmodel_dir / "metrics.json").exists()
    res = rtrain.fit(part, progress=False)  # the re-run continues at epoch 3
    assert res["finished"] and res["epochs_run"] == 4
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4]
    a, b = _state(full), _state(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(full.recmodel_dir / "metrics.json")["test"] == res["test"]


def test_resume_refuses_changed_settings_and_force_restarts(tmp_path):
    write_canonical(tmp_path, cluster_sequences(), 30)
    rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=3"), progress=False, max_epochs=1)
    with pytest.raises(StageError, match="hidden_size"):
        rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=3", "recmodel.hidden_size=16"), progress=False)
    res = rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=2", "recmodel.hidden_size=16"), progress=False, force=True)
    assert res["finished"] and res["epochs_run"] == 2


def test_early_stopping_keeps_best_epoch(tmp_path):
    write_canonical(tmp_path, cluster_sequences(), 30)
    cfg = make_cfg(tmp_path, "recmodel.epochs=40", "recmodel.patience=2", "recmodel.lr=0.05")
    res = rtrain.fit(cfg, progress=False)
    hist = res["history"]
    assert res["stopped_early"] and res["epochs_run"] < 40
    best = max(h["valid_ndcg@10"] for h in hist)
    first_best = next(h["epoch"] for h in hist if h["valid_ndcg@10"] == best)
    last_best = max(h["epoch"] for h in hist if h["valid_ndcg@10"] == best)
    assert res["best_epoch"] == last_best  # ties keep the later weights
    assert res["epochs_run"] == first_best + 2  # ...but do not reset the patience
    assert res["valid"]["ndcg@10"] == pytest.approx(best)


def test_mf_trains_and_learns_clusters(tmp_path):
    write_canonical(tmp_path, cluster_sequences(), 30)
    cfg = make_cfg(tmp_path, "recmodel.model=mf", "recmodel.epochs=40", "recmodel.patience=40",
                   "recmodel.lr=0.01", "recmodel.hidden_dropout=0.0")
    res = rtrain.fit(cfg, progress=False)
    # a random ranking of the ~23 non-history items puts one of the cluster's 2-3 unseen items
    # in the top 5 with probability ~0.5; knowing the cluster does it always
    assert res["test"]["hr@5"] > 0.9
    payload = torch.load(cfg.recmodel_dir / "model.pt", weights_only=True)
    assert payload["arch"]["model"] == "mf"
    assert isinstance(build_model(payload["arch"], payload["n_items"]), TwoTower)


def test_bad_config_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="recmodel.loss"):
        rtrain.fit(make_cfg(tmp_path, "recmodel.loss=hinge"), progress=False)
    with pytest.raises(StageError, match="sequences|dataset.json"):
        rtrain.fit(make_cfg(tmp_path), progress=False)
    assert rtrain.main(["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}", "--no-progress"]) == 2


def test_recdata_splits():
    d = RecData(sequences={1: [1, 2, 3, 4], 2: [3, 1, 2]}, n_items=4, n_users=2)
    assert d.train_part(1) == [1, 2]
    assert d.eval_examples("valid") == ([1, 2], [[1, 2], [3]], [3, 1])
    assert d.eval_examples("test") == ([1, 2], [[1, 2, 3], [3, 1]], [4, 2])
    assert d.item_popularity().tolist() == [0, 1, 1, 1, 0]


def test_successor_fixture_is_learnable():
    seqs = successor_sequences()
    train = {(s[i], s[i + 1]) for s in seqs.values() for i in range(len(s) - 3)}
    needed = {(s[-3], s[-2]) for s in seqs.values()} | {(s[-2], s[-1]) for s in seqs.values()}
    assert needed <= train
