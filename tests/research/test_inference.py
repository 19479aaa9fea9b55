"""The serving seam: Classifier.load/predict, preprocessing shared with evaluation."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from research.data import datasets, pipeline
from research.nets import models
from research.serving import model_dir
from research.serving.batching import BATCH_BUCKETS
from research.serving.classifier import Classifier
from research.serving.errors import IncompatibleModelError, ModelNotFoundError
from research.serving.preprocess import preprocess, preprocess_image
from research.serving.record import ServingRecord


@pytest.fixture(scope="module")
def classifier(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    clf.warmup()
    return clf


def _softmax(logits: np.ndarray) -> np.ndarray:
    """An independent NumPy reference for the tests, not the project's softmax."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _encoded(image: Image.Image, format: str, **options) -> Image.Image:
    """The image as a decoder gives it back from a file of `format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


# ----------------------------------------------------------------------------- loading


def test_predict_matches_the_evaluation_path_on_the_same_images(trained, color_dataset):
    """Classifier.predict on PIL images == training's evaluation probabilities (tf.data path)."""
    config, workdir, _ = trained
    name, data_dir = color_dataset
    clf = Classifier.load(workdir)
    eval_ds = pipeline.create_eval_dataset(config, "validation", (32, 32, 3))
    batch = next(pipeline.iterate_padded_batches(eval_ds, 16))
    log_probs = models.eval_step(clf.model, batch["image"], clf.record.flip_tta)
    expected = np.exp(np.asarray(log_probs, np.float64)[batch["mask"]])
    raw = [
        image for image, _ in datasets.load_split(name, "validation", data_dir).as_numpy_iterator()
    ]
    as_png = [_encoded(Image.fromarray(array), "PNG") for array in raw]  # as an upload arrives
    np.testing.assert_allclose(clf.predict(as_png), expected, rtol=1e-5, atol=1e-6)


def test_the_record_temperature_softens_probabilities_without_recompiling(trained):
    """Temperature 2 gives softmax(logits / 2); another temperature reuses the compilation."""
    _, workdir, _ = trained
    clf = Classifier.load(workdir)
    assert clf.record.temperature == 1.0
    warm = Classifier(clf.model, clf.record.replace(temperature=2.0))
    images = [np.full((32, 32, 3), c, np.uint8) for c in ((200, 40, 40), (40, 200, 40))]
    batch = preprocess(images, clf.image_shape)
    logits = models.predict_logits(clf.model, batch, flip_tta=clf.record.flip_tta)
    logits = np.asarray(logits, np.float64)
    assert np.ptp(logits, axis=-1).min() > 0.01  # a trained model, not a uniform one
    probs = warm.predict(images)
    np.testing.assert_allclose(probs, _softmax(logits / 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.predict(images), _softmax(logits), rtol=1e-5, atol=1e-6)
    assert (probs.max(-1) < clf.predict(images).max(-1)).all()

    compiled = warm._forward._cache_size()
    padded = np.concatenate([batch, np.zeros((BATCH_BUCKETS[1] - 2, 32, 32, 3), np.uint8)])
    sharper = np.asarray(warm._forward(warm._state, np.float32(0.5), None, padded)[0])[:2]
    np.testing.assert_allclose(sharper, _softmax(logits / 0.5), rtol=1e-4, atol=1e-6)
    assert warm._forward._cache_size() == compiled


def test_the_classifier_exposes_the_serving_record_of_the_chosen_step(classifier, tiny_model_dir):
    """Classifier.record is the typed record on disk; its fields back the attributes."""
    directory, step, record = model_dir.pick_checkpoint(tiny_model_dir)
    assert isinstance(classifier.record, ServingRecord) and classifier.record == record
    assert classifier.class_names == list(record.class_names)
    assert classifier.image_shape == (32, 32, 3) == record.image_shape
    assert (classifier.name, classifier.dataset, classifier.version) == (
        record.name,
        record.dataset,
        record.version,
    )
    assert classifier.metrics == record.metrics and step == record.step
    assert not hasattr(classifier, "meta")


def test_missing_model_directory_has_a_clear_error(tmp_path):
    """Loading from a folder without checkpoints says what it expected."""
    with pytest.raises(ModelNotFoundError, match="research.train"):
        Classifier.load(tmp_path)


def _rewrite_meta(src, dst, change) -> None:
    shutil.copytree(src, dst)
    path = model_dir.meta_path(dst, model_dir.list_steps(dst)[0])
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _without_flip_tta(meta):
    del meta["flip_tta"]
    return meta


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_without_flip_tta, r"lacks serving-record fields \['flip_tta'\]"),
        (lambda meta: [meta], "not a JSON object"),
        (lambda meta: {**meta, "record_format": 99}, "format 99"),
    ],
    ids=["no-flip_tta", "list", "format-99"],
)
def test_a_foreign_or_old_checkpoint_is_refused_with_the_reason(
    tiny_model_dir, tmp_path, change, reason
):
    """A checkpoint whose meta is no serving record this code reads names the problem."""
    _rewrite_meta(tiny_model_dir, tmp_path / "model", change)
    with pytest.raises(ModelNotFoundError, match=reason) as caught:
        Classifier.load(tmp_path / "model")
    assert str(tmp_path / "model") in str(caught.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: {**m, "class_names": list("abc")}, "do not fit its record"),
        (lambda m: {**m, "model": {**m["model"], "model": "nope"}}, "cannot build.*'nope'"),
    ],
    ids=["3-classes-over-10", "unknown-net"],
)
def test_a_record_its_weights_or_code_cannot_serve_is_an_incompatible_model(
    tiny_model_dir, tmp_path, change, reason
):
    """A record naming 3 classes over a 10-class head, or an unknown net, is refused."""
    _rewrite_meta(tiny_model_dir, tmp_path / "model", change)
    with pytest.raises(IncompatibleModelError, match=reason):
        Classifier.load(tmp_path / "model")


def _weight_files(step_dir) -> list:
    files = (step_dir / "model").rglob("*")
    return sorted(p for p in files if p.is_file() and p.parent.name == "d")


def test_a_truncated_best_checkpoint_falls_back_to_the_next_with_a_warning(
    tiny_model_dir, tmp_path, caplog
):
    """When the best step's weight files are truncated, load warns naming that step and its
    path and serves the next best; when no step restores, the error names each one."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (first,) = model_dir.list_steps(model)
    best = model / str(first + 1)
    shutil.copytree(model / str(first), best)
    meta = json.loads(model_dir.meta_path(model, first + 1).read_text())
    meta.update(step=first + 1, metrics={"eval_accuracy": 0.99})
    model_dir.meta_path(model, first + 1).write_text(json.dumps(meta))
    for path in _weight_files(best):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="research.serving.classifier"):
        clf = Classifier.load(model)
    assert clf.record.step == first
    assert f"step {first + 1}" in caplog.text and str(model) in caplog.text
    for path in _weight_files(model / str(first)):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IncompatibleModelError, match=rf"step {first + 1}.*step {first}"):
        Classifier.load(model)


def test_inference_path_does_not_import_tensorflow(tiny_model_dir):
    """Loading and predicting never imports TensorFlow (the web process stays light)."""
    code = (
        "import sys, numpy as np\n"
        "from research.serving.classifier import Classifier\n"
        f"clf = Classifier.load({str(tiny_model_dir)!r})\n"
        "clf.predict([np.zeros((8, 8, 3), np.uint8)])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# ----------------------------------------------------------------------------- predicting


def test_probabilities_are_one_row_per_image_summing_to_one(classifier):
    """[N, num_classes] float32 rows that sum to 1."""
    images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)]
    probs = classifier.predict(images)
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert classifier.class_names[0] == "airplane"


def test_new_batch_sizes_and_image_sizes_never_recompile(classifier):
    """After warm-up, any number of images of any size runs on the compiled buckets."""
    compiled = classifier._forward._cache_size()
    assert compiled == len(BATCH_BUCKETS)
    for n in (1, 2, 9, 33, BATCH_BUCKETS[-1] + 5):
        classifier.predict([np.zeros((17 + n, 23, 3), np.uint8)] * n)
    assert classifier._forward._cache_size() == compiled


def test_classify_returns_predict_probabilities_with_scores_and_no_recompiles(classifier):
    """classify's probs equal predict's; one score per image; no threshold, nothing unknown."""
    compiled = classifier._forward._cache_size()
    images = [np.full((20 + n, 30, 3), 40 * n, np.uint8) for n in range(5)]
    result = classifier.classify(images)
    assert classifier.record.unknown_threshold is None
    np.testing.assert_array_equal(result.probs, classifier.predict(images))
    assert result.scores.shape == (5,) and result.scores.dtype == np.float32
    assert np.isfinite(result.scores).all()
    assert result.unknown.dtype == bool and not result.unknown.any()
    assert classifier._forward._cache_size() == compiled


def test_the_unknown_flag_follows_the_stored_threshold(classifier):
    """unknown is score < record.unknown_threshold, for a threshold between the scores."""
    images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 60, 120, 180, 255)]
    scores = classifier.classify(images).scores
    assert np.ptp(scores) > 0
    threshold = float(np.median(scores))
    strict = Classifier(classifier.model, classifier.record.replace(unknown_threshold=threshold))
    result = strict.classify(images)
    np.testing.assert_array_equal(result.unknown, scores < threshold)
    assert result.unknown.any() and not result.unknown.all()


def test_model_input_is_the_preprocessed_image(classifier):
    """model_input gives exactly preprocess_image's uint8 pixels at the model's input size."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70), np.uint8))
    pixels = classifier.model_input(image)
    assert pixels.dtype == np.uint8 and pixels.shape == classifier.image_shape
    np.testing.assert_array_equal(pixels, preprocess_image(image, classifier.image_shape))


def test_top_k_lists_labels_best_first(classifier):
    """top_k returns (label, probability) pairs sorted by probability."""
    probs = np.zeros((1, 10), np.float32)
    probs[0, [3, 7, 1]] = [0.5, 0.3, 0.2]
    assert classifier.top_k(probs, 2) == [[("cat", 0.5), ("horse", pytest.approx(0.3))]]


# ----------------------------------------------------------------------------- preprocessing


def _gray(value: int, size=(4, 4)) -> np.ndarray:
    return np.full((size[1], size[0], 1), value, np.uint8)


def test_sixteen_bit_images_equal_their_eight_bit_counterparts():
    """'I;16' (and its byte orders) is divided by 257: v * 257 becomes v, 65535 white."""
    values = np.array([[0, 1, 127, 128], [200, 254, 255, 77]], np.uint8)
    eight = preprocess_image(Image.fromarray(values), (2, 4, 1))
    sixteen = Image.fromarray(values.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(preprocess_image(sixteen, (2, 4, 1)), eight)
    wide = values.astype(np.uint16) * 257
    for mode, dtype in (("I;16B", ">u2"), ("I;16L", "<u2")):
        ordered = Image.frombytes(mode, (4, 2), wide.astype(dtype).tobytes())
        np.testing.assert_array_equal(preprocess_image(ordered, (2, 4, 1)), eight)
    from_png = _encoded(sixteen, "PNG")  # as a 16-bit PNG upload decodes
    np.testing.assert_array_equal(preprocess_image(from_png, (2, 4, 1)), eight)
    mid = preprocess_image(Image.new("I;16", (4, 4), 32768), (4, 4, 1))
    np.testing.assert_array_equal(mid, _gray(128))  # mid-grey, not white


def test_thirty_two_bit_images_are_sixteen_bit_only_above_255():
    """Mode 'I' up to 255 is already 8-bit; with larger values it is 16-bit data."""
    low = Image.fromarray(np.array([[0, 100, 255]], np.int32))
    assert low.mode == "I"
    np.testing.assert_array_equal(preprocess_image(low, (1, 3, 1))[..., 0], [[0, 100, 255]])
    high = Image.fromarray(np.array([[0, 100 * 257, 65535]], np.int32))
    np.testing.assert_array_equal(preprocess_image(high, (1, 3, 1))[..., 0], [[0, 100, 255]])


def test_float_images_in_zero_to_one_are_scaled_and_others_clipped():
    """Mode 'F' in [0, 1] is multiplied by 255; another range is clipped to 0..255."""
    unit = Image.fromarray(np.array([[0.0, 0.2, 1.0]], np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(preprocess_image(unit, (1, 3, 1))[..., 0], [[0, 51, 255]])
    wide = Image.fromarray(np.array([[-5.0, 100.4, 300.0]], np.float32))
    np.testing.assert_array_equal(preprocess_image(wide, (1, 3, 1))[..., 0], [[0, 100, 255]])
    from_tiff = _encoded(Image.fromarray(np.full((2, 2), 0.2, np.float32)), "TIFF")
    np.testing.assert_array_equal(preprocess_image(from_tiff, (2, 2, 3)), np.full((2, 2, 3), 51))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("LA", (4, 4), (0, 128)), 127),  # half-transparent black over white
        (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 255),  # fully transparent: white
        (Image.new("RGBA", (4, 4), (0, 0, 0, 255)), 0),  # opaque: itself
        (Image.new("PA", (4, 4), (0, 128)), 127),  # palette index 0 is black
    ],
    ids=["la", "rgba-clear", "rgba-opaque", "pa"],
)
def test_alpha_is_composited_onto_white(image, expected):
    """Transparent pixels show the white background in proportion to their transparency."""
    np.testing.assert_array_equal(preprocess_image(image, (4, 4, 1)), _gray(expected))
    np.testing.assert_array_equal(preprocess_image(image, (4, 4, 3)), np.full((4, 4, 3), expected))


def test_a_palette_with_a_transparent_index_shows_white_there():
    """A palette PNG's transparent colour becomes white; its opaque colours stay."""
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, 1 blue
    palette.putpixel((1, 0), 1)
    palette = _encoded(palette, "PNG", transparency=0)
    assert palette.mode == "P" and palette.info["transparency"] == 0
    out = preprocess_image(palette, (1, 2, 3))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 255]])


def test_cmyk_becomes_rgb():
    """CMYK (0, 255, 0, 0), full magenta ink, is RGB (255, 0, 255)."""
    cmyk = _encoded(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=100)
    assert cmyk.mode == "CMYK"
    out = preprocess_image(cmyk, (8, 8, 3)).astype(int)
    assert np.abs(out - [255, 0, 255]).max() <= 2


def test_other_modes_and_arrays_take_their_usual_colours():
    """Bilevel white is 255; gray repeats over RGB; RGB averages to gray; arrays as images."""
    np.testing.assert_array_equal(preprocess_image(Image.new("1", (4, 4), 1), (4, 4, 1)), 255)
    gray = preprocess_image(Image.new("L", (4, 4), 90), (4, 4, 3))
    np.testing.assert_array_equal(gray, np.full((4, 4, 3), 90))
    rgb = preprocess_image(Image.new("RGB", (4, 4), (90, 90, 90)), (4, 4, 1))
    np.testing.assert_array_equal(rgb, _gray(90))
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(preprocess_image(array, (3, 4, 1))[..., 0], array)
    clear = np.zeros((3, 4, 4), np.uint8)  # RGBA array, alpha 0
    np.testing.assert_array_equal(preprocess_image(clear, (3, 4, 3)), 255)


def test_images_are_resized_to_the_model_input():
    """Any size becomes H x W: a tall gray image keeps its gray, a half-white one its halves."""
    tall = preprocess([Image.new("L", (7, 300), 90)], (32, 32, 3))
    assert tall.shape == (1, 32, 32, 3) and tall.dtype == np.uint8
    np.testing.assert_array_equal(tall, 90)
    halves = np.zeros((64, 128, 3), np.uint8)
    halves[:, :64] = 255
    out = preprocess_image(halves, (16, 32, 3))
    assert out[:, :15].min() == 255 and out[:, 17:].max() == 0


def test_preprocess_rejects_arrays_it_cannot_read():
    """Non-uint8 arrays and odd channel counts are errors, not guesses."""
    with pytest.raises(TypeError, match="uint8"):
        preprocess_image(np.zeros((4, 4, 3), np.float32), (4, 4, 3))
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess_image(np.zeros((4, 4, 2), np.uint8), (4, 4, 3))


def _left_white(width=32, height=16) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255
    return Image.fromarray(pixels)


def test_exif_orientation_is_honoured():
    """An image stored sideways with EXIF orientation 6 is rotated upright first."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:20] = 255  # white top half
    stored = Image.fromarray(np.rot90(upright, 1).copy())  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = preprocess([_encoded(stored, "JPEG", exif=exif, quality=95)], (40, 20, 3))[0]
    assert out[:20].mean() > 200 and out[20:].mean() < 50


def _malformed_exif_blocks() -> list[bytes]:
    """EXIF blocks Pillow cannot handle: a broken byte-order mark, and an orientation-6 block
    whose ASCII tag claims the id of a SHORT tag (0x0107), which Pillow fails to re-encode
    when it rotates."""
    header = Image.Exif()
    header[0x010F] = "cam"
    broken_header = bytearray(header.tobytes())
    broken_header[6:10] = b"MM *"
    rotated = Image.Exif()
    rotated[0x0112] = 6
    rotated[0x010F] = "cam"
    raw = rotated.tobytes()
    ascii_tag = b"\x01\x0f\x00\x02" if raw[6:8] == b"MM" else b"\x0f\x01\x02\x00"
    mistyped = raw.replace(ascii_tag, ascii_tag.replace(b"\x0f", b"\x07"))
    assert mistyped != raw
    return [bytes(broken_header), mistyped]


@pytest.mark.parametrize("exif", _malformed_exif_blocks(), ids=["byte-order", "mistyped-tag"])
def test_a_malformed_exif_block_leaves_the_image_unrotated(exif):
    """EXIF that Pillow cannot apply is ignored: no error, the pixels as stored."""
    jpeg = _encoded(_left_white(), "JPEG", exif=exif, quality=95)
    out = preprocess_image(jpeg, (16, 32, 3))
    assert out[:, :14].min() > 200 and out[:, 18:].max() < 50


def test_the_mistyped_exif_block_is_one_pillow_raises_on():
    """The second malformed block really makes ImageOps.exif_transpose raise."""
    jpeg = _encoded(_left_white(), "JPEG", exif=_malformed_exif_blocks()[1])
    with pytest.raises(Exception):  # noqa: B017 - whichever error this Pillow raises
        ImageOps.exif_transpose(jpeg)
