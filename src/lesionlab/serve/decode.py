"""Turn untrusted upload bytes into an RGB image, or a :class:`ServeError` that says exactly what is wrong.

Order matters: cheap checks first (empty, bytes, content type), then the header only (format, pixel count, so a
decompression bomb is refused before any pixel is decoded), then a full ``verify`` and ``load`` that catch corrupt
and truncated files. PIL's global ``MAX_IMAGE_PIXELS`` is left alone; the limit here is the service's own.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from lesionlab.data.images import DataError, to_rgb
from lesionlab.serve.errors import ServeError
from lesionlab.serve.settings import ServeSettings

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


def decode_image(data: bytes, settings: ServeSettings, name: str = "image", content_type: str | None = None,
                 field: str = "image") -> Image.Image:
    """Decode one uploaded image to RGB with EXIF orientation applied; raises :class:`ServeError` on bad input."""
    if not data:
        raise ServeError(400, "empty_upload", f"{name}: the upload is empty (0 bytes)", field)
    if len(data) > settings.max_bytes:
        raise ServeError(413, "too_many_bytes",
                         f"{name}: {len(data):,} bytes is over the limit of {settings.max_bytes:,} bytes", field)
    if content_type is not None:
        check_content_type(content_type, settings, name, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServeError(413, "too_many_pixels", f"{name}: refused as a decompression bomb ({err})", field) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ServeError(400, "not_an_image", f"{name}: not a readable image ({err})", field) from None
    width, height = probe.size
    if width * height > settings.max_pixels:
        raise ServeError(413, "too_many_pixels", f"{name}: {width}x{height} = {width * height:,} pixels is over the "
                         f"limit of {settings.max_pixels:,} pixels", field)
    if min(width, height) < settings.min_side:
        raise ServeError(422, "image_too_small", f"{name}: {width}x{height} pixels; each side must be at least "
                         f"{settings.min_side} pixels", field)
    if max(width, height) / min(width, height) > settings.max_aspect:
        raise ServeError(422, "bad_aspect_ratio", f"{name}: {width}x{height} pixels is not a lesion photograph "
                         f"(sides differ more than {settings.max_aspect:g}:1)", field)
    fmt = probe.format or "?"
    allowed = {t for f, types in _FORMAT_TYPES.items() for t in types if f == fmt}
    if not allowed & set(settings.content_types):
        raise ServeError(415, "unsupported_media_type",
                         f"{name}: {fmt} images are not accepted; send one of {', '.join(settings.content_types)}",
                         field)
    if content_type is not None and content_type.split(";")[0].strip().lower() not in allowed:
        raise ServeError(415, "content_type_mismatch",
                         f"{name}: declared {content_type!r} but the file is {fmt}", field)
    try:
        probe.verify()  # structure and checksums (PNG CRCs); the object is unusable afterwards
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decodes every pixel: truncated or corrupt data fails here
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image, name, convert_mode=True)  # the data layer's rules (16-bit scaled, alpha dropped)
    except DataError as err:
        raise ServeError(415, "unsupported_image_mode", str(err), field) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ServeError(400, "corrupt_image", f"{name}: the {fmt} file is corrupt or truncated ({err})",
                         field) from None
    return rgb
