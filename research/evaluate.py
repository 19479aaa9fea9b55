"""Evaluate a trained model: accuracy, loss, per-class accuracy, a confusion matrix and
calibration (ECE over 15 bins, NLL, Brier score) at T=1 and at the record's temperature.

    python -m research.evaluate --checkpoint workdirs/cifar10              # its eval split
    python -m research.evaluate --checkpoint models/fashion_mnist --split test
    python -m research.evaluate --checkpoint models/cifar10 --image_folder ~/photos

A tfds split goes through training's evaluation path (input_pipeline + train.evaluate_model);
an image folder (class/image, or split/class/image, listed by research.data.folders) goes through
research.serving.preprocess.preprocess_image, the serving preprocessing. Both apply the model's
serving
record (test-time flip, temperature) and write metrics.json, confusion.png and reliability.png
(drawn by research.evaluation.plots) to --out (default: <checkpoint>/eval_<split>/). Calibration
figures
use research.serving.calibration's definitions, the ones research.calibrate fits with. With
--report,
the same pass also writes <checkpoint>/report/, what the model's web page shows
(research.model_report: per-class accuracy, confusion cells' examples, training curves).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.configs import runtime
from research.evaluation import report as model_report
from research.evaluation.metrics import (
    evaluate_folder,
    evaluate_split,
    format_report,
    saved_data_dir,
    write_results,
)
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
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
    from research.data import datasets  # TensorFlow: only to list the splits

    return datasets.default_eval_split(datasets.get_info(clf.dataset, data_dir))


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
