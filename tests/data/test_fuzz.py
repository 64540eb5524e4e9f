"""Property-based fuzzing (hypothesis) of every reader of untrusted files: whatever the bytes, a reader returns
valid data or raises the project's own error (a ``LesionlabError`` naming the file), never anything else; the audit
finds exactly the lesions that sit in two splits."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.core.errors import LesionlabError
from lesionlab.data.audit import audit_split
from lesionlab.data.images import ArrayImages, decode_image
from lesionlab.data.metadata import SEXES, SITES, parse_ham_metadata
from lesionlab.data.sources import DataSource, open_npz
from lesionlab.data.splits import read_split_csv
from lesionlab.serve.decode import decode_upload
from lesionlab.serve.errors import ServeError
from lesionlab.serve.settings import ServeSettings

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
GOOD_ROWS = ["HAM_1,ISIC_1,nv,histo,45.0,male,back", "HAM_2,ISIC_2,mel,histo,,female,face",
             "HAM_2,ISIC_3,mel,consensus,70,unknown,unknown"]
CELLS = st.one_of(st.sampled_from(["", "nv", "MEL", "xyz", "-5", "200", "nan", "45.5", "male", "back", "\"a,b\"",
                                   "ISIC_1", "lower extremity", "\n", "\"", "é", "1e309"]),
                  st.text(max_size=12))


def _tmp(data: bytes | str, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)  # noqa: SIM115  (the test reads it after)
    with handle:
        handle.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return Path(handle.name)


@st.composite
def mutated_csv(draw: st.DrawFn, header: str, rows: list[str]) -> str:
    """A valid CSV with some cells replaced, some rows dropped or duplicated, maybe a column renamed."""
    columns = header.split(",")
    if draw(st.booleans()):
        columns[draw(st.integers(0, len(columns) - 1))] = draw(st.sampled_from(["", "dx2", "Age", "image"]))
    table = [r.split(",") for r in draw(st.lists(st.sampled_from(rows), min_size=0, max_size=6))]
    for row in table:
        for _ in range(draw(st.integers(0, 2))):
            row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
    return "\n".join([",".join(columns), *(",".join(r) for r in table)]) + draw(st.sampled_from(["", "\n", "\n\n"]))


@FUZZ
@given(text=st.one_of(mutated_csv(HEADER, GOOD_ROWS), st.text(max_size=300)))
def test_metadata_csv_reader(text: str) -> None:
    path = _tmp(text, ".csv")
    try:
        table = parse_ham_metadata(path)
    except LesionlabError as err:
        assert str(path) in str(err)
        return
    finally:
        path.unlink()
    assert table["label"].between(0, len(CLASS_CODES) - 1).all() and table["image_id"].is_unique
    assert table["age"].isna().all() or table["age"].dropna().between(0, 120).all()
    assert table["sex"].isin(SEXES).all() and table["site"].isin(SITES).all()


SPLIT_HEADER = "image_id,lesion_id,split,fold"
SPLIT_ROWS = ["a,L1,train,0", "b,L1,train,0", "c,L2,val,1", "d,L3,test,", "e,L4,train,1", "f,L5,val,1e309",
              "g,L6,train,0.5"]


@FUZZ
@given(text=st.one_of(mutated_csv(SPLIT_HEADER, SPLIT_ROWS), st.text(max_size=200)), fold=st.sampled_from([None, 0, 1]))
def test_split_file_reader(text: str, fold: int | None) -> None:
    path = _tmp(text, ".csv")
    try:
        frame = read_split_csv(path, fold)
    except LesionlabError as err:
        assert str(path) in str(err)
        return
    finally:
        path.unlink()
    assert set(frame["split"]) <= {"train", "val", "test"}
    spread = frame.groupby("lesion_id")["split"].nunique()
    assert (spread <= 1).all()  # a lesion never in two splits


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


ARRAYS = st.sampled_from([
    np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 4), np.uint8),
    np.zeros((2, 8, 8, 3), np.float32), np.zeros((3, 8, 8, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8),
    np.array([0, 6]), np.array([[1], [7]]), np.array([-1, 2]), np.array([0.5, 1.0]), np.array(["a", "b"]),
    np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64)])


@FUZZ
@given(keys=st.lists(st.sampled_from(["train_images", "train_labels", "val_images", "val_labels", "other"]),
                     min_size=0, max_size=5, unique=True),
       arrays=st.lists(ARRAYS, min_size=5, max_size=5), cut=st.one_of(st.none(), st.integers(0, 400)),
       convert=st.booleans())
def test_npz_reader(keys: list[str], arrays: list[np.ndarray], cut: int | None, convert: bool) -> None:
    data = _npz_bytes(dict(zip(keys, arrays, strict=False)))
    if cut is not None:
        data = data[:cut] + data[cut + 7:]  # a hole in the archive
    path = _tmp(data, ".npz")
    try:
        source = open_npz(path, convert_mode=convert)
    except LesionlabError as err:
        assert str(path) in str(err)
        return
    finally:
        path.unlink()
    assert source.table["label"].between(0, 6).all() and len(source) == len(source.table)
    if len(source):
        assert np.asarray(source.load_image(0)).shape[2] == 3


def _image_bytes(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = st.builds(_image_bytes, st.sampled_from(["JPEG", "PNG", "BMP", "TIFF", "WEBP"]),
                   st.sampled_from(["RGB", "L"]), st.tuples(st.integers(1, 40), st.integers(1, 40)))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(IMAGES))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=st.one_of(damaged(), st.binary(max_size=200)))
def test_image_file_reader(data: bytes) -> None:
    path = _tmp(data, ".png")
    try:
        img = decode_image(path, convert_mode=True)
    except LesionlabError as err:
        assert str(path) in str(err)
        return
    finally:
        path.unlink()
    assert img.mode == "RGB" and min(img.size) >= 1


@FUZZ
@given(data=st.one_of(damaged(), st.binary(max_size=200)), need=st.sampled_from([None, 8, 64]))
def test_upload_decoder(data: bytes, need: int | None) -> None:
    settings_ = ServeSettings(max_bytes=100_000, max_pixels=2000, min_side=1)
    try:
        decoded = decode_upload(data, settings_, "up.bin", None, need=need)
    except ServeError as err:
        assert 400 <= err.status < 500 and "up.bin" in err.message and " at 0x" not in err.message
        return
    assert decoded.image.mode == "RGB" and decoded.image.width * decoded.image.height <= 2000


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["L1", "L2", "L3", "L4"]), st.sampled_from(["train", "val", "test"])),
                     min_size=1, max_size=12))
def test_audit_finds_exactly_the_shared_lesions(rows: list[tuple[str, str]]) -> None:
    n = len(rows)
    table = pd.DataFrame({"image_id": [f"I{i}" for i in range(n)], "lesion_id": [r[0] for r in rows],
                          "label": 0, "dx": "akiec", "age": np.nan, "sex": "unknown", "site": "unknown",
                          "split": [r[1] for r in rows]})
    pixels = np.random.default_rng(n).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    source = DataSource(name="fuzz", kind="synthetic", table=table, images=ArrayImages((pixels,), key=f"fuzz{n}"),
                        synthetic=True)
    result = audit_split(source, hash_images=True, progress=False)
    shared = table.groupby("lesion_id")["split"].nunique()
    assert result.lesion_disjoint == bool((shared <= 1).all())
    assert (result.status == "PASS") == (result.lesion_disjoint and not any(p.across for p in result.exact))


@pytest.mark.parametrize("text", ["", "\x00\x01", HEADER, "a\n" * 3])
def test_degenerate_csvs_are_named(text: str, tmp_path: Path) -> None:
    path = tmp_path / "meta.csv"
    path.write_text(text)
    with pytest.raises(LesionlabError, match=r"meta\.csv"):
        parse_ham_metadata(path)
