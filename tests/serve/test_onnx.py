"""ONNX export: inputs as documented, parity with PyTorch, and the service answering the same through ONNX Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from lesionlab.classes import CLASS_CODES
from lesionlab.cli import main
from lesionlab.runs import load_run, seal_run
from lesionlab.serve.app import create_app
from lesionlab.serve.onnx_export import PARITY_TOL, export_onnx, onnx_props, parity
from lesionlab.serve.samples import jpeg_bytes, parity_images, synthetic_lesion
from lesionlab.serve.settings import ServeSettings


@pytest.mark.parametrize(("fixture", "inputs"), [("image_run", ["image"]), ("meta_run", ["image", "meta"])])
def test_export_has_documented_inputs_and_dynamic_batch(fixture: str, inputs: list[str], tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    run = load_run(request.getfixturevalue(fixture))
    path = export_onnx(run, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == inputs
    image = graph.input[0].type.tensor_type.shape.dim
    assert image[0].dim_param == "batch" and [d.dim_value for d in image[1:]] == [3, 64, 64]
    if "meta" in inputs:
        assert graph.input[1].type.tensor_type.shape.dim[1].dim_value == run.meta_encoder.dim
    assert [o.name for o in graph.output] == ["logits"]
    assert json.loads(onnx_props(path)["lesionlab.classes"]) == list(CLASS_CODES)


@pytest.mark.parametrize("fixture", ["image_run", "meta_run"])
def test_parity_on_synthetic_images(fixture: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run = load_run(request.getfixturevalue(fixture))
    path = export_onnx(run, tmp_path / "m.onnx")
    images = [synthetic_lesion(seed=i) for i in range(5)]
    rows = [{"age": 30.0 + 10 * i, "sex": "female", "site": "back"} for i in range(5)]
    result = parity(run, path, images, rows)
    assert result["max_abs_prob_diff"] < PARITY_TOL and result["top1_agreement"] == 1.0


@pytest.mark.realdata
def test_parity_on_real_images(shared_data: Path, meta_run: Path, tmp_path: Path) -> None:
    run = load_run(meta_run)
    path = export_onnx(run, tmp_path / "m.onnx")
    images, source = parity_images(limit=32)
    assert "real HAM10000" in source and len(images) == 32
    result = parity(run, path, images)
    assert result["max_abs_prob_diff"] < PARITY_TOL, result


def test_service_on_onnx_runtime_answers_like_pytorch(meta_run: Path, tmp_path: Path) -> None:
    run = load_run(meta_run)
    path = export_onnx(run, tmp_path / "m.onnx")
    files = {"image": ("l.jpg", jpeg_bytes(synthetic_lesion((200, 150))), "image/jpeg")}
    data = {"age": "60", "sex": "male", "site": "trunk", "explain": "true"}
    answers = {}
    for backend, settings in (("torch", ServeSettings()), ("onnxruntime", ServeSettings(onnx_path=str(path)))):
        with TestClient(create_app(run, settings)) as client:
            body = client.post("/v1/predict", files=files, data=data).json()
            assert body["model"]["backend"] == backend
            assert body["heatmap"]["png_base64"]  # Grad-CAM still available (computed with the torch model)
            answers[backend] = [c["probability"] for c in body["probabilities"]]
    assert max(abs(a - b) for a, b in zip(answers["torch"], answers["onnxruntime"], strict=True)) < PARITY_TOL


def test_onnx_file_for_another_input_layout_is_refused(image_run: Path, meta_run: Path, tmp_path: Path) -> None:
    image_only = export_onnx(load_run(image_run), tmp_path / "image-only.onnx")
    with pytest.raises(ValueError, match="meta"):
        create_app(load_run(meta_run), ServeSettings(onnx_path=str(image_only)))


def test_export_command_writes_into_the_run_and_checks_parity(image_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exported.onnx"
    assert main(["export", str(image_run), "--onnx", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    old = tmp_path / "old-spelling.onnx"
    assert main(["export", str(image_run), "--onnx", "--out", str(old)]) == 0  # deprecated, still works
    assert old.is_file() and "--out is deprecated" in capsys.readouterr().err
    assert main(["export", str(image_run)]) == 1  # no format chosen: a clear error, not a traceback
    assert "--onnx" in capsys.readouterr().err



def test_int8_export_keeps_the_padding_arithmetic_in_float(tmp_path: Path, run_factory: Callable[..., Path]) -> None:
    """``tf_`` EfficientNets pad like TensorFlow, traced as shape arithmetic; int8 must quantise pixels only."""
    from lesionlab.serve.onnx_export import calibration_feeds, quantize_int8

    run = load_run(run_factory(tmp_path, name="lite0"))
    fp32 = export_onnx(run, tmp_path / "m.onnx")
    assert any(n.op_type == "Pad" for n in onnx.load(str(fp32)).graph.node)
    feeds = calibration_feeds(run.preprocessing, [synthetic_lesion(seed=i) for i in range(4)])
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", feeds)
    model = onnx.load(str(int8))
    kinds = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    producer = {out: n for n in model.graph.node for out in n.output}
    todo = [n.input[1] for n in model.graph.node if n.op_type == "Pad"]  # the pads: pure shape arithmetic
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in seen and node.op_type != "Shape":
            seen.add(node.name)
            todo.extend(node.input)
    sliced = [n for n in model.graph.node if n.name in seen]
    assert "Ceil" in {n.op_type for n in sliced} and "QuantizeLinear" not in {n.op_type for n in sliced}
    constants = {i.name for i in model.graph.initializer}
    # Only constants shared with pixel ops (the 0 of a ReLU6 clip) may come dequantized; zero is exact in int8.
    assert all(n.input[0] in constants for n in sliced if n.op_type == "DequantizeLinear")
    assert parity(run, int8, [synthetic_lesion(seed=9)])["max_abs_logit_diff"] < 5.0  # int8, yet not garbage


def test_onnx_file_from_other_weights_is_refused_and_re_exported(image_run: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    stale = export_onnx(load_run(image_run), tmp_path / "stale.onnx")
    retrained = Path(shutil.copytree(image_run, tmp_path / "retrained"))
    state = load_file(str(retrained / "model.safetensors"))
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(retrained / "model.safetensors"))
    seal_run(retrained)  # a retrained run lists its new weights
    with pytest.raises(ValueError, match="other weights"):
        create_app(retrained, ServeSettings(onnx_path=str(stale)))
    shutil.copy(stale, retrained / "model.onnx")  # a stale default file is replaced on the next --onnx use
    image = tmp_path / "a.jpg"
    synthetic_lesion((120, 90)).save(image)
    assert main(["predict", str(retrained), str(image), "--onnx", "--out", str(tmp_path / "p.csv")]) == 0
    create_app(retrained, ServeSettings(onnx_path=str(retrained / "model.onnx"), warmup=False))


def test_onnx_flag_exports_into_the_run_on_first_use(image_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = Path(shutil.copytree(image_run, tmp_path / "run"))
    image = tmp_path / "a.jpg"
    synthetic_lesion((120, 90)).save(image)
    assert main(["predict", str(run_dir), str(image), "--onnx", "--out", str(tmp_path / "p.csv")]) == 0
    assert (run_dir / "model.onnx").is_file() and (tmp_path / "p.csv").is_file()
