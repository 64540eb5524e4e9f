"""The progressive schedule in images shown: stages with their fade-in and stable lengths and batch sizes, the fade-in
weight, the learning rate and the EMA's decay at any point (pure functions of the config)."""

from __future__ import annotations

from dataclasses import dataclass

from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.networks import stage_resolutions


@dataclass(frozen=True)
class Stage:
    """One stage of the progressive schedule, in images shown."""

    index: int
    resolution: int
    fade: int  # images while the new block fades in (0 for the first stage)
    stable: int  # images at full weight
    batch: int
    start: int  # images shown before this stage

    @property
    def end(self) -> int:
        return self.start + self.fade + self.stable


def stage_plan(cfg: SynthConfig) -> list[Stage]:
    """The stages of a config: resolution, fade and stable lengths (images), batch size, cumulative start."""
    fades, stables, batches = cfg.per_stage("fade_kimg"), cfg.per_stage("stable_kimg"), cfg.per_stage("batch_size")
    out, start = [], 0
    for i, res in enumerate(stage_resolutions(cfg.model.resolution)):
        fade = 0 if i == 0 else round(float(fades[i]) * 1000)
        stable = round(float(stables[i]) * 1000)
        if fade + stable <= 0:
            raise SynthError(f"stage {res} px shows no images (fade_kimg + stable_kimg = 0)")
        if int(batches[i]) < 2:
            raise SynthError(f"train.batch_size for {res} px is {batches[i]}; the critic needs at least 2")
        out.append(Stage(i, res, fade, stable, int(batches[i]), start))
        start += fade + stable
    return out


def stage_at(plan: list[Stage], images: int) -> tuple[Stage, float]:
    """The stage and fade-in weight ``alpha`` after ``images`` images."""
    for st in plan:
        if images < st.end:
            alpha = 1.0 if st.fade == 0 else min(1.0, (images - st.start) / st.fade)
            return st, float(alpha)
    return plan[-1], 1.0


def ema_beta(cfg: SynthConfig, batch: int, images: int) -> float:
    half_life = cfg.train.ema_kimg * 1000.0
    if cfg.train.ema_rampup is not None:
        half_life = min(half_life, images * cfg.train.ema_rampup)
    return 0.0 if half_life <= 0 else 0.5 ** (batch / half_life)


def current_lr(cfg: SynthConfig, images: int) -> float:
    tc = cfg.train
    return tc.lr * tc.lr_decay ** (images / (tc.lr_decay_kimg * 1000.0))



__all__ = ["Stage", "current_lr", "ema_beta", "stage_at", "stage_plan"]
