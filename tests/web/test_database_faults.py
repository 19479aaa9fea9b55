"""Database outages: every route answers 503 with Retry-After (JSON under /api/, a page
elsewhere), nothing is kept whose client was told it failed, and the site recovers by itself."""

import pytest
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import OperationalError
from django.test import Client
from django.urls import reverse

from tests.web.conftest import database_unreachable
from uploads.models import Prediction, Upload
from uploads.sessions import SessionStore


@pytest.mark.django_db
def test_upload_is_not_kept_when_its_session_cannot_be_saved(upload_file, media_files, monkeypatch):
    """The session (the owner's access) commits with the upload: when its save fails, the
    client gets 503 and no row or file is left that nobody could reach."""

    def fail(self, must_create=False):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(DatabaseSessionStore, "save", fail)
    client = Client(raise_request_exception=False)
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert int(response["Retry-After"]) > 0
    assert Upload.objects.count() == Prediction.objects.count() == 0
    assert media_files() == []


@pytest.mark.django_db
def test_session_is_saved_once_with_the_upload(client, upload_file, monkeypatch):
    """The middleware does not write the session again after the upload's transaction saved
    it, and the new visitor still gets the cookie that reaches the upload."""
    writes = []
    real_instance = DatabaseSessionStore.create_model_instance

    def count(self, data):  # called once for each row written
        writes.append(dict(data))
        return real_instance(self, data)

    monkeypatch.setattr(DatabaseSessionStore, "create_model_instance", count)
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    assert len(writes) == 1  # inside the upload's transaction; the middleware wrote nothing
    assert client.get(reverse("uploads:api-predictions")).json()["count"] == 1


@pytest.mark.django_db
def test_session_store_writes_again_when_the_data_changed(db):
    """Only an unchanged session skips its second save."""
    session = SessionStore()
    session["a"] = 1
    session.save()
    session["a"] = 2
    session.save()
    assert SessionStore(session.session_key)["a"] == 2


@pytest.mark.django_db(transaction=True)
def test_every_route_answers_503_while_the_database_is_unreachable(upload_file, media_files):
    """Pages, form, API, share links and the session's own load: 503 + Retry-After, never
    500; nothing stored meanwhile; the first request after the database returns succeeds."""
    client = Client(raise_request_exception=False)
    created = client.post(reverse("uploads:api-predict"), {"image": upload_file()}).json()
    prediction = Prediction.objects.get(pk=created["id"])
    files_before = media_files()
    pages = [
        reverse("uploads:classify"),
        reverse("uploads:history"),
        reverse("uploads:detail", args=[prediction.pk]),
        reverse("uploads:share", args=[prediction.share_token]),
        f"{reverse('uploads:results')}?ids={prediction.pk}",
        reverse("admin:index"),
    ]
    api = [
        reverse("uploads:api-predictions"),
        reverse("uploads:api-prediction", args=[prediction.pk]),
    ]
    with database_unreachable():
        answers = {url: client.get(url) for url in pages + api}
        answers["POST /api/predict"] = client.post(
            reverse("uploads:api-predict"), {"image": upload_file()}
        )
        answers["POST /"] = client.post(
            reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}
        )
    assert {url: r.status_code for url, r in answers.items()} == dict.fromkeys(answers, 503)
    for url, response in answers.items():
        assert int(response["Retry-After"]) > 0, url
    for url in api + ["POST /api/predict"]:
        assert answers[url].json()["code"] == "database_unavailable"
    assert "briefly unavailable" in answers[reverse("uploads:history")].content.decode()
    assert Upload.objects.count() == 1
    assert media_files() == files_before
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
