"""Classifiers a visitor teaches from their own examples, and the jobs that train them.

Private to their owner exactly as uploads are (uploads.models.Owner): anyone else gets a 404,
and a classifier reaches others only through its share link, read-only.
"""

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from uploads.classifiers import PRIVATE_MODEL_PREFIX
from uploads.models import Owner, ServedModel, make_share_token


def make_model_name() -> str:
    """The name a classifier's versions are published under: unguessable, like a share link."""
    return f"{PRIVATE_MODEL_PREFIX}{secrets.token_hex(16)}"


class TaughtClassifierQuerySet(models.QuerySet):
    def owned_by(self, owner: Owner) -> "TaughtClassifierQuerySet":
        """Keep this visitor's classifiers (none for a visitor without an owner key or user)."""
        mine = Q(pk__in=[])
        if owner.key:
            mine |= Q(owner_key=owner.key)
        if owner.user_id is not None:
            mine |= Q(user_id=owner.user_id)
        return self.filter(mine)


class TaughtClassifier(models.Model):
    """A classifier of the visitor's own classes, taught on one of the shipped networks."""

    name = models.CharField(max_length=60)
    backbone = models.CharField("shipped network taught on", max_length=64)
    model_name = models.SlugField(
        "published model name", max_length=64, unique=True, default=make_model_name, editable=False
    )
    owner_key = models.CharField(
        "session owner key", max_length=64, blank=True, db_index=True, editable=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="taught_classifiers",
    )
    share_token = models.CharField(
        max_length=64, unique=True, default=make_share_token, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TaughtClassifierQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("teaching:detail", args=[self.pk])

    def get_share_url(self) -> str:
        return reverse("teaching:share", args=[self.share_token])

    def is_owned_by(self, owner: Owner) -> bool:
        return bool(owner.key and self.owner_key == owner.key) or (
            owner.user_id is not None and self.user_id == owner.user_id
        )

    def served_version(self) -> ServedModel | None:
        """The published version served now (None before a training published one)."""
        return ServedModel.objects.filter(name=self.model_name, active=True).first()

    def versions(self):
        """Every published version, newest first."""
        return ServedModel.objects.filter(name=self.model_name).order_by("-published_at", "-id")


class TaughtClass(models.Model):
    """One named class of a classifier, in the order its owner gave them."""

    classifier = models.ForeignKey(
        TaughtClassifier, on_delete=models.CASCADE, related_name="classes"
    )
    name = models.CharField(max_length=40)
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["classifier", "name"], name="unique_class_name")
        ]

    def __str__(self) -> str:
        return self.name


class Example(models.Model):
    """One example image of a class, validated and re-encoded like an upload, stored in the
    examples' own storage (teaching.services.example_storage)."""

    SOURCES = [("upload", "upload"), ("camera", "camera"), ("drawing", "drawing")]
    SOURCES += [("feedback", "a correction")]

    taught_class = models.ForeignKey(TaughtClass, on_delete=models.CASCADE, related_name="examples")
    image = models.CharField("stored image", max_length=255)
    thumbnail = models.CharField("stored thumbnail", max_length=255, blank=True)
    sha256 = models.CharField("SHA-256 of the uploaded bytes", max_length=64)
    source = models.CharField(max_length=16, choices=SOURCES, default="upload")
    # A correction's prediction (uploads.Feedback): taken once per retraining.
    prediction_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.taught_class}: {self.image}"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Training"
    SUCCEEDED = "succeeded", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class TrainingJob(models.Model):
    """One training of a classifier on the task queue, and what came of it."""

    classifier = models.ForeignKey(TaughtClassifier, on_delete=models.CASCADE, related_name="jobs")
    owner_key = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    retrain = models.BooleanField("retrain with corrections", default=False)
    task_id = models.CharField("queue task id", max_length=64, blank=True)
    worker = models.CharField("worker (host:pid)", max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # Progress: the phase in words, the head's fitting steps, seconds left (an estimate).
    phase = models.CharField(max_length=100, blank=True)
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    seconds_left = models.FloatField(null=True, blank=True)
    # The outcome: held-out accuracy, whether too few were held out, the version made.
    accuracy = models.FloatField("held-out accuracy", null=True, blank=True)
    held_out = models.PositiveIntegerField(null=True, blank=True)
    few_examples = models.BooleanField(null=True, blank=True)
    version = models.CharField(max_length=100, blank=True)
    model_dir = models.CharField(max_length=500, blank=True, editable=False)
    published = models.BooleanField(default=False)
    # A retraining: the served version's accuracy on this job's held-out examples.
    previous_accuracy = models.FloatField(null=True, blank=True)
    error = models.CharField("message for the visitor", max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["classifier"],
                condition=Q(status__in=["queued", "running"]),
                name="one_active_job_per_classifier",
            )
        ]

    def __str__(self) -> str:
        return f"{self.classifier} #{self.pk} ({self.status})"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def as_dict(self) -> dict:
        """The JSON the page polls."""
        return {
            "id": self.pk,
            "status": self.status,
            "status_label": self.get_status_display(),
            "active": self.active,
            "phase": self.phase,
            "step": self.step,
            "steps": self.steps,
            "seconds_left": None if self.seconds_left is None else round(self.seconds_left),
            "accuracy": self.accuracy,
            "held_out": self.held_out,
            "few_examples": self.few_examples,
            "version": self.version,
            "published": self.published,
            "previous_accuracy": self.previous_accuracy,
            "error": self.error,
        }
