"""Own your data: delete an upload, revoke or renew its share link."""

import pytest
from django.test import Client
from django.urls import reverse

from uploads.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def _upload(client, upload_file) -> Prediction:
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}
    )
    assert response.status_code == 302, response.content
    return Prediction.objects.latest("id")


def test_the_owner_deletes_an_upload_with_its_rows_and_every_file(
    client, upload_file, media_files, django_capture_on_commit_callbacks
):
    """POST delete removes the upload, its prediction, the stored image, thumbnail and the
    model's input; the result page is then a 404."""
    prediction = _upload(client, upload_file)
    client.get(reverse("uploads:api-saliency", args=[prediction.pk]))  # a derived overlay
    assert media_files()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("uploads:delete", args=[prediction.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("uploads:history")
    assert (Upload.objects.count(), Prediction.objects.count(), media_files()) == (0, 0, [])
    assert client.get(prediction.get_absolute_url()).status_code == 404


def test_nobody_else_deletes_an_upload_and_get_is_refused(client, upload_file):
    """Another visitor's POST is a 404, a GET a 405; the upload stays."""
    prediction = _upload(client, upload_file)
    url = reverse("uploads:delete", args=[prediction.pk])
    assert Client().post(url).status_code == 404
    assert client.get(url).status_code == 405
    assert Upload.objects.count() == 1


def test_a_revoked_share_link_and_its_image_stop_working(client, upload_file):
    """After "Stop sharing" the old link and its image are 404s and the page says sharing is
    off; "Make a share link" gives a new link that works while the old one stays dead."""
    prediction = _upload(client, upload_file)
    old_page, old_image = prediction.get_share_url(), prediction.get_shared_image_url()
    anyone = Client()
    assert anyone.get(old_page).status_code == 200
    url = reverse("uploads:share-link", args=[prediction.pk])
    assert client.post(url, {"action": "revoke"}).status_code == 302
    assert anyone.get(old_page).status_code == 404
    assert anyone.get(old_image).status_code == 404
    assert "data-share-off" in client.get(prediction.get_absolute_url()).content.decode()

    assert client.post(url, {"action": "renew"}).status_code == 302
    prediction.refresh_from_db()
    assert anyone.get(prediction.get_share_url()).status_code == 200
    assert anyone.get(prediction.get_shared_image_url()).status_code == 200
    assert anyone.get(old_page).status_code == 404


def test_changing_the_share_link_needs_a_known_action_and_the_owner(client, upload_file):
    """An unknown action is a 400 page saying what to choose; another visitor gets a 404."""
    prediction = _upload(client, upload_file)
    url = reverse("uploads:share-link", args=[prediction.pk])
    response = client.post(url, {"action": "explode"})
    assert response.status_code == 400 and b"revoke or renew" in response.content
    assert Client().post(url, {"action": "revoke"}).status_code == 404
    prediction.refresh_from_db()
    assert prediction.share_enabled
