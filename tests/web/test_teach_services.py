"""Teaching a classifier through the pages, without a worker: limits, ownership, the queue's
rows, cancel, stale-job recovery and deletion leaving nothing behind."""

import os
import shutil
import subprocess

import pytest
from django.test import Client
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from teaching import files, training
from teaching.models import Example, JobStatus, TaughtClass, TaughtClassifier, TrainingJob
from tests.web.teach_helpers import add, create, example_files
from uploads import classifiers, registry
from uploads.models import ServedModel

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def teach_root(settings, tmp_path, model_dirs):
    settings.TEACH_ROOT = tmp_path / "teach"
    settings.TEACH_BACKBONES = {"cifar10": model_dirs["cifar10"]}
    settings.TEACH_MAX_EXAMPLES = 6
    settings.TEACH_MAX_CLASSIFIERS = 3
    return settings.TEACH_ROOT


def _files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _mine(client) -> TaughtClassifier:
    response = create(client)
    assert response.status_code == 302, response.content[:500]
    return TaughtClassifier.objects.latest("pk")


def test_a_new_classifier_has_its_classes_in_order_and_is_listed_for_its_owner(client):
    """Creating redirects to the classifier, whose classes keep the order given."""
    classifier = _mine(client)
    assert list(classifier.classes.values_list("name", flat=True)) == ["red", "green", "blue"]
    page = client.get(reverse("teaching:list"))
    assert classifier.name in page.content.decode()
    assert classifier.model_name.startswith(classifiers.PRIVATE_MODEL_PREFIX)


@pytest.mark.parametrize(
    ("classes", "code"),
    [
        (["only"], "2 to 20 classes"),
        ([f"c{i}" for i in range(21)], "2 to 20 classes"),
        (["cat", "Cat"], "given twice"),
        (["cat", "../etc"], "Class names are"),
        (["cat", "a/b"], "Class names are"),
        (["cat", "x" * 41], "Class names are"),
    ],
)
def test_bad_class_lists_are_refused_with_a_400_and_create_nothing(client, classes, code):
    """Too few or too many classes, duplicates and unsafe names: a clear 400, no row."""
    response = create(client, classes=classes)
    assert response.status_code == 400
    body = response.content.decode()
    assert code in body
    assert "TEACH_" not in body and "/tmp" not in body
    assert not TaughtClassifier.objects.exists() and not TaughtClass.objects.exists()


def test_a_visitor_may_keep_only_so_many_classifiers(client, settings):
    """Past settings.TEACH_MAX_CLASSIFIERS: 409, and the count stays."""
    for _ in range(settings.TEACH_MAX_CLASSIFIERS):
        _mine(client)
    response = create(client)
    assert response.status_code == 409
    assert TaughtClassifier.objects.count() == settings.TEACH_MAX_CLASSIFIERS


def test_another_visitor_gets_404_everywhere_and_the_share_link_is_read_only(client):
    """Pages, status, examples, images, train and delete are the owner's; the share link shows
    the classifier without a single form."""
    classifier = _mine(client)
    assert add(client, classifier, "red", example_files("red", 2)).status_code == 302
    example = Example.objects.first()
    stranger = Client()
    pk = classifier.pk
    gets = [
        reverse("teaching:detail", args=[pk]),
        reverse("teaching:status", args=[pk]),
        reverse("teaching:image", args=[pk, example.pk, "image"]),
    ]
    for url in gets:
        assert stranger.get(url).status_code == 404, url
    posts = ["train", "cancel", "delete", "retrain", "classify"]
    for name in posts:
        assert stranger.post(reverse(f"teaching:{name}", args=[pk])).status_code == 404, name
    assert add(stranger, classifier, "red", example_files("red", 1)).status_code == 404
    assert TaughtClassifier.objects.filter(pk=pk).exists() and Example.objects.count() == 2

    shared = stranger.get(classifier.get_share_url())
    assert shared.status_code == 200
    assert "<form" not in shared.content.decode().split('id="main"')[1]
    image = reverse("teaching:image", args=[pk, example.pk, "image"])
    assert stranger.get(image, {"share": classifier.share_token}).status_code == 200
    assert stranger.get(image, {"share": "wrong"}).status_code == 404


def test_examples_are_validated_and_stored_all_or_nothing(client, teach_root):
    """A batch with one bad file stores none of it (400); a good one stores every image."""
    classifier = _mine(client)
    bad = example_files("red", 2)
    bad[1].file.seek(0)
    bad[1].file.truncate()
    bad[1].file.write(b"not an image at all")
    response = add(client, classifier, "red", bad)
    assert response.status_code == 400
    assert "red1.png" in response.content.decode()
    assert not Example.objects.exists()
    assert _files_under(teach_root) == []

    assert add(client, classifier, "red", example_files("red", 3)).status_code == 302
    assert Example.objects.count() == 3
    assert len(_files_under(teach_root / "examples")) == 3


def test_too_large_an_image_is_a_413_and_stores_nothing(client, settings, teach_root):
    """Over UPLOAD_MAX_BYTES: refused as an upload would be."""
    settings.UPLOAD_MAX_BYTES = 200
    classifier = _mine(client)
    response = add(client, classifier, "red", example_files("red", 1))
    assert response.status_code == 413
    assert not Example.objects.exists() and _files_under(teach_root) == []


def test_a_class_holds_at_most_its_limit_of_examples(client, settings, teach_root):
    """Past TEACH_MAX_EXAMPLES a class refuses the whole batch with a 409."""
    classifier = _mine(client)
    assert add(client, classifier, "red", example_files("red", 5)).status_code == 302
    response = add(client, classifier, "red", example_files("red", 2, start=5))
    assert response.status_code == 409
    assert Example.objects.count() == 5
    assert len(_files_under(teach_root / "examples")) == 5


def test_removing_an_example_deletes_its_file(
    client, teach_root, django_capture_on_commit_callbacks
):
    """Remove: row and file gone."""
    classifier = _mine(client)
    add(client, classifier, "red", example_files("red", 2))
    example = Example.objects.first()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("teaching:remove", args=[classifier.pk, example.pk]))
    assert response.status_code == 302
    assert Example.objects.count() == 1
    assert len(_files_under(teach_root / "examples")) == 1


def _fill(client, classifier, count=2):
    for name in ("red", "green", "blue"):
        assert add(client, classifier, name, example_files(name, count)).status_code == 302


def test_train_needs_two_examples_per_class(client):
    """A class with fewer than two examples: 400 naming it, nothing queued."""
    classifier = _mine(client)
    add(client, classifier, "red", example_files("red", 2))
    response = client.post(reverse("teaching:train", args=[classifier.pk]))
    assert response.status_code == 400
    assert "green" in response.content.decode()
    assert not TrainingJob.objects.exists() and not DBTaskResult.objects.exists()


def test_train_queues_one_job_on_the_teach_queue_and_refuses_a_second(client, settings):
    """Train: a queued job and the queue's row; a second Train, for this or another classifier
    of the same visitor, is a 409 while it waits."""
    settings.TEACH_MAX_EXAMPLES = 10
    first = _mine(client)
    _fill(client, first)
    response = client.post(reverse("teaching:train", args=[first.pk]))
    assert response.status_code == 302
    job = TrainingJob.objects.get()
    assert job.status == JobStatus.QUEUED
    task = DBTaskResult.objects.get(pk=job.task_id)
    assert task.queue_name == "teach" and task.status == "READY"
    assert task.args_kwargs["args"] == [job.pk]

    assert client.post(reverse("teaching:train", args=[first.pk])).status_code == 409
    second = _mine(client)
    _fill(client, second)
    assert client.post(reverse("teaching:train", args=[second.pk])).status_code == 409
    assert TrainingJob.objects.count() == 1

    status = client.get(reverse("teaching:status", args=[first.pk])).json()
    assert status["job"]["status"] == "queued" and status["served_version"] is None


def test_a_cancelled_queued_job_is_skipped_by_the_worker(client):
    """Cancel while queued: cancelled at once; the task, when a worker takes it, does nothing."""
    classifier = _mine(client)
    _fill(client, classifier)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    job = TrainingJob.objects.get()
    assert client.post(reverse("teaching:cancel", args=[classifier.pk])).status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert training.run_job(job.pk) == "skipped"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    # Cancelled, the visitor may train again.
    assert client.post(reverse("teaching:train", args=[classifier.pk])).status_code == 302


def test_a_running_job_whose_worker_died_is_marked_failed_with_its_queue_row(client):
    """recover_stale_jobs: a job 'running' in a process that has exited becomes failed, with
    a message free of paths, its queue row failed and its scratch folder gone; a job of a live
    worker is left alone."""
    classifier = _mine(client)
    _fill(client, classifier)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    job = TrainingJob.objects.get()
    dead = subprocess.Popen(["true"])
    dead.wait()
    DBTaskResult.objects.filter(pk=job.task_id).update(status="RUNNING")
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, worker=f"{os.uname().nodename}:{dead.pid}", heartbeat_at=None
    )
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=job.created_at)
    files.work_dir(job.pk).mkdir(parents=True)
    (files.work_dir(job.pk) / "partial").write_text("x")

    page = client.get(reverse("teaching:status", args=[classifier.pk])).json()
    assert page["job"]["status"] == "failed"
    assert "stopped unexpectedly" in page["job"]["error"] and "/" not in page["job"]["error"]
    assert DBTaskResult.objects.get(pk=job.task_id).status == "FAILED"
    assert not files.work_dir(job.pk).exists()


def test_a_running_job_of_a_live_worker_is_not_recovered(client):
    """A fresh heartbeat from a live process: untouched."""
    classifier = _mine(client)
    _fill(client, classifier)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    job = TrainingJob.objects.get()
    from django.utils import timezone

    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        worker=f"{os.uname().nodename}:{os.getpid()}",
        heartbeat_at=timezone.now(),
    )
    assert training.recover_stale_jobs() == 0
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING


def test_deleting_a_classifier_removes_rows_files_models_and_published_versions(
    client, teach_root, model_dirs, django_capture_on_commit_callbacks
):
    """Delete: classifier, classes, examples, jobs, ServedModel rows, example files and model
    directories all gone; another visitor's classifier untouched."""
    classifier = _mine(client)
    _fill(client, classifier)
    other = Client()
    kept = _mine(other)
    add(other, kept, "red", example_files("red", 2))
    version_dir = files.models_root() / classifier.model_name / "v1"
    shutil.copytree(model_dirs["cifar10"], version_dir)
    registry.publish_model(directory=version_dir, name=classifier.model_name)
    client.post(reverse("teaching:train", args=[classifier.pk]))

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("teaching:delete", args=[classifier.pk]))
    assert response.status_code == 302
    assert not TaughtClassifier.objects.filter(pk=classifier.pk).exists()
    assert not TrainingJob.objects.exists()
    assert not ServedModel.objects.filter(name=classifier.model_name).exists()
    assert not (files.models_root() / classifier.model_name).exists()
    assert Example.objects.count() == 2  # the other visitor's
    assert all(name.startswith(f"examples/{kept.pk}/") for name in _files_under(teach_root))


def test_a_published_taught_model_is_served_by_name_but_never_listed(model_dirs, settings):
    """A private model: get_served finds it, the public model list and /healthz do not."""
    settings.CLASSIFIER_REGISTRY_POLL_S = 0.0
    name = f"{classifiers.PRIVATE_MODEL_PREFIX}abc"
    registry.publish_model(directory=model_dirs["cifar10"], name=name)
    try:
        assert name not in classifiers.get_model_names()
        assert name not in classifiers.get_health()["models"]
        assert classifiers._wanted_dir(name) == model_dirs["cifar10"].resolve()
    finally:
        classifiers._published, classifiers._published_pks = {}, None
        classifiers._published_checked = -float("inf")


def test_a_full_disk_while_storing_examples_is_a_507_and_leaves_nothing(
    client, teach_root, monkeypatch
):
    """The second file of a batch hits ENOSPC: 507 with the storage's public message, the first
    file removed, no row."""
    import errno

    from uploads.storage import AtomicFileSystemStorage

    classifier = _mine(client)
    real_save = AtomicFileSystemStorage._save
    calls = []

    def save_then_fail(self, name, content):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, name, content)

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", save_then_fail)
    response = add(client, classifier, "red", example_files("red", 3))
    assert response.status_code == 507
    body = response.content.decode()
    assert "no room to store images" in body and "No space left" not in body
    assert not Example.objects.exists()
    assert _files_under(teach_root) == []


def test_a_finished_job_shows_its_status_once_without_the_last_phase(client):
    """The page said 'Done done': the child's last phase word beside the status label."""
    classifier = _mine(client)
    _fill(client, classifier)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    TrainingJob.objects.update(status=JobStatus.SUCCEEDED, phase="done")
    page = client.get(classifier.get_absolute_url()).content.decode()
    assert "<strong data-job-label>Done</strong> <span data-job-phase></span>" in page
