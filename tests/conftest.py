"""Shared fixtures: where the real data lives (skipping clearly when absent) and small synthetic inputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lesionlab.core.allocator import tune_malloc
from lesionlab.core.io import atomic_write, atomic_write_text
from lesionlab.data.synthetic import GENERATOR_VERSION, generate_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LESIONLAB_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"


def pytest_configure(config: pytest.Config) -> None:
    """The tests run under the command line's malloc settings from the first test on (each ``main()`` call sets
    them anyway; setting them once here keeps the suite's timings independent of which test calls it first)."""
    tune_malloc()


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


def _write_synthetic(out_dir: str | Path, n: int = 700, seed: int = 0, size: int = 64, quality: int = 95) -> Path:
    """Write a SYNTHETIC set in the HAM10000 layout: ``HAM10000_metadata.csv`` + ``images/SYN_*.jpg`` + README.

    Returns the metadata CSV path. Open it with ``source: ham10000``; the ``dx_type`` column keeps it labelled
    synthetic.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    meta, images = generate_synthetic(n, seed, size)
    for image_id, pixels in zip(meta["image_id"], images, strict=True):
        Image.fromarray(pixels).save(out / "images" / f"{image_id}.jpg", quality=quality)
    atomic_write_text(out / "README.txt", f"SYNTHETIC lesion-like images made by lesionlab (seed {seed}, n={n}, "
                      f"{size}x{size} px, generator v{GENERATOR_VERSION}).\nThey are NOT dermoscopy images and must "
                      "never be used to judge a model's clinical performance.\n")
    return atomic_write(out / "HAM10000_metadata.csv", lambda tmp: meta.to_csv(tmp, index=False))


@pytest.fixture(scope="session")
def write_synthetic() -> Callable[..., Path]:
    """Writes a SYNTHETIC set in the HAM10000 layout (files, not the in-memory source) into a folder."""
    return _write_synthetic


@pytest.fixture(scope="session")
def serve_in_thread() -> Callable[..., Any]:
    """A context manager running an app under uvicorn in a thread (yields its base URL)."""
    from lesionlab.serve.bench import serve_in_thread as run_in_thread

    return run_in_thread
