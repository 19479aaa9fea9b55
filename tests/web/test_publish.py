"""Publishing a model version without a restart: uploads.registry, `manage.py publish_model`,
and the swap in uploads.classifiers (one whole model per request; a failed warm-up changes
nothing; rollback)."""

import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from flax import nnx
from PIL import Image

from classifier_site import UNPINNED_CPUS_ENV
from research import configs
from research.nets import models
from research.serving.classifier import Classifier
from research.train.checkpoints import serving_record
from tests.conftest import CIFAR10_CLASSES
from uploads import classifiers, registry, services
from uploads.models import Prediction, ServedModel

pytestmark = pytest.mark.django_db(transaction=True)  # worker threads read the published rows

SWAP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def second_version(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped tiny model with other weights and another version (step 2)."""
    config = configs.get_config("tiny", dataset="cifar10")
    spec = configs.DATASETS["cifar10"]
    model = models.create_model(
        config, num_classes=10, image_shape=(32, 32, 3), mean=spec.mean, std=spec.std,
        rngs=nnx.Rngs(7),
    )  # fmt: skip
    record = serving_record(
        config, class_names=CIFAR10_CLASSES, image_shape=(32, 32, 3), mean=spec.mean,
        std=spec.std, step=2, metrics={"eval_accuracy": 0.2, "eval_split": "test"},
    )  # fmt: skip
    return Classifier(model, record).export(tmp_path_factory.mktemp("published") / "cifar10")


@pytest.fixture
def polling(settings):
    """Workers read the published versions on every request; the served state is restored."""
    settings.CLASSIFIER_REGISTRY_POLL_S = 0.0
    served, warm = dict(classifiers._served), set(classifiers._warm)
    yield settings
    _wait_for_swaps()
    classifiers._served.clear()
    classifiers._served.update(served)
    classifiers._warm.clear()
    classifiers._warm.update(warm)  # a version warmed here is warmed again by the next test
    classifiers._swapping.clear()
    classifiers._published, classifiers._published_pks = {}, None


def _wait_for_swaps() -> None:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while any(t.name.startswith("classifier-swap-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a swap did not finish"
        time.sleep(0.05)


def _served_version(name: str = "cifar10") -> str:
    """Ask as a request does (which starts a swap when the published version changed)."""
    return classifiers.get_served(name).classifier.version


def _wait_until_serving(version: str) -> None:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while _served_version() != version:
        assert time.monotonic() < deadline, f"{version} never served"
        time.sleep(0.05)


def _png(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_published_version_serves_without_a_restart_and_predictions_name_it(
    polling, client, upload_file, model_dirs, second_version
):
    """After publish_model, new predictions come from the new version and record it."""
    first = _served_version()
    call_command("publish_model", str(second_version), "--name", "cifar10")
    new = ServedModel.objects.get(active=True).version
    assert new != first
    _wait_until_serving(new)

    response = client.post(reverse("uploads:api-predict"), {"image": upload_file(_png())})
    assert response.status_code == 201, response.content
    prediction = Prediction.objects.get()
    assert prediction.model_version == response.json()["model"]["version"] == new
    expected = Classifier.load(second_version).predict([Image.open(io.BytesIO(_png()))])[0]
    assert prediction.confidence == pytest.approx(float(expected.max()), abs=1e-5)


def test_requests_during_a_swap_are_each_answered_by_one_whole_model(
    polling, upload_file, model_dirs, second_version
):
    """Threads classifying while a version is swapped in get either version's exact answer,
    with that version's name, never a mix, and never an error."""
    image = Image.open(io.BytesIO(_png()))
    old = classifiers.get_classifier("cifar10")
    new = Classifier.load(second_version)
    expected = {c.version: c.predict([image])[0] for c in (old, new)}
    assert old.version != new.version

    answers: list[tuple[str, dict]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def classify() -> None:
        while not stop.is_set():
            try:
                prediction = services.classify_without_storing(
                    file=upload_file(_png()), model_name="cifar10"
                )
            except BaseException as err:  # recorded: the test fails on any
                errors.append(err)
                return
            answers.append((prediction.model_version, prediction.probabilities))

    threads = [threading.Thread(target=classify) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        registry.publish_model(directory=second_version, name="cifar10")
        _wait_until_serving(new.version)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert not errors
    versions = [version for version, _ in answers]
    assert {old.version, new.version} <= set(versions)
    for version, probabilities in answers:
        assert list(probabilities.values()) == pytest.approx(list(expected[version]), abs=1e-6)


def test_a_failed_warm_up_leaves_the_old_version_serving(
    polling, monkeypatch, client, upload_file, model_dirs, second_version
):
    """A published version whose warm-up fails is never served; the old one answers on."""
    first = _served_version()
    real_warmup = Classifier.warmup

    def warmup(self):
        if self.version != first:
            raise RuntimeError("compilation failed")
        real_warmup(self)

    monkeypatch.setattr(Classifier, "warmup", warmup)
    registry.publish_model(directory=second_version, name="cifar10")
    assert _served_version() == first  # starts the swap, answers with the old one meanwhile
    _wait_for_swaps()

    assert _served_version() == first
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file(_png())})
    assert response.status_code == 201
    assert response.json()["model"]["version"] == first
    assert classifiers.get_health()["models"]["cifar10"] == "ready"


def test_rollback_serves_the_version_before(polling, model_dirs, second_version):
    """publish_model --rollback puts back the version served before the current one."""
    call_command("publish_model", str(model_dirs["cifar10"]), "--name", "cifar10")
    first = ServedModel.objects.get(active=True).version
    call_command("publish_model", str(second_version), "--name", "cifar10")
    _wait_until_serving(ServedModel.objects.get(active=True).version)

    call_command("publish_model", "--rollback", "cifar10")
    assert ServedModel.objects.get(active=True).version == first
    _wait_until_serving(first)


def test_rollback_after_the_first_publish_serves_the_settings_model_again(
    polling, settings, model_dirs, second_version
):
    """Rolling back the first version published over a model of settings.CLASSIFIER_MODELS
    serves the settings' directory again (it had no published row to go back to)."""
    first = _served_version()
    call_command("publish_model", str(second_version), "--name", "cifar10")
    _wait_until_serving(ServedModel.objects.get(active=True).version)

    call_command("publish_model", "--rollback", "cifar10")
    active = ServedModel.objects.get(active=True)
    assert active.version == first
    assert Path(active.directory) == Path(settings.CLASSIFIER_MODELS["cifar10"]).resolve()
    _wait_until_serving(first)


def test_a_rollback_to_a_version_this_worker_compiled_swaps_it_in_without_warming_it(
    polling, monkeypatch, model_dirs, second_version
):
    """Rolling back to the version served before the publish reuses its compiled classifier:
    no warm-up runs (a warm-up costs the serving cores seconds)."""
    first = _served_version()
    call_command("publish_model", str(second_version), "--name", "cifar10")
    _wait_until_serving(ServedModel.objects.get(active=True).version)
    warmed = []
    monkeypatch.setattr(Classifier, "warmup", lambda self: warmed.append(self.version))

    call_command("publish_model", "--rollback", "cifar10")
    _wait_until_serving(first)
    assert warmed == []


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and two cores",
)
def test_a_worker_pinned_to_one_core_warms_a_new_version_on_every_core(
    polling, monkeypatch, model_dirs, second_version
):
    """The swap's warm-up thread may run on every core the worker had before it was pinned
    (here: the thread that asks for the model is pinned to one), so it never waits, holding
    the GIL, for the core that the requests saturate."""
    every_core = os.sched_getaffinity(0)
    monkeypatch.setenv(UNPINNED_CPUS_ENV, ",".join(map(str, sorted(every_core))))
    seen: list[set[int]] = []
    warmup = Classifier.warmup

    def recording_warmup(self):
        seen.append(os.sched_getaffinity(0))
        warmup(self)

    monkeypatch.setattr(Classifier, "warmup", recording_warmup)
    os.sched_setaffinity(0, {min(every_core)})  # this thread only, as post_fork pins a worker
    try:
        call_command("publish_model", str(second_version), "--name", "cifar10")
        _wait_until_serving(ServedModel.objects.get(active=True).version)
    finally:
        os.sched_setaffinity(0, every_core)
    assert seen == [every_core]


def test_publishing_refuses_a_directory_without_a_model_and_a_reused_version(
    polling, tmp_path, model_dirs, second_version
):
    """No model in the directory, or a version already published from another directory: a
    clear error, and nothing published."""
    with pytest.raises(CommandError, match="holds no exported model"):
        call_command("publish_model", str(tmp_path), "--name", "cifar10")
    call_command("publish_model", str(model_dirs["cifar10"]), "--name", "cifar10")
    copy = shutil.copytree(model_dirs["cifar10"], tmp_path / "copy")  # the same version
    with pytest.raises(CommandError, match="already published"):
        call_command("publish_model", str(copy), "--name", "cifar10")
    with pytest.raises(CommandError, match="no earlier published version"):
        call_command("publish_model", "--rollback", "cifar10")
    assert ServedModel.objects.count() == 1


def test_staff_publish_a_directory_from_the_admin_and_see_it_served(
    polling, admin_client, model_dirs
):
    """The admin's add form publishes a model directory; the list shows the served version."""
    url = reverse("admin:uploads_servedmodel_add")
    response = admin_client.post(
        url, {"name": "cifar10", "directory": str(model_dirs["cifar10"]), "note": "first"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = ServedModel.objects.get()
    assert row.active and row.version == classifiers.get_classifier("cifar10").version
    page = admin_client.get(reverse("admin:uploads_servedmodel_changelist")).content.decode()
    assert row.version in page


def test_the_admin_refuses_a_directory_without_a_model_with_a_message(
    polling, admin_client, tmp_path
):
    """A directory with no model: the form says so (200), and nothing is published."""
    url = reverse("admin:uploads_servedmodel_add")
    response = admin_client.post(url, {"name": "cifar10", "directory": str(tmp_path)})
    assert response.status_code == 200
    assert "holds no exported model" in response.content.decode()
    assert not ServedModel.objects.exists()
