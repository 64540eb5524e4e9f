"""Class weights, the effective training prior, and the prior-corrected decision rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesionlab.core.metrics import balanced_accuracy
from lesionlab.core.priors import PriorError, class_weights, prior_corrected, training_prior

COUNTS = np.array([10, 20, 40, 0, 10, 400, 20])


@pytest.mark.parametrize(("kind", "ratio"), [("balanced", 40.0), ("sqrt", math.sqrt(40.0))])
def test_class_weights_rare_class_weighs_more(kind: str, ratio: float) -> None:
    w = class_weights(COUNTS, kind)
    assert w is not None
    assert w[3] == 0.0  # absent class
    assert np.isclose(w[COUNTS > 0].mean(), 1.0)
    assert np.isclose(w[0] / w[5], ratio)


def test_class_weights_none_and_unknown() -> None:
    assert class_weights(COUNTS, "none") is None
    with pytest.raises(ValueError, match="unknown class_weights"):
        class_weights(COUNTS, "inverse")


@pytest.mark.parametrize(("weights", "sampler", "expected"), [
    ("none", "none", COUNTS / COUNTS.sum()),
    ("sqrt", "none", np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),   # n * n^-1/2
    ("balanced", "none", (COUNTS > 0) / (COUNTS > 0).sum()),     # weights undo the counts: uniform
    ("none", "balanced", (COUNTS > 0) / (COUNTS > 0).sum()),     # so does a balanced sampler
])
def test_training_prior(weights: str, sampler: str, expected: np.ndarray) -> None:
    prior = training_prior(COUNTS, weights, sampler)
    assert np.allclose(prior, expected) and math.isclose(prior.sum(), 1.0)


def test_training_prior_rejects_bad_counts() -> None:
    for bad in ([0, 0, 0], [-1, 3], [[1, 2]]):
        with pytest.raises(PriorError, match="counts"):
            training_prior(bad)


def test_prior_correction_is_the_bayes_rule_for_balanced_accuracy() -> None:
    # three classes with priors 0.8 / 0.15 / 0.05 and a weakly informative score: the arg-max of the posterior
    # favours the big class; dividing by the prior recovers balanced accuracy
    rng = np.random.default_rng(0)
    prior = np.array([0.8, 0.15, 0.05])
    y = rng.choice(3, size=20_000, p=prior)
    likelihood = np.full((y.size, 3), 1.0)
    likelihood[np.arange(y.size), y] = 2.5  # the true class's likelihood is 2.5x the others'
    likelihood *= rng.lognormal(0.0, 0.4, size=likelihood.shape)
    posterior = likelihood * prior
    posterior /= posterior.sum(axis=1, keepdims=True)
    corrected = prior_corrected(posterior, prior)
    assert np.allclose(corrected.sum(axis=1), 1.0)
    assert balanced_accuracy(y, corrected) > balanced_accuracy(y, posterior) + 0.1
    assert np.allclose(prior_corrected(posterior, prior, strength=0.0), posterior)


def test_prior_correction_keeps_untrained_classes_at_zero_and_checks_shapes() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    out = prior_corrected(proba, [0.5, 0.5, 0.0])
    assert np.all(out[:, 2] == 0.0) and np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(prior_corrected(np.array([[0.0, 0.0, 1.0]]), [0.5, 0.5, 0.0]), 1 / 3)  # nothing left
    with pytest.raises(PriorError, match="does not match"):
        prior_corrected(proba, [0.5, 0.5])
