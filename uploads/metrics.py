"""Prometheus metrics of the site: the collectors, the middleware that times every request,
and the /metrics endpoint, which is not public.

/metrics answers only a request with `Authorization: Bearer <settings.METRICS_TOKEN>` or one
from an address in settings.METRICS_ALLOW (the client address as TrustedProxyMiddleware
resolved it); with neither configured it does not exist (404), and anyone else gets 403.

Under gunicorn each worker counts in its own memory unless PROMETHEUS_MULTIPROC_DIR names a
folder (deploy/gunicorn_conf.py sets one): prometheus_client then writes every worker's
values there and /metrics adds them up, whichever worker answers.
"""

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

disable_created_metrics()  # no `_created` series beside every counter: half the scrape

REQUESTS = Counter(
    "classifier_http_requests_total",
    "HTTP requests answered, by route name, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "classifier_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTIONS = Counter(
    "classifier_predictions_total",
    "Images answered (stored or not), by model and predicted label.",
    ["model", "label"],
)
UNKNOWN = Counter(
    "classifier_unknown_answers_total",
    "Images whose 'unknown' score fell below the model's threshold, by model.",
    ["model"],
)
FEEDBACK = Counter(
    "classifier_feedback_total",
    "Feedback received, by model and verdict (confirmed or corrected).",
    ["model", "verdict"],
)
_SLOW_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
MODEL_LOAD_SECONDS = Histogram(
    "classifier_model_load_seconds",
    "Time to restore a model's weights, by model.",
    ["model"],
    buckets=_SLOW_BUCKETS,
)
MODEL_COMPILE_SECONDS = Histogram(
    "classifier_model_compile_seconds",
    "Time to compile (or load from the compilation cache) every batch bucket, by model.",
    ["model"],
    buckets=_SLOW_BUCKETS,
)
BATCH_IMAGES = Histogram(
    "classifier_batch_images",
    "Images per shared forward pass of the batcher, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_REQUESTS = Histogram(
    "classifier_batch_requests",
    "Requests per shared forward pass of the batcher, by model.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
BATCH_WAIT_SECONDS = Histogram(
    "classifier_batch_wait_seconds",
    "Time a request waited in the batcher before its forward pass started, by model.",
    ["model"],
    buckets=(0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

UNMATCHED_ROUTE = "<unmatched>"
# prometheus_client chose where values live when it was imported (above): follow its choice.
_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def count_predictions(model: str, labels: Iterable[str], unknown: Iterable[bool | None]) -> None:
    """One answer per label; `unknown` flags (None: the model has no threshold)."""
    for label, is_unknown in zip(labels, unknown, strict=True):
        PREDICTIONS.labels(model=model, label=label).inc()
        if is_unknown:
            UNKNOWN.labels(model=model).inc()


def count_feedback(model: str, *, correct: bool) -> None:
    FEEDBACK.labels(model=model, verdict="confirmed" if correct else "corrected").inc()


def observe_batch(model: str) -> Callable:
    """An on_batch callback for research.serving.batching.Batcher that records under `model`."""

    def observe(report) -> None:
        BATCH_IMAGES.labels(model=model).observe(report.rows)
        BATCH_REQUESTS.labels(model=model).observe(report.requests)
        waits = BATCH_WAIT_SECONDS.labels(model=model)
        for wait in report.waits_s:
            waits.observe(wait)

    return observe


class MetricsMiddleware:
    """Count and time every request by its route's name (the URL pattern's, never the path,
    so ids do not multiply the series), method and status. Listed first in MIDDLEWARE so the
    time covers the whole stack."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route) if match is not None else UNMATCHED_ROUTE
        labels = {"route": route, "method": _method(request), "status": str(response.status_code)}
        REQUESTS.labels(**labels).inc()
        REQUEST_SECONDS.labels(**labels).observe(time.perf_counter() - started)
        return response


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def _method(request: HttpRequest) -> str:
    return request.method if request.method in _METHODS else "other"


def serve_metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition, for the token's holder or an allowed address only."""
    token = getattr(settings, "METRICS_TOKEN", "")
    allow = tuple(getattr(settings, "METRICS_ALLOW", ()))
    if not token and not allow:
        raise Http404("Page not found.")
    if not (_has_token(request, token) or _is_allowed(request, allow)):
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain; charset=utf-8")
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


def _has_token(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )


def _is_allowed(request: HttpRequest, allow: tuple[str, ...]) -> bool:
    """Whether the client address (REMOTE_ADDR, which TrustedProxyMiddleware has set to the
    client a trusted proxy forwarded for) lies in one of the allowed addresses or networks."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "").strip())
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(item, strict=False) for item in allow)


def _registry() -> CollectorRegistry:
    """Every worker's values in multiprocess mode, else this process's."""
    if not _MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
