"""Small helpers every stage shares: atomic writes, strict JSON(L) reading, logging, seeds.

Atomic writes (temp file in the same folder + ``os.replace``) are what make every stage
safely re-runnable: a killed stage never leaves a half-written file that a later stage
would take for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, IO

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class StageError(RuntimeError):
    """A stage cannot go on: bad or missing input. The message says which file and why."""


# --------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Plain timestamped logging to stderr, once per process."""
    root = logging.getLogger()
    if getattr(setup_logging, "_done", False):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    setup_logging._done = True  # type: ignore[attr-defined]


def run_stage(body: "Callable[[], object]") -> int:
    """Run a stage's body as a command: logging on, and a bad input (StageError or
    ConfigError) becomes one ``error: ...`` line and exit status 2 instead of a traceback."""
    from core.config import ConfigError

    setup_logging()
    try:
        body()
    except (StageError, ConfigError) as e:
        logging.getLogger("stage").debug("stage failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (if importable) in one call."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency in practice
        pass


# --------------------------------------------------------------------------- atomic IO


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_json(path: str | Path, what: str = "") -> Any:
    """Read a JSON file; a missing or malformed file is a StageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"missing {what or 'file'}: {path}" + _hint(path))
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise StageError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a bad byte is a StageError naming its line.

    Bytes, decoded line by line: a text-mode file decodes in chunks, so a bad byte would
    surface as a bare UnicodeDecodeError with no (or the wrong) line number.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise StageError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                                 f"{e.start + 1} of the line); re-save the file as UTF-8") from None


def iter_jsonl(path: str | Path, what: str = "") -> Iterator[dict]:
    """Yield JSON objects from a .jsonl file; a malformed line is a StageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"missing {what or 'file'}: {path}" + _hint(path))
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise StageError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: str | Path, what: str = "") -> list[dict]:
    return list(iter_jsonl(path, what))


class JsonlAppender:
    """Append rows to a .jsonl as they complete, so an interrupted loop can resume.

    On open, rows already present are read back (a torn last line from a kill is dropped
    and the file truncated to the last complete row; a bad line with good rows after it is
    an error, not a cut), and `done` holds their keys.
    """

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.rows: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                data = f.read()
            lines = data.splitlines(keepends=True)
            for lineno, line in enumerate(lines, 1):
                last = lineno == len(lines)
                if not line.endswith(b"\n"):
                    break  # only the last line can lack its newline: torn by a kill
                if not line.strip():
                    good += len(line)
                    continue
                try:
                    self.rows.append(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if last:
                        break  # a torn last row (its newline written, its text not all)
                    # WHY: cutting here would silently drop every good row after this one
                    raise StageError(
                        f"{self.path}:{lineno}: malformed JSON line with {len(lines) - lineno} row(s) after it; "
                        "fix or delete that line (nothing was truncated)") from None
                good += len(line)
            if good != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self.done = {r.get(key) for r in self.rows}
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        self.rows.append(row)
        self.done.add(row.get(self.key))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hint(path: Path) -> str:
    """Name the stage that writes a missing output, so the user knows what to run."""
    parts = path.parts
    producers = {
        "data": "python -m preprocess (bash shell/preprocess_recmodel.sh)",
        "recmodel": "python -m recmodel.train / recmodel.infer (bash shell/recmodel_train.sh, recmodel_infer.sh)",
        "tasks": "python -m data_gen (bash shell/recexplainer_data_pipeline.sh)",
        "llm": "python -m src.train (bash shell/train.sh)",
        "explain": "python -m src.infer_explan (bash shell/infer_explan.sh)",
    }
    for key, cmd in producers.items():
        if key in parts:
            return f" (written by {cmd}; run that stage first)"
    return ""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def outputs_exist(*paths: str | Path) -> bool:
    return all(Path(p).exists() for p in paths)


@contextlib.contextmanager
def timed(log: logging.Logger, what: str) -> Iterator[None]:
    t0 = time.time()
    yield
    log.info("%s took %.1fs", what, time.time() - t0)


def hub_offline() -> bool:
    """Whether the user asked huggingface_hub for offline mode (its own truthy spellings)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _in_hub_cache(repo_id: str) -> bool:
    """Whether hub model `repo_id` has a config.json in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id or an unreadable cache: let from_pretrained say why
        return True


def model_dir_or_hub_id(cfg: Any, name: str, key: str, hint: str) -> str:
    """A local model directory for config value `name` (key `key`), or `name` as a hub id.

    Paths that look local (``models/...``, absolute, ``./``) must exist; the error names the
    key and how to get the model (`hint`). A hub id is handed to from_pretrained, which
    downloads it or, under ``HF_HUB_OFFLINE=1``, reads the Hugging Face cache: offline, an id
    that is not cached is refused here with a message saying so (not the raw hub error).
    """
    path = cfg.resolve_model(name)
    if path.is_dir():
        return str(path)
    offline = hub_offline()
    if name.startswith(("models/", "/", ".")):
        note = "; HF_HUB_OFFLINE is set, so a hub id would load only from the local Hugging Face cache" if offline else ""
        raise StageError(f"{key}: no model directory at {path} ({hint}){note}")
    if offline and not _in_hub_cache(name):
        raise StageError(
            f"{key}: {name!r} is neither a model directory ({path}) nor in the local Hugging Face cache, and "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')} forbids downloading it; unset HF_HUB_OFFLINE "
            f"to download it once, or set {key} to a local model directory"
        )
    return name


def weight_file_problem(path: str | Path) -> str | None:
    """Why a saved weight/state file cannot be read (None = it looks complete).

    Cheap, header-level checks, so validating a 7B checkpoint costs milliseconds: a
    ``.safetensors`` header must parse and cover the whole file (a truncated file fails
    that), a torch file (``.pt``/``.pth``/``.bin``, zip format since torch 1.6) must have its
    zip central directory (written last, so a cut-off save lacks it), a ``.json`` must parse.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as st:
                st.keys()
        elif suffix in (".pt", ".pth", ".bin"):
            import zipfile

            with zipfile.ZipFile(path) as z:
                if not z.namelist():
                    return "an empty torch archive"
        elif suffix == ".json":
            json.loads(path.read_bytes().decode("utf-8"))
    except Exception as e:  # SafetensorError, BadZipFile, JSONDecodeError, UnicodeDecodeError, OSError
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
