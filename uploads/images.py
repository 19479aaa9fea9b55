"""Validate untrusted image bytes and re-encode them for storage; no database, no model input.

Every check that can run on the header runs before a single pixel is decoded: byte size,
format allow-list, pixel count (which also stops decompression bombs). The decoded first frame
goes to the classifier as it is: research.inference alone turns an image into the model's
input (orientation, mode, size). What is stored and shown is re-encoded from the decoded
pixels: upright (EXIF orientation), in a mode PNG and JPEG hold (RGB, RGBA or L), without
metadata.
"""

import hashlib
import io
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class UploadRejected(Exception):  # noqa: N818  (a user-facing outcome, not a crash)
    """An upload refused with a human-readable message, a short code and an HTTP status."""

    def __init__(self, message: str, *, code: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass(frozen=True)
class ValidatedImage:
    """An accepted upload: its decoded first frame and facts about the bytes it came from."""

    image: Image.Image  # as decoded, any mode and orientation: what the classifier is given
    format: str
    sha256: str
    size_bytes: int
    original_name: str

    @cached_property
    def display_image(self) -> Image.Image:
        """The pixels stored and shown: upright, in RGB, RGBA or L."""
        return _to_storable_mode(_transpose(self.image))

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
    data: bytes, *, name: str | None, max_bytes: int, max_pixels: int
) -> ValidatedImage:
    """Validate and decode untrusted image bytes, or raise UploadRejected saying why."""
    original_name = clean_original_name(name)
    check_byte_size(len(data), name=original_name, max_bytes=max_bytes)
    image_format = _check_header(data, original_name, max_pixels)
    image = _decode(data, original_name, max_pixels)
    return ValidatedImage(
        image=image,
        format=image_format,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        original_name=original_name,
    )


def encode_for_storage(validated: ValidatedImage) -> EncodedImage:
    """Re-encode the decoded pixels (JPEG stays JPEG, everything else becomes PNG)."""
    image = validated.display_image
    if validated.format == "JPEG" and image.mode in ("RGB", "L"):
        return EncodedImage(_save(image, "JPEG", quality=JPEG_QUALITY, optimize=False), "jpg")
    return EncodedImage(_save(image, "PNG", compress_level=3), "png")


def encode_thumbnail(validated: ValidatedImage) -> EncodedImage | None:
    """Return a small copy for listings, or None when the image is already small."""
    image = validated.display_image
    if image.width <= THUMBNAIL_SIZE[0] and image.height <= THUMBNAIL_SIZE[1]:
        return None
    thumbnail = image.copy()
    thumbnail.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BICUBIC, reducing_gap=2.0)
    if thumbnail.mode == "RGBA":
        return EncodedImage(_save(thumbnail, "PNG", compress_level=6), "png")
    return EncodedImage(_save(thumbnail, "JPEG", quality=85), "jpg")


def warm_up_codecs() -> None:
    """Load Pillow's plugins and run each stored codec once, so no request pays for it."""
    Image.init()
    for image_format in ("PNG", "JPEG"):
        data = _save(Image.new("RGB", (400, 400)), image_format)
        validated = read_validated_image(
            data, name="warm-up", max_bytes=len(data), max_pixels=10**6
        )
        encode_for_storage(validated)
        encode_thumbnail(validated)


def _check_header(data: bytes, original_name: str, max_pixels: int) -> str:
    """Identify the format and size from the header alone, then verify the file's structure."""
    with _open_image(data, original_name, max_pixels) as image:
        image_format = image.format
        try:
            image.verify()
        except Exception as err:
            raise _corrupt(original_name) from err
    return image_format


def _decode(data: bytes, original_name: str, max_pixels: int) -> Image.Image:
    """Decode the first frame, as the file has it (its pixels no longer read the bytes)."""
    with _open_image(data, original_name, max_pixels) as image:
        try:
            image.load()
        except Exception as err:
            raise _corrupt(original_name) from err
        return image


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


def _to_storable_mode(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to one PNG and JPEG store: RGB, RGBA (alpha kept) or L.

    For storage and display only; the classifier's input is made by research.inference.
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
