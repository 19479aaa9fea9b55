"""Running one training job, in the task queue's worker: examples out, a model in, published.

The worker never imports the training code (the web imports research.serving and
research.configs only): it writes the job's examples to a scratch class/image folder and runs
`python -m research.teach --progress-json` as a child process, whose JSON lines are the job's
progress. Every second it writes a heartbeat and reads the job's cancel flag; a cancel (or the
classifier deleted) terminates the child. A finished model is moved to
<TEACH_ROOT>/models/<model name>/<version> and published through uploads.registry, so every web
worker serves it without a restart; a retraining is published only if it is at least as accurate
as the served version on the new held-out examples.

Recovery: the child dies with its worker (PR_SET_PDEATHSIG), and a job whose worker is gone
(its process has exited, or its heartbeat is older than settings.TEACH_STALE_S) is marked
failed, with the queue's own result row, and its scratch folders removed, by recover_stale_jobs:
called when a worker starts a job, when a job's page or status is read, and by `manage.py
recover_teach_jobs` before a worker starts.
"""

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from research.serving import model_dir  # JAX-free: reads the serving record only
from teaching import files
from teaching.models import JobStatus, TrainingJob
from uploads import registry

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
FAILED_WORKER = "The training stopped unexpectedly (its worker was stopped); nothing was "
FAILED_WORKER += "published. Train again."
FAILED_TRAINING = "The training failed; nothing was published. Check that every class has "
FAILED_TRAINING += "at least two clear examples, then train again."
FAILED_TIMEOUT = "The training took too long and was stopped; nothing was published."
FAILED_PUBLISH = "The model was trained but could not be served; nothing was published."
_PR_SET_PDEATHSIG = 1


def run_job(job_id: int) -> str:
    """Run one queued job to its end; returns its final status (for the queue's result)."""
    recover_stale_jobs()
    job = _claim(job_id)
    if job is None:
        return "skipped"
    work = files.work_dir(job.pk)
    try:
        return _train(job, work)
    except Exception:
        logger.exception("Training job %s failed", job.pk)
        _finish(job.pk, JobStatus.FAILED, error=FAILED_TRAINING)
        return JobStatus.FAILED
    except BaseException:  # the worker told to stop now (a second SIGTERM, Ctrl-C)
        _finish(job.pk, JobStatus.FAILED, error=FAILED_WORKER)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _claim(job_id: int) -> TrainingJob | None:
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status != JobStatus.QUEUED:
            return None  # cancelled while queued, or its classifier deleted
        now = timezone.now()
        job.status = JobStatus.RUNNING
        job.started_at = job.heartbeat_at = now
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        job.phase = "starting"
        job.save(update_fields=["status", "started_at", "heartbeat_at", "worker", "phase"])
    return job


def _train(job: TrainingJob, work: Path) -> str:
    classifier = job.classifier
    examples = work / "examples"
    _write_examples(job, examples)
    out = work / "model"
    command = [
        sys.executable,
        "-m",
        "research.teach",
        "--backbone",
        str(settings.TEACH_BACKBONES[classifier.backbone]),
        "--examples",
        str(examples),
        "--out",
        str(out),
        "--name",
        classifier.name,
        "--progress-json",
    ]
    previous = classifier.served_version()
    if job.retrain and previous is not None:
        command += ["--compare-with", previous.directory]
    outcome = _run_child(job, command)
    if outcome is not None:
        return outcome
    record = model_dir.describe(out)
    if record is None:
        logger.error("Training job %s wrote no readable model", job.pk)
        _finish(job.pk, JobStatus.FAILED, error=FAILED_TRAINING)
        return JobStatus.FAILED
    metrics = record.metrics or {}
    accuracy = metrics.get("eval_accuracy")
    previous_accuracy = metrics.get("previous_accuracy")
    result = {
        "accuracy": accuracy,
        "held_out": metrics.get("held_out_examples"),
        "few_examples": metrics.get("few_examples"),
        "version": record.version,
        "previous_accuracy": previous_accuracy,
    }
    better = previous_accuracy is None or (accuracy or 0.0) >= previous_accuracy
    final = files.models_root() / classifier.model_name / record.version
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out, final)
    published = False
    if better:
        try:
            with transaction.atomic():
                if not type(classifier).objects.filter(pk=classifier.pk).exists():
                    raise registry.PublishError("the classifier was deleted")
                registry.publish_model(
                    directory=final, name=classifier.model_name, note=f"taught job {job.pk}"
                )
            published = True
        except registry.PublishError as err:
            logger.error("Training job %s: publishing failed: %s", job.pk, err)
            shutil.rmtree(final, ignore_errors=True)
            _finish(job.pk, JobStatus.FAILED, error=FAILED_PUBLISH, **result)
            return JobStatus.FAILED
    else:  # kept on disk, not served: the old version stays; restorable by hand
        logger.info("Training job %s: %s kept, not published (less accurate)", job.pk, final)
    _finish(job.pk, JobStatus.SUCCEEDED, model_dir=str(final), published=published, **result)
    if not TrainingJob.objects.filter(pk=job.pk).exists():  # deleted meanwhile
        shutil.rmtree(final, ignore_errors=True)
    return JobStatus.SUCCEEDED


def _write_examples(job: TrainingJob, folder: Path) -> None:
    """The job's examples as <folder>/<class name>/<n>.<ext> (linked, else copied)."""
    storage = files.example_storage()
    for taught_class in job.classifier.classes.prefetch_related("examples"):
        class_dir = folder / taught_class.name
        class_dir.mkdir(parents=True, exist_ok=True)
        for index, example in enumerate(taught_class.examples.all()):
            source = Path(storage.path(example.image))
            target = class_dir / f"{index:04d}{source.suffix}"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)


def _run_child(job: TrainingJob, command: list[str]) -> str | None:
    """Run research.teach, keeping the job's progress and heartbeat; None when it succeeded,
    else the job's final status (already written)."""
    progress: dict = {}
    started = time.monotonic()
    child = subprocess.Popen(
        command,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
    )
    errors: list[str] = []
    readers = [
        threading.Thread(target=_read_progress, args=(child.stdout, progress), daemon=True),
        threading.Thread(target=_read_lines, args=(child.stderr, errors), daemon=True),
    ]
    for reader in readers:
        reader.start()
    stop_reason = None
    try:
        while child.poll() is None:
            time.sleep(HEARTBEAT_S)
            if not _beat(job.pk, progress, time.monotonic() - started):
                stop_reason = JobStatus.CANCELLED
            elif time.monotonic() - started > settings.TEACH_TIMEOUT_S:
                stop_reason = "timeout"
            if stop_reason is not None:
                break
    finally:
        if child.poll() is None:
            _stop(child)
    child.wait()
    for reader in readers:
        reader.join(timeout=5)
    if stop_reason is None and not _beat(job.pk, progress, time.monotonic() - started):
        stop_reason = JobStatus.CANCELLED  # cancelled (or deleted) as the child finished
    if stop_reason == JobStatus.CANCELLED:
        _finish(job.pk, JobStatus.CANCELLED, error="Cancelled; nothing was published.")
        return JobStatus.CANCELLED
    if stop_reason == "timeout":
        _finish(job.pk, JobStatus.FAILED, error=FAILED_TIMEOUT)
        return JobStatus.FAILED
    if child.returncode != 0:
        logger.error(
            "Training job %s: research.teach exited %s: %s",
            job.pk,
            child.returncode,
            "".join(errors[-20:]),
        )
        _finish(job.pk, JobStatus.FAILED, error=FAILED_TRAINING)
        return JobStatus.FAILED
    return None


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the worker dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()


def _read_progress(stream, progress: dict) -> None:
    for line in stream:
        if line.startswith("{"):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                progress.update(json.loads(line)["progress"])


def _read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def _beat(job_id: int, progress: dict, elapsed: float) -> bool:
    """Write the heartbeat and progress; False when the job is to stop (cancelled, gone)."""
    step, steps = int(progress.get("step") or 0), int(progress.get("steps") or 0)
    fields = {"heartbeat_at": timezone.now(), "phase": str(progress.get("phase", ""))[:100]}
    if steps:
        fields.update(step=step, steps=steps)
        if step:  # the head's steps are the last tenth or so; a rough, honest estimate
            fields["seconds_left"] = max(0.0, elapsed * (steps - step) / step)
    updated = TrainingJob.objects.filter(
        pk=job_id, status=JobStatus.RUNNING, cancel_requested=False
    ).update(**fields)
    return updated == 1


def _finish(job_id: int, status: str, **fields) -> None:
    TrainingJob.objects.filter(pk=job_id).update(
        status=status, finished_at=timezone.now(), heartbeat_at=timezone.now(), **fields
    )


def recover_stale_jobs() -> int:
    """Mark failed every running job whose worker is gone (its process on this host has exited,
    or it has not written for settings.TEACH_STALE_S), with the queue's result row, and remove
    its scratch folder. Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.TEACH_STALE_S)
    host = socket.gethostname()
    stale = []
    for job in TrainingJob.objects.filter(status=JobStatus.RUNNING):
        worker_host, _, pid = job.worker.rpartition(":")
        dead = worker_host == host and pid.isdigit() and not _alive(int(pid))
        if dead or job.heartbeat_at is None or job.heartbeat_at < cutoff:
            stale.append(job)
    count = 0
    for job in stale:
        count += TrainingJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, finished_at=timezone.now(), error=FAILED_WORKER
        )
        _fail_queue_row(job.task_id)
        shutil.rmtree(files.work_dir(job.pk), ignore_errors=True)
        logger.warning("Training job %s: its worker %s is gone; marked failed", job.pk, job.worker)
    return count


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_queue_row(task_id: str) -> None:
    """The task queue's own row of a dead job: failed, not 'running' for ever."""
    if not task_id:
        return
    from django_tasks_db.models import DBTaskResult  # the queue's model, read when needed only

    with contextlib.suppress(Exception):  # a malformed id, or another backend
        DBTaskResult.objects.filter(pk=task_id, status="RUNNING").update(
            status="FAILED",
            finished_at=timezone.now(),
            exception_class_path="teaching.training.WorkerLost",
            traceback="The worker running this task stopped (recovered by teaching.training).",
        )
