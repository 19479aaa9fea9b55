"""Calibration and the "unknown" answer: one definition of each, for evaluation and serving.

    temperature = fit_temperature(logits, labels)           # minimises NLL over log T
    report = calibration_report(logits, labels, temperature)  # ECE, NLL, Brier, accuracy
    scores = unknown_scores("energy", logits, features, temperature, stats)
    threshold = acceptance_threshold(scores, accept=0.95)   # score < threshold: "unknown"

Definitions:
- ECE: 15 equal-width confidence bins over (0, 1]; sum over bins of |accuracy - mean
  confidence| weighted by the bin's share of the images (confidence = the top probability).
- NLL: mean -log p(true class), natural log.
- Brier score: mean over images of sum over classes of (p_k - 1[k = true])^2, in [0, 2].
- Scores (higher = more like the known classes):
  'max_softmax': the calibrated top probability;
  'energy': T * logsumexp(logits / T), the negative free energy;
  'mahalanobis': minus the smallest squared Mahalanobis distance of the pooled features to a
  class mean, under one covariance shared by the classes (`fit_feature_statistics`); the
  features are square-rooted first (they are non-negative maxima, skewed; the root makes
  them closer to Gaussian);
  'energy+mahalanobis': the sum of the two, each standardised by its mean and standard
  deviation on the fitting images (`fit_standardisation`);
  'activations': minus the squared Mahalanobis distance of the stage statistics (each stage's
  per-channel spatial mean and standard deviation, models.stage_statistics) to one Gaussian
  fitted on training images (`fit_activation_statistics`): how typical the image looks to
  every layer, not only to the last;
  'energy+activations': energy and 'activations', standardised and summed;
  'pixels': minus log(1 + the squared Mahalanobis distance) of simple statistics of the input pixels
  (`pixel_statistics`: brightness, contrast, colourfulness, the share of flat neighbours and of
  sharp edges, the mean gradient, the share of near-white and near-black pixels) to one
  Gaussian fitted on validation images (`fit_pixel_statistics`): text, screenshots, icons and
  drawings are flatter, sharper and more often white than photos;
  'energy+activations+pixels': the three, standardised and summed.

`unknown_scores` is written in jax.numpy, so research.serving.classifier calls the same function
inside
its jitted forward and this module calls it on stored logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.nets import models
from research.serving.record import OUTPUT_SCORES as OUTPUT_SCORES  # re-exported
from research.serving.record import UNKNOWN_SCORES

ECE_BINS = 15
SCORES = UNKNOWN_SCORES
ACCEPT = 0.95  # share of in-distribution images the "unknown" threshold accepts
# Temperatures searched when fitting (golden-section on log T).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Added to the shared covariance's diagonal, relative to its mean variance, before inverting.
COVARIANCE_RIDGE = 1e-3


# ----------------------------------------------------------------------------- metrics


def log_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 log-probabilities via models.log_probabilities (the project's one softmax)."""
    return np.asarray(models.log_probabilities(jnp.asarray(logits), temperature), np.float64)


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: image count, mean confidence and accuracy (NaN when
    empty), and the bin edges. Bin k holds confidences in (k/bins, (k+1)/bins]."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct.astype(np.float64), bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE over `bins` equal-width confidence bins (see the module docstring)."""
    table = reliability_bins(probs, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(gaps * table["count"][filled]) / max(len(labels), 1))


def negative_log_likelihood(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class) from log-probabilities."""
    log_probs = np.asarray(log_probs, np.float64)
    return float(-np.mean(log_probs[np.arange(len(labels)), np.asarray(labels)]))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between probabilities and the one-hot label."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[-1])[np.asarray(labels)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=-1)))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> dict[str, float]:
    """Accuracy, mean confidence, ECE, NLL and Brier score of `logits` at `temperature`."""
    log_probs = log_probabilities(logits, temperature)
    probs = np.exp(log_probs)
    return {
        "temperature": float(temperature),
        "count": len(labels),
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
        "mean_confidence": float(probs.max(-1).mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(log_probs, labels),
        "brier": brier_score(probs, labels),
    }


# ----------------------------------------------------------------------------- temperature


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, tolerance: float = 1e-4) -> float:
    """The temperature in [0.05, 20] minimising NLL, by golden-section search on log T (NLL
    is convex in 1/T, so unimodal in log T)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        return negative_log_likelihood(log_probabilities(logits, math.exp(log_t)), labels)

    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


# ----------------------------------------------------------------------------- unknown


def _transform(features: jax.Array | np.ndarray):
    """The feature transform of the Mahalanobis score: sqrt(max(f, 0))."""
    xp = np if isinstance(features, np.ndarray) else jnp
    return xp.sqrt(xp.maximum(features, 0))


def fit_feature_statistics(features: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Class means [C, D] and the precision [D, D] of the covariance shared by the classes
    (transformed features minus their class mean), for the 'mahalanobis' score."""
    features = _transform(np.asarray(features, np.float64))
    labels = np.asarray(labels)
    means = np.stack([features[labels == c].mean(0) for c in range(num_classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / len(features)
    ridge = COVARIANCE_RIDGE * np.trace(covariance) / len(covariance) + 1e-8
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    precision = (precision + precision.T) / 2
    return {"means": means.astype(np.float32), "precision": precision.astype(np.float32)}


def _fit_gaussian(values: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Mean and (ridged) precision of one Gaussian over the rows of `values`."""
    values = np.asarray(values, np.float64)
    mean = values.mean(0)
    covariance = np.cov(values.T, bias=True).reshape(len(mean), len(mean))
    ridge = COVARIANCE_RIDGE * np.trace(covariance) / len(covariance) + 1e-8
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    precision = (precision + precision.T) / 2
    return {
        f"{prefix}_center": mean.astype(np.float32),
        f"{prefix}_precision": precision.astype(np.float32),
    }


def fit_activation_statistics(stages: np.ndarray) -> dict[str, np.ndarray]:
    """Mean [S] and precision [S, S] of one Gaussian over stage statistics, for the
    'activations' score."""
    return _fit_gaussian(stages, "activations")


# What `pixel_statistics` measures, in its column order.
PIXEL_STATISTICS = (
    "mean grey level",
    "grey standard deviation",
    "colourfulness (mean max - min channel)",
    "share of flat neighbours (|difference| < 1.5/255)",
    "share of sharp edges (|difference| > 0.25)",
    "mean |difference| of neighbours",
    "share of near-white pixels (> 0.94)",
    "share of near-black pixels (< 0.06)",
)
FLAT_STEP, SHARP_STEP, WHITE, BLACK = 1.5 / 255, 0.25, 0.94, 0.06


def pixel_statistics(images: jax.Array | np.ndarray) -> jax.Array:
    """[N, 8] statistics (PIXEL_STATISTICS) of uint8 [N, H, W, C] model inputs, in [0, 1]."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    n = x.shape[0]
    grey = x.mean(axis=-1)
    steps = jnp.concatenate(
        [
            jnp.abs(grey[:, :, 1:] - grey[:, :, :-1]).reshape(n, -1),
            jnp.abs(grey[:, 1:, :] - grey[:, :-1, :]).reshape(n, -1),
        ],
        axis=1,
    )
    flat_grey = grey.reshape(n, -1)
    return jnp.stack(
        [
            flat_grey.mean(axis=1),
            flat_grey.std(axis=1),
            (x.max(axis=-1) - x.min(axis=-1)).reshape(n, -1).mean(axis=1),
            (steps < FLAT_STEP).mean(axis=1),
            (steps > SHARP_STEP).mean(axis=1),
            steps.mean(axis=1),
            (flat_grey > WHITE).mean(axis=1),
            (flat_grey < BLACK).mean(axis=1),
        ],
        axis=1,
    )


def fit_pixel_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean [8] and precision [8, 8] of one Gaussian over `pixel_statistics` of in-distribution
    model inputs (validation images), for the 'pixels' score."""
    return _fit_gaussian(np.asarray(pixel_statistics(images)), "pixels")


def _components(kind: str) -> tuple[str, ...]:
    """The scores a combined score standardises and sums ('energy+x' -> energy, x)."""
    return tuple(kind.split("+")) if "+" in kind else ()


def needed_statistics(kind: str) -> set[str]:
    """The statistics arrays a score needs beside the record."""
    needed: set[str] = set()
    for part in _components(kind) or (kind,):
        if part == "mahalanobis":
            needed |= {"means", "precision"}
        if part in ("activations", "pixels"):
            needed |= {f"{part}_center", f"{part}_precision"}
        if _components(kind):
            needed |= {f"{part}_mean", f"{part}_std"}
    return needed


def unknown_scores(
    kind: str,
    logits: jax.Array,
    features: jax.Array | None,
    temperature: float | jax.Array,
    stats: Mapping[str, jax.Array] | None = None,
    stages: jax.Array | None = None,
    images: jax.Array | None = None,
) -> jax.Array:
    """[N] scores, higher = more like the known classes (see the module docstring).
    `features`: pooled features; `stages`: stage statistics (models.predict_logits_and_features);
    `images`: the uint8 model inputs (the 'pixels' score only)."""
    missing = needed_statistics(kind) - set(stats or ())
    if kind in SCORES and missing:
        raise ValueError(f"The {kind!r} score needs the statistics {sorted(missing)}")
    if _components(kind):
        total = 0.0
        for part in _components(kind):
            value = unknown_scores(part, logits, features, temperature, stats, stages, images)
            total = total + (value - stats[f"{part}_mean"]) / stats[f"{part}_std"]
        return total
    if kind in ("activations", "pixels"):
        if kind == "pixels" and images is None:
            raise ValueError("The 'pixels' score needs the model inputs (images)")
        values = stages if kind == "activations" else pixel_statistics(images)
        x = jnp.asarray(values, jnp.float32) - stats[f"{kind}_center"]
        distance = jnp.sum((x @ stats[f"{kind}_precision"]) * x, axis=-1)
        # Eight bounded statistics: the log keeps one extreme one (a photo on a white
        # background) from outweighing the network's two parts in the sum.
        return -jnp.log1p(distance) if kind == "pixels" else -distance
    if kind == "max_softmax":
        return jnp.exp(models.log_probabilities(logits, temperature)).max(axis=-1)
    if kind == "energy":
        return temperature * jax.nn.logsumexp(logits.astype(jnp.float32) / temperature, axis=-1)
    if kind == "mahalanobis":
        f = _transform(jnp.asarray(features, jnp.float32))
        means, precision = stats["means"], stats["precision"]
        # (f - m)^T P (f - m) = f^T P f - 2 f^T P m + m^T P m, for every class at once.
        fp = f @ precision
        distances = (
            jnp.sum(fp * f, axis=-1, keepdims=True)
            - 2 * fp @ means.T
            + jnp.sum((means @ precision) * means, axis=-1)
        )
        return -distances.min(axis=-1)
    raise ValueError(f"Unknown score {kind!r}; choose one of {', '.join(SCORES)}")


def fit_standardisation(
    kind: str,
    logits: np.ndarray,
    features: np.ndarray | None,
    temperature: float,
    stats: Mapping[str, Any],
    stages: np.ndarray | None = None,
    images: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`stats` plus the mean and standard deviation, on the fitting images, of each score the
    combined score `kind` sums ('energy+mahalanobis': energy and Mahalanobis)."""
    out = dict(stats)
    for part in _components(kind):
        scores = unknown_scores(part, logits, features, temperature, stats, stages, images)
        scores = np.asarray(scores, np.float64)
        out[f"{part}_mean"] = np.float32(scores.mean())
        out[f"{part}_std"] = np.float32(max(scores.std(), 1e-6))
    return out


def acceptance_threshold(scores: np.ndarray, accept: float = ACCEPT) -> float:
    """A threshold that accepts (score >= threshold) at least `accept` of NEW images like
    `scores`: the largest one accepting `accept` plus 1.645 standard errors of a share measured
    on len(scores) images (a one-sided 95% bound), so that the sampling noise of a finite
    fitting set does not leave unseen in-distribution images below `accept`."""
    ordered = np.sort(np.asarray(scores, np.float64))
    margin = 1.645 * math.sqrt(accept * (1 - accept) / max(len(ordered), 1))
    target = min(accept + margin, 1.0)
    return float(ordered[min(int(math.floor((1 - target) * len(ordered))), len(ordered) - 1)])


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling `known` scores (positives, expected higher) from
    `unknown` ones: P(known > unknown) + P(tie) / 2, by ranks."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    values = np.concatenate([known, unknown])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Ties share their mean rank.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    ranks = (sums / counts)[inverse]
    n1, n0 = len(known), len(unknown)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ----------------------------------------------------------------------------- synthetic


def noise_images(count: int, image_shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 [count, H, W, C] images: half uniform noise, half Gaussian noise around a random
    grey level (sigma 16..96), from `seed`."""
    rng = np.random.default_rng(seed)
    shape = (count, *image_shape)
    uniform = rng.integers(0, 256, shape)
    centre = rng.uniform(0, 255, (count, 1, 1, 1))
    sigma = rng.uniform(16, 96, (count, 1, 1, 1))
    gaussian = rng.normal(centre, sigma, shape)
    pick = (np.arange(count) % 2 == 0).reshape(-1, 1, 1, 1)
    return np.clip(np.where(pick, uniform, gaussian), 0, 255).astype(np.uint8)


def flat_images(count: int, image_shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 [count, H, W, C] images of one random colour each (grey for one channel)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (count, 1, 1, image_shape[-1]))
    return np.broadcast_to(colours, (count, *image_shape)).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    """How one score separates known images from others, at the threshold it chose."""

    kind: str
    threshold: float
    accepted_fit: float  # share of the fitting images accepted
    accepted: float  # share of the reported in-distribution images accepted
    auroc: dict[str, float]  # per outlier set
    rejected: dict[str, float]  # share of each outlier set answered "unknown"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_report(
    kind: str,
    fit_scores: np.ndarray,
    known_scores: np.ndarray,
    outliers: Mapping[str, np.ndarray],
    accept: float = ACCEPT,
) -> ScoreReport:
    """The threshold chosen on `fit_scores`, and the acceptance and AUROCs it gives on
    `known_scores` (in-distribution images not used for fitting) against each outlier set."""
    threshold = acceptance_threshold(fit_scores, accept)
    return ScoreReport(
        kind=kind,
        threshold=threshold,
        accepted_fit=float(np.mean(np.asarray(fit_scores) >= threshold)),
        accepted=float(np.mean(np.asarray(known_scores) >= threshold)),
        auroc={name: auroc(known_scores, s) for name, s in outliers.items()},
        rejected={name: float(np.mean(np.asarray(s) < threshold)) for name, s in outliers.items()},
    )
