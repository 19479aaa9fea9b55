"""The JSON API on Django REST framework: predict, classify without storing, browse one's own
predictions, explain them, take feedback on them, list models, health.

No authentication classes, so no CSRF token (the HTML form keeps it). Predictions are private:
a client that keeps the session cookie /api/predict sets sees its own history, everyone else
gets 404 (ids never grant access; the share link's token does, on the page /s/<token>/).
Every error is {'error': human-readable message, 'code': machine-readable code}, made by
`handle_exception`. Throttling (per client address: classifier_site.middleware's
`ClientRateThrottle`), parsers and
renderers are settings (REST_FRAMEWORK); the OpenAPI schema at /api/openapi.json is generated
from these views and uploads.serializers.
"""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousOperation, TooManyFilesSent
from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiJsonRenderer2
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerSplitView
from rest_framework import exceptions, status
from rest_framework.generics import ListAPIView
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from classifier_site.middleware import LiveRateThrottle
from uploads import classifiers, health, services
from uploads.feedback import FeedbackError, record_feedback
from uploads.images import UploadRejected
from uploads.models import Owner, Prediction
from uploads.serializers import (
    ClassificationSerializer,
    ErrorSerializer,
    FeedbackRequestSerializer,
    FeedbackSerializer,
    HealthSerializer,
    LivenessSerializer,
    ModelListSerializer,
    PredictionSerializer,
    PredictRequestSerializer,
    read_whole_number,
)
from uploads.sessions import commit_session
from uploads.storage import StorageUnavailable

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_MAX_PAGE = 10**9


class ApiError(exceptions.APIException):
    """An error answered as {'error': message, 'code': code} with the given HTTP status."""

    def __init__(self, message: str, *, code: str, status_code: int):
        super().__init__(message, code)
        self.status_code = status_code


def handle_exception(exc: Exception, context: dict) -> Response | None:
    """REST_FRAMEWORK's EXCEPTION_HANDLER: every refusal becomes {'error', 'code'} JSON.

    Public messages never name settings, paths or internals; the operator's detail of an
    unavailable model goes to the log.
    """
    if isinstance(exc, UploadRejected):
        exc = ApiError(exc.message, code=exc.code, status_code=exc.status)
    elif isinstance(exc, classifiers.ModelUnavailableError):
        logger.error("%s", exc)
        exc = ApiError(exc.public_message, code="model_unavailable", status_code=503)
    elif isinstance(exc, StorageUnavailable):
        response = drf_exception_handler(
            ApiError(exc.public_message, code=exc.code, status_code=exc.status), context
        )
        response.data = {"error": exc.public_message, "code": exc.code}
        response["Retry-After"] = str(exc.retry_after)
        return response
    elif isinstance(exc, TooManyFilesSent):  # Django's parser limit, far above one image
        exc = ApiError(
            "Too many files in one request; send one image per request.",
            code="too_many_files",
            status_code=400,
        )
    elif isinstance(exc, SuspiciousOperation):  # too many fields, a field too large, ...
        exc = ApiError("The request could not be understood.", code="bad_request", status_code=400)
    elif isinstance(exc, exceptions.ParseError):
        exc = ApiError(
            f"The upload could not be read: {exc.detail}", code="bad_request", status_code=400
        )
    response = drf_exception_handler(exc, context)  # adds Retry-After, rolls back, ...
    if response is not None:
        message, code = _describe(exc, context)
        response.data = {"error": message, "code": code}
    return response


def _describe(exc: exceptions.APIException, context: dict) -> tuple[str, str]:
    if isinstance(exc, exceptions.MethodNotAllowed):
        methods = context["view"].allowed_methods
        return f"Use {' or '.join(methods)} on this endpoint.", "method_not_allowed"
    detail = exc.detail
    while isinstance(detail, dict | list) and detail:  # a serializer's first field error
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    code = getattr(detail, "code", None) or exc.default_code
    return str(detail), str(code)


ERRORS = OpenApiResponse(ErrorSerializer, description="{'error': message, 'code': code}")


class PredictView(APIView):
    """POST /api/predict: multipart 'image' (+ optional 'model', 'top_k') -> 201 prediction."""

    http_method_names = ["post"]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="predict",
        summary="Classify one image",
        request={"multipart/form-data": PredictRequestSerializer},
        responses={
            201: PredictionSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="No image, several images, an empty, corrupt or truncated file, "
                "an unknown model or a bad top_k",
            ),
            413: OpenApiResponse(
                ErrorSerializer,
                description="Over the byte or pixel limit (decompression bombs included)",
            ),
            415: OpenApiResponse(
                ErrorSerializer, description="Not an image, or a format outside the allow-list"
            ),
            429: OpenApiResponse(ErrorSerializer, description="Too many requests; see Retry-After"),
            503: OpenApiResponse(
                ErrorSerializer, description="The model is not installed on this server"
            ),
        },
    )
    def post(self, request: Request) -> Response:
        fields = _predict_fields(request)
        prediction = services.classify_upload(
            file=fields["image"],
            model_name=fields.get("model"),
            top_k=fields.get("top_k"),
            owner=Owner.of(request, create=True),
            commit_with=commit_session(request),
        )
        return Response(
            PredictionSerializer(prediction, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": reverse("uploads:api-prediction", args=[prediction.pk])},
        )


class ClassifyView(APIView):
    """POST /api/classify: like /api/predict, but stores nothing (for a live camera)."""

    http_method_names = ["post"]
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [LiveRateThrottle]  # a rate of its own: frames come several a second

    @extend_schema(
        operation_id="classify",
        summary="Classify one image without storing it",
        description="The same fields as POST /api/predict (image, model, top_k) and the same "
        "answer, but no row and no file are kept, so the answer has no id, image URL or share "
        "link. Made for classifying camera frames continuously; throttled per client at its own "
        "rate (900 a minute by default).",
        request={"multipart/form-data": PredictRequestSerializer},
        responses={
            200: ClassificationSerializer,
            400: OpenApiResponse(ErrorSerializer, description="As POST /api/predict"),
            413: OpenApiResponse(ErrorSerializer, description="Over the byte or pixel limit"),
            415: OpenApiResponse(ErrorSerializer, description="Not an allowed image format"),
            429: OpenApiResponse(ErrorSerializer, description="Too many requests; see Retry-After"),
            503: OpenApiResponse(
                ErrorSerializer, description="The model is not installed on this server"
            ),
        },
    )
    def post(self, request: Request) -> Response:
        fields = _predict_fields(request)
        prediction = services.classify_without_storing(
            file=fields["image"],
            model_name=fields.get("model"),
            top_k=fields.get("top_k"),
        )
        response = Response(ClassificationSerializer(prediction).data)
        response["Cache-Control"] = "no-store"
        return response


class PredictionPagination(PageNumberPagination):
    """?page= and ?page_size= (1 to 100), strictly checked; links relative to the site."""

    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def paginate_queryset(self, queryset, request: Request, view=None) -> list:
        self.request = request
        page_number = _read_page_param(request, "page", 1)
        page_size = _read_page_param(request, "page_size", DEFAULT_PAGE_SIZE)
        if page_number < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ApiError(
                f"page must be ≥ 1 and page_size between 1 and {MAX_PAGE_SIZE}.",
                code="bad_page",
                status_code=400,
            )
        paginator = self.django_paginator_class(queryset, page_size)
        if page_number > paginator.num_pages:
            raise ApiError(
                f"Page {page_number} is past the last page ({paginator.num_pages}).",
                code="bad_page",
                status_code=404,
            )
        self.page = paginator.page(page_number)
        return list(self.page)

    def get_paginated_response(self, data: list) -> Response:
        return Response(
            {
                "count": self.page.paginator.count,
                "page": self.page.number,
                "num_pages": self.page.paginator.num_pages,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_next_link(self) -> str | None:
        return self._page_url(self.page.next_page_number()) if self.page.has_next() else None

    def get_previous_link(self) -> str | None:
        if not self.page.has_previous():
            return None
        return self._page_url(self.page.previous_page_number())

    def get_paginated_response_schema(self, schema: dict) -> dict:
        link = {"type": ["string", "null"], "example": "/api/predictions?page=2"}
        return {
            "type": "object",
            "required": ["count", "page", "num_pages", "next", "previous", "results"],
            "properties": {
                "count": {"type": "integer"},
                "page": {"type": "integer"},
                "num_pages": {"type": "integer"},
                "next": link,
                "previous": link,
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view) -> list[dict]:
        page, page_size = super().get_schema_operation_parameters(view)
        page["schema"].update(minimum=1, default=1)
        page_size["schema"].update(minimum=1, maximum=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)
        return [page, page_size]

    def _page_url(self, number: int) -> str:
        query = self.request.query_params.copy()
        query["page"] = str(number)
        return f"{self.request.path}?{query.urlencode()}"


class PredictionListView(ListAPIView):
    """GET /api/predictions?page=&page_size=&label=&model=: this client's own, newest first."""

    http_method_names = ["get"]
    serializer_class = PredictionSerializer
    pagination_class = PredictionPagination

    def get_queryset(self):
        owned = Prediction.objects.owned_by(Owner.of(self.request))
        return owned.recent().filter_by(
            label=self.request.query_params.get("label", ""),
            model_name=self.request.query_params.get("model", ""),
        )

    @extend_schema(
        operation_id="listPredictions",
        summary="List this client's predictions, newest first",
        description="Only the predictions made with this client's session cookie (or by the "
        "signed-in user); empty for a client without one.",
        parameters=[
            OpenApiParameter("label", str, description="Only this top label"),
            OpenApiParameter("model", str, description="Only this model name"),
        ],
        responses={
            200: PredictionSerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description="Malformed page or page_size"),
            404: OpenApiResponse(ErrorSerializer, description="Page past the last page"),
        },
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return self.list(request, *args, **kwargs)


class PredictionDetailView(APIView):
    """GET /api/predictions/<id>."""

    http_method_names = ["get"]

    @extend_schema(
        operation_id="getPrediction",
        summary="Get one prediction",
        responses={
            200: PredictionSerializer,
            404: OpenApiResponse(
                ErrorSerializer, description="No such prediction, or not this client's"
            ),
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        prediction = _get_prediction(request, pk)
        return Response(PredictionSerializer(prediction, context={"request": request}).data)


class _JsonErrors(BaseContentNegotiation):
    """PNG endpoints answer errors in JSON whatever the client accepts (an <img> or a client
    asking for image/png only would otherwise get 406 instead of the real error)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class _PredictionImageView(APIView):
    """A PNG drawn from one stored prediction; errors as JSON."""

    http_method_names = ["get"]
    content_negotiation_class = _JsonErrors
    max_age = 3600

    def make_png(self, prediction: Prediction) -> bytes:
        raise NotImplementedError

    def get(self, request: Request, pk: int) -> HttpResponse:
        prediction = _get_prediction(request, pk)
        try:
            png = self.make_png(prediction)
        except classifiers.UnknownModelError as err:
            raise ApiError(
                f"The {prediction.model_name!r} model that made this prediction is no longer "
                "served.",
                code="model_gone",
                status_code=404,
            ) from err
        except OSError as err:  # the stored image is gone or unreadable
            logger.error("Prediction %s: stored image unreadable: %s", pk, err)
            raise ApiError(
                "The image of this prediction is no longer stored.",
                code="image_gone",
                status_code=404,
            ) from err
        response = HttpResponse(png, content_type="image/png")
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = f"private, max-age={self.max_age}"
        response["Content-Disposition"] = f'inline; filename="{self.filename(pk)}"'
        return response

    def filename(self, pk: int) -> str:
        raise NotImplementedError


_PNG = OpenApiResponse(OpenApiTypes.BINARY, description="A PNG image")
_PNG_ERRORS = {
    404: OpenApiResponse(
        ErrorSerializer,
        description="No such prediction (or not this client's), or its model is no longer served",
    ),
    503: OpenApiResponse(ErrorSerializer, description="The model is not installed on this server"),
}


class SaliencyView(_PredictionImageView):
    """GET /api/predictions/<id>/saliency.png: where the model looked, over the image."""

    @extend_schema(
        operation_id="getSaliency",
        summary="Where the model looked: a heat map over the uploaded image",
        description="The overlay has the stored image's size. It is computed on the first "
        "request (not during classification) and served from a cache afterwards.",
        responses={(200, "image/png"): _PNG, **_PNG_ERRORS},
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)

    def make_png(self, prediction: Prediction) -> bytes:
        return services.get_saliency_png(prediction=prediction)

    def filename(self, pk: int) -> str:
        return f"saliency-{pk}.png"


class ModelInputView(_PredictionImageView):
    """GET /api/predictions/<id>/model-input.png: the exact pixels the model saw."""

    max_age = 86400

    @extend_schema(
        operation_id="getModelInput",
        summary="The model's-eye view: the exact pixels the model classified",
        description="A PNG of the model's input size (e.g. 32x32 RGB or 28x28 grey): the "
        "uploaded image after the model's own conversion and resize.",
        responses={(200, "image/png"): _PNG, **_PNG_ERRORS},
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)

    def make_png(self, prediction: Prediction) -> bytes:
        return services.get_model_input_png(prediction=prediction)

    def filename(self, pk: int) -> str:
        return f"model-input-{pk}.png"


class FeedbackView(APIView):
    """POST /api/predictions/<id>/feedback: JSON or form, correct: true or label -> 201."""

    http_method_names = ["post"]
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        operation_id="giveFeedback",
        summary="Confirm or correct a prediction",
        description='Send {"correct": true} when the predicted label is right, or '
        '{"label": "<class>"} with the label the image should have. The latest verdict on '
        "a prediction counts toward its model's live accuracy.",
        request={
            "application/json": FeedbackRequestSerializer,
            "application/x-www-form-urlencoded": FeedbackRequestSerializer,
        },
        responses={
            201: FeedbackSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="Neither or both fields, correct other than true, or a label that "
                "is not one of the model's classes",
            ),
            404: OpenApiResponse(
                ErrorSerializer, description="No such prediction, or not this client's"
            ),
            415: OpenApiResponse(ErrorSerializer, description="A body neither JSON nor a form"),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        prediction = _get_prediction(request, pk)
        fields = FeedbackRequestSerializer(data=request.data)
        fields.is_valid(raise_exception=True)
        try:
            feedback = record_feedback(
                prediction=prediction,
                correct=fields.validated_data.get("correct"),
                label=fields.validated_data.get("label"),
            )
        except FeedbackError as err:
            raise ApiError(str(err), code="bad_feedback", status_code=400) from err
        return Response(FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)


class ModelListView(APIView):
    """GET /api/models: every configured model, whether installed and warmed up."""

    http_method_names = ["get"]

    @extend_schema(
        operation_id="listModels",
        summary="List the models this server can use",
        responses={200: ModelListSerializer},
    )
    def get(self, request: Request) -> Response:
        models = {
            "default": classifiers.get_default_model_name(),
            "models": classifiers.list_model_infos(),
        }
        return Response(ModelListSerializer(models).data)


class HealthView(APIView):
    """GET /readyz (and /healthz): readiness, what a load balancer probes. 200 once every
    model is loaded and compiled and the database and media storage take writes; else 503."""

    http_method_names = ["get", "head"]
    throttle_classes = []  # load balancers and orchestrators poll it

    @extend_schema(
        operation_id="health",
        summary="Readiness: 200 when this worker can take an upload",
        responses={
            200: OpenApiResponse(HealthSerializer, description="Ready"),
            503: OpenApiResponse(
                HealthSerializer,
                description="Still warming up, a model failed to load, or the database or the "
                "media storage cannot be written",
            ),
        },
    )
    def get(self, request: Request) -> Response:
        readiness = health.check_readiness()
        response = Response(readiness, status=200 if readiness["ready"] else 503)
        response["Cache-Control"] = "no-store"
        return response


class ReadinessView(HealthView):
    """GET /readyz: the same answer as /healthz, under the name orchestrators expect."""

    @extend_schema(
        operation_id="readiness",
        summary="Readiness (as /healthz): 200 when this worker can take an upload",
        responses={
            200: OpenApiResponse(HealthSerializer, description="Ready"),
            503: OpenApiResponse(HealthSerializer, description="Not ready: see /healthz"),
        },
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


class LivenessView(APIView):
    """GET /livez: liveness, what a supervisor probes before restarting a process. Always 200
    from a process that answers; it reads neither the database nor the disk."""

    http_method_names = ["get", "head"]
    throttle_classes = []

    @extend_schema(
        operation_id="liveness",
        summary="Liveness: 200 while the process answers",
        responses={200: LivenessSerializer},
    )
    def get(self, request: Request) -> Response:
        response = Response(health.check_liveness())
        response["Cache-Control"] = "no-store"
        return response


class SchemaView(SpectacularJSONAPIView):
    """GET /api/openapi.json: the OpenAPI 3.1 description, generated from the views."""

    http_method_names = ["get"]
    # application/json first, as this URL has always answered; the OpenAPI type on request.
    renderer_classes = [OpenApiJsonRenderer2, OpenApiJsonRenderer]


class DocsView(SpectacularSwaggerSplitView):
    """GET /api/docs/: Swagger UI from drf-spectacular-sidecar's files, so it works offline.

    The split view loads its start-up script from a URL of its own, as the site's
    Content-Security-Policy (no inline script) requires.
    """

    http_method_names = ["get"]
    template_name = "uploads/api_docs.html"
    url_name = "uploads:api-openapi"


def _get_prediction(request: Request, pk: int) -> Prediction:
    """The client's own prediction `pk`; 404 for a missing one and for anyone else's alike."""
    owned = Prediction.objects.owned_by(Owner.of(request))
    prediction = owned.recent().filter(pk=pk).first()
    if prediction is None:
        raise exceptions.NotFound(f"There is no prediction {pk}.")
    return prediction


def _predict_fields(request: Request) -> dict[str, Any]:
    """The validated image, model and top_k of POST /api/predict and /api/classify (400 with
    the field named when they are wrong, 413 before parsing a body far over the limit)."""
    _refuse_oversized_body(request)
    try:
        data = request.data
    except exceptions.UnsupportedMediaType:
        data = {}  # a JSON or raw body has no 'image' field: say which field to send
    fields = PredictRequestSerializer(data=data)
    fields.is_valid(raise_exception=True)
    return fields.validated_data


def _refuse_oversized_body(request: Request) -> None:
    """Refuse a body far over the limit from its Content-Length, before parsing a byte."""
    limit = settings.UPLOAD_MAX_BYTES + 1024 * 1024
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
        raise ApiError(
            f"The request is larger than the {settings.UPLOAD_MAX_BYTES / 2**20:g} MB limit.",
            code="file_too_large",
            status_code=413,
        )


def _read_page_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    value = read_whole_number(text, cap=_MAX_PAGE)
    if value is None:
        raise ApiError(
            "page and page_size must be whole numbers.", code="bad_page", status_code=400
        )
    return value
