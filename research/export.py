"""Export a trained model for serving: inference weights, metadata and a model card.

    python -m research.export --workdir workdirs/cifar10 --out models/cifar10 \\
        --command "python -m research.train --dataset=cifar10" --notes "2-core Debian CPU"

Takes the checkpoint research.serving.model_dir picks in the workdir (best evaluation accuracy, else
latest; as Classifier.load does), writes its weights and serving record without optimizer
state, and MODEL_CARD.md beside them, written from that record.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from research.evaluation import report as model_report
from research.evaluation.export import disk_size, export_model, format_size, render_model_card
from research.serving.artifacts import CARD_FILE
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only loading
    try:
        clf = export_model(args.workdir, args.out, overwrite=args.overwrite)
    except (ModelNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = disk_size(args.out)
    card = Path(args.out) / CARD_FILE
    card.write_text(
        render_model_card(
            clf, out_dir=args.out, size_bytes=size, command=args.command, notes=args.notes
        )
    )
    record = clf.record
    accuracy = record.eval_accuracy
    shown = f"{accuracy:.4f}" if accuracy is not None else "not evaluated"
    print(
        f"exported {record.name} ({record.version}, step {record.step}) to {args.out}: "
        f"{format_size(size)}; {record.metrics.get('eval_split', 'eval')} accuracy {shown}"
    )
    print(f"wrote {card}")
    if args.report:  # the model page's files: research.model_report on the validation split
        try:
            print(f"wrote {model_report.build_report(args.out, workdir=args.workdir)}")
        except (DataNotFoundError, ValueError) as error:  # exported; the report is not
            print(f"error: no report: {error}", file=sys.stderr)
            return 1
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training workdir (or exported model)")
    parser.add_argument("--out", required=True, help="output directory, e.g. models/cifar10")
    parser.add_argument("--command", help="the command that trained it (default: rebuilt)")
    parser.add_argument("--notes", help="free text for the model card, e.g. the hardware")
    parser.add_argument("--overwrite", action="store_true", help="replace an exported model")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write the model page's report (validation accuracy, confusion matrix, "
        "misclassified examples, training curves from the workdir)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
