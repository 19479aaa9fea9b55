"""research.examples: a model's example images, picked from its validation split by a fixed rule."""

import json
import shutil

import numpy as np
from PIL import Image

from research import examples
from research.data import datasets
from research.evaluation import examples as example_lib
from research.serving import artifacts, model_dir


def test_pick_takes_the_first_items_of_each_class_in_order():
    """The first `per_class` positions of each class, grouped by class; missing classes skip."""
    labels = [2, 0, 2, 1, 0, 2, 0]
    assert example_lib.pick_examples(labels, num_classes=3) == [1, 3, 0]
    assert example_lib.pick_examples(labels, num_classes=3, per_class=2) == [1, 4, 3, 0, 2]
    assert example_lib.pick_examples([1, 1], num_classes=3) == [0]


def test_slugify_makes_safe_file_names():
    """Labels with slashes and capitals become lower-case hyphenated names."""
    assert example_lib.slugify("T-shirt/top") == "t-shirt-top"
    assert example_lib.slugify("Ankle boot") == "ankle-boot"
    assert artifacts.EXAMPLE_FILE_NAME.fullmatch(f"00-{example_lib.slugify('../../etc')}-1.png")


def test_write_examples_takes_the_first_validation_image_of_each_class(
    trained, color_dataset, tmp_path
):
    """One PNG per class from the validation split (the record's data_dir), equal to the first
    image of that class in file order, listed with its true label in examples.json."""
    _, workdir, _ = trained
    name, data_dir = color_dataset
    model = tmp_path / "model"
    shutil.copytree(workdir, model)

    written = example_lib.write_examples(model)

    pairs = list(datasets.load_split(name, "validation", data_dir).as_numpy_iterator())
    class_names = datasets.get_info(name, data_dir).class_names
    assert [example.label for example in written] == list(class_names)
    for example in written:
        first = next(image for image, label in pairs if class_names[label] == example.label)
        pixels = np.asarray(Image.open(model / "examples" / example.file).convert("RGB"))
        np.testing.assert_array_equal(pixels, first)
    index = json.loads((model / "examples" / "examples.json").read_text())
    assert index["split"] == "validation" and index["dataset"] == name
    assert model_dir.read_examples(model) == written
    assert sum((model / "examples" / e.file).stat().st_size for e in written) < 20_000


def test_read_examples_keeps_only_listed_safe_existing_files(tmp_path):
    """Unsafe names and missing files in the index are dropped; no index means no examples."""
    assert model_dir.read_examples(tmp_path) == []
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "00-cat-1.png").write_bytes(b"png")
    entries = [
        {"file": "00-cat-1.png", "label": "cat"},
        {"file": "../secret.png", "label": "x"},
        {"file": "01-dog-1.png", "label": "dog"},  # missing
    ]
    (folder / "examples.json").write_text(json.dumps({"examples": entries}))
    assert model_dir.read_examples(tmp_path) == [
        model_dir.Example(file="00-cat-1.png", label="cat")
    ]
    assert model_dir.find_example(tmp_path, "00-cat-1.png") == folder / "00-cat-1.png"
    assert model_dir.find_example(tmp_path, "../secret.png") is None
    assert model_dir.find_example(tmp_path, "examples.json") is None


def test_an_unreadable_index_means_no_examples(tmp_path):
    """A broken examples.json is ignored (a warning), never an error for the page."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "examples.json").write_text("{not json")
    assert model_dir.read_examples(tmp_path) == []


def test_the_command_writes_examples_and_reports_their_size(trained, tmp_path, capsys):
    """python -m research.examples --model DIR writes the folder and prints count and size."""
    _, workdir, _ = trained
    model = tmp_path / "model"
    shutil.copytree(workdir, model)
    assert examples.main(["--model", str(model)]) == 0
    assert "3 examples" in capsys.readouterr().out
    assert examples.main(["--model", str(tmp_path / "missing")]) == 1
