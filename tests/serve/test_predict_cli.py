"""``lesionlab predict``: images or a CSV in, one CSV row per image out; bad rows carry their error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.serve.samples import synthetic_lesion


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(3):
        path = tmp_path / f"lesion{i}.jpg"
        synthetic_lesion((150, 100), seed=i).save(path, quality=90)
        paths.append(path)
    return paths


def test_predict_images_with_metadata_writes_one_row_each(meta_run: Path, images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    assert main(["predict", str(meta_run), *map(str, images), "--age", "60", "--sex", "male", "--site", "back",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 3 and set(table["error"]) == {""}
    probs = table[[f"p_{c}" for c in CLASS_CODES]].to_numpy()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-4
    assert set(table["threshold_source"]) == {"validation"} and set(table["sex"]) == {"male"}
    assert set(table["top1"]) <= set(CLASS_CODES)


def test_predict_csv_keeps_good_rows_and_names_bad_ones(meta_run: Path, images: list[Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    pd.DataFrame({"image": [images[0].name, "missing.jpg", "notes.jpg", images[1].name],
                  "age": ["40", "50", "60", "200"], "sex": ["female", "male", "male", "female"],
                  "site": ["face", "back", "back", "hand"]}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(meta_run), "--csv", str(tmp_path / "in.csv"), "--out", str(out)]) == 1
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 4
    assert table.loc[0, "error"] == "" and table.loc[0, "p_mel"] != ""
    assert "row 2" in table.loc[1, "error"] and "not found" in table.loc[1, "error"]
    assert "row 3" in table.loc[2, "error"] and "notes.jpg" in table.loc[2, "error"]
    assert "row 4" in table.loc[3, "error"] and "age" in table.loc[3, "error"]
    assert "row 3" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["x.jpg", "--csv", "in.csv"], "not both"),
    ([], "nothing to predict"),
    (["--csv", "absent.csv"], "not found"),
])
def test_predict_argument_errors(image_run: Path, tmp_path: Path, argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("image\nx.jpg\n")
    assert main(["predict", str(image_run), *argv]) == 1
    assert message in capsys.readouterr().err


def test_predict_csv_with_unknown_column_is_refused(image_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.csv").write_text("image,diagnosis\nx.jpg,mel\n")
    assert main(["predict", str(image_run), "--csv", str(tmp_path / "in.csv")]) == 1
    err = capsys.readouterr().err
    assert "in.csv" in err and "diagnosis" in err
