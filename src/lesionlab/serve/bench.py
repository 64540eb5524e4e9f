"""Latency benchmarks of the serving path: model time (PyTorch eager vs ONNX Runtime) and the service's overhead.

Batch 1, one image at a time, as a clinician's request arrives; warm-up runs are discarded; medians and p95 are
reported in milliseconds. Thread counts are fixed (``threads``) so numbers are comparable between runs.

The load test (:func:`load_test`, ``lesionlab serve-bench load``) sends a fixed number of requests at a fixed
concurrency within a wall-clock bound and reports every failure rather than retrying, so "zero errors" means what
it says.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from lesionlab.serve.backend import ort_session
from lesionlab.serve.decode import decode_image
from lesionlab.serve.onnx_export import export_module, quantize_int8
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion  # noqa: F401  (re-exported: their former home)
from lesionlab.serve.service import Predictor


def time_calls(fn: Callable[[], object], runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Median / p95 / min wall time of ``fn()`` in ms, after ``warmup`` discarded calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t))
    arr = np.asarray(times)
    return {"p50": float(np.median(arr)), "p95": float(np.percentile(arr, 95)), "min": float(arr.min()),
            "runs": float(runs)}


def model_latency(model: torch.nn.Module, size: tuple[int, int], meta_dim: int = 0, runs: int = 50,
                  warmup: int = 5, threads: int = 2, workdir: str | Path | None = None,
                  int8_feeds: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Batch-1 latency of ``model`` in PyTorch eager and in ONNX Runtime (exported here), plus their agreement.

    With ``int8_feeds`` (calibration inputs) an int8 ONNX Runtime variant is measured too, with its logit difference
    from PyTorch on the benchmark input.
    """
    torch.set_num_threads(threads)
    model = model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *size, generator=g)
    meta = torch.zeros(1, meta_dim) if meta_dim else None
    with torch.inference_mode():
        eager = time_calls(lambda: model(x, meta) if meta is not None else model(x), runs, warmup)
        ref = (model(x, meta) if meta is not None else model(x)).float().numpy()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = export_module(model, Path(tmp) / "model.onnx", size, meta_dim)
        session = ort_session(path, threads)
        feeds = {"image": x.numpy()}
        if meta is not None:
            feeds["meta"] = meta.numpy()
        ort = time_calls(lambda: session.run(None, feeds), runs, warmup)
        got = session.run(None, feeds)[0]
        result = {"size": list(size), "threads": threads, "eager_ms": eager, "onnxruntime_ms": ort,
                  "speedup_p50": eager["p50"] / ort["p50"], "max_abs_logit_diff": float(np.abs(ref - got).max()),
                  "torch": torch.__version__, "onnxruntime": _ort_version()}
        if int8_feeds:
            q_path = quantize_int8(path, Path(tmp) / "model.int8.onnx", int8_feeds)
            q_session = ort_session(q_path, threads)
            result["onnxruntime_int8_ms"] = time_calls(lambda: q_session.run(None, feeds), runs, warmup)
            result["int8_max_abs_logit_diff"] = float(np.abs(ref - q_session.run(None, feeds)[0]).max())
    # the engine's fast CPU path: channels-last memory format, then bf16 autocast on top (after the export, which
    # needs the plain float32 module)
    model = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for key, bf16 in (("eager_channels_last_ms", False), ("eager_channels_last_bf16_ms", True)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            result[key] = time_calls(lambda: model(x_cl, meta) if meta is not None else model(x_cl), runs, warmup)
            out = (model(x_cl, meta) if meta is not None else model(x_cl)).float().numpy()
        result[key.replace("_ms", "_max_abs_logit_diff")] = float(np.abs(ref - out).max())
    model.to(memory_format=torch.contiguous_format)
    return result


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def service_overhead(predictor: Predictor, image_bytes: bytes, content_type: str = "image/jpeg", runs: int = 100,
                     warmup: int = 5) -> dict[str, dict[str, float]]:
    """The service's own time per image, without the model: decode, preprocess (+ metadata), JSON encoding.

    Measured in-process on the same code the endpoint runs; ``total`` is their sum per call.
    """
    patient = predictor.check_patient("55", "female", "back")
    image = decode_image(image_bytes, predictor.settings, "bench", content_type)
    x, meta = predictor.prepare(image, patient)
    probs = predictor.probabilities(x.unsqueeze(0), meta.unsqueeze(0) if meta is not None else None)[0]
    body = {"model": predictor.model_info(), "image": {"name": "bench", "width": image.width, "height": image.height},
            **predictor.describe(probs), "metadata": {**patient.as_dict(), "used_by_model": predictor.uses_meta},
            "cautions": predictor.cautions(patient), "heatmap": None, "temperature": predictor.temperature,
            "timing_ms": {"decode": 1.0, "preprocess": 1.0, "model": 1.0, "total": 3.0, "overhead": 2.0}}
    stages = {
        "decode": lambda: decode_image(image_bytes, predictor.settings, "bench", content_type),
        "preprocess": lambda: predictor.prepare(image, predictor.check_patient("55", "female", "back")),
        "json": lambda: json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
    }
    out = {name: time_calls(fn, runs, warmup) for name, fn in stages.items()}

    def everything() -> None:
        im = decode_image(image_bytes, predictor.settings, "bench", content_type)
        predictor.prepare(im, predictor.check_patient("55", "female", "back"))
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    out["total"] = time_calls(everything, runs, warmup)
    return out


@dataclass
class LoadResult:
    """Outcome of :func:`load_test`; latencies in milliseconds, measured by the client."""

    requests: int
    concurrency: int
    ok: int
    errors: int
    seconds: float
    throughput: float  # successful requests per second
    p50: float
    p95: float
    p99: float
    server_model_p50: float | None = None
    server_overhead_p50: float | None = None
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_test(url: str, image: bytes, requests: int = 200, concurrency: int = 4, filename: str = "image.jpg",
              content_type: str = "image/jpeg", fields: dict[str, str] | None = None, timeout: float = 30.0,
              max_seconds: float = 300.0) -> LoadResult:
    """POST ``image`` to ``url`` (``/v1/predict``) ``requests`` times from ``concurrency`` client threads.

    A request that fails, answers non-200 or would start after ``max_seconds`` counts as an error.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests ({requests}) and concurrency ({concurrency}) must be at least 1")
    lock = threading.Lock()
    latencies: list[float] = []
    model_ms: list[float] = []
    overhead_ms: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    start = time.perf_counter()

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if time.perf_counter() - start > max_seconds:
                    with lock:
                        errors.append(f"request {i}: not sent, past the {max_seconds:g} s bound")
                    continue
                t = time.perf_counter()
                try:
                    resp = client.post(url, files={"image": (filename, image, content_type)}, data=fields or {})
                    elapsed = 1000.0 * (time.perf_counter() - t)
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    timing = resp.json().get("timing_ms", {})
                except (httpx.HTTPError, RuntimeError, ValueError) as err:
                    with lock:
                        errors.append(f"request {i}: {err}")
                    continue
                with lock:
                    latencies.append(elapsed)
                    if "model" in timing:
                        model_ms.append(float(timing["model"]))
                    if "overhead" in timing:
                        overhead_ms.append(float(timing["overhead"]))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    seconds = time.perf_counter() - start
    return LoadResult(
        requests=requests, concurrency=concurrency, ok=len(latencies), errors=len(errors), seconds=seconds,
        throughput=len(latencies) / seconds if seconds > 0 else float("nan"),
        p50=_percentile(latencies, 50), p95=_percentile(latencies, 95), p99=_percentile(latencies, 99),
        server_model_p50=statistics.median(model_ms) if model_ms else None,
        server_overhead_p50=statistics.median(overhead_ms) if overhead_ms else None,
        error_samples=errors[:5])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and benchmarks on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_subprocess(run: str, threads: int = 2, extra: Sequence[str] = (), startup_s: float = 120.0
                     ) -> Iterator[tuple[str, int]]:
    """``lesionlab serve RUN`` in a subprocess on a free loopback port (so client and server do not share a GIL);
    yields its base URL and process id once ``/healthz`` answers, and stops it on exit."""
    import subprocess
    import sys

    from lesionlab.core.errors import LesionlabError

    port = free_port()
    cmd = [sys.executable, "-m", "lesionlab.cli", "serve", str(run), "--port", str(port), "--threads", str(threads),
           "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise LesionlabError(f"the server exited with status {proc.returncode} during start-up")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise LesionlabError(f"the server did not answer /healthz within {startup_s:g} s")
            time.sleep(0.25)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread on a free port; yields its base URL and stops it on exit.

    For browser tests and the documentation's screenshots, which drive the service from the same process.
    """
    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} stopped during start-up (port in use?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start within {startup_timeout:g} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
