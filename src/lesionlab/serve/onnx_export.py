"""ONNX export of a run's model and the parity check that guards it.

The exported graph is the bare model: ``image`` ``[N, 3, H, W]`` float32 (after the run's preprocessing) and, for
a model that fuses clinical data, ``meta`` ``[N, D]`` float32, giving ``logits`` ``[N, 7]``; the batch axis is
dynamic. Preprocessing, flip averaging and temperature stay in Python, shared with the PyTorch backend, so the two
backends differ only in arithmetic. The file carries the class order and the run's identity as ONNX metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionlab.classes import CLASS_CODES
from lesionlab.core.io import atomic_write, file_sha256
from lesionlab.core.metrics import softmax
from lesionlab.data.metadata import MetadataEncoder
from lesionlab.data.transforms import Preprocessing
from lesionlab.runs import WEIGHTS_FILE, Run, seal_enclosing_run
from lesionlab.serve.backend import OnnxBackend, OnnxError, TorchBackend
from lesionlab.serve.samples import parity_images  # noqa: F401  (re-exported: its former home)

OPSET = 17
# Parity tolerance on probabilities (max abs difference, ONNX Runtime vs PyTorch eager, float32 both). Observed
# differences are around 1e-6; 1e-4 leaves room for other CPUs' kernels while still catching any wrong op.
PARITY_TOL = 1e-4


class _Exportable(torch.nn.Module):
    """The run's model with explicit positional inputs, as the exporter needs."""

    def __init__(self, model: torch.nn.Module, uses_meta: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_meta = uses_meta

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image, meta) if self.uses_meta else self.model(image)


def run_uses_meta(run: Run) -> bool:
    """Whether the run's model fuses clinical data (an encoder was fitted and the model has a metadata input)."""
    if run.meta_encoder is None or meta_width(run) <= 0:
        return False
    fusion = getattr(run.model, "fusion", None)  # a LesionModel's; an encoder beside an image-only model is unused
    return bool(getattr(fusion, "needs_meta", True))


def input_shape(run: Run) -> tuple[int, int]:
    """The ``(height, width)`` the run's preprocessing produces."""
    if run.preprocessing is None:
        raise OnnxError(f"{run.path}: the run saved no preprocessing; cannot export")
    return run.preprocessing.size


def meta_width(run: Run) -> int:
    """``D``, the width of the encoded metadata row."""
    return int((run.info.get("model") or {}).get("meta_dim") or 0)


def export_module(model: torch.nn.Module, path: str | Path, size: tuple[int, int], meta_dim: int = 0,
                  props: dict[str, str] | None = None, opset: int = OPSET) -> Path:
    """Export a ``LesionModel``-like module (``forward(image, meta=None)``) to ``path``, atomically; returns it."""
    import onnx

    path = Path(path)
    uses_meta = meta_dim > 0
    module = _Exportable(model.eval(), uses_meta).eval()
    image = torch.zeros(2, 3, int(size[0]), int(size[1]))
    args: tuple[torch.Tensor, ...] = (image, torch.zeros(2, meta_dim)) if uses_meta else (image,)
    names = ["image", "meta"] if uses_meta else ["image"]
    axes = {name: {0: "batch"} for name in [*names, "logits"]}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export + onnxscript (not a dependency here);
            # it is still the supported path for plain CNNs and is checked by the parity test.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            # Shape checks in LesionModel are Python conditions, traced once as constants: harmless here.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(tmp), dynamo=False, input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"lesionlab.classes": json.dumps(list(CLASS_CODES)),
                                            "lesionlab.meta_dim": str(meta_dim), **(props or {})})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    return atomic_write(path, write)


def export_onnx(run: Run, path: str | Path | None = None, opset: int = OPSET) -> Path:
    """Write the run's model as ONNX (default ``<run>/model.onnx``) and return the path."""
    path = Path(path) if path is not None else Path(run.path) / "model.onnx"
    info = run.info
    props = {"lesionlab.run": str(info.get("name") or Path(run.path).name),
             "lesionlab.preprocessing": json.dumps(info.get("preprocessing")),
             WEIGHTS_PROP: weights_digest(run)}
    meta_dim = meta_width(run) if run_uses_meta(run) else 0
    written = export_module(run.model, path, input_shape(run), meta_dim, props, opset)
    seal_enclosing_run(written.parent)
    return written


WEIGHTS_PROP = "lesionlab.weights_sha256"


def weights_digest(run: Run) -> str:
    """SHA-256 prefix of the run's ``model.safetensors`` (the served model's version), or ``""`` without a file."""
    path = Path(run.path) / WEIGHTS_FILE
    return file_sha256(path)[:12] if path.is_file() else ""


def onnx_props(path: str | Path) -> dict[str, str]:
    """The metadata an exported file carries (class order, run, weights digest); empty for foreign files."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def check_onnx_matches(path: str | Path, run: Run) -> None:
    """Refuse an ONNX file exported from other weights or with another class order than ``run``'s."""
    props = onnx_props(path)
    if json.loads(props.get("lesionlab.classes", "null")) != list(CLASS_CODES):
        raise OnnxError(f"{path}: not written by `lesionlab export` for the class order {list(CLASS_CODES)}; "
                         "re-export it with `lesionlab export RUN --onnx`")
    expected = weights_digest(run)
    if expected and props.get(WEIGHTS_PROP) != expected:
        raise OnnxError(f"{path}: exported from other weights (sha256 {props.get(WEIGHTS_PROP) or 'unknown'}, "
                         f"run has {expected}); re-export it with `lesionlab export RUN --onnx`")


def parity(run: Run, onnx_path: str | Path, images: Sequence[Any], meta_rows: Sequence[dict[str, Any]] | None = None,
           threads: int = 2, batch_size: int = 32) -> dict[str, float]:
    """Max abs difference of logits and probabilities, ONNX Runtime vs PyTorch eager, on the same preprocessed batch.

    ``images`` are decoded images that go through the run's preprocessing; the temperature is applied to both.
    The two sides see identical inputs, so any difference is the runtimes' arithmetic.
    """
    if not images:
        raise ValueError("parity needs at least one image")
    uses_meta = run_uses_meta(run)
    rows = list(meta_rows) if meta_rows is not None else [{"age": None, "sex": "unknown", "site": "unknown"}] * len(
        images)
    torch_backend, onnx_backend = TorchBackend(run.model), OnnxBackend(onnx_path, threads)
    refs, gots = [], []
    for start in range(0, len(images), batch_size):
        x = run.prepare_images(list(images[start:start + batch_size])).float().numpy()
        meta = run.prepare_meta(rows[start:start + batch_size], len(x)) if uses_meta else None
        refs.append(torch_backend.logits(x, meta.numpy() if meta is not None else None))
        gots.append(onnx_backend.logits(x, meta.numpy() if meta is not None else None))
    ref, got = np.concatenate(refs), np.concatenate(gots)
    t = run.temperature
    return {"n": float(len(ref)), "max_abs_logit_diff": float(np.abs(ref - got).max()),
            "max_abs_prob_diff": float(np.abs(softmax(ref, t) - softmax(got, t)).max()),
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[dict[str, np.ndarray]]) -> Path:
    """Static int8 quantisation (ONNX Runtime, QDQ, per-channel weights) calibrated on ``feeds``; returns the path.

    For CPU latency: x86 cores with VNNI run int8 convolutions several times faster than float32. The calibration
    feeds must be representative inputs (preprocessed real images), and the result must be checked with
    :func:`parity` before serving: int8 changes probabilities by far more than :data:`PARITY_TOL`.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise ValueError("int8 quantisation needs at least one calibration input")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    def write(tmp: Path) -> None:
        import onnx

        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            exclude = sorted(shape_nodes(onnx.load(str(prepared))))
            quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude)
        finally:
            prepared.unlink(missing_ok=True)

    return atomic_write(Path(out_path), write)


# Inputs that carry shapes or indices, not pixels: (op type, input positions).
_SHAPE_INPUTS = {"Pad": (1, 2), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
                 "Resize": (1, 2, 3), "Unsqueeze": (1,), "Squeeze": (1,), "ConstantOfShape": (0,)}


def shape_nodes(model: Any) -> set[str]:
    """Names of the nodes that only compute shapes or paddings (e.g. TensorFlow-style "same" padding in the
    ``tf_`` EfficientNets, traced as Shape -> Div -> Ceil -> ... -> Pad): quantising those breaks the geometry.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    todo = [node.input[i] for node in model.graph.node for i in _SHAPE_INPUTS.get(node.op_type, ())
            if i < len(node.input) and node.input[i]]
    found: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in found:
            continue
        found.add(node.name)
        if node.op_type not in ("Shape", "Size"):  # a shape's source is pixel data: stop there
            todo.extend(i for i in node.input if i)
    return found


def calibration_feeds(preprocessing: Preprocessing, images: Sequence[Any], meta_encoder: MetadataEncoder | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """One ONNX feed per image (batch 1) through ``preprocessing``; unknown metadata when ``meta_encoder`` is given
    (a fusion model)."""
    feeds = []
    for image in images:
        feed = {"image": preprocessing(image).unsqueeze(0).float().numpy()}
        if meta_encoder is not None:
            feed["meta"] = meta_encoder.encode_one(None, "unknown", "unknown")[None, :].astype(np.float32)
        feeds.append(feed)
    return feeds
