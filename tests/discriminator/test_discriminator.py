"""Discriminator data, classifier and score predictor on a separable toy set (tiny BERT, seconds)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random

import numpy as np
import pytest

from discriminator import data_gen, run_cls, run_reg
from core.utils import StageError, read_json, read_jsonl, write_json
from tests.fixtures_explan import make_tiny_bert, tiny_cfg

# each method has its own vocabulary (the classifier's signal); the score is written in words
STYLE = {"both": ["comedy", "pattern", "consistent"], "none": ["maybe", "perhaps", "unsure"],
         "chatgpt": ["certainly", "delightful", "overall"]}
SCORE_WORDS = {2.0: "strong", -2.0: "weak"}
FILLER = ["the", "user", "item", "likes", "history", "and", "film"]


def _write_explanations(cfg, n_pairs: int = 60) -> None:
    rng = random.Random(0)
    cfg.explain_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k in range(n_pairs):
        score = rng.choice(list(SCORE_WORDS))
        pairs.append((f"explan-valid-{k:05d}-pos", k + 1, 100 + k, score))
    for method, words in STYLE.items():
        with open(cfg.explain_dir / f"{method}_valid.jsonl", "w") as f:
            for rid, uid, iid, score in pairs:
                toks = [rng.choice(words) for _ in range(3)] + [SCORE_WORDS[score]] * 2 + rng.sample(FILLER, 3)
                rng.shuffle(toks)
                row = {"id": rid, "uid": uid, "iid": iid, "label": "Yes", "question": "q",
                       "explanation": " ".join(toks), "method": method, "score": score}
                f.write(json.dumps(row) + "\n")
        # one empty explanation is left out, not trained on
        with open(cfg.explain_dir / f"{method}_valid.jsonl", "a") as f:
            f.write(json.dumps({"id": "explan-valid-99999-pos", "uid": 1, "iid": 1, "label": "No",
                                "explanation": "  ", "score": 0.0}) + "\n")


@pytest.fixture()
def cfg(tmp_path):
    words = [w for ws in STYLE.values() for w in ws] + list(SCORE_WORDS.values()) + FILLER
    enc = make_tiny_bert(tmp_path / "bert", words)
    c = tiny_cfg(tmp_path, f"discriminator.encoder={enc}", "discriminator.epochs=12", "discriminator.lr=0.003",
                 "discriminator.batch_size=16", "discriminator.per_method=50", "discriminator.max_length=32",
                 "discriminator.device=cpu", "discriminator.warmup_ratio=0.0", "discriminator.weight_decay=0.0")
    _write_explanations(c)
    return c


def test_data_gen_split_is_shared_and_balanced(cfg):
    stats = data_gen.build(cfg)
    assert stats["cls_methods"] == ["both", "none", "chatgpt"] and stats["reg_methods"] == ["both", "none", "chatgpt"]
    d = data_gen.data_dir(cfg)
    train, test = read_jsonl(d / "cls_train.jsonl"), read_jsonl(d / "cls_test.jsonl")
    assert stats["cls"]["per_method"] == 50 and len(train) + len(test) == 150
    assert 0.1 <= len(test) / 150 <= 0.3
    test_ids = {r["id"] for r in test}
    assert not test_ids & {r["id"] for r in train}  # the same prompts never in both parts
    for m, label in (("both", 0), ("none", 1), ("chatgpt", 2)):
        assert {r["id"] for r in test if r["method"] == m} == test_ids  # same test prompts for every method
        assert all(r["label"] == label for r in train + test if r["method"] == m)
    reg_tests = [{r["id"] for r in read_jsonl(d / f"reg_{m}_test.jsonl")} for m in STYLE]
    assert reg_tests[0] == reg_tests[1] == reg_tests[2]
    assert all(r["text"].strip() for r in train)
    # a second call skips; --force rebuilds byte-identical files (seeded)
    before = (d / "cls_train.jsonl").read_bytes()
    mtime = (d / "stats.json").stat().st_mtime_ns
    data_gen.build(cfg)
    assert (d / "stats.json").stat().st_mtime_ns == mtime
    data_gen.build(cfg, force=True)
    assert (d / "cls_train.jsonl").read_bytes() == before
    # a method's explanations removed -> rebuilt without it, its stale files gone
    (cfg.explain_dir / "chatgpt_valid.jsonl").unlink()
    stats = data_gen.build(cfg)
    assert stats["cls_methods"] == ["both", "none"] and not (d / "reg_chatgpt_test.jsonl").exists()
    assert {r["label"] for r in read_jsonl(d / "cls_test.jsonl")} == {0, 1}


def test_data_gen_needs_explanations(tmp_path):
    from core.utils import StageError

    c = tiny_cfg(tmp_path)
    with pytest.raises(StageError, match="no discriminator data"):
        data_gen.build(c)
    assert not data_gen.data_dir(c).exists() or not any(data_gen.data_dir(c).iterdir())


def test_classifier_and_regressor_learn_separable_toy_set(cfg, capsys, caplog):
    data_gen.build(cfg)
    m = run_cls.run(cfg)
    assert m["accuracy"] >= 0.9
    assert set(m["per_class"]) == {"RecExplainer-H", "tiny (unaligned)", "ChatGPT-style API"}
    assert all(v["recall"] >= 0.8 for v in m["per_class"].values())
    cm = m["confusion_matrix"]
    assert sum(map(sum, cm)) == m["n_test"] and sum(cm[k][k] for k in range(3)) / m["n_test"] == pytest.approx(m["accuracy"])
    out = run_cls.out_dir(cfg)
    png = (out / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len(read_jsonl(out / "predictions.jsonl")) == m["n_test"]
    assert not list(out.glob(".trainer-*"))  # scratch folder removed

    res = run_reg.run(cfg, ["both"])
    r = res["both"]
    assert r["n_test"] >= 5
    assert r["mse"] < 0.5 * r["baseline_mse"]  # the text carries the score
    assert r["pearson"] > 0.8
    lo, hi = r["mse_ratio_ci95"]
    assert r["mse_ratio"] == pytest.approx(r["mse"] / r["baseline_mse"]) and lo <= r["mse_ratio"] <= hi
    table = (cfg.tables_dir / "table3.md").read_text()
    assert "RecExplainer-H" in table and f"{r['mse']:.4f}" in table
    assert f"{r['mse_ratio']:.2f} [{lo:.2f}, {hi:.2f}]" in table and "MSE / mean [95% CI]" in table
    assert read_json(run_reg.out_dir(cfg) / "metrics.json")["both"]["mse"] == r["mse"]
    assert "Table 3" in capsys.readouterr().out
    # cached: a second call reuses the metrics for unchanged data and settings
    assert run_reg.run(cfg, ["both"])["both"] == r
    # a cache written before Table 3 had intervals gets them from its saved predictions, no retraining
    cached = run_reg.out_dir(cfg) / "metrics_both.json"
    old = {k: v for k, v in read_json(cached).items() if k not in ("mse_ratio", "mse_ratio_ci95", "pearson_ci95")}
    write_json(cached, old)
    with caplog.at_level(logging.INFO, logger="discriminator.files"):
        assert run_reg.run(cfg, ["both"])["both"] == r
    assert "retraining" not in caplog.text
    assert run_cls.run(cfg) == m
    # a changed training setting retrains (and says why) instead of reusing the old numbers
    changed = dataclasses.replace(cfg, discriminator=dataclasses.replace(cfg.discriminator, lr=cfg.discriminator.lr * 2))
    with caplog.at_level(logging.INFO, logger="discriminator.files"):
        r2 = run_reg.run(changed, ["both"])["both"]
    assert "discriminator.lr: " in caplog.text and "retraining" in caplog.text
    assert r2["fingerprint"]["settings"]["discriminator.lr"] == cfg.discriminator.lr * 2
    assert read_json(run_reg.out_dir(cfg) / "metrics_both.json")["fingerprint"] == r2["fingerprint"]


def test_score_predictor_cross_fitted_scores_every_pair_once(cfg, caplog):
    data_gen.build(cfg)
    dd = data_gen.data_dir(cfg)
    pairs = {r["id"] for part in ("train", "test") for r in read_jsonl(dd / f"reg_both_{part}.jsonl")}
    one = run_reg.run(cfg, ["both"])["both"]
    assert one["folds"] == 0 and one["n_test"] < len(pairs)
    assert "discriminator.reg_folds" not in one["fingerprint"]["settings"]  # a single split's cache stays valid
    k3 = dataclasses.replace(cfg, discriminator=dataclasses.replace(cfg.discriminator, reg_folds=3))
    with caplog.at_level(logging.INFO, logger="discriminator.files"):
        res = run_reg.run(k3, ["both", "none"])
    assert "discriminator.reg_folds" in caplog.text and "retraining" in caplog.text  # not the single split's numbers
    r = res["both"]
    assert r["folds"] == 3 and r["n_test"] == len(pairs) and r["n_train"] == len(pairs) - len(pairs) // 3
    rows = read_jsonl(run_reg.out_dir(cfg) / "pred_both.jsonl")
    assert sorted(x["id"] for x in rows) == sorted(pairs)  # every pair scored exactly once
    assert sorted({x["fold"] for x in rows}) == [0, 1, 2]
    by_id = {x["id"]: x["fold"] for x in rows}
    none_rows = read_jsonl(run_reg.out_dir(cfg) / "pred_none.jsonl")
    assert all(by_id[x["id"]] == x["fold"] for x in none_rows)  # the same folds for every method
    for k in range(3):
        # a fold's text-blind predictor is the mean of the pairs outside it
        outside = [x["score"] for x in rows if x["fold"] != k]
        assert all(x["train_mean"] == pytest.approx(sum(outside) / len(outside)) for x in rows if x["fold"] == k)
    assert r["mse"] < 0.5 * r["baseline_mse"] and res["none"]["folds"] == 3
    table = (cfg.tables_dir / "table3.md").read_text()
    assert "Cross-fitted (discriminator.reg_folds = 3)" in table and f"| {len(pairs)} |" in table
    assert run_reg.run(k3, ["both"])["both"] == r  # cached under its own fingerprint
    bad = dataclasses.replace(cfg, discriminator=dataclasses.replace(cfg.discriminator, reg_folds=1))
    with pytest.raises(StageError, match=r"discriminator.reg_folds=1: expected 0 .* or 2 to \d+"):
        run_reg.run(bad, ["both"])


def test_decision_only_bench_predicts_each_group_by_the_other_folds():
    from bench.table3_decision_only import cross_fitted_group_means

    y = np.array([2.0, 4.0, -2.0, -4.0, 3.0, -3.0])
    groups = ["Yes", "Yes", "No", "No", "Yes", None]
    fold = np.array([0, 1, 0, 1, 0, 1])
    pred, base = cross_fitted_group_means(y, groups, fold)
    # fold 0 is predicted from fold 1 (4, -4, -3): Yes -> 4, No -> -4; fold 1 from fold 0 (2, -2, 3)
    assert pred.tolist() == [4.0, 2.5, -4.0, -2.0, 4.0, 1.0]  # the last: None absent from fold 0 -> its mean
    assert base.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
