"""The device-resident input mode (`--input=device`): the whole uint8 training split lives in
accelerator memory and each step gathers and augments its batch inside the jitted train step,
as airbench does. For datasets that fit on the device (CIFAR-10, the MNIST family: 138 MB and
43 MB of uint8 training images); the tf.data pipeline (research.data.pipeline) stays the
default otherwise.

The same contract as the tf.data pipeline, so either mode resumes exactly:
- epoch e is a seeded permutation of the split (numpy's generator keyed by (seed, e)), cut to
  whole batches; step s takes positions (s mod steps_per_epoch) * B ... + B - 1 of it;
- element i of the stream (i = s * B + j) is augmented with a key derived from (seed, i) only,
  so a resumed run sees the batches an uninterrupted run would have seen.
The augmentations (random translation with reflect padding, horizontal flip, cutout) draw from
the same distributions as research.data.pipeline's: translation offsets uniform in
[-padding, padding] on each axis, flips with probability 1/2 (or, with alternate_flip, a
seeded coin per example XOR the epoch's parity), cutout centres uniform over the image
(tests/research/test_device_input.py checks both against each other). The random streams
differ (JAX's threefry here, TensorFlow's Philox there).

No TensorFlow here: with research.data.arrays it trains from image folders or idx files alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.configs import Config, uses_flip
from research.data import augment as robust

# Config.robust_augment -> the research.data.augment policy the step applies after the geometric
# augmentations ('none': nothing).
ROBUST_POLICIES = {
    "none": None,
    "trivial": robust.AugmentPolicy(),  # one operation per augmented image (TrivialAugment)
    "augmix": robust.AugmentPolicy(chains=3),  # AugMix: three mixed chains
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the train step does to each image (static: hashable, part of the compiled step)."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    fill: tuple[int, ...] = (0,)  # cutout's value per channel (the dataset's rounded mean)
    robust: robust.AugmentPolicy | None = None  # noise, blur, JPEG, light: research.data.augment
    # Config.alternate_flip: example k flips in epoch e iff its seeded coin XOR (e odd); the
    # epoch of stream position i is i // epoch_examples
    alternate_flip: bool = False
    epoch_examples: int = 0

    @classmethod
    def from_config(
        cls, config: Config, mean: Sequence[float], epoch_examples: int = 0
    ) -> Augmentation:
        alternate = uses_flip(config) and config.alternate_flip
        if alternate and epoch_examples <= 0:
            raise ValueError("alternate_flip needs the number of examples in an epoch")
        return cls(
            crop_padding=config.crop_padding,
            flip=uses_flip(config),
            cutout=config.cutout,
            fill=tuple(int(round(m)) for m in mean),
            robust=robust_policy(config),
            alternate_flip=alternate,
            epoch_examples=epoch_examples if alternate else 0,
        )


def robust_policy(config: Config) -> robust.AugmentPolicy | None:
    """The research.data.augment policy `config.robust_augment` names (None: 'none')."""
    if config.robust_augment not in ROBUST_POLICIES:
        raise ValueError(
            f"Unknown robust_augment {config.robust_augment!r}; choose one of "
            f"{', '.join(ROBUST_POLICIES)}"
        )
    return ROBUST_POLICIES[config.robust_augment]


def _augment_one(
    image: jax.Array, key: jax.Array, flip: jax.Array | None, aug: Augmentation
) -> jax.Array:
    translate_key, flip_key, cutout_key = jax.random.split(key, 3)
    h, w, c = image.shape
    if aug.crop_padding > 0:
        p = aug.crop_padding
        padded = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
        offsets = jax.random.randint(translate_key, (2,), 0, 2 * p + 1)
        image = lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (h, w, c))
    if aug.flip:
        flip = jax.random.bernoulli(flip_key) if flip is None else flip
        image = jnp.where(flip, image[:, ::-1], image)
    if aug.cutout > 0:
        centre = jax.random.randint(cutout_key, (2,), 0, jnp.array([h, w]))
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        inside = (jnp.abs(rows - centre[0]) * 2 < aug.cutout) & (
            jnp.abs(cols - centre[1]) * 2 < aug.cutout
        )
        fill = jnp.asarray(aug.fill, image.dtype)
        image = jnp.where(inside[:, :, None], fill, image)
    return image


def example_keys(seed: int | jax.Array, positions: jax.Array) -> jax.Array:
    """One key per stream position: a function of (seed, position) only."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(positions)


def alternating_flips(seed: int | jax.Array, indices: jax.Array, epochs: jax.Array) -> jax.Array:
    """Config.alternate_flip's decisions, bool [B]: example indices[b] is mirrored in epoch
    epochs[b] iff its coin, a function of (seed, example) only, differs from the epoch's
    parity. A seeded half of the split is mirrored in even epochs, the other half in odd ones."""
    base = jax.random.split(jax.random.key(seed))[1]  # not any fold_in(key(seed), position)
    coins = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(base, i)))(indices)
    return coins != (epochs % 2 == 1)


def augment(
    images: jax.Array, keys: jax.Array, aug: Augmentation, flips: jax.Array | None = None
) -> jax.Array:
    """Augments uint8 images [B, H, W, C], image b with keys[b] (and mirrored iff flips[b],
    when given): uint8 out, or float32 in [0, 255] with a robust policy (which the model
    normalizes like uint8)."""
    one = functools.partial(_augment_one, aug=aug)
    if flips is None:
        images = jax.vmap(lambda image, key: one(image, key, None))(images, keys)
    else:
        images = jax.vmap(one)(images, keys, flips)
    return robust_augment(images, keys, aug.robust)


def robust_augment(
    images: jax.Array, keys: jax.Array, policy: robust.AugmentPolicy | None
) -> jax.Array:
    """`policy` on translated/flipped uint8 images, image b with its example key keys[b]. Both
    input modes call it inside the train step: the device mode after its own geometric
    augmentation, the tf.data mode on the batch the host augmented (same keys: same draws)."""
    if policy is None:
        return images
    robust_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
    return robust.augment_batch(images, robust_keys, policy)


def gather_batch(
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    positions: jax.Array,
    seed: int | jax.Array,
    aug: Augmentation,
) -> dict[str, jax.Array]:
    """The augmented batch of examples `indices` at stream `positions` (inside a jit)."""
    batch = jnp.take(images, indices, axis=0)
    flips = None
    if aug.alternate_flip:
        flips = alternating_flips(seed, indices, positions // aug.epoch_examples)
    keys = example_keys(seed, positions)
    return {"image": augment(batch, keys, aug, flips), "label": labels[indices]}


class EpochOrder:
    """Which examples step s trains on: the seeded permutation of its epoch, in whole batches."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {num_examples} training examples"
            )
        self._epoch, self._permutation = -1, np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._permutation = epoch, rng.permutation(self.num_examples)
        return self._permutation

    def step(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices, stream positions), int32 [batch_size] each, of `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.batch_size
        indices = self.permutation(epoch)[start : start + self.batch_size]
        positions = step * self.batch_size + np.arange(self.batch_size)
        return indices.astype(np.int32), positions.astype(np.int32)
