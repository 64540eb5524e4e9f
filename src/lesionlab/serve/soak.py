"""A bounded soak of a running service (``lesionlab serve-bench soak``): loopback only, fixed concurrency, a fixed
duration, real images mixed with every kind of bad input the service must refuse, the server's resident memory
sampled throughout.

It passes when no request got a 5xx (or no answer), every input got the status its kind expects, and the server's
memory stayed flat: the growth over the second half of the soak (a least-squares slope, so one spike does not
count) is under ``max_growth_mb``. The first half is the warm-up in which allocators and caches settle.
"""

from __future__ import annotations

import io
import itertools
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion


@dataclass(frozen=True)
class Input:
    """One kind of request: what is sent, and the statuses that count as the right answer."""

    kind: str
    files: list[tuple[str, tuple[str, bytes, str]]]
    data: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    slow: bool = False  # send the head of the body, then stall: the server must time out with 408


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    (img.convert(mode) if mode else img).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _one(name: str, data: bytes, ctype: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (name, data, ctype))]


def soak_inputs(real: Sequence[tuple[str, bytes]], seed: int = 0) -> list[Input]:
    """The request mix: each real image, then one of each bad input (see the module docstring)."""
    rng = np.random.default_rng(seed)
    lesion = jpeg_bytes(synthetic_lesion((600, 450), seed=seed))
    good = [Input("real", _one(n, b, "image/jpeg"), {"age": "55", "sex": "female", "site": "back"})
            for n, b in real] or [Input("real", _one("lesion.jpg", lesion, "image/jpeg"))]
    bad = [
        Input("truncated", _one("t.jpg", lesion[: len(lesion) // 2], "image/jpeg"), expect=(400,)),
        Input("not_an_image", _one("notes.jpg", b"these are notes, not a picture" * 20, "image/jpeg"),
              expect=(400,)),
        Input("empty", _one("e.jpg", b"", "image/jpeg"), expect=(400, 422)),
        Input("wrong_type", _one("x.pdf", lesion, "application/pdf"), expect=(415,)),
        Input("huge_flat_png", _one("flat.png", _png(np.zeros((6300, 6300, 3), np.uint8)), "image/png"),
              expect=(413,)),
        Input("grey", _one("g.png", _png(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), "L"), "image/png")),
        Input("rgba", _one("a.png", _png(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), "RGBA"),
                          "image/png")),
        Input("16bit", _one("h.png", _png(rng.integers(0, 65535, (300, 400)).astype(np.uint16)), "image/png")),
        Input("noise", _one("n.png", _png(rng.integers(0, 255, (450, 600, 3), dtype=np.uint8)), "image/png")),
        Input("flat", _one("f.png", _png(np.full((450, 600, 3), (40, 160, 90), np.uint8)), "image/png")),
        Input("bad_age", _one("l.jpg", lesion, "image/jpeg"), {"age": "250"}, expect=(422,)),
        Input("unknown_field", _one("l.jpg", lesion, "image/jpeg"), {"colour": "red"}, expect=(422,)),
        Input("slow_body", _one("l.jpg", lesion, "image/jpeg"), expect=(408,), slow=True),
    ]
    return good * max(1, len(bad) // max(1, len(good))) + bad  # about as many good requests as bad ones


def _rss_mb(pid: int) -> float | None:
    """The resident set of ``pid`` in MB (Linux /proc), or None where that cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def _slow_request(base: str, timeout: float) -> tuple[int, float]:
    """Send headers and the first bytes of a multipart body, then nothing; the status the server answers."""
    host, port = base.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: soak\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 50000\r\n\r\n--b\r\n")
        reply = sock.recv(256).decode("latin-1")
    status = int(reply.split()[1]) if reply.startswith("HTTP/") else 0
    return status, 1000.0 * (time.perf_counter() - start)


@dataclass
class SoakRecorder:
    """Every request's kind, status and latency, and the RSS samples, shared by the worker threads."""

    rows: list[tuple[str, int, float]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, ms: float) -> None:
        with self.lock:
            self.rows.append((kind, status, ms))


def _worker(base: str, inputs: list[Input], start: int, stop: float, rec: SoakRecorder, timeout: float) -> None:
    with httpx.Client(base_url=base, timeout=timeout) as client:
        for i in itertools.count(start):
            if time.monotonic() >= stop:
                return
            item = inputs[i % len(inputs)]
            if item.slow:
                try:
                    status, ms = _slow_request(base, timeout)
                except OSError as err:
                    status, ms = 0, timeout * 1000.0
                    rec.errors.append(f"slow_body: {err}")
                rec.add(item.kind, status, ms)
                continue
            t = time.perf_counter()
            try:
                status = client.post("/v1/predict", files=item.files, data=item.data).status_code
            except httpx.HTTPError as err:
                status = 0
                rec.errors.append(f"{item.kind}: {type(err).__name__}: {err}")
            rec.add(item.kind, status, 1000.0 * (time.perf_counter() - t))


def _sampler(pid: int, stop: float, every: float, rec: SoakRecorder) -> None:
    t0 = time.monotonic()
    while time.monotonic() < stop:
        value = _rss_mb(pid)
        if value is not None:
            rec.rss.append((time.monotonic() - t0, value))
        time.sleep(min(every, max(0.0, stop - time.monotonic())))


def run_soak(base: str, server_pid: int, inputs: list[Input], seconds: float, concurrency: int = 4,
             sample_every: float = 5.0, timeout: float = 60.0) -> SoakRecorder:
    """Drive the server at ``base`` for ``seconds`` with ``concurrency`` clients cycling through ``inputs``."""
    rec = SoakRecorder()
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=_sampler, args=(server_pid, stop, sample_every, rec), daemon=True)]
    step = max(1, len(inputs) // concurrency)
    threads += [threading.Thread(target=_worker, args=(base, inputs, k * step, stop, rec, timeout), daemon=True)
                for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 2 * timeout)
    return rec


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(rec: SoakRecorder, inputs: list[Input], seconds: float, max_growth_mb: float = 50.0
              ) -> dict[str, Any]:
    """Latency percentiles, status counts per kind, wrong answers, 5xx, and the RSS trend with the verdict."""
    expect = {i.kind: i.expect for i in inputs}
    kinds: dict[str, dict[str, int]] = {}
    for kind, status, _ in rec.rows:
        counts = kinds.setdefault(kind, {})
        counts[str(status)] = counts.get(str(status), 0) + 1
    wrong = {k: c for k, c in kinds.items() if set(map(int, c)) - set(expect[k])}
    server_errors = sum(1 for _, s, _ in rec.rows if s >= 500 or s == 0)
    ok_ms = [ms for k, s, ms in rec.rows if s == 200]
    all_ms = [ms for k, s, ms in rec.rows if k != "slow_body"]
    rss = np.asarray(rec.rss) if rec.rss else np.zeros((0, 2))
    half = rss[rss[:, 0] >= rss[-1, 0] / 2] if len(rss) else rss
    slope = float(np.polyfit(half[:, 0], half[:, 1], 1)[0]) if len(half) >= 3 else None  # MB per second
    growth = float(slope * (half[-1, 0] - half[0, 0])) if slope is not None else None
    passed = bool(server_errors == 0 and not wrong and (growth is None or growth < max_growth_mb))
    return {
        "seconds": seconds, "requests": len(rec.rows), "throughput": len(rec.rows) / max(seconds, 1e-9),
        "server_errors": server_errors, "wrong_answers": wrong, "status_by_kind": kinds,
        "latency_ms": {"p50": _pct(all_ms, 50), "p95": _pct(all_ms, 95), "p99": _pct(all_ms, 99)},
        "latency_ok_ms": {"p50": _pct(ok_ms, 50), "p95": _pct(ok_ms, 95), "p99": _pct(ok_ms, 99)},
        "rss_mb": {"first": float(rss[0, 1]) if len(rss) else None, "max": float(rss[:, 1].max()) if len(rss) else None,
                   "last": float(rss[-1, 1]) if len(rss) else None, "samples": [[round(t, 1), round(v, 1)]
                                                                           for t, v in rss.tolist()],
                   "second_half_growth": growth, "max_growth": max_growth_mb},
        "client_errors": rec.errors[:10], "passed": passed,
    }


def soak(base: str, server_pid: int, real: Sequence[tuple[str, bytes]], seconds: float, concurrency: int = 4,
         sample_every: float = 5.0, max_growth_mb: float = 50.0, progress: Callable[[str], None] | None = None
         ) -> dict[str, Any]:
    """Build the request mix, run the soak and summarise it (see the module docstring)."""
    inputs = soak_inputs(real)
    if progress:
        progress(f"soak: {seconds:g} s, {concurrency} clients, {len(inputs)} inputs ({len(real)} real images)")
    rec = run_soak(base, server_pid, inputs, seconds, concurrency, sample_every)
    return summarise(rec, inputs, seconds, max_growth_mb)


def shared_images(limit: int = 24) -> list[tuple[str, bytes]]:
    """Real HAM10000 JPEGs from the shared folder (the full-size ones first) as uploads; none when it is absent."""
    from lesionlab.core.paths import shared_data_dir

    data = shared_data_dir()
    paths = sorted((data / "ham10000-600x450").glob("ISIC_*.jpg"))
    paths += sorted((data / "ham10000-64" / "images").glob("ISIC_*.jpg"))[: max(0, limit - len(paths))]
    return [(p.name, p.read_bytes()) for p in paths[:limit]]


def print_soak(console: Any, result: dict[str, Any], table: Callable[..., Any]) -> None:
    """The soak's one-row table, its wrong answers and the verdict."""
    s = result["soak"]
    lat, ok, rss = s["latency_ms"], s["latency_ok_ms"], s["rss_mb"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    console.print(table(f"soak: {s['seconds']:g} s, {result['concurrency']} clients, loopback",
                        ("requests", "5xx", "wrong", "p50 ms", "p95 ms", "p99 ms", "200 p95 ms",
                         "RSS first/max/last MB", "RSS growth 2nd half MB"),
                        [[str(s["requests"]), str(s["server_errors"]), str(len(s["wrong_answers"])),
                          fmt(lat["p50"]), fmt(lat["p95"]), fmt(lat["p99"]), fmt(ok["p95"]),
                          f"{fmt(rss['first'])}/{fmt(rss['max'])}/{fmt(rss['last'])}",
                          fmt(rss["second_half_growth"])]]))
    for kind, counts in s["wrong_answers"].items():
        console.print(f"[red]wrong answer[/red] {kind}: {counts}")
    console.print("[green]soak passed[/green]" if s["passed"] else "[bold red]soak failed[/bold red]")
