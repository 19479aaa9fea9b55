"""The one cross-cutting action: validate uploads, classify them, record what happened."""

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from uploads import classifiers
from uploads.images import (
    UploadRejected,
    ValidatedImage,
    check_byte_size,
    clean_original_name,
    encode_for_storage,
    encode_thumbnail,
    read_validated_image,
)
from uploads.models import Prediction, Upload


@dataclass(frozen=True)
class _ModelAnswer:
    """Who answered and how: shared by every prediction of one request."""

    name: str
    dataset: str
    version: str
    accuracy: float | None
    class_names: list[str]
    inference_ms: float


def classify_uploads(
    *, files: Sequence[UploadedFile], model_name: str | None = None, top_k: int | None = None
) -> list[Prediction]:
    """Validate, classify and store uploaded images, all or nothing.

    Every file is validated before anything is written; the stored image is the re-encoded
    pixels under a generated name (never the uploaded bytes). Uploads and predictions are
    created in one transaction, and the files written for them are deleted if it fails.
    Raises UploadRejected (a human message, a code and an HTTP status) for bad input, and
    classifiers.ModelUnavailableError when the model cannot be loaded.
    """
    started = time.perf_counter()
    if not files:
        raise UploadRejected("Choose an image to classify.", code="no_file")
    if len(files) > settings.UPLOAD_MAX_FILES:
        raise UploadRejected(
            f"{len(files)} files were sent; at most {settings.UPLOAD_MAX_FILES} are accepted "
            "at once.",
            code="too_many_files",
        )
    model_name = model_name or classifiers.get_default_model_name()
    try:
        classifier = classifiers.get_classifier(model_name)
    except classifiers.UnknownModelError as err:
        raise UploadRejected(str(err), code="unknown_model") from err
    top_k = _check_top_k(top_k, classifier.record.num_classes)

    images = [_read(file) for file in files]
    inference_started = time.perf_counter()
    # The decoded images as they came: the seam alone makes the model's input from them.
    probabilities = np.asarray(classifier.predict([validated.image for validated in images]))
    ranked = classifier.top_k(probabilities, top_k)
    inference_ms = (time.perf_counter() - inference_started) * 1000 / len(images)
    record = classifier.record
    answer = _ModelAnswer(
        name=model_name,
        dataset=record.dataset,
        version=record.version,
        accuracy=record.eval_accuracy,
        class_names=list(record.class_names),
        inference_ms=inference_ms,
    )

    written: list[str] = []
    try:
        stored_names = [_store_files(validated, written) for validated in images]
        latency_ms = (time.perf_counter() - started) * 1000 / len(images)
        with transaction.atomic():
            return [
                _record(validated, names, row, best_first, answer=answer, latency_ms=latency_ms)
                for validated, names, row, best_first in zip(
                    images, stored_names, probabilities, ranked, strict=True
                )
            ]
    except BaseException:
        for name in written:
            default_storage.delete(name)
        raise


def classify_upload(
    *, file: UploadedFile, model_name: str | None = None, top_k: int | None = None
) -> Prediction:
    """Validate, classify and store one uploaded image (see classify_uploads)."""
    return classify_uploads(files=[file], model_name=model_name, top_k=top_k)[0]


def delete_uploads(*, uploads: QuerySet[Upload]) -> int:
    """Delete uploads with their predictions, and their files once the deletion commits."""
    names = [name for pair in uploads.values_list("image", "thumbnail") for name in pair if name]
    with transaction.atomic():
        count, _ = Upload.objects.filter(pk__in=uploads.values("pk")).delete()
        transaction.on_commit(lambda: [default_storage.delete(name) for name in names])
    return count


def _check_top_k(top_k: int | None, num_classes: int) -> int:
    if top_k is None:
        return min(settings.CLASSIFIER_TOP_K, num_classes)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UploadRejected(
            f"top_k must be a whole number from 1 to {num_classes}.", code="invalid_top_k"
        )
    return min(top_k, num_classes)


def _read(file: UploadedFile) -> ValidatedImage:
    if file.size is not None:
        check_byte_size(
            file.size, name=clean_original_name(file.name), max_bytes=settings.UPLOAD_MAX_BYTES
        )
    file.seek(0)
    data = file.read(settings.UPLOAD_MAX_BYTES + 1)
    return read_validated_image(
        data,
        name=file.name,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
    )


def _store_files(validated: ValidatedImage, written: list[str]) -> tuple[str, str]:
    """Save the re-encoded image (and thumbnail) under generated names; note each name."""
    stem = f"{timezone.now():%Y/%m}/{uuid.uuid4().hex}"
    image = encode_for_storage(validated)
    image_name = default_storage.save(f"images/{stem}.{image.extension}", ContentFile(image.data))
    written.append(image_name)
    thumbnail = encode_thumbnail(validated)
    if thumbnail is None:
        return image_name, ""
    thumbnail_name = default_storage.save(
        f"thumbnails/{stem}.{thumbnail.extension}", ContentFile(thumbnail.data)
    )
    written.append(thumbnail_name)
    return image_name, thumbnail_name


def _record(
    validated: ValidatedImage,
    names: tuple[str, str],
    probabilities: np.ndarray,
    best_first: list[tuple[str, float]],
    *,
    answer: _ModelAnswer,
    latency_ms: float,
) -> Prediction:
    upload = Upload.objects.create(
        image=names[0],
        thumbnail=names[1],
        sha256=validated.sha256,
        original_name=validated.original_name,
        size_bytes=validated.size_bytes,
        width=validated.width,
        height=validated.height,
        format=validated.format,
    )
    label, confidence = best_first[0]
    return Prediction.objects.create(
        upload=upload,
        model_name=answer.name,
        model_dataset=answer.dataset,
        model_version=answer.version,
        model_accuracy=answer.accuracy,
        label=label,
        confidence=confidence,
        top_k=[{"label": name, "probability": probability} for name, probability in best_first],
        probabilities={
            name: float(p) for name, p in zip(answer.class_names, probabilities, strict=True)
        },
        inference_ms=answer.inference_ms,
        latency_ms=latency_ms,
    )
