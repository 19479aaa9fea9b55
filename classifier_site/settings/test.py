"""Test settings: fast hashing, an on-disk SQLite test database, no warm-up at import."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = "test-secret-key"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A file, not SQLite's shared in-memory database, so that threaded tests exercise the same
# WAL/busy-timeout/IMMEDIATE locking as production.
# (SQLite only: DATABASE_URL=postgres://... runs the suite on a real server, CI's second run.)
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})  # noqa: F405
    DATABASES["default"]["TEST"]["NAME"] = str(  # noqa: F405
        Path(tempfile.gettempdir()) / f"classifier_site_test_{os.getpid()}.sqlite3"
    )
MEDIA_ROOT = Path(tempfile.gettempdir()) / f"classifier_site_test_media_{os.getpid()}"
TEACH_ROOT = Path(
    os.environ.get(
        "DJANGO_TEACH_ROOT",
        Path(tempfile.gettempdir()) / f"classifier_site_test_teach_{os.getpid()}",
    )
)

# Off unless asked for: tests compile tiny models, and must not write under the repository.
JAX_CACHE_DIR = os.environ.get("DJANGO_JAX_CACHE_DIR", "")

WHITENOISE_USE_FINDERS = True
STATIC_ROOT = None

# Throttling stays on (tests exercise it by lowering the rate), far above what a test sends.
REST_FRAMEWORK = {  # noqa: F405
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_THROTTLE_RATES": {
        **REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],  # noqa: F405  (every scope, e.g. 'live')
        "anon": os.environ.get("DJANGO_API_THROTTLE_RATE", "100000/min"),
    },
}

# Batched serving is off by default (slower on a 2-core CPU); the tests run the web through it,
# so the batcher's path (and its metrics) is what they exercise.
CLASSIFIER_MAX_BATCH = read_env_int("DJANGO_CLASSIFIER_MAX_BATCH", 8)  # noqa: F405

# Published model versions (uploads.registry) are read from the database; most tests touch the
# models without one, so only tests/web/test_publish.py turns the poll on.
CLASSIFIER_REGISTRY_POLL_S = -1.0
