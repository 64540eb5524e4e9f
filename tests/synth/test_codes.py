"""The structured code: layout, encoding, Q targets and losses, drawing codes from the training data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lesionlab.classes import CLASS_CODES, UnknownClassError
from lesionlab.data.metadata import SEXES, SITES
from lesionlab.synth.codes import (
    IGNORE,
    CodeLayout,
    CodeRequest,
    CodeSampler,
    class_plan,
    encode,
    labels_from_table,
    q_loss,
    q_targets,
    sampling_weights,
)
from lesionlab.synth.errors import SynthError


def table() -> pd.DataFrame:
    rows = [("mel", 70.0, "male", "back"), ("mel", np.nan, "female", "face"), ("nv", 30.0, "unknown", "unknown"),
            ("nv", 35.0, "female", "back"), ("df", 50.0, "male", "lower extremity")]
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(len(rows))],
                         "label": [CLASS_CODES.index(r[0]) for r in rows], "dx": [r[0] for r in rows],
                         "age": [r[1] for r in rows], "sex": [r[2] for r in rows], "site": [r[3] for r in rows]})


@pytest.mark.parametrize(("kwargs", "dim", "q_dim"), [
    ({}, 7 + 3 + 15 + 1 + 2, 7 + 2 + 14 + 1 + 2),
    ({"sex": False, "site": False, "age": False, "free": 0}, 7, 7),
    ({"free": 5, "site": False}, 7 + 3 + 1 + 5, 7 + 2 + 1 + 5),
])
def test_layout_widths(kwargs: dict, dim: int, q_dim: int) -> None:
    layout = CodeLayout(**kwargs)
    assert layout.dim == dim and layout.q_dim == q_dim
    assert CodeLayout.from_dict(layout.to_dict()) == layout


def test_labels_from_table_imputes_missing_age_per_class() -> None:
    labels = labels_from_table(table(), free=2)
    assert labels.age[1].item() == pytest.approx(70.0)  # the other mel's age
    assert labels.age_known.tolist() == [True, False, True, True, True]
    assert labels.sex[2].item() == SEXES.index("unknown") and labels.site[2].item() == SITES.index("unknown")
    assert labels.free.shape == (5, 2)


def test_encode_and_targets() -> None:
    layout = CodeLayout(free=2)
    labels = labels_from_table(table(), free=2)
    code = encode(layout, labels)
    assert code.shape == (5, layout.dim)
    a, b = layout.parts["class"]
    assert code[:, a:b].argmax(1).tolist() == labels.label.tolist()
    a, _ = layout.parts["age"]
    assert code[0, a].item() == pytest.approx((70 - 50) / 20)
    t = q_targets(labels)
    assert t["sex"][2].item() == IGNORE and t["site"][2].item() == IGNORE
    assert t["sex"][0].item() == SEXES.index("male")


def test_q_loss_masks_unknown_and_missing() -> None:
    layout = CodeLayout(free=2)
    labels = labels_from_table(table(), free=2)
    q = torch.zeros(5, layout.q_dim, requires_grad=True)
    loss, parts = q_loss(layout, q, labels, {}, fake=False)
    assert set(parts) == {"class", "sex", "site", "age"}  # no free-code term on real images
    assert parts["class"] == pytest.approx(np.log(7), rel=1e-5)
    loss.backward()
    assert q.grad is not None
    _, fake_parts = q_loss(layout, q, labels, {}, fake=True)
    assert "free" in fake_parts


def test_sampler_draws_the_joint_distribution_and_honours_requests() -> None:
    layout = CodeLayout(free=1)
    sampler = CodeSampler(table(), layout)
    rng = np.random.default_rng(0)
    labels, notes = sampler.draw(np.full(50, CLASS_CODES.index("nv")), rng)
    assert set(labels.label.tolist()) == {CLASS_CODES.index("nv")} and not notes
    assert set(labels.age.tolist()) <= {30.0, 35.0}  # ages of real nv rows
    labels, notes = sampler.draw(np.full(4, CLASS_CODES.index("mel")), rng,
                                 CodeRequest(sex="female", age=61, free=(0.5,)))
    assert set(labels.sex.tolist()) == {SEXES.index("female")} and set(labels.age.tolist()) == {61.0}
    assert torch.allclose(labels.free, torch.full((4, 1), 0.5))
    _, notes = sampler.draw(np.full(2, CLASS_CODES.index("df")), rng, CodeRequest(site="face"))
    assert notes and "no df training image" in notes[0]


@pytest.mark.parametrize(("request_", "message"), [
    (CodeRequest(dx="xyz"), "unknown diagnosis code"),
    (CodeRequest(sex="other"), "sex 'other'"),
    (CodeRequest(site="moon"), "site 'moon'"),
    (CodeRequest(age=200), "outside 0..120"),
    (CodeRequest(free=(0.1, 0.2, 0.3)), "3 free code values"),
])
def test_bad_requests_are_clear(request_: CodeRequest, message: str) -> None:
    with pytest.raises((SynthError, UnknownClassError), match=message):
        request_.check(CodeLayout(free=2))


def test_missing_class_cannot_be_drawn() -> None:
    sampler = CodeSampler(table(), CodeLayout())
    with pytest.raises(SynthError, match="vasc has no training images"):
        sampler.draw(np.array([CLASS_CODES.index("vasc")]), np.random.default_rng(0))


def test_class_plan_and_sampling_weights() -> None:
    counts = np.array([1, 0, 0, 1, 2, 5, 0])
    rng = np.random.default_rng(0)
    assert set(class_plan(8, counts, None, True, rng).tolist()) == {0, 3, 4, 5}
    assert set(class_plan(5, counts, "mel", False, rng).tolist()) == {4}
    labels = np.array([0, 5, 5, 5, 5])
    for mode, share0 in (("natural", 0.2), ("sqrt", 1 / (1 + 2)), ("balanced", 0.5)):
        w = sampling_weights(labels, mode)
        assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(share0)
