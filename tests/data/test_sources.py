"""Sources: each format becomes the same sample table; bad input gets errors naming the file and row or field."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES
from lesionlab.config import DataConfig
from lesionlab.data import DataError, DataSource, open_ham10000, open_isic, open_npz, open_source, open_synthetic
from lesionlab.data.sources import TABLE_COLUMNS

# ----------------------------------------------------------------------------------------------------- HAM10000


def test_ham10000_layout_gives_the_contract_table(synthetic_ham: Path) -> None:
    source = open_ham10000(synthetic_ham)
    assert list(source.table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert len(source) == 120 and source.table.index.equals(pd.RangeIndex(120))
    assert source.synthetic and "SYNTHETIC" in source.name and "SYNTHETIC" in source.describe()
    assert set(source.table["dx"]) == set(CLASS_CODES)
    row = source.table.iloc[5]
    assert CLASS_CODES[row["label"]] == row["dx"]
    img = source.load_image(5)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert not source.missing_images and not source.orphan_images


def test_missing_images_and_orphans_are_counted_not_dropped(ham_copy: Path) -> None:
    images = ham_copy.parent / "images"
    (images / "SYN_00003.jpg").unlink()
    (images / "SYN_00007.jpg").unlink()
    shutil.copy(images / "SYN_00010.jpg", images / "EXTRA_1.jpg")
    (images / "notes.txt").write_text("not an image")
    source = open_ham10000(ham_copy)
    assert source.missing_images == ["SYN_00003", "SYN_00007"]
    assert source.orphan_images == ["EXTRA_1"]
    assert len(source) == 118 and len(source.metadata) == 120
    assert int((~source.metadata["has_image"]).sum()) == 2
    assert any("2 of 120 metadata rows have no image" in n for n in source.notes)
    assert any("1 image files have no metadata row" in n for n in source.notes)


def test_kaggle_layout_two_part_folders(ham_copy: Path) -> None:
    root = ham_copy.parent
    part1, part2 = root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"
    part1.mkdir(), part2.mkdir()
    for i, f in enumerate(sorted((root / "images").iterdir())):
        shutil.move(f, (part1 if i % 2 else part2) / f.name)
    (root / "images").rmdir()
    for dirs in ([root], [part1, part2], None):  # the parent folder, both parts, or found next to the CSV
        source = open_ham10000(ham_copy, dirs)
        assert len(source) == 120
        assert np.asarray(source.load_image(0)).shape == (32, 32, 3)


def test_same_image_in_two_folders(ham_copy: Path, tmp_path: Path) -> None:
    images = ham_copy.parent / "images"
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(images / "SYN_00001.jpg", copy / "SYN_00001.jpg")
    source = open_ham10000(ham_copy, [images, copy])
    assert any("identical second copies" in n for n in source.notes)
    Image.new("RGB", (9, 9)).save(copy / "SYN_00001.jpg")
    with pytest.raises(DataError, match="SYN_00001 is in two folders with different content"):
        open_ham10000(ham_copy, [images, copy])


def test_missing_image_folder(ham_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image folder not found: .*no_such_dir"):
        open_ham10000(ham_copy, [tmp_path / "no_such_dir"])
    shutil.rmtree(ham_copy.parent / "images")
    with pytest.raises(DataError, match=r"no image folder given .* none found next to .*HAM10000_metadata\.csv"):
        open_ham10000(ham_copy)


def test_no_image_matches(ham_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "other" / "X.jpg")
    with pytest.raises(DataError, match=r"none of the 120 images named in .* were found"):
        open_ham10000(ham_copy, [tmp_path / "other"])


BAD_METADATA = [
    ("missing column", lambda f: f.drop(columns=["age"]), r"missing column 'age'"),
    ("renamed column", lambda f: f.rename(columns={"dx": "diagnosis"}), r"missing column 'dx'"),
    ("renamed localization", lambda f: f.rename(columns={"localization": "localisation"}),
     r"missing column 'localization' \(is 'localisation' a renamed 'localization'\?\)"),
    ("unknown dx", lambda f: f.assign(dx=f["dx"].where(f.index != 4, "melanoma")),
     r"line 6 \(image SYN_00004\): unknown diagnosis code 'melanoma'"),
    ("bad age", lambda f: f.assign(age=f["age"].where(f.index != 2, "forty")), r"line 4 .*age 'forty' is not a number"),
    ("age out of range", lambda f: f.assign(age=f["age"].where(f.index != 0, "130")), r"line 2 .*age '130'"),
    ("bad sex", lambda f: f.assign(sex=f["sex"].where(f.index != 9, "M")), r"line 11 .*sex 'M' is not one of"),
    ("bad site", lambda f: f.assign(localization=f["localization"].where(f.index != 1, "elbow")),
     r"line 3 .*localization 'elbow'"),
    ("empty lesion id", lambda f: f.assign(lesion_id=f["lesion_id"].where(f.index != 3, "")),
     r"line 5 .*empty lesion_id"),
    ("duplicate image id", lambda f: f.assign(image_id=f["image_id"].where(f.index != 7, "SYN_00002")),
     r"line 9 \(image SYN_00002\): image_id also on line 4"),
]


@pytest.mark.parametrize(("case", "edit", "message"), BAD_METADATA, ids=[c for c, _, _ in BAD_METADATA])
def test_bad_metadata_errors_name_file_row_and_field(ham_copy: Path, rewrite_csv, case: str, edit,
                                                     message: str) -> None:
    rewrite_csv(ham_copy, edit)
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv.*" + message):
        open_ham10000(ham_copy)


def test_corrupt_image_is_reported_when_read(ham_copy: Path) -> None:
    (ham_copy.parent / "images" / "SYN_00000.jpg").write_bytes(b"\xff\xd8\xff broken")
    source = open_ham10000(ham_copy)
    with pytest.raises(DataError, match=r"SYN_00000\.jpg: cannot decode image"):
        source.load_image(0)


def test_missing_age_sex_site_become_nan_and_unknown(ham_copy: Path, rewrite_csv) -> None:
    rewrite_csv(ham_copy, lambda f: f.assign(age=f["age"].where(f.index != 0, ""),
                                             sex=f["sex"].where(f.index != 0, ""),
                                             localization=f["localization"].where(f.index != 0, "")))
    row = open_ham10000(ham_copy).table.iloc[0]
    assert np.isnan(row["age"]) and row["sex"] == "unknown" and row["site"] == "unknown"


# ---------------------------------------------------------------------------------------------------------- npz
def _npz(path: Path, sizes=(10, 4, 6), hw=(28, 28), **replace) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 7, (n, 1), dtype=np.uint8)
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("hw", [(28, 28), (64, 64), (224, 224), (30, 40)])
def test_npz_any_resolution(tmp_path: Path, hw: tuple[int, int]) -> None:
    source = open_npz(_npz(tmp_path / "dermamnist.npz", hw=hw))
    assert len(source) == 20 and source.table["split"].value_counts().to_dict() == {"train": 10, "test": 6, "val": 4}
    assert source.table["image_id"].iloc[10] == "npz:val:0"
    assert (source.table["lesion_id"] == source.table["image_id"]).all()
    assert not source.has_metadata and source.table["sex"].eq("unknown").all()
    assert source.load_image(11).size == (hw[1], hw[0])
    data = np.load(tmp_path / "dermamnist.npz")
    assert np.array_equal(np.asarray(source.load_image(11)), data["val_images"][1])
    assert source.table["label"].iloc[11] == int(data["val_labels"][1, 0])


def test_npz_with_test_split_only(tmp_path: Path) -> None:
    path = _npz(tmp_path / "dermamnistc_test.npz", train_images=None, train_labels=None, val_images=None,
                val_labels=None)
    assert set(open_npz(path).table["split"]) == {"test"}


BAD_NPZ = [
    ("missing labels", {"val_labels": None}, r"has val_images but no val_labels"),
    ("no medmnist keys", {k: None for k in ("train_images", "train_labels", "val_images", "val_labels",
                                            "test_images", "test_labels")} | {"x": np.zeros(3)},
     r"none of the MedMNIST keys"),
    ("length mismatch", {"train_labels": np.zeros((9, 1), np.uint8)},
     r"train_images has 10 images but train_labels has 9 labels"),
    ("float pixels", {"test_images": np.zeros((6, 28, 28, 3), np.float32)}, r"test_images has dtype float32"),
    ("label out of range", {"val_labels": np.array([[0], [7], [1], [2]], np.uint8)},
     r"val_labels\[1\] = 7 is not a class index"),
    ("greyscale", {"train_images": np.zeros((10, 28, 28), np.uint8)},
     r"train_images has shape \(10, 28, 28\) \(greyscale\)"),
]


@pytest.mark.parametrize(("case", "replace", "message"), BAD_NPZ, ids=[c for c, _, _ in BAD_NPZ])
def test_bad_npz_errors_name_file_and_key(tmp_path: Path, case: str, replace: dict, message: str) -> None:
    path = _npz(tmp_path / "bad.npz", **replace)
    with pytest.raises(DataError, match=r"bad\.npz: " + message):
        open_npz(path)


def test_npz_greyscale_converts_on_request(tmp_path: Path) -> None:
    path = _npz(tmp_path / "grey.npz", train_images=np.full((10, 28, 28), 9, np.uint8))
    assert np.asarray(open_npz(path, convert_mode=True).load_image(0))[0, 0].tolist() == [9, 9, 9]


def test_npz_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"broken\.npz: not a readable npz"):
        open_npz(tmp_path / "broken.npz")
    with pytest.raises(DataError, match="npz file not found"):
        open_npz(tmp_path / "absent.npz")


# --------------------------------------------------------------------------------------------------------- ISIC
def _isic(tmp_path: Path, rows: list[str], header: str = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC") -> tuple[Path, Path]:
    folder = tmp_path / "ISIC2018_Task3_Test_Input"
    folder.mkdir(exist_ok=True)
    for row in rows:
        Image.new("RGB", (12, 9), (120, 80, 60)).save(folder / f"{row.split(',')[0]}.jpg")
    csv = tmp_path / "gt.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv, folder


def test_isic_ground_truth_is_an_external_test_set(tmp_path: Path) -> None:
    csv, folder = _isic(tmp_path, ["ISIC_0034524,0.0,1.0,0.0,0.0,0.0,0.0,0.0",
                                   "ISIC_0034525,1.0,0.0,0.0,0.0,0.0,0.0,0.0",
                                   "ISIC_0034526,0,0,0,0,0,0,1"])
    source = open_isic(csv, [folder])
    assert source.table["dx"].tolist() == ["nv", "mel", "vasc"]
    assert source.table["label"].tolist() == [5, 4, 6]
    assert set(source.table["split"]) == {"test"} and not source.synthetic
    assert source.load_image(2).size == (12, 9)


@pytest.mark.parametrize(("rows", "header", "message"), [
    (["ISIC_1,1,1,0,0,0,0,0"], None, r"line 2 \(image ISIC_1\): expected exactly one 1"),
    (["ISIC_1,0,0,0,0,0,0,0"], None, r"line 2 \(image ISIC_1\): expected exactly one 1"),
    (["ISIC_1,x,1,0,0,0,0,0"], None, r"line 2 \(image ISIC_1\)"),
    (["ISIC_1,1,0,0,0,0,0"], "image,MEL,NV,BCC,AKIEC,BKL,DF", r"missing column 'VASC'"),
    (["ISIC_1,1,0,0,0,0,0,0,0"], "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC,SCC", r"unknown diagnosis column\(s\) \['SCC'\]"),
])
def test_bad_isic_csv(tmp_path: Path, rows: list[str], header: str | None, message: str) -> None:
    csv, folder = _isic(tmp_path, rows, header or "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC")
    with pytest.raises(DataError, match=r"gt\.csv: .*" + message):
        open_isic(csv, [folder])


# ---------------------------------------------------------------------------------------------- open_source / auto
def test_auto_without_shared_data_is_loudly_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path / "nothing-here"))
    source = open_source(DataConfig(synthetic_n=60))
    assert source.synthetic and source.kind == "synthetic" and len(source) == 60
    assert "SYNTHETIC" in source.describe()
    assert any("SYNTHETIC data" in r.message for r in caplog.records if r.levelname == "WARNING")
    # the default split (dermamnist_c) does not apply: lesionlab's lesion split is used, and said so
    assert set(source.table["split"]) == {"train", "val", "test"}
    assert any("applies to HAM10000 only" in n for n in source.notes)


def test_auto_prefers_a_given_metadata_csv(synthetic_ham: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path / "nothing-here"))
    source = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion"))
    assert source.kind == "ham10000" and len(source) == 120


def test_source_errors_say_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match=r"set data\.metadata_csv"):
        open_source(DataConfig(source="ham10000"))
    with pytest.raises(DataError, match=r"set data\.npz"):
        open_source(DataConfig(source="npz"))


def test_published_split_needs_its_file(synthetic_ham: Path) -> None:
    with pytest.raises(DataError, match=r"needs dermamnist_c_splits\.csv next to .* or data\.split_file"):
        open_source(DataConfig(metadata_csv=synthetic_ham))


def test_fingerprint_tracks_files_and_table(ham_copy: Path, rewrite_csv) -> None:
    import os

    first = open_ham10000(ham_copy).fingerprint()
    assert open_ham10000(ham_copy).fingerprint() == first
    target = ham_copy.parent / "images" / "SYN_00004.jpg"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = open_ham10000(ham_copy).fingerprint()
    assert touched != first
    rewrite_csv(ham_copy, lambda f: f.assign(age=f["age"].where(f.index != 0, "5")))
    assert open_ham10000(ham_copy).fingerprint() != touched


def test_fingerprint_ignores_the_split(synthetic_ham: Path) -> None:
    a = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion", split_seed=0))
    b = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion", split_seed=1))
    assert not a.table["split"].equals(b.table["split"])
    assert a.fingerprint() == b.fingerprint()


def test_in_memory_synthetic_matches_the_written_one(synthetic_ham: Path) -> None:
    memory = open_synthetic(n=120, seed=3, size=32)
    disk = open_ham10000(synthetic_ham)
    assert memory.table["image_id"].tolist() == disk.table["image_id"].tolist()
    assert memory.table["dx"].tolist() == disk.table["dx"].tolist()
    diff = np.abs(np.asarray(memory.load_image(7), float) - np.asarray(disk.load_image(7), float))
    assert diff.mean() < 4  # JPEG q95


@pytest.mark.realdata
def test_shared_ham10000_auto(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONLAB_SHARED", str(shared_data.parent))
    source = open_source(DataConfig())
    assert not source.synthetic and source.kind == "ham10000"
    assert len(source) == 5984 and len(source.metadata) == 10015 and len(source.missing_images) == 4031
    assert source.table["split"].value_counts().to_dict() == {"train": 4624, "test": 908, "val": 452}
    assert "real ham10000 data" in source.describe()


@pytest.mark.parametrize(("kind", "synthetic", "expected"), [
    ("ham10000", False, "CC BY-NC 4.0"),
    ("npz", False, "CC BY-NC 4.0"),
    ("isic", False, "ISIC Archive"),
    ("synthetic", True, "synthetic images"),
    ("ham10000", True, "synthetic images"),  # a HAM10000-format folder of SYNTHETIC images (dx_type synthetic)
    ("my-clinic", False, "unknown: check the data's licence"),
])
def test_licence_is_a_property_of_the_data_source(kind: str, synthetic: bool, expected: str) -> None:
    table = open_synthetic(n=14, seed=0, size=16).table
    source = DataSource(name="any name, even 'synth' or 'isic'", kind=kind, table=table,
                        images=open_synthetic(n=14, seed=0, size=16).images, synthetic=synthetic)
    assert expected in source.licence
    assert "synthetic images" in open_synthetic(n=14, seed=0, size=16).licence
