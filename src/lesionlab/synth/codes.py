"""The structured InfoGAN code: layout, encoding of real labels, Q-head targets and losses, and code sampling.

The code vector the generator reads is ``[class one-hot (7) | sex one-hot (3) | site one-hot (15) | age (1) |
free (k)]`` (parts switched off in the config are left out). Class, sex, site and age are *supervised*: the Q head
learns them from real images with their labels, so each code means the real label. The free codes are uniform in
[-1, 1] and learnt only from generated images (InfoGAN's mutual-information term), so they pick up whatever varies
most beyond the labels (colour, size, ...).

Codes for generation are drawn from the training set's own joint distribution: a real training row of the wanted
class (matching any fixed sex or site) lends its sex, site and age, so a sample never gets an implausible
combination of patient data unless a user asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lesionlab.classes import CLASS_CODES, NUM_CLASSES, index_of
from lesionlab.data.metadata import SEXES, SITES
from lesionlab.synth.errors import SynthError

AGE_CENTRE = 50.0
AGE_SCALE = 20.0
KNOWN_SEXES: tuple[str, ...] = tuple(s for s in SEXES if s != "unknown")
KNOWN_SITES: tuple[str, ...] = tuple(s for s in SITES if s != "unknown")
IGNORE = -100  # cross-entropy ignore index: an unknown sex or site teaches the Q head nothing


@dataclass(frozen=True)
class CodeLayout:
    """Where each code part sits in the generator's code vector and in the Q head's output."""

    sex: bool = True
    site: bool = True
    age: bool = True
    free: int = 2
    parts: dict[str, tuple[int, int]] = field(init=False)
    q_parts: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        widths = {"class": NUM_CLASSES, "sex": len(SEXES) if self.sex else 0, "site": len(SITES) if self.site else 0,
                  "age": 1 if self.age else 0, "free": self.free}
        q_widths = {"class": NUM_CLASSES, "sex": len(KNOWN_SEXES) if self.sex else 0,
                    "site": len(KNOWN_SITES) if self.site else 0, "age": 1 if self.age else 0, "free": self.free}
        object.__setattr__(self, "parts", _spans(widths))
        object.__setattr__(self, "q_parts", _spans(q_widths))

    @property
    def dim(self) -> int:
        return max(stop for _, stop in self.parts.values())

    @property
    def q_dim(self) -> int:
        return max(stop for _, stop in self.q_parts.values())

    @property
    def active(self) -> list[str]:
        return [p for p, (a, b) in self.parts.items() if b > a]

    def columns(self, parts: list[str] | None) -> list[int] | None:
        """Code-vector columns of some parts (``None``: all), for routing parts to generator blocks."""
        if parts is None:
            return None
        cols: list[int] = []
        for p in parts:
            a, b = self.parts[p]
            cols += list(range(a, b))
        return cols

    def to_dict(self) -> dict[str, Any]:
        return {"sex": self.sex, "site": self.site, "age": self.age, "free": self.free}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeLayout:
        return cls(sex=bool(d["sex"]), site=bool(d["site"]), age=bool(d["age"]), free=int(d["free"]))


def _spans(widths: dict[str, int]) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, w in widths.items():
        out[name] = (start, start + w)
        start += w
    return out


@dataclass
class Labels:
    """A batch of supervised labels (indices) and free codes: what a code vector is built from."""

    label: torch.Tensor  # [N] long, class index
    sex: torch.Tensor  # [N] long, index in SEXES
    site: torch.Tensor  # [N] long, index in SITES
    age: torch.Tensor  # [N] float, years (never NaN here: missing ages are imputed for the code, see age_known)
    age_known: torch.Tensor  # [N] bool: False where the real age was missing (no Q target)
    free: torch.Tensor  # [N, k] float in [-1, 1]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def index(self, idx: torch.Tensor) -> Labels:
        return Labels(self.label[idx], self.sex[idx], self.site[idx], self.age[idx], self.age_known[idx],
                      self.free[idx])

    def to(self, device: torch.device | str) -> Labels:
        return Labels(self.label.to(device), self.sex.to(device), self.site.to(device), self.age.to(device),
                      self.age_known.to(device), self.free.to(device))

    def with_free(self, free: torch.Tensor) -> Labels:
        return Labels(self.label, self.sex, self.site, self.age, self.age_known, free)

    def frame(self) -> pd.DataFrame:
        """Readable rows: dx, sex, site, age and the free codes."""
        out = pd.DataFrame({"dx": [CLASS_CODES[i] for i in self.label.tolist()],
                            "sex": [SEXES[i] for i in self.sex.tolist()],
                            "site": [SITES[i] for i in self.site.tolist()],
                            "age": self.age.double().numpy().round(1)})
        for j in range(self.free.shape[1]):
            out[f"free_{j}"] = self.free[:, j].double().numpy().round(4)
        return out


def encode(layout: CodeLayout, labels: Labels) -> torch.Tensor:
    """The generator's code vector [N, layout.dim] for a batch of labels."""
    parts = [F.one_hot(labels.label, NUM_CLASSES).float()]
    if layout.sex:
        parts.append(F.one_hot(labels.sex, len(SEXES)).float())
    if layout.site:
        parts.append(F.one_hot(labels.site, len(SITES)).float())
    if layout.age:
        parts.append(((labels.age.float() - AGE_CENTRE) / AGE_SCALE).unsqueeze(1))
    if layout.free:
        parts.append(labels.free.float())
    return torch.cat(parts, dim=1)


def q_targets(labels: Labels) -> dict[str, torch.Tensor]:
    """Targets of the Q head: class index, known-sex / known-site index (``IGNORE`` when unknown), scaled age."""
    unknown_sex, unknown_site = SEXES.index("unknown"), SITES.index("unknown")
    sex = torch.where(labels.sex == unknown_sex, torch.full_like(labels.sex, IGNORE), labels.sex)
    site = torch.where(labels.site == unknown_site, torch.full_like(labels.site, IGNORE), labels.site)
    return {"class": labels.label, "sex": sex, "site": site,
            "age": (labels.age.float() - AGE_CENTRE) / AGE_SCALE, "age_known": labels.age_known, "free": labels.free}


def split_q(layout: CodeLayout, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Q head's output split into its parts."""
    return {p: q[:, a:b] for p, (a, b) in layout.q_parts.items() if b > a}


def q_loss(layout: CodeLayout, q: torch.Tensor, labels: Labels, weights: dict[str, float], fake: bool
           ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted Q loss: cross-entropy for class/sex/site, squared error for age and (on generated images) the free
    codes. Returns the loss and its parts (for the history)."""
    out = split_q(layout, q.float())
    t = q_targets(labels)
    terms: dict[str, torch.Tensor] = {"class": F.cross_entropy(out["class"], t["class"])}
    if layout.sex and bool((t["sex"] != IGNORE).any()):
        terms["sex"] = F.cross_entropy(out["sex"], t["sex"], ignore_index=IGNORE)
    if layout.site and bool((t["site"] != IGNORE).any()):
        terms["site"] = F.cross_entropy(out["site"], t["site"], ignore_index=IGNORE)
    if layout.age:
        known = t["age_known"] if not fake else torch.ones_like(t["age_known"])
        if bool(known.any()):
            terms["age"] = (out["age"][:, 0] - t["age"]).pow(2)[known].mean()
    if fake and layout.free:
        terms["free"] = (out["free"] - t["free"]).pow(2).mean()
    total = sum(weights.get(k, 1.0) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def labels_from_table(table: pd.DataFrame, free: int = 0) -> Labels:
    """Labels of a sample table's rows (``label``, ``sex``, ``site``, ``age``): unknown values map to ``unknown``,
    a missing age to the median age of the row's class (and ``age_known`` False)."""
    n = len(table)
    label = torch.as_tensor(table["label"].to_numpy().astype(np.int64))
    if (label < 0).any() or (label >= NUM_CLASSES).any():
        bad = int(np.flatnonzero((label.numpy() < 0) | (label.numpy() >= NUM_CLASSES))[0])
        raise SynthError(f"row {bad} (image {table['image_id'].iloc[bad]}) has label {int(label[bad])}; the generator "
                         f"trains on labelled images 0..{NUM_CLASSES - 1}")
    sex = table["sex"].astype(str).map(lambda s: SEXES.index(s) if s in SEXES else SEXES.index("unknown"))
    site = table["site"].astype(str).map(lambda s: SITES.index(s) if s in SITES else SITES.index("unknown"))
    age = pd.to_numeric(table["age"], errors="coerce")
    known = age.notna().to_numpy()
    fill = age.groupby(table["label"].to_numpy()).transform("median").fillna(age.median())
    age = age.fillna(fill).fillna(AGE_CENTRE)
    return Labels(label=label, sex=torch.as_tensor(sex.to_numpy().astype(np.int64)),
                  site=torch.as_tensor(site.to_numpy().astype(np.int64)),
                  age=torch.as_tensor(age.to_numpy().astype(np.float32)),
                  age_known=torch.as_tensor(np.array(known, dtype=bool)),
                  free=torch.zeros(n, free))


# ------------------------------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class CodeRequest:
    """What a user asks ``synth sample`` / ``traverse`` for; ``None`` means drawn from the training data."""

    dx: str | None = None
    sex: str | None = None
    site: str | None = None
    age: float | None = None
    free: tuple[float, ...] | None = None

    def check(self, layout: CodeLayout) -> None:
        if self.dx is not None:
            index_of(self.dx)  # raises UnknownClassError naming the valid codes
        if self.sex is not None:
            if not layout.sex:
                raise SynthError("this generator has no sex code (codes.sex was false)")
            if self.sex not in SEXES:
                raise SynthError(f"sex {self.sex!r} is not one of {', '.join(SEXES)}")
        if self.site is not None:
            if not layout.site:
                raise SynthError("this generator has no site code (codes.site was false)")
            if self.site not in SITES:
                raise SynthError(f"site {self.site!r} is not one of {', '.join(SITES)}")
        if self.age is not None:
            if not layout.age:
                raise SynthError("this generator has no age code (codes.age was false)")
            if not 0 <= self.age <= 120:
                raise SynthError(f"age {self.age:g} is outside 0..120")
        if self.free is not None and len(self.free) != layout.free:
            raise SynthError(f"{len(self.free)} free code values given; this generator has {layout.free}")


class CodeSampler:
    """Draw code labels from the training set's joint distribution of (class, sex, site, age)."""

    def __init__(self, table: pd.DataFrame, layout: CodeLayout) -> None:
        if table.empty:
            raise SynthError("no training rows to draw codes from")
        self.table = table.reset_index(drop=True)
        self.layout = layout
        self.labels = labels_from_table(self.table, layout.free)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.label.numpy(), minlength=NUM_CLASSES)

    def draw(self, classes: np.ndarray, rng: np.random.Generator, request: CodeRequest = CodeRequest()
             ) -> tuple[Labels, list[str]]:
        """Labels for one sample per entry of ``classes``; returns the labels and notes (e.g. a relaxed filter)."""
        request.check(self.layout)
        label = self.labels.label.numpy()
        sex = self.labels.sex.numpy()
        site = self.labels.site.numpy()
        notes: list[str] = []
        picks = np.empty(len(classes), dtype=np.int64)
        for c in np.unique(classes):
            pool = np.flatnonzero(label == c)
            if len(pool) == 0:
                raise SynthError(f"class {CLASS_CODES[int(c)]} has no training images; the generator cannot draw "
                                 "codes for it")
            narrowed = pool
            if request.sex is not None:
                narrowed = narrowed[sex[narrowed] == SEXES.index(request.sex)]
            if request.site is not None:
                narrowed = narrowed[site[narrowed] == SITES.index(request.site)]
            if len(narrowed) == 0:
                notes.append(f"no {CLASS_CODES[int(c)]} training image has "
                             f"{', '.join(f'{k} {v}' for k, v in (('sex', request.sex), ('site', request.site)) if v)}"
                             "; the other codes were drawn from all images of that class")
                narrowed = pool
            where = np.flatnonzero(classes == c)
            picks[where] = rng.choice(narrowed, size=len(where), replace=True)
        out = self.labels.index(torch.as_tensor(picks))
        n = len(classes)
        sex_t, site_t, age_t = out.sex.clone(), out.site.clone(), out.age.clone()
        if request.sex is not None:
            sex_t[:] = SEXES.index(request.sex)
        if request.site is not None:
            site_t[:] = SITES.index(request.site)
        if request.age is not None:
            age_t[:] = float(request.age)
        if request.free is not None:
            free = torch.as_tensor(np.tile(np.asarray(request.free, dtype=np.float32), (n, 1)))
        else:
            free = torch.as_tensor(rng.uniform(-1.0, 1.0, size=(n, self.layout.free)).astype(np.float32))
        return Labels(torch.as_tensor(classes.astype(np.int64)), sex_t, site_t, age_t,
                      torch.ones(n, dtype=torch.bool), free), notes


def class_plan(n: int, counts: np.ndarray, dx: str | None, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """Class index of each of ``n`` samples: one class; balanced (equal shares, in order); or the training mix."""
    if n < 1:
        raise SynthError(f"--n must be at least 1, got {n}")
    if dx is not None:
        return np.full(n, index_of(dx), dtype=np.int64)
    present = np.flatnonzero(counts > 0)
    if balanced:
        return np.sort(np.resize(present, n)).astype(np.int64)
    p = counts / counts.sum()
    return np.sort(rng.choice(NUM_CLASSES, size=n, p=p)).astype(np.int64)


def sampling_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-row probabilities of drawing a real training image: natural, square-root or fully class-balanced."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    if mode == "natural":
        w = np.ones(len(labels))
    elif mode == "sqrt":
        w = 1.0 / np.sqrt(counts[labels])
    elif mode == "balanced":
        w = 1.0 / counts[labels]
    else:
        raise SynthError(f"train.class_sampling {mode!r} is not natural, sqrt or balanced")
    return w / w.sum()
