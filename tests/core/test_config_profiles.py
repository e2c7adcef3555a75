"""Config layering: paper profiles are the paper, caps live only in configs/cpu.yaml, list
``base:``, provenance and show_config."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import REPO_ROOT, ConfigError, KDConfig, load_config
from src.show_config import main as show_main
from src.show_config import show

CONFIGS = REPO_ROOT / "configs"
#: profiles built on paper.yaml without the CPU overlay
PAPER_PROFILES = ["games", "movies", "steam"]
NO_CPU_PROFILES = PAPER_PROFILES + ["ml100k_full"]
#: profiles that load configs/cpu.yaml
CPU_PROFILES = ["ml100k", "tiny"]
#: paper 3.2.2: SASRec embedding size and max sequence length per dataset
SASREC_SIZES = {"games": (256, 9), "movies": (192, 13), "steam": (256, 16)}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", PAPER_PROFILES)
def test_paper_profile_is_the_paper(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    # no sample / eval / explanation caps anywhere
    assert cfg.train.max_train_samples == 0 and cfg.train.max_eval_samples == 0
    assert cfg.eval.max_samples == 0
    assert all(v == 0 for v in cfg.eval.max_samples_per_mode.values())
    assert cfg.explain.max_samples == 0
    dg = cfg.data_gen
    assert (dg.train_cap_per_user, dg.max_train_per_task, dg.max_eval_per_task) == (0, 0, 0)
    assert (dg.explan_valid_users, dg.explan_train_users) == (500, 2000)
    assert cfg.recmodel.export_train_cap == 0
    assert dg.sharegpt_file.endswith("ShareGPT_V3_unfiltered_cleaned_split.json")
    # the paper's training recipe (3.2.2)
    t = cfg.train
    assert (t.epochs, t.lr, t.warmup_ratio) == (10, pytest.approx(1e-4), pytest.approx(0.1))
    assert t.per_device_batch_size * t.grad_accum * 8 == 64  # 8 GPUs
    assert t.deepspeed == "configs/deepspeed/zero2.json" and cfg.resolve(t.deepspeed).is_file()
    assert t.bf16 is True
    llm = cfg.llm
    assert (llm.base_model, llm.chat_format, llm.max_length) == ("lmsys/vicuna-7b-v1.3", "vicuna", 1024)
    lora = llm.lora
    assert lora.enabled and (lora.r, lora.alpha, lora.dropout) == (8, 32, pytest.approx(0.1))
    assert lora.target_modules == ["q_proj", "v_proj"]
    assert {"embed_tokens", "lm_head"} <= set(lora.modules_to_save)
    # the dataset's SASRec and prompt history window
    assert (cfg.recmodel.hidden_size, cfg.recmodel.max_seq_len) == SASREC_SIZES[name]
    assert cfg.data_gen.max_hist_len == SASREC_SIZES[name][1]
    assert cfg.discriminator.encoder == "bert-base-uncased" and cfg.discriminator.per_method == 2500
    d = cfg.dataset
    assert (d.kcore, d.top_n_items, d.min_user_inters, d.sample_users, d.final_kcore) == (5, 2000, 5, 4000, 5)
    assert d.name == name and cfg.root == REPO_ROOT / "outputs" / name


@pytest.mark.parametrize("name", NO_CPU_PROFILES)
def test_paper_profiles_take_nothing_from_the_cpu_overlay(name: str) -> None:
    prov: dict[str, str] = {}
    load_config(CONFIGS / f"{name}.yaml", provenance=prov)
    assert prov and not [k for k, v in prov.items() if Path(v).name == "cpu.yaml"]
    # the per-dataset sizes come from the dataset file itself, not from a shared default
    assert Path(prov["recmodel.hidden_size"]).name == f"{name}.yaml"
    assert Path(prov["data_gen.max_hist_len"]).name == f"{name}.yaml"


def test_cap_added_to_cpu_overlay_cannot_reach_a_paper_profile(tmp_path: Path) -> None:
    """Caps added to cpu.yaml (one existing key changed, new keys added) change the CPU
    profiles and leave every paper profile exactly as it was."""
    copy = tmp_path / "configs"
    shutil.copytree(CONFIGS, copy)
    cpu = yaml.safe_load((copy / "cpu.yaml").read_text(encoding="utf-8"))
    cpu["train"]["max_train_samples"] = 7
    cpu.setdefault("explain", {})["judge_max_samples"] = 5  # a key cpu.yaml did not set
    cpu["data_gen"]["sharegpt_train"] = 7  # ... that neither CPU profile sets itself
    cpu["dataset"] = {"sample_users": 11}  # a whole section it did not have
    _write(copy / "cpu.yaml", yaml.safe_dump(cpu, sort_keys=False))

    def resolved(d: Path, name: str) -> dict:
        out = dataclasses.asdict(load_config(d / f"{name}.yaml"))
        out.pop("source_file")
        return out

    for name in NO_CPU_PROFILES:
        assert resolved(copy, name) == resolved(CONFIGS, name), name
    for name in CPU_PROFILES:
        assert load_config(copy / f"{name}.yaml").data_gen.sharegpt_train == 7, name
    ml = load_config(copy / "ml100k.yaml")
    assert ml.train.max_train_samples == 7 and ml.explain.judge_max_samples == 5
    # where a CPU profile sets the key itself, its own value still wins over the overlay
    tiny = load_config(copy / "tiny.yaml")
    assert (tiny.train.max_train_samples, tiny.explain.judge_max_samples) == (0, 8)
    assert ml.dataset.sample_users == tiny.dataset.sample_users == 0


def test_cpu_profiles_keep_their_budget() -> None:
    ml = load_config(CONFIGS / "ml100k.yaml")
    assert (ml.train.max_train_samples, ml.train.max_eval_samples, ml.train.epochs) == (2800, 16, 1)
    # Table 1 cells rest on >= 100 task-1 and >= 200 task-2/3 records (issue 12); task 3 on all 500
    assert ml.eval.max_samples == 200
    assert ml.eval.max_samples_per_mode == {"uid2next": 100, "uid2hist": 50, "uidiid2binary": 500}
    assert ml.explain.max_samples == 40 and ml.data_gen.max_train_per_task == 2000
    assert (ml.llm.base_model, ml.llm.torch_dtype, ml.train.deepspeed) == ("models/smollm2-135m-instruct", "auto", "")
    # LoRA with the embedding and head trained (modules from paper.yaml) at the CPU's learning rate
    assert ml.llm.lora.enabled and ml.llm.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert set(ml.train.task_mix) == {"behaviour", "intention", "both"}
    assert all(mix.get("sharegpt", 0) > 0 for mix in ml.train.task_mix.values())  # the replayed stand-in
    assert ml.data_gen.sharegpt_replay > 0 and ml.data_gen.sharegpt_file == ""
    assert 0 < ml.explain.min_new_tokens <= ml.explain.max_new_tokens
    # a budget per variant (I and H: passes over the task-3 pairs), each below the long profile's
    from src.budget import train_budget_of
    long = load_config(CONFIGS / "ml100k_long.yaml")
    assert long.root.name == "ml100k_long"
    for tt in ("behaviour", "intention", "both"):
        assert 0 < train_budget_of(ml, tt) < train_budget_of(long, tt)
    assert train_budget_of(ml, "intention") > 2800 and train_budget_of(ml, "both") > 2800
    prov: dict[str, str] = {}
    load_config(CONFIGS / "ml100k.yaml", provenance=prov)
    assert Path(prov["train.max_train_samples"]).name == "cpu.yaml"
    # the original code's LoRA (r 16 on q/k/v/o) in the CPU overlay only; the paper's r 8 on q/v stays
    assert Path(prov["llm.lora.r"]).name == "cpu.yaml" and Path(prov["llm.lora.target_modules"]).name == "cpu.yaml"
    assert (ml.llm.lora.r, ml.llm.lora.target_modules) == (16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert Path(prov["llm.lora.alpha"]).name == "cpu.yaml" and Path(prov["llm.lora.dropout"]).name == "paper.yaml"
    assert Path(prov["dataset.name"]).name == "ml100k.yaml"
    tiny = load_config(CONFIGS / "tiny.yaml")
    assert tiny.llm.base_model == "tiny" and tiny.discriminator.encoder == "models/all-minilm-l6-v2"
    assert (tiny.dataset.top_n_items, tiny.dataset.sample_users, tiny.dataset.max_title_chars) == (0, 0, 0)


def test_ml100k_default_and_full_share_dataset_and_sasrec() -> None:
    ml, full = load_config(CONFIGS / "ml100k.yaml"), load_config(CONFIGS / "ml100k_full.yaml")
    assert ml.dataset == full.dataset
    assert (ml.recmodel.hidden_size, ml.recmodel.max_seq_len) == (full.recmodel.hidden_size, full.recmodel.max_seq_len)
    assert ml.data_gen.max_hist_len == full.data_gen.max_hist_len
    assert full.root == REPO_ROOT / "outputs" / "ml100k_full" and ml.root == REPO_ROOT / "outputs" / "ml100k"
    assert (full.train.max_train_samples, full.eval.max_samples, full.explain.max_samples) == (0, 0, 0)
    assert full.llm.base_model == "models/smollm2-135m-instruct" and full.train.epochs == 10


def test_list_base_applies_in_order_later_wins(tmp_path: Path) -> None:
    _write(tmp_path / "root.yaml", "seed: 1\ndataset:\n  kcore: 1\n  files: {a: 1.txt, b: 2.txt}\n")
    _write(tmp_path / "a.yaml", "base: root.yaml\ndataset:\n  kcore: 2\n  top_n_items: 20\ntrain:\n  lr: 0.1\n")
    _write(tmp_path / "b.yaml", "base: root.yaml\ndataset:\n  kcore: 3\n  files: {c: 3.txt}\n")
    child = _write(tmp_path / "child.yaml", "base: [a.yaml, b.yaml]\ntrain:\n  epochs: 4\n")
    prov: dict[str, str] = {}
    cfg = load_config(child, provenance=prov)
    assert cfg.dataset.kcore == 3  # b.yaml applied after a.yaml
    assert cfg.dataset.top_n_items == 20 and cfg.train.lr == pytest.approx(0.1)  # a.yaml's, b left them
    assert cfg.dataset.files == {"c": "3.txt"}  # a mapping setting is replaced whole
    assert (cfg.seed, cfg.train.epochs) == (1, 4)
    names = {k: Path(v).name for k, v in prov.items()}
    assert names["dataset.kcore"] == "b.yaml" and names["dataset.top_n_items"] == "a.yaml"
    assert names["dataset.files"] == "b.yaml" and names["seed"] == "root.yaml"
    assert names["train.epochs"] == "child.yaml" and "train.warmup_ratio" not in prov
    # the other order: a.yaml wins
    rev = _write(tmp_path / "rev.yaml", "base: [b.yaml, a.yaml]\n")
    assert load_config(rev).dataset.kcore == 2
    # the file's own keys win over every base
    own = _write(tmp_path / "own.yaml", "base: [a.yaml, b.yaml]\ndataset:\n  kcore: 9\n")
    assert load_config(own).dataset.kcore == 9


def test_base_errors_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: [ok.yaml, b.yaml]\n")
    _write(tmp_path / "ok.yaml", "seed: 3\n")
    _write(tmp_path / "b.yaml", "base: [ok.yaml, a.yaml]\n")  # ok.yaml twice is fine; a.yaml is a cycle
    with pytest.raises(ConfigError, match=r"a\.yaml: circular 'base:' chain \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
        load_config(tmp_path / "a.yaml")
    # a typo in a base file is reported with the base file's name, not the child's
    _write(tmp_path / "typo.yaml", "train:\n  lerning_rate: 1\n")
    for name, text, message in (
        ("missing.yaml", "base: [ok.yaml, gone.yaml]\n", r"missing\.yaml: base config 'gone\.yaml' not found"),
        ("badtype.yaml", "base: 3\n", r"badtype\.yaml: 'base' must be a file name or a list"),
        ("child.yaml", "base: [ok.yaml, typo.yaml]\n", r"typo\.yaml: unknown config key 'train\.lerning_rate'"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path / name, text))


def test_set_overrides_are_recorded(tmp_path: Path) -> None:
    prov: dict[str, str] = {}
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.lr=0.3", "dataset.files={x: y.txt}", "recmodel.kd={epochs: 2}"], prov)
    assert cfg.train.lr == pytest.approx(0.3) and cfg.recmodel.kd.epochs == 2
    assert prov["train.lr"] == prov["dataset.files"] == prov["recmodel.kd.epochs"] == "--set"
    # a section set whole by --set: its other keys are defaults now, not tiny.yaml's
    assert "recmodel.kd.hidden_size" not in prov and cfg.recmodel.kd.hidden_size == KDConfig().hidden_size
    # a key inside a mapping setting marks the whole setting
    cfg = load_config(CONFIGS / "ml100k.yaml", ["dataset.files.inter=other.inter"], prov)
    assert cfg.dataset.files == {"inter": "other.inter", "item": "ml-100k.item"}
    assert prov["dataset.files"] == "--set" and "dataset.files.inter" not in prov


def _leaf_lines(text: str) -> dict[str, str]:
    """{dotted key: comment} from show_config output."""
    out, stack = {}, []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        body, _, note = line.strip().partition("  # ")
        key = body.split(":", 1)[0]
        stack = stack[:indent] + [key]
        if note:
            out[".".join(stack)] = note
    return out


def test_show_config_names_the_source_of_each_value() -> None:
    text = show("configs/games.yaml", ["train.epochs=3"])
    notes = _leaf_lines(text)
    assert notes["train.max_train_samples"] == "from configs/paper.yaml"
    assert notes["recmodel.hidden_size"] == "from configs/games.yaml"
    assert notes["llm.lora.modules_to_save"] == "from configs/paper.yaml"
    assert notes["train.epochs"] == "--set"
    assert notes["dataset.urls"] == "default"
    assert "max_train_samples: 0" in text and "base_model: lmsys/vicuna-7b-v1.3" in text
    # the output is YAML of exactly the resolved config
    cfg = dataclasses.asdict(load_config("configs/games.yaml", ["train.epochs=3"]))
    cfg.pop("source_file")
    assert yaml.safe_load(text) == cfg
    ml = _leaf_lines(show("configs/ml100k.yaml"))
    assert ml["train.max_train_samples"] == "from configs/cpu.yaml"
    assert ml["dataset.name"] == "from configs/ml100k.yaml" and ml["train.warmup_ratio"] == "from configs/paper.yaml"
    assert set(ml) == set(notes)  # every leaf has a note


def test_show_config_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_main(["--config", "configs/steam.yaml", "--set", "eval.max_samples=4"]) == 0
    out = capsys.readouterr().out
    assert _leaf_lines(out)["eval.max_samples"] == "--set" and yaml.safe_load(out)["eval"]["max_samples"] == 4
    assert show_main(["--config", "configs/steam.yaml", "--set", "eval.max_smaples=4"]) == 2
    assert "eval.max_smaples" in capsys.readouterr().err


def test_show_config_script_profile_full() -> None:
    proc = subprocess.run(
        ["bash", "shell/show_config.sh", "--profile", "full", "--set", "train.lr=0.5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    notes = _leaf_lines(proc.stdout)
    assert notes["paths.root"] == "from configs/ml100k_full.yaml" and notes["train.lr"] == "--set"
    assert yaml.safe_load(proc.stdout)["train"]["lr"] == 0.5
    bad = subprocess.run(["bash", "shell/show_config.sh", "--profile", "huge"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--profile must be" in bad.stderr
