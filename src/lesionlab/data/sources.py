"""Data sources: HAM10000 folders, MedMNIST npz files, ISIC ground truth, and the synthetic set -> one sample table.

Every source becomes a :class:`DataSource`: the sample table of the images that are present (row ``i`` is image
``i``), the full metadata (including rows whose image is missing, for the audit), and how to read each image.
Metadata rows without an image and image files without a row are counted and reported, never silently dropped.
:func:`open_source` resolves ``DataConfig`` (``source: auto`` -> real HAM10000 from the shared folder when present,
else SYNTHETIC data, said loudly) and applies the configured split.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lesionlab.classes import CLASS_CODES, ISIC_COLUMNS, index_of
from lesionlab.config import DataConfig
from lesionlab.core.card import LICENCES, UNKNOWN_LICENCE
from lesionlab.core.paths import shared_data_dir
from lesionlab.data.images import (
    ArrayImages,
    DataError,
    FileImages,
    ImageStore,
    default_image_dirs,
    expand_image_dirs,
    index_images,
)
from lesionlab.data.metadata import first_index, parse_ham_metadata
from lesionlab.data.splits import (
    KNOWN_DUPLICATES_FILE,
    PUBLISHED_SPLITS,
    apply_split,
    check_split_frame,
    lesion_split,
    read_csv_columns,
    read_dermamnist_c_split,
    read_dermamnist_split,
    read_known_duplicates,
    read_split_csv,
    shared_lesion_counts,
)
from lesionlab.data.synthetic import GENERATOR_VERSION, generate_synthetic, synthetic_table

log = logging.getLogger(__name__)

TABLE_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "label", "dx", "age", "sex", "site", "split")
HAM_METADATA_FILE = "HAM10000_metadata.csv"
NPZ_SPLITS: tuple[str, ...] = ("train", "val", "test")


def shared_ham10000() -> tuple[Path, Path] | None:
    """(metadata CSV, 64px image folder) of the shared HAM10000 copy, or None when absent."""
    base = shared_data_dir()
    csv, images = base / "ham10000" / HAM_METADATA_FILE, base / "ham10000-64" / "images"
    return (csv, images) if csv.is_file() and images.is_dir() else None


# ---------------------------------------------------------------------------------------------------------- source
@dataclass
class DataSource:
    """A sample table plus how to read each row's image (see ``docs/ARCHITECTURE.md``)."""

    name: str
    kind: str  # ham10000 | npz | isic | synthetic
    table: pd.DataFrame  # rows with an image; row i <-> images.load(i); split applied by open_source
    images: ImageStore
    synthetic: bool = False
    has_metadata: bool = True
    metadata: pd.DataFrame | None = None  # every metadata row, with `has_image` (the audit works from it)
    origin: Path | None = None  # the metadata CSV / npz file, where published split files are looked for
    missing_images: list[str] = field(default_factory=list)  # metadata rows whose image was not found
    orphan_images: list[str] = field(default_factory=list)  # image files that no metadata row names
    linked_pairs: list[tuple[str, str]] = field(default_factory=list)  # known duplicate images, kept together
    notes: list[str] = field(default_factory=list)
    split_name: str = ""
    cache_dir: Path | None = None
    licence: str = ""  # default: the licence of this kind of data (lesionlab.core.card.LICENCES)

    def __post_init__(self) -> None:
        if len(self.table) != len(self.images):
            raise ValueError(f"{self.name}: table has {len(self.table)} rows but {len(self.images)} images")
        if not self.licence:
            self.licence = LICENCES["synthetic"] if self.synthetic else LICENCES.get(self.kind, UNKNOWN_LICENCE)
        if self.metadata is None:
            self.metadata = self.table.assign(has_image=True)

    def __len__(self) -> int:
        return len(self.table)

    def load_image(self, i: int) -> Image.Image:
        """Decode row ``i``'s image as RGB (errors name the file)."""
        return self.images.load(int(i))

    def fingerprint(self) -> str:
        """Changes when any image file or the table (ids, labels, metadata; not the split) changes; keys the cache.

        The split is left out on purpose: the same pixels serve every split and every fold.
        """
        table = self.table.drop(columns=[c for c in ("split", "fold") if c in self.table.columns])
        digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=True).to_numpy().tobytes())
        digest.update(self.images.fingerprint().encode())
        return digest.hexdigest()

    def describe(self) -> str:
        """One line that says plainly whether this is real or SYNTHETIC data, and where it comes from."""
        what = "SYNTHETIC data (not dermoscopy)" if self.synthetic else f"real {self.kind} data"
        split = f", split {self.split_name}" if self.split_name else ""
        return f"{what}: {self.name}, {len(self.table)} images{split}"


# --------------------------------------------------------------------------------------------------------- HAM10000
def _file_source(meta: pd.DataFrame, csv: Path, dirs: list[Path], convert_mode: bool, rows: str,
                 **fields: Any) -> DataSource:
    """Match a metadata table to the image files in ``dirs``; rows without image and files without row are
    counted in the source (and its notes), the table keeps the rows whose image is present."""
    found, notes = index_images(dirs)
    has_image = meta["image_id"].isin(found.keys())
    if not has_image.any():
        raise DataError(f"none of the {len(meta)} images named in {csv} were found in "
                        f"{', '.join(map(str, dirs))} ({len(found)} image files there)")
    missing = meta.loc[~has_image, "image_id"].tolist()
    known = set(meta["image_id"])
    orphans = sorted(k for k in found if k not in known)
    if missing:
        notes.append(f"{len(missing)} of {len(meta)} {rows} rows have no image in the folders")
    if orphans:
        notes.append(f"{len(orphans)} image files have no {rows} row (e.g. {', '.join(orphans[:3])})")
    table = meta[has_image].reset_index(drop=True)
    return DataSource(table=table, images=FileImages(tuple(found[i] for i in table["image_id"]), convert_mode),
                      metadata=meta.assign(has_image=has_image.to_numpy()), origin=csv, missing_images=missing,
                      orphan_images=orphans, notes=notes, **fields)


def open_ham10000(metadata_csv: str | Path, image_dirs: list[Path] | None = None,
                  convert_mode: bool = False) -> DataSource:
    """HAM10000 metadata CSV + image folders -> unsplit :class:`DataSource` of the images that are present."""
    csv = Path(metadata_csv)
    meta = parse_ham_metadata(csv)
    dirs = expand_image_dirs(list(image_dirs) if image_dirs else default_image_dirs(csv))
    # dx_type "synthetic" marks generated images (lesionlab's synthetic set, `lesionlab synth sample`): a source
    # with any such row is synthetic, and its name says how many, so every run and report trained on it says so.
    n_synthetic = int((meta["dx_type"] == "synthetic").sum()) if "dx_type" in meta.columns else 0
    synthetic = n_synthetic > 0
    mixed = f" ({n_synthetic} of {len(meta)} images SYNTHETIC)" if 0 < n_synthetic < len(meta) else ""
    name = f"{'SYNTHETIC ' if n_synthetic == len(meta) else ''}HAM10000-format {csv} + {', '.join(map(str, dirs))}"
    dup_file = csv.parent / KNOWN_DUPLICATES_FILE
    linked = read_known_duplicates(dup_file) if dup_file.is_file() else []
    source = _file_source(meta, csv, dirs, convert_mode, "metadata", name=name + mixed, kind="ham10000",
                          synthetic=synthetic, has_metadata=True, linked_pairs=linked)
    if mixed:
        source.notes.append(f"{n_synthetic} of {len(meta)} metadata rows have dx_type 'synthetic' (generated "
                            "images): the source counts as SYNTHETIC")
    return source


# -------------------------------------------------------------------------------------------------------------- npz
def _npz_split(path: Path, data: np.lib.npyio.NpzFile, split: str, convert_mode: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (images [N,H,W,3] uint8, labels [N]) of one MedMNIST split."""
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    key = f"{split}_images"
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key} has dtype {images.dtype}, expected uint8 pixels")
    if images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 4)):
        what = "greyscale" if images.ndim == 3 or images.shape[3] == 1 else "RGBA"
        if not convert_mode:
            raise DataError(f"{path}: {key} has shape {images.shape} ({what}), expected [N, H, W, 3] RGB; set "
                            "data.convert_mode=true to convert (greyscale copied to R, G, B; alpha dropped)")
        images = images[..., :3] if what == "RGBA" else np.repeat(images.reshape(*images.shape[:3], 1), 3, axis=3)
    if images.ndim != 4 or images.shape[3] != 3 or min(images.shape[1:3]) < 1:
        raise DataError(f"{path}: {key} has shape {images.shape}, expected [N, H, W, 3]")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {split}_labels has shape {labels.shape}, expected [N] or [N, 1] class indices")
    if len(labels) != len(images):
        raise DataError(f"{path}: {key} has {len(images)} images but {split}_labels has {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {split}_labels has dtype {labels.dtype}, expected integer class indices")
    bad = (labels < 0) | (labels >= len(CLASS_CODES))
    if bad.any():
        i = first_index(bad)
        raise DataError(f"{path}: {split}_labels[{i}] = {labels[i]} is not a class index 0..{len(CLASS_CODES) - 1}")
    return images, labels.astype(np.int64)


def open_npz(path: str | Path, convert_mode: bool = False) -> DataSource:
    """A MedMNIST-format npz (DermaMNIST at any resolution, DermaMNIST-C / -E) -> :class:`DataSource`, split as in
    the file. Keys ``{train,val,test}_{images,labels}``; a split may be absent, but never half of one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable npz file ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an npz archive with train_images, train_labels, ...")
    with data:
        keys = set(data.files)
        present = [s for s in NPZ_SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
        for split in present:
            for part in ("images", "labels"):
                if f"{split}_{part}" not in keys:
                    raise DataError(f"{path}: has {split}_{'labels' if part == 'images' else 'images'} but no "
                                    f"{split}_{part} (keys: {', '.join(sorted(keys))})")
        if not present:
            raise DataError(f"{path}: none of the MedMNIST keys train_images/train_labels, val_*, test_* "
                            f"(keys: {', '.join(sorted(keys)) or 'none'})")
        try:
            parts = {s: _npz_split(path, data, s, convert_mode) for s in present}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{path}: damaged npz member ({err})") from None
    sizes = {parts[s][0].shape[1:3] for s in present}
    if len(sizes) > 1:
        raise DataError(f"{path}: splits have different image sizes {sorted(sizes)}")
    frames = []
    for split in present:
        labels = parts[split][1]
        ids = [f"npz:{split}:{i}" for i in range(len(labels))]
        frames.append(pd.DataFrame({"image_id": ids, "lesion_id": ids, "label": labels,
                                    "dx": [CLASS_CODES[k] for k in labels], "age": np.nan, "sex": "unknown",
                                    "site": "unknown", "split": split}))
    table = pd.concat(frames, ignore_index=True)
    st = path.stat()
    notes = ["npz files carry no lesion ids: each image is its own group (DermaMNIST's npz splits share lesions; "
             "audit the HAM10000 map with `lesionlab data audit --split dermamnist`)",
             "npz files carry no clinical metadata: age, sex and site are unknown"]
    return DataSource(name=f"npz {path} ({'x'.join(map(str, next(iter(sizes))))} px)", kind="npz", table=table,
                      images=ArrayImages(tuple(parts[s][0] for s in present),
                                         key=f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}"),
                      has_metadata=False, origin=path, notes=notes, split_name="npz")


# ------------------------------------------------------------------------------------------------------------- ISIC
def open_isic(ground_truth_csv: str | Path, image_dirs: list[Path], convert_mode: bool = False) -> DataSource:
    """ISIC challenge ground truth (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` one-hot) + image folder -> an external
    test set (every row ``split = test``)."""
    csv = Path(ground_truth_csv)
    raw = read_csv_columns(csv, ("image", *ISIC_COLUMNS), "ISIC ground-truth CSV")
    extra = [c for c in raw.columns if c != "image" and c not in ISIC_COLUMNS]
    if extra:
        raise DataError(f"{csv}: unknown diagnosis column(s) {extra}; expected image,{','.join(ISIC_COLUMNS)}")
    if raw.empty:
        raise DataError(f"{csv}: no data rows")
    onehot = raw[list(ISIC_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = onehot.isna().any(axis=1) | ~onehot.isin([0, 1]).all(axis=1) | (onehot.sum(axis=1) != 1)
    if bad.any():
        i = first_index(bad)
        raise DataError(f"{csv}: line {i + 2} (image {raw['image'].iloc[i]}): expected exactly one 1 among "
                        f"{', '.join(ISIC_COLUMNS)} and 0 elsewhere")
    dup = raw["image"].duplicated()
    if dup.any():
        i = first_index(dup)
        raise DataError(f"{csv}: line {i + 2}: image {raw['image'].iloc[i]} appears twice")
    codes = [ISIC_COLUMNS[c] for c in onehot.idxmax(axis=1)]
    ids = raw["image"].map(lambda s: Path(s).stem)
    meta = pd.DataFrame({"image_id": ids, "lesion_id": ids, "label": [index_of(c) for c in codes], "dx": codes,
                         "age": np.nan, "sex": "unknown", "site": "unknown", "split": "test"})
    if not image_dirs:
        raise DataError(f"ISIC source {csv}: no image folder given (data.image_dirs)")
    dirs = expand_image_dirs(list(image_dirs))
    name = f"ISIC {csv} + {', '.join(map(str, dirs))}"
    source = _file_source(meta, csv, dirs, convert_mode, "ground-truth", name=name, kind="isic", has_metadata=False,
                          split_name="isic (all test)")
    source.notes.append("ISIC ground truth carries no lesion ids: each image is its own group")
    return source


# -------------------------------------------------------------------------------------------------------- synthetic
def open_synthetic(n: int = 700, seed: int = 0, size: int = 64) -> DataSource:
    """The in-memory SYNTHETIC set (see :mod:`lesionlab.data.synthetic`), unsplit."""
    meta, pixels = generate_synthetic(n, seed, size)
    key = f"synthetic v{GENERATOR_VERSION} seed={seed} n={n} size={size}"
    return DataSource(name=f"SYNTHETIC lesion-like images (seed {seed}, n={n}, {size}x{size} px)", kind="synthetic",
                      table=synthetic_table(meta), images=ArrayImages((pixels,), key=key),
                      synthetic=True, has_metadata=True,
                      notes=["SYNTHETIC images: not dermoscopy, for tests and demos only"])


# ------------------------------------------------------------------------------------------------------------ split
def _published_file(source: DataSource, cfg: DataConfig) -> Path:
    if cfg.split_file is not None:
        return Path(cfg.split_file)
    if source.origin is None:
        raise DataError(f"split {cfg.split!r}: no split file given (data.split_file)")
    path = source.origin.parent / PUBLISHED_SPLITS[cfg.split]
    if not path.is_file():
        raise DataError(f"split {cfg.split!r} needs {PUBLISHED_SPLITS[cfg.split]} next to {source.origin} or "
                        "data.split_file; or use split=lesion for lesionlab's own split")
    return path


def with_split(source: DataSource, assignment: pd.DataFrame, name: str, where: str,
               allow_shared_lesions: bool = False) -> DataSource:
    """A copy of ``source`` with a split applied to its table and metadata; every present image needs a split."""
    table = apply_split(source.table, assignment, where, require_all=True)
    check_split_frame(table, f"{where} applied to {source.name}", allow_shared_lesions=allow_shared_lesions)
    metadata = apply_split(source.metadata, assignment, where, require_all=False)
    return replace(source, table=table, metadata=metadata, split_name=name)


def split_source(source: DataSource, cfg: DataConfig) -> DataSource:
    """Apply ``cfg.split`` to an unsplit source (published map, ``lesion``, or a split CSV path)."""
    split = cfg.split
    if split in PUBLISHED_SPLITS and source.kind != "ham10000":
        if source.kind in ("npz", "isic"):
            source.notes.append(f"split {split!r} applies to HAM10000 only; using the file's own split")
            return source
        source.notes.append(f"split {split!r} applies to HAM10000 only; using lesionlab's lesion-grouped split")
        split = "lesion"
    if split == "lesion":
        series = lesion_split(source.table, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, source.linked_pairs)
        assignment = source.table[["image_id", "lesion_id"]].assign(split=series.to_numpy())
        name = f"lesion (seed {cfg.split_seed}, val {cfg.val_fraction:g}, test {cfg.test_fraction:g})"
        return with_split(source, assignment, name, "lesion split")
    if split == "dermamnist":
        path = _published_file(source, cfg)
        out = with_split(source, read_dermamnist_split(path), "dermamnist (published)", str(path),
                         allow_shared_lesions=True)
        shared = shared_lesion_counts(out.metadata)
        message = ("the published DermaMNIST split shares lesions between splits ("
                   + ", ".join(f"{a}-{b}: {n}" for (a, b), n in shared.items())
                   + " lesions): test scores on it are inflated by leakage; use dermamnist_c or lesion to measure")
        log.warning("WARNING: %s", message)
        out.notes.append(f"WARNING: {message}")
        return out
    if split == "dermamnist_c":
        path = _published_file(source, cfg)
        return with_split(source, read_dermamnist_c_split(path), "dermamnist_c (published)", str(path))
    path = Path(split)
    if not path.suffix.lower() == ".csv":
        raise DataError(f"split {split!r} is not one of dermamnist_c, dermamnist, lesion, or a split .csv file")
    name = str(path) if cfg.split_fold is None else f"{path} (fold {cfg.split_fold})"
    return with_split(source, read_split_csv(path, cfg.split_fold), name, str(path))


def open_unsplit(cfg: DataConfig) -> DataSource:
    """Resolve ``cfg.source`` to a :class:`DataSource` without a split (``source: auto`` falls back loudly)."""
    kind = cfg.source
    if kind == "auto":
        if cfg.npz is not None:
            kind = "npz"
        elif cfg.metadata_csv is not None or shared_ham10000() is not None:
            kind = "ham10000"
        else:
            kind = "synthetic"
            log.warning("SYNTHETIC data: no HAM10000 found at %s (set data.metadata_csv or LESIONLAB_SHARED); "
                        "using lesion-like synthetic images, not dermoscopy", shared_data_dir())
    if kind == "ham10000":
        csv, dirs = cfg.metadata_csv, list(cfg.image_dirs)
        if csv is None:
            shared = shared_ham10000()
            if shared is None:
                raise DataError(f"source ham10000: set data.metadata_csv (no shared copy at {shared_data_dir()})")
            csv, dirs = shared[0], dirs or [shared[1]]
        source = open_ham10000(csv, dirs, cfg.convert_mode)
    elif kind == "npz":
        if cfg.npz is None:
            raise DataError("source npz: set data.npz to the MedMNIST .npz file")
        source = open_npz(cfg.npz, cfg.convert_mode)
    elif kind == "isic":
        if cfg.metadata_csv is None:
            raise DataError("source isic: set data.metadata_csv to the ground-truth CSV and data.image_dirs")
        source = open_isic(cfg.metadata_csv, list(cfg.image_dirs), cfg.convert_mode)
    else:
        source = open_synthetic(cfg.synthetic_n, cfg.synthetic_seed, cfg.synthetic_size)
    source.cache_dir = cfg.cache_dir
    return source


def open_source(cfg: DataConfig | None = None) -> DataSource:
    """The configured data, split: the entry point of training, evaluation and the data commands."""
    cfg = cfg or DataConfig()
    source = split_source(open_unsplit(cfg), cfg)
    (log.warning if source.synthetic else log.info)("%s", source.describe())
    for note in source.notes:
        log.info("%s: %s", source.kind, note)
    return source
