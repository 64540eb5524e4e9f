"""The one class table of lesionlab.

Every label in the project goes through this module: the order is the DermaMNIST label order (alphabetical by
HAM10000 ``dx`` code), saved inside every checkpoint and never redefined elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from lesionlab.core.errors import LesionlabError


@dataclass(frozen=True)
class LesionClass:
    """One diagnostic class: its index, HAM10000 code, full name and whether it is malignant."""

    index: int
    code: str
    name: str
    malignant: bool


CLASSES: tuple[LesionClass, ...] = (
    LesionClass(0, "akiec", "Actinic keratoses and intraepithelial carcinoma (Bowen's disease)", True),
    LesionClass(1, "bcc", "Basal cell carcinoma", True),
    LesionClass(2, "bkl", "Benign keratosis-like lesions", False),
    LesionClass(3, "df", "Dermatofibroma", False),
    LesionClass(4, "mel", "Melanoma", True),
    LesionClass(5, "nv", "Melanocytic nevi", False),
    LesionClass(6, "vasc", "Vascular lesions", False),
)

CLASS_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES)
NUM_CLASSES: int = len(CLASSES)
MALIGNANT_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES if c.malignant)
MALIGNANT_INDICES: tuple[int, ...] = tuple(c.index for c in CLASSES if c.malignant)

# Column names used by the ISIC 2018 task 3 ground-truth CSV, mapped to our codes.
ISIC_COLUMNS: dict[str, str] = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl",
                                "DF": "df", "VASC": "vasc"}

_BY_CODE = {c.code: c for c in CLASSES}


class UnknownClassError(LesionlabError, ValueError):
    """A label that is not one of the seven lesion classes."""


def by_code(code: str) -> LesionClass:
    """Look up a class by its code (case-insensitive), with an error that lists the valid codes."""
    key = str(code).strip().lower()
    if key not in _BY_CODE:
        raise UnknownClassError(f"unknown diagnosis code {code!r}; expected one of {', '.join(CLASS_CODES)}")
    return _BY_CODE[key]


def index_of(code: str) -> int:
    """The label index (0-6) of a diagnosis code."""
    return by_code(code).index


def check_class_order(codes: list[str] | tuple[str, ...], where: str = "") -> None:
    """Raise when a saved class order differs from the project's, so no model is read with shuffled labels."""
    if tuple(codes) != CLASS_CODES:
        suffix = f" in {where}" if where else ""
        raise UnknownClassError(f"class order{suffix} is {list(codes)}, expected {list(CLASS_CODES)}")
