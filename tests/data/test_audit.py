"""Leakage audit: overlap definitions, duplicates, verdicts; the published DermaMNIST figures on the real map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from lesionlab.config import DataConfig
from lesionlab.data import audit_split, open_ham10000, open_source, open_synthetic, with_split
from lesionlab.data.audit import NEAR_THRESHOLD, hamming_pairs, lesion_overlaps


def _meta(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """Metadata with one row per (lesion, split) entry."""
    return pd.DataFrame({"image_id": [f"I{i}" for i in range(len(rows))], "lesion_id": [r[0] for r in rows],
                         "split": [r[1] for r in rows]})


def test_overlap_definitions_on_a_hand_made_example() -> None:
    rows = ([("L1", "train")] * 2 + [("L1", "test")] * 3  # 1 lesion, 2 x 3 = 6 pairs, 5 images
            + [("L2", "train"), ("L2", "val"), ("L2", "test")]  # in all three: 1 triple
            + [("L3", "val")] * 2 + [("L3", "test")]  # val-test: 2 pairs
            + [("L4", "train"), ("L5", "", )])  # not shared; unsplit rows are ignored
    pairs, everywhere = lesion_overlaps(_meta(rows))
    got = {(p.a, p.b): (p.lesions, p.image_pairs, p.images) for p in pairs}
    assert got == {("train", "val"): (1, 1, 2), ("train", "test"): (2, 7, 7), ("val", "test"): (2, 3, 5)}
    assert everywhere == {"lesions": 1, "image_triples": 1, "images": 3}


def _split_synthetic(tmp_path: Path, synthetic_ham: Path) -> Path:
    shutil.copytree(synthetic_ham.parent, tmp_path / "ham")
    return tmp_path / "ham" / synthetic_ham.name


def test_clean_split_passes_and_json_round_trips(synthetic_ham: Path, tmp_path: Path) -> None:
    source = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion"))
    result = audit_split(source, progress=False)
    assert result.status == "PASS" and result.lesion_disjoint and result.images_hashed == 120
    assert not result.exact and not [p for p in result.near if p.across]
    assert result.verdict.startswith("no lesion, image or duplicate shared")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "PASS" and data["split_sizes"]["train"] > 0 and data["lesion_disjoint"] is True


def test_exact_and_near_duplicates_across_splits(synthetic_ham: Path, tmp_path: Path) -> None:
    csv = _split_synthetic(tmp_path, synthetic_ham)
    images = csv.parent / "images"
    source = open_source(DataConfig(metadata_csv=csv, split="lesion"))
    t = source.table
    train_ids = t.loc[t["split"] == "train", "image_id"].tolist()
    test_ids = t.loc[t["split"] == "test", "image_id"].tolist()
    # an exact copy (re-saved losslessly from the decoded pixels) and a brightened re-encode, both under test ids
    pixels = np.asarray(Image.open(images / f"{train_ids[0]}.jpg").convert("RGB"))
    Image.fromarray(pixels).save(images / f"{test_ids[0]}.png")
    (images / f"{test_ids[0]}.jpg").unlink()
    near = ImageEnhance.Brightness(Image.open(images / f"{train_ids[1]}.jpg").convert("RGB")).enhance(1.08)
    near.save(images / f"{test_ids[1]}.jpg", quality=80)
    source = open_source(DataConfig(metadata_csv=csv, split="lesion"))
    result = audit_split(source, progress=False)
    exact = [(p.image_a, p.image_b) for p in result.exact]
    assert sorted(exact[0]) == sorted((train_ids[0], test_ids[0])) and result.exact[0].across
    near_pairs = {tuple(sorted((p.image_a, p.image_b))): p for p in result.near}
    hit = near_pairs[tuple(sorted((train_ids[1], test_ids[1])))]
    assert hit.across and 0 < hit.distance <= NEAR_THRESHOLD
    assert result.status == "FAIL" and "exact duplicate" in result.verdict


def test_lesion_overlap_fails_and_metadata_only_mode(synthetic_ham: Path) -> None:
    source = open_ham10000(synthetic_ham)
    t = source.table
    split = np.resize(np.array(["train", "val", "test"]), len(t))  # ignores lesions: multi-image lesions leak
    leaky = with_split(source, t[["image_id"]].assign(split=split), "round robin", "test",
                       allow_shared_lesions=True)
    result = audit_split(leaky, hash_images=False)
    assert result.status == "FAIL" and not result.lesion_disjoint and result.images_hashed == 0
    assert "LEAKAGE" in result.verdict and "lesions" in result.verdict


def test_known_pairs_across_splits_warn(synthetic_ham: Path) -> None:
    source = open_source(DataConfig(metadata_csv=synthetic_ham, split="lesion"))
    t = source.table
    a = t.loc[t["split"] == "train", "image_id"].iloc[0]
    b = t.loc[t["split"] == "test", "image_id"].iloc[0]
    source.linked_pairs = [(a, b)]
    result = audit_split(source, progress=False)
    assert result.status == "WARN" and "1 known duplicate pairs across splits" in result.verdict
    assert result.known[0].distance is not None and result.known[0].distance > NEAR_THRESHOLD


def test_hamming_pairs_matches_brute_force() -> None:
    bits = np.random.default_rng(0).integers(0, 256, (300, 32), dtype=np.uint8)
    bits[7] = bits[200] ^ np.eye(32, dtype=np.uint8)[3]  # 1 bit apart
    found = hamming_pairs(bits, threshold=100, block=64)
    brute = [(i, j, int(np.unpackbits(bits[i] ^ bits[j]).sum())) for i in range(300) for j in range(i + 1, 300)]
    assert sorted(found) == sorted(x for x in brute if x[2] <= 100)
    assert (7, 200, 1) in found


def test_synthetic_set_is_audited_as_synthetic() -> None:
    source = open_synthetic(n=50, seed=0, size=16)
    from lesionlab.data import lesion_split

    split = lesion_split(source.table, 0.2, 0.2, 0)
    result = audit_split(with_split(source, source.table[["image_id"]].assign(split=split.to_numpy()), "l", "t"),
                         progress=False)
    assert result.synthetic and result.to_dict()["synthetic"] is True


# ------------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_dermamnist_map_reproduces_the_published_overlaps(shared_data: Path) -> None:
    cfg = DataConfig(metadata_csv=shared_data / "ham10000" / "HAM10000_metadata.csv",
                     image_dirs=[shared_data / "ham10000-64" / "images"], split="dermamnist")
    result = audit_split(open_source(cfg), hash_images=False)
    got = {(p.a, p.b): (p.image_pairs, p.lesions) for p in result.pairs}
    assert got == {("train", "test"): (886, 641), ("train", "val"): (440, 332), ("val", "test"): (128, 113)}
    assert (result.all_splits["image_triples"], result.all_splits["lesions"]) == (51, 40)
    assert result.status == "FAIL"
    assert sum(k.across for k in result.known) == 9  # 9 of the 18 known duplicate pairs straddle splits


@pytest.fixture(scope="module")
def shared_64(shared_data: Path) -> tuple[DataConfig, tuple]:
    """Config of the shared 64px set and its image hashes, computed once for the tests below."""
    from lesionlab.data import open_unsplit
    from lesionlab.data.audit import image_hashes

    cfg = DataConfig(metadata_csv=shared_data / "ham10000" / "HAM10000_metadata.csv",
                     image_dirs=[shared_data / "ham10000-64" / "images"])
    return cfg, image_hashes(open_unsplit(cfg), progress=False)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("split", ["dermamnist_c", "lesion"])
def test_dermamnist_c_and_lesionlab_splits_are_clean(shared_64: tuple, split: str) -> None:
    cfg, hashes = shared_64
    result = audit_split(open_source(cfg.model_copy(update={"split": split})), hashes=hashes)
    assert result.lesion_disjoint and all(p.image_pairs == 0 for p in result.pairs)
    assert result.images_hashed == 5984 and not result.exact
    assert not [p for p in result.near if p.across]
    assert not [k for k in result.known if k.across]
    assert result.status == "PASS"
    present = [k for k in result.known if k.distance is not None]
    assert len(present) == 8 and all(k.distance > NEAR_THRESHOLD for k in present)  # other photos, not copies
