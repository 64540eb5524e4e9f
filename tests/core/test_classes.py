"""The one class table: order, lookups and the checkpoint order check."""

from __future__ import annotations

import pytest

from lesionlab.classes import (
    CLASS_CODES,
    CLASSES,
    ISIC_COLUMNS,
    MALIGNANT_CODES,
    UnknownClassError,
    by_code,
    check_class_order,
    index_of,
)


def test_order_is_the_dermamnist_label_order() -> None:
    assert CLASS_CODES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert [c.index for c in CLASSES] == list(range(7))
    assert set(MALIGNANT_CODES) == {"akiec", "bcc", "mel"}
    assert sorted(ISIC_COLUMNS.values()) == sorted(CLASS_CODES)


@pytest.mark.parametrize(("code", "index"), [("akiec", 0), ("MEL", 4), (" nv ", 5), ("vasc", 6)])
def test_lookups_round_trip(code: str, index: int) -> None:
    assert index_of(code) == index
    assert CLASS_CODES[index] == code.strip().lower()
    assert by_code(code).index == index


@pytest.mark.parametrize("bad", ["scc", "", "melanoma"])
def test_unknown_code_names_the_valid_ones(bad: str) -> None:
    with pytest.raises(UnknownClassError, match="expected one of akiec, bcc"):
        index_of(bad)


def test_check_class_order_rejects_a_shuffled_order() -> None:
    check_class_order(list(CLASS_CODES))
    shuffled = ["bcc", "akiec", *CLASS_CODES[2:]]
    with pytest.raises(UnknownClassError, match=r"run\.json"):
        check_class_order(shuffled, where="run.json")
