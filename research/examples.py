"""Example images shipped with a model: a few from its validation split, for the web's strip.

    python -m research.examples --model models/cifar10 [--per_class 1] [--data_dir DIR]

The rule, deterministic and blind to the model: for each class, in label order, the first
``per_class`` images of that class in the validation split's file order (research.data.datasets
reads
splits in a fixed order). The model's answers play no part, and the test split is never read.
They are written at the dataset's own size as PNG files to ``<model>/examples/`` with an
``examples.json`` (file, true label). The web reads that file with `read_examples` (no
TensorFlow); the writer imports TensorFlow only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from research.configs import runtime
from research.evaluation.examples import examples_dir, write_examples
from research.serving.errors import DataNotFoundError, ModelNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model directory, e.g. models/cifar10")
    parser.add_argument("--per_class", type=int, default=1, help="examples per class (default 1)")
    parser.add_argument(
        "--data_dir", default=None, help="tfds data dir (default: the one the model trained with)"
    )
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per_class must be at least 1")
    try:
        written = write_examples(args.model, per_class=args.per_class, data_dir=args.data_dir)
    except (ModelNotFoundError, DataNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    folder = examples_dir(args.model)
    size = sum((folder / example.file).stat().st_size for example in written)
    print(f"{len(written)} examples, {size / 1024:.1f} KB, in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
