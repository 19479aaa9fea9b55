"""Convolution and pooling layers that train fast on XLA:CPU.

XLA:CPU's native convolutions are slow, above all their backward passes (the gradients with
respect to the input and the kernel). A stride-1 convolution can instead be written as im2col:
the ``kh * kw`` shifted copies of the padded input are concatenated on the channel axis and
multiplied by the kernel reshaped to ``[kh * kw * in, out]``. That is one large matmul forward,
and its automatic derivative is two matmuls plus slices and pads, all of which XLA:CPU runs
well. ``benchmarks/conv.py`` measures the difference at the layer shapes our models use.

``Conv`` has the same parameters (names, shapes, layout, default initialisers) as
``nnx.Conv`` with 2-d ``kernel_size``, so checkpoints and code that read ``kernel``/``bias``
work with either, and ``impl`` changes only how the output is computed, never its value.
"""

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

Impl = Literal["auto", "xla", "matmul"]
ComputeDtype = Literal["float32", "bfloat16"]
Padding = Literal["SAME", "VALID"]

IMPLS: tuple[str, ...] = ("auto", "xla", "matmul")
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
PADDINGS: tuple[str, ...] = ("SAME", "VALID")

# nnx.Conv's defaults, so both layers initialise identically from the same seed.
DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
DEFAULT_BIAS_INIT = nnx.initializers.zeros_init()

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: Impl, backend: str | None = None) -> Literal["xla", "matmul"]:
    """Return the concrete implementation for `impl` on `backend` (default: JAX's default).

    'auto' is 'matmul' on CPU, where it beats XLA's convolution forward+backward on every layer
    of airbench94 (1.1-2.6x on a quiet machine, `benchmarks/conv.py`; the 3x3-pixel last layer
    is a tie), and 'xla' on GPU/TPU, whose native convolutions are fast (cuDNN, TPU MXU).
    """
    if impl not in IMPLS:
        raise ValueError(f"Unknown conv impl {impl!r}; expected one of {IMPLS}.")
    if impl != "auto":
        return impl
    return "matmul" if (backend or jax.default_backend()) == "cpu" else "xla"


def resolve_compute_dtype(name: str, backend: str | None = None) -> ComputeDtype:
    """The concrete compute dtype for `name` ('auto', 'float32' or 'bfloat16') on `backend`.

    'auto' is bfloat16 (float32 accumulation, float32 parameters) on GPU and TPU, whose matrix
    units run bfloat16 several times faster, and float32 on CPU.
    """
    if name == "auto":
        return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown compute dtype {name!r}; expected 'auto' or {COMPUTE_DTYPES}.")
    return name


def _pads(kernel_size: tuple[int, int], padding: Padding) -> tuple[tuple[int, int], ...]:
    if padding not in PADDINGS:
        raise ValueError(f"Unknown padding {padding!r}; expected one of {PADDINGS}.")
    if padding == "VALID":
        return ((0, 0), (0, 0))
    # XLA's 'SAME' for stride 1: the extra row/column of an even kernel goes at the end.
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size)


@jax.custom_vjp
def mixed_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` with bfloat16 operands and float32 accumulation and result.

    `x` is bfloat16 [..., K]; `kernel` is the float32 master weight [K, N], rounded to bfloat16
    for the product. The backward pass is bfloat16 matmuls too: the output gradient is rounded
    to bfloat16, the input gradient comes back in bfloat16 (it flows on through bfloat16 im2col
    copies) and the kernel gradient in float32, accumulated in float32. (JAX's own derivative of
    a dot with ``preferred_element_type=float32`` multiplies the float32 gradient by the
    bfloat16 operands, which XLA computes in float32: no faster than float32 throughout.)
    """
    return jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)


def _mixed_dot_fwd(x: jax.Array, kernel: jax.Array):
    return mixed_dot(x, kernel), (x, kernel.astype(x.dtype))


def _mixed_dot_bwd(residuals, grad):
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    dx = jnp.dot(grad, kernel.T, preferred_element_type=jnp.float32).astype(x.dtype)
    batch_axes = tuple(range(x.ndim - 1))
    dkernel = jnp.tensordot(x, grad, (batch_axes, batch_axes), preferred_element_type=jnp.float32)
    return dx, dkernel


mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    padding: Padding = "SAME",
    impl: Impl = "auto",
    compute_dtype: ComputeDtype = "float32",
) -> jax.Array:
    """Stride-1 2-d convolution of NHWC `x` with an HWIO `kernel`, computed by `impl`.

    Numerically the same function (up to float rounding) for every impl. With `compute_dtype`
    'bfloat16' the operands are rounded to bfloat16 and products accumulate in float32 (mixed
    precision: the result, and the kernel's gradient, stay float32).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown compute dtype {compute_dtype!r}; expected {COMPUTE_DTYPES}.")
    kh, kw, cin, cout = kernel.shape
    pads = _pads((kh, kw), padding)
    mixed = compute_dtype == "bfloat16"
    if mixed:
        x = x.astype(jnp.bfloat16)
    if resolve_impl(impl) == "xla":
        return lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            (1, 1),
            pads,
            dimension_numbers=_DIMENSION_NUMBERS,
            preferred_element_type=jnp.float32 if mixed else None,
        )
    dot = mixed_dot if mixed else jnp.dot
    if (kh, kw) == (1, 1):
        return dot(x, kernel.reshape(cin, cout))
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    h = x.shape[1] - kh + 1
    w = x.shape[2] - kw + 1
    # Patch channel index (i * kw + j) * cin + c matches the row-major reshape of the kernel.
    patches = jnp.concatenate(
        [x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    return dot(patches, kernel.reshape(kh * kw * cin, cout))


class Conv(nnx.Module):
    """A stride-1 2-d convolution over NHWC inputs, parameter-compatible with ``nnx.Conv``.

    Attributes: ``kernel`` [kh, kw, in_features, out_features] and, if ``use_bias``, ``bias``
    [out_features]. ``impl`` selects the computation: 'xla' (``lax.conv_general_dilated``),
    'matmul' (im2col: shifted copies concatenated on channels, then one matmul) or 'auto'
    (see ``resolve_impl``; decided when the module is called, so a model built on one backend
    runs well on another). ``compute_dtype`` 'bfloat16' multiplies in bfloat16 with float32
    accumulation and a float32 result (``conv2d``); the parameters stay float32 either way.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        padding: Padding = "SAME",
        use_bias: bool = False,
        impl: Impl = "auto",
        kernel_init: nnx.Initializer = DEFAULT_KERNEL_INIT,
        bias_init: nnx.Initializer = DEFAULT_BIAS_INIT,
        compute_dtype: ComputeDtype = "float32",
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        kernel_size = tuple(kernel_size)
        if len(kernel_size) != 2:
            raise ValueError(f"kernel_size must be an int or a pair, got {kernel_size!r}.")
        _pads(kernel_size, padding)
        resolve_impl(impl)
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"Unknown compute dtype {compute_dtype!r}; expected {COMPUTE_DTYPES}.")
        shape = (*kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
            if use_bias
            else nnx.data(None)
        )
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.padding = padding
        self.impl = impl
        self.compute_dtype = compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve `x` [N, H, W, in_features] -> [N, H', W', out_features]."""
        y = conv2d(x, self.kernel[...], self.padding, self.impl, self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def max_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """Non-overlapping `size` x `size` max pooling of NHWC `x`, as a reshape and a max.

    Odd sizes are floored, the last row or column dropped (31x31 -> 15x15, 27 -> 13), as
    ``nnx.max_pool(x, (size, size), (size, size))`` does. Same forward values, but the gradient
    is an elementwise select instead of XLA's select_and_scatter, which is slow on CPU. Where a
    window holds several equal maxima, the gradient is shared among them instead of going to one.
    """
    n, h, w, c = x.shape
    h2, w2 = h // size, w // size
    x = x[:, : h2 * size, : w2 * size]
    return x.reshape(n, h2, size, w2, size, c).max(axis=(2, 4))
