"""The device-resident input mode and the TensorFlow-free readers: same data, same augmentation
distributions as the tf.data pipeline, exact resume, training without TensorFlow."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_color_folder  # tests/research/conftest.py

from research import configs, train
from research.data import arrays, device_input, pipeline
from research.nets import models
from research.serving.classifier import Classifier


def _config(color_dataset, **overrides):
    name, data_dir = color_dataset
    return configs.get_config("tiny", dataset=name, data_dir=data_dir, **overrides)


def _probe_images(n: int, size: int = 16) -> np.ndarray:
    """Images whose pixel (r, c) encodes its own position: r * size + c (in channel 0)."""
    grid = (np.arange(size)[:, None] * size + np.arange(size)[None, :]).astype(np.uint8)
    return np.broadcast_to(grid[None, :, :, None], (n, size, size, 3)).copy()


def _offsets(augmented: np.ndarray, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row shift, column shift, flipped) of each augmented probe image, read off its centre."""
    centre = augmented[:, size // 2, size // 2, 0].astype(int)
    left = augmented[:, size // 2, size // 2 - 1, 0].astype(int)
    flipped = left > centre  # a mirrored row decreases to the right
    return centre // size - size // 2, centre % size - size // 2, flipped


def _tfdata_offsets(images: np.ndarray, config) -> tuple[np.ndarray, ...]:
    import tensorflow as tf

    from research.data import pipeline

    out = []
    for i, image in enumerate(images):
        seed = tf.constant([config.seed, i], tf.int64)
        out.append(
            pipeline.preprocess_for_train(
                tf.constant(image), seed, config=config, fill=tf.constant([0, 0, 0], tf.uint8)
            ).numpy()
        )
    return _offsets(np.stack(out))


def test_device_augmentation_draws_translations_and_flips_like_tf_data():
    """Offsets uniform over [-p, p] on each axis and flips half the time, in both input modes
    (the same distributions; the random streams differ)."""
    config = configs.get_config("tiny", crop_padding=2, flip=True, cutout=0)
    images = _probe_images(600)
    aug = device_input.Augmentation.from_config(config, mean=(0, 0, 0))
    keys = device_input.example_keys(config.seed, jnp.arange(600))
    ours = _offsets(np.asarray(device_input.augment(jnp.asarray(images), keys, aug)))
    theirs = _tfdata_offsets(images, config)
    for dy, _, flipped in (ours, theirs):
        # The centre pixel is away from the border, so its row shift is exactly the offset.
        assert set(np.unique(dy)) == set(range(-2, 3))
        counts = np.bincount(dy + 2, minlength=5)
        assert counts.min() > 600 / 5 * 0.7, counts  # about 120 each
        assert 0.4 < flipped.mean() < 0.6
    np.testing.assert_allclose(
        np.bincount(ours[0] + 2, minlength=5) / 600,
        np.bincount(theirs[0] + 2, minlength=5) / 600,
        atol=0.07,
    )


def test_alternating_flip_mirrors_each_image_every_other_epoch_in_both_modes():
    """alternate_flip's decisions: about half of the images are mirrored in an epoch, each
    image's mirror turns over from one epoch to the next and back, and the coin depends on
    (seed, example) only, in both input modes (the random streams differ)."""
    import tensorflow as tf

    examples = np.arange(300)

    def ours(seed, epoch):
        epochs = jnp.full(len(examples), epoch)
        return np.asarray(device_input.alternating_flips(seed, jnp.asarray(examples), epochs))

    def theirs(seed, epoch):
        decide = tf.function(lambda k: pipeline.alternating_flip(seed, k, epoch))
        return np.asarray(tf.map_fn(decide, tf.constant(examples, tf.int64), tf.bool))

    for flips in (ours, theirs):
        even, odd, even_again = flips(0, 0), flips(0, 1), flips(0, 2)
        assert 0.4 < even.mean() < 0.6
        np.testing.assert_array_equal(odd, ~even)
        np.testing.assert_array_equal(even_again, even)
        assert not np.array_equal(flips(1, 0), even)


def _flip_states(batches, raw):
    """{example: mirrored?} of augmented batches that only flip (no translation or cutout)."""
    states = {}
    for image in (image for batch in batches for image in batch):
        for k, original in enumerate(raw):
            if np.array_equal(image, original) or np.array_equal(image, original[:, ::-1]):
                states[k] = not np.array_equal(image, original)
    return states


def test_both_input_modes_turn_each_images_mirror_over_between_epochs(color_dataset):
    """Through each input mode's own batching (tf.data's enumerated shuffle, the device mode's
    epoch order and stream positions), every image trained in two consecutive epochs is seen
    mirrored in one of them and as it is in the other."""
    from research.data import datasets

    config = _config(color_dataset, crop_padding=0, cutout=0, flip=True, alternate_flip=True)
    raw = np.stack([image for image, _ in datasets.load_split(*_split(config)).as_numpy_iterator()])
    steps = len(raw) // config.batch_size
    stream = pipeline.create_train_iterator(config, mean=(0, 0, 0))
    host = [next(stream)["image"] for _ in range(2 * steps)]
    order = device_input.EpochOrder(len(raw), config.batch_size, config.seed)
    aug = device_input.Augmentation.from_config(
        config, (0, 0, 0), epoch_examples=steps * config.batch_size
    )
    device = [
        np.asarray(
            device_input.gather_batch(
                jnp.asarray(raw),
                jnp.zeros(len(raw), jnp.int32),
                *map(jnp.asarray, order.step(s)),
                config.seed,
                aug,
            )["image"]
        )  # fmt: skip
        for s in range(2 * steps)
    ]
    for batches in (host, device):
        first, second = _flip_states(batches[:steps], raw), _flip_states(batches[steps:], raw)
        both = set(first) & set(second)
        assert len(first) == len(second) == steps * config.batch_size and len(both) >= 30
        assert all(first[k] != second[k] for k in both)
        assert 0.25 < np.mean(list(first.values())) < 0.75


def _split(config):
    return config.dataset, config.train_split, config.data_dir


def test_device_augmentation_is_a_function_of_seed_and_stream_position():
    """Element i of the stream is augmented the same way whatever batch it lands in."""
    aug = device_input.Augmentation(crop_padding=2, flip=True, cutout=4, fill=(9, 9, 9))
    images = jnp.asarray(_probe_images(8))
    first = device_input.augment(images, device_input.example_keys(0, jnp.arange(8)), aug)
    again = device_input.augment(images[3:5], device_input.example_keys(0, jnp.arange(3, 5)), aug)
    other_seed = device_input.augment(images, device_input.example_keys(1, jnp.arange(8)), aug)
    np.testing.assert_array_equal(np.asarray(first[3:5]), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other_seed))
    assert first.dtype == jnp.uint8 and first.shape == images.shape


def test_no_augmentation_gathers_the_examples_unchanged():
    """With padding 0, no flip and no cutout, the batch is exactly images[indices]."""
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), np.uint8))
    labels = jnp.arange(10, dtype=jnp.int32)
    indices = jnp.array([7, 2, 2, 9], jnp.int32)
    batch = device_input.gather_batch(
        images, labels, indices, jnp.arange(4), 0, device_input.Augmentation()
    )
    np.testing.assert_array_equal(np.asarray(batch["image"]), np.asarray(images)[[7, 2, 2, 9]])
    np.testing.assert_array_equal(np.asarray(batch["label"]), [7, 2, 2, 9])


def test_epoch_order_visits_whole_batches_of_a_fresh_permutation_each_epoch():
    """Each epoch takes distinct examples in whole batches (the remainder is dropped), in an
    order that changes between epochs and depends only on (seed, epoch)."""
    order = device_input.EpochOrder(num_examples=10, batch_size=3, seed=0)
    epoch0 = np.concatenate([order.step(s)[0] for s in range(3)])
    epoch1 = np.concatenate([order.step(s)[0] for s in range(3, 6)])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert not np.array_equal(epoch0, epoch1)
    fresh = device_input.EpochOrder(num_examples=10, batch_size=3, seed=0)
    np.testing.assert_array_equal(fresh.step(4)[0], order.step(4)[0])
    np.testing.assert_array_equal(order.step(4)[1], [12, 13, 14])


def _weights(directory):
    return jax.tree.leaves(models.inference_state(Classifier.load(directory).model))


def test_device_input_run_resumes_exactly_and_learns(color_dataset, tmp_path):
    """--input=device: stopping at step 5 and rerunning gives the uninterrupted run's weights,
    and the run learns the tiny set."""
    config = _config(color_dataset, input="device", epochs=4.0)
    straight = train.train_and_evaluate(config, tmp_path / "straight")
    assert straight["eval"]["accuracy"] > 0.9
    partial = train.train_and_evaluate(config.replace(max_steps=5), tmp_path / "resumed")
    assert partial["step"] == 5
    resumed = train.train_and_evaluate(config, tmp_path / "resumed")
    assert resumed["step"] == straight["step"]
    for x, y in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"train/images_per_second"' in lines[0]


def test_folder_tar_and_tfds_give_the_same_validation_images(color_dataset, tmp_path):
    """An image folder, a .tar.gz of it and the tfds import hold out the same validation
    images (the last N per class by file name)."""
    folder = write_color_folder(tmp_path / "folder", per_class=24)
    archive = tmp_path / "colors.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "train", arcname="train")
    name, data_dir = color_dataset
    splits = [
        arrays.load_split(name, "validation", source, data_dir=data_dir, validation_per_class=4)
        for source in (folder, archive, None)
    ]

    def as_set(split):
        return sorted(
            (int(label), image.tobytes())
            for image, label in zip(split.images, split.labels, strict=True)
        )

    for split in splits:
        assert len(split) == 12 and split.images.dtype == np.uint8
    assert as_set(splits[0]) == as_set(splits[1]) == as_set(splits[2])
    train_split = arrays.load_split(name, "train", archive, validation_per_class=4)
    assert len(train_split) == 60


def test_a_source_is_decoded_once_per_process_until_it_changes(tmp_path):
    """A run reads its splits again to calibrate: the second read of a .tar.gz is the first's
    read-only arrays (no second decode); a rewritten archive is read afresh."""
    folder = write_color_folder(tmp_path / "folder", per_class=8)
    archive = tmp_path / "colors.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "train", arcname="train")
    first = arrays.load_split("colors", "train", archive, validation_per_class=2)
    again = arrays.load_split("colors", "train", archive, validation_per_class=2)
    assert again.images is first.images and not first.images.flags.writeable
    with pytest.raises(ValueError):
        first.images[0, 0, 0, 0] = 1
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    fresh = arrays.load_split("colors", "train", archive, validation_per_class=2)
    assert fresh.images is not first.images
    np.testing.assert_array_equal(fresh.images, first.images)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    """A Fashion-MNIST-shaped idx folder: class c is a bright square at row 2c (10 classes)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 40)
    images = rng.integers(0, 30, (400, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 6, 8:20] = 250
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_training_from_idx_files_needs_no_tensorflow(idx_folder, tmp_path):
    """With TensorFlow made unimportable, --input=device trains from idx files, evaluates on
    the held-out validation images and calibrates on them."""
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['tensorflow_datasets'] = None\n"
        "from research.train.__main__ import main\n"
        f"sys.exit(main(['--dataset=fashion_mnist', '--input=device', "
        f"'--data_source={idx_folder}', '--model=baseline', '--widths=4,8,16', "
        f"'--batch_size=50', '--microbatches=1', '--epochs=1', '--validation_per_class=5', "
        f"'--workdir={tmp_path / 'run'}']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device input" in done.stdout and "done: validation accuracy" in done.stdout
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_bfloat16_step_stays_close_to_float32():
    """The mixed-precision train step (bf16 operands, f32 accumulation and weights) gives a
    loss and gradients close to the float32 step's on a tiny net."""
    from flax import nnx

    spec = configs.DATASETS["cifar10"]
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = configs.get_config("cifar10", widths=(8, 16, 16), compute_dtype=dtype)
        model = models.create_model(
            config,
            num_classes=10,
            image_shape=spec.image_shape,
            mean=spec.mean,
            std=spec.std,
            rngs=nnx.Rngs(0),
        )
        (loss, _), grads = nnx.value_and_grad(train.loss_fn, has_aux=True)(model, batch, 0.2)
        results[dtype] = float(loss), jax.tree.leaves(nnx.state(grads, nnx.Param))
        assert all(g.dtype == jnp.float32 for g in results[dtype][1])
    (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
    assert abs(loss16 - loss32) < 0.02 * abs(loss32)
    for g32, g16 in zip(grads32, grads16, strict=True):
        # bf16 keeps ~3 significant digits; rounding moves some max-pool winners, so single
        # gradients differ by ~10% (JAX's own bf16 derivative does the same): same direction.
        cosine = float(jnp.vdot(g16, g32)) / float(jnp.linalg.norm(g16) * jnp.linalg.norm(g32))
        assert cosine > 0.98, cosine


def test_mixed_dot_gradient_matches_the_float32_product_of_the_rounded_operands():
    """research.nets.layers.mixed_dot's hand-written backward (bf16 matmuls, f32 accumulation)
    equals the float32 derivative of the product of the bf16-rounded operands, to bf16
    precision, and returns the kernel gradient in float32."""
    from research.nets import layers

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 6, 6, 27)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(27, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 6, 6, 5)), jnp.float32)

    def loss(dot):
        return lambda a, k: (dot(a, k) * weights).sum()

    def reference(a, k):
        return jnp.dot(a.astype(jnp.float32), k.astype(jnp.bfloat16).astype(jnp.float32))

    dx, dk = jax.grad(loss(layers.mixed_dot), argnums=(0, 1))(x, kernel)
    rx, rk = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(rx), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dk), np.asarray(rk), rtol=2e-2, atol=5e-2)


def test_robust_policy_is_applied_in_the_train_step_of_both_input_modes(color_dataset, tmp_path):
    """--robust_augment changes the device batches (float 0..255 out, deterministic per
    position); the tf.data mode's batches carry their stream positions, and its train step
    applies the same policy to them with the same keys (robust_augment after the geometric
    part is exactly the device mode's augment)."""
    images = jnp.asarray(_probe_images(6))
    keys = device_input.example_keys(0, jnp.arange(6))
    plain = device_input.Augmentation(crop_padding=2, flip=True)
    policy = device_input.ROBUST_POLICIES["trivial"].__class__(probability=1.0)
    robust = device_input.Augmentation(crop_padding=2, flip=True, robust=policy)
    a, b = device_input.augment(images, keys, robust), device_input.augment(images, keys, robust)
    base = device_input.augment(images, keys, plain)
    assert a.dtype == jnp.float32 and float(a.min()) >= 0 and float(a.max()) <= 255
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(base, np.float32))
    split = device_input.robust_augment(base, keys, policy)
    np.testing.assert_array_equal(np.asarray(split), np.asarray(a))

    config = _config(color_dataset, robust_augment="trivial", max_steps=3)
    batch = next(pipeline.create_train_iterator(config, mean=(128.0,) * 3, start_step=2))
    expected = 2 * config.batch_size + np.arange(config.batch_size)
    np.testing.assert_array_equal(batch["position"], expected)
    robust_run = train.train_and_evaluate(config, tmp_path / "robust")
    plain_run = train.train_and_evaluate(_config(color_dataset, max_steps=3), tmp_path / "plain")
    assert robust_run["step"] == plain_run["step"] == 3
    assert robust_run["eval"]["loss"] != plain_run["eval"]["loss"]
