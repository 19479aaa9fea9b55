"""The teach pages' forms: fields only; the rules live in teaching.services."""

from django import forms
from django.conf import settings

from uploads.forms import MultipleFileInput, MultipleImageField

BACKBONE_TITLES = {
    "cifar10": "Photos (taught on the CIFAR-10 network)",
    "fashion_mnist": "Drawings on a dark background (the Fashion-MNIST network)",
}


class CreateClassifierForm(forms.Form):
    name = forms.CharField(label="Name", max_length=200)
    class_names = forms.CharField(
        label="Classes, one per line",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="2 to 20 names, e.g. cup, plant, keyboard.",
    )
    backbone = forms.ChoiceField(label="Kind of images")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backbone"].choices = [
            (name, BACKBONE_TITLES.get(name, name)) for name in settings.TEACH_BACKBONES
        ]

    def class_list(self) -> list[str]:
        text = self.cleaned_data["class_names"]
        return [line for line in text.replace(",", "\n").splitlines() if line.strip()]


class ExamplesForm(forms.Form):
    images = MultipleImageField(
        label="Add examples",
        widget=MultipleFileInput(attrs={"accept": "image/*", "multiple": True}),
    )
    source = forms.ChoiceField(
        choices=[("upload", "upload"), ("camera", "camera"), ("drawing", "drawing")],
        required=False,
    )


class ClassifyForm(forms.Form):
    images = MultipleImageField(
        label="Image to classify",
        widget=MultipleFileInput(attrs={"accept": "image/*", "multiple": True}),
    )
