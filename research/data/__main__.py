"""Data command line: import local files as tfds datasets, and review a dataset.

    python -m research.data import-idx /usr/share/datasets/fashion-mnist --dataset fashion_mnist
    python -m research.data import-folder ~/data/cifar10-jpeg --dataset cifar10
    python -m research.data summary --dataset cifar10 --out cifar10.png
    python -m research.data out-of-scope --out /tmp/out-of-scope

``--data_dir`` defaults to tfds's (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.configs import runtime
from research.data import datasets, importers, out_of_scope
from research.serving.errors import DataNotFoundError

# Sample grid: images per class row, and the smallest cell side in pixels (small images scale up).
GRID_COLUMNS = 10
GRID_MIN_CELL = 64
GRID_LABEL_WIDTH = 110


def main(argv: Sequence[str] | None = None) -> int:
    runtime.setup_logging()
    args = _parse_args(argv)
    try:
        return args.run(args)
    except (DataNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def import_idx(args: argparse.Namespace) -> int:
    start = time.monotonic()
    info = importers.import_idx(
        args.source,
        args.dataset,
        args.data_dir,
        class_names=args.class_names.split(",") if args.class_names else None,
        validation_per_class=args.validation_per_class,
        overwrite=args.overwrite,
    )
    _print_imported(info, time.monotonic() - start)
    return 0


def import_folder(args: argparse.Namespace) -> int:
    start = time.monotonic()
    info = importers.import_image_folder(
        args.source,
        args.dataset,
        args.data_dir,
        validation_per_class=args.validation_per_class,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    _print_imported(info, time.monotonic() - start)
    return 0


def summarize(args: argparse.Namespace) -> int:
    info = datasets.get_info(args.dataset, args.data_dir)
    first = next(iter(info.splits))
    image, _ = next(iter(datasets.load_split(args.dataset, first, args.data_dir)))
    print(f"dataset      {info.name}")
    print(f"image        shape {tuple(image.shape)}, dtype {image.dtype.name}")
    print(f"classes      {len(info.class_names)}: {', '.join(info.class_names)}")
    counts = {
        split: datasets.count_examples_per_class(args.dataset, split, args.data_dir)
        for split in info.splits
    }
    width = max(len(name) for name in info.class_names)
    print(f"{'class':<{width}}  " + "  ".join(f"{split:>10}" for split in info.splits))
    for label, name in enumerate(info.class_names):
        print(f"{name:<{width}}  " + "  ".join(f"{c[label]:>10}" for c in counts.values()))
    print(f"{'total':<{width}}  " + "  ".join(f"{n:>10}" for n in info.splits.values()))
    if args.out:
        grid = render_sample_grid(args.dataset, first, args.data_dir, columns=args.columns)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.out)
        print(f"wrote {args.out}: {args.columns} {first} images per class, one row per class")
    return 0


def make_out_of_scope(args: argparse.Namespace) -> int:
    start = time.monotonic()
    made = out_of_scope.generate(args.out, count=args.count, seed=args.seed)
    kinds = ", ".join(f"{kind} {n}" for kind, n in made.items())
    print(
        f"wrote {sum(made.values())} out-of-scope images to {args.out}: {kinds}; "
        f"{time.monotonic() - start:.0f}s"
    )
    return 0


def render_sample_grid(name: str, split: str, data_dir: str | None, columns: int = GRID_COLUMNS):
    """Returns a PIL image with the first ``columns`` images of each class, one row per class."""
    from PIL import Image, ImageDraw  # only for the summary grid

    info = datasets.get_info(name, data_dir)
    samples: dict[int, list[np.ndarray]] = {label: [] for label in range(len(info.class_names))}
    for image, label in datasets.load_split(name, split, data_dir).as_numpy_iterator():
        if len(samples[int(label)]) < columns:
            samples[int(label)].append(image)
        if all(len(images) == columns for images in samples.values()):
            break
    height, width, _ = info.image_shape
    scale = max(1, -(-GRID_MIN_CELL // max(height, width)))
    cell_h, cell_w = height * scale + 2, width * scale + 2
    grid = Image.new("RGB", (GRID_LABEL_WIDTH + columns * cell_w, len(samples) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for row, (label, images) in enumerate(samples.items()):
        draw.text((4, row * cell_h + cell_h // 2 - 6), info.class_names[label][:16], fill="black")
        for col, image in enumerate(images):
            tile = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
            tile = tile.convert("RGB").resize((width * scale, height * scale), Image.NEAREST)
            grid.paste(tile, (GRID_LABEL_WIDTH + col * cell_w + 1, row * cell_h + 1))
    return grid


def _print_imported(info: datasets.DatasetInfo, seconds: float) -> None:
    splits = ", ".join(f"{split} {n}" for split, n in info.splits.items())
    print(
        f"imported {info.name}: {splits}; {len(info.class_names)} classes; "
        f"images {info.image_shape}; {seconds:.0f}s"
    )


def _parse_image_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m research.data", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--dataset", required=True, help="tfds name, e.g. cifar10, or your own")
        sub.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")

    sub = commands.add_parser("import-idx", help="import MNIST-format idx files (.gz or not)")
    sub.add_argument("source", help="folder with train-images-idx3-ubyte[.gz], t10k-..., ...")
    add_common(sub)
    sub.add_argument("--class_names", default=None, help="comma-separated, for non-tfds names")
    sub.add_argument(
        "--validation_per_class",
        type=int,
        default=0,
        help="hold out the last N training images of each class as a 'validation' split",
    )
    sub.add_argument("--overwrite", action="store_true", help="replace an existing import")
    sub.set_defaults(run=import_idx)

    sub = commands.add_parser("import-folder", help="import images laid out split/class/image")
    sub.add_argument("source", help="folder with split/class/image (or class/image)")
    add_common(sub)
    sub.add_argument(
        "--validation_per_class",
        type=int,
        default=importers.DEFAULT_VALIDATION_PER_CLASS,
        help="with no validation split, hold out the last N train images of each class "
        "(sorted by file name); 0 holds out none",
    )
    sub.add_argument("--image_size", type=_parse_image_size, default=None, help="resize to HxW")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing import")
    sub.set_defaults(run=import_folder)

    sub = commands.add_parser("summary", help="splits, class counts, shape and a sample grid")
    add_common(sub)
    sub.add_argument("--out", default=None, help="write a PNG grid of sample images per class")
    sub.add_argument("--columns", type=int, default=GRID_COLUMNS, help="samples per class")
    sub.set_defaults(run=summarize)

    sub = commands.add_parser(
        "out-of-scope",
        help="make the out-of-scope check set (text, pages, icons, shapes, drawings)",
    )
    sub.add_argument("--out", required=True, help="folder for <kind>/<kind>-NNN.png")
    sub.add_argument("--count", type=int, default=60, help="images of each kind")
    sub.add_argument("--seed", type=int, default=out_of_scope.SEED)
    sub.set_defaults(run=make_out_of_scope)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
