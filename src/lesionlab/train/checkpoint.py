"""Resumable training state: ``last.ckpt`` in the run directory, rewritten atomically at the end of every epoch.

It holds everything needed to continue as if never stopped: model, optimizer, scheduler and scaler states, the
number of finished epochs, early-stopping state, the history so far and the RNG states. A kill mid-write leaves the
previous checkpoint intact (temporary file + rename), so a resume always starts from the last *complete* epoch.

Nothing in it can execute code when it is read. The file is a safetensors file: every tensor (weights, optimizer
moments, the torch and NumPy RNG states as arrays) lies in its tensor section, and everything else (counters,
history, early stopping, the Python RNG state, the config) is plain JSON in its header, where each tensor is
referenced by name. Reading it parses JSON and copies buffers; no pickle is ever opened (a ``torch.load`` pickle,
as earlier versions wrote, is refused with a message that says why).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.core.io import atomic_write
from lesionlab.runs import RunError

CHECKPOINT_FILE = "last.ckpt"
CHECKPOINT_FORMAT = 2  # 1: a torch.save pickle (never loaded: unpickling can run code)
TREE_KEY = "lesionlab_checkpoint"
REQUIRED_KEYS = ("epoch", "model", "optimizer", "early_stopping", "history", "rng", "precision")


# ------------------------------------------------------------------------------------- tensors + JSON, both ways


def flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, with every tensor and array moved into ``tensors`` and referenced by its key there.

    Tuples, non-string dict keys and non-finite floats are tagged so :func:`unflatten` restores them exactly;
    anything else (a function, an arbitrary object) is a programming error and raises ``TypeError``.
    """
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        t = value.detach().to("cpu")
        if t.is_contiguous() or t.ndim < 2:
            tensors[key] = t.contiguous().clone()
            return {"__tensor__": key}
        # keep the memory layout (channels-last optimizer moments): elementwise kernels round differently per layout
        order = list(t.dim_order())
        tensors[key] = t.permute(order).contiguous().clone()
        return {"__tensor__": key, "order": order}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        wide = value.astype(np.int64) if value.dtype == np.uint32 else value  # safetensors has no uint32 in torch
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide)).clone()
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return flatten(value.item(), tensors)
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: flatten(v, tensors) for k, v in value.items()}
        return {"__map__": [[flatten(k, tensors), flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [flatten(v, tensors) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training checkpoint (tensors and JSON values only)")


def unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`; a reference to a tensor that is not in the file raises ``KeyError``."""
    if isinstance(value, list):
        return [unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        t = tensors[value["__tensor__"]]
        return t.permute(np.argsort(value["order"]).tolist()) if "order" in value else t
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"]))
    if "__map__" in value:
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in value["__map__"]}
    if "__tuple__" in value:
        return tuple(unflatten(v, tensors) for v in value["__tuple__"])
    if "__float__" in value:
        return float(value["__float__"])
    return {k: unflatten(v, tensors) for k, v in value.items()}


# ----------------------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """The current Python, NumPy and torch RNG states (arrays and tuples of ints: no objects)."""
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


# ------------------------------------------------------------------------------------------------ save and load


def write_tree(path: str | Path, state: dict[str, Any], tree_key: str, fmt: int) -> Path:
    """Write ``state`` atomically: its tensors in a safetensors file, the rest as JSON under ``tree_key`` in the
    header (with ``format`` = ``fmt``). The one writer of lesionlab's checkpoints (training and synthesis)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = flatten({"format": fmt, **state}, tensors)
    header = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={tree_key: header}))


def _looks_like_pickle(path: Path) -> bool:
    """torch.save's zip or a bare pickle (protocol 2-5), and not a safetensors file: a safetensors file starts with
    its header's length (8 bytes, little-endian), whose first byte is 0x80 whenever that length is 128 modulo 256,
    followed by the header's opening brace."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def read_tree(path: str | Path, tree_key: str, fmt: int, required: tuple[str, ...], error: type[Exception],
              kind: str) -> dict[str, Any]:
    """Read a file written by :func:`write_tree`; a missing, damaged, foreign or pickled file raises ``error``
    naming it and saying what to do (nothing in the file is ever executed). ``kind`` names the checkpoint in
    messages ("training", "synthesis")."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no checkpoint to resume from")
    if _looks_like_pickle(path):
        raise error(f"{path}: a pickled checkpoint (written by lesionlab before 0.2, or by something else); "
                    "lesionlab never unpickles a file, since unpickling can run code. Delete it to start the run "
                    "over")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = (fh.metadata() or {}).get(tree_key)
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118  (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise error(f"{path}: checkpoint is truncated or corrupt ({err}); delete it to start the run over") from None
    if header is None:
        raise error(f"{path}: a safetensors file, but not a lesionlab {kind} checkpoint (no '{tree_key}' header)")
    try:
        state = unflatten(json.loads(header), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise error(f"{path}: checkpoint header is damaged ({type(err).__name__}: {err}); delete it to start the "
                    "run over") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise error(f"{path}: not a lesionlab {kind} checkpoint (format {fmt})")
    missing = [key for key in required if key not in state]
    if missing:
        raise error(f"{path}: checkpoint lacks {', '.join(missing)}; delete it to start the run over")
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically: tensors in a safetensors file, the rest as JSON in its header."""
    return write_tree(path, state, TREE_KEY, CHECKPOINT_FORMAT)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged, foreign or pickled file raises
    :class:`~lesionlab.runs.RunError` naming it (and nothing in the file is ever executed)."""
    return read_tree(path, TREE_KEY, CHECKPOINT_FORMAT, REQUIRED_KEYS, RunError, "training")
