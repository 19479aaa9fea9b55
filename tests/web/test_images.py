"""uploads.images: validating untrusted bytes, decoding them, and re-encoding them for storage."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from uploads.images import (
    UploadRejected,
    ValidatedImage,
    clean_original_name,
    encode_for_storage,
    encode_thumbnail,
    read_validated_image,
    request_pixel_budget,
)

pytestmark = pytest.mark.no_models

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def read(data: bytes, name: str = "x.png", **limits) -> ValidatedImage:
    return read_validated_image(data, name=name, **{**LIMITS, **limits})


def make_noise(size: tuple[int, int]) -> Image.Image:
    """Deterministic RGB noise (compresses poorly, like a photograph)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


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


def linear_rgb_icc() -> bytes:
    """A minimal ICC v2 profile: sRGB's primaries with linear (gamma 1) curves, so values
    change visibly when converted to sRGB (128 -> 188)."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    text = b"linear RGB\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 256) + bytes(2)  # gamma 1.0
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body))
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


SCRIPT_COMMENT = b"<html><script>alert(document.cookie)</script></html>"


def stored_and_thumbnail(data: bytes) -> list[bytes]:
    validated = read(data, name="x.jpg")
    thumbnail = encode_thumbnail(validated)
    assert thumbnail is not None
    return [encode_for_storage(validated).data, thumbnail.data]


def test_jpeg_comment_is_not_in_the_stored_image_or_thumbnail():
    """A JPEG comment (Pillow's writer would copy im.info['comment']) is dropped."""
    data = encode(make_noise((400, 400)), "JPEG", comment=SCRIPT_COMMENT)
    assert SCRIPT_COMMENT in data
    for stored in stored_and_thumbnail(data):
        assert b"<script>" not in stored
        assert "comment" not in Image.open(io.BytesIO(stored)).info


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_exif_and_icc_profiles_are_not_stored(image_format):
    """EXIF and ICC profiles (JPEG APP markers, PNG iCCP/eXIf chunks) are not in stored bytes."""
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    data = encode(make_noise((400, 400)), image_format, exif=exif, icc_profile=linear_rgb_icc())
    assert b"SecretCam" in data
    for stored in stored_and_thumbnail(data):
        for marker in (b"SecretCam", b"ICC_PROFILE", b"iCCP", b"eXIf", b"Exif"):
            assert marker not in stored
        info = Image.open(io.BytesIO(stored)).info
        assert "icc_profile" not in info and "exif" not in info


def test_png_text_chunks_are_not_stored():
    """tEXt chunks of a PNG do not survive re-encoding."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "<script>alert(1)</script>")
    data = encode(make_noise((64, 64)), "PNG", pnginfo=text)
    assert b"<script>" in data
    assert b"<script>" not in encode_for_storage(read(data)).data


def test_colours_are_converted_to_srgb_from_the_embedded_profile():
    """A PNG tagged with a linear-RGB profile is stored as ImageCms converts it to sRGB."""
    image = Image.new("RGB", (8, 8), (128, 64, 200))
    data = encode(image, "PNG", icc_profile=linear_rgb_icc())
    stored = Image.open(io.BytesIO(encode_for_storage(read(data)).data))
    expected = ImageCms.profileToProfile(
        image,
        ImageCms.ImageCmsProfile(io.BytesIO(linear_rgb_icc())),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    assert stored.getpixel((0, 0)) == expected.getpixel((0, 0)) == (188, 137, 229)


def test_a_broken_icc_profile_is_dropped_without_refusing_the_image():
    """An unreadable ICC profile leaves the pixels as they are, and is not stored."""
    data = encode(Image.new("RGB", (8, 8), (128, 64, 200)), "PNG", icc_profile=b"not a profile")
    stored = encode_for_storage(read(data)).data
    assert b"iCCP" not in stored
    assert Image.open(io.BytesIO(stored)).getpixel((0, 0)) == (128, 64, 200)


def test_large_images_are_kept_at_the_stored_size_keeping_proportions():
    """A 3000x1500 PNG is decoded, handed on and stored at 1024x512."""
    validated = read(
        encode(make_noise((3000, 1500))), max_pixels=10**7, max_bytes=10**8, max_side=1024
    )
    assert validated.image.size == (1024, 512)
    assert (validated.width, validated.height) == (1024, 512)
    assert Image.open(io.BytesIO(encode_for_storage(validated).data)).size == (1024, 512)


def test_large_jpegs_are_decoded_at_a_reduced_scale(monkeypatch):
    """A 4000x2000 JPEG is decoded by the JPEG library at 1/2 scale (Image.draft), never at
    full size, then shrunk to 1024x512."""
    data = encode(make_noise((4000, 2000)), "JPEG")
    decoded_sizes = []
    original_load = ImageFile.ImageFile.load

    def recording_load(image):
        decoded_sizes.append(image.size)
        return original_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    validated = read(data, name="x.jpg", max_pixels=10**7, max_bytes=10**8, max_side=1024)
    assert validated.image.size == (1024, 512)
    assert max(decoded_sizes, key=lambda size: size[0]) == (2000, 1000)


def test_the_pixel_budget_is_shared_by_the_images_of_one_request():
    """Inside request_pixel_budget, images adding up past the limit are refused with 413."""
    data = encode(make_noise((100, 100)))
    with request_pixel_budget(25_000):
        read(data)
        read(data)
        with pytest.raises(UploadRejected) as refused:
            read(data, name="third.png")
    assert refused.value.status == 413 and refused.value.code == "too_many_pixels"
    assert "third.png" in refused.value.message
    read(data)  # outside the block: no budget


def test_decodes_per_process_are_bounded(settings, monkeypatch):
    """With UPLOAD_MAX_CONCURRENT_DECODES=2, eight threads never decode more than two at once."""
    import threading
    import time

    from uploads import images

    settings.UPLOAD_MAX_CONCURRENT_DECODES = 2
    active, peak, lock = [0], [0], threading.Lock()
    original = images._decode

    def slow_decode(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return original(*args, **kwargs)

    monkeypatch.setattr(images, "_decode", slow_decode)
    data = encode(make_noise((16, 16)))
    threads = [threading.Thread(target=read, args=(data,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2
