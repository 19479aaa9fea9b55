"""Evaluate a trained model: accuracy, loss, per-class accuracy, a confusion matrix and
calibration (ECE over 15 bins, NLL, Brier score) at T=1 and at the record's temperature.

    python -m research.evaluate --checkpoint workdirs/cifar10              # its eval split
    python -m research.evaluate --checkpoint models/fashion_mnist --split test
    python -m research.evaluate --checkpoint models/cifar10 --image_folder ~/photos

A tfds split goes through training's evaluation path (input_pipeline + train.evaluate_model);
an image folder (class/image, or split/class/image, listed by research.image_folder) goes through
research.inference.preprocess_image, the serving preprocessing. Both apply the model's serving
record (test-time flip, temperature) and write metrics.json, confusion.png and reliability.png
(drawn by research.plots) to --out (default: <checkpoint>/eval_<split>/). Calibration figures
use research.calibration's definitions, the ones research.calibrate fits with. With --report,
the same pass also writes <checkpoint>/report/, what the model's web page shows
(research.model_report: per-class accuracy, confusion cells' examples, training curves).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from research import calibration, cli, image_folder, plots
from research.errors import DataNotFoundError, ModelNotFoundError
from research.inference import Classifier, preprocess_image

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
    from research import datasets, input_pipeline  # TensorFlow only on this path
    from research.configs import Config

    config = Config.from_dict(clf.record.config).replace(data_dir=data_dir)
    info = datasets.get_info(config.dataset, config.data_dir)
    if list(info.class_names) != clf.class_names:
        raise ValueError(
            f"Dataset {config.dataset!r} has classes {list(info.class_names)}, but the model "
            f"was trained on {clf.class_names}"
        )
    eval_ds = input_pipeline.create_eval_dataset(config, split, clf.image_shape)
    batch_size = batch_size or config.batch_size
    batches = input_pipeline.iterate_padded_batches(eval_ds, batch_size)
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
    from research import train

    sharding = _data_sharding(batch_size)
    log_probs, labels = [], []  # at T=1: logits up to a constant, all temperature scaling needs
    for batch in batches:
        images = batch["image"]
        if sharding is not None:
            import jax

            images = jax.device_put(images, sharding)
        out = np.asarray(train.eval_step(clf.model, images, temperature=1.0, **clf.record.tta))
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
    `research.image_folder.match_class`).
    """
    root = Path(folder).expanduser()
    layout = image_folder.list_image_folder(root)
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
    labels = {name: image_folder.match_class(name, class_names) for name in classes}
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
    """Padded batches as input_pipeline.iterate_padded_batches yields them; unreadable files
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
    json_path, png_path = out_dir / "metrics.json", out_dir / "confusion.png"
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    plots.render_confusion(np.asarray(metrics["confusion"]), class_names, title).save(png_path)
    if "reliability" in metrics:
        plots.render_reliability(
            metrics["reliability"]["before"],
            metrics["reliability"]["after"],
            title,
            temperature=metrics["calibration"]["after"]["temperature"],
        ).save(out_dir / "reliability.png")
    return json_path, png_path


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    cli.setup_logging()
    args = _parse_args(argv)
    try:
        return _run(args)
    except (ModelNotFoundError, DataNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)  # IncompatibleModelError is a ValueError
        return 1


def _run(args: argparse.Namespace) -> int:
    clf = Classifier.load(args.checkpoint)
    started = time.monotonic()
    collector = None
    if args.report:
        from research import model_report

        if args.image_folder:
            raise ValueError("--report evaluates the model's own validation split, not a folder")
        collector = model_report.MistakeCollector(clf.record.temperature)
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
        data_dir = args.data_dir or saved_data_dir(clf)
        if collector is not None and split != model_report.SPLIT:
            raise ValueError(f"--report is made on the {model_report.SPLIT} split, not {split!r}")
        metrics = evaluate_split(
            clf, split, data_dir=data_dir, batch_size=args.batch_size, collect=collector
        )
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
        "step": clf.record.step,
        "source": source,
        "flip_tta": clf.record.flip_tta,
        "translate_tta": clf.record.translate_tta,
        "temperature": clf.record.temperature,
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
    print(f"\nwrote {json_path}, {png_path} and reliability.png ({seconds:.1f}s)")
    if collector is not None:
        report = model_report.write_report(
            Path(args.checkpoint) / model_report.REPORT_DIR,
            clf,
            metrics,
            collector,
            model=args.checkpoint,
            workdir=args.workdir or model_report.default_workdir(args.checkpoint),
            split=split,
            seconds=seconds,
            steps_per_epoch=model_report.steps_per_epoch(clf.record, data_dir),
        )
        print(model_report.format_summary(report))
    return 0


def _default_split(clf: Classifier, data_dir: str | None) -> str:
    """The split the model was evaluated on in training, else the dataset's default."""
    split = clf.metrics.get("eval_split")
    if split:
        return split
    from research import datasets

    return datasets.default_eval_split(datasets.get_info(clf.dataset, data_dir))


def saved_data_dir(clf: Classifier) -> str | None:
    """The training run's --data_dir when it exists here, else tfds's default."""
    saved = clf.record.config.get("data_dir")
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
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write what the model's web page shows to <checkpoint>/report "
        "(research.model_report; validation split only)",
    )
    parser.add_argument("--workdir", help="with --report: the training workdir, for its curves")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
