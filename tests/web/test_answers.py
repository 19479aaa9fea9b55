"""Answers in words people act on: the prediction set, its verdict and its guarantee."""

import json
import shutil
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from uploads.models import Answer, Prediction

from .test_trust import copy_model, predict

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def set_model_dirs(tiny_model_dir, tmp_path_factory):
    """The tiny model with a set of the top class alone, of every class, and an unknown one."""
    root = tmp_path_factory.mktemp("set-models")
    return {
        "single": copy_model(tiny_model_dir, root / "single", set_threshold=0.0),
        "everything": copy_model(tiny_model_dir, root / "everything", set_threshold=1.0),
        "outside": copy_model(
            tiny_model_dir, root / "outside", set_threshold=0.0, unknown_threshold=1e9
        ),
    }


@pytest.fixture
def api_client(client) -> APIClient:
    api = APIClient()
    api.cookies = client.cookies
    return api


@pytest.fixture
def set_models(settings, set_model_dirs):
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, **set_model_dirs}


def _answer(**fields) -> Answer:
    values = dict(label="cat", confidence=0.95, prediction_set=["cat"], unknown=False)
    return Prediction(**(values | fields)).answer


@pytest.mark.parametrize(
    ("fields", "verdict", "headline"),
    [
        ({}, "sure", "cat"),
        ({"confidence": 0.62}, "likely", "Probably cat"),
        ({"prediction_set": ["cat", "dog"]}, "one_of", "cat or dog"),
        ({"prediction_set": ["cat", "dog", "bird"]}, "one_of", "cat, dog or bird"),
        ({"prediction_set": ["cat", "dog", "bird", "deer"]}, "not_sure", "Not sure"),
        ({"unknown": True}, "unknown", "None of the classes I know"),
        ({"prediction_set": [], "confidence": 0.3}, "not_sure", "Not sure"),
        ({"prediction_set": [], "confidence": 0.7}, "likely", "Probably cat"),
    ],
)
def test_each_prediction_gets_the_verdict_and_words_of_its_set(fields, verdict, headline):
    """One class at >= 90%: sure; one below: 'Probably'; 2-3 named; more: 'Not sure'; an
    unknown image: 'None of the classes I know'; a row without a set: by its probability."""
    answer = _answer(**fields)
    assert (answer.verdict, answer.headline) == (verdict, headline)


def test_the_api_returns_the_set_the_verdict_and_the_coverage(api_client, upload_file, set_models):
    """POST /api/predict answers with the stored set, its verdict and its 95% coverage."""
    single = predict(api_client, upload_file, model="single")
    assert single["answer"]["classes"] == [single["label"]]
    assert single["answer"]["coverage"] == 0.95
    everything = predict(api_client, upload_file, model="everything")
    assert len(everything["answer"]["classes"]) == 10
    assert everything["answer"]["classes"][0] == everything["label"]
    assert everything["answer"]["verdict"] == "not_sure"
    stored = Prediction.objects.get(pk=everything["id"])
    assert stored.prediction_set == everything["answer"]["classes"]


def test_a_model_without_sets_answers_with_the_top_class_and_no_coverage(api_client, upload_file):
    """A model whose record has no set threshold: the set is the top class, coverage null."""
    body = predict(api_client, upload_file, model="cifar10")
    assert body["answer"]["classes"] == [body["label"]]
    assert body["answer"]["coverage"] is None


def test_a_weak_single_answer_is_hedged_and_never_called_confident(client, upload_file, set_models):
    """The untrained model's top class is far below 90%: the page says 'Probably', states the
    guarantee, and the word 'confident' appears nowhere."""
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "single"}, follow=True
    )
    html = response.content.decode()
    prediction = Prediction.objects.get()
    assert prediction.confidence < 0.9
    assert f"Probably {prediction.label}" in html
    assert "confident" not in html
    assert "at least 95% of images like those" in html


def test_the_unknown_card_leads_with_its_verdict_not_a_class_name(client, upload_file, set_models):
    """An unknown image's page headline is the verdict; the class appears only as a candidate."""
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "outside"}, follow=True
    )
    html = response.content.decode()
    headline = html.split("data-result-label>", 1)[1].split("<", 1)[0]
    assert headline == "None of the classes I know"
    assert "<title>None of the classes I know" in html


SHIPPED_CALIBRATION = Path(__file__).resolve().parents[2] / "models" / "cifar10" / "calibration"


@pytest.fixture
def calibrated_model(settings, tiny_model_dir, tmp_path):
    """The tiny model with the shipped CIFAR-10 model's calibration folder beside it."""
    directory = copy_model(tiny_model_dir, tmp_path / "calibrated")
    shutil.copytree(SHIPPED_CALIBRATION, directory / "calibration")
    settings.CLASSIFIER_MODELS = {**settings.CLASSIFIER_MODELS, "calibrated": directory}
    return directory


def test_the_model_page_states_the_promise_and_the_measured_coverage(client, calibrated_model):
    """The page states the 95% promise, the coverage and set size measured on the folds not
    used for fitting, and shows the risk-coverage curve."""
    sets = json.loads((calibrated_model / "calibration" / "calibration.json").read_text())["sets"]
    measured = sets["reported"][sets["method"]]
    html = client.get(reverse("uploads:model", args=["calibrated"])).content.decode()
    assert "at least <strong>95%</strong>" in html
    assert f"<strong>{measured['coverage'] * 100:.1f}%</strong>" in html
    assert f"naming {measured['mean_size']:.2f} classes on average" in html
    curve = reverse("uploads:model-risk-coverage", args=["calibrated"])
    assert curve in html
    response = client.get(curve)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"


def test_a_model_without_sets_has_no_promise_and_no_curve(client):
    """The tiny model has no calibration folder: no promise on its page, a 404 for the curve."""
    html = client.get(reverse("uploads:model", args=["cifar10"])).content.decode()
    assert "data-answer-sets" not in html
    assert client.get(reverse("uploads:model-risk-coverage", args=["cifar10"])).status_code == 404
