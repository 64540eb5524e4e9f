"""Inference backends: the same model behind one small interface, run by PyTorch (eager) or ONNX Runtime.

Both take the already preprocessed batch (the run's own ``Preprocessing`` and metadata encoder, applied once by
the service) and return raw logits; temperature scaling and the referral rule are applied by the service, so the
two backends cannot drift apart in anything but arithmetic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from lesionlab.core.errors import LesionlabError, MissingFileError

T = TypeVar("T")


class OnnxError(LesionlabError, ValueError):
    """An ONNX file that does not fit the run it is meant to serve; the message names the file."""


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops in this block with ``n`` intra-op threads, for the calling thread only (OpenMP's setting is
    per thread), restoring the previous count after.

    Preprocessing touches tensors of ~50k values: ATen splits those across threads, and when the other core is
    busy (another request's forward) the split waits for it: 20-50 ms instead of 0.1 ms, measured here. So
    preprocessing runs with one thread and only the model with ``threads``.
    """
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class Backend(Protocol):
    """Anything that turns a preprocessed batch into logits ``[N, 7]``."""

    name: str

    def logits(self, images: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Logits for ``images`` ``[N, C, H, W]`` float32 and ``meta`` ``[N, D]`` float32 (or None)."""
        ...


class TorchBackend:
    """PyTorch eager inference on the run's model (eval mode, no autograd), on one dedicated thread.

    Every forward (and every Grad-CAM, through :meth:`call`) runs on the same worker thread: one OpenMP team of
    ``threads`` instead of one per request thread, whose idle members would spin against each other on a few
    cores, and one model call at a time (Grad-CAM registers hooks on this model).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, threads: int = 2) -> None:
        self.model = model.eval()
        self.threads = threads
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lesionlab-model",
                                          initializer=torch.set_num_threads, initargs=(threads,))

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the model thread and return its result (exceptions propagate)."""
        return self._worker.submit(fn, *args).result()

    def _forward(self, x: torch.Tensor, m: torch.Tensor | None) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(x, m) if m is not None else self.model(x)
        return out.float().numpy()

    def logits(self, images: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Run the model; ``meta`` is passed only when the model fuses metadata."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(meta, dtype=np.float32)) if meta is not None else None
        return self.call(self._forward, x, m)


def ort_session(path: str | Path, threads: int = 2):
    """An ONNX Runtime CPU session with all graph optimisations and a fixed number of intra-op threads."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX model not found: {path} (write it with `lesionlab export RUN --onnx`)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """ONNX Runtime inference on a file written by :func:`lesionlab.serve.onnx_export.export_onnx`."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if "image" not in self.input_names:
            raise OnnxError(f"{path}: ONNX model has inputs {self.input_names}, expected 'image' (and 'meta')")
        self.uses_meta = "meta" in self.input_names
        self.lock = threading.Lock()  # one run at a time: parallel runs would only oversubscribe the cores

    def logits(self, images: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Run the session; ``meta`` is required exactly when the exported model has a ``meta`` input."""
        feeds = {"image": np.ascontiguousarray(images, dtype=np.float32)}
        if self.uses_meta:
            if meta is None:
                raise OnnxError(f"{self.path}: this ONNX model needs a 'meta' input")
            feeds["meta"] = np.ascontiguousarray(meta, dtype=np.float32)
        with self.lock:
            return self.session.run(None, feeds)[0]
