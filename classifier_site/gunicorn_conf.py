"""Gunicorn configuration: `gunicorn -c classifier_site/gunicorn_conf.py`.

Each worker imports classifier_site.wsgi after the fork, so it loads and compiles its own
models (JAX must not be forked with live threads: never set preload_app). XLA is limited to one
compute thread per worker (settings.CLASSIFIER_XLA_FLAGS) so that the workers share the cores;
the request threads of a worker overlap image decoding and database writes with inference.

A worker (re)start loads its models from JAX's persistent compilation cache
(DJANGO_JAX_CACHE_DIR, filled by `manage.py warmup_models` before the server starts), so it is
ready in seconds. Workers are not recycled by default (GUNICORN_MAX_REQUESTS=0). Set it to
bound a slow leak, and then run deploy/gunicorn_conf.py, which adds hooks so that one worker
restarts at a time and takes connections only once warm: jitter alone (half the limit, here)
does not keep them apart under even load (measured: both restarted within 3 s every time).
"""

import os

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
