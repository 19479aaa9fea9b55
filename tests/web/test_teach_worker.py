"""Training through the real task queue: `manage.py db_worker` in its own process, against the
test database (a file, or CI's PostgreSQL), teaches a 3-class model that the site then serves;
a worker killed with SIGKILL mid-training leaves the job failed, never stuck 'running', and
nothing on disk, and a new worker trains it again."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db.models import Count
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from teaching import files
from teaching.models import JobStatus, TaughtClassifier, TrainingJob
from tests.web.teach_helpers import (
    COLOURS,
    ROOT,
    add,
    create,
    example_files,
    example_png,
    make_teach_env,
    start_worker,
    stop,
)
from uploads.models import Prediction, ServedModel

pytestmark = pytest.mark.django_db(transaction=True)  # the worker reads the committed rows


@pytest.fixture
def teach_env(settings, tmp_path, model_dirs):
    yield from make_teach_env(settings, tmp_path, model_dirs)


TRAIN_TIMEOUT_S = 300  # a JAX start and a tiny training, on a shared 2-core machine
EXAMPLES_PER_CLASS = 6


def wait_for(job_id: int, done, log: Path, timeout: float = TRAIN_TIMEOUT_S) -> TrainingJob:
    deadline = time.monotonic() + timeout
    while True:
        job = TrainingJob.objects.get(pk=job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job.status} {job.phase}: {log.read_text()}"
        time.sleep(0.1)


def teach_colours(client) -> TaughtClassifier:
    assert create(client).status_code == 302
    classifier = TaughtClassifier.objects.latest("pk")
    for colour in COLOURS:
        response = add(client, classifier, colour, example_files(colour, EXAMPLES_PER_CLASS))
        assert response.status_code == 302
    return classifier


def processes_using(path: Path) -> list[int]:
    """Processes whose command line names `path` (the training child of a job)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_real_worker_trains_publishes_and_the_site_classifies_with_it(
    client, teach_env, tmp_path
):
    """Train -> the worker runs research.teach -> the version is published (ServedModel) ->
    classifying with the classifier answers with that exact version; no scratch left."""
    classifier = teach_colours(client)
    assert client.post(reverse("teaching:train", args=[classifier.pk])).status_code == 302
    job = TrainingJob.objects.get()
    log = tmp_path / "worker.log"
    worker = start_worker(teach_env, log)
    try:
        job = wait_for(job.pk, lambda j: not j.active, log)
    finally:
        stop(worker)
    assert job.status == JobStatus.SUCCEEDED, (job.error, log.read_text())
    assert job.published and job.steps > 0 and job.step == job.steps
    assert 0.0 <= job.accuracy <= 1.0 and job.held_out == 3 * 2 and job.few_examples is True
    served = ServedModel.objects.get(name=classifier.model_name, active=True)
    assert served.version == job.version
    assert Path(served.directory) == files.models_root() / classifier.model_name / job.version
    assert DBTaskResult.objects.get(pk=job.task_id).status == "SUCCESSFUL"
    assert not any(files.work_root().iterdir())

    page = client.get(classifier.get_absolute_url()).content.decode()
    assert "held-out examples" in page and "too few examples" in page

    response = client.post(
        reverse("teaching:classify", args=[classifier.pk]),
        {"images": [_png("green", 99)]},
    )
    assert response.status_code == 302, response.content[:400]
    prediction = Prediction.objects.get()
    assert prediction.model_name == classifier.model_name
    assert prediction.model_version == job.version
    assert set(prediction.probabilities) == set(COLOURS)


def _png(colour, seed):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(f"{colour}.png", example_png(colour, seed), "image/png")


def test_a_worker_killed_mid_training_leaves_the_job_failed_and_a_new_worker_trains_again(
    client, teach_env, tmp_path
):
    """SIGKILL the worker while research.teach runs: its child dies too; `manage.py
    recover_teach_jobs` (run before a worker starts) marks the job and the queue's row failed
    and removes the scratch folder; Train again, a new worker finishes it."""
    classifier = teach_colours(client)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    job = TrainingJob.objects.get()
    log = tmp_path / "worker.log"
    worker = start_worker(teach_env, log)
    try:
        wait_for(job.pk, lambda j: j.status == JobStatus.RUNNING and j.phase != "starting", log)
        assert processes_using(files.work_dir(job.pk)), "the training child is not running"
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        stop(worker)
    deadline = time.monotonic() + 20
    while processes_using(files.work_dir(job.pk)):  # the child follows its worker
        assert time.monotonic() < deadline, "the training child outlived its worker"
        time.sleep(0.1)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING  # nobody has noticed yet

    recovered = subprocess.run(
        [sys.executable, "manage.py", "recover_teach_jobs"],
        cwd=ROOT,
        env=teach_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "1 stale" in recovered.stdout
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "Train again" in job.error
    assert DBTaskResult.objects.get(pk=job.task_id).status == "FAILED"
    assert not files.work_dir(job.pk).exists()
    assert not (files.models_root() / classifier.model_name).exists()
    assert not ServedModel.objects.exists()

    assert client.post(reverse("teaching:train", args=[classifier.pk])).status_code == 302
    again = TrainingJob.objects.exclude(pk=job.pk).get()
    worker = start_worker(teach_env, log)
    try:
        again = wait_for(again.pk, lambda j: not j.active, log)
    finally:
        stop(worker)
    assert again.status == JobStatus.SUCCEEDED and again.published, again.error
    assert not TrainingJob.objects.filter(status__in=["queued", "running"]).exists()
    assert not any(files.work_root().iterdir())


def test_retraining_with_corrections_publishes_only_a_version_at_least_as_accurate(
    client, teach_env, tmp_path
):
    """Feedback on the classifier's answers becomes examples (once); the new version, scored
    against the served one on the same new held-out examples, is published only if at least
    as accurate; the old version stays restorable."""
    classifier = teach_colours(client)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    log = tmp_path / "worker.log"
    worker = start_worker(teach_env, log)
    try:
        first = wait_for(TrainingJob.objects.get().pk, lambda j: not j.active, log)
        assert first.status == JobStatus.SUCCEEDED and first.published, first.error
        for i, colour in enumerate(COLOURS):
            url = reverse("teaching:classify", args=[classifier.pk])
            assert client.post(url, {"images": [_png(colour, 50 + i)]}).status_code == 302
            prediction = Prediction.objects.latest("pk")
            assert client.get(prediction.get_absolute_url()).status_code == 200
            wrong = prediction.label != colour
            verdict = {"verdict": "wrong", "label": colour} if wrong else {"verdict": "right"}
            feedback_url = reverse("uploads:feedback", args=[prediction.pk])
            assert client.post(feedback_url, verdict).status_code == 302
        examples_before = classifier.classes.aggregate(n=Count("examples"))["n"]

        assert client.post(reverse("teaching:retrain", args=[classifier.pk])).status_code == 302
        assert classifier.classes.aggregate(n=Count("examples"))["n"] == examples_before + 3
        second = TrainingJob.objects.exclude(pk=first.pk).get()
        assert second.retrain
        second = wait_for(second.pk, lambda j: not j.active, log)
    finally:
        stop(worker)
    assert second.status == JobStatus.SUCCEEDED, second.error
    assert second.previous_accuracy is not None and second.accuracy is not None
    assert second.published == (second.accuracy >= second.previous_accuracy)
    served = ServedModel.objects.get(name=classifier.model_name, active=True)
    assert served.version == (second.version if second.published else first.version)

    # The same corrections are not taken twice.
    response = client.post(reverse("teaching:retrain", args=[classifier.pk]))
    assert response.status_code == 400 and "No new corrections" in response.content.decode()

    if second.published:  # the old version is one click away
        url = reverse("teaching:restore", args=[classifier.pk])
        assert client.post(url, {"version": first.version}).status_code == 302
        served = ServedModel.objects.get(name=classifier.model_name, active=True)
        assert served.version == first.version


def test_cancelling_a_running_training_stops_it_and_publishes_nothing(client, teach_env, tmp_path):
    """Cancel while research.teach runs: the worker terminates the child, the job is cancelled,
    nothing is published and no scratch or model folder is left."""
    classifier = teach_colours(client)
    client.post(reverse("teaching:train", args=[classifier.pk]))
    job = TrainingJob.objects.get()
    log = tmp_path / "worker.log"
    worker = start_worker(teach_env, log)
    try:
        wait_for(job.pk, lambda j: j.status == JobStatus.RUNNING and j.phase != "starting", log)
        assert client.post(reverse("teaching:cancel", args=[classifier.pk])).status_code == 302
        job = wait_for(job.pk, lambda j: not j.active, log, timeout=60)
        assert not processes_using(files.work_dir(job.pk))
    finally:
        stop(worker)
    assert job.status == JobStatus.CANCELLED and "nothing was published" in job.error
    assert not ServedModel.objects.exists()
    assert not files.work_dir(job.pk).exists()
    assert not (files.models_root() / classifier.model_name).exists()
    assert DBTaskResult.objects.get(pk=job.task_id).status == "SUCCESSFUL"  # the task ended
