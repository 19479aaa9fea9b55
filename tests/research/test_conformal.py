"""Conformal prediction sets: the guarantee, the two methods, the record and the Classifier."""

from __future__ import annotations

import numpy as np
import pytest

from research.evaluation import calibrate as calibrate_lib
from research.evaluation import plots
from research.serving import conformal
from research.serving.errors import IncompatibleModelError
from research.serving.record import ServingRecord


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _split(rng: np.random.Generator, n: int, classes: int = 10, scale: float = 2.5):
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes)) + scale * np.eye(classes)[labels]
    return _softmax(logits), labels


@pytest.mark.parametrize("method", conformal.METHODS)
def test_sets_fitted_on_one_split_cover_95_percent_of_a_fresh_split(method):
    """The threshold fitted on 2,000 images gives sets holding the true class of >= 95% of
    20,000 images drawn the same way; fitted for 80% coverage, smaller sets covering fewer."""
    rng = np.random.default_rng(0)
    fit_probs, fit_labels = _split(rng, 2000)
    new_probs, new_labels = _split(rng, 20000)
    threshold = conformal.fit_threshold(
        conformal.conformity_scores(method, fit_probs, fit_labels), 0.95
    )
    report = conformal.set_report(method, new_probs, new_labels, threshold)
    assert 0.94 <= report["coverage"] < 0.99  # the guarantee, and not every class every time
    assert 1.0 < report["mean_size"] < 5.0
    low = conformal.fit_threshold(conformal.conformity_scores(method, fit_probs, fit_labels), 0.8)
    lower = conformal.set_report(method, new_probs, new_labels, low)
    assert lower["coverage"] < report["coverage"] - 0.03
    assert lower["mean_size"] < report["mean_size"]


def test_the_threshold_is_the_ceil_n_plus_1_quantile_and_all_classes_for_tiny_splits():
    """Without a margin, 95% coverage of 19 scores needs the 19th smallest (ceil(20 * 0.95));
    with fewer, no finite threshold guarantees it and every class is kept. The default margin
    of 1.645 standard errors picks a higher rank: 0.95 + 1.645 * sqrt(.95 * .05 / 1000)."""
    scores = np.arange(19) / 100
    assert conformal.fit_threshold(scores, 0.95, margin=0) == pytest.approx(0.18)
    assert conformal.fit_threshold(scores[:10], 0.95, margin=0) == 1.0
    many = np.arange(1000) / 1000
    assert conformal.fit_threshold(many, 0.95, margin=0) == pytest.approx(0.950)
    assert conformal.fit_threshold(many) == pytest.approx(0.962)
    with pytest.raises(ValueError, match="coverage"):
        conformal.fit_threshold(scores, 1.0)


def test_lac_sets_keep_the_classes_above_one_minus_the_threshold_and_never_are_empty():
    """'lac' keeps p >= 1 - threshold; a set with no such class still holds the top class."""
    probs = np.array([[0.7, 0.25, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33]])
    sets = conformal.prediction_sets("lac", probs, 0.7)
    assert sets.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert conformal.prediction_sets("lac", probs, 0.0).sum(-1).tolist() == [1, 1, 1]


def test_aps_scores_are_the_mass_of_the_classes_ranked_at_or_above():
    """'aps' scores a class by the summed probability of it and every likelier class."""
    probs = np.array([[0.2, 0.5, 0.3]])
    assert conformal.class_scores("aps", probs)[0].tolist() == pytest.approx([1.0, 0.5, 0.8])
    with pytest.raises(ValueError, match="lac, aps"):
        conformal.class_scores("raps", probs)


def test_fit_sets_chooses_the_smaller_sets_on_the_fitting_images_only():
    """fit_sets fits both methods on the fitting logits and picks the smaller mean set there."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 3000)
    logits = rng.normal(0, 1, (3000, 10)) + 3 * np.eye(10)[labels]
    fitted = calibrate_lib.fit_sets(logits, labels, 1.0)
    assert set(fitted["thresholds"]) == {"lac", "aps"}
    assert fitted["method"] == min(fitted["fit_size"], key=fitted["fit_size"].get)


def test_risk_coverage_rises_as_fewer_surer_answers_are_kept():
    """Keeping only the surest answers raises their accuracy; keeping all gives the accuracy."""
    rng = np.random.default_rng(2)
    probs, labels = _split(rng, 5000, scale=1.5)
    curve = conformal.risk_coverage(probs, labels)
    assert curve["kept"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(np.mean(probs.argmax(-1) == labels))
    assert curve["accuracy"][0] > curve["accuracy"][-1] + 0.2
    image = plots.render_risk_coverage(curve, "title")
    assert image.size[0] > 300 and len(image.getcolors(100000)) > 2


def _record(**changes) -> ServingRecord:
    base = dict(
        name="d-m",
        dataset="d",
        version="v",
        step=1,
        class_names=("a", "b"),
        image_shape=(8, 8, 3),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        flip_tta=False,
    )
    return ServingRecord(**(base | changes))


def test_the_set_threshold_round_trips_through_the_record_and_old_records_have_none():
    """set_method/threshold/coverage survive to_meta/from_meta; a record without them has no
    set; a bad method or coverage is refused by name."""
    record = _record(set_method="aps", set_threshold=0.93, set_coverage=0.9)
    again = ServingRecord.from_meta(record.to_meta())
    assert (again.set_method, again.set_threshold, again.set_coverage) == ("aps", 0.93, 0.9)
    meta = record.to_meta()
    for key in ("set_method", "set_threshold", "set_coverage"):
        del meta[key]
    assert ServingRecord.from_meta(meta).set_threshold is None
    with pytest.raises(IncompatibleModelError, match="set_method"):
        _record(set_method="raps")
    with pytest.raises(IncompatibleModelError, match="set_coverage"):
        _record(set_coverage=1.5)
