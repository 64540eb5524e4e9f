"""The run directory: one folder that *is* the checkpoint of a trained model.

``runs/<name>/`` holds ``model.safetensors`` (the weights) and ``run.json`` (everything else needed to use them; see
docs/ARCHITECTURE.md, "Run directory"), plus ``config.yaml`` and ``history.csv`` / ``history.json``. Evaluation,
the service and the reader study load models only through :func:`load_run`, so they always score with the
preprocessing that training used.

Every write is atomic (temporary file + ``os.replace``): a run killed mid-write keeps its previous complete files.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lesionlab.classes import CLASS_CODES, check_class_order
from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import atomic_write, atomic_write_json, atomic_write_text, json_safe, read_json
from lesionlab.core.manifest import file_manifest, verify_manifest
from lesionlab.core.metrics import softmax
from lesionlab.core.scope import (
    DEGRADATION_FILE,
    SCOPE_FILE,
    DegradationCheck,
    ScopeError,
    ScopeGate,
    load_degradation,
    load_gate,
)
from lesionlab.core.version import __version__
from lesionlab.models.views import (  # noqa: F401  (re-exported: the run's view averaging, defined with the models)
    TTA_VIEWS,
    Forward,
    ViewsError,
    dihedral_views,
    features_and_logits,
    flip_views,
    mean_logits,
    pooled_features,
    view_averaged_logits,
    views_of,
)

if TYPE_CHECKING:
    from lesionlab.config import ModelConfig, RunConfig
    from lesionlab.data.metadata import MetadataEncoder
    from lesionlab.data.transforms import Preprocessing

softmax_np = softmax  # the old name of lesionlab.core.metrics.softmax

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "run.json"
CONFIG_FILE = "config.yaml"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
TRANSIENT_FILES = ("last.ckpt",)  # rewritten every epoch and removed at the end: never part of the manifest


class RunError(LesionlabError, ValueError):
    """A run directory that cannot be read or written; the message names the file."""


# ------------------------------------------------------------------------------------------- atomic writes


def atomic_save_state_dict(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                           ) -> Path:
    """Save tensors as safetensors atomically (contiguous CPU copies; shared storage is split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


# ----------------------------------------------------------------------------------------------- writing


def model_info(model: torch.nn.Module, model_cfg: ModelConfig) -> dict[str, Any]:
    """The architecture part of ``run.json``: enough to rebuild the module with ``create_model`` and no download."""
    cfg = model_cfg.model_dump(mode="json") if hasattr(model_cfg, "model_dump") else dict(model_cfg)
    spec = getattr(model, "spec", None)
    weights = getattr(model, "weights", None)
    return {
        "name": cfg.get("name"),
        "timm_name": getattr(spec, "timm_name", cfg.get("name")),
        "timm_kwargs": {**dict(getattr(spec, "timm_kwargs", {}) or {}), **dict(cfg.get("timm_kwargs") or {})},
        "head": cfg.get("head"),
        "head_preset": cfg.get("head_preset"),
        "fusion": cfg.get("fusion"),
        "meta_dim": int(getattr(model, "meta_dim", 0) or 0),
        "num_features": getattr(model, "num_features", None),
        "feature_kind": getattr(model, "feature_kind", None),
        "pretrained_weights": weights.describe() if hasattr(weights, "describe") else None,
        "freeze_bn": bool(getattr(model, "freeze_bn", False)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "config": cfg,
    }


def save_run(run_dir: str | Path, model: torch.nn.Module, cfg: RunConfig, preprocessing: Preprocessing | None,
             meta_encoder: MetadataEncoder | None, split_hash: str, metrics: dict[str, Any],
             extra: dict[str, Any] | None = None) -> Path:
    """Write weights and ``run.json`` (plus ``config.yaml``) into ``run_dir``; returns the directory.

    ``cfg`` is the resolved :class:`~lesionlab.config.RunConfig`; ``metrics`` the best validation metrics (with
    ``epoch``); ``extra`` adds or overrides top-level ``run.json`` fields (``data``, ``training``, ...).
    The weights are written first, so a ``run.json`` on disk always describes complete weights.
    """
    from lesionlab.config import dump_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    atomic_save_state_dict(run_dir / WEIGHTS_FILE, state, metadata={"format": "pt", "lesionlab": __version__})
    previous = _read_info_if_any(run_dir)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "lesionlab_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_info(model, cfg.model),
        "classes": list(CLASS_CODES),
        "preprocessing": preprocessing.to_dict() if preprocessing is not None else None,
        "metadata_encoder": meta_encoder.to_dict() if meta_encoder is not None else None,
        "config": cfg.model_dump(mode="json"),
        "split": {"name": str(cfg.data.split), "hash": split_hash},
        "data": {},
        "best": metrics,
        "temperature": previous.get("temperature"),
        "referral_threshold": previous.get("referral_threshold"),
    }
    info.update(extra or {})
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    seal_run(run_dir, info)
    return run_dir


def seal_run(run_dir: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``run.json`` (``info``, or the one on disk) with ``files``: every file of the run directory with its
    size and SHA-256, as they are now. Everything that writes into a run directory calls it afterwards."""
    run_dir = Path(run_dir)
    info = dict(read_info(run_dir) if info is None else info)
    info["files"] = file_manifest(run_dir, exclude=(INFO_FILE, *TRANSIENT_FILES), own_marker=INFO_FILE)
    atomic_write_json(run_dir / INFO_FILE, info)
    return info


def seal_enclosing_run(path: str | Path) -> Path | None:
    """:func:`seal_run` on the run directory holding ``path`` (itself or up to two levels up), if there is one."""
    path = Path(path).resolve()
    for candidate in (path, *list(path.parents)[:2]):
        if (candidate / INFO_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            seal_run(candidate)
            return candidate
    return None


def _read_info_if_any(run_dir: Path) -> dict[str, Any]:
    """The existing ``run.json`` (so a re-save keeps fitted temperature/threshold), or ``{}``."""
    try:
        data = read_json(run_dir / INFO_FILE)
    except LesionlabError:
        return {}
    return data if isinstance(data, dict) else {}


def write_history(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as ``history.csv`` and ``history.json`` (both rewritten atomically each epoch)."""
    import pandas as pd

    run_dir = Path(run_dir)
    atomic_write_json(run_dir / HISTORY_JSON, history)
    frame = pd.DataFrame(json_safe(history))
    atomic_write(run_dir / HISTORY_CSV, lambda tmp: frame.to_csv(tmp, index=False))
    if (run_dir / INFO_FILE).is_file():
        seal_run(run_dir)


def update_run_info(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level ``run.json`` fields (e.g. ``temperature``, ``referral_threshold``) atomically; returns the info.

    Class order and format are checked first, so an evaluation never annotates a run it could not load.
    """
    run_dir = Path(path)
    info = read_info(run_dir)
    for key in ("format_version", "classes", "model", "config", "files"):
        if key in fields:
            raise RunError(f"{run_dir / INFO_FILE}: field {key!r} describes the weights and cannot be updated")
    info.update(fields)
    return seal_run(run_dir, info)


# ----------------------------------------------------------------------------------------------- reading


def read_info(run_dir: str | Path) -> dict[str, Any]:
    """Parse and check ``run.json``: present, valid JSON, known format, the project's class order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    path = run_dir / INFO_FILE
    if not path.is_file():
        raise RunError(f"{path}: missing (not a lesionlab run directory, or training did not finish an epoch)")
    info = read_json(path, RunError)
    if not isinstance(info, dict):
        raise RunError(f"{path}: expected a JSON object at the top level")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise RunError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("classes", "model", "config", "preprocessing"):
        if key not in info:
            raise RunError(f"{path}: missing field {key!r}")
    try:
        check_class_order(info["classes"], where=str(path))
    except ValueError as err:
        raise RunError(str(err)) from None
    return info


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with an error that names it when it is missing, truncated or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise RunError(f"{path}: cannot read weights (truncated or corrupt safetensors: {err})") from None


@dataclass
class Run:
    """A trained model ready for inference, with everything needed to feed it exactly as in training."""

    path: Path
    model: torch.nn.Module
    classes: tuple[str, ...]
    preprocessing: Preprocessing | None
    meta_encoder: MetadataEncoder | None
    info: dict[str, Any]
    config: RunConfig
    tta: bool = True
    tta_views: str = "flips"  # train.tta_views: flips (3 views) or dihedral (8)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scope: ScopeGate | None = None  # the out-of-scope gate, once evaluation fitted one
    degradation: DegradationCheck | None = None  # the degradation detector, once evaluation fitted one

    @property
    def uncertainty_threshold(self) -> float | None:
        """The margin below which a prediction is marked uncertain (``None`` until evaluation fits one)."""
        value = (self.info.get("uncertainty") or {}).get("threshold")
        return float(value) if value is not None else None

    @property
    def temperature(self) -> float | None:
        """The fitted temperature (``None`` until evaluation fits one)."""
        t = self.info.get("temperature")
        return float(t) if t else None

    def prepare_images(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """A float batch ``[N, C, H, W]``: decoded images (PIL or uint8 arrays) go through the saved preprocessing."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or not images.is_floating_point():
                raise RunError(f"{self.path}: a tensor batch must be float [N, C, H, W], got {tuple(images.shape)} "
                               f"{images.dtype}")
            return images
        if self.preprocessing is None:
            raise RunError(f"{self.path / INFO_FILE}: no preprocessing saved; pass a preprocessed tensor batch")
        return self.preprocessing.batch(images)

    def prepare_meta(self, meta_rows: Sequence[dict[str, Any]] | None, n: int) -> torch.Tensor | None:
        """Encoded clinical data for a fusion model (``None`` for an image-only model)."""
        if self.meta_encoder is None:
            return None
        if meta_rows is None:
            raise RunError(f"{self.path}: this model fuses clinical data; pass meta_rows (age, sex, site per image)")
        if len(meta_rows) != n:
            raise RunError(f"{self.path}: {len(meta_rows)} meta rows for {n} images")
        for i, row in enumerate(meta_rows):
            unknown = set(row) - {"age", "sex", "site"}
            if unknown:
                raise RunError(f"{self.path}: meta row {i} has unknown keys {sorted(unknown)}; expected age, sex, site")
        encoded = [self.meta_encoder.encode_one(r.get("age"), r.get("sex"), r.get("site")) for r in meta_rows]
        return torch.as_tensor(np.stack(encoded).astype(np.float32))

    @torch.inference_mode()
    def predict_logits(self, images: Sequence[Any] | torch.Tensor, meta_rows: Sequence[dict[str, Any]] | None = None,
                       batch_size: int = 64, tta: bool | None = None) -> np.ndarray:
        """Logits ``[N, 7]``, averaged over the run's test-time views when ``tta`` (default: as it was validated)."""
        x = self.prepare_images(images)
        meta = self.prepare_meta(meta_rows, len(x))
        use_tta = self.tta if tta is None else tta
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(self.device)
            mb = meta[start:start + batch_size].to(self.device) if meta is not None else None
            out.append(view_averaged_logits(self.model, xb, mb, use_tta, self.tta_views).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    @torch.inference_mode()
    def predict_features(self, images: Sequence[Any] | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """The image features the head consumes, pooled to ``[N, C]`` (the out-of-scope gate's input)."""
        x = self.prepare_images(images)
        out = [pooled_features(self.model, x[s:s + batch_size].to(self.device)) for s in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)

    @torch.inference_mode()
    def predict_features_and_logits(self, images: Sequence[Any] | torch.Tensor,
                                    meta_rows: Sequence[dict[str, Any]] | None = None, batch_size: int = 64,
                                    tta: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_features` and :meth:`predict_logits` with one backbone pass per view (the evaluation's
        safety checks read both for every image)."""
        x = self.prepare_images(images)
        meta = self.prepare_meta(meta_rows, len(x))
        use_tta = self.tta if tta is None else tta
        feats, logits = [], []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(self.device)
            mb = meta[start:start + batch_size].to(self.device) if meta is not None else None
            f, z = features_and_logits(self.model, xb, mb, use_tta, self.tta_views)
            feats.append(f)
            logits.append(z.float().cpu())
        if not feats:
            return np.zeros((0, 0), dtype=np.float32), np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()

    def predict_proba(self, images: Sequence[Any] | torch.Tensor, meta_rows: Sequence[dict[str, Any]] | None = None,
                      batch_size: int = 64, tta: bool | None = None) -> np.ndarray:
        """Probabilities ``[N, 7]`` (columns in :data:`lesionlab.classes.CLASS_CODES` order), temperature applied."""
        logits = self.predict_logits(images, meta_rows, batch_size=batch_size, tta=tta)
        return softmax(logits, self.temperature)


def build_model_from_info(info: dict[str, Any], where: str) -> torch.nn.Module:
    """The architecture described by ``run.json``, without any pretrained download (an ensemble: its members)."""
    from lesionlab.config import ModelConfig, build_config
    from lesionlab.models import create_model
    from lesionlab.models.ensemble import EnsembleModel

    members = info["model"].get("ensemble")
    if members:
        return EnsembleModel([build_model_from_info({"model": m, "config": info["config"]}, f"{where} member {i}")
                              for i, m in enumerate(members)])
    raw = dict(info["model"].get("config") or info["config"].get("model") or {})
    raw["pretrained"] = False  # our own weights follow; never reach for the hub or a local weights file
    raw["weights"] = None
    if raw.get("freeze_bn") is None and "freeze_bn" in info["model"]:  # as resolved at training (folded BatchNorm)
        raw["freeze_bn"] = bool(info["model"]["freeze_bn"])
    model_cfg = build_config(ModelConfig, raw, where=f"{where} (model)")
    meta_dim = int(info["model"].get("meta_dim") or 0)
    return create_model(model_cfg, num_classes=len(CLASS_CODES), meta_dim=meta_dim)


def read_preprocessing(info: dict[str, Any], where: str) -> tuple[Preprocessing | None, MetadataEncoder | None]:
    """The saved preprocessing and metadata encoder of ``run.json`` (errors name the file).

    Runs written before ``source_size`` was part of the preprocessing get their ``data.source_image_size``: the
    squash the service already applied to them, now applied by every entry point alike.
    """
    from lesionlab.data.metadata import MetadataEncoder
    from lesionlab.data.transforms import Preprocessing

    try:
        pre = None if info.get("preprocessing") is None else Preprocessing.from_dict(
            info["preprocessing"], source_size=(info.get("data") or {}).get("source_image_size"))
        encoder = None if info.get("metadata_encoder") is None else MetadataEncoder.from_dict(info["metadata_encoder"])
    except (ValueError, TypeError, KeyError) as err:
        raise RunError(f"{where}: {err}") from None
    return pre, encoder


def run_concerns(info: dict[str, Any]) -> dict[str, str]:
    """Why a run's answers must not be taken as a model's: ``unfinished`` training, ``synthetic`` training data."""
    out = {}
    status = info.get("status")
    if status != "complete":
        out["unfinished"] = (f"its training did not finish (run.json status {status!r}): these are the weights of an "
                             "interrupted run" if status else "run.json records no finished training (no status)")
    if (info.get("data") or {}).get("synthetic"):
        out["synthetic"] = ("it was trained on SYNTHETIC images, not dermoscopy: its answers carry no clinical "
                            "meaning")
    return out


def check_run_use(run_dir: str | Path, info: dict[str, Any], command: str, allow_unfinished: bool = False,
                  allow_synthetic: bool = False) -> list[str]:
    """Refuse (:class:`RunError`) a run with :func:`run_concerns` unless each is allowed explicitly; returns the
    warnings that every answer and report of an allowed run must carry."""
    concerns = run_concerns(info)
    allowed = {"unfinished": allow_unfinished, "synthetic": allow_synthetic}
    refused = [key for key in concerns if not allowed[key]]
    if refused:
        flags = " and ".join(f"--allow-{key}" for key in refused)
        raise RunError(f"{run_dir}: refusing to {command} this run: {'; '.join(concerns[k] for k in refused)}. "
                       f"Pass {flags} to {command} it anyway (every answer then carries a warning)")
    warnings = [f"This model is not fit for clinical use: {text}." for text in concerns.values()]
    if "files" not in info:
        warnings.append("run.json lists no file checksums (written by an older lesionlab): the files were not "
                        "checked")
    return warnings


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a ready model (eval mode) from a run directory; every error names the file at fault.

    Every file listed in ``run.json`` (``files``) is checked first: a truncated, swapped or edited file is refused.
    """
    from lesionlab.config import RunConfig, build_config, with_legacy_defaults

    run_dir = Path(path)
    info = read_info(run_dir)
    info_path = run_dir / INFO_FILE
    if isinstance(info.get("files"), dict):
        verify_manifest(run_dir, info["files"], RunError, where=str(info_path))
    state = read_weights(run_dir / WEIGHTS_FILE)
    try:
        config = build_config(RunConfig, with_legacy_defaults(info["config"]), where=f"{info_path} (config)")
    except ValueError as err:
        raise RunError(str(err)) from None
    preprocessing, meta_encoder = read_preprocessing(info, str(info_path))
    model = build_model_from_info(info, str(info_path))
    missing, unexpected = _state_mismatch(model, state)
    if missing or unexpected:
        raise RunError(f"{run_dir / WEIGHTS_FILE}: weights do not match the architecture in {info_path} "
                       f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                       f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RunError(f"{run_dir / WEIGHTS_FILE}: weights do not match the architecture in {info_path}: "
                       f"{str(err).splitlines()[0]} {_first_shape_error(err)}") from None
    try:
        scope = load_gate(run_dir / SCOPE_FILE, info["scope"]) if info.get("scope") else None
    except ScopeError as err:
        raise RunError(f"{info_path} (scope): {err}") from None
    try:
        degradation = (load_degradation(run_dir / DEGRADATION_FILE, info["degradation"])
                       if info.get("degradation") else None)
    except ScopeError as err:
        raise RunError(f"{info_path} (degradation): {err}") from None
    device = torch.device(device)
    model.to(device).eval()
    return Run(path=run_dir, model=model, classes=tuple(info["classes"]), preprocessing=preprocessing,
               meta_encoder=meta_encoder, info=info, config=config, tta=bool(config.train.tta),
               tta_views=config.train.tta_views, device=device, scope=scope,
               degradation=degradation)


def _state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    got = set(state)
    return sorted(expected - got), sorted(got - expected)


def _first_shape_error(err: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
    return lines[0] if lines else ""
