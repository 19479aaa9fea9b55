"""Evaluate a trained model: accuracy, loss, per-class accuracy and a confusion matrix.

    python -m research.evaluate --checkpoint workdirs/cifar10              # its eval split
    python -m research.evaluate --checkpoint models/fashion_mnist --split test
    python -m research.evaluate --checkpoint models/cifar10 --image_folder ~/photos

A tfds split goes through training's evaluation path (input_pipeline + train.evaluate_model);
an image folder (class/image, or split/class/image) goes through research.inference.preprocess,
the serving preprocessing. Both write metrics.json and confusion.png to --out
(default: <checkpoint>/eval_<split>/).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from research.inference import Classifier, ModelNotFoundError, preprocess

# As research.datasets.IMAGE_SUFFIXES; not imported from there, which would load TensorFlow.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Above this many classes the text confusion matrix is left to the PNG.
MAX_TEXT_CONFUSION_CLASSES = 20
# Confusion PNG: cell side (pixels) and font size, shrunk for many classes.
PNG_CELL = 44
PNG_FONT_SIZE = 14


# ----------------------------------------------------------------------------- evaluation


def evaluate_split(
    clf: Classifier, split: str, *, data_dir: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Metrics of `clf` on a tfds split of its dataset, through the training evaluation path."""
    from research import datasets, input_pipeline, train  # TensorFlow only on this path
    from research.configs import Config

    config = Config.from_dict(clf.meta["model"]).replace(data_dir=data_dir)
    info = datasets.get_info(config.dataset, config.data_dir)
    if list(info.class_names) != clf.class_names:
        raise ValueError(
            f"Dataset {config.dataset!r} has classes {list(info.class_names)}, but the model "
            f"was trained on {clf.class_names}"
        )
    eval_ds = input_pipeline.create_eval_dataset(config, split, clf.image_shape)
    batch_size = batch_size or config.batch_size
    metrics = train.evaluate_model(
        clf.model,
        input_pipeline.iterate_padded_batches(eval_ds, batch_size),
        num_classes=len(clf.class_names),
        flip_tta=bool(clf.meta.get("flip_tta", False)),
        sharding=_data_sharding(batch_size),
    )
    return metrics


def evaluate_folder(
    clf: Classifier, folder: str | Path, *, split: str | None = None, batch_size: int = 128
) -> dict[str, Any]:
    """Metrics of `clf` on an image folder, preprocessed exactly as serving preprocesses.

    The folder holds class/image or split/class/image (then `split` picks one; by default the
    only one, else 'validation', else 'test'). Folder names must name the model's classes
    (case, spaces and punctuation aside, or as class indices); not every class needs a folder.
    """
    from research import train

    files, split = list_image_folder(folder, clf.class_names, split=split)
    skipped: list[str] = []
    metrics = train.evaluate_model(
        clf.model,
        _folder_batches(files, clf.image_shape, batch_size, skipped),
        num_classes=len(clf.class_names),
        flip_tta=bool(clf.meta.get("flip_tta", False)),
        sharding=_data_sharding(batch_size),
    )
    metrics["skipped"] = skipped
    metrics["folder_split"] = split
    return metrics


def list_image_folder(
    folder: str | Path, class_names: Sequence[str], *, split: str | None = None
) -> tuple[list[tuple[Path, int]], str | None]:
    """[(image path, label)] of class/image or split/class/image, and the split it read."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist")
    subdirs = _subdirs(root)
    chosen = None
    if not any(_images_in(d) for d in subdirs):  # split/class/image
        splits = [d.name for d in subdirs if any(_images_in(c) for c in _subdirs(d))]
        if not splits:
            raise FileNotFoundError(
                f"No images laid out class/image or split/class/image in {root}"
            )
        if split is None:
            preferred = [s for s in ("validation", "test") if s in splits]
            if len(splits) > 1 and not preferred:
                raise ValueError(f"{root} has splits {splits}: choose one with --split")
            split = splits[0] if len(splits) == 1 else preferred[0]
        if split not in splits:
            raise ValueError(f"{root} has no split {split!r}; it has {splits}")
        chosen = split
        subdirs = _subdirs(root / split)
    elif split is not None:
        raise ValueError(f"{root} is laid out class/image, without splits; leave out --split")
    labels = {d.name: _match_class(d.name, class_names) for d in subdirs if _images_in(d)}
    unknown = sorted(name for name, label in labels.items() if label is None)
    if unknown:
        raise ValueError(
            f"Folders {unknown} in {root} name none of the model's classes: {list(class_names)}"
        )
    files = [(path, labels[d.name]) for d in subdirs if d.name in labels for path in _images_in(d)]
    return files, chosen


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _normalize(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _match_class(folder_name: str, class_names: Sequence[str]) -> int | None:
    """The class a folder holds: its exact name, its name up to case and punctuation
    ('t_shirt_top' for 'T-shirt/top'), or its index."""
    if folder_name in class_names:
        return list(class_names).index(folder_name)
    normalized = [_normalize(name) for name in class_names]
    if normalized.count(_normalize(folder_name)) == 1:
        return normalized.index(_normalize(folder_name))
    if folder_name.isdigit() and int(folder_name) < len(class_names):
        return int(folder_name)
    return None


def _folder_batches(
    files: list[tuple[Path, int]],
    image_shape: Sequence[int],
    batch_size: int,
    skipped: list[str],
) -> Iterator[dict[str, np.ndarray]]:
    """Padded batches as input_pipeline.iterate_padded_batches yields them; unreadable files
    are left out and named in `skipped`."""
    for start in range(0, len(files), batch_size):
        images, labels = [], []
        for path, label in files[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    image.load()
                    images.append(preprocess([image], image_shape)[0])
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                skipped.append(f"{path}: {error}")
                continue
            labels.append(label)
        if not images:
            continue
        n = len(images)
        batch = np.zeros((batch_size, *image_shape), np.uint8)
        batch[:n] = np.stack(images)
        label = np.zeros(batch_size, np.int32)
        label[:n] = labels
        yield {"image": batch, "label": label, "mask": np.arange(batch_size) < n}


def _data_sharding(batch_size: int):
    """Batches split over all local devices when they divide evenly, as in training."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) == 1 or batch_size % len(devices):
        return None
    return NamedSharding(jax.sharding.Mesh(np.array(devices), ("data",)), PartitionSpec("data"))


# ----------------------------------------------------------------------------- reports


def format_report(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Accuracy and loss, a per-class table and (for up to 20 classes) the confusion matrix."""
    confusion = np.asarray(metrics["confusion"])
    counts = confusion.sum(1)
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [
        f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
        f"({metrics['count']} images)",
        "",
        f"{'class':<{width}}  {'images':>6}  {'accuracy':>8}",
    ]
    for name, n, accuracy in zip(class_names, counts, metrics["per_class_accuracy"], strict=True):
        shown = f"{accuracy:8.4f}" if n else f"{'-':>8}"
        lines.append(f"{name:<{width}}  {n:>6}  {shown}")
    if len(class_names) <= MAX_TEXT_CONFUSION_CLASSES:
        cell = max(4, len(str(confusion.max())) + 1)
        label = max(len(f"{len(class_names) - 1} {name}") for name in class_names)
        lines += ["", "confusion (rows: true class, columns: predicted class index)"]
        lines.append(" " * label + "".join(f"{j:>{cell}}" for j in range(len(class_names))))
        for i, name in enumerate(class_names):
            row = "".join(f"{v:>{cell}}" for v in confusion[i])
            lines.append(f"{f'{i} {name}':<{label}}{row}")
    return "\n".join(lines)


def render_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Image.Image:
    """A confusion-matrix image: rows are true classes, columns predicted ones, each cell
    shaded by its share of the row and labelled with its count."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    cell = PNG_CELL if n <= 20 else max(8, PNG_CELL * 20 // n)
    font_size = PNG_FONT_SIZE if n <= 20 else max(8, PNG_FONT_SIZE * 20 // n + 2)
    font = ImageFont.load_default(size=font_size)
    small = ImageFont.load_default(size=max(8, font_size - 3))
    label_w = int(max(font.getlength(name) for name in class_names)) + 12
    top, margin = label_w + 2 * font_size + 28, font_size + 12
    left = label_w + margin
    size = (max(left + n * cell, int(font.getlength(title)) + 8) + 10, top + n * cell + margin)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    row_sums = np.maximum(confusion.sum(1, keepdims=True), 1)
    shares = confusion / row_sums
    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            shade = shares[i, j]
            color = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))  # white to navy
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(220, 220, 220))
            if cell >= 24 and confusion[i, j]:
                text = str(confusion[i, j])
                fill = "white" if shade > 0.5 else "black"
                draw.text((x + cell / 2, y + cell / 2), text, fill=fill, font=small, anchor="mm")
    for k, name in enumerate(class_names):  # row labels, then column labels rotated
        y = top + k * cell + cell / 2
        draw.text((left - 6, y), name, fill="black", font=font, anchor="rm")
        text = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(text).text((6, cell / 2), name, fill="black", font=font, anchor="lm")
        image.paste(text.rotate(90, expand=True), (left + k * cell, top - label_w))
    draw.text(
        (left + n * cell / 2, top - label_w - 4), "predicted", fill="black", font=font, anchor="mb"
    )
    axis = Image.new("RGB", (n * cell, margin), "white")
    ImageDraw.Draw(axis).text(
        (n * cell / 2, margin / 2), "true", fill="black", font=font, anchor="mm"
    )
    image.paste(axis.rotate(90, expand=True), (4, top))
    return image


def write_results(
    out_dir: str | Path, metrics: dict[str, Any], class_names: Sequence[str], title: str
) -> tuple[Path, Path]:
    """Writes metrics.json and confusion.png to `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "metrics.json", out_dir / "confusion.png"
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    render_confusion(np.asarray(metrics["confusion"]), class_names, title).save(png_path)
    return json_path, png_path


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return _run(args)
    except (ModelNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # research.datasets.DataNotFoundError, if TensorFlow is loaded
        datasets = sys.modules.get("research.datasets")
        if datasets is None or not isinstance(error, datasets.DataNotFoundError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    clf = Classifier.load(args.checkpoint)
    started = time.monotonic()
    if args.image_folder:
        metrics = evaluate_folder(
            clf, args.image_folder, split=args.split, batch_size=args.batch_size or 128
        )
        folder = Path(args.image_folder).expanduser()
        source = str(folder / metrics["folder_split"]) if metrics["folder_split"] else str(folder)
        name = "_".join(filter(None, (folder.resolve().name, metrics["folder_split"])))
        where = f"folder_{name}"
        for path in metrics.get("skipped", []):
            print(f"warning: skipped {path}", file=sys.stderr)
    else:
        split = args.split or _default_split(clf, args.data_dir)
        data_dir = args.data_dir or _saved_data_dir(clf)
        metrics = evaluate_split(clf, split, data_dir=data_dir, batch_size=args.batch_size)
        source, where = f"{clf.dataset} {split}", split
    if metrics["count"] == 0:
        raise ValueError(f"No readable images in {source}")
    seconds = time.monotonic() - started
    print(f"{clf.name} ({clf.version}) on {source}")
    print(format_report(metrics, clf.class_names))
    record = {
        "model": clf.name,
        "version": clf.version,
        "checkpoint": str(Path(args.checkpoint).absolute()),
        "step": clf.meta.get("step"),
        "source": source,
        "flip_tta": bool(clf.meta.get("flip_tta", False)),
        "seconds": round(seconds, 2),
        **metrics,
        "class_names": clf.class_names,
        "per_class_accuracy": dict(
            zip(clf.class_names, metrics["per_class_accuracy"], strict=True)
        ),
        "per_class_count": dict(
            zip(clf.class_names, np.sum(metrics["confusion"], 1).tolist(), strict=True)
        ),
    }
    where = re.sub(r"[^\w.-]+", "_", where).strip("_")  # 'train[:10%]' -> 'train_10'
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval_{where}"
    title = f"{clf.name} on {source}: accuracy {metrics['accuracy']:.4f} ({metrics['count']})"
    json_path, png_path = write_results(out, record, clf.class_names, title)
    print(f"\nwrote {json_path} and {png_path} ({seconds:.1f}s)")
    return 0


def _default_split(clf: Classifier, data_dir: str | None) -> str:
    """The split the model was evaluated on in training, else the dataset's default."""
    split = clf.metrics.get("eval_split")
    if split:
        return split
    from research import datasets

    return datasets.default_eval_split(datasets.get_info(clf.dataset, data_dir))


def _saved_data_dir(clf: Classifier) -> str | None:
    """The training run's --data_dir when it exists here, else tfds's default."""
    saved = clf.meta.get("model", {}).get("data_dir")
    return saved if saved and Path(saved).is_dir() else None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a training workdir or an exported model directory"
    )
    parser.add_argument(
        "--image_folder", help="evaluate on images laid out class/image or split/class/image"
    )
    parser.add_argument(
        "--split",
        help="tfds split (default: the one training evaluated on), or the image folder's split",
    )
    parser.add_argument("--data_dir", help="tfds data dir (default: the training run's, or tfds's)")
    parser.add_argument("--batch_size", type=int, help="default: the training batch size")
    parser.add_argument("--out", help="output folder (default: <checkpoint>/eval_<split>)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
