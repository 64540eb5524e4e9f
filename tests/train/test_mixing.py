"""MixUp / CutMix: what a mixed batch contains, how the loss weighs the partners, and settings checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lesionlab.config import AugmentConfig
from lesionlab.train import TrainError
from lesionlab.train.mixing import BatchMixer, Mixed, mixed_loss


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, None),
    ({"mixup": 0.2, "enabled": False}, None),
    ({"mixup": 0.2, "mix_p": 0.0}, None),
    ({"mixup": 0.2}, BatchMixer(0.2, 0.0, 1.0, 0.5)),
    ({"cutmix": 1.0, "mix_p": 0.5}, BatchMixer(0.0, 1.0, 0.5, 0.5)),
])
def test_mixer_from_config(settings: dict, expected: BatchMixer | None) -> None:
    assert BatchMixer.from_config(AugmentConfig(**settings)) == expected


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    meta = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 4).clone()
    return x, meta


def test_mixup_blends_image_and_clinical_vector_with_the_same_partner_and_weight() -> None:
    x, meta = batch()
    m = BatchMixer(mixup_alpha=0.4)(x, meta, np.random.default_rng(0))
    assert m.perm is not None and 0.0 < m.lam < 1.0
    assert sorted(m.perm.tolist()) == list(range(8))
    want = m.lam * torch.arange(8.0) + (1 - m.lam) * m.perm.float()
    assert torch.allclose(m.x[:, 0, 0, 0], want) and torch.allclose(m.meta[:, 0], want)
    assert torch.equal(x, batch()[0])  # the input batch is not changed in place


def test_cutmix_pastes_one_box_and_lam_is_the_unchanged_share() -> None:
    x, meta = batch()
    m = BatchMixer(cutmix_alpha=1.0)(x, meta, np.random.default_rng(3))
    assert m.perm is not None
    i = int(torch.nonzero(m.perm != torch.arange(8))[0, 0])  # a sample with a partner other than itself
    own = (m.x[i, 0] == float(i)).float().mean().item()
    assert own == pytest.approx(m.lam)
    pasted = m.x[i, 0] == float(m.perm[i])
    rows, cols = torch.nonzero(pasted, as_tuple=True)
    if len(rows):  # the box is a rectangle: every pixel inside its bounds comes from the partner
        assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert torch.allclose(m.meta[:, 0], m.lam * torch.arange(8.0) + (1 - m.lam) * m.perm.float())


def test_mix_p_leaves_batches_unmixed_and_draws_repeat_from_the_seed() -> None:
    x, meta = batch()
    never = BatchMixer(mixup_alpha=0.2, prob=0.0)(x, meta, np.random.default_rng(0))
    assert never.perm is None and never.lam == 1.0 and never.x is x
    mixer = BatchMixer(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.5)
    draws = [mixer(x, meta, np.random.default_rng(s)) for s in range(40)]
    kinds = {"none": 0, "mixed": 0}
    for d in draws:
        kinds["none" if d.perm is None else "mixed"] += 1
    assert kinds["none"] > 5 and kinds["mixed"] > 5
    again = mixer(x, meta, np.random.default_rng(7))
    assert torch.equal(again.x, draws[7].x) and again.lam == draws[7].lam


def test_cutmix_refuses_feature_batches() -> None:
    with pytest.raises(TrainError, match="cutmix needs image batches"):
        BatchMixer(cutmix_alpha=1.0)(torch.zeros(4, 10), None, np.random.default_rng(0))


def test_mixed_loss_weighs_the_two_targets_with_lam() -> None:
    logits = torch.randn(6, 7)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    ce = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 7), label_smoothing=0.1)
    got = mixed_loss(ce, logits, y, None, Mixed(logits, None, perm, 0.3))
    assert torch.allclose(got, 0.3 * ce(logits, y) + 0.7 * ce(logits, y[perm]))
    assert torch.equal(mixed_loss(ce, logits, y, None, Mixed(logits, None, None, 1.0)), ce(logits, y))

    seen = []

    def with_soft(lg: torch.Tensor, yy: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        seen.append((yy.clone(), soft.clone()))
        return lg.sum() * 0

    soft = torch.eye(6, 7)
    mixed_loss(with_soft, logits, y, soft, Mixed(logits, None, perm, 0.5))  # type: ignore[arg-type]
    assert torch.equal(seen[1][0], y[perm]) and torch.equal(seen[1][1], soft[perm])
