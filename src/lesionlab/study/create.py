"""Creating a study freezes it: cases drawn, images copied (metadata stripped, opaque names), model outputs computed
once, ground truth stored apart, an admin token issued.

The study folder (``studies/<name>/`` by default) holds ``study.json`` (the manifest: frozen definition, database
URL, run identity, data identity, counts), ``media/`` (case images and heatmaps as PNG under random keys),
``study.db`` (SQLite, unless a PostgreSQL URL was given) and ``admin-token.txt`` (mode 0600). Nothing in the folder
is served as a file: the server maps opaque keys to files after checking that the participant may see them.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lesionlab.classes import CLASS_CODES, CLASSES, MALIGNANT_INDICES
from lesionlab.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256, sha256_bytes
from lesionlab.core.version import __version__
from lesionlab.study.definition import FaultyConfig, StudyDefinition
from lesionlab.study.errors import StudyError
from lesionlab.study.storage import (
    Case,
    CaseTruth,
    ModelOutput,
    Study,
    make_engine,
    session_factory,
    sqlite_url,
    upgrade,
    utcnow,
)
from lesionlab.study.tokens import hash_token, new_key, new_token

log = logging.getLogger(__name__)

MANIFEST = "study.json"
MEDIA_DIR = "media"
DB_FILE = "study.db"
ADMIN_TOKEN_FILE = "admin-token.txt"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class CreatedStudy:
    """What ``lesionlab study create`` reports."""

    path: Path
    study_id: str
    database: str
    admin_token: str
    cases: dict[str, int]  # case set -> number of cases
    model_run: str | None
    synthetic: bool


# ----------------------------------------------------------------------------------------------- case selection


def select_cases(table: pd.DataFrame, definition: StudyDefinition) -> pd.DataFrame:
    """The study's cases: rows of ``table`` (with ``split``) plus ``case_set`` and ``pool_position``, seeded.

    ``per_class`` draws that many images of every class for each case set, without replacement, so case sets never
    share an image; ``image_ids`` takes the listed images and deals them to the case sets class by class. The pool
    is then shuffled, so neither positions nor ids say anything about the class.
    """
    cfg = definition.cases
    sets = definition.case_sets()
    rng = np.random.default_rng(cfg.seed)
    if cfg.image_ids:
        index = table.set_index("image_id", drop=False)
        missing = [i for i in cfg.image_ids if i not in index.index]
        if missing:
            raise StudyError(f"cases.image_ids: {len(missing)} image ids are not in the data source "
                             f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''})")
        chosen = index.loc[list(cfg.image_ids)].reset_index(drop=True)
        chosen["case_set"] = ""
        for _code, group in chosen.groupby("dx", sort=True):
            order = rng.permutation(group.index.to_numpy())
            for k, row in enumerate(order):
                chosen.loc[row, "case_set"] = sets[k % len(sets)]
    else:
        pool = table[table["split"].isin(cfg.splits)]
        counts = cfg.counts()
        parts = []
        for code in CLASS_CODES:
            need = counts[code] * len(sets)
            if need == 0:
                continue
            candidates = pool[pool["dx"] == code].sort_values("image_id")
            if len(candidates) < need:
                raise StudyError(f"cases.per_class: class {code} has {len(candidates)} images in splits "
                                 f"{cfg.splits} of the data source, but {need} are needed "
                                 f"({counts[code]} x {len(sets)} case set{'s' if len(sets) > 1 else ''})")
            picked = candidates.iloc[rng.permutation(len(candidates))[:need]].copy()
            picked["case_set"] = [sets[k // counts[code]] for k in range(need)]
            parts.append(picked)
        if not parts:
            raise StudyError("cases.per_class selects no case")
        chosen = pd.concat(parts, ignore_index=True)
    chosen = chosen.iloc[rng.permutation(len(chosen))].reset_index(drop=True)
    chosen["pool_position"] = np.arange(len(chosen))
    return chosen


# ------------------------------------------------------------------------------------------------- images


def strip_to_png(image: Image.Image) -> bytes:
    """The pixels only, as PNG: no EXIF, ICC profile, text chunks or file name survive."""
    clean = Image.fromarray(np.asarray(image.convert("RGB"), dtype=np.uint8), mode="RGB")
    buf = io.BytesIO()
    clean.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _source_hash(source: Any, row: int, image: Image.Image) -> str:
    """SHA-256 of the source file when there is one, else of the decoded pixels."""
    paths = getattr(getattr(source, "images", None), "paths", None)
    if paths is not None:
        return file_sha256(paths[row])
    return sha256_bytes(np.asarray(image.convert("RGB")).tobytes())


# -------------------------------------------------------------------------------------------------- model


def run_identity(run: Any) -> tuple[str, str]:
    """(run id, version): the run folder's name and the first 12 hex digits of its weights' SHA-256."""
    path = Path(run.path)
    weights = path / "model.safetensors"
    version = file_sha256(weights)[:12] if weights.is_file() else str(run.info.get("created", "unversioned"))
    return path.name, version


def faulty_output(probs: np.ndarray, truth: str, rng: np.random.Generator, cfg: FaultyConfig) -> np.ndarray:
    """A deliberately wrong output: the probabilities with the top class swapped for a wrong class.

    The wrong class is drawn (seeded) among the classes of the other malignancy group than the truth
    (``flip_malignancy``) or among all classes but the truth (``any_wrong``); its probability trades places with
    the model's top class, so the output keeps the model's confidence profile and names a wrong class on top.
    """
    truth_class = next(c for c in CLASSES if c.code == truth)
    if cfg.mode == "flip_malignancy":
        options = [c.index for c in CLASSES if c.malignant != truth_class.malignant]
    else:
        options = [c.index for c in CLASSES if c.code != truth]
    target = int(rng.choice(options))
    out = probs.copy()
    top = int(np.argmax(out))
    out[top], out[target] = out[target], out[top]
    return out


def compute_outputs(run: Any, images: list[Image.Image], cases: pd.DataFrame, definition: StudyDefinition,
                    progress: Callable[[str], None] | None = None) -> np.ndarray:
    """The run's class probabilities ``[N, 7]`` for the case images (with age/sex/site when the run fuses them)."""
    assert definition.model is not None
    meta = None
    if getattr(run, "meta_encoder", None) is not None:
        meta = [{"age": float(a) if pd.notna(a) else float("nan"), "sex": str(s), "site": str(t)}
                for a, s, t in zip(cases["age"], cases["sex"], cases["site"], strict=True)]
    probs = []
    size = definition.model.batch_size
    for start in range(0, len(images), size):
        batch_meta = meta[start:start + size] if meta is not None else None
        probs.append(run.predict_proba(images[start:start + size], batch_meta, batch_size=size,
                                       tta=definition.model.tta))
        if progress:
            progress(f"model outputs: {min(start + size, len(images))}/{len(images)}")
    return np.concatenate(probs).astype(np.float64)


class HeatmapMaker:
    """Grad-CAM overlays (``lesionlab.serve.explain``) of a class, as transparent PNGs in the image's geometry."""

    def __init__(self, run: Any) -> None:
        from lesionlab.serve.backend import TorchBackend
        from lesionlab.serve.explain import GradCamExplainer

        self.run = run
        self.explainer = GradCamExplainer(TorchBackend(run.model, threads=max(1, min(2, os.cpu_count() or 1))))

    def png(self, image: Image.Image, meta_row: dict[str, Any] | None, class_index: int) -> bytes:
        import torch

        from lesionlab.serve.explain import overlay_png, to_image_geometry

        x = self.run.preprocessing(image)
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        meta = None
        if meta_row is not None and getattr(self.run, "meta_encoder", None) is not None:
            meta = torch.as_tensor(np.asarray(self.run.meta_encoder.encode_one(
                meta_row["age"], meta_row["sex"], meta_row["site"]), dtype=np.float32))
        heat = self.explainer.cam(x, meta, class_index)
        resize = getattr(self.run.preprocessing, "resize", "square")
        return overlay_png(to_image_geometry(heat.cam, image.size, resize))


# -------------------------------------------------------------------------------------------------- create


def _clinical(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def create_study(definition: StudyDefinition, out: str | Path, database: str | None = None,
                 progress: Callable[[str], None] | None = None) -> CreatedStudy:
    """Freeze ``definition`` into the study folder ``out`` (which must not hold a study yet)."""
    from lesionlab.data import open_source

    say = progress or (lambda _msg: None)
    out = Path(out)
    if (out / MANIFEST).exists():
        raise StudyError(f"{out}: already holds a study ({MANIFEST}); choose another --out or remove it")
    if out.exists() and any(out.iterdir()):
        raise StudyError(f"{out}: folder is not empty; a new study needs an empty or new folder")

    # Everything that can fail on bad input happens before anything is written.
    source = open_source(definition.cases.data)
    cases = select_cases(source.table.reset_index(drop=True).assign(_row=np.arange(len(source.table))), definition)
    per_set = ", ".join(f"{s}: {int((cases.case_set == s).sum())}" for s in definition.case_sets())
    say(f"cases: {len(cases)} ({per_set})")
    run = None
    if definition.model is not None:
        from lesionlab.runs import load_run

        run_path = Path(definition.model.run)
        if not run_path.is_dir():
            raise StudyError(f"model.run: run directory not found: {run_path} (train one with `lesionlab train "
                             "runs/cpu-lite0-64 --config configs/cpu-lite0-64.yaml`)")
        run = load_run(run_path)
    images = [source.load_image(int(r)) for r in cases["_row"]]
    fresh = not out.exists()
    try:
        return _write_study(definition, out, database, source, cases, images, run, say)
    except BaseException:
        if fresh:  # nothing half-made is left behind (the database insert is one transaction)
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_study(definition: StudyDefinition, out: Path, database: str | None, source: Any, cases: pd.DataFrame,
                 images: list[Image.Image], run: Any, say: Callable[[str], None]) -> CreatedStudy:
    out.mkdir(parents=True, exist_ok=True)
    media = out / MEDIA_DIR
    media.mkdir(exist_ok=True)
    url = database or sqlite_url(out / DB_FILE)
    engine = make_engine(url)
    try:
        upgrade(engine)
        with session_factory(engine)() as db:
            if db.get(Study, definition.name) is not None:
                raise StudyError(f"{engine.url.render_as_string(hide_password=True)}: a study named "
                                 f"{definition.name!r} already exists in this database")
        admin_token = new_token()
        now = utcnow()
        frozen = definition.model_dump(mode="json")
        rows_case, rows_truth, rows_output = [], [], []
        for i, row in cases.iterrows():
            png = strip_to_png(images[i])
            key = new_key()
            atomic_write_bytes(media / f"{key}.png", png)
            case_id = new_key(9)
            cases.loc[i, "case"] = case_id
            shown = definition.show_clinical
            rows_case.append(Case(id=case_id, study_id=definition.name, case_set=str(row["case_set"]),
                                  pool_position=int(row["pool_position"]), image_key=key,
                                  image_sha256=sha256_bytes(png), image_width=images[i].width,
                                  image_height=images[i].height,
                                  age=_clinical(float(row["age"])) if shown and pd.notna(row["age"]) else None,
                                  sex=str(row["sex"]) if shown else None, site=str(row["site"]) if shown else None))
            rows_truth.append(CaseTruth(case_id=case_id, image_id=str(row["image_id"]), lesion_id=str(row["lesion_id"]),
                                        truth=str(row["dx"]), source_sha256=_source_hash(source, int(row["_row"]),
                                                                                         images[i])))
        say(f"images: {len(images)} copied to {media} (PNG, metadata stripped, opaque names)")
        model_run = None
        if run is not None and definition.model is not None:
            run_id, run_version = run_identity(run)
            model_run = f"{run_id}@{run_version}"
            probs = compute_outputs(run, images, cases, definition, say)
            heat = HeatmapMaker(run) if "heatmap" in definition.model.support else None
            meta_rows = [{"age": float(a) if pd.notna(a) else float("nan"), "sex": str(s), "site": str(t)}
                         for a, s, t in zip(cases["age"], cases["sex"], cases["site"], strict=True)]
            faulty_cases: set[int] = set()
            if definition.faulty is not None:
                faulty_set = definition.arm_sets()["faulty"]
                members = np.flatnonzero((cases["case_set"] == faulty_set).to_numpy())
                n_faulty = round(definition.faulty.fraction * len(members))
                frng = np.random.default_rng(definition.faulty.seed)
                faulty_cases = {int(k) for k in frng.choice(members, size=n_faulty, replace=False)}
                frng_class = np.random.default_rng(definition.faulty.seed + 1)
            for i in range(len(cases)):
                variants = [("model", probs[i])]
                if i in faulty_cases:
                    assert definition.faulty is not None
                    variants.append(("faulty", faulty_output(probs[i], str(cases.loc[i, "dx"]), frng_class,
                                                             definition.faulty)))
                for variant, p in variants:
                    top = int(np.argmax(p))
                    heat_key = None
                    if heat is not None:
                        heat_key = new_key()
                        atomic_write_bytes(media / f"{heat_key}.png", heat.png(images[i], meta_rows[i], top))
                    rows_output.append(ModelOutput(
                        case_id=str(cases.loc[i, "case"]), variant=variant, probabilities=[float(v) for v in p],
                        top=CLASS_CODES[top], malignant=float(p[list(MALIGNANT_INDICES)].sum()),
                        heatmap_key=heat_key, run_id=model_run, run_version=run_version))
            say(f"model outputs: {len(cases)} cases with {model_run}"
                + (f", {len(faulty_cases)} faulty" if faulty_cases else "") + (", heatmaps" if heat else ""))
        Session = session_factory(engine)
        with Session.begin() as db:
            if db.get(Study, definition.name) is not None:
                raise StudyError(f"{engine.url.render_as_string(hide_password=True)}: a study named "
                                 f"{definition.name!r} already exists in this database")
            db.add(Study(id=definition.name, title=definition.title or definition.name, design=definition.design,
                         definition=frozen, admin_token_hash=hash_token(admin_token), created_at=now))
            db.flush()
            db.add_all(rows_case)
            db.flush()
            db.add_all(rows_truth + rows_output)
    finally:
        engine.dispose()
    stored_url = "sqlite:///" + DB_FILE if database is None else database
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "study": definition.name,
        "created": now.isoformat(timespec="seconds"),
        "lesionlab_version": __version__,
        "database": stored_url,
        "definition": frozen,
        "data": {"source": source.name, "kind": source.kind, "synthetic": bool(source.synthetic),
                 "split": source.split_name, "fingerprint": source.fingerprint()},
        "model": None if run is None else {"run": str(Path(run.path).resolve()), "id": model_run,
                                           "support": list(definition.model.support) if definition.model else []},
        "cases": {s: int((cases.case_set == s).sum()) for s in definition.case_sets()},
    }
    atomic_write_json(out / MANIFEST, manifest)
    atomic_write_text(out / ADMIN_TOKEN_FILE, admin_token + "\n")
    os.chmod(out / ADMIN_TOKEN_FILE, 0o600)
    return CreatedStudy(path=out, study_id=definition.name, database=stored_url, admin_token=admin_token,
                        cases=manifest["cases"], model_run=model_run, synthetic=bool(source.synthetic))
