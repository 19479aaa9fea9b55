"""Choosing and writing the example images a model ships (`pick_examples`, `write_examples`):
the first images of each class in its validation split, blind to the model. Reading them is
research.serving.model_dir's. The command is research.examples.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from research.serving import model_dir
from research.serving.artifacts import EXAMPLES_INDEX_FILE
from research.serving.errors import DataNotFoundError
from research.serving.model_dir import Example, examples_dir

log = logging.getLogger(__name__)

SPLIT = "validation"  # never the test split: examples are part of what ships, like thresholds


def pick_examples(labels: Sequence[int], num_classes: int, per_class: int = 1) -> list[int]:
    """Indices of the first `per_class` items of each class, ordered by class then position."""
    chosen: dict[int, list[int]] = {label: [] for label in range(num_classes)}
    for position, label in enumerate(labels):
        bucket = chosen.get(int(label))
        if bucket is not None and len(bucket) < per_class:
            bucket.append(position)
    return [position for label in range(num_classes) for position in chosen[label]]


def slugify(label: str) -> str:
    """'T-shirt/top' -> 't-shirt-top': a label as a safe file-name part."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:48] or "class"


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) as a small PNG."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def write_examples(
    model_path: str | Path, *, per_class: int = 1, data_dir: str | None = None
) -> list[Example]:
    """Pick examples from the model's dataset's validation split and write them to the model's
    examples folder (replacing the index); returns what was written."""
    from research.data import datasets  # TensorFlow: only when writing

    _, _, record = model_dir.pick_checkpoint(model_path)
    data_dir = data_dir or record.config.get("data_dir") or None
    info = datasets.get_info(record.dataset, data_dir)
    if SPLIT not in info.splits:
        raise DataNotFoundError(
            f"{record.dataset} has no {SPLIT} split in {datasets.resolve_data_dir(data_dir)} "
            f"(it has: {', '.join(sorted(info.splits))}); examples are never taken from the test "
            "split. Pass --data_dir where the validation split was prepared."
        )
    images, labels = [], []
    for image, label in datasets.load_split(record.dataset, SPLIT, data_dir).as_numpy_iterator():
        images.append(image)
        labels.append(int(label))
    positions = pick_examples(labels, record.num_classes, per_class)
    folder = examples_dir(model_path)
    folder.mkdir(parents=True, exist_ok=True)
    written, counts = [], {}
    for position in positions:
        label = record.class_names[labels[position]]
        counts[label] = counts.get(label, 0) + 1
        file = f"{labels[position]:02d}-{slugify(label)}-{counts[label]}.png"
        (folder / file).write_bytes(encode_png(images[position]))
        written.append(Example(file=file, label=label))
    index = {
        "dataset": record.dataset,
        "split": SPLIT,
        "rule": f"the first {per_class} image(s) of each class in the split's file order",
        "positions": positions,
        "examples": [dataclasses.asdict(example) for example in written],
    }
    (folder / EXAMPLES_INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return written
