"""The one reader of model directories: finding checkpoints, choosing one, reading its record."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from research.serving import model_dir
from research.serving.errors import ModelNotFoundError
from research.serving.record import ServingRecord


def _write_step(directory, step: int, accuracy: float | None = None, meta=None) -> None:
    """A finished step's meta item as Orbax lays it out (no weights: nothing here reads them)."""
    if meta is None:
        metrics = {} if accuracy is None else {"eval_accuracy": accuracy}
        meta = ServingRecord(
            name="colors-tiny",
            dataset="colors",
            version=f"20250101-step{step}",
            step=step,
            class_names=("blue", "green", "red"),
            image_shape=(32, 32, 3),
            mean=(120.0, 120.0, 120.0),
            std=(60.0, 60.0, 60.0),
            flip_tta=False,
            metrics=metrics,
        ).to_meta()
    path = model_dir.meta_path(directory, step)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(meta))


def test_checkpoints_are_found_in_a_workdir_or_an_exported_model(tmp_path):
    """<workdir>/checkpoints for a training run, the folder itself for an export."""
    _write_step(tmp_path / "run" / "checkpoints", 5)
    _write_step(tmp_path / "export", 5)
    found = model_dir.find_checkpoints(tmp_path / "run")
    assert found == (tmp_path / "run" / "checkpoints").absolute()
    assert model_dir.find_checkpoints(tmp_path / "export") == (tmp_path / "export").absolute()


def test_a_folder_without_steps_is_model_not_found_with_the_fix(tmp_path):
    """An empty or missing folder names research.train and research.export."""
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ModelNotFoundError, match="research.train.*research.export"):
            model_dir.find_checkpoints(path)
    assert model_dir.describe(tmp_path) is None


def test_only_finished_steps_are_listed_oldest_first(tmp_path):
    """Numbered directories only: not Orbax's temporary ones, files or other folders."""
    for step in (10, 2, 7):
        _write_step(tmp_path, step)
    (tmp_path / "12.orbax-checkpoint-tmp-3").mkdir()
    (tmp_path / "eval_test").mkdir()
    (tmp_path / "99").write_text("a file")
    assert model_dir.list_steps(tmp_path) == [2, 7, 10]
    assert model_dir.list_steps(tmp_path / "missing") == []


def test_the_best_evaluated_step_is_picked(tmp_path):
    """Highest eval accuracy wins, the later step on a tie, whatever the order on disk."""
    for step, accuracy in ((3, 0.5), (6, 0.9), (9, 0.7), (12, 0.9)):
        _write_step(tmp_path, step, accuracy)
    directory, step, record = model_dir.pick_checkpoint(tmp_path)
    assert (directory, step) == (tmp_path.absolute(), 12)
    assert record.step == 12 and record.eval_accuracy == 0.9
    assert model_dir.describe(tmp_path) == record


def test_without_evaluations_the_latest_step_is_picked(tmp_path):
    """No step has an eval accuracy: the latest one."""
    for step in (4, 8, 6):
        _write_step(tmp_path, step)
    assert model_dir.pick_checkpoint(tmp_path)[1] == 8


def test_an_unreadable_step_is_skipped_with_a_warning(tmp_path, caplog):
    """A broken or foreign meta is passed over, naming it; the usable step is picked."""
    _write_step(tmp_path, 1, 0.5)
    _write_step(tmp_path, 2, meta=["not", "a", "record"])
    _write_step(tmp_path, 3, 0.4)
    model_dir.meta_path(tmp_path, 3).write_text("{ truncated")
    with caplog.at_level(logging.WARNING, logger="research.serving.model_dir"):
        assert model_dir.pick_checkpoint(tmp_path)[1] == 1
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "step 2" in warned and "step 3" in warned and "unreadable" in warned


def test_no_usable_step_is_model_not_found_naming_each_problem(tmp_path):
    """Every step broken: ModelNotFoundError lists why each was refused."""
    _write_step(tmp_path, 1, meta={"record_format": 99})
    _write_step(tmp_path, 2, meta={"name": "something else"})
    with pytest.raises(ModelNotFoundError, match="No usable checkpoint") as caught:
        model_dir.pick_checkpoint(tmp_path)
    assert "format 99" in str(caught.value) and "lacks serving-record fields" in str(caught.value)
    assert model_dir.describe(tmp_path) is None


def test_the_layout_read_is_the_one_orbax_writes(tiny_model_dir, tmp_path):
    """On a real export, read_record gives the record that was exported."""
    from research.serving.classifier import Classifier

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    directory, step, record = model_dir.pick_checkpoint(tmp_path / "model")
    assert model_dir.meta_path(directory, step).is_file()
    assert record == model_dir.read_record(directory, step)
    assert record == Classifier.load(tmp_path / "model").record
    assert record.class_names[0] == "airplane" and record.image_shape == (32, 32, 3)
