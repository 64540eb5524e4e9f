"""Where lesionlab finds the shared folder (real data, weights) and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    """The shared folder (real data and weights): ``$LESIONLAB_SHARED``, else ``<cwd>/../shared``."""
    env = os.environ.get("LESIONLAB_SHARED")
    return Path(env) if env else Path.cwd().parent / "shared"


def shared_data_dir() -> Path:
    """``<shared>/data``: the real HAM10000 copy and the published reader-study data."""
    return shared_dir() / "data"


def cache_dir() -> Path:
    """``$LESIONLAB_CACHE``, else ``~/.cache/lesionlab``: decoded images, embeddings and other rebuildable files."""
    env = os.environ.get("LESIONLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lesionlab"
