"""LesionModel: heads x fusion, the forward contract, channels_last, metadata handling and freezing."""

from __future__ import annotations

import itertools

import pytest
import torch

from lesionlab.config import ModelConfig
from lesionlab.models import ConcatFusion, LesionModel, MetaBlock, NoFusion, create_model, freeze_backbone

META = 6
HEADS = ["linear", "simple", "conv", "mlp"]
FUSIONS = ["none", "concat", "metablock"]


def _model(head: str = "linear", fusion: str = "none", **kw: object) -> LesionModel:
    torch.manual_seed(0)
    return create_model(ModelConfig(name="test_resnet", pretrained=False, head=head, fusion=fusion, **kw),
                        meta_dim=META if fusion != "none" else 0)


def _meta(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, META)


@pytest.mark.parametrize(("head", "fusion"), list(itertools.product(HEADS, FUSIONS)))
def test_heads_and_fusions_train_end_to_end(head: str, fusion: str) -> None:
    model = _model(head, fusion)
    meta = _meta() if fusion != "none" else None
    x = torch.randn(4, 3, 64, 64)
    logits = model(x, meta)
    assert logits.shape == (4, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 5, 6])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    expected = {"none": NoFusion, "concat": ConcatFusion, "metablock": MetaBlock}[fusion]
    assert type(model.fusion) is expected


@pytest.mark.parametrize(("head", "fusion"), [("linear", "none"), ("simple", "metablock"), ("conv", "concat"),
                                              ("mlp", "metablock")])
def test_forward_equals_head_of_cached_features_and_channels_last(head: str, fusion: str) -> None:
    model = _model(head, fusion).eval()
    meta = _meta(3) if fusion != "none" else None
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x).clone()  # what a frozen-mode cache stores
        direct = model(x, meta)
        assert torch.allclose(model.forward_head(features, meta), direct, atol=1e-6)
        model_cl = model.to(memory_format=torch.channels_last)
        cl = model_cl(x.contiguous(memory_format=torch.channels_last), meta)
    assert torch.allclose(cl, direct, atol=1e-4)
    kind = "pooled" if head in ("linear", "mlp") else "map"
    assert model.feature_kind == kind and features.ndim == (2 if kind == "pooled" else 4)
    assert features.shape[1] == model.num_features == 96


@pytest.mark.parametrize(("grid", "size"), [(2, 64), (1, 32), (3, 96)])
def test_simple_head_is_exactly_flatten_when_the_map_is_grid_sized(grid: int, size: int) -> None:
    model = _model("simple", head_grid=grid).eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 3, size, size))
        assert fmap.shape[-2:] == (grid, grid)
        pooled_then_flat = model.head.embed[:2](fmap)
        assert torch.equal(pooled_then_flat, fmap.flatten(1))
        assert model(torch.randn(2, 3, 2 * size, 2 * size)).shape == (2, 7)  # other sizes still run


def test_head_dropout_defaults_and_override() -> None:
    mlp = _model("mlp")
    assert [m.p for m in mlp.head.embed if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    mlp3 = _model("mlp", dropout=0.3)
    assert [m.p for m in mlp3.head.embed if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]
    assert _model("linear").head.embed.p == 0.0
    with pytest.raises(ValueError, match=r"model.dropout must be in \[0, 1\)"):
        _model("linear", dropout=1.0)


def test_fusion_without_metadata_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="metadata fusion asked for on a dataset without metadata"):
        create_model(ModelConfig(name="test_resnet", pretrained=False, fusion="concat"), meta_dim=0)
    model = _model("linear", "concat")
    with pytest.raises(ValueError, match=r"needs the encoded metadata: call model\(image, meta\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"meta has shape \[2, 3\]; expected \[2, 6\]"):
        model(torch.randn(2, 3, 64, 64), torch.randn(2, 3))


def test_meta_is_ignored_without_fusion() -> None:
    model = _model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, torch.randn(2, META)))


@pytest.mark.parametrize("fusion", ["concat", "metablock"])
def test_missing_metadata_reads_as_blank(fusion: str) -> None:
    model = _model("linear", fusion).eval()
    x = torch.randn(2, 3, 64, 64)
    meta = _meta(2)
    holes = meta.clone()
    holes[0, 1] = float("nan")
    with torch.no_grad():
        out = model(x, holes)
        assert torch.isfinite(out).all()
        filled = meta.clone()
        filled[0, 1] = 0.0
        assert torch.allclose(out, model(x, filled))


def test_meta_dropout_blanks_whole_rows_in_training_only() -> None:
    model = _model("linear", "concat", meta_dropout=0.5)
    meta = torch.ones(2000, META)
    prepared = model.train()._prepare_meta(meta, 2000)
    rows_blank = (prepared == 0).all(dim=1)
    assert ((prepared == 0) | (prepared == 1)).all() and ((prepared == 0).any(dim=1) == rows_blank).all()
    assert 0.4 < rows_blank.float().mean() < 0.6
    assert torch.equal(model.eval()._prepare_meta(meta, 2000), meta)


def _batchnorms(model: LesionModel) -> list[torch.nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_freeze_backbone_stops_gradients_and_keeps_backbone_in_eval() -> None:
    model = _model("simple")
    freeze_backbone(model)
    model.train()
    assert model.backbone_frozen and not model.backbone.training
    assert not any(m.training for m in _batchnorms(model))
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters()) and model.head.training
    before = [b.running_mean.clone() for b in _batchnorms(model)]
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, _batchnorms(model), strict=True))
    freeze_backbone(model, frozen=False)
    assert model.backbone.training and all(m.training for m in _batchnorms(model))
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_freeze_bn_keeps_batchnorm_statistics_while_fine_tuning() -> None:
    model = _model(freeze_bn=True).train()
    assert model.freeze_bn and model.backbone.training and not any(m.training for m in _batchnorms(model))
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not _model().freeze_bn


def test_map_head_on_a_token_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model.head=conv needs a convolutional feature map .* test_vit"):
        create_model(ModelConfig(name="test_vit", pretrained=False, head="conv"))
    vit = create_model(ModelConfig(name="test_vit", pretrained=False, head="mlp", fusion="metablock"), meta_dim=3)
    assert vit.eval()(torch.randn(2, 3, 160, 160), torch.randn(2, 3)).shape == (2, 7)


def test_attributes_of_the_contract() -> None:
    model = _model("conv", "metablock")
    for name in ("backbone", "head", "fusion", "data_config", "config", "spec", "weights"):
        assert hasattr(model, name)
    assert set(model.data_config) >= {"input_size", "mean", "std", "interpolation"}
    parts = [model.backbone, model.head, model.fusion]
    assert sum(p.numel() for m in parts for p in m.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("head", "fusion", "tta", "views"), [
    ("linear", "none", False, "flips"), ("linear", "concat", True, "flips"), ("conv", "metablock", True, "dihedral"),
    ("mlp", "concat", False, "flips"), ("ensemble", "concat", True, "flips"),
])
def test_features_and_logits_share_one_backbone_pass_per_view(head: str, fusion: str, tta: bool, views: str) -> None:
    """The same numbers as pooled_features + view_averaged_logits, with one forward_features call per view (an
    ensemble, without forward_head, takes the two calls)."""
    from lesionlab.models.ensemble import EnsembleModel
    from lesionlab.models.views import features_and_logits, pooled_features, view_averaged_logits, views_of

    model = EnsembleModel([_model("linear", fusion), _model("conv", fusion)]) if head == "ensemble" else \
        _model(head, fusion)
    model.eval()
    meta = _meta(3) if fusion != "none" else None
    x = torch.randn(3, 3, 64, 64)
    calls = []
    real = model.forward_features
    model.forward_features = lambda v: calls.append(v) or real(v)  # type: ignore[method-assign]
    with torch.no_grad():
        feats, logits = features_and_logits(model, x, meta, tta, views)
        passes = len(calls)
        expected_feats, expected_logits = pooled_features(model, x), view_averaged_logits(model, x, meta, tta, views)
    n_views = len(views_of(x, views)) if tta else 1
    assert torch.equal(feats, expected_feats) and torch.equal(logits, expected_logits)
    assert passes == (1 if head == "ensemble" else n_views)
    assert feats.shape == (3, model.num_features if head != "ensemble" else 192) and logits.shape == (3, 7)
