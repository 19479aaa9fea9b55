"""The upload form: one or more images and a model. Image checks live in uploads.images."""

from django import forms
from django.conf import settings

from uploads import classifiers
from uploads.images import describe_allowed_formats


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.Field):
    """Collects every file sent under one name; the service validates their contents."""

    widget = MultipleFileInput

    def to_python(self, data) -> list:
        if not data:
            return []
        return list(data) if isinstance(data, list | tuple) else [data]

    def validate(self, value: list) -> None:
        if self.required and not value:
            raise forms.ValidationError("Choose an image to classify.", code="required")


class ClassifyForm(forms.Form):
    images = MultipleImageField(
        label="Images",
        widget=MultipleFileInput(attrs={"accept": "image/*", "multiple": True}),
    )
    model = forms.ChoiceField(label="Model")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["images"].help_text = (
            f"{describe_allowed_formats()}; up to {settings.UPLOAD_MAX_FILES} files of "
            f"{settings.UPLOAD_MAX_BYTES / (1024 * 1024):g} MB each."
        )
        self.fields["model"].choices = [
            (info.name, _describe_choice(info)) for info in classifiers.list_model_infos()
        ]
        self.fields["model"].initial = classifiers.get_default_model_name()


def _describe_choice(info: classifiers.ModelInfo) -> str:
    label = info.title
    if not info.available:
        return f"{label} (not installed)"
    if info.accuracy is not None:
        return f"{label} — {info.accuracy:.1%} accurate"
    return label


class FeedbackForm(forms.Form):
    """'Is this right?': Yes, or No with the class the image should have."""

    RIGHT, WRONG = "right", "wrong"

    verdict = forms.ChoiceField(choices=[(RIGHT, "Yes"), (WRONG, "No")])
    label = forms.ChoiceField(label="The right class", required=False)

    def __init__(self, *args, prediction, **kwargs):
        super().__init__(*args, **kwargs)
        self.prediction = prediction
        others = [name for name in prediction.probabilities if name != prediction.label]
        self.fields["label"].choices = [("", "Choose the right class")] + [(n, n) for n in others]

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("verdict") == self.WRONG and not cleaned.get("label"):
            self.add_error("label", "Choose the class the image should have.")
        return cleaned

    def feedback_kwargs(self) -> dict:
        """The arguments of uploads.feedback.record_feedback this answer stands for."""
        if self.cleaned_data["verdict"] == self.RIGHT:
            return {"correct": True}
        return {"label": self.cleaned_data["label"]}
