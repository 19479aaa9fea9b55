"""Development settings: DEBUG on (DJANGO_DEBUG=0 turns it off; scripts/serve.sh does), a
throw-away secret, everything else from base."""

from .base import *  # noqa: F403
from .base import read_env_bool

DEBUG = read_env_bool("DJANGO_DEBUG", True)
SECRET_KEY = SECRET_KEY or "dev-insecure-secret-key-do-not-use-in-production"  # noqa: F405

# Static files come straight from the apps (whitenoise's finders); no collectstatic needed.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = None
