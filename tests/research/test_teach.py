"""Teaching a network new classes: research.train.teach and `python -m research.teach`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from research import teach as teach_command
from research.serving.classifier import Classifier
from research.train import teach
from tests.research.conftest import COLORS


def colour_examples(per_class: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Noisy solid squares of three colours: classes the tiny random backbone never saw."""
    rng = np.random.default_rng(seed)
    return {
        name: [
            np.clip(np.array(color) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            for _ in range(per_class)
        ]
        for name, color in COLORS.items()
    }


@pytest.fixture(scope="module")
def backbone(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir)


@pytest.fixture(scope="module")
def taught(backbone) -> teach.TeachResult:
    settings = teach.TeachSettings(views=4, steps=100)
    return teach.teach(backbone, colour_examples(12), name="colours", settings=settings)


def test_split_holds_out_part_of_every_class_and_never_all_of_one():
    labels = np.array([0] * 2 + [1] * 8 + [2] * 20)
    train, held = teach.split_examples(labels, holdout=0.25, seed=3)
    assert set(train) | set(held) == set(range(30)) and not set(train) & set(held)
    assert [int(np.sum(labels[held] == c)) for c in range(3)] == [1, 2, 5]
    again = teach.split_examples(labels, holdout=0.25, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, held), again, strict=True))


def test_augmented_views_keep_the_original_first_and_shift_the_rest():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    views = teach.augmented_views(images, 5, shift=2, flip=True).reshape(3, 5, 8, 8, 1)
    assert np.array_equal(views[:, 0], images)
    assert any(not np.array_equal(views[i, v], images[i]) for i in range(3) for v in range(1, 5))


def test_taught_model_separates_new_classes_on_held_out_examples(taught):
    record = taught.classifier.record
    assert record.class_names == tuple(COLORS)
    assert (taught.trained_on, taught.held_out) == (27, 9)
    assert taught.accuracy >= 0.9
    assert record.metrics["eval_split"] == "held-out examples"
    assert taught.few_examples  # 9 held out: the page must say the figure is rough
    assert record.unknown_threshold is not None and record.temperature > 0
    fresh = colour_examples(5, seed=7)
    images = np.stack([im for name in COLORS for im in fresh[name]])
    labels = np.repeat(np.arange(3), 5)
    assert teach.accuracy_on(taught.classifier, images, labels) >= 0.9


def test_a_taught_model_claims_neither_the_prediction_set_nor_the_dataset_of_its_backbone(
    backbone,
):
    """The backbone's conformal threshold (fitted on its own ten classes) must not pass to the
    new classes: a page would promise a coverage nobody measured."""
    with_set = Classifier(backbone.model, backbone.record.replace(set_threshold=0.9))
    settings = teach.TeachSettings(views=2, steps=20)
    result = teach.teach(with_set, colour_examples(4), name="colours", settings=settings)
    assert result.classifier.record.set_threshold is None
    assert result.classifier.record.dataset == "colours"  # not the backbone's: pages name it


def test_the_backbone_is_unchanged_and_only_the_head_is_new(backbone, taught):
    image = colour_examples(1, seed=9)["red"][0][None]
    before = backbone.outputs_arrays(image)[1]
    after = taught.classifier.outputs_arrays(image)[1]
    np.testing.assert_allclose(before, after, rtol=1e-5)  # same pooled features
    assert backbone.record.num_classes == 10


def test_smoothed_temperature_stays_off_its_floor_when_every_held_out_answer_is_right():
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    temperature = teach.fit_smoothed_temperature(logits, np.array([0, 1, 0]))
    assert temperature > 0.5


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ({"one": [np.zeros((32, 32, 3), np.uint8)] * 4}, "Teach 2 to 20 classes"),
        (
            {"a": [np.zeros((32, 32, 3), np.uint8)] * 4, "b": [np.zeros((32, 32, 3), np.uint8)]},
            "too few: b",
        ),
    ],
)
def test_teach_refuses_too_few_classes_or_examples(backbone, examples, message):
    with pytest.raises(ValueError, match=message):
        teach.teach(backbone, examples, name="x")


def test_teach_command_writes_a_model_directory_that_loads(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "examples"
    for name, images in colour_examples(8).items():
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / name / f"{i}.png")
    out = tmp_path / "mine"
    argv = ["--backbone", str(tiny_model_dir), "--examples", str(folder), "--out", str(out)]
    assert teach_command.main(argv) == 0
    assert "held-out examples" in capsys.readouterr().out
    loaded = Classifier.load(out)
    assert loaded.record.name == "mine" and loaded.record.class_names == tuple(COLORS)
    assert teach_command.main(argv) == 1  # an existing model is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_teach_command_refuses_a_folder_without_classes(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["--backbone", str(tiny_model_dir), "--examples", str(tmp_path / "empty")]
    assert teach_command.main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err


def test_fitting_reports_its_steps_in_chunks_up_to_the_last(backbone):
    """on_step sees the head's steps rise to the total, PROGRESS_CHUNKS times at most."""
    seen = []
    settings = teach.TeachSettings(views=2, steps=25)
    teach.teach(
        backbone, colour_examples(4), name="c", settings=settings, on_step=lambda *a: seen.append(a)
    )
    assert seen[-1] == (25, 25)
    assert [done for done, _ in seen] == sorted({done for done, _ in seen})
    assert 1 < len(seen) <= teach.PROGRESS_CHUNKS


def test_an_earlier_version_is_scored_on_the_same_held_out_examples(backbone, taught):
    """compare_with: the same model scores exactly its own accuracy (same examples, same
    split, same scoring); a model of other classes scores 0 (its classes count as wrong)."""
    settings = teach.TeachSettings(views=4, steps=100)
    again = teach.teach(
        backbone, colour_examples(12), name="c", settings=settings, compare_with=taught.classifier
    )
    assert again.previous_accuracy == pytest.approx(again.accuracy)
    assert again.classifier.record.metrics["previous_accuracy"] == again.previous_accuracy
    other = teach.teach(
        backbone, colour_examples(12), name="c", settings=settings, compare_with=backbone
    )
    assert other.previous_accuracy == 0.0


def test_teach_command_writes_progress_as_json_lines(tiny_model_dir, tmp_path, capsys):
    """--progress-json: phases, the head's steps and a final 'done' with the accuracy."""
    folder = tmp_path / "examples"
    for name, images in colour_examples(4).items():
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / name / f"{i}.png")
    argv = ["--backbone", str(tiny_model_dir), "--examples", str(folder)]
    assert teach_command.main([*argv, "--out", str(tmp_path / "m"), "--progress-json"]) == 0
    lines = [
        json.loads(line)["progress"]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{")
    ]
    steps = [line for line in lines if "step" in line]
    assert steps and steps[-1]["step"] == steps[-1]["steps"]
    assert lines[-1]["phase"] == "done" and 0.0 <= lines[-1]["accuracy"] <= 1.0
