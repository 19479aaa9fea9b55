"""tf.data pipelines: augmentation for training, none for evaluation; uint8 out.

Images stay uint8 all the way to the device; the model normalizes them (research.nets.models), so
the one preprocessing definition is shared by training, evaluation and serving. Evaluation
and serving resize only when the model's input size differs from the data's, which it does
not with the default configs.

Randomness is stateless and keyed by (seed, epoch, position), so a seed gives the same
batches whatever the parallelism, and a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from research.configs import Config, dataset_spec, uses_flip  # noqa: E402
from research.data import datasets  # noqa: E402

# TensorFlow only feeds data: keep it off any accelerator so JAX has all of its memory.
tf.config.set_visible_devices([], "GPU")
if tf.config.list_physical_devices("TPU"):
    tf.config.set_visible_devices([], "TPU")


def _translate(image: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """Random translation by up to `padding` pixels: reflect-pad, then crop back."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def _cutout(image: tf.Tensor, seed: tf.Tensor, size: int, fill: tf.Tensor) -> tf.Tensor:
    """Sets a random size x size square (clipped at the border) to `fill`."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    center = tf.random.stateless_uniform([2], seed=seed, maxval=tf.int32.max, dtype=tf.int32)
    cy, cx = center[0] % h, center[1] % w
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (tf.abs(rows - cy) * 2 < size) & (tf.abs(cols - cx) * 2 < size)
    return tf.where(inside[:, :, None], fill, image)


def alternating_flip(seed: int, example: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """Config.alternate_flip's decision for one image: its coin, a function of (seed, example)
    only, differs from the epoch's parity (as research.data.device_input.alternating_flips)."""
    coin_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, -1], tf.int64), tf.cast(example, tf.int64)
    )
    return (tf.random.stateless_uniform([], seed=coin_seed) < 0.5) != (epoch % 2 == 1)


def preprocess_for_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    config: Config,
    fill: tf.Tensor,
    flip: tf.Tensor | None = None,
) -> tf.Tensor:
    """Augments one uint8 HWC image with the config's choices; returns uint8 HWC. `flip`, when
    given, decides the mirror (alternate_flip) instead of a coin keyed by `seed`."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if config.crop_padding > 0:
        image = _translate(image, seeds[0], config.crop_padding)
    if uses_flip(config) and flip is not None:
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    elif uses_flip(config):
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    if config.cutout > 0:
        image = _cutout(image, seeds[2], config.cutout, fill)
    return image


def preprocess_for_eval(image: tf.Tensor, image_shape: tuple[int, int, int]) -> tf.Tensor:
    """The identity at the data's own size; otherwise an antialiased bilinear resize."""
    if tuple(image.shape[:2]) == tuple(image_shape[:2]):
        return image
    resized = tf.image.resize(image, image_shape[:2], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _count(ds: tf.data.Dataset) -> int:
    """Examples in a dataset: tfds knows it for splits and slices; else count once."""
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(0, lambda count, _: count + 1))


def create_train_iterator(
    config: Config,
    *,
    mean: tuple[float, ...],
    start_step: int = 0,
    rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of {'image': uint8 [B,H,W,C], 'label': int32 [B]} training batches.

    Each epoch is a fresh seeded permutation cut to whole batches; element i of the stream is
    augmented with the seed (config.seed, i) (and, with alternate_flip, mirrored by its
    example's coin and its epoch's parity). So `start_step` resumes exactly where an
    uninterrupted run would be. `rows=(start, stop)` keeps only those rows of each global
    batch, picked before augmentation: each of several processes reads its own part.
    """
    ds = datasets.load_split(config.dataset, config.train_split, config.data_dir).cache()
    num_examples = _count(ds)
    per_epoch = (num_examples // config.batch_size) * config.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {num_examples} training examples"
        )
    fill = tf.constant(np.round(mean).astype(np.uint8))

    alternate = uses_flip(config) and config.alternate_flip

    def augment(index: tf.Tensor, example: tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]):
        number, (image, label) = example  # the example's place in the split, its data
        seed = tf.stack([tf.constant(config.seed, tf.int64), index])
        flip = alternating_flip(config.seed, number, index // per_epoch) if alternate else None
        image = preprocess_for_train(image, seed, config=config, fill=fill, flip=flip)
        batch = {"image": image, "label": tf.cast(label, tf.int32)}
        if config.robust_augment != "none":  # the train step applies it, keyed by position
            batch["position"] = tf.cast(index, tf.int32)
        return batch

    ds = ds.enumerate().shuffle(num_examples, seed=config.seed, reshuffle_each_iteration=True)
    # batch(drop_remainder) + unbatch cuts each epoch to whole batches while still reading the
    # shuffle (and so the cache) to its end; take() would leave the cache unfilled.
    ds = ds.batch(config.batch_size, drop_remainder=True).unbatch()
    ds = ds.repeat().enumerate().skip(start_step * config.batch_size)
    start, stop = rows or (0, config.batch_size)
    if (start, stop) != (0, config.batch_size):
        ds = ds.filter(
            lambda i, _: (i % config.batch_size >= start) & (i % config.batch_size < stop)
        )
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(stop - start, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def create_eval_dataset(
    config: Config, split: str, image_shape: tuple[int, int, int]
) -> tf.data.Dataset:
    """The evaluation split, preprocessed for the model and cached, unbatched."""
    ds = datasets.load_split(config.dataset, split, config.data_dir)
    ds = ds.map(
        lambda image, label: (preprocess_for_eval(image, image_shape), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.cache()


def iterate_padded_batches(ds: tf.data.Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches (one compiled shape); the last is zero-padded, `mask` marks real rows."""
    for image, label in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        n = len(label)
        mask = np.zeros(batch_size, bool)
        mask[:n] = True
        if n < batch_size:
            image = np.concatenate(
                [image, np.zeros((batch_size - n, *image.shape[1:]), image.dtype)]
            )
            label = np.concatenate([label, np.zeros(batch_size - n, label.dtype)])
        yield {"image": image, "label": label, "mask": mask}


def mean_std(config: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..255) the model normalizes with: the config's if set, else
    the dataset's spec (research.configs.DATASETS), else measured on the training split."""
    if config.mean is not None and config.std is not None:
        return tuple(config.mean), tuple(config.std)
    spec = dataset_spec(config.dataset)
    if spec is not None:
        return spec.mean, spec.std
    return measure_mean_std(config)


def measure_mean_std(config: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..255) of the training split, for datasets without stats."""
    ds = datasets.load_split(config.dataset, config.train_split, config.data_dir)
    total, total_sq, count = 0.0, 0.0, 0
    for images, _ in ds.batch(4096).as_numpy_iterator():
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
        total = total + pixels.sum(0)
        total_sq = total_sq + (pixels**2).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-6))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
