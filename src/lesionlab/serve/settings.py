"""Limits and options of the decision-support service, in one typed object the CLI flags fill in.

Every limit that protects the server from a hostile or mistaken upload lives here, so that a deployment can
tighten it without touching code and a test can lower it to provoke each error cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lesionlab.data.metadata import AGE_RANGE

DEFAULT_CONTENT_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff")

# Used when the run has no ``referral_threshold`` fitted on validation data by ``lesionlab evaluate --calibrate``.
# 0.5 means "refer when the malignant classes together are at least as likely as the benign ones"; the response
# says ``threshold_source: "default"`` so that nobody mistakes it for a validated operating point.
DEFAULT_REFERRAL_THRESHOLD = 0.5

# The derived pixel limit: an upload may have this many pixels per pixel of the model's input (16 x 16, i.e. 16 times
# the input's side). Larger images only cost memory and time: the model sees them shrunk to its input.
PIXELS_PER_INPUT_PIXEL = 256


class ServeSettings(BaseModel):
    """What the service accepts and how it answers; all sizes are per image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest accepted upload per image, in bytes")
    max_pixels: int | None = Field(
        None, gt=0, description="largest width x height decoded per image (after JPEG draft scaling). None: derived "
        "from the run, PIXELS_PER_INPUT_PIXEL x the model's input pixels (4.2 megapixels for a 128 px model); "
        "raise it (--max-pixels) to accept larger PNG, TIFF or WebP files")
    image_modes: Literal["convert", "refuse"] = Field(
        "convert", description="greyscale, alpha, palette, CMYK and 16-bit uploads: convert to RGB with a note in the "
        "response, or refuse them (415)")
    max_decodes: int = Field(2, ge=1, description="images decoded at the same time; further uploads wait")
    decode_wait_s: float = Field(30.0, gt=0, description="longest wait for a decode slot before answering 503")
    read_timeout_s: float = Field(10.0, gt=0, description="longest pause between two chunks of a request body (408)")
    body_timeout_s: float = Field(60.0, gt=0, description="longest time to receive a whole request body (408)")
    allow_unfinished: bool = Field(False, description="serve a run whose training did not finish, with a warning")
    allow_synthetic: bool = Field(False, description="serve a run trained on synthetic images, with a warning")
    min_side: int = Field(16, ge=1, description="smallest accepted width or height, pixels")
    max_aspect: float = Field(10.0, ge=1.0, description="largest accepted long side / short side")
    max_batch: int = Field(16, gt=0, description="most images in one /v1/predict/batch request")
    content_types: tuple[str, ...] = Field(DEFAULT_CONTENT_TYPES, description="accepted image content types")
    age_range: tuple[float, float] = Field(AGE_RANGE, description="accepted patient age, years, inclusive")
    default_threshold: float = Field(DEFAULT_REFERRAL_THRESHOLD, ge=0.0, le=1.0)
    top_k: int = Field(3, ge=1, le=7)
    heatmap_max_side: int = Field(512, ge=32, description="long side of the returned heatmap PNG, pixels")
    onnx_path: str | None = Field(None, description="serve with ONNX Runtime from this file instead of PyTorch")
    tta: bool | None = Field(None, description="flip-averaged predictions; None: as the run was validated")
    source_size: tuple[int, int] | None = Field(
        None, description="(height, width) the training images were stored at, e.g. (64, 64) for the shared 64 px "
        "HAM10000: uploads are squashed to it before the run's preprocessing, as training images were. None: as the "
        "run records (data.source_image_size in run.json); 0: never")
    warmup: bool = Field(True, description="score one synthetic image at start-up so the first request is not slow")
    threads: int = Field(2, ge=1, description="intra-op threads of the inference backend")

    @field_validator("content_types", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        if isinstance(v, str):
            v = [p for p in v.split(",") if p.strip()]
        return tuple(str(p).strip().lower() for p in v) if isinstance(v, (list, tuple)) else v

    @field_validator("source_size", mode="before")
    @classmethod
    def _square(cls, v: object) -> object:
        return (v, v) if isinstance(v, int) else v

    @field_validator("source_size")
    @classmethod
    def _non_negative(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (min(v) < 0 or (0 in v and v != (0, 0))):
            raise ValueError(f"source_size {v} must be positive (height, width), or 0 for never")
        return v

    def pixel_limit(self, input_size: tuple[int, int]) -> int:
        """``max_pixels``, or the limit derived from the model's input size (height, width)."""
        if self.max_pixels is not None:
            return self.max_pixels
        return PIXELS_PER_INPUT_PIXEL * int(input_size[0]) * int(input_size[1])

    @field_validator("age_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"age_range {v} is not (low, high)")
        return v
