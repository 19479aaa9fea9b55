"""The one accessor to the research classifiers: lazy, cached per process, thread-safe.

Models are named in settings.CLASSIFIER_MODELS (name -> exported model directory), over which
the published versions of uploads.registry take precedence. A model is loaded on first use (or
by warm-up), never at import time or in AppConfig.ready(), and the same
research.serving.classifier.Classifier instance then serves every thread of the process.

Publishing without a restart: at most every settings.CLASSIFIER_REGISTRY_POLL_S seconds a request
asks the database which versions are published (one small query). A name whose directory
changed keeps being served by its current version while a background thread loads and warms the
new one; then one assignment swaps in the new `Served` (classifier and batcher together), so a
request, which takes one `Served` at its start, is answered by one whole model. A failed warm-up
is logged and leaves the old version serving.
"""

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError

from classifier_site import UNPINNED_CPUS_ENV
from research.configs import dataset_title
from research.serving import model_dir  # JAX-free: reads model directories without loading a model
from research.serving.batching import BATCH_BUCKETS, Batcher, run_in_buckets
from research.serving.record import ServingRecord
from uploads import metrics

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_classifiers: dict[tuple[str, str], Any] = {}
_batchers: dict[tuple[str, str], Batcher] = {}
_warm: set[tuple[str, str]] = set()
_errors: dict[tuple[str, str], str] = {}
_warmup_thread: threading.Thread | None = None
_served: dict[str, "Served"] = {}  # name -> what answers it now
_swapping: dict[str, str] = {}  # name -> directory being warmed, or that failed to warm
_published: dict[str, str] = {}  # name -> directory, from uploads.registry
_published_pks: list[int] | None = None
_published_checked = -float("inf")  # time.monotonic() of the last poll


# Published models whose name starts so are private (a visitor's taught classifier, under an
# unguessable name): served by name, but never listed, warmed at start-up or counted by /healthz.
PRIVATE_MODEL_PREFIX = "taught-"


class UnknownModelError(ValueError):
    """The requested model name is not in settings.CLASSIFIER_MODELS."""


class ModelUnavailableError(RuntimeError):
    """A configured model cannot be loaded (missing directory or broken export).

    str() gives the operator's detail (paths, the fix); public_message is safe to show users.
    """

    def __init__(self, message: str, *, model_name: str):
        super().__init__(message)
        self.model_name = model_name
        self.public_message = (
            f"The {model_name!r} model is not available on this server yet; an administrator "
            "must install it (its status is shown at /healthz)."
        )


@dataclass(frozen=True)
class ModelInfo:
    """What the site says about a configured model, from its serving record, without loading.

    `record` is None when the directory holds no readable model (not installed, or broken).
    """

    name: str
    directory: Path
    record: ServingRecord | None
    available: bool

    @property
    def title(self) -> str:
        """A human name for the model, from its dataset."""
        return dataset_title(self.dataset) if self.dataset else self.name

    @property
    def dataset(self) -> str:
        return self.record.dataset if self.record else ""

    @property
    def version(self) -> str:
        return self.record.version if self.record else ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.record.class_names if self.record else ()

    @property
    def accuracy(self) -> float | None:
        return self.record.eval_accuracy if self.record else None

    @property
    def ready(self) -> bool:
        """Loaded and compiled in this process."""
        return is_model_ready(self.name)


@dataclass(frozen=True)
class Served:
    """One version of a model as a request uses it: all from one directory."""

    name: str
    directory: Path
    classifier: Any
    batcher: Batcher


def get_model_names() -> list[str]:
    """Return the configured model names in settings order, then the published ones (but the
    private ones: PRIVATE_MODEL_PREFIX)."""
    published = [name for name in _published_dirs() if not is_private_model(name)]
    return list(dict.fromkeys([*settings.CLASSIFIER_MODELS, *published]))


def is_private_model(name: str) -> bool:
    """Whether a model name is a private one (a taught classifier's), never listed."""
    return name.startswith(PRIVATE_MODEL_PREFIX)


def get_default_model_name() -> str:
    """Return settings.CLASSIFIER_DEFAULT_MODEL, or the first configured model."""
    names = get_model_names()
    default = settings.CLASSIFIER_DEFAULT_MODEL
    return default if default in names else (names[0] if names else "")


def get_model_dir(name: str) -> Path:
    """Return the directory that serves a model now, or raise UnknownModelError: the version
    in use in this process, else the published one, else the settings' one."""
    wanted = _wanted_dir(name)
    served = _served.get(name)
    if served is not None and name in _published:  # while a published version warms
        return served.directory
    return wanted


def _wanted_dir(name: str, *, poll: bool = True) -> Path:
    """The directory a model should be served from: published, else in settings (without
    poll: as last read)."""
    published = _published_dirs() if poll else _published
    directory = published.get(name) or settings.CLASSIFIER_MODELS.get(name)
    if directory is None:
        valid = ", ".join(get_model_names()) or "none configured"
        raise UnknownModelError(f"Unknown model {name!r}; choose one of: {valid}.")
    return Path(directory)


def _read_published() -> list[tuple[int, str, str]]:
    """(pk, name, directory) of every published version being served (uploads.registry).

    The model class is looked up, not imported: this module is imported before Django's apps
    are ready (the WSGI module and gunicorn's hooks import it first).
    """
    served_model = apps.get_model("uploads", "ServedModel")
    rows = served_model.objects.filter(active=True).order_by("pk")
    return list(rows.values_list("pk", "name", "directory"))


def _published_dirs() -> dict[str, str]:
    """The published directories by name, read again at most every CLASSIFIER_REGISTRY_POLL_S
    seconds per process (one query of the few active rows). Off (settings only) when the
    setting is negative; the last answer while the database fails.
    """
    global _published, _published_pks, _published_checked
    poll = getattr(settings, "CLASSIFIER_REGISTRY_POLL_S", 1.0)
    now = time.monotonic()
    if poll < 0 or now - _published_checked < poll:
        return _published
    _published_checked = now
    try:
        rows = _read_published()
    except DatabaseError as err:  # not migrated yet, or the database is down
        logger.warning("Published models not read (serving the last known): %s", err)
        return _published
    pks = [pk for pk, _, _ in rows]
    if pks != _published_pks:
        _published = {name: directory for _, name, directory in rows}
        _published_pks = pks
    return _published


def get_model_info(name: str) -> ModelInfo:
    """Describe a configured model: from the loaded model, else its record on disk.

    Never loads a model, so pages can list models before (or without) warm-up.
    """
    directory = get_model_dir(name)
    loaded = _classifiers.get((name, str(directory)))
    record = loaded.record if loaded is not None else model_dir.describe(directory)
    return ModelInfo(name=name, directory=directory, record=record, available=directory.is_dir())


def list_model_infos() -> list[ModelInfo]:
    """Describe every configured model."""
    return [get_model_info(name) for name in get_model_names()]


def get_served(name: str) -> Served:
    """The version of a model that answers a request now: its classifier and batcher together.

    The first use of a name loads it here (as before warm-up), as does a change of the settings'
    directory. Once a version serves, a newly published directory is loaded and warmed in the
    background and swapped in when warm; this returns the current version meanwhile. Raises as
    get_classifier.
    """
    wanted = _wanted_dir(name)
    served = _served.get(name)
    if served is None or (served.directory != wanted and name not in _published):
        return _serve_now(name, wanted)  # the first version, or the settings changed
    if served.directory == wanted:
        _swapping.pop(name, None)  # back to this version: a failed one may be tried again later
    elif _swapping.get(name) != str(wanted):
        _start_swap(name, wanted)
    return served


def get_classifier(name: str):
    """Return the process-wide Classifier serving a model name, loading it on first use.

    Raises UnknownModelError for a name neither configured nor published and
    ModelUnavailableError, with the directory and the fix, when the model cannot be loaded.
    """
    return get_served(name).classifier


def get_batcher(name: str) -> Batcher:
    """Return the process-wide batcher of a model (loading the model on first use): its
    submit(model_inputs) answers like Classifier.classify_arrays, sharing one forward pass
    among concurrent requests (research.serving.batching). settings.CLASSIFIER_MAX_BATCH rows
    at most per pass, rounded down to a compiled batch bucket (0 or 1: no batching), and a leader
    waits up to settings.CLASSIFIER_BATCH_WAIT_MS for more requests.
    """
    return get_served(name).batcher


def _serve_now(name: str, directory: Path) -> Served:
    """Load a model's first version in this process (requests wait: nothing serves it yet)."""
    with _lock:
        served = _served.get(name)
        if served is None or served.directory != directory:
            served = _make_served(name, directory)
            _served[name] = served
    return served


def _make_served(name: str, directory: Path) -> Served:
    key = (name, str(directory))
    classifier = _classifiers.get(key) or _load_classifier(name, directory)
    _classifiers[key] = classifier
    batcher = _batchers.get(key) or Batcher(
        functools.partial(_classify_in_buckets, classifier),
        max_batch=_max_batch(),
        max_wait_s=max(0, settings.CLASSIFIER_BATCH_WAIT_MS) / 1000,
        on_batch=metrics.observe_batch(name),
    )
    _batchers[key] = batcher
    return Served(name=name, directory=directory, classifier=classifier, batcher=batcher)


def _start_swap(name: str, directory: Path) -> None:
    """Warm `directory` for `name` in a daemon thread, then serve it (once per directory)."""
    with _lock:
        if _swapping.get(name) == str(directory):
            return
        _swapping[name] = str(directory)
    threading.Thread(
        target=_swap, args=(name, directory), name=f"classifier-swap-{name}", daemon=True
    ).start()


# The nice value of a swap's warm-up thread: it yields the CPUs to the requests being served.
SWAP_NICENESS = 10


def _run_on_any_cpu() -> None:
    """In a worker pinned to one core (classifier_site/gunicorn_conf.py), let this thread run
    on every core the worker could use before, as the threads it starts will: a low-priority
    warm-up confined to the core that the worker's requests saturate keeps the GIL while it
    waits for the CPU, and they wait with it (docs/benchmarks.md, "A core per worker").
    Elsewhere nothing changes."""
    cpus = os.environ.get(UNPINNED_CPUS_ENV, "")
    with contextlib.suppress(AttributeError, OSError, ValueError):  # Linux: one thread's cores
        if cpus:
            os.sched_setaffinity(threading.get_native_id(), {int(cpu) for cpu in cpus.split(",")})


def _swap(name: str, directory: Path) -> None:
    key = (name, str(directory))
    started = time.perf_counter()
    with contextlib.suppress(AttributeError, OSError):  # Linux: one thread's priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SWAP_NICENESS)
    _run_on_any_cpu()
    try:
        served = _make_served(name, directory)
        if key not in _warm:  # a rollback to a version this process served: compiled already
            served.classifier.warmup()
    except Exception as err:  # the old version keeps serving; retried when the registry changes
        _errors[key] = str(err)
        logger.error("Model %r from %s failed to warm; the old version serves: %s", *key, err)
        return
    with _lock:
        _warm.add(key)
        _errors.pop(key, None)
        if _swapping.get(name) == str(directory):
            del _swapping[name]
        if _wanted_dir(name, poll=False) != directory:  # rolled back meanwhile
            return
        _served[name] = served  # the swap: one assignment
    logger.info(
        "Model %r %s from %s serving (warmed in %.1f s)",
        name,
        served.classifier.version,
        directory,
        time.perf_counter() - started,
    )


def _classify_in_buckets(classifier, batch):
    """classify_arrays in calls of compiled sizes with little padding (run_in_buckets)."""
    return run_in_buckets(classifier.classify_arrays, batch, BATCH_BUCKETS)


def _max_batch() -> int:
    wanted = settings.CLASSIFIER_MAX_BATCH
    if wanted <= 1:
        return 0
    size = max((bucket for bucket in BATCH_BUCKETS if bucket <= wanted), default=0)
    if size != wanted:
        logger.warning(
            "CLASSIFIER_MAX_BATCH=%d is not a compiled batch size %s; using %d",
            wanted,
            BATCH_BUCKETS,
            size,
        )
    return size


def warm_up_models(names: list[str] | None = None) -> dict[str, float]:
    """Load and compile the given (default: all) models; return seconds spent per model.

    Models already warm in this process are skipped.

    A model that fails to load is recorded (see get_health) and its error re-raised after
    the others have been warmed up.
    """
    timings = {}
    failures = []
    for name in names or get_model_names():
        key = (name, str(get_model_dir(name)))
        if key in _warm:
            continue
        start = time.perf_counter()
        try:
            classifier = get_classifier(name)
            compile_started = time.perf_counter()
            classifier.warmup()
            metrics.MODEL_COMPILE_SECONDS.labels(model=name).observe(
                time.perf_counter() - compile_started
            )
        except Exception as err:  # recorded for /healthz, re-raised below
            _errors[key] = str(err)
            failures.append(err)
            logger.error("Warm-up of model %r failed: %s", name, err)
            continue
        _warm.add(key)
        _errors.pop(key, None)
        timings[name] = time.perf_counter() - start
        logger.info("Model %r warmed up in %.1f s", name, timings[name])
    if failures:
        raise failures[0]
    return timings


def start_background_warmup() -> threading.Thread:
    """Warm up every model in a daemon thread (once per process); /healthz reports progress."""
    global _warmup_thread
    with _lock:
        if _warmup_thread is None:
            _warmup_thread = threading.Thread(
                target=_warm_up_quietly, name="classifier-warmup", daemon=True
            )
            _warmup_thread.start()
    return _warmup_thread


def is_model_ready(name: str) -> bool:
    """Whether a model has been loaded and compiled in this process."""
    return (name, str(get_model_dir(name))) in _warm


HEALTH_NOT_INSTALLED = "error: not installed"
HEALTH_FAILED = "error: failed to load"


def get_health() -> dict[str, Any]:
    """Return {'ready': bool, 'status': 'ready' | 'starting' | 'error', 'models': {name: state}}.

    A model's state is 'ready', 'loading', 'error: not installed' (its directory is missing)
    or 'error: failed to load'. These are public: the detail (paths, the cause) is only in the
    server log. 'error' is permanent until an operator acts, unlike 'starting'.
    """
    models = {}
    for name in get_model_names():
        directory = get_model_dir(name)
        key = (name, str(directory))
        if key in _warm:
            models[name] = "ready"
        elif not directory.is_dir():
            models[name] = HEALTH_NOT_INSTALLED
        elif key in _errors:
            models[name] = HEALTH_FAILED
        else:
            models[name] = "loading"
    ready = bool(models) and all(state == "ready" for state in models.values())
    failed = not models or any(state.startswith("error") for state in models.values())
    status = "ready" if ready else ("error" if failed else "starting")
    return {"ready": ready, "status": status, "models": models}


def clear_cache() -> None:
    """Forget every loaded model and warm-up state (for tests)."""
    global _published, _published_pks, _published_checked
    with _lock:
        _classifiers.clear()
        _batchers.clear()
        _warm.clear()
        _errors.clear()
        _served.clear()
        _swapping.clear()
        _published, _published_pks, _published_checked = {}, None, -float("inf")


_cache_configured: str | None = None


def configure_compilation_cache() -> str:
    """Prepare JAX for serving, once per process and before its first compile: XLA's flags
    from settings.CLASSIFIER_XLA_FLAGS (unless XLA_FLAGS is set, or JAX already started), and
    the persistent compilation cache in settings.JAX_CACHE_DIR. Returns the cache directory,
    '' when the setting turns it off.

    The cache key includes XLA's flags, so `manage.py warmup_models` and the workers must run
    with the same ones: both come here. Every entry is kept, however quick its compile, so a
    worker started after warm-up compiles nothing.
    """
    global _cache_configured
    flags = getattr(settings, "CLASSIFIER_XLA_FLAGS", "")
    if flags and "jax" not in sys.modules:
        os.environ.setdefault("XLA_FLAGS", flags)
    directory = str(getattr(settings, "JAX_CACHE_DIR", "") or "")
    if not directory or _cache_configured == directory:
        return directory
    import jax

    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.warning("JAX compilation cache off: cannot create %s: %s", directory, err)
        return ""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cache_configured = directory
    logger.info("JAX compilation cache: %s", directory)
    return directory


def _warm_up_quietly() -> None:
    from uploads.images import warm_up_codecs

    warm_up_codecs()
    with contextlib.suppress(Exception):  # already logged, and shown by /healthz
        warm_up_models()


def _load_classifier(name: str, directory: Path):
    if not directory.is_dir():
        raise ModelUnavailableError(
            f"Model {name!r} is not available: directory {directory} does not exist. "
            "Export it with research.train (see the README), or point "
            "DJANGO_CLASSIFIER_MODELS at an exported model ('name=/path/to/model').",
            model_name=name,
        )
    configure_compilation_cache()
    from research.serving.classifier import Classifier  # imported here: JAX loads on first use only

    logger.info("Loading model %r from %s", name, directory)
    started = time.perf_counter()
    try:
        classifier = Classifier.load(directory)
    except Exception as err:
        raise ModelUnavailableError(
            f"Model {name!r} could not be loaded from {directory}: {err}", model_name=name
        ) from err
    metrics.MODEL_LOAD_SECONDS.labels(model=name).observe(time.perf_counter() - started)
    return classifier
