"""Gunicorn configuration: `gunicorn -c classifier_site/gunicorn_conf.py`.

Each worker imports classifier_site.wsgi after the fork, so it loads and compiles its own
models (JAX must not be forked with live threads: never set preload_app). XLA is limited to one
compute thread per worker (settings.CLASSIFIER_XLA_FLAGS) so that the workers share the cores;
the request threads of a worker overlap image decoding and database writes with inference.

When the workers fill the cores evenly (the default: one per core), each worker is pinned to a
core of its own (GUNICORN_PIN_WORKERS: 'auto', '1' always, '0' never; Linux only). Unpinned,
XLA:CPU still runs a second thread beside each forward pass that mostly waits: one 32x32 image
costs 4.4 ms of CPU for 2.6 ms of wall time, against 2.7 ms of both on one core, and a saturated
server pays for that CPU (docs/benchmarks.md: 1.16-1.28x the requests/s on 2 cores). A
worker started pinned stays pinned (also after `kill -TTOU` leaves fewer workers than cores).

A worker (re)start loads its models from JAX's persistent compilation cache
(DJANGO_JAX_CACHE_DIR, filled by `manage.py warmup_models` before the server starts), so it is
ready in seconds. Workers are not recycled by default (GUNICORN_MAX_REQUESTS=0). Set it to
bound a slow leak, and then run deploy/gunicorn_conf.py, which adds hooks so that one worker
restarts at a time and takes connections only once warm: jitter alone (half the limit, here)
does not keep them apart under even load (measured: both restarted within 3 s every time).
"""

import os
import sys

from classifier_site import UNPINNED_CPUS_ENV

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings.production")

# GUNICORN_WORKER_CLASS=asgi runs classifier_site.asgi under uvicorn's worker (the `asgi`
# extra) instead of WSGI threads, for comparison: measured slower here (docs/benchmarks.md).
_ASGI = os.environ.get("GUNICORN_WORKER_CLASS", "gthread") == "asgi"
wsgi_app = "classifier_site.asgi:application" if _ASGI else "classifier_site.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", os.cpu_count() or 2))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
worker_class = "uvicorn_worker.UvicornWorker" if _ASGI else "gthread"
preload_app = False
timeout = 120  # the first request of a worker may wait for model compilation
graceful_timeout = 30
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = max_requests // 2
accesslog = "-"

# 'auto': pin when the workers fill the cores evenly (they would share them anyway).
PIN_WORKERS = os.environ.get("GUNICORN_PIN_WORKERS", "auto").lower()
_PIN_CHOICES = {
    "auto": None,
    **dict.fromkeys(("1", "true", "on"), True),
    **dict.fromkeys(("0", "false", "off"), False),
}
if PIN_WORKERS not in _PIN_CHOICES:
    print(
        f"GUNICORN_PIN_WORKERS={PIN_WORKERS!r} is not auto, 1 or 0: using auto",
        file=sys.stderr,
    )


def usable_cpus() -> list[int]:
    """The cores this process may run on ([] where the platform cannot pin: not Linux)."""
    if not hasattr(os, "sched_getaffinity") or not hasattr(os, "sched_setaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def pins_workers(worker_count: int, cpus: list[int]) -> bool:
    """Whether workers get a core each: as GUNICORN_PIN_WORKERS says, or (auto) when there
    are several cores and the workers fill them evenly (3 workers on 2 cores would not)."""
    if len(cpus) < 1:
        return False
    choice = _PIN_CHOICES.get(PIN_WORKERS)
    if choice is not None:
        return choice
    return len(cpus) > 1 and worker_count > 0 and worker_count % len(cpus) == 0


def least_used_cpu(cpus: list[int], taken: list[int]) -> int:
    """The core the fewest live workers are pinned to (the lowest such one): a worker that
    replaces another takes the core that one left."""
    return min(cpus, key=lambda cpu: (taken.count(cpu), cpu))


def pre_fork(server, worker):
    """In the arbiter: choose the new worker's core while the live ones' cores are known."""
    worker.cpu = None
    cpus = usable_cpus()
    if pins_workers(server.num_workers, cpus):
        live = [getattr(other, "cpu", None) for other in server.WORKERS.values()]
        worker.cpu = least_used_cpu(cpus, [cpu for cpu in live if cpu is not None])


def post_fork(server, worker):
    """In the new worker, before it imports the app (and JAX starts its threads). A core that
    cannot be had (taken offline meanwhile) leaves the worker unpinned, not stopped."""
    cpu = getattr(worker, "cpu", None)
    if cpu is None:
        return
    before = usable_cpus()
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as err:
        server.log.warning("Worker %s not pinned to core %s: %s", worker.pid, cpu, err)
        return
    os.environ[UNPINNED_CPUS_ENV] = ",".join(map(str, before))
