"""The command-line tools around a trained model: evaluate, predict and export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from research import configs, evaluate, export, predict
from research.configs import get_config
from research.data.folders import list_image_folder
from research.evaluation import export as export_lib
from research.evaluation import metrics, plots
from research.nets import models
from research.serving import artifacts, model_dir
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError
from research.serving.preprocess import preprocess
from research.serving.record import ServingRecord

CIFAR10_CLASSES = configs.DATASETS["cifar10"].class_names
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
        assert png.format == "PNG" and png.width > 10 * plots.PNG_CELL
    assert metrics["flip_tta"] is True and metrics["temperature"] == 1.0


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
    files, split = metrics.label_image_folder(tmp_path, names)
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
    files, split = metrics.label_image_folder(tmp_path, CIFAR10_CLASSES)
    assert split == "validation" and [p.name for p, _ in files] == ["validation.png"]
    files, split = metrics.label_image_folder(tmp_path, CIFAR10_CLASSES, split="train")
    assert [(p.name, label) for p, label in files] == [("train.png", 3)]
    with pytest.raises(ValueError, match="no split 'test'"):
        metrics.label_image_folder(tmp_path, CIFAR10_CLASSES, split="test")
    with pytest.raises(ValueError, match="leave out --split"):
        metrics.label_image_folder(tmp_path / "train", CIFAR10_CLASSES, split="train")


def test_folder_evaluation_feeds_the_model_what_serving_feeds_it(image_folder):
    """Evaluation's folder batches are research.serving.preprocess.preprocess of the same files."""
    files, _ = metrics.label_image_folder(image_folder, CIFAR10_CLASSES)
    batch = next(metrics._folder_batches(files[:6], (32, 32, 3), 8, skipped=[]))
    served = preprocess([Image.open(path) for path, _ in files[:6]], (32, 32, 3))
    np.testing.assert_array_equal(batch["image"][:6], served)
    assert batch["mask"].tolist() == [True] * 6 + [False] * 2
    assert batch["label"][:6].tolist() == [label for _, label in files[:6]]


def test_a_missing_image_folder_is_an_error_line(
    reuse_classifier, tiny_model_dir, tmp_path, capsys
):
    """A folder that does not exist is DataNotFoundError, and `error:` with status 1 from main."""
    with pytest.raises(DataNotFoundError, match="does not exist"):
        metrics.label_image_folder(tmp_path / "nope", CIFAR10_CLASSES)
    args = ["--checkpoint", str(tiny_model_dir), "--image_folder", str(tmp_path / "nope")]
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err


def test_the_image_folder_lister_tells_the_two_layouts_apart(tmp_path):
    """class/image -> {None: ...}; split/class/image -> {split: ...}; other files ignored."""
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    for root, rel in ((flat, "cat"), (nested, "train/cat"), (nested, "test/dog")):
        (root / rel).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / rel / "b.png")
        Image.new("RGB", (4, 4)).save(root / rel / "a.JPG")
        (root / rel / "README.txt").write_text("not an image")
    (flat / "empty").mkdir()
    (flat / ".hidden").mkdir()
    assert {
        split: {name: [p.name for p in paths] for name, paths in classes.items()}
        for split, classes in list_image_folder(flat).items()
    } == {None: {"cat": ["a.JPG", "b.png"]}}
    assert {
        split: {name: [p.name for p in paths] for name, paths in classes.items()}
        for split, classes in list_image_folder(nested).items()
    } == {"test": {"dog": ["a.JPG", "b.png"]}, "train": {"cat": ["a.JPG", "b.png"]}}


def test_the_image_folder_lister_refuses_empty_and_mixed_folders(tmp_path):
    """No images anywhere is DataNotFoundError; class folders beside split folders a ValueError."""
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataNotFoundError, match="No images laid out"):
        list_image_folder(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "0.png")
    (tmp_path / "train" / "dog").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "dog" / "0.png")
    with pytest.raises(ValueError, match="mixes class folders"):
        list_image_folder(tmp_path)


def test_the_confusion_png_shades_each_cell_by_its_share_of_the_row():
    """A row's only cell is navy, an empty cell white; the image grows with the classes."""
    confusion = np.array([[4, 0, 0], [0, 2, 2], [0, 0, 0]])
    image = plots.render_confusion(confusion, ["a", "b", "c"], "title")
    cell = plots.PNG_CELL
    left = image.width - 10 - 3 * cell  # the grid ends 10 pixels from the right edge
    top = image.height - (plots.PNG_FONT_SIZE + 12) - 3 * cell

    def color(i, j):
        return image.getpixel((left + j * cell + 3, top + i * cell + 3))

    assert color(0, 0) == plots.NAVY and color(0, 1) == (255, 255, 255)
    assert color(1, 1) == color(1, 2) != color(0, 0) and color(2, 2) == (255, 255, 255)
    many = plots.render_confusion(np.eye(60, dtype=int), [f"c{i}" for i in range(60)], "t")
    assert many.width < 60 * cell  # cells shrink beyond 20 classes


def test_predict_refuses_a_foreign_checkpoint_with_an_error_line(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    """A checkpoint whose record this code cannot read is an `error:` line, not a traceback."""
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    meta_path = model_dir.meta_path(tmp_path / "model", model_dir.list_steps(tmp_path / "model")[0])
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "record_format": 99}))
    args = ["--checkpoint", str(tmp_path / "model"), str(image_folder / "cat" / "0.png")]
    assert predict.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "format 99" in err


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
    assert exported.record == classifier.record
    assert model_dir.pick_checkpoint(out)[2] == classifier.record
    card = (out / artifacts.CARD_FILE).read_text()
    facts = ("cifar10", "10.00%", "`test`", command, "Trained on 2 cores.", "parameters")
    for fact in (*facts, "horizontal flip", classifier.record.version, "1 steps"):
        assert fact in card

    assert export.main(args) == 1  # an existing export is only replaced with --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_training_command_is_the_dataset_defaults_plus_the_overrides():
    """The card's default command names only the fields that differ from the defaults."""
    config = get_config("fashion_mnist", epochs=3.0, widths=(16, 32, 64))
    record = ServingRecord(
        name="fashion_mnist-airbench94",
        dataset="fashion_mnist",
        version="20250101-step3",
        step=3,
        class_names=tuple("0123456789"),
        image_shape=(28, 28, 1),
        mean=(73.0,),
        std=(90.0,),
        flip_tta=False,
        config=config.to_dict(),
    )
    assert export_lib.training_command(record) == (
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


def test_training_command_names_the_recipe_a_config_is_closest_to():
    """A config trained with another recipe than its dataset's default (the SGD airbench94 one
    on cifar10, say) is written as that recipe plus its overrides, not field by field."""
    config = get_config("cifar10", recipe="airbench94", epochs=20.0)
    record = ServingRecord(
        name="cifar10-airbench94", dataset="cifar10", version="20250101-step3", step=3,
        class_names=tuple("0123456789"), image_shape=(32, 32, 3), mean=(1.0,) * 3,
        std=(1.0,) * 3, flip_tta=True, config=config.to_dict(),
    )  # fmt: skip
    assert export_lib.training_command(record) == (
        "python -m research.train --dataset=cifar10 --recipe=airbench94 --epochs=20.0"
    )


def test_train_speed_times_a_configs_train_and_evaluation_steps(capsys, monkeypatch, tmp_path):
    """benchmarks.training.train_speed runs the loop's step and the evaluation's (with the
    config's test-time views) on a config whose data is absent here: its shape from the spec."""
    from benchmarks.training import train_speed

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # no mnist there: the pipeline is skipped
    argv = ["--dataset=mnist", "--widths=8,16,16", "--stem_width=8", "--batch_size=16"]
    argv += ["--translate_tta=True", "--data_dir", str(tmp_path)]
    argv += ["--steps=1", "--predict_runs=1", "--pipeline_batches=1"]
    assert train_speed.main(argv) == 0
    out = capsys.readouterr().out
    assert "translate TTA on" in out
    assert "pipeline  skipped" in out
    assert "| mnist | airbench 8,16,16 | 16 |" in out


def test_the_peer_table_divides_each_step_by_pytorchs_whole_and_sliced_steps(capsys):
    """benchmarks.training.torch_peer's table: with slices, each row's images/s over PyTorch's
    whole-batch steps and over its steps in the same slices as ours."""
    from benchmarks.training import torch_peer

    figures = {"torch float32": 100.0, "torch bfloat16": 200.0}
    figures[torch_peer.sliced_step_name("float32", 16)] = 50.0
    figures[torch_peer.sliced_step_name("bfloat16", 16)] = 400.0
    figures |= {f"ours {dtype}": 100.0 for dtype in torch_peer.compute_dtypes()}
    torch_peer.print_ratios(figures, 16)
    out = capsys.readouterr().out
    assert "| / torch fp32 | / torch bf16 | / torch fp32 x16 | / torch bf16 x16 |" in out
    assert "| PyTorch bf16 autocast, 16 slices | 400 | 4.00 | 2.00 | 8.00 | 1.00 |" in out
    assert "| ours (Flax, XLA) float32, 16 slices | 100 | 1.00 | 0.50 | 2.00 | 0.25 |" in out
