"""The study definition: one YAML file, validated like every lesionlab config (unknown keys are errors).

A definition says which cases (a data source and split drawn per class with a seed, or an explicit list of image
ids), the design (``separate``, ``crossover``, ``revise``), the arms (``unassisted``, ``assisted``, ``faulty``),
the model run and which forms of its output are shown, the time limit, whether age/sex/site are shown, how many
cases each participant reads and in which order, and the answer form. ``lesionlab study create`` freezes it.

Case sets: in ``separate`` and ``revise`` each arm reads its own, disjoint set of cases (``cases.per_class`` is per
set); in ``crossover`` every case is read in every arm, one arm per session (``cases.per_class`` is the whole set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lesionlab.classes import CLASS_CODES
from lesionlab.config import DataConfig, Strict, apply_overrides, build_config, read_yaml
from lesionlab.study.columns import ARMS, DESIGNS, arm_case_sets
from lesionlab.study.errors import StudyError

SUPPORT_FORMS: tuple[str, ...] = ("probabilities", "top1", "malignant", "heatmap")
DEFAULT_GRACE_S = 2.0  # network and image-loading allowance on top of the time limit; see docs/ARCHITECTURE.md

DEFAULT_INSTRUCTIONS = (
    "You will see dermoscopy images of pigmented skin lesions, one at a time. For each, choose the diagnosis you "
    "think most likely among the seven classes. Where a time limit applies, a countdown shows the time left; when "
    "it reaches zero the next image follows and the case counts as not answered. In some parts of the study the "
    "output of a computer model is shown beside the image: it can be wrong. You can close the browser and come "
    "back to the same link later; you continue where you left off."
)
DEFAULT_CONSENT = (
    "I agree to take part in this reader study. My answers and response times are stored under an anonymous "
    "participant id and used for research only. I can stop at any time."
)


class CasesConfig(Strict):
    """Where the cases come from: a lesionlab data source and split drawn per class, or explicit image ids."""

    data: DataConfig = DataConfig()
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["test"])
    per_class: dict[str, int] | int | None = None  # per case set; an int means that many of every class
    image_ids: list[str] | None = None  # explicit cases (in any split); overrides per_class
    seed: int = 0

    @field_validator("per_class")
    @classmethod
    def _known_classes(cls, v: dict[str, int] | int | None) -> dict[str, int] | int | None:
        if isinstance(v, dict):
            unknown = sorted(set(v) - set(CLASS_CODES))
            if unknown:
                raise ValueError(f"unknown class codes {unknown}; use {', '.join(CLASS_CODES)}")
            if any(n < 0 for n in v.values()):
                raise ValueError("per_class counts must be >= 0")
        elif isinstance(v, int) and v < 1:
            raise ValueError("per_class must be at least 1")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> CasesConfig:
        if self.per_class is None and not self.image_ids:
            raise ValueError("give either per_class (cases drawn per class) or image_ids (an explicit list)")
        if self.image_ids is not None and len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("image_ids lists an image twice")
        return self

    def counts(self) -> dict[str, int]:
        """Cases per class in one case set."""
        if isinstance(self.per_class, int):
            return dict.fromkeys(CLASS_CODES, self.per_class)
        return {c: int((self.per_class or {}).get(c, 0)) for c in CLASS_CODES}


class ModelSupport(Strict):
    """The run whose output assisted arms show, and in which forms."""

    run: Path
    support: list[Literal["probabilities", "top1", "malignant", "heatmap"]] = Field(
        default_factory=lambda: ["probabilities", "top1", "malignant"])
    tta: bool | None = None  # flip-averaged outputs; None: as the run was validated
    batch_size: int = Field(32, ge=1)

    @field_validator("support")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"choose at least one form of support: {', '.join(SUPPORT_FORMS)}")
        return list(dict.fromkeys(v))


class FaultyConfig(Strict):
    """The ``faulty`` arm: a seeded fraction of its cases shows a deliberately wrong model output."""

    fraction: float = Field(0.3, gt=0.0, le=1.0)
    seed: int = 0
    # flip_malignancy: the shown top class is from the other group (malignant <-> benign) than the truth;
    # any_wrong: any class other than the truth.
    mode: Literal["flip_malignancy", "any_wrong"] = "flip_malignancy"


class AnswerForm(Strict):
    """What a participant answers: one of the seven classes, plus optional confidence and management."""

    confidence: bool = False  # malignancy confidence 0-100, for ROC analysis
    management: list[str] | None = None  # e.g. [excise, follow up, reassure]

    @field_validator("management")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            v = [s.strip() for s in v]
            if not v or any(not s for s in v) or len(set(v)) != len(v):
                raise ValueError("management choices must be distinct, non-empty strings")
        return v


class StudyDefinition(Strict):
    """A reader study, as written in ``configs/studies/*.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    title: str = ""
    description: str = ""
    instructions: str = DEFAULT_INSTRUCTIONS
    consent: str = DEFAULT_CONSENT
    design: Literal["separate", "crossover", "revise"] = "separate"
    arms: list[Literal["unassisted", "assisted", "faulty"]] = Field(default_factory=lambda: ["unassisted", "assisted"])
    randomise_arm_order: bool = False  # separate/revise: False keeps the listed order (alone first, as published)
    washout_minutes: float = Field(0.0, ge=0.0)  # crossover: least time between one session's end and the next
    cases: CasesConfig
    model: ModelSupport | None = None
    faulty: FaultyConfig | None = None
    time_limit_s: float | None = Field(None, gt=0.0)  # None: no time limit
    grace_s: float = Field(DEFAULT_GRACE_S, ge=0.0, le=60.0)
    show_clinical: bool = False  # age, sex and lesion site beside the image
    cases_per_participant: int | None = Field(None, ge=1)  # per case set; None: every case of the set
    shuffle: bool = True  # a seeded shuffle of the cases per participant (and per session)
    seed: int = 0
    form: AnswerForm = AnswerForm()

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"a study needs at least one arm: {', '.join(ARMS)}")
        if len(set(v)) != len(v):
            raise ValueError("an arm is listed twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudyDefinition:
        assert self.design in DESIGNS
        needs_model = [a for a in self.arms if a != "unassisted"]
        if needs_model and self.model is None:
            raise ValueError(f"arms {needs_model} show the model's output: set model.run to a run directory")
        if "faulty" in self.arms and self.faulty is None:
            self.faulty = FaultyConfig()
        if self.faulty is not None and "faulty" not in self.arms:
            raise ValueError("faulty is configured but 'faulty' is not among the arms")
        if self.design == "revise" and not needs_model:
            raise ValueError("the revise design shows the model after the first answer: add an assisted or faulty arm")
        if self.design == "crossover" and len(self.arms) < 2:
            raise ValueError("the crossover design reads every case in every arm: list at least two arms")
        return self

    def case_sets(self) -> list[str]:
        """The names of the case sets: one per arm (separate, revise) or one shared ``all`` set (crossover)."""
        return list(dict.fromkeys(self.arm_sets().values()))

    def arm_sets(self) -> dict[str, str]:
        """Arm -> the case set it reads (:func:`lesionlab.study.columns.arm_case_sets`)."""
        return arm_case_sets(self.design, self.arms)


def load_definition(path: str | Path, overrides: list[str] | None = None) -> StudyDefinition:
    """Read and validate a study YAML (plus ``key=value`` overrides); errors name the file and the key.

    A relative ``model.run`` is taken as it is written (relative to the working directory, like run paths
    everywhere in lesionlab).
    """
    data = read_yaml(path)
    data = apply_overrides(data, overrides or [], where=str(path))
    try:
        return build_config(StudyDefinition, data, where=str(path))
    except ValueError as err:
        raise StudyError(str(err)) from None


def definition_from_dict(data: dict[str, Any], where: str = "study definition") -> StudyDefinition:
    """Validate a mapping (tests, the frozen copy inside a study)."""
    try:
        return build_config(StudyDefinition, data, where=where)
    except ValueError as err:
        raise StudyError(str(err)) from None
