"""python -m research.robustness: accuracy under corruptions, through the serving seam."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from research import robustness
from research.data import corruptions
from research.evaluation import robustness as robustness_lib
from research.serving.classifier import Classifier


def _args(trained, color_dataset, *extra: str) -> list[str]:
    _, workdir, _ = trained
    _, data_dir = color_dataset
    return ["--model", str(workdir), "--data_dir", data_dir, "--split", "train", *extra]


def test_the_cli_writes_the_table_per_corruption_json_and_examples_png(
    trained, color_dataset, tmp_path, capsys
):
    """Every colour corruption at severity 3: a JSON with the accuracies, both means and the
    markdown table, a PNG, and the table printed."""
    out = tmp_path / "robustness.json"
    assert (
        robustness.main([*_args(trained, color_dataset), "--limit", "12", "--out", str(out)]) == 0
    )
    record = json.loads(out.read_text())
    assert record["count"] == 12 and record["severities"] == [3] and record["split"] == "train"
    assert list(record["accuracy"]) == corruptions.names_for(3)
    assert all(0.0 <= a["3"] <= 1.0 for a in record["accuracy"].values())
    seven = np.mean([record["accuracy"][n]["3"] for n in corruptions.ISSUE_SEVEN])
    assert abs(record["mean_issue_seven"] - seven) < 1e-9
    assert "| gaussian_noise |" in record["table"]
    assert "mean of the seven common ones" in record["table"]
    assert record["command"].startswith("python -m research.robustness --model")
    with Image.open(tmp_path / "robustness.png") as png:
        assert png.width > 16 * 32
    assert "| none (clean) |" in capsys.readouterr().out


def test_all_severities_give_a_column_each_and_their_mean(trained, color_dataset, tmp_path):
    """--severities all: five columns per corruption plus the mean; no issue-seven mean
    without all seven."""
    out = tmp_path / "all.json"
    args = ["--severities", "all", "--corruptions", "contrast", "--limit", "6", "--out", str(out)]
    assert robustness.main([*_args(trained, color_dataset), *args]) == 0
    record = json.loads(out.read_text())
    assert list(record["accuracy"]["contrast"]) == ["1", "2", "3", "4", "5"]
    assert record["mean_issue_seven"] is None
    assert (
        "| severity 1 | severity 2 | severity 3 | severity 4 | severity 5 | mean |"
        in (record["table"])
    )


def test_clean_accuracy_is_what_classifier_predict_gives(trained, color_dataset):
    """The benchmark's clean accuracy equals Classifier.predict's on the same images."""
    _, workdir, _ = trained
    _, data_dir = color_dataset
    clf = Classifier.load(workdir)
    images, labels = robustness_lib.load_images(clf, "train", data_dir=data_dir, limit=12)
    result = robustness_lib.measure(clf, images, labels, names=["jpeg"])
    served = np.argmax(clf.predict(list(images)), axis=-1)
    assert result["clean_accuracy"] == np.mean(served == labels)


def test_unknown_corruptions_and_severities_are_an_error_line(
    trained, color_dataset, tmp_path, capsys
):
    """An unknown corruption or severity exits 1 with a line naming the valid values."""
    base = [*_args(trained, color_dataset), "--out", str(tmp_path / "r.json")]
    assert robustness.main([*base, "--corruptions", "snow"]) == 1
    assert "valid: gaussian_noise" in capsys.readouterr().err
    assert robustness.main([*base, "--severities", "7"]) == 1
    assert "'all' or a comma-separated list of 1..5" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
