"""The run_all stage plan: which methods run on which tasks."""

import pytest

from core.config import ConfigError, load_config
from src.pipeline_plan import plan


def test_plan_without_api_skips_api_methods_and_task6_for_text_only_methods():
    cfg = load_config("configs/tiny.yaml")
    p = plan(cfg, api=False)
    assert p["TRAIN_TYPES"] == ["behaviour", "intention", "both"]
    assert not any(r.startswith("gpt4") for r in p["ALIGN_RUNS"])
    assert not any(r.startswith("chatgpt") for r in p["EXPLAIN_RUNS"])
    hist = {r.split(":")[0] for r in p["ALIGN_RUNS"] if "uid2hist" in r}
    assert hist == {"intention", "both"}
    # one run per method, its modes / splits together (one process, one model load)
    assert "none:uid2next,uidiid2rank,uidiid2binary:icl" in p["ALIGN_RUNS"]
    assert "both:uid2next,uidiid2rank,uidiid2binary,uid2hist" in p["ALIGN_RUNS"]
    assert len(p["ALIGN_RUNS"]) == len({r.split(":")[0] + r.count(":icl") * ":icl" for r in p["ALIGN_RUNS"]})
    assert "both:valid,train" in p["EXPLAIN_RUNS"] and "none:valid,train" in p["EXPLAIN_RUNS"]


def test_plan_with_api_adds_gpt4_and_chatgpt():
    cfg = load_config("configs/tiny.yaml")
    p = plan(cfg, api=True)
    assert "gpt4:uid2next,uidiid2rank,uidiid2binary:icl" in p["ALIGN_RUNS"]
    assert "chatgpt:valid,train" in p["EXPLAIN_RUNS"]


def test_plan_drops_untrained_variants_and_rejects_unknown_methods():
    cfg = load_config("configs/tiny.yaml", ["pipeline.train_types=[both]"])
    p = plan(cfg, api=False)
    assert not any(r.startswith(("behaviour", "intention")) for r in p["ALIGN_RUNS"] + p["EXPLAIN_RUNS"])
    cfg = load_config("configs/tiny.yaml", ["pipeline.align_methods=[bogus]"])
    with pytest.raises(ConfigError, match="bogus"):
        plan(cfg, api=False)
