"""dx_type 'synthetic' marks generated images: all such rows, some, or none."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lesionlab.data import open_ham10000


@pytest.mark.parametrize(("synthetic_rows", "flag", "in_name"), [
    ("all", True, "SYNTHETIC HAM10000-format"),
    ("some", True, "3 of 120 images SYNTHETIC"),
    ("none", False, None),
])
def test_dx_type_synthetic_marks_the_source(ham_copy: Path, rewrite_csv, synthetic_rows: str, flag: bool,
                                            in_name: str | None) -> None:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        if synthetic_rows == "some":
            frame["dx_type"] = ["synthetic" if i < 3 else "histo" for i in range(len(frame))]
        elif synthetic_rows == "none":
            frame["dx_type"] = "histo"
        return frame

    rewrite_csv(ham_copy, edit)
    source = open_ham10000(ham_copy)
    assert source.synthetic is flag
    if in_name:
        assert in_name in source.name
        assert "SYNTHETIC" in source.describe()
    else:
        assert "SYNTHETIC" not in source.name
    if synthetic_rows == "some":
        assert any("dx_type 'synthetic'" in note for note in source.notes)
