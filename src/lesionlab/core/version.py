"""The package version, in one place that imports nothing (``lesionlab.__version__`` re-exports it)."""

from __future__ import annotations

__version__ = "0.1.0"
