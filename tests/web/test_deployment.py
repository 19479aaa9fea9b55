"""Settings, the WSGI entry point and warm-up: what a deployment relies on."""

import io
import logging
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

ROOT = Path(settings.BASE_DIR)


def run_python(code: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter at the repository root."""
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**clean_env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "classifier_site.settings.production",
    "DJANGO_SECRET_KEY": "x7#kQ2!vR9@mZ4$wL8^nP3&bT6*yH1(cF5)dJ0_gS2+eA9-uK4=oI7[rE3]tW6{q",
    "DJANGO_ALLOWED_HOSTS": "classifier.example.com",
}


@pytest.mark.no_models
def test_check_deploy_is_clean_with_production_settings():
    """`manage.py check --deploy` reports no issues with the production settings."""
    result = run_python(
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
        PRODUCTION,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.no_models
def test_production_refuses_to_start_without_a_secret():
    """The production settings have no default secret: a missing one fails at start."""
    env = {k: v for k, v in PRODUCTION.items() if k != "DJANGO_SECRET_KEY"}
    result = run_python("import django; django.setup()", env)
    assert result.returncode != 0
    assert "Set DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.no_models
def test_database_url_selects_postgresql():
    """DATABASE_URL switches the database; SQLite-only options stay off other engines."""
    result = run_python(
        "from django.conf import settings; db = settings.DATABASES['default']\n"
        "print(db['ENGINE'], db['NAME'], db['HOST'], sorted(db.get('OPTIONS', {})))",
        {**PRODUCTION, "DATABASE_URL": "postgres://app:pw@db.internal:5432/classifier"},
    )
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "classifier",
        "db.internal",
        "[]",
    ], result.stderr


@pytest.mark.no_models
def test_api_throttle_rate_is_read_from_the_environment():
    """DJANGO_API_THROTTLE_RATE sets the per-client rate; 120/min without it."""
    code = (
        "from django.conf import settings\n"
        "from classifier_site.middleware import ClientRateThrottle\n"
        "print(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES'][0], ClientRateThrottle().rate)"
    )
    throttle = "classifier_site.middleware.ClientRateThrottle"
    result = run_python(code, {**PRODUCTION, "DJANGO_API_THROTTLE_RATE": "7/min"})
    assert result.stdout.split() == [throttle, "7/min"], result.stderr
    assert run_python(code, PRODUCTION).stdout.split() == [throttle, "120/min"]


def test_wsgi_warms_up_models_and_never_imports_tensorflow(model_dirs):
    """The WSGI app warms every model in the background: /healthz is 503 'loading' until
    then and 200 'ready' after; TensorFlow is never imported."""
    registry = f"cifar10={model_dirs['cifar10']}"  # one model keeps this subprocess quick
    result = run_python(
        """
        import sys, threading, time
        from uploads import classifiers

        # Hold the warm-up until the first request is answered, so that it sees the
        # starting state whatever the machine's speed.
        first_answered = threading.Event()
        warm_up_models = classifiers.warm_up_models
        def gated_warm_up(*args, **kwargs):
            first_answered.wait(60)
            return warm_up_models(*args, **kwargs)
        classifiers.warm_up_models = gated_warm_up

        from classifier_site.wsgi import application
        from django.test import Client
        client = Client()
        first = client.get("/healthz")
        first_answered.set()
        deadline = time.monotonic() + 120
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        body = client.get("/healthz").json()
        print(first.status_code, first.json()["status"], first.json()["models"]["cifar10"])
        print(body["status"], body["models"]["cifar10"], "tensorflow" in sys.modules)
        """,
        {
            "DJANGO_SETTINGS_MODULE": "classifier_site.settings.test",
            "DJANGO_CLASSIFIER_MODELS": registry,
        },
        timeout=180,
    )
    assert result.stdout.split() == [
        *("503", "starting", "loading"),
        *("ready", "ready", "False"),
    ], result.stderr[-3000:]


def test_warmup_command_reports_each_model():
    """`manage.py warmup_models` loads every model and prints its version and accuracy."""
    out = io.StringIO()
    call_command("warmup_models", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["cifar10", "fashion_mnist"]
    assert "CIFAR-10" in lines[0] and "accuracy 10.00%" in lines[0]


def test_warmup_command_fails_clearly_for_a_missing_model(settings, tmp_path):
    """A missing model directory is a CommandError naming the directory."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "missing"}
    with pytest.raises(CommandError, match="does not exist"):
        call_command("warmup_models")


@pytest.mark.no_models
@pytest.mark.django_db
def test_migrations_are_committed():
    """The models and the committed migrations agree."""
    call_command("makemigrations", "uploads", "--check", "--dry-run", stdout=io.StringIO())


@pytest.mark.django_db  # readiness also checks the database
def test_healthz_reports_a_missing_model_generically(client, settings, tmp_path):
    """A model whose directory is missing is 'error: not installed' at /healthz, with no path
    or setting name in the public answer (the detail is in the server log)."""
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "lost": tmp_path / "nowhere"}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["models"]["lost"] == "error: not installed"
    assert response.json()["models"]["cifar10"] == "ready"
    text = response.content.decode()
    assert str(tmp_path) not in text and "nowhere" not in text and "DJANGO_" not in text


def test_health_says_error_for_a_permanent_failure_and_starting_while_loading(
    settings, tmp_path, monkeypatch
):
    """get_health: 'error' (not 'starting') when a model is missing or failed to load, with
    generic details; 'starting' while a model is only loading."""
    from uploads import classifiers

    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "lost": tmp_path / "nowhere"}
    health = classifiers.get_health()
    assert (health["ready"], health["status"]) == (False, "error")
    broken = tmp_path / "broken"
    broken.mkdir()
    settings.CLASSIFIER_MODELS = {"broken": broken}
    with pytest.raises(classifiers.ModelUnavailableError):
        classifiers.warm_up_models()
    assert classifiers.get_health()["models"] == {"broken": "error: failed to load"}
    assert classifiers.get_health()["status"] == "error"
    monkeypatch.setattr(classifiers, "_errors", {})
    assert classifiers.get_health() == {
        "ready": False,
        "status": "starting",
        "models": {"broken": "loading"},
    }


def test_warmup_fills_the_jax_compilation_cache_that_a_new_process_reuses(model_dirs, tmp_path):
    """`manage.py warmup_models` with DJANGO_JAX_CACHE_DIR writes compiled programs there; a
    second process warming the same model compiles nothing new (every entry is a cache hit)."""
    cache = tmp_path / "jax-cache"
    env = {
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings.test",
        "DJANGO_CLASSIFIER_MODELS": f"cifar10={model_dirs['cifar10']}",
        "DJANGO_JAX_CACHE_DIR": str(cache),
    }
    code = """
        import django; django.setup()
        from django.core.management import call_command
        call_command("warmup_models")
        """
    first = run_python(code, env, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert entries
    second = run_python(code, env, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in cache.iterdir()) == entries


@pytest.mark.no_models
def test_gunicorn_recycles_no_worker_by_default_and_spreads_restarts_when_asked():
    """max_requests is off by default; when set, the jitter is half of it, so two workers
    never reach their limits together."""
    code = (
        "import runpy; c = runpy.run_path('classifier_site/gunicorn_conf.py'); "
        "print(c['max_requests'], c['max_requests_jitter'])"
    )
    assert run_python(code, {}).stdout.split() == ["0", "0"]
    assert run_python(code, {"GUNICORN_MAX_REQUESTS": "2000"}).stdout.split() == ["2000", "1000"]


@pytest.mark.no_models
def test_gunicorn_serves_wsgi_threads_by_default_and_uvicorn_asgi_when_asked():
    """gthread over classifier_site.wsgi unless GUNICORN_WORKER_CLASS=asgi, which runs
    classifier_site.asgi under uvicorn's worker (the comparison benchmarks.serving.web makes)."""
    code = (
        "import runpy; c = runpy.run_path('classifier_site/gunicorn_conf.py'); "
        "print(c['worker_class'], c['wsgi_app'])"
    )
    assert run_python(code, {}).stdout.split() == ["gthread", "classifier_site.wsgi:application"]
    assert run_python(code, {"GUNICORN_WORKER_CLASS": "asgi"}).stdout.split() == [
        "uvicorn_worker.UvicornWorker",
        "classifier_site.asgi:application",
    ]


def _gunicorn_conf(monkeypatch, pin: str | None = None) -> dict:
    """classifier_site/gunicorn_conf.py's names, read with GUNICORN_PIN_WORKERS=pin."""
    if pin is None:
        monkeypatch.delenv("GUNICORN_PIN_WORKERS", raising=False)
    else:
        monkeypatch.setenv("GUNICORN_PIN_WORKERS", pin)
    return runpy.run_path(str(ROOT / "classifier_site" / "gunicorn_conf.py"))


class _Worker:
    """What the pinning hooks read and write on a gunicorn worker."""

    pid = 4243


class _Arbiter:
    log = logging.getLogger("gunicorn.error")

    def __init__(self, num_workers: int, live: list[_Worker]):
        self.num_workers = num_workers
        self.WORKERS = {1000 + index: worker for index, worker in enumerate(live)}


@pytest.mark.no_models
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs Linux")
def test_workers_that_fill_the_cores_are_pinned_one_core_each(monkeypatch):
    """By default each worker gets a core of its own once the workers fill the cores evenly,
    and remembers the cores it had; a worker that replaces another takes the core the other
    left; GUNICORN_PIN_WORKERS forces either way; the production config has the same hooks."""
    from classifier_site import UNPINNED_CPUS_ENV

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    pinned: list[set[int]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append(set(cpus)))
    monkeypatch.setenv(UNPINNED_CPUS_ENV, "")  # restored after the test; post_fork sets it
    conf = _gunicorn_conf(monkeypatch)

    workers: list[_Worker] = []
    for _ in range(2):
        worker = _Worker()
        conf["pre_fork"](_Arbiter(2, workers), worker)
        conf["post_fork"](_Arbiter(2, workers), worker)
        workers.append(worker)
    assert pinned == [{0}, {1}]
    assert os.environ[UNPINNED_CPUS_ENV] == "0,1"

    replacement = _Worker()  # the worker on core 0 died; its replacement forks
    conf["pre_fork"](_Arbiter(2, workers[1:]), replacement)
    assert replacement.cpu == 0

    assert conf["pins_workers"](1, [0, 1]) is False  # one worker: XLA may use both cores
    assert conf["pins_workers"](3, [0, 1]) is False  # uneven: two workers would share a core
    assert conf["pins_workers"](4, [0, 1]) is True
    assert conf["pins_workers"](4, [0]) is False  # one core: nothing to choose
    assert conf["pins_workers"](2, []) is False  # a platform that cannot pin
    assert conf["least_used_cpu"]([0, 1], [0, 1, 1]) == 0
    assert _gunicorn_conf(monkeypatch, "0")["pins_workers"](2, [0, 1]) is False
    assert _gunicorn_conf(monkeypatch, "1")["pins_workers"](1, [0, 1]) is True

    unpinned = _Worker()
    off = _gunicorn_conf(monkeypatch, "0")
    off["pre_fork"](_Arbiter(2, []), unpinned)
    off["post_fork"](_Arbiter(2, []), unpinned)
    assert unpinned.cpu is None and len(pinned) == 2  # nothing set

    deploy = runpy.run_path(str(ROOT / "deploy" / "gunicorn_conf.py"))
    assert (
        deploy["pre_fork"].__module__
        == deploy["post_fork"].__module__
        == ("classifier_site.gunicorn_conf")
    )


@pytest.mark.no_models
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs Linux")
def test_a_worker_whose_core_cannot_be_had_runs_unpinned(monkeypatch, caplog):
    from classifier_site import UNPINNED_CPUS_ENV

    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    monkeypatch.setenv(UNPINNED_CPUS_ENV, "")
    conf = _gunicorn_conf(monkeypatch)
    worker = _Worker()
    conf["pre_fork"](_Arbiter(2, []), worker)
    with caplog.at_level(logging.WARNING):
        conf["post_fork"](_Arbiter(2, []), worker)  # no exception: the worker boots
    assert "not pinned" in caplog.text
    assert os.environ[UNPINNED_CPUS_ENV] == ""


@pytest.mark.no_models
def test_the_web_benchmark_takes_workers_by_threads_or_by_asgi():
    import argparse

    from benchmarks.serving import web

    assert web.gunicorn_config("3X4") == "3x4"
    assert web.gunicorn_config("2xASGI") == "2xasgi"
    assert web.gunicorn_config("2x4:Unpinned") == "2x4:unpinned"
    for bad in ("asgix2", "0x4", "2x0", "2xuvicorn", "2", "2x4:", "2x4:pin"):
        with pytest.raises(argparse.ArgumentTypeError):
            web.gunicorn_config(bad)


@pytest.mark.no_models
def test_the_web_benchmark_counts_the_machines_busy_cpu_time():
    """CPU per request in benchmarks.serving.web: user, nice, system, irq and softirq time from
    /proc/stat, not idle, I/O wait or time stolen by a hypervisor."""
    from benchmarks.serving import web

    line = "cpu  1000 20 300 9000 400 5 6 700 0 0"
    assert web.busy_seconds(line, 100) == pytest.approx((1000 + 20 + 300 + 5 + 6) / 100)


@pytest.mark.no_models
def test_upload_limits_default_to_25_and_50_megapixels():
    """The per-image and per-request pixel limits, the decode bound and the stored size."""
    result = run_python(
        "from django.conf import settings as s\n"
        "print(s.UPLOAD_MAX_PIXELS, s.UPLOAD_MAX_REQUEST_PIXELS, s.UPLOAD_MAX_CONCURRENT_DECODES,"
        " s.UPLOAD_STORED_MAX_SIDE, s.JAX_CACHE_DIR == str(s.BASE_DIR / '.cache' / 'jax'))",
        PRODUCTION,
    )
    assert result.stdout.split() == ["25000000", "50000000", "2", "1024", "True"], result.stderr
