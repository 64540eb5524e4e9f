"""Resumable training state: ``last.ckpt`` in the run directory, rewritten atomically at the end of every epoch.

It holds everything needed to continue as if never stopped: model, optimizer, scheduler and scaler states, the
number of finished epochs, early-stopping state, the history so far and the RNG states. A kill mid-write leaves the
previous checkpoint intact (temporary file + rename), so a resume always starts from the last *complete* epoch.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.core.io import atomic_write_bytes
from lesionlab.runs import RunError

CHECKPOINT_FILE = "last.ckpt"
CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The current Python, NumPy and torch RNG states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (``torch.save`` into a temporary file, then rename)."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    return atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with an error naming the file when it is damaged.

    ``weights_only=False`` is needed for the optimizer and RNG states; only load checkpoints you wrote yourself.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise RunError(f"{path}: checkpoint is truncated or corrupt ({err}); delete it to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a lesionlab training checkpoint (format {CHECKPOINT_FORMAT})")
    return state
