"""Files: atomic writes with fsync, JSON-safe conversion and SHA-256 hashing, written once for the whole package.

Every write goes to a temporary file beside the target, is flushed to disk and then renamed into place, so a
process killed mid-write leaves the previous complete file (and at worst a ``.<name>.*.tmp`` file, which
:func:`sweep_stale_temporaries` removes).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lesionlab.core.errors import LesionlabError

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide runs and caches from other users of a shared folder
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes the file visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically; NaN/inf become null so every reader can parse the file."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path, error: Callable[[str], Exception] = LesionlabError, hint: str = "") -> Any:
    """A JSON file's content; an unreadable or invalid file raises ``error`` naming it (``hint``: what to do)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}){hint}") from None


def json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays, paths and tuples converted; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, memoised per (path, size, mtime) so repeated look-ups of big files stay cheap."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def sweep_stale_temporaries(folder: str | Path, older_than_s: float = 3600.0) -> list[Path]:
    """Delete ``.*.tmp`` files that :func:`atomic_write` left behind when a process was killed mid-write.

    Only files older than ``older_than_s`` go, so a write in progress in another process is never touched.
    Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for tmp in folder.rglob(f".*{TMP_SUFFIX}"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another sweeper or the writer itself got there first
            continue
    return removed
