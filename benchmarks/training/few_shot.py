"""Few-shot teaching (research.train.teach) against training the same classes from scratch.

    python -m benchmarks.training.few_shot                       # 3 and 10 classes, 10/20/50 each
    python -m benchmarks.training.few_shot --classes 3 --shots 20 --seeds 3 --no-scratch

Classes the backbone never saw as labels: Fashion-MNIST's clothes, taught to the shipped
CIFAR-10 network (models/cifar10; its images are photos of animals and vehicles). The examples
are drawn from Fashion-MNIST's training split (the part `research.data.arrays` does not carve
out for validation), the teach settings were looked at on the carved validation split only,
and every figure is reported on Fashion-MNIST's test split, restricted to the taught classes.

"From scratch" trains the Fashion-MNIST recipe's network with research.train (device input, the
same examples as an image folder; ~300 steps of batches of up to 64) and evaluates its best
checkpoint the same way. "teach s" is the wall time of `teach` with the backbone already
loaded and compiled, as the site's worker holds it; "scratch s" the whole training run's.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from research import configs, train
from research.configs import runtime
from research.data import arrays
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess
from research.train.teach import accuracy_on, teach

CLASS_SETS = {3: (0, 1, 7), 10: tuple(range(10))}  # 3: T-shirt/top, trouser, sneaker
SCRATCH_STEPS = 300
FASHION_MNIST_FILES = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


def draw(split: arrays.ArraySplit, classes: Sequence[int], shots: int, seed: int):
    """{class name: `shots` images} drawn at random (seeded) from `split`."""
    rng = np.random.default_rng(seed)
    return {
        split.class_names[c]: list(
            split.images[rng.choice(np.flatnonzero(split.labels == c), shots, replace=False)]
        )
        for c in classes
    }


def from_scratch(examples: dict, source: str, test_images, test_labels, seed: int) -> float:
    """Test accuracy of the Fashion-MNIST network trained from scratch on `examples` alone."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        validation = arrays.load_split("fashion_mnist", "validation", source)
        for split, images_of in (
            ("train", examples),
            ("validation", draw(validation, range(10), 20, seed)),
        ):
            for name, images in images_of.items():
                if split == "validation" and name not in examples:
                    continue
                (folder / split / name).mkdir(parents=True)
                for i, image in enumerate(images):
                    Image.fromarray(image[..., 0]).save(folder / split / name / f"{i:04d}.png")
        total = sum(len(v) for v in examples.values())
        batch = min(64, total)
        config = configs.get_config(
            "fashion_mnist",
            input="device",
            data_source=str(folder),
            batch_size=batch,
            epochs=SCRATCH_STEPS * batch / total,
            warmup_epochs=0.1 * SCRATCH_STEPS * batch / total,
            learning_rate=0.2,
            seed=seed,
        )
        train.train_and_evaluate(config, Path(tmp) / "run")
        clf = Classifier.load(Path(tmp) / "run")
        names = list(examples)
        index = [clf.class_names.index(n) for n in names]
        probs = clf.classify_arrays(test_images).probs
        return float(
            np.mean(np.asarray(index)[probs[:, index].argmax(-1)] == np.asarray(index)[test_labels])
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    source = args.source
    trainset = arrays.load_split("fashion_mnist", "train", source)
    test = arrays.load_split("fashion_mnist", "test", source)
    backbone = Classifier.load(args.backbone)
    backbone.warmup()
    print(
        f"backbone {backbone.name} ({backbone.version}); Fashion-MNIST classes taught; "
        f"test split; {args.seeds} seed(s)",
        flush=True,
    )
    print()
    print("| classes | examples per class | taught (frozen backbone) | teach s | from scratch |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.classes:
        classes = CLASS_SETS[count]
        mask = np.isin(test.labels, classes)
        test_images = preprocess(list(test.images[mask]), backbone.image_shape)
        test_labels = np.searchsorted(classes, test.labels[mask])
        for shots in args.shots:
            taught, seconds, scratch = [], [], []
            for seed in range(args.seeds):
                examples = draw(trainset, classes, shots, seed)
                start = time.perf_counter()
                result = teach(backbone, examples, name="few-shot")
                seconds.append(time.perf_counter() - start)
                taught.append(accuracy_on(result.classifier, test_images, test_labels))
                if args.scratch:
                    raw = test.images[mask]
                    scratch.append(from_scratch(examples, source, raw, test_labels, seed))
            scratch_cell = f"{_spread(scratch)}" if scratch else "not run"
            print(
                f"| {count} | {shots} | {_spread(taught)} | {statistics.median(seconds):.1f} "
                f"| {scratch_cell} |",
                flush=True,
            )
    return 0


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training.few_shot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backbone", default="models/cifar10", help="the model taught")
    parser.add_argument(
        "--source",
        default=FASHION_MNIST_FILES,
        help="a folder of Fashion-MNIST's idx files (Debian's dataset-fashion-mnist by default)",
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 10], choices=CLASS_SETS)
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--seeds", type=int, default=1, help="draws of the examples")
    parser.add_argument("--no-scratch", dest="scratch", action="store_false")
    return parser.parse_args(argv)


if __name__ == "__main__":
    runtime.exec_with_allocator()
    sys.exit(main())
