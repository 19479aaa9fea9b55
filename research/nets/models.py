"""The CNN family, in Flax NNX. Pick one by name with `Config.model`.

- `airbench94`: the net of airbench94 (Keller Jordan's CIFAR-10 speedrun), as published: a 2x2
  whitening stem with a bias and GELU, then three blocks of conv-pool-norm-act-conv-norm-act
  (batch norm without a scale, convolutions partly initialised to the identity), global max
  pooling and a linear head whose output is scaled by 1/9.
- `airbench94_muon`: the net of airbench94_muon (the current record, trained with Muon): the
  same, but the head starts with unit-variance weights and its output is divided by the
  number of features it reads (256), as published.
- `airbench`: the same layout with our first choices: a batch-normed stem, batch norm with a
  scale, LeCun-normal convolutions and a zero-initialised head (the Fashion-MNIST model).
- `baseline`: a small classic CNN (two conv-conv-pool stages, dense head with dropout).

Every model takes uint8 (or float) NHWC images in 0..255 and normalizes them itself, with the
dataset's mean and std, so training, evaluation and serving share one definition.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.configs import MODELS, Config
from research.nets.layers import Conv, max_pool, resolve_compute_dtype


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 or float images in 0..255 -> float32, zero mean and unit variance per channel."""
    images = images.astype(jnp.float32)
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# PyTorch's default initialisation of convolution and linear kernels (kaiming_uniform with
# a=sqrt(5)): uniform with variance 1 / (3 fan_in). airbench94 relies on it.
TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def unit_std_init(base: nnx.Initializer) -> nnx.Initializer:
    """`base`'s draw divided by its own standard deviation (airbench94_muon's head:
    `w *= 1 / w.std()`)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        weights = base(key, shape, dtype)
        return weights / jnp.std(weights, ddof=1)

    return init


def dirac_init(base: nnx.Initializer) -> nnx.Initializer:
    """`base`, with the first min(in, out) filters set to the identity (torch.nn.init.dirac_).

    airbench94 starts each 3x3 convolution as a partial identity, so the deep net begins close
    to a shallow one.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        kernel = base(key, shape, dtype)
        kh, kw, cin, cout = shape
        n = min(cin, cout)
        identity = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n))
        return kernel.at[..., :n].set(identity)

    return init


@dataclasses.dataclass(frozen=True)
class AirbenchVariant:
    """The choices that tell `airbench94` and `airbench` apart (see the module docstring)."""

    stem_norm: bool  # batch norm after the stem (else: a stem bias)
    norm_scale: bool  # batch norm learns a scale (else: only a bias)
    norm_momentum: float  # Flax convention: the weight of the old running average
    norm_epsilon: float
    kernel_init: nnx.Initializer  # the 3x3 convolutions
    stem_init: nnx.Initializer  # the stem, unless whitening replaces it (Config.whiten_stem)
    head_init: nnx.Initializer
    head_scale: float | None  # logits = head(features) * head_scale; None: 1 / features


AIRBENCH_VARIANTS = {
    "airbench": AirbenchVariant(
        stem_norm=True,
        norm_scale=True,
        norm_momentum=0.9,
        norm_epsilon=1e-5,
        kernel_init=nnx.initializers.lecun_normal(),
        stem_init=nnx.initializers.lecun_normal(),
        # Zero-initialised: max-pooled features are large, and random head weights would start
        # the loss far above log(num_classes).
        head_init=nnx.initializers.zeros_init(),
        head_scale=1.0,
    ),
    "airbench94": AirbenchVariant(
        stem_norm=False,
        norm_scale=False,
        norm_momentum=0.4,  # PyTorch momentum 0.6
        norm_epsilon=1e-12,
        kernel_init=dirac_init(TORCH_KERNEL_INIT),
        stem_init=TORCH_KERNEL_INIT,
        head_init=TORCH_KERNEL_INIT,
        head_scale=1 / 9,
    ),
}
# airbench94_muon: PyTorch's head init rescaled to unit standard deviation, logits / 256.
AIRBENCH_VARIANTS["airbench94_muon"] = dataclasses.replace(
    AIRBENCH_VARIANTS["airbench94"], head_init=unit_std_init(TORCH_KERNEL_INIT), head_scale=None
)


class ConvBlock(nnx.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ConvGroup)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        impl: str,
        variant: AirbenchVariant,
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        def conv(cin: int, cout: int) -> Conv:
            return Conv(
                cin,
                cout,
                3,
                impl=impl,
                kernel_init=variant.kernel_init,
                compute_dtype=compute_dtype,
                rngs=rngs,
            )

        def norm(features: int) -> nnx.BatchNorm:
            return nnx.BatchNorm(
                features,
                momentum=variant.norm_momentum,
                epsilon=variant.norm_epsilon,
                use_scale=variant.norm_scale,
                rngs=rngs,
            )

        self.conv1 = conv(in_features, out_features)
        self.norm1 = norm(out_features)
        self.conv2 = conv(out_features, out_features)
        self.norm2 = norm(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x, pool=2)  # max_pool(conv1(x)), only what the pool reads
        x = nnx.gelu(self.norm1(x), approximate=True)
        return nnx.gelu(self.norm2(self.conv2(x)), approximate=True)


class AirbenchNet(nnx.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        stem_width: int,
        mean: Sequence[float],
        std: Sequence[float],
        conv_impl: str = "auto",
        variant: str = "airbench",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        v = AIRBENCH_VARIANTS[variant]
        self.mean, self.std = tuple(mean), tuple(std)
        self.head_scale = v.head_scale if v.head_scale is not None else 1 / widths[-1]
        self.stem = Conv(
            in_channels,
            stem_width,
            2,
            padding="VALID",
            use_bias=not v.stem_norm,
            impl=conv_impl,
            kernel_init=v.stem_init,
            compute_dtype=compute_dtype,
            rngs=rngs,
        )
        self.stem_norm = (
            nnx.BatchNorm(stem_width, momentum=v.norm_momentum, epsilon=v.norm_epsilon, rngs=rngs)
            if v.stem_norm
            else nnx.data(None)
        )
        blocks, previous = [], stem_width
        for width in widths:
            blocks.append(
                ConvBlock(
                    previous,
                    width,
                    impl=conv_impl,
                    variant=v,
                    compute_dtype=compute_dtype,
                    rngs=rngs,
                )
            )
            previous = width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(
            previous, num_classes, use_bias=False, kernel_init=v.head_init, rngs=rngs
        )

    def embed(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the pooled features the head reads [N, widths[-1]], every stage's per-channel
        spatial mean and standard deviation, concatenated [N, S])."""
        x = self.stem(normalize(images, self.mean, self.std))
        if self.stem_norm is not None:
            x = self.stem_norm(x)
        x = nnx.gelu(x, approximate=True)
        stages = [x]
        for block in self.blocks:
            x = block(x)
            stages.append(x)
        return x.max(axis=(1, 2)), stage_statistics(stages)  # global max pooling

    def features(self, images: jax.Array) -> jax.Array:
        return self.embed(images)[0]

    def head_logits(self, features: jax.Array) -> jax.Array:
        logits = self.head(features)
        return logits if self.head_scale == 1.0 else logits * self.head_scale

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head_logits(self.features(images))


class BaselineNet(nnx.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        conv_impl: str = "auto",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
        **_: object,
    ):
        self.mean, self.std = tuple(mean), tuple(std)
        w1, w2, hidden = (tuple(widths) + (32, 64, 128))[:3]
        pairs = ((in_channels, w1), (w1, w1), (w1, w2), (w2, w2))
        self.convs = nnx.List(
            [
                Conv(cin, cout, 3, impl=conv_impl, compute_dtype=compute_dtype, rngs=rngs)
                for cin, cout in pairs
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(w, rngs=rngs) for w in (w1, w1, w2, w2)])
        self.dense = nnx.Linear(w2, hidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def embed(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(the pooled features the head reads [N, hidden], every stage's per-channel spatial
        mean and standard deviation, concatenated [N, S])."""
        x = normalize(images, self.mean, self.std)
        stages = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = nnx.relu(norm(conv(x)))
            if i % 2 == 1:
                x = max_pool(x)
                stages.append(x)
        pooled = x.mean(axis=(1, 2))
        return nnx.relu(self.dense(pooled)), stage_statistics(stages)

    def features(self, images: jax.Array) -> jax.Array:
        return self.embed(images)[0]

    def head_logits(self, features: jax.Array) -> jax.Array:
        return self.head(self.dropout(features))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head_logits(self.features(images))


def create_model(
    config: Config,
    *,
    num_classes: int,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Builds the model named by `config.model` for images of `image_shape` (H, W, C)."""
    kwargs = dict(
        in_channels=image_shape[-1],
        num_classes=num_classes,
        widths=config.widths,
        mean=mean,
        std=std,
        conv_impl=config.conv_impl,
        compute_dtype=resolve_compute_dtype(config.compute_dtype),
        rngs=rngs,
    )
    if config.model in AIRBENCH_VARIANTS:
        return AirbenchNet(stem_width=config.stem_width, variant=config.model, **kwargs)
    if config.model == "baseline":
        return BaselineNet(**kwargs)
    raise ValueError(f"Unknown model {config.model!r}; choose one of {', '.join(MODELS)}")


def tta_views(
    images: jax.Array, *, flip_tta: bool, translate_tta: bool = False
) -> list[tuple[jax.Array, float]]:
    """The views evaluation and serving average, with their weights: the image (and its mirror,
    with flip_tta); with translate_tta, airbench's tta_level 2: half the weight on those, a
    quarter each on the image shifted one pixel up-left and one down-right (reflect padding),
    each mirrored too under flip_tta."""

    def mirrored(x: jax.Array, weight: float) -> list[tuple[jax.Array, float]]:
        return [(x, weight / 2), (x[:, :, ::-1, :], weight / 2)] if flip_tta else [(x, weight)]

    if not translate_tta:
        return mirrored(images, 1.0)
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :height, :width], padded[:, 2:, 2:]
    return mirrored(images, 0.5) + mirrored(up_left, 0.25) + mirrored(down_right, 0.25)


def _weighted(parts: list[tuple[jax.Array, float]]) -> jax.Array:
    return sum(weight * value for value, weight in parts)


def predict_logits(
    model: nnx.Module, images: jax.Array, *, flip_tta: bool, translate_tta: bool = False
) -> jax.Array:
    """Logits for evaluation and serving, averaged over `tta_views`."""
    views = tta_views(images, flip_tta=flip_tta, translate_tta=translate_tta)
    return _weighted([(model(view), weight) for view, weight in views])


def stage_statistics(stages: Sequence[jax.Array]) -> jax.Array:
    """Per-channel spatial mean and standard deviation of each NHWC activation, concatenated:
    [N, 2 * sum of channels]. What the 'activations' "unknown" score models."""
    parts = []
    for x in stages:
        x = x.astype(jnp.float32)
        parts += [x.mean(axis=(1, 2)), x.std(axis=(1, 2))]
    return jnp.concatenate(parts, axis=-1)


def predict_logits_and_features(
    model: nnx.Module, images: jax.Array, *, flip_tta: bool, translate_tta: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logits as `predict_logits` gives them, pooled features [N, D], stage statistics
    [N, S]), all averaged over the same `tta_views`. The features and statistics feed the
    feature-space "unknown" scores (research.serving.calibration)."""
    views = tta_views(images, flip_tta=flip_tta, translate_tta=translate_tta)
    outputs = []
    for view, weight in views:
        features, stages = model.embed(view)
        outputs.append(((model.head_logits(features), features, stages), weight))
    return tuple(_weighted([(out[i], weight) for out, weight in outputs]) for i in range(3))


def log_probabilities(logits: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """The one softmax of the project: log-probabilities of `logits` at `temperature`, in float32.

    Training's evaluation, research.evaluate and serving (research.serving.classifier) all call it,
    so a
    calibrated temperature means the same everywhere.
    """
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def whitening_kernel(images: np.ndarray, kernel_size: int, eps: float = 5e-4) -> np.ndarray:
    """airbench's stem initialisation: a conv kernel that whitens kxk patches of `images`.

    `images` are normalized float [N, H, W, C]. Returns [k, k, C, 2*k*k*C]: each eigenvector
    of the patch covariance scaled by 1/sqrt(eigenvalue), and its negative (so a following
    GELU keeps both signs).
    """
    n, h, w, c = images.shape
    k = kernel_size
    patches = np.stack(
        [images[:, i : h - k + 1 + i, j : w - k + 1 + j, :] for i in range(k) for j in range(k)],
        axis=3,
    ).reshape(-1, k * k * c)  # flattened in (i, j, channel) order, like the kernel
    covariance = patches.T.astype(np.float64) @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    kernel = np.concatenate([scaled, -scaled], axis=1).reshape(k, k, c, 2 * k * k * c)
    return kernel.astype(np.float32)


def whitening_width(channels: int, kernel_size: int = 2) -> int:
    """The stem width that whitens `channels`-channel images: each direction of a k x k patch
    and its negative (24 for colour images and a 2x2 stem, 8 for grey ones)."""
    return 2 * kernel_size * kernel_size * channels


def init_stem_whitening(model: nnx.Module, images: np.ndarray) -> bool:
    """Sets an AirbenchNet's stem to whiten `images` (uint8 NHWC); False if not applicable:
    no stem, or a width other than `whitening_width` of the images' channels."""
    stem = getattr(model, "stem", None)
    if stem is None:
        return False
    k = stem.kernel_size[0]
    c = images.shape[-1]
    if stem.kernel.shape != (k, k, c, whitening_width(c, k)):
        return False
    normalized = (images.astype(np.float32) - np.asarray(model.mean)) / np.asarray(model.std)
    stem.kernel[...] = jnp.asarray(whitening_kernel(normalized, k))
    return True


def inference_state(model: nnx.Module) -> nnx.State:
    """What inference needs, and all an exported model holds: parameters and batch stats."""
    return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.partial(nnx.jit, static_argnames=("flip_tta", "translate_tta"))
def eval_step(
    model: nnx.Module,
    images: jax.Array,
    flip_tta: bool,
    temperature: float | jax.Array = 1.0,
    translate_tta: bool = False,
) -> jax.Array:
    """Log-probabilities of `images` at `temperature` (TTA averages the logits over
    models.tta_views)."""
    logits = predict_logits(model, images, flip_tta=flip_tta, translate_tta=translate_tta)
    return log_probabilities(logits, temperature)
