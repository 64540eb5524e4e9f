"""The HTTP API: answers, the model card, and a JSON 4xx for every bad input, after which the server still serves."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lesionlab.runs import load_run
from lesionlab.serve.app import create_app
from lesionlab.serve.samples import jpeg_bytes, synthetic_lesion
from lesionlab.serve.schemas import BatchResponse, ErrorBody, PredictResponse
from lesionlab.serve.settings import ServeSettings


def jpeg(size: tuple[int, int] = (120, 90), seed: int = 0) -> bytes:
    return jpeg_bytes(synthetic_lesion(size, seed))


LIMITS = ServeSettings(max_bytes=300_000, max_pixels=1000 * 800, max_batch=3)


@pytest.fixture(scope="module")
def client(meta_run: Path) -> TestClient:
    with TestClient(create_app(meta_run, LIMITS), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def image_client(image_run: Path) -> TestClient:
    with TestClient(create_app(load_run(image_run), LIMITS), raise_server_exceptions=False) as c:
        yield c


def good(client: TestClient) -> dict:
    resp = client.post("/v1/predict", files={"image": ("lesion.jpg", jpeg(), "image/jpeg")},
                       data={"age": "55", "sex": "female", "site": "back"})
    assert resp.status_code == 200, resp.text
    PredictResponse.model_validate(resp.json())  # the documented schema
    return resp.json()


def test_predict_answers_every_documented_field(client: TestClient) -> None:
    body = good(client)
    assert [c["code"] for c in body["probabilities"]] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert abs(sum(c["probability"] for c in body["probabilities"]) - 1) < 1e-5
    assert {"code", "name", "malignant", "probability"} <= set(body["probabilities"][0])
    assert len(body["top"]) == 3 and body["top"][0]["probability"] >= body["top"][2]["probability"]
    assert body["referral"]["threshold"] == 0.3 and body["referral"]["threshold_source"] == "validation"
    assert body["temperature"] == 1.7
    assert body["model"]["id"].startswith("tiny-") and len(body["model"]["version"]) == 12
    assert body["metadata"] == {"age": 55.0, "sex": "female", "site": "back", "used_by_model": True}
    assert body["heatmap"] is None
    timing = body["timing_ms"]
    assert {"decode", "preprocess", "model", "total", "overhead"} <= set(timing)
    assert timing["total"] >= timing["model"] > 0


def test_default_threshold_is_declared(image_client: TestClient) -> None:
    body = good(image_client)
    assert body["referral"]["threshold_source"] == "default" and body["referral"]["threshold"] == 0.5
    assert body["temperature"] is None and body["metadata"]["used_by_model"] is False


def test_explain_returns_a_png_overlay(client: TestClient) -> None:
    resp = client.post("/v1/predict", files={"image": ("l.jpg", jpeg((160, 120)), "image/jpeg")},
                       data={"explain": "true"})
    assert resp.status_code == 200, resp.text
    PredictResponse.model_validate(resp.json())
    hm = resp.json()["heatmap"]
    png = Image.open(io.BytesIO(base64.b64decode(hm["png_base64"])))
    assert png.format == "PNG" and png.mode == "RGBA" and png.size == (160, 120)
    assert hm["class"] == resp.json()["top"][0]["code"]
    assert "explain" in resp.json()["timing_ms"]


def test_batch_predicts_each_image_with_its_own_metadata(client: TestClient) -> None:
    files = [("images", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(3)]
    resp = client.post("/v1/predict/batch", files=files,
                       data={"age": ["20", "50", "80"], "sex": "male", "site": ["face", "back", "hand"]})
    assert resp.status_code == 200, resp.text
    BatchResponse.model_validate(resp.json())
    results = resp.json()["results"]
    assert [r["image"]["name"] for r in results] == ["0.jpg", "1.jpg", "2.jpg"]
    assert [r["metadata"]["age"] for r in results] == [20.0, 50.0, 80.0]
    assert {r["metadata"]["sex"] for r in results} == {"male"}
    single = client.post("/v1/predict", files={"image": ("1.jpg", jpeg(seed=1), "image/jpeg")},
                         data={"age": "50", "sex": "male", "site": "back"}).json()
    assert results[1]["probabilities"] == single["probabilities"]


def test_model_card_health_options_and_docs(client: TestClient) -> None:
    card = client.get("/v1/model").json()
    assert card["calibration"]["temperature"] == 1.7 and card["referral"]["threshold_source"] == "validation"
    assert card["uses_metadata"] is True and "intended_use" in card and card["known_limits"]
    assert client.get("/healthz").json()["status"] == "ok"
    options = client.get("/v1/options").json()
    assert "lower extremity" in options["sites"] and options["sites"][-1] == "unknown"
    assert options["max_batch"] == 3 and options["age_range"] == [0.0, 120.0]
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "Intended use" in page.text
    assert client.get("/static/app.js").status_code == 200


def _truncated() -> bytes:
    data = jpeg((400, 300))
    return data[: len(data) // 2]


def _corrupt() -> bytes:
    data = bytearray(jpeg())
    at = data.index(b"\xff\xc4")
    data[at + 5: at + 21] = b"\xff" * 16
    return bytes(data)


def _big_pixels() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), (180, 120, 100)).save(buf, format="PNG")
    return buf.getvalue()


def _form(image: tuple | None = ("x.jpg", None, "image/jpeg"), **fields: str) -> dict:
    files = {"photo": ("x.jpg", jpeg(), "image/jpeg")}  # multipart, but without the 'image' field
    if image is not None:
        files = {}
        name, data, ctype = image
        files["image"] = (name, jpeg() if data is None else data, ctype)
    return {"files": files, "data": fields}


BAD_SINGLE = [
    ("not an image", _form(("notes.jpg", b"these are clinical notes, not pixels" * 20, "image/jpeg")), 400,
     "not_an_image", "image"),
    ("truncated JPEG", _form(("cut.jpg", _truncated(), "image/jpeg")), 400, "corrupt_image", "image"),
    ("corrupt JPEG", _form(("bad.jpg", _corrupt(), "image/jpeg")), 400, "corrupt_image", "image"),
    ("too many pixels", _form(("huge.png", _big_pixels(), "image/png")), 413, "too_many_pixels", "image"),
    ("image too small", _form(("dot.jpg", jpeg((8, 8)), "image/jpeg")), 422, "image_too_small", "image"),
    ("image a thin strip", _form(("strip.jpg", jpeg((400, 20)), "image/jpeg")), 422, "bad_aspect_ratio", "image"),
    ("too many bytes", _form(("big.jpg", b"\xff\xd8" + b"\x00" * 310_000, "image/jpeg")), 413, "too_many_bytes",
     "image"),
    ("wrong content type", _form(("x.jpg", None, "text/plain")), 415, "unsupported_media_type", "image"),
    ("type does not match file", _form(("x.png", None, "image/png")), 415, "content_type_mismatch", "image"),
    ("empty upload", _form(("empty.jpg", b"", "image/jpeg")), 400, "empty_upload", "image"),
    ("age out of range", _form(age="150"), 422, "age_out_of_range", "age"),
    ("age not a number", _form(age="fifty"), 422, "invalid_age", "age"),
    ("unknown sex", _form(sex="yes"), 422, "unknown_sex", "sex"),
    ("unknown site", _form(site="elbow"), 422, "unknown_site", "site"),
    ("a megabyte of sex", _form(sex="x" * 500_000), 422, "unknown_sex", "sex"),
    ("unknown explain class", _form(explain_class="wart"), 422, "unknown_class", "explain_class"),
    ("explain not a boolean", _form(explain="perhaps"), 422, "invalid_field", "explain"),
    ("no image field", _form(None, age="50"), 422, "missing_field", "image"),
]


@pytest.mark.parametrize(("what", "request_kw", "status", "code", "field"), BAD_SINGLE, ids=[b[0] for b in BAD_SINGLE])
def test_each_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(client: TestClient, what: str, request_kw: dict,
                                                                     status: int, code: str, field: str) -> None:
    resp = client.post("/v1/predict", **request_kw)
    assert resp.status_code == status, resp.text
    err = ErrorBody.model_validate(resp.json()).error.model_dump()
    assert (err["code"], err["field"]) == (code, field), err
    assert err["message"] and len(err["message"]) < 500
    good(client)


def test_too_many_images_in_a_batch(client: TestClient) -> None:
    files = [("images", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(4)]
    resp = client.post("/v1/predict/batch", files=files)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_many_images"
    good(client)


def test_bad_image_inside_a_batch_is_named(client: TestClient) -> None:
    files = [("images", ("ok.jpg", jpeg(), "image/jpeg")), ("images", ("bad.jpg", b"nope", "image/jpeg"))]
    resp = client.post("/v1/predict/batch", files=files)
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["field"] == "images[1]" and "bad.jpg" in err["message"]


def test_batch_metadata_count_must_match(client: TestClient) -> None:
    files = [("images", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(3)]
    resp = client.post("/v1/predict/batch", files=files, data={"age": ["20", "30"]})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "field_count_mismatch"
    bad_site = client.post("/v1/predict/batch", files=files, data={"site": ["back", "elbow", "face"]})
    assert bad_site.status_code == 422 and bad_site.json()["error"]["field"] == "images[1].site"


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"json": {"image": "base64..."}}, 415, "not_multipart"),
    ({"content": b"raw bytes", "headers": {"content-type": "image/jpeg"}}, 415, "not_multipart"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422,
     "missing_field"),
    ({"content": b"x" * 700_000, "headers": {"content-type": "multipart/form-data; boundary=x"}}, 413, "too_large"),
    ({"content": (b"x" * 1000 for _ in range(700)), "headers": {"content-type": "multipart/form-data; boundary=x"}},
     413, "too_large"),  # chunked, no Content-Length: counted and cut off
])
def test_malformed_requests(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    resp = client.post("/v1/predict", **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    good(client)


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/predict").status_code == 405


def test_explain_class_asks_for_that_class(client: TestClient) -> None:
    resp = client.post("/v1/predict", files={"image": ("l.jpg", jpeg(), "image/jpeg")}, data={"explain_class": "MEL"})
    assert resp.status_code == 200 and resp.json()["heatmap"]["class"] == "mel"
