"""The serving record: what training writes and evaluation, inference and the web read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from research.serving.errors import IncompatibleModelError
from research.serving.record import RECORD_FORMAT, ServingRecord


def _record(**changes) -> ServingRecord:
    fields = dict(
        name="colors-tiny",
        dataset="colors",
        version="20250101-step12",
        step=12,
        class_names=("blue", "green", "red"),
        image_shape=(32, 32, 3),
        mean=(120.0, 121.0, 122.0),
        std=(60.0, 61.0, 62.0),
        flip_tta=True,
        config={"dataset": "colors", "model": "tiny", "widths": [8, 16, 16]},
        metrics={"eval_accuracy": 0.75, "eval_split": "validation"},
        created="2025-01-01T00:00:00+00:00",
    )
    return ServingRecord(**{**fields, **changes})


def test_a_record_round_trips_through_its_json_meta():
    """to_meta is plain JSON; from_meta of it gives the same record back."""
    record = _record(temperature=1.5, unknown_threshold=0.4)
    meta = json.loads(json.dumps(record.to_meta()))
    assert ServingRecord.from_meta(meta) == record


def test_translate_tta_round_trips_and_is_off_for_records_written_before_it():
    """The record keeps translate_tta; a meta without the key (every record before it) serves
    as it was evaluated, without the shifted views."""
    record = _record(translate_tta=True)
    assert ServingRecord.from_meta(json.loads(json.dumps(record.to_meta()))) == record
    older = {k: v for k, v in _record().to_meta().items() if k != "translate_tta"}
    assert ServingRecord.from_meta(older).translate_tta is False


def test_the_meta_keeps_the_keys_checkpoints_have_always_had():
    """Flat fields, the training config under 'model', and the record format."""
    meta = _record().to_meta()
    assert meta["class_names"] == ["blue", "green", "red"] and meta["image_shape"] == [32, 32, 3]
    assert meta["flip_tta"] is True and meta["model"]["model"] == "tiny" and "config" not in meta
    assert meta["record_format"] == RECORD_FORMAT
    assert meta["temperature"] == 1.0 and meta["unknown_threshold"] is None


def test_a_meta_from_before_the_record_format_reads_with_defaults():
    """No record_format, temperature or unknown_threshold: format 1, temperature 1, never."""
    meta = _record().to_meta()
    for key in ("record_format", "temperature", "unknown_threshold"):
        del meta[key]
    record = ServingRecord.from_meta(meta)
    assert record == _record() and record.temperature == 1.0 and record.unknown_threshold is None


def test_derived_values_and_replace():
    """num_classes, eval_accuracy (None when not evaluated) and replace() of a frozen record."""
    record = _record()
    assert record.num_classes == 3 and record.eval_accuracy == 0.75
    assert _record(metrics={}).eval_accuracy is None
    warmer = record.replace(temperature=2.0)
    assert warmer.temperature == 2.0 and record.temperature == 1.0
    with pytest.raises(AttributeError):
        record.temperature = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ([1, 2], "not a JSON object"),
        ("cifar10", "not a JSON object"),
        ({**_record().to_meta(), "record_format": 99}, "format 99"),
        ({k: v for k, v in _record().to_meta().items() if k != "flip_tta"}, r"\['flip_tta'\]"),
        ({"weights": "elsewhere"}, "lacks serving-record fields"),
        ({**_record().to_meta(), "image_shape": "32x32"}, "malformed"),
        ({**_record().to_meta(), "image_shape": "323"}, r"\['image_shape'\] must be JSON lists"),
        ({**_record().to_meta(), "class_names": "abc"}, r"\['class_names'\] must be JSON lists"),
        ({**_record().to_meta(), "step": "last"}, "malformed"),
        ({**_record().to_meta(), "temperature": "hot"}, "malformed"),
        ({**_record().to_meta(), "temperature": 0}, "temperature must be positive"),
        ({**_record().to_meta(), "image_shape": [32, 32, 2]}, "1 or 3 channels"),
        ({**_record().to_meta(), "class_names": []}, "non-empty list of strings"),
        ({**_record().to_meta(), "mean": [1.0]}, "one value per channel"),
    ],
    ids=[
        "list",
        "string",
        "format-99",
        "no-flip_tta",
        "foreign",
        "shape-text",
        "shape-digits",
        "classes-text",
        "step-text",
        "temperature-text",
        "temperature-zero",
        "two-channels",
        "no-classes",
        "short-mean",
    ],  # fmt: skip
)
def test_an_old_or_foreign_meta_is_refused_naming_the_problem(meta, reason):
    """IncompatibleModelError says what is wrong and where it came from."""
    with pytest.raises(IncompatibleModelError, match=reason) as caught:
        ServingRecord.from_meta(meta, source="Checkpoint /somewhere/7")
    assert "Checkpoint /somewhere/7" in str(caught.value)


def test_constructing_an_invalid_record_fails_at_once():
    """A record is checked when made, not when first used."""
    with pytest.raises(IncompatibleModelError, match="finite"):
        _record(temperature=float("nan"))


def test_reading_records_imports_neither_jax_nor_tensorflow():
    """The web lists models through these modules without loading a framework."""
    code = (
        "import sys\n"
        "import research.serving.record, research.serving.model_dir, research.data.folders\n"
        "import research.serving.errors, research.serving.artifacts, research.serving.batching\n"
        "import research.serving.preprocess, research.serving.expectations, research.configs\n"
        "loaded = {'jax', 'tensorflow', 'flax', 'orbax'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
