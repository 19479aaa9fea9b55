"""What the JSON API reads and writes: request validation, and the shapes the schema documents.

The OpenAPI schema (drf-spectacular) is generated from these classes and the views in
uploads.api, so the description and the behaviour cannot drift apart.
"""

import re

from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from uploads import classifiers
from uploads.images import describe_allowed_formats
from uploads.models import VERDICTS

_WHOLE_NUMBER = re.compile(r"[0-9]+")
MAX_TOP_K = 10**6  # any larger top_k means "every class" too


def read_whole_number(text: str, *, cap: int) -> int | None:
    """ASCII digits -> their value, at most `cap`; None for anything else.

    Stricter than int(), which also takes ' +3' and '٣' (and fails on '²' or 5000 digits).
    """
    if not _WHOLE_NUMBER.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    return min(int(digits), cap) if len(digits) <= len(str(cap)) else cap


@extend_schema_field(OpenApiTypes.BINARY)
class SingleFileField(serializers.FileField):
    """Exactly one uploaded file under the field's name (a form can send several)."""

    default_error_messages = {
        "no_file": "Send the image as the multipart/form-data field '{name}'.",
        "too_many_files": "{count} images were sent; send one image per request.",
    }

    def get_value(self, dictionary) -> list[UploadedFile]:
        values = dictionary.getlist(self.field_name) if hasattr(dictionary, "getlist") else []
        return [value for value in values if isinstance(value, UploadedFile)]  # text isn't a file

    def to_internal_value(self, data: list[UploadedFile]) -> UploadedFile:
        # The service checks what the file holds (size, format, pixels) for the form and the
        # API alike, with the status each failure deserves.
        if not data:
            self.fail("no_file", name=self.field_name)
        if len(data) > 1:
            self.fail("too_many_files", count=len(data))
        return data[0]


class TopKField(serializers.IntegerField):
    """A whole number of at least 1 written in ASCII digits; blank means the default."""

    default_error_messages = {"invalid_top_k": "top_k must be a whole number of at least 1."}

    def run_validation(self, data=serializers.empty):
        if isinstance(data, str) and not data.strip():
            data = None  # a blank field asks for the default, as a missing one does
        return super().run_validation(data)

    def to_internal_value(self, data) -> int:
        value = read_whole_number(str(data).strip(), cap=MAX_TOP_K)
        if value is None or value < 1:
            self.fail("invalid_top_k")
        return value


class ModelNameField(serializers.CharField):
    """A configured model's name; the OpenAPI schema lists them and the default
    (ModelNameFieldExtension), so Swagger UI offers a menu instead of "string"."""


class ModelNameFieldExtension(OpenApiSerializerFieldExtension):
    """Read when the schema is generated, so the enum follows the configured models."""

    target_class = ModelNameField

    def map_serializer_field(self, auto_schema, direction):
        names = list(classifiers.get_model_names())
        return {"type": "string", "enum": names, "default": classifiers.get_default_model_name()}


class PredictRequestSerializer(serializers.Serializer):
    """POST /api/predict: one image, and optionally the model and how many classes to return."""

    image = SingleFileField(
        help_text=f"{describe_allowed_formats()}; one file, within the server's byte and pixel "
        "limits (10 MB and 25 megapixels by default)."
    )
    model = ModelNameField(
        required=False,
        allow_blank=True,
        help_text="A model name from GET /api/models; the default model when omitted.",
    )
    top_k = TopKField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="How many classes to return (capped at the number of classes; default 5).",
    )

    def validate_model(self, value: str) -> str | None:
        if not value:
            return None
        try:
            classifiers.get_model_dir(value)
        except classifiers.UnknownModelError as err:
            raise serializers.ValidationError(str(err), code="unknown_model") from err
        return value


class ErrorSerializer(serializers.Serializer):
    """Every API error: a message to show people as is, and a code for programs."""

    error = serializers.CharField(help_text="Human-readable message")
    code = serializers.CharField(
        help_text="Machine-readable code, e.g. no_file, empty_file, unsupported_format, "
        "corrupt_image, file_too_large, too_many_pixels, too_many_files, unknown_model, "
        "invalid_top_k, model_unavailable, bad_page, not_found, method_not_allowed, throttled"
    )


class RankedClassSerializer(serializers.Serializer):
    label = serializers.CharField()
    probability = serializers.FloatField()


class ModelVersionSerializer(serializers.Serializer):
    """Which model version made a prediction."""

    name = serializers.CharField(source="model_name")
    dataset = serializers.CharField(source="model_dataset")
    version = serializers.CharField(source="model_version")
    accuracy = serializers.FloatField(
        source="model_accuracy",
        allow_null=True,
        help_text="Accuracy on the model's evaluation split",
    )


class StoredImageSerializer(serializers.Serializer):
    url = serializers.CharField(source="get_image_url")
    original_name = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    format = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()


class MillisecondsField(serializers.FloatField):
    def to_representation(self, value: float) -> float:
        return round(float(value), 2)


class IsoDateTimeField(serializers.DateTimeField):
    """datetime.isoformat() ('+00:00', not DRF's 'Z'), as the API has always answered."""

    def to_representation(self, value) -> str:
        return value.isoformat()


class AnswerSerializer(serializers.Serializer):
    """The answer in words: how sure the model is, and the classes it cannot tell apart."""

    verdict = serializers.ChoiceField(
        choices=VERDICTS,
        help_text="sure: one class, at least 90% probable; likely: one class, less probable "
        "(say 'probably'); one_of: two or three classes (say 'cat or dog'); not_sure: more "
        "than three; unknown: the image looks like none of the classes the model knows",
    )
    classes = serializers.ListField(
        child=serializers.CharField(),
        help_text="The prediction set, most probable first: it holds the true class for at "
        "least `coverage` of images like the model's validation images",
    )
    coverage = serializers.FloatField(
        allow_null=True,
        help_text="The stated coverage of the set (0.95); null when the model has no "
        "prediction sets or the prediction predates them (the set is then the top class)",
    )
    headline = serializers.CharField(help_text="What the page says, e.g. 'cat or dog'")


class ClassificationSerializer(serializers.Serializer):
    """What a model said about one image: the answer fields every endpoint returns."""

    label = serializers.CharField()
    confidence = serializers.FloatField(min_value=0, max_value=1)
    top_k = RankedClassSerializer(many=True)
    model = ModelVersionSerializer(source="*")
    latency_ms = MillisecondsField(
        help_text="Server-side time to validate, classify (and, when stored, store) the image"
    )
    inference_ms = MillisecondsField(help_text="Time spent in the classifier")
    unknown = serializers.BooleanField(
        allow_null=True,
        help_text="True when the image does not look like any class the model knows (its score "
        "fell below the model's threshold); null when the model has no threshold or the "
        "prediction predates it. The ranked classes are returned either way.",
    )
    unknown_score = serializers.FloatField(
        allow_null=True,
        help_text="How much the image looks like the known classes (higher: more); "
        "null for predictions made before scores were recorded",
    )
    answer = AnswerSerializer()


class PredictionSerializer(ClassificationSerializer):
    """One stored prediction, as every endpoint returns it."""

    id = serializers.IntegerField()
    image = StoredImageSerializer(source="upload")
    created_at = IsoDateTimeField()
    share_url = serializers.SerializerMethodField(
        help_text="A read-only page of this result for anyone with the link (an unguessable "
        "token, not the id); absolute when the request's host is known"
    )

    @extend_schema_field(OpenApiTypes.URI)
    def get_share_url(self, prediction) -> str:
        request = self.context.get("request")
        url = prediction.get_share_url()
        return request.build_absolute_uri(url) if request is not None else url


class OptionalBooleanField(serializers.BooleanField):
    """A boolean that a form may leave out (DRF reads a missing form checkbox as false)."""

    default_empty_html = serializers.empty


class FeedbackRequestSerializer(serializers.Serializer):
    """POST /api/predictions/<id>/feedback: either correct: true, or the right label."""

    correct = OptionalBooleanField(required=False, help_text="true: the predicted label is right")
    label = serializers.CharField(
        required=False,
        max_length=100,
        help_text="The label the image should have: one of the model's classes",
    )

    def validate(self, attrs: dict) -> dict:
        if "correct" not in attrs and "label" not in attrs:
            raise serializers.ValidationError(
                "Send correct: true, or the label the image should have.", code="bad_feedback"
            )
        return attrs


class FeedbackSerializer(serializers.Serializer):
    """One stored verdict on a prediction."""

    id = serializers.IntegerField()
    prediction = serializers.IntegerField(source="prediction_id")
    correct = serializers.BooleanField(help_text="Whether the predicted label was right")
    label = serializers.CharField(help_text="The true label (the predicted one when right)")
    created_at = IsoDateTimeField()


class ModelInfoSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    dataset = serializers.CharField()
    version = serializers.CharField()
    class_names = serializers.ListField(child=serializers.CharField())
    accuracy = serializers.FloatField(allow_null=True)
    available = serializers.BooleanField(help_text="The model directory exists")
    ready = serializers.BooleanField(help_text="Loaded and compiled in the process that answered")


class ModelListSerializer(serializers.Serializer):
    default = serializers.CharField()
    models = ModelInfoSerializer(many=True)


class HealthSerializer(serializers.Serializer):
    ready = serializers.BooleanField()
    models = serializers.DictField(
        child=serializers.CharField(), help_text="Per model: ready, loading or 'error: ...'"
    )
    status = serializers.ChoiceField(
        choices=["ready", "starting", "unavailable", "error"],
        help_text="starting: models still loading; unavailable: the database or the media "
        "storage fails now; error: a model is missing or failed to load (it will not become "
        "ready)",
    )
    database = serializers.ChoiceField(choices=["ok", "read-only", "error"])
    media = serializers.ChoiceField(
        choices=["ok", "full", "error"], help_text="full: below the free space it needs"
    )


class LivenessSerializer(serializers.Serializer):
    alive = serializers.BooleanField()
