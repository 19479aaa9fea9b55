"""The served models an operator changes while the site runs: publish, roll back, read.

settings.CLASSIFIER_MODELS names the models a fresh site serves. Publishing a model directory
(`manage.py publish_model DIR [--name NAME]`, or the admin) records it as a ServedModel row and
makes it the active version of its name, over the settings' directory; rolling back re-activates
the version served before. Each worker reads the active rows at most every
settings.CLASSIFIER_REGISTRY_POLL_S seconds (uploads.classifiers), warms a new version in the
background and swaps it in once warm; until then, or if it fails, the old version serves.

A version (the serving record's, '<yyyymmdd>-step<N>') names one directory per model name, so
every Prediction.model_version says which export answered.
"""

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from research.serving import model_dir  # JAX-free: reads the serving record only
from uploads.models import ServedModel


class PublishError(ValueError):
    """A directory that cannot be published, or nothing to roll back to; says why."""


@transaction.atomic
def publish_model(*, directory: str | Path, name: str = "", note: str = "") -> ServedModel:
    """Make the model in `directory` the served version of `name` (default: the directory's
    name), and return its row. Publishing a directory published before re-activates its row.

    Raises PublishError for a directory without a readable model, or a version of that name
    already published from another directory. The workers load and warm it themselves.
    """
    path, name, record, row = check(directory=directory, name=name, lock=True)
    if row is None:
        row = ServedModel(
            name=name, directory=str(path), version=record.version, dataset=record.dataset
        )
    if note:
        row.note = note
    return _activate(row)


def check(*, directory: str | Path, name: str = "", lock: bool = False):
    """(directory, name, serving record, the row already published for that version or None)
    of a directory to publish; raises PublishError saying what is wrong with it."""
    path = Path(directory).expanduser().resolve()
    record = model_dir.describe(path) if path.is_dir() else None
    if record is None:
        raise PublishError(f"{path} holds no exported model (see docs/web.md, Publishing).")
    name = name or path.name
    rows = ServedModel.objects.select_for_update() if lock else ServedModel.objects
    row = rows.filter(name=name, version=record.version).first()
    if row is not None and Path(row.directory) != path:
        raise PublishError(
            f"Version {record.version} of {name!r} is already published from {row.directory}; "
            "a version names one export (export it again, or publish under another name)."
        )
    return path, name, record, row


@transaction.atomic
def activate(*, row: ServedModel) -> ServedModel:
    """Serve this published version of its model (the admin's action)."""
    return _activate(row)


@transaction.atomic
def roll_back(*, name: str) -> ServedModel:
    """Serve again the version of `name` that was served before the current one: the one
    published before it, or, after the first publish over settings.CLASSIFIER_MODELS, the
    settings' directory (published in turn, so every worker swaps it in warm)."""
    rows = list(
        ServedModel.objects.select_for_update()
        .filter(name=name, activated_at__isnull=False)
        .order_by("-activated_at", "-id")[:2]
    )
    if len(rows) >= 2 and rows[0].active:
        return _activate(rows[1])
    configured = settings.CLASSIFIER_MODELS.get(name)
    if len(rows) == 1 and rows[0].active and configured:
        path = Path(configured).expanduser().resolve()
        if path != Path(rows[0].directory):
            return publish_model(directory=path, name=name, note="rolled back")
    raise PublishError(f"{name!r} has no earlier published version to roll back to.")


def unpublish(*, name: str) -> int:
    """Stop overriding `name`: the settings' directory (if any) serves it again."""
    return ServedModel.objects.filter(name=name, active=True).update(active=False)


def _activate(row: ServedModel) -> ServedModel:
    ServedModel.objects.filter(name=row.name, active=True).exclude(pk=row.pk).update(active=False)
    row.active = True
    row.activated_at = timezone.now()
    row.save()
    return row
