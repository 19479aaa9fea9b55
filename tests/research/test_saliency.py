"""Saliency heatmaps (research.serving.saliency) and the model's-eye view
(research.serving.expectations)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image, ImageDraw, ImageOps

from research import configs
from research.nets import models
from research.serving import expectations, saliency
from research.serving.classifier import Classifier
from research.serving.preprocess import preprocess_image
from research.train.checkpoints import serving_record

CIFAR_ARCHIVE = Path(__file__).resolve().parents[3] / "shared/datasets/cifar10-jpeg/train.tar.gz"


@pytest.fixture(scope="module")
def rgb_classifier(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir)


@pytest.fixture(scope="module")
def grey_classifier(tiny_fmnist_model_dir) -> Classifier:
    return Classifier.load(tiny_fmnist_model_dir)


@pytest.fixture(scope="module")
def baseline_classifier() -> Classifier:
    """A random `baseline` net (no conv blocks: Grad-CAM reads its last convolution)."""
    config = configs.get_config("tiny", dataset="cifar10", model="baseline", widths=(8, 8, 16))
    spec = configs.DATASETS["cifar10"]
    names = spec.class_names
    model = models.create_model(
        config, num_classes=10, image_shape=(32, 32, 3), mean=spec.mean, std=spec.std,
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    record = serving_record(
        config, class_names=names, image_shape=(32, 32, 3), mean=spec.mean, std=spec.std, step=1
    )
    return Classifier(model, record)


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, channels), np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def _assert_heatmap(heat: np.ndarray, shape: tuple[int, int]) -> None:
    assert heat.shape == shape
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0


# ----------------------------------------------------------------------------- explain


@pytest.mark.parametrize("method", saliency.METHODS)
@pytest.mark.parametrize("size", [(32, 32), (37, 53), (480, 641), (3, 5)])
def test_explain_covers_the_original_image_of_an_rgb_model(rgb_classifier, method, size):
    """The heatmap has the original image's height and width, float32, finite, in [0, 1]."""
    heat = saliency.explain(rgb_classifier, _noise(*size), method=method)
    _assert_heatmap(heat, size)
    assert heat.max() > 0.0  # a random net still looks somewhere


@pytest.mark.parametrize("method", saliency.METHODS)
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_explain_covers_the_original_image_of_a_grey_model(grey_classifier, method, mode):
    """A grey model explains images of any mode and odd size over their original size."""
    image = _noise(29, 45, 3, seed=1).convert(mode)
    _assert_heatmap(saliency.explain(grey_classifier, image, method=method), (29, 45))


@pytest.mark.parametrize("method", saliency.METHODS)
def test_explain_takes_uint8_arrays(grey_classifier, method):
    """A uint8 HxW array is explained like the image it holds."""
    array = np.asarray(_noise(31, 17, 1))
    heat = saliency.explain(grey_classifier, array, method=method)
    np.testing.assert_allclose(
        heat, saliency.explain(grey_classifier, Image.fromarray(array), method=method)
    )


@pytest.mark.parametrize("method", saliency.METHODS)
def test_explain_of_a_constant_image_is_finite(rgb_classifier, method):
    """A flat image (no gradient anywhere, or all of it) still gives a finite map in [0, 1]."""
    flat = Image.new("RGB", (40, 30), (128, 128, 128))
    _assert_heatmap(saliency.explain(rgb_classifier, flat, method=method), (30, 40))


@pytest.mark.parametrize("method", saliency.METHODS)
def test_explain_follows_the_exif_orientation(rgb_classifier, method):
    """An image stored sideways (EXIF orientation 6) is explained over its upright size."""
    stored = _noise(20, 50)  # 50 wide, 20 high as stored; 20 wide, 50 high upright
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    heat = saliency.explain(rgb_classifier, Image.open(io.BytesIO(buffer.getvalue())))
    assert heat.shape == (50, 20)


@pytest.mark.parametrize("method", saliency.METHODS)
def test_explain_reads_the_last_convolution_of_a_net_without_blocks(baseline_classifier, method):
    """The baseline net (convolutions in a list, no conv blocks) is explained too."""
    _assert_heatmap(saliency.explain(baseline_classifier, _noise(33, 31), method=method), (33, 31))


def test_grad_input_is_dark_where_the_image_equals_the_dataset_mean(rgb_classifier):
    """Gradient x input measures pixels from the mean: a mean-coloured background stays cold
    and the one patch that differs holds the heat."""
    mean = np.round(np.asarray(configs.DATASETS["cifar10"].mean)).astype(np.uint8)
    array = np.broadcast_to(mean, (32, 32, 3)).copy()
    array[10:20, 12:22] = np.asarray(_noise(10, 10, seed=3))
    heat = saliency.explain(rgb_classifier, array, method="grad_input")
    inside = heat[10:20, 12:22].mean()
    outside = np.ones(heat.shape, bool)
    outside[8:22, 10:24] = False  # the patch and the blur's reach around it
    assert heat[outside].mean() < 0.05 * inside


def test_unknown_methods_are_refused_with_the_valid_ones(rgb_classifier):
    """A misspelt method names the valid ones."""
    with pytest.raises(ValueError, match="gradcam, grad_input"):
        saliency.explain(rgb_classifier, _noise(32, 32), method="gradcram")


@pytest.mark.parametrize("method", saliency.METHODS)
def test_new_image_sizes_never_recompile(rgb_classifier, method):
    """Images of new sizes and modes reuse the one compiled heatmap function per method."""
    saliency.explain(rgb_classifier, _noise(32, 32), method=method)
    compiled = saliency._compiled(rgb_classifier, method)
    before = compiled._cache_size()
    for size in [(7, 9), (100, 61), (32, 33), (512, 384)]:
        saliency.explain(rgb_classifier, _noise(*size), method=method)
    saliency.explain(rgb_classifier, _noise(45, 45).convert("L"), method=method)
    assert saliency._compiled(rgb_classifier, method) is compiled
    assert compiled._cache_size() == before == 1


def test_warmup_compiles_what_explain_then_reuses(grey_classifier):
    """After warmup, explaining a new image compiles nothing more."""
    saliency.warmup(grey_classifier, "grad_input")
    compiled = saliency._compiled(grey_classifier, "grad_input")
    assert compiled._cache_size() == 1
    saliency.explain(grey_classifier, _noise(64, 48), method="grad_input")
    assert compiled._cache_size() == 1


# ----------------------------------------------------------------------------- overlay


def test_overlay_is_an_rgb_image_of_the_original_size(rgb_classifier):
    """The overlay for the web is RGB, the original's size, and tints where the heat is."""
    image = _noise(37, 53, 1).convert("L")
    heat = np.zeros((37, 53), np.float32)
    heat[:, 30:] = 1.0
    out = saliency.overlay(image, heat, alpha=0.5)
    assert out.mode == "RGB" and out.size == (53, 37)
    grey = np.asarray(image.convert("RGB"), np.int16)
    tinted = np.asarray(out, np.int16)
    np.testing.assert_array_equal(tinted[:, :30], grey[:, :30])  # cold: the image unchanged
    assert np.abs(tinted[:, 30:] - grey[:, 30:]).mean() > 20


def test_overlay_resizes_a_heatmap_of_another_size(rgb_classifier):
    """A heatmap at another resolution is stretched over the image; NaNs are drawn cold."""
    heat = np.full((3, 3), np.nan, np.float32)
    out = saliency.overlay(_noise(40, 20), heat)
    assert out.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_noise(40, 20)))


def test_explain_and_overlay_together(rgb_classifier):
    """The web's saliency PNG: explain, then overlay, at the upload's size."""
    image = _noise(61, 47)
    out = saliency.overlay(image, saliency.explain(rgb_classifier, image))
    assert out.size == image.size and out.mode == "RGB"


# ----------------------------------------------------------------------------- expectations


def _sneaker(dark_on_light: bool, size: tuple[int, int] = (280, 180)) -> Image.Image:
    """A sneaker drawn as a filled side view: sole, toe and heel, with laces."""
    ink, paper = (20, 235) if dark_on_light else (235, 20)
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    w, h = size
    upper = [
        (0.08 * w, 0.70 * h), (0.12 * w, 0.35 * h), (0.40 * w, 0.30 * h), (0.55 * w, 0.45 * h),
        (0.85 * w, 0.55 * h), (0.93 * w, 0.70 * h),
    ]  # fmt: skip
    draw.polygon(upper, fill=ink)
    draw.rectangle((0.06 * w, 0.70 * h, 0.95 * w, 0.80 * h), fill=ink)  # the sole
    for x in (0.30, 0.38, 0.46):
        draw.line((x * w, 0.38 * h, (x + 0.06) * w, 0.48 * h), fill=paper, width=3)
    return image


def test_a_dark_on_white_sneaker_is_warned_about_for_fashion_mnist(grey_classifier):
    """A dark drawing on white, for a light-on-dark model, draws the polarity warning."""
    pixels = preprocess_image(_sneaker(dark_on_light=True), grey_classifier.image_shape)
    warnings = expectations.check(grey_classifier.record, pixels)
    assert len(warnings) == 1
    assert "light garment or shoe on a dark background" in warnings[0]
    assert "Try inverting it" in warnings[0]


def test_a_white_on_black_sneaker_passes_for_fashion_mnist(grey_classifier):
    """The same drawing white on black is what the model expects: no warning."""
    pixels = preprocess_image(_sneaker(dark_on_light=False), grey_classifier.image_shape)
    assert expectations.check(grey_classifier.record, pixels) == []


def test_a_light_background_is_warned_about_for_mnist_by_name():
    """The dataset name works in place of a record; MNIST's message names digits."""
    pixels = preprocess_image(_sneaker(dark_on_light=True), (28, 28, 1))
    (warning,) = expectations.check("mnist", pixels)
    assert "light digit on a dark background" in warning


def test_photos_on_white_never_draw_the_polarity_warning_for_cifar10(rgb_classifier):
    """CIFAR-10 has no fixed background: a dark object on white is a fine photo."""
    image = _sneaker(dark_on_light=True).convert("RGB")
    pixels = preprocess_image(image, rgb_classifier.image_shape)
    assert expectations.check(rgb_classifier.record, pixels) == []


@pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason="the CIFAR-10 JPEG archive is not here")
def test_real_cifar10_photos_draw_no_warning():
    """200 CIFAR-10 JPEGs (20 per class, validation images) draw no warning at all."""
    pixels, per_class = [], {}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            label = Path(member.name).parent.name
            wanted = Path(member.name).stem >= "4500" and per_class.get(label, 0) < 20
            if member.isfile() and wanted:
                per_class[label] = per_class.get(label, 0) + 1
                image = Image.open(io.BytesIO(tar.extractfile(member).read()))
                pixels.append(preprocess_image(image, (32, 32, 3)))
            if len(pixels) == 200:
                break
    assert len(pixels) == 200
    assert [w for p in pixels for w in expectations.check("cifar10", p)] == []


@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist", "unknown_dataset"])
def test_a_flat_image_is_warned_about_for_any_model(dataset):
    """One flat colour is nothing to recognise, whatever the model (and it is not a
    background-polarity problem, so that warning is not added)."""
    pixels = np.full((28, 28, 3), 250, np.uint8)
    (warning,) = expectations.check(dataset, pixels)
    assert "flat colour" in warning


def test_a_model_of_an_unknown_dataset_gets_no_polarity_warning():
    """Without a DatasetSpec nothing is known of the background, so nothing is claimed."""
    pixels = np.asarray(ImageOps.invert(_sneaker(dark_on_light=False)).resize((28, 28)))
    assert expectations.check("my_sketches", pixels) == []
    assert expectations.expects("my_sketches") == ""


def test_every_known_dataset_says_what_its_model_expects():
    """Each DatasetSpec states its expectation in words; light-on-dark ones say so."""
    for spec in configs.DATASETS.values():
        assert spec.expects and spec.subject, spec.name
    assert expectations.expects("fashion_mnist") == (
        "a single garment or shoe, light on a dark background, centred"
    )
    assert configs.DATASETS["mnist"].background == "dark"
    assert configs.DATASETS["cifar10"].background == ""
