"""Robust augmentation on the device: noise, blur, JPEG, light and colour, per example.

    from research.data import augment
    policy = augment.AugmentPolicy()                        # the recommended defaults
    keys = augment.example_keys(seed, step, batch_size)     # [B] keys, one per example
    images = augment.augment_batch(images, keys, policy)    # uint8 [B,H,W,C] -> float32 0..255

Inside a jitted train step (static shapes, no host round trip). Each example is augmented
with probability `policy.probability`; an augmented example gets either one operation drawn
uniformly with a uniform magnitude (TrivialAugment, Muller & Hutter 2021; `chains` 0) or an
AugMix mixture (Hendrycks et al. 2020; `chains` >= 2): `chains` chains of `depth` such
operations, mixed with Dirichlet(alpha) weights, then blended with the original by a
Beta(alpha, alpha) weight. Operations, each at magnitude m in [0, 1] (or signed in [-1, 1]):

- noise: Gaussian, standard deviation m * noise_sigma of the [0, 1] range;
- blur: Gaussian of standard deviation m * blur_sigma pixels (a 5x5 separable kernel);
- jpeg: JPEG's lossy step on 8x8 blocks (YCbCr, DCT, the standard quantisation tables at a
  quality from 100 down to jpeg_quality, inverse DCT), without chroma subsampling or the
  lossless entropy coding: a JAX stand-in for re-encoding;
- pixelate: 2x2 (m < 0.5) or 4x4 block means, the sizes that divide the image;
- contrast, brightness, saturation (colour only): factors 1 + u * contrast (about the image's
  mean), 1 + u * brightness, 1 + u * saturation (about each pixel's luma), u in [-1, 1].

Keys: `example_keys(seed, step, n)[i]` = fold_in(fold_in(key(seed), step), i), so an example's
draw depends on (seed, step, its index in the batch) only, like the tf.data augmentation keyed
by (seed, position). Output: float32 in [0, 255] (not rounded), which research.nets.models.normalize
takes as it takes uint8.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# JPEG's quantisation tables at quality 50 (ITU T.81, Annex K).
_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)
_CHROMA_TABLE = np.full((8, 8), 99, np.float32)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_BLUR_RADIUS = 2  # a 5x5 kernel holds a Gaussian of sigma up to ~1.2 within 2 sigma


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """The robust-augmentation knobs; the defaults are the recommended policy."""

    probability: float = 0.5  # share of examples augmented; 0 = identity
    noise_sigma: float = 0.1  # largest noise standard deviation, of the [0, 1] range
    blur_sigma: float = 1.2  # largest Gaussian blur standard deviation, pixels
    jpeg_quality: float = 10.0  # lowest JPEG-like quality (1..100)
    pixelate: bool = True  # 2x2 / 4x4 block means
    contrast: float = 0.6  # contrast factor in [1 - c, 1 + c]
    brightness: float = 0.5  # brightness factor in [1 - b, 1 + b]
    saturation: float = 0.8  # saturation factor in [1 - s, 1 + s] (colour images only)
    chains: int = 0  # 0: one operation (TrivialAugment); >= 2: AugMix with this many chains
    depth: int = 2  # AugMix: operations per chain
    alpha: float = 1.0  # AugMix: Dirichlet and Beta concentration

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], not {self.probability}")
        if self.chains == 1 or self.chains < 0:
            raise ValueError(
                f"chains must be 0 (one operation) or >= 2 (AugMix), not {self.chains}"
            )
        if self.depth < 1 or self.alpha <= 0:
            raise ValueError(f"depth must be >= 1 and alpha > 0, not {self.depth}, {self.alpha}")
        if not 1.0 <= self.jpeg_quality <= 100.0:
            raise ValueError(f"jpeg_quality must be in [1, 100], not {self.jpeg_quality}")


def example_keys(seed: int | jax.Array, step: int | jax.Array, batch_size: int) -> jax.Array:
    """[batch_size] keys: fold_in(fold_in(key(seed), step), i) for example i of the batch."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(batch_size))


@functools.partial(jax.jit, static_argnames="policy")
def augment_batch(images: jax.Array, keys: jax.Array, policy: AugmentPolicy) -> jax.Array:
    """uint8 (or float 0..255) [B, H, W, C] with [B] keys -> float32 [B, H, W, C] in [0, 255],
    each example augmented by `policy` with its own key (identity where not drawn)."""
    images = jnp.asarray(images).astype(jnp.float32)
    if policy.probability == 0.0:
        return images
    return jax.vmap(functools.partial(_augment_one, policy=policy))(images, keys)


def operation_names(policy: AugmentPolicy, image_shape: tuple[int, ...]) -> list[str]:
    """The operations `policy` draws from for images of `image_shape` (H, W, C)."""
    height, width, channels = image_shape
    names = ["noise", "blur", "jpeg"]
    if policy.pixelate and _pixelate_sizes(height, width):
        names.append("pixelate")
    names += ["contrast", "brightness"]
    if channels == 3:
        names.append("saturation")
    return names


# ----------------------------------------------------------------------------- one example


def _augment_one(image: jax.Array, key: jax.Array, *, policy: AugmentPolicy) -> jax.Array:
    apply_key, op_key, mix_key = jax.random.split(key, 3)
    if policy.chains == 0:
        augmented = _random_operation(image, op_key, policy)
    else:
        augmented = _augmix(image, op_key, mix_key, policy)
    apply = jax.random.uniform(apply_key) < policy.probability
    return jnp.where(apply, jnp.clip(augmented, 0.0, 255.0), image)


def _augmix(image: jax.Array, key: jax.Array, mix_key: jax.Array, policy: AugmentPolicy):
    weight_key, blend_key = jax.random.split(mix_key)
    weights = jax.random.dirichlet(weight_key, jnp.full((policy.chains,), policy.alpha))
    blend = jax.random.beta(blend_key, policy.alpha, policy.alpha)
    mixed = jnp.zeros_like(image)
    for c, chain_key in enumerate(jax.random.split(key, policy.chains)):
        chain = image
        for step_key in jax.random.split(chain_key, policy.depth):
            chain = jnp.clip(_random_operation(chain, step_key, policy), 0.0, 255.0)
        mixed = mixed + weights[c] * chain
    return (1.0 - blend) * image + blend * mixed


def _random_operation(image: jax.Array, key: jax.Array, policy: AugmentPolicy) -> jax.Array:
    """One operation drawn uniformly from `operation_names`, at a uniform magnitude."""
    names = operation_names(policy, image.shape)
    choice_key, magnitude_key, noise_key = jax.random.split(key, 3)
    choice = jax.random.randint(choice_key, (), 0, len(names))
    m = jax.random.uniform(magnitude_key)  # magnitude in [0, 1]
    u = 2.0 * m - 1.0  # signed, for the jitters
    operations = {
        "noise": lambda x: (
            x + 255.0 * m * policy.noise_sigma * jax.random.normal(noise_key, x.shape)
        ),
        "blur": lambda x: _blur(x, m * policy.blur_sigma),
        "jpeg": lambda x: _jpeg_like(x, 100.0 - m * (100.0 - policy.jpeg_quality)),
        "pixelate": lambda x: _pixelate(x, m),
        "contrast": lambda x: jnp.mean(x) + (x - jnp.mean(x)) * (1.0 + u * policy.contrast),
        "brightness": lambda x: x * (1.0 + u * policy.brightness),
        "saturation": lambda x: _saturate(x, 1.0 + u * policy.saturation),
    }
    return jax.lax.switch(choice, [operations[name] for name in names], image)


# ----------------------------------------------------------------------------- operations


def _blur(image: jax.Array, sigma: jax.Array) -> jax.Array:
    """Separable Gaussian of standard deviation `sigma` (0: identity), edges replicated."""
    taps = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / kernel.sum()
    height, width = image.shape[:2]
    r = _BLUR_RADIUS
    padded = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="edge")
    image = sum(kernel[k] * padded[k : k + height] for k in range(2 * r + 1))
    padded = jnp.pad(image, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(kernel[k] * padded[:, k : k + width] for k in range(2 * r + 1))


def _pixelate_sizes(height: int, width: int) -> tuple[int, ...]:
    return tuple(k for k in (2, 4) if height % k == 0 and width % k == 0)


def _block_mean(image: jax.Array, k: int) -> jax.Array:
    height, width, channels = image.shape
    blocks = image.reshape(height // k, k, width // k, k, channels).mean(axis=(1, 3))
    return jnp.repeat(jnp.repeat(blocks, k, axis=0), k, axis=1)


def _pixelate(image: jax.Array, m: jax.Array) -> jax.Array:
    sizes = _pixelate_sizes(*image.shape[:2])
    if len(sizes) == 1:
        return _block_mean(image, sizes[0])
    return jnp.where(m < 0.5, _block_mean(image, sizes[0]), _block_mean(image, sizes[1]))


def _luma(image: jax.Array) -> jax.Array:
    return image @ jnp.array([0.299, 0.587, 0.114], jnp.float32)


def _saturate(image: jax.Array, factor: jax.Array) -> jax.Array:
    grey = _luma(image)[..., None]
    return grey + (image - grey) * factor


def _dct_matrix() -> np.ndarray:
    n = np.arange(8)
    matrix = np.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix.astype(np.float32)  # orthonormal: D @ D.T = I


def _quality_table(table: np.ndarray, quality: jax.Array) -> jax.Array:
    """libjpeg's scaling of a quality-50 table to `quality` (1..100)."""
    scale = jnp.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)
    return jnp.clip(jnp.floor((table * scale + 50.0) / 100.0), 1.0, 255.0)


def _jpeg_like(image: jax.Array, quality: jax.Array) -> jax.Array:
    """JPEG's lossy step: 8x8 block DCT of Y (and Cb, Cr), quantised at `quality`."""
    height, width, channels = image.shape
    ph, pw = -height % 8, -width % 8
    x = jnp.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    if channels == 3:
        to_ycc = jnp.array(
            [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
            jnp.float32,
        )
        x = x @ to_ycc.T + jnp.array([0.0, 128.0, 128.0], jnp.float32)
        tables = jnp.stack(
            [_quality_table(t, quality) for t in (_LUMA_TABLE, _CHROMA_TABLE, _CHROMA_TABLE)]
        )
    else:
        tables = _quality_table(_LUMA_TABLE, quality)[None]
    h8, w8 = x.shape[0] // 8, x.shape[1] // 8
    # Blocks as rows of 64 values; kron(D, D) is the 2-D DCT of a row-major 8x8 block, so one
    # [n, 64] x [64, 64] matmul transforms them all (batched 8x8 matmuls are slow on CPU).
    blocks = (x - 128.0).reshape(h8, 8, w8, 8, channels).transpose(0, 2, 4, 1, 3)
    blocks = blocks.reshape(h8, w8, channels, 64)
    dct = jnp.asarray(np.kron(_dct_matrix(), _dct_matrix()))
    tables = tables.reshape(1, 1, channels, 64)
    coefficients = jnp.round((blocks @ dct.T) / tables) * tables
    restored = (coefficients @ dct).reshape(h8, w8, channels, 8, 8)
    x = restored.transpose(0, 3, 1, 4, 2).reshape(h8 * 8, w8 * 8, channels) + 128.0
    if channels == 3:
        from_ycc = jnp.array(
            [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], jnp.float32
        )
        x = (x - jnp.array([0.0, 128.0, 128.0], jnp.float32)) @ from_ycc.T
    return x[:height, :width]
