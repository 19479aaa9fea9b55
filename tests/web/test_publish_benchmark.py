"""The load test during a publish (benchmarks.serving.publish): the new version it publishes is a
readable export with its own version and answers, and its database checks catch a mixed or
misrecorded answer."""

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.serving import publish
from research.serving import model_dir
from research.serving.classifier import Classifier

pytestmark = pytest.mark.no_models


def test_the_published_copy_is_another_version_with_other_answers(tmp_path, tiny_model_dir):
    """The copy reads as an export of a new version whose probabilities differ from the old's."""
    copy, old, new = publish.make_new_version(tiny_model_dir, tmp_path)
    assert old == model_dir.describe(tiny_model_dir).version
    assert model_dir.describe(copy).version == new != old
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    image = Image.open(buffer)
    before, after = (Classifier.load(d).predict([image])[0] for d in (tiny_model_dir, copy))
    assert not np.allclose(before, after, atol=1e-4)


def _answer(sent: float, pk: int, version: str, confidence: float) -> publish.Answer:
    return publish.Answer(sent, 201, 10.0, pk, version, confidence)


MARKS = {"published": 2.0, "rollback": 4.0, "rolled_back": 6.0}


def _checks(answers, stored_overrides=None) -> dict[str, bool]:
    stored = {a.id: [a.id, publish.NAME, a.version, a.confidence] for a in answers}
    stored.update(stored_overrides or {})
    rows = {
        "predictions": list(stored.values()),
        "served": [["v1", "/settings", True], ["v2", "/copy", False]],
    }
    return publish.check_rows(answers, rows, MARKS, "v1", "v2")


def test_the_checks_pass_for_whole_answers_in_order():
    """Old before the publish, new after it, old after the rollback: every check passes."""
    answers = [
        _answer(1.0, 1, "v1", 0.9),
        _answer(3.0, 2, "v2", 0.7),
        _answer(5.0, 3, "v2", 0.7),
        _answer(7.0, 4, "v1", 0.9),
    ]
    assert all(_checks(answers).values()), _checks(answers)


def test_the_checks_catch_a_mix_a_misrecorded_row_and_a_late_old_answer():
    """A third answer for the image, a row naming another version, an old answer after the
    publish settled: each fails its check."""
    mixed = [_answer(1.0, 1, "v1", 0.9), _answer(3.0, 2, "v2", 0.7), _answer(3.5, 3, "v2", 0.8)]
    assert not _checks(mixed)["one answer per version for the image (a whole model, never a mix)"]

    answers = [_answer(1.0, 1, "v1", 0.9), _answer(3.0, 2, "v2", 0.7), _answer(7.0, 3, "v1", 0.9)]
    misrecorded = _checks(answers, {2: [2, publish.NAME, "v1", 0.7]})
    assert not misrecorded["every answer has its row, naming the version that answered"]

    late = [*answers, _answer(3.5, 4, "v1", 0.9)]
    assert not _checks(late)["after the publish every answer is the new version's"]
