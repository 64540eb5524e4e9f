"""A bounded load test of a running service on loopback (``lesionlab serve-bench load``).

Fixed number of requests, fixed concurrency, a wall-clock bound: the result reports every failure rather than
retrying, so "zero errors" means what it says.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np


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
