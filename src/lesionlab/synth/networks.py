"""The progressive generator and critic: equalised learning rate, pixel norm, FiLM code injection, minibatch stddev.

Both networks are built for the final resolution and grown by *stage* (4 x 4, 8 x 8, ... up to the final size):
``forward(..., stage, alpha)`` runs only the blocks up to that stage and, while ``alpha < 1``, blends the new
block's output with the upsampled (generator) or downsampled (critic) output of the previous stage: ProGAN's fade-in.

Design, from the literature (Karras et al. 2018 ProGAN; Gulrajani et al. 2017 WGAN-GP; Chen et al. 2016 InfoGAN;
Perez et al. 2018 FiLM), written for this project:

- *Equalised learning rate*: weights are drawn from N(0, 1) and scaled by He's constant at run time, so Adam's
  per-parameter step is the same for every layer whatever its fan-in.
- *Generator*: the latent ``z`` and the full code vector enter a dense 4 x 4 layer; every convolution is followed by
  leaky ReLU, pixel norm and a FiLM modulation ``x * (1 + gamma(c)) + beta(c)`` from the code parts routed to that
  block (by default all parts to every block), so the codes steer every scale. FiLM layers start at the identity.
- *Critic*: no batch norm (the gradient penalty is per sample), minibatch standard deviation before the last
  block, one Wasserstein output and a Q head on the same features that predicts the codes (class, sex, site, age
  and the free codes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


class EqLinear(nn.Module):
    """Dense layer with equalised learning rate (weights N(0,1), scaled by ``gain / sqrt(fan_in)`` at run time)."""

    def __init__(self, cin: int, cout: int, gain: float = LRELU_GAIN, bias_init: float = 0.0,
                 zero_init: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin) if zero_init else torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqConv2d(nn.Module):
    """Convolution with equalised learning rate, 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = LRELU_GAIN, padding: int | None = None
                 ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit average square (ProGAN): keeps generator signals bounded."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the average standard deviation of each feature over groups of samples.

    Lets the critic see the variety of a batch, which discourages the generator from collapsing to a few modes.
    """
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.reshape(g, -1, c, h, w).float()
    y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()  # [n/g, c, h, w]
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # [n/g]
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class FiLM(nn.Module):
    """Feature-wise linear modulation ``x * (1 + gamma(c)) + beta(c)`` from a code vector; starts at the identity."""

    def __init__(self, code_dim: int, channels: int) -> None:
        super().__init__()
        self.code_dim = code_dim
        self.affine = EqLinear(code_dim, 2 * channels, gain=1.0, zero_init=True) if code_dim else None

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        if self.affine is None:
            return x
        gamma, beta = self.affine(code).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


def stage_resolutions(final: int) -> list[int]:
    """4, 8, ..., final (a power of two, at least 8)."""
    if final < 8 or final & (final - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {final}")
    return [2 ** k for k in range(2, int(math.log2(final)) + 1)]


def channel_plan(final: int, fmap_base: int, fmap_max: int, fmap_min: int = 8) -> list[int]:
    """Feature maps per stage, ProGAN's ``min(fmap_max, fmap_base / resolution)`` (at least ``fmap_min``)."""
    return [int(max(fmap_min, min(fmap_max, fmap_base // r))) for r in stage_resolutions(final)]


def _select(code: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return code if index is None else code.index_select(1, index)


class Generator(nn.Module):
    """z + codes -> image in [-1, 1] (nominally; the last layer is linear), grown from 4 x 4 to ``resolution``.

    ``routing[s]`` lists the code-vector columns that block ``s`` sees through its FiLM layers (``None``: all).
    ``upsample`` is how each block doubles its input (``nearest`` or ``bilinear``).
    """

    def __init__(self, resolution: int, z_dim: int, code_dim: int, channels: Sequence[int],
                 routing: Sequence[Sequence[int] | None] | None = None, upsample: str = "nearest") -> None:
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        self.upsample = upsample
        self.resolution = resolution
        self.z_dim = z_dim
        self.code_dim = code_dim
        self.resolutions = stage_resolutions(resolution)
        n = len(self.resolutions)
        if len(channels) != n:
            raise ValueError(f"{n} stages need {n} channel counts, got {list(channels)}")
        routing = list(routing) if routing is not None else [None] * n
        if len(routing) != n:
            raise ValueError(f"code routing names {len(routing)} blocks, the generator has {n}")
        self.channels = list(channels)
        for s, cols in enumerate(routing):
            self.register_buffer(f"route{s}", None if cols is None else torch.as_tensor(list(cols), dtype=torch.long),
                                 persistent=False)
        dims = [code_dim if cols is None else len(cols) for cols in routing]
        c0 = channels[0]
        self.dense = EqLinear(z_dim + code_dim, c0 * 16, gain=LRELU_GAIN / 4)  # ProGAN: gain sqrt(2)/4 on 4x4
        self.films = nn.ModuleList()
        self.convs = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for s, c in enumerate(channels):
            cin = c0 if s == 0 else channels[s - 1]
            if s == 0:
                self.convs.append(nn.ModuleList([EqConv2d(c, c, 3)]))
            else:
                self.convs.append(nn.ModuleList([EqConv2d(cin, c, 3), EqConv2d(c, c, 3)]))
            n_films = 2
            self.films.append(nn.ModuleList([FiLM(dims[s], c) for _ in range(n_films)]))
            self.to_rgb.append(EqConv2d(c, 3, 1, gain=1.0))

    def route(self, s: int) -> torch.Tensor | None:
        return getattr(self, f"route{s}")

    def block(self, s: int, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        c = _select(code, self.route(s))
        films = self.films[s]
        if s == 0:
            x = films[0](pixel_norm(x), c)
            x = films[1](pixel_norm(lrelu(self.convs[0][0](x))), c)
            return x
        if self.upsample == "nearest":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = films[0](pixel_norm(lrelu(self.convs[s][0](x))), c)
        x = films[1](pixel_norm(lrelu(self.convs[s][1](x))), c)
        return x

    def forward(self, z: torch.Tensor, code: torch.Tensor, stage: int | None = None, alpha: float = 1.0
                ) -> torch.Tensor:
        """Images at the resolution of ``stage`` (default: the last), blended with the previous stage by ``alpha``."""
        stage = len(self.resolutions) - 1 if stage is None else stage
        if code.shape[1] != self.code_dim:
            raise ValueError(f"code vector has {code.shape[1]} columns, the generator expects {self.code_dim}")
        x = lrelu(self.dense(torch.cat([pixel_norm(z), code], dim=1))).reshape(len(z), self.channels[0], 4, 4)
        prev = x
        for s in range(stage + 1):
            prev = x
            x = self.block(s, x, code)
        rgb = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1.0:
            old = F.interpolate(self.to_rgb[stage - 1](prev), scale_factor=2, mode="nearest")
            rgb = torch.lerp(old, rgb, alpha)
        return rgb


class Critic(nn.Module):
    """image -> (Wasserstein score [N], Q head outputs [N, q_dim]); grown from 4 x 4 like the generator."""

    def __init__(self, resolution: int, channels: Sequence[int], q_dim: int, q_hidden: int = 128,
                 mbstd_group: int = 4, projection_classes: int = 0) -> None:
        super().__init__()
        self.resolution = resolution
        self.resolutions = stage_resolutions(resolution)
        if len(channels) != len(self.resolutions):
            raise ValueError(f"{len(self.resolutions)} stages need as many channel counts, got {list(channels)}")
        self.channels = list(channels)
        self.mbstd_group = mbstd_group
        self.from_rgb = nn.ModuleList([EqConv2d(3, c, 1) for c in channels])
        self.blocks = nn.ModuleList()
        for s, c in enumerate(channels):
            if s == 0:
                self.blocks.append(nn.ModuleList([EqConv2d(c + 1, c, 3), EqConv2d(c, c, 4, padding=0)]))
            else:
                self.blocks.append(nn.ModuleList([EqConv2d(c, c, 3), EqConv2d(c, channels[s - 1], 3)]))
        c0 = channels[0]
        self.out = EqLinear(c0, 1, gain=1.0)
        self.q_dim = q_dim
        self.q_head = nn.Sequential(EqLinear(c0, q_hidden), nn.LeakyReLU(LRELU_SLOPE),
                                    EqLinear(q_hidden, q_dim, gain=1.0)) if q_dim else None
        # Projection conditioning (Miyato & Koyama 2018): score += <embed(class), features>, so the critic judges
        # whether an image is a real image *of its class*, not only whether it is real.
        self.projection = EqLinear(projection_classes, c0, gain=1.0) if projection_classes else None

    def block(self, s: int, x: torch.Tensor) -> torch.Tensor:
        convs = self.blocks[s]
        if s == 0:
            x = minibatch_stddev(x, self.mbstd_group)
            x = lrelu(convs[0](x))
            return lrelu(convs[1](x)).flatten(1)
        x = lrelu(convs[0](x))
        x = lrelu(convs[1](x))
        return F.avg_pool2d(x, 2)

    def features(self, img: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """The shared trunk: [N, channels[0]] features that both the Wasserstein output and the Q head read."""
        stage = len(self.resolutions) - 1 if stage is None else stage
        expected = self.resolutions[stage]
        if img.shape[-1] != expected or img.shape[-2] != expected:
            raise ValueError(f"critic stage {stage} expects {expected} x {expected} images, got {tuple(img.shape)}")
        x = lrelu(self.from_rgb[stage](img))
        if stage > 0:
            x = self.block(stage, x)
            if alpha < 1.0:
                old = lrelu(self.from_rgb[stage - 1](F.avg_pool2d(img, 2)))
                x = torch.lerp(old, x, alpha)
            for s in range(stage - 1, 0, -1):
                x = self.block(s, x)
        return self.block(0, x)

    def forward(self, img: torch.Tensor, stage: int | None = None, alpha: float = 1.0,
                label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(score, Q outputs); with a projection critic, ``label`` (class indices) enters the score."""
        h = self.features(img, stage, alpha)
        score = self.out(h).squeeze(1)
        if self.projection is not None and label is not None:
            onehot = F.one_hot(label, self.projection.weight.shape[1]).to(h.dtype)
            score = score + (self.projection(onehot) * h).sum(dim=1)
        q = self.q_head(h) if self.q_head is not None else None
        return score, q


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
