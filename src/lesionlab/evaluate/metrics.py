"""The metric functions live in the bottom layer, :mod:`lesionlab.core.metrics`; this module re-exports them under
the name that evaluation code, its tests and the evaluation report conventions have always used."""

from lesionlab.core.metrics import *  # noqa: F403
from lesionlab.core.metrics import __all__  # noqa: F401
