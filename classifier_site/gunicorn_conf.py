"""Gunicorn configuration: `gunicorn -c classifier_site/gunicorn_conf.py`.

Each worker imports classifier_site.wsgi after the fork, so it loads and compiles its own
models (JAX must not be forked with live threads: never set preload_app). XLA is limited to one
compute thread per worker so that the workers share the cores instead of fighting over them;
the request threads of a worker overlap image decoding and database writes with inference.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings.production")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

wsgi_app = "classifier_site.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", os.cpu_count() or 2))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
worker_class = "gthread"
preload_app = False
timeout = 120  # the first request of a worker may wait for model compilation
graceful_timeout = 30
max_requests = 2000
max_requests_jitter = 200
accesslog = "-"
