"""core.config: unknown keys named with their file, base: inheritance, --set overrides, types."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.config import REPO_ROOT, Config, ConfigError, add_config_args, config_from_args, load_config


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["ml100k", "tiny", "games", "movies", "steam"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(f"configs/{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.dataset.name == name
    assert cfg.root == REPO_ROOT / "outputs" / name
    assert cfg.data_dir == cfg.root / "data"
    assert cfg.dataset_raw_dir == REPO_ROOT / "raw" / cfg.dataset.raw_subdir


def test_paper_profiles_have_paper_settings() -> None:
    expect = {"games": (256, 9, "amazon"), "movies": (192, 13, "amazon"), "steam": (256, 16, "steam")}
    for name, (hidden, seq_len, source) in expect.items():
        cfg = load_config(f"configs/{name}.yaml")
        assert (cfg.recmodel.hidden_size, cfg.recmodel.max_seq_len, cfg.dataset.source) == (hidden, seq_len, source)
        assert cfg.llm.base_model == "lmsys/vicuna-7b-v1.3" and cfg.llm.max_length == 1024
        assert (cfg.train.epochs, cfg.train.lr, cfg.train.bf16) == (10, 1e-4, True)
        assert cfg.train.per_device_batch_size * cfg.train.grad_accum * 8 == 64
        assert cfg.train.deepspeed == "configs/deepspeed/zero2.json"
        assert cfg.data_gen.sharegpt_file.endswith("ShareGPT_V3_unfiltered_cleaned_split.json")
        d = cfg.dataset
        assert (d.kcore, d.top_n_items, d.sample_users, d.final_kcore) == (5, 2000, 4000, 5)


def test_ml100k_and_tiny_keep_everything() -> None:
    for name in ("ml100k", "tiny"):
        d = load_config(f"configs/{name}.yaml").dataset
        assert (d.kcore, d.top_n_items, d.min_user_inters, d.sample_users, d.final_kcore) == (0, 0, 0, 0, 0)
    assert load_config("configs/tiny.yaml").dataset.fetch == "synthetic"
    assert load_config("configs/ml100k.yaml").dataset.fetch == "recbole"


def test_misspelled_override_key_is_named_as_the_override() -> None:
    with pytest.raises(ConfigError, match=r"^--set train\.lrr=0\.1: unknown config key 'train\.lrr' \(known keys here: .*\blr\b"):
        load_config("configs/tiny.yaml", ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"^--set recmodel\.kd\.epoch=2: unknown config key 'recmodel\.kd\.epoch'"):
        load_config("configs/tiny.yaml", ["recmodel.kd.epoch=2"])
    assert load_config("configs/tiny.yaml", ["dataset.files.inter=x.inter"]).dataset.files["inter"] == "x.inter"


def test_misspelled_key_names_key_and_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.yaml", "dataset:\n  name: x\n  kcroe: 5\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "dataset.kcroe" in msg and str(p) in msg and "kcore" in msg  # lists the known keys
    p = _write(tmp_path / "bad2.yaml", "recmodle:\n  hidden_size: 8\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml: unknown config key 'recmodle'"):
        load_config(p)
    p = _write(tmp_path / "bad3.yaml", "recmodel:\n  kd:\n    temprature: 2\n")
    with pytest.raises(ConfigError, match=r"'recmodel\.kd\.temprature'"):
        load_config(p)


def test_base_inheritance(tmp_path: Path) -> None:
    _write(tmp_path / "parent.yaml", "seed: 1\ndataset:\n  name: p\n  kcore: 7\nrecmodel:\n  hidden_size: 32\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    child = _write(sub / "child.yaml", "base: ../parent.yaml\ndataset:\n  name: c\nrecmodel:\n  epochs: 3\n")
    cfg = load_config(child)
    assert cfg.seed == 1 and cfg.dataset.kcore == 7 and cfg.recmodel.hidden_size == 32  # inherited
    assert cfg.dataset.name == "c" and cfg.recmodel.epochs == 3  # overridden / added
    assert cfg.root.name == "c" and cfg.source_file == str(child)
    # the real chain: tiny.yaml = paper.yaml's LoRA dropout and modules, cpu.yaml's rank and
    # targets, cpu.yaml's dtype, its own dataset name
    tiny, paper = load_config("configs/tiny.yaml"), load_config("configs/paper.yaml")
    assert tiny.llm.lora.r == load_config("configs/cpu.yaml").llm.lora.r != paper.llm.lora.r
    assert tiny.llm.lora.dropout == paper.llm.lora.dropout and tiny.dataset.name == "tiny"
    # tiny pins float32 over cpu.yaml's measured choice (SmolLM2's)
    assert tiny.llm.torch_dtype == "float32" and load_config("configs/cpu.yaml").llm.torch_dtype == "auto"


def test_base_errors(tmp_path: Path) -> None:
    p = _write(tmp_path / "orphan.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan\.yaml: base config 'nowhere\.yaml' not found"):
        load_config(p)
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    p = _write(tmp_path / "broken.yaml", "dataset: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(p)


def test_set_overrides() -> None:
    cfg = load_config("configs/tiny.yaml", [
        "dataset.kcore=3", "train.bf16=true", "recmodel.eval_ks=[1, 2]", "dataset.files={a: x.txt}",
        "paths.root=/tmp/somewhere/{name}", "train.lr=5e-4",
    ])
    assert cfg.dataset.kcore == 3 and cfg.train.bf16 is True and cfg.recmodel.eval_ks == [1, 2]
    assert cfg.dataset.files == {"a": "x.txt"}  # an override replaces the whole mapping
    assert cfg.root == Path("/tmp/somewhere/tiny")
    assert cfg.train.lr == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="'dataset.kcroe'"):
        load_config("configs/tiny.yaml", ["dataset.kcroe=3"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config("configs/tiny.yaml", ["dataset.kcore"])


def test_type_errors_name_the_key() -> None:
    cases = [
        ("dataset.kcore=five", "'dataset.kcore' must be a number"),
        ("dataset.kcore=2.5", "'dataset.kcore' must be an integer"),
        ("dataset.dedup=maybe", "'dataset.dedup' must be true/false"),
        ("recmodel.eval_ks=5", "'recmodel.eval_ks' must be a list"),
        ("dataset.files=[1]", "'dataset.files' must be a mapping"),
        ("dataset=3", "'dataset' must be a mapping"),
    ]
    for ov, msg in cases:
        with pytest.raises(ConfigError) as ei:
            load_config("configs/tiny.yaml", [ov])
        assert msg in str(ei.value), (ov, str(ei.value))
    # numbers written as strings in YAML are accepted where they parse
    assert load_config("configs/tiny.yaml", ["dataset.kcore='4'"]).dataset.kcore == 4
    # ... in numeric mappings too: YAML 1.1 reads 1e-06 (Python's own spelling) as a string
    cfg = load_config("configs/tiny.yaml", ["train.time_budget_s.both=1e-06", "eval.max_samples_per_mode.uid2next=2e2",
                                            "pipeline.time_shares.both=5E-1"])
    assert cfg.train.time_budget_s["both"] == pytest.approx(1e-6)
    assert cfg.eval.max_samples_per_mode["uid2next"] == 200 and type(cfg.eval.max_samples_per_mode["uid2next"]) is int
    assert cfg.pipeline.time_shares["both"] == 0.5
    with pytest.raises(ConfigError, match=r"'train\.time_budget_s\.both' must be a number, got 'soon'"):
        load_config("configs/tiny.yaml", ["train.time_budget_s.both=soon"])
    with pytest.raises(ConfigError, match=r"'eval\.max_samples_per_mode\.uid2next' must be an integer, got 2\.5"):
        load_config("configs/tiny.yaml", ["eval.max_samples_per_mode.uid2next=2.5e0"])


def test_cli_args() -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", "configs/tiny.yaml", "--set", "seed=5", "--set", "dataset.seed=9", "--force"])
    cfg = config_from_args(args)
    assert (cfg.seed, cfg.dataset.seed, args.force) == (5, 9, True)
    assert parser.parse_args([]).config == "configs/ml100k.yaml"


def test_model_paths_follow_paths_models_dir(tmp_path):
    from core.config import load_config

    cfg = load_config("configs/tiny.yaml", [f"paths.models_dir={tmp_path / 'm'}"])
    assert cfg.resolve_model("models/all-minilm-l6-v2") == tmp_path / "m" / "all-minilm-l6-v2"
    assert cfg.resolve_model("/abs/model") == __import__("pathlib").Path("/abs/model")
    assert cfg.resolve_model("other/dir").name == "dir"


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("train.epochs=0", "train.epochs must be > 0"),
        ("train.per_device_batch_size=0", "train.per_device_batch_size must be >= 1"),
        ("eval.num_beams=0", "eval.num_beams must be >= 1"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("eval.beam_batch_size=-1", "eval.beam_batch_size must be >= 0 (0 = eval.batch_size), got -1"),
        ("explain.batch_size=0", "explain.batch_size must be >= 1"),
        ("train.max_train_samples=-1", "train.max_train_samples must be >= 0 (0 = all), got -1"),
        ("train.max_eval_samples=-3", "train.max_eval_samples must be >= 0"),
        ("eval.max_samples=-5", "eval.max_samples must be >= 0 (0 = all), got -5"),
        ("explain.max_samples=-1", "explain.max_samples must be >= 0"),
        ("explain.judge_max_samples=-1", "explain.judge_max_samples must be >= 0"),
        ("eval.max_samples_per_mode={uid2next: -2}", "eval.max_samples_per_mode.uid2next must be >= 0"),
        ("api.max_concurrency=0", "api.max_concurrency must be >= 1"),
        ("api.timeout_s=0", "api.timeout_s must be > 0"),
        ("recmodel.batch_size=0", "recmodel.batch_size must be >= 1"),
        ("data_gen.explan_valid_users=-1", "data_gen.explan_valid_users must be >= 0"),
        ("discriminator.per_method=0", "discriminator.per_method must be >= 1"),
    ],
)
def test_degenerate_values_are_one_config_error_naming_the_key(override: str, expect: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config("configs/tiny.yaml", [override])
    msg = str(ei.value)
    assert expect in msg and msg.startswith("configs/tiny.yaml: ") and msg.endswith("(set by --set)"), msg
    assert "\n" not in msg


def test_range_error_names_the_base_file_that_set_it(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", f"base: {REPO_ROOT / 'configs/tiny.yaml'}\neval:\n  num_beams: 0\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: eval\.num_beams must be >= 1, got 0 \(set in base config .*base\.yaml\)"):
        load_config(child)
    with pytest.raises(ConfigError, match=r"base\.yaml: eval\.num_beams must be >= 1, got 0$"):
        load_config(base)
    # the bounds admit every shipped value and the documented "0 = all/off" settings
    cfg = load_config("configs/tiny.yaml", ["train.epochs=0.5", "train.max_train_samples=0", "eval.max_samples=0",
                                            "dataset.min_seq_len=0", "recmodel.num_layers=0"])
    assert cfg.train.epochs == 0.5


@pytest.mark.parametrize("raw", ["train.lr=[1,", "explain.aspect=: x: y", "pipeline.train_types={a"])
def test_unparseable_set_value_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config("configs/tiny.yaml", [raw])
    msg = str(ei.value)
    assert msg.startswith(f"override '{raw}': the value ") and "not valid YAML" in msg and "\n" not in msg, msg
