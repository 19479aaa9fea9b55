"""Feedback on predictions: recording, live accuracy, the admin, export, recalibration."""

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from PIL import Image

from research import configs
from research.serving import model_dir
from uploads import services
from uploads.feedback import FeedbackError, class_folder_name, live_accuracy, record_feedback
from uploads.management.commands.recalibrate_predictions import (
    SCORE_KEPT,
    recalibrate,
    rescale_probabilities,
)
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


# ----------------------------------------------------------------------------- admin


def test_admin_lists_feedback_filterable_by_verdict_label_and_model(admin_client, upload_file):
    """The feedback list shows each verdict and filters by correctness, label and model."""
    confirmed = services.classify_upload(file=upload_file(), model_name="cifar10")
    corrected = services.classify_upload(file=upload_file(), model_name="fashion_mnist")
    record_feedback(prediction=confirmed, correct=True)
    record_feedback(prediction=corrected, label=_other_label(corrected))
    url = reverse("admin:uploads_feedback_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    assert "✓ right" in page.content.decode() and f"✗ is {_other_label(corrected)}" in (
        page.content.decode()
    )
    assert admin_client.get(url, {"correct__exact": "1"}).context["cl"].result_count == 1
    by_model = admin_client.get(url, {"prediction__model_name": "fashion_mnist"})
    assert [f.prediction for f in by_model.context["cl"].result_list] == [corrected]
    by_label = admin_client.get(url, {"label": _other_label(corrected)})
    assert by_label.context["cl"].result_count == 1
    assert admin_client.get(url, {"q": "nothing-like-this"}).context["cl"].result_count == 0


def test_admin_feedback_cannot_be_added_or_edited(admin_client, prediction):
    """Feedback comes from people through the site; staff see it read-only."""
    feedback = record_feedback(prediction=prediction, correct=True)
    assert admin_client.get(reverse("admin:uploads_feedback_add")).status_code == 403
    page = admin_client.get(reverse("admin:uploads_feedback_change", args=[feedback.pk]))
    assert page.status_code == 200
    assert 'name="label"' not in page.content.decode()


def test_admin_prediction_list_shows_the_latest_verdict_and_filters_on_it(
    admin_client, upload_file
):
    """The predictions list says right, wrong (with the label) or nothing, per latest feedback."""
    right, wrong, none = (
        services.classify_upload(file=upload_file(), model_name="cifar10") for _ in range(3)
    )
    record_feedback(prediction=right, label=_other_label(right))
    record_feedback(prediction=right, correct=True)
    record_feedback(prediction=wrong, label=_other_label(wrong))
    url = reverse("admin:uploads_prediction_changelist")
    page = admin_client.get(url).content.decode()
    assert "✓ right" in page and f"✗ is {_other_label(wrong)}" in page
    for verdict, expected in (("right", [right]), ("wrong", [wrong]), ("none", [none])):
        listed = admin_client.get(url, {"verdict": verdict}).context["cl"].result_list
        assert list(listed) == expected


def test_admin_prediction_page_shows_its_feedback_inline(admin_client, prediction):
    """A prediction's page lists its feedback inline, read-only."""
    record_feedback(prediction=prediction, label=_other_label(prediction))
    page = admin_client.get(reverse("admin:uploads_prediction_change", args=[prediction.pk]))
    assert page.status_code == 200
    assert "feedback-TOTAL_FORMS" in page.content.decode()
    assert f"✗ is {_other_label(prediction)}" in page.content.decode()


# ----------------------------------------------------------------------------- export


def _labelled(upload_file, image_bytes, model_name: str, labels: list[str | None]):
    """One prediction per entry, each of a different image: None confirms, a label corrects."""
    predictions = []
    for seed, label in enumerate(labels):
        data = image_bytes(seed=100 + seed)
        prediction = services.classify_upload(file=upload_file(data), model_name=model_name)
        if label is None:
            record_feedback(prediction=prediction, correct=True)
        else:
            record_feedback(prediction=prediction, label=label)
        predictions.append(prediction)
    return predictions


def test_export_writes_split_class_image_pngs_and_counts_them(tmp_path, upload_file, image_bytes):
    """Confirmed images go under the predicted label, corrected ones under the given label."""
    predictions = _labelled(upload_file, image_bytes, "cifar10", [None, "cat", "cat"])
    out = io.StringIO()
    call_command("export_feedback", str(tmp_path / "fb"), "--model", "cifar10", stdout=out)

    expected: dict[str, int] = {}
    for label in (predictions[0].label, "cat", "cat"):
        expected[label] = expected.get(label, 0) + 1
    found = {d.name: len(list(d.glob("*.png"))) for d in (tmp_path / "fb" / "train").iterdir()}
    assert found == expected
    assert f"3 image(s) of {len(expected)} class(es)" in out.getvalue()
    exported = next((tmp_path / "fb" / "train" / "cat").glob("*.png"))
    stored = Image.open(predictions[1].upload.image.path)
    if exported.name.endswith(predictions[2].upload.sha256[:20] + ".png"):
        stored = Image.open(predictions[2].upload.image.path)
    assert np.array_equal(np.asarray(Image.open(exported)), np.asarray(stored))


def test_export_uses_the_latest_verdict_and_moves_relabelled_images(
    tmp_path, upload_file, image_bytes
):
    """Re-exporting after a new verdict moves the image to its new class folder."""
    (prediction,) = _labelled(upload_file, image_bytes, "cifar10", ["dog"])
    call_command("export_feedback", str(tmp_path), "--model", "cifar10", stdout=io.StringIO())
    record_feedback(prediction=prediction, label="frog")
    out = io.StringIO()
    call_command("export_feedback", str(tmp_path), "--model", "cifar10", stdout=out)
    assert [p.parent.name for p in (tmp_path / "train").rglob("*.png")] == ["frog"]
    assert "1 re-labelled image(s) moved" in out.getvalue()


def test_export_names_folders_that_evaluate_maps_back_to_the_class(
    tmp_path, upload_file, image_bytes
):
    """'T-shirt/top' becomes the folder 'T-shirt_top', which research.evaluate reads as class 0."""
    from research.evaluation.metrics import label_image_folder

    _labelled(upload_file, image_bytes, "fashion_mnist", ["T-shirt/top"])
    call_command(
        "export_feedback", str(tmp_path), "--model", "fashion_mnist", "--split", "test",
        stdout=io.StringIO(),
    )  # fmt: skip
    assert [p.parent.name for p in (tmp_path / "test").rglob("*.png")] == ["T-shirt_top"]
    classes = configs.DATASETS["fashion_mnist"].class_names
    files, split = label_image_folder(tmp_path, classes, split="test")
    assert split == "test" and [label for _, label in files] == [0]


@pytest.mark.parametrize(
    ("name", "folder"),
    [("T-shirt/top", "T-shirt_top"), ("a\\b", "a_b"), (".hidden", "_hidden"), ("..", "_")],
)
def test_class_folder_names_are_safe(name, folder):
    """Separators and a leading dot never reach the file system."""
    assert class_folder_name(name) == folder


def test_export_refuses_an_unknown_model(tmp_path):
    """An unknown model name fails with the valid names, and writes nothing."""
    with pytest.raises(CommandError, match="Unknown model 'nope'; choose one of: cifar10"):
        call_command("export_feedback", str(tmp_path / "out"), "--model", "nope")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_split_that_is_not_a_folder_name(tmp_path):
    """A split like '../x' is refused instead of writing outside the folder."""
    with pytest.raises(CommandError, match="not a folder name"):
        call_command(
            "export_feedback", str(tmp_path / "o"), "--model", "cifar10", "--split", "../x"
        )


def test_feedback_round_trip_export_import_train_export_serve(tmp_path, upload_file, image_bytes):
    """Exported feedback imports beside original images, trains, exports and classifies."""
    from research import export, train
    from research.data import importers
    from research.serving.classifier import Classifier

    _labelled(upload_file, image_bytes, "cifar10", [None, "cat", "ship", None])
    folder = tmp_path / "cifar10-folder"
    classes = configs.DATASETS["cifar10"].class_names
    rng = np.random.default_rng(0)
    for name in classes:  # the "original data": two images of each class
        (folder / "train" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "train" / name / f"{i:04d}.jpg")
    call_command("export_feedback", str(folder), "--model", "cifar10", stdout=io.StringIO())
    exported = sorted(folder.glob("train/*/0-feedback-*.png"))
    assert len(exported) == 4

    data_dir = str(tmp_path / "tfds")
    info = importers.import_image_folder(
        folder, "cifar10", data_dir, validation_per_class=1, image_size=(32, 32)
    )
    assert info.class_names == classes
    assert info.splits == {"train": 10 + 4, "validation": 10}  # feedback stays in train
    import tensorflow_datasets as tfds

    imported = tfds.load("cifar10", split="train", data_dir=data_dir)
    labels = {ex["id"].decode(): int(ex["label"]) for ex in imported.as_numpy_iterator()}
    for path in exported:
        assert labels[path.relative_to(folder).as_posix()] == classes.index(path.parent.name)

    config = configs.get_config(
        "tiny", dataset="cifar10", data_dir=data_dir, max_steps=2, batch_size=4
    )
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 2
    export.export_model(tmp_path / "run", tmp_path / "model")
    served = Classifier.load(tmp_path / "model")
    probs = served.predict([Image.open(exported[0])])
    assert served.class_names == list(classes)
    assert probs.shape == (1, 10) and np.isclose(probs.sum(), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- recalibration


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, model_dirs) -> Path:
    """The tiny CIFAR-10 model, same version, re-exported at temperature 2.5 with a threshold."""
    from research.serving.classifier import Classifier

    tiny = Classifier.load(model_dirs["cifar10"])
    record = tiny.record.replace(temperature=2.5, unknown_threshold=0.15)
    return Classifier(tiny.model, record).export(tmp_path_factory.mktemp("calibrated") / "m")


def _softmax_reference(p: np.ndarray, t_old: float, t_new: float) -> np.ndarray:
    z = np.log(p) * t_old / t_new
    return np.exp(z) / np.exp(z).sum()


def test_rescaled_probabilities_match_a_numpy_reference():
    """softmax(log p * T_old / T_new), and from logits directly: the same numbers."""
    logits = np.array([2.0, -1.0, 0.5, 3.0])
    p_old = np.exp(logits / 1.3) / np.exp(logits / 1.3).sum()
    expected = np.exp(logits / 2.1) / np.exp(logits / 2.1).sum()
    np.testing.assert_allclose(rescale_probabilities(p_old, 1.3, 2.1), expected, rtol=1e-12)
    np.testing.assert_allclose(
        rescale_probabilities(p_old, 1.3, 2.1), _softmax_reference(p_old, 1.3, 2.1), rtol=1e-12
    )
    assert rescale_probabilities(np.array([0.0, 1.0]), 1.0, 2.0).tolist() == [0.0, 1.0]


def test_recalibration_rewrites_old_predictions_as_the_calibrated_model_would(
    settings, calibrated_dir, upload_file, image_bytes
):
    """Predictions made at T=1 get the calibrated model's own probabilities, top_k and flag."""
    from research.serving.classifier import Classifier

    datas = [image_bytes(seed=s) for s in (1, 2)]
    made = [services.classify_upload(file=upload_file(d), model_name="cifar10") for d in datas]
    stored = [dict(p.probabilities) for p in made]
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "cifar10": calibrated_dir}
    out = io.StringIO()
    call_command("recalibrate_predictions", "--model", "cifar10", stdout=out)
    assert "cifar10: updated 2 prediction(s) to T=2.5" in out.getvalue()

    calibrated = Classifier.load(calibrated_dir)
    names = calibrated.class_names
    for prediction, data, before in zip(made, datas, stored, strict=True):
        prediction.refresh_from_db()
        new = np.array([prediction.probabilities[n] for n in names])
        p_old = np.array([before[n] for n in names])
        np.testing.assert_allclose(new, _softmax_reference(p_old, 1.0, 2.5), rtol=1e-9)
        served = calibrated.predict([Image.open(io.BytesIO(data))])[0]
        np.testing.assert_allclose(new, served, atol=2e-6)
        assert prediction.temperature == 2.5
        assert prediction.label == names[int(np.argmax(new))]
        assert prediction.confidence == pytest.approx(new.max())
        assert [item["label"] for item in prediction.top_k] == [
            names[i] for i in np.argsort(-new, kind="stable")[: len(prediction.top_k)]
        ]
        assert prediction.unknown_score == pytest.approx(new.max())
        assert prediction.unknown == (new.max() < 0.15)


def test_recalibration_is_idempotent_and_dry_run_changes_nothing(
    settings, calibrated_dir, prediction
):
    """A dry run only counts; a second real run finds nothing to do."""
    before = dict(prediction.probabilities)
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "cifar10": calibrated_dir}
    out = io.StringIO()
    call_command("recalibrate_predictions", "--model", "cifar10", "--dry-run", stdout=out)
    assert "would update 1" in out.getvalue()
    prediction.refresh_from_db()
    assert prediction.probabilities == before and prediction.temperature == 1.0

    call_command("recalibrate_predictions", "--model", "cifar10", stdout=io.StringIO())
    prediction.refresh_from_db()
    once = (prediction.probabilities, prediction.confidence, prediction.unknown_score)
    out = io.StringIO()
    call_command("recalibrate_predictions", stdout=out)
    prediction.refresh_from_db()
    assert (prediction.probabilities, prediction.confidence, prediction.unknown_score) == once
    assert "cifar10: updated 0" in out.getvalue()


def test_recalibration_leaves_a_score_that_is_not_max_softmax_alone(
    settings, calibrated_dir, prediction
):
    """A stored unknown score other than the maximum probability (e.g. energy) is kept."""
    Prediction.objects.filter(pk=prediction.pk).update(unknown_score=-4.2, unknown=False)
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "cifar10": calibrated_dir}
    out = io.StringIO()
    call_command("recalibrate_predictions", "--model", "cifar10", stdout=out)
    prediction.refresh_from_db()
    assert (prediction.temperature, prediction.unknown_score, prediction.unknown) == (
        2.5,
        -4.2,
        False,
    )
    assert "1 kept an unknown score that is not max-softmax" in out.getvalue()


def test_recalibration_leaves_the_unknown_flag_of_a_record_scoring_otherwise(
    model_dirs, prediction
):
    """Under a record whose unknown score is not max-softmax, only probabilities change."""
    record = model_dir.describe(model_dirs["cifar10"]).replace(
        temperature=2.0, unknown_score="energy", unknown_threshold=-3.0
    )
    score, flag = prediction.unknown_score, prediction.unknown
    assert recalibrate(prediction, record) == SCORE_KEPT
    assert (prediction.temperature, prediction.unknown_score, prediction.unknown) == (
        2.0,
        score,
        flag,
    )


def test_recalibration_skips_predictions_of_other_versions(settings, calibrated_dir, prediction):
    """A temperature fitted to one version is not applied to another's predictions."""
    Prediction.objects.filter(pk=prediction.pk).update(model_version="19990101-step1")
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "cifar10": calibrated_dir}
    out = io.StringIO()
    call_command("recalibrate_predictions", "--model", "cifar10", stdout=out)
    assert "updated 0" in out.getvalue() and "1 by other versions left" in out.getvalue()
    call_command("recalibrate_predictions", "--all-versions", stdout=io.StringIO())
    prediction.refresh_from_db()
    assert prediction.temperature == 2.5


def test_recalibration_refuses_an_unknown_model():
    """An unknown --model fails with the valid names."""
    with pytest.raises(CommandError, match="choose one of: cifar10, fashion_mnist"):
        call_command("recalibrate_predictions", "--model", "nope")
