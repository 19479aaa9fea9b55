"""Convolution and pooling layers that train fast on XLA:CPU.

XLA:CPU's native convolutions are slow, above all their backward passes (the gradients with
respect to the input and the kernel). A stride-1 convolution can instead be written as im2col:
the ``kh * kw`` shifted copies of the padded input are concatenated on the channel axis and
multiplied by the kernel reshaped to ``[kh * kw * in, out]``. That is one large matmul forward,
and its automatic derivative is two matmuls plus slices and pads, all of which XLA:CPU runs
well. ``benchmarks/training/conv.py`` measures the difference at the layer shapes our models use.

``Conv`` has the same parameters (names, shapes, layout, default initialisers) as
``nnx.Conv`` with 2-d ``kernel_size``, so checkpoints and code that read ``kernel``/``bias``
work with either, and ``impl`` changes only how the output is computed, never its value.
"""

import functools
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
    of airbench94 (1.1-2.6x on a quiet machine, `benchmarks/training/conv.py`; the 3x3-pixel last
    layer
    is a tie), and 'xla' on GPU/TPU, whose native convolutions are fast (cuDNN, TPU MXU).
    """
    if impl not in IMPLS:
        raise ValueError(f"Unknown conv impl {impl!r}; expected one of {IMPLS}.")
    if impl != "auto":
        return impl
    return "matmul" if (backend or jax.default_backend()) == "cpu" else "xla"


# /proc/cpuinfo flags of x86 CPUs that multiply bfloat16 natively (AVX512-BF16, AMX), and the
# ARM feature of the same.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (Linux; False where unknown)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features") and BF16_CPU_FLAGS & set(value.split()):
                    return True
    except OSError:
        pass
    return False


def resolve_compute_dtype(name: str, backend: str | None = None) -> ComputeDtype:
    """The concrete compute dtype for `name` ('auto', 'float32' or 'bfloat16') on `backend`.

    'auto' is bfloat16 (float32 accumulation, float32 parameters) on GPU and TPU, whose matrix
    units run bfloat16 several times faster, and on CPUs with bfloat16 instructions (AVX512-BF16,
    AMX, ARM BF16), where the training step of airbench94 runs 1.6x faster than in float32
    (`benchmarks/training/torch_peer.py`); float32 on other CPUs, where XLA would emulate bfloat16.
    """
    if name == "auto":
        if (backend or jax.default_backend()) != "cpu":
            return "bfloat16"
        return "bfloat16" if cpu_has_bfloat16() else "float32"
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


def _im2col(x: jax.Array, kernel_hw: tuple[int, int], pads) -> jax.Array:
    """The shifted copies of padded NHWC `x`, concatenated on channels: [N, H', W', kh*kw*C].

    Patch channel index (i * kw + j) * C + c matches the row-major reshape of an HWIO kernel.
    bfloat16 copies are moved as integers: XLA:CPU would widen a bfloat16 pad and concatenate
    to float32 and narrow the result back (twice the traffic, two conversions). With an even
    C, two neighbouring channels travel as one 32-bit integer (half the elements to copy: ~2%
    faster a step than 16-bit ones, same bits).
    """
    if x.dtype == jnp.bfloat16:
        *outer, c = x.shape
        if c % 2:
            moved = _im2col(lax.bitcast_convert_type(x, jnp.uint16), kernel_hw, pads)
            return lax.bitcast_convert_type(moved, jnp.bfloat16)
        pairs = lax.bitcast_convert_type(x.reshape(*outer, c // 2, 2), jnp.uint32)
        moved = _im2col(pairs, kernel_hw, pads)  # [N, H', W', kh*kw*C/2] pairs
        return lax.bitcast_convert_type(moved, jnp.bfloat16).reshape(*moved.shape[:-1], -1)
    kh, kw = kernel_hw
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    h = x.shape[1] - kh + 1
    w = x.shape[2] - kw + 1
    return jnp.concatenate(
        [x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1
    )


def _col2im(patches: jax.Array, kernel_hw: tuple[int, int], pads, shape) -> jax.Array:
    """The adjoint of ``_im2col``: each copy's gradient added back where it was cut from."""
    kh, kw = kernel_hw
    _, height, width, cin = shape
    padded_h = height + sum(pads[0])
    padded_w = width + sum(pads[1])
    h, w = patches.shape[1], patches.shape[2]
    total = None
    for i in range(kh):
        for j in range(kw):
            start = (i * kw + j) * cin
            part = jnp.pad(
                patches[..., start : start + cin],
                ((0, 0), (i, padded_h - h - i), (j, padded_w - w - j), (0, 0)),
            )
            total = part if total is None else total + part
    return total[:, pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_conv(x: jax.Array, kernel: jax.Array, pads) -> jax.Array:
    """Stride-1 im2col convolution with bfloat16 operands, float32 accumulation and result.

    `x` (any float dtype, NHWC) and the float32 master `kernel` (HWIO) are rounded to bfloat16
    for the product. The backward pass is written by hand for XLA:CPU, where the automatic one
    is slow (`benchmarks/training/profile_step.py`): it keeps only `x` (bfloat16) and recomputes the
    patches; it sums the patches' gradient back into the input's (col2im) in float32, which
    XLA:CPU vectorises, rather than in bfloat16, which it widens element by element; and it
    writes both of its products in the plain [M, K] @ [K, N] form, the one XLA:CPU multiplies
    in bfloat16 (a product with a transposed operand is widened to float32 or preceded by a
    transposing copy of the large operand). The input's gradient has `x`'s dtype.
    """
    kh, kw, cin, cout = kernel.shape
    patches = _im2col(x.astype(jnp.bfloat16), (kh, kw), pads)
    kernel = kernel.reshape(kh * kw * cin, cout).astype(jnp.bfloat16)
    return jnp.dot(patches, kernel, preferred_element_type=jnp.float32)


def _mixed_conv_fwd(x: jax.Array, kernel: jax.Array, pads):
    # A zero of x's dtype rides along: the backward returns the input's gradient in it.
    return mixed_conv(x, kernel, pads), (x.astype(jnp.bfloat16), kernel, jnp.zeros((), x.dtype))


def _mixed_conv_bwd(pads, residuals, grad):
    x, kernel, x_dtype = residuals
    kh, kw, cin, cout = kernel.shape
    rows = grad.reshape(-1, cout).astype(jnp.bfloat16)  # [M, out], M = N * H' * W'
    # Input: [M, out] @ [out, kh*kw*in]. The kernel is transposed before it is flattened, a
    # real (small) copy: XLA would fold ``flat_kernel.T`` into the product as a transposed
    # operand.
    kernel_t = kernel.transpose(3, 0, 1, 2).reshape(cout, kh * kw * cin).astype(jnp.bfloat16)
    dpatches = jnp.dot(rows, kernel_t, preferred_element_type=jnp.float32)
    dpatches = dpatches.reshape(*grad.shape[:-1], kh * kw * cin)
    dx = _col2im(dpatches, (kh, kw), pads, x.shape).astype(x_dtype.dtype)
    # Kernel: [out, M] @ [M, kh*kw*in], transposing the output gradient (`out` channels)
    # rather than the patches (kh*kw*in channels), then the small result back to HWIO.
    patches = _im2col(x, (kh, kw), pads).reshape(rows.shape[0], kh * kw * cin)
    grad_t = grad.astype(jnp.bfloat16).transpose(3, 0, 1, 2).reshape(cout, rows.shape[0])
    dkernel_t = jnp.dot(grad_t, patches, preferred_element_type=jnp.float32)
    return dx, dkernel_t.reshape(cout, kh, kw, cin).transpose(1, 2, 3, 0)


mixed_conv.defvjp(_mixed_conv_fwd, _mixed_conv_bwd)


def xla_conv(x: jax.Array, kernel: jax.Array, pads, mixed: bool) -> jax.Array:
    """XLA's own convolution (cuDNN on GPUs, the MXU on TPUs). `mixed`: bfloat16 operands and
    a bfloat16 product (accumulated in float32 by the convolution itself), widened to float32,
    as PyTorch's autocast does. Its derivative then converts the float32 output gradient to
    bfloat16 and computes both backward convolutions in bfloat16 too, two thirds of the work;
    a product asked for in float32 (``preferred_element_type``) would make JAX's derivative
    convolve the float32 gradient with the operands widened to float32 (docs/benchmarks.md)."""
    x = x.astype(jnp.bfloat16) if mixed else x
    kernel = kernel.astype(x.dtype)
    y = lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSION_NUMBERS)
    return y.astype(jnp.float32) if mixed else y


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    padding: Padding = "SAME",
    impl: Impl = "auto",
    compute_dtype: ComputeDtype = "float32",
    trim: tuple[int, int] = (0, 0),
) -> jax.Array:
    """Stride-1 2-d convolution of NHWC `x` with an HWIO `kernel`, computed by `impl`.

    Numerically the same function (up to float rounding) for every impl. With `compute_dtype`
    'bfloat16' the operands are rounded to bfloat16 and products accumulate in float32 (mixed
    precision: the result, and the kernel's gradient, are float32; the XLA path rounds its
    product and both gradients to bfloat16 and widens them, as autocast does: `xla_conv`).
    `trim` (rows, columns):
    the output's last rows and columns left out, never computed (less end padding, or a cropped
    input), for a consumer that would drop them.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown compute dtype {compute_dtype!r}; expected {COMPUTE_DTYPES}.")
    kh, kw, cin, cout = kernel.shape
    pads = _pads((kh, kw), padding)
    if any(trim):
        # An output row fewer is an input row fewer at the end: first the end padding, then
        # (once that is gone) the input itself.
        ends = [end - cut for (_, end), cut in zip(pads, trim, strict=True)]
        x = x[:, : x.shape[1] + min(ends[0], 0), : x.shape[2] + min(ends[1], 0)]
        pads = tuple((start, max(end, 0)) for (start, _), end in zip(pads, ends, strict=True))
    mixed = compute_dtype == "bfloat16"
    if resolve_impl(impl) == "xla":
        return xla_conv(x, kernel, pads, mixed)
    if (kh, kw) == (1, 1):
        if mixed:
            return mixed_dot(x.astype(jnp.bfloat16), kernel.reshape(cin, cout))
        return jnp.dot(x, kernel.reshape(cin, cout))
    if mixed:
        return mixed_conv(x, kernel, pads)
    patches = _im2col(x, (kh, kw), pads)
    return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout))


class Conv(nnx.Module):
    """A stride-1 2-d convolution over NHWC inputs, parameter-compatible with ``nnx.Conv``.

    Attributes: ``kernel`` [kh, kw, in_features, out_features] and, if ``use_bias``, ``bias``
    [out_features]. ``impl`` selects the computation: 'xla' (``lax.conv_general_dilated``),
    'matmul' (im2col: shifted copies concatenated on channels, then one matmul) or 'auto'
    (see ``resolve_impl``; decided when the module is called, so a model built on one backend
    runs well on another). ``compute_dtype`` 'bfloat16' multiplies in bfloat16 with float32
    accumulation and a float32 result (``conv2d``; on the XLA path rounded to bfloat16 first);
    the parameters stay float32 either way.
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

    def __call__(self, x: jax.Array, *, pool: int = 1) -> jax.Array:
        """Convolve `x` [N, H, W, in_features] -> [N, H', W', out_features]; with `pool` > 1,
        then ``max_pool(., pool)``, whose floor drops the last rows and columns of an output
        that `pool` does not divide (31x31 -> 15x15): those are not computed at all (the same
        values; airbench94's pooled convolutions on CIFAR-10 do 6%, 13% and 27% less work)."""
        kh, kw = self.kernel_size
        pads = _pads(self.kernel_size, self.padding)
        out_h = x.shape[1] + sum(pads[0]) - kh + 1
        out_w = x.shape[2] + sum(pads[1]) - kw + 1
        trim = (out_h % pool, out_w % pool)
        y = conv2d(x, self.kernel[...], self.padding, self.impl, self.compute_dtype, trim)
        if self.bias is not None:
            y = y + self.bias[...]
        return y if pool == 1 else max_pool(y, pool)


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
