"""Image pipeline: resize modes, Preprocessing, seeded augmentation, and the dataset's sample dicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lesionlab.config import AugmentConfig
from lesionlab.data import (
    LesionDataset,
    MetadataEncoder,
    Preprocessing,
    build_train_transform,
    open_synthetic,
    resize_image,
    to_chw_tensor,
)
from lesionlab.data.transforms import seeded


def _photo(w: int = 600, h: int = 450) -> Image.Image:
    """A 4:3 'photo' with a red left edge column band and a blue centre, to see what each resize keeps."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 20, 0] = 255
    a[h // 2 - 20: h // 2 + 20, w // 2 - 20: w // 2 + 20, 2] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize(("size", "resize"), [((64, 64), "square"), ((28, 28), "square"), ((224, 300), "aspect"),
                                              ((450, 600), "aspect"), ((64, 64), "aspect"), ((100, 50), "aspect")])
def test_resize_gives_the_requested_size(size: tuple[int, int], resize: str) -> None:
    out = resize_image(_photo(), size, resize)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    assert out[size[0] // 2, size[1] // 2, 2] > 200  # the centre stays in the centre


def test_square_squashes_and_aspect_crops() -> None:
    square = resize_image(_photo(), (64, 64), "square")
    aspect = resize_image(_photo(), (64, 64), "aspect")
    assert square[:, 0, 0].min() > 200  # the whole width is kept: the red left band survives
    assert aspect[:, 0, 0].max() < 50  # cover + centre crop: the left band is cut off


def test_resize_of_the_right_size_is_identity_and_errors() -> None:
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert resize_image(a, (8, 8)) is a
    with pytest.raises(ValueError, match="expected an HxWx3 uint8"):
        resize_image(a.astype(np.float32), (4, 4))
    with pytest.raises(ValueError, match="expected an RGB image, got mode L"):
        resize_image(Image.new("L", (4, 4)), (2, 2))
    with pytest.raises(ValueError, match="resize mode 'crop'"):
        resize_image(a, (4, 4), "crop")


def test_preprocessing_call_and_round_trip() -> None:
    pre = Preprocessing(size=(32, 48), resize="aspect", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = pre(_photo())
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    array_input = pre(pre.resize_image(_photo()))
    assert torch.equal(x, array_input)  # PIL and pre-resized (cache) input give the same tensor
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre and torch.equal(again(_photo()), x)
    with pytest.raises(ValueError, match="preprocessing record has keys"):
        Preprocessing.from_dict({"size": [1, 1]})
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocessing(size=(8, 8), std=(0, 1, 1))


def test_eval_transform_rejects_unresized_input() -> None:
    t = Preprocessing(size=(16, 16)).normalize
    with pytest.raises(ValueError, match=r"shape \(3, 20, 16\), expected \(3, 16, 16\)"):
        t(torch.zeros(3, 20, 16, dtype=torch.uint8))


def _image() -> torch.Tensor:
    return to_chw_tensor(np.asarray(open_synthetic(n=14, seed=0, size=64).load_image(0)))


def test_train_transform_is_random_but_seedable() -> None:
    pre = Preprocessing(size=(64, 64))
    t = build_train_transform(AugmentConfig(blur_p=0.5), pre)
    x = _image()
    a, b, c = seeded(t, x, 1), seeded(t, x, 1), seeded(t, x, 2)
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    state = torch.random.get_rng_state()
    seeded(t, x, 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone


@pytest.mark.parametrize("field", ["rotation", "shear", "hflip", "vflip", "rot90", "brightness", "contrast",
                                   "blur_p"])
def test_each_augmentation_is_configurable(field: str) -> None:
    """Only one augmentation on: the output differs from the eval transform for some seed."""
    off = {"rotation": 0.0, "zoom": (1.0, 1.0), "shear": 0.0, "translate": 0.0, "hflip": False, "vflip": False,
           "rot90": False, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "blur_p": 0.0}
    on = {"rotation": 90.0, "shear": 20.0, "hflip": True, "vflip": True, "rot90": True, "brightness": 0.5,
          "contrast": 0.5, "blur_p": 1.0}
    pre = Preprocessing(size=(64, 64))
    x = _image()
    plain = pre.normalize(x)
    assert torch.equal(build_train_transform(AugmentConfig(**off), pre)(x), plain)
    t = build_train_transform(AugmentConfig(**(off | {field: on[field]})), pre)
    assert any(not torch.equal(seeded(t, x, s), plain) for s in range(4))


def test_rot90_gives_exact_quarter_turns_and_rejects_non_square_inputs() -> None:
    pre = Preprocessing(size=(64, 64))
    x = _image()
    off = AugmentConfig(rotation=0.0, zoom=(1.0, 1.0), shear=0.0, translate=0.0, hflip=False, vflip=False, rot90=True,
                        brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur_p=0.0)
    t = build_train_transform(off, pre)
    plain = pre.normalize(x)
    turns = [torch.rot90(plain, k, dims=(-2, -1)) for k in range(4)]
    seen = set()
    for s in range(40):
        y = seeded(t, x, s)
        seen |= {k for k, turn in enumerate(turns) if torch.equal(y, turn)}
        assert any(torch.equal(y, turn) for turn in turns)
    assert seen == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="square"):
        build_train_transform(off, Preprocessing(size=(48, 64)))


def test_disabled_augmentation_is_the_eval_transform() -> None:
    pre = Preprocessing(size=(64, 64))
    x = _image()
    assert torch.equal(build_train_transform(AugmentConfig(enabled=False), pre)(x), pre.normalize(x))


def test_dataset_yields_contract_samples_without_copying_the_cache() -> None:
    source = open_synthetic(n=40, seed=2, size=32)
    images = np.stack([np.asarray(source.load_image(i)) for i in range(len(source))])
    table = source.table.assign(split=np.where(np.arange(40) < 30, "train", "val"))
    train = table[table["split"] == "train"]
    val = table[table["split"] == "val"]
    enc = MetadataEncoder.fit(train)
    pre = Preprocessing(size=(32, 32))
    ds = LesionDataset(images, val, pre.normalize, enc)
    s = ds[3]
    row = val.iloc[3]
    assert set(s) == {"image", "label", "image_id", "lesion_id", "age", "sex", "site", "meta"}
    assert s["image_id"] == row["image_id"] and s["label"] == row["label"] and s["site"] == row["site"]
    assert torch.equal(s["image"], pre(images[val.index[3]]))
    assert s["meta"].shape == (enc.dim,) and s["meta"].dtype == torch.float32
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["image_id"]) == 4
    assert "meta" not in LesionDataset(images, val, pre.normalize)[0]
    with pytest.raises(ValueError, match="keep the source table's index"):
        LesionDataset(images[:5], val, pre.normalize)


def test_dataset_seed_gives_the_same_views_per_epoch() -> None:
    source = open_synthetic(n=20, seed=2, size=32)
    images = np.stack([np.asarray(source.load_image(i)) for i in range(len(source))])
    t = build_train_transform(AugmentConfig(), Preprocessing(size=(32, 32)))
    a = LesionDataset(images, source.table, t, seed=7)
    b = LesionDataset(images, source.table, t, seed=7)
    assert torch.equal(a[5]["image"], b[5]["image"]) and torch.equal(a[5]["image"], a[5]["image"])
    first = a[5]["image"]
    a.set_epoch(1)
    assert not torch.equal(a[5]["image"], first)


def test_source_size_squashes_full_size_images_first_and_is_idempotent() -> None:
    pre = Preprocessing(size=(48, 48), source_size=(32, 32))
    photo = _photo()
    expected = resize_image(np.array(photo.resize((32, 32), Image.Resampling.BICUBIC)), (48, 48))
    pixels = pre.resize_image(photo)
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pre.resize_image(pixels), pixels)  # model-size pixels (a cached row) pass as is
    small = np.asarray(photo.resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(pre.resize_image(small), resize_image(small, (48, 48)))  # stored size: no squash
    assert torch.equal(pre(photo), pre(pixels)) and pre.batch([photo, pixels]).shape == (2, 3, 48, 48)


def test_preprocessing_record_keeps_source_size_and_reads_older_records() -> None:
    pre = Preprocessing(size=(48, 48), source_size=(32, 40))
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    old = {k: v for k, v in pre.to_dict().items() if k != "source_size"}  # a run written before source_size
    assert Preprocessing.from_dict(old).source_size is None
    assert Preprocessing.from_dict(old, source_size=[64, 64]).source_size == (64, 64)
    with pytest.raises(ValueError, match="source_size must be"):
        Preprocessing(size=(8, 8), source_size=(0, 8))


def test_the_normalising_transform_is_built_once() -> None:
    pre = Preprocessing(size=(16, 16))
    assert pre.normalize.__self__ is pre and pre._normalize is pre._normalize
    x = to_chw_tensor(np.zeros((16, 16, 3), np.uint8))
    assert torch.equal(pre.normalize(x), pre._normalize(x))
