"""Answers people can trust, on the web: "unknown", saliency, the model's-eye view, feedback,
a model's page."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from research.serving import expectations, model_dir
from research.serving.classifier import Classifier
from uploads import classifiers, services
from uploads.models import Feedback, Prediction

from .conftest import encode_image, make_image

pytestmark = pytest.mark.django_db

NOT_SURE = "None of the classes I know"
# Far outside any score's range: every image is "unknown" under the first, none under the second.
ALWAYS_UNKNOWN, NEVER_UNKNOWN = 1e9, -1e9


def copy_model(source: Path, destination: Path, **record_changes) -> Path:
    """A copy of an exported model whose serving record has `record_changes`."""
    shutil.copytree(source, destination)
    directory = model_dir.find_checkpoints(destination)
    for step in model_dir.list_steps(directory):
        path = model_dir.meta_path(directory, step)
        meta = json.loads(path.read_text())
        meta.update(record_changes)
        path.write_text(json.dumps(meta))
    return destination


@pytest.fixture(scope="session")
def threshold_model_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny CIFAR-10 model with a threshold every image falls below, and one none does."""
    root = tmp_path_factory.mktemp("threshold-models")
    return {
        "strict": copy_model(tiny_model_dir, root / "strict", unknown_threshold=ALWAYS_UNKNOWN),
        "lenient": copy_model(tiny_model_dir, root / "lenient", unknown_threshold=NEVER_UNKNOWN),
    }


@pytest.fixture
def threshold_models(settings, threshold_model_dirs) -> None:
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, **threshold_model_dirs}


@pytest.fixture
def api_client(client) -> APIClient:
    """An API client of the same visitor as `client` (they share the session cookie)."""
    api = APIClient()
    api.cookies = client.cookies
    return api


def predict(client, upload_file, **fields) -> dict:
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file(), **fields})
    assert response.status_code == 201, response.content
    return response.json()


def png_size(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.size


# ----------------------------------------------------------------------------- unknown


@pytest.mark.parametrize(("model", "unknown"), [("strict", True), ("lenient", False)])
def test_api_unknown_flag_follows_the_stored_threshold(
    api_client, upload_file, threshold_models, model, unknown
):
    """The API's "unknown" is the stored threshold's verdict on the stored score."""
    body = predict(api_client, upload_file, model=model)
    assert body["unknown"] is unknown
    assert isinstance(body["unknown_score"], float)
    prediction = Prediction.objects.get(pk=body["id"])
    assert (prediction.unknown, prediction.unknown_score) == (unknown, body["unknown_score"])
    listed = api_client.get(reverse("uploads:api-predictions")).json()["results"][0]
    assert (listed["unknown"], listed["unknown_score"]) == (unknown, body["unknown_score"])


def test_api_unknown_is_null_for_a_model_without_a_threshold(api_client, upload_file):
    """A model with no threshold never says "unknown": the flag is null, the score is kept."""
    body = predict(api_client, upload_file, model="cifar10")
    assert body["unknown"] is None
    assert 0 <= body["unknown_score"] <= 1  # the calibrated max-softmax
    assert set(body) >= {"label", "confidence", "top_k", "model", "image"}


def test_prediction_stores_the_temperature_it_was_made_at(upload_file, threshold_models, owner):
    """Each prediction keeps the temperature of the record that made it."""
    prediction = services.classify_upload(file=upload_file(), model_name="strict", owner=owner)
    assert prediction.temperature == classifiers.get_classifier("strict").record.temperature


def test_result_page_says_not_sure_and_still_shows_the_candidates(
    client, upload_file, threshold_models
):
    """An unknown image's page says "Not sure" and still lists the top classes."""
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "strict"}, follow=True
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert NOT_SURE in html
    assert html.count('class="bar-meter"') == 5


def test_results_page_says_not_sure_for_each_unknown_image(client, upload_file, threshold_models):
    """The multi-image results page marks every unknown answer."""
    files = [upload_file(), upload_file()]
    response = client.post(
        reverse("uploads:classify"), {"images": files, "model": "strict"}, follow=True
    )
    assert response.content.decode().count(NOT_SURE) == 2


def test_known_answer_does_not_say_not_sure(client, upload_file, threshold_models):
    """Above the threshold the page answers plainly."""
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "lenient"}, follow=True
    )
    assert NOT_SURE not in response.content.decode()


# ----------------------------------------------------------------------------- saliency


def test_saliency_is_a_png_of_the_original_size_served_from_cache_the_second_time(
    api_client, upload_file, image_bytes, monkeypatch, settings
):
    """GET saliency.png: the stored image's size; computed once, then read from the cache."""
    body = predict(api_client, upload_file, image=upload_file(image_bytes(size=(48, 40))))
    url = reverse("uploads:api-saliency", args=[body["id"]])
    calls = []
    explain = Classifier.explain
    monkeypatch.setattr(
        Classifier, "explain", lambda self, image: calls.append(1) or explain(self, image)
    )

    first = api_client.get(url)
    second = api_client.get(url)

    assert first.status_code == second.status_code == 200
    assert first["Content-Type"] == "image/png"
    assert png_size(first.content) == ("PNG", (48, 40))
    assert second.content == first.content
    assert len(calls) == 1
    assert len(list((Path(settings.MEDIA_ROOT) / "saliency").rglob("*.png"))) == 1


def test_saliency_is_not_computed_during_classification(api_client, upload_file, monkeypatch):
    """Classifying never draws a saliency map (it waits for its own request)."""
    monkeypatch.setattr(Classifier, "explain", lambda self, image: pytest.fail("explained"))
    predict(api_client, upload_file)


def test_saliency_of_an_unknown_prediction_is_a_json_404(api_client):
    """No such prediction: 404 with the API's error shape, even for an image client."""
    response = api_client.get(reverse("uploads:api-saliency", args=[999]), HTTP_ACCEPT="image/png")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_saliency_of_a_model_no_longer_served_is_a_404(api_client, upload_file, settings):
    """A prediction whose model left the configuration: 404 that says so, not a 500."""
    body = predict(api_client, upload_file, model="fashion_mnist")
    settings.CLASSIFIER_MODELS = {"cifar10": settings.CLASSIFIER_MODELS["cifar10"]}
    response = api_client.get(reverse("uploads:api-saliency", args=[body["id"]]))
    assert response.status_code == 404
    assert response.json()["code"] == "model_gone"


def test_a_prediction_whose_image_is_gone_gets_404s_and_a_page(
    client, api_client, upload_file, settings, owner
):
    """Stored files deleted behind the site's back: the images 404, the page still answers."""
    prediction = services.classify_upload(file=upload_file(), owner=owner)
    for path in Path(settings.MEDIA_ROOT).rglob("*.png"):
        path.unlink()
    for name in ("uploads:api-saliency", "uploads:api-model-input"):
        response = api_client.get(reverse(name, args=[prediction.pk]))
        assert response.status_code == 404 and response.json()["code"] == "image_gone"
    response = client.get(prediction.get_absolute_url())
    assert response.status_code == 200 and "What the model saw" not in response.content.decode()


def test_detail_page_offers_the_saliency_overlay_lazily(client, upload_file, owner):
    """The page links the overlay and holds it unloaded (data-src) until toggled."""
    prediction = services.classify_upload(file=upload_file(), owner=owner)
    html = client.get(prediction.get_absolute_url()).content.decode()
    url = reverse("uploads:api-saliency", args=[prediction.pk])
    assert f'href="{url}"' in html
    assert f'data-src="{url}"' in html and f'src="{url}"' not in html.replace("data-src", "")
    assert "data-saliency-toggle" in html


def test_deleting_an_upload_deletes_its_model_input_and_saliency(
    api_client, upload_file, media_files, django_capture_on_commit_callbacks
):
    """The files derived from an upload go with it."""
    body = predict(api_client, upload_file)
    assert api_client.get(reverse("uploads:api-saliency", args=[body["id"]])).status_code == 200
    prediction = Prediction.objects.get(pk=body["id"])
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_uploads(uploads=type(prediction.upload).objects.all())
    assert media_files() == []


# ----------------------------------------------------------------------------- model's eye


@pytest.mark.parametrize(
    ("model", "mode", "size"), [("cifar10", "RGB", (32, 32)), ("fashion_mnist", "L", (28, 28))]
)
def test_model_input_png_has_the_models_shape(
    api_client, upload_file, image_bytes, model, mode, size
):
    """model-input.png is the model's input: its size and channels."""
    data = image_bytes("JPEG", size=(64, 48))
    body = predict(api_client, upload_file, image=upload_file(data, name="a.jpg"), model=model)
    response = api_client.get(reverse("uploads:api-model-input", args=[body["id"]]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert (image.mode, image.size) == (mode, size)
        pixels = np.asarray(image).reshape(size[1], size[0], -1)
    # The exact pixels the model saw: from the upload itself, not its lossy stored copy.
    expected = classifiers.get_classifier(model).model_input(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(pixels, expected)


def test_model_input_of_an_older_prediction_is_made_from_the_stored_image(
    api_client, upload_file, settings
):
    """Without a stored model input, the endpoint converts the stored image instead."""
    body = predict(api_client, upload_file)
    for path in (Path(settings.MEDIA_ROOT) / "model_inputs").rglob("*.png"):
        path.unlink()
    response = api_client.get(reverse("uploads:api-model-input", args=[body["id"]]))
    assert response.status_code == 200
    assert png_size(response.content) == ("PNG", (32, 32))


def test_model_input_of_an_unknown_prediction_is_a_404(api_client):
    """No such prediction: 404 JSON."""
    response = api_client.get(reverse("uploads:api-model-input", args=[999]))
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_detail_page_shows_the_models_eye_view_and_its_expectations(client, upload_file, owner):
    """The page shows the pixels the model saw, enlarged pixel-sharp, what the model expects
    and each warning the input raises."""
    white = encode_image(Image.new("RGB", (40, 40), "white"))
    prediction = services.classify_upload(
        file=upload_file(white), model_name="fashion_mnist", owner=owner
    )
    html = client.get(prediction.get_absolute_url()).content.decode()

    record = classifiers.get_model_info("fashion_mnist").record
    pixels = classifiers.get_classifier("fashion_mnist").model_input(Image.open(io.BytesIO(white)))
    image = re.search(r'<img class="model-input pixelated"[^>]*>', html).group(0)
    assert reverse("uploads:api-model-input", args=[prediction.pk]) in image
    assert 'width="252"' in image  # 28 pixels, 9 times: about 256
    assert escape(expectations.expects(record)) in html
    warnings = expectations.check(record, pixels)
    assert warnings  # a white background is not what a dark-background model expects
    for warning in warnings:
        assert escape(warning) in html


def escape(text: str) -> str:
    from django.utils.html import escape as django_escape

    return str(django_escape(text))


# ----------------------------------------------------------------------------- feedback


@pytest.fixture
def prediction(upload_file, owner) -> Prediction:
    """A prediction of the `client` (and `api_client`) fixture's visitor."""
    return services.classify_upload(file=upload_file(), owner=owner)


def other_label(prediction: Prediction) -> str:
    return next(name for name in prediction.probabilities if name != prediction.label)


def feedback_url(prediction: Prediction | int) -> str:
    pk = prediction if isinstance(prediction, int) else prediction.pk
    return reverse("uploads:api-feedback", args=[pk])


def test_feedback_api_confirms_with_json(api_client, prediction):
    """{"correct": true} -> 201 with the stored verdict."""
    response = api_client.post(feedback_url(prediction), {"correct": True}, format="json")
    assert response.status_code == 201
    feedback = Feedback.objects.get()
    assert response.json() == {
        "id": feedback.pk,
        "prediction": prediction.pk,
        "correct": True,
        "label": prediction.label,
        "created_at": feedback.created_at.isoformat(),
    }


def test_feedback_api_corrects_with_a_form_field(api_client, prediction):
    """label=<class> (form-encoded) -> 201, stored as wrong with that label."""
    label = other_label(prediction)
    response = api_client.post(feedback_url(prediction), {"label": label})
    assert response.status_code == 201
    assert response.json()["correct"] is False and response.json()["label"] == label
    assert Feedback.objects.get().label == label


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Send correct: true"),
        ({"correct": False}, "send the label"),
        ({"correct": "maybe"}, "boolean"),
        ({"label": "Unicorn"}, "Unknown label"),
        ({"label": ""}, "blank"),
        ({"label": ["cat", "dog"]}, "valid string"),
        ({"correct": True, "label": "cat"}, "not both"),
    ],
)
def test_feedback_api_refuses_bad_input_with_a_clear_400(api_client, prediction, body, message):
    """Neither field, both, correct: false, a non-boolean or a foreign label: a clear 400."""
    response = api_client.post(feedback_url(prediction), body, format="json")
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert Feedback.objects.count() == 0


def test_feedback_api_refuses_malformed_json(api_client, prediction):
    """A body that is not JSON: 400 JSON error."""
    response = api_client.post(
        feedback_url(prediction), "{not json", content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


def test_feedback_api_for_an_unknown_prediction_is_a_404(api_client):
    """No such prediction: 404."""
    response = api_client.post(feedback_url(999), {"correct": True}, format="json")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_feedback_form_round_trip_with_csrf(client, prediction):
    """Yes on the page (with its CSRF token) records a confirmation and redirects back."""
    browser = Client(enforce_csrf_checks=True)
    browser.cookies = client.cookies  # the visitor who made the prediction
    page = browser.get(prediction.get_absolute_url()).content.decode()
    assert "Is this right?" in page
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = browser.post(
        reverse("uploads:feedback", args=[prediction.pk]),
        {"csrfmiddlewaretoken": token, "verdict": "right", "label": ""},
    )

    assert response.status_code == 302
    assert response["Location"] == f"{prediction.get_absolute_url()}#feedback-status"
    assert Feedback.objects.get().correct is True
    page = browser.get(response["Location"]).content.decode()
    form = page.split("data-feedback-form", 1)[1].split("</form>", 1)[0]
    assert 'id="feedback-status"' in form and "Thank you: recorded as right." in form


def test_a_second_vote_replaces_the_first_and_the_form_says_so(client, prediction):
    """Yes, then No with a class: one vote remains, the correction, and the form shows it."""
    url = reverse("uploads:feedback", args=[prediction.pk])
    label = other_label(prediction)
    assert client.post(url, {"verdict": "right", "label": ""}).status_code == 302
    assert client.post(url, {"verdict": "wrong", "label": label}).status_code == 302
    vote = Feedback.objects.get()
    assert (vote.correct, vote.label) == (False, label)
    page = client.get(prediction.get_absolute_url()).content.decode()
    assert f"Thank you: recorded as “{label}”. You can change your answer below." in page


def test_feedback_form_records_a_correction(client, prediction):
    """No with a class records that class."""
    label = other_label(prediction)
    response = client.post(
        reverse("uploads:feedback", args=[prediction.pk]), {"verdict": "wrong", "label": label}
    )
    assert response.status_code == 302
    feedback = Feedback.objects.get()
    assert (feedback.correct, feedback.label) == (False, label)


def test_feedback_form_without_a_class_says_which_to_choose(client, prediction):
    """No without a class: 400, the page asks for the class, nothing stored."""
    response = client.post(reverse("uploads:feedback", args=[prediction.pk]), {"verdict": "wrong"})
    assert response.status_code == 400
    assert "Choose the class the image should have." in response.content.decode()
    assert Feedback.objects.count() == 0


def test_feedback_form_without_csrf_is_refused(prediction):
    """The form needs its CSRF token."""
    response = Client(enforce_csrf_checks=True).post(
        reverse("uploads:feedback", args=[prediction.pk]), {"verdict": "right"}
    )
    assert response.status_code == 403 and Feedback.objects.count() == 0


def test_feedback_form_for_an_unknown_prediction_is_a_404(client):
    """No such prediction: the 404 page."""
    response = client.post(reverse("uploads:feedback", args=[999]), {"verdict": "right"})
    assert response.status_code == 404


# ----------------------------------------------------------------------------- model page


def test_model_page_shows_accuracy_live_accuracy_and_calibration(client, api_client, prediction):
    """/models/<name>/: expectations, accuracy with its split, live accuracy, and whether its
    percentages are calibrated and it can say "none of the classes I know", in words."""
    api_client.post(feedback_url(prediction), {"correct": True}, format="json")
    response = client.get(reverse("uploads:model", args=["cifar10"]))
    html = response.content.decode()
    record = classifiers.get_model_info("cifar10").record
    assert response.status_code == 200
    assert "CIFAR-10" in html
    assert escape(expectations.expects(record)) in html
    assert re.search(r"Accuracy on test</dt><dd data-accuracy>10\.0%", html)
    assert re.search(r"data-live-accuracy>100\.0% <span[^>]*>on 1 answer people", html)
    assert "Not adjusted: they may overstate" in html  # temperature 1, in words
    assert "Never said: it always picks a class" in html  # no threshold, in words


def test_model_page_shows_the_threshold(client, threshold_models):
    """A model with a threshold says when it answers "none of the classes I know", in words
    (no score names or raw thresholds)."""
    html = client.get(reverse("uploads:model", args=["lenient"])).content.decode()
    assert "Said when an image looks unlike the images it learnt from" in html
    assert "-1e+09" not in html and "max-softmax" not in html


def test_every_answer_links_to_its_model_page(client, prediction):
    """The result page links to the model's page."""
    html = client.get(prediction.get_absolute_url()).content.decode()
    assert f'href="{reverse("uploads:model", args=["cifar10"])}"' in html


def test_unknown_model_page_is_a_404(client):
    """A name that is not configured: 404."""
    assert client.get(reverse("uploads:model", args=["nope"])).status_code == 404
    assert client.get(reverse("uploads:model-reliability", args=["nope"])).status_code == 404


def test_model_page_of_a_model_not_installed(client, settings, tmp_path):
    """A configured model without files: 200 that says it is not installed."""
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "later": tmp_path / "missing"}
    response = client.get(reverse("uploads:model", args=["later"]))
    assert response.status_code == 200
    assert "not installed" in response.content.decode()
    assert str(tmp_path) not in response.content.decode()


@pytest.mark.parametrize("where", ["reliability.png", "calibration/reliability.png"])
def test_model_page_shows_the_reliability_diagram_when_shipped(
    client, settings, tiny_model_dir, tmp_path, where
):
    """A shipped reliability diagram (beside the model card, or where research.calibrate
    writes it) is shown, through a view that names no path."""
    directory = copy_model(tiny_model_dir, tmp_path / "calibrated")
    diagram = encode_image(make_image((60, 40)))
    (directory / where).parent.mkdir(exist_ok=True)
    (directory / where).write_bytes(diagram)
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "calibrated": directory}

    html = client.get(reverse("uploads:model", args=["calibrated"])).content.decode()
    url = reverse("uploads:model-reliability", args=["calibrated"])
    assert f'src="{url}"' in html and str(tmp_path) not in html
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == diagram


def test_model_page_without_a_reliability_diagram(client):
    """No diagram shipped: the page leaves it out and its URL is a 404."""
    html = client.get(reverse("uploads:model", args=["cifar10"])).content.decode()
    url = reverse("uploads:model-reliability", args=["cifar10"])
    assert url not in html
    assert client.get(url).status_code == 404


# ----------------------------------------------------------------------------- no 500


def test_no_500_on_the_new_endpoints(client, api_client, prediction):
    """Wrong methods, unknown ids and odd bodies get 4xx on every new endpoint."""
    pk = prediction.pk
    cases = [
        (api_client.post, reverse("uploads:api-saliency", args=[pk]), 405),
        (api_client.put, reverse("uploads:api-model-input", args=[pk]), 405),
        (api_client.get, feedback_url(pk), 405),
        (api_client.post, feedback_url(pk), 400),
        (client.get, reverse("uploads:feedback", args=[pk]), 405),
        (client.post, reverse("uploads:feedback", args=[pk]), 400),
        (client.post, reverse("uploads:model", args=["cifar10"]), 405),
        (client.get, "/models/a%2Fb/", 404),
    ]
    for method, url, status in cases:
        assert method(url).status_code == status, url
    response = api_client.post(feedback_url(pk), b"\xff\xfe", content_type="application/json")
    assert response.status_code == 400
    response = api_client.post(feedback_url(pk), "x", content_type="text/plain")
    assert response.status_code == 415
