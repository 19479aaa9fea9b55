"""Calibration and the "unknown" answer: metrics, fits, scores, and their round trip."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from research import calibrate
from research.data import datasets
from research.evaluation import calibrate as calibrate_lib
from research.evaluation import plots
from research.serving import calibration, conformal, model_dir
from research.serving.batching import BATCH_BUCKETS
from research.serving.classifier import Classifier
from research.serving.errors import IncompatibleModelError


def _softmax(logits: np.ndarray) -> np.ndarray:
    """An independent NumPy reference for the tests, not the project's softmax."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- metrics

# Two images in the top bin (14/15, 1], one right and one wrong; two right ones in (8/15, 9/15].
HAND_PROBS = np.array([[0.95, 0.05], [0.97, 0.03], [0.55, 0.45], [0.42, 0.58]])
HAND_LABELS = np.array([0, 1, 0, 1])


def test_ece_matches_a_hand_computed_value():
    """ECE = sum over bins of |accuracy - confidence| weighted by the bin's share."""
    top = abs(0.5 - 0.96) * 2 / 4  # images 0, 1
    middle = abs(1.0 - 0.565) * 2 / 4  # images 2, 3
    ece = calibration.expected_calibration_error(HAND_PROBS, HAND_LABELS)
    assert ece == pytest.approx(top + middle, abs=1e-12)
    table = calibration.reliability_bins(HAND_PROBS, HAND_LABELS)
    assert table["count"].tolist() == [0] * 8 + [2] + [0] * 5 + [2]


def test_nll_and_brier_match_hand_computed_values():
    """NLL = mean -log p(true); Brier = mean sum of squared differences to the one-hot label."""
    nll = -(math.log(0.95) + math.log(0.03) + math.log(0.55) + math.log(0.58)) / 4
    brier = (2 * 0.05**2 + 2 * 0.97**2 + 2 * 0.45**2 + 2 * 0.42**2) / 4
    assert calibration.negative_log_likelihood(np.log(HAND_PROBS), HAND_LABELS) == pytest.approx(
        nll, abs=1e-12
    )
    assert calibration.brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(brier, abs=1e-12)


def test_auroc_is_the_share_of_known_over_unknown_pairs_with_ties_as_half():
    """AUROC 1 when separated, 0 when reversed, and ties count one half."""
    assert calibration.auroc([3, 4], [1, 2]) == 1.0
    assert calibration.auroc([1, 2], [3, 4]) == 0.0
    assert calibration.auroc([1, 3], [1, 2]) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_the_threshold_accepts_at_least_the_asked_share():
    """acceptance_threshold keeps 95% plus a one-sided 95% sampling margin of the scores it was
    chosen on (one of them), and so >= 95% of new scores from the same distribution."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1001)
    threshold = calibration.acceptance_threshold(scores, 0.95)
    margin = 1.645 * np.sqrt(0.95 * 0.05 / len(scores))
    accepted = np.mean(scores >= threshold)
    assert 0.95 + margin <= accepted < 0.95 + margin + 2 / len(scores) and threshold in scores
    fresh = rng.normal(size=200_000)  # the population the fitting scores were drawn from
    assert np.mean(fresh >= threshold) >= 0.95


def test_fit_temperature_recovers_the_scale_of_mis_scaled_logits():
    """Labels drawn from softmax(z); logits 3z: the fitted temperature is about 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in _softmax(z)])
    temperature = calibration.fit_temperature(3 * z, labels)
    assert temperature == pytest.approx(3.0, rel=0.08)
    before = calibration.calibration_report(3 * z, labels, 1.0)
    after = calibration.calibration_report(3 * z, labels, temperature)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["brier"] < before["brier"] and after["accuracy"] == before["accuracy"]


def test_scores_rank_far_features_and_flat_logits_lower():
    """Each score is higher for a confident, typical input than for a flat, far one."""
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    features = np.concatenate([means[[0, 1] * 50] + np.random.default_rng(0).normal(size=(100, 2))])
    stats = calibration.fit_feature_statistics(features, np.array([0, 1] * 50), 2)
    rooted = np.sqrt(np.maximum(features, 0))  # the score's feature transform
    np.testing.assert_allclose(stats["means"][1], rooted[1::2].mean(0), rtol=1e-5)
    logits = np.array([[8.0, 0.0], [0.1, 0.0]], np.float32)
    probe = np.array([[0.2, 0.1], [5.0, 30.0]], np.float32)
    stages = np.random.default_rng(1).normal(size=(100, 3))
    stats |= calibration.fit_activation_statistics(stages)
    for kind in ("energy+mahalanobis", "energy+activations"):
        stats = calibration.fit_standardisation(
            kind, np.tile(logits[:1], (100, 1)), features, 1.0, stats, stages
        )
    probe_stages = np.array([[0.1, 0.0, -0.1], [6.0, -6.0, 6.0]], np.float32)
    for kind in calibration.OUTPUT_SCORES:
        scores = calibration.unknown_scores(kind, logits, probe, 1.0, stats, probe_stages)
        scores = np.asarray(scores)
        assert scores[0] > scores[1], kind
    with pytest.raises(ValueError, match="energy"):
        calibration.unknown_scores("entropy", logits, probe, 1.0)


def _smooth_images(count: int, seed: int) -> np.ndarray:
    """Photo-like uint8 [count, 32, 32, 3]: upsampled colour noise plus fine grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (count, 8, 8, 3))
    smooth = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def test_the_pixel_score_puts_a_text_like_page_below_images_like_its_fitting_ones():
    """'pixels': fitted on photo-like images, a new one scores above a white page with black
    lines (flat, sharp-edged, mostly white); every statistic is in [0, 1]; without the images
    the score says what it needs."""
    stats = calibration.fit_pixel_statistics(_smooth_images(200, seed=0))
    page = np.full((1, 32, 32, 3), 255, np.uint8)
    page[:, 4:28:4, 3:29] = 0
    probe = np.concatenate([_smooth_images(1, seed=1), page])
    values = np.asarray(calibration.pixel_statistics(probe))
    assert values.shape == (2, len(calibration.PIXEL_STATISTICS))
    assert ((values >= 0) & (values <= 1)).all()
    logits = np.zeros((2, 3), np.float32)
    scores = np.asarray(calibration.unknown_scores("pixels", logits, None, 1.0, stats, None, probe))
    assert scores[0] > scores[1]
    with pytest.raises(ValueError, match="images"):
        calibration.unknown_scores("pixels", logits, None, 1.0, stats)


def test_synthetic_outliers_are_seeded_and_shaped():
    """Noise and flat-colour images: uint8, the asked shape, the same for the same seed."""
    noise = calibration.noise_images(6, (8, 8, 3), seed=1)
    flat = calibration.flat_images(6, (8, 8, 1), seed=1)
    assert noise.shape == (6, 8, 8, 3) and noise.dtype == np.uint8
    assert flat.shape == (6, 8, 8, 1) and (flat == flat[:, :1, :1]).all()
    np.testing.assert_array_equal(noise, calibration.noise_images(6, (8, 8, 3), seed=1))


def test_the_reliability_diagram_is_drawn_for_empty_and_full_bins():
    """render_reliability draws both panels, skipping empty bins."""
    table = calibration.reliability_bins(HAND_PROBS, HAND_LABELS)
    table = {k: np.where(np.isnan(v), None, v).tolist() for k, v in table.items()}
    image = plots.render_reliability(table, table, "hand", temperature=1.5)
    assert isinstance(image, Image.Image) and image.width > 2 * plots.RELIABILITY_SIDE


# ----------------------------------------------------------------------------- tiny models


def _validation(color_dataset) -> tuple[np.ndarray, np.ndarray]:
    name, data_dir = color_dataset
    pairs = list(datasets.load_split(name, "validation", data_dir).as_numpy_iterator())
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_calibration_lowers_nll_on_a_deliberately_mis_scaled_tiny_model(trained, color_dataset):
    """A trained tiny net with its head scaled x8, on validation images a quarter of which are
    mislabelled, is over-confident: the fitted temperature softens it, lowers its NLL and
    leaves its accuracy unchanged."""
    _, workdir, _ = trained
    clf = Classifier.load(workdir)
    head = clf.model.head.kernel
    head[...] = head[...] * 8.0
    overconfident = Classifier(clf.model, clf.record)
    images, labels = _validation(color_dataset)
    wrong = np.arange(len(labels)) % 4 == 0
    labels = np.where(wrong, (labels + 1) % 3, labels)
    logits, _, _ = overconfident.outputs_arrays(images)
    temperature = calibration.fit_temperature(logits, labels)
    before = calibration.calibration_report(logits, labels, 1.0)
    after = calibration.calibration_report(logits, labels, temperature)
    assert temperature > 2.0 and before["accuracy"] < 0.9
    assert after["nll"] < before["nll"] and after["accuracy"] == before["accuracy"]
    calibrated = Classifier(clf.model, clf.record.replace(temperature=temperature))
    np.testing.assert_allclose(
        calibrated.predict(list(images)), _softmax(logits / temperature), rtol=1e-4, atol=1e-6
    )


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def test_temperature_threshold_and_statistics_round_trip_through_write_record(model_copy):
    """write_record + write_statistics, then Classifier.load: the record and arrays come back,
    and classify applies them; export carries them along."""
    directory, step, record = model_dir.pick_checkpoint(model_copy)
    clf = Classifier.load(model_copy)
    images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 90, 180, 255)]
    logits, features, _ = clf.outputs_arrays(np.stack(images))
    rng = np.random.default_rng(0)
    d = features.shape[1]
    stats = {
        "means": (features[np.arange(10) % 4] + rng.normal(0, 0.1, (10, d))).astype(np.float32),
        "precision": np.diag(rng.uniform(0.5, 2.0, d)).astype(np.float32),
    }
    scores = np.asarray(calibration.unknown_scores("mahalanobis", logits, features, 2.0, stats))
    threshold = float(np.median(scores))
    updated = record.replace(
        temperature=2.0, unknown_score="mahalanobis", unknown_threshold=threshold
    )
    model_dir.write_statistics(directory, step, stats)
    meta_before = json.loads(model_dir.meta_path(directory, step).read_text())
    model_dir.write_record(directory, step, updated)
    meta_after = json.loads(model_dir.meta_path(directory, step).read_text())
    changed = {"temperature", "unknown_threshold", "unknown_score"}
    assert {k: v for k, v in meta_after.items() if k not in changed} == {
        k: v for k, v in meta_before.items() if k not in changed
    }

    loaded = Classifier.load(model_copy)
    assert loaded.record == updated
    result = loaded.classify(images)
    np.testing.assert_allclose(result.probs, _softmax(logits / 2.0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(result.unknown, result.scores < threshold)
    assert result.unknown.any() and not result.unknown.all()

    exported = Classifier.load(loaded.export(model_copy.parent / "exported"))
    assert exported.record == updated
    np.testing.assert_array_equal(exported.statistics["precision"], stats["precision"])


def test_a_mahalanobis_record_without_statistics_is_refused(model_copy):
    """A record naming the feature-space score needs its statistics beside it."""
    directory, step, record = model_dir.pick_checkpoint(model_copy)
    model_dir.write_record(directory, step, record.replace(unknown_score="mahalanobis"))
    with pytest.raises(IncompatibleModelError, match="statistics"):
        Classifier.load(model_copy)


def test_classify_with_a_feature_score_never_recompiles(model_copy):
    """After warm-up, classify with the Mahalanobis score runs on the compiled buckets."""
    clf = Classifier.load(model_copy)
    d = clf.outputs_arrays(np.zeros((1, 32, 32, 3), np.uint8))[1].shape[1]
    stats = {"means": np.zeros((10, d), np.float32), "precision": np.eye(d, dtype=np.float32)}
    feature = Classifier(
        clf.model, clf.record.replace(unknown_score="mahalanobis", unknown_threshold=-1.0), stats
    )
    feature.warmup()
    compiled = feature._forward._cache_size()
    assert compiled == len(BATCH_BUCKETS)
    for n in (1, 3, 40):
        feature.classify([np.zeros((20 + n, 30, 3), np.uint8)] * n)
    assert feature._forward._cache_size() == compiled


def test_the_calibrate_command_fits_on_validation_and_stores_the_record(trained, tmp_path, capsys):
    """research.calibrate on a workdir with a validation split: stores the temperature fitted on
    it and a threshold accepting 95% of it; reports cross-validated figures and a diagram."""
    config, workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(copy), "--data_dir", config.data_dir, "--out", str(out)]
    assert calibrate.main([*argv, "--train_images", "30", "--score", "energy"]) == 0
    report = json.loads((out / "calibration.json").read_text())
    assert report["fit_split"] == "validation" and len(report["folds"]) == 2
    assert (out / "reliability.png").is_file() and (out / "risk_coverage.png").is_file()
    record = Classifier.load(copy).record
    assert record.temperature == pytest.approx(report["temperature"])
    sets = report["sets"]
    assert record.set_method == sets["method"]
    assert record.set_threshold == pytest.approx(sets["thresholds"][sets["method"]])
    assert all(len(f["sets"]["reports"]) == 2 for f in report["folds"])
    assert record.unknown_score == "energy"
    assert record.unknown_threshold == pytest.approx(report["thresholds"]["energy"])
    assert "2-fold" in capsys.readouterr().out
    images, _ = _validation((config.dataset, config.data_dir))
    accepted = ~Classifier.load(copy).classify(list(images)).unknown
    assert accepted.mean() >= 0.95


def test_sets_only_stores_the_sets_and_keeps_every_answer(trained, tmp_path):
    """research.calibrate --sets_only adds the prediction set at the stored temperature and
    leaves the temperature, the "unknown" score and its threshold as they were."""
    config, workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    directory, step, before = model_dir.pick_checkpoint(copy)
    model_dir.write_record(directory, step, before.replace(temperature=2.5))
    argv = ["--checkpoint", str(copy), "--data_dir", config.data_dir, "--out", str(tmp_path)]
    assert calibrate.main([*argv, "--train_images", "30", "--sets_only"]) == 0
    after = Classifier.load(copy).record
    assert after.temperature == 2.5
    assert (after.unknown_score, after.unknown_threshold) == (
        before.unknown_score,
        before.unknown_threshold,
    )
    sets = json.loads((tmp_path / "calibration.json").read_text())["sets"]
    assert sets["temperature"] == 2.5
    assert after.set_threshold == pytest.approx(sets["thresholds"][after.set_method])


def test_evaluate_reports_calibration_at_t1_and_the_record_temperature(trained, tmp_path):
    """research.evaluate reports ECE/NLL/Brier before (T=1) and after (the record's T) and
    draws the reliability diagram."""
    from research import evaluate

    config, workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    directory, step, record = model_dir.pick_checkpoint(copy)
    model_dir.write_record(directory, step, record.replace(temperature=3.0))
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(copy), "--data_dir", config.data_dir, "--split", "validation"]
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["calibration"]["before"], metrics["calibration"]["after"]
    assert (before["temperature"], after["temperature"]) == (1.0, 3.0)
    assert before["accuracy"] == after["accuracy"] == metrics["accuracy"]
    assert after["mean_confidence"] < before["mean_confidence"]
    assert metrics["loss"] == pytest.approx(after["nll"], rel=1e-5)
    assert (out / "reliability.png").is_file()


def test_training_on_a_validation_split_stores_a_fitted_temperature_and_threshold(
    color_dataset, tmp_path
):
    """research.train, evaluating on 'validation', fits the temperature and the threshold on it
    and stores them in the chosen step's record."""
    from research import configs, train

    name, data_dir = color_dataset
    config = configs.get_config(
        "tiny", dataset=name, data_dir=data_dir, epochs=1.0, eval_split="validation"
    )
    result = train.train_and_evaluate(config, tmp_path / "run")
    record = Classifier.load(tmp_path / "run").record
    assert record.temperature == pytest.approx(result["calibration"]["temperature"])
    assert record.temperature != 1.0 and record.unknown_threshold is not None
    assert record.set_threshold is not None
    assert record.unknown_score == calibrate_lib.TRAINING_SCORE


def test_with_report_split_test_it_fits_on_all_of_validation_and_reports_on_test():
    """calibrate() given validation and test outputs fits the temperature and the threshold on
    the whole validation split and reports every figure on test, which it never fits on."""
    rng = np.random.default_rng(0)

    def split(n: int, scale: float) -> dict[str, np.ndarray]:
        labels = rng.integers(0, 3, n)
        logits = rng.normal(0, 1, (n, 3)) + scale * np.eye(3)[labels]
        return {
            "logits": logits.astype(np.float32),
            "labels": labels,
            "features": np.abs(rng.normal(size=(n, 4))).astype(np.float32),
            "stages": rng.normal(size=(n, 2)).astype(np.float32),
        }

    outputs = {
        f"{name}/{key}": value
        for name, n, scale in (("train", 300, 6.0), ("validation", 400, 3.0), ("test", 500, 3.0))
        for key, value in split(n, scale).items()
    }
    for name in ("noise", "flat"):
        outputs |= {f"{name}/{k}": v for k, v in split(50, 0.0).items() if k != "labels"}
        outputs[f"{name}/labels"] = np.zeros(0)
    result = calibrate_lib.calibrate(outputs, 3, scores=["max_softmax"])
    assert result["fit_split"] == "validation" and result["report_split"] == "test"
    fitted = calibration.fit_temperature(outputs["validation/logits"], outputs["validation/labels"])
    assert result["temperature"] == pytest.approx(fitted)
    after = calibration.calibration_report(outputs["test/logits"], outputs["test/labels"], fitted)
    assert result["after"] == pytest.approx(after)
    known = np.exp(calibration.log_probabilities(outputs["validation/logits"], fitted)).max(-1)
    assert result["thresholds"]["max_softmax"] == pytest.approx(
        calibration.acceptance_threshold(known)
    )
    # The prediction sets too: fitted on validation, reported on test.
    probs = np.exp(calibration.log_probabilities(outputs["validation/logits"], fitted))
    lac = conformal.conformity_scores("lac", probs, outputs["validation/labels"])
    assert result["sets"]["thresholds"]["lac"] == pytest.approx(conformal.fit_threshold(lac))
    assert result["sets"]["report_split"] == "test"
    assert result["sets"]["reported"]["lac"]["count"] == 500
