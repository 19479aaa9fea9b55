"""Settings, the WSGI entry point and warm-up: what a deployment relies on."""

import io
import os
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
    """DJANGO_API_THROTTLE_RATE sets the API's anonymous rate; 120/min without it."""
    code = (
        "from django.conf import settings\n"
        "from rest_framework.throttling import AnonRateThrottle\n"
        "print(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES'][0], AnonRateThrottle().rate)"
    )
    throttle = "rest_framework.throttling.AnonRateThrottle"
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
