"""Validate untrusted image bytes and re-encode them for storage; no database, no model input.

Every check that can run on the header runs before a single pixel is decoded: byte size,
format allow-list, pixel count per image (which also stops decompression bombs) and, inside
`request_pixel_budget`, per request. At most `UPLOAD_MAX_CONCURRENT_DECODES` images are decoded
at once per process, JPEGs at a reduced scale (`Image.draft`), and an image larger than
`UPLOAD_STORED_MAX_SIDE` is shrunk to it right after decoding: a 32x32 classifier never needs
more, and memory stays bounded. The decoded (and so shrunk) first frame goes to the classifier:
research.serving.classifier alone turns an image into the model's input (orientation, mode, size).
What
is stored and shown is re-encoded from those pixels: upright (EXIF orientation), colours
converted to sRGB from an embedded ICC profile, in a mode PNG and JPEG hold (RGB, RGBA or L),
and without metadata (no EXIF, ICC profile, comment or text chunk survives).
"""

import contextvars
import hashlib
import io
import logging
import math
import os
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from django.conf import settings
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Pillow plugin name -> what the user reads in messages.
ALLOWED_FORMATS = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}
STORED_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
THUMBNAIL_SIZE = (320, 320)
JPEG_QUALITY = 90
MAX_NAME_LENGTH = 200
STORED_MAX_SIDE = 1024  # default of settings.UPLOAD_STORED_MAX_SIDE
MAX_CONCURRENT_DECODES = 2  # default of settings.UPLOAD_MAX_CONCURRENT_DECODES
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class UploadRejected(Exception):  # noqa: N818  (a user-facing outcome, not a crash)
    """An upload refused with a human-readable message, a short code and an HTTP status."""

    def __init__(self, message: str, *, code: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class _PixelBudget:
    limit: int
    used: int = 0
    names: list[str] = field(default_factory=list)


_pixel_budget: contextvars.ContextVar[_PixelBudget | None] = contextvars.ContextVar(
    "upload_pixel_budget", default=None
)
_decode_slots_lock = threading.Lock()
_decode_slots: dict[int, threading.BoundedSemaphore] = {}


@contextmanager
def request_pixel_budget(limit: int) -> Iterator[None]:
    """Within this block, the images read together may hold at most `limit` pixels.

    The site's middleware opens one per request, so a form post of ten images shares it.
    """
    token = _pixel_budget.set(_PixelBudget(limit))
    try:
        yield
    finally:
        _pixel_budget.reset(token)


@dataclass(frozen=True)
class ValidatedImage:
    """An accepted upload: its decoded first frame and facts about the bytes it came from."""

    image: Image.Image  # as decoded (shrunk to the stored size), any mode and orientation
    format: str
    sha256: str
    size_bytes: int
    original_name: str

    @cached_property
    def display_image(self) -> Image.Image:
        """The pixels stored and shown: upright, sRGB, in RGB, RGBA or L, with no metadata."""
        return _without_metadata(_to_storable_mode(_to_srgb(_transpose(self.image))))

    @property
    def width(self) -> int:
        return self.display_image.width

    @property
    def height(self) -> int:
        return self.display_image.height


@dataclass(frozen=True)
class EncodedImage:
    """Bytes ready for storage and the file extension that matches them."""

    data: bytes
    extension: str


def describe_allowed_formats() -> str:
    """Return the accepted formats as a human-readable list."""
    return ", ".join(ALLOWED_FORMATS.values())


def clean_original_name(name: str | None) -> str:
    """Return a displayable base name: no directories, no control characters, bounded length.

    The result is only ever shown (escaped) to people; files are stored under generated names.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if len(base) > MAX_NAME_LENGTH:
        stem, ext = os.path.splitext(base)
        ext = ext if len(ext) <= 10 else ""
        base = stem[: MAX_NAME_LENGTH - len(ext) - 1] + "…" + ext
    return base or "unnamed"


def check_byte_size(size: int, *, name: str, max_bytes: int) -> None:
    """Refuse an empty file or one over the byte limit (before reading it, when possible)."""
    if size == 0:
        raise UploadRejected(f"“{name}” is empty.", code="empty_file")
    if size > max_bytes:
        raise UploadRejected(
            f"“{name}” is {_format_bytes(size)}; the limit is {_format_bytes(max_bytes)}.",
            code="file_too_large",
            status=413,
        )


def read_validated_image(
    data: bytes,
    *,
    name: str | None,
    max_bytes: int,
    max_pixels: int,
    max_side: int | None = None,
    draft_side: int | None = None,
    digest: bool = True,
) -> ValidatedImage:
    """Validate and decode untrusted image bytes, or raise UploadRejected saying why.

    The decoded image is at most `max_side` (default: settings.UPLOAD_STORED_MAX_SIDE) pixels
    on its longer side; larger ones are shrunk, keeping their proportions. With `draft_side`, a
    JPEG is decoded at the smallest DCT scale whose longer side is still >= draft_side (up to
    8x fewer pixels decoded, for an answer that stores nothing). Without `digest`, sha256 is ""
    (the bytes' digest is kept with a stored upload only).
    """
    original_name = clean_original_name(name)
    check_byte_size(len(data), name=original_name, max_bytes=max_bytes)
    image_format, size = _check_header(data, original_name, max_pixels)
    _charge_pixel_budget(original_name, size)
    if max_side is None:
        max_side = getattr(settings, "UPLOAD_STORED_MAX_SIDE", STORED_MAX_SIDE)
    with _decode_slot():
        image = _decode(data, original_name, max_pixels, max_side, draft_side or max_side)
    return ValidatedImage(
        image=image,
        format=image_format,
        sha256=hashlib.sha256(data).hexdigest() if digest else "",  # "": not stored, not needed
        size_bytes=len(data),
        original_name=original_name,
    )


def encode_for_storage(validated: ValidatedImage) -> EncodedImage:
    """Re-encode the decoded pixels (JPEG stays JPEG, everything else becomes PNG)."""
    image = validated.display_image
    if validated.format == "JPEG" and image.mode in ("RGB", "L"):
        return EncodedImage(_save(image, "JPEG", quality=JPEG_QUALITY, optimize=False), "jpg")
    return EncodedImage(_save(image, "PNG", compress_level=3), "png")


def thumbnail_extension(validated: ValidatedImage) -> str:
    """The extension of the image's thumbnail ('jpg' or 'png'), '' when it needs none: known
    before encoding, so the name can be stored before the file is written."""
    image = validated.display_image
    if image.width <= THUMBNAIL_SIZE[0] and image.height <= THUMBNAIL_SIZE[1]:
        return ""
    return "png" if image.mode == "RGBA" else "jpg"


def encode_thumbnail(validated: ValidatedImage) -> EncodedImage | None:
    """Return a small copy for listings, or None when the image is already small.

    Shrunk by a whole factor with a box filter first, then bicubic to the size (reducing_gap
    1.0): a third of the time of bicubic all the way, and no visible difference at 320 pixels.
    """
    extension = thumbnail_extension(validated)
    if not extension:
        return None
    thumbnail = validated.display_image.copy()
    thumbnail.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BICUBIC, reducing_gap=1.0)
    if extension == "png":
        return EncodedImage(_save(thumbnail, "PNG", compress_level=6), "png")
    return EncodedImage(_save(thumbnail, "JPEG", quality=85), "jpg")


def warm_up_codecs() -> None:
    """Load Pillow's plugins and run each stored codec once, so no request pays for it."""
    Image.init()
    for image_format in ("PNG", "JPEG"):
        data = _save(Image.new("RGB", (400, 400)), image_format)
        validated = read_validated_image(
            data, name="warm-up", max_bytes=len(data), max_pixels=10**6, max_side=1024
        )
        encode_for_storage(validated)
        encode_thumbnail(validated)


def _check_header(data: bytes, original_name: str, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Identify the format and size from the header alone, then verify the file's structure."""
    with _open_image(data, original_name, max_pixels) as image:
        image_format, size = image.format, image.size
        try:
            image.verify()
        except Exception as err:
            raise _corrupt(original_name) from err
    return image_format, size


def _charge_pixel_budget(original_name: str, size: tuple[int, int]) -> None:
    budget = _pixel_budget.get()
    if budget is None:
        return
    budget.used += size[0] * size[1]
    budget.names.append(original_name)
    if budget.used > budget.limit:
        raise UploadRejected(
            f"The images sent together hold {budget.used / 1e6:.1f} megapixels (up to "
            f"“{original_name}”); the limit per request is {budget.limit / 1e6:g} megapixels. "
            "Send fewer or smaller images at once.",
            code="too_many_pixels",
            status=413,
        )


@contextmanager
def _decode_slot() -> Iterator[None]:
    """Bound how many images this process decodes at once (each may take tens of MB)."""
    slots = max(1, int(getattr(settings, "UPLOAD_MAX_CONCURRENT_DECODES", MAX_CONCURRENT_DECODES)))
    with _decode_slots_lock:
        semaphore = _decode_slots.setdefault(slots, threading.BoundedSemaphore(slots))
    with semaphore:
        yield


def _decode(
    data: bytes, original_name: str, max_pixels: int, max_side: int, draft_side: int
) -> Image.Image:
    """Decode the first frame (JPEGs at the smallest scale still >= min(max_side, draft_side)),
    then shrink it to fit max_side; its pixels no longer read the bytes."""
    draft_side = min(max_side, draft_side)
    with _open_image(data, original_name, max_pixels) as image:
        try:
            if image.format == "JPEG" and max(image.size) > draft_side:
                scale = draft_side / max(image.size)  # draft keeps both sides >= the request
                image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image.load()
            return _shrink(image, max_side)
        except UploadRejected:
            raise
        except Exception as err:
            raise _corrupt(original_name) from err


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """`image` itself when it fits, else a copy whose longer side is max_side (metadata kept,
    so EXIF orientation still applies)."""
    if max(image.size) <= max_side:
        return image
    if image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "I", "F"):
        image = _to_storable_mode(image)  # palettes and bilevel only resize by nearest
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


@contextmanager
def _open_image(data: bytes, original_name: str, max_pixels: int) -> Iterator[Image.Image]:
    """Open bytes with the allowed plugins only and refuse too many pixels before decoding.

    Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS) sits above our limit and
    is caught too, so a bomb is refused whichever check sees it first.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as err:
        raise _too_many_pixels(original_name, None, max_pixels) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UploadRejected(
            f"“{original_name}” is not an image in a supported format "
            f"(accepted: {describe_allowed_formats()}).",
            code="unsupported_format",
            status=415,
        ) from err
    with image:
        width, height = image.size
        if width < 1 or height < 1 or width * height > max_pixels:
            raise _too_many_pixels(original_name, (width, height), max_pixels)
        yield image


def _too_many_pixels(
    original_name: str, size: tuple[int, int] | None, max_pixels: int
) -> UploadRejected:
    dims = f" ({size[0]}×{size[1]} pixels)" if size else ""
    return UploadRejected(
        f"“{original_name}” is too large{dims}; the limit is {max_pixels / 1e6:g} megapixels.",
        code="too_many_pixels",
        status=413,
    )


def _corrupt(original_name: str) -> UploadRejected:
    return UploadRejected(
        f"“{original_name}” is truncated or corrupt and cannot be read.", code="corrupt_image"
    )


def _palette_target(image: Image.Image) -> str:
    return "RGBA" if "transparency" in image.info else "RGB"


def _transpose(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is not worth refusing the picture over
        return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert pixels described by an embedded ICC profile to sRGB; unchanged without one
    (or when the profile cannot be used: it is dropped on storage either way)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode=output_mode
        )
    except Exception as err:  # a broken or mismatched profile: keep the pixels as they are
        logger.info("ICC profile ignored: %s", err)
        return image
    return converted if converted is not None else image


def _without_metadata(image: Image.Image) -> Image.Image:
    """A copy with no metadata, so no encoder copies EXIF, ICC, comments or text from it.

    A colour-key transparency (PNG tRNS) becomes an alpha channel instead of being lost.
    """
    if image.mode in ("RGB", "L") and "transparency" in image.info:
        image = image.convert("RGBA")
    clean = image.copy()
    clean.info = {}
    return clean


def _to_storable_mode(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to one PNG and JPEG store: RGB, RGBA (alpha kept) or L.

    For storage and display only; the classifier's input is made by research.serving.classifier.
    """
    mode = image.mode
    if mode in ("RGB", "RGBA", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8))
    if mode == "P":
        return image.convert(_palette_target(image))
    if mode in _ALPHA_MODES:
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _save(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _format_bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size} bytes"
