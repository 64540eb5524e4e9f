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
"""

from __future__ import annotations

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


def frechet_distance(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """The Frechet distance between two Gaussians.

    ``tr((C1 C2)^(1/2))`` is the sum of the square roots of the eigenvalues of ``C1 C2``, which are those of the
    symmetric ``C1^(1/2) C2 C1^(1/2)``: two symmetric eigendecompositions instead of a general matrix square root,
    several times faster at 1,280 features and exact for the singular covariances of sets smaller than that (no
    diagonal offset needed).
    """
    diff = mu1 - mu2
    s1 = _psd_sqrt(np.asarray(c1, dtype=np.float64))
    inner = s1 @ np.asarray(c2, dtype=np.float64) @ s1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt)


def fd(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Frechet distance between two weighted feature sets."""
    return frechet_distance(*weighted_stats(a, wa), *weighted_stats(b, wb))


def kid(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Weighted unbiased squared MMD with the kernel ``(x.y / d + 1)^3``."""
    a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64))
    d = a.shape[1]
    pa = torch.as_tensor(_norm_weights(wa, len(a)))
    pb = torch.as_tensor(_norm_weights(wb, len(b)))

    def kern(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.T / d + 1.0) ** 3

    def within(x: torch.Tensor, p: torch.Tensor) -> float:
        k = kern(x, x)
        total = float(p @ k @ p - (p ** 2 * torch.diagonal(k)).sum())
        return total / max(1.0 - float((p ** 2).sum()), 1e-12)

    cross = float(pa @ kern(a, b) @ pb)
    return within(a, pa) + within(b, pb) - 2.0 * cross


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
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    return coverage_share(fake, real, r_real, w_fake), coverage_share(real, fake, r_fake, w_real)


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
