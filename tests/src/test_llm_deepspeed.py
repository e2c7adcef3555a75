"""The DeepSpeed ZeRO-2 and accelerate launcher configs are accepted as written.

TrainingArguments(deepspeed=...) does two things with the json: HfTrainerDeepSpeedConfig
fills every "auto" from the training arguments, and accelerate's DeepSpeedPlugin wraps it.
We run exactly those two steps in-process. (Building TrainingArguments with deepspeed set
also initialises torch.distributed and, on CPU, compiles a DeepSpeed op with g++ for a few
minutes on first use; that part belongs to a real multi-GPU launch, not a unit test.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.config import REPO_ROOT, ConfigError
from src.train import training_arguments
from tests.fixtures_llm import tiny_cfg

ZERO2 = REPO_ROOT / "configs" / "deepspeed" / "zero2.json"


def test_zero2_json_is_accepted_and_autos_are_filled(tmp_path):
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    cfg = tiny_cfg(tmp_path, "train.grad_accum=2", "train.per_device_batch_size=3", "train.bf16=true")
    args = training_arguments(cfg, tmp_path / "ck", has_eval=False, use_cpu=True)
    ds = HfTrainerDeepSpeedConfig(str(ZERO2))
    ds.trainer_config_process(args)
    c = ds.config
    assert c["zero_optimization"]["stage"] == 2 and ds.is_zero2()
    assert c["train_micro_batch_size_per_gpu"] == 3 and c["gradient_accumulation_steps"] == 2
    assert c["train_batch_size"] == 3 * 2 * args.world_size
    assert c["optimizer"]["params"]["lr"] == pytest.approx(cfg.train.lr)
    assert c["bf16"]["enabled"] is True and c["fp16"]["enabled"] is False
    assert c["gradient_clipping"] == args.max_grad_norm
    assert "scheduler" not in c  # the Trainer's linear warm-up schedule is used
    # only model-size autos remain; the Trainer fills them from model.config.hidden_size
    leftover = [k for k, v in c["zero_optimization"].items() if v == "auto"]
    assert leftover == ["reduce_bucket_size"]
    plugin = DeepSpeedPlugin(hf_ds_config=ds)
    assert plugin.zero_stage == 2


def test_training_arguments_reject_bad_deepspeed_settings(tmp_path):
    with pytest.raises(ConfigError, match="train.deepspeed"):
        training_arguments(tiny_cfg(tmp_path, "train.deepspeed=configs/deepspeed/nope.json"), tmp_path, False)
    with pytest.raises(ConfigError, match="bf16 and train.fp16"):
        training_arguments(tiny_cfg(tmp_path, "train.bf16=true", "train.fp16=true"), tmp_path, False)


def test_accelerate_configs_point_at_real_files():
    acc = REPO_ROOT / "configs" / "accelerate"
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in acc.glob("*.yaml")}
    assert {"single_gpu", "multi_gpu", "deepspeed_zero2"} <= set(docs)
    assert docs["multi_gpu"]["distributed_type"] == "MULTI_GPU"
    ds = docs["deepspeed_zero2"]
    assert ds["distributed_type"] == "DEEPSPEED"
    assert Path(REPO_ROOT / ds["deepspeed_config"]["deepspeed_config_file"]).resolve() == ZERO2.resolve()
    json.loads(ZERO2.read_text())
