"""Liveness (/livez: the process answers) and readiness (/readyz, /healthz: models loaded,
database and media storage writable), each telling the truth about its own scope."""

import json

import pytest
from django.test import Client
from django.urls import reverse

from tests.web.conftest import database_unreachable


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["uploads:readyz", "uploads:healthz"])
def test_readiness_is_200_when_models_database_and_media_are_fine(client, name):
    """Everything up: 200 'ready', each part 'ok'."""
    response = client.get(reverse(name))
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and body["status"] == "ready"
    assert body["database"] == "ok" and body["media"] == "ok"
    assert set(body["models"].values()) == {"ready"}


@pytest.mark.django_db
def test_readiness_leaves_no_probe_file(client, media_files):
    """The media probe writes a file and removes it."""
    client.get(reverse("uploads:readyz"))
    assert media_files() == []


@pytest.mark.django_db
def test_readiness_fails_when_media_space_runs_low(client, settings):
    """Below the free space uploads need: 503 'unavailable', media 'full'."""
    settings.HEALTH_MEDIA_MIN_FREE_BYTES = 2**62
    response = client.get(reverse("uploads:readyz"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["media"] == "full"


@pytest.mark.django_db
def test_readiness_fails_when_media_cannot_be_written(client, settings, tmp_path):
    """A media root that cannot hold files: 503, media 'error', and no path in the answer."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings.MEDIA_ROOT = blocker
    response = client.get(reverse("uploads:readyz"))
    assert response.status_code == 503
    assert response.json()["media"] == "error"
    assert str(tmp_path) not in json.dumps(response.json())


@pytest.mark.django_db(transaction=True)
def test_database_outage_fails_readiness_but_not_liveness():
    """With the database unreachable, /readyz is 503 'unavailable' (database 'error') while
    /livez stays 200: a load balancer stops sending, nobody restarts healthy workers."""
    client = Client(raise_request_exception=False)
    with database_unreachable():
        ready = client.get(reverse("uploads:readyz"))
        live = client.get(reverse("uploads:livez"))
    assert ready.status_code == 503
    assert ready.json()["database"] == "error" and ready.json()["status"] == "unavailable"
    assert live.status_code == 200 and live.json() == {"alive": True}
    assert client.get(reverse("uploads:readyz")).status_code == 200  # back by itself


@pytest.mark.django_db
def test_health_endpoints_are_not_throttled_or_cached(client):
    """Probes are never refused or cached by a proxy."""
    for name in ("uploads:livez", "uploads:readyz"):
        assert client.get(reverse(name))["Cache-Control"] == "no-store"
