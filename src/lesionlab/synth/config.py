"""Typed configuration of a synthesis run: data, codes, networks, training schedule, evaluation.

Same conventions as :mod:`lesionlab.config`: pydantic models, YAML files under ``configs/synth/``, ``key=value``
overrides, unknown keys are errors with a near-match suggestion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lesionlab.config import ConfigError, DataConfig, Strict, apply_overrides, build_config, read_yaml
from lesionlab.synth.networks import stage_resolutions

CODE_PARTS: tuple[str, ...] = ("class", "sex", "site", "age", "free")
SYNTH_SECTIONS: tuple[str, ...] = ("name", "output_dir", "data", "codes", "model", "train", "evaluate")


class CodesConfig(Strict):
    """The structured code: which supervised parts, how many free continuous codes, and where each block reads them.

    ``class`` is always on. ``routing``: ``all`` feeds every part to every generator block; ``split`` gives the
    coarse blocks (4-8 px) the patient codes (class, age, sex, site) and the finer blocks the class and the free codes,
    as the study split its code over the blocks; a mapping ``{resolution: [parts]}`` sets it per block.
    """

    sex: bool = True
    site: bool = True
    age: bool = True
    free: int = Field(2, ge=0, le=16)
    routing: Literal["all", "split"] | dict[int, list[str]] = "all"

    @field_validator("routing")
    @classmethod
    def _routing(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for res, parts in v.items():
                bad = [p for p in parts if p not in CODE_PARTS]
                if bad:
                    raise ValueError(f"codes.routing[{res}]: unknown code part(s) {bad}; parts are "
                                     f"{', '.join(CODE_PARTS)}")
        return v


class GanModelConfig(Strict):
    """Network sizes. Feature maps per stage: ``min(fmap_max, fmap_base / resolution)``, at least ``fmap_min``."""

    resolution: int = 32
    z_dim: int = Field(64, ge=1)
    fmap_base: int = Field(2048, ge=8)
    fmap_max: int = Field(128, ge=8)
    fmap_min: int = Field(8, ge=1)
    q_hidden: int = Field(128, ge=1)
    mbstd_group: int = Field(4, ge=1)
    projection: bool = False  # class-conditional critic by projection, beside the Q head (see networks.Critic)
    # How the generator's blocks double their feature maps: ProGAN's nearest neighbour, or bilinear (smoother, without
    # nearest neighbour's block pattern). The fade-in path stays nearest neighbour, as the real images' fade does.
    upsample: Literal["nearest", "bilinear"] = "nearest"

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        stage_resolutions(v)  # raises for non powers of two
        return v


class GanTrainConfig(Strict):
    """The progressive schedule, the losses and the optimiser.

    Per-stage lists have one entry per stage (4, 8, ... px); a single number applies to every stage. A stage shows
    ``fade_kimg`` thousand real images while its new block fades in (ignored for the first stage), then
    ``stable_kimg`` thousand at full weight.
    """

    seed: int = 0
    fade_kimg: float | list[float] = 10.0
    stable_kimg: float | list[float] = 10.0
    batch_size: int | list[int] = 64
    lr: float = Field(0.001, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    lr_decay: float = Field(1.0, gt=0, le=1.0)  # lr *= lr_decay every lr_decay_kimg thousand images
    lr_decay_kimg: float = Field(10.0, gt=0)
    gp_weight: float = Field(10.0, ge=0)
    gp_every: int = Field(1, ge=1)  # lazy penalty: every n-th critic step, weighted n times (1 = every step)
    drift: float = Field(0.001, ge=0)
    q_real: float = Field(1.0, ge=0)  # critic: Q loss on real images with their labels
    q_fake: float = Field(1.0, ge=0)  # critic: Q loss on generated images with their codes
    q_generator: float = Field(1.0, ge=0)  # generator: Q loss on its own images (InfoGAN's mutual-information term)
    q_weights: dict[str, float] = Field(default_factory=lambda: {p: 1.0 for p in CODE_PARTS})
    # Mode seeking (Mao et al. 2019): the generator's batch holds pairs with the same codes and different noise, and
    # its loss gains ``mode_seeking / (mean |G(z1, c) - G(z2, c)| / mean |z1 - z2| + 1e-5)``, so that the noise must
    # change the image: a generator steered by strong codes otherwise learns to ignore z (0: off).
    mode_seeking: float = Field(0.0, ge=0)
    class_sampling: Literal["natural", "sqrt", "balanced"] = "sqrt"
    augment: Literal["none", "dihedral"] = "dihedral"
    # Differentiable augmentation (Zhao et al. 2020) of real and generated images alike, before the critic: the
    # critic overfits less on a few thousand images while the generator still learns the unaugmented images.
    diffaug: list[Literal["translation", "color"]] = Field(default_factory=list)
    diffaug_translation: float = Field(0.125, ge=0, le=0.5)  # largest shift, as a fraction of the image size
    ema_kimg: float = Field(10.0, ge=0)  # half-life of the generator's EMA in thousands of images (0: no EMA)
    ema_rampup: float | None = Field(0.05, gt=0)  # half-life at most this fraction of the images shown so far
    checkpoint_kimg: float = Field(5.0, gt=0)
    log_every: int = Field(20, ge=1)  # steps between history rows
    grid_columns: int = Field(8, ge=1)
    device: str = "auto"
    bf16: bool = False  # CPU/CUDA autocast for the non-penalty passes
    channels_last: bool = False
    threads: int | None = Field(None, ge=1)  # torch threads (None: torch's default)

    @field_validator("q_weights")
    @classmethod
    def _q_weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in CODE_PARTS]
        if bad:
            raise ValueError(f"train.q_weights: unknown code part(s) {bad}; parts are {', '.join(CODE_PARTS)}")
        return {**{p: 1.0 for p in CODE_PARTS}, **v}

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"train.betas must be in [0, 1), got {v}")
        return (float(v[0]), float(v[1]))


class UsefulnessConfig(Strict):
    """Train-on-synthetic and oversampling runs: which arms, with which classifier preset."""

    preset: Path = Path("configs/cpu-lite0-64.yaml")
    arms: list[Literal["real", "real_weighted", "real_oversampled", "synthetic"]] = Field(
        default_factory=lambda: ["real", "real_weighted", "real_oversampled", "synthetic"])
    oversample_to: float = Field(0.15, gt=0, le=1.0)  # minority classes topped up to this fraction of the largest
    # extra key=value overrides of the preset (e.g. train.epochs=2 for a quick look)
    overrides: list[str] = Field(default_factory=list)


class SynthEvalConfig(Strict):
    """What ``lesionlab synth evaluate`` measures, and on how many samples."""

    n_per_class: int = Field(200, ge=2)
    feature_size: int = Field(224, ge=32)  # Lite0 input size the images are upsampled to
    pr_k: int = Field(3, ge=1)  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
    pixelate: int = Field(4, ge=2)  # degraded-real reference: downsample by this factor, upsample back (nearest)
    closest_pairs: int = Field(12, ge=1)
    bootstrap: int = Field(1000, ge=100)
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    usefulness: UsefulnessConfig = UsefulnessConfig()


class SynthConfig(Strict):
    """Everything one synthesis run needs; saved resolved inside the run directory."""

    name: str = "synth"
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    codes: CodesConfig = CodesConfig()
    model: GanModelConfig = GanModelConfig()
    train: GanTrainConfig = GanTrainConfig()
    evaluate: SynthEvalConfig = SynthEvalConfig()

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        n = len(stage_resolutions(self.model.resolution))
        for key in ("fade_kimg", "stable_kimg", "batch_size"):
            value = getattr(self.train, key)
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"train.{key} has {len(value)} entries; resolution {self.model.resolution} has {n} "
                                 f"stages ({', '.join(map(str, stage_resolutions(self.model.resolution)))} px)")
        res = self.model.resolution
        if "image_size" in self.data.model_fields_set:
            if tuple(self.data.image_size) != (res, res):
                raise ValueError(f"data.image_size {list(self.data.image_size)} differs from model.resolution {res}; "
                                 "the generator trains at model.resolution (leave data.image_size out)")
        else:
            self.data.image_size = (res, res)
        if isinstance(self.codes.routing, dict):
            known = set(stage_resolutions(res))
            extra = sorted(set(self.codes.routing) - known)
            if extra:
                raise ValueError(f"codes.routing names resolutions {extra}; the stages are {sorted(known)}")
        return self

    def per_stage(self, key: str) -> list[Any]:
        """A train setting expanded to one value per stage."""
        value = getattr(self.train, key)
        n = len(stage_resolutions(self.model.resolution))
        return list(value) if isinstance(value, list) else [value] * n


def load_synth_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SynthConfig:
    """Load ``configs/synth/*.yaml`` (or the defaults) with ``key=value`` overrides; unknown keys are errors."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [], where=str(path or "overrides"))
    return build_config(SynthConfig, data, where=str(path or "config"))


__all__ = ["CODE_PARTS", "SYNTH_SECTIONS", "CodesConfig", "ConfigError", "GanModelConfig", "GanTrainConfig",
           "SynthConfig", "SynthEvalConfig", "UsefulnessConfig", "load_synth_config"]
