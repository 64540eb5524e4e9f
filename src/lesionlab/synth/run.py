"""The synthesis run directory: what training writes, and :func:`load_synth_run` to generate from it.

A run directory holds::

    synth.json                 status, resolved config, code layout, networks, schedule, data, timings
    config.yaml                the resolved config (``lesionlab synth train --config`` can re-run it)
    generator.safetensors      EMA generator weights (every sample a user sees comes from these)
    critic.safetensors         critic + Q head (for the report's "what the critic's own Q head believes")
    codes.csv                  the training rows' class, sex, site, age: codes are drawn from their joint distribution
    history.csv                losses every ``log_every`` steps
    stages/stage-XXpx.safetensors, samples/stage-XXpx.png   EMA generator and sample grid at the end of each stage
    last.ckpt                  resumable state while training (removed when complete)

Weights are safetensors and the checkpoint is safetensors with a JSON header: nothing read from a run executes code.
A complete run lists every file with its size and SHA-256 in ``synth.json`` (``files``); :func:`load_synth_run` refuses
a run whose listed files were truncated, swapped or edited.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from lesionlab.classes import CLASS_CODES, NUM_CLASSES
from lesionlab.core.manifest import verify_manifest
from lesionlab.synth.codes import CodeLayout, CodeRequest, CodeSampler, Labels, class_plan, encode
from lesionlab.synth.config import SynthConfig
from lesionlab.synth.errors import SynthError
from lesionlab.synth.networks import Critic, Generator, channel_plan, stage_resolutions

INFO_FILE = "synth.json"
CONFIG_FILE = "config.yaml"
GENERATOR_FILE = "generator.safetensors"
CRITIC_FILE = "critic.safetensors"
CODES_FILE = "codes.csv"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "last.ckpt"
log = logging.getLogger(__name__)
SPLIT_ROUTING = {"coarse": ["class", "sex", "site", "age"], "fine": ["class", "free"]}


def stage_name(resolution: int) -> str:
    return f"stage-{resolution:02d}px"


def code_routing(cfg: SynthConfig, layout: CodeLayout) -> list[list[str] | None]:
    """Code parts each generator block reads (``None``: every part)."""
    resolutions = stage_resolutions(cfg.model.resolution)
    routing = cfg.codes.routing
    active = set(layout.active)
    if routing == "all":
        return [None] * len(resolutions)
    if routing == "split":
        return [[p for p in SPLIT_ROUTING["coarse" if r <= 8 else "fine"] if p in active] for r in resolutions]
    return [[p for p in routing.get(r, list(layout.active)) if p in active] for r in resolutions]


def build_networks(cfg: SynthConfig, layout: CodeLayout) -> tuple[Generator, Critic]:
    """Generator and critic of a config (random weights, from the current torch seed)."""
    m = cfg.model
    channels = channel_plan(m.resolution, m.fmap_base, m.fmap_max, m.fmap_min)
    routing = [layout.columns(parts) for parts in code_routing(cfg, layout)]
    g = Generator(m.resolution, m.z_dim, layout.dim, channels, routing, upsample=m.upsample)
    d = Critic(m.resolution, channels, layout.q_dim, m.q_hidden, m.mbstd_group,
               projection_classes=NUM_CLASSES if m.projection else 0)
    return g, d


def save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save a state dict as safetensors, atomically."""
    from safetensors.torch import save

    from lesionlab.core.io import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write_bytes(path, save(tensors, metadata={"format": "pt"}))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SynthError(f"{path}: missing; the synthesis run is incomplete (re-run `lesionlab synth train` to "
                         "resume it)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SynthError(f"{path}: not readable safetensors weights ({err})") from None


def read_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / INFO_FILE
    if not path.is_file():
        raise SynthError(f"{Path(run_dir)}: not a synthesis run ({INFO_FILE} missing; train one with "
                         "`lesionlab synth train`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SynthError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or info.get("kind") != "lesionlab-synth":
        raise SynthError(f"{path}: not a lesionlab synthesis run")
    return info


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] NCHW -> uint8 NHWC."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_labels(table: pd.DataFrame, layout: CodeLayout, columns: int, seed: int) -> Labels:
    """Fixed codes for the per-stage grids: ``columns`` samples of every class present, codes drawn from the data."""
    sampler = CodeSampler(table, layout)
    counts = sampler.class_counts()
    classes = np.repeat(np.flatnonzero(counts > 0), columns)
    labels, _ = sampler.draw(classes, np.random.default_rng([seed, 4242]))
    return labels


def grid_image(images: np.ndarray, labels: Labels, columns: int, title: str, cell: int = 64) -> Image.Image:
    """A labelled grid: one row per class (row label at the left), ``columns`` images per row, upscaled (nearest)."""
    n = len(images)
    rows = int(np.ceil(n / columns))
    scale = max(1, cell // images.shape[1])
    size = images.shape[1] * scale
    margin, top = 48, 18
    canvas = Image.new("RGB", (margin + columns * (size + 2), top + rows * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black")
    for i in range(n):
        r, c = divmod(i, columns)
        tile = Image.fromarray(images[i]).resize((size, size), Image.Resampling.NEAREST)
        canvas.paste(tile, (margin + c * (size + 2), top + r * (size + 2)))
        if c == 0:
            draw.text((4, top + r * (size + 2) + size // 2 - 5), CLASS_CODES[int(labels.label[i])], fill="black")
    return canvas


@dataclass
class SynthRun:
    """A trained generator ready to sample from, with the codes it was trained on."""

    path: Path
    info: dict[str, Any]
    config: SynthConfig
    layout: CodeLayout
    generator: Generator
    sampler: CodeSampler
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def resolution(self) -> int:
        return int(self.config.model.resolution)

    @property
    def synthetic_source(self) -> bool:
        return bool(self.info.get("data", {}).get("synthetic", False))

    def draw_labels(self, n: int, rng: np.random.Generator, dx: str | None = None, balanced: bool = False,
                    request: CodeRequest | None = None, classes: np.ndarray | None = None
                    ) -> tuple[Labels, list[str]]:
        """Codes of ``n`` samples: one class, balanced, the training mix, or the given class indices."""
        if classes is None:
            classes = class_plan(n, self.sampler.class_counts(), dx, balanced, rng)
        return self.sampler.draw(classes, rng, request or CodeRequest(dx=dx))

    @torch.inference_mode()
    def generate(self, labels: Labels, seed: int, batch_size: int = 256, generator: Generator | None = None,
                 stage: int | None = None, z: torch.Tensor | None = None) -> np.ndarray:
        """uint8 images [N, R, R, 3] for the given codes; noise from ``seed`` (the same seed, the same images)."""
        g = generator or self.generator
        n = len(labels)
        if z is None:
            z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(int(seed)))
        code = encode(self.layout, labels)
        out = []
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            out.append(to_uint8(g(z[sl].to(self.device), code[sl].to(self.device), stage, 1.0)))
        res = g.resolutions[-1 if stage is None else stage]
        return np.concatenate(out) if out else np.zeros((0, res, res, 3), np.uint8)

    def stage_generators(self) -> list[tuple[int, Generator]]:
        """(resolution, EMA generator) at the end of every stage that was saved."""
        out = []
        for s, res in enumerate(stage_resolutions(self.resolution)):
            path = self.path / "stages" / f"{stage_name(res)}.safetensors"
            if path.is_file():
                g, _ = build_networks(self.config, self.layout)
                g.load_state_dict(load_state(path))
                out.append((res, g.eval().to(self.device)))
                _ = s
        return out

    def critic(self) -> Critic:
        """The trained critic with its Q head."""
        _, d = build_networks(self.config, self.layout)
        d.load_state_dict(load_state(self.path / CRITIC_FILE))
        return d.eval().to(self.device)


def load_synth_run(path: str | Path, device: str | torch.device = "cpu") -> SynthRun:
    """Open a complete synthesis run for sampling; errors name the run and the missing or broken file."""
    from lesionlab.config import ConfigError, build_config

    path = Path(path)
    info = read_info(path)
    if info.get("status") != "complete":
        raise SynthError(f"{path}: the synthesis run is not finished (status {info.get('status')!r}); re-run "
                         f"`lesionlab synth train {path} --config CONFIG` to resume it")
    if isinstance(info.get("files"), dict):
        verify_manifest(path, info["files"], SynthError, where=str(path / INFO_FILE))
    else:
        log.warning("%s lists no file checksums (written by an older lesionlab): the files were not checked",
                    path / INFO_FILE)
    try:
        config = build_config(SynthConfig, info["config"], where=str(path / INFO_FILE))
    except (ConfigError, KeyError) as err:
        raise SynthError(f"{path / INFO_FILE}: config not usable ({err})") from None
    layout = CodeLayout.from_dict(info["layout"])
    g, _ = build_networks(config, layout)
    state = load_state(path / GENERATOR_FILE)
    try:
        g.load_state_dict(state)
    except RuntimeError as err:
        raise SynthError(f"{path / GENERATOR_FILE}: weights do not fit the saved config ({err})") from None
    codes_path = path / CODES_FILE
    if not codes_path.is_file():
        raise SynthError(f"{codes_path}: missing; it holds the codes the generator draws from")
    table = pd.read_csv(codes_path, dtype={"image_id": str, "dx": str, "sex": str, "site": str})
    table["sex"] = table["sex"].fillna("unknown")
    table["site"] = table["site"].fillna("unknown")
    device = torch.device(device)
    return SynthRun(path, info, config, layout, g.eval().to(device), CodeSampler(table, layout), device)
