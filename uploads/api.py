"""The JSON API: predict, browse predictions, list models, health. No CSRF: no cookies used."""

import json
import logging
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.core.paginator import EmptyPage, Paginator
from django.http import HttpRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from uploads import classifiers, services
from uploads.images import UploadRejected
from uploads.models import Prediction

logger = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def json_error(message: str, *, code: str, status: int) -> JsonResponse:
    """An error the client can show as is: {'error': message, 'code': code}."""
    return JsonResponse({"error": message, "code": code}, status=status)


def _allow(request: HttpRequest, *methods: str) -> JsonResponse | None:
    if request.method in methods:
        return None
    response = json_error(
        f"Use {' or '.join(methods)} on this endpoint.", code="method_not_allowed", status=405
    )
    response["Allow"] = ", ".join(methods)
    return response


@csrf_exempt
def predict(request: HttpRequest) -> JsonResponse:
    """POST /api/predict: multipart 'image' (+ optional 'model', 'top_k') -> 201 prediction."""
    if refused := _allow(request, "POST"):
        return refused
    limit = settings.UPLOAD_MAX_BYTES + 1024 * 1024
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
        return json_error(
            f"The request is larger than the {settings.UPLOAD_MAX_BYTES / 2**20:g} MB limit.",
            code="file_too_large",
            status=413,
        )
    try:
        files = request.FILES.getlist("image")
        fields = request.POST
    except (SuspiciousOperation, MultiPartParserError) as err:
        return json_error(f"The upload could not be read: {err}", code="bad_request", status=400)
    if not files:
        return json_error(
            "Send the image as the multipart/form-data field 'image'.", code="no_file", status=400
        )
    if len(files) > 1:
        return json_error(
            f"{len(files)} images were sent; send one image per request.",
            code="too_many_files",
            status=400,
        )
    top_k = fields.get("top_k", "").strip()
    if top_k and not top_k.isdigit():
        return json_error("top_k must be a whole number.", code="invalid_top_k", status=400)
    try:
        prediction = services.classify_upload(
            file=files[0],
            model_name=fields.get("model") or None,
            top_k=int(top_k) if top_k else None,
        )
    except UploadRejected as err:
        return json_error(err.message, code=err.code, status=err.status)
    except classifiers.ModelUnavailableError as err:
        logger.error("%s", err)
        return json_error(err.public_message, code="model_unavailable", status=503)
    response = JsonResponse(prediction.as_dict(), status=201)
    response["Location"] = reverse("uploads:api-prediction", args=[prediction.pk])
    return response


@csrf_exempt
def list_predictions(request: HttpRequest) -> JsonResponse:
    """GET /api/predictions?page=&page_size=&label=&model=: newest first."""
    if refused := _allow(request, "GET"):
        return refused
    try:
        page_number = int(request.GET.get("page", 1))
        page_size = int(request.GET.get("page_size", DEFAULT_PAGE_SIZE))
    except ValueError:
        return json_error("page and page_size must be whole numbers.", code="bad_page", status=400)
    if page_number < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        return json_error(
            f"page must be ≥ 1 and page_size between 1 and {MAX_PAGE_SIZE}.",
            code="bad_page",
            status=400,
        )
    queryset = Prediction.objects.recent().filter_by(
        label=request.GET.get("label", ""), model_name=request.GET.get("model", "")
    )
    paginator = Paginator(queryset, page_size)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        return json_error(
            f"Page {page_number} is past the last page ({paginator.num_pages}).",
            code="bad_page",
            status=404,
        )
    return JsonResponse(
        {
            "count": paginator.count,
            "page": page.number,
            "num_pages": paginator.num_pages,
            "next": _page_url(request, page.next_page_number()) if page.has_next() else None,
            "previous": (
                _page_url(request, page.previous_page_number()) if page.has_previous() else None
            ),
            "results": [prediction.as_dict() for prediction in page],
        }
    )


@csrf_exempt
def get_prediction(request: HttpRequest, pk: int) -> JsonResponse:
    """GET /api/predictions/<id>."""
    if refused := _allow(request, "GET"):
        return refused
    prediction = Prediction.objects.recent().filter(pk=pk).first()
    if prediction is None:
        return json_error(f"There is no prediction {pk}.", code="not_found", status=404)
    return JsonResponse(prediction.as_dict())


@csrf_exempt
def list_models(request: HttpRequest) -> JsonResponse:
    """GET /api/models: every configured model, whether installed and warmed up."""
    if refused := _allow(request, "GET"):
        return refused
    return JsonResponse(
        {
            "default": classifiers.get_default_model_name(),
            "models": [info.as_dict() for info in classifiers.list_model_infos()],
        }
    )


@csrf_exempt
def healthz(request: HttpRequest) -> JsonResponse:
    """GET /healthz: 200 once every model is loaded and compiled, 503 before."""
    if refused := _allow(request, "GET", "HEAD"):
        return refused
    health = classifiers.get_health()
    health["status"] = "ready" if health["ready"] else "starting"
    return JsonResponse(health, status=200 if health["ready"] else 503)


@csrf_exempt
def openapi(request: HttpRequest) -> JsonResponse:
    """GET /api/openapi.json: the OpenAPI 3.1 description of this API."""
    if refused := _allow(request, "GET"):
        return refused
    return JsonResponse(_read_openapi(), json_dumps_params={"indent": 2})


@cache
def _read_openapi() -> dict:
    return json.loads(OPENAPI_PATH.read_text())


def _page_url(request: HttpRequest, number: int) -> str:
    query = request.GET.copy()
    query["page"] = str(number)
    return f"{request.path}?{query.urlencode()}"
