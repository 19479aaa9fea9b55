"""Fault injection against the production stack (deploy/run-local.sh: nginx + gunicorn, the
production settings, the shipped CIFAR-10 model): a full disk, a database outage and a worker
killed with SIGKILL, each under load. Prints, per fault: the answers by status, rows stored
against 201s, the files and rows out of step before reconciliation (`manage.py
reconcile_media`) and after `--repair`, and the seconds from the end of the fault to the first
201.

    python -m benchmarks.serving.faults                        # all three
    python -m benchmarks.serving.faults --faults disk kill     # some
    python -m benchmarks.serving.faults --json faults.json

Needs root (the disk fault mounts a small tmpfs; the database fault runs a PostgreSQL cluster
of its own on a spare port, created with Debian's pg_createcluster and dropped at the end, so
no other cluster is touched) and nginx.
"""

import argparse
import http.client
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 600
PG_CLUSTER, PG_PORT, PG_ROLE = "faults", 5499, "faults"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def post_image(port: int, data: bytes) -> int:
    """POST /api/predict; the status, or 0 when the connection failed."""
    boundary = secrets.token_hex(8)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.request(
            "POST",
            "/api/predict",
            body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def get_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


class Stack:
    """deploy/run-local.sh in a folder of its own."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir, self.port = workdir, free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": HOST,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_TRUSTED_PROXIES": HOST,
            "DJANGO_API_THROTTLE_RATE": "10000000/min",  # every client is 127.0.0.1 here
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_CLASSIFIER_MODELS": f"cifar10={ROOT / 'models' / 'cifar10'}",
            "DJANGO_JAX_CACHE_DIR": str(workdir.parent / "jax-cache"),
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DJANGO_MEDIA_ROOT": str(workdir / "media"),
            "DJANGO_HEALTH_MIN_FREE_MB": "0",
            "GUNICORN_PORT": str(free_port()),
            "GUNICORN_WORKERS": "2",
            "GUNICORN_THREADS": "4",
            "RUN_WARMUP": "1",
            "PYTHON": sys.executable,
            **env,
        }

    def __enter__(self) -> "Stack":
        self.log = open(self.workdir / "run-local.log", "wb")  # noqa: SIM115
        self.server = subprocess.Popen(
            ["bash", "deploy/run-local.sh", str(self.port), str(self.workdir)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline, ready = time.monotonic() + STARTUP_TIMEOUT_S, 0
        while ready < 8:
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start; see {self.workdir}/run-local.log")
            ready = ready + 1 if get_status(self.port, "/readyz") == 200 else 0
            time.sleep(0.25)
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        self.log.close()

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def rows(self) -> int:
        code = "from uploads.models import Upload; print(Upload.objects.count())"
        return int(self.manage("shell", "-c", code).split()[-1])

    def out_of_step(self, repair: bool = False) -> int:
        """Files without rows + unfinished writes + rows without files (reconcile_media)."""
        args = ["reconcile_media", "--min-age", "0"] + (["--repair"] if repair else [])
        counts = re.findall(r": (\d+) (?:found|removed)", self.manage(*args))
        return sum(int(count) for count in counts)

    def worker_pids(self) -> list[int]:
        return gunicorn_workers(self.server.pid)


def gunicorn_workers(pid: int) -> list[int]:
    """gunicorn's workers under run-local.sh (process `pid`): the children of its gunicorn
    master, from /proc."""
    masters = [child for child in _children(pid) if _is_gunicorn(child)]
    return [worker for master in masters for worker in _children(master)]


def _children(pid: int) -> list[int]:
    """A process's children, from /proc (no procps needed)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_gunicorn(pid: int) -> bool:
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def load(port: int, *, clients: int, seconds: float, side: int, fault, fault_at: float) -> dict:
    """`clients` threads upload for `seconds`; `fault()` runs at `fault_at` and returns when
    the fault has ended. Returns the answers and the recovery time."""
    answers: list[tuple[float, int]] = []
    stop = threading.Event()
    images = [png(side, seed) for seed in range(8)]

    def client(index: int) -> None:
        n = 0
        while not stop.is_set():
            status = post_image(port, images[(index + n) % len(images)])
            answers.append((time.monotonic(), status))
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(fault_at)
    fault_started = time.monotonic()
    fault()
    ended = time.monotonic()
    time.sleep(max(0.0, seconds - (ended - started)))
    stop.set()
    for thread in threads:
        thread.join(90)
    after = sorted(t for t, status in answers if status == 201 and t > ended)
    during = Counter(status for t, status in answers if fault_started <= t)
    return {
        "statuses": dict(sorted(Counter(status for _, status in answers).items())),
        "statuses_from_the_fault_on": dict(sorted(during.items())),
        "created": sum(1 for _, status in answers if status == 201),
        "recovery_s": round(after[0] - ended, 2) if after else None,
    }


def run_disk(workdir: Path) -> dict:
    media = workdir / "media"
    media.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(media)], check=True)
    try:
        with Stack(workdir, {}) as stack:
            before = stack.rows()

            def fault() -> None:  # full for 10 s, then the operator grows the disk
                time.sleep(10)
                subprocess.run(["mount", "-o", "remount,size=64m", str(media)], check=True)

            result = load(stack.port, clients=8, seconds=20, side=400, fault=fault, fault_at=1)
            return _finish(stack, result, before)
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False)


def run_database(workdir: Path) -> dict:
    version = sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]
    cluster = [version, PG_CLUSTER]
    subprocess.run(["pg_dropcluster", "--stop", *cluster], capture_output=True, check=False)
    subprocess.run(
        ["pg_createcluster", "-p", str(PG_PORT), *cluster], check=True, capture_output=True
    )
    subprocess.run(["pg_ctlcluster", *cluster, "start"], check=True)
    try:
        psql = ["runuser", "-u", "postgres", "--", "psql", "-q", "-p", str(PG_PORT)]
        for statement in (
            f"CREATE ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_ROLE}'",
            f"CREATE DATABASE {PG_ROLE} OWNER {PG_ROLE}",
        ):
            subprocess.run([*psql, "-c", statement], check=True)
        url = f"postgres://{PG_ROLE}:{PG_ROLE}@{HOST}:{PG_PORT}/{PG_ROLE}"
        with Stack(workdir, {"DATABASE_URL": url}) as stack:
            before = stack.rows()
            pages = Counter()

            def fault() -> None:  # 20 s down, then started again
                subprocess.run(["pg_ctlcluster", *cluster, "stop", "-m", "fast"], check=True)
                until = time.monotonic() + 20
                while time.monotonic() < until:
                    for path in ("/", "/history/", "/readyz", "/livez", "/api/predictions"):
                        pages[(path, get_status(stack.port, path))] += 1
                    time.sleep(0.5)
                subprocess.run(["pg_ctlcluster", *cluster, "start"], check=True)

            result = load(stack.port, clients=16, seconds=30, side=32, fault=fault, fault_at=3)
            result["pages_while_down"] = {f"{p} {s}": n for (p, s), n in sorted(pages.items())}
            return _finish(stack, result, before)
    finally:
        subprocess.run(["pg_dropcluster", "--stop", *cluster], check=False, capture_output=True)


def run_kill(workdir: Path) -> dict:
    with Stack(workdir, {}) as stack:
        before = stack.rows()

        def fault() -> None:
            os.kill(stack.worker_pids()[0], signal.SIGKILL)

        result = load(stack.port, clients=32, seconds=15, side=400, fault=fault, fault_at=4)
        return _finish(stack, result, before)


def _finish(stack: Stack, result: dict, rows_before: int) -> dict:
    time.sleep(1)
    result["rows"] = stack.rows() - rows_before
    result["out_of_step_before_reconcile"] = stack.out_of_step()
    stack.out_of_step(repair=True)
    result["out_of_step_after_reconcile"] = stack.out_of_step()
    result["rows_after_reconcile"] = stack.rows() - rows_before
    return result


FAULTS = {"disk": run_disk, "database": run_database, "kill": run_kill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--keep", action="store_true", help="Keep each run's folder (logs).")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="faults-")
            print(f"runs in {tmp}", flush=True)
        for name in args.faults:
            workdir = Path(tmp) / name
            workdir.mkdir()
            results[name] = FAULTS[name](workdir)
            print(f"== {name}", json.dumps(results[name], indent=1), sep="\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
