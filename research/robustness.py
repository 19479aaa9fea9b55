"""Accuracy under common corruptions (issue 13's benchmark), through the serving seam.

    python -m research.robustness --model models/cifar10                    # middle severity
    python -m research.robustness --model models/fashion_mnist --severities all
    python -m research.robustness --model workdirs/cifar10 --split validation --limit 1000

Reads a tfds split of the model's dataset (default: the split training evaluated on, from the
training run's --data_dir when it exists here), corrupts every image with each corruption of
research.data.corruptions that applies (colour-only ones are skipped for grey models) at the chosen
severities (seed --seed; image i of the split gets seed (seed, i)), and classifies the uint8
images with `Classifier.predict_arrays`: the jitted forward serving uses, with the record's
test-time flip. Split images are already uint8 at the model's size, so `preprocess_image` would
return them unchanged. Prints a markdown table (accuracy per corruption and severity, the
mean of issue 13's seven at severity 3, the mean over everything), writes it as JSON (--out,
default <model>/robustness.json, or robustness_all.json for all severities) and a PNG of
examples beside it (a green frame: classified right; red: wrong).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from research.configs import runtime
from research.data import corruptions
from research.evaluation.metrics import saved_data_dir
from research.evaluation.robustness import draw_examples, format_table, load_images, measure
from research.serving.artifacts import ROBUSTNESS_ALL_FILE, ROBUSTNESS_FILE
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
    args = _parse_args(argv)
    try:
        return _run(args, argv)
    except (ModelNotFoundError, DataNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)  # IncompatibleModelError is a ValueError
        return 1


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    severities = (
        corruptions.SEVERITIES if args.severities == "all" else _parse_severities(args.severities)
    )
    clf = Classifier.load(args.model)
    started = time.monotonic()
    data_dir = args.data_dir or saved_data_dir(clf)
    split = args.split or clf.metrics.get("eval_split")
    if not split:
        from research.data import datasets  # TensorFlow: only to find the split

        split = datasets.default_eval_split(datasets.get_info(clf.dataset, data_dir))
    names = args.corruptions.split(",") if args.corruptions else None
    for name in names or ():
        corruptions.validate(name, severities[0], clf.image_shape[-1])
    images, labels = load_images(clf, split, data_dir=data_dir, limit=args.limit)
    print(f"{clf.name} ({clf.version}) on {clf.dataset} {split}: {len(images)} images")

    def report(name: str, severity: int, accuracy: float) -> None:
        elapsed = time.monotonic() - started
        print(f"  {name:<15} {severity or '-'}  {100 * accuracy:6.2f}%  ({elapsed:.0f} s)")

    result = measure(
        clf, images, labels, severities=severities, names=names, seed=args.seed, on_result=report
    )
    seconds = time.monotonic() - started
    default_name = ROBUSTNESS_FILE if len(severities) == 1 else ROBUSTNESS_ALL_FILE
    out = Path(args.out) if args.out else Path(args.model) / default_name
    png = Path(args.examples_png) if args.examples_png else out.with_suffix(".png")
    table = format_table(result, severities)
    record = {
        "model": clf.name,
        "version": clf.version,
        "step": clf.record.step,
        "dataset": clf.dataset,
        "split": split,
        "count": len(images),
        "severities": list(severities),
        "seed": args.seed,
        "flip_tta": clf.record.flip_tta,
        "translate_tta": clf.record.translate_tta,
        "command": "python -m research.robustness " + shlex.join(argv or sys.argv[1:]),
        "seconds": round(seconds, 1),
        **{k: v for k, v in result.items() if k != "predictions"},
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    draw_examples(
        clf, images, labels, result, severities[len(severities) // 2], png, seed=args.seed
    )
    print(f"\n{table}\n\nwrote {out} and {png} ({seconds:.0f} s)")
    return 0


def _parse_severities(text: str) -> tuple[int, ...]:
    try:
        severities = tuple(int(s) for s in text.split(","))
    except ValueError:
        severities = ()
    if not severities or any(s not in corruptions.SEVERITIES for s in severities):
        raise ValueError(
            f"--severities takes 'all' or a comma-separated list of 1..5, not {text!r}"
        )
    return severities


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.robustness", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model", required=True, help="a training workdir or an exported model directory"
    )
    parser.add_argument("--split", help="tfds split (default: the one training evaluated on)")
    parser.add_argument("--data_dir", help="tfds data dir (default: the training run's, or tfds's)")
    parser.add_argument(
        "--severities", default="3", help="'all', or severities 1..5 separated by commas"
    )
    parser.add_argument("--corruptions", help="names separated by commas (default: all that apply)")
    parser.add_argument("--limit", type=int, help="only the first N images of the split")
    parser.add_argument("--seed", type=int, default=0, help="image i gets seed (seed, i)")
    parser.add_argument("--out", help="JSON path (default: <model>/robustness.json)")
    parser.add_argument("--examples_png", help="PNG path (default: beside the JSON)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
