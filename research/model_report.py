"""What a model's page shows, measured once on its validation split and written as files.

    python -m research.model_report --model models/cifar10
    python -m research.model_report --model models/fashion_mnist \\
        --workdir workdirs/fashion_mnist_val
    python -m research.evaluate --checkpoint models/cifar10 --split validation --report

The model is evaluated through research.evaluate (the training evaluation path, at the
serving record's flip and temperature: the figures research.evaluate prints), and the same
pass keeps the most confident mistakes of each true/predicted pair. Written to
``<model>/report/`` (replaced as a whole, so no stale file survives):

    report.json     split, count, accuracy, per-class accuracy and count, confusion matrix,
                    calibration, training curves (or why there are none), parameter count,
                    size on disk, and each confusion cell's examples with their confidences
    confusion.png   research.evaluation.plots.render_confusion
    curves.png      research.evaluation.plots.render_curves, when the run recorded at least two
    epochs
    examples/<true>-<predicted>/<k>.png
                    up to EXAMPLES_PER_CELL mistakes per cell, the most confident first, as
                    the model saw them (its input size; 32x32 or 28x28 PNGs of 1-3 kB)

Training curves come from what the run recorded: the metrics in the serving record of every
kept checkpoint step (model directory and --workdir) and the scalars research.train writes to
``<workdir>/tensorboard`` (and ``<workdir>/metrics.jsonl`` where the run wrote one). An
exported model keeps only its final step, so without the training workdir its report says the
curves are unavailable instead of inventing them.

Examples and figures come from the validation split only (a test split is refused): what the
site shows is chosen where nothing is reported. The web reads these files and never imports
TensorFlow; this module does (through research.evaluate), lazily.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from research.configs import runtime
from research.evaluation.report import EXAMPLES_PER_CELL, build_report, format_summary
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
    args = _parse_args(argv)
    try:
        out = build_report(
            args.model,
            workdir=args.workdir,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            per_cell=args.per_cell,
            out=args.out,
        )
    except (ModelNotFoundError, DataNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_summary(out))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.model_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="an exported model or a training workdir")
    parser.add_argument(
        "--workdir", help="the training workdir, for its TensorBoard curves (default: none)"
    )
    parser.add_argument("--data_dir", help="tfds data dir (default: the training run's, or tfds's)")
    parser.add_argument("--batch_size", type=int, help="default: the training batch size")
    parser.add_argument(
        "--per_cell", type=int, default=EXAMPLES_PER_CELL, help="examples kept per cell"
    )
    parser.add_argument("--out", help="output folder (default: <model>/report)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
