"""How often the "unknown" answer catches the out-of-scope check set (research.data.out_of_scope),
before and after adding the input-pixel statistics to the served score.

    result = evaluate(classifier, validation_images, out_of_scope_images)

- **before**: the served score and threshold as stored (for CIFAR-10 the threshold was fitted on
  the whole validation split, so its validation share is in-sample); and the same score with
  its threshold refitted by 2-fold cross-validation, the way `after` is measured.
- **after**: IMPROVED_SCORE, the served score plus 'pixels' (research.serving.calibration),
  measured by 2-fold cross-validation on the validation split: the pixel Gaussian, the
  standardisation and the threshold are fitted on one half, the share of validation images
  flagged and the AUROCs are reported on the other half, both ways, averaged. The network's
  own statistics (activations, from training images) are the stored ones.
- **stored**: the same fitted on the whole validation split, what `python -m research.calibrate
  --out_of_scope DIR` writes into the record unless --dry_run.

The check set is never used for fitting or choosing anything. AUROC: validation images
(positives) against the check set's images; "flagged": the share answered "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from research.evaluation.calibrate import _halves
from research.serving import calibration
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess

IMPROVED_SCORE = "energy+activations+pixels"
MAX_FLAGGED = 0.05  # the share of in-distribution validation images the score may flag


def evaluate(
    clf: Classifier,
    validation: np.ndarray,
    out_of_scope: Mapping[str, Sequence[Image.Image]],
    *,
    score: str = IMPROVED_SCORE,
) -> dict[str, Any]:
    """Before/after figures and the statistics and threshold to store (see the module doc).
    `validation`: uint8 model inputs of the validation split; `out_of_scope`: images by kind."""
    record = clf.record
    temperature = record.temperature
    sets = {"validation": _outputs(clf, validation)}
    for kind, images in out_of_scope.items():
        sets[kind] = _outputs(clf, preprocess(list(images), clf.image_shape))
    kinds = [k for k in sets if k != "validation"]
    served = record.unknown_score
    served_stats = dict(clf.statistics or {})

    def scores_of(kind_score: str, stats: Mapping[str, Any], name: str, index=slice(None)):
        o = sets[name]
        return np.asarray(
            calibration.unknown_scores(
                kind_score,
                o["logits"][index],
                o["features"][index],
                temperature,
                stats,
                o["stages"][index],
                o["images"][index],
            ),
            np.float64,
        )

    before_served = _report(
        scores_of(served, served_stats, "validation"),
        {k: scores_of(served, served_stats, k) for k in kinds},
        record.unknown_threshold,
    )
    folds = {"before": [], "after": []}
    a, b = _halves(len(validation))
    for fit, report in ((a, b), (b, a)):
        for when, kind_score in (("before", served), ("after", score)):
            stats = _fit(kind_score, sets["validation"], fit, temperature, served_stats)
            threshold = calibration.acceptance_threshold(
                scores_of(kind_score, stats, "validation", fit)
            )
            folds[when].append(
                _report(
                    scores_of(kind_score, stats, "validation", report),
                    {k: scores_of(kind_score, stats, k) for k in kinds},
                    threshold,
                )
            )
    everything = np.arange(len(validation))
    stored_stats = _fit(score, sets["validation"], everything, temperature, served_stats)
    threshold = calibration.acceptance_threshold(scores_of(score, stored_stats, "validation"))
    needed = calibration.needed_statistics(score)
    return {
        "served_score": served,
        "served_threshold": record.unknown_threshold,
        "improved_score": score,
        "validation_images": len(validation),
        "out_of_scope_images": {k: len(out_of_scope[k]) for k in kinds},
        "before_as_served": before_served,
        "before": _average(folds["before"]),
        "after": _average(folds["after"]),
        "method": "2-fold cross-validation on the validation split: statistics, "
        "standardisation and threshold fitted on one half, reported on the other, both ways, "
        "averaged; the out-of-scope set is never fitted on",
        "stored_threshold": threshold,
        "statistics": {k: v for k, v in stored_stats.items() if k in needed},
    }


def meets_constraint(result: Mapping[str, Any]) -> bool:
    """Whether the improved score flags at most MAX_FLAGGED of the held-out validation images."""
    return result["after"]["validation_flagged"] <= MAX_FLAGGED


def _outputs(clf: Classifier, images: np.ndarray) -> dict[str, np.ndarray]:
    logits, features, stages = clf.outputs_arrays(images)
    return {"logits": logits, "features": features, "stages": stages, "images": images}


def _fit(
    score: str,
    validation: Mapping[str, np.ndarray],
    index: np.ndarray,
    temperature: float,
    served_stats: Mapping[str, Any],
) -> dict[str, Any]:
    """The statistics `score` needs, fitted on validation images `index`: the pixel Gaussian
    and the standardisation of each part; the network's activation statistics are kept."""
    stats = dict(served_stats)
    if "pixels" in score:
        stats |= calibration.fit_pixel_statistics(validation["images"][index])
    if "+" in score:
        stats = calibration.fit_standardisation(
            score,
            validation["logits"][index],
            validation["features"][index],
            temperature,
            stats,
            validation["stages"][index],
            validation["images"][index],
        )
    return stats


def _report(
    known: np.ndarray, others: Mapping[str, np.ndarray], threshold: float | None
) -> dict[str, Any]:
    every = np.concatenate(list(others.values()))
    flagged = (
        (lambda s: float(np.mean(s < threshold))) if threshold is not None else (lambda s: 0.0)
    )
    return {
        "threshold": threshold,
        "validation_flagged": flagged(known),
        "auroc": {k: calibration.auroc(known, s) for k, s in others.items()}
        | {"all": calibration.auroc(known, every)},
        "flagged": {k: flagged(s) for k, s in others.items()} | {"all": flagged(every)},
    }


def _average(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "validation_flagged": float(np.mean([r["validation_flagged"] for r in reports])),
        "auroc": {k: float(np.mean([r["auroc"][k] for r in reports])) for k in reports[0]["auroc"]},
        "flagged": {
            k: float(np.mean([r["flagged"][k] for r in reports])) for k in reports[0]["flagged"]
        },
        "folds": reports,
    }


def format_result(result: Mapping[str, Any]) -> str:
    """A table: AUROC and share flagged per kind, before (as served, 2-fold) and after."""
    kinds = list(result["before"]["auroc"])
    lines = [
        f"validation images {result['validation_images']}; out-of-scope "
        + ", ".join(f"{k} {n}" for k, n in result["out_of_scope_images"].items()),
        f"{'':<28}{'validation flagged':>19}  "
        + "  ".join(f"{k + ' AUROC/flagged':>24}" for k in kinds),
    ]
    rows = (
        (f"before {result['served_score']} (stored)", result["before_as_served"]),
        (f"before {result['served_score']} (2-fold)", result["before"]),
        (f"after {result['improved_score']} (2-fold)", result["after"]),
    )
    for name, r in rows:
        cells = "  ".join(f"{r['auroc'][k]:>14.4f} / {r['flagged'][k]:6.1%}" for k in kinds)
        lines.append(f"{name:<28.28}{r['validation_flagged']:>19.2%}  {cells}")
    return "\n".join(lines)
