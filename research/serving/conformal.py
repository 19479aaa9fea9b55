"""Prediction sets with a coverage guarantee: split conformal prediction, NumPy only.

    threshold = fit_threshold(conformity_scores("lac", probs, labels), coverage=0.95)
    sets = prediction_sets("lac", probs, threshold)   # bool [N, classes]

On images exchangeable with the fitting ones, the set holds the true class with probability at
least `coverage` (split conformal prediction: Vovk et al. 2005; Angelopoulos & Bates, "A Gentle
Introduction to Conformal Prediction", 2021). The guarantee is marginal (over images, not for
each one) and holds only for images like the fitting split: an image of none of the classes
has no true class in the set, which is what the "unknown" score is for.

Methods (a class's score; the set keeps the classes scoring at most the threshold):
- 'lac' (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p(class). Gives the
  smallest sets on average for a given coverage.
- 'aps' (adaptive prediction sets, Romano et al. 2020, without randomisation): the sum of the
  probabilities of the classes ranked at or above it. Sets grow on hard images and shrink on
  easy ones, at the price of larger sets on average.

No JAX here: the web and evaluation both read it cheaply.
"""

from __future__ import annotations

import math

import numpy as np

from research.serving.record import SET_METHODS

METHODS = SET_METHODS
COVERAGE = 0.95  # the share of in-distribution images whose set holds the true class
# Standard errors added to the coverage when fitting: a one-sided 95% bound, so the guarantee
# holds for the threshold actually fitted (training-conditional), as the "unknown" threshold's.
MARGIN_SE = 1.645


def class_scores(method: str, probs: np.ndarray) -> np.ndarray:
    """float64 [N, classes]: each class's non-conformity score (lower = more plausible)."""
    probs = np.asarray(probs, np.float64)
    if method == "lac":
        return 1.0 - probs
    if method == "aps":
        order = np.argsort(-probs, axis=-1, kind="stable")
        cumulative = np.cumsum(np.take_along_axis(probs, order, axis=-1), axis=-1)
        scores = np.empty_like(probs)
        np.put_along_axis(scores, order, cumulative, axis=-1)
        return scores
    raise ValueError(f"Unknown conformal method {method!r}; choose one of {', '.join(METHODS)}")


def conformity_scores(method: str, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float64 [N]: the score of each image's true class."""
    scores = class_scores(method, probs)
    return scores[np.arange(len(scores)), np.asarray(labels)]


def fit_threshold(
    scores: np.ndarray, coverage: float = COVERAGE, *, margin: float = MARGIN_SE
) -> float:
    """The ceil((n + 1) * target)-th smallest of n true-class scores, target = coverage plus
    `margin` standard errors of a share measured on n images: sets keeping the classes scoring
    at most it cover a new exchangeable image's class with probability >= coverage, and with
    the margin (1.645: a one-sided 95% bound) the coverage of *this* fitted threshold is at
    least `coverage` in about 95% of fitting draws, not only on average over them.
    Too few images for that rank: every class is kept (threshold 1, the largest score)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, not {coverage}")
    ordered = np.sort(np.asarray(scores, np.float64))
    n = len(ordered)
    target = coverage + margin * math.sqrt(coverage * (1 - coverage) / max(n, 1))
    rank = math.ceil((n + 1) * min(target, 1.0))
    if rank > n:
        return 1.0
    return float(ordered[rank - 1])


def prediction_sets(method: str, probs: np.ndarray, threshold: float) -> np.ndarray:
    """bool [N, classes]: the classes in each image's set. The top class is always kept, so a
    set is never empty (which only adds coverage)."""
    probs = np.asarray(probs, np.float64)
    keep = class_scores(method, probs) <= threshold + 1e-12
    top = probs.argmax(-1)
    keep[np.arange(len(probs)), top] = True
    return keep


def set_report(method: str, probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Coverage (share of sets holding the true class), mean set size, the share of sets of
    one class and the accuracy of those single answers, on images not used for fitting."""
    sets = prediction_sets(method, probs, threshold)
    labels = np.asarray(labels)
    sizes = sets.sum(-1)
    single = sizes == 1
    covered = sets[np.arange(len(labels)), labels]
    return {
        "method": method,
        "threshold": float(threshold),
        "count": int(len(labels)),
        "coverage": float(covered.mean()),
        "mean_size": float(sizes.mean()),
        "single": float(single.mean()),
        "single_accuracy": float(covered[single].mean()) if single.any() else None,
        "sizes": np.bincount(sizes, minlength=probs.shape[-1] + 1)[1:].tolist(),
    }


def risk_coverage(probs: np.ndarray, labels: np.ndarray, points: int = 101) -> dict:
    """The accuracy of the answers kept when only the most confident share of them is kept:
    {'kept': [...], 'accuracy': [...]} from keeping 1% (at least one image) to all of them."""
    probs = np.asarray(probs, np.float64)
    correct = (probs.argmax(-1) == np.asarray(labels))[np.argsort(-probs.max(-1), kind="stable")]
    running = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    kept = np.linspace(0.01, 1.0, points - 1)
    index = np.maximum(np.ceil(kept * len(correct)).astype(int), 1) - 1
    return {"kept": kept.tolist(), "accuracy": running[index].tolist()}
