"""Fitting a model's temperature and "unknown" threshold on stored outputs (`calibrate`), from
its validation split (`collect_outputs`), and storing them in its record (`fit_and_store`, which
training calls when it ends). The command, with the full method, is research.calibrate.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from research.data import arrays
from research.serving import calibration, conformal, model_dir
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess

# Targets of issue 9: AUROC against the other dataset and against noise / flat colours.
TARGET_AUROC_DATASET = 0.95
TARGET_AUROC_SYNTHETIC = 0.99
TARGET_ECE = 0.02
# The score research.train stores after training (see the model cards for the measurements).
TRAINING_SCORE = "energy+activations"
SYNTHETIC_IMAGES = 1000  # of noise, and of flat colours
SEED = 0
# The other dataset each dataset's model is shown as "not one of these" images.
OTHER_DATASET = {"cifar10": ("fashion_mnist", "test"), "fashion_mnist": ("cifar10", "validation")}


# ----------------------------------------------------------------------------- data


def load_arrays(
    dataset: str,
    split: str,
    data_dir: str | None,
    limit: int | None = None,
    source: str | None = None,
    validation_per_class: int = arrays.DEFAULT_VALIDATION_PER_CLASS,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int labels [N]) of a split in its fixed order: from the
    prepared tfds dataset, or without TensorFlow from `source` (research.data.arrays)."""
    if source is not None:
        loaded = arrays.load_split(
            dataset, split, source, validation_per_class=validation_per_class
        )
        keep = np.arange(len(loaded))
        if limit and limit < len(keep):  # folders are stored class by class: sample them
            keep = np.sort(np.random.default_rng(SEED).choice(len(keep), limit, replace=False))
        return loaded.images[keep], loaded.labels[keep].astype(np.int64)
    loaded = arrays.load_split(dataset, split, data_dir=data_dir, limit=limit)
    return loaded.images, loaded.labels.astype(np.int64)


def collect_outputs(clf: Classifier, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Logits, features and labels of every image set the command needs, by name."""
    from research.data import datasets  # TensorFlow: only where a tfds split is read

    data_dir = args.data_dir
    info = datasets.get_info(clf.dataset, data_dir)
    if list(info.class_names) != clf.class_names:
        raise ValueError(f"Dataset {clf.dataset!r} has other classes than the model")
    train_split = clf.record.config.get("train_split") or "train"
    has_validation = "validation" in info.splits and train_split != "validation"
    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sets["train"] = load_arrays(clf.dataset, train_split, data_dir, args.train_images)
    if has_validation:
        sets["validation"] = load_arrays(clf.dataset, "validation", data_dir)
    if not has_validation or getattr(args, "report_split", None) == "test":
        sets["test"] = load_arrays(clf.dataset, "test", data_dir)
    other, other_split = OTHER_DATASET.get(clf.dataset, (None, None))
    if other is not None:
        images, labels = load_arrays(
            other, other_split, args.other_data_dir or data_dir, args.other_images
        )
        sets[other] = (preprocess(list(images), clf.image_shape), labels)
    shape = clf.image_shape
    sets["noise"] = (calibration.noise_images(SYNTHETIC_IMAGES, shape, SEED), np.zeros(0))
    sets["flat"] = (calibration.flat_images(SYNTHETIC_IMAGES, shape, SEED), np.zeros(0))
    out: dict[str, np.ndarray] = {}
    for name, (images, labels) in sets.items():
        started = time.monotonic()
        logits, features, stages = clf.outputs_arrays(images)
        out[f"{name}/logits"], out[f"{name}/features"] = logits, features
        out[f"{name}/stages"], out[f"{name}/labels"] = stages, labels
        seconds = time.monotonic() - started
        print(f"{name}: {len(images)} images in {seconds:.0f}s", file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- fitting


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SEED).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def calibrate(
    outputs: dict[str, np.ndarray], num_classes: int, *, scores: Sequence[str]
) -> dict[str, Any]:
    """Temperature, per-score thresholds and every reported figure, from stored outputs: with
    a validation split and no test split, fitted on validation and reported by 2-fold
    cross-validation on it; else fitted on validation (or training images) and reported on
    the test split."""
    scorer = _Scorer(outputs, num_classes)
    result: dict[str, Any] = {"statistics_images": len(outputs["train/labels"])}
    if "validation/logits" in outputs and "test/logits" not in outputs:
        part, (logits, labels) = _cross_validated(scorer, scores)
        part["reliability_source"] = "validation, at the temperature fitted on all of it"
    else:
        part, (logits, labels) = _reported_on_test(scorer, scores)
        part["reliability_source"] = "test"
    result.update(part)
    result["reliability"] = {
        "before": _bins(logits, labels, 1.0),
        "after": _bins(logits, labels, result["temperature"]),
    }
    probs = np.exp(calibration.log_probabilities(logits, result["temperature"]))
    result["risk_coverage"] = conformal.risk_coverage(probs, labels)
    return result


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(calibration.log_probabilities(logits, temperature))


def fit_sets(
    fit_logits: np.ndarray,
    fit_labels: np.ndarray,
    temperature: float,
    coverage: float = conformal.COVERAGE,
) -> dict[str, Any]:
    """The conformal threshold of each method fitted on the fitting images, and the method
    chosen: the one with the smaller mean set size on those same images (the split the
    figures are reported on is not used for choosing)."""
    probs = _probs(fit_logits, temperature)
    thresholds, sizes = {}, {}
    for method in conformal.METHODS:
        scores = conformal.conformity_scores(method, probs, fit_labels)
        thresholds[method] = conformal.fit_threshold(scores, coverage)
        sizes[method] = float(
            conformal.prediction_sets(method, probs, thresholds[method]).sum(-1).mean()
        )
    chosen = min(conformal.METHODS, key=lambda m: sizes[m])
    return {"coverage": coverage, "thresholds": thresholds, "fit_size": sizes, "method": chosen}


def sets_at_temperature(outputs: dict[str, np.ndarray], temperature: float) -> dict[str, Any]:
    """Prediction sets fitted and reported as `calibrate` does, but at a temperature already
    fitted (a model's stored one): fitted on the whole validation split, reported by 2-fold
    cross-validation on it, or on the test split when there is one."""
    logits, labels = outputs["validation/logits"], outputs["validation/labels"]
    sets = fit_sets(logits, labels, temperature)
    if "test/logits" in outputs:
        test = outputs["test/logits"], outputs["test/labels"]
        sets["reported"] = _set_reports(sets, *test, temperature)
        sets["report_split"] = "test"
        return sets
    reports = []
    a, b = _halves(len(labels))
    for fit, report in ((a, b), (b, a)):
        fitted = fit_sets(logits[fit], labels[fit], temperature)
        reports.append(_set_reports(fitted, logits[report], labels[report], temperature))
    sets["reported"] = {m: _mean_sets([r[m] for r in reports]) for m in conformal.METHODS}
    sets["report_split"] = "validation (2-fold: fit on one half, reported on the other)"
    return sets


def _set_reports(
    fitted: dict[str, Any], logits: np.ndarray, labels: np.ndarray, temperature: float
) -> dict[str, Any]:
    probs = _probs(logits, temperature)
    return {
        m: conformal.set_report(m, probs, labels, fitted["thresholds"][m])
        for m in conformal.METHODS
    }


class _Scorer:
    """The "unknown" scores of stored outputs: statistics fitted on the training images,
    standardised on the fitting images where a score needs it."""

    def __init__(self, outputs: dict[str, np.ndarray], num_classes: int):
        self.outputs = outputs
        self.stats = calibration.fit_feature_statistics(
            outputs["train/features"], outputs["train/labels"], num_classes
        ) | calibration.fit_activation_statistics(outputs["train/stages"])
        self.outlier_names = [
            name[: -len("/logits")]
            for name in outputs
            if name.endswith("/logits")
            and name.split("/")[0] not in ("train", "validation", "test")
        ]

    def statistics_for(self, kind: str, name: str, temperature: float, index=slice(None)):
        """The statistics of `kind`, standardised (if it needs it) on images `index` of
        `name`, the fitting images."""
        if "+" not in kind:
            return self.stats
        out = self.outputs
        return calibration.fit_standardisation(
            kind,
            out[f"{name}/logits"][index],
            out[f"{name}/features"][index],
            temperature,
            self.stats,
            out[f"{name}/stages"][index],
        )

    def scored(self, kind: str, name: str, temperature: float, kind_stats: dict) -> np.ndarray:
        out = self.outputs
        return np.asarray(
            calibration.unknown_scores(
                kind,
                out[f"{name}/logits"],
                out[f"{name}/features"],
                temperature,
                kind_stats,
                out[f"{name}/stages"],
            )
        )

    def outliers(self, kind: str, temperature: float, kind_stats: dict) -> dict[str, np.ndarray]:
        return {n: self.scored(kind, n, temperature, kind_stats) for n in self.outlier_names}


def _cross_validated(scorer: _Scorer, scores: Sequence[str]):
    """Fitted on the whole validation split, reported by 2-fold cross-validation on it."""
    logits, labels = scorer.outputs["validation/logits"], scorer.outputs["validation/labels"]
    temperature = calibration.fit_temperature(logits, labels)
    folds = []
    a, b = _halves(len(labels))
    for fit, report in ((a, b), (b, a)):
        t = calibration.fit_temperature(logits[fit], labels[fit])
        fold: dict[str, Any] = {
            "temperature": t,
            "before": calibration.calibration_report(logits[report], labels[report], 1.0),
            "after": calibration.calibration_report(logits[report], labels[report], t),
            "scores": {},
        }
        fitted = fit_sets(logits[fit], labels[fit], t)
        fold["sets"] = fitted | {"reports": _set_reports(fitted, logits[report], labels[report], t)}
        for kind in scores:
            kind_stats = scorer.statistics_for(kind, "validation", t, fit)
            known = scorer.scored(kind, "validation", t, kind_stats)
            fold["scores"][kind] = calibration.score_report(
                kind, known[fit], known[report], scorer.outliers(kind, t, kind_stats)
            ).to_dict()
        folds.append(fold)
    statistics = {kind: scorer.statistics_for(kind, "validation", temperature) for kind in scores}
    sets = fit_sets(logits, labels, temperature)
    sets["reported"] = {
        m: _mean_sets([f["sets"]["reports"][m] for f in folds]) for m in conformal.METHODS
    }
    sets["report_split"] = "validation (2-fold: fit on one half, reported on the other)"
    part = dict(
        sets=sets,
        method="fitted on the whole validation split; reported by 2-fold cross-validation "
        "on it (fit on one half, report on the other, both ways, averaged)",
        fit_split="validation",
        report_split="validation (2-fold cross-validated)",
        temperature=temperature,
        folds=folds,
        before=_mean([f["before"] for f in folds]),
        after=_mean([f["after"] for f in folds]),
        scores={kind: _mean_score([f["scores"][kind] for f in folds]) for kind in scores},
        statistics=statistics,
        thresholds={
            kind: calibration.acceptance_threshold(
                scorer.scored(kind, "validation", temperature, statistics[kind])
            )
            for kind in scores
        },
    )
    return part, (logits, labels)


def _reported_on_test(scorer: _Scorer, scores: Sequence[str]):
    """Fitted on validation (or, without one, on training images), reported on test."""
    outputs = scorer.outputs
    fit_name = "validation" if "validation/logits" in outputs else "train"
    logits, labels = outputs[f"{fit_name}/logits"], outputs[f"{fit_name}/labels"]
    temperature = calibration.fit_temperature(logits, labels)
    test_logits, test_labels = outputs["test/logits"], outputs["test/labels"]
    sets = fit_sets(logits, labels, temperature)
    sets["reported"] = _set_reports(sets, test_logits, test_labels, temperature)
    sets["report_split"] = "test"
    reports, kind_stats = {}, {}
    for kind in scores:
        kind_stats[kind] = scorer.statistics_for(kind, fit_name, temperature)
        reports[kind] = calibration.score_report(
            kind,
            scorer.scored(kind, fit_name, temperature, kind_stats[kind]),
            scorer.scored(kind, "test", temperature, kind_stats[kind]),
            scorer.outliers(kind, temperature, kind_stats[kind]),
        ).to_dict()
    part = dict(
        method=(
            "fitted on the whole validation split (never trained on); reported on the "
            "test split, never used for fitting"
            if fit_name == "validation"
            else "fitted on training images (without augmentation; the model trained on "
            "them, so the fit leans towards over-confidence); reported on the test split"
        ),
        fit_split="validation" if fit_name == "validation" else f"train[:{len(labels)}]",
        report_split="test",
        temperature=temperature,
        fit_before=calibration.calibration_report(logits, labels, 1.0),
        fit_after=calibration.calibration_report(logits, labels, temperature),
        before=calibration.calibration_report(test_logits, test_labels, 1.0),
        after=calibration.calibration_report(test_logits, test_labels, temperature),
        scores=reports,
        sets=sets,
        thresholds={kind: reports[kind]["threshold"] for kind in scores},
        statistics=kind_stats,
    )
    return part, (test_logits, test_labels)


def _bins(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, list]:
    probs = np.exp(calibration.log_probabilities(logits, temperature))
    table = calibration.reliability_bins(probs, labels)
    return {k: np.where(np.isnan(v), None, v).tolist() for k, v in table.items()}


def _mean(reports: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in reports])) for k in reports[0]}


def _mean_sets(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' set reports averaged (counts summed)."""
    out: dict[str, Any] = {"method": reports[0]["method"]}
    out["count"] = int(sum(r["count"] for r in reports))
    for key in ("coverage", "mean_size", "single"):
        out[key] = float(np.mean([r[key] for r in reports]))
    accuracies = [r["single_accuracy"] for r in reports if r["single_accuracy"] is not None]
    out["single_accuracy"] = float(np.mean(accuracies)) if accuracies else None
    out["sizes"] = np.sum([r["sizes"] for r in reports], axis=0).tolist()
    return out


def _mean_score(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": reports[0]["kind"],
        "accepted": float(np.mean([r["accepted"] for r in reports])),
        "accepted_fit": float(np.mean([r["accepted_fit"] for r in reports])),
        "auroc": {k: float(np.mean([r["auroc"][k] for r in reports])) for k in reports[0]["auroc"]},
        "rejected": {
            k: float(np.mean([r["rejected"][k] for r in reports])) for k in reports[0]["rejected"]
        },
    }


def missed_targets(score: dict[str, Any]) -> list[str]:
    """The issue's targets a score report misses (empty when it meets them all)."""
    missed = []
    for name, value in score["auroc"].items():
        target = TARGET_AUROC_SYNTHETIC if name in ("noise", "flat") else TARGET_AUROC_DATASET
        if value < target:
            missed.append(f"AUROC vs {name} {value:.4f} < {target}")
    if score["accepted"] < calibration.ACCEPT:
        missed.append(f"accepted {score['accepted']:.4f} < {calibration.ACCEPT}")
    return missed


def choose_score(scores: dict[str, dict[str, Any]]) -> str:
    """The score meeting the most targets, then with the best worst AUROC."""
    return max(
        scores,
        key=lambda k: (-len(missed_targets(scores[k])), min(scores[k]["auroc"].values())),
    )


def fit_and_store(
    path: str | Path,
    *,
    data_dir: str | None = None,
    score: str = TRAINING_SCORE,
    train_images: int = 5000,
) -> dict[str, Any]:
    """Fits the temperature and the `score` threshold (95% accepted) on the whole validation
    split and stores them in the record of the step research.serving.model_dir picks (with the
    feature
    statistics, from the first `train_images` training images, for 'mahalanobis'). No outlier
    sets and no report: research.train calls this after training; the command measures."""
    directory, step, record = model_dir.pick_checkpoint(path)
    clf = Classifier.load(path)
    source = record.config.get("data_source")  # None: the prepared tfds dataset
    held_out = record.config.get("validation_per_class", arrays.DEFAULT_VALIDATION_PER_CLASS)
    read = functools.partial(load_arrays, source=source, validation_per_class=held_out)
    images, labels = read(record.dataset, "validation", data_dir)
    logits, features, stages = clf.outputs_arrays(images)
    temperature = calibration.fit_temperature(logits, labels)
    stats = None
    needed = calibration.needed_statistics(score)
    if needed:
        train_split = record.config.get("train_split") or "train"
        train, train_labels = read(record.dataset, train_split, data_dir, train_images)
        _, train_features, train_stages = clf.outputs_arrays(train)
        stats = calibration.fit_feature_statistics(
            train_features, train_labels, record.num_classes
        ) | calibration.fit_activation_statistics(train_stages)
        if "+" in score:
            stats = calibration.fit_standardisation(
                score, logits, features, temperature, stats, stages
            )
        stats = {k: v for k, v in stats.items() if k in needed}
        model_dir.write_statistics(directory, step, stats)
    scores = calibration.unknown_scores(score, logits, features, temperature, stats, stages)
    threshold = calibration.acceptance_threshold(np.asarray(scores))
    sets = fit_sets(logits, labels, temperature)
    updated = record.replace(
        temperature=temperature,
        unknown_score=score,
        unknown_threshold=threshold,
        set_method=sets["method"],
        set_threshold=sets["thresholds"][sets["method"]],
        set_coverage=sets["coverage"],
    )
    model_dir.write_record(directory, step, updated)
    return {
        "step": step,
        "temperature": temperature,
        "unknown_score": score,
        "unknown_threshold": threshold,
        "set_method": updated.set_method,
        "set_threshold": updated.set_threshold,
        "validation_before": calibration.calibration_report(logits, labels, 1.0),
    }


# ----------------------------------------------------------------------------- report


def format_summary(result: dict[str, Any], chosen: str) -> str:
    lines = [f"method: {result['method']}", f"temperature {result['temperature']:.4f}"]
    for when in ("before", "after"):
        r = result[when]
        lines.append(
            f"{result['report_split']} {when:>6} (T={r['temperature']:.3f}): accuracy "
            f"{r['accuracy']:.4f}  confidence {r['mean_confidence']:.4f}  ECE {r['ece']:.4f}  "
            f"NLL {r['nll']:.4f}  Brier {r['brier']:.4f}"
        )
    sets = result["sets"]
    for method, r in sets["reported"].items():
        mark = "*" if method == sets["method"] else " "
        lines.append(
            f"{mark} {method} sets at {sets['coverage']:.0%} ({sets['report_split']}): "
            f"coverage {r['coverage']:.4f}  mean size {r['mean_size']:.3f}  "
            f"one class {r['single']:.3f}"
        )
    for kind, s in result["scores"].items():
        aurocs = "  ".join(f"{k} {v:.4f}" for k, v in s["auroc"].items())
        rejected = "  ".join(f"{k} {v:.3f}" for k, v in s["rejected"].items())
        mark = "*" if kind == chosen else " "
        lines.append(
            f"{mark} {kind:<12} accepted {s['accepted']:.4f}  AUROC: {aurocs}  rejected: {rejected}"
        )
        if missed := missed_targets(s):
            lines.append(f"    misses: {'; '.join(missed)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
