"""The JSON API: predict, predictions, models, health, OpenAPI."""

import json

import pytest
from django.test import Client
from django.urls import reverse

from uploads import classifiers, services
from uploads.models import Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_client() -> Client:
    """An anonymous client that enforces CSRF like a browser would."""
    return Client(enforce_csrf_checks=True)


def test_predict_returns_201_with_the_prediction(api_client, upload_file):
    """POST /api/predict answers 201 with label, confidence, top-k, model and latency."""
    response = api_client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    body = response.json()
    prediction = Prediction.objects.get()
    assert body["id"] == prediction.pk
    assert response["Location"] == reverse("uploads:api-prediction", args=[prediction.pk])
    assert body["label"] == prediction.label
    assert body["confidence"] == pytest.approx(prediction.confidence)
    assert [item["label"] for item in body["top_k"]] == [i["label"] for i in prediction.top_k]
    assert set(body["top_k"][0]) == {"label", "probability"}
    assert body["model"]["name"] == "cifar10"
    assert body["model"]["dataset"] == "cifar10"
    assert body["model"]["version"] == prediction.model_version
    assert body["latency_ms"] > 0


def test_predict_needs_no_csrf_token(api_client, upload_file):
    """Anonymous scripts call the API without a CSRF token."""
    response = api_client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201


def test_predict_accepts_model_and_top_k(api_client, upload_file):
    """'model' and 'top_k' choose the model and the number of classes returned."""
    response = api_client.post(
        reverse("uploads:api-predict"),
        {"image": upload_file(), "model": "fashion_mnist", "top_k": "3"},
    )
    body = response.json()
    assert body["model"]["name"] == "fashion_mnist"
    assert len(body["top_k"]) == 3


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"top_k": "many"}, "invalid_top_k"),
        ({"top_k": "0"}, "invalid_top_k"),
        ({"model": "x"}, "unknown_model"),
    ],
)
def test_predict_rejects_bad_fields(api_client, upload_file, fields, code):
    """Bad top_k or model values are a 400 JSON error."""
    response = api_client.post(reverse("uploads:api-predict"), {"image": upload_file(), **fields})
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert Prediction.objects.count() == 0


def test_predict_without_image_says_which_field_to_use(api_client):
    """A request with no file names the 'image' field."""
    response = api_client.post(reverse("uploads:api-predict"), {"file": "x"})
    assert response.status_code == 400
    assert "'image'" in response.json()["error"]


def test_predict_with_missing_model_is_503_json(api_client, upload_file, settings, tmp_path):
    """A configured model that is not installed is a 503 JSON error, not a 500 page."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "missing"}
    response = api_client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 503
    assert response.json()["code"] == "model_unavailable"


def test_predict_only_accepts_post(api_client):
    """GET on /api/predict is a 405 JSON error with an Allow header."""
    response = api_client.get(reverse("uploads:api-predict"))
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "POST" in response.json()["error"]


def test_predictions_are_listed_newest_first_with_pages(api_client, upload_file):
    """GET /api/predictions pages through the history with next/previous links."""
    ids = [services.classify_upload(file=upload_file()).pk for _ in range(5)]
    first = api_client.get(reverse("uploads:api-predictions"), {"page_size": 2}).json()
    assert first["count"] == 5 and first["num_pages"] == 3
    assert [p["id"] for p in first["results"]] == ids[::-1][:2]
    assert first["previous"] is None
    second = api_client.get(first["next"]).json()
    assert [p["id"] for p in second["results"]] == ids[::-1][2:4]
    assert second["previous"] is not None


def test_predictions_can_be_filtered(api_client, upload_file):
    """?model= and ?label= filter the list."""
    services.classify_upload(file=upload_file(), model_name="cifar10")
    fashion = services.classify_upload(file=upload_file(), model_name="fashion_mnist")
    body = api_client.get(reverse("uploads:api-predictions"), {"model": "fashion_mnist"}).json()
    assert [p["id"] for p in body["results"]] == [fashion.pk]
    body = api_client.get(reverse("uploads:api-predictions"), {"label": "no-such-label"}).json()
    assert body["count"] == 0


@pytest.mark.parametrize("query", [{"page": "x"}, {"page_size": "1000"}, {"page": "0"}])
def test_bad_pages_are_400(api_client, query):
    """Malformed paging parameters are a 400 JSON error."""
    response = api_client.get(reverse("uploads:api-predictions"), query)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_page"


def test_one_prediction_by_id(api_client, upload_file):
    """GET /api/predictions/<id> returns that prediction; an unknown id is a 404 JSON error."""
    prediction = services.classify_upload(file=upload_file())
    body = api_client.get(reverse("uploads:api-prediction", args=[prediction.pk])).json()
    assert body["id"] == prediction.pk
    missing = api_client.get(reverse("uploads:api-prediction", args=[prediction.pk + 1]))
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_unknown_api_path_is_a_json_404(api_client):
    """Paths under /api/ that do not exist answer JSON, not an HTML page."""
    response = api_client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_models_lists_every_configured_model(api_client):
    """GET /api/models describes each model from its metadata, and the default."""
    body = api_client.get(reverse("uploads:api-models")).json()
    assert body["default"] == "cifar10"
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"cifar10", "fashion_mnist"}
    assert models["cifar10"]["dataset"] == "cifar10"
    assert models["cifar10"]["accuracy"] == pytest.approx(0.1)
    assert models["fashion_mnist"]["class_names"][0] == "T-shirt/top"
    assert models["cifar10"]["available"] and models["cifar10"]["ready"]


def test_health_is_503_until_every_model_is_warm(api_client, monkeypatch):
    """/healthz says 'starting' (503) before warm-up and 'ready' (200) after."""
    monkeypatch.setattr(classifiers, "_warm", set())
    response = api_client.get(reverse("uploads:healthz"))
    assert response.status_code == 503
    assert response.json()["models"] == {"cifar10": "loading", "fashion_mnist": "loading"}
    classifiers.warm_up_models()
    response = api_client.get(reverse("uploads:healthz"))
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_health_reports_a_missing_model(api_client, settings, tmp_path):
    """A model that cannot load keeps /healthz at 503 and says why."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "missing"}
    with pytest.raises(classifiers.ModelUnavailableError):
        classifiers.warm_up_models()
    body = api_client.get(reverse("uploads:healthz")).json()
    assert body["ready"] is False
    assert "does not exist" in body["models"]["cifar10"]


def test_openapi_describes_every_endpoint(api_client):
    """/api/openapi.json is an OpenAPI 3.1 document naming every API path."""
    spec = api_client.get(reverse("uploads:api-openapi")).json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) >= {
        "/api/predict",
        "/api/predictions",
        "/api/predictions/{id}",
        "/api/models",
        "/healthz",
    }
    json.dumps(spec)  # plain JSON all the way down
