"""A person's verdict on a prediction, and the live accuracy those verdicts give a model.

The API endpoint and the result page's control are thin layers over `record_feedback`; each
model's page shows `live_accuracy` next to its validation accuracy. `manage.py
export_feedback` turns the verdicts into an image folder for retraining.
"""

from django.db import transaction

from uploads.models import Feedback, Prediction


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; the message is safe to show users."""


def record_feedback(
    *, prediction: Prediction, correct: bool | None = None, label: str | None = None
) -> Feedback:
    """Record that a prediction was right (`correct=True`) or should have been `label`.

    Exactly one of the two is given. A label equal to the predicted one counts as a
    confirmation; any other label must be one of the model's classes (the keys of the stored
    probabilities, which hold every class). Raises FeedbackError otherwise.
    """
    if correct is not None and label is not None:
        raise FeedbackError("Send either correct: true or a label, not both.")
    if correct is None and label is None:
        raise FeedbackError("Send correct: true, or the label the image should have.")
    if correct is not None and correct is not True:
        raise FeedbackError(
            "To say the answer was wrong, send the label the image should have instead."
        )
    if label is not None:
        classes = list(prediction.probabilities)
        if not isinstance(label, str) or label not in classes:
            raise FeedbackError(
                f"Unknown label {str(label)[:100]!r}; choose one of: {', '.join(classes)}."
            )
    true_label = prediction.label if label is None else label
    with transaction.atomic():
        return Feedback.objects.create(
            prediction=prediction, correct=true_label == prediction.label, label=true_label
        )


def live_accuracy(model_name: str) -> tuple[float | None, int]:
    """The share of a model's predictions confirmed right, among those with feedback.

    Only the latest verdict on each prediction counts. Returns (accuracy, count); accuracy is
    None when no prediction of the model has feedback.
    """
    return Feedback.objects.for_model(model_name).latest_per_prediction().accuracy()
