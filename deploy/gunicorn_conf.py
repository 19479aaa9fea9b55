"""Gunicorn for the production stack: classifier_site/gunicorn_conf.py plus two hooks that
make worker recycling (GUNICORN_MAX_REQUESTS) invisible to clients.

    gunicorn -c deploy/gunicorn_conf.py          # what deploy/run-local.sh starts

1. A worker accepts no connection until its models are warm (post_worker_init waits for the
   warm-up thread that classifier_site.wsgi starts): while a fresh worker loads, requests go
   to the workers that are ready instead of waiting seconds on it, and /healthz never
   answers 'starting' from a half-started worker.
2. One worker restarts at a time: a worker at its request limit claims a marker file named
   after the arbiter; while another worker holds it (until its replacement is warm), the
   limit is postponed by a few requests. Jitter alone does not do this: workers sharing the
   load reach similar counts, and at 300 requests both restarted within 3 s every time.
3. /metrics adds up every worker: prometheus_client's multiprocess mode, in the folder
   PROMETHEUS_MULTIPROC_DIR (default: a new temporary folder per arbiter, set by on_starting
   before any worker forks, since the client reads it at import). Its files are cleared at start, a
   dead worker's live values are dropped (child_exit), and the folder made here is removed at
   exit. Counters and histograms only, which this mode sums across workers.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

from classifier_site.gunicorn_conf import *  # noqa: F403

WARMUP_WAIT_S = 100  # below gunicorn's worker timeout (120 s): a stuck warm-up is not fatal
MARKER_STALE_S = 180  # a marker older than this (its replacement never got warm) is ignored
POSTPONE_REQUESTS = 20
_METRICS_DIR_PREFIX = "gunicorn-metrics-"


def _marker(worker) -> Path:
    return Path(tempfile.gettempdir()) / f"gunicorn-recycling-{worker.ppid}"


def _marker_owner(path: Path) -> int | None:
    """The pid in a fresh marker, or None when there is none (or it is stale)."""
    try:
        if time.time() - path.stat().st_mtime > MARKER_STALE_S:
            return None
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return None


def _claim(path: Path, pid: int) -> bool:
    owner = _marker_owner(path)
    if owner == pid:
        return True
    if owner is not None:
        return False
    path.unlink(missing_ok=True)  # stale or unreadable
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False  # another worker claimed it just now
    with os.fdopen(fd, "w") as out:
        out.write(str(pid))
    return True


def pre_request(worker, req):
    if worker.nr + 1 >= worker.max_requests and not _claim(_marker(worker), worker.pid):
        worker.max_requests = worker.nr + POSTPONE_REQUESTS


def post_worker_init(worker):
    from uploads.classifiers import start_background_warmup

    start = time.monotonic()
    start_background_warmup().join(timeout=WARMUP_WAIT_S)
    worker.log.info("Worker %s warm in %.1f s", worker.pid, time.monotonic() - start)
    owner = _marker_owner(_marker(worker))
    if owner is not None and owner != worker.pid:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:  # the worker this one replaces has exited: next may go
            _marker(worker).unlink(missing_ok=True)


def on_starting(server):
    """In the arbiter, before any worker forks: the workers inherit the metrics folder."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink(missing_ok=True)  # a previous run's values


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    (Path(tempfile.gettempdir()) / f"gunicorn-recycling-{server.pid}").unlink(missing_ok=True)
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if directory.name.startswith(_METRICS_DIR_PREFIX):  # made by on_starting
        shutil.rmtree(directory, ignore_errors=True)
