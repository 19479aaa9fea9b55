"""Time research.saliency.explain per image on the shipped models, both methods.

    python benchmarks/saliency.py                        # models/cifar10 and models/fashion_mnist
    python benchmarks/saliency.py --runs 100 --models models/cifar10

Each call is one image through `explain` as serving makes it: EXIF orientation, preprocessing,
the jitted heatmap, normalisation and the bilinear resize to the original size. Images are
CIFAR-10 validation JPEGs (the last 500 of each class in the shared archive) when the archive
is there, else random pixels, at their own size (32x32) and enlarged to 640x480 like a photo
upload. The first call (compilation) is timed apart; the figure is the median over `--runs`.
For comparison, `predict` of the same single image. Methods run alternately, so load from other
processes hits both alike.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from research import saliency
from research.inference import Classifier

ARCHIVE = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg/train.tar.gz"


def load_images(count: int) -> list[Image.Image]:
    """`count` CIFAR-10 validation JPEGs, else random 32x32 RGB images."""
    if ARCHIVE.exists():
        images = []
        with tarfile.open(ARCHIVE) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).stem >= "4500":
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())))
                    images[-1].load()
                    if len(images) == count:
                        return images
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)) for _ in range(count)]


def elapsed_ms(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["models/cifar10", "models/fashion_mnist"])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    small = load_images(args.runs)
    sizes = {"own size": small, "640x480": [im.resize((640, 480)) for im in small]}
    for path in args.models:
        clf = Classifier.load(path)
        clf.warmup()
        print(f"{clf.name} ({path}), {clf.image_shape}: median ms per image over {args.runs}")
        for method in saliency.METHODS:
            start = time.perf_counter()
            saliency.explain(clf, small[0], method=method)
            print(f"  {method:<11} first call (compiles): {(time.perf_counter() - start):.2f} s")
        for label, images in sizes.items():
            timings: dict[str, list[float]] = {m: [] for m in (*saliency.METHODS, "predict")}
            for image in images:
                for method in saliency.METHODS:
                    timings[method].append(elapsed_ms(saliency.explain, clf, image, method=method))
                timings["predict"].append(elapsed_ms(clf.predict, [image]))
            row = "  ".join(f"{k} {statistics.median(v):6.1f}" for k, v in timings.items())
            print(f"  {label:<9} {row}")


if __name__ == "__main__":
    main()
