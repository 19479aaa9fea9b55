"""The out-of-scope check set (research.data.out_of_scope) and its before/after evaluation
(research.evaluation.out_of_scope)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from research.data import out_of_scope
from research.evaluation import out_of_scope as evaluation
from research.serving.classifier import Classifier

OFFLINE_KINDS = ("text", "icons", "shapes", "drawings")  # "pages" needs Chromium


def test_the_check_set_is_the_same_for_the_same_seed_and_names_no_class(tmp_path):
    """Two runs with one seed write the same files; no rendered word is a class name."""
    first = out_of_scope.generate(tmp_path / "a", count=3, kinds=OFFLINE_KINDS)
    out_of_scope.generate(tmp_path / "b", count=3, kinds=OFFLINE_KINDS)
    assert first["shapes"] == first["drawings"] == first["text"] == 3
    for kind in OFFLINE_KINDS:
        for file in sorted((tmp_path / "a" / kind).glob("*.png")):
            assert file.read_bytes() == (tmp_path / "b" / kind / file.name).read_bytes()
    assert not set(out_of_scope.WORDS) & out_of_scope.class_words()
    loaded = out_of_scope.load(tmp_path / "a")
    assert all(image.mode == "RGB" for images in loaded.values() for image in images)


def test_loading_an_empty_folder_says_how_to_make_the_set(tmp_path):
    """No images: a FileNotFoundError naming the command."""
    with pytest.raises(FileNotFoundError, match="research.data out-of-scope"):
        out_of_scope.load(tmp_path)


def test_the_evaluation_reports_before_and_after_on_held_out_validation(tiny_model_dir):
    """Before and after: AUROC and share flagged per kind and overall, validation flagged on
    the halves not fitted on, and statistics and a threshold for the whole split."""
    clf = Classifier.load(tiny_model_dir)
    rng = np.random.default_rng(0)
    coarse = rng.uniform(40, 215, (64, 8, 8, 3))
    validation = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)
    page = Image.new("RGB", (64, 64), "white")
    shapes = out_of_scope.make_shapes(np.random.default_rng(1), 6)
    result = evaluation.evaluate(
        clf, validation, {"pages": [page] * 4, "shapes": shapes}, score="energy+pixels"
    )
    for when in ("before", "after", "before_as_served"):
        assert (
            set(result[when]["auroc"])
            == set(result[when]["flagged"])
            == {
                "pages",
                "shapes",
                "all",
            }
        )
        assert 0 <= result[when]["validation_flagged"] <= 1
    assert len(result["after"]["folds"]) == 2
    assert result["after"]["validation_flagged"] <= 0.1
    assert {"pixels_center", "pixels_precision", "pixels_mean", "energy_std"} <= set(
        result["statistics"]
    )
    assert np.isfinite(result["stored_threshold"])
    assert "after energy+pixels" in evaluation.format_result(result)
