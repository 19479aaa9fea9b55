"""uploads.services.classify_uploads: validate, classify, store, all or nothing."""

import io

import numpy as np
import pytest
from PIL import Image

from uploads import classifiers, services
from uploads.images import UploadRejected
from uploads.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def test_classify_upload_records_upload_and_prediction(upload_file, image_bytes, media_files):
    """One upload yields one Upload, one Prediction and one stored file."""
    data = image_bytes("PNG", size=(32, 32))
    prediction = services.classify_upload(file=upload_file(data, name="cat.png"))

    upload = prediction.upload
    assert (Upload.objects.count(), Prediction.objects.count()) == (1, 1)
    assert upload.original_name == "cat.png"
    assert (upload.width, upload.height, upload.format) == (32, 32, "PNG")
    assert upload.size_bytes == len(data)
    assert len(upload.sha256) == 64
    # The image, and the exact pixels the model saw (for the result page's model's-eye view).
    assert sorted(p.relative_to(p.parents[3]).as_posix() for p in media_files()) == sorted(
        [upload.image.name, f"model_inputs/{upload.image.name[len('images/') : -4]}.png"]
    )
    assert upload.image.name.startswith("images/") and "cat" not in upload.image.name


def test_prediction_matches_the_classifier(upload_file, image_bytes):
    """The stored label, confidence and probabilities are the classifier's for that image."""
    data = image_bytes("PNG", size=(32, 32), seed=7)
    prediction = services.classify_upload(file=upload_file(data), top_k=3)

    classifier = classifiers.get_classifier("cifar10")
    expected = classifier.predict([Image.open(io.BytesIO(data))])[0]
    best = int(np.argmax(expected))
    assert prediction.label == classifier.class_names[best]
    assert prediction.confidence == pytest.approx(float(expected[best]), abs=1e-5)
    assert [item["label"] for item in prediction.top_k] == [
        classifier.class_names[i] for i in np.argsort(-expected, kind="stable")[:3]
    ]
    assert [(item["label"], item["probability"]) for item in prediction.top_k] == (
        classifier.top_k(expected[None], 3)[0]
    )
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_prediction_names_the_model_version(upload_file):
    """A prediction records the model name, dataset, version and accuracy that made it."""
    prediction = services.classify_upload(file=upload_file(), model_name="fashion_mnist")
    classifier = classifiers.get_classifier("fashion_mnist")
    assert prediction.model_name == "fashion_mnist"
    assert prediction.model_dataset == "fashion_mnist"
    assert prediction.model_version == classifier.version
    assert prediction.model_accuracy == pytest.approx(classifier.record.eval_accuracy)
    assert prediction.label in classifier.class_names
    assert prediction.latency_ms >= prediction.inference_ms > 0


def test_default_model_comes_from_settings(upload_file, settings):
    """Without a model name the service uses CLASSIFIER_DEFAULT_MODEL."""
    settings.CLASSIFIER_DEFAULT_MODEL = "fashion_mnist"
    assert services.classify_upload(file=upload_file()).model_name == "fashion_mnist"


def test_top_k_is_capped_at_the_number_of_classes(upload_file):
    """Asking for more classes than the model has returns all of them."""
    prediction = services.classify_upload(file=upload_file(), top_k=50)
    assert len(prediction.top_k) == 10


@pytest.mark.parametrize("top_k", [0, -1, True])
def test_bad_top_k_is_rejected(upload_file, top_k):
    """top_k must be a positive whole number."""
    with pytest.raises(UploadRejected) as excinfo:
        services.classify_upload(file=upload_file(), top_k=top_k)
    assert excinfo.value.code == "invalid_top_k"


def test_unknown_model_is_rejected_with_the_valid_names(upload_file):
    """An unknown model name is a 400 listing the configured models."""
    with pytest.raises(UploadRejected) as excinfo:
        services.classify_upload(file=upload_file(), model_name="imagenet")
    assert excinfo.value.code == "unknown_model"
    assert "cifar10" in excinfo.value.message and "fashion_mnist" in excinfo.value.message


def test_missing_model_directory_is_a_clear_error(upload_file, settings, tmp_path, media_files):
    """A configured model with no directory raises ModelUnavailableError and stores nothing."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "nowhere"}
    with pytest.raises(classifiers.ModelUnavailableError) as excinfo:
        services.classify_upload(file=upload_file())
    assert str(tmp_path / "nowhere") in str(excinfo.value)
    assert "not available" in excinfo.value.public_message
    assert Upload.objects.count() == 0 and media_files() == []


def test_several_files_are_classified_in_one_call(upload_file, image_bytes):
    """classify_uploads stores one prediction per file, in order."""
    files = [upload_file(image_bytes(seed=i), name=f"{i}.png") for i in range(3)]
    predictions = services.classify_uploads(files=files)
    assert [p.upload.original_name for p in predictions] == ["0.png", "1.png", "2.png"]
    assert Prediction.objects.count() == 3


def test_one_bad_file_rejects_the_whole_request(upload_file, media_files):
    """If any file is invalid, nothing of the request is stored."""
    files = [upload_file(), upload_file(b"not an image", name="bad.png")]
    with pytest.raises(UploadRejected):
        services.classify_uploads(files=files)
    assert Upload.objects.count() == 0 and media_files() == []


def test_failed_transaction_removes_written_files(upload_file, media_files, monkeypatch):
    """When the database write fails, the stored image files are deleted."""

    def fail(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(Prediction, "save", fail)
    with pytest.raises(RuntimeError):
        services.classify_upload(file=upload_file(image_bytes_large()))
    assert Upload.objects.count() == 0
    assert media_files() == []


def test_large_images_get_a_thumbnail(upload_file, image_bytes):
    """Images larger than the thumbnail size get a small JPEG copy for listings."""
    prediction = services.classify_upload(
        file=upload_file(image_bytes("JPEG", size=(800, 600)), name="big.jpg")
    )
    upload = prediction.upload
    assert upload.thumbnail.name.startswith("thumbnails/")
    with upload.thumbnail.open("rb") as handle, Image.open(handle) as thumbnail:
        assert max(thumbnail.size) == 320


def test_delete_uploads_removes_rows_and_files(
    upload_file, media_files, django_capture_on_commit_callbacks
):
    """Deleting uploads deletes their predictions and, after commit, their files."""
    services.classify_upload(file=upload_file(image_bytes_large()))
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_uploads(uploads=Upload.objects.all())
    assert Prediction.objects.count() == 0 and media_files() == []


def image_bytes_large() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()
