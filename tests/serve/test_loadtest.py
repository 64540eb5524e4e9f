"""A small bounded load test on loopback through uvicorn: every request answered, percentiles reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lesionlab.runs import load_run
from lesionlab.serve.app import create_app
from lesionlab.serve.bench import load_test
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion
from lesionlab.serve.settings import ServeSettings


def test_load_test_has_zero_errors_and_the_server_survives_bad_requests(meta_run: Path,
                                                                        serve_in_thread: Callable[..., Any]) -> None:
    app = create_app(load_run(meta_run), ServeSettings())
    image = jpeg_bytes(synthetic_lesion((600, 450)))
    with serve_in_thread(app) as base:
        result = load_test(f"{base}/v1/predict", image, requests=40, concurrency=4,
                           fields={"age": "50", "sex": "female", "site": "back"}, max_seconds=120)
        assert (result.ok, result.errors) == (40, 0), result.error_samples
        assert 0 < result.p50 <= result.p95 <= result.p99 and result.throughput > 0
        assert result.server_overhead_p50 is not None and result.server_model_p50 is not None
        bad = load_test(f"{base}/v1/predict", b"not an image", requests=8, concurrency=4)
        assert bad.errors == 8 and "HTTP 400" in bad.error_samples[0]
        assert httpx.get(f"{base}/healthz").status_code == 200
