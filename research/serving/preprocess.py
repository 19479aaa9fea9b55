"""An image of any size and mode to the model's input: the one conversion, in evaluation and
in serving. Pillow and NumPy only, so the web may call it without loading JAX.

    pixels = preprocess_image(Image.open("cat.jpg"), (32, 32, 3))   # uint8 [32, 32, 3]
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray

# Modes whose samples are 16-bit; 'I' (32-bit) is judged by its values instead.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# What a malformed EXIF block makes ImageOps.exif_transpose raise (Pillow parses and
# re-serializes the whole block to rotate the image).
_EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, struct.error)


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"Image arrays must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"Expected an HxW, HxWx1, HxWx3 or HxWx4 array, got {array.shape}")
    return Image.fromarray(array)


def upright(image: Image.Image) -> Image.Image:
    """The image as its EXIF orientation says to display it; unrotated when the EXIF block is
    malformed (a broken camera tag is no reason to refuse a picture)."""
    try:
        return ImageOps.exif_transpose(image)
    except _EXIF_ERRORS as error:
        log.debug("Ignoring malformed EXIF orientation: %s", error)
        return image


def to_8bit(image: Image.Image) -> Image.Image:
    """Single-channel images of more than 8 bits -> mode 'L', by these rules:

    - 'I;16*' modes are 16-bit: divided by 257, so 65535 is 255.
    - 'I' (32-bit integers, as PNG and TIFF decoders give 16-bit data) is 16-bit when its
      maximum exceeds 255, else its values are already 0..255.
    - 'F' (float) in [0, 1] is scaled by 255; any other range is clipped to 0..255.

    Values are rounded to the nearest integer. Other modes are returned unchanged.
    """
    if image.mode not in (*SIXTEEN_BIT_MODES, "I", "F"):
        return image
    array = np.asarray(image).astype(np.float64)
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and array.max(initial=0) > 255):
        array = array / 257.0
    elif image.mode == "F" and array.min(initial=0) >= 0 and array.max(initial=0) <= 1:
        array = array * 255.0
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> 'RGB' (3 channels) or 'L' (1): more than 8 bits as `to_8bit`,
    transparency (an alpha band or a palette's transparent index) composited onto white,
    CMYK, YCbCr, bilevel and the rest through Pillow's conversions."""
    image = to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB" if channels == 3 else "L")


def preprocess_image(image: ImageLike, image_shape: Sequence[int]) -> np.ndarray:
    """One image of any size and mode -> uint8 [H, W, C] at the model's input size: EXIF
    orientation applied, then `to_model_mode`, then a bilinear resize. The one conversion of
    an image for the model, in evaluation and in serving."""
    height, width, channels = image_shape
    pil = to_model_mode(upright(_to_pil(image)), channels)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.asarray(pil, np.uint8).reshape(height, width, channels)


def preprocess(images: Sequence[ImageLike], image_shape: Sequence[int]) -> np.ndarray:
    """Images of any size and mode -> uint8 [N, H, W, C], each by `preprocess_image`."""
    height, width, channels = image_shape
    out = np.empty((len(images), height, width, channels), np.uint8)
    for i, image in enumerate(images):
        out[i] = preprocess_image(image, image_shape)
    return out
