"""What translate TTA costs a served prediction: one image through `Classifier.predict`
(preprocessing, the views' forwards, the unknown score), the model's record with and without
`translate_tta`, the same weights, calls alternating so that machine drift falls on both alike.

    python -m benchmarks.serving.serve_tta                              # models/cifar10
    python -m benchmarks.serving.serve_tta --checkpoint models/fashion_mnist --calls 100

Prints the median milliseconds of each and their ratio. Run it alone: two cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from research.serving.classifier import Classifier

ROOT = Path(__file__).resolve().parents[2]  # the repository

WARMUP = 5  # the first calls compile each image-size bucket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "cifar10"))
    parser.add_argument("--calls", type=int, default=60, help="timed calls of each")
    args = parser.parse_args(argv)
    loaded = Classifier.load(args.checkpoint)
    height, width, channels = loaded.record.image_shape
    rng = np.random.default_rng(0)
    shape = (height, width) if channels == 1 else (height, width, channels)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(8)]
    variants = {
        views: Classifier(
            loaded.model, loaded.record.replace(translate_tta=views), loaded.statistics
        )
        for views in (False, True)
    }
    for clf in variants.values():
        for _ in range(WARMUP):
            clf.predict([images[0]])
    times: dict[bool, list[float]] = {views: [] for views in variants}
    for call in range(args.calls):
        for views, clf in variants.items():
            start = time.perf_counter()
            clf.predict([images[call % len(images)]])
            times[views].append(time.perf_counter() - start)
    medians = {views: statistics.median(t) * 1e3 for views, t in times.items()}
    flip = loaded.record.flip_tta
    for views, ms in medians.items():
        count = (2 if flip else 1) * (3 if views else 1)
        print(f"translate_tta={views}: {count} views, {ms:.2f} ms per image (median)")
    print(f"ratio: {medians[True] / medians[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
