"""The resumable training state: ``last.ckpt`` written atomically, and whether a run directory is fresh, resumable
or complete for a given config.

The checkpoint follows the training checkpoint's rule (:mod:`lesionlab.train.checkpoint`): a safetensors file whose
tensor section holds every tensor (networks, EMA generator, optimiser moments, the RNG state) and whose header holds
everything else as plain JSON. Reading it parses JSON and copies buffers; no pickle is ever opened, and a pickled
checkpoint (as lesionlab wrote before) is refused with a message that says why.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.run import CHECKPOINT_FILE, INFO_FILE, read_info
from lesionlab.train.checkpoint import read_tree, write_tree

CHECKPOINT_FORMAT = 2  # 1: a torch.save pickle (never loaded: unpickling can run code)
TREE_KEY = "lesionlab_synth_checkpoint"
REQUIRED_KEYS = ("generator", "critic", "generator_ema", "opt_g", "opt_d", "rng", "images", "step")


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write the training state atomically: tensors in a safetensors file, the rest as JSON in its header."""
    return write_tree(path, state, TREE_KEY, CHECKPOINT_FORMAT)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; a damaged, foreign or pickled file raises
    :class:`SynthError` naming it (nothing in the file is ever executed)."""
    return read_tree(path, TREE_KEY, CHECKPOINT_FORMAT, REQUIRED_KEYS, SynthError, "synthesis")


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
