"""Stage fingerprints: the settings a stage read and the inputs it was made from.

WHY: every stage skips work whose outputs exist, so that a killed run continues where it
stopped. On existence alone, a changed setting (``recmodel.hidden_size``, the LoRA rank,
the task mix) or a rebuilt input (a retrained recommender) re-ran nothing and the tables
silently kept the old results. A stage that skips now compares a *stamp* written next to
its outputs, last, once they are complete: ``{"settings": {key: value}, "inputs": {file:
sha256}}``. Same stamp: skip. Different: one error naming what changed and the flag that
rebuilds (``--force``; ``run_all.sh --from STAGE --force`` for the stages after it). The
stage never deletes outputs on its own, so nothing is lost to a typo in a config.

Outputs written before stamps existed have none: they are kept, and the current
fingerprint is recorded (said in the log), since rebuilding them unasked would cost the
very work this module protects.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.utils import StageError, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

#: (resolved path, size, mtime_ns) -> sha256, so one process hashes each input once
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _plain(value: Any) -> Any:
    """A JSON-comparable copy of a config value (dataclasses, paths, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_of(cfg: Any, keys: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{dotted key: value}`` for `keys` (a section such as ``recmodel`` expands to its fields,
    nested sections too), leaving out the dotted keys (or whole sections) in `exclude`:
    settings that do not change the output."""
    skip = set(exclude)
    out: dict[str, Any] = {}

    def add(name: str, obj: Any) -> None:
        if name in skip:
            return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # nested sections flattened
            for f in dataclasses.fields(obj):
                add(f"{name}.{f.name}", getattr(obj, f.name))
        else:
            out[name] = _plain(obj)

    for key in keys:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        add(key, obj)
    return out


def digest(path: str | Path) -> str:
    """sha256 of a file, or "missing"; cached per process by size and modification time."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return "missing"
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(p)
    return _DIGESTS[key]


def fingerprint(cfg: Any, keys: Iterable[str], inputs: Sequence[str | Path], exclude: Iterable[str] = (),
                base: str | Path | None = None) -> dict[str, Any]:
    """The stamp of a stage: its settings and the digests of its input files (paths shown
    relative to `base`, the output root, so moving a whole run keeps its stamps)."""
    def name(p: Path) -> str:
        if base is not None:
            try:
                return str(Path(p).resolve().relative_to(Path(base).resolve()))
            except ValueError:
                pass
        return str(p)

    return {"settings": settings_of(cfg, keys, exclude), "inputs": {name(Path(p)): digest(p) for p in inputs}}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    """Human-readable changes from `old` to `new`, settings first."""
    out: list[str] = []
    for part, what in (("settings", "setting"), ("inputs", "input")):
        a, b = old.get(part) or {}, new.get(part) or {}
        for key in sorted(set(a) | set(b)):
            if key not in a:
                out.append(f"{what} {key} is new ({_short(b[key])})")
            elif key not in b:
                out.append(f"{what} {key} is no longer used")
            elif a[key] != b[key]:
                if part == "inputs":
                    out.append(f"input {key} changed since these outputs were made")
                else:
                    out.append(f"{key}: {_short(a[key])} -> {_short(b[key])}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def changed_setting(change: str) -> str | None:
    """The setting a line of :func:`differences` is about (None for an input or a "... more")."""
    for prefix in ("setting ", "input ", "... "):
        if change.startswith(prefix):
            return change.split()[1] if prefix == "setting " else None
    return change.split(":", 1)[0]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def current(stamp_path: str | Path, fp: dict[str, Any], what: str, rebuild: str = "--force") -> bool:
    """Whether outputs guarded by `stamp_path` may be reused with fingerprint `fp`.

    True when the stamp matches, or when there is no stamp (outputs from before stamps: the
    fingerprint is recorded). Raises :class:`StageError` naming the differences when the
    stamp differs. The caller checks that its outputs exist before asking.
    """
    path = Path(stamp_path)
    if not path.is_file():
        log.info("%s has no fingerprint (made before stamps were recorded); keeping it and recording the current "
                 "settings in %s", what, path.name)
        write_stamp(path, fp)
        return True
    try:
        old = read_json(path, f"fingerprint of {what}")
    except StageError:
        log.warning("%s: unreadable fingerprint; recording the current one", path)
        write_stamp(path, fp)
        return True
    if old == fp:
        return True
    raise stale_error(what, differences(old, fp), rebuild)


def embedded_changes(path: str | Path, done: dict[str, Any], fp: dict[str, Any]) -> list[str]:
    """:func:`current` for a fingerprint kept inside a metrics json (``done["fingerprint"]``):
    the differences from `fp`, [] when current. A file made before fingerprints gets `fp`
    recorded and counts as current."""
    old = done.get("fingerprint")
    if old is None:
        log.info("%s has no fingerprint; keeping it and recording the current settings", path)
        write_json(path, {**done, "fingerprint": fp})
        return []
    return [] if old == fp else differences(old, fp)


def stale_error(what: str, changes: Sequence[str], rebuild: str = "--force") -> StageError:
    """The one message for outputs made from other settings or inputs than now."""
    return StageError(
        f"{what} was made from other settings or inputs than now ({'; '.join(changes)}). Re-run this "
        f"stage with {rebuild} to rebuild it (and, with bash shell/run_all.sh --from <this stage> --force, "
        f"the stages after it), or restore the old settings; nothing was deleted"
    )


def write_stamp(stamp_path: str | Path, fp: dict[str, Any]) -> None:
    """Record `fp` (atomically), after the outputs it describes are complete."""
    write_json(stamp_path, fp)
