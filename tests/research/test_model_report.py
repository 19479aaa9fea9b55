"""research.model_report: what a model's page shows, measured on validation through
research.evaluate's own pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from research import evaluate
from research.evaluation import metrics as evaluation_metrics
from research.evaluation import report as model_report
from research.serving import artifacts
from research.serving.classifier import Classifier


@pytest.fixture(scope="module")
def report(trained, color_dataset, tmp_path_factory):
    """The report of the tiny trained run (colours), with its workdir's curves."""
    _, workdir, _ = trained
    _, data_dir = color_dataset
    out = model_report.build_report(
        workdir, data_dir=data_dir, per_cell=2, out=tmp_path_factory.mktemp("report") / "r"
    )
    return out, json.loads((out / artifacts.REPORT_FILE).read_text())


def test_report_figures_equal_evaluate_on_the_validation_split(report, trained, color_dataset):
    """Accuracy, per-class accuracy and confusion are research.evaluate's on validation."""
    out, data = report
    _, workdir, _ = trained
    metrics = evaluation_metrics.evaluate_split(
        Classifier.load(workdir), "validation", data_dir=color_dataset[1]
    )
    assert data["split"] == "validation" and data["count"] == 12 == metrics["count"]
    assert data["accuracy"] == metrics["accuracy"]
    assert data["confusion"] == metrics["confusion"]
    assert data["per_class_accuracy"] == metrics["per_class_accuracy"]
    assert data["per_class_count"] == [4, 4, 4]
    assert data["parameters"] > 0 and data["size_bytes"] > 0
    assert (out / artifacts.CONFUSION_FILE).is_file()


def test_every_kept_example_is_a_mistake_of_its_cell(report):
    """Each cell lists only images whose answer was wrong that way, within the cap, the
    most confident first, each file a thumbnail at the model's input size."""
    out, data = report
    confusion = np.array(data["confusion"])
    cells = data["examples"]["cells"]
    assert sum(len(c["images"]) for c in cells) == data["examples"]["images"]
    assert sum(c["count"] for c in cells) == confusion.sum() - np.trace(confusion)
    for cell in cells:
        assert cell["true"] != cell["predicted"]
        assert cell["count"] == confusion[cell["true"], cell["predicted"]]
        assert len(cell["images"]) == min(2, cell["count"])
        confidences = [image["confidence"] for image in cell["images"]]
        assert confidences == sorted(confidences, reverse=True)
        for image in cell["images"]:
            assert image["confidence"] >= image["true_probability"]
            assert Image.open(out / image["file"]).size == (32, 32)


def test_curves_come_from_the_run_per_epoch(report, trained):
    """The 4-epoch run's curves: one point per epoch, read from the checkpoint records and the
    TensorBoard events, drawn to curves.png; the last is the run's final evaluation."""
    out, data = report
    curves = data["curves"]
    assert curves["available"]
    assert [p["epoch"] for p in curves["points"]] == [1.0, 2.0, 3.0, 4.0]
    assert "checkpoint records" in curves["sources"]
    assert "TensorBoard events" in curves["sources"]
    for point in curves["points"]:
        assert point["train_loss"] is not None and point["train_accuracy"] is not None
    assert curves["points"][-1]["eval_accuracy"] == trained[2]["eval"]["accuracy"]
    assert (out / artifacts.CURVES_FILE).is_file()


def test_scalars_file_as_training_names_them(tmp_path):
    """'train/loss' is the training loss, '<split>/accuracy' the evaluation's; a line cut off
    by a killed run is skipped."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 3, "train/loss": 1.5, "train/accuracy": 0.5, "validation/loss": 1.0,'
        ' "validation/accuracy": 0.6, "train/step_ms": 9}\n{"step": 6, "train/lo'
    )
    points, split = model_report.read_metrics_jsonl(path)
    assert split == "validation"
    assert points == {
        3: {"train_loss": 1.5, "train_accuracy": 0.5, "eval_loss": 1.0, "eval_accuracy": 0.6}
    }


def test_exported_model_without_its_run_says_curves_are_unavailable(tiny_model_dir):
    """An exported model holds one step: no curves are invented, and the note says why."""
    curves = model_report.read_curves(tiny_model_dir)
    assert not curves["available"] and "not available" in curves["note"]
    assert len(curves["points"]) <= 1


def test_collector_keeps_the_most_confident_mistakes_in_split_order():
    """Across batches, a cell keeps its `per_cell` surest mistakes with their split index;
    right answers are never kept."""
    collector = model_report.MistakeCollector(1.0, per_cell=2)
    logits = np.log(np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.05, 0.95]]))
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * np.ones((4, 2, 2, 1), np.uint8)
    collector(images[:2], logits[:2], np.array([0, 0]))
    collector(images[2:], logits[2:], np.array([0, 1]))  # index 3 is right
    (key, kept), *others = collector.cells().items()
    assert key == (0, 1) and not others
    assert [e.index for e in kept] == [0, 2]
    assert [round(e.confidence, 3) for e in kept] == [0.8, 0.6]
    assert (kept[1].image == 2).all()


def test_a_report_is_never_made_on_the_test_split(report, trained):
    """Examples shown to people are chosen on validation only."""
    _, workdir, _ = trained
    with pytest.raises(ValueError, match="validation"):
        model_report.write_report(
            workdir / "nope",
            Classifier.load(workdir),
            {},
            model_report.MistakeCollector(1.0),
            model=workdir,
            workdir=None,
            split="test",
        )


def test_evaluate_report_flag_writes_the_report(trained, color_dataset, capsys, tmp_path):
    """`research.evaluate --report` writes <checkpoint>/report from its own pass."""
    workdir = tmp_path / "run"
    shutil.copytree(trained[1], workdir)  # the shared run stays as it was
    code = evaluate.main(
        [
            "--checkpoint",
            str(workdir),
            "--split",
            "validation",
            "--data_dir",
            color_dataset[1],
            "--report",
        ]
    )
    assert code == 0
    data = json.loads((workdir / "report" / artifacts.REPORT_FILE).read_text())
    assert data["split"] == "validation" and data["curves"]["available"]
    assert evaluate.main(["--checkpoint", str(workdir), "--split", "train", "--report"]) == 1
    assert "validation" in capsys.readouterr().err


def test_the_recipe_leaves_out_where_the_training_machine_kept_its_data():
    """The page's recipe is the command without --data_dir and --data_source: paths on the
    machine that trained (a GPU's scratch folder, say), not part of the recipe."""
    command = (
        "python -m research.train --dataset=cifar10 --input=device "
        "--data_source=/tmp/gpurun/train --data_dir=/srv/tfds --epochs=20.0"
    )
    assert model_report._portable(command) == (
        "python -m research.train --dataset=cifar10 --input=device --epochs=20.0"
    )
