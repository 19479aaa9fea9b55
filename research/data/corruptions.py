"""Common image corruptions at five severities, seeded: the robustness benchmark's inputs.

    from research.data import corruptions
    noisy = corruptions.corrupt(image, "gaussian_noise", severity=3, seed=0)   # uint8 HxWxC
    batch = corruptions.corrupt_batch(images, "jpeg", severity=3, seed=0)      # uint8 NxHxWxC

The corruptions of CIFAR-10-C (Hendrycks & Dietterich, 2019) that need no external images, plus
rotation, written with NumPy and Pillow for uint8 HxWx3 (colour) and HxWx1 (grey) images of
any size. Severity 3 is the issue's middle severity exactly: Gaussian noise sigma 0.08 of the
[0, 1] range, Gaussian blur radius 1 px (Pillow's GaussianBlur, radius = standard deviation),
pixelate to 16x16 (of 32x32; half the side) and back, JPEG quality 15, contrast x0.4,
brightness x1.5, rotation by 15 degrees. The other severities follow CIFAR-10-C's parameters
(its 32x32 ones; the issue's harsher middle values re-anchor blur, pixelate, JPEG and
brightness, whose other levels are scaled around them). Differences from CIFAR-10-C's code:
brightness multiplies RGB (it added to HSV value); motion blur is a one-sided Gaussian streak
(ImageMagick's kernel) built here; spatter's water is a simplified tinted-drop layer (no
OpenCV edge and distance transforms); rotation is not in CIFAR-10-C (corners are reflected).

Determinism: the output depends only on (image, name, severity, seed); `corrupt_batch` gives
image i the seed (seed, i), so a batch's images get different draws and the same batch gives
the same result in any process.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageFilter

SEVERITIES = (1, 2, 3, 4, 5)
MIDDLE_SEVERITY = 3
# The seven corruptions of issue 13's table, whose mean at the middle severity is its target.
ISSUE_SEVEN = (
    "gaussian_noise",
    "gaussian_blur",
    "pixelate",
    "jpeg",
    "contrast",
    "brightness",
    "rotate",
)

Seed = int | Sequence[int]


class Corruption(NamedTuple):
    """One corruption: fn(uint8 HxWxC image, parameter, rng) -> values in 0..255."""

    function: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]
    applies_to_grey: bool
    severities: tuple[Any, ...]  # the parameter of severity 1..5


# ----------------------------------------------------------------------------- helpers


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(pil, np.uint8)
    return array[..., None] if channels == 1 else array


def _gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    radius = max(1, int(truncate * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into 0..size-1 about the edge pixels (d c b | a b c d | c b a)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def _gaussian_filter(field: np.ndarray, sigma: float) -> np.ndarray:
    """A 2-D (or HxWxC, per channel) separable Gaussian filter with reflected edges."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = field.astype(np.float64)
    for axis in (0, 1):
        size = out.shape[axis]
        index = _reflect_index(np.arange(-radius, size + radius), size)
        padded = np.take(out, index, axis=axis)
        out = sum(
            w * np.take(padded, np.arange(k, k + size), axis=axis) for k, w in enumerate(kernel)
        )
    return out


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """HxWxC float image convolved with a small 2-D kernel, reflected edges."""
    kh, kw = kernel.shape
    h, w = image.shape[:2]
    rows = _reflect_index(np.arange(-(kh // 2), h + kh // 2), h)
    cols = _reflect_index(np.arange(-(kw // 2), w + kw // 2), w)
    padded = image[rows][:, cols]
    out = np.zeros(image.shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j]:
                out += kernel[i, j] * padded[i : i + h, j : j + w]
    return out


def _sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of an HxWxC image at float coordinates, reflected at the edges."""
    h, w = image.shape[:2]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    y1, x1 = _reflect_index(y0 + 1, h), _reflect_index(x0 + 1, w)
    y0, x0 = _reflect_index(y0, h), _reflect_index(x0, w)
    image = image.astype(np.float64)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _grid(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    return np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )


def _to_grey_colour(colour: tuple[float, float, float], channels: int) -> np.ndarray:
    if channels == 1:
        return np.array([0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]])
    return np.array(colour)


# ----------------------------------------------------------------------------- noise


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation `sigma` (of the [0, 1] range)."""
    return image + 255.0 * rng.normal(0.0, sigma, image.shape)


def shot_noise(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise: `photons` at full brightness (fewer = noisier)."""
    return 255.0 * rng.poisson(image / 255.0 * photons) / photons


def impulse_noise(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise on a share `amount` of the values (half white, half black)."""
    out = image.astype(np.float64)
    hit = rng.random(image.shape) < amount
    salt = rng.random(image.shape) < 0.5
    out[hit & salt] = 255.0
    out[hit & ~salt] = 0.0
    return out


# ----------------------------------------------------------------------------- blur


def gaussian_blur(image: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Pillow's GaussianBlur (radius = the standard deviation, in pixels)."""
    del rng
    blurred = _to_pil(image).filter(ImageFilter.GaussianBlur(radius))
    return _from_pil(blurred, image.shape[-1])


def defocus_blur(
    image: np.ndarray, param: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Convolution with a disk of radius param[0], its edge smoothed by a Gaussian of param[1]."""
    del rng
    radius, alias_blur = param
    half = max(1, math.ceil(radius) + 1)
    axis = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(axis, axis)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk = _gaussian_filter(disk / disk.sum(), alias_blur) if alias_blur > 0 else disk
    return _convolve(image.astype(np.float64), disk / disk.sum())


def motion_blur(
    image: np.ndarray, param: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A one-sided Gaussian streak (ImageMagick's motion blur): radius, sigma, random angle
    in [-45, 45] degrees."""
    radius, sigma = param
    angle = math.radians(rng.uniform(-45, 45))
    length = min(int(radius), math.ceil(3 * sigma))
    steps = np.arange(length + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (steps / sigma) ** 2)
    weights /= weights.sum()
    ys, xs = _grid(image)
    out = np.zeros(image.shape, np.float64)
    for t, weight in zip(steps, weights, strict=True):
        out += weight * _sample(image, ys + t * math.sin(angle), xs + t * math.cos(angle))
    return out


# ----------------------------------------------------------------------------- digital


def pixelate(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Box-downsampled to `fraction` of the side, then box-upsampled back."""
    del rng
    h, w = image.shape[:2]
    pil = _to_pil(image)
    small = pil.resize((max(1, int(w * fraction)), max(1, int(h * fraction))), Image.Resampling.BOX)
    return _from_pil(small.resize((w, h), Image.Resampling.BOX), image.shape[-1])


def jpeg(image: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """Re-encoded as JPEG at `quality` (Pillow's default 4:2:0 chroma subsampling)."""
    del rng
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return _from_pil(decoded.convert("L" if image.shape[-1] == 1 else "RGB"), image.shape[-1])


def contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Deviations from the image's mean (over all pixels and channels) scaled by `factor`."""
    del rng
    mean = image.mean()
    return (image - mean) * factor + mean


def brightness(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Every value multiplied by `factor` (clipped at 255)."""
    del rng
    return image * factor


def saturate(image: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """HSV saturation s -> s * param[0] + param[1] (colour images only)."""
    del rng
    scale, shift = param
    h, s, v = _to_pil(image).convert("HSV").split()
    s_values = np.clip(np.round(np.asarray(s) * scale + 255.0 * shift), 0, 255).astype(np.uint8)
    hsv = Image.merge("HSV", (h, Image.fromarray(s_values), v))
    return np.asarray(hsv.convert("RGB"), np.uint8)


# ----------------------------------------------------------------------------- weather


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """size x size (a power of two) diamond-square noise in [0, 1] (CIFAR-10-C's fog)."""
    plasma = np.zeros((size, size))
    step = size
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = plasma[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares = squares + np.roll(squares, -1, axis=1)
        plasma[half:size:step, half:size:step] = wibbled_mean(squares)
        centres = plasma[half:size:step, half:size:step]
        corners = plasma[0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        plasma[0:size:step, half:size:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        plasma[half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    plasma -= plasma.min()
    return plasma / plasma.max()


def fog(image: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Procedural fog: plasma-fractal haze of strength param[0] (decay param[1]) added, then
    rescaled so the image's maximum is kept."""
    strength, decay = param
    h, w = image.shape[:2]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    haze = _plasma_fractal(size, decay, rng)[:h, :w, None]
    x = image / 255.0
    peak = x.max()
    return 255.0 * (x + strength * haze) * peak / (peak + strength)


def spatter(image: np.ndarray, param: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Drops of water (light cyan, added) or mud (brown, covering) from a thresholded smooth
    random field (CIFAR-10-C's spatter, water simplified)."""
    loc, scale, sigma, threshold, intensity, mud = param
    h, w, channels = image.shape
    liquid = _gaussian_filter(rng.normal(loc, scale, (h, w)), sigma)
    liquid[liquid < threshold] = 0.0
    x = image / 255.0
    if not mud:
        mask = _gaussian_filter(liquid, 0.5)
        mask = mask / mask.max() * intensity if mask.max() > 0 else mask
        colour = _to_grey_colour((175 / 255, 238 / 255, 238 / 255), channels)
        return 255.0 * (x + mask[..., None] * colour)
    mask = _gaussian_filter((liquid > threshold).astype(np.float64), intensity)
    mask[mask < 0.8] = 0.0
    colour = _to_grey_colour((63 / 255, 42 / 255, 20 / 255), channels)
    return 255.0 * (x * (1 - mask[..., None]) + colour * mask[..., None])


# ----------------------------------------------------------------------------- geometry


def _affine_points(h: int, w: int) -> np.ndarray:
    cy, cx = h // 2, w // 2
    d = min(h, w) // 3
    return np.array([[cx + d, cy + d], [cx + d, cy - d], [cx - d, cy - d]], np.float64)


def elastic(image: np.ndarray, param: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (three points moved by up to param[2] of the side) composed with
    a smooth random displacement field (amplitude param[0], smoothness param[1], as fractions
    of the image side); bilinear, reflected edges."""
    h, w = image.shape[:2]
    side = min(h, w)
    alpha, sigma, jitter = (p * side for p in param)
    src = _affine_points(h, w)
    dst = src + rng.uniform(-jitter, jitter, src.shape)
    # The affine map taking the moved points back to the original ones: sampling positions.
    a = np.hstack([dst, np.ones((3, 1))])
    back = np.linalg.solve(a, src)  # [3, 2]: rows x, y, 1 -> source x, y
    ys, xs = _grid(image)
    if alpha > 0:
        ys = ys + alpha * _gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)
        xs = xs + alpha * _gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)
    sx = xs * back[0, 0] + ys * back[1, 0] + back[2, 0]
    sy = xs * back[0, 1] + ys * back[1, 1] + back[2, 1]
    return _sample(image, sy, sx)


def rotate(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotation by `degrees` about the centre, clockwise or anticlockwise at random; bilinear,
    corners filled by reflection."""
    angle = math.radians(degrees) * (1 if rng.random() < 0.5 else -1)
    h, w = image.shape[:2]
    ys, xs = _grid(image)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    sx = cx + (xs - cx) * cos - (ys - cy) * sin
    sy = cy + (xs - cx) * sin + (ys - cy) * cos
    return _sample(image, sy, sx)


# ----------------------------------------------------------------------------- registry

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(gaussian_noise, True, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": Corruption(shot_noise, True, (500, 250, 100, 75, 50)),
    "impulse_noise": Corruption(impulse_noise, True, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "gaussian_blur": Corruption(gaussian_blur, True, (0.6, 0.8, 1.0, 1.2, 1.4)),
    "defocus_blur": Corruption(
        defocus_blur, True, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
    ),
    "motion_blur": Corruption(motion_blur, True, ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3))),
    "pixelate": Corruption(pixelate, True, (0.75, 0.6, 0.5, 0.4, 0.3)),
    "jpeg": Corruption(jpeg, True, (25, 18, 15, 10, 7)),
    "contrast": Corruption(contrast, True, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": Corruption(brightness, True, (1.1, 1.3, 1.5, 1.7, 1.9)),
    "saturate": Corruption(saturate, False, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
    "fog": Corruption(fog, True, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "elastic": Corruption(
        elastic,
        True,
        ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    ),
    "spatter": Corruption(
        spatter,
        True,
        (
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
    ),
    "rotate": Corruption(rotate, True, (5, 10, 15, 20, 25)),
}


def names_for(channels: int) -> list[str]:
    """The corruptions that apply to images of `channels` channels, in registry order."""
    return [name for name, c in CORRUPTIONS.items() if channels == 3 or c.applies_to_grey]


def validate(name: str, severity: int, channels: int) -> Corruption:
    """The registry entry of `name`; ValueError, listing the valid values, for an unknown name
    or severity, or a colour-only corruption of grey images."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}, not {severity!r}")
    corruption = CORRUPTIONS[name]
    if channels == 1 and not corruption.applies_to_grey:
        raise ValueError(f"Corruption {name!r} applies to colour images only")
    return corruption


def _rng(name: str, severity: int, seed: Seed) -> np.random.Generator:
    seeds = [seed] if isinstance(seed, int) else list(seed)
    return np.random.default_rng([*seeds, zlib.crc32(name.encode()), severity])


def corrupt(image: np.ndarray, name: str, severity: int, seed: Seed = 0) -> np.ndarray:
    """uint8 HxWx3 or HxWx1 image -> the same shape and dtype, corrupted; a function of
    (image, name, severity, seed) only. ValueError for an unknown name or severity, or a
    colour-only corruption of a grey image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"Expected a uint8 HxWx1 or HxWx3 image, got {image.dtype} {image.shape}")
    corruption = validate(name, severity, image.shape[-1])
    out = corruption.function(
        image, corruption.severities[severity - 1], _rng(name, severity, seed)
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(image.shape)


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 NxHxWxC -> the same, image i corrupted with seed (seed, i)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"Expected a uint8 NxHxWxC batch, got shape {images.shape}")
    validate(name, severity, images.shape[-1])
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = corrupt(image, name, severity, seed=(seed, i))
    return out
