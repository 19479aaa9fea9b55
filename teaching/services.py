"""Teaching a classifier: create it, add and remove examples, queue its training, delete it.

Keyword-only functions over the models, each validated and all-or-nothing: a TeachRejected
(a message for the visitor, a code and an HTTP status) for anything refused, with nothing
written; files written for a request that then fails are deleted. Images go through the
uploads' validation (uploads.images) and atomic storage (uploads.storage); ownership is the
uploads' Owner. The training itself runs on the task queue (teaching.tasks, teaching.training).
"""

import logging
import re
import shutil
import uuid
from collections.abc import Sequence

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Count

from teaching.files import example_storage, examples_root, models_root
from teaching.models import (
    ACTIVE_STATUSES,
    Example,
    JobStatus,
    TaughtClass,
    TaughtClassifier,
    TrainingJob,
)
from teaching.tasks import train_classifier
from uploads import registry
from uploads.images import (
    UploadRejected,
    encode_for_storage,
    encode_thumbnail,
    read_validated_image,
)
from uploads.models import Feedback, Owner, ServedModel
from uploads.storage import StorageUnavailable

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 60
MAX_CLASS_NAME_LENGTH = 40
# A class name is also the name of a folder the training reads: letters, digits, spaces and a
# few marks, never a path separator or a leading dot.
_CLASS_NAME = re.compile(r"^[^\W_][\w '\-.()]*$")


class TeachRejected(Exception):  # noqa: N818  (a visitor-facing outcome, not a crash)
    """A request refused: `message` is for the visitor (no path, no setting name)."""

    def __init__(self, message: str, *, code: str, status: int = 400):
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def clean_class_names(names: Sequence[str]) -> list[str]:
    """The class names, stripped, checked: 2-20, each 1-40 characters of letters, digits,
    spaces and ' - . ( ), no two the same (ignoring case). Raises TeachRejected."""
    cleaned = [" ".join(str(name).split()) for name in names]
    cleaned = [name for name in cleaned if name]
    low, high = settings.TEACH_MIN_CLASSES, settings.TEACH_MAX_CLASSES
    if not low <= len(cleaned) <= high:
        raise TeachRejected(
            f"Name {low} to {high} classes ({len(cleaned)} given).", code="class_count"
        )
    for name in cleaned:
        if len(name) > MAX_CLASS_NAME_LENGTH or not _CLASS_NAME.match(name):
            raise TeachRejected(
                f"Class names are 1-{MAX_CLASS_NAME_LENGTH} letters, digits, spaces or - ' . ( ), "
                f"starting with a letter or digit: {name[:MAX_CLASS_NAME_LENGTH]!r} is not.",
                code="class_name",
            )
    folded = [name.casefold() for name in cleaned]
    duplicates = sorted({name for name in cleaned if folded.count(name.casefold()) > 1})
    if duplicates:
        raise TeachRejected(
            f"Each class needs its own name; given twice: {', '.join(duplicates)}.",
            code="duplicate_class",
        )
    return cleaned


@transaction.atomic
def create_classifier(
    *, owner: Owner, name: str, class_names: Sequence[str], backbone: str = ""
) -> TaughtClassifier:
    """A new classifier of `owner`'s with these classes; raises TeachRejected."""
    if not owner.key and owner.user_id is None:
        raise TeachRejected("Your browser must accept cookies to teach.", code="no_session")
    name = " ".join(str(name).split())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise TeachRejected(
            f"Give the classifier a name of 1 to {MAX_NAME_LENGTH} characters.", code="name"
        )
    classes = clean_class_names(class_names)
    backbone = backbone or next(iter(settings.TEACH_BACKBONES))
    if backbone not in settings.TEACH_BACKBONES:
        choices = ", ".join(settings.TEACH_BACKBONES)
        raise TeachRejected(f"Teach on one of: {choices}.", code="backbone")
    if TaughtClassifier.objects.owned_by(owner).count() >= settings.TEACH_MAX_CLASSIFIERS:
        raise TeachRejected(
            f"You have {settings.TEACH_MAX_CLASSIFIERS} classifiers, the most one visitor may "
            "keep; delete one first.",
            code="too_many_classifiers",
            status=409,
        )
    classifier = TaughtClassifier.objects.create(
        name=name, backbone=backbone, owner_key=owner.key, user_id=owner.user_id
    )
    TaughtClass.objects.bulk_create(
        TaughtClass(classifier=classifier, name=class_name, position=i)
        for i, class_name in enumerate(classes)
    )
    return classifier


def add_examples(
    *, taught_class: TaughtClass, files: Sequence[UploadedFile], source: str = "upload"
) -> list[Example]:
    """Validate every file (as uploads are), then store them all as examples of the class, or
    none. Raises TeachRejected (too many files or examples, a bad image: named)."""
    if not files:
        raise TeachRejected("Choose at least one image.", code="no_file")
    if len(files) > settings.TEACH_MAX_FILES:
        raise TeachRejected(
            f"{len(files)} files were sent; at most {settings.TEACH_MAX_FILES} at once.",
            code="too_many_files",
            status=413,
        )
    if source not in dict(Example.SOURCES) or source == "feedback":
        raise TeachRejected("Unknown source of examples.", code="source")
    images = [_validate(file) for file in files]
    return _store_examples(taught_class=taught_class, images=images, source=source)


def _validate(file: UploadedFile):
    try:
        file.seek(0)
        data = file.read(settings.UPLOAD_MAX_BYTES + 1)
        return read_validated_image(
            data,
            name=file.name,
            max_bytes=settings.UPLOAD_MAX_BYTES,
            max_pixels=settings.UPLOAD_MAX_PIXELS,
        )
    except UploadRejected as err:
        raise TeachRejected(err.message, code=err.code, status=err.status) from err


def _store_examples(
    *, taught_class: TaughtClass, images: list, source: str, prediction_ids: Sequence = ()
) -> list[Example]:
    storage = example_storage()
    written: list[str] = []
    try:
        with transaction.atomic():
            locked = TaughtClass.objects.select_for_update().get(pk=taught_class.pk)
            have = locked.examples.count()
            if have + len(images) > settings.TEACH_MAX_EXAMPLES:
                raise TeachRejected(
                    f"A class holds at most {settings.TEACH_MAX_EXAMPLES} examples; "
                    f"{locked.name!r} has {have}, and {len(images)} more were sent.",
                    code="too_many_examples",
                    status=409,
                )
            examples = []
            folder = f"{locked.classifier_id}/{locked.pk}"
            ids = list(prediction_ids) or [None] * len(images)
            for validated, prediction_id in zip(images, ids, strict=True):
                stem = f"{folder}/{uuid.uuid4().hex}"
                encoded = encode_for_storage(validated)
                name = storage.save(f"{stem}.{encoded.extension}", ContentFile(encoded.data))
                written.append(name)
                thumbnail = encode_thumbnail(validated)
                thumb_name = ""
                if thumbnail is not None:
                    thumb_name = storage.save(
                        f"{stem}_thumb.{thumbnail.extension}", ContentFile(thumbnail.data)
                    )
                    written.append(thumb_name)
                examples.append(
                    Example(
                        taught_class=locked,
                        image=name,
                        thumbnail=thumb_name,
                        sha256=validated.sha256,
                        source=source,
                        prediction_id=prediction_id,
                    )
                )
            return Example.objects.bulk_create(examples)
    except OSError as err:  # the disk refused a file: 507 or 503, as for an upload
        logger.error("Storing examples failed: %s", err)
        _delete_files(written)
        raise StorageUnavailable(err) from err
    except BaseException:
        _delete_files(written)
        raise


def remove_example(*, example: Example) -> None:
    """Delete an example and, once that commits, its files."""
    names = [name for name in (example.image, example.thumbnail) if name]
    with transaction.atomic():
        example.delete()
        transaction.on_commit(lambda: _delete_files(names))


def _delete_files(names: Sequence[str]) -> None:
    storage = example_storage()
    for name in names:
        storage.delete(name)


def start_training(*, classifier: TaughtClassifier, owner: Owner, retrain: bool = False):
    """Queue a training of the classifier (FIFO on the 'teach' queue); returns the job.

    Refused (409) while this visitor has a job queued or running, and (400) while a class has
    fewer than settings.TEACH_MIN_EXAMPLES examples.
    """
    with transaction.atomic():
        TaughtClassifier.objects.select_for_update().get(pk=classifier.pk)
        counts = classifier.classes.annotate(n=Count("examples")).values_list("name", "n")
        short = [name for name, n in counts if n < settings.TEACH_MIN_EXAMPLES]
        if short:
            raise TeachRejected(
                f"Every class needs at least {settings.TEACH_MIN_EXAMPLES} examples; "
                f"add more to: {', '.join(short)}.",
                code="too_few_examples",
            )
        busy = TrainingJob.objects.filter(status__in=ACTIVE_STATUSES)
        busy = busy.filter(classifier__in=TaughtClassifier.objects.owned_by(owner))
        if busy.exists() or classifier.jobs.filter(status__in=ACTIVE_STATUSES).exists():
            raise TeachRejected(
                "A training of yours is already queued or running; wait for it, or cancel it.",
                code="job_active",
                status=409,
            )
        try:
            job = TrainingJob.objects.create(
                classifier=classifier, owner_key=classifier.owner_key, retrain=retrain
            )
        except IntegrityError as err:  # a concurrent request won the race
            raise TeachRejected(
                "A training of this classifier is already queued.", code="job_active", status=409
            ) from err
        result = train_classifier.enqueue(job.pk)
        job.task_id = str(result.id)
        job.save(update_fields=["task_id"])
    return job


def cancel_training(*, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job at once; ask a running one's worker to stop it (it polls)."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.CANCELLED
            job.error = "Cancelled before it started."
            job.save(update_fields=["status", "error"])
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
            job.save(update_fields=["cancel_requested"])
    return job


def retrain_with_corrections(*, classifier: TaughtClassifier, owner: Owner) -> TrainingJob:
    """Turn the feedback given on this classifier's predictions (a corrected class, or a right
    answer) into examples, then queue a new version; nothing is added twice."""
    taken = set(
        Example.objects.filter(taught_class__classifier=classifier)
        .exclude(prediction_id=None)
        .values_list("prediction_id", flat=True)
    )
    classes = {c.name: c for c in classifier.classes.all()}
    feedback = (
        Feedback.objects.for_model(classifier.model_name)
        .select_related("prediction__upload")
        .exclude(prediction_id__in=taken)
    )
    by_class: dict[str, list] = {}
    for vote in feedback:
        label = vote.prediction.label if vote.correct else vote.label
        if label not in classes:
            continue
        try:
            with default_storage.open(vote.prediction.upload.image.name, "rb") as file:
                data = file.read()
            validated = read_validated_image(
                data,
                name="correction",
                max_bytes=settings.UPLOAD_MAX_BYTES,
                max_pixels=settings.UPLOAD_MAX_PIXELS,
            )
        except (OSError, UploadRejected):  # the upload's file is gone: skip it
            continue
        by_class.setdefault(label, []).append((validated, vote.prediction_id))
    if not by_class:
        raise TeachRejected(
            "No new corrections to learn from: people's feedback on this classifier's answers "
            "becomes examples here.",
            code="no_corrections",
        )
    for label, pairs in by_class.items():
        _store_examples(
            taught_class=classes[label],
            images=[validated for validated, _ in pairs],
            source="feedback",
            prediction_ids=[pk for _, pk in pairs],
        )
    return start_training(classifier=classifier, owner=owner, retrain=True)


def restore_version(*, classifier: TaughtClassifier, version: str) -> ServedModel:
    """Serve an earlier published version of the classifier again."""
    row = ServedModel.objects.filter(name=classifier.model_name, version=version).first()
    if row is None:
        raise TeachRejected("No such version of this classifier.", code="version", status=404)
    return registry.activate(row=row)


def delete_classifier(*, classifier: TaughtClassifier) -> None:
    """Delete the classifier: its rows, its examples' files, its model directories and its
    published versions (ServedModel rows). A running training is asked to stop first; its
    worker finds the classifier gone and removes what it wrote."""
    names = list(
        Example.objects.filter(taught_class__classifier=classifier).values_list(
            "image", "thumbnail"
        )
    )
    stored = [name for pair in names for name in pair if name]
    model_dir = models_root() / classifier.model_name
    folder = examples_root() / str(classifier.pk)
    with transaction.atomic():
        classifier.jobs.filter(status__in=ACTIVE_STATUSES).update(cancel_requested=True)
        ServedModel.objects.filter(name=classifier.model_name).delete()
        classifier.delete()

        def remove_files() -> None:
            _delete_files(stored)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(model_dir, ignore_errors=True)

        transaction.on_commit(remove_files)
