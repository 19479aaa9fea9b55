"""Settings shared by every environment, read from DJANGO_* environment variables.

Environment variables (all optional here; production.py makes the secret mandatory):
    DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS (comma-separated),
    DJANGO_CSRF_TRUSTED_ORIGINS (comma-separated), DATABASE_URL (default: SQLite db.sqlite3),
    DJANGO_MEDIA_ROOT, DJANGO_STATIC_ROOT, DJANGO_CLASSIFIER_MODELS ("name=dir,name=dir"),
    DJANGO_CLASSIFIER_DEFAULT_MODEL, DJANGO_UPLOAD_MAX_BYTES, DJANGO_UPLOAD_MAX_PIXELS,
    DJANGO_UPLOAD_MAX_REQUEST_PIXELS, DJANGO_UPLOAD_MAX_CONCURRENT_DECODES,
    DJANGO_UPLOAD_STORED_MAX_SIDE, DJANGO_UPLOAD_MAX_FILES, DJANGO_JAX_CACHE_DIR (empty: off),
    DJANGO_API_THROTTLE_RATE, DJANGO_LIVE_THROTTLE_RATE (POST /api/classify),
    DJANGO_TRUSTED_PROXIES (comma-separated addresses or networks),
    DJANGO_UPLOAD_RETENTION_DAYS (empty: keep forever), DJANGO_LOG_LEVEL,
    DJANGO_CLASSIFIER_MAX_BATCH, DJANGO_CLASSIFIER_BATCH_WAIT_MS, DJANGO_METRICS_TOKEN,
    DJANGO_METRICS_ALLOW (comma-separated addresses or networks), DJANGO_HEALTH_MIN_FREE_MB,
    DJANGO_TEACH_ROOT, DJANGO_TEACH_BACKBONES ("name=dir,name=dir"), DJANGO_TEACH_MAX_EXAMPLES,
    DJANGO_TEACH_MAX_CLASSIFIERS, DJANGO_TEACH_MAX_FILES, DJANGO_TEACH_STALE_S,
    DJANGO_TEACH_TIMEOUT_S.
"""

import ipaddress
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parents[2]


def read_env_bool(name: str, default: bool) -> bool:
    """Return a boolean environment variable ('1', 'true', 'yes', 'on' are true)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def read_env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated environment variable as a list of non-empty items."""
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def read_env_int(name: str, default: int) -> int:
    """Return an integer environment variable, failing loudly on a malformed value."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from err


def read_classifier_models(
    default: dict[str, Path], variable: str = "DJANGO_CLASSIFIER_MODELS"
) -> dict[str, Path]:
    """Return a model registry from an environment variable ('name=dir,name=dir')."""
    value = os.environ.get(variable)
    if not value:
        return default
    models = {}
    for item in value.split(","):
        name, sep, directory = item.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ImproperlyConfigured(
                f"{variable} items look like 'name=/path/to/model', got {item!r}"
            )
        models[name.strip()] = Path(directory.strip()).expanduser()
    return models


def configure_sqlite(database: dict) -> dict:
    """Tune a SQLite database so concurrent uploads wait for the write lock, never fail.

    WAL lets readers run beside the one writer, IMMEDIATE takes the write lock when a
    transaction starts (so two transactions never deadlock upgrading a read lock), and
    the busy timeout makes a writer wait for the lock instead of raising "database is locked".
    """
    if database["ENGINE"] != "django.db.backends.sqlite3":
        return database
    options = database.setdefault("OPTIONS", {})
    options.setdefault("timeout", 30)
    options.setdefault("transaction_mode", "IMMEDIATE")
    options.setdefault(
        "init_command",
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000",
    )
    return database


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = read_env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = read_env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = read_env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from this site (no CDN)
    "uploads",
    "django_tasks",
    "django_tasks_db",
    "teaching",
]

MIDDLEWARE = [
    "uploads.metrics.MetricsMiddleware",  # first: times the whole stack
    "classifier_site.middleware.TrustedProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "classifier_site.middleware.UploadLimitsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "classifier_site.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "classifier_site.urls"
WSGI_APPLICATION = "classifier_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": configure_sqlite(
        dj_database_url.config(
            default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
            conn_max_age=read_env_int("DJANGO_CONN_MAX_AGE", 0),
        )
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Where a sign-in goes when it names no destination, or one refused as off-site: only staff
# sign in (through the admin), so the admin's index (Django's default page does not exist here).
LOGIN_REDIRECT_URL = "admin:index"
# Database sessions that an upload saves inside its own transaction (uploads.sessions).
SESSION_ENGINE = "uploads.sessions"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", BASE_DIR / "media"))
STORAGES = {
    # Every file written whole or not at all (a temporary name, then linked into place).
    "default": {"BACKEND": "uploads.storage.AtomicFileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Uploads: limits enforced by uploads.images before any pixel is decoded, and by
# classifier_site.middleware before a body is read. Memory per worker stays bounded: a request
# decodes at most UPLOAD_MAX_REQUEST_PIXELS pixels, one image at a time up to
# UPLOAD_MAX_CONCURRENT_DECODES images per process, and keeps each one at most
# UPLOAD_STORED_MAX_SIDE pixels on its longer side (what is stored, and far above a 32x32 input).
UPLOAD_MAX_BYTES = read_env_int("DJANGO_UPLOAD_MAX_BYTES", 10 * 1024 * 1024)
UPLOAD_MAX_PIXELS = read_env_int("DJANGO_UPLOAD_MAX_PIXELS", 25_000_000)
UPLOAD_MAX_REQUEST_PIXELS = read_env_int("DJANGO_UPLOAD_MAX_REQUEST_PIXELS", 50_000_000)
UPLOAD_MAX_CONCURRENT_DECODES = read_env_int("DJANGO_UPLOAD_MAX_CONCURRENT_DECODES", 2)
UPLOAD_STORED_MAX_SIDE = read_env_int("DJANGO_UPLOAD_STORED_MAX_SIDE", 1024)
UPLOAD_MAX_FILES = read_env_int("DJANGO_UPLOAD_MAX_FILES", 10)
# Django's own parser limits sit above ours so that ours answer with the clearer message.
DATA_UPLOAD_MAX_NUMBER_FILES = 100
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# Readiness (/readyz, /healthz) fails when less than this much space is left for media.
HEALTH_MEDIA_MIN_FREE_BYTES = read_env_int("DJANGO_HEALTH_MIN_FREE_MB", 8) * 2**20

# Uploads older than this many days are deleted by `manage.py purge_uploads` (run it from cron
# or a timer); None keeps them forever.
UPLOAD_RETENTION_DAYS = read_env_int("DJANGO_UPLOAD_RETENTION_DAYS", 0) or None

# The reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or
# networks, e.g. "127.0.0.1,::1"); from anyone else classifier_site.middleware removes them.
# Without one, the client address is the peer's and the scheme is the connection's.
TRUSTED_PROXIES = read_env_list("DJANGO_TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _err:
        raise ImproperlyConfigured(
            f"DJANGO_TRUSTED_PROXIES items are addresses or networks, got {_proxy!r}"
        ) from _err
if TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Classifier registry: model name -> directory exported by research.train.
CLASSIFIER_MODELS = read_classifier_models(
    {
        "cifar10": BASE_DIR / "models" / "cifar10",
        "fashion_mnist": BASE_DIR / "models" / "fashion_mnist",
    }
)
CLASSIFIER_DEFAULT_MODEL = os.environ.get(
    "DJANGO_CLASSIFIER_DEFAULT_MODEL", next(iter(CLASSIFIER_MODELS), "")
)
CLASSIFIER_TOP_K = 5
# How often (seconds) a worker asks the database which model versions are published
# (uploads.registry, `manage.py publish_model`); negative: never, settings only.
CLASSIFIER_REGISTRY_POLL_S = float(os.environ.get("DJANGO_CLASSIFIER_REGISTRY_POLL_S", "1"))
# Batched serving (research.serving.batching): concurrent requests for one model share a forward
# pass of at most CLASSIFIER_MAX_BATCH images (a compiled batch size; 0 turns batching off); the
# request that leads a batch waits up to CLASSIFIER_BATCH_WAIT_MS for others, never when it finds
# the model idle. Off by default: on the 2-core CPU it was measured slower (0.83-0.95x requests/s at
# 1-32 clients, docs/web.md); 8 where a pass has a fixed cost to share (a GPU, many threads per
# worker).
CLASSIFIER_MAX_BATCH = read_env_int("DJANGO_CLASSIFIER_MAX_BATCH", 0)
CLASSIFIER_BATCH_WAIT_MS = read_env_int("DJANGO_CLASSIFIER_BATCH_WAIT_MS", 2)
# /metrics (uploads.metrics) answers only `Authorization: Bearer <METRICS_TOKEN>` or a client
# address in METRICS_ALLOW (addresses or networks); with neither it does not exist.
METRICS_TOKEN = os.environ.get("DJANGO_METRICS_TOKEN", "")
METRICS_ALLOW = read_env_list("DJANGO_METRICS_ALLOW", [])
for _network in METRICS_ALLOW:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _err:
        raise ImproperlyConfigured(
            f"DJANGO_METRICS_ALLOW items are addresses or networks, got {_network!r}"
        ) from _err
# JAX's persistent compilation cache, shared by every worker and filled by
# `manage.py warmup_models`: a (re)started worker loads compiled code instead of compiling
# (seconds instead of a minute). Empty turns it off.
JAX_CACHE_DIR = os.environ.get("DJANGO_JAX_CACHE_DIR", str(BASE_DIR / ".cache" / "jax"))
# XLA's flags for every process that serves or warms up models (XLA_FLAGS, when set, wins).
# One compute thread per process: gunicorn's workers share the cores instead of fighting over
# them. The compilation cache is keyed by these flags, so warm-up and workers must agree.
CLASSIFIER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# The JSON API (uploads.api). No authentication classes, so no CSRF check (the HTML form keeps
# it); a client that keeps the session cookie sees its own history. Throttling counts requests
# per client address (REMOTE_ADDR, after TrustedProxyMiddleware) in the default cache, which is
# per process: a shared cache makes the rate hold across workers. The HTML form's uploads and
# feedback count against the same rate.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["classifier_site.middleware.ClientRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("DJANGO_API_THROTTLE_RATE", "120/min"),
        "live": os.environ.get("DJANGO_LIVE_THROTTLE_RATE", "900/min"),  # /api/classify
    },
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "uploads.api.handle_exception",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Image classifier API",
    "DESCRIPTION": (
        "Classify an image with one of the site's models and browse your prediction history. "
        "No authentication and no CSRF token are needed; predictions are private to the client "
        "that made them: keep the session cookie POST /api/predict sets to list and read them "
        "(anyone else gets 404), and pass the answer's share_url to show a result to others. "
        "POST /api/classify answers the same without storing anything. Errors are JSON objects "
        '{"error": human-readable message, "code": machine-readable code} with a 4xx status '
        "(429 when throttled, 503 when a model is not installed)."
    ),
    "VERSION": "1.0.0",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,  # the schema endpoint describing itself is noise
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl: null keeps Swagger UI from sending the schema to swagger.io; no deep
    # links, which put a link inside each operation's button (axe: nested-interactive).
    "SWAGGER_UI_SETTINGS": {"deepLinking": False, "validatorUrl": None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"jax": {"level": "WARNING"}, "absl": {"level": "WARNING"}},
}

# The task queue (django-tasks with its database backend): `manage.py db_worker --queue-name
# teach` runs the trainings of taught classifiers, one at a time per worker (docs/teach.md).
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "teach"],
    }
}
# Teaching the site new classes (teaching/): where examples, taught model directories and the
# trainings' scratch folders live (outside MEDIA_ROOT, which uploads.reconcile owns, and outside
# models/), the shipped networks a classifier may be taught on, and the limits.
TEACH_ROOT = Path(os.environ.get("DJANGO_TEACH_ROOT", BASE_DIR / "data" / "teach"))
TEACH_BACKBONES = read_classifier_models(
    {
        "cifar10": BASE_DIR / "models" / "cifar10",  # photos
        "fashion_mnist": BASE_DIR / "models" / "fashion_mnist",  # drawings on a dark background
    },
    "DJANGO_TEACH_BACKBONES",
)
TEACH_MIN_CLASSES, TEACH_MAX_CLASSES = 2, 20  # as research.train.teach
TEACH_MIN_EXAMPLES = 2  # per class: one to learn from, one held out
TEACH_MAX_EXAMPLES = read_env_int("DJANGO_TEACH_MAX_EXAMPLES", 100)  # per class
TEACH_MAX_CLASSIFIERS = read_env_int("DJANGO_TEACH_MAX_CLASSIFIERS", 10)  # per visitor
TEACH_MAX_FILES = read_env_int("DJANGO_TEACH_MAX_FILES", 50)  # per request
# A running job whose worker has not written for this long is taken as dead (failed).
TEACH_STALE_S = read_env_int("DJANGO_TEACH_STALE_S", 60)
TEACH_TIMEOUT_S = read_env_int("DJANGO_TEACH_TIMEOUT_S", 900)  # one training, at most
