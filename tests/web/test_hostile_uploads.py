"""Hostile and broken uploads get a clear 4xx message, and nothing is stored."""

import io
import struct
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image, ImageOps

from uploads.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def corrupt_png() -> bytes:
    data = bytearray(encode(Image.new("RGB", (64, 64), "green")))
    data[60:70] = b"\x00" * 10  # inside IDAT: the chunk CRC no longer matches
    return bytes(data)


def real_bomb() -> bytes:
    """A 9000x5000 bilevel PNG: a few KB that would decode to 45 megapixels."""
    return encode(Image.new("1", (9000, 5000)), optimize=True)


PNG = encode(Image.new("RGB", (32, 32), "red"))
JPEG = encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
UNSUPPORTED = (415, "unsupported_format", "accepted: JPEG, PNG")
CORRUPT = (400, "corrupt_image", "truncated or corrupt")
BOMB = (413, "too_many_pixels", "megapixels")

# name -> (file name, bytes, (expected status, expected code, words the message must contain))
HOSTILE = {
    "empty": ("empty.png", b"", (400, "empty_file", "is empty")),
    "text_as_png": ("notes.png", b"just some text, not pixels\n" * 20, UNSUPPORTED),
    "html_as_jpg": ("page.jpg", b"<html><script>alert(1)</script></html>", UNSUPPORTED),
    "svg": ("logo.svg", SVG, UNSUPPORTED),
    "ico_outside_allow_list": ("icon.ico", encode(Image.new("RGB", (16, 16)), "ICO"), UNSUPPORTED),
    "ppm_outside_allow_list": ("img.ppm", encode(Image.new("RGB", (16, 16)), "PPM"), UNSUPPORTED),
    "truncated_png": ("cut.png", PNG[: len(PNG) // 2], CORRUPT),
    "truncated_jpeg": ("cut.jpg", JPEG[: len(JPEG) // 2], CORRUPT),
    "corrupt_png": ("bad.png", corrupt_png(), CORRUPT),
    "bomb_header": ("bomb.png", png_header_claiming(60_000, 60_000), BOMB),
    "real_bomb": ("bomb2.png", real_bomb(), (413, "too_many_pixels", "9000×5000")),
}


def post_image(client, file: SimpleUploadedFile):
    return client.post(reverse("uploads:api-predict"), {"image": file})


def assert_nothing_stored(media_files) -> None:
    assert Upload.objects.count() == 0
    assert Prediction.objects.count() == 0
    assert media_files() == []


@pytest.mark.parametrize("case", HOSTILE)
def test_api_refuses_hostile_upload(client, media_files, case):
    """The API answers 4xx JSON with a human message and stores nothing."""
    name, data, (status, code, words) = HOSTILE[case]
    response = client.post(
        reverse("uploads:api-predict"), {"image": SimpleUploadedFile(name, data)}
    )
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert words in body["error"] and name in body["error"]
    assert_nothing_stored(media_files)


@pytest.mark.parametrize("case", ["empty", "text_as_png", "truncated_png", "bomb_header"])
def test_form_refuses_hostile_upload(client, media_files, case):
    """The HTML form shows the message next to the field, with a 4xx status."""
    name, data, (status, code, words) = HOSTILE[case]
    response = client.post(
        reverse("uploads:classify"),
        {"images": SimpleUploadedFile(name, data), "model": "cifar10"},
    )
    assert response.status_code == status
    assert words in response.content.decode()
    assert_nothing_stored(media_files)


def test_file_over_the_byte_limit_is_refused(client, media_files, settings):
    """A file over UPLOAD_MAX_BYTES gets a 413 naming the limit."""
    settings.UPLOAD_MAX_BYTES = 1024
    data = encode(Image.effect_noise((64, 64), 100).convert("RGB"))
    response = post_image(client, SimpleUploadedFile("n.png", data))
    assert response.status_code == 413
    assert "the limit is 1 KB" in response.json()["error"]
    assert_nothing_stored(media_files)


def test_request_over_the_byte_limit_is_refused_before_parsing(client, media_files, settings):
    """The API refuses a body far over the limit from its Content-Length alone."""
    settings.UPLOAD_MAX_BYTES = 1024
    data = b"\x00" * (2 * 1024 * 1024)
    response = post_image(client, SimpleUploadedFile("x.png", data))
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"
    assert_nothing_stored(media_files)


def test_image_over_the_pixel_limit_is_refused(client, media_files, settings):
    """An image over UPLOAD_MAX_PIXELS gets a 413 naming its size and the limit."""
    settings.UPLOAD_MAX_PIXELS = 32 * 32
    assert post_image(client, SimpleUploadedFile("ok.png", PNG)).status_code == 201
    data = encode(Image.new("RGB", (40, 40)))
    response = post_image(client, SimpleUploadedFile("p.png", data))
    assert response.status_code == 413
    assert "40×40" in response.json()["error"]


def test_too_many_files_in_the_form_are_refused(client, media_files, settings):
    """More than UPLOAD_MAX_FILES files in one form post is a 400 saying the limit."""
    settings.UPLOAD_MAX_FILES = 3
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(4)]
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    assert response.status_code == 400
    assert "at most 3" in response.content.decode()
    assert_nothing_stored(media_files)


def test_api_takes_one_image_per_request(client, media_files):
    """Two images in one API request are a 400 JSON error."""
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(2)]
    response = client.post(reverse("uploads:api-predict"), {"image": files})
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_files"
    assert_nothing_stored(media_files)


def test_files_beyond_the_parser_limit_get_a_clear_json_error(client, media_files, settings):
    """Past Django's DATA_UPLOAD_MAX_NUMBER_FILES the API still answers JSON 400."""
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(3)]
    response = client.post(reverse("uploads:api-predict"), {"image": files})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Too many files in one request; send one image per request.",
        "code": "too_many_files",
    }
    assert "settings" not in response.content.decode()  # nothing about the server's setup
    assert_nothing_stored(media_files)


def test_appended_script_is_stripped_from_what_is_stored_and_served(client):
    """A valid image with a script appended is stored and served re-encoded, as an image."""
    data = PNG + b"<script>alert(document.cookie)</script>"
    response = post_image(client, SimpleUploadedFile("x.png", data))
    assert response.status_code == 201
    served = client.get(response.json()["image"]["url"])
    content = b"".join(served.streaming_content)
    assert b"<script>" not in content
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "name",
    ["../../../etc/passwd.png", "..\\..\\windows\\win.ini.png", "a" * 1000 + ".png"],
)
def test_path_like_and_long_names_are_stored_under_generated_names(client, name):
    """Uploaded names never reach the file system; displayed names are bounded base names."""
    response = post_image(client, SimpleUploadedFile(name, PNG))
    assert response.status_code == 201
    upload = Upload.objects.get()
    assert ".." not in upload.image.name and "passwd" not in upload.image.name
    assert "/" not in upload.original_name and "\\" not in upload.original_name
    assert len(upload.original_name) <= 200


def test_markup_in_file_names_is_shown_escaped(client):
    """A name carrying HTML is escaped on the result and history pages."""
    name = '<img src=x onerror="alert(1)">.png'
    response = client.post(
        reverse("uploads:classify"), {"images": SimpleUploadedFile(name, PNG), "model": "cifar10"}
    )
    detail = client.get(response["Location"]).content.decode()
    history = client.get(reverse("uploads:history")).content.decode()
    for page in (detail, history):
        assert "<img src=x" not in page
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in page


@pytest.mark.parametrize("top_k", ["²", "٣", "３", "1²", " +3", "3.0", "-1", "0"])
def test_api_refuses_a_top_k_that_is_not_ascii_digits(client, media_files, top_k):
    """Superscripts, Arabic-Indic or full-width digits and signs are a 400 naming top_k."""
    response = client.post(
        reverse("uploads:api-predict"),
        {"image": SimpleUploadedFile("x.png", PNG), "top_k": top_k},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "top_k must be a whole number of at least 1.",
        "code": "invalid_top_k",
    }
    assert_nothing_stored(media_files)


@pytest.mark.parametrize("top_k", ["²", "٣"])
def test_form_ignores_a_top_k_field(client, top_k):
    """The form has no top_k: a hostile one sent along changes nothing (no 500)."""
    response = client.post(
        reverse("uploads:classify"),
        {"images": SimpleUploadedFile("x.png", PNG), "model": "cifar10", "top_k": top_k},
    )
    assert response.status_code == 302
    assert len(Prediction.objects.get().top_k) == 5  # the default, as without the field


def malformed_exif_blocks() -> dict[str, bytes]:
    """EXIF blocks Pillow cannot use: the issue's broken byte-order marks, and an
    orientation-6 block whose ASCII tag claims a SHORT tag's id (ImageOps.exif_transpose
    raises on it)."""
    header = Image.Exif()
    header[0x010F] = "cam"
    blocks = {}
    for name, mark in (("big-endian-mark", b"MM *"), ("little-endian-mark", b"II+\x00")):
        raw = bytearray(header.tobytes())
        raw[6:10] = mark
        blocks[name] = bytes(raw)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    rotated[0x010F] = "cam"
    raw = rotated.tobytes()
    ascii_tag = b"\x01\x0f\x00\x02" if raw[6:8] == b"MM" else b"\x0f\x01\x02\x00"
    blocks["mistyped-tag"] = raw.replace(ascii_tag, ascii_tag.replace(b"\x0f", b"\x07"))
    return blocks


MALFORMED_EXIF = malformed_exif_blocks()


def jpeg_with_exif(exif: bytes, size: tuple[int, int] = (32, 32)) -> bytes:
    return encode(Image.effect_noise(size, 60).convert("RGB"), "JPEG", exif=exif)


def test_the_mistyped_exif_block_makes_pillow_raise():
    """The fixture really is one exif_transpose fails on, so the tests below mean something."""
    image = Image.open(io.BytesIO(jpeg_with_exif(MALFORMED_EXIF["mistyped-tag"])))
    with pytest.raises(Exception):  # noqa: B017 - whichever error this Pillow raises
        ImageOps.exif_transpose(image)


@pytest.mark.parametrize("case", MALFORMED_EXIF)
def test_api_accepts_a_jpeg_with_malformed_exif(client, case):
    """A JPEG whose EXIF cannot be applied is classified and stored unrotated (201)."""
    response = post_image(client, SimpleUploadedFile("e.jpg", jpeg_with_exif(MALFORMED_EXIF[case])))
    assert response.status_code == 201, response.content
    assert (response.json()["image"]["width"], response.json()["image"]["height"]) == (32, 32)


@pytest.mark.parametrize("case", MALFORMED_EXIF)
def test_form_accepts_a_batch_holding_a_jpeg_with_malformed_exif(client, case):
    """A 10-file form post with one such JPEG among nine PNGs stores all ten."""
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(9)]
    files.insert(4, SimpleUploadedFile("e.jpg", jpeg_with_exif(MALFORMED_EXIF[case])))
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert Prediction.objects.count() == 10


def test_form_body_over_the_limit_is_refused_before_it_is_read(client, media_files, settings):
    """A form post whose Content-Length exceeds UPLOAD_MAX_FILES x UPLOAD_MAX_BYTES (+1 MB)
    gets 413 without the body being read: a 300 MB one never reaches a temporary file."""
    settings.UPLOAD_MAX_FILES = 2
    settings.UPLOAD_MAX_BYTES = 1024

    class Unreadable(io.RawIOBase):
        def read(self, *args):
            raise AssertionError("the body was read")

    response = client.generic(
        "POST",
        reverse("uploads:classify"),
        content_type="multipart/form-data; boundary=x",
        CONTENT_LENGTH=str(300 * 1024 * 1024),
        **{"wsgi.input": Unreadable()},
    )
    assert response.status_code == 413
    assert "too large" in response.content.decode()
    assert_nothing_stored(media_files)


def test_api_body_over_the_site_limit_is_refused_as_json(client, settings):
    """The same limit on /api/ answers the API's JSON error."""
    response = client.generic(
        "POST",
        reverse("uploads:api-predict"),
        b"",
        content_type="multipart/form-data; boundary=x",
        CONTENT_LENGTH=str(300 * 1024 * 1024),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"
    assert "UPLOAD" not in response.json()["error"] and "/" not in response.json()["error"]


def test_images_over_the_request_pixel_budget_are_refused(client, media_files, settings):
    """Images each under UPLOAD_MAX_PIXELS but over UPLOAD_MAX_REQUEST_PIXELS together: 413,
    nothing stored."""
    settings.UPLOAD_MAX_REQUEST_PIXELS = 3 * 32 * 32
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(4)]
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    assert response.status_code == 413
    assert "limit per request is 0.003072 megapixels" in response.content.decode()
    assert_nothing_stored(media_files)
    files = [SimpleUploadedFile(f"{i}.png", PNG) for i in range(3)]
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    assert response.status_code == 302
