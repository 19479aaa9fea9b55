"""Teach a shipped network new classes from a folder of a few examples per class.

    python -m research.teach --backbone models/cifar10 --examples my_photos --out models/mine

`my_photos` is laid out ``class/image`` (2 to 20 classes, at least 2 images each). The
backbone's layers stay frozen and a new head is fitted on augmented views of the examples
(research.train.teach); a quarter of each class's examples is held out for the accuracy
printed and for calibration. The output is a model directory the site and research.predict
load like any other.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from research.data.folders import list_image_folder
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError, ModelNotFoundError
from research.train.teach import TeachSettings, teach


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only loading
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out} exists and is not empty; pass --overwrite", file=sys.stderr)
        return 1
    try:
        listing = list_image_folder(args.examples)
        if None not in listing:
            raise ValueError(f"{args.examples} must be laid out class/image")
        examples = {
            name: [Image.open(path) for path in paths] for name, paths in listing[None].items()
        }
        backbone = Classifier.load(args.backbone)
        previous = Classifier.load(args.compare_with) if args.compare_with else None
        settings = TeachSettings(holdout=args.holdout, seed=args.seed)
        say, on_step = _json_progress() if args.progress_json else (print, None)
        result = teach(
            backbone,
            examples,
            name=args.name or out.name,
            settings=settings,
            progress=say,
            on_step=on_step,
            compare_with=previous,
        )
    except (DataNotFoundError, ModelNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if out.exists():
        shutil.rmtree(out)
    result.classifier.export(out)
    record = result.classifier.record
    caution = " (too few held out for this figure to mean much)" if result.few_examples else ""
    print(
        f"taught {record.name}: {len(record.class_names)} classes from {result.trained_on} "
        f"examples in {result.seconds:.1f} s; accuracy {result.accuracy:.1%} on "
        f"{result.held_out} held-out examples{caution}; temperature {record.temperature:.2f}"
    )
    if args.progress_json:
        _emit(
            phase="done",
            accuracy=result.accuracy,
            held_out=result.held_out,
            few_examples=result.few_examples,
            version=record.version,
            previous_accuracy=result.previous_accuracy,
        )
    print(f"wrote {out}")
    return 0


def _emit(**fields) -> None:
    """One JSON line on stdout (flushed: a worker reads them as they come)."""
    print(json.dumps({"progress": fields}), flush=True)


def _json_progress():
    """(progress, on_step) that write JSON lines {"progress": {"phase", "step", "steps"}}."""

    def say(message: str) -> None:
        _emit(phase=message)

    def on_step(done: int, steps: int) -> None:
        _emit(phase="fitting the head", step=done, steps=steps)

    return say, on_step


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.teach", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backbone", required=True, help="a model directory, e.g. models/cifar10")
    parser.add_argument("--examples", required=True, help="a class/image folder of examples")
    parser.add_argument("--out", required=True, help="the new model directory")
    parser.add_argument("--name", help="the model's name (default: the output folder's name)")
    parser.add_argument(
        "--holdout", type=float, default=TeachSettings.holdout, help="share held out per class"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the views")
    parser.add_argument("--overwrite", action="store_true", help="replace --out")
    parser.add_argument(
        "--compare-with",
        help="an earlier model of the same classes: its accuracy on the same held-out examples",
    )
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help='also write progress as JSON lines {"progress": {...}} on stdout (for a worker)',
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
