"""The JSON API: predict, predictions, models, health, OpenAPI, docs, throttling."""

import io
import json
import re

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image
from rest_framework.throttling import AnonRateThrottle

from tests.web.conftest import own
from uploads import classifiers, services
from uploads.models import Owner, Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_client() -> Client:
    """An anonymous client that enforces CSRF like a browser would."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def api_owner(api_client) -> Owner:
    """The Owner of api_client's session (its cookie kept, as a client of the API would)."""
    return own(api_client)


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


def test_predict_needs_no_csrf_token(api_client, upload_file, admin_user):
    """The API takes a POST without a CSRF token, even from a session the form refuses."""
    api_client.force_login(admin_user)
    api_client.get(reverse("uploads:classify"))  # a browser visit: session and CSRF cookies
    form = {"images": upload_file(), "model": "cifar10"}
    assert api_client.post(reverse("uploads:classify"), form).status_code == 403
    response = api_client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    assert Prediction.objects.count() == 1


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
        ({"top_k": "²"}, "invalid_top_k"),  # str.isdigit() is true, int() raises
        ({"top_k": "٣"}, "invalid_top_k"),  # int() reads 3
        ({"top_k": "-2"}, "invalid_top_k"),
        ({"top_k": "1.5"}, "invalid_top_k"),
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


@pytest.mark.parametrize(
    ("body", "content_type"),
    [({"image": "x"}, "multipart/form-data"), ('{"image": "x"}', "application/json")],
)
def test_predict_with_text_instead_of_a_file_says_which_field_to_use(
    api_client, body, content_type
):
    """Text under 'image', or a JSON body, is a 400 asking for the multipart file field."""
    if content_type == "multipart/form-data":
        response = api_client.post(reverse("uploads:api-predict"), body)
    else:
        response = api_client.post(reverse("uploads:api-predict"), body, content_type)
    assert response.status_code == 400
    assert response.json() == {
        "error": "Send the image as the multipart/form-data field 'image'.",
        "code": "no_file",
    }


def test_blank_fields_mean_the_defaults(api_client, upload_file):
    """A blank 'model' or 'top_k' (as an HTML form sends) asks for the default."""
    response = api_client.post(
        reverse("uploads:api-predict"), {"image": upload_file(), "model": "", "top_k": " "}
    )
    assert response.status_code == 201
    assert response.json()["model"]["name"] == "cifar10"
    assert len(response.json()["top_k"]) == 5


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def float_tiff() -> bytes:
    ramp = np.linspace(0.0, 1.0, 48 * 40, dtype=np.float32).reshape(40, 48)
    return encode(Image.fromarray(ramp, "F"), "TIFF")


def cmyk_jpeg() -> bytes:
    return encode(noise(48, 40).convert("CMYK"), "JPEG")


def transparent_palette_png() -> bytes:
    image = noise(48, 40).quantize(16)
    return encode(image, "PNG", transparency=3)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(noise(64, 24), "JPEG", exif=exif)


def noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


UNUSUAL_FILES = {
    "16-bit PNG": ("deep.png", sixteen_bit_png, "I;16"),
    "float TIFF": ("float.tif", float_tiff, "F"),
    "CMYK JPEG": ("print.jpg", cmyk_jpeg, "CMYK"),
    "palette PNG with transparency": ("palette.png", transparent_palette_png, "P"),
    "EXIF-rotated JPEG": ("rotated.jpg", exif_rotated_jpeg, "RGB"),
}


@pytest.mark.parametrize("model_name", ["cifar10", "fashion_mnist"])
@pytest.mark.parametrize("case", UNUSUAL_FILES)
def test_stored_probabilities_are_the_classifiers_for_the_same_file(api_client, case, model_name):
    """What the API stores is Classifier.predict on the file as Pillow opens it: one conversion."""
    name, build, mode = UNUSUAL_FILES[case]
    data = build()
    response = api_client.post(
        reverse("uploads:api-predict"),
        {"image": SimpleUploadedFile(name, data), "model": model_name, "top_k": "10"},
    )
    assert response.status_code == 201, response.json()
    stored = Prediction.objects.get(pk=response.json()["id"])

    classifier = classifiers.get_classifier(model_name)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == mode
        expected = classifier.predict([image])
    np.testing.assert_allclose(
        [stored.probabilities[label] for label in classifier.class_names], expected[0], atol=1e-6
    )
    labels, probabilities = zip(*classifier.top_k(expected, 10)[0], strict=True)
    top_k = response.json()["top_k"]
    assert [item["label"] for item in top_k] == list(labels)
    np.testing.assert_allclose([item["probability"] for item in top_k], probabilities, atol=1e-6)
    assert stored.label == labels[0]


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


def test_predictions_are_listed_newest_first_with_pages(api_client, api_owner, upload_file):
    """GET /api/predictions pages through the client's history with next/previous links."""
    ids = [services.classify_upload(file=upload_file(), owner=api_owner).pk for _ in range(5)]
    first = api_client.get(reverse("uploads:api-predictions"), {"page_size": 2}).json()
    assert first["count"] == 5 and first["num_pages"] == 3
    assert [p["id"] for p in first["results"]] == ids[::-1][:2]
    assert first["previous"] is None
    second = api_client.get(first["next"]).json()
    assert [p["id"] for p in second["results"]] == ids[::-1][2:4]
    assert second["previous"] is not None


def test_predictions_can_be_filtered(api_client, api_owner, upload_file):
    """?model= and ?label= filter the list."""
    services.classify_upload(file=upload_file(), model_name="cifar10", owner=api_owner)
    fashion = services.classify_upload(
        file=upload_file(), model_name="fashion_mnist", owner=api_owner
    )
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


def test_one_prediction_by_id(api_client, api_owner, upload_file):
    """GET /api/predictions/<id> returns that prediction; an unknown id is a 404 JSON error."""
    prediction = services.classify_upload(file=upload_file(), owner=api_owner)
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
    """A missing model keeps /healthz at 503 with status 'error' (not 'starting': it will not
    become ready by waiting), naming no path."""
    settings.CLASSIFIER_MODELS = {"cifar10": tmp_path / "missing"}
    with pytest.raises(classifiers.ModelUnavailableError):
        classifiers.warm_up_models()
    response = api_client.get(reverse("uploads:healthz"))
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["status"] == "error"
    assert body["models"]["cifar10"].startswith("error")
    assert str(tmp_path) not in json.dumps(body)


def test_throttling_refuses_with_a_json_429(api_client, monkeypatch):
    """Past the anonymous rate the API answers 429 JSON with Retry-After; /healthz is exempt."""
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "2/min"})
    cache.clear()
    url = reverse("uploads:api-models")
    try:
        assert [api_client.get(url).status_code for _ in range(2)] == [200, 200]
        refused = api_client.get(url)
        assert refused.status_code == 429
        assert refused.json()["code"] == "throttled"
        assert "throttled" in refused.json()["error"]
        assert int(refused["Retry-After"]) > 0
        assert api_client.get(reverse("uploads:healthz")).status_code == 200
    finally:
        cache.clear()


def test_openapi_describes_every_endpoint(api_client):
    """/api/openapi.json is an OpenAPI 3.1 document naming every API path."""
    spec = api_client.get(reverse("uploads:api-openapi")).json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) >= {
        "/api/predict",
        "/api/classify",
        "/api/predictions",
        "/api/predictions/{id}",
        "/api/models",
        "/healthz",
    }
    json.dumps(spec)  # plain JSON all the way down


def test_openapi_schema_matches_what_the_api_answers(api_client, upload_file):
    """The generated schema's Prediction and Error shapes are the bodies the API sends."""
    spec = api_client.get(reverse("uploads:api-openapi")).json()
    schemas = spec["components"]["schemas"]
    body = api_client.post(reverse("uploads:api-predict"), {"image": upload_file()}).json()
    assert set(schemas["Prediction"]["properties"]) == set(body)
    assert set(schemas["ModelVersion"]["properties"]) == set(body["model"])
    assert set(schemas["StoredImage"]["properties"]) == set(body["image"])
    error = api_client.post(reverse("uploads:api-predict"), {}).json()
    assert set(schemas["Error"]["properties"]) == set(error)
    predict = spec["paths"]["/api/predict"]["post"]
    assert set(predict["responses"]) >= {"201", "400", "413", "415", "503"}
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    fields = schemas[form.rsplit("/", 1)[-1]]["properties"]
    assert fields["image"]["format"] == "binary"
    assert set(fields) == {"image", "model", "top_k"}


def test_api_docs_work_offline(client, settings):
    """/api/docs/ is Swagger UI whose scripts and styles are this site's static files."""
    docs = reverse("uploads:api-docs")
    response = client.get(docs)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="swagger-ui"' in page
    assert "<script>" not in page and "<style>" not in page  # the site's CSP allows neither
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    # favicon, 2 stylesheets, Swagger UI's 2 scripts, and its start-up script from this view
    assert len(urls) == 6
    assert [url for url in urls if not url.startswith(settings.STATIC_URL)] == [f"{docs}?script="]
    for url in urls:
        fetched = client.get(url)
        assert fetched.status_code == 200, url
        content = b"".join(fetched.streaming_content) if fetched.streaming else fetched.content
        assert content, url
    script = client.get(reverse("uploads:api-docs"), {"script": ""}).content.decode()
    assert reverse("uploads:api-openapi") in script
    assert "validatorUrl" in script  # set to null: the schema is never sent to swagger.io


def test_the_schema_lists_the_models_and_the_default_so_try_it_out_works(api_client):
    """The predict request's `model` is an enum of the configured models with the default
    model as its default, so Swagger UI's "Try it out" sends a valid name, not "string"."""
    spec = api_client.get(reverse("uploads:api-openapi")).json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    fields = body["multipart/form-data"]["schema"]
    if "$ref" in fields:
        fields = spec["components"]["schemas"][fields["$ref"].rsplit("/", 1)[-1]]
    model = fields["properties"]["model"]
    assert model["default"] == "cifar10"
    enum = model.get("enum")
    if enum is None:  # drf-spectacular names an enum as a component: {"allOf": [{"$ref"}]}
        ref = model["allOf"][0]["$ref"].rsplit("/", 1)[-1]
        enum = spec["components"]["schemas"][ref]["enum"]
    assert enum == ["cifar10", "fashion_mnist"]
