"""Table 1 baselines: the shared metric definitions, and KD-SASRec / Random / Popularity end to end."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from core import metrics as cm
from recmodel import baselines as rb
from recmodel import infer as rinfer
from recmodel import train as rtrain
from recmodel.kd import distillation_loss, prefix_history_mask
from recmodel.models import SASRec
from core.utils import StageError, read_json
from tests.fixtures_recmodel import cluster_sequences, make_cfg, write_canonical


def test_ranking_ndcg_definition():
    true = ["a", "b", "c", "d", "e"]
    assert cm.ranking_ndcg(true, true) == pytest.approx(1.0)
    idcg = 1000 + 100 / math.log2(3) + 10 / math.log2(4) + 1 / math.log2(5)
    # swapping the first two: 1000 at position 1, 100 at position 0
    assert cm.ranking_ndcg(["b", "a", "c", "d", "e"], true) == pytest.approx(
        (100 + 1000 / math.log2(3) + 10 / math.log2(4) + 1 / math.log2(5)) / idcg)
    # only the last item placed first contributes nothing (relevance 0)
    assert cm.ranking_ndcg(["e"], true) == 0.0
    # unknown items and repeats score 0; a shorter list is allowed
    assert cm.ranking_ndcg(["x", "a", "a"], true) == pytest.approx((1000 / math.log2(3)) / idcg)
    # a random order scores 0.6131 in expectation: the paper's Random row (0.6153/0.6100/0.6139)
    mean = sum(cm.ranking_ndcg(p, true) for p in itertools.permutations(true)) / 120
    assert mean == pytest.approx(0.6131, abs=1e-4)


def test_next_item_and_binary_definitions():
    assert cm.next_item_hit_ndcg([5, 6, 7], 7) == (1.0, pytest.approx(0.5))
    assert cm.next_item_hit_ndcg([5, 6, 7, 8, 9, 10], 10) == (0.0, 0.0)  # only the first 5 count
    assert rb.yes_cut(0.2, 0.5) == pytest.approx(0.35)
    assert rb.binary_yes(34, 100, 0.2, 0.5) and not rb.binary_yes(35, 100, 0.2, 0.5)


def test_prefix_history_mask_and_kd_loss_zero_for_identical_models():
    x = torch.tensor([[0, 2, 3, 2]])
    m = prefix_history_mask(x, 4)
    assert m[0, :, 0].all()
    assert m[0, 1].tolist() == [True, False, True, False, False]
    assert m[0, 3].tolist() == [True, False, True, True, False]
    torch.manual_seed(0)
    t = SASRec(4, hidden_size=8, num_layers=1, num_heads=1, inner_size=8, max_seq_len=4).eval()
    assert distillation_loss(t, t, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = SASRec(4, hidden_size=8, num_layers=1, num_heads=1, inner_size=8, max_seq_len=4).eval()
    assert distillation_loss(s, t, x, 2.0).item() > 0


def test_kd_student_is_the_teacher_size_unless_set(tmp_path):
    from recmodel.kd import student_arch
    from core.config import ConfigError

    teacher = ["recmodel.hidden_size=48", "recmodel.num_layers=3", "recmodel.num_heads=4", "recmodel.inner_size=96"]
    zero = ["recmodel.kd.hidden_size=0", "recmodel.kd.num_layers=0", "recmodel.kd.num_heads=0",
            "recmodel.kd.inner_size=0"]
    arch = student_arch(make_cfg(tmp_path, *teacher, *zero))
    assert (arch["hidden_size"], arch["num_layers"], arch["num_heads"], arch["inner_size"]) == (48, 3, 4, 96)
    # the dataclass default is 0 = the teacher's size (the paper profiles leave kd sizes unset)
    from core.config import KDConfig
    assert (KDConfig().hidden_size, KDConfig().num_layers, KDConfig().num_heads, KDConfig().inner_size) == (0, 0, 0, 0)
    # a size that is set wins, and the rest still follow the teacher
    arch = student_arch(make_cfg(tmp_path, *teacher, *zero, "recmodel.kd.hidden_size=16", "recmodel.kd.num_heads=2"))
    assert (arch["hidden_size"], arch["num_layers"], arch["num_heads"], arch["inner_size"]) == (16, 3, 2, 96)
    with pytest.raises(ConfigError, match="divisible"):
        student_arch(make_cfg(tmp_path, *teacher, *zero, "recmodel.kd.hidden_size=18"))
    with pytest.raises(ConfigError, match="kd.inner_size must be >= 0"):
        student_arch(make_cfg(tmp_path, *teacher, *zero, "recmodel.kd.inner_size=-1"))


def test_kd_student_agrees_with_teacher_better_than_random(tmp_path):
    write_canonical(tmp_path, cluster_sequences(n_users=60, per_cluster=12, length=9), 36)
    cfg = make_cfg(tmp_path, "recmodel.epochs=8", "recmodel.lr=0.01", "recmodel.kd.epochs=15",
                   "recmodel.kd.lr=0.01", "recmodel.kd.temperature=2.0")
    rtrain.fit(cfg, progress=False)
    rinfer.run(cfg)
    res = rb.run(cfg, progress=False)
    assert set(res) == {"random", "popularity", "kd_sasrec"}
    for m in res:
        saved = read_json(cfg.recmodel_dir / "baselines" / f"{m}.metrics.json")
        assert set(saved["uid2next"]) == {"hr@5", "ndcg@5", "n", "ci95"}
        assert set(saved["uidiid2rank"]) == {"ndcg@5", "n", "ci95"}
        assert set(saved["uidiid2binary"]) == {"acc", "n", "ci95"} and saved["n_rows"] == 60
        lo, hi = saved["uidiid2binary"]["ci95"]["acc"]
        assert lo <= saved["uidiid2binary"]["acc"] <= hi
    kd, rnd = res["kd_sasrec"], res["random"]
    assert kd["uid2next"]["hr@5"] > rnd["uid2next"]["hr@5"] + 0.3
    assert kd["uid2next"]["ndcg@5"] > rnd["uid2next"]["ndcg@5"]
    assert kd["uidiid2rank"]["ndcg@5"] > rnd["uidiid2rank"]["ndcg@5"] + 0.1
    assert kd["uidiid2binary"]["acc"] > 0.8
    # random sits at its expectations: ~5/27 hits, 0.613 ranking NDCG, 0.5 accuracy
    assert rnd["uid2next"]["hr@5"] < 0.4
    assert 0.5 < rnd["uidiid2rank"]["ndcg@5"] < 0.72
    assert 0.35 < rnd["uidiid2binary"]["acc"] < 0.65
    assert (cfg.recmodel_dir / "baselines" / "kd_sasrec.pt").exists()
    # a re-run skips the finished methods
    assert rb.run(cfg, progress=False) == {}
    # a changed KD setting or a retrained teacher stops the reuse of KD-SASRec, named (issue 13);
    # Random and Popularity do not depend on either
    other = make_cfg(tmp_path, "recmodel.epochs=8", "recmodel.lr=0.01", "recmodel.kd.epochs=15",
                     "recmodel.kd.lr=0.01", "recmodel.kd.temperature=3.0")
    assert rb.run(other, methods=["random", "popularity"], progress=False) == {}
    with pytest.raises(StageError, match=r"recmodel\.kd\.temperature: 2\.0 -> 3\.0.*--force"):
        rb.run(other, progress=False)


def test_popularity_samples_by_popularity_and_sorts_candidates():
    pop = torch.tensor([0.0, 100.0, 1.0, 1.0, 50.0])
    score = rb.popularity_scorer(pop)
    gen = torch.Generator().manual_seed(0)
    rows = [{}] * 2000
    retrieval, ranking, _ = score(rows, None, None, gen)
    first = retrieval[:, 1:].argmax(1) + 1
    share = (first == 1).double().mean().item()
    assert share == pytest.approx(100 / 152, abs=0.04)  # sampled in proportion to popularity
    # ranking: by count; the two items with count 1 are ordered at random, not by id
    order = ranking[:, 1:].argsort(1, descending=True) + 1
    assert bool((order[:, 0] == 1).all() and (order[:, 1] == 4).all())
    assert 0.4 < (order[:, 2] == 2).double().mean().item() < 0.6
