"""WSGI entry point (gunicorn classifier_site.wsgi): loads settings and starts model warm-up.

Each process (each gunicorn worker, never the master: do not use --preload) loads its own
models in a background thread; /healthz answers 503 until every model is compiled.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings.production")

application = get_wsgi_application()

from uploads.classifiers import start_background_warmup  # noqa: E402  (needs settings)

start_background_warmup()
