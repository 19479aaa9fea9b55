"""Locust load for the site: valid and hostile uploads mixed with reads, as visitors send them.

Run by benchmarks/serving/load.py against nginx + gunicorn; alone:

    locust -f benchmarks/serving/locustfile.py --headless -u 8 -r 8 -t 60s --host http://127.0.0.1:8080

Each task says what answer it expects: a valid upload 201, a hostile one a 4xx, a read 200
(or 404 where the privacy rules may hide a row). Anything else counts as a failure in locust.
With LOAD_RESULTS=path, every answer's status and time is written there as JSON at the end
(benchmarks/serving/load.py reads it for the percentiles, the counts by status and rows == 201s).
"""

import io
import json
import os
import random
from collections import Counter, defaultdict

import numpy as np
from locust import HttpUser, between, events, task
from PIL import Image

# The site's per-file cap (DJANGO_UPLOAD_MAX_BYTES); the oversize upload is one byte over it.
UPLOAD_MAX_BYTES = int(os.environ.get("DJANGO_UPLOAD_MAX_BYTES", 10 * 1024 * 1024))
MODEL = os.environ.get("LOAD_MODEL", "cifar10")


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


PNGS = [_encode(_noise((32, 32), seed), "PNG") for seed in range(8)]
JPEGS = [_encode(_noise((64, 48), 100 + seed), "JPEG", quality=90) for seed in range(8)]
NOT_AN_IMAGE = b"this is a text file, not an image\n" * 40
TRUNCATED_PNG = _encode(_noise((64, 64), 7), "PNG")[:2000]
OVERSIZE = b"\x89PNG\r\n\x1a\n" + bytes(UPLOAD_MAX_BYTES - 7)
PIXEL_BOMB = _encode(Image.new("1", (6000, 6000)), "PNG")  # 36 MP in a few KB
BAD_TOP_K = ["0", "-1", "abc", "²", "٣", "1.5"]

RESULTS: dict[str, Counter] = defaultdict(Counter)
TIMES: dict[str, list[float]] = defaultdict(list)


@events.request.add_listener
def _record(name, response_time, response, exception, **_):
    status = getattr(response, "status_code", 0) if response is not None else 0
    RESULTS[name][str(status or 0)] += 1
    TIMES[name].append(response_time)


@events.quitting.add_listener
def _write_results(environment, **_):
    path = os.environ.get("LOAD_RESULTS")
    if path:
        with open(path, "w") as out:
            json.dump({"statuses": RESULTS, "times_ms": TIMES}, out)


class Visitor(HttpUser):
    """One client: mostly valid uploads, some hostile ones, and reads of what it made."""

    wait_time = between(0.05, 0.25)

    def on_start(self):
        self.mine: list[dict] = []

    def _upload(self, name: str, data: bytes, filename: str, expect: str, **fields):
        files = {"image": (filename, data, "application/octet-stream")}
        with self.client.post(
            "/api/predict",
            files=files,
            data={"model": MODEL, **fields},
            name=f"POST /api/predict [{name}]",
            catch_response=True,
        ) as response:
            status = response.status_code
            if expect == "201" and status == 201:
                body = response.json()
                self.mine.append(body if isinstance(body, dict) else body[0])
                response.success()
            elif expect == "4xx" and 400 <= status < 500:
                response.success()
            else:
                response.failure(f"{name}: expected {expect}, got {status}")

    def _get(self, path: str, name: str, allowed: tuple[int, ...] = (200,)):
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code in allowed:
                response.success()
            else:
                response.failure(f"{name}: got {response.status_code}")

    @task(8)
    def upload_png(self):
        self._upload("valid png", random.choice(PNGS), "photo.png", "201")

    @task(4)
    def upload_jpeg(self):
        self._upload("valid jpeg", random.choice(JPEGS), "photo.jpg", "201", top_k="3")

    @task(1)
    def upload_not_an_image(self):
        self._upload("not an image", NOT_AN_IMAGE, "notes.png", "4xx")

    @task(1)
    def upload_truncated(self):
        self._upload("truncated png", TRUNCATED_PNG, "cut.png", "4xx")

    @task(1)
    def upload_bad_top_k(self):
        top_k = random.choice(BAD_TOP_K)
        self._upload("bad top_k", random.choice(PNGS), "photo.png", "4xx", top_k=top_k)

    @task(1)
    def upload_unknown_model(self):
        self._upload("unknown model", random.choice(PNGS), "photo.png", "4xx", model="nope")

    @task(1)
    def upload_pixel_bomb(self):
        self._upload("36 MP png", PIXEL_BOMB, "bomb.png", "4xx")

    @task(1)
    def upload_oversize(self):
        self._upload("oversize", OVERSIZE, "big.png", "4xx")

    @task(3)
    def read_models(self):
        self._get("/api/models", "GET /api/models")

    @task(2)
    def read_predictions(self):
        self._get("/api/predictions", "GET /api/predictions")

    @task(2)
    def read_own_prediction(self):
        if not self.mine:
            return
        prediction = random.choice(self.mine)
        # The API keeps no session: a visitor's own row may be private to the form's session.
        self._get(f"/api/predictions/{prediction['id']}", "GET /api/predictions/<id>", (200, 404))
        if prediction.get("share_url"):
            self._get(prediction["share_url"], "GET shared page")

    @task(1)
    def health(self):
        self._get("/healthz", "GET /healthz")
