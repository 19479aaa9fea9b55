"""The one cross-cutting action: validate uploads, classify them, record what happened.

Also what the pages and the API show about one prediction beside its answer: the pixels the
model saw, where it looked (saliency, computed on request and cached), and how the input
compares with what the model expects.
"""

import hashlib
import io
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image

from research.serving.artifacts import CALIBRATION_DIR, RELIABILITY_FILE
from uploads import classifiers, metrics
from uploads.deferred import after_response
from uploads.feedback import live_accuracy
from uploads.images import (
    EncodedImage,
    UploadRejected,
    ValidatedImage,
    check_byte_size,
    clean_original_name,
    encode_for_storage,
    encode_thumbnail,
    read_validated_image,
    request_pixel_budget,
    thumbnail_extension,
)
from uploads.models import Owner, Prediction, Upload
from uploads.storage import StorageUnavailable

logger = logging.getLogger(__name__)

# Encode the copies to store beside the forward pass (per process; a few images at a time).
_encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-encoder")
MODEL_INPUTS_DIR = "model_inputs"  # the exact uint8 pixels the model saw, as PNG
SALIENCY_DIR = "saliency"  # overlays, written on first request


@dataclass(frozen=True)
class _ModelAnswer:
    """Who answered and how: shared by every prediction of one request."""

    name: str
    dataset: str
    version: str
    accuracy: float | None
    class_names: list[str]
    temperature: float
    has_threshold: bool
    set_coverage: float | None  # None: the model has no prediction sets
    inference_ms: float


def classify_uploads(
    *,
    files: Sequence[UploadedFile],
    model_name: str | None = None,
    top_k: int | None = None,
    owner: Owner | None = None,
    commit_with: Callable[[], None] | None = None,
) -> list[Prediction]:
    """Validate, classify and store uploaded images for `owner`, all or nothing.

    Every file is validated before anything is written; the stored image is the re-encoded
    pixels under a generated name (never the uploaded bytes). Uploads and predictions are
    created in one transaction, with `commit_with` (what the owner's access depends on: the
    visitor's session), and the files written for them are deleted if any of it fails.
    Raises UploadRejected (a human message, a code and an HTTP status) for bad input,
    classifiers.ModelUnavailableError when the model cannot be loaded, and StorageUnavailable
    when the disk refuses a file. Without an owner the rows are reachable by staff only.
    """
    started = time.perf_counter()
    encodings: list[Future[EncodedImage]] = []

    def start_encoding(images: list[ValidatedImage]) -> None:
        # Pillow's encoder and XLA both release the GIL: the copy to store is encoded while
        # the model runs.
        encodings.extend(_encoders.submit(encode_for_storage, image) for image in images)

    batch = _classify(files=files, model_name=model_name, top_k=top_k, on_decoded=start_encoding)
    owner = owner or Owner()
    written: list[str] = []
    try:
        try:
            stored = [
                _store_files(validated, pixels, encoding.result(), written)
                for validated, pixels, encoding in zip(
                    batch.images, batch.model_inputs, encodings, strict=True
                )
            ]
        except OSError as err:
            logger.error("Storing an upload failed: %s", err)
            raise StorageUnavailable(err) from err
        stored_names = [names for names, _ in stored]
        latency_ms = (time.perf_counter() - started) * 1000 / len(batch.images)
        with transaction.atomic():
            predictions = []
            for index, names in enumerate(stored_names):
                prediction = _build(batch, index, names, owner=owner, latency_ms=latency_ms)
                prediction.upload.save()
                prediction.upload = prediction.upload  # its id, and no query to read it back
                prediction.save()
                predictions.append(prediction)
            if commit_with is not None:
                commit_with()
        for _, write_derived_files in stored:  # the rows are in: their derived files may follow
            after_response(write_derived_files)
        _count(predictions)
        return predictions
    except BaseException:
        for name in written:
            default_storage.delete(name)
        raise


def classify_upload(
    *,
    file: UploadedFile,
    model_name: str | None = None,
    top_k: int | None = None,
    owner: Owner | None = None,
    commit_with: Callable[[], None] | None = None,
) -> Prediction:
    """Validate, classify and store one uploaded image (see classify_uploads)."""
    return classify_uploads(
        files=[file], model_name=model_name, top_k=top_k, owner=owner, commit_with=commit_with
    )[0]


def classify_without_storing(
    *, file: UploadedFile, model_name: str | None = None, top_k: int | None = None
) -> Prediction:
    """Validate and classify one image and store nothing (no row, no file): for a live camera.

    Returns an unsaved Prediction (its unsaved Upload describes the image) with the same answer
    fields as a stored one; raises as classify_uploads. Nothing being stored, a JPEG is decoded
    at a reduced DCT scale still DRAFT_FACTOR times the model's input size (see _classify).
    """
    started = time.perf_counter()
    batch = _classify(files=[file], model_name=model_name, top_k=top_k, for_storage=False)
    latency_ms = (time.perf_counter() - started) * 1000
    prediction = _build(batch, 0, ("", ""), owner=Owner(), latency_ms=latency_ms)
    prediction.created_at = timezone.now()
    _count([prediction])
    return prediction


def _count(predictions: Sequence[Prediction]) -> None:
    """Count the answers given, for /metrics."""
    if predictions:
        metrics.count_predictions(
            predictions[0].model_name,
            [prediction.label for prediction in predictions],
            [prediction.unknown for prediction in predictions],
        )


@dataclass(frozen=True)
class _Classified:
    """One request's validated images and what the model said about them."""

    images: list[ValidatedImage]
    model_inputs: np.ndarray
    probabilities: np.ndarray
    ranked: list[list[tuple[str, float]]]
    sets: list[list[str]]
    verdicts: list["_Verdict"]
    answer: _ModelAnswer


# An image that is not stored is decoded (JPEGs only) at least this many times the model's
# input size: the bilinear shrink to the input then differs from a full decode's by at most a
# level or so (benchmarks.serving.web's 1 MP JPEG: at most 1 of 255, 0.07 on average).
DRAFT_FACTOR = 4


def _classify(
    *,
    files: Sequence[UploadedFile],
    model_name: str | None,
    top_k: int | None,
    for_storage: bool = True,
    on_decoded: Callable[[list[ValidatedImage]], None] | None = None,
) -> _Classified:
    """Validate every file, then classify them all in one batch; writes nothing. Unless the
    images are to be stored, JPEGs are decoded at a reduced scale (DRAFT_FACTOR). `on_decoded`
    is called with the images once all are decoded, before the model runs."""
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
        served = classifiers.get_served(model_name)  # one version answers the whole request
    except classifiers.UnknownModelError as err:
        raise UploadRejected(str(err), code="unknown_model") from err
    classifier = served.classifier
    top_k = _check_top_k(top_k, classifier.record.num_classes)

    draft_side = None if for_storage else DRAFT_FACTOR * max(classifier.record.image_shape[:2])
    # An answer that stores nothing needs no digest of the bytes (the stored row's sha256).
    images = [_read(file, draft_side=draft_side, digest=for_storage) for file in files]
    if on_decoded is not None:
        on_decoded(images)
    inference_started = time.perf_counter()
    # The decoded images as they came: the seam alone makes the model's input from them. The
    # input is kept (a few KB) so the pages can show exactly what the model saw.
    model_inputs = np.stack([classifier.model_input(validated.image) for validated in images])
    # Through the model's batcher: concurrent requests share one forward pass.
    classification = served.batcher.submit(model_inputs)
    probabilities = np.asarray(classification.probs)
    ranked = classifier.top_k(probabilities, top_k)
    inference_ms = (time.perf_counter() - inference_started) * 1000 / len(images)
    record = classifier.record
    answer = _ModelAnswer(
        name=model_name,
        dataset=record.dataset,
        version=record.version,
        accuracy=record.eval_accuracy,
        class_names=list(record.class_names),
        temperature=float(record.temperature),
        has_threshold=record.unknown_threshold is not None,
        set_coverage=record.set_coverage if record.set_threshold is not None else None,
        inference_ms=inference_ms,
    )
    verdicts = [
        _Verdict(score=_finite_or_none(score), unknown=bool(unknown))
        for score, unknown in zip(classification.scores, classification.unknown, strict=True)
    ]
    sets = classifier.prediction_sets(probabilities)
    return _Classified(images, model_inputs, probabilities, ranked, sets, verdicts, answer)


def delete_uploads(*, uploads: QuerySet[Upload]) -> int:
    """Delete uploads with their predictions, and their files once the deletion commits
    (the model inputs and saliency overlays derived from them included)."""
    names = [name for pair in uploads.values_list("image", "thumbnail") for name in pair if name]
    names += [
        derived
        for image in uploads.values_list("image", flat=True)
        for derived in (_model_input_name(image), *_saliency_names(image))
    ]
    with transaction.atomic():
        count, _ = Upload.objects.filter(pk__in=uploads.values("pk")).delete()
        transaction.on_commit(lambda: [default_storage.delete(name) for name in names])
    return count


def purge_uploads(*, older_than_days: int, dry_run: bool = False) -> "PurgeResult":
    """Delete the uploads (rows and every file) created more than `older_than_days` days ago.

    With dry_run, count what would go and delete nothing.
    """
    if older_than_days < 0:
        raise ValueError("The number of days must be 0 or more.")
    cutoff = timezone.now() - timedelta(days=older_than_days)
    old = Upload.objects.filter(created_at__lt=cutoff)
    count = old.count()
    if not dry_run and count:
        delete_uploads(uploads=old)
    return PurgeResult(uploads=count, cutoff=cutoff, dry_run=dry_run)


@dataclass(frozen=True)
class PurgeResult:
    uploads: int
    cutoff: datetime
    dry_run: bool


MEDIA_KINDS = ("images", "thumbnails", MODEL_INPUTS_DIR, SALIENCY_DIR)
_MEDIA_USAGE_CACHE_KEY = "uploads:media-usage"
MEDIA_USAGE_CACHE_SECONDS = 300


@dataclass(frozen=True)
class MediaUsage:
    """Files and bytes under MEDIA_ROOT, per top-level folder (kind) and in all."""

    kinds: dict[str, tuple[int, int]]  # kind -> (files, bytes)

    @property
    def files(self) -> int:
        return sum(files for files, _ in self.kinds.values())

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.kinds.values())


def measure_media_usage(*, fresh: bool = False) -> MediaUsage:
    """Count the files and bytes under MEDIA_ROOT by kind (one directory walk, no file opened),
    cached for a few minutes so the admin page stays cheap."""
    if not fresh:
        cached = cache.get(_MEDIA_USAGE_CACHE_KEY)
        if cached is not None:
            return cached
    kinds = {kind: (0, 0) for kind in MEDIA_KINDS}
    root = Path(settings.MEDIA_ROOT)
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                kinds[entry.name] = _measure_directory(entry.path)
            elif entry.is_file(follow_symlinks=False):
                files, size = kinds.get("other", (0, 0))
                kinds["other"] = (files + 1, size + entry.stat().st_size)
    usage = MediaUsage(kinds=kinds)
    cache.set(_MEDIA_USAGE_CACHE_KEY, usage, MEDIA_USAGE_CACHE_SECONDS)
    return usage


def _measure_directory(path: str) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(directory, name), follow_symlinks=False).st_size
            except FileNotFoundError:  # deleted meanwhile
                continue
            files += 1
    return files, size


@dataclass(frozen=True)
class RejectedFile:
    """A file of a batch that could not be classified, and why, in words."""

    name: str
    reason: str


def sort_files(*, files: Sequence[UploadedFile]) -> tuple[list[UploadedFile], list[RejectedFile]]:
    """Split a batch into the files that are valid images and those that are not (each named
    with its reason), so the good ones are classified and the bad ones reported."""
    accepted, rejected = [], []
    for file in files:
        try:
            # One image at a time, outside the request's pixel budget: classify_uploads
            # charges the accepted files against it when it decodes them again.
            with request_pixel_budget(sys.maxsize):
                _read(file)
        except UploadRejected as err:
            rejected.append(RejectedFile(name=clean_original_name(file.name), reason=err.message))
        else:
            file.seek(0)
            accepted.append(file)
    return accepted, rejected


def _check_top_k(top_k: int | None, num_classes: int) -> int:
    if top_k is None:
        return min(settings.CLASSIFIER_TOP_K, num_classes)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UploadRejected(
            f"top_k must be a whole number from 1 to {num_classes}.", code="invalid_top_k"
        )
    return min(top_k, num_classes)


def _read(
    file: UploadedFile, *, draft_side: int | None = None, digest: bool = True
) -> ValidatedImage:
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
        draft_side=draft_side,
        digest=digest,
    )


def _store_files(
    validated: ValidatedImage, model_input: np.ndarray, image: EncodedImage, written: list[str]
) -> tuple[tuple[str, str], Callable[[], None]]:
    """Save the re-encoded image under a generated name and note it; return the image's and
    the thumbnail's names, and the task that writes the derived files (the thumbnail, and the
    model's input under a name derived from the image's), which the answer does not wait for."""
    stem = f"{timezone.now():%Y/%m}/{uuid.uuid4().hex}"
    image_name = default_storage.save(f"images/{stem}.{image.extension}", ContentFile(image.data))
    written.append(image_name)
    extension = thumbnail_extension(validated)
    thumbnail_name = f"thumbnails/{stem}.{extension}" if extension else ""

    def write_derived_files() -> None:
        _save_derived(_model_input_name(image_name), encode_png(model_input))
        thumbnail = encode_thumbnail(validated) if thumbnail_name else None
        if thumbnail is not None:
            _save_derived(thumbnail_name, thumbnail.data)

    return (image_name, thumbnail_name), write_derived_files


def _save_derived(name: str, data: bytes) -> None:
    """Write a file derived from a stored image under its own name (one copy only)."""
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # another writer got there first
        default_storage.delete(saved)


def _build(
    batch: _Classified,
    index: int,
    names: tuple[str, str],
    *,
    owner: Owner,
    latency_ms: float,
) -> Prediction:
    """The unsaved Upload and Prediction of one image of a classified batch."""
    validated, answer, verdict = batch.images[index], batch.answer, batch.verdicts[index]
    upload = Upload(
        image=names[0],
        thumbnail=names[1],
        sha256=validated.sha256,
        original_name=validated.original_name,
        size_bytes=validated.size_bytes,
        width=validated.width,
        height=validated.height,
        format=validated.format,
        owner_key=owner.key,
        user_id=owner.user_id,
    )
    best_first = batch.ranked[index]
    label, confidence = best_first[0]
    return Prediction(
        upload=upload,
        model_name=answer.name,
        model_dataset=answer.dataset,
        model_version=answer.version,
        model_accuracy=answer.accuracy,
        label=label,
        confidence=confidence,
        top_k=[{"label": name, "probability": probability} for name, probability in best_first],
        probabilities={
            name: float(p)
            for name, p in zip(answer.class_names, batch.probabilities[index], strict=True)
        },
        temperature=answer.temperature,
        unknown_score=verdict.score,
        unknown=verdict.unknown if answer.has_threshold else None,
        prediction_set=batch.sets[index] if answer.set_coverage is not None else [],
        set_coverage=answer.set_coverage,
        inference_ms=answer.inference_ms,
        latency_ms=latency_ms,
    )


@dataclass(frozen=True)
class _Verdict:
    """The "unknown" score of one image and whether it fell below the model's threshold."""

    score: float | None
    unknown: bool


@dataclass(frozen=True)
class InputReport:
    """What the model expects, and how one prediction's input differs from it."""

    expects: str
    warnings: list[str]
    input_shape: tuple[int, int, int]  # height, width, channels of the model's input
    suggests_inverting: bool = False  # light background where the model expects a dark one


def get_model_input_png(*, prediction: Prediction) -> bytes:
    """The exact pixels the model saw, as a PNG of the model's input size.

    Written just after the answer is sent (uploads.deferred); until then, and for older
    predictions, made again from the stored image by the model (the same conversion, from the
    re-encoded copy). Raises classifiers.UnknownModelError when the model is no longer
    configured, and ModelUnavailableError when it cannot be loaded.
    """
    try:
        with default_storage.open(_model_input_name(prediction.upload.image.name), "rb") as file:
            return file.read()
    except FileNotFoundError:
        pass
    classifier = classifiers.get_classifier(prediction.model_name)
    return encode_png(classifier.model_input(_open_stored_image(prediction.upload)))


def get_saliency_png(*, prediction: Prediction) -> bytes:
    """The saliency overlay over the stored image, at its size; computed once, then cached.

    The file lives under MEDIA_ROOT/saliency/, named by the upload and the model version, so a
    new version of the model draws a new map. Raises as get_model_input_png.
    """
    from research.serving import saliency

    classifier = classifiers.get_classifier(prediction.model_name)
    name = _saliency_name(prediction.upload.image.name, prediction.model_name, classifier.version)
    try:
        with default_storage.open(name, "rb") as file:
            return file.read()
    except FileNotFoundError:
        pass
    image = _open_stored_image(prediction.upload)
    started = time.perf_counter()
    heatmap = classifier.explain(image)
    buffer = io.BytesIO()
    saliency.overlay(image, heatmap).save(buffer, "PNG", compress_level=3)
    logger.info(
        "Saliency for prediction %s in %.0f ms",
        prediction.pk,
        1000 * (time.perf_counter() - started),
    )
    try:
        saved = default_storage.save(name, ContentFile(buffer.getvalue()))
    except OSError as err:  # a cache: answer without keeping it (the storage left nothing)
        logger.warning("Saliency for prediction %s not cached: %s", prediction.pk, err)
        return buffer.getvalue()
    if saved != name:  # another request wrote it meanwhile: keep one copy
        default_storage.delete(saved)
    return buffer.getvalue()


def describe_input(*, prediction: Prediction) -> InputReport | None:
    """What the prediction's model expects and any warnings about this input; None when the
    model is no longer configured or not installed (the page then leaves the section out)."""
    from research.serving import expectations

    try:
        info = classifiers.get_model_info(prediction.model_name)
    except classifiers.UnknownModelError:
        return None
    if info.record is None:
        return None
    try:
        png = get_model_input_png(prediction=prediction)
        pixels = _decode_png(png, channels=info.record.image_shape[-1])
    except (classifiers.ModelUnavailableError, OSError) as err:  # OSError: image gone or bad
        logger.warning("No model input for prediction %s: %s", prediction.pk, err)
        return None
    return InputReport(
        expects=expectations.expects(info.record),
        warnings=list(expectations.check(info.record, pixels)),
        input_shape=info.record.image_shape,
        suggests_inverting=expectations.suggests_inverting(info.record, pixels),
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, 1 or 3] -> PNG bytes (mode L or RGB), lossless."""
    pixels = np.asarray(pixels, np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _decode_png(data: bytes, *, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"), np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def _open_stored_image(upload: Upload) -> Image.Image:
    """The stored (validated, re-encoded, upright) image, decoded."""
    with default_storage.open(upload.image.name, "rb") as file:
        image = Image.open(io.BytesIO(file.read()))
        image.load()
    return image


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _derived_stem(image_name: str) -> str:
    """'images/2026/11/<hex>.jpg' -> '2026/11/<hex>': the stem files derived from it share."""
    path = PurePosixPath(image_name)
    parts = path.with_suffix("").parts
    return "/".join(parts[1:] if parts[0] == "images" and len(parts) > 1 else parts)


def _model_input_name(image_name: str) -> str:
    return f"{MODEL_INPUTS_DIR}/{_derived_stem(image_name)}.png"


def _saliency_name(image_name: str, model_name: str, version: str) -> str:
    model = hashlib.sha256(f"{model_name}\0{version}".encode()).hexdigest()[:16]
    return f"{SALIENCY_DIR}/{_derived_stem(image_name)}/{model}.png"


def _saliency_names(image_name: str) -> list[str]:
    """Every cached overlay of one upload (one per model version that drew one)."""
    directory = f"{SALIENCY_DIR}/{_derived_stem(image_name)}"
    try:
        _, files = default_storage.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [f"{directory}/{name}" for name in files]


# Where a model directory may hold its reliability diagram: beside MODEL_CARD.md, or where
# `python -m research.calibrate` writes it by default.
RELIABILITY_DIAGRAMS = (RELIABILITY_FILE, f"{CALIBRATION_DIR}/{RELIABILITY_FILE}")


@dataclass(frozen=True)
class ModelSummary:
    """What a model's page says: what it expects, how accurate it is, how it answers."""

    info: classifiers.ModelInfo
    expects: str
    accuracy: float | None
    accuracy_split: str  # the split the accuracy was measured on ('validation', 'test')
    accuracy_count: int | None
    live_accuracy: float | None  # on predictions people confirmed or corrected
    feedback_count: int
    has_reliability_diagram: bool

    @property
    def temperature(self) -> float | None:
        return self.info.record.temperature if self.info.record else None

    @property
    def unknown_threshold(self) -> float | None:
        return self.info.record.unknown_threshold if self.info.record else None

    @property
    def unknown_score(self) -> str:
        """Which "unknown" score the threshold applies to: 'max-softmax', 'energy', ..."""
        return self.info.record.unknown_score.replace("_", "-") if self.info.record else ""


def summarize_model(*, name: str) -> ModelSummary:
    """Describe a configured model for its page, without loading it; raises
    classifiers.UnknownModelError for a name that is not configured."""
    from research.serving import expectations

    info = classifiers.get_model_info(name)
    record = info.record
    live, count = live_accuracy(name)
    metrics = record.metrics if record else {}
    return ModelSummary(
        info=info,
        expects=expectations.expects(record) if record else "",
        accuracy=info.accuracy,
        accuracy_split=str(metrics.get("eval_split") or ""),
        accuracy_count=metrics.get("eval_count"),
        live_accuracy=live,
        feedback_count=count,
        has_reliability_diagram=find_reliability_diagram(name=name) is not None,
    )


def find_reliability_diagram(*, name: str) -> Path | None:
    """The model's reliability diagram PNG, if its directory ships one; raises
    classifiers.UnknownModelError for a name that is not configured."""
    directory = classifiers.get_model_dir(name)
    return next((directory / n for n in RELIABILITY_DIAGRAMS if (directory / n).is_file()), None)
