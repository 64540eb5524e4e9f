"""Class priors of a training run, and the decision rule for balanced accuracy that undoes them.

A classifier trained with cross-entropy learns ``p(c | x)`` under the class frequencies it was trained on. Loss
weights ``w_c`` act as if class ``c`` had been seen ``w_c`` times as often, so the run's *effective* prior is
``pi_c ∝ n_c w_c`` (``n_c`` training images of class ``c``; a class-balanced sampler makes it uniform). Balanced
accuracy scores every class alike, i.e. under a uniform prior; the Bayes decision for it divides the calibrated
probabilities by the effective prior before taking the largest (the prior-shift correction of Saerens, Latinne &
Decaestecker, Neural Computation 2002). The arg-max of the probabilities as they are stays the rule for accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionlab.core.errors import LesionlabError


class PriorError(LesionlabError, ValueError):
    """A class-count vector or a class-weight setting that cannot define a prior."""


def class_weights(counts: Sequence[int] | np.ndarray, kind: str) -> np.ndarray | None:
    """Per-class loss weights: ``balanced`` = n / (K * count), ``sqrt`` = its square root; mean weight 1.

    Classes absent from training get weight 0 (they cannot be learned; a finite weight keeps the loss defined).
    """
    if kind == "none":
        return None
    c = np.asarray(counts, dtype=np.float64)
    present = c > 0
    if not present.any():
        raise PriorError("class weights need at least one training sample")
    w = np.zeros_like(c)
    w[present] = c[present].sum() / (present.sum() * c[present])
    if kind == "sqrt":
        w = np.sqrt(w)
    elif kind != "balanced":
        raise PriorError(f"unknown class_weights {kind!r}; expected none, balanced or sqrt")
    w[present] /= w[present].mean()
    return w


def training_prior(counts: Sequence[int] | np.ndarray, weights: str = "none", sampler: str = "none",
                   logit_adjust: float = 0.0) -> np.ndarray:
    """The effective class prior a run was trained under (sums to 1; see the module docstring).

    A logit-adjusted loss with strength ``tau`` (:class:`lesionlab.train.pieces.LogitAdjustedLoss`) leaves the
    model's outputs under the prior the data, weights and sampler give raised to ``1 - tau``.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or (c < 0).any() or c.sum() <= 0:
        raise PriorError(f"training class counts must be non-negative with a positive total, got {c.tolist()}")
    if not 0.0 <= logit_adjust <= 1.0:
        raise PriorError(f"logit_adjust must be in [0, 1], got {logit_adjust}")
    if sampler == "balanced":
        prior = (c > 0).astype(np.float64)
    else:
        w = class_weights(c, weights)
        prior = c if w is None else c * w
    prior = prior / prior.sum()
    if logit_adjust:
        present = prior > 0
        prior[present] = prior[present] ** (1.0 - float(logit_adjust))
        prior /= prior.sum()
    return prior


def prior_corrected(proba: np.ndarray, prior: Sequence[float] | np.ndarray, strength: float = 1.0) -> np.ndarray:
    """``proba / prior ** strength``, renormalised per row: the probabilities under a uniform prior (``strength``
    1) or part of the way there. A class with prior 0 (never trained) keeps probability 0."""
    p = np.asarray(proba, dtype=np.float64)
    pi = np.asarray(prior, dtype=np.float64)
    if p.ndim != 2 or pi.shape != (p.shape[1],):
        raise PriorError(f"prior of shape {pi.shape} does not match probabilities of shape {p.shape}")
    scale = np.zeros_like(pi)
    scale[pi > 0] = pi[pi > 0] ** -float(strength)
    out = p * scale
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / p.shape[1]), where=total > 0)
