"""Helpers of the teach tests: example images of distinct classes, a visitor's classifier."""

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from PIL import Image

from uploads import classifiers

# Three classes the tiny backbone can tell apart: a colour each, with noise and a shape.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def example_png(colour: str, seed: int, size: int = 32) -> bytes:
    """A PNG of one class: its colour, noise, and a dark square at a random place."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((size, size, 3), np.int16)
    pixels[:] = COLOURS[colour]
    pixels += rng.integers(-30, 30, pixels.shape, dtype=np.int16)
    y, x = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3] //= 3
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def example_files(colour: str, count: int, start: int = 0) -> list[SimpleUploadedFile]:
    return [
        SimpleUploadedFile(f"{colour}{i}.png", example_png(colour, i), "image/png")
        for i in range(start, start + count)
    ]


def create(client, name: str = "colours", classes=("red", "green", "blue"), backbone="cifar10"):
    """POST the create form; returns the response (a redirect to the new classifier)."""
    return client.post(
        reverse("teaching:list"),
        {"name": name, "class_names": "\n".join(classes), "backbone": backbone},
    )


def add(client, classifier, class_name: str, files, **extra):
    taught_class = classifier.classes.get(name=class_name)
    url = reverse("teaching:add-examples", args=[classifier.pk, taught_class.pk])
    return client.post(url, {"images": files, "source": "upload"}, **extra)


ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The test database as DATABASE_URL, for a process of its own."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    )


def make_teach_env(settings, tmp_path, model_dirs):
    """(For a fixture) the settings a worker shares with this test, as its environment;
    the published models this process read are forgotten after."""
    settings.TEACH_ROOT = tmp_path / "teach"
    settings.TEACH_BACKBONES = {"cifar10": model_dirs["cifar10"]}
    settings.CLASSIFIER_REGISTRY_POLL_S = 0.0  # this process serves what the worker publishes
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "classifier_site.settings.test",
            "DATABASE_URL": database_url(),
            "DJANGO_TEACH_ROOT": str(settings.TEACH_ROOT),
            "DJANGO_TEACH_BACKBONES": f"cifar10={model_dirs['cifar10']}",
            "DJANGO_LOG_LEVEL": "INFO",
        }
    )
    yield env
    classifiers._published, classifiers._published_pks = {}, None
    classifiers._published_checked = -float("inf")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`manage.py db_worker` on the teach queue, as scripts/serve.sh starts it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--queue-name", "teach"]
            + ["--interval", "0.2", "--no-startup-delay", "--no-reload"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
