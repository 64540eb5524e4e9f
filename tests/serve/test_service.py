"""The service core without HTTP: same probabilities as the run, temperature, referral rule, metadata checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlab.classes import CLASS_CODES, MALIGNANT_INDICES
from lesionlab.runs import load_run
from lesionlab.serve.errors import ServeError
from lesionlab.serve.explain import overlay_png, to_image_geometry
from lesionlab.serve.service import Patient, Predictor, Timer, referral_threshold
from lesionlab.serve.settings import DEFAULT_REFERRAL_THRESHOLD, ServeSettings


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("fixture", ["image_run", "meta_run"])
def test_probabilities_match_the_runs_own_prediction(fixture: str, request: pytest.FixtureRequest) -> None:
    """Flip averaging and temperature exactly as ``Run.predict_proba``, which evaluation used to fit them."""
    run = load_run(request.getfixturevalue(fixture))
    predictor = Predictor(run, ServeSettings())
    images = _images()
    patients = [Patient(40.0, "female", "back"), Patient(None, "unknown", "unknown"), Patient(85.0, "male", "face")]
    results = predictor.predict(images, patients, ["a", "b", "c"], Timer())
    got = np.array([[c["probability"] for c in r["probabilities"]] for r in results])
    rows = [p.as_dict() for p in patients] if predictor.uses_meta else None
    expected = run.predict_proba(images, rows)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [c["code"] for c in results[0]["probabilities"]] == list(CLASS_CODES)
    assert results[0]["top"][0]["probability"] == max(c["probability"] for c in results[0]["probabilities"])


def test_temperature_and_threshold_come_from_run_json(meta_run: Path, image_run: Path) -> None:
    calibrated = Predictor(load_run(meta_run), ServeSettings())
    assert (calibrated.temperature, calibrated.threshold, calibrated.threshold_source) == (1.7, 0.3, "validation")
    plain = Predictor(load_run(image_run), ServeSettings())
    assert plain.temperature is None
    assert (plain.threshold, plain.threshold_source) == (DEFAULT_REFERRAL_THRESHOLD, "default")
    assert Predictor(load_run(image_run), ServeSettings(default_threshold=0.2)).threshold == 0.2


@pytest.mark.parametrize(("info", "expected"), [
    ({}, (0.5, "default")),
    ({"referral_threshold": None}, (0.5, "default")),
    ({"referral_threshold": 0.12}, (0.12, "validation")),
    ({"referral_threshold": {"value": 0.4}}, (0.4, "validation")),
])
def test_referral_threshold_sources(info: dict, expected: tuple[float, str]) -> None:
    assert referral_threshold(info, ServeSettings()) == expected


def test_referral_threshold_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="referral_threshold"):
        referral_threshold({"referral_threshold": 1.5}, ServeSettings())


@pytest.mark.parametrize(("malignant", "threshold", "refer"), [(0.29, 0.3, False), (0.3, 0.3, True), (0.9, 0.3, True)])
def test_referral_flag_is_summed_malignant_probability_at_threshold(image_run: Path, malignant: float,
                                                                      threshold: float, refer: bool) -> None:
    predictor = Predictor(load_run(image_run), ServeSettings(default_threshold=threshold))
    probs = np.full(7, 0.0)
    probs[list(MALIGNANT_INDICES)] = malignant / 3
    probs[CLASS_CODES.index("nv")] = 1 - malignant
    ref = predictor.describe(probs)["referral"]
    assert ref["refer"] is refer and ref["malignant_probability"] == pytest.approx(malignant)
    assert ref["malignant_classes"] == ["akiec", "bcc", "mel"]


@pytest.mark.parametrize(("age", "sex", "site", "code", "field"), [
    ("abc", None, None, "invalid_age", "age"),
    ("-1", None, None, "age_out_of_range", "age"),
    ("130", None, None, "age_out_of_range", "age"),
    ("nan", None, None, "age_out_of_range", "age"),
    (None, "robot", None, "unknown_sex", "sex"),
    (None, None, "elbow", "unknown_site", "site"),
])
def test_bad_metadata_names_the_field(meta_run: Path, age: str | None, sex: str | None, site: str | None,
                                      code: str, field: str) -> None:
    predictor = Predictor(load_run(meta_run), ServeSettings())
    with pytest.raises(ServeError) as info:
        predictor.check_patient(age, sex, site)
    assert (info.value.status, info.value.code, info.value.field) == (422, code, field)


@pytest.mark.parametrize(("age", "sex", "site", "expected"), [
    ("", "", "", Patient(None, "unknown", "unknown")),
    (" 45 ", "Female", "Lower_Extremity", Patient(45.0, "female", "lower extremity")),
    ("0", "male", "acral", Patient(0.0, "male", "acral")),
    ("120", "unknown", "unknown", Patient(120.0, "unknown", "unknown")),
])
def test_good_metadata_is_normalised_like_training(meta_run: Path, age: str, sex: str, site: str,
                                                   expected: Patient) -> None:
    assert Predictor(load_run(meta_run), ServeSettings()).check_patient(age, sex, site) == expected


def test_metadata_changes_the_prediction_of_a_fusion_model(meta_run: Path) -> None:
    predictor = Predictor(load_run(meta_run), ServeSettings())
    image = _images(1)
    a = predictor.predict(image, [Patient(20.0, "female", "face")], ["x"], Timer())[0]
    b = predictor.predict(image, [Patient(85.0, "male", "back")], ["x"], Timer())[0]
    assert a["metadata"]["used_by_model"] is True
    assert a["probabilities"] != b["probabilities"]


def test_heatmap_is_a_transparent_png_in_the_images_geometry(image_run: Path) -> None:
    predictor = Predictor(load_run(image_run), ServeSettings(heatmap_max_side=100))
    timer = Timer()
    out = predictor.predict(_images(1), [Patient()], ["x"], timer, explain=True, explain_class="mel")[0]
    hm = out["heatmap"]
    assert hm["method"] == "Grad-CAM" and hm["class"] == "mel" and hm["layer"].startswith("backbone.")
    import base64

    png = Image.open(io.BytesIO(base64.b64decode(hm["png_base64"])))
    assert png.mode == "RGBA" and png.size == (100, 75) == (hm["width"], hm["height"])
    assert "explain" in timer.stages


@pytest.mark.parametrize(("resize", "size", "covered"), [("square", (120, 90), (120, 90)),
                                                         ("aspect", (120, 90), (90, 90))])
def test_cam_maps_back_onto_the_part_of_the_image_the_model_saw(resize: str, size: tuple[int, int],
                                                                 covered: tuple[int, int]) -> None:
    cam = np.ones((8, 8), dtype=np.float32)
    out = to_image_geometry(cam, size, resize)
    assert out.shape == (size[1], size[0])
    cols = np.nonzero(out.max(axis=0) > 0.5)[0]
    rows = np.nonzero(out.max(axis=1) > 0.5)[0]
    assert (len(cols), len(rows)) == covered
    if resize == "aspect":  # centre crop: the same margin on both sides
        assert cols[0] == size[0] - 1 - cols[-1]


def test_overlay_alpha_follows_the_map() -> None:
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[2:5, 2:5] = 1.0
    rgba = np.asarray(Image.open(io.BytesIO(overlay_png(cam))))
    assert rgba[3, 3, 3] > 150 and rgba[8, 8, 3] == 0


def test_source_size_reproduces_images_stored_small_for_training(image_run: Path) -> None:
    """A run trained on 64 px copies of large photographs sees uploads squashed to 64 px first."""
    run = load_run(image_run)
    predictor = Predictor(run, ServeSettings(source_size=32))
    images = _images(2)
    got = predictor.predict(images, [Patient(), Patient()], ["a", "b"], Timer(), explain=True)
    small = [im.resize((32, 32), Image.Resampling.BICUBIC) for im in images]
    expected = run.predict_proba(small)
    np.testing.assert_allclose([[c["probability"] for c in r["probabilities"]] for r in got], expected, atol=2e-6)
    assert got[0]["heatmap"]["width"] == 120 and predictor.card()["input"]["source_size"] == [32, 32]


def test_source_size_defaults_to_what_the_run_recorded_and_0_switches_it_off(image_run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(image_run, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["data"]["source_image_size"] = [32, 40]  # [height, width], as the engine records it
    (run_dir / "run.json").write_text(json.dumps(info))
    run = load_run(run_dir)
    assert Predictor(run, ServeSettings()).source_size == (40, 32)  # PIL's (width, height)
    assert Predictor(run, ServeSettings(source_size=24)).source_size == (24, 24)  # an explicit setting wins
    assert Predictor(run, ServeSettings(source_size=0)).source_size is None
    assert Predictor(load_run(image_run), ServeSettings()).source_size is None  # nothing recorded: no squashing
    with pytest.raises(ValueError, match="source_size"):
        ServeSettings(source_size=-1)
