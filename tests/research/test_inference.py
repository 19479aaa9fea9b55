"""The serving seam: Classifier.load/predict, preprocessing shared with evaluation."""

from __future__ import annotations

import io
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from research import datasets, input_pipeline, train
from research.inference import BATCH_BUCKETS, Classifier, ModelNotFoundError, preprocess


@pytest.fixture(scope="module")
def classifier(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    clf.warmup()
    return clf


def test_predict_matches_the_evaluation_path_on_the_same_images(trained, color_dataset):
    """Classifier.predict on PIL images == softmax of evaluation logits from the tf.data path."""
    config, workdir, _ = trained
    name, data_dir = color_dataset
    clf = Classifier.load(workdir)
    eval_ds = input_pipeline.create_eval_dataset(config, "validation", (32, 32, 3))
    batch = next(input_pipeline.iterate_padded_batches(eval_ds, 16))
    logits = np.asarray(train.eval_step(clf.model, batch["image"], clf.meta["flip_tta"]))
    expected = np.asarray(jax.nn.softmax(logits[batch["mask"]], axis=-1))
    raw = [
        image for image, _ in datasets.load_split(name, "validation", data_dir).as_numpy_iterator()
    ]
    as_png = []
    for array in raw:  # through encoded files, as an upload would arrive
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        as_png.append(Image.open(io.BytesIO(buffer.getvalue())))
    np.testing.assert_allclose(clf.predict(as_png), expected, rtol=1e-5, atol=1e-6)


def test_probabilities_are_one_row_per_image_summing_to_one(classifier):
    """[N, num_classes] float32 rows that sum to 1."""
    images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)]
    probs = classifier.predict(images)
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert classifier.class_names[0] == "airplane"


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (64, 40), (10, 200, 30, 128)),
        Image.new("L", (7, 300), 90),
        Image.new("P", (32, 32)),
        Image.new("CMYK", (50, 50), (0, 255, 0, 0)),
        Image.new("I;16", (33, 33), 40000),
        Image.new("1", (20, 20), 1),
        np.zeros((10, 10), np.uint8),
        np.zeros((5, 9, 4), np.uint8),
    ],
    ids=["rgba", "gray-tall", "palette", "cmyk", "16bit", "bilevel", "array-2d", "array-rgba"],
)
def test_any_size_and_mode_is_converted_to_the_model_input(image):
    """Every common mode and size becomes a uint8 [1, 32, 32, 3] model input."""
    out = preprocess([image], (32, 32, 3))
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8


def test_sixteen_bit_images_keep_their_brightness():
    """A 16-bit mid-grey maps to 8-bit mid-grey, not to white."""
    out = preprocess([Image.new("I;16", (4, 4), 32768)], (4, 4, 1))
    assert 126 <= int(out.mean()) <= 129


def test_exif_orientation_is_honoured():
    """An image stored sideways with EXIF orientation 6 is rotated upright first."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:20] = 255  # white top half
    stored = Image.fromarray(np.rot90(upright, 1).copy())  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    out = preprocess([Image.open(buffer)], (40, 20, 3))[0]
    assert out[:20].mean() > 200 and out[20:].mean() < 50


def test_new_batch_sizes_and_image_sizes_never_recompile(classifier):
    """After warm-up, any number of images of any size runs on the compiled buckets."""
    compiled = classifier._forward._cache_size()
    assert compiled == len(BATCH_BUCKETS)
    for n in (1, 2, 9, 33, BATCH_BUCKETS[-1] + 5):
        classifier.predict([np.zeros((17 + n, 23, 3), np.uint8)] * n)
    assert classifier._forward._cache_size() == compiled


def test_top_k_lists_labels_best_first(classifier):
    """top_k returns (label, probability) pairs sorted by probability."""
    probs = np.zeros((1, 10), np.float32)
    probs[0, [3, 7, 1]] = [0.5, 0.3, 0.2]
    assert classifier.top_k(probs, 2) == [[("cat", 0.5), ("horse", pytest.approx(0.3))]]


def test_missing_model_directory_has_a_clear_error(tmp_path):
    """Loading from a folder without checkpoints says what it expected."""
    with pytest.raises(ModelNotFoundError, match="research.train"):
        Classifier.load(tmp_path)


def test_inference_path_does_not_import_tensorflow(tiny_model_dir):
    """Loading and predicting never imports TensorFlow (the web process stays light)."""
    code = (
        "import sys, numpy as np\n"
        "from research.inference import Classifier\n"
        f"clf = Classifier.load({str(tiny_model_dir)!r})\n"
        "clf.predict([np.zeros((8, 8, 3), np.uint8)])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
