"""Shared fixtures: where the real data lives (skipping clearly when absent) and small synthetic inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LESIONLAB_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real HAM10000); real-data tests skip with this message when it is absent."""
    if not (SHARED_DATA / "ham10000" / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set LESIONLAB_SHARED or place ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """``../shared/weights`` (converted MobileNetV2); skips when absent."""
    if not (SHARED_WEIGHTS / "mobilenetv2_100.imagenet.fp16.safetensors").is_file():
        pytest.skip(f"shared weights not found at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test session gets its own lesionlab cache, so tests never read or fill the user's cache."""
    old = os.environ.get("LESIONLAB_CACHE")
    os.environ["LESIONLAB_CACHE"] = str(tmp_path_factory.mktemp("lesionlab-cache"))
    yield
    if old is None:
        os.environ.pop("LESIONLAB_CACHE", None)
    else:
        os.environ["LESIONLAB_CACHE"] = old
