"""The command-line tools around a trained model: evaluate, predict and export."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from research import evaluate, export, models, predict
from research.configs import get_config
from research.inference import Classifier

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
PER_CLASS = 2


@pytest.fixture(scope="module")
def classifier(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir)


@pytest.fixture
def reuse_classifier(monkeypatch, classifier, tiny_model_dir):
    """Classifier.load(tiny_model_dir) returns the module's classifier: compiled once."""
    real_load = Classifier.load

    def load(path):
        return classifier if Path(path) == tiny_model_dir else real_load(path)

    monkeypatch.setattr(Classifier, "load", staticmethod(load))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """class/image PNGs, PER_CLASS per CIFAR-10 class, of assorted sizes and modes."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CIFAR10_CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (24 + label, 40 - i, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i else image).save(root / name / f"{i}.png")
    return root


def test_evaluate_on_an_image_folder_writes_metrics_json_and_confusion_png(
    reuse_classifier, tiny_model_dir, image_folder, tmp_path, capsys
):
    """Every image is counted under its folder's class; metrics.json and a PNG are written."""
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tiny_model_dir), "--image_folder", str(image_folder)]
    assert evaluate.main([*args, "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "accuracy" in printed and "confusion" in printed
    assert all(name in printed for name in CIFAR10_CLASSES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == PER_CLASS * len(CIFAR10_CLASSES)
    assert metrics["per_class_count"] == {name: PER_CLASS for name in CIFAR10_CLASSES}
    assert np.asarray(metrics["confusion"]).shape == (10, 10)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG" and png.width > 10 * evaluate.PNG_CELL


def test_evaluate_skips_unreadable_files_and_names_them(
    reuse_classifier, tiny_model_dir, image_folder, tmp_path, capsys
):
    """A corrupt .png is left out of the counts and reported, not a crash."""
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "cat" / "good.png")
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    args = ["--checkpoint", str(tiny_model_dir), "--image_folder", str(folder)]
    assert evaluate.main([*args, "--out", str(tmp_path / "eval")]) == 0
    assert "broken.png" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["count"] == 1 and len(metrics["skipped"]) == 1


def test_evaluate_rejects_a_folder_that_names_no_model_class(
    reuse_classifier, tiny_model_dir, tmp_path, capsys
):
    """An unknown class folder is an `error:` line naming it, exit status 1."""
    (tmp_path / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "zebra" / "0.png")
    args = ["--checkpoint", str(tiny_model_dir), "--image_folder", str(tmp_path)]
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "zebra" in err and "Traceback" not in err


def test_image_folder_classes_match_model_names_up_to_case_punctuation_or_index(tmp_path):
    """'t_shirt_top' is 'T-shirt/top', 'TROUSER' is 'Trouser', '9' is the tenth class."""
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
    for folder in ("t_shirt_top", "TROUSER", "9", "Ankle boot"):
        (tmp_path / folder).mkdir()
        Image.new("L", (28, 28)).save(tmp_path / folder / "a.png")
    files, split = evaluate.list_image_folder(tmp_path, names)
    assert split is None
    assert {path.parent.name: label for path, label in files} == {
        "t_shirt_top": 0,
        "TROUSER": 1,
        "9": 9,
        "Ankle boot": 9,
    }


def test_image_folder_with_splits_reads_validation_by_default_or_the_chosen_split(tmp_path):
    """split/class/image: 'validation' unless --split names another; a missing split fails."""
    for split in ("train", "validation"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / f"{split}.png")
    files, split = evaluate.list_image_folder(tmp_path, CIFAR10_CLASSES)
    assert split == "validation" and [p.name for p, _ in files] == ["validation.png"]
    files, split = evaluate.list_image_folder(tmp_path, CIFAR10_CLASSES, split="train")
    assert [(p.name, label) for p, label in files] == [("train.png", 3)]
    with pytest.raises(ValueError, match="no split 'test'"):
        evaluate.list_image_folder(tmp_path, CIFAR10_CLASSES, split="test")


def test_predict_prints_the_top_k_labels_of_each_image(
    reuse_classifier, tiny_model_dir, image_folder, capsys
):
    """One block per image: its path, then k labels with probabilities."""
    image = image_folder / "dog" / "0.png"
    args = ["--checkpoint", str(tiny_model_dir), "--top_k", "3", str(image)]
    assert predict.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    assert all(line.split()[0] in CIFAR10_CLASSES and line.endswith("%") for line in lines[1:])


def test_predict_reports_unreadable_files_one_by_one_and_exits_non_zero(
    reuse_classifier, tiny_model_dir, image_folder, tmp_path, capsys
):
    """A text file and a missing file get an `error:` line each; readable images still print."""
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    image = image_folder / "cat" / "1.png"
    args = ["--checkpoint", str(tiny_model_dir), str(text), str(image), str(tmp_path / "nope.jpg")]
    assert predict.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == str(image)
    errors = captured.err.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "notes.png: not an image" in errors[0] and "nope.jpg: no such file" in errors[1]


def test_export_round_trips_the_model_and_writes_a_model_card(
    classifier, tiny_model_dir, image_folder, tmp_path, capsys
):
    """The exported model loads and gives identical probabilities; the card has the facts."""
    out = tmp_path / "models" / "cifar10"
    command = "python -m research.train --dataset=cifar10 --epochs=8"
    args = ["--workdir", str(tiny_model_dir), "--out", str(out)]
    assert export.main([*args, "--command", command, "--notes", "Trained on 2 cores."]) == 0
    assert f"to {out}" in capsys.readouterr().out

    images = [Image.open(path) for path in sorted(image_folder.glob("*/*.png"))[:5]]
    exported = Classifier.load(out)
    np.testing.assert_array_equal(exported.predict(images), classifier.predict(images))
    weights = [models.inference_state(c.model) for c in (exported, classifier)]
    jax.tree.map(np.testing.assert_array_equal, *weights)  # the tiny head starts at zero
    assert exported.meta == classifier.meta
    card = (out / export.CARD_NAME).read_text()
    for fact in ("cifar10", "10.00%", "`test`", command, "Trained on 2 cores.", "parameters"):
        assert fact in card

    assert export.main(args) == 1  # an existing export is only replaced with --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_training_command_is_the_dataset_defaults_plus_the_overrides():
    """The card's default command names only the fields that differ from the defaults."""
    config = get_config("fashion_mnist", epochs=3.0, widths=(16, 32, 64))
    meta = {"model": config.to_dict()}
    assert export.training_command(meta) == (
        "python -m research.train --dataset=fashion_mnist --widths=16,32,64 --epochs=3.0"
    )


def test_evaluate_on_a_tfds_split_reproduces_the_accuracy_training_recorded(
    trained, color_dataset, tmp_path, capsys
):
    """By default the split training evaluated on, with the same accuracy and count."""
    _, workdir, _ = trained
    _, data_dir = color_dataset
    args = ["--checkpoint", str(workdir), "--data_dir", data_dir, "--out", str(tmp_path)]
    assert evaluate.main(args) == 0
    recorded = Classifier.load(workdir).metrics
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["source"] == f"colors {recorded['eval_split']}"
    assert metrics["count"] == recorded["eval_count"]
    assert metrics["accuracy"] == pytest.approx(recorded["eval_accuracy"])
    assert metrics["loss"] == pytest.approx(recorded["eval_loss"], rel=1e-4)
