"""research.data.augment: the per-example robust augmentation policy, on the device."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from research.data import augment
from research.data.augment import AugmentPolicy

ALWAYS = AugmentPolicy(probability=1.0)
AUGMIX = AugmentPolicy(probability=1.0, chains=3)


def _images(n=16, shape=(32, 32, 3), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def test_example_keys_fold_the_step_then_the_example_index_into_the_seed():
    """example_keys(seed, step, n)[i] = fold_in(fold_in(key(seed), step), i)."""
    keys = augment.example_keys(3, 7, 4)
    expected = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 7), 2)
    assert np.array_equal(jax.random.key_data(keys[2]), jax.random.key_data(expected))


@pytest.mark.parametrize("policy", [AugmentPolicy(), AUGMIX], ids=["trivial", "augmix"])
def test_an_example_is_augmented_by_seed_step_and_index_alone(policy):
    """The same keys give the same batch; an example alone with its key gives the same
    result as in the batch; another step gives other draws."""
    images = _images()
    keys = augment.example_keys(0, 5, len(images))
    batch = np.asarray(augment.augment_batch(images, keys, policy))
    assert np.array_equal(batch, np.asarray(augment.augment_batch(images, keys, policy)))
    alone = np.asarray(augment.augment_batch(images[3:4], keys[3:4], policy))
    np.testing.assert_allclose(alone[0], batch[3], atol=1e-3)
    other_step = augment.augment_batch(images, augment.example_keys(0, 6, len(images)), policy)
    assert not np.array_equal(batch, np.asarray(other_step))


def test_different_examples_get_different_draws():
    """One image repeated in a batch comes out as many different images."""
    images = np.repeat(_images(1), 16, axis=0)
    out = np.asarray(augment.augment_batch(images, augment.example_keys(0, 0, 16), ALWAYS))
    assert len({row.tobytes() for row in out}) > 12


def test_probability_zero_is_the_identity_and_half_augments_about_half():
    """p = 0 returns the images as float32; p = 0.5 changes roughly half of a large batch."""
    images = _images(64)
    keys = augment.example_keys(1, 0, 64)
    same = augment.augment_batch(images, keys, AugmentPolicy(probability=0.0))
    assert same.dtype == jnp.float32 and np.array_equal(np.asarray(same), images)
    out = np.asarray(augment.augment_batch(images, keys, AugmentPolicy(probability=0.5)))
    changed = np.any(out != images, axis=(1, 2, 3)).mean()
    assert 0.3 < changed < 0.7


@pytest.mark.parametrize(
    ("policy", "shape"),
    [(ALWAYS, (32, 32, 3)), (AUGMIX, (32, 32, 3)), (ALWAYS, (28, 28, 1))],
    ids=["trivial", "augmix", "grey"],
)
def test_output_is_float32_within_0_255_in_the_input_shape(policy, shape):
    """Black, white and random images come back float32, finite, in [0, 255], same shape."""
    images = np.concatenate(
        [np.zeros((4, *shape), np.uint8), np.full((4, *shape), 255, np.uint8), _images(8, shape)]
    )
    out = augment.augment_batch(images, augment.example_keys(2, 3, len(images)), policy)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    out = np.asarray(out)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0


def test_grey_images_draw_no_saturation_and_odd_sizes_no_pixelate():
    """Saturation is for colour images; pixelate only for sizes its blocks divide."""
    assert "saturation" in augment.operation_names(AugmentPolicy(), (32, 32, 3))
    assert "saturation" not in augment.operation_names(AugmentPolicy(), (28, 28, 1))
    assert "pixelate" not in augment.operation_names(AugmentPolicy(), (27, 27, 3))


def test_the_jpeg_stand_in_is_close_to_pillows_jpeg_without_subsampling():
    """The DCT quantisation at quality 50 is within 2 grey levels (mean) of Pillow's JPEG."""
    image = np.asarray(
        Image.fromarray(_images(1, (8, 8, 3))[0]).resize((32, 32), Image.Resampling.BILINEAR)
    )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=50, subsampling=0)
    pillow = np.asarray(Image.open(buffer), np.float32)
    ours = np.asarray(augment._jpeg_like(jnp.asarray(image, jnp.float32), jnp.float32(50.0)))
    assert np.abs(ours - pillow).mean() < 2.0
    assert np.abs(ours - image).mean() > 0.2  # and it is lossy


def test_invalid_policies_are_refused():
    """Out-of-range probability, one AugMix chain, quality 0: ValueError."""
    for bad in ({"probability": 1.5}, {"chains": 1}, {"jpeg_quality": 0.0}, {"depth": 0}):
        with pytest.raises(ValueError):
            AugmentPolicy(**bad)
