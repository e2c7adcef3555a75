"""Faults and bad input (issue 13): damaged checkpoints, --force ordering, damaged saved
models, non-UTF-8 JSON(L), hub ids and HF_HUB_OFFLINE."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.config import REPO_ROOT, ConfigError
from src.model import load_trained, saved_model_problem
from src.train import _last_checkpoint, checkpoint_problem, train
from core.utils import StageError, model_dir_or_hub_id, read_json, read_jsonl, weight_file_problem
from tests.fixtures_llm import FakeEncoder, mixed_records, one_thread, stop_at, tiny_cfg, write_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _truncate(path: Path, keep: float = 0.5) -> None:
    n = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(n * keep))


# --------------------------------------------------------------------------- fake checkpoints


def _fake_checkpoint(root: Path, step: int) -> Path:
    """The files RecTrainer + Trainer write for a LoRA run (tiny tensors)."""
    ck = root / f"checkpoint-{step}"
    (ck / "adapter").mkdir(parents=True)
    (ck / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    save_file({"w": torch.randn(64, 8)}, str(ck / "adapter" / "adapter_model.safetensors"))
    torch.save({"user_proj": {"w": torch.randn(4)}}, ck / "projectors.pt")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"x": torch.randn(32)}, ck / name)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    return ck


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda ck: (ck / "trainer_state.json").unlink(), "trainer_state.json: missing"),
        (lambda ck: (ck / "trainer_state.json").write_text('{"global_', encoding="utf-8"), "trainer_state.json: unreadable"),
        (lambda ck: _truncate(ck / "adapter" / "adapter_model.safetensors"), "adapter_model.safetensors: unreadable"),
        (lambda ck: shutil.rmtree(ck / "adapter"), "neither adapter/ nor model/"),
        (lambda ck: _truncate(ck / "projectors.pt"), "projectors.pt: unreadable"),
        (lambda ck: _truncate(ck / "optimizer.pt", 0.9), "optimizer.pt: unreadable"),
        (lambda ck: (ck / "scheduler.pt").unlink(), "scheduler.pt: missing"),
        (lambda ck: _truncate(ck / "rng_state.pth", 0.0), "rng_state.pth: empty"),
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage, named):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 2)
    newest = _fake_checkpoint(root, 10)
    _fake_checkpoint(root, 4).rename(root / "checkpoint-4.tmp")  # not a checkpoint name: ignored
    assert checkpoint_problem(newest) is None and _last_checkpoint(root) == str(newest)
    damage(newest)
    assert named in (checkpoint_problem(newest) or "")
    with caplog.at_level(logging.WARNING, logger="src.train"):
        assert _last_checkpoint(root) == str(root / "checkpoint-2")
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and named in warning[0].getMessage() and "checkpoint-10" in warning[0].getMessage()
    # moved aside, under a name the Trainer's checkpoint rotation and resume never match
    assert not newest.exists() and (root / "incomplete-checkpoint-10").is_dir()


def test_no_complete_checkpoint_means_from_scratch_with_a_warning(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    assert _last_checkpoint(root) is None  # no folder: nothing to say
    (root / "checkpoint-3").mkdir(parents=True)  # killed before anything was written
    _truncate(_fake_checkpoint(root, 6) / "trainer_state.json", 0.5)
    with caplog.at_level(logging.WARNING, logger="src.train"):
        assert _last_checkpoint(root) is None
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 3 and "training starts from scratch" in msgs[-1]
    assert sorted(p.name for p in root.iterdir()) == ["incomplete-checkpoint-3", "incomplete-checkpoint-6"]


def test_full_weights_checkpoint_checks_every_shard(tmp_path):
    ck = tmp_path / "checkpoint-1"
    (ck / "model").mkdir(parents=True)
    (ck / "model" / "config.json").write_text("{}", encoding="utf-8")
    for i in (1, 2):
        save_file({f"w{i}": torch.randn(16)}, str(ck / "model" / f"model-0000{i}-of-00002.safetensors"))
    index = {"weight_map": {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}}
    (ck / "model" / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    torch.save({}, ck / "projectors.pt")
    assert saved_model_problem(ck) is None
    (ck / "model" / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors: missing" in saved_model_problem(ck)


def test_weight_file_problem_kinds(tmp_path):
    save_file({"a": torch.ones(3)}, str(tmp_path / "ok.safetensors"))
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pt")
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xff"}')
    (tmp_path / "garbage.pt").write_bytes(b"not a zip" * 10)
    assert weight_file_problem(tmp_path / "ok.safetensors") is None and weight_file_problem(tmp_path / "ok.pt") is None
    assert weight_file_problem(tmp_path / "nope.pt") == "missing"
    assert "UnicodeDecodeError" in weight_file_problem(tmp_path / "bad.json")
    assert "BadZipFile" in weight_file_problem(tmp_path / "garbage.pt")


# --------------------------------------------------------------------------- real tiny runs

_OVER = ["train.per_device_batch_size=4", "train.logging_steps=1", "train.save_steps=2", "train.eval_steps=100",
         "train.max_train_samples=24", "train.max_eval_samples=4", "train.lr=0.01"]



def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "train"}


def test_killed_checkpoint_save_resumes_from_the_previous_checkpoint(tmp_path, caplog):
    """A save cut short at checkpoint-4 (truncated adapter): the re-run warns, resumes from
    checkpoint-2, and ends where an uninterrupted run ends."""
    enc = FakeEncoder()
    recs, valid = mixed_records(30, 0), mixed_records(8, 1)
    full_cfg = tiny_cfg(tmp_path / "full", *_OVER)
    write_tasks(full_cfg, "both", recs, valid)
    full = _losses(train(full_cfg, "both", rec_encoder=enc, max_steps=6))

    cfg = tiny_cfg(tmp_path / "killed", *_OVER)
    write_tasks(cfg, "both", recs, valid)
    out = train(cfg, "both", rec_encoder=enc, max_steps=6, callbacks=[stop_at(4)])
    ckpts = out / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} >= {"checkpoint-2", "checkpoint-4"}
    (out / "meta.json").unlink()  # as if killed while checkpoint-4 was being written
    _truncate(ckpts / "checkpoint-4" / "adapter" / "adapter_model.safetensors")
    with caplog.at_level(logging.WARNING, logger="src.train"):
        train(cfg, "both", rec_encoder=enc, max_steps=6)
    meta = read_json(out / "meta.json")
    assert meta["done"] and meta["global_step"] == 6 and meta["resumed_from"].endswith("checkpoint-2")
    assert any("checkpoint-4" in r.getMessage() and "adapter_model.safetensors" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    resumed = _losses(out)
    for step in (3, 4, 5, 6):  # replayed from checkpoint-2: same data order, weights and optimizer
        assert resumed[step] == pytest.approx(full[step], rel=1e-4), step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny LoRA model (cfg, encoder, output dir), trained once for the tests below."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_cfg(tmp, "train.max_train_samples=8", "train.per_device_batch_size=4", "train.save_steps=1000")
    write_tasks(cfg, "both", mixed_records(12, 0), mixed_records(4, 1))
    enc = FakeEncoder()
    return cfg, enc, train(cfg, "both", rec_encoder=enc)


def test_force_with_a_bad_setting_keeps_the_trained_model(trained):
    import copy

    cfg, enc, out = trained
    before = sorted(p.name for p in out.rglob("*"))
    bad = copy.deepcopy(cfg)
    bad.train.loss_weighting = "per-token"
    with pytest.raises(ConfigError, match="train.loss_weighting"):
        train(bad, "both", rec_encoder=enc, force=True)
    missing = copy.deepcopy(cfg)
    missing.paths.root = str(Path(cfg.root) / "elsewhere")  # no task files there
    with pytest.raises(StageError, match="both_train.json"):
        train(missing, "both", rec_encoder=enc, force=True, out_dir=out)
    assert sorted(p.name for p in out.rglob("*")) == before and read_json(out / "meta.json")["done"]


def test_changed_settings_stop_the_reuse_of_a_trained_model(trained):
    """The fingerprint (stamp.json): keys that change what the model learns stop the skip with
    the change named; logging / probe / checkpoint keys do not."""
    import copy

    cfg, enc, out = trained
    assert read_json(out / "stamp.json")["settings"]["train.lr"] == cfg.train.lr
    cosmetic = copy.deepcopy(cfg)
    cosmetic.train.logging_steps, cosmetic.train.probe_points, cosmetic.train.save_steps = 3, 0, 7
    assert train(cosmetic, "both", rec_encoder=enc) == out  # skipped
    other = copy.deepcopy(cfg)
    other.train.lr = cfg.train.lr * 2
    other.llm.lora.r = cfg.llm.lora.r + 4
    with pytest.raises(StageError, match=r"llm\.lora\.r: \d+ -> \d+; train\.lr: .* -> .*--force"):
        train(other, "both", rec_encoder=enc)
    assert read_json(out / "meta.json")["done"]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda out: _truncate(out / "adapter" / "adapter_model.safetensors"), "adapter_model.safetensors"),
        (lambda out: (out / "adapter" / "adapter_model.safetensors").write_bytes(b""), "adapter_model.safetensors"),
        (lambda out: _truncate(out / "projectors.pt"), "projectors.pt"),
        (lambda out: (out / "projectors.pt").write_bytes(b"junk" * 50), "projectors.pt"),
    ],
)
def test_damaged_saved_model_is_one_clear_error(trained, tmp_path, damage, named):
    cfg, enc, out = trained
    copy_dir = tmp_path / "both"
    shutil.copytree(out, copy_dir)
    damage(copy_dir)
    with pytest.raises(StageError) as ei:
        load_trained(cfg, "both", rec_encoder=enc, model_dir=copy_dir)
    msg = str(ei.value)
    assert msg.startswith(str(copy_dir)) and named in msg and "--force" in msg and "\n" not in msg, msg


def test_projector_bytes_damaged_past_the_header_check(trained, tmp_path):
    """A zip whose central directory survives but whose data is garbage still names the file."""
    import zipfile

    cfg, enc, out = trained
    copy_dir = tmp_path / "both"
    shutil.copytree(out, copy_dir)
    with zipfile.ZipFile(copy_dir / "projectors.pt", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02garbage")
    with pytest.raises(StageError, match=r"projectors\.pt: cannot load .*re-run training with --force"):
        load_trained(cfg, "both", rec_encoder=enc, model_dir=copy_dir)


# --------------------------------------------------------------------------- JSON(L) encoding


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"iid": 1, "title": "a"}\n\n{"iid": 2, "title": "b"}\n{"iid": 3, "title": "caf\xe9"}\n')
    with pytest.raises(StageError) as ei:
        read_jsonl(p)
    assert str(ei.value).startswith(f"{p}:4: not valid UTF-8 (byte 0xe9"), str(ei.value)
    # the byte late in a long file, past the first decode chunk of a text-mode reader
    rows = b"".join(json.dumps({"iid": i, "title": "x" * 50}).encode() + b"\n" for i in range(3000))
    p.write_bytes(rows + b'{"title": "\xff"}\n')
    with pytest.raises(StageError, match=r"items\.jsonl:3001: not valid UTF-8"):
        read_jsonl(p)
    p.write_bytes(b'{"a": 1}\r\n{"b": 2}\r\n')  # CRLF files still read
    assert read_jsonl(p) == [{"a": 1}, {"b": 2}]


def test_non_utf8_canonical_files_name_their_line(tmp_path):
    """The canonical dataset's own strict readers (items.jsonl, sequences.txt) too."""
    from preprocess.dataset import _read_items, _read_sequences

    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"iid": 1, "title": "a"}\n{"iid": 2, "ti\xfftle": "b"}\n')
    with pytest.raises(StageError, match=r"items\.jsonl:2: not valid UTF-8 \(byte 0xff"):
        _read_items(p)
    s = tmp_path / "sequences.txt"
    s.write_bytes(b"1 1 2 1\n2 2\xe9 1 2\n")
    with pytest.raises(StageError, match=r"sequences\.txt:2: not valid UTF-8 \(byte 0xe9"):
        _read_sequences(s, 2)


def test_appender_drops_a_torn_last_row_but_never_cuts_good_rows(tmp_path):
    """Resumable row files (JsonlAppender): a kill tears at most the last row, which is
    dropped; a bad row in the middle (an edited or appended file) is an error naming it, and
    the rows after it are not cut away."""
    from core.utils import JsonlAppender

    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "x"')  # torn by a kill
    with JsonlAppender(p) as app:
        assert app.done == {1, 2}
        app.append({"id": 3})
    assert read_jsonl(p) == [{"id": 1}, {"id": 2}, {"id": 3}]
    p.write_bytes(b'{"id": 1}\n{"id": 2, oops}\n{"id": 3}\n{"id": 4}\n')
    before = p.read_bytes()
    with pytest.raises(StageError, match=r"rows\.jsonl:2: malformed JSON line with 2 row\(s\) after it"):
        JsonlAppender(p)
    assert p.read_bytes() == before


def test_non_utf8_json_names_file_and_line(tmp_path):
    p = tmp_path / "dataset.json"
    p.write_bytes(b'{\n  "a": 1,\n  "b": "\xc3\x28"\n}\n')
    with pytest.raises(StageError, match=r"dataset\.json:3: not valid UTF-8 \(byte 0xc3"):
        read_json(p)


# --------------------------------------------------------------------------- hub ids


def test_hub_ids_and_offline_mode(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cfg = tiny_cfg(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert model_dir_or_hub_id(cfg, "lmsys/vicuna-7b-v1.3", "llm.base_model", "hint") == "lmsys/vicuna-7b-v1.3"
    (tmp_path / "local").mkdir()
    assert model_dir_or_hub_id(cfg, str(tmp_path / "local"), "llm.base_model", "hint") == str(tmp_path / "local")
    with pytest.raises(StageError, match=r"llm.base_model: no model directory at .*\(hint\)$"):
        model_dir_or_hub_id(cfg, "models/nothing-here", "llm.base_model", "hint")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="HF_HUB_OFFLINE is set, so a hub id would load only from the local"):
        model_dir_or_hub_id(cfg, "models/nothing-here", "llm.base_model", "a hub id such as x/y")
    with pytest.raises(StageError, match=r"'lmsys/vicuna-7b-v1.3' is neither .* nor in the local Hugging Face cache"):
        model_dir_or_hub_id(cfg, "lmsys/vicuna-7b-v1.3", "llm.base_model", "hint")
    # cached: offline mode reads it from the cache, as from_pretrained would
    snap = tmp_path / "hf" / "hub" / "models--lmsys--vicuna-7b-v1.3"
    (snap / "snapshots" / "abc").mkdir(parents=True)
    (snap / "refs").mkdir()
    (snap / "refs" / "main").write_text("abc", encoding="utf-8")
    (snap / "snapshots" / "abc" / "config.json").write_text("{}", encoding="utf-8")
    assert model_dir_or_hub_id(cfg, "lmsys/vicuna-7b-v1.3", "llm.base_model", "hint") == "lmsys/vicuna-7b-v1.3"


def test_shell_scripts_leave_hf_hub_offline_to_the_user():
    want = (REPO_ROOT / "requirements.txt").read_bytes()
    have = REPO_ROOT / ".venv" / ".requirements.sha256"
    import hashlib

    if not have.is_file() or have.read_text().strip() != hashlib.sha256(want).hexdigest():
        pytest.skip("ensure_venv would install requirements here")
    script = 'source shell/_common.sh; ensure_venv; echo "offline=${HF_HUB_OFFLINE-unset}"'
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    run = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "offline=unset"
    run = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env={**env, "HF_HUB_OFFLINE": "0"},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "offline=0"
