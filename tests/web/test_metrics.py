"""/metrics: not public by default, open to a token or an allowed address, counters that move."""

import re

import pytest
from django.test import Client
from django.urls import reverse
from prometheus_client import REGISTRY

from uploads.feedback import record_feedback
from uploads.models import Prediction

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client: Client, **headers):
    return client.get(reverse("uploads:metrics"), **headers)


def assert_no_secrets(response) -> None:
    text = response.content.decode(errors="replace")
    for word in ("METRICS", "TOKEN", "ALLOW", "DJANGO_", TOKEN):
        assert word not in text


def test_metrics_do_not_exist_without_a_token_or_an_allowlist(client, settings):
    """With neither setting, /metrics is a plain 404 that names no setting."""
    settings.METRICS_TOKEN, settings.METRICS_ALLOW = "", []
    response = scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 404
    assert_no_secrets(response)


@pytest.mark.parametrize(
    "authorization", ["", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "]
)
def test_metrics_refuse_a_missing_or_wrong_token(client, settings, authorization):
    """A configured token must be sent exactly, as a Bearer token: else 403, saying nothing."""
    settings.METRICS_TOKEN, settings.METRICS_ALLOW = TOKEN, []
    response = scrape(client, HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 403
    assert_no_secrets(response)


def test_metrics_answer_the_token_with_the_prometheus_text_format(client, settings):
    """The right Bearer token gets 200 and the exposition format with the site's metrics."""
    settings.METRICS_TOKEN = TOKEN
    response = scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    for name in ("classifier_http_requests_total", "classifier_predictions_total"):
        assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? counter$", text, re.M)


def test_metrics_answer_an_allowed_address_and_refuse_others(settings):
    """METRICS_ALLOW admits a client address inside its networks, and no other."""
    settings.METRICS_TOKEN, settings.METRICS_ALLOW = "", ["10.1.0.0/16"]
    assert scrape(Client(REMOTE_ADDR="10.1.2.3")).status_code == 200
    refused = scrape(Client(REMOTE_ADDR="10.2.0.1"))
    assert refused.status_code == 403
    assert_no_secrets(refused)


def test_metrics_allowlist_uses_the_client_a_trusted_proxy_forwarded(settings):
    """Behind a trusted proxy the forwarded client is judged; a forged X-Forwarded-For from
    anyone else is ignored."""
    settings.METRICS_ALLOW, settings.TRUSTED_PROXIES = ["10.1.0.0/16"], ["127.0.0.1"]
    proxied = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.9.9")
    assert scrape(proxied).status_code == 200
    outsider = Client(REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="10.1.9.9")
    assert scrape(outsider).status_code == 403
    from_proxy_for_other = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert scrape(from_proxy_for_other).status_code == 403


def test_a_prediction_moves_the_request_prediction_and_batch_counters(client, upload_file):
    """POST /api/predict counts one request by route and status, one answer by model and
    label, and one batch of the model."""
    route = {"route": "uploads:api-predict", "method": "POST", "status": "201"}
    requests_before = value("classifier_http_requests_total", **route)
    latency_before = value("classifier_http_request_duration_seconds_count", **route)
    batches_before = value("classifier_batch_images_count", model="cifar10")
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    label = Prediction.objects.get().label
    assert value("classifier_http_requests_total", **route) == requests_before + 1
    assert value("classifier_http_request_duration_seconds_count", **route) == latency_before + 1
    assert value("classifier_batch_images_count", model="cifar10") == batches_before + 1
    predictions = value("classifier_predictions_total", model="cifar10", label=label)
    assert predictions >= 1


def test_a_prediction_without_storing_counts_its_label(client, upload_file):
    """POST /api/classify counts its answer too (by model and label)."""
    response = client.post(reverse("uploads:api-classify"), {"image": upload_file()})
    assert response.status_code == 200
    label = response.json()["label"]
    before = value("classifier_predictions_total", model="cifar10", label=label)
    assert (
        client.post(reverse("uploads:api-classify"), {"image": upload_file()}).json()["label"]
        == label
    )  # the same image, the same answer
    assert value("classifier_predictions_total", model="cifar10", label=label) == before + 1


def test_feedback_is_counted_by_model_and_verdict(upload_file):
    """A confirmation and a correction each move their own counter."""
    from uploads import services

    prediction = services.classify_upload(file=upload_file(), model_name="cifar10")
    confirmed = value("classifier_feedback_total", model="cifar10", verdict="confirmed")
    corrected = value("classifier_feedback_total", model="cifar10", verdict="corrected")
    record_feedback(prediction=prediction, correct=True)
    other = next(name for name in prediction.probabilities if name != prediction.label)
    record_feedback(prediction=prediction, label=other)
    assert value("classifier_feedback_total", model="cifar10", verdict="confirmed") == (
        confirmed + 1
    )
    assert value("classifier_feedback_total", model="cifar10", verdict="corrected") == (
        corrected + 1
    )


def test_unmatched_paths_share_one_route_label(client):
    """A 404 for any path counts under one label, so paths never multiply the series."""
    before = value(
        "classifier_http_requests_total", route="<unmatched>", method="GET", status="404"
    )
    client.get("/no/such/page/123")
    client.get("/no/such/page/456")
    after = value("classifier_http_requests_total", route="<unmatched>", method="GET", status="404")
    assert after == before + 2


def test_model_load_and_compile_times_are_recorded():
    """Warm-up (done by the web fixtures) records a load and a compile time per model."""
    assert value("classifier_model_compile_seconds_count", model="cifar10") >= 1
    assert value("classifier_model_load_seconds_count", model="cifar10") >= 1
