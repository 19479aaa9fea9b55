"""Graceful shutdown of the production front: SIGTERM to deploy/run-local.sh lets nginx finish
every request it holds before gunicorn stops, so no in-flight upload fails. Skipped without
nginx."""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.web.conftest import encode_image, make_image
from tests.web.test_front import HOST, NGINX, ROOT, free_port, get, needs_nginx

pytestmark = pytest.mark.no_models
CLIENTS = 12
STARTUP_TIMEOUT_S = 90


def _post_upload(port: int, data: bytes, sent: threading.Event) -> tuple[int, float]:
    """POST one PNG to /api/predict; returns (status, time of the answer)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        connection.send(body)
        sent.set()
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic()
    finally:
        connection.close()


@needs_nginx
def test_sigterm_drains_in_flight_uploads_without_a_failure(model_dirs, tmp_path):
    """Uploads sent before SIGTERM all get 201, some of them answered after it; the stack
    then exits by itself."""
    port, gunicorn_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        {
            "DJANGO_CLASSIFIER_MODELS": f"cifar10={model_dirs['cifar10']}",
            "DJANGO_ALLOWED_HOSTS": HOST,
            "DJANGO_JAX_CACHE_DIR": str(tmp_path / "jax-cache"),
            "DJANGO_API_THROTTLE_RATE": "100000/min",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "GUNICORN_PORT": str(gunicorn_port),
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": "2",  # requests queue up: several are in flight at SIGTERM
            "RUN_COLLECTSTATIC": "0",
            "RUN_WARMUP": "1",
            "NGINX_BIN": NGINX,
            "PYTHON": sys.executable,
        }
    )
    with open(tmp_path / "run-local.log", "wb") as log:
        server = subprocess.Popen(
            ["bash", "deploy/run-local.sh", str(port), str(tmp_path / "run")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "did not start"
                try:
                    if get(port, "/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            data = encode_image(make_image((400, 400)), "PNG")
            results: list[tuple[int, float]] = []
            sent = [threading.Event() for _ in range(CLIENTS)]
            threads = [
                threading.Thread(target=lambda e=e: results.append(_post_upload(port, data, e)))
                for e in sent
            ]
            for thread in threads:
                thread.start()
            for event in sent:
                assert event.wait(30)
            terminated = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)  # the script only: it drains in order
            for thread in threads:
                thread.join(90)
            exit_code = server.wait(timeout=90)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert sorted(status for status, _ in results) == [201] * CLIENTS
    assert any(answered > terminated for _, answered in results)  # the drain was exercised
    assert exit_code == 0  # a clean drain is a clean stop
