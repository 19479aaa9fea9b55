"""Classify image files with a trained model: the top-k labels and probabilities of each.

    python -m research.predict --checkpoint models/cifar10 cat.jpg dog.png
    python -m research.predict --checkpoint workdirs/fashion_mnist --top_k 5 shoe.png

Files that cannot be read as images are reported one by one on stderr, and the exit status is
then 1; the readable ones are still classified.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from research.serving.classifier import Classifier
from research.serving.errors import IncompatibleModelError, ModelNotFoundError


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only loading
    images, errors = read_images(args.images)
    for path, why in errors.items():
        print(f"error: {path}: {why}", file=sys.stderr)
    if images:
        try:
            clf = Classifier.load(args.checkpoint)
        except (ModelNotFoundError, IncompatibleModelError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        probs = clf.predict(list(images.values()))
        for path, top in zip(images, clf.top_k(probs, args.top_k), strict=True):
            print(format_predictions(path, top))
    return 1 if errors else 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a training workdir or an exported model directory"
    )
    parser.add_argument("--top_k", type=int, default=3, help="labels shown per image")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
