"""Uploaded images and the predictions made for them, private to whoever uploaded them."""

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Count, OuterRef, Q, Subquery
from django.urls import reverse
from django.utils.http import urlencode

SESSION_OWNER_KEY = "uploads_owner"  # the session's owner key, in the session's data
SHARE_TOKEN_BYTES = 24  # 192 bits: secrets.token_urlsafe gives 32 characters


def make_share_token() -> str:
    """A fresh unguessable token for a share link."""
    return secrets.token_urlsafe(SHARE_TOKEN_BYTES)


@dataclass(frozen=True)
class Owner:
    """Who is asking: the visitor's session owner key and, when signed in, the user.

    The owner key is a random value kept in the session's data (not the session key, which
    changes when a visitor signs in), so a visitor keeps their history through signing in.
    """

    key: str = ""
    user_id: int | None = None

    @classmethod
    def of(cls, request, *, create: bool = False) -> "Owner":
        """The visitor of a Django or DRF request; with create (an upload), give their session
        an owner key if it has none and renew it (the session middleware sends the cookie)."""
        request = getattr(request, "_request", request)  # DRF's Request wraps Django's
        session = getattr(request, "session", None)
        key = session.get(SESSION_OWNER_KEY, "") if session is not None else ""
        if create and session is not None:
            if not key:
                key = secrets.token_urlsafe(32)
                session[SESSION_OWNER_KEY] = key
            session.modified = True  # each upload renews the session's expiry (the history's)
        user = getattr(request, "user", None)
        user_id = user.pk if user is not None and user.is_authenticated else None
        return cls(key=key, user_id=user_id)


class UploadQuerySet(models.QuerySet):
    def of_media(self, name: str) -> "UploadQuerySet":
        """The upload a stored file (image or thumbnail) belongs to."""
        return self.filter(Q(image=name) | Q(thumbnail=name))


class Upload(models.Model):
    """One validated image, stored re-encoded under a generated name, and who uploaded it.

    Rows without an owner (made before uploads were private) are reachable by staff only.
    """

    image = models.FileField(upload_to="images/", max_length=255)
    thumbnail = models.FileField(upload_to="thumbnails/", max_length=255, blank=True)
    sha256 = models.CharField("SHA-256 of the uploaded bytes", max_length=64, db_index=True)
    original_name = models.CharField(max_length=255)
    size_bytes = models.PositiveBigIntegerField("uploaded size (bytes)")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField("uploaded format", max_length=16)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    owner_key = models.CharField(
        "session owner key", max_length=64, blank=True, db_index=True, editable=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="uploads",
    )

    objects = UploadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.width}×{self.height} {self.format})"

    def is_owned_by(self, owner: Owner) -> bool:
        return bool(owner.key and self.owner_key == owner.key) or (
            owner.user_id is not None and self.user_id == owner.user_id
        )

    def may_be_seen(self, *, owner: Owner, share_token: str = "", staff: bool = False) -> bool:
        """Its files are for its owner, staff, and whoever holds one of its share links."""
        if staff or self.is_owned_by(owner):
            return True
        if not share_token:
            return False
        return self.predictions.filter(share_token=share_token, share_enabled=True).exists()

    def get_image_url(self) -> str:
        return reverse("uploads:media", args=[self.image.name])

    def get_thumbnail_url(self) -> str:
        return reverse("uploads:media", args=[(self.thumbnail or self.image).name])


class PredictionQuerySet(models.QuerySet):
    def owned_by(self, owner: Owner) -> "PredictionQuerySet":
        """Keep the predictions of this visitor's uploads (none for a visitor without one)."""
        mine = models.Q(pk__in=[])
        if owner.key:
            mine |= models.Q(upload__owner_key=owner.key)
        if owner.user_id is not None:
            mine |= models.Q(upload__user_id=owner.user_id)
        return self.filter(mine)

    def recent(self) -> "PredictionQuerySet":
        """Newest first, with the upload fetched in the same query."""
        return self.select_related("upload").order_by("-created_at", "-id")

    def filter_by(self, *, label: str = "", model_name: str = "") -> "PredictionQuerySet":
        """Keep predictions with this top label and/or from this model (blank: no filter)."""
        queryset = self
        if label:
            queryset = queryset.filter(label=label)
        if model_name:
            queryset = queryset.filter(model_name=model_name)
        return queryset

    def labels(self) -> list[str]:
        """Distinct top labels, alphabetically."""
        return list(self.order_by("label").values_list("label", flat=True).distinct())

    def model_names(self) -> list[str]:
        """Distinct model names, alphabetically."""
        return list(self.order_by("model_name").values_list("model_name", flat=True).distinct())

    def with_verdict(self) -> "PredictionQuerySet":
        """Annotate `verdict_correct` and `verdict_label` from the latest feedback (or None)."""
        latest = Feedback.objects.filter(prediction=OuterRef("pk")).order_by("-created_at", "-id")
        return self.annotate(
            verdict_correct=Subquery(latest.values("correct")[:1]),
            verdict_label=Subquery(latest.values("label")[:1]),
        )

    def with_feedback(self) -> "PredictionQuerySet":
        """Keep predictions that have at least one feedback."""
        return self.filter(feedback__isnull=False).distinct()

    def needing_recalibration(self, temperature: float) -> "PredictionQuerySet":
        """Keep predictions stored at a temperature other than `temperature`."""
        return self.exclude(temperature=temperature)


class Prediction(models.Model):
    """What one model said about one upload, and which model version said it."""

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="predictions")
    model_name = models.CharField(max_length=100, db_index=True)
    model_dataset = models.CharField(max_length=100)
    model_version = models.CharField(max_length=200)
    model_accuracy = models.FloatField(null=True, blank=True)
    label = models.CharField("top label", max_length=100, db_index=True)
    confidence = models.FloatField()
    top_k = models.JSONField(help_text="[{label, probability}], most probable first")
    probabilities = models.JSONField(help_text="{label: probability} for every class")
    # Trust: the temperature the probabilities were computed at (1: uncalibrated), the
    # "unknown" score and whether it fell below the model's threshold (null: made before
    # the model had one).
    temperature = models.FloatField(default=1.0)
    unknown_score = models.FloatField(null=True, blank=True)
    unknown = models.BooleanField(null=True, blank=True, db_index=True)
    # The conformal prediction set (class names, most probable first) and the share of
    # in-distribution images whose set holds the true class (null: made before sets).
    prediction_set = models.JSONField(default=list, blank=True)
    set_coverage = models.FloatField(null=True, blank=True)
    inference_ms = models.FloatField("classifier time (ms)")
    latency_ms = models.FloatField("total processing time (ms)")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The secret of the read-only share link /s/<token>/; ids never grant access.
    share_token = models.CharField(
        max_length=64, unique=True, default=make_share_token, editable=False
    )
    # False once the owner revokes the link: /s/<token>/ and the image behind it are 404s.
    share_enabled = models.BooleanField(default=True)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.label} ({self.confidence:.0%}) by {self.model_name}"

    def get_absolute_url(self) -> str:
        return reverse("uploads:detail", args=[self.pk])

    @property
    def answer(self) -> "Answer":
        """The answer in words people act on (see Answer)."""
        return Answer.of(self)

    def get_share_url(self) -> str:
        return reverse("uploads:share", args=[self.share_token])

    def renew_share_link(self) -> None:
        """A new share link; the old one stops working at once."""
        self.share_token = make_share_token()
        self.share_enabled = True
        self.save(update_fields=["share_token", "share_enabled"])

    def revoke_share_link(self) -> None:
        """No share link: the old one stops working (a later renewal makes a new one)."""
        self.share_token = make_share_token()
        self.share_enabled = False
        self.save(update_fields=["share_token", "share_enabled"])

    def get_shared_image_url(self) -> str:
        """The image's address for someone holding the share link (the token grants it)."""
        return f"{self.upload.get_image_url()}?{urlencode({'share': self.share_token})}"

    def is_owned_by(self, owner: Owner) -> bool:
        upload = self.upload
        return bool(owner.key and upload.owner_key == owner.key) or (
            owner.user_id is not None and upload.user_id == owner.user_id
        )

    def as_dict(self) -> dict:
        """The JSON shape returned by the API."""
        return {
            "id": self.pk,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": self.top_k,
            "model": {
                "name": self.model_name,
                "dataset": self.model_dataset,
                "version": self.model_version,
                "accuracy": self.model_accuracy,
            },
            "latency_ms": round(self.latency_ms, 2),
            "inference_ms": round(self.inference_ms, 2),
            "image": {
                "url": self.upload.get_image_url(),
                "original_name": self.upload.original_name,
                "width": self.upload.width,
                "height": self.upload.height,
                "format": self.upload.format,
                "size_bytes": self.upload.size_bytes,
                "sha256": self.upload.sha256,
            },
            "created_at": self.created_at.isoformat(),
        }


# A single answer at least this probable is "sure"; below it, hedged ("probably").
SURE_PROBABILITY = 0.9
# A set of up to this many classes is worth naming ("cat or dog"); a larger one is "not sure".
MAX_NAMED_SET = 3
VERDICTS = ("sure", "likely", "one_of", "not_sure", "unknown")


@dataclass(frozen=True)
class Answer:
    """What the page, the share card and the API say about one prediction.

    verdict: 'unknown' (the "unknown" score says none of the classes), 'sure' (a set of one
    class at >= 90%), 'likely' (a set of one class, less probable: hedged), 'one_of' (two or
    three classes) or 'not_sure' (more). Predictions made before prediction sets had none:
    their set is the top class alone, and its probability alone decides."""

    verdict: str
    classes: list[str]
    coverage: float | None

    @classmethod
    def of(cls, prediction: "Prediction") -> "Answer":
        classes = list(prediction.prediction_set or [prediction.label])
        if prediction.unknown:
            verdict = "unknown"
        elif len(classes) > MAX_NAMED_SET or (
            not prediction.prediction_set and prediction.confidence < 0.5
        ):
            verdict = "not_sure"
        elif len(classes) > 1:
            verdict = "one_of"
        elif prediction.confidence >= SURE_PROBABILITY:
            verdict = "sure"
        else:
            verdict = "likely"
        return cls(verdict=verdict, classes=classes, coverage=prediction.set_coverage)

    @property
    def headline(self) -> str:
        """'cat', 'probably cat', 'cat or dog', 'not sure', 'none of the classes I know'."""
        if self.verdict == "unknown":
            return "None of the classes I know"
        if self.verdict == "not_sure":
            return "Not sure"
        if self.verdict == "likely":
            return f"Probably {self.classes[0]}"
        return self.either

    @property
    def either(self) -> str:
        """The classes as 'cat', 'cat or dog', 'cat, dog or bird'."""
        names = self.classes
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    @property
    def is_hedged(self) -> bool:
        return self.verdict != "sure"


class FeedbackQuerySet(models.QuerySet):
    def latest_per_prediction(self) -> "FeedbackQuerySet":
        """Keep only the newest feedback on each prediction (later verdicts replace earlier)."""
        newest = Feedback.objects.filter(prediction=OuterRef("prediction")).order_by(
            "-created_at", "-id"
        )
        return self.filter(pk=Subquery(newest.values("pk")[:1]))

    def for_model(self, model_name: str) -> "FeedbackQuerySet":
        """Keep feedback on predictions made by this model."""
        return self.filter(prediction__model_name=model_name)

    def accuracy(self) -> tuple[float | None, int]:
        """(share marked correct, count); the share is None when there is none."""
        counts = self.aggregate(total=Count("pk"), right=Count("pk", filter=Q(correct=True)))
        total = counts["total"]
        return (counts["right"] / total if total else None), total


class Feedback(models.Model):
    """A person's verdict on a prediction: right, or the label it should have had."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="feedback")
    correct = models.BooleanField(db_index=True)
    label = models.CharField("true label", max_length=100, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)  # when the vote was last changed

    objects = FeedbackQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "feedback"
        # One vote per prediction (its owner's), which a later vote replaces.
        constraints = [
            models.UniqueConstraint(fields=["prediction"], name="one_vote_per_prediction")
        ]

    def __str__(self) -> str:
        verdict = "right" if self.correct else f"wrong, is {self.label}"
        return f"{self.prediction}: {verdict}"


class ServedModel(models.Model):
    """A model directory published under a name (uploads.registry): the active row of a name
    is what every worker serves for it, over settings.CLASSIFIER_MODELS, within a second or so
    and without a restart. Earlier rows stay, so a rollback re-activates one."""

    name = models.SlugField("model name", max_length=64)
    directory = models.CharField("model directory", max_length=500)
    version = models.CharField(max_length=100, editable=False)  # the export's serving record
    dataset = models.CharField(max_length=64, editable=False)
    active = models.BooleanField(default=False, db_index=True, editable=False)
    note = models.CharField(max_length=200, blank=True)
    published_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "-activated_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=Q(active=True), name="one_served_version_per_model"
            ),
            # Prediction.model_version then names one export exactly.
            models.UniqueConstraint(fields=["name", "version"], name="one_export_per_version"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}" + (" (served)" if self.active else "")


class RateCount(models.Model):
    """Requests one client made in one window of a throttle rate, counted in the database so
    that every worker shares the count (uploads.throttling)."""

    key = models.CharField(max_length=200)
    bucket = models.BigIntegerField("window start (seconds since the epoch)")
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "bucket"], name="unique_rate_count")]
        indexes = [models.Index(fields=["bucket"], name="rate_count_bucket")]

    def __str__(self) -> str:
        return f"{self.key} @ {self.bucket}: {self.hits}"
