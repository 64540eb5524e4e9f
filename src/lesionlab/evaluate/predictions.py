"""Predictions tables: score a split of a data source with a run, save and re-read them, and time inference.

A predictions table has one row per image: ``image_id``, ``label`` (index), ``dx`` (true code), ``pred`` (predicted
code) and one probability column per class, ``p_<code>`` in :data:`lesionlab.classes.CLASS_CODES` order. Every
reader checks those columns against the run's classes, so a file written for another class set is rejected instead
of being scored with shuffled columns.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lesionlab.classes import CLASS_CODES
from lesionlab.core.errors import LesionlabError, MissingFileError
from lesionlab.core.io import atomic_write
from lesionlab.core.metrics import softmax
from lesionlab.data.cache import cached_images

if TYPE_CHECKING:
    from lesionlab.data.sources import DataSource
    from lesionlab.data.transforms import Preprocessing
    from lesionlab.runs import Run

PROBA_PREFIX = "p_"
ID_COLUMNS = ("image_id", "label", "dx")
META_FIELDS = ("age", "sex", "site")


class PredictionsError(LesionlabError, ValueError):
    """A predictions table or a data split that does not fit the run; the message names the file or column."""


def proba_columns(classes: Sequence[str] = CLASS_CODES) -> list[str]:
    """Probability column names in class order (``p_akiec`` ... ``p_vasc``)."""
    return [f"{PROBA_PREFIX}{c}" for c in classes]


def predictions_frame(image_ids: Sequence[str], labels: Sequence[int], proba: np.ndarray,
                      classes: Sequence[str] = CLASS_CODES, extra: dict[str, Sequence[Any]] | None = None
                      ) -> pd.DataFrame:
    """Build the standard table from ids, label indices and ``[N, K]`` probabilities (``extra``: more columns)."""
    p = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if p.shape != (len(image_ids), len(classes)) or labels.shape != (len(image_ids),):
        raise PredictionsError(f"{len(image_ids)} ids, {labels.shape[0]} labels and probabilities {p.shape} "
                               f"do not line up for {len(classes)} classes")
    codes = np.asarray(classes)
    frame = pd.DataFrame({"image_id": [str(i) for i in image_ids], "label": labels,
                          "dx": np.where(labels >= 0, codes[np.clip(labels, 0, None)], ""),
                          "pred": codes[p.argmax(axis=1)]})
    for name, values in (extra or {}).items():
        frame[name] = list(values)
    for col, values in zip(proba_columns(classes), p.T, strict=True):
        frame[col] = values
    return frame


def _row(i: int) -> str:
    """A data row as position and CSV line (header is line 1)."""
    return f"row {i} (line {i + 2})"


def check_predictions(frame: pd.DataFrame, classes: Sequence[str] = CLASS_CODES, where: str = "predictions"
                      ) -> pd.DataFrame:
    """Validate a predictions table against ``classes``: id columns, exactly the class columns, sane values."""
    missing_ids = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing_ids:
        raise PredictionsError(f"{where}: missing column(s) {missing_ids} (columns: {list(frame.columns)})")
    have = [c for c in frame.columns if str(c).startswith(PROBA_PREFIX)]
    want = proba_columns(classes)
    if have != want:
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"extra {extra}")
        if not missing and not extra:
            detail.append(f"order {have}")
        raise PredictionsError(f"{where}: probability columns do not match the run's classes {list(classes)}: "
                               f"{'; '.join(detail)}")
    if frame.empty:
        raise PredictionsError(f"{where}: no rows")
    dup = frame["image_id"].astype(str).duplicated()
    if dup.any():
        raise PredictionsError(f"{where}: duplicate image_id {frame['image_id'][dup].iloc[0]!r} "
                               f"({_row(int(np.flatnonzero(dup.to_numpy())[0]))})")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = labels.isna() | (labels < 0) | (labels >= len(classes)) | (labels != labels.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PredictionsError(f"{where}: {_row(row)}: label '{frame['label'].iloc[row]}' is not a class index "
                               f"0..{len(classes) - 1}")
    codes = np.asarray(classes)
    mismatch = frame["dx"].astype(str).to_numpy() != codes[labels.astype(int).to_numpy()]
    if mismatch.any():
        row = int(np.flatnonzero(mismatch)[0])
        raise PredictionsError(f"{where}: {_row(row)}: dx {frame['dx'].iloc[row]!r} disagrees with label "
                               f"{int(labels.iloc[row])} ({codes[int(labels.iloc[row])]})")
    p = frame[want].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(p)):
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(p)))
        raise PredictionsError(f"{where}: {_row(row)}, column {want[col]}: not a number")
    sums = p.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if off.size:
        raise PredictionsError(f"{where}: {_row(int(off[0]))}: probabilities sum to {sums[off[0]]:.4f}, expected 1")
    out = frame.copy()
    out["image_id"] = out["image_id"].astype(str)
    out["label"] = labels.astype(np.int64)
    out[want] = p
    return out


def read_predictions(path: str | Path, classes: Sequence[str] = CLASS_CODES) -> pd.DataFrame:
    """Read and validate a predictions CSV; errors name the file and the offending column or row."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"predictions file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "dx": str, "pred": str}, keep_default_na=False,
                            na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictionsError(f"{path}: not a readable CSV ({err})") from None
    return check_predictions(frame, classes, where=str(path))


def write_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a predictions table as CSV atomically (full float precision)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.8g"))


def arrays(frame: pd.DataFrame, classes: Sequence[str] = CLASS_CODES) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, proba)`` from a validated predictions table."""
    return frame["label"].to_numpy(dtype=np.int64), frame[proba_columns(classes)].to_numpy(dtype=np.float64)


# ---------------------------------------------------------------------------------- scoring a data source


def split_rows(source: DataSource, split: str | None) -> np.ndarray:
    """Row positions of ``split`` in ``source.table`` (all rows when ``split`` is None), with a clear error if empty."""
    table = source.table
    if split is None:
        return np.arange(len(table))
    if "split" not in table.columns:
        raise PredictionsError(f"data source {source.name!r} has no split column; evaluate it whole (split None)")
    rows = np.flatnonzero((table["split"] == split).to_numpy())
    if rows.size == 0:
        present = sorted(set(table["split"].astype(str)) - {""})
        raise PredictionsError(f"split {split!r} is empty in data source {source.name!r} "
                               f"(splits present: {present or 'none'})")
    return rows


def check_source_classes(source: DataSource, run_classes: Sequence[str], rows: np.ndarray | None = None) -> None:
    """Refuse data whose class set differs from the run's: a declared class list, or labels/codes outside it."""
    declared = getattr(source, "classes", None)
    if declared is not None and tuple(declared) != tuple(run_classes):
        raise PredictionsError(f"data source {source.name!r} has classes {list(declared)}, but the run was trained on "
                               f"{list(run_classes)}")
    table = source.table if rows is None else source.table.iloc[rows]
    if "dx" in table.columns:
        unknown = sorted(set(table["dx"].astype(str)) - set(run_classes))
        if unknown:
            raise PredictionsError(f"data source {source.name!r} has diagnoses {unknown} that are not among the "
                                   f"run's classes {list(run_classes)}")
    labels = table["label"].to_numpy()
    bad = np.flatnonzero((labels < 0) | (labels >= len(run_classes)))
    if bad.size:
        raise PredictionsError(f"data source {source.name!r}: image {table['image_id'].iloc[bad[0]]!r} has label "
                               f"{int(labels[bad[0]])}, outside the run's classes 0..{len(run_classes) - 1}")


def load_images(source: DataSource, rows: np.ndarray, preprocessing: Preprocessing | None = None,
                progress: bool = True) -> list[Any]:
    """The images at ``rows`` as the run's preprocessing resizes them, from the decode-once cache (the same
    ``Preprocessing.resize_image`` pixels; the run then only normalises them), or decoded when there is none."""
    if preprocessing is None:
        return [source.load_image(int(i)) for i in tqdm(rows, desc="reading images", disable=not progress)]
    cache = cached_images(source, preprocessing.size, preprocessing.resize, cache_dir=source.cache_dir,
                          progress=progress, source_size=preprocessing.source_size)
    return [np.array(cache[int(i)]) for i in rows]  # writable copies, detached from the memory map


def meta_rows(source: DataSource, rows: np.ndarray) -> list[dict[str, Any]]:
    """Clinical data (age, sex, site) of ``rows`` as the run's metadata encoder expects them."""
    table = source.table.iloc[rows]
    missing = [f for f in META_FIELDS if f not in table.columns]
    if missing:
        raise PredictionsError(f"data source {source.name!r} lacks clinical columns {missing} needed by this "
                               "clinical-data model")
    return table[list(META_FIELDS)].to_dict("records")


def predict_logits(run: Run, images: Sequence[Any], metas: list[dict[str, Any]] | None, tta: bool,
                   batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Run logits ``[N, K]`` in chunks (so preprocessing never holds the whole split as float tensors)."""
    chunk = max(batch_size, 256)
    out = []
    for start in tqdm(range(0, len(images), chunk), desc="predicting", unit="chunk", disable=not progress):
        part_meta = metas[start:start + chunk] if metas is not None else None
        out.append(run.predict_logits(images[start:start + chunk], part_meta, batch_size=batch_size, tta=tta))
    return np.concatenate(out) if out else np.zeros((0, len(run.classes)))


def predict_split(run: Run, source: DataSource, split: str | None = "test", tta: bool | None = None,
                  batch_size: int = 64,
                  temperature: float | None = None, progress: bool = True, return_logits: bool = False
                  ) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """Score one split of ``source`` with ``run`` -> predictions table (image_id, label, dx, pred, p_*).

    ``tta`` defaults to the run's own setting (flip averaging, as validated in training). Probabilities are
    ``softmax(logits / T)`` with ``temperature`` if given, else the run's fitted temperature (1 when none).
    """
    rows = split_rows(source, split)
    check_source_classes(source, run.classes, rows)
    use_tta = run.tta if tta is None else tta
    images = load_images(source, rows, run.preprocessing, progress)
    metas = meta_rows(source, rows) if run.meta_encoder is not None else None
    logits = predict_logits(run, images, metas, use_tta, batch_size, progress)
    proba = softmax(logits, temperature if temperature is not None else run.temperature)
    table = source.table.iloc[rows]
    extra = {"lesion_id": table["lesion_id"].astype(str).tolist()} if "lesion_id" in table.columns else None
    frame = predictions_frame(table["image_id"].tolist(), table["label"].to_numpy(), proba, run.classes, extra)
    return (frame, logits) if return_logits else frame


# ------------------------------------------------------------------------------------------------- timing


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else :mod:`platform`)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str) -> str:
    """Human-readable device: the GPU name for CUDA, else the CPU model with the thread count torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def time_inference(run: Run, images: Sequence[Any], metas: list[dict[str, Any]] | None = None, tta: bool = False,
                   batch_size: int = 64, n_single: int = 32, warmup: int = 3) -> dict[str, Any]:
    """Milliseconds per image at batch 1 (median over ``n_single`` images) and batched (one pass over ``images``).

    The run's preprocessing of the given (decoded) images is included, decoding is not; the first ``warmup``
    calls are not timed.
    """
    if not len(images):
        raise PredictionsError("no images to time")
    n_single = min(n_single, len(images))

    def one(i: int) -> float:
        start = time.perf_counter()
        run.predict_logits(images[i:i + 1], metas[i:i + 1] if metas is not None else None, batch_size=1, tta=tta)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        return time.perf_counter() - start

    for i in range(min(warmup, len(images))):
        one(i)
    singles = [one(i) for i in range(n_single)]
    start = time.perf_counter()
    run.predict_logits(images, metas, batch_size=batch_size, tta=tta)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    batched = time.perf_counter() - start
    return {"device": device_name(run.device), "tta": tta, "threads": torch.get_num_threads(),
            "ms_per_image_batch1": 1000.0 * statistics.median(singles), "n_batch1": n_single,
            "ms_per_image_batched": 1000.0 * batched / len(images), "batch_size": batch_size,
            "n_batched": len(images), "torch": torch.__version__}


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B")
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two predictions tables over the same images, in the same row order; refuses different image sets or labels."""
    ids_a, ids_b = set(a["image_id"]), set(b["image_id"])
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise PredictionsError(
            f"{names[0]} and {names[1]} are not on the same images: {len(only_a)} only in {names[0]} "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in {names[1]} (e.g. {only_b[:3]}); paired tests need the "
            "same test set")
    a = a.set_index("image_id", drop=False)
    b = b.set_index("image_id", drop=False).loc[a.index]
    differ = a["label"].to_numpy() != b["label"].to_numpy()
    if differ.any():
        image = a.index[int(np.flatnonzero(differ)[0])]
        raise PredictionsError(f"{names[0]} and {names[1]} disagree on the true label of {image} "
                               f"({a.loc[image, 'dx']} vs {b.loc[image, 'dx']}) and {int(differ.sum()) - 1} more")
    return a.reset_index(drop=True), b.reset_index(drop=True)
