"""uploads.images: validating untrusted bytes, decoding them, and re-encoding them for storage."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from uploads.images import (
    UploadRejected,
    ValidatedImage,
    clean_original_name,
    encode_for_storage,
    read_validated_image,
)

pytestmark = pytest.mark.no_models

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def read(data: bytes, name: str = "x.png", **limits) -> ValidatedImage:
    return read_validated_image(data, name=name, **{**LIMITS, **limits})


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression-bomb header)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def test_exif_orientation_is_applied_to_what_is_stored():
    """A JPEG tagged 'rotate 90°' is stored and measured upright, with the tag gone."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif)
    validated = read(data, "photo.jpg")
    assert (validated.width, validated.height) == (20, 40)
    stored = Image.open(io.BytesIO(encode_for_storage(validated).data))
    assert stored.size == (20, 40) and stored.getexif().get(0x0112) is None


def test_the_decoded_image_is_handed_on_unconverted():
    """The web converts nothing for the model: the image keeps the file's mode and orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("CMYK", (40, 20), (0, 200, 30, 10)), "JPEG", exif=exif)
    validated = read(data, "photo.jpg")
    with Image.open(io.BytesIO(data)) as original:
        assert validated.image.mode == original.mode == "CMYK"
        assert validated.image.size == original.size == (40, 20)
        assert validated.image.tobytes() == original.tobytes()


@pytest.mark.parametrize(
    ("mode", "image_format", "expected_mode"),
    [
        ("CMYK", "JPEG", "RGB"),
        ("L", "PNG", "L"),
        ("1", "PNG", "L"),
        ("P", "PNG", "RGB"),
        ("P", "GIF", "RGB"),
        ("RGBA", "PNG", "RGBA"),
        ("LA", "PNG", "RGBA"),
        ("RGB", "WEBP", "RGB"),
        ("RGB", "BMP", "RGB"),
        ("CMYK", "TIFF", "RGB"),
    ],
)
def test_modes_are_stored_as_rgb_rgba_or_grayscale(mode, image_format, expected_mode):
    """CMYK, palette, bilevel and alpha images are stored as RGB, RGBA or L."""
    image = Image.new("RGB", (16, 16), (10, 200, 30)).convert(mode)
    validated = read(encode(image, image_format))
    assert validated.display_image.mode == expected_mode
    stored = Image.open(io.BytesIO(encode_for_storage(validated).data))
    assert stored.mode == expected_mode
    assert validated.format == image_format


def test_palette_with_transparency_keeps_alpha():
    """A palette PNG with a transparent colour is stored as RGBA."""
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = encode(image, "PNG", transparency=0)
    assert read(data).display_image.mode == "RGBA"


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_sixteen_bit_grayscale_is_stored_scaled_to_eight_bits(image_format):
    """16-bit samples are stored scaled (65535 -> 255), not clipped."""
    array = np.array([[0, 32896, 65535, 257]], dtype=np.uint16)
    data = encode(Image.fromarray(array), image_format)
    validated = read(data)
    assert validated.display_image.mode == "L"
    assert np.asarray(validated.display_image).tolist() == [[0, 128, 255, 1]]


def test_jpeg_is_stored_as_jpeg_and_others_as_png():
    """Re-encoding keeps JPEG photos compact and everything else lossless."""
    jpeg = read(encode(Image.new("RGB", (8, 8)), "JPEG"), "a.jpg")
    gif = read(encode(Image.new("P", (8, 8)), "GIF"), "a.gif")
    assert encode_for_storage(jpeg).extension == "jpg"
    assert encode_for_storage(gif).extension == "png"


def test_appended_script_is_not_in_the_stored_bytes():
    """Only decoded pixels are re-encoded: trailing bytes after the image are dropped."""
    data = encode(Image.new("RGB", (8, 8), "blue")) + b"<script>alert(1)</script>"
    stored = encode_for_storage(read(data)).data
    assert b"<script>" not in stored
    assert Image.open(io.BytesIO(stored)).size == (8, 8)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    """A header claiming 50000x50000 pixels is refused without decoding a pixel."""

    def refuse_to_decode(self):
        raise AssertionError("decoded a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)
    with pytest.raises(UploadRejected) as excinfo:
        read(png_with_declared_size(50_000, 50_000))
    assert excinfo.value.code == "too_many_pixels" and excinfo.value.status == 413


def test_pixel_limit_is_checked_on_the_header(monkeypatch):
    """An image over the pixel limit (but under Pillow's own) is refused from its header."""
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(UploadRejected) as excinfo:
        read(png_with_declared_size(2000, 1000), max_pixels=1_000_000)
    assert "2000×1000" in excinfo.value.message and "1 megapixels" in excinfo.value.message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\me\\cat.jpg", "cat.jpg"),
        ("tab\tand\nnewline.png", "tabandnewline.png"),
        ("", "unnamed"),
        ("<b>x</b>.png", "b>.png"),
    ],
)
def test_original_names_lose_directories_and_control_characters(name, expected):
    """Only the base name, without control characters, is kept for display."""
    assert clean_original_name(name) == expected


def test_very_long_names_are_shortened_keeping_the_extension():
    """Names are bounded to 200 characters."""
    cleaned = clean_original_name("a" * 5000 + ".png")
    assert len(cleaned) == 200 and cleaned.endswith("….png")
