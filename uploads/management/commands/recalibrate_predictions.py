"""`manage.py recalibrate_predictions [--model NAME] [--dry-run]`: stored answers at the model's
current temperature.

A prediction keeps the probabilities it was made with and the temperature T_old they were
computed at, p = softmax(logits / T_old). When the model's record now has another temperature
T_new (calibration fitted after the prediction was made), the calibrated probabilities follow
exactly from the stored ones, p' = softmax(log(p) * T_old / T_new), without the image or the
model. The label stays (temperature never changes the argmax); confidence, top_k, the
probabilities and the temperature are rewritten. The "unknown" score and flag are recomputed
only where the record scores with the calibrated max-softmax (`ServingRecord.unknown_score`)
and the stored score, if any, is the stored maximum probability; an energy or feature-space
score cannot be recomputed from probabilities, so it and its flag are left as they are.
Only predictions made by the record's version are touched (--all-versions: every one): a
temperature fitted to one network's logits says nothing about another's. Running it twice
changes nothing the second time.
"""

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from research.serving import model_dir  # JAX-free
from research.serving.record import ServingRecord
from uploads.models import Prediction

# research.serving.record's name for the score this command can recompute from probabilities; a
# record without the field (older code) scores with it.
MAX_SOFTMAX = "max_softmax"
# A stored score within this of the stored maximum probability is the max-softmax score.
_SCORE_TOLERANCE = 1e-5


def rescale_probabilities(probs: np.ndarray, t_old: float, t_new: float) -> np.ndarray:
    """softmax(log(probs) * t_old / t_new) over the last axis, in float64.

    Exact for probs = softmax(logits / t_old); a probability stored as 0 stays 0.
    """
    probs = np.asarray(probs, np.float64)
    with np.errstate(divide="ignore"):
        scaled = np.log(probs) * (t_old / t_new)
    scaled -= scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)


SKIPPED, RECALIBRATED, SCORE_KEPT = "skipped", "recalibrated", "recalibrated, score kept"
_CHUNK = 500


@dataclass
class _Tally:
    updated: int = 0
    other_version: int = 0
    skipped: int = 0
    score_kept: int = 0


def recalibrate(prediction: Prediction, record: ServingRecord) -> str:
    """Rewrite one prediction's calibrated fields at record.temperature (unsaved).

    Returns SKIPPED, changing nothing, when its classes are not the record's or its stored
    probabilities are unusable; SCORE_KEPT when the record's "unknown" score is not the
    max-softmax, or the stored score is not the stored maximum probability (the score and the
    flag are left alone: they cannot be recomputed from probabilities); else RECALIBRATED.
    """
    stored: Mapping[str, float] = prediction.probabilities
    names: Sequence[str] = record.class_names
    if set(stored) != set(names) or prediction.label not in stored:
        return SKIPPED
    probs = np.array([stored[name] for name in names], np.float64)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() <= 0:
        return SKIPPED
    new = rescale_probabilities(probs, prediction.temperature, record.temperature)
    k = max(1, len(prediction.top_k))
    order = np.argsort(-new, kind="stable")[:k]

    prediction.probabilities = {name: float(p) for name, p in zip(names, new, strict=True)}
    prediction.top_k = [{"label": names[i], "probability": float(new[i])} for i in order]
    prediction.confidence = float(new[names.index(prediction.label)])
    prediction.temperature = record.temperature
    stored_score = prediction.unknown_score
    other_score = getattr(record, "unknown_score", MAX_SOFTMAX) != MAX_SOFTMAX
    if other_score or (
        stored_score is not None and abs(stored_score - probs.max()) > _SCORE_TOLERANCE
    ):
        return SCORE_KEPT
    prediction.unknown_score = float(new.max())
    threshold = record.unknown_threshold
    prediction.unknown = None if threshold is None else bool(new.max() < threshold)
    return RECALIBRATED


class Command(BaseCommand):
    help = "Recompute stored predictions' calibrated values at each model's current temperature."

    def add_arguments(self, parser):
        parser.add_argument("--model", help="one model (default: every configured model)")
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")
        parser.add_argument(
            "--all-versions",
            action="store_true",
            help="also predictions made by other versions of the model",
        )

    def handle(self, *args, **options):
        names = [options["model"]] if options["model"] else list(settings.CLASSIFIER_MODELS)
        for name in names:
            if name not in settings.CLASSIFIER_MODELS:
                valid = ", ".join(settings.CLASSIFIER_MODELS) or "none configured"
                raise CommandError(f"Unknown model {name!r}; choose one of: {valid}.")
        for name in names:
            record = model_dir.describe(settings.CLASSIFIER_MODELS[name])
            if record is None:
                message = f"{name}: no readable serving record; skipped"
                if options["model"]:
                    raise CommandError(message)
                self.stderr.write(message)
                continue
            tally = _recalibrate_model(
                name, record, dry_run=options["dry_run"], all_versions=options["all_versions"]
            )
            verb = "would update" if options["dry_run"] else "updated"
            line = f"{name}: {verb} {tally.updated} prediction(s) to T={record.temperature:g}"
            if tally.other_version:
                line += f"; {tally.other_version} by other versions left (see --all-versions)"
            if tally.skipped:
                line += f"; {tally.skipped} with other classes or unusable values left"
            if tally.score_kept:
                line += f"; {tally.score_kept} kept an unknown score that is not max-softmax"
            self.stdout.write(line)


def _recalibrate_model(
    name: str, record: ServingRecord, *, dry_run: bool, all_versions: bool
) -> _Tally:
    tally = _Tally()
    candidates = Prediction.objects.filter(model_name=name).needing_recalibration(
        record.temperature
    )
    if not all_versions:
        tally.other_version = candidates.exclude(model_version=record.version).count()
        candidates = candidates.filter(model_version=record.version)
    # The ids first: rows leave the filtered set as they are updated.
    ids = list(candidates.order_by("pk").values_list("pk", flat=True))
    fields = ["probabilities", "top_k", "confidence", "temperature", "unknown_score", "unknown"]
    with contextlib.nullcontext() if dry_run else transaction.atomic():
        for start in range(0, len(ids), _CHUNK):
            chunk = Prediction.objects.in_bulk(ids[start : start + _CHUNK]).values()
            changed = []
            for prediction in chunk:
                outcome = recalibrate(prediction, record)
                if outcome == SKIPPED:
                    tally.skipped += 1
                    continue
                tally.updated += 1
                tally.score_kept += outcome == SCORE_KEPT
                changed.append(prediction)
            if changed and not dry_run:
                Prediction.objects.bulk_update(changed, fields)
    return tally
