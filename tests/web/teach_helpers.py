"""Helpers of the teach tests: example images of distinct classes, a visitor's classifier."""

import io

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

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
