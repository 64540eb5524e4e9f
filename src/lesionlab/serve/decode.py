"""Turn untrusted upload bytes into an RGB image, or a :class:`ServeError` that says exactly what is wrong.

Order matters: cheap checks first (empty, bytes, content type), then the header only (format, pixel count, so a
decompression bomb is refused before any pixel is decoded), then a full ``verify`` and ``load`` that catch corrupt
and truncated files. PIL's global ``MAX_IMAGE_PIXELS`` is left alone; the limit here is the service's own.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

from lesionlab.data.images import MODE_NAMES, DataError, to_rgb
from lesionlab.serve.errors import ServeError
from lesionlab.serve.settings import ServeSettings

CONVERSIONS = {"L": "grey copied to R, G and B", "1": "black and white copied to R, G and B",
               "RGBA": "alpha dropped", "LA": "alpha dropped, grey copied", "PA": "alpha dropped",
               "P": "palette applied",
               "I;16": "16-bit values scaled to 8-bit", "I;16B": "16-bit values scaled to 8-bit",
               "I;16L": "16-bit values scaled to 8-bit", "I": "16-bit range scaled to 8-bit",
               "CMYK": "Pillow's CMYK conversion", "YCbCr": "Pillow's YCbCr conversion"}

# PIL format name -> the content types that may carry it.
_FORMAT_TYPES: dict[str, tuple[str, ...]] = {
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "PNG": ("image/png",),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-ms-bmp"),
    "TIFF": ("image/tiff",),
}


def check_content_type(content_type: str | None, settings: ServeSettings, name: str, field: str = "image") -> None:
    """Refuse (415) an upload whose declared type is not an accepted image type."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in settings.content_types:
        raise ServeError(415, "unsupported_media_type",
                         f"{name}: content type {declared or '(none)'!r} is not accepted; "
                         f"send one of {', '.join(settings.content_types)}", field)


@dataclass
class Decoded:
    """An upload decoded to RGB: the image (smaller than the file when JPEG draft scaling applied), the file's own
    size and mode, and what was done to it (``notes``, repeated in the response)."""

    image: Image.Image
    width: int
    height: int
    mode: str
    notes: list[str] = field(default_factory=list)


DRAFT_MARGIN = 4  # JPEG draft scaling keeps at least 4x the side the model needs: the shrink after it is unchanged


def decode_upload(data: bytes, settings: ServeSettings, name: str = "image", content_type: str | None = None,
                  field: str = "image", need: int | None = None, max_pixels: int | None = None) -> Decoded:
    """Decode one uploaded image to RGB with EXIF orientation applied; raises :class:`ServeError` on bad input.

    ``need``: the longest side the model's preprocessing uses (its input or stored-image size). A JPEG larger than
    :data:`DRAFT_MARGIN` times that is decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself, so its full
    size is never allocated. ``max_pixels`` (default ``settings.max_pixels``, else 40 megapixels) bounds the pixels
    actually decoded, checked from the header before any pixel is.
    """
    limit = max_pixels or settings.max_pixels or 40_000_000
    _check_bytes(data, settings, name, content_type, field)
    probe = _open(data, name, field)
    width, height = probe.size
    if min(width, height) < settings.min_side:
        raise ServeError(422, "image_too_small", f"{name}: {width}x{height} pixels; each side must be at least "
                         f"{settings.min_side} pixels", field)
    if max(width, height) / min(width, height) > settings.max_aspect:
        raise ServeError(422, "bad_aspect_ratio", f"{name}: {width}x{height} pixels is not a lesion photograph "
                         f"(sides differ more than {settings.max_aspect:g}:1)", field)
    fmt = _check_format(probe, settings, name, content_type, field)
    scaled = _draft(probe, need)
    if scaled[0] * scaled[1] > limit:
        raise ServeError(413, "too_many_pixels", f"{name}: {width}x{height} = {width * height:,} pixels is over the "
                         f"limit of {limit:,} pixels (a serving setting: --max-pixels)", field)
    try:
        probe.verify()  # structure and checksums (PNG CRCs); the object is unusable afterwards
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _draft(image, need)
            image.load()  # decodes every pixel: truncated or corrupt data fails here
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image = ImageOps.exif_transpose(image)
            mode = image.mode
            rgb, notes = _to_rgb(image, settings, name, field)
    except DataError as err:
        raise ServeError(415, "unsupported_image_mode", str(err), field) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ServeError(400, "corrupt_image", f"{name}: the {fmt} file is corrupt or truncated ({err})",
                         field) from None
    if rgb.size != (width, height) and rgb.size != (height, width):
        notes.append(f"decoded at {rgb.width}x{rgb.height} by JPEG scaling (the model needs at most {need} px)")
    return Decoded(rgb, width, height, mode, notes)


def decode_image(data: bytes, settings: ServeSettings, name: str = "image", content_type: str | None = None,
                 field: str = "image") -> Image.Image:
    """:func:`decode_upload`'s RGB image alone (the file's full size, no draft scaling)."""
    return decode_upload(data, settings, name, content_type, field).image


def _check_bytes(data: bytes, settings: ServeSettings, name: str, content_type: str | None, field: str) -> None:
    if not data:
        raise ServeError(400, "empty_upload", f"{name}: the upload is empty (0 bytes)", field)
    if len(data) > settings.max_bytes:
        raise ServeError(413, "too_many_bytes",
                         f"{name}: {len(data):,} bytes is over the limit of {settings.max_bytes:,} bytes", field)
    if content_type is not None:
        check_content_type(content_type, settings, name, field)


def _open(data: bytes, name: str, field: str) -> Image.Image:
    """The header only (no pixels yet); PIL's own bomb check turned into a 413."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServeError(413, "too_many_pixels", f"{name}: refused as a decompression bomb ({err})", field) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        # PIL names the stream object (<_io.BytesIO object at 0x...>): say what it was instead
        reason = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", str(err))
        raise ServeError(400, "not_an_image", f"{name}: not a readable image ({reason})", field) from None


def _check_format(probe: Image.Image, settings: ServeSettings, name: str, content_type: str | None,
                  field: str) -> str:
    fmt = probe.format or "?"
    allowed = {t for f, types in _FORMAT_TYPES.items() for t in types if f == fmt}
    if not allowed & set(settings.content_types):
        raise ServeError(415, "unsupported_media_type",
                         f"{name}: {fmt} images are not accepted; send one of {', '.join(settings.content_types)}",
                         field)
    if content_type is not None and content_type.split(";")[0].strip().lower() not in allowed:
        raise ServeError(415, "content_type_mismatch",
                         f"{name}: declared {content_type!r} but the file is {fmt}", field)
    return fmt


def _draft(image: Image.Image, need: int | None) -> tuple[int, int]:
    """Ask the JPEG decoder for a scaled decode (still at least DRAFT_MARGIN x ``need`` per side); the size it
    will decode at."""
    if need and image.format == "JPEG" and min(image.size) > DRAFT_MARGIN * need:
        side = DRAFT_MARGIN * int(need)
        image.draft("RGB", (side, side))
    return image.size


def _to_rgb(image: Image.Image, settings: ServeSettings, name: str, field: str) -> tuple[Image.Image, list[str]]:
    """RGB as it is, or converted by the data layer's rules with a note, or refused, as ``image_modes`` says."""
    if image.mode == "RGB":
        return image, []
    what = MODE_NAMES.get(image.mode, image.mode)
    if settings.image_modes == "refuse":
        raise ServeError(415, "unsupported_image_mode", f"{name}: image mode {image.mode} ({what}); this service "
                         "accepts RGB images only (serving setting image_modes=refuse)", field)
    rgb = to_rgb(image, name, convert_mode=True)  # 16-bit scaled, alpha dropped, greyscale copied
    return rgb, [f"converted from {image.mode} ({what}) to RGB: {CONVERSIONS.get(image.mode, 'by Pillow')}"]
