"""Training a progressive, code-conditioned InfoGAN with WGAN-GP: :func:`train_synth` -> a synthesis run directory.

One step: a batch of real training images (drawn with ``train.class_sampling``, flipped and transposed at random
when ``train.augment = dihedral``, brought to the current stage's resolution and faded like the generator's output)
and as many generated images with the *same* labels (class, sex, site, age) plus fresh free codes and noise.

- Critic: ``D(fake) - D(real)`` + ``gp_weight`` x gradient penalty (on random interpolates, every ``gp_every``-th
  step, weighted ``gp_every`` times) + ``drift`` x ``D(real)^2`` + the Q head's loss on real images with their labels
  (``q_real``) and on generated ones with their codes (``q_fake``).
- Generator: ``-D(fake)`` + ``q_generator`` x the Q loss on its own images (InfoGAN's mutual-information term).
- EMA of the generator's weights (half-life ``ema_kimg`` thousand images), used for every sample a user sees.

Everything random comes from one seeded ``torch.Generator`` whose state is checkpointed with the networks, the
optimisers and the counters every ``checkpoint_kimg`` thousand images (atomically), so a killed run resumes where
its last checkpoint left off and ends with exactly the weights an uninterrupted run gets on the same CPU.
At the end of each stage the EMA generator is saved under ``stages/`` and a sample grid under ``samples/``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import logging
import math
import pickle
import time
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.config import dump_config
from lesionlab.core.io import atomic_write, atomic_write_json, atomic_write_text
from lesionlab.synth.codes import CodeLayout, Labels, encode, labels_from_table, q_loss, sampling_weights
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.networks import Critic, Generator, channel_plan, count_parameters, stage_resolutions
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
    read_info,
    save_state,
    stage_name,
    to_uint8,
)

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1
StepCallback = Callable[[int, dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------------ schedule


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


# ---------------------------------------------------------------------------------------------------- real data


@dataclass
class TrainingData:
    """The real training images at the final resolution and their labels."""

    images: np.ndarray  # uint8 [N, R, R, 3]
    table: pd.DataFrame  # training rows of the source table (index 0..N-1)
    labels: Labels
    weights: torch.Tensor  # per-row sampling probabilities
    info: dict[str, Any]


def prepare_training_data(cfg: SynthConfig, progress: bool = True) -> TrainingData:
    """Open the configured source, keep its training split and cache its images at the generator's resolution."""
    from lesionlab.data import cached_images, open_source

    source = open_source(cfg.data)
    table = source.table
    rows = np.flatnonzero(table["split"].astype(str).to_numpy() == "train")
    if len(rows) == 0:
        raise SynthError(f"data source {source.name!r} (split {cfg.data.split!r}) has no training rows")
    res = cfg.model.resolution
    all_images = cached_images(source, (res, res), cfg.data.resize, progress=progress)
    images = np.ascontiguousarray(all_images[rows])
    train = table.iloc[rows].reset_index(drop=True)
    labels = labels_from_table(train, cfg.codes.free)
    counts = np.bincount(labels.label.numpy(), minlength=NUM_CLASSES)
    weights = torch.as_tensor(sampling_weights(labels.label.numpy(), cfg.train.class_sampling))
    has_meta = bool(getattr(source, "has_metadata", True))
    info = {"source": source.name, "kind": getattr(source, "kind", ""), "synthetic": bool(source.synthetic),
            "fingerprint": source.fingerprint(), "split": getattr(source, "split_name", "") or str(cfg.data.split),
            "n_train": len(rows), "train_class_counts": dict(zip(CLASS_CODES, counts.tolist(), strict=True)),
            "has_metadata": has_meta, "resolution": res}
    return TrainingData(images, train, labels, weights, info)


def effective_layout(cfg: SynthConfig, has_metadata: bool) -> tuple[CodeLayout, list[str]]:
    """The code layout; without clinical metadata in the source the sex, site and age codes are switched off."""
    notes = []
    sex, site, age = cfg.codes.sex, cfg.codes.site, cfg.codes.age
    if not has_metadata and (sex or site or age):
        notes.append("the data source has no clinical metadata: sex, site and age codes are off")
        sex = site = age = False
    return CodeLayout(sex=sex, site=site, age=age, free=cfg.codes.free), notes


def real_batch(data: TrainingData, idx: torch.Tensor, augment: str, gen: torch.Generator) -> torch.Tensor:
    """Real images ``idx`` as float [-1, 1] NCHW at the final resolution, randomly flipped/transposed."""
    x = torch.from_numpy(data.images[idx.numpy()]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if augment == "dihedral":
        bits = torch.rand(3, len(x), generator=gen) < 0.5
        x = torch.where(bits[0].view(-1, 1, 1, 1), x.flip(3), x)
        x = torch.where(bits[1].view(-1, 1, 1, 1), x.flip(2), x)
        x = torch.where(bits[2].view(-1, 1, 1, 1), x.transpose(2, 3), x)
    return x.contiguous()


def at_stage(x: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Real images brought to a stage: box-downsampled, and during fade-in blended with the previous stage's
    (upsampled) version exactly as the generator blends its two outputs."""
    factor = x.shape[-1] // resolution
    if factor > 1:
        x = F.avg_pool2d(x, factor)
    if alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(low, x, alpha)
    return x


def diff_augment(x: torch.Tensor, ops: list[str], translation: float, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment: random colour (brightness, saturation, contrast) and translation, differentiable in ``x``.

    Applied with independent draws to every image the critic sees, real or generated, in both steps.
    """
    n = len(x)
    if not ops:
        return x
    dev = x.device
    if "color" in ops:
        x = x + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5).to(dev)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=gen) * 2).to(dev) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=gen) + 0.5).to(dev) + mean
    if "translation" in ops and translation > 0:
        h, w = x.shape[-2:]
        sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
        if sh or sw:
            dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=gen).to(dev)
            dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=gen).to(dev)
            gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
            gy = (gy.unsqueeze(0) + dy).clamp(-1, h)  # one step outside the image reads the zero padding
            gx = (gx.unsqueeze(0) + dx).clamp(-1, w)
            padded = F.pad(x, (1, 1, 1, 1))
            flat = padded.flatten(2)
            idx = ((gy + 1) * (w + 2) + (gx + 1)).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
            x = flat.gather(2, idx).view_as(x)
    return x


# ------------------------------------------------------------------------------------------------------ the loop


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


def ema_beta(cfg: SynthConfig, batch: int, images: int) -> float:
    half_life = cfg.train.ema_kimg * 1000.0
    if cfg.train.ema_rampup is not None:
        half_life = min(half_life, images * cfg.train.ema_rampup)
    return 0.0 if half_life <= 0 else 0.5 ** (batch / half_life)


def current_lr(cfg: SynthConfig, images: int) -> float:
    tc = cfg.train
    return tc.lr * tc.lr_decay ** (images / (tc.lr_decay_kimg * 1000.0))


def make_optimizers(cfg: SynthConfig, g: Generator, d: Critic) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    b = cfg.train.betas
    return (torch.optim.Adam(g.parameters(), lr=cfg.train.lr, betas=b, eps=1e-8),
            torch.optim.Adam(d.parameters(), lr=cfg.train.lr, betas=b, eps=1e-8))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SynthError(f"train.device={name!r} but CUDA is not available here")
    return device


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg_dict)
    for key in ("output_dir", "name", "evaluate"):
        out.pop(key, None)
    for key in ("device", "threads", "checkpoint_kimg", "log_every"):
        out.get("train", {}).pop(key, None)
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; tensors and plain data only (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise SynthError(f"{path}: checkpoint is truncated or corrupt ({err}); delete it to start the run over"
                         ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SynthError(f"{path}: not a lesionlab synthesis checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def run_state(run_dir: Path, cfg: SynthConfig) -> str:
    """``fresh``, ``resume`` or ``complete``; a checkpoint or finished run with another config is an error."""
    ckpt = run_dir / CHECKPOINT_FILE
    info_path = run_dir / INFO_FILE
    if info_path.is_file():
        info = read_info(run_dir)
        diff = _diff(_comparable(info.get("config", {})), _comparable(cfg.model_dump(mode="json")))
        complete = info.get("status") == "complete"
        if diff and (complete or ckpt.is_file()):
            raise SynthError(f"{info_path}: this run directory holds a run with another config "
                             f"({'; '.join(diff[:5])}); choose another --run-dir or delete it")
        if complete:
            return "complete"
    return "resume" if ckpt.is_file() else "fresh"


def _set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def train_synth(cfg: SynthConfig, run_dir: str | Path | None = None, progress: bool = True,
                callbacks: tuple[StepCallback, ...] = ()) -> Path:
    """Train (or resume, or find complete) the synthesis run of ``cfg``; returns its directory.

    ``callbacks`` are called as ``cb(step, row)`` after every step (tests use them to simulate a kill).
    """
    from tqdm.auto import tqdm

    from lesionlab import __version__

    run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
    state = run_state(run_dir, cfg)
    if state == "complete":
        log.info("%s already holds a complete synthesis run; nothing to do", run_dir)
        return run_dir
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    data = prepare_training_data(cfg, progress)
    layout, notes = effective_layout(cfg, data.info["has_metadata"])
    plan = stage_plan(cfg)
    total = plan[-1].end
    torch.manual_seed(tc.seed)
    g, d = build_networks(cfg, layout)
    g, d = g.to(device), d.to(device)
    if tc.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g_ema = copy.deepcopy(g).eval()
    _set_requires_grad(g_ema, False)
    gen = torch.Generator().manual_seed(tc.seed)
    images_seen, step, stage_done, history = 0, 0, [], []
    stage_seconds: dict[str, float] = {}
    opt_g, opt_d = make_optimizers(cfg, g, d)
    opt_stage = 0
    if state == "resume":
        ck = load_checkpoint(run_dir / CHECKPOINT_FILE)
        g.load_state_dict(ck["generator"])
        d.load_state_dict(ck["critic"])
        g_ema.load_state_dict(ck["generator_ema"])
        opt_stage = int(ck["opt_stage"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        gen.set_state(ck["rng"].cpu())
        images_seen, step = int(ck["images"]), int(ck["step"])
        stage_done = list(ck["stage_done"])
        history = list(ck["history"])
        stage_seconds = dict(ck["stage_seconds"])
        log.info("resuming %s at %d images (step %d)", run_dir, images_seen, step)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    (run_dir / "stages").mkdir(exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    codes_table = data.table[["image_id", "label", "dx", "age", "sex", "site"]]
    atomic_write_text(run_dir / CODES_FILE, codes_table.to_csv(index=False))
    base_info = {
        "kind": "lesionlab-synth", "lesionlab_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"), "layout": layout.to_dict(), "notes": notes, "data": data.info,
        "networks": {"generator_parameters": count_parameters(g), "critic_parameters": count_parameters(d),
                     "channels": channel_plan(cfg.model.resolution, cfg.model.fmap_base, cfg.model.fmap_max,
                                              cfg.model.fmap_min),
                     "routing": code_routing(cfg, layout)},
        "schedule": [{"resolution": s.resolution, "fade_images": s.fade, "stable_images": s.stable,
                      "batch": s.batch} for s in plan],
        "status": "training",
    }
    atomic_write_json(run_dir / INFO_FILE, {**base_info, "images": images_seen})
    grid_labels_ = grid_labels(data.table, layout, tc.grid_columns, tc.seed)
    grid_z = torch.randn(len(grid_labels_), cfg.model.z_dim,
                         generator=torch.Generator().manual_seed(tc.seed + 1)).to(device)
    grid_code = encode(layout, grid_labels_).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if tc.bf16 else nullcontext
    next_ckpt = (images_seen // int(tc.checkpoint_kimg * 1000) + 1) * int(tc.checkpoint_kimg * 1000)
    bar = tqdm(total=total, initial=images_seen, unit="img", desc="synth train", disable=not progress,
               dynamic_ncols=True)
    t_stage = time.perf_counter()
    last_row: dict[str, Any] = {}
    last_gp: float | None = None

    def checkpoint() -> None:
        save_checkpoint(run_dir / CHECKPOINT_FILE, {
            "generator": g.state_dict(), "critic": d.state_dict(), "generator_ema": g_ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "opt_stage": opt_stage, "rng": gen.get_state(),
            "images": images_seen, "step": step, "stage_done": stage_done, "history": history,
            "stage_seconds": stage_seconds, "config": cfg.model_dump(mode="json")})
        atomic_write_text(run_dir / HISTORY_FILE, pd.DataFrame(history).to_csv(index=False))

    while images_seen < total:
        st, alpha = stage_at(plan, images_seen)
        if st.index != opt_stage:  # ProGAN resets the optimiser moments when a new block arrives
            opt_g, opt_d = make_optimizers(cfg, g, d)
            opt_stage = st.index
        lr = current_lr(cfg, images_seen)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        b = st.batch
        idx = torch.multinomial(data.weights, b, replacement=True, generator=gen)
        real = at_stage(real_batch(data, idx, tc.augment, gen).to(device), st.resolution, alpha)
        real_labels = data.labels.index(idx).to(device)
        fake_labels = Labels(real_labels.label, real_labels.sex, real_labels.site, real_labels.age,
                             torch.ones(b, dtype=torch.bool, device=device),
                             (torch.rand(b, layout.free, generator=gen) * 2.0 - 1.0).to(device))
        code = encode(layout, fake_labels)
        z = torch.randn(b, cfg.model.z_dim, generator=gen).to(device)

        # critic step
        _set_requires_grad(d, True)
        with autocast():
            with torch.no_grad():
                fake = g(z, code, st.index, alpha)
            s_real, q_real = d(diff_augment(real, tc.diffaug, tc.diffaug_translation, gen), st.index, alpha,
                               real_labels.label)
            s_fake, q_fake = d(diff_augment(fake.float(), tc.diffaug, tc.diffaug_translation, gen), st.index, alpha,
                               real_labels.label)
        s_real, s_fake = s_real.float(), s_fake.float()
        w_dist = s_real.mean() - s_fake.mean()
        loss_d = -w_dist + tc.drift * s_real.pow(2).mean()
        lq_real, parts_real = (q_loss(layout, q_real, real_labels, tc.q_weights, fake=False)
                               if q_real is not None else (torch.zeros(()), {}))
        lq_fake, _ = (q_loss(layout, q_fake, fake_labels, tc.q_weights, fake=True)
                      if q_fake is not None else (torch.zeros(()), {}))
        loss_d = loss_d + tc.q_real * lq_real + tc.q_fake * lq_fake
        gp = None
        if tc.gp_weight > 0 and step % tc.gp_every == 0:
            gp = gradient_penalty(d, diff_augment(real, tc.diffaug, tc.diffaug_translation, gen),
                                  diff_augment(fake.float(), tc.diffaug, tc.diffaug_translation, gen), st.index, alpha,
                                  gen, real_labels.label)
            last_gp = float(gp.detach())
            loss_d = loss_d + tc.gp_weight * tc.gp_every * gp
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # generator step
        _set_requires_grad(d, False)
        z2 = torch.randn(b, cfg.model.z_dim, generator=gen).to(device)
        with autocast():
            fake2 = g(z2, code, st.index, alpha)
            s_gen, q_gen = d(diff_augment(fake2.float(), tc.diffaug, tc.diffaug_translation, gen), st.index, alpha,
                             real_labels.label)
        loss_g = -s_gen.float().mean()
        lq_gen, parts_gen = (q_loss(layout, q_gen, fake_labels, tc.q_weights, fake=True)
                             if q_gen is not None else (torch.zeros(()), {}))
        loss_g = loss_g + tc.q_generator * lq_gen
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        images_seen += b
        step += 1
        ema_update(g_ema, g, ema_beta(cfg, b, images_seen))
        if not all(math.isfinite(float(v)) for v in (loss_d.detach(), loss_g.detach())):
            raise SynthError(f"training diverged at step {step} ({images_seen} images, {st.resolution} px): loss is "
                             "not finite; lower train.lr or raise train.gp_weight, then start a new run")
        row = {"step": step, "images": images_seen, "resolution": st.resolution, "alpha": round(alpha, 4),
               "lr": lr, "w_dist": float(w_dist.detach()), "gp": last_gp,
               "loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()),
               "q_real": float(lq_real.detach()), "q_fake": float(lq_fake.detach()), "q_gen": float(lq_gen.detach()),
               **{f"q_real_{k}": v for k, v in parts_real.items()}, **{f"q_gen_{k}": v for k, v in parts_gen.items()}}
        if step % tc.log_every == 0 or images_seen >= st.end:
            history.append(row)
        bar.update(b)
        last_row = row
        if progress and (step % 5 == 0):
            bar.set_postfix(res=st.resolution, a=f"{alpha:.2f}", W=f"{row['w_dist']:.3f}", Qr=f"{row['q_real']:.2f}",
                            Qg=f"{row['q_gen']:.2f}", refresh=False)

        if images_seen >= st.end and stage_name(st.resolution) not in stage_done:
            stage_seconds[stage_name(st.resolution)] = stage_seconds.get(stage_name(st.resolution), 0.0) + (
                time.perf_counter() - t_stage)
            t_stage = time.perf_counter()
            save_state(run_dir / "stages" / f"{stage_name(st.resolution)}.safetensors", g_ema.state_dict())
            with torch.no_grad():
                imgs = to_uint8(g_ema(grid_z, grid_code, st.index, 1.0))
            grid_image(imgs, grid_labels_, tc.grid_columns, f"{st.resolution} px, {images_seen:,} images").save(
                run_dir / "samples" / f"{stage_name(st.resolution)}.png")
            stage_done.append(stage_name(st.resolution))
            message = (f"stage {st.resolution} px done at {images_seen:,} images "
                       f"({stage_seconds[stage_name(st.resolution)]:.0f} s): W {row['w_dist']:.3f}, "
                       f"Q real {row['q_real']:.3f}, Q gen {row['q_gen']:.3f}")
            if progress:
                bar.write(message)
            else:
                log.info("%s", message)
            checkpoint()
            next_ckpt = images_seen + int(tc.checkpoint_kimg * 1000)
        elif images_seen >= next_ckpt:
            stage_seconds[stage_name(st.resolution)] = stage_seconds.get(stage_name(st.resolution), 0.0) + (
                time.perf_counter() - t_stage)
            t_stage = time.perf_counter()
            checkpoint()
            next_ckpt = images_seen + int(tc.checkpoint_kimg * 1000)
        for cb in callbacks:
            cb(step, row)
    bar.close()
    save_state(run_dir / GENERATOR_FILE, g_ema.state_dict())
    save_state(run_dir / CRITIC_FILE, d.state_dict())
    atomic_write_text(run_dir / HISTORY_FILE, pd.DataFrame(history).to_csv(index=False))
    atomic_write_json(run_dir / INFO_FILE, {
        **base_info, "status": "complete", "images": images_seen, "steps": step, "stage_seconds": stage_seconds,
        "seconds": float(sum(stage_seconds.values())), "final": last_row,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return run_dir
