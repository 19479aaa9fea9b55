"""HTML pages: thin wrappers over uploads.services and the Prediction queryset.

Every page about predictions shows the visitor's own only (404 for anyone else's); a result
reaches others only through its share link, /s/<token>/, read-only.
"""

import logging
import re
import sys
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousFileOperation,
    TooManyFilesSent,
)
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.generic import DetailView, ListView

from classifier_site.middleware import LiveRateThrottle, throttle_wait
from research.configs import DATASETS
from research.serving import model_dir
from uploads import classifiers, model_pages, services
from uploads.feedback import FeedbackError, record_feedback
from uploads.forms import ClassifyForm, FeedbackForm
from uploads.images import STORED_CONTENT_TYPES, UploadRejected
from uploads.models import Owner, Prediction, Upload
from uploads.sessions import commit_session
from uploads.storage import StorageUnavailable

logger = logging.getLogger(__name__)

# Only names the service generates are ever served.
_MEDIA_NAME = re.compile(
    r"(images|thumbnails)/\d{4}/\d{2}/[0-9a-f]{32}(_[A-Za-z0-9]{7})?\.(jpg|png)"
)
MODEL_EYE_PIXELS = 256  # the model's input is enlarged to about this size, nearest-neighbour
_MEDIA_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


@require_http_methods(["GET", "POST"])
def classify(request: HttpRequest) -> HttpResponse:
    """The home page: the upload form; a valid POST redirects to its result."""
    status, retry_after = 200, None
    if request.method == "POST":
        wait = throttle_wait(request)
        if wait is not None:
            return _too_many_requests(request, wait)
        form = ClassifyForm(request.POST, request.FILES)
        status = 400
        if form.is_valid():
            files, rejected = form.cleaned_data["images"], []
            if len(files) > 1:  # a batch: classify the good files, name the bad ones
                files, rejected = services.sort_files(files=files)
            try:
                if not files:
                    raise UploadRejected(
                        "None of the files could be classified: "
                        + "; ".join(f"{r.name}: {r.reason}" for r in rejected),
                        code="no_valid_file",
                    )
                predictions = services.classify_uploads(
                    files=files,
                    model_name=form.cleaned_data["model"],
                    owner=Owner.of(request, create=True),
                    commit_with=commit_session(request),
                )
            except UploadRejected as err:
                form.add_error("images", err.message)
                status = err.status
            except StorageUnavailable as err:
                form.add_error("images", err.public_message)
                status, retry_after = err.status, err.retry_after
            except classifiers.ModelUnavailableError as err:
                logger.error("%s", err)
                form.add_error("model", err.public_message)
                status = 503
            else:
                for bad in rejected:
                    messages.error(request, f"Not classified: {bad.name}: {bad.reason}")
                return redirect(_result_url(predictions))
    else:
        form = ClassifyForm()
    context = {
        "form": form,
        "recent": _own_predictions(request)[:8],
        "max_files": settings.UPLOAD_MAX_FILES,
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "live_models": _describe_live_models(),
        "live_interval_ms": LiveRateThrottle.min_interval_ms(),
    }
    response = render(request, "uploads/classify.html", context, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def _describe_live_models() -> list[dict]:
    """Per model, what the camera, drawing and example modes need: the input size, whether its
    data are drawings on a dark background, and the example images it ships."""
    described = []
    for info in classifiers.list_model_infos():
        if info.record is None:
            continue
        spec = DATASETS.get(info.dataset)
        height, width, channels = info.record.image_shape
        examples = [
            {
                "label": example.label,
                "url": reverse("uploads:model-example", args=[info.name, example.file]),
            }
            for example in model_dir.read_examples(info.directory)
        ]
        described.append(
            {
                "name": info.name,
                "title": info.title,
                "width": width,
                "height": height,
                "channels": channels,
                "draw": spec is not None and spec.background == "dark",
                "examples": examples,
            }
        )
    return described


@require_GET
def model_example(request: HttpRequest, name: str, file: str) -> FileResponse:
    """One example image a model ships (research.examples): only files its index lists."""
    try:
        directory = classifiers.get_model_dir(name)
    except classifiers.UnknownModelError as err:
        raise Http404("No such model.") from err
    path = model_dir.find_example(directory, file)
    if path is None:
        raise Http404("No such example.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _MEDIA_CSP
    response["Cache-Control"] = "public, max-age=3600"
    return response


@require_GET
def results(request: HttpRequest) -> HttpResponse:
    """The results of one multi-file upload (?ids=1,2,3): the visitor's own among them."""
    ids = [int(i) for i in request.GET.get("ids", "").split(",") if i.isascii() and i.isdigit()]
    predictions = (
        _own_predictions(request).filter(pk__in=ids[: settings.UPLOAD_MAX_FILES]).order_by("pk")
    )
    if not predictions:
        raise Http404("No such predictions.")
    return render(request, "uploads/results.html", {"predictions": predictions})


class PredictionListView(ListView):
    """History: the visitor's own predictions, newest first, filterable by ?label= and ?model=."""

    template_name = "uploads/history.html"
    context_object_name = "predictions"
    paginate_by = 24

    def get_queryset(self):
        return _own_predictions(self.request).filter_by(
            label=self.request.GET.get("label", ""), model_name=self.request.GET.get("model", "")
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        filters = {key: self.request.GET.get(key, "") for key in ("label", "model")}
        context.update(
            filters=filters,
            filter_query=urlencode({key: value for key, value in filters.items() if value}),
            labels=_own_predictions(self.request).labels(),
            model_names=_own_predictions(self.request).model_names(),
        )
        return context


class PredictionDetailView(DetailView):
    """One prediction: the image, the top-k classes (or "Not sure"), where the model looked,
    the pixels it saw against what it expects, "Is this right?", the model and the timings."""

    template_name = "uploads/detail.html"
    context_object_name = "prediction"

    def get_queryset(self):
        return _own_predictions(self.request)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("feedback_form", FeedbackForm(prediction=self.object))
        context.update(_describe_input(self.object))
        if self.object.share_enabled:
            context["share_link"] = self.request.build_absolute_uri(self.object.get_share_url())
        return context


@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    """A shared result, read-only, for anyone with the link; with Open Graph / Twitter tags."""
    prediction = get_object_or_404(
        Prediction.objects.recent(), share_token=token, share_enabled=True
    )
    context = {
        "prediction": prediction,
        "is_owner": prediction.is_owned_by(Owner.of(request)),
        "page_url": request.build_absolute_uri(prediction.get_share_url()),
        "image_url": request.build_absolute_uri(prediction.get_shared_image_url()),
    }
    response = render(request, "uploads/share.html", context)
    response["Referrer-Policy"] = "no-referrer"  # the token stays out of other sites' logs
    response["X-Robots-Tag"] = "noindex"
    return response


@require_POST
def give_feedback(request: HttpRequest, pk: int) -> HttpResponse:
    """'Is this right?': record the verdict and go back to the prediction (400: say why)."""
    wait = throttle_wait(request)
    if wait is not None:
        return _too_many_requests(request, wait)
    prediction = get_object_or_404(_own_predictions(request), pk=pk)
    form = FeedbackForm(request.POST, prediction=prediction)
    if form.is_valid():
        try:
            record_feedback(prediction=prediction, **form.feedback_kwargs())
        except FeedbackError as err:
            form.add_error(None, str(err))
        else:
            # Confirmed in place: the form says what was recorded (see _feedback.html), and
            # the fragment brings the reader back to it.
            return redirect(f"{prediction.get_absolute_url()}#feedback-status")
    context = {
        "prediction": prediction,
        "feedback_form": form,
        "share_link": (
            request.build_absolute_uri(prediction.get_share_url())
            if prediction.share_enabled
            else ""
        ),
        **_describe_input(prediction),
    }
    return render(request, "uploads/detail.html", context, status=400)


@require_POST
def delete_prediction(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete one's own upload: its rows, its files and every image derived from it."""
    prediction = get_object_or_404(_own_predictions(request), pk=pk)
    services.delete_uploads(uploads=Upload.objects.filter(pk=prediction.upload_id))
    messages.success(request, "Deleted: the image, its answer and everything made from it.")
    return redirect("uploads:history")


@require_POST
def change_share_link(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke the share link of one's own result ("revoke"), or make a new one ("renew")."""
    prediction = get_object_or_404(_own_predictions(request), pk=pk)
    action = request.POST.get("action")
    if action == "revoke":
        prediction.revoke_share_link()
        messages.success(request, "The share link no longer works.")
    elif action == "renew":
        prediction.renew_share_link()
        messages.success(request, "A new share link: the old one no longer works.")
    else:
        return _error(request, 400, "bad_request", "Choose whether to revoke or renew the link.")
    return redirect(f"{prediction.get_absolute_url()}#share")


@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A model's page: its card, accuracy on validation per class, training curves, the
    confusion matrix (each cell a link to its mistakes), calibration and live accuracy."""
    try:
        page = model_pages.model_page(name=name)
    except classifiers.UnknownModelError as err:
        raise Http404("No such model.") from err
    return render(request, "uploads/model.html", {"model": page.summary, "page": page})


@require_GET
def model_confusion(
    request: HttpRequest, name: str, true_index: int, predicted_index: int
) -> HttpResponse:
    """The validation images of one true/predicted pair that the model got wrong."""
    try:
        cell = model_pages.confusion_cell(name=name, true=true_index, predicted=predicted_index)
    except (classifiers.UnknownModelError, model_pages.NoSuchCell) as err:
        raise Http404("No such model or confusion cell.") from err
    return render(request, "uploads/model_confusion.html", {"model": cell.summary, "cell": cell})


@require_GET
def model_report_file(request: HttpRequest, name: str, file: str) -> FileResponse:
    """A figure or example thumbnail of a model's report (only names the report writes)."""
    try:
        path = model_pages.report_file(name=name, relative=file)
    except (classifiers.UnknownModelError, model_pages.NoSuchFile) as err:
        raise Http404("No such file.") from err
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _MEDIA_CSP
    response["Cache-Control"] = "public, max-age=3600"
    return response


@require_GET
def model_reliability(request: HttpRequest, name: str) -> FileResponse:
    """The reliability diagram a model directory ships (reliability.png), if any."""
    try:
        path = services.find_reliability_diagram(name=name)
    except classifiers.UnknownModelError as err:
        raise Http404("No such model.") from err
    if path is None:
        raise Http404("This model has no reliability diagram.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _MEDIA_CSP
    response["Cache-Control"] = "public, max-age=3600"
    return response


@require_GET
def model_risk_coverage(request: HttpRequest, name: str) -> FileResponse:
    """The risk-coverage curve research.calibrate wrote beside the model, if any."""
    try:
        path = model_pages.risk_coverage_file(name=name)
    except (classifiers.UnknownModelError, model_pages.NoSuchFile) as err:
        raise Http404("This model has no risk-coverage curve.") from err
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _MEDIA_CSP
    response["Cache-Control"] = "public, max-age=3600"
    return response


@require_GET
def serve_media(request: HttpRequest, name: str) -> FileResponse:
    """Serve a stored image with a fixed image type, inline, never sniffed or scripted."""
    match = _MEDIA_NAME.fullmatch(name)
    if match is None:
        raise Http404("No such file.")
    # Only the owner, staff, or a holder of the share link: others get the same 404 as for a
    # file that does not exist, so a name reveals nothing.
    upload = Upload.objects.of_media(name).first()
    if upload is None or not upload.may_be_seen(
        owner=Owner.of(request),
        share_token=request.GET.get("share", ""),
        staff=request.user.is_staff,
    ):
        raise Http404("No such file.")
    try:
        file = default_storage.open(name, "rb")
    except (FileNotFoundError, SuspiciousFileOperation) as err:
        raise Http404("No such file.") from err
    response = FileResponse(
        file, content_type=STORED_CONTENT_TYPES[match.group(3)], filename=name.rsplit("/", 1)[-1]
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = _MEDIA_CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    # Private: a browser may keep it, a shared cache (a proxy, a CDN) never.
    response["Cache-Control"] = "private, max-age=3600"
    patch_vary_headers(response, ["Cookie"])
    return response


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on pages without an icon link (the admin's)."""
    return redirect(static("uploads/favicon.svg"), permanent=True)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    message = "The request could not be understood."
    if isinstance(exception, TooManyFilesSent):
        message = f"Too many files in one request; at most {settings.UPLOAD_MAX_FILES} at once."
    elif isinstance(exception, RequestDataTooBig):
        message = "The request is too large."
    return _error(request, 400, "bad_request", message)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 403, "forbidden", "You do not have permission to see this page.")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 404, "not_found", "There is nothing at this address.")


DATABASE_RETRY_AFTER_S = 5  # a restarting database is back within seconds


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500, which every uncaught exception reaches (a view's, a middleware's: the
    session's save included): a database that cannot be reached answers 503 with Retry-After,
    anything else 500."""
    if isinstance(sys.exception(), OperationalError | InterfaceError):
        logger.error("Database unavailable: %s", sys.exception())
        message = "The service is briefly unavailable; nothing was stored. Please try again."
        response = _error(request, 503, "database_unavailable", message, database=False)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response
    return _error(request, 500, "server_error", "Something went wrong on our side.")


def _error(
    request: HttpRequest, status: int, code: str, message: str, *, database: bool = True
) -> HttpResponse:
    """JSON for API clients, a page for people; without `database`, a page that reads neither
    the visitor nor their messages (both live in the database)."""
    if request.path.startswith(("/api/", "/healthz", "/livez", "/readyz")):
        return JsonResponse({"error": message, "code": code}, status=status)
    context = {"status": status, "message": message}
    if not database:
        context.update(user=AnonymousUser(), messages=[])
    return render(request, "uploads/error.html", context, status=status)


def _too_many_requests(request: HttpRequest, wait: int) -> HttpResponse:
    """429 with Retry-After: the page says how long to wait."""
    unit = "second" if wait == 1 else "seconds"
    message = f"Too many requests from your address. Please try again in {wait} {unit}."
    response = _error(request, 429, "throttled", message)
    response["Retry-After"] = str(wait)
    return response


def _own_predictions(request: HttpRequest):
    """The visitor's predictions, newest first, with their uploads."""
    return Prediction.objects.owned_by(Owner.of(request)).recent()


def _describe_input(prediction: Prediction) -> dict:
    """The model's-eye view's context: what the model expects, warnings, the display scale."""
    report = services.describe_input(prediction=prediction)
    if report is None:
        return {"input_report": None}
    height, width, _ = report.input_shape
    scale = max(1, MODEL_EYE_PIXELS // max(height, width))
    return {"input_report": report, "eye_width": width * scale, "eye_height": height * scale}


def _result_url(predictions: list[Prediction]) -> str:
    if len(predictions) == 1:
        return predictions[0].get_absolute_url()
    ids = ",".join(str(prediction.pk) for prediction in predictions)
    return f"{reverse('uploads:results')}?ids={ids}"
