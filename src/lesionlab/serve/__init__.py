"""Decision support in front of a trained run: HTTP API, clinician page, ONNX export, command-line prediction.

Public API::

    from lesionlab.serve import create_app, ServeSettings
    app = create_app("runs/cpu-lite0-64", ServeSettings(max_bytes=5_000_000))   # a FastAPI app (uvicorn, TestClient)
    lesionlab serve runs/cpu-lite0-64 [--port 8000] [--onnx [PATH]]            # the same, from the shell
    lesionlab export runs/cpu-lite0-64 --onnx [PATH] [--int8]                  # model.onnx + parity check
    lesionlab predict runs/cpu-lite0-64 a.jpg b.jpg --age 60 --sex male --site back --out preds.csv
    lesionlab serve-bench latency|overhead|load [RUN] ...                      # docs/BENCHMARKS.md

Endpoints: ``POST /v1/predict`` (multipart ``image`` + optional ``age``, ``sex``, ``site``, ``explain``,
``explain_class``), ``POST /v1/predict/batch`` (repeated ``images``; metadata none, one for all, or one per image),
``GET /v1/model`` (model card), ``GET /v1/options`` (accepted values and limits), ``GET /healthz``, ``GET /`` (the
page), ``/docs`` (OpenAPI).

How an answer is made (the same code for the API, the page and ``lesionlab predict``): docs/ARCHITECTURE.md, "From
an upload to the response". Every refusal is a JSON ``{"error": {"code", "message", "field"}}`` with status 400,
413, 415 or 422. The referral threshold is ``referral_threshold`` from ``run.json``, fitted by ``lesionlab evaluate
--calibrate`` on the run's validation split (``threshold_source: "validation"``); a run never calibrated uses
:data:`~lesionlab.serve.settings.DEFAULT_REFERRAL_THRESHOLD` (``--threshold``) and says ``threshold_source:
"default"``: that number was not validated. ``timing_ms`` reports decode, preprocess, model, explain, total and
``overhead`` = total - model - explain.
"""

from lesionlab.serve.app import create_app
from lesionlab.serve.settings import DEFAULT_REFERRAL_THRESHOLD, ServeSettings

__all__ = ["DEFAULT_REFERRAL_THRESHOLD", "ServeSettings", "create_app"]
