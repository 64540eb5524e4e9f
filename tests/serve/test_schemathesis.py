"""Schema-driven fuzzing (schemathesis): every operation of the service's own OpenAPI schema, fed generated requests
that the schema allows and requests that it forbids, answers without a 5xx, with a status code the schema documents
and a body that matches it; requests the schema allows are accepted, except for the image content, which a schema
cannot describe (random bytes are not a picture: 400/413/415/422 with the JSON error shape)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from lesionlab.runs import update_run_info
from lesionlab.serve.app import create_app
from lesionlab.serve.settings import ServeSettings

pytestmark = pytest.mark.slow

IMAGE_CONTENT = {400, 413, 415, 422}  # the upload's bytes are not an accepted picture


@pytest.fixture(scope="module")
def api_schema(meta_run: Path, tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    """The metadata-fusion run (its clinical fields and calibration make the richest schema), with small limits."""
    run_dir = Path(shutil.copytree(meta_run, tmp_path_factory.mktemp("schema") / "run"))
    update_run_info(run_dir, uncertainty={"threshold": 0.01})
    app = create_app(run_dir, ServeSettings(warmup=False, max_bytes=200_000, max_batch=3))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _labels(schema: schemathesis.BaseSchema) -> list[str]:
    return [op.ok().label for op in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_per_schema(api_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    labels = _labels(api_schema)
    assert {"POST /v1/predict", "POST /v1/predict/batch", "GET /v1/model", "GET /healthz"} <= set(labels)
    for op in (o.ok() for o in api_schema.get_all_operations()):
        if mode is GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # nothing to break in a GET without parameters
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            assert response.status_code < 500, f"{case.path}: {response.status_code} {response.text[:300]}"
            # documented status, content type, headers and body shape. Acceptance is checked below: a schema cannot say
            # which bytes make a picture, and schemathesis does not count 413 (too large) as a refusal.
            case.validate_response(response, excluded_checks=[positive_data_acceptance, negative_data_rejection])
            if mode is GenerationMode.NEGATIVE:
                assert 400 <= response.status_code < 500, f"schema-violating request answered {response.status_code}"
            elif case.method == "POST":
                assert response.status_code == 200 or response.status_code in IMAGE_CONTENT, response.text[:300]
            else:
                assert response.status_code == 200, response.text[:300]
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        check()
