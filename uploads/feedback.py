"""A person's verdict on a prediction, and the live accuracy those verdicts give a model.

The API endpoint and the result page's control are thin layers over `record_feedback`; each
model's page shows `live_accuracy` next to its validation accuracy. `manage.py
export_feedback` turns the verdicts into an image folder for retraining.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files.storage import default_storage
from django.db import transaction
from PIL import Image

from uploads import metrics
from uploads.models import Feedback, Prediction, Upload


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; the message is safe to show users."""


def record_feedback(
    *, prediction: Prediction, correct: bool | None = None, label: str | None = None
) -> Feedback:
    """Record that a prediction was right (`correct=True`) or should have been `label`.

    A prediction has one vote (only its owner may give it): a later one replaces it.
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
        feedback, _ = Feedback.objects.update_or_create(
            prediction=prediction,
            defaults={"correct": true_label == prediction.label, "label": true_label},
        )
    metrics.count_feedback(prediction.model_name, correct=feedback.correct)
    return feedback


def live_accuracy(model_name: str) -> tuple[float | None, int]:
    """The share of a model's predictions confirmed right, among those with feedback.

    Only the latest verdict on each prediction counts. Returns (accuracy, count); accuracy is
    None when no prediction of the model has feedback.
    """
    return Feedback.objects.for_model(model_name).latest_per_prediction().accuracy()


# ----------------------------------------------------------------------------- export

# Exported files sort before numbered originals ("0000.jpg"), so an importer that carves
# validation out of the last images of each class by name keeps carving original images.
EXPORT_PREFIX = "0-feedback-"
# Characters that cannot appear in a folder name on some system; each becomes "_".
_UNSAFE_IN_FOLDER_NAMES = re.compile(r'[/\\<>:"|?*\x00-\x1f]')


@dataclass
class FeedbackExport:
    """What export_feedback_images wrote: images per class, and what it left out."""

    directory: Path
    per_class: dict[str, int] = field(default_factory=dict)  # class name -> images written
    moved: int = 0  # re-labelled since an earlier export into the same folder
    missing_files: int = 0  # the stored image is gone
    unknown_labels: int = 0  # the label is not a class of the model as it is now

    @property
    def written(self) -> int:
        return sum(self.per_class.values())


def class_folder_name(class_name: str) -> str:
    """A folder name for a class: unsafe characters become '_' ('T-shirt/top' -> 'T-shirt_top').

    research.evaluate matches such a folder back to its class (case and punctuation aside).
    A leading '.' also becomes '_', since image folder listers skip hidden folders.
    """
    name = _UNSAFE_IN_FOLDER_NAMES.sub("_", class_name).strip().rstrip(".")
    if not name or name.startswith("."):
        name = "_" + name.lstrip(".")
    return name


def export_feedback_images(
    *, model_name: str, directory: str | Path, class_names: Sequence[str], split: str = "train"
) -> FeedbackExport:
    """Write the images people labelled as ``directory/split/<class folder>/<name>.png``.

    The label of each prediction's latest feedback decides the class (confirmed: the
    predicted label; corrected: the given one); labels outside `class_names` are left out.
    An image is the stored (re-encoded) upload, written as PNG with its pixels unchanged,
    named after the uploaded bytes' SHA-256 so the same image is written once (its newest
    verdict wins) and a later export into the same folder moves a re-labelled image.
    """
    folders = {name: class_folder_name(name) for name in class_names}
    clashes = sorted(f for f in set(folders.values()) if list(folders.values()).count(f) > 1)
    if clashes:
        raise FeedbackError(f"Class names share folder names: {', '.join(clashes)}")
    if class_folder_name(split) != split or split in ("", ".", ".."):
        raise FeedbackError(f"Split {split!r} is not a folder name.")
    root = Path(directory).expanduser() / split
    existing = {path.name: path for path in root.glob(f"*/{EXPORT_PREFIX}*.png")}

    newest: dict[str, tuple[str, Upload]] = {}  # sha256 -> (label, upload); later wins
    result = FeedbackExport(directory=Path(directory))
    for feedback in (
        Feedback.objects.for_model(model_name)
        .latest_per_prediction()
        .select_related("prediction__upload")
        .order_by("created_at", "id")
    ):
        if feedback.label not in folders:
            result.unknown_labels += 1
            continue
        upload = feedback.prediction.upload
        newest[upload.sha256] = (feedback.label, upload)

    for sha256, (label, upload) in newest.items():
        try:
            with default_storage.open(upload.image.name, "rb") as stored:
                image = Image.open(stored)
                image.load()
        except (FileNotFoundError, OSError):
            result.missing_files += 1
            continue
        target = root / folders[label] / f"{EXPORT_PREFIX}{sha256[:20]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "PNG")
        earlier = existing.get(target.name)
        if earlier is not None and earlier != target:
            earlier.unlink(missing_ok=True)
            result.moved += 1
        result.per_class[label] = result.per_class.get(label, 0) + 1
    return result
