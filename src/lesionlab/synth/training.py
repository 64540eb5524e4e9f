"""Training a progressive, code-conditioned InfoGAN with WGAN-GP: :func:`train_synth` -> a synthesis run directory.

One step: a batch of real training images (drawn with ``train.class_sampling``, flipped and transposed at random
when ``train.augment = dihedral``, brought to the current stage's resolution and faded like the generator's output)
and as many generated images with the *same* labels (class, sex, site, age) plus fresh free codes and noise.

- Critic: ``D(fake) - D(real)`` + ``gp_weight`` x gradient penalty (on random interpolates, every ``gp_every``-th
  step, weighted ``gp_every`` times) + ``drift`` x ``D(real)^2`` + the Q head's loss on real images with their labels
  (``q_real``) and on generated ones with their codes (``q_fake``).
- Generator: ``-D(fake)`` + ``q_generator`` x the Q loss on its own images (InfoGAN's mutual-information term),
  + ``mode_seeking`` x the mode-seeking term (:func:`mode_seeking_pairs`, :func:`mode_seeking_term`) when set.
- EMA of the generator's weights (half-life ``ema_kimg`` thousand images), used for every sample a user sees.

Everything random comes from one seeded ``torch.Generator`` whose state is checkpointed with the networks, the
optimisers and the counters every ``checkpoint_kimg`` thousand images (atomically), so a killed run resumes where
its last checkpoint left off and ends with exactly the weights an uninterrupted run gets on the same CPU.
At the end of each stage the EMA generator is saved under ``stages/`` and a sample grid under ``samples/``.
The schedule lives in :mod:`~lesionlab.synth.schedule`, the real batches in :mod:`~lesionlab.synth.batches`, the
checkpoint in :mod:`~lesionlab.synth.checkpoint`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lesionlab.config import dump_config
from lesionlab.core.io import atomic_write_json, atomic_write_text
from lesionlab.core.manifest import file_manifest
from lesionlab.synth.batches import (
    TrainingData,
    at_stage,
    diff_augment,
    effective_layout,
    prepare_training_data,
    real_batch,
)
from lesionlab.synth.checkpoint import load_checkpoint, run_state, save_checkpoint
from lesionlab.synth.codes import CodeLayout, Labels, encode, q_loss
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.networks import Critic, Generator, channel_plan, count_parameters
from lesionlab.synth.run import (
    CHECKPOINT_FILE,
    CODES_FILE,
    CONFIG_FILE,
    CRITIC_FILE,
    GENERATOR_FILE,
    HISTORY_FILE,
    INFO_FILE,
    build_networks,
    code_routing,
    grid_image,
    grid_labels,
    save_state,
    stage_name,
    to_uint8,
)
from lesionlab.synth.schedule import Stage, current_lr, ema_beta, stage_at, stage_plan
from lesionlab.train.loop import resolve_device
from lesionlab.train.precision import cpu_has_native_bf16, no_native_bf16

log = logging.getLogger(__name__)
StepCallback = Callable[[int, dict[str, Any]], None]


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, stage: int, alpha: float,
                     gen: torch.Generator, label: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: mean of ``(|grad D(x_hat)| - 1)^2`` on random interpolates of real and generated images (which share
    their labels, so a projection critic is penalised at the interpolates' class)."""
    eps = torch.rand(len(real), 1, 1, 1, generator=gen).to(real.device)
    x_hat = torch.lerp(fake.float(), real.float(), eps).requires_grad_(True)
    score, _ = critic(x_hat, stage, alpha, label)
    (grad,) = torch.autograd.grad(score.float().sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(p, 1.0 - beta)


def make_optimizers(cfg: SynthConfig, g: Generator, d: Critic) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    b = cfg.train.betas
    return (torch.optim.Adam(g.parameters(), lr=cfg.train.lr, betas=b, eps=1e-8),
            torch.optim.Adam(d.parameters(), lr=cfg.train.lr, betas=b, eps=1e-8))


def _set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- training state


@dataclass
class Trainer:
    """Everything a training step reads and changes; :meth:`state` is what the checkpoint holds."""

    cfg: SynthConfig
    run_dir: Path
    data: TrainingData
    layout: CodeLayout
    plan: list[Stage]
    device: torch.device
    g: Generator
    d: Critic
    g_ema: Generator
    gen: torch.Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    opt_stage: int = 0
    images: int = 0
    step: int = 0
    stage_done: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    last_gp: float | None = None
    notes: list[str] = field(default_factory=list)
    bf16: bool = False  # train.bf16 as honoured here: on a CPU only where it computes bf16 natively

    def state(self) -> dict[str, Any]:
        return {"generator": self.g.state_dict(), "critic": self.d.state_dict(),
                "generator_ema": self.g_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "opt_stage": self.opt_stage,
                "rng": self.gen.get_state(), "images": self.images, "step": self.step, "stage_done": self.stage_done,
                "history": self.history, "stage_seconds": self.stage_seconds,
                "config": self.cfg.model_dump(mode="json")}

    def load(self, ck: dict[str, Any]) -> None:
        self.g.load_state_dict(ck["generator"])
        self.d.load_state_dict(ck["critic"])
        self.g_ema.load_state_dict(ck["generator_ema"])
        self.opt_stage = int(ck["opt_stage"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.gen.set_state(ck["rng"].cpu())
        self.images, self.step = int(ck["images"]), int(ck["step"])
        self.stage_done = list(ck["stage_done"])
        self.history = list(ck["history"])
        self.stage_seconds = dict(ck["stage_seconds"])

    def checkpoint(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state())
        atomic_write_text(self.run_dir / HISTORY_FILE, pd.DataFrame(self.history).to_csv(index=False))

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """DiffAugment of anything the critic scores (identity unless ``train.diffaug`` names operations)."""
        tc = self.cfg.train
        return diff_augment(x, tc.diffaug, tc.diffaug_translation, self.gen)


def build_trainer(cfg: SynthConfig, run_dir: Path, resume: bool, progress: bool) -> Trainer:
    """Data, networks, EMA copy, optimisers and RNG of a run, loaded from its checkpoint when resuming."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device, SynthError)
    data = prepare_training_data(cfg, progress)
    layout, notes = effective_layout(cfg, data.info["has_metadata"])
    torch.manual_seed(tc.seed)
    g, d = build_networks(cfg, layout)
    g, d = g.to(device), d.to(device)
    if tc.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g_ema = copy.deepcopy(g).eval()
    _set_requires_grad(g_ema, False)
    opt_g, opt_d = make_optimizers(cfg, g, d)
    bf16 = tc.bf16 and (device.type != "cpu" or cpu_has_native_bf16())
    if tc.bf16 and not bf16:
        message = no_native_bf16("train.bf16=true", "train.bf16=false")
        log.warning(message)
        notes = [*notes, message]
    tr = Trainer(cfg, run_dir, data, layout, stage_plan(cfg), device, g, d, g_ema,
                 torch.Generator().manual_seed(tc.seed), opt_g, opt_d, notes=notes, bf16=bf16)
    if resume:
        tr.load(load_checkpoint(run_dir / CHECKPOINT_FILE))
        log.info("resuming %s at %d images (step %d)", run_dir, tr.images, tr.step)
    return tr


def run_info(tr: Trainer) -> dict[str, Any]:
    """The parts of ``synth.json`` known before training starts."""
    from lesionlab.core.version import __version__

    cfg = tr.cfg
    return {
        "kind": "lesionlab-synth", "lesionlab_version": __version__, "created": _now(),
        "config": cfg.model_dump(mode="json"), "layout": tr.layout.to_dict(), "notes": tr.notes, "data": tr.data.info,
        "networks": {"generator_parameters": count_parameters(tr.g), "critic_parameters": count_parameters(tr.d),
                     "channels": channel_plan(cfg.model.resolution, cfg.model.fmap_base, cfg.model.fmap_max,
                                              cfg.model.fmap_min),
                     "critic_channels": tr.d.channels, "routing": code_routing(cfg, tr.layout)},
        "schedule": [{"resolution": s.resolution, "fade_images": s.fade, "stable_images": s.stable,
                      "batch": s.batch} for s in tr.plan],
        "status": "training",
    }


# ----------------------------------------------------------------------------------------------------- one step


def critic_step(tr: Trainer, st: Stage, alpha: float, real: torch.Tensor, real_labels: Labels,
                fake_labels: Labels, code: torch.Tensor) -> dict[str, Any]:
    """One critic update: Wasserstein loss, drift, Q losses on real and generated images, lazy gradient penalty."""
    tc, d = tr.cfg.train, tr.d
    z = torch.randn(len(real), tr.cfg.model.z_dim, generator=tr.gen).to(tr.device)
    _set_requires_grad(d, True)
    with tr.autocast():
        with torch.no_grad():
            fake = tr.g(z, code, st.index, alpha).float()
        s_real, q_real = d(tr.augment(real), st.index, alpha, real_labels.label)
        s_fake, q_fake = d(tr.augment(fake), st.index, alpha, real_labels.label)
    s_real, s_fake = s_real.float(), s_fake.float()
    w_dist = s_real.mean() - s_fake.mean()
    loss = -w_dist + tc.drift * s_real.pow(2).mean()
    lq_real, parts_real = (q_loss(tr.layout, q_real, real_labels, tc.q_weights, fake=False)
                           if q_real is not None else (torch.zeros(()), {}))
    lq_fake, _ = (q_loss(tr.layout, q_fake, fake_labels, tc.q_weights, fake=True)
                  if q_fake is not None else (torch.zeros(()), {}))
    loss = loss + tc.q_real * lq_real + tc.q_fake * lq_fake
    if tc.gp_weight > 0 and tr.step % tc.gp_every == 0:
        gp = gradient_penalty(d, tr.augment(real), tr.augment(fake), st.index, alpha, tr.gen, real_labels.label)
        tr.last_gp = float(gp.detach())
        loss = loss + tc.gp_weight * tc.gp_every * gp
    tr.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt_d.step()
    return {"w_dist": float(w_dist.detach()), "gp": tr.last_gp, "loss_d": float(loss.detach()),
            "q_real": float(lq_real.detach()), "q_fake": float(lq_fake.detach()),
            **{f"q_real_{k}": v for k, v in parts_real.items()}}


def mode_seeking_pairs(n: int) -> torch.Tensor:
    """Row order that makes rows ``i`` and ``i + n // 2`` share their codes (an odd last row keeps its own)."""
    half = n // 2
    order = torch.cat([torch.arange(half), torch.arange(half)])
    return torch.cat([order, torch.arange(2 * half, n)])


def mode_seeking_term(fake: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSGAN's ``1 / (ratio + 1e-5)`` and the ratio ``mean |x1 - x2| / mean |z1 - z2|`` over the batch's pairs."""
    half = len(fake) // 2
    ratio = ((fake[:half] - fake[half:2 * half]).abs().mean()
             / (z[:half] - z[half:2 * half]).abs().mean())
    return 1.0 / (ratio + 1e-5), ratio


def generator_step(tr: Trainer, st: Stage, alpha: float, fake_labels: Labels, code: torch.Tensor) -> dict[str, Any]:
    """One generator update: ``-D(G(z, c))``, the Q loss on its own images and, when set, the mode-seeking term."""
    tc = tr.cfg.train
    _set_requires_grad(tr.d, False)
    seek = tc.mode_seeking > 0 and len(code) >= 2
    if seek:  # pairs with shared codes: the same code distribution, each code twice
        order = mode_seeking_pairs(len(code)).to(code.device)
        code, fake_labels = code.index_select(0, order), fake_labels.index(order)
    z = torch.randn(len(code), tr.cfg.model.z_dim, generator=tr.gen).to(tr.device)
    with tr.autocast():
        fake = tr.g(z, code, st.index, alpha)
        s_gen, q_gen = tr.d(tr.augment(fake.float()), st.index, alpha, fake_labels.label)
    loss = -s_gen.float().mean()
    lq_gen, parts_gen = (q_loss(tr.layout, q_gen, fake_labels, tc.q_weights, fake=True)
                         if q_gen is not None else (torch.zeros(()), {}))
    loss = loss + tc.q_generator * lq_gen
    extra: dict[str, Any] = {}
    if seek:
        term, ratio = mode_seeking_term(fake.float(), z)
        loss = loss + tc.mode_seeking * term
        extra["ms_ratio"] = float(ratio.detach())
    tr.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt_g.step()
    return {"loss_g": float(loss.detach()), "q_gen": float(lq_gen.detach()), **extra,
            **{f"q_gen_{k}": v for k, v in parts_gen.items()}}


def train_step(tr: Trainer) -> tuple[Stage, dict[str, Any]]:
    """One critic and one generator update on one batch; returns the stage and the step's history row."""
    st, alpha = stage_at(tr.plan, tr.images)
    if st.index != tr.opt_stage:  # ProGAN resets the optimiser moments when a new block arrives
        tr.opt_g, tr.opt_d = make_optimizers(tr.cfg, tr.g, tr.d)
        tr.opt_stage = st.index
    lr = current_lr(tr.cfg, tr.images)
    for opt in (tr.opt_g, tr.opt_d):
        for group in opt.param_groups:
            group["lr"] = lr
    b, dev = st.batch, tr.device
    idx = torch.multinomial(tr.data.weights, b, replacement=True, generator=tr.gen)
    real = at_stage(real_batch(tr.data, idx, tr.cfg.train.augment, tr.gen).to(dev), st.resolution, alpha)
    real_labels = tr.data.labels.index(idx).to(dev)
    free = (torch.rand(b, tr.layout.free, generator=tr.gen) * 2.0 - 1.0).to(dev)
    fake_labels = Labels(real_labels.label, real_labels.sex, real_labels.site, real_labels.age,
                         torch.ones(b, dtype=torch.bool, device=dev), free)  # a generated image's age is its code
    code = encode(tr.layout, fake_labels)
    losses = critic_step(tr, st, alpha, real, real_labels, fake_labels, code)
    losses.update(generator_step(tr, st, alpha, fake_labels, code))
    tr.images += b
    tr.step += 1
    ema_update(tr.g_ema, tr.g, ema_beta(tr.cfg, b, tr.images))
    if not all(math.isfinite(float(losses[k])) for k in ("loss_d", "loss_g")):
        raise SynthError(f"training diverged at step {tr.step} ({tr.images} images, {st.resolution} px): loss is "
                         "not finite; lower train.lr or raise train.gp_weight, then start a new run")
    row = {"step": tr.step, "images": tr.images, "resolution": st.resolution, "alpha": round(alpha, 4), "lr": lr,
           **losses}
    if tr.step % tr.cfg.train.log_every == 0 or tr.images >= st.end:
        tr.history.append(row)
    return st, row


# ------------------------------------------------------------------------------------------------------- the loop


def finish_stage(tr: Trainer, st: Stage, row: dict[str, Any], grid: tuple[torch.Tensor, torch.Tensor, Labels]
                 ) -> str:
    """Save the stage's EMA generator and sample grid, checkpoint; returns the line to log."""
    name = stage_name(st.resolution)
    save_state(tr.run_dir / "stages" / f"{name}.safetensors", tr.g_ema.state_dict())
    z, code, labels = grid
    with torch.no_grad():
        imgs = to_uint8(tr.g_ema(z, code, st.index, 1.0))
    grid_image(imgs, labels, tr.cfg.train.grid_columns, f"{st.resolution} px, {tr.images:,} images").save(
        tr.run_dir / "samples" / f"{name}.png")
    tr.stage_done.append(name)
    tr.checkpoint()
    return (f"stage {st.resolution} px done at {tr.images:,} images ({tr.stage_seconds[name]:.0f} s): "
            f"W {row['w_dist']:.3f}, Q real {row['q_real']:.3f}, Q gen {row['q_gen']:.3f}")


def _prepare_run_dir(tr: Trainer) -> dict[str, Any]:
    run_dir = tr.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    (run_dir / "stages").mkdir(exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(tr.cfg))
    codes_table = tr.data.table[["image_id", "label", "dx", "age", "sex", "site"]]
    atomic_write_text(run_dir / CODES_FILE, codes_table.to_csv(index=False))
    base = run_info(tr)
    atomic_write_json(run_dir / INFO_FILE, {**base, "images": tr.images})
    return base


def _grid(tr: Trainer) -> tuple[torch.Tensor, torch.Tensor, Labels]:
    """Fixed noise and codes of the per-stage sample grids."""
    tc = tr.cfg.train
    labels = grid_labels(tr.data.table, tr.layout, tc.grid_columns, tc.seed)
    z = torch.randn(len(labels), tr.cfg.model.z_dim, generator=torch.Generator().manual_seed(tc.seed + 1))
    return z.to(tr.device), encode(tr.layout, labels).to(tr.device), labels


def train_synth(cfg: SynthConfig, run_dir: str | Path | None = None, progress: bool = True,
                callbacks: tuple[StepCallback, ...] = ()) -> Path:
    """Train (or resume, or find complete) the synthesis run of ``cfg``; returns its directory.

    ``callbacks`` are called as ``cb(step, row)`` after every step (tests use them to simulate a kill).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
    state = run_state(run_dir, cfg)
    if state == "complete":
        log.info("%s already holds a complete synthesis run; nothing to do", run_dir)
        return run_dir
    tr = build_trainer(cfg, run_dir, state == "resume", progress)
    base = _prepare_run_dir(tr)
    grid = _grid(tr)
    every = int(cfg.train.checkpoint_kimg * 1000)
    next_ckpt = (tr.images // every + 1) * every
    total = tr.plan[-1].end
    bar = tqdm(total=total, initial=tr.images, unit="img", desc="synth train", disable=not progress,
               dynamic_ncols=True)
    t_stage, row = time.perf_counter(), {}
    while tr.images < total:
        st, row = train_step(tr)
        bar.update(st.batch)
        if progress and tr.step % 5 == 0:
            bar.set_postfix(res=st.resolution, W=f"{row['w_dist']:.3f}", Qr=f"{row['q_real']:.2f}",
                            Qg=f"{row['q_gen']:.2f}", refresh=False)
        stage_over = tr.images >= st.end and stage_name(st.resolution) not in tr.stage_done
        if stage_over or tr.images >= next_ckpt:
            name = stage_name(st.resolution)
            tr.stage_seconds[name] = tr.stage_seconds.get(name, 0.0) + time.perf_counter() - t_stage
            t_stage = time.perf_counter()
            if stage_over:
                message = finish_stage(tr, st, row, grid)
                if progress:
                    bar.write(message)
                else:
                    log.info("%s", message)
            else:
                tr.checkpoint()
            next_ckpt = tr.images + every
        for cb in callbacks:
            cb(tr.step, row)
    bar.close()
    save_state(run_dir / GENERATOR_FILE, tr.g_ema.state_dict())
    save_state(run_dir / CRITIC_FILE, tr.d.state_dict())
    atomic_write_text(run_dir / HISTORY_FILE, pd.DataFrame(tr.history).to_csv(index=False))
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    atomic_write_json(run_dir / INFO_FILE, {
        **base, "status": "complete", "images": tr.images, "steps": tr.step, "stage_seconds": tr.stage_seconds,
        "seconds": float(sum(tr.stage_seconds.values())), "final": row, "finished": _now(),
        "files": file_manifest(run_dir, exclude=[INFO_FILE])})
    return run_dir


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["Trainer", "build_trainer", "critic_step", "generator_step", "gradient_penalty", "mode_seeking_pairs",
           "mode_seeking_term", "train_step", "train_synth"]
