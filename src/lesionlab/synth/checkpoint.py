"""The resumable training state: ``last.ckpt`` written atomically, and whether a run directory is fresh, resumable
or complete for a given config.

The checkpoint follows the training checkpoint's rule (:mod:`lesionlab.train.checkpoint`): a safetensors file whose
tensor section holds every tensor (networks, EMA generator, optimiser moments, the RNG state) and whose header holds
everything else as plain JSON. Reading it parses JSON and copies buffers; no pickle is ever opened, and a pickled
checkpoint (as lesionlab wrote before) is refused with a message that says why.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lesionlab.core.io import atomic_write
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.run import CHECKPOINT_FILE, INFO_FILE, read_info

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
    from safetensors.torch import save_file

    from lesionlab.train.checkpoint import flatten

    tensors: dict[str, Any] = {}
    tree = flatten({"format": CHECKPOINT_FORMAT, **state}, tensors)
    header = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={TREE_KEY: header}))


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save's zip, or a bare pickle


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; a damaged, foreign or pickled file raises
    :class:`SynthError` naming it (nothing in the file is ever executed)."""
    from safetensors import SafetensorError, safe_open

    from lesionlab.train.checkpoint import unflatten

    path = Path(path)
    if not path.is_file():
        raise SynthError(f"{path}: no checkpoint to resume from")
    if _looks_like_pickle(path):
        raise SynthError(f"{path}: a pickled checkpoint (written by an older lesionlab, or by something else); "
                         "lesionlab never unpickles a file, since unpickling can run code. Delete it to start the run "
                         "over")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = (fh.metadata() or {}).get(TREE_KEY)
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118  (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SynthError(f"{path}: checkpoint is truncated or corrupt ({err}); delete it to start the run over"
                         ) from None
    if header is None:
        raise SynthError(f"{path}: a safetensors file, but not a lesionlab synthesis checkpoint (no '{TREE_KEY}' "
                         "header)")
    try:
        state = unflatten(json.loads(header), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SynthError(f"{path}: checkpoint header is damaged ({type(err).__name__}: {err}); delete it to start "
                         "the run over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SynthError(f"{path}: not a lesionlab synthesis checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise SynthError(f"{path}: checkpoint lacks {', '.join(missing)}; delete it to start the run over")
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
