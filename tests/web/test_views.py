"""The HTML pages: upload form, result, several results, history, media."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from uploads import services
from uploads.models import Prediction
from uploads.templatetags.uploads_extras import milliseconds

pytestmark = pytest.mark.django_db


def classify(upload_file, count: int = 1, **kwargs) -> list[Prediction]:
    """Predictions made for the visitor `kwargs['owner']` (the client fixture's: `owner`)."""
    return [services.classify_upload(file=upload_file(), **kwargs) for _ in range(count)]


def test_home_shows_the_form_with_every_model(client):
    """The home page has a multipart form, a CSRF token and the model choice."""
    page = client.get(reverse("uploads:classify")).content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert "csrfmiddlewaretoken" in page
    assert 'name="images"' in page and "multiple" in page
    assert '<option value="cifar10" selected>' in page
    assert '<option value="fashion_mnist"' in page
    assert "CIFAR-10" in page and "Fashion-MNIST" in page


def test_posting_an_image_redirects_to_its_result(client, upload_file):
    """A valid upload is stored and the browser is redirected to the result page."""
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(name="cat.png"), "model": "cifar10"}
    )
    prediction = Prediction.objects.get()
    assert response.status_code == 302
    assert response["Location"] == prediction.get_absolute_url()


def test_result_page_shows_label_bars_model_and_latency(client, upload_file, owner):
    """The result page shows the top-k bars, the model, its accuracy and the latency."""
    prediction = classify(upload_file, owner=owner)[0]
    page = client.get(prediction.get_absolute_url()).content.decode()
    assert prediction.label in page
    assert page.count('<meter class="bar-meter"') == len(prediction.top_k) == 5
    assert "CIFAR-10" in page and prediction.model_version in page
    assert "10.0%" in page  # the tiny model's eval accuracy
    assert f"<dt>Latency</dt><dd>{milliseconds(prediction.latency_ms)} " in page
    assert f"({milliseconds(prediction.inference_ms)} in the model)" in page
    assert prediction.upload.get_image_url() in page


def test_model_choice_is_honoured(client, upload_file):
    """Choosing Fashion-MNIST classifies with that model."""
    client.post(reverse("uploads:classify"), {"images": upload_file(), "model": "fashion_mnist"})
    assert Prediction.objects.get().model_name == "fashion_mnist"


def test_unknown_model_choice_is_a_form_error(client, upload_file):
    """A model outside the choices is refused by the form with a 400."""
    response = client.post(reverse("uploads:classify"), {"images": upload_file(), "model": "x"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()


def test_posting_without_a_file_asks_for_one(client):
    """Submitting the form empty re-renders it with a message."""
    response = client.post(reverse("uploads:classify"), {"model": "cifar10"})
    assert response.status_code == 400
    assert "Choose an image to classify." in response.content.decode()


def test_several_files_lead_to_a_results_page(client, image_bytes):
    """Several files in one post are classified together and listed on one page."""
    files = [SimpleUploadedFile(f"{i}.png", image_bytes(seed=i)) for i in range(3)]
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "3 images classified" in page
    for prediction in Prediction.objects.all():
        assert prediction.get_absolute_url() in page


def test_missing_model_shows_a_clear_message_not_a_500(client, upload_file, settings, tmp_path):
    """A configured model that is not installed gives a 503 page with an explanation."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "missing"}
    home = client.get(reverse("uploads:classify"))
    assert "not installed" in home.content.decode()
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}
    )
    assert response.status_code == 503
    assert "not available on this server" in response.content.decode()
    assert str(tmp_path) not in response.content.decode()
    assert Prediction.objects.count() == 0


def test_html_form_keeps_csrf_protection(upload_file):
    """A form post without a CSRF token is refused."""
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}
    )
    assert response.status_code == 403
    assert Prediction.objects.count() == 0


def test_history_is_paginated_newest_first(client, upload_file, owner):
    """History shows 24 predictions a page, the newest first."""
    predictions = classify(upload_file, 26, owner=owner)
    first = client.get(reverse("uploads:history"))
    assert first.context["predictions"][0] == predictions[-1]
    assert len(first.context["predictions"]) == 24
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("uploads:history"), {"page": 2})
    assert list(second.context["predictions"]) == predictions[1::-1]


def test_history_filters_by_label_and_model(client, upload_file, owner):
    """?label= and ?model= narrow the history, and pagination keeps the filter."""
    classify(upload_file, 2, owner=owner, model_name="cifar10")
    fashion = classify(upload_file, 2, owner=owner, model_name="fashion_mnist")
    by_model = client.get(reverse("uploads:history"), {"model": "fashion_mnist"})
    assert set(by_model.context["predictions"]) == set(fashion)
    label = fashion[0].label
    by_both = client.get(reverse("uploads:history"), {"model": "fashion_mnist", "label": label})
    assert {p.label for p in by_both.context["predictions"]} == {label}
    assert f'<option value="{label}" selected>' in by_both.content.decode()


def test_history_shows_thumbnails_labels_and_confidence(client, upload_file, owner):
    """Each history card has the thumbnail, the answer in words, the top class and its
    probability to one decimal, as the result page gives it (never 100% for 99.9%)."""
    prediction = classify(upload_file, owner=owner)[0]
    page = client.get(reverse("uploads:history")).content.decode()
    assert prediction.upload.get_thumbnail_url() in page
    assert prediction.answer.headline in page
    assert f"{prediction.label} {prediction.confidence * 100:.1f}%" in page


def test_empty_history_invites_a_first_upload(client):
    """With no predictions, the history says so and links to the form."""
    page = client.get(reverse("uploads:history")).content.decode()
    assert "Nothing here yet" in page


def test_unknown_prediction_is_a_404_page(client):
    """A missing prediction is an HTML 404."""
    response = client.get(reverse("uploads:detail", args=[999]))
    assert response.status_code == 404
    assert "There is nothing at this address." in response.content.decode()


def test_media_is_served_with_safe_headers(client, upload_file, owner):
    """Stored images are served inline with a fixed image type, nosniff and a sandbox CSP."""
    upload = classify(upload_file, owner=owner)[0].upload
    response = client.get(upload.get_image_url())
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"].startswith("inline")
    assert "sandbox" in response["Content-Security-Policy"]


@pytest.mark.parametrize(
    "name", ["../settings.py", "images/2024/01/notgenerated.png", "images/../../db.sqlite3"]
)
def test_media_serves_only_generated_names(client, name):
    """Anything but a generated image name is a 404."""
    assert client.get(reverse("uploads:media", args=[name])).status_code == 404


def test_pages_send_a_content_security_policy(client):
    """The site's pages forbid inline scripts and framing."""
    policy = client.get(reverse("uploads:classify"))["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_static_files_are_served_by_the_app(live_server):
    """CSS and JS come from the app itself (no CDN), so offline machines render the same."""
    import urllib.request

    page = urllib.request.urlopen(live_server.url + reverse("uploads:classify")).read().decode()
    assert "//cdn" not in page and "https://" not in page
    for path in ("/static/uploads/site.css", "/static/uploads/site.js"):
        assert path in page
        assert urllib.request.urlopen(live_server.url + path).status == 200


def test_a_batch_with_a_bad_file_classifies_the_rest_and_names_the_bad_one(client, upload_file):
    """A cat photo plus a text file named .jpg: the photo is classified, the text file is named
    with its reason in an alert that the page focuses."""

    fake = SimpleUploadedFile("notes.jpg", b"just some text, not a picture", "image/jpeg")
    response = client.post(
        reverse("uploads:classify"),
        {"images": [upload_file(), fake], "model": "cifar10"},
        follow=True,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert Prediction.objects.count() == 1
    assert "Not classified: notes.jpg:" in html
    assert 'role="alert" tabindex="-1" data-focus-on-load' in html


def test_a_batch_of_only_bad_files_is_a_400_naming_each(client):
    """Two bad files: nothing stored, a 400 whose message names both."""

    files = [
        SimpleUploadedFile("a.jpg", b"text", "image/jpeg"),
        SimpleUploadedFile("b.png", b"", "image/png"),
    ]
    response = client.post(reverse("uploads:classify"), {"images": files, "model": "cifar10"})
    html = response.content.decode()
    assert response.status_code == 400
    assert "a.jpg:" in html and "b.png:" in html
    assert Prediction.objects.count() == 0
