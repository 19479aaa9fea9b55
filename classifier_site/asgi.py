"""ASGI entry point; like wsgi.py it starts model warm-up in the background."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings.production")

application = get_asgi_application()

from uploads.classifiers import start_background_warmup  # noqa: E402  (needs settings)

start_background_warmup()
