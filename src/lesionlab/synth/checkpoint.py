"""The resumable training state: ``last.ckpt`` written atomically, read with ``weights_only`` (nothing read executes
code), and whether a run directory is fresh, resumable or complete for a given config."""

from __future__ import annotations

import copy
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lesionlab.core.io import atomic_write
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.run import CHECKPOINT_FILE, INFO_FILE, read_info

CHECKPOINT_FORMAT = 1


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg_dict)
    for key in ("output_dir", "name", "evaluate"):
        out.pop(key, None)
    for key in ("device", "threads", "checkpoint_kimg", "log_every"):
        out.get("train", {}).pop(key, None)
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; tensors and plain data only (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise SynthError(f"{path}: checkpoint is truncated or corrupt ({err}); delete it to start the run over"
                         ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SynthError(f"{path}: not a lesionlab synthesis checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def run_state(run_dir: Path, cfg: SynthConfig) -> str:
    """``fresh``, ``resume`` or ``complete``; a checkpoint or finished run with another config is an error."""
    ckpt = run_dir / CHECKPOINT_FILE
    info_path = run_dir / INFO_FILE
    if info_path.is_file():
        info = read_info(run_dir)
        diff = _diff(_comparable(info.get("config", {})), _comparable(cfg.model_dump(mode="json")))
        complete = info.get("status") == "complete"
        if diff and (complete or ckpt.is_file()):
            raise SynthError(f"{info_path}: this run directory holds a run with another config "
                             f"({'; '.join(diff[:5])}); train into another run directory or delete this one")
        if complete:
            return "complete"
    return "resume" if ckpt.is_file() else "fresh"



__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "run_state", "save_checkpoint"]
