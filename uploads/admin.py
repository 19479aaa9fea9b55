"""Staff views of uploads, predictions and feedback: read-only, filterable, exportable as CSV.

Staff see every upload here, whoever owns it (rows made before uploads were private have no
owner and are reachable here only); the Uploads list shows the media disk usage by kind.
"""

import csv

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html

from uploads import registry
from uploads.models import Feedback, Prediction, PredictionQuerySet, ServedModel, Upload
from uploads.services import delete_uploads, measure_media_usage

CSV_COLUMNS = [
    "prediction_id",
    "created_at",
    "label",
    "confidence",
    "model_name",
    "model_dataset",
    "model_version",
    "latency_ms",
    "upload_id",
    "original_name",
    "sha256",
    "width",
    "height",
    "format",
    "size_bytes",
]


def _safe_cell(value) -> object:
    """Neutralise spreadsheet formulas in user-provided text (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_predictions_csv(predictions: QuerySet[Prediction]) -> HttpResponse:
    """A CSV attachment with one row per prediction."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"predictions-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for p in predictions.select_related("upload").order_by("created_at", "id"):
        row = [
            p.pk,
            p.created_at.isoformat(),
            p.label,
            f"{p.confidence:.6f}",
            p.model_name,
            p.model_dataset,
            p.model_version,
            f"{p.latency_ms:.2f}",
            p.upload_id,
            p.upload.original_name,
            p.upload.sha256,
            p.upload.width,
            p.upload.height,
            p.upload.format,
            p.upload.size_bytes,
        ]
        writer.writerow([_safe_cell(value) for value in row])
    return response


def format_ms(value: float | None) -> str:
    """24.84376479999355 -> '24.8 ms'; None -> '—'."""
    return "—" if value is None else f"{value:.1f} ms"


def _thumbnail(upload: Upload) -> str:
    return format_html(
        '<img src="{}" alt="" width="48" height="48" style="object-fit:cover;border-radius:4px">',
        upload.get_thumbnail_url(),
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows come from the upload service only; staff can browse and delete, not edit."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class PredictionInline(admin.TabularInline):
    model = Prediction
    extra = 0
    can_delete = False
    show_change_link = True
    # Only "View" (the admin page): a "View on site" beside it read "View View on site", and
    # the result page is its owner's, not staff's.
    view_on_site = False
    fields = ["label", "confidence_percent", "model_name", "model_version", "latency"]
    readonly_fields = fields

    @admin.display(description="confidence")
    def confidence_percent(self, prediction: Prediction) -> str:
        return f"{prediction.confidence:.1%}"

    @admin.display(description="latency")
    def latency(self, prediction: Prediction) -> str:
        return format_ms(prediction.latency_ms)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    # The image column is `image_thumbnail`: a method named `thumbnail` would be shadowed by
    # the model field of that name (the column showed its raw path).
    list_display = [
        "image_thumbnail",
        "original_name",
        "top_label",
        "format",
        "dimensions",
        "size_bytes",
        "owner",
        "created_at",
    ]
    list_display_links = ["image_thumbnail", "original_name"]
    list_filter = ["format", "created_at", "predictions__model_name", "predictions__label"]
    search_fields = ["original_name", "sha256", "predictions__label"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "preview",
        "original_name",
        "image",
        "thumbnail",
        "sha256",
        "format",
        "width",
        "height",
        "size_bytes",
        "owner",
        "created_at",
    ]
    fields = readonly_fields
    inlines = [PredictionInline]
    actions = ["export_csv"]
    change_list_template = "admin/uploads/upload/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upload]:
        return super().get_queryset(request).select_related("user").prefetch_related("predictions")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        usage = measure_media_usage()
        rows = [
            {"kind": kind, "files": files, "size": filesizeformat(size)}
            for kind, (files, size) in usage.kinds.items()
        ]
        extra_context = {
            **(extra_context or {}),
            "media_usage": {
                "files": usage.files,
                "size": filesizeformat(usage.bytes),
                "kinds": rows,
            },
        }
        return super().changelist_view(request, extra_context)

    def delete_model(self, request: HttpRequest, obj: Upload) -> None:
        delete_uploads(uploads=Upload.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        delete_uploads(uploads=queryset)

    @admin.display(description="image")
    def image_thumbnail(self, upload: Upload) -> str:
        return _thumbnail(upload)

    @admin.display(description="owner")
    def owner(self, upload: Upload) -> str:
        if upload.user_id is not None:
            return str(upload.user)
        return "a visitor's session" if upload.owner_key else "— (staff only)"

    @admin.display(description="preview")
    def preview(self, upload: Upload) -> str:
        return format_html(
            '<img src="{}" alt="" style="max-width:320px;max-height:320px">',
            upload.get_image_url(),
        )

    @admin.display(description="top label")
    def top_label(self, upload: Upload) -> str:
        predictions = list(upload.predictions.all())
        return predictions[0].label if predictions else "—"

    @admin.display(description="size", ordering="width")
    def dimensions(self, upload: Upload) -> str:
        return f"{upload.width}×{upload.height}"

    @admin.action(description="Export the predictions of the selected uploads as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Upload]) -> HttpResponse:
        return export_predictions_csv(Prediction.objects.filter(upload__in=queryset))


def _verdict(correct: bool | None, label: str | None) -> str:
    if correct is None:
        return "—"
    return "✓ right" if correct else f"✗ is {label}"


class FeedbackInline(admin.TabularInline):
    model = Feedback
    extra = 0
    can_delete = False
    fields = ["verdict", "label", "created_at"]
    readonly_fields = fields

    @admin.display(description="verdict")
    def verdict(self, feedback: Feedback) -> str:
        return _verdict(feedback.correct, feedback.label)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class VerdictFilter(admin.SimpleListFilter):
    """Predictions by their latest feedback: confirmed, corrected, or none."""

    title = "feedback"
    parameter_name = "verdict"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [("right", "Confirmed right"), ("wrong", "Corrected"), ("none", "No feedback")]

    def queryset(self, request: HttpRequest, queryset: PredictionQuerySet) -> QuerySet:
        value = self.value()
        if value == "right":
            return queryset.filter(verdict_correct=True)
        if value == "wrong":
            return queryset.filter(verdict_correct=False)
        if value == "none":
            return queryset.filter(verdict_correct__isnull=True)
        return queryset


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin):
    list_display = [
        "thumbnail",
        "label",
        "confidence_percent",
        "feedback_verdict",
        "model_name",
        "model_version",
        "latency",
        "created_at",
    ]
    list_display_links = ["thumbnail", "label"]
    list_filter = [VerdictFilter, "label", "model_name", "model_dataset", "created_at"]
    search_fields = ["label", "model_name", "model_version", "upload__original_name"]
    date_hierarchy = "created_at"
    list_select_related = ["upload"]
    readonly_fields = [
        "thumbnail",
        "upload",
        "label",
        "confidence_percent",
        "top_k",
        "probabilities",
        "model_name",
        "model_dataset",
        "model_version",
        "model_accuracy",
        "temperature",
        "unknown_score",
        "unknown",
        "inference",
        "latency",
        "created_at",
    ]
    fields = readonly_fields
    inlines = [FeedbackInline]
    actions = ["export_csv"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Prediction]:
        return super().get_queryset(request).with_verdict()

    @admin.display(description="image")
    def thumbnail(self, prediction: Prediction) -> str:
        return _thumbnail(prediction.upload)

    @admin.display(description="feedback", ordering="verdict_correct")
    def feedback_verdict(self, prediction: Prediction) -> str:
        return _verdict(prediction.verdict_correct, prediction.verdict_label)

    @admin.display(description="confidence", ordering="confidence")
    def confidence_percent(self, prediction: Prediction) -> str:
        return f"{prediction.confidence:.1%}"

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, prediction: Prediction) -> str:
        return format_ms(prediction.latency_ms)

    @admin.display(description="classifier time", ordering="inference_ms")
    def inference(self, prediction: Prediction) -> str:
        return format_ms(prediction.inference_ms)

    @admin.action(description="Export the selected predictions as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Prediction]) -> HttpResponse:
        return export_predictions_csv(queryset)


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = [
        "thumbnail",
        "verdict",
        "predicted_label",
        "label",
        "model_name",
        "created_at",
    ]
    list_display_links = ["thumbnail", "verdict"]
    list_filter = ["correct", "label", "prediction__model_name", "created_at"]
    search_fields = [
        "label",
        "prediction__label",
        "prediction__model_name",
        "prediction__upload__original_name",
    ]
    date_hierarchy = "created_at"
    list_select_related = ["prediction__upload"]
    readonly_fields = [
        "thumbnail",
        "prediction",
        "verdict",
        "predicted_label",
        "label",
        "correct",
        "model_name",
        "created_at",
    ]
    fields = readonly_fields

    @admin.display(description="image")
    def thumbnail(self, feedback: Feedback) -> str:
        return _thumbnail(feedback.prediction.upload)

    @admin.display(description="verdict", ordering="correct")
    def verdict(self, feedback: Feedback) -> str:
        return _verdict(feedback.correct, feedback.label)

    @admin.display(description="predicted", ordering="prediction__label")
    def predicted_label(self, feedback: Feedback) -> str:
        return feedback.prediction.label

    @admin.display(description="model", ordering="prediction__model_name")
    def model_name(self, feedback: Feedback) -> str:
        return feedback.prediction.model_name


class PublishForm(forms.ModelForm):
    """A model directory to publish: checked before anything is saved."""

    class Meta:
        model = ServedModel
        fields = ["name", "directory", "note"]

    def clean(self):
        data = super().clean()
        if data.get("directory"):
            try:
                registry.check(directory=data["directory"], name=data.get("name", ""))
            except registry.PublishError as err:
                raise forms.ValidationError(str(err)) from err
        return data


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    """The served model versions: add one to publish it; actions serve or roll back. Each worker
    swaps a version in once it is warm (uploads.registry)."""

    form = PublishForm
    list_display = ["name", "version", "dataset", "active", "directory", "activated_at", "note"]
    list_filter = ["name", "active"]
    search_fields = ["name", "version", "directory", "note"]
    actions = ["serve_selected", "roll_back"]

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return obj is None  # the list (and its actions), not editing a published row

    def save_model(self, request: HttpRequest, obj: ServedModel, form, change: bool) -> None:
        row = registry.publish_model(directory=obj.directory, name=obj.name, note=obj.note)
        obj.pk, obj.version, obj.active = row.pk, row.version, row.active

    @admin.action(description="Serve the selected version (one per model)")
    def serve_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        rows = list(queryset)
        if len({row.name for row in rows}) != len(rows):
            self.message_user(request, "Select one version per model.", messages.ERROR)
            return
        for row in rows:
            registry.activate(row=row)
            self.message_user(request, f"{row.name}: serving {row.version}.")

    @admin.action(description="Roll back to the version served before")
    def roll_back(self, request: HttpRequest, queryset: QuerySet) -> None:
        for name in sorted(set(queryset.values_list("name", flat=True))):
            try:
                row = registry.roll_back(name=name)
            except registry.PublishError as err:
                self.message_user(request, str(err), messages.ERROR)
            else:
                self.message_user(request, f"{name}: serving {row.version} again.")
