"""Response shapes for the OpenAPI documentation (``/docs``); the tests validate real answers against them.

The endpoints return ready JSON rather than letting FastAPI re-validate each answer (that would only add latency),
so these models document the contract and the tests keep them honest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ClassProbability(BaseModel):
    code: str = Field(description="HAM10000 diagnosis code")
    name: str
    malignant: bool
    probability: float = Field(description="after the run's temperature scaling")


class Referral(BaseModel):
    refer: bool | None = Field(description="malignant_probability >= threshold; null (withheld) when the image "
                                           "cannot be assessed")
    malignant_probability: float = Field(description="p(akiec) + p(bcc) + p(mel)")
    threshold: float
    threshold_source: str = Field(description="'validation' (fitted by evaluate --calibrate) or 'default' (0.5)")
    malignant_classes: list[str]


class ModelInfo(BaseModel):
    id: str
    version: str = Field(description="first 12 hex digits of the weights' SHA-256")
    backend: str = Field(description="torch or onnxruntime")
    flip_averaged: bool = Field(description="whether the logits are averaged over test-time views")
    tta_views: str = Field(description="which views: flips (identity, h- and v-flip) or dihedral (the 8 symmetries)")
    lesionlab: str
    warnings: list[str] = Field(description="why this model's answers must not be trusted, if anything")


class ImageInfo(BaseModel):
    name: str
    width: int
    height: int
    mode: str = Field(description="the file's pixel mode (RGB, L, RGBA, I;16, ...)")
    notes: list[str] = Field(description="what was done to it: mode conversion, JPEG draft scaling")


class Assessment(BaseModel):
    status: Literal["assessed", "uncertain", "cannot_assess"] = Field(
        description="cannot_assess: out of scope or failed quality, no verdict; uncertain: the model abstains")
    reasons: list[str] = Field(description="out_of_scope, too_dark, too_bright, blurred, one_colour, degraded, "
                                           "small_margin")
    message: str


class Scope(BaseModel):
    in_scope: bool | None = Field(description="looks like the training images; null when no gate was fitted")
    score: float | None
    threshold: float | None = Field(description="fitted on the validation split")
    method: str | None


class Quality(BaseModel):
    ok: bool
    flags: list[str]
    mean_luminance: float
    laplacian_var: float
    one_colour_share: float
    degradation_score: float | None = Field(None, description="log-odds that the image is degraded; null when no "
                                                              "degradation check was fitted")
    degradation_threshold: float | None = Field(None, description="fitted on the clean validation images")


class Uncertainty(BaseModel):
    uncertain: bool | None = Field(description="margin below the validation-fitted threshold; null when none")
    margin: float = Field(description="p(top1) - p(top2)")
    threshold: float | None


class Metadata(BaseModel):
    age: float | None
    sex: str
    site: str
    used_by_model: bool


class Caution(BaseModel):
    attribute: str = Field(description="sex, age_band or site")
    level: str = Field(description="the patient's level of it, as the evaluation names it (unknown: not given)")
    n: int | None = Field(description="evaluated images in this subgroup")
    balanced_accuracy: float | None = Field(description="the subgroup's, on the classes it shares with the rest")
    rest_balanced_accuracy: float | None = Field(description="the other evaluated images', on the same classes")
    p_holm: float | None = Field(description="one-sided permutation test, Holm-adjusted over the subgroups tested")
    source: str | None = Field(description="the run's evaluation folder the figures come from (eval-test first)")
    message: str


class Heatmap(BaseModel):
    method: str
    class_: str = Field(alias="class", description="class code explained")
    layer: str
    width: int
    height: int
    png_base64: str = Field(description="RGBA PNG, same aspect as the upload, to lay over it")


class ImageResult(BaseModel):
    image: ImageInfo
    assessment: Assessment
    scope: Scope
    quality: Quality
    uncertainty: Uncertainty
    probabilities: list[ClassProbability]
    top: list[ClassProbability]
    referral: Referral
    metadata: Metadata
    cautions: list[Caution] = Field(description="subgroups the run's evaluation flagged as significantly less "
                                                "accurate that this patient belongs to; empty when none")
    heatmap: Heatmap | None


class PredictResponse(ImageResult):
    model: ModelInfo
    temperature: float | None
    warnings: list[str]
    timing_ms: dict[str, float] = Field(description="decode, preprocess, model, explain, total, overhead")


class BatchResponse(BaseModel):
    model: ModelInfo
    temperature: float | None
    warnings: list[str]
    results: list[ImageResult]
    timing_ms: dict[str, float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty, not an image, corrupt or truncated"},
    408: {"model": ErrorBody, "description": "the request body arrived too slowly"},
    413: {"model": ErrorBody, "description": "too many bytes, pixels or images"},
    415: {"model": ErrorBody, "description": "content type or image mode not accepted, or not multipart/form-data"},
    422: {"model": ErrorBody, "description": "a form field out of range or unknown (field named)"},
    503: {"model": ErrorBody, "description": "every decode slot busy for too long; retry after Retry-After seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}
