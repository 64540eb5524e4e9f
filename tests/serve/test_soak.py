"""The soak in short (CI): ``lesionlab serve-bench soak`` against a served run, real images mixed with every bad
input, zero 5xx, every kind answered as expected, RSS sampled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlab.cli import main
from lesionlab.serve.soak import SoakRecorder, soak_inputs, summarise

pytestmark = pytest.mark.slow


def test_short_soak_passes(meta_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve-bench", "soak", str(meta_run), "--seconds", "10", "--concurrency", "3", "--sample-every",
                 "1", "--threads", "1"])
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])["soak"]
    assert code == 0, result
    assert result["server_errors"] == 0 and result["wrong_answers"] == {}
    kinds = set(result["status_by_kind"])
    assert {"real", "truncated", "huge_flat_png", "grey", "16bit", "noise", "slow_body"} <= kinds
    assert result["status_by_kind"]["slow_body"] == {"408": result["status_by_kind"]["slow_body"]["408"]}
    assert len(result["rss_mb"]["samples"]) >= 5 and result["latency_ms"]["p99"] >= result["latency_ms"]["p50"]


def test_verdict_counts_5xx_wrong_answers_and_memory_growth() -> None:
    inputs = soak_inputs([("a.jpg", b"x")])
    rec = SoakRecorder(rows=[("real", 200, 10.0), ("truncated", 400, 5.0)],
                       rss=[(float(t), 100.0) for t in range(20)])
    assert summarise(rec, inputs, 20)["passed"] is True
    rec.rows.append(("real", 500, 3.0))
    assert summarise(rec, inputs, 20)["server_errors"] == 1 and not summarise(rec, inputs, 20)["passed"]
    wrong = SoakRecorder(rows=[("huge_flat_png", 200, 1.0)], rss=rec.rss)
    assert summarise(wrong, inputs, 20)["wrong_answers"] == {"huge_flat_png": {"200": 1}}
    leak = SoakRecorder(rows=[("real", 200, 1.0)], rss=[(float(t), 100.0 + 10 * t) for t in range(20)])
    result = summarise(leak, inputs, 20)
    assert result["rss_mb"]["second_half_growth"] == pytest.approx(90.0) and not result["passed"]
    assert np.isclose(result["rss_mb"]["max"], 290.0)
