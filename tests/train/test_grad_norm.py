"""The gradient norm and clipped share that each epoch reports (history columns train_grad_norm, train_clipped)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lesionlab.train.loop import Precision, train_one_epoch


@pytest.mark.parametrize(("clip", "clipped"), [(None, None), (1e-2, 1.0), (1e6, 0.0)])
def test_an_epoch_reports_the_gradient_norm_before_clipping(clip: float | None, clipped: float | None) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 7)
    x, y = torch.randn(8, 4), torch.arange(8) % 7
    by_hand = copy.deepcopy(model)
    nn.functional.cross_entropy(by_hand(x), y).backward()
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in by_hand.parameters())))
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(model, [{"image": x, "label": y}], nn.CrossEntropyLoss(),
                            torch.optim.SGD(model.parameters(), lr=0.1), precision=Precision(torch.device("cpu")),
                            grad_clip=clip, progress=False)
    assert stats["steps"] == 1 and stats["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert stats["clipped"] == clipped
    pairs = zip(model.parameters(), before, strict=True)
    moved = float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in pairs)))
    # SGD without momentum moves by lr x the (clipped) gradient
    assert moved == pytest.approx(0.1 * min(norm, clip or norm), rel=1e-4)
