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

How an answer is made (the same code for the API, the page and ``lesionlab predict``):

1. The upload is checked and decoded (:mod:`~lesionlab.serve.decode`): empty, too many bytes, wrong or mismatched
   content type, not an image, too many pixels (checked from the header, before decoding), corrupt or truncated.
   Each is a JSON ``{"error": {"code", "message", "field"}}`` with status 400, 413, 415 or 422.
2. Age, sex and site are validated against the HAM10000 vocabulary of the run's metadata encoder (422 naming the
   field); they are encoded and given to the model only when the run fuses metadata (``used_by_model``).
3. The run's own ``Preprocessing`` builds the input (the one ``Run.predict_proba`` and evaluation use: squash to
   the training images' stored size, resize, normalise); the logits are flip-averaged when the run was validated
   that way (``train.tta``), because its temperature and threshold were fitted on flip-averaged predictions.
4. Probabilities are ``softmax(logits / T)`` with the run's temperature ``T`` from ``run.json`` when
   ``lesionlab evaluate --calibrate`` fitted one (``temperature`` in the response, ``null`` otherwise).
5. Referral: ``refer = p(mel) + p(bcc) + p(akiec) >= threshold``. The threshold is ``referral_threshold`` from
   ``run.json``, fitted by ``lesionlab evaluate --calibrate`` on the run's *validation* split (after temperature
   scaling) as the highest cut-off that still refers the target share (sensitivity 0.9 by default) of the
   validation malignant lesions (``threshold_source: "validation"``; the fit's sensitivity, specificity and
   referral rate are in the model card). A run never calibrated uses the default 0.5
   (:data:`~lesionlab.serve.settings.DEFAULT_REFERRAL_THRESHOLD`, ``--threshold`` to change) and says
   ``threshold_source: "default"``: that number was not validated.
6. With ``explain=true``, Grad-CAM (pytorch-grad-cam) of the top-1 class (or ``explain_class``) on the PyTorch
   model, as a transparent RGBA PNG in the uploaded image's geometry. When predictions come from ONNX Runtime the
   heatmap is still computed with the PyTorch model (gradients), only on request.
7. ``timing_ms`` reports decode, preprocess, model, explain and total; ``overhead`` = total - model - explain.
"""

from lesionlab.serve.app import create_app
from lesionlab.serve.settings import DEFAULT_REFERRAL_THRESHOLD, ServeSettings

__all__ = ["DEFAULT_REFERRAL_THRESHOLD", "ServeSettings", "create_app"]
