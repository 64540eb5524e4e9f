"""lesionlab: classify pigmented skin lesions from dermoscopy images, and put the classifiers in front of doctors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lesionlab import _compat  # noqa: F401  (must run before torchvision/timm are imported anywhere)
from lesionlab.classes import CLASS_CODES, CLASSES, NUM_CLASSES
from lesionlab.core.version import __version__

if TYPE_CHECKING:
    from lesionlab.runs import Run


__all__ = ["CLASSES", "CLASS_CODES", "NUM_CLASSES", "__version__", "load_run"]


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Rebuild a ready model from a run directory (lazy import keeps ``import lesionlab`` light); see
    :func:`lesionlab.runs.load_run`."""
    from lesionlab.runs import load_run as _load_run

    return _load_run(path, device=device)
