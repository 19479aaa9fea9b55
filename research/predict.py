"""Classify image files with a trained model: the top-k labels and probabilities of each.

    python -m research.predict --checkpoint models/cifar10 cat.jpg dog.png
    python -m research.predict --checkpoint workdirs/fashion_mnist --top_k 5 shoe.png

Files that cannot be read as images are reported one by one on stderr, and the exit status is
then 1; the readable ones are still classified.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def read_images(paths: Sequence[str | Path]) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """({path: decoded image}, {path: why it could not be read}), in the order given."""
    images, errors = {}, {}
    for path in map(str, paths):
        try:
            image = Image.open(path)
            image.load()  # decodes now, and closes the file of a single-frame image
            images[path] = image
        except FileNotFoundError:
            errors[path] = "no such file"
        except IsADirectoryError:
            errors[path] = "is a directory"
        except Image.UnidentifiedImageError:
            errors[path] = "not an image Pillow can read"
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            errors[path] = f"cannot read image ({error})"
    return images, errors


def format_predictions(path: str, top: list[tuple[str, float]]) -> str:
    width = max(len(label) for label, _ in top)
    return "\n".join([path] + [f"  {label:<{width}}  {p:7.2%}" for label, p in top])
