"""The production front: nginx (deploy/nginx.conf, started by deploy/run-local.sh) in front of
gunicorn with the production settings and the tiny models. Skipped only without nginx."""

import http.client
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
HOST = "127.0.0.1"
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
)
STARTUP_TIMEOUT_S = 45
MAX_FILES, MAX_BYTES = 2, 1024 * 1024  # nginx's cap: 2 x 1 MiB + 1 MiB
MAX_BODY = MAX_FILES * MAX_BYTES + 1024 * 1024
SLOW_UPLOADS = 64

pytestmark = pytest.mark.no_models
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def upload_head(port: int, content_length: int, boundary: str) -> bytes:
    return (
        f"POST /api/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def front(model_dirs, tmp_path_factory):
    """Start nginx + gunicorn (2 workers x 4 threads, the tiny CIFAR-10 model) on free ports.

    Yields nginx's port once both workers answer /healthz; stops everything afterwards.
    """
    run_dir = tmp_path_factory.mktemp("front")
    port, gunicorn_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        {
            "DJANGO_CLASSIFIER_MODELS": f"cifar10={model_dirs['cifar10']}",
            "DJANGO_CLASSIFIER_DEFAULT_MODEL": "cifar10",
            "DJANGO_ALLOWED_HOSTS": HOST,
            "DJANGO_JAX_CACHE_DIR": str(run_dir / "jax-cache"),
            "DJANGO_UPLOAD_MAX_FILES": str(MAX_FILES),
            "DJANGO_UPLOAD_MAX_BYTES": str(MAX_BYTES),
            "DJANGO_API_THROTTLE_RATE": "100000/min",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DATABASE_URL": f"sqlite:///{run_dir / 'db.sqlite3'}",
            "GUNICORN_PORT": str(gunicorn_port),
            "GUNICORN_WORKERS": "2",
            "GUNICORN_THREADS": "4",
            "RUN_COLLECTSTATIC": "0",  # the API needs no static files
            "RUN_WARMUP": "1",  # compile once into the cache, not once per worker
            "NGINX_BIN": NGINX,
            "PYTHON": sys.executable,
        }
    )
    log = open(run_dir / "run-local.log", "wb")  # noqa: SIM115  (closed below)
    server = subprocess.Popen(
        ["bash", "deploy/run-local.sh", str(port), str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        ready = 0
        while ready < 4:  # several answers in a row, so both workers are warm
            if server.poll() is not None or time.monotonic() > deadline:
                logs = "\n".join(
                    p.read_text(errors="replace")[-3000:] for p in run_dir.rglob("*.log")
                )
                pytest.fail(f"the front did not become ready:\n{logs}")
            try:
                status, _ = get(port, "/healthz", timeout=2)
            except OSError:
                status = 0
            ready = ready + 1 if status == 200 else 0
            time.sleep(0.2)
        yield port
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@needs_nginx
def test_slow_uploads_do_not_block_other_requests(front, image_bytes):
    """64 stalled uploads held open: /api/models, /healthz and a real upload answer in < 1 s."""
    boundary = uuid.uuid4().hex
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image_bytes()[:200]
    slow = []
    try:
        for _ in range(SLOW_UPLOADS):
            sock = socket.create_connection((HOST, front), timeout=5)
            sock.sendall(upload_head(front, 500_000, boundary) + part)  # then nothing more
            slow.append(sock)
        time.sleep(0.5)  # let nginx accept them all
        for path in ("/api/models", "/healthz"):
            start = time.perf_counter()
            status, _ = get(front, path, timeout=5)
            elapsed = time.perf_counter() - start
            assert status == 200, path
            assert elapsed < 1.0, f"{path} took {elapsed:.2f} s"

        data = image_bytes()
        body = part[: part.index(b"\r\n\r\n") + 4] + data + f"\r\n--{boundary}--\r\n".encode()
        start = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, front, timeout=5)
        connection.request(
            "POST",
            "/api/predict",
            body=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 201
        assert time.perf_counter() - start < 1.0
        for sock in slow:  # none was answered: nginx still waits for their bodies
            sock.settimeout(0)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            sock.close()


@needs_nginx
def test_nginx_refuses_a_body_over_the_cap_with_413(front):
    """A Content-Length above files x bytes + 1 MiB gets nginx's 413 before any body is sent."""
    with socket.create_connection((HOST, front), timeout=5) as sock:
        sock.sendall(upload_head(front, MAX_BODY + 1, "x"))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"<center>nginx</center>" in answer  # nginx's own page, not the app's JSON


@needs_nginx
def test_a_bad_request_under_the_cap_reaches_the_app(front):
    """Under the cap, nginx passes the request on: the app answers with its own JSON 400."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\nnope\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    connection = http.client.HTTPConnection(HOST, front, timeout=5)
    connection.request(
        "POST",
        "/api/predict",
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.status == 400
    assert response.getheader("Content-Type", "").startswith("application/json"), payload


@dataclass
class FakeWorker:
    """What deploy/gunicorn_conf.py's hooks read and write on a gunicorn worker."""

    pid: int
    ppid: int = 4242
    nr: int = 299
    max_requests: int = 300
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("gunicorn.test"))


def exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_workers_recycle_one_at_a_time(tmp_path, monkeypatch):
    """A worker at its limit while another restarts is postponed until that one's replacement
    is warm; then it restarts in turn."""
    spec = importlib.util.spec_from_file_location(
        "deploy_gunicorn_conf", ROOT / "deploy" / "gunicorn_conf.py"
    )
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = threading.Thread(target=lambda: None)
    finished.start()
    monkeypatch.setattr("uploads.classifiers.start_background_warmup", lambda: finished)

    first, second = FakeWorker(pid=exited_pid()), FakeWorker(pid=os.getpid())
    conf.pre_request(first, None)
    assert first.max_requests == 300  # restarts after this request
    conf.pre_request(second, None)
    assert second.max_requests > 300  # postponed: the first is restarting

    conf.post_worker_init(FakeWorker(pid=os.getpid() + 1))  # the first's replacement, warm
    second.nr = second.max_requests - 1
    limit = second.max_requests
    conf.pre_request(second, None)
    assert second.max_requests == limit  # its turn now
