"""Fuzzed images through the API: no response is a server error, and a refusal stores nothing.

A fixed, seeded list of a few thousand mutations of small PNG, JPEG, GIF, WebP, TIFF and BMP
files (bit flips, truncations, inserted bytes, changed header fields) is posted in round-robin
order of format until the list or the time bound runs out.
"""

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from django.apps import apps
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.urls import reverse
from PIL import Image

from uploads.models import Upload

pytestmark = pytest.mark.django_db

SEED = 20261126
MUTATIONS_PER_BASE = 250
TIME_LIMIT_S = float(os.environ.get("FUZZ_SECONDS", 60))
MIN_POSTED = 300  # even a slow machine must post this many for the test to mean something


def _base_images() -> list[tuple[str, bytes]]:
    """Valid files to mutate: each format, a few modes, with EXIF, ICC and comments."""
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "cam"

    def encode(image: Image.Image, image_format: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, image_format, **options)
        return buffer.getvalue()

    frames = [rgb.convert("P"), rgb.rotate(90, expand=True).convert("P")]
    return [
        ("png", encode(rgb, "PNG")),
        ("png", encode(rgb.convert("LA"), "PNG", icc_profile=b"\0" * 16)),
        ("png", encode(rgb.convert("P"), "PNG", transparency=3)),
        ("jpg", encode(rgb, "JPEG", exif=exif, comment=b"<script>", quality=80)),
        ("jpg", encode(rgb.convert("L"), "JPEG", progressive=True)),
        ("jpg", encode(rgb.convert("CMYK"), "JPEG")),
        ("gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        ("webp", encode(rgb, "WEBP", lossless=True)),
        ("webp", encode(rgb.convert("RGBA"), "WEBP", quality=50, exif=exif)),
        ("tif", encode(rgb, "TIFF", compression="tiff_lzw")),
        ("tif", encode(rgb.convert("I;16"), "TIFF")),
        ("bmp", encode(rgb, "BMP")),
        ("bmp", encode(rgb.convert("P"), "BMP")),
    ]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # bit flips anywhere
        for _ in range(rng.integers(1, 9)):
            position = rng.integers(len(out))
            out[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncation, sometimes with garbage after the cut
        out = out[: rng.integers(1, len(out))]
        if rng.random() < 0.3:
            out += rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
    elif kind == 2:  # inserted bytes
        position = rng.integers(len(out))
        out[position:position] = rng.integers(0, 256, rng.integers(1, 32), dtype=np.uint8).tobytes()
    else:  # header fields: sizes, offsets, counts and markers in the first bytes
        for _ in range(rng.integers(1, 4)):
            position = rng.integers(min(len(out), 64))
            out[position] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, int(rng.integers(256))])
    return bytes(out)


def fuzz_cases() -> list[tuple[str, bytes]]:
    """The fixed list: MUTATIONS_PER_BASE mutations of each base file, formats interleaved."""
    rng = np.random.default_rng(SEED)
    bases = _base_images()
    return [
        (f"fuzz{index}-{number}.{extension}", _mutate(data, rng))
        for number in range(MUTATIONS_PER_BASE)
        for index, (extension, data) in enumerate(bases)
    ]


@pytest.mark.no_models
def test_the_fuzz_list_is_fixed_and_covers_every_format():
    """Same seed, same files: a failure found once is found again."""
    cases = fuzz_cases()
    assert len(cases) == 13 * MUTATIONS_PER_BASE
    assert fuzz_cases() == cases
    assert {name.rsplit(".", 1)[1] for name, _ in cases[:13]} == {
        "png", "jpg", "gif", "webp", "tif", "bmp"
    }  # fmt: skip


def _referenced_files() -> set[str]:
    """Every file name held by a FileField of any row of the uploads app."""
    names = set()
    for model in apps.get_app_config("uploads").get_models():
        fields = [f.name for f in model._meta.get_fields() if isinstance(f, models.FileField)]
        for row in model.objects.values_list(*fields) if fields else []:
            names.update(name for name in row if name)
    return names


def test_fuzzed_images_never_get_a_server_error_and_refusals_store_nothing(client, settings):
    """Every fuzzed upload is answered 201 or 4xx; stored rows are exactly the 201s, and every
    file in MEDIA_ROOT belongs to one of them (a refusal leaves no row and no file)."""
    settings.UPLOAD_MAX_PIXELS = 4_000_000  # header changes claim large sizes: keep it quick
    client.raise_request_exception = False
    statuses: dict[int, int] = {}
    failures = []
    deadline = time.monotonic() + TIME_LIMIT_S
    posted = 0
    for name, data in fuzz_cases():
        if time.monotonic() > deadline:
            break
        response = client.post(
            reverse("uploads:api-predict"), {"image": SimpleUploadedFile(name, data)}
        )
        posted += 1
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500 or response.status_code not in (201, 400, 413, 415):
            failures.append((name, response.status_code, response.content[:200]))
    print(f"fuzz: {posted} of {len(fuzz_cases())} posted, by status {sorted(statuses.items())}")
    assert not failures, failures[:5]
    assert posted >= MIN_POSTED, f"only {posted} posted in {TIME_LIMIT_S} s"
    assert Upload.objects.count() == statuses.get(201, 0)
    assert statuses.get(201, 0) and sum(statuses.get(s, 0) for s in (400, 413, 415))
    stored = _referenced_files()
    root = Path(settings.MEDIA_ROOT)
    on_disk = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    # Files derived from a stored image (its model input, ...) share its generated stem.
    stems = {_stem(name) for name in stored}
    assert stems and all(_stem(str(path)) in stems for path in on_disk)
    assert stored <= {str(path) for path in on_disk}


def _stem(name: str) -> str:
    """'images/2026/11/<hex>.png' -> '2026/11/<hex>'."""
    return name.split("/", 1)[1].rsplit(".", 1)[0].split("_")[0]
