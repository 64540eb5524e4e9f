"""What a clinician must never see, and what the server must never do: a verdict on an image the model cannot judge,
an unfinished or synthetic model served silently, paths or object reprs in answers, unbounded decodes or bodies."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesionlab.runs import RunError, load_run, update_run_info
from lesionlab.serve.app import UploadGuard, create_app
from lesionlab.serve.decode import decode_upload
from lesionlab.serve.errors import ServeError
from lesionlab.serve.predict_cli import input_table, predict_table
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion
from lesionlab.serve.schemas import PredictResponse
from lesionlab.serve.service import Patient, Predictor, Timer
from lesionlab.serve.settings import ServeSettings


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(image_run: Path, tmp_path_factory: pytest.TempPathFactory,
         gated_run_factory: Callable[..., Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gated")
    return {"reject_all": gated_run_factory(image_run, root, -1.0),
            "keep_all": gated_run_factory(image_run, root, 1e12, 2.0),
            "plain": gated_run_factory(image_run, root, 1e12),
            "degraded_all": gated_run_factory(image_run, root, 1e12, None, -1e12),
            "degraded_none": gated_run_factory(image_run, root, 1e12, None, 1e12)}


def post(client: TestClient, data: bytes, ctype: str = "image/jpeg", **form: str) -> Any:
    return client.post("/v1/predict", files={"image": ("x", data, ctype)}, data=form)


def test_out_of_scope_gets_no_verdict_and_in_scope_does(runs: dict[str, Path]) -> None:
    image = jpeg_bytes(synthetic_lesion((120, 90), seed=99))
    with TestClient(create_app(runs["reject_all"], ServeSettings(warmup=False))) as client:
        body = post(client, image).json()
    PredictResponse.model_validate(body)
    assert body["assessment"]["status"] == "cannot_assess" and body["assessment"]["reasons"] == ["out_of_scope"]
    assert "does not look like a dermoscopy image" in body["assessment"]["message"]
    assert body["scope"]["in_scope"] is False and body["referral"]["refer"] is None
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        body = post(client, image).json()
        flat = post(client, png(np.full((90, 120, 3), 230, np.uint8)), "image/png").json()
    assert body["assessment"]["status"] == "assessed" and isinstance(body["referral"]["refer"], bool)
    assert body["scope"]["method"] == "mahalanobis" and body["scope"]["score"] >= 0
    assert flat["assessment"]["status"] == "cannot_assess" and "one_colour" in flat["quality"]["flags"]
    assert flat["referral"]["refer"] is None and "take the picture again" in flat["assessment"]["message"]


def test_an_image_the_degradation_check_flags_gets_no_verdict(runs: dict[str, Path]) -> None:
    image = jpeg_bytes(synthetic_lesion((120, 90), seed=99))
    with TestClient(create_app(runs["degraded_all"], ServeSettings(warmup=False))) as client:
        body = post(client, image).json()
        files = [("images", (f"{i}.jpg", image, "image/jpeg")) for i in range(2)]
        batch = client.post("/v1/predict/batch", files=files).json()
    PredictResponse.model_validate(body)
    assert body["assessment"]["status"] == "cannot_assess" and body["assessment"]["reasons"] == ["degraded"]
    assert body["assessment"]["message"].startswith("cannot assess: the image is degraded (noisy, blurred")
    assert body["referral"]["refer"] is None and body["quality"]["ok"] is False
    assert body["quality"]["degradation_threshold"] == -1e12 and body["quality"]["degradation_score"] > -1e12
    assert [r["assessment"]["reasons"] for r in batch["results"]] == [["degraded"], ["degraded"]]
    assert not any("No degradation check" in w for w in body["warnings"])
    with TestClient(create_app(runs["degraded_none"], ServeSettings(warmup=False))) as client:
        kept = post(client, image).json()
    assert kept["assessment"]["status"] == "assessed" and kept["quality"]["flags"] == []
    assert kept["quality"]["degradation_score"] == body["quality"]["degradation_score"]  # same detector, same image
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        unfitted = post(client, image).json()
    assert unfitted["quality"]["degradation_score"] is None and unfitted["assessment"]["status"] == "assessed"
    assert any("No degradation check was fitted" in w for w in unfitted["warnings"])


@pytest.mark.parametrize("tta", [False, True])
def test_the_checks_features_come_from_the_classifiers_backbone_pass(runs: dict[str, Path], tta: bool) -> None:
    """One forward_features call per request (the views batched), with exactly the numbers of the two calls."""
    import torch

    predictor = Predictor(load_run(runs["degraded_none"]), ServeSettings(warmup=False, tta=tta))
    x = torch.stack([predictor._prepare(synthetic_lesion((120, 90), seed=s), Patient())[0] for s in range(3)])
    model = predictor.run.model
    calls = []
    real = model.forward_features
    model.forward_features = lambda v: calls.append(len(v)) or real(v)  # type: ignore[method-assign]
    probs, logits, feats = predictor.scores_and_features(x, None)
    assert calls == [3 * (3 if tta else 1)]
    assert feats is not None and np.array_equal(feats, predictor.features(x))
    expected_probs, expected_logits = predictor.scores(x, None)
    assert np.array_equal(logits, expected_logits) and np.array_equal(probs, expected_probs)


def test_uncertain_predictions_are_marked(runs: dict[str, Path]) -> None:
    with TestClient(create_app(runs["keep_all"], ServeSettings(warmup=False))) as client:
        body = post(client, jpeg_bytes(synthetic_lesion((120, 90)))).json()
    assert body["uncertainty"]["uncertain"] is True and body["uncertainty"]["threshold"] == 2.0
    assert body["assessment"]["status"] == "uncertain" and isinstance(body["referral"]["refer"], bool)


def test_unfitted_checks_are_warned_about(image_run: Path) -> None:
    predictor = Predictor(load_run(image_run), ServeSettings(warmup=False))
    assert any("No out-of-scope gate" in w for w in predictor.warnings)
    result = predictor.predict([synthetic_lesion((80, 60))], [Patient()], ["a"], Timer())[0]
    assert result["scope"]["in_scope"] is None and result["assessment"]["status"] == "assessed"


@pytest.mark.parametrize(("fields", "flag"), [({"status": "training"}, "--allow-unfinished"),
                                               ({"data": {"source": "synthetic", "synthetic": True}},
                                                "--allow-synthetic")])
def test_unfinished_and_synthetic_runs_are_refused_unless_allowed(image_run: Path, tmp_path: Path,
                                                                  fields: dict, flag: str) -> None:
    run_dir = Path(shutil.copytree(image_run, tmp_path / "run"))
    update_run_info(run_dir, **fields)
    with pytest.raises(RunError, match=f"refusing to serve this run.*{flag}"):
        Predictor(load_run(run_dir), ServeSettings(warmup=False))
    allowed = ServeSettings(warmup=False, allow_unfinished=True, allow_synthetic=True)
    with TestClient(create_app(run_dir, allowed)) as client:
        body = post(client, jpeg_bytes(synthetic_lesion((80, 60)))).json()
        card = client.get("/v1/model").json()
    assert any("not fit for clinical use" in w for w in body["warnings"])
    assert body["warnings"] == card["warnings"] == body["model"]["warnings"]


def test_a_patient_in_a_flagged_subgroup_gets_a_caution(runs: dict[str, Path], tmp_path: Path,
                                                        flagged_card_factory: Callable[..., None]) -> None:
    image = jpeg_bytes(synthetic_lesion((120, 90), seed=5))
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        assert post(client, image, site="lower extremity").json()["cautions"] == []  # no evaluation: nothing to say
    run_dir = Path(shutil.copytree(runs["plain"], tmp_path / "run"))
    flagged_card_factory(run_dir)
    with TestClient(create_app(run_dir, ServeSettings(warmup=False))) as client:
        flagged = post(client, image, site="lower extremity", age="62").json()
        other = post(client, image, site="back", age="62").json()
        files = [("images", (f"{i}.jpg", image, "image/jpeg")) for i in range(2)]
        batch = client.post("/v1/predict/batch", files=files, data={"site": ["back", "lower extremity"]}).json()
        card = client.get("/v1/model").json()
    PredictResponse.model_validate(flagged)
    [caution] = flagged["cautions"]
    assert (caution["attribute"], caution["level"], caution["n"], caution["source"]) == (
        "site", "lower extremity", 182, "eval-test")
    assert "lesions on the lower extremity (balanced accuracy 0.55, against 0.81 for the rest" in caution["message"]
    assert other["cautions"] == [] and flagged["probabilities"] == other["probabilities"]  # it changes no answer
    assert [[c["level"] for c in r["cautions"]] for r in batch["results"]] == [[], ["lower extremity"]]
    assert card["evaluation"]["subgroups"]["flagged"] == ["site=lower extremity"]
    predictor = Predictor(load_run(run_dir), ServeSettings(warmup=False))
    path = tmp_path / "lesion.jpg"
    path.write_bytes(image)
    table = predict_table(predictor, input_table([str(path), str(path)], site="lower extremity"))
    assert list(table["cautions"]) == ["site=lower extremity"] * 2


def test_a_swapped_or_truncated_run_file_is_refused_by_name(image_run: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(image_run, tmp_path / "run"))
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(RunError, match=r"model\.safetensors: .* bytes, but .*run\.json lists"):
        load_run(run_dir)
    shutil.copy(image_run / "model.safetensors", weights)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("name: tiny", "name: tinz"))
    with pytest.raises(RunError, match=r"config\.yaml: SHA-256 .* differs"):
        load_run(run_dir)


def test_answers_carry_no_paths_or_object_reprs(runs: dict[str, Path]) -> None:
    run_dir = runs["plain"]
    with TestClient(create_app(run_dir, ServeSettings(warmup=False)), raise_server_exceptions=False) as client:
        texts = [client.get("/v1/model").text, client.get("/healthz").text, client.get("/v1/options").text,
                 post(client, b"\x00\x01not an image at all" * 10).text,
                 post(client, jpeg_bytes(synthetic_lesion((80, 60)))).text]
    for text in texts:
        assert str(run_dir.parent) not in text and "/tmp/" not in text and " at 0x" not in text, text
    assert "not a readable image (cannot identify image file the upload)" in json.loads(texts[3])["error"]["message"]


def test_405_says_which_methods_are_allowed(runs: dict[str, Path]) -> None:
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        resp = client.get("/v1/predict")
        put = client.put("/v1/model")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert put.status_code == 405 and put.headers["allow"] == "GET"
    assert resp.json()["error"]["code"] == "method_not_allowed"


def test_unknown_form_fields_are_refused(runs: dict[str, Path]) -> None:
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        resp = post(client, jpeg_bytes(synthetic_lesion((80, 60))), agee="40")
    assert resp.status_code == 422 and resp.json()["error"] == {
        "code": "unknown_field", "field": "agee",
        "message": "unknown form field 'agee'; this endpoint takes image, age, sex, site, explain, explain_class"}


@pytest.mark.parametrize(("mode", "note"), [("L", "grey copied"), ("RGBA", "alpha dropped"),
                                            ("I;16", "16-bit values scaled")])
def test_non_rgb_uploads_convert_with_a_note_or_are_refused(runs: dict[str, Path], mode: str, note: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        data = png(rng.integers(0, 65535, (60, 80)).astype(np.uint16))
    else:
        data = png(rng.integers(0, 255, (60, 80, 3)).astype(np.uint8), mode)
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        body = post(client, data, "image/png").json()
    assert body["image"]["mode"] == mode and note in body["image"]["notes"][0]
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False, image_modes="refuse"))) as client:
        resp = post(client, data, "image/png")
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_image_mode"


def test_pixel_limit_is_derived_from_the_run_and_jpegs_decode_scaled(image_run: Path) -> None:
    predictor = Predictor(load_run(image_run), ServeSettings(warmup=False))
    assert predictor.max_pixels == 256 * 64 * 64 and predictor.need == 64
    flat = png(np.full((2100, 2100, 3), 128, np.uint8))  # ~13 kB that would be 13 MB of pixels
    with pytest.raises(ServeError) as err:
        predictor.decode(flat, "flat.png", "image/png", "image")
    assert err.value.status == 413 and "--max-pixels" in err.value.message
    big = jpeg_bytes(synthetic_lesion((4000, 3000)))
    decoded = predictor.decode(big, "big.jpg", "image/jpeg", "image")
    assert (decoded.width, decoded.height) == (4000, 3000) and max(decoded.image.size) == 500  # 1/8 scale
    assert "JPEG scaling" in decoded.notes[0]
    full = decode_upload(big, ServeSettings(), "big.jpg", "image/jpeg")
    assert full.image.size == (4000, 3000)  # without a need, no scaling


def test_decodes_wait_for_a_slot_and_time_out_with_503(image_run: Path) -> None:
    predictor = Predictor(load_run(image_run), ServeSettings(warmup=False, max_decodes=1, decode_wait_s=0.2))
    assert predictor.decode_slots.acquire(timeout=1)
    try:
        with pytest.raises(ServeError) as err:
            predictor.decode(jpeg_bytes(synthetic_lesion((80, 60))), "a.jpg", "image/jpeg", "image")
        assert err.value.status == 503 and err.value.code == "busy"
    finally:
        predictor.decode_slots.release()


def test_slow_bodies_get_408(runs: dict[str, Path], serve_in_thread: Callable[..., Any]) -> None:
    settings = ServeSettings(warmup=False, read_timeout_s=0.5, body_timeout_s=2.0)
    with serve_in_thread(create_app(runs["plain"], settings)) as base:
        host, port = base.removeprefix("http://").split(":")
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\n")  # then nothing more
            reply = sock.recv(4096).decode("latin-1")
            head, _, body = reply.partition("\r\n\r\n")
            length = int(next((line.split(":", 1)[1] for line in head.split("\r\n")
                               if line.lower().startswith("content-length:")), "0"))
            while len(body.encode("latin-1")) < length:  # the body may come in a read of its own
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk.decode("latin-1")
            reply = f"{head}\r\n\r\n{body}"
        assert reply.startswith("HTTP/1.1 408") and '"code":"timeout"' in reply.replace(" ", "")
        assert time.monotonic() - start < 5


def test_upload_guard_total_body_deadline() -> None:
    """A client trickling bytes, each chunk in time, is still cut off at the body deadline."""
    seen: list[int] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message.get("body", b"")))

    async def trickle() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    guard = UploadGuard(app, {"/v1/predict": 10_000}, read_timeout_s=1.0, body_timeout_s=0.3)
    scope = {"type": "http", "path": "/v1/predict", "method": "POST",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    from starlette.exceptions import HTTPException

    with pytest.raises(HTTPException) as err:
        asyncio.run(guard(scope, trickle, lambda m: asyncio.sleep(0)))
    assert err.value.status_code == 408 and 2 <= len(seen) <= 8


def test_openapi_schema_says_what_the_server_accepts(runs: dict[str, Path]) -> None:
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False))) as client:
        schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["Body_predict_v1_predict_post"]
    assert body["additionalProperties"] is False
    assert body["properties"]["image"]["minLength"] == 1
    assert body["properties"]["age"] == {"type": "number", "minimum": 0.0, "maximum": 120.0, "description": "years"}
    assert "back" in body["properties"]["site"]["enum"]
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "400", "408", "413", "415", "422", "503"} <= set(responses)


def test_concurrent_requests_are_all_answered(runs: dict[str, Path]) -> None:
    with TestClient(create_app(runs["plain"], ServeSettings(warmup=False, max_decodes=1))) as client:
        codes: list[int] = []

        def one(i: int) -> None:
            codes.append(post(client, jpeg_bytes(synthetic_lesion((200, 150), seed=i))).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200] * 6
