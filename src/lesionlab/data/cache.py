"""Decode-once cache: every image decoded and resized once per (source, resolution) into one uint8 ``.npy`` file.

Training reads the same images every epoch; decoding JPEGs each time costs far more than the model at small sizes.
The cache stores ``[N, H, W, 3]`` uint8 pixels, row-aligned with ``source.table``, and returns them memory-mapped.

Each row is :func:`~lesionlab.data.transforms.model_pixels` of one image: the same function
``Preprocessing.resize_image`` applies at inference, so training, evaluation and serving see the same pixels.

The file name is a hash of (source fingerprint, size, resize mode, source size when one is set, cache format
version). The fingerprint covers the table and each image file's name, size and mtime, so a changed source gets a
new key and the old file is simply never read again: the cache is rebuilt, never patched. Files are written with
:func:`~lesionlab.core.io.atomic_write`, so an interrupted build leaves nothing that could be mistaken for a
finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lesionlab.core.io import atomic_write, atomic_write_text, sweep_stale_temporaries
from lesionlab.core.paths import cache_dir as default_cache_dir
from lesionlab.data.images import DataError, FileImages, ImageStore
from lesionlab.data.sources import DataSource
from lesionlab.data.transforms import RESIZE_MODES, model_pixels

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


Size = tuple[int, int]


def cache_key(source: DataSource, size: Size, resize: str, source_size: Size | None = None) -> str:
    """The cache file's key: changes with the source's content, the sizes, the resize mode or the format."""
    squash = f"|src{int(source_size[0])}x{int(source_size[1])}" if source_size else ""
    text = f"{source.fingerprint()}|{int(size[0])}x{int(size[1])}|{resize}{squash}|v{CACHE_FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(source: DataSource, size: Size, resize: str, cache_dir: str | Path | None = None,
               source_size: Size | None = None) -> Path:
    """Where the cache file for this source and resolution lives (whether or not it exists yet)."""
    root = Path(cache_dir or source.cache_dir or default_cache_dir()) / "images"
    return root / f"{cache_key(source, size, resize, source_size)}.npy"


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


_WORKER: tuple[ImageStore, Size, str, Size | None] | None = None


def _init_worker(images: ImageStore, size: Size, resize: str, source_size: Size | None) -> None:
    global _WORKER
    _WORKER = (images, size, resize, source_size)


def _decode_rows(rows: range) -> tuple[int, np.ndarray]:
    assert _WORKER is not None
    images, size, resize, source_size = _WORKER
    return rows.start, np.stack([model_pixels(images.load(i), size, resize, source_size) for i in rows])


def decode_all(source: DataSource, size: Size, resize: str, out: np.ndarray, workers: int = 0,
               progress: bool = True, source_size: Size | None = None) -> None:
    """Decode and resize every image of ``source`` into ``out`` [N, H, W, 3] (the slow path the cache avoids)."""
    n = len(source)
    bar = tqdm(total=n, desc=f"decoding {n} images -> {size[0]}x{size[1]}", unit="img", disable=not progress,
               leave=False)
    with bar:
        if workers > 1 and isinstance(source.images, FileImages) and n > 256:
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                     initargs=(source.images, size, resize, source_size)) as pool:
                for start, block in pool.map(_decode_rows, _chunks(n, 128)):
                    out[start:start + len(block)] = block
                    bar.update(len(block))
        else:
            for i in range(n):
                out[i] = model_pixels(source.load_image(i), size, resize, source_size)
                bar.update(1)


def _open(path: Path, n: int, size: Size) -> np.ndarray | None:
    """The cached array if ``path`` holds a complete one of the expected shape, else None (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, int(size[0]), int(size[1]), 3):
        return None
    # A plain ndarray view of the same mapping: still paged in lazily, but indexing a row costs ~1 us instead of
    # the ~40 us that np.memmap's Python-level __getitem__/__array_finalize__ add to every access.
    return arr.view(np.ndarray)


_SWEPT: set[Path] = set()


def sweep_cache_once(folder: Path) -> list[Path]:
    """Remove temporaries that a killed cache build left in ``folder`` (older than an hour, so a build running in
    another process is never touched), once per folder and process."""
    if folder in _SWEPT:
        return []
    _SWEPT.add(folder)
    removed = sweep_stale_temporaries(folder)
    if removed:
        log.warning("removed %d stale temporary file(s) from %s (left by a killed process)", len(removed), folder)
    return removed


def cached_images(source: DataSource, size: Size, resize: str = "square", cache_dir: str | Path | None = None,
                  workers: int = 0, progress: bool = True, source_size: Size | None = None) -> np.ndarray:
    """All images of ``source`` as the model sees them at ``size`` = (H, W): a read-only memory-mapped uint8
    [N, H, W, 3] array (a plain ndarray view of ``np.load(path, mmap_mode="r")``), row-aligned with ``source.table``.

    ``source_size``: squash each image to that size first (see :func:`~lesionlab.data.transforms.model_pixels`;
    a run's ``Preprocessing.source_size``). Built on first use (with a progress bar; ``workers`` > 1 decodes files
    in that many processes), then read from disk. Decoding errors name the file and leave no partial cache behind.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    size = (int(size[0]), int(size[1]))
    path = cache_path(source, size, resize, cache_dir, source_size)
    n = len(source)
    found = _open(path, n, size)
    if found is not None:
        return found
    sweep_cache_once(path.parent)

    def build(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *size, 3))
        decode_all(source, size, resize, out, workers, progress, source_size)
        out.flush()
        del out

    atomic_write(path, build)
    info = {"source": source.name, "synthetic": source.synthetic, "rows": n, "size": list(size), "resize": resize,
            "source_size": list(source_size) if source_size else None, "format": CACHE_FORMAT_VERSION,
            "key": path.stem, "created": time.time()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=1))
    result = _open(path, n, size)
    if result is None:
        raise RuntimeError(f"cache file {path} was written but cannot be read back")
    return result


def benchmark(source: DataSource, size: Size, resize: str = "square", cache_dir: str | Path | None = None,
              progress: bool = True) -> dict[str, float]:
    """Seconds to decode + resize every image vs to read every row from the cache, measured in one run.

    Both timed loops do what a Dataset's ``__getitem__`` does: one image at a time into its own HxWx3 array, which
    is then dropped. The cache is built first (untimed as a read), so both sides find their files in the OS page
    cache; the read side includes ``cached_images`` itself (fingerprinting the source, opening the file). Afterwards,
    untimed, every cached row is checked against a fresh decode.
    """
    size = (int(size[0]), int(size[1]))
    start = time.perf_counter()
    cached_images(source, size, resize, cache_dir, progress=progress)
    build_s = time.perf_counter() - start
    n = len(source)
    start = time.perf_counter()
    for i in tqdm(range(n), desc="timing: decode", unit="img", disable=not progress, leave=False):
        model_pixels(source.load_image(i), size, resize)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    arr = cached_images(source, size, resize, cache_dir, progress=False)
    for i in range(n):
        np.array(arr[i])
    read_s = time.perf_counter() - start
    for i in tqdm(range(n), desc="checking the cache", unit="img", disable=not progress, leave=False):
        if not np.array_equal(arr[i], model_pixels(source.load_image(i), size, resize)):
            raise DataError(f"cache row {i} differs from a fresh decode; the cache file is stale or damaged")
    return {"images": n, "decode_s": decode_s, "cache_read_s": read_s, "speedup": decode_s / max(read_s, 1e-9),
            "build_s": build_s}
