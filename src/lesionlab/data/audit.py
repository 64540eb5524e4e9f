"""Leakage audit of a split: shared lesions, exact duplicate images and near-duplicates, within and across splits.

Lesion overlap is computed from the metadata (every row that has a split, whether or not its image is present),
so the published figures of a map can be checked without the images. For each pair of splits A, B:

- ``lesions``: lesions with images in both A and B;
- ``image_pairs``: pairs (image in A, image in B) showing the same lesion. This is the definition behind the
  published DermaMNIST figures (train-test 886 images / 641 lesions, train-val 440 / 332, val-test 128 / 113),
  and for all three splits the number of (train, val, test) image triples of one lesion (51 / 40). The other
  candidate definitions do not reproduce them: e.g. test images whose lesion is in train gives 693, and all images
  of the shared lesions in A or B gives 1,518;
- ``images``: distinct images of A or B that belong to a shared lesion.

Duplicates are found from the images that are present:

- exact: identical decoded pixels (sha256 of the RGB array and its shape), whatever the file encoding;
- near: perceptual hash (``imagehash.phash`` with ``hash_size=16``, 256 bits) at Hamming distance
  <= :data:`NEAR_THRESHOLD` = 32. Measured on the 5,984 shared 64px HAM10000 images (one per lesion): re-encoding
  (JPEG q70), rescaling, blur, +-10% brightness or +15% contrast of one image stay within 26 (most within 14),
  while the closest two different images are 40 apart (unrelated pairs: median 126). It finds copies of one
  photograph, not new photographs of the same lesion: the 18 "newly discovered" duplicate pairs of DermaMNIST-C,
  which are such photographs, lie at 88-130 where both are present, so they are reported from their list, by
  split, not claimed as detections.

Verdict: FAIL when a lesion or an exact duplicate is shared between splits, WARN for near-duplicates or known
duplicate pairs across splits, PASS otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lesionlab.core.io import sha256_bytes
from lesionlab.data.sources import DataSource
from lesionlab.data.splits import SPLITS

NEAR_HASH_SIZE = 16  # phash side: 16 x 16 = 256 bits
NEAR_THRESHOLD = 32  # max Hamming distance (of 256 bits) for a near-duplicate; see the module docstring


@dataclass
class PairOverlap:
    """Lesion overlap between two splits (see the module docstring for the definitions)."""

    a: str
    b: str
    lesions: int
    image_pairs: int
    images: int
    examples: list[str] = field(default_factory=list)


@dataclass
class DuplicatePair:
    """Two present images that are exact or near duplicates."""

    image_a: str
    image_b: str
    split_a: str
    split_b: str
    distance: int  # phash Hamming distance (0 for exact duplicates)
    same_lesion: bool

    @property
    def across(self) -> bool:
        return self.split_a != self.split_b


@dataclass
class KnownPair:
    """A listed duplicate pair (``newly_discovered_duplicates.csv``) and where the split put it."""

    image_a: str
    image_b: str
    split_a: str
    split_b: str
    distance: int | None  # phash distance when both images are present

    @property
    def across(self) -> bool:
        return bool(self.split_a) and bool(self.split_b) and self.split_a != self.split_b


@dataclass
class AuditResult:
    """Everything the audit found; :meth:`to_dict` is the JSON that reports and model cards embed."""

    source: str
    split: str
    synthetic: bool
    split_sizes: dict[str, int]
    pairs: list[PairOverlap]
    all_splits: dict[str, int]  # lesions in all three splits and their (train, val, test) image triples
    images_hashed: int
    near_threshold: int
    exact: list[DuplicatePair]
    near: list[DuplicatePair]
    known: list[KnownPair]
    status: str = ""
    verdict: str = ""

    @property
    def lesion_disjoint(self) -> bool:
        return all(p.lesions == 0 for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lesion_disjoint"] = self.lesion_disjoint
        out["hash"] = f"imagehash.phash(hash_size={NEAR_HASH_SIZE}), Hamming <= {self.near_threshold}"
        for key in ("exact", "near", "known"):
            for record, obj in zip(out[key], getattr(self, key), strict=True):
                record["across"] = obj.across
        return out


def lesion_overlaps(metadata: pd.DataFrame, examples: int = 5) -> tuple[list[PairOverlap], dict[str, int]]:
    """Per split pair: shared lesions, lesion-linked image pairs and images; plus the all-three-splits figures."""
    rows = metadata[metadata["split"].isin(SPLITS)]
    counts = rows.groupby(["lesion_id", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS),
                                                                                         fill_value=0)
    pairs = []
    for a, b in combinations(SPLITS, 2):
        shared = counts[(counts[a] > 0) & (counts[b] > 0)]
        pairs.append(PairOverlap(a, b, lesions=len(shared), image_pairs=int((shared[a] * shared[b]).sum()),
                                 images=int((shared[a] + shared[b]).sum()),
                                 examples=[str(x) for x in shared.index[:examples]]))
    everywhere = counts[(counts > 0).all(axis=1)]
    return pairs, {"lesions": len(everywhere), "image_triples": int(everywhere.prod(axis=1).sum()),
                   "images": int(everywhere.sum(axis=1).sum())}


def image_hashes(source: DataSource, progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Per present image: sha256 of its decoded pixels, and its packed 256-bit phash (uint8 [N, 32])."""
    digests: list[str] = []
    bits = np.zeros((len(source), NEAR_HASH_SIZE * NEAR_HASH_SIZE // 8), dtype=np.uint8)
    for i in tqdm(range(len(source)), desc="hashing images", unit="img", disable=not progress, leave=False):
        img = source.load_image(i)
        pixels = np.asarray(img)
        digests.append(sha256_bytes(repr(pixels.shape).encode() + pixels.tobytes()))
        bits[i] = np.packbits(imagehash.phash(img, hash_size=NEAR_HASH_SIZE).hash.ravel())
    return digests, bits


_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint16)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed bit rows, broadcasting ``a`` [..., nbytes] against ``b``."""
    if hasattr(np, "bitwise_count") and a.shape[-1] % 8 == 0:  # numpy >= 2: popcount on 64-bit words
        x = np.ascontiguousarray(a).view(np.uint64) ^ np.ascontiguousarray(b).view(np.uint64)
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return _POPCOUNT[a ^ b].sum(axis=-1, dtype=np.int64)


def hamming_pairs(bits: np.ndarray, threshold: int, block: int = 512) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= ``threshold`` between packed bit rows."""
    n = len(bits)
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = _distances(bits[start:stop, None, :], bits[None, :, :])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii + start
        out += [(int(i + start), int(j), int(dist[i, j])) for i, j in zip(ii[keep], jj[keep], strict=True)]
    return out


def _verdict(result: AuditResult) -> tuple[str, str]:
    fail = [f"{p.lesions} lesions ({p.image_pairs} image pairs) shared {p.a}-{p.b}" for p in result.pairs if p.lesions]
    exact_across = sum(p.across for p in result.exact)
    if exact_across:
        fail.append(f"{exact_across} exact duplicate image pairs across splits")
    warn = []
    near_across = sum(p.across for p in result.near)
    if near_across:
        warn.append(f"{near_across} near-duplicate image pairs across splits")
    known_across = sum(p.across for p in result.known)
    if known_across:
        warn.append(f"{known_across} known duplicate pairs across splits")
    if fail:
        return "FAIL", "LEAKAGE: " + "; ".join(fail + warn)
    if warn:
        return "WARN", "lesion-disjoint, but review: " + "; ".join(warn)
    checked = f"{result.images_hashed} images hashed" if result.images_hashed else "images not hashed"
    return "PASS", f"no lesion, image or duplicate shared between train, val and test ({checked})"


def audit_split(source: DataSource, hash_images: bool = True, threshold: int = NEAR_THRESHOLD,
                progress: bool = True, hashes: tuple[list[str], np.ndarray] | None = None) -> AuditResult:
    """Audit the split applied to ``source`` (see the module docstring); ``hash_images=False`` skips duplicates.

    ``hashes`` (from :func:`image_hashes` on the same source) saves decoding again when auditing several splits.
    """
    metadata = source.metadata if source.metadata is not None else source.table
    pairs, everywhere = lesion_overlaps(metadata)
    table = source.table
    exact: list[DuplicatePair] = []
    near: list[DuplicatePair] = []
    pos = pd.Series(np.arange(len(table)), index=table["image_id"].to_numpy())
    bits = None
    if hash_images:
        digests, bits = hashes if hashes is not None else image_hashes(source, progress)
        if len(digests) != len(table):
            raise ValueError(f"hashes cover {len(digests)} images, the source has {len(table)}")
        ids, splits, lesions = (table[c].astype(str).to_numpy() for c in ("image_id", "split", "lesion_id"))
        for members in pd.Series(range(len(digests))).groupby(digests).agg(list):
            for i, j in combinations(members, 2):
                exact.append(DuplicatePair(ids[i], ids[j], splits[i], splits[j], 0, lesions[i] == lesions[j]))
        same = {(p.image_a, p.image_b) for p in exact}
        for i, j, d in hamming_pairs(bits, threshold):
            if (ids[i], ids[j]) not in same:
                near.append(DuplicatePair(ids[i], ids[j], splits[i], splits[j], d, lesions[i] == lesions[j]))
    split_of = metadata.set_index("image_id")["split"].astype(str)
    known = []
    for a, b in source.linked_pairs:
        distance = None
        if bits is not None and a in pos.index and b in pos.index:
            distance = int(_distances(bits[pos[a]], bits[pos[b]]))
        known.append(KnownPair(a, b, split_of.get(a, ""), split_of.get(b, ""), distance))
    sizes = {name: int((metadata["split"] == name).sum()) for name in SPLITS}
    result = AuditResult(source=source.name, split=source.split_name, synthetic=source.synthetic, split_sizes=sizes,
                         pairs=pairs, all_splits=everywhere, images_hashed=len(table) if hash_images else 0,
                         near_threshold=threshold, exact=exact, near=near, known=known)
    result.status, result.verdict = _verdict(result)
    return result
