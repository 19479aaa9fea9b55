"""Few-shot teaching (research.train.teach) against training the same classes from scratch.

    python -m benchmarks.training.few_shot                       # Fashion-MNIST to models/cifar10
    python -m benchmarks.training.few_shot --task cifar10_half --source CIFAR10_FOLDER \\
        --backbone WORKDIR                                       # CIFAR-10's other five classes
    python -m benchmarks.training.few_shot --classes 3 --shots 20 --seeds 3 --no-scratch

Classes the backbone never saw as labels, two ways:

- `fashion_mnist`: Fashion-MNIST's clothes taught to the shipped CIFAR-10 network
  (models/cifar10, photos of animals and vehicles). Reported on Fashion-MNIST's test split.
- `cifar10_half`: a network trained on CIFAR-10's first five classes only (airplane ...
  deer: `python -m research.train --dataset=cifar10 --input=device --data_source=FOLDER5`, with
  FOLDER5 holding only those five class folders of the training images) taught the other five
  (dog, frog, horse, ship, truck). Reported on the validation images of those classes (the last
  500 of each class, which the backbone's run also held out); CIFAR-10's test split is never
  read.

The examples are drawn (seeded) from the training part of the split; the teach settings were
looked at on Fashion-MNIST's carved validation split only. "From scratch" trains the dataset's
network with research.train (device input, the same examples as an image folder, ~300 steps of
batches of up to 64) and evaluates it the same way. "teach s" is the wall time of `teach` with the
backbone already loaded and compiled, as the site's worker holds it.
"""

from __future__ import annotations

import argparse
import dataclasses
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

SCRATCH_STEPS = 300
FASHION_MNIST_FILES = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


@dataclasses.dataclass(frozen=True)
class Task:
    dataset: str
    report_split: str
    class_sets: dict[int, tuple[int, ...]]
    backbone: str | None  # default backbone
    source: str | None  # default source
    scratch: dict  # overrides of the dataset's recipe for training from scratch


TASKS = {
    "fashion_mnist": Task(
        dataset="fashion_mnist",
        report_split="test",
        class_sets={3: (0, 1, 7), 10: tuple(range(10))},  # 3: T-shirt/top, trouser, sneaker
        backbone="models/cifar10",
        source=FASHION_MNIST_FILES,
        scratch=dict(recipe="fashion_mnist_small", learning_rate=0.2),  # its table's recipe
    ),
    "cifar10_half": Task(
        dataset="cifar10",
        report_split="validation",
        class_sets={3: (5, 7, 8), 5: (5, 6, 7, 8, 9)},  # 3: dog, horse, ship
        backbone=None,
        source=None,
        scratch=dict(microbatches=1, translate_tta=False),
    ),
}


def draw(split: arrays.ArraySplit, classes: Sequence[int], shots: int, seed: int):
    """{class name: `shots` images} drawn at random (seeded) from `split`."""
    rng = np.random.default_rng(seed)
    return {
        split.class_names[c]: list(
            split.images[rng.choice(np.flatnonzero(split.labels == c), shots, replace=False)]
        )
        for c in classes
    }


def write_folder(folder: Path, images_of: dict[str, list[np.ndarray]]) -> None:
    for name, images in images_of.items():
        class_dir = folder / name.replace("/", "_")  # 'T-shirt/top'
        class_dir.mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                class_dir / f"{i:04d}.png"
            )


def from_scratch(task: Task, examples: dict, validation, test_images, test_labels, seed) -> float:
    """Accuracy of the dataset's network trained from scratch on `examples` alone."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        classes = [validation.class_names.index(name) for name in examples]
        write_folder(folder / "train", examples)
        write_folder(folder / "validation", draw(validation, classes, 20, seed))
        total = sum(len(v) for v in examples.values())
        batch = min(64, total)
        epochs = SCRATCH_STEPS * batch / total
        config = configs.get_config(
            task.dataset,
            input="device",
            data_source=str(folder),
            batch_size=batch,
            epochs=epochs,
            warmup_epochs=0.1 * epochs,
            eval_every_epochs=epochs,
            seed=seed,
            **task.scratch,
        )
        train.train_and_evaluate(config, Path(tmp) / "run")
        clf = Classifier.load(Path(tmp) / "run")
        index = np.asarray([clf.class_names.index(n) for n in examples])
        probs = clf.classify_arrays(test_images).probs
        return float(np.mean(probs[:, index].argmax(-1) == test_labels))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    task = TASKS[args.task]
    source, backbone_dir = args.source or task.source, args.backbone or task.backbone
    if source is None or backbone_dir is None:
        print(f"error: --task {args.task} needs --source and --backbone", file=sys.stderr)
        return 2
    trainset = arrays.load_split(task.dataset, "train", source)
    validation = arrays.load_split(task.dataset, "validation", source)
    reported = arrays.load_split(task.dataset, task.report_split, source)
    backbone = Classifier.load(backbone_dir)
    backbone.warmup()
    print(
        f"backbone {backbone.name} ({backbone.version}) from {backbone_dir}; {task.dataset} "
        f"classes taught; reported on its {task.report_split} split; {args.seeds} seed(s)",
        flush=True,
    )
    print()
    print("| classes | examples per class | taught (frozen backbone) | teach s | from scratch |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.classes or task.class_sets:
        classes = task.class_sets[count]
        mask = np.isin(reported.labels, classes)
        test_images = preprocess(list(reported.images[mask]), backbone.image_shape)
        test_labels = np.searchsorted(classes, reported.labels[mask])
        raw_images = reported.images[mask]
        for shots in args.shots:
            taught, seconds, scratch = [], [], []
            for seed in range(args.seeds):
                examples = draw(trainset, classes, shots, seed)
                start = time.perf_counter()
                result = teach(backbone, examples, name="few-shot")
                seconds.append(time.perf_counter() - start)
                taught.append(accuracy_on(result.classifier, test_images, test_labels))
                if args.scratch:
                    scratch.append(
                        from_scratch(task, examples, validation, raw_images, test_labels, seed)
                    )
            print(
                f"| {count} | {shots} | {_spread(taught)} | {statistics.median(seconds):.1f} "
                f"| {_spread(scratch) if scratch else 'not run'} |",
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
    parser.add_argument("--task", choices=TASKS, default="fashion_mnist")
    parser.add_argument("--backbone", help="the model taught (default: the task's)")
    parser.add_argument("--source", help="the task's raw files (idx files or image folder)")
    parser.add_argument("--classes", type=int, nargs="+", help="class sets (default: all)")
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--seeds", type=int, default=1, help="draws of the examples")
    parser.add_argument("--no-scratch", dest="scratch", action="store_false")
    return parser.parse_args(argv)


if __name__ == "__main__":
    runtime.exec_with_allocator()
    sys.exit(main())
