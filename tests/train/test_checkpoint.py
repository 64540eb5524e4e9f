"""The training checkpoint holds tensors and JSON only: it round-trips exactly, and nothing in a file is executed."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lesionlab.runs import RunError
from lesionlab.train.checkpoint import (
    TREE_KEY,
    flatten,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten,
)


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    return {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": None, "early_stopping": {"best": float("-inf"), "bad": 2, "nan": float("nan")},
            "history": [{"epoch": 0, "loss": 1.5}], "rng": rng_state(), "precision": {"bf16": False}}


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


def test_round_trip_is_exact_including_rng_states(tmp_path: Path) -> None:
    state = _state()
    path = save_checkpoint(tmp_path / "last.ckpt", state)
    loaded = load_checkpoint(path)
    assert loaded.pop("format") == 2
    assert _equal(state, loaded)
    set_rng_state(loaded["rng"])
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_memory_layout_survives(tmp_path: Path) -> None:
    t = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c", {**_state(), "moment": t}))["moment"]
    assert torch.equal(loaded, t) and loaded.stride() == t.stride()


def test_unknown_objects_are_refused_when_saving() -> None:
    with pytest.raises(TypeError, match="cannot store a function"):
        flatten({"f": lambda: 1}, {})
    tensors: dict = {}
    assert unflatten(flatten({1: (2, [3.5])}, tensors), tensors) == {1: (2, [3.5])}


class _Payload:
    """Unpickling this object runs ``os.system``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    for name, write in (("bare.ckpt", lambda p: p.write_bytes(pickle.dumps({"format": 1, "x": _Payload(marker)}))),
                        ("torch.ckpt", lambda p: torch.save({"format": 1, "x": _Payload(marker)}, p))):
        path = tmp_path / name
        write(path)
        with pytest.raises(RunError, match="never unpickles"):
            load_checkpoint(path)
    assert not marker.exists()
    # the same payload hidden behind a safetensors header is only ever read as text
    path = tmp_path / "header.ckpt"
    save_file({"t0": torch.zeros(1)}, str(path), metadata={TREE_KEY: json.dumps(
        {"format": 2, "x": pickle.dumps(_Payload(marker)).hex()})})
    with pytest.raises(RunError, match="lacks epoch"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_whose_header_length_starts_with_a_pickle_byte_loads(tmp_path: Path) -> None:
    # a safetensors file opens with its header's length; at 128 modulo 256 its first byte is a pickle's 0x80
    path = tmp_path / "last.ckpt"
    for pad in range(256):
        save_checkpoint(path, {**_state(), "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length of 128 modulo 256")
    assert load_checkpoint(path)["pad"] == "x" * pad


DANGLING = '{"format": 2, "m": {"__tensor__": "zz"}}'  # a reference to a tensor the file lacks


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated or corrupt"),
    (lambda p: save_file({"a": torch.zeros(1)}, str(p)), "not a lesionlab training checkpoint"),
    (lambda p: save_file({"a": torch.zeros(1)}, str(p), metadata={TREE_KEY: "{not json"}), "header is damaged"),
    (lambda p: save_file({"a": torch.zeros(1)}, str(p), metadata={TREE_KEY: DANGLING}), "header is damaged"),
])
def test_damaged_checkpoints_name_the_file(tmp_path: Path, damage, message: str) -> None:
    path = save_checkpoint(tmp_path / "last.ckpt", _state())
    damage(path)
    with pytest.raises(RunError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_keys_are_named(tmp_path: Path) -> None:
    state = _state()
    del state["optimizer"], state["rng"]
    path = save_checkpoint(tmp_path / "last.ckpt", state)
    with pytest.raises(RunError, match=r"last\.ckpt: checkpoint lacks optimizer, rng"):
        load_checkpoint(path)
