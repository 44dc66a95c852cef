"""What every artifact records about where it came from, and how it is written safely."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np


def git_sha(cwd: Path | None = None) -> str:
    """The commit of the code that produced a result; '-dirty' marks uncommitted changes.

    Read once per process: a long run records the code it started with, not a commit made in
    the checkout while it ran."""
    return _git_sha(cwd or Path(__file__).resolve().parent)


@functools.cache
def _git_sha(cwd: Path) -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()  # a field one of two records does not have (`changed_fields`)


def changed_fields(saved: Any, current: Any, *, ignore: Collection[str] = (), name: str = "") -> list[str]:
    """`field: saved → now` for every value that differs between two records of nested mappings,
    dotted from the top (`train.lr: 0.0002 → 0.0001`); keys named in `ignore` are skipped at any depth."""
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return [] if saved == current else [f"{name or 'value'}: {saved!r} → {current!r}"]
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        if key in ignore:
            continue
        where = f"{name}.{key}" if name else str(key)
        changes += changed_fields(
            saved.get(key, _ABSENT), current.get(key, _ABSENT), ignore=ignore, name=where
        )
    return changes


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a kill leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def read_json(path: Path) -> Any:
    """The parsed file; a truncated or hand-damaged file is a `ValueError` that names it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON (truncated or damaged? {error.msg} at line {error.lineno})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from None


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def cache_root() -> Path:
    """Prepared data and features live here: `$PLANKDIFF_CACHE`, else `./cache` (git-ignored)."""
    return Path(os.environ.get("PLANKDIFF_CACHE", "cache")).resolve()
