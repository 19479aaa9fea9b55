"""Parallel uploads against a real threaded server: all stored, no lock errors, right answers."""

import hashlib
import io
import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from django.db import connection
from django.urls import reverse
from PIL import Image

from uploads import classifiers
from uploads.models import Prediction, Upload

THREADS = 8
UPLOADS_PER_THREAD = 3


def post_image(url: str, data: bytes, name: str) -> tuple[int, dict]:
    """POST one multipart 'image' with the standard library only."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def noise_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.django_db(transaction=True)
def test_parallel_uploads_are_all_stored_with_their_own_answers(live_server):
    """Concurrent API uploads all succeed, each answer matching the image it was sent with."""
    url = live_server.url + reverse("uploads:api-predict")
    images = {seed: noise_png(seed) for seed in range(THREADS * UPLOADS_PER_THREAD)}

    def upload_batch(worker: int) -> list[tuple[int, int, dict]]:
        seeds = range(worker * UPLOADS_PER_THREAD, (worker + 1) * UPLOADS_PER_THREAD)
        return [(seed, *post_image(url, images[seed], f"{seed}.png")) for seed in seeds]

    with ThreadPoolExecutor(THREADS) as pool:
        answers = [answer for batch in pool.map(upload_batch, range(THREADS)) for answer in batch]

    assert [status for _, status, _ in answers] == [201] * len(images), answers
    assert Upload.objects.count() == Prediction.objects.count() == len(images)
    classifier = classifiers.get_classifier("cifar10")
    expected = classifier.predict([Image.open(io.BytesIO(images[seed])) for seed, _, _ in answers])
    for (seed, _, body), probabilities in zip(answers, expected, strict=True):
        upload = Upload.objects.get(predictions__pk=body["id"])
        assert upload.sha256 == hashlib.sha256(images[seed]).hexdigest()
        assert upload.original_name == f"{seed}.png"
        best = int(np.argmax(probabilities))
        assert body["label"] == classifier.class_names[best]
        assert body["confidence"] == pytest.approx(float(probabilities[best]), abs=1e-5)


@pytest.mark.django_db
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout():
    """The SQLite connection uses WAL, a busy timeout and IMMEDIATE transactions."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite-specific settings")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000
    assert connection.transaction_mode == "IMMEDIATE"
