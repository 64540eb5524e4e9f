"""Simulated participants over loopback, and the study server as a separate process (load and crash tests, bench).

:func:`simulate_participants` runs one thread per participant that does what the page does: consent, ask for the
case, fetch its image, answer, and only then ask for the next. Bounded in participants, answers and seconds; every
non-2xx response is counted, 5xx apart. A connection error (a server being restarted) is retried like the page
retries, until the bound, so a crash test can check that nothing confirmed is lost.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lesionlab.classes import CLASS_CODES


@dataclass
class LoadReport:
    """Outcome of :func:`simulate_participants`; latencies in milliseconds, measured by the client."""

    participants: int
    answers_confirmed: int
    finished: int
    seconds: float
    errors_4xx: int
    errors_5xx: int
    connection_retries: int
    answer_p50: float
    answer_p95: float
    answer_p99: float
    answer_max: float
    next_p50: float
    next_p99: float
    throughput: float  # confirmed answers per second
    confirmed: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)  # (item, step) -> answer
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (without the confirmed answers)."""
        out = asdict(self)
        out.pop("confirmed")
        return out


def choice_for(item: str, step: int) -> str:
    """A deterministic answer per item and step, so a test can check what was stored."""
    return CLASS_CODES[int(hashlib.sha256(f"{item}:{step}".encode()).hexdigest(), 16) % len(CLASS_CODES)]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def simulate_participants(base_url: str, tokens: list[str], max_answers: int | None = None,
                          max_seconds: float = 120.0, timeout: float = 30.0, fetch_images: bool = True,
                          form: dict[str, Any] | None = None, think_s: float = 0.0, seed: int = 0) -> LoadReport:
    """Every token answers its cases concurrently (one thread each), at most ``max_answers`` each.

    ``think_s``: mean time a participant looks at a case before answering (uniform in 0.5-1.5 times it, seeded);
    0 answers as fast as the server allows, which measures saturation rather than a study's load.
    """
    lock = threading.Lock()
    answer_ms: list[float] = []
    next_ms: list[float] = []
    confirmed: dict[tuple[str, int], str] = {}
    errors: list[str] = []
    counts = {"4xx": 0, "5xx": 0, "retries": 0, "finished": 0}
    start = time.perf_counter()
    extra = dict(form or {})

    def request(client: httpx.Client, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float] | None:
        while time.perf_counter() - start < max_seconds:
            t = time.perf_counter()
            try:
                resp = client.request(method, path, **kw)
            except httpx.TransportError as err:
                with lock:
                    counts["retries"] += 1
                    if len(errors) < 20:
                        errors.append(f"{method} {path}: {type(err).__name__} (retried)")
                time.sleep(0.1)
                continue
            ms = 1000.0 * (time.perf_counter() - t)
            if resp.status_code >= 400:
                with lock:
                    counts["5xx" if resp.status_code >= 500 else "4xx"] += 1
                    if len(errors) < 20:
                        errors.append(f"{method} {path}: HTTP {resp.status_code} {resp.text[:160]}")
            return resp, ms
        return None

    def participant(index: int, token: str) -> None:
        rng = np.random.default_rng([seed, index])
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
            if request(client, "POST", "/api/consent") is None:
                return
            done = 0
            while max_answers is None or done < max_answers:
                got = request(client, "POST", "/api/next", json={})
                if got is None or got[0].status_code != 200:
                    return
                item, ms = got[0].json(), got[1]
                with lock:
                    next_ms.append(ms)
                if item["phase"] == "break":
                    got = request(client, "POST", "/api/next", json={"start_session": item["session"]})
                    if got is None or got[0].status_code != 200:
                        return
                    item = got[0].json()
                if item["phase"] != "case":
                    with lock:
                        counts["finished"] += 1
                    return
                if fetch_images and request(client, "GET", item["image"]) is None:
                    return
                if think_s > 0:
                    time.sleep(think_s * rng.uniform(0.5, 1.5))
                answer = choice_for(item["item"], item["step"])
                got = request(client, "POST", "/api/answer",
                              json={"item": item["item"], "step": item["step"], "answer": answer,
                                    "elapsed_ms": 1000.0, **extra})
                if got is None or got[0].status_code != 200:
                    return
                with lock:
                    answer_ms.append(got[1])
                    confirmed[(item["item"], item["step"])] = got[0].json()["stored"]["answer"]
                done += 1

    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        for f in [pool.submit(participant, i, t) for i, t in enumerate(tokens)]:
            f.result()
    seconds = time.perf_counter() - start
    return LoadReport(participants=len(tokens), answers_confirmed=len(confirmed), finished=counts["finished"],
                      seconds=seconds, errors_4xx=counts["4xx"], errors_5xx=counts["5xx"],
                      connection_retries=counts["retries"], answer_p50=_pct(answer_ms, 50),
                      answer_p95=_pct(answer_ms, 95), answer_p99=_pct(answer_ms, 99),
                      answer_max=max(answer_ms) if answer_ms else float("nan"), next_p50=_pct(next_ms, 50),
                      next_p99=_pct(next_ms, 99), throughput=len(confirmed) / seconds if seconds else float("nan"),
                      confirmed=confirmed, error_samples=errors[:10])


# ------------------------------------------------------------------------------------------- server process


def start_server(study: str | Path, port: int, host: str = "127.0.0.1", db: str | None = None,
                 startup_timeout: float = 60.0) -> subprocess.Popen:
    """``lesionlab study serve STUDY`` in its own process; returns once ``/healthz`` answers."""
    cmd = [sys.executable, "-m", "lesionlab.cli", "study", "serve", str(study), "--host", host, "--port", str(port)]
    if db:
        cmd += ["--db", db]
    log = tempfile.NamedTemporaryFile(prefix="lesionlab-study-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            if httpx.get(f"http://{host}:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            text = Path(log.name).read_text()[-2000:]
            stop_server(proc)
            raise RuntimeError(f"study server did not start: {text}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen, kill: bool = False) -> None:
    """Stop a server started by :func:`start_server` (SIGKILL with ``kill``: the crash test); removes its log."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    log = getattr(proc, "log_path", None)
    if log:
        Path(log).unlink(missing_ok=True)


@contextmanager
def running_server(study: str | Path, port: int | None = None, db: str | None = None) -> Iterator[str]:
    """A study server process for the duration of the block; yields its base URL."""
    from lesionlab.serve.bench import free_port

    port = port or free_port()
    proc = start_server(study, port, db=db)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
