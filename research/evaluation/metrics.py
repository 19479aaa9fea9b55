"""A model's figures on a tfds split (`evaluate_split`, training's evaluation path) or an image
folder (`evaluate_folder`, the serving preprocessing): accuracy, loss, per-class accuracy, the
confusion matrix and calibration at T=1 and at the record's temperature; and the files that
report them (`write_results`). The command is research.evaluate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from research.configs import Config
from research.data import folders
from research.evaluation import plots
from research.nets.models import eval_step
from research.serving import calibration
from research.serving.artifacts import CONFUSION_FILE, EVAL_METRICS_FILE, RELIABILITY_FILE
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess_image

# Above this many classes the text confusion matrix is left to the PNG.
MAX_TEXT_CONFUSION_CLASSES = 20

# Called with each batch's real images (uint8 [n, H, W, C], as the model saw them), their
# log-probabilities at T=1 ([n, classes]) and labels ([n]), in the split's order: how
# research.model_report picks its misclassified examples from the same pass.
Collect = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


# ----------------------------------------------------------------------------- evaluation


def evaluate_split(
    clf: Classifier,
    split: str,
    *,
    data_dir: str | None = None,
    batch_size: int | None = None,
    collect: Collect | None = None,
) -> dict[str, Any]:
    """Metrics of `clf` on a tfds split of its dataset, through the training evaluation path;
    `collect` sees every batch (see `Collect`)."""
    from research.data import datasets, pipeline  # TensorFlow: only on this path

    config = Config.from_dict(clf.record.config).replace(data_dir=data_dir)
    info = datasets.get_info(config.dataset, config.data_dir)
    if list(info.class_names) != clf.class_names:
        raise ValueError(
            f"Dataset {config.dataset!r} has classes {list(info.class_names)}, but the model "
            f"was trained on {clf.class_names}"
        )
    eval_ds = pipeline.create_eval_dataset(config, split, clf.image_shape)
    batch_size = batch_size or config.batch_size
    batches = pipeline.iterate_padded_batches(eval_ds, batch_size)
    return _evaluate(clf, batches, batch_size, collect)


def evaluate_folder(
    clf: Classifier,
    folder: str | Path,
    *,
    split: str | None = None,
    batch_size: int = 128,
    collect: Collect | None = None,
) -> dict[str, Any]:
    """Metrics of `clf` on an image folder, preprocessed exactly as serving preprocesses.

    The folder holds class/image or split/class/image (then `split` picks one; by default the
    only one, else 'validation', else 'test'). Folder names must name the model's classes
    (case, spaces and punctuation aside, or as class indices); not every class needs a folder.
    """
    files, split = label_image_folder(folder, clf.class_names, split=split)
    skipped: list[str] = []
    metrics = _evaluate(
        clf, _folder_batches(files, clf.image_shape, batch_size, skipped), batch_size, collect
    )
    metrics["skipped"] = skipped
    metrics["folder_split"] = split
    return metrics


def _evaluate(
    clf: Classifier,
    batches: Iterator[dict[str, np.ndarray]],
    batch_size: int,
    collect: Collect | None = None,
) -> dict[str, Any]:
    """What train.evaluate_model reports, at the record's flip and temperature, and the
    calibration before (T=1) and after (the record's temperature), from one pass."""
    sharding = _data_sharding(batch_size)
    log_probs, labels = [], []  # at T=1: logits up to a constant, all temperature scaling needs
    for batch in batches:
        images = batch["image"]
        if sharding is not None:
            images = jax.device_put(images, sharding)
        out = np.asarray(eval_step(clf.model, images, temperature=1.0, **clf.record.tta))
        mask = np.asarray(batch["mask"])
        log_probs.append(out[mask])
        labels.append(np.asarray(batch["label"])[mask])
        if collect is not None:
            collect(np.asarray(batch["image"])[mask], log_probs[-1], labels[-1])
    num_classes = clf.record.num_classes
    if not labels:
        return {**_counts(np.zeros((0, num_classes)), np.zeros(0, int), num_classes), "count": 0}
    logits, labels_all = np.concatenate(log_probs), np.concatenate(labels).astype(np.int64)
    temperature = clf.record.temperature
    at_t = calibration.log_probabilities(logits, temperature)
    before = calibration.calibration_report(logits, labels_all, 1.0)
    after = calibration.calibration_report(logits, labels_all, temperature)
    reliability = {
        name: {
            k: np.where(np.isnan(v), None, v).tolist()
            for k, v in calibration.reliability_bins(np.exp(lp), labels_all).items()
        }
        for name, lp in (("before", logits), ("after", at_t))
    }
    return {
        **_counts(at_t, labels_all, num_classes),
        "calibration": {"before": before, "after": after},
        "reliability": reliability,
    }


def _counts(log_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix, as train.evaluate_model."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, log_probs.argmax(-1)), 1)
    count = len(labels)
    loss = -float(log_probs[np.arange(count), labels].sum(dtype=np.float64))
    return {
        "loss": loss / max(count, 1),
        "accuracy": float(confusion.trace() / max(count, 1)),
        "per_class_accuracy": (confusion.diagonal() / np.maximum(confusion.sum(1), 1)).tolist(),
        "confusion": confusion.tolist(),
        "count": count,
    }


def label_image_folder(
    folder: str | Path, class_names: Sequence[str], *, split: str | None = None
) -> tuple[list[tuple[Path, int]], str | None]:
    """[(image path, label)] of class/image or split/class/image, and the split it read.

    Of several splits, `split` picks one; by default the only one, else 'validation', else
    'test'. Each class folder must name one of `class_names` (see
    `research.data.folders.match_class`).
    """
    root = Path(folder).expanduser()
    layout = folders.list_image_folder(root)
    if None in layout:
        if split is not None:
            raise ValueError(f"{root} is laid out class/image, without splits; leave out --split")
        chosen = None
    else:
        splits = list(layout)
        if split is None:
            preferred = [s for s in ("validation", "test") if s in splits]
            if len(splits) > 1 and not preferred:
                raise ValueError(f"{root} has splits {splits}: choose one with --split")
            split = splits[0] if len(splits) == 1 else preferred[0]
        if split not in layout:
            raise ValueError(f"{root} has no split {split!r}; it has {splits}")
        chosen = split
    classes = layout[chosen]
    labels = {name: folders.match_class(name, class_names) for name in classes}
    unknown = sorted(name for name, label in labels.items() if label is None)
    if unknown:
        raise ValueError(
            f"Folders {unknown} in {root} name none of the model's classes: {list(class_names)}"
        )
    files = [(path, labels[name]) for name, paths in classes.items() for path in paths]
    return files, chosen


def _folder_batches(
    files: list[tuple[Path, int]],
    image_shape: Sequence[int],
    batch_size: int,
    skipped: list[str],
) -> Iterator[dict[str, np.ndarray]]:
    """Padded batches as pipeline.iterate_padded_batches yields them; unreadable files
    are left out and named in `skipped`."""
    for start in range(0, len(files), batch_size):
        images, labels = [], []
        for path, label in files[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    image.load()
                    images.append(preprocess_image(image, image_shape))
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
    ]
    for when, r in metrics.get("calibration", {}).items():
        lines.append(
            f"{when:>6} (T={r['temperature']:.3f}): confidence {r['mean_confidence']:.4f}  "
            f"ECE {r['ece']:.4f}  NLL {r['nll']:.4f}  Brier {r['brier']:.4f}"
        )
    lines += [
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


def write_results(
    out_dir: str | Path, metrics: dict[str, Any], class_names: Sequence[str], title: str
) -> tuple[Path, Path]:
    """Writes metrics.json, confusion.png and (with calibration figures) reliability.png to
    `out_dir`; returns the paths of the first two."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / EVAL_METRICS_FILE, out_dir / CONFUSION_FILE
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    plots.render_confusion(np.asarray(metrics["confusion"]), class_names, title).save(png_path)
    if "reliability" in metrics:
        plots.render_reliability(
            metrics["reliability"]["before"],
            metrics["reliability"]["after"],
            title,
            temperature=metrics["calibration"]["after"]["temperature"],
        ).save(out_dir / RELIABILITY_FILE)
    return json_path, png_path


# ----------------------------------------------------------------------------- CLI


def saved_data_dir(clf: Classifier) -> str | None:
    """The training run's --data_dir when it exists here, else tfds's default."""
    saved = clf.record.config.get("data_dir")
    return saved if saved and Path(saved).is_dir() else None
