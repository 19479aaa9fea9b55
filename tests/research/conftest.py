"""Fixtures for the research tests: tiny generated datasets imported through tfds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Three classes a tiny net separates at once: noisy red, green and blue squares.
COLORS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}


def write_color_folder(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Writes root/train/<class>/NNNN.png images of noisy solid colours; returns root."""
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (size, size, 3))
            image = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def color_dataset(tmp_path_factory) -> tuple[str, str]:
    """A tfds dataset 'colors' (3 classes; 60 train, 12 validation) -> (name, data_dir)."""
    from research.data import importers

    root = tmp_path_factory.mktemp("colors")
    write_color_folder(root / "folder", per_class=24)
    data_dir = str(root / "tfds")
    importers.import_image_folder(root / "folder", "colors", data_dir, validation_per_class=4)
    return "colors", data_dir


@pytest.fixture(scope="session")
def trained(color_dataset, tmp_path_factory):
    """One 4-epoch run (12 steps) of the tiny net, evaluated on its own training split.

    -> (config, workdir, result of train_and_evaluate)
    """
    from research import configs, train

    name, data_dir = color_dataset
    workdir = tmp_path_factory.mktemp("run")
    config = configs.get_config(
        "tiny", dataset=name, data_dir=data_dir, epochs=4.0, eval_split="train", learning_rate=0.5
    )
    result = train.train_and_evaluate(config, workdir)
    return config, workdir, result
