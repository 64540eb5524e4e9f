"""Typed configuration: pydantic models, YAML files under ``configs/`` and ``key=value`` overrides.

Unknown keys are errors (with a near-match suggestion) so that a typo never silently trains the wrong model.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lesionlab.core.errors import LesionlabError
from lesionlab.core.paths import cache_dir as default_cache_dir  # noqa: F401  (the old name, re-exported)


class ConfigError(LesionlabError, ValueError):
    """A configuration file or override that cannot be used; the message names the file and key."""


class Strict(BaseModel):
    """Base for every config section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataConfig(Strict):
    """Which images, which split, at which size."""

    source: Literal["auto", "ham10000", "npz", "isic", "synthetic"] = "auto"
    # HAM10000: metadata CSV + image folders; npz: the MedMNIST file; isic: ground-truth CSV + folder.
    metadata_csv: Path | None = None
    image_dirs: list[Path] = []
    npz: Path | None = None
    # Split: "dermamnist_c", "dermamnist" (published maps, HAM10000 only), "lesion" (lesionlab's own grouped
    # split, seeded) or a path to a split CSV written by `lesionlab data split`.
    split: str = "dermamnist_c"
    split_file: Path | None = None
    split_fold: int | None = None  # with a k-fold split CSV: which fold is validation (the rest is train)
    split_seed: int = 0
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    image_size: tuple[int, int] = (64, 64)  # (height, width)
    resize: Literal["square", "aspect"] = "square"  # square: squash (MedMNIST); aspect: cover + centre crop
    convert_mode: bool = False  # convert non-RGB images (greyscale, alpha, 16-bit) instead of rejecting them
    cache_dir: Path | None = None
    synthetic_n: int = Field(700, ge=14)
    synthetic_seed: int = 0
    synthetic_size: int = Field(64, ge=16)
    # Part of the run's preprocessing (train, evaluate, serve): none, or shades_of_gray (lesionlab.data.colour).
    colour_constancy: Literal["none", "shades_of_gray"] = "none"
    colour_constancy_power: float = Field(6.0, ge=1.0)  # Minkowski p of Shades of Gray (6: Barata et al. 2015)

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                             "leaves under 10% for training")
        return self


class AugmentConfig(Strict):
    """Training-time augmentation (the HAM10000 study's rotation, zoom, shear, flips, camera-like changes)."""

    enabled: bool = True
    rotation: float = 180.0  # degrees, uniform in [-rotation, rotation]
    zoom: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0
    translate: float = 0.05
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False  # a random multiple of 90 degrees: lossless, no filled corners (square inputs only)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.02
    blur_p: float = 0.1
    # Acquisition corruptions (lesionlab.data.corruptions, MedMNIST-C): names or ["all"]; empty: off.
    corruptions: list[str] = []
    corruption_p: float | None = Field(None, ge=0.0, le=1.0)  # None: n / (n + 1), as MedMNIST-C's augmentation
    corruption_severity: tuple[int, int] = (1, 5)  # severities drawn uniformly from this range
    # Batch mixing (lesionlab.train.mixing): Beta(alpha, alpha) weights; 0 turns a kind off. mix_p: share of batches
    # mixed; mix_switch_p: with both kinds on, the share of mixed batches that use CutMix instead of MixUp.
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    mix_p: float = Field(1.0, ge=0.0, le=1.0)
    mix_switch_p: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("corruptions", mode="before")
    @classmethod
    def _corruption_list(cls, v: Any) -> Any:
        # YAML and key=value overrides: "all" or "pixelate,motion_blur" as one string
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("corruption_severity")
    @classmethod
    def _severity_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 5:
            raise ValueError(f"must be (low, high) with 1 <= low <= high <= 5, got {list(v)}")
        return v


class ModelConfig(Strict):
    """Backbone, weights, head and clinical-data fusion."""

    name: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None  # a local safetensors / torch state dict; overrides the hub source
    head: Literal["linear", "simple", "conv", "mlp"] = "linear"
    head_preset: str | None = None  # effv1..effv4 (DermaMNIST study); see lesionlab.models.presets
    head_hidden: int = 64
    head_grid: int = 2  # `simple` head: the feature map is pooled to grid x grid before Flatten (2 = 64 px input)
    dropout: float | None = None  # None: the head's own default (0.5 for `mlp`, 0 otherwise)
    fusion: Literal["none", "concat", "metablock"] = "none"
    fusion_hidden: int = 64
    meta_dropout: float = 0.1  # training only: share of samples whose metadata is blanked (missing-value robustness)
    freeze_bn: bool | None = None  # None: as the weights require (True for mobilenetv2_shared, folded BatchNorm)
    timm_kwargs: dict[str, Any] = {}


class TrainConfig(Strict):
    """The training engine's settings; defaults follow the DermaMNIST study (Adam, lr 1e-4)."""

    mode: Literal["scratch", "finetune", "frozen"] = "finetune"
    epochs: int = 20
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: Literal["none", "onecycle", "cosine"] = "none"
    warmup_fraction: float = 0.1  # share of all steps spent warming up (one-cycle pct_start, cosine warm-up)
    grad_clip: float | None = None  # max gradient norm
    class_weights: Literal["none", "balanced", "sqrt"] = "none"
    label_smoothing: float = 0.0
    # How class weights meet label smoothing. "target": a sample's whole loss, smoothing term included, is scaled by
    # its class's weight, as if the sample were repeated. "class": torch's CrossEntropyLoss, which scales each class's
    # share of the smoothing term by that class's weight (pytorch/pytorch#104776), so that with large weights the best
    # answer for a nevus is a rare class; kept to reproduce runs made before this option existed.
    smoothing_weights: Literal["target", "class"] = "target"
    sampler: Literal["none", "balanced"] = "none"
    # Logit-adjusted loss (Menon et al., ICLR 2021): the loss is taken on logits + tau * log(effective training prior),
    # so the model's own outputs learn that prior raised to 1 - tau (tau 1: every class alike). 0 = off. The prior is
    # the one class weights and sampler give (lesionlab.core.priors.training_prior), which the balanced rule reads.
    logit_adjust: float = Field(0.0, ge=0.0, le=1.0)
    # Focal loss (Lin et al., ICCV 2017): each sample's loss times (1 - p_true) ** gamma; 0 = plain cross-entropy.
    # Its minimiser is not the posterior, so the balanced rule's prior correction is then an approximation.
    focal_gamma: float = Field(0.0, ge=0.0)
    # Layer-wise learning-rate decay: the backbone's stages (timm's coarse layer groups, stem lowest) train at
    # lr * decay ** (layers above them), the head and fusion at lr. None = one learning rate for all.
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    monitor: str = "balanced_accuracy"
    patience: int | None = 10
    min_delta: float = 0.0
    unfreeze_after: int | None = None  # finetune: train the head only for this many epochs, then everything
    embed_cache_views: int = 0  # frozen mode with augmentation: cache this many augmented views (0 = bypass)
    tta: bool = True  # view-averaged validation/test predictions
    tta_views: Literal["flips", "dihedral"] = "flips"  # flips: identity, h- and v-flip; dihedral: the 8 symmetries
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)  # exponential moving average of the weights (None: off)
    # Knowledge distillation: teacher run directories (several: their ensemble) give soft targets for the training
    # images; the loss is (1 - w) * cross-entropy + w * T^2 * KL(teachers at T || student at T).
    distill_from: list[str] = []
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    distill_temperature: float = Field(2.0, gt=0.0)
    # An ensemble of seeds (the `best` preset): the config is trained once per seed, into RUN/members/seed-<s> with
    # train.seed=<s>, and RUN holds their ensemble (logits averaged). Empty: one run, seeded by train.seed.
    ensemble_seeds: list[int] = []
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    bf16: Literal["auto", "on", "off"] = "off"  # CPU autocast, depthwise convs in fp32; auto = speed+agreement check
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # CUDA only: auto = bf16 where supported, else fp16
    eval_batch_size: int = 128
    max_train_batches: int | None = None  # for smoke tests only

    @field_validator("channels_last", "bf16", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML reads a bare on/off as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("ensemble_seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(v) == 1:
            raise ValueError(f"one seed ({v[0]}) is not an ensemble: give two or more, or none and train.seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat in {v}: equal seeds train equal members")
        return v


class RunConfig(Strict):
    """Everything one training run needs; saved resolved inside the run directory."""

    name: str = "run"
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


#: The top-level keys of a run config (a YAML file with these is a run config, not just a data section).
CONFIG_SECTIONS: tuple[str, ...] = tuple(RunConfig.model_fields)


#: Settings that change where or how fast a run executes, not what it computes: a run may be resumed with other
#: values, and an experiment's run ids (``lesionlab.experiments.plan.config_hash``) leave them out.
EXECUTION_ONLY: tuple[tuple[str, ...], ...] = (("name",), ("output_dir",), ("data", "cache_dir"), ("train", "device"),
                                               ("train", "num_workers"))


#: Settings whose default changed after runs existed. A run directory's config (config.yaml, run.json) lists every
#: key, so one without the key was written before it existed, under the old behaviour: :func:`with_legacy_defaults`
#: fills that in, so that a resumed run computes as it began and a loaded run says how it was trained.
#: (section, key) -> the behaviour before the key existed.
LEGACY_DEFAULTS: dict[tuple[str, str], Any] = {("train", "smoothing_weights"): "class"}


def _mixing_off(section: dict[str, Any]) -> bool:
    return not (section.get("mixup") or section.get("cutmix"))


def _smoothing_weights_moot(section: dict[str, Any]) -> bool:
    # the two ways agree without smoothing or without weights; the legacy value is how every earlier run trained
    legacy = LEGACY_DEFAULTS[("train", "smoothing_weights")]
    return (not section.get("label_smoothing") or section.get("class_weights", "none") == "none"
            or section.get("smoothing_weights", legacy) == legacy)


#: Options added after runs existed, with the keys that only matter while the option is on: while it is off (or at
#: the value every earlier run had) they are left out of :func:`computation_dict`, so an upgrade that adds an option
#: keeps the ids (and reuse) of finished grid runs that do not use it. (section, "is it off?", keys dropped then)
INACTIVE_WHEN_OFF: tuple[tuple[str, Callable[[dict[str, Any]], bool], tuple[str, ...]], ...] = (
    ("augment", _mixing_off, ("mixup", "cutmix", "mix_p", "mix_switch_p")),
    ("train", _smoothing_weights_moot, ("smoothing_weights",)),
    ("train", lambda s: not s.get("logit_adjust"), ("logit_adjust",)),
    ("train", lambda s: not s.get("focal_gamma"), ("focal_gamma",)),
    ("train", lambda s: s.get("layer_decay") is None, ("layer_decay",)),
    ("train", lambda s: not s.get("ensemble_seeds"), ("ensemble_seeds",)),
)


def computation_dict(cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as JSON-ready data without the :data:`EXECUTION_ONLY` settings and the settings of options that
    are off (:data:`INACTIVE_WHEN_OFF`): what decides a run's numbers."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else yaml.safe_load(yaml.safe_dump(cfg)) or {}
    for *sections, key in EXECUTION_ONLY:
        node = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    for section, is_off, keys in INACTIVE_WHEN_OFF:
        node = data.get(section)
        if isinstance(node, dict) and is_off(node):
            for k in keys:
                node.pop(k, None)
    return data


def near_matches(key: str, options: list[str]) -> str:
    """"; did you mean ...?" (or the valid keys) for an unknown ``key``: the tail of an error message."""
    close = difflib.get_close_matches(key, options, n=3)
    return f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(options))}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None`` or ``list[Model]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_key(model: type[BaseModel], loc: tuple[Any, ...], where: str, noun: str) -> str:
    """pydantic's "extra inputs are not permitted", as the dotted key with the near-match keys of its section."""
    section: type[BaseModel] | None = model
    path = ""
    for part in loc[:-1]:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        path += f"{'.' if path else ''}{part}"
        field = section.model_fields.get(str(part)) if section is not None else None
        section = _model_in(field.annotation) if field is not None else None
    key = str(loc[-1])
    hint = near_matches(key, list(section.model_fields)) if section is not None else ""
    return f"{where}: {noun} '{path}{'.' if path else ''}{key}'{hint}"


def build_config(model: type[BaseModel], data: dict[str, Any], where: str, unknown: str = "unknown config key"
                 ) -> Any:
    """Validate a raw dict into a config model; errors name the file and the dotted key (unknown keys with their
    near matches, ``unknown`` being how the message calls them)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        extra = [e for e in errors if e["type"] == "extra_forbidden"]
        lines = [_unknown_key(model, tuple(e["loc"]), where, unknown) for e in extra] or [
            f"{where}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
        raise ConfigError("\n".join(lines)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "overrides") -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict, returning a new dict."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key!r} descends into a non-section value")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: the value of override {key!r} is not valid YAML: {err}") from None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def merge_mappings(inherited: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` on top of ``inherited``: mappings merge key by key at every depth; lists and scalars replace (pure)."""
    out = dict(inherited)
    for key, value in own.items():
        old = out.get(key)
        out[key] = merge_mappings(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


#: Rewrites an inherited mapping for the extending file: ``(inherited, parent path, extending path) -> mapping``.
Rebase = Callable[[dict[str, Any], Path, Path], dict[str, Any]]


def read_extending_yaml(path: str | Path, rebase: Rebase | None = None, _chain: tuple[Path, ...] = ()
                        ) -> dict[str, Any]:
    """A YAML mapping with its ``extends`` chain merged underneath (the file's own keys win).

    ``extends`` names one file, relative to the extending file; it may extend another in turn, so that a preset or
    grid that differs from another in a few settings says only those. ``rebase`` adjusts what a file inherits (a
    grid's relative ``base_config``, for instance) before the file's own keys are laid over it.
    """
    path = Path(path)
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends must be one file path, relative to this file; got {parent!r}")
    parent_path = path.parent / parent
    chain = (*_chain, path.resolve())
    if parent_path.resolve() in chain:
        loop = " -> ".join(str(p) for p in (*chain, parent_path.resolve()))
        raise ConfigError(f"{path}: extends makes a cycle: {loop}")
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends: no such file {parent_path}")
    inherited = read_extending_yaml(parent_path, rebase, chain)
    if rebase is not None:
        inherited = rebase(inherited, parent_path, path)
    return merge_mappings(inherited, raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RunConfig, *, saved_run: bool = False) -> Any:
    """Load a YAML config (or the defaults) and apply overrides; unknown keys raise :class:`ConfigError`.

    ``saved_run``: ``path`` is a run directory's config.yaml, read with :func:`with_legacy_defaults`.
    """
    data = (read_yaml(path) if saved_run else read_extending_yaml(path)) if path is not None else {}
    if saved_run:
        data = with_legacy_defaults(data)
    data = apply_overrides(data, overrides or [], where=str(path or "overrides"))
    where = str(path or "config")
    try:
        return build_config(model, data, where=where)
    except ConfigError as err:
        raise ConfigError(_blame_overrides(str(err), where, overrides or [])) from None


def with_legacy_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (as data) with :data:`LEGACY_DEFAULTS` filled in where its keys are absent (pure)."""
    if not isinstance(saved, dict):
        return saved  # not a config: build_config names the problem
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for (section, key), value in LEGACY_DEFAULTS.items():
        node = data.get(section)
        if isinstance(node, dict):
            node.setdefault(key, value)
    return data


def load_saved_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run directory's saved config.yaml as a :class:`RunConfig`, read as it was meant when it was written."""
    return load_config(path, overrides, saved_run=True)


def _blame_overrides(message: str, where: str, overrides: list[str]) -> str:
    """Name the command-line override, not the file, in each error line about a key an override set."""
    keys = {item.split("=", 1)[0].strip(): item for item in overrides if "=" in item}
    lines = []
    for line in message.splitlines():
        for key, item in keys.items():
            if line.startswith(f"{where}: {key}:") or f" '{key}'" in line:
                line = f"command-line override {item!r}" + line[len(where):]
                break
        lines.append(line)
    return "\n".join(lines)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (paths as strings), for saving into a run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
