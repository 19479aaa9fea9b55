"""Time research.serving.saliency.explain per image on the shipped models, both methods.

    python -m benchmarks.serving.saliency                        # models/cifar10 and
    models/fashion_mnist
    python -m benchmarks.serving.saliency --runs 100 --models models/cifar10

Each call is one image through `explain` as serving makes it: EXIF orientation, preprocessing,
the jitted heatmap, normalisation and the bilinear resize to the original size. Images are
CIFAR-10 validation JPEGs (the last 500 of each class in the shared archive) when the archive
is there, else random pixels, at their own size (32x32) and enlarged to 640x480 like a photo
upload. The first call (compilation) is timed apart; the figure is the median over `--runs`.
For comparison, `predict` of the same single image. Methods run alternately, so load from other
processes hits both alike.

    python -m benchmarks.serving.saliency --deletion [--fashion-idx DIR]

measures instead which map points at what the model uses: the hottest 10% and 20% of the
model-input pixels are replaced by a Gaussian-blurred copy of the image (radius 3), and the
mean drop of the top class's probability (and the share of changed answers) is printed per
method and for random pixels. CIFAR-10: every third of the last 100 JPEGs of each class in the
shared archive (334 validation images); Fashion-MNIST: the first 300 test images of the idx
files in DIR (t10k-images-idx3-ubyte.gz), when given.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from research.serving import saliency
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess_image

# CIFAR-10 JPEGs (a tar of class/image files); random images where it is absent.
ARCHIVE = Path(os.environ.get("CIFAR10_JPEG_ARCHIVE", "cifar10-jpeg/train.tar.gz"))


def load_images(count: int, first: str = "4500") -> list[Image.Image]:
    """`count` CIFAR-10 validation JPEGs (numbered from `first` in each class), else random
    32x32 RGB images."""
    if ARCHIVE.exists():
        images = []
        with tarfile.open(ARCHIVE) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).stem >= first:
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


def deletion(clf: Classifier, batch: np.ndarray, fraction: float, seed: int = 0) -> dict:
    """Method -> (mean drop of the top class's probability, share of changed answers) when the
    hottest `fraction` of each image's pixels are replaced by its blurred copy."""
    rng = np.random.default_rng(seed)
    probs = clf.predict_arrays(batch)
    top = probs.argmax(axis=1)
    rows = np.arange(len(batch))
    out = {}
    for method in (*saliency.METHODS, "random"):
        changed = batch.copy()
        for i, pixels in enumerate(batch):
            if method == "random":
                heat = rng.random(pixels.shape[:2])
            else:
                heat = saliency.explain(clf, pixels, method=method)
            hottest = np.argsort(-heat.ravel())[: int(fraction * heat.size)]
            image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(3)))
            flat = changed[i].reshape(-1, pixels.shape[-1])
            flat[hottest] = blurred.reshape(-1, pixels.shape[-1])[hottest]
        after = clf.predict_arrays(changed)
        drop = float((probs[rows, top] - after[rows, top]).mean())
        out[method] = (drop, float((after.argmax(axis=1) != top).mean()))
    return out


def run_deletion(fashion_idx: str | None) -> None:
    sets = []
    if ARCHIVE.exists():
        cifar = Classifier.load("models/cifar10")
        images = load_images(1000, first="4900")[::3]
        sets.append((cifar, np.stack([preprocess_image(im, cifar.image_shape) for im in images])))
    if fashion_idx:
        fashion = Classifier.load("models/fashion_mnist")
        with gzip.open(Path(fashion_idx) / "t10k-images-idx3-ubyte.gz") as f:
            pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
        sets.append((fashion, pixels[:300].copy()))
    for clf, batch in sets:
        for fraction in (0.1, 0.2):
            result = deletion(clf, batch, fraction)
            row = "  ".join(f"{k} {d:.3f} ({c:.1%})" for k, (d, c) in result.items())
            print(f"{clf.name}, {len(batch)} images, hottest {fraction:.0%} blurred: {row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["models/cifar10", "models/fashion_mnist"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--deletion", action="store_true", help="faithfulness, not speed")
    parser.add_argument("--fashion-idx", help="folder of Fashion-MNIST idx files (--deletion)")
    args = parser.parse_args()
    if args.deletion:
        run_deletion(args.fashion_idx)
        return
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
