"""Fixtures of the data-layer tests: small SYNTHETIC sets written in the HAM10000 layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def synthetic_ham(tmp_path_factory: pytest.TempPathFactory, write_synthetic: Callable[..., Path]) -> Path:
    """A 120-image SYNTHETIC set in the HAM10000 layout (read-only for tests: copy before changing it)."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic-ham"), n=120, seed=3, size=32)


@pytest.fixture
def ham_copy(synthetic_ham: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the synthetic HAM10000-layout set; returns its metadata CSV."""
    import shutil

    shutil.copytree(synthetic_ham.parent, tmp_path / "ham")
    return tmp_path / "ham" / synthetic_ham.name


@pytest.fixture
def rewrite_csv():
    """A function ``(path, edit)`` that applies ``edit`` (DataFrame -> DataFrame) to a CSV read as strings."""

    def rewrite(path: Path, edit) -> None:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        edit(frame).to_csv(path, index=False)

    return rewrite
