"""Decode-once cache: same pixels as decoding, memory-mapped, keyed by content, atomic."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.config import DataConfig
from lesionlab.data import DataError, cached_images, open_ham10000, open_source, open_synthetic, resize_image
from lesionlab.data import cache as cache_module
from lesionlab.data.cache import benchmark, cache_path


@pytest.mark.parametrize(("size", "resize"), [((16, 16), "square"), ((24, 32), "aspect")])
def test_cache_holds_the_resized_pixels(ham_copy: Path, tmp_path: Path, size: tuple[int, int], resize: str) -> None:
    source = open_ham10000(ham_copy)
    arr = cached_images(source, size, resize, cache_dir=tmp_path / "c", progress=False)
    assert arr.shape == (120, *size, 3) and arr.dtype == np.uint8 and not arr.flags.writeable
    assert isinstance(arr.base, np.memmap) or isinstance(getattr(arr.base, "base", None), np.memmap)
    for i in (0, 57, 119):
        assert np.array_equal(arr[i], resize_image(source.load_image(i), size, resize))
    path = cache_path(source, size, resize, tmp_path / "c")
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_second_call_reads_without_decoding(ham_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_ham10000(ham_copy)
    first = cached_images(source, (16, 16), cache_dir=tmp_path, progress=False)

    def refuse(*args, **kwargs) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "decode_all", refuse)
    again = cached_images(open_ham10000(ham_copy), (16, 16), cache_dir=tmp_path, progress=False)
    assert np.array_equal(first, again)


def test_a_changed_source_gets_a_new_cache(ham_copy: Path, tmp_path: Path) -> None:
    source = open_ham10000(ham_copy)
    old = cache_path(source, (16, 16), "square", tmp_path)
    cached_images(source, (16, 16), cache_dir=tmp_path, progress=False)
    target = ham_copy.parent / "images" / "SYN_00002.jpg"
    Image.new("RGB", (32, 32), (0, 255, 0)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = open_ham10000(ham_copy)
    assert cache_path(changed, (16, 16), "square", tmp_path) != old
    arr = cached_images(changed, (16, 16), cache_dir=tmp_path, progress=False)
    assert arr[2, 8, 8, 1] > 250 and arr[2, 8, 8, [0, 2]].max() < 5  # the new green image (JPEG)
    # size and resize mode are part of the key too
    assert len({cache_path(changed, s, r, tmp_path) for s in ((16, 16), (16, 20)) for r in ("square", "aspect")}) == 4


def test_a_damaged_cache_file_is_rebuilt(ham_copy: Path, tmp_path: Path) -> None:
    source = open_ham10000(ham_copy)
    path = cache_path(source, (16, 16), "square", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npy file")
    arr = cached_images(source, (16, 16), cache_dir=tmp_path, progress=False)
    assert arr.shape == (120, 16, 16, 3)


def test_a_corrupt_image_names_the_file_and_leaves_no_cache(ham_copy: Path, tmp_path: Path) -> None:
    (ham_copy.parent / "images" / "SYN_00050.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    source = open_ham10000(ham_copy)
    with pytest.raises(DataError, match=r"SYN_00050\.jpg: cannot decode image"):
        cached_images(source, (16, 16), cache_dir=tmp_path, progress=False)
    assert not list((tmp_path / "images").iterdir())


def test_worker_processes_give_the_same_cache(synthetic_ham: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    shutil.copytree(synthetic_ham.parent, big)
    images = big / "images"
    for f in list(images.iterdir()):  # 360 images so that the worker path (> 256) is taken
        for k in (1, 2):
            shutil.copy(f, images / f"{f.stem}_{k}.jpg")
    import pandas as pd

    meta = pd.read_csv(big / "HAM10000_metadata.csv")
    copies = [meta.assign(image_id=meta["image_id"] + f"_{k}") for k in (1, 2)]
    pd.concat([meta, *copies]).to_csv(big / "HAM10000_metadata.csv", index=False)
    source = open_ham10000(big / "HAM10000_metadata.csv")
    one = np.array(cached_images(source, (16, 16), cache_dir=tmp_path / "a", progress=False))
    two = np.array(cached_images(source, (16, 16), cache_dir=tmp_path / "b", workers=2, progress=False))
    assert np.array_equal(one, two)


def test_default_location_and_config_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_CACHE", str(tmp_path / "env-cache"))
    source = open_synthetic(n=14, seed=0, size=16)
    assert cache_path(source, (8, 8), "square").is_relative_to(tmp_path / "env-cache")
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path / "none"))
    configured = open_source(DataConfig(source="synthetic", synthetic_n=60, split="lesion",
                                        cache_dir=tmp_path / "cfg-cache"))
    assert cache_path(configured, (8, 8), "square").is_relative_to(tmp_path / "cfg-cache")


def test_benchmark_reports_both_paths(synthetic_ham: Path, tmp_path: Path) -> None:
    result = benchmark(open_ham10000(synthetic_ham), (16, 16), cache_dir=tmp_path, progress=False)
    assert result["images"] == 120 and result["decode_s"] > 0 and result["cache_read_s"] > 0
    assert result["speedup"] == pytest.approx(result["decode_s"] / result["cache_read_s"])


@pytest.mark.realdata
def test_full_resolution_images_aspect_cache(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "ham10000-600x450"
    source = open_ham10000(shared_data / "ham10000" / "HAM10000_metadata.csv", [folder])
    assert len(source) == 7 and source.load_image(0).size == (600, 450)
    arr = cached_images(source, (224, 300), "aspect", cache_dir=tmp_path, progress=False)
    assert arr.shape == (7, 224, 300, 3)
    assert np.array_equal(arr[3], resize_image(source.load_image(3), (224, 300), "aspect"))
