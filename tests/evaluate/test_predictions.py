"""Predictions tables: round trip, validation against the run's classes, pairing, and `lesionlab compare`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.evaluate import predictions as P
from lesionlab.evaluate.stats import compare_predictions


def test_round_trip(tmp_path: Path, synth: Callable[..., pd.DataFrame]) -> None:
    frame = synth(n=40)
    P.write_predictions(frame, tmp_path / "p.csv")
    back = P.read_predictions(tmp_path / "p.csv")
    assert list(back.columns) == ["image_id", "label", "dx", "pred", *P.proba_columns()]
    np.testing.assert_allclose(back[P.proba_columns()].to_numpy(), frame[P.proba_columns()].to_numpy(), atol=1e-7)
    assert (back["dx"] == [CLASS_CODES[i] for i in back["label"]]).all()
    assert P.proba_columns() == ["p_akiec", "p_bcc", "p_bkl", "p_df", "p_mel", "p_nv", "p_vasc"]


def _mutate(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.copy()
    if kind == "missing_class":
        return f.drop(columns=["p_df"])
    if kind == "extra_class":
        f["p_scc"] = 0.0
        return f
    if kind == "swapped":
        cols = list(f.columns)
        i, j = cols.index("p_mel"), cols.index("p_nv")
        cols[i], cols[j] = cols[j], cols[i]
        return f[cols]
    if kind == "duplicate":
        f.loc[3, "image_id"] = f.loc[2, "image_id"]
        return f
    if kind == "bad_label":
        f.loc[5, "label"] = 9
        return f
    if kind == "dx_mismatch":
        f.loc[1, "dx"] = "mel" if f.loc[1, "dx"] != "mel" else "nv"
        return f
    if kind == "not_probabilities":
        f.loc[4, "p_nv"] += 0.5
        return f
    if kind == "no_image_id":
        return f.drop(columns=["image_id"])
    raise KeyError(kind)


@pytest.mark.parametrize(("kind", "match"), [
    ("missing_class", r"do not match the run's classes .*missing \['p_df'\]"),
    ("extra_class", r"extra \['p_scc'\]"),
    ("swapped", r"order \['p_akiec', 'p_bcc', 'p_bkl', 'p_df', 'p_nv', 'p_mel', 'p_vasc'\]"),
    ("duplicate", "duplicate image_id 'ISIC_0000002'"),
    ("bad_label", r"row 5 \(line 7\): label '9' is not a class index 0\.\.6"),
    ("dx_mismatch", r"row 1 \(line 3\): dx .* disagrees with label"),
    ("not_probabilities", r"row 4 \(line 6\): probabilities sum to 1\.5000"),
    ("no_image_id", r"missing column\(s\) \['image_id'\]"),
])
def test_read_predictions_rejects_bad_tables(tmp_path: Path, kind: str, match: str,
                                              synth: Callable[..., pd.DataFrame]) -> None:
    path = tmp_path / "bad.csv"
    _mutate(kind, synth(n=20)).to_csv(path, index=False)
    with pytest.raises(P.PredictionsError, match=match) as err:
        P.read_predictions(path)
    assert str(path) in str(err.value)  # the message names the file


def test_read_predictions_with_another_class_set(tmp_path: Path, synth: Callable[..., pd.DataFrame]) -> None:
    path = tmp_path / "p.csv"
    P.write_predictions(synth(n=20), path)
    with pytest.raises(P.PredictionsError, match=r"missing \['p_scc'\]; extra \['p_akiec'\]"):
        P.read_predictions(path, classes=["scc", "bcc", "bkl", "df", "mel", "nv", "vasc"])
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        P.read_predictions(tmp_path / "missing.csv")


def test_align_predictions(synth: Callable[..., pd.DataFrame]) -> None:
    a = synth(n=30, seed=1)
    b = synth(n=30, seed=1, skill=1.0).sample(frac=1.0, random_state=0)
    a2, b2 = P.align_predictions(a, b)
    assert (a2["image_id"] == b2["image_id"]).all()
    with pytest.raises(P.PredictionsError, match=r"1 only in A \(e.g. \['ISIC_0000029'\]\), 0 only in B"):
        P.align_predictions(a, b[b["image_id"] != "ISIC_0000029"])
    c = b.copy()
    c.loc[c.index[0], "label"] = (c.loc[c.index[0], "label"] + 1) % 7
    with pytest.raises(P.PredictionsError, match="disagree on the true label"):
        P.align_predictions(a, c)


def test_compare_predictions_tests(synth: Callable[..., pd.DataFrame]) -> None:
    a = synth(n=200, seed=2, skill=3.0)
    b = a.copy()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 7)) + 0.5 * np.eye(7)[a["label"]]
    b[P.proba_columns()] = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    results = compare_predictions(a, b, names=("good", "weak"), n_boot=100)
    assert [r.test for r in results] == ["McNemar", "paired bootstrap", "paired bootstrap"]
    assert results[0].p_value < 1e-4 and results[0].effect_size > 1
    assert results[2].statistic > 0 and results[2].ci[0] > 0
    with pytest.raises(ValueError, match="unknown metric"):
        compare_predictions(a, b, metrics=["speed"])


def test_cli_compare(make_eval_dir: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_eval_dir("a", seed=3, skill=3.0)
    b = make_eval_dir("b", seed=3, skill=1.0)
    out = tmp_path / "tests.json"
    assert main(["compare", str(a), str(b), "--bootstrap", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "McNemar" in text and "paired bootstrap" in text and "paired images = 300" in text
    assert "rank-biserial" not in text and "odds ratio" in text
    saved = json.loads(out.read_text())
    assert [t["test"] for t in saved["tests"]] == ["McNemar", "paired bootstrap", "paired bootstrap"]


def test_cli_compare_needs_same_images(make_eval_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    a = make_eval_dir("a", n=50)
    b = make_eval_dir("b", n=60)
    assert main(["compare", str(a), str(b), "--bootstrap", "20"]) == 1
    err = capsys.readouterr().err
    assert "lesionlab compare: error:" in err and "not on the same images" in err and "10 only in B" in err
