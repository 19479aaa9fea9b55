"""python -m research.data: import, summary, and a clean error when data is missing."""

import gzip
import struct
import subprocess
import sys

import numpy as np
from PIL import Image

from research.data import __main__ as data

CLASSES = ("ant", "bee", "cat")


def make_image_folder(root, per_class=4):
    """Writes root/train/<class>/<i>.jpg, each class in its own colour."""
    for label, cls in enumerate(CLASSES):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(per_class):
            colour = tuple(255 if c == label else 40 * i for c in range(3))
            Image.new("RGB", (6, 6), colour).save(root / "train" / cls / f"{i:03d}.jpg")
    return root


def test_import_folder_then_summary_prints_counts_and_writes_the_grid(tmp_path, capsys):
    """import-folder reports the splits; summary prints per-class counts and saves a PNG."""
    source = make_image_folder(tmp_path / "images")
    data_dir = str(tmp_path / "data")
    args = ["--dataset", "bugs", "--data_dir", data_dir]
    assert data.main(["import-folder", str(source), *args, "--validation_per_class", "1"]) == 0
    assert "imported bugs: train 9, validation 3" in capsys.readouterr().out

    grid_path = tmp_path / "grid.png"
    assert data.main(["summary", *args, "--out", str(grid_path), "--columns", "3"]) == 0
    out = capsys.readouterr().out
    assert "shape (6, 6, 3), dtype uint8" in out
    assert "ant, bee, cat" in out
    assert any(line.split() == ["bee", "3", "1"] for line in out.splitlines())
    with Image.open(grid_path) as grid:
        rows = len(CLASSES)
        assert grid.format == "PNG"
        assert grid.height % rows == 0 and grid.width > data.GRID_LABEL_WIDTH


def test_import_idx_with_class_names_then_summary(tmp_path, capsys):
    """import-idx reads gzipped idx files under a name of one's own, with --class_names."""
    source = tmp_path / "idx"
    source.mkdir()
    images = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((6, 5, 5), np.uint8)
    for kind, array in (("images-idx3", images), ("labels-idx1", np.arange(6) % 2)):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
            f">{array.ndim}I", *array.shape
        )
        payload = gzip.compress(header + array.astype(np.uint8).tobytes())
        (source / f"train-{kind}-ubyte.gz").write_bytes(payload)
    args = ["--dataset", "pairs", "--data_dir", str(tmp_path / "data")]
    assert data.main(["import-idx", str(source), *args, "--class_names", "even,odd"]) == 0
    assert "imported pairs: train 6; 2 classes; images (5, 5, 1)" in capsys.readouterr().out
    assert data.main(["summary", *args]) == 0
    out = capsys.readouterr().out
    assert "classes      2: even, odd" in out
    assert any(line.split() == ["odd", "3"] for line in out.splitlines())


def test_import_over_an_existing_dataset_is_an_error_without_traceback(tmp_path, capsys):
    """A second import without --overwrite exits 1 with a one-line reason."""
    source = make_image_folder(tmp_path / "images", per_class=2)
    args = ["import-folder", str(source), "--dataset", "bugs", "--data_dir", str(tmp_path)]
    assert data.main([*args, "--validation_per_class", "0"]) == 0
    assert data.main([*args, "--validation_per_class", "0"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_missing_dataset_exits_nonzero_with_the_import_command_and_no_traceback(tmp_path):
    """With no data, the command fails fast, names the import command and prints no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "research.data", "summary", "--dataset", "my_flowers"]
        + ["--data_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "python -m research.data import-folder" in result.stderr
    assert str(tmp_path) in result.stderr
