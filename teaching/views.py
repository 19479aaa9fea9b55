"""The teach pages: thin views over teaching.services.

Every page of a classifier is its owner's only (404 for anyone else); others see it through
its share link, read-only. A refused request re-renders the page with the reason and a 4xx.
"""

import logging

from django.conf import settings
from django.contrib import messages
from django.db.models import Count
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from teaching import services, training
from teaching.files import example_storage
from teaching.forms import ClassifyForm, CreateClassifierForm, ExamplesForm
from teaching.models import Example, TaughtClassifier
from uploads import classifiers
from uploads import services as upload_services
from uploads.images import STORED_CONTENT_TYPES, UploadRejected
from uploads.models import Owner
from uploads.sessions import commit_session
from uploads.storage import StorageUnavailable

logger = logging.getLogger(__name__)


def _own(request: HttpRequest, pk: int) -> TaughtClassifier:
    owner = Owner.of(request)
    return get_object_or_404(TaughtClassifier.objects.owned_by(owner), pk=pk)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_http_methods(["GET", "POST"])
def classifier_list(request: HttpRequest) -> HttpResponse:
    """The visitor's classifiers, and the form that creates one."""
    status = 200
    if request.method == "POST":
        form = CreateClassifierForm(request.POST)
        status = 400
        if form.is_valid():
            owner = Owner.of(request, create=True)
            request.session.save()  # the owner key must outlive this request
            try:
                classifier = services.create_classifier(
                    owner=owner,
                    name=form.cleaned_data["name"],
                    class_names=form.class_list(),
                    backbone=form.cleaned_data["backbone"],
                )
            except services.TeachRejected as err:
                form.add_error(None, err.message)
                status = err.status
            else:
                return redirect(classifier)
    else:
        form = CreateClassifierForm()
    mine = (
        TaughtClassifier.objects.owned_by(Owner.of(request))
        .annotate(class_count=Count("classes", distinct=True))
        .order_by("-created_at")
    )
    context = {"form": form, "classifiers": mine, "max_classifiers": settings.TEACH_MAX_CLASSIFIERS}
    return render(request, "teaching/list.html", context, status=status)


def _detail_context(request: HttpRequest, classifier: TaughtClassifier, **extra) -> dict:
    classes = list(classifier.classes.prefetch_related("examples"))
    job = classifier.jobs.first()
    served = classifier.served_version()
    versions = classifier.versions()
    return {
        "classifier": classifier,
        "classes": classes,
        "job": job,
        "served": served,
        "versions": versions,
        "examples_form": ExamplesForm(),
        "classify_form": ClassifyForm(),
        "max_examples": settings.TEACH_MAX_EXAMPLES,
        "min_examples": settings.TEACH_MIN_EXAMPLES,
        "draw": classifier.backbone == "fashion_mnist",
        "share_url": request.build_absolute_uri(classifier.get_share_url()),
        **extra,
    }


@require_GET
def classifier_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A classifier: its classes and examples, training, classifying with it."""
    training.recover_stale_jobs()
    classifier = _own(request, pk)
    return render(request, "teaching/detail.html", _detail_context(request, classifier))


def _refused(request, classifier, err: services.TeachRejected) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": err.message, "code": err.code}, status=err.status)
    context = _detail_context(request, classifier, error=err.message)
    return render(request, "teaching/detail.html", context, status=err.status)


@require_GET
def job_status(request: HttpRequest, pk: int) -> JsonResponse:
    """The latest job's progress, for the page's polling."""
    training.recover_stale_jobs()
    classifier = _own(request, pk)
    job = classifier.jobs.first()
    served = classifier.served_version()
    return JsonResponse(
        {
            "job": job.as_dict() if job else None,
            "served_version": served.version if served else None,
        }
    )


@require_POST
def add_examples(request: HttpRequest, pk: int, class_pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    taught_class = get_object_or_404(classifier.classes, pk=class_pk)
    form = ExamplesForm(request.POST, request.FILES)
    try:
        if not form.is_valid():
            raise services.TeachRejected("Choose at least one image.", code="no_file")
        added = services.add_examples(
            taught_class=taught_class,
            files=form.cleaned_data["images"],
            source=form.cleaned_data["source"] or "upload",
        )
    except services.TeachRejected as err:
        return _refused(request, classifier, err)
    except StorageUnavailable as err:
        return _refused(
            request,
            classifier,
            services.TeachRejected(err.public_message, code=err.code, status=err.status),
        )
    if _wants_json(request):
        return JsonResponse({"added": len(added), "count": taught_class.examples.count()})
    messages.success(request, f"Added {len(added)} example(s) to {taught_class.name}.")
    return redirect(classifier)


@require_POST
def remove_example(request: HttpRequest, pk: int, example_pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    example = get_object_or_404(Example, pk=example_pk, taught_class__classifier=classifier)
    services.remove_example(example=example)
    messages.success(request, "Example removed.")
    return redirect(classifier)


@require_GET
def example_image(request: HttpRequest, pk: int, example_pk: int, kind: str) -> FileResponse:
    """An example's image or thumbnail: for its owner, or whoever holds the share link."""
    classifier = get_object_or_404(TaughtClassifier, pk=pk)
    shared = request.GET.get("share", "")
    if not (classifier.is_owned_by(Owner.of(request)) or shared == classifier.share_token):
        raise Http404("No such image.")
    example = get_object_or_404(Example, pk=example_pk, taught_class__classifier=classifier)
    if kind not in ("image", "thumbnail"):
        raise Http404("No such image.")
    name = example.thumbnail if kind == "thumbnail" and example.thumbnail else example.image
    try:
        file = example_storage().open(name, "rb")
    except OSError as err:
        raise Http404("No such image.") from err
    extension = name.rsplit(".", 1)[-1]
    response = FileResponse(file, content_type=STORED_CONTENT_TYPES.get(extension, "image/png"))
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_POST
def train(request: HttpRequest, pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    training.recover_stale_jobs()
    try:
        job = services.start_training(classifier=classifier, owner=Owner.of(request))
    except services.TeachRejected as err:
        return _refused(request, classifier, err)
    if _wants_json(request):
        return JsonResponse({"job": job.as_dict()}, status=202)
    messages.success(request, "Training queued.")
    return redirect(classifier)


@require_POST
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    job = classifier.jobs.first()
    if job is not None:
        job = services.cancel_training(job=job)
    if _wants_json(request):
        return JsonResponse({"job": job.as_dict() if job else None})
    return redirect(classifier)


@require_POST
def retrain(request: HttpRequest, pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    try:
        services.retrain_with_corrections(classifier=classifier, owner=Owner.of(request))
    except services.TeachRejected as err:
        return _refused(request, classifier, err)
    messages.success(request, "Corrections added; a new version is queued.")
    return redirect(classifier)


@require_POST
def restore(request: HttpRequest, pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    try:
        row = services.restore_version(
            classifier=classifier, version=request.POST.get("version", "")
        )
    except services.TeachRejected as err:
        return _refused(request, classifier, err)
    messages.success(request, f"Version {row.version} is served again.")
    return redirect(classifier)


@require_POST
def classify(request: HttpRequest, pk: int) -> HttpResponse:
    """Classify images with the classifier's served version (the site's classify flow)."""
    classifier = _own(request, pk)
    form = ClassifyForm(request.POST, request.FILES)
    if not form.is_valid():
        return _refused(
            request, classifier, services.TeachRejected("Choose an image.", code="no_file")
        )
    if classifier.served_version() is None:
        return _refused(
            request,
            classifier,
            services.TeachRejected("Train the classifier first.", code="not_trained", status=409),
        )
    try:
        predictions = upload_services.classify_uploads(
            files=form.cleaned_data["images"],
            model_name=classifier.model_name,
            owner=Owner.of(request, create=True),
            commit_with=commit_session(request),
        )
    except UploadRejected as err:
        return _refused(
            request,
            classifier,
            services.TeachRejected(err.message, code=err.code, status=err.status),
        )
    except StorageUnavailable as err:
        rejected = services.TeachRejected(err.public_message, code=err.code, status=err.status)
        return _refused(request, classifier, rejected)
    except classifiers.ModelUnavailableError as err:
        logger.error("%s", err)
        rejected = services.TeachRejected(
            "This classifier cannot answer right now; try again shortly.",
            code="model_unavailable",
            status=503,
        )
        return _refused(request, classifier, rejected)
    return redirect(predictions[0])


@require_POST
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    classifier = _own(request, pk)
    name = classifier.name
    services.delete_classifier(classifier=classifier)
    messages.success(request, f"Deleted {name!r}, its examples and its models.")
    return redirect("teaching:list")


@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    """A classifier as its share link shows it: classes, examples, accuracy; read-only."""
    classifier = get_object_or_404(TaughtClassifier, share_token=token)
    context = _detail_context(request, classifier, read_only=True)
    return render(request, "teaching/detail.html", context)
