"""A folder's file list with sizes and SHA-256, and the check that the files are still the ones listed.

A run directory records its manifest in ``run.json`` (``files``), so a truncated, swapped or edited file (weights,
config, an evaluation's model card) is refused by name when the run is loaded, instead of being served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import TMP_SUFFIX, file_sha256


def _listed(folder: Path, exclude: Iterable[str], own_marker: str | None = None) -> list[Path]:
    skip = set(exclude)
    # subfolders with their own manifest file are units of their own (e.g. an ensemble's member runs)
    units = {p.parent.relative_to(folder).parts for p in folder.rglob(own_marker) if p.parent != folder} \
        if own_marker else set()
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or rel.as_posix() in skip:
            continue
        if any(rel.parts[:len(unit)] == unit for unit in units):
            continue
        if any(part.startswith(".") for part in rel.parts) or path.name.endswith((TMP_SUFFIX, ".log")):
            continue  # hidden files, temporaries of a write in progress, logs that keep growing
        out.append(path)
    return out


def file_manifest(folder: str | Path, exclude: Iterable[str] = (), own_marker: str | None = None
                  ) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"bytes", "sha256"}}`` for every regular file under ``folder`` (hidden files,
    temporaries, ``*.log`` files, symbolic links and the ``exclude`` paths left out). ``own_marker``: a file name
    (such as ``run.json``) whose subfolders keep a manifest of their own and are left out of this one, so that
    writing into them does not invalidate it."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in _listed(folder, exclude, own_marker)}


def verify_manifest(folder: str | Path, manifest: dict[str, Any], error: Callable[[str], Exception] = LesionlabError,
                    where: str = "the manifest") -> None:
    """Raise ``error`` naming the first listed file that is missing, has another size or another SHA-256."""
    folder = Path(folder)
    for name, entry in sorted(manifest.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise error(f"{where}: file entry {name!r} points outside {folder}")
        if not isinstance(entry, dict) or not {"bytes", "sha256"} <= set(entry):
            raise error(f"{where}: file entry {name!r} lacks bytes and sha256")
        if not path.is_file():
            raise error(f"{path}: listed in {where} but missing; restore it or re-create the run")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise error(f"{path}: {size:,} bytes, but {where} lists {entry['bytes']:,} (truncated or replaced); "
                        "restore the file or re-create the run")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise error(f"{path}: SHA-256 {digest[:12]}... differs from {entry['sha256'][:12]}... in {where} "
                        "(the file was replaced or edited); restore it or re-create the run")
