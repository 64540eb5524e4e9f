"""lesionlab: classify pigmented skin lesions from dermoscopy images, and put the classifiers in front of doctors."""

from lesionlab import _compat  # noqa: F401  (must run before torchvision/timm are imported anywhere)
from lesionlab.classes import CLASS_CODES, CLASSES, NUM_CLASSES

__version__ = "0.1.0"

__all__ = ["CLASSES", "CLASS_CODES", "NUM_CLASSES", "__version__", "load_run"]


def load_run(path):  # noqa: ANN001, ANN201  (lazy: keeps `import lesionlab` light)
    """Rebuild a ready model from a run directory; see :func:`lesionlab.runs.load_run`."""
    from lesionlab.runs import load_run as _load_run

    return _load_run(path)
