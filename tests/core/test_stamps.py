"""Stage fingerprints (core.stamps, issue 13): a changed setting or input stops the reuse of
old outputs with one message naming what changed; unchanged ones still skip; --force rebuilds."""

from __future__ import annotations

import json
import os

import pytest

from core.stamps import changed_setting, current, differences, fingerprint, settings_of
from core.utils import StageError
from preprocess.build import preprocess
from tests.fixtures_preprocess import make_cfg as pre_cfg
from tests.fixtures_preprocess import write_atomic


def test_settings_sections_exclusions_and_readable_differences(tmp_path):
    cfg = pre_cfg(tmp_path)
    s = settings_of(cfg, ["recmodel", "seed"], exclude=["recmodel.kd", "recmodel.device"])
    assert s["recmodel.hidden_size"] == cfg.recmodel.hidden_size and s["seed"] == cfg.seed
    assert "recmodel.kd" not in s and "recmodel.device" not in s and isinstance(s["recmodel.eval_ks"], list)
    f = tmp_path / "in.txt"
    f.write_text("a", encoding="utf-8")
    old = fingerprint(cfg, ["recmodel.hidden_size"], [f, tmp_path / "absent"], base=tmp_path)
    assert old["inputs"] == {"in.txt": old["inputs"]["in.txt"], "absent": "missing"}
    f.write_text("b", encoding="utf-8")
    os.utime(f, ns=(1, 1))  # a new mtime and content: hashed again, not served from the cache
    new = fingerprint(pre_cfg(tmp_path, "recmodel.hidden_size=8"), ["recmodel.hidden_size"], [f, tmp_path / "absent"],
                      base=tmp_path)
    assert differences(old, new) == [f"recmodel.hidden_size: {cfg.recmodel.hidden_size} -> 8",
                                     "input in.txt changed since these outputs were made"]
    # which setting each line is about (src.infer_alignment re-measures for some of them)
    assert [changed_setting(c) for c in differences(old, new)] == ["recmodel.hidden_size", None]
    assert changed_setting("setting eval.pointwise_rank is new (true)") == "eval.pointwise_rank"
    assert changed_setting("setting eval.x is no longer used") == "eval.x"
    assert changed_setting("... and 3 more") is None


def test_current_records_keeps_and_refuses(tmp_path):
    stamp = tmp_path / "out" / "stamp.json"
    fp = {"settings": {"a": 1}, "inputs": {"x": "h1"}}
    assert current(stamp, fp, "the outputs") and json.loads(stamp.read_text()) == fp  # no stamp: recorded
    assert current(stamp, fp, "the outputs")
    with pytest.raises(StageError) as ei:
        current(stamp, {"settings": {"a": 2}, "inputs": {"x": "h1"}}, "the outputs in out/")
    msg = str(ei.value)
    assert "the outputs in out/ was made from other settings" in msg and "a: 1 -> 2" in msg
    assert "--force" in msg and "nothing was deleted" in msg
    assert json.loads(stamp.read_text()) == fp  # a refused reuse leaves the stamp as it was


def test_preprocess_compares_settings_and_raw_hashes(tmp_path):
    ov = write_atomic(tmp_path / "raw" / "ml")
    cfg = pre_cfg(tmp_path, *ov)
    preprocess(cfg)
    before = (cfg.data_dir / "sequences.txt").read_bytes()
    preprocess(cfg)  # unchanged: skipped
    with pytest.raises(StageError, match=r"dataset\.min_seq_len: 3 -> 4.*--force"):
        preprocess(pre_cfg(tmp_path, *ov, "dataset.min_seq_len=4"))
    with open(tmp_path / "raw" / "ml" / "ml.inter", "a", encoding="utf-8") as f:
        f.write("9\t1\t5\t999\n")
    with pytest.raises(StageError, match=r"raw file ml/ml.inter changed since the dataset was built"):
        preprocess(cfg)
    assert (cfg.data_dir / "sequences.txt").read_bytes() == before  # nothing rebuilt or deleted
    preprocess(cfg, force=True)
    preprocess(cfg)  # the new build is current again


def test_recommender_training_and_exports_are_fingerprinted(tmp_path):
    from recmodel import infer as rinfer
    from recmodel import train as rtrain
    from tests.fixtures_recmodel import cluster_sequences, make_cfg, write_canonical

    write_canonical(tmp_path, cluster_sequences(n_users=30, per_cluster=8, length=6), 24)
    cfg = make_cfg(tmp_path, "recmodel.epochs=1")
    rtrain.fit(cfg, progress=False)
    rinfer.run(cfg)
    model = (cfg.recmodel_dir / "model.pt").read_bytes()
    # export-only keys do not invalidate the model, but they do the exports
    other_export = make_cfg(tmp_path, "recmodel.epochs=1", "recmodel.export_topk=3")
    rtrain.fit(other_export, progress=False)
    assert (cfg.recmodel_dir / "model.pt").read_bytes() == model
    with pytest.raises(StageError, match=r"recmodel.export_topk: 5 -> 3"):
        rinfer.run(other_export)
    rinfer.run(other_export, force=True)
    with pytest.raises(StageError, match=r"recmodel.hidden_size: 32 -> 16.*--force"):
        rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=1", "recmodel.hidden_size=16"), progress=False)
    # a retrained model (another epoch count) makes the exports stale
    rtrain.fit(make_cfg(tmp_path, "recmodel.epochs=2", "recmodel.export_topk=3"), progress=False, force=True)
    assert (cfg.recmodel_dir / "model.pt").read_bytes() != model
    with pytest.raises(StageError, match=r"input model.pt changed|input recmodel/model.pt changed"):
        rinfer.run(other_export)
