"""Web fixtures: the tiny shared models, a temporary MEDIA_ROOT, image and upload factories."""

import contextlib
import io
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image

from uploads import classifiers
from uploads.models import SESSION_OWNER_KEY, Owner


@pytest.fixture(scope="session")
def model_dirs(tiny_model_dir: Path, tiny_fmnist_model_dir: Path) -> dict[str, Path]:
    """The registry every web test uses: the lead's tiny exported models."""
    return {"cifar10": tiny_model_dir, "fashion_mnist": tiny_fmnist_model_dir}


@pytest.fixture(autouse=True)
def web_settings(request, settings, tmp_path: Path):
    """Point the site at the tiny models and a fresh MEDIA_ROOT; warm each model once.

    Tests marked `no_models` (pure image handling) skip the models altogether.
    """
    settings.MEDIA_ROOT = tmp_path / "media"
    if request.node.get_closest_marker("no_models") is None:
        settings.CLASSIFIER_MODELS = dict(request.getfixturevalue("model_dirs"))
        settings.CLASSIFIER_DEFAULT_MODEL = "cifar10"
        classifiers.warm_up_models()  # loads and compiles once per session, then a no-op
    return settings


def pytest_configure(config):
    config.addinivalue_line("markers", "no_models: the test does not need the tiny models")


@pytest.fixture
def media_files(settings) -> Callable[[], list[Path]]:
    """Return a function listing every file under MEDIA_ROOT."""

    def list_files() -> list[Path]:
        root = Path(settings.MEDIA_ROOT)
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return list_files


def make_image(size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A deterministic noisy image of any Pillow mode."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode_image(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """Return a function making encoded image bytes: image_bytes('JPEG', size=(64, 48))."""

    def build(
        image_format: str = "PNG",
        *,
        size: tuple[int, int] = (32, 32),
        mode: str = "RGB",
        seed: int = 0,
        **options,
    ) -> bytes:
        return encode_image(make_image(size, mode, seed), image_format, **options)

    return build


@pytest.fixture
def upload_file(image_bytes) -> Callable[..., SimpleUploadedFile]:
    """Return a function making an uploaded file (a PNG by default)."""

    def build(
        data: bytes | None = None, *, name: str | None = None, content_type: str = "image/png"
    ) -> SimpleUploadedFile:
        return SimpleUploadedFile(
            name or f"{uuid.uuid4().hex[:8]}.png",
            image_bytes() if data is None else data,
            content_type=content_type,
        )

    return build


def own(client) -> Owner:
    """Give a test client's session an owner key (as its first upload would) and return the
    Owner that predictions made for it should have."""
    session = client.session  # a new saved session with its cookie set when it had none
    key = session.get(SESSION_OWNER_KEY) or f"test-owner-{uuid.uuid4().hex}"
    session[SESSION_OWNER_KEY] = key
    session.save()
    return Owner(key=key)


@pytest.fixture
def owner(client) -> Owner:
    """The Owner of the `client` fixture's visitor: pass it to services.classify_upload."""
    return own(client)


@contextlib.contextmanager
def database_unreachable():
    """Point the connection at a database that does not exist (a real connection failure, on
    SQLite and PostgreSQL alike), then back."""
    connection.close()
    saved = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent-directory/db.sqlite3"
    else:
        connection.settings_dict["NAME"] = "no_such_database_for_this_test"
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = saved
