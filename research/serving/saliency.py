"""Where the model looked: a saliency heatmap over the original image, for its top class.

    from research.serving import saliency
    heat = saliency.explain(classifier, Image.open("cat.jpg"))   # float32 [H0, W0] in [0, 1]
    saliency.overlay(Image.open("cat.jpg"), heat).save("where.png")

Two methods, both on the exact pixels the model sees
(`research.serving.preprocess.preprocess_image`)
and for the class it ranks first (with the record's test-time augmentation, as `predict`):

- ``gradcam``: Grad-CAM (Selvaraju et al., 2017) on the output of the last convolutional block:
  its channels weighted by the spatially averaged gradient of the top logit, summed, ReLU.
  Coarse (3x3 on the shipped 32x32 and 28x28 nets) but it follows objects, not edges.
- ``grad_input``: gradient x input, the gradient of the top logit with respect to the pixels
  times the pixels' distance from the dataset mean (the model's own zero), summed over channels,
  absolute value, blurred over 5x5 pixels. Finer, but in specks, on edges and bright spots.

Which to show (`python -m benchmarks.serving.saliency --deletion`): on 334 CIFAR-10 validation
JPEGs,
replacing the hottest 10% (20%) of the model-input pixels with a blurred copy of the image
lowers the top class's probability by 0.15 (0.31) for Grad-CAM, 0.09 (0.20) for gradient x
input and 0.06 (0.18) for random pixels; on 300 Fashion-MNIST test images neither beats random
pixels (0.09, 0.07, 0.11 at 10%). By eye, Grad-CAM marks the object on most CIFAR-10 photos but
spills onto the background at its 3x3 resolution, and on Fashion-MNIST it often marks empty
space the model uses (between trouser legs, above a boot); gradient x input stays on the object
but in specks. Hence Grad-CAM by default.

Each heatmap is computed at the model's input size in one jitted function per classifier and
method (one image, one shape: never recompiled), then normalised to [0, 1] and resized
(bilinear) to the original image's size, after EXIF orientation, in NumPy and Pillow.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from research.nets import layers, models
from research.serving.preprocess import ImageLike, preprocess_image, upright

METHODS = ("gradcam", "grad_input")
# Grad-CAM: its hottest pixels are the ones the model depends on (below), and it is faster.
DEFAULT_METHOD = "gradcam"

# grad_input's heatmap is divided by this percentile of itself, so a few extreme pixels do not
# leave the rest of the map black.
_GRAD_INPUT_PERCENTILE = 99.0

# Per classifier: its split model and one compiled function per method. Weak keys: the cache
# goes with the classifier.
_CACHE: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- public


def explain(classifier: Any, image: ImageLike, *, method: str = DEFAULT_METHOD) -> np.ndarray:
    """A heatmap of what made `classifier` rank its top class first for `image`: float32
    [H0, W0] in [0, 1] over the original image (after EXIF orientation), 1 = most salient.
    All zeros where nothing in the image raises the top class (a flat image, for one)."""
    fn = _compiled(classifier, method)
    shape = classifier.record.image_shape
    pil = upright(image) if isinstance(image, Image.Image) else image
    height, width = _size_of(pil)
    pixels = preprocess_image(pil, shape)
    state = _CACHE[classifier]["state"]
    heat = np.asarray(fn(state, pixels[None]))[0].astype(np.float32)
    heat = _normalise(heat, method)
    return _resize(heat, height, width)


def warmup(classifier: Any, method: str = DEFAULT_METHOD) -> None:
    """Compiles `method`'s heatmap for `classifier` (seconds on a CPU), so that the first
    request does not wait for it."""
    explain(classifier, np.zeros(classifier.record.image_shape, np.uint8), method=method)


def overlay(image: ImageLike, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`image` (upright, RGB) with `heatmap` drawn over it in colour: cold parts leave the image
    as it is, hot ones are tinted up to `alpha` of the way to red-yellow. Same size as the
    image; a heatmap of another size is resized to it."""
    pil = upright(image) if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    rgb = np.asarray(pil.convert("RGB"), np.float32)
    height, width = rgb.shape[:2]
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != (height, width):
        heat = _resize(heat, height, width)
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    weight = (alpha * heat)[..., None]
    blended = rgb * (1.0 - weight) + _colormap(heat) * weight
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- compiled parts


def _compiled(classifier: Any, method: str) -> Callable[[nnx.State, np.ndarray], jax.Array]:
    if method not in METHODS:
        raise ValueError(f"Unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    with _LOCK:
        entry = _CACHE.get(classifier)
        if entry is None:
            graphdef, state = nnx.split(classifier.model)
            entry = {"graphdef": graphdef, "state": state}
            _CACHE[classifier] = entry
        if method not in entry:
            record = classifier.record
            build = _gradcam_fn if method == "gradcam" else _grad_input_fn
            entry[method] = build(entry["graphdef"], classifier.model, record)
        return entry[method]


def _top_logit_sum(logits: jax.Array) -> jax.Array:
    """Sum over the batch of each image's top logit (eval-mode nets keep images independent)."""
    top = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    return jnp.take_along_axis(logits, top[:, None], axis=-1).sum()


def _grad_input_fn(graphdef: nnx.GraphDef, model: nnx.Module, record: Any) -> Callable:
    mean = jnp.asarray(record.mean, jnp.float32)

    def score(state: nnx.State, images: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, state)
        return _top_logit_sum(models.predict_logits(net, images, **record.tta))

    def heat(state: nnx.State, images: jax.Array) -> jax.Array:
        images = images.astype(jnp.float32)
        grads = jax.grad(score, argnums=1)(state, images)
        saliency = jnp.abs((grads * (images - mean)).sum(axis=-1))  # [N, H, W]
        return _blur(_blur(saliency))  # a 5x5 binomial blur: regions rather than specks

    return jax.jit(heat)


def _blur(maps: jax.Array) -> jax.Array:
    """A 3x3 binomial blur of [N, H, W] maps (edges padded by reflection)."""
    kernel = jnp.asarray([0.25, 0.5, 0.25], jnp.float32)
    padded = jnp.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = sum(kernel[i] * padded[:, i : i + maps.shape[1], :] for i in range(3))
    return sum(kernel[j] * rows[:, :, j : j + maps.shape[2]] for j in range(3))


class _Tap(nnx.Module):
    """Wraps the last conv block: records each output and adds a zero `delta` to it, so the
    gradient with respect to the deltas is the gradient with respect to the features."""

    def __init__(self, inner: nnx.Module, deltas: list[jax.Array] | None):
        self.inner = inner
        self.deltas = nnx.data(deltas)
        self.outputs = nnx.data([])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.inner(x)
        self.outputs.append(y)
        return y if self.deltas is None else y + self.deltas[len(self.outputs) - 1]


def _gradcam_fn(graphdef: nnx.GraphDef, model: nnx.Module, record: Any) -> Callable:
    path = _last_conv_block(model)

    def score(state: nnx.State, images: jax.Array, deltas: list[jax.Array] | None) -> Any:
        net = nnx.merge(graphdef, state)
        tap = _Tap(_get(net, path), deltas)
        _set(net, path, tap)
        logits = models.predict_logits(net, images, **record.tta)
        return _top_logit_sum(logits), list(tap.outputs)

    def heat(state: nnx.State, images: jax.Array) -> jax.Array:
        # The feature maps' shapes, by tracing the forward (no compilation, no FLOPs).
        _, shapes = jax.eval_shape(lambda s, x: score(s, x, None), state, images)
        deltas = [jnp.zeros(f.shape, f.dtype) for f in shapes]
        grads, outputs = jax.grad(score, argnums=2, has_aux=True)(state, images, deltas)
        cam = 0.0
        for i, (grad, acts) in enumerate(zip(grads, outputs, strict=True)):
            weights = grad.mean(axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
            pass_cam = (weights * acts).sum(axis=-1)  # [N, h, w]
            cam = cam + (pass_cam[:, :, ::-1] if i == 1 else pass_cam)  # the mirror, unmirrored
        return jax.nn.relu(cam)

    return jax.jit(heat)


# ----------------------------------------------------------------------------- the net's layout

Path = tuple[str | int, ...]


def _last_conv_block(model: nnx.Module) -> Path:
    """Where Grad-CAM reads the features: an airbench net's last ConvBlock (after its norm and
    activation), else the last convolution of the net."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) > 0:
        return ("blocks", len(blocks) - 1)
    convs = [
        tuple(path)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (layers.Conv, nnx.Conv))
    ]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM")
    return convs[-1]


def _get(root: Any, path: Path) -> Any:
    node = root
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _set(root: Any, path: Path, value: Any) -> None:
    parent = _get(root, path[:-1])
    key = path[-1]
    if isinstance(key, int):
        parent[key] = value
    else:
        setattr(parent, key, value)


# ----------------------------------------------------------------------------- NumPy helpers


def _size_of(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    array = np.asarray(image)
    return int(array.shape[0]), int(array.shape[1])


def _normalise(heat: np.ndarray, method: str) -> np.ndarray:
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    heat = np.maximum(heat, 0.0)
    top = np.percentile(heat, _GRAD_INPUT_PERCENTILE) if method == "grad_input" else heat.max()
    if not top > 0:
        top = heat.max()
    if not top > 0:
        return np.zeros_like(heat, np.float32)
    return np.clip(heat / top, 0.0, 1.0).astype(np.float32)


def _resize(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    if heat.shape != (height, width):
        resized = Image.fromarray(heat.astype(np.float32), "F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
        heat = np.asarray(resized, np.float32)
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


# Stops of a dark-blue -> purple -> red -> yellow map (close to matplotlib's 'inferno').
_STOPS = np.asarray(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


def _colormap(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] float RGB, linearly between `_STOPS`."""
    position = heat * (len(_STOPS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_STOPS) - 2)
    frac = (position - low)[..., None]
    return _STOPS[low] * (1.0 - frac) + _STOPS[low + 1] * frac
