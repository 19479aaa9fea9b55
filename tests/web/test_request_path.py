"""The request path's economies: derived images after the answer, reduced JPEG decoding when
nothing is stored, and a bounded number of queries per prediction."""

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from uploads import deferred, services

pytestmark = pytest.mark.django_db


@contextmanager
def in_request():
    """The signals a request sends around a view, as Django's test client sends them (without
    closing the test's database connection)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        request_started.send(sender=None)
        yield
    finally:
        request_finished.send(sender=None)
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def test_derived_images_are_written_once_the_answer_is_sent(upload_file, image_bytes, settings):
    """Inside a request the thumbnail and the model-input PNG are written when the response is
    closed (after its bytes went out); the image itself is stored before the answer."""
    root = Path(settings.MEDIA_ROOT)
    with in_request():
        prediction = services.classify_upload(file=upload_file(image_bytes("PNG", size=(640, 480))))
        upload = prediction.upload
        assert (root / upload.image.name).is_file()
        assert upload.thumbnail.name and not (root / upload.thumbnail.name).exists()
        assert not list((root / "model_inputs").rglob("*.png"))
    assert (root / upload.thumbnail.name).is_file()
    assert len(list((root / "model_inputs").rglob("*.png"))) == 1


def test_a_failing_deferred_task_is_logged_and_the_next_still_runs(caplog):
    """A task queued for after the answer that raises is logged; the ones after it run."""
    ran = []

    def broken() -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.ERROR, logger="uploads.deferred"), in_request():
        deferred.after_response(broken)
        deferred.after_response(lambda: ran.append(True))
        assert ran == []
    assert ran == [True]
    assert "broken" in caplog.text and "disk full" in caplog.text


def test_outside_a_request_deferred_work_runs_at_once():
    """A service called from a command or a test does its derived work before returning."""
    ran = []
    deferred.after_response(lambda: ran.append(True))
    assert ran == [True]


def test_an_unstored_jpeg_is_decoded_smaller_and_answers_like_the_stored_path(
    upload_file, image_bytes
):
    """/api/classify's path decodes a large JPEG at a reduced scale (still >= DRAFT_FACTOR times
    the model's input) and gives the stored path's answer."""
    data = image_bytes("JPEG", size=(1000, 800), seed=4)
    batch = services._classify(
        files=[upload_file(data, name="a.jpg")], model_name="cifar10", top_k=3, for_storage=False
    )
    side = max(batch.images[0].image.size)
    assert services.DRAFT_FACTOR * 32 <= side < 1000
    unstored = services.classify_without_storing(file=upload_file(data, name="a.jpg"))
    stored = services.classify_upload(file=upload_file(data, name="a.jpg"))
    assert unstored.label == stored.label
    for name, probability in stored.probabilities.items():
        assert unstored.probabilities[name] == pytest.approx(probability, abs=0.01)


def test_only_a_stored_image_is_hashed(upload_file, image_bytes):
    """The stored path keeps the bytes' sha256; /api/classify's path, storing nothing, skips it."""
    data = image_bytes("PNG", size=(40, 30), seed=2)
    unstored = services._classify(
        files=[upload_file(data)], model_name="cifar10", top_k=3, for_storage=False
    )
    stored = services.classify_upload(file=upload_file(data))
    assert unstored.images[0].sha256 == ""
    assert stored.upload.sha256 == hashlib.sha256(data).hexdigest()


def test_a_stored_prediction_costs_a_bounded_number_of_queries(client, upload_file):
    """POST /api/predict from a new client: the shared throttle's one statement, the new
    session's insert (no query for whether its random key exists), the upload's and
    prediction's inserts in one transaction, and no query to read back what it just saved."""
    client.post(reverse("uploads:api-predict"), {"image": upload_file()})  # warm caches
    client.cookies.clear()
    with CaptureQueriesContext(connection) as queries:
        response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    selects_of_uploads = [q for q in queries if q["sql"].startswith('SELECT "uploads_upload"')]
    assert selects_of_uploads == []
    assert not [q for q in queries if q["sql"].startswith('SELECT 1 AS "a" FROM "django_session"')]
    assert len(queries) <= 8, [q["sql"][:80] for q in queries]


def test_classifying_without_storing_costs_one_query(client, upload_file):
    """POST /api/classify (the camera's frames) touches the database once: the shared throttle,
    admitted and counted in one statement."""
    client.post(reverse("uploads:api-classify"), {"image": upload_file()})  # warm caches
    with CaptureQueriesContext(connection) as queries:
        response = client.post(reverse("uploads:api-classify"), {"image": upload_file()})
    assert response.status_code == 200
    assert len(queries) == 1, [q["sql"][:80] for q in queries]


def test_a_new_session_whose_random_key_is_taken_draws_another(monkeypatch):
    """Without the existence query, a new session's key that collides with a stored one is
    refused by the insert and another is drawn; the stored session is untouched."""
    from uploads import sessions

    taken = sessions.SessionStore()
    taken["owner"] = "first"
    taken.save()
    keys = iter([taken.session_key, "b" * 32])
    monkeypatch.setattr(sessions, "get_random_string", lambda *args: next(keys))
    fresh = sessions.SessionStore()
    fresh["owner"] = "second"
    fresh.save()
    assert fresh.session_key == "b" * 32
    assert sessions.SessionStore(session_key=taken.session_key)["owner"] == "first"
