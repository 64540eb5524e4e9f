"""Distribution measures on feature vectors (pure functions): Frechet distance, kernel distance, improved precision
and recall, nearest neighbours.

Every measure takes optional per-sample weights, so that a class-balanced synthetic set can be compared with real
sets whose classes are imbalanced: each real image is weighted ``1 / (K n_c)`` (every class the same total weight)
via :func:`class_weights`.

- Frechet distance (Heusel et al. 2017): ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` of weighted means
  and covariances.
- Kernel distance (Binkowski et al. 2018): squared MMD with the cubic polynomial kernel ``(x.y / d + 1)^3``, the
  weighted form of the unbiased estimator (self-pairs left out, weights renormalised).
- Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around its
  samples reaching their k-th nearest neighbour; precision is the (weighted) share of generated samples inside the
  real manifold, recall the (weighted) share of real samples inside the generated one.

A synthesis evaluation compares many sets with one reference (the real training features): :class:`Reference`
computes that set's statistics once (covariance and its square root, the kernel distance's self-term, k-NN radii),
and ``fd_to``, ``kid_to`` and ``precision_recall_to`` compare a set with it. ``fd``, ``kid`` and
``precision_recall`` are the same measures for two plain sets.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from lesionlab.classes import NUM_CLASSES


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights giving every class present the same total weight (summing to 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    k = int((counts > 0).sum())
    return 1.0 / (k * counts[labels])


def _norm_weights(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


def weighted_stats(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (reliability-weights unbiased) covariance of the rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    w = _norm_weights(w, len(x))
    mu = w @ x
    xc = x - mu
    denom = 1.0 - float(np.sum(w ** 2))
    cov = (xc * w[:, None]).T @ xc / max(denom, 1e-12)
    return mu, cov


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; rounding's tiny negative eigenvalues are clipped to zero."""
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _trace_sqrt_product(s1: np.ndarray, c2: np.ndarray) -> float:
    """``tr((C1 C2)^(1/2))`` from ``C1^(1/2)``: the eigenvalues of ``C1 C2`` are those of ``C1^(1/2) C2 C1^(1/2)``."""
    inner = s1 @ np.asarray(c2, dtype=np.float64) @ s1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())


def _frechet(mu1: np.ndarray, c1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * _trace_sqrt_product(s1, c2))


def frechet_distance(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """The Frechet distance between two Gaussians.

    ``tr((C1 C2)^(1/2))`` is the sum of the square roots of the eigenvalues of ``C1 C2``, which are those of the
    symmetric ``C1^(1/2) C2 C1^(1/2)``: two symmetric eigendecompositions instead of a general matrix square root,
    several times faster at 1,280 features and exact for the singular covariances of sets smaller than that (no
    diagonal offset needed).
    """
    c1 = np.asarray(c1, dtype=np.float64)
    return _frechet(mu1, c1, _psd_sqrt(c1), mu2, c2)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _kid_within(x: torch.Tensor, p: torch.Tensor) -> float:
    """The unbiased weighted mean kernel value over distinct pairs of one set."""
    k = _poly_kernel(x, x)
    total = float(p @ k @ p - (p ** 2 * torch.diagonal(k)).sum())
    return total / max(1.0 - float((p ** 2).sum()), 1e-12)


class Reference:
    """One weighted feature set compared with many others; each statistic is computed on first use and kept."""

    def __init__(self, x: np.ndarray, w: np.ndarray | None = None) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.w = _norm_weights(w, len(self.x))
        self._radii: dict[int, np.ndarray] = {}

    @cached_property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean and covariance."""
        return weighted_stats(self.x, self.w)

    @cached_property
    def cov_sqrt(self) -> np.ndarray:
        return _psd_sqrt(self.stats[1])

    @cached_property
    def kid_self(self) -> float:
        return _kid_within(torch.as_tensor(self.x), torch.as_tensor(self.w))

    def radii(self, k: int) -> np.ndarray:
        """Distance of each sample to its k-th nearest other sample (the manifold's balls)."""
        if k not in self._radii:
            self._radii[k] = knn_radii(self.x, k)
        return self._radii[k]


def fd_to(ref: Reference, x: np.ndarray, w: np.ndarray | None = None) -> float:
    """Frechet distance between the reference and a weighted feature set."""
    mu, cov = ref.stats
    return _frechet(mu, cov, ref.cov_sqrt, *weighted_stats(x, w))


def kid_to(ref: Reference, x: np.ndarray, w: np.ndarray | None = None) -> float:
    """Weighted unbiased squared MMD with the kernel ``(x.y / d + 1)^3`` between the reference and a set."""
    b = torch.as_tensor(np.asarray(x, dtype=np.float64))
    pb = torch.as_tensor(_norm_weights(w, len(b)))
    cross = float(torch.as_tensor(ref.w) @ _poly_kernel(torch.as_tensor(ref.x), b) @ pb)
    return ref.kid_self + _kid_within(b, pb) - 2.0 * cross


def precision_recall_to(ref: Reference, fake: np.ndarray, k: int = 3, w_fake: np.ndarray | None = None
                        ) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against the reference (weighted shares)."""
    return (coverage_share(fake, ref.x, ref.radii(k), w_fake),
            coverage_share(ref.x, fake, knn_radii(fake, k), ref.w))


def fd(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Frechet distance between two weighted feature sets."""
    return fd_to(Reference(a, wa), b, wb)


def kid(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Weighted unbiased squared MMD with the kernel ``(x.y / d + 1)^3``."""
    return kid_to(Reference(a, wa), b, wb)


def pairwise_min(query: np.ndarray, ref: np.ndarray, exclude_self: bool = False, k: int = 1, chunk: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Distance to (and index of) each query's k-th nearest reference row (Euclidean)."""
    q = torch.as_tensor(np.asarray(query, dtype=np.float32))
    r = torch.as_tensor(np.asarray(ref, dtype=np.float32))
    dists, idxs = [], []
    for start in range(0, len(q), chunk):
        dist = torch.cdist(q[start:start + chunk], r)
        if exclude_self:
            rows = torch.arange(start, min(start + chunk, len(q)))
            dist[torch.arange(len(rows)), rows] = float("inf")
        val, idx = torch.topk(dist, k, dim=1, largest=False)
        dists.append(val[:, k - 1])
        idxs.append(idx[:, k - 1])
    return torch.cat(dists).double().numpy(), torch.cat(idxs).numpy()


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each sample to its k-th nearest other sample in the same set."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k = {k} samples, got {len(x)}")
    return pairwise_min(x, x, exclude_self=True, k=k)[0]


def coverage_share(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, w: np.ndarray | None = None,
                   chunk: int = 1024) -> float:
    """Weighted share of ``points`` inside at least one ball (``centres``, ``radii``)."""
    p = torch.as_tensor(np.asarray(points, dtype=np.float32))
    c = torch.as_tensor(np.asarray(centres, dtype=np.float32))
    rad = torch.as_tensor(np.asarray(radii, dtype=np.float32))
    inside = []
    for start in range(0, len(p), chunk):
        inside.append((torch.cdist(p[start:start + chunk], c) <= rad[None, :]).any(dim=1))
    flags = torch.cat(inside).numpy().astype(np.float64)
    return float(_norm_weights(w, len(points)) @ flags)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, w_real: np.ndarray | None = None,
                     w_fake: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` (weighted shares)."""
    return precision_recall_to(Reference(real, w_real), fake, k, w_fake)


def pixelate(images: np.ndarray, factor: int) -> np.ndarray:
    """A degraded reference: each ``factor`` x ``factor`` block replaced by its mean (uint8 NHWC in, same out)."""
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"pixelate: {h}x{w} images are not divisible by {factor}")
    x = images.astype(np.float64).reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    x = np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def upsample_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images enlarged to ``size`` by pixel repetition (stage outputs compared at the final size)."""
    factor = size // images.shape[1]
    if factor * images.shape[1] != size:
        raise ValueError(f"cannot upsample {images.shape[1]} px to {size} px by an integer factor")
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2) if factor > 1 else images
