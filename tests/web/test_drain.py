"""The production front under a stop and a crash: SIGTERM to deploy/run-local.sh lets nginx
finish every request it holds before gunicorn stops, so no in-flight upload fails; a worker
killed with SIGKILL under load leaves nothing that reconciliation does not sweep. Skipped
without nginx."""

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from benchmarks.serving.faults import gunicorn_workers
from tests.web.conftest import encode_image, make_image
from tests.web.test_front import HOST, NGINX, ROOT, free_port, get, needs_nginx

pytestmark = pytest.mark.no_models
CLIENTS = 12
STARTUP_TIMEOUT_S = 300  # a shared CI machine compiles slowly


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


@contextlib.contextmanager
def _stack(model_dirs, tmp_path, *, workers: int, threads: int):
    """deploy/run-local.sh with the tiny model; yields (server, port, env) once ready."""
    port, gunicorn_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
            "DJANGO_CLASSIFIER_MODELS": f"cifar10={model_dirs['cifar10']}",
            "DJANGO_ALLOWED_HOSTS": HOST,
            "DJANGO_JAX_CACHE_DIR": str(tmp_path / "jax-cache"),
            "DJANGO_API_THROTTLE_RATE": "100000/min",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_MEDIA_ROOT": str(tmp_path / "media"),
            "DJANGO_SECRET_KEY": uuid.uuid4().hex * 2,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "GUNICORN_PORT": str(gunicorn_port),
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
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
            yield server, port, env
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _upload_concurrently(port: int, count: int, data: bytes):
    """Start `count` uploads; returns (results, the threads, one event per upload sent)."""
    results: list[tuple[int, float]] = []
    sent = [threading.Event() for _ in range(count)]

    def upload(event: threading.Event) -> None:
        try:
            results.append(_post_upload(port, data, event))
        except OSError:
            results.append((0, time.monotonic()))  # the connection failed
            event.set()

    threads = [threading.Thread(target=upload, args=(event,)) for event in sent]
    for thread in threads:
        thread.start()
    return results, threads, sent


@needs_nginx
def test_sigterm_drains_in_flight_uploads_without_a_failure(model_dirs, tmp_path):
    """Uploads sent before SIGTERM all get 201, some of them answered after it; the stack
    then exits by itself."""
    data = encode_image(make_image((400, 400)), "PNG")
    # One worker with two threads: requests queue up, several are in flight at SIGTERM.
    with _stack(model_dirs, tmp_path, workers=1, threads=2) as (server, port, _):
        results, threads, sent = _upload_concurrently(port, CLIENTS, data)
        for event in sent:
            assert event.wait(30)
        terminated = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)  # the script only: it drains in order
        for thread in threads:
            thread.join(90)
        exit_code = server.wait(timeout=90)
    assert sorted(status for status, _ in results) == [201] * CLIENTS
    assert any(answered > terminated for _, answered in results)  # the drain was exercised
    assert exit_code == 0  # a clean drain is a clean stop


def _reconcile(env: dict, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", "reconcile_media", "--min-age", "0", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@needs_nginx
def test_a_worker_killed_under_load_leaves_nothing_after_reconciliation(model_dirs, tmp_path):
    """SIGKILL to a worker with uploads in flight: no 500, every 201 has its row, and after
    reconcile_media --repair media and rows agree."""
    data = encode_image(make_image((400, 400)), "PNG")
    with _stack(model_dirs, tmp_path, workers=2, threads=4) as (server, port, env):
        results, threads, sent = _upload_concurrently(port, 3 * CLIENTS, data)
        sent[CLIENTS].wait(30)
        os.kill(gunicorn_workers(server.pid)[0], signal.SIGKILL)
        for thread in threads:
            thread.join(90)
        time.sleep(1)
        rows = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from uploads.models import Upload; print(Upload.objects.count())"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.split()[-1]  # fmt: skip
        _reconcile(env, "--repair")
        after = _reconcile(env)
    statuses = [status for status, _ in results]
    assert 500 not in statuses
    # Every 201 has its row; a row beyond them can only be an upload whose worker died after
    # its commit, before its answer (the client saw the connection fail).
    failed = len(statuses) - statuses.count(201)
    assert statuses.count(201) <= int(rows) <= statuses.count(201) + failed
    assert "Media and rows agree." in after
