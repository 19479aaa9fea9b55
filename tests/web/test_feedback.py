"""Feedback on predictions: recording, live accuracy, the admin, export, recalibration."""

import pytest

from uploads import services
from uploads.feedback import FeedbackError, live_accuracy, record_feedback
from uploads.models import Feedback, Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def prediction(upload_file) -> Prediction:
    """One stored prediction of the tiny CIFAR-10 model."""
    return services.classify_upload(file=upload_file(), model_name="cifar10")


def _other_label(prediction: Prediction) -> str:
    return next(name for name in prediction.probabilities if name != prediction.label)


def test_confirming_a_prediction_stores_its_label_as_correct(prediction):
    """correct=True records a correct verdict with the predicted label."""
    feedback = record_feedback(prediction=prediction, correct=True)
    assert (feedback.correct, feedback.label) == (True, prediction.label)
    assert list(prediction.feedback.all()) == [feedback]


def test_correcting_a_prediction_stores_the_given_label_as_wrong(prediction):
    """A label other than the predicted one records a wrong verdict with that label."""
    label = _other_label(prediction)
    feedback = record_feedback(prediction=prediction, label=label)
    assert (feedback.correct, feedback.label) == (False, label)


def test_the_predicted_label_given_as_a_correction_counts_as_correct(prediction):
    """Sending the predicted label is a confirmation."""
    feedback = record_feedback(prediction=prediction, label=prediction.label)
    assert (feedback.correct, feedback.label) == (True, prediction.label)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"correct": True, "label": "cat"}, {"correct": False}, {"label": "unicorn"}],
    ids=["neither", "both", "wrong-without-label", "unknown-label"],
)
def test_invalid_feedback_is_refused_and_nothing_stored(prediction, kwargs):
    """Neither or both given, 'wrong' without a label, or a label outside the classes: refused."""
    with pytest.raises(FeedbackError):
        record_feedback(prediction=prediction, **kwargs)
    assert Feedback.objects.count() == 0


def test_unknown_label_message_lists_the_classes(prediction):
    """The refusal names the valid labels."""
    with pytest.raises(FeedbackError, match="choose one of: .*airplane"):
        record_feedback(prediction=prediction, label="unicorn")


def test_live_accuracy_counts_the_latest_feedback_per_prediction(upload_file):
    """Only the newest verdict on each prediction counts, and only for that model's predictions."""
    first, second, third = (
        services.classify_upload(file=upload_file(), model_name="cifar10") for _ in range(3)
    )
    other = services.classify_upload(file=upload_file(), model_name="fashion_mnist")
    record_feedback(prediction=first, label=_other_label(first))
    record_feedback(prediction=first, correct=True)  # replaces the correction
    record_feedback(prediction=second, correct=True)
    record_feedback(prediction=second, label=_other_label(second))  # replaces the confirmation
    record_feedback(prediction=other, correct=True)
    assert live_accuracy("cifar10") == (0.5, 2)
    assert live_accuracy("fashion_mnist") == (1.0, 1)
    record_feedback(prediction=third, correct=True)
    assert live_accuracy("cifar10") == (pytest.approx(2 / 3), 3)


def test_live_accuracy_without_feedback_is_none(prediction):
    """A model with no feedback has no live accuracy, and a count of zero."""
    assert live_accuracy("cifar10") == (None, 0)
