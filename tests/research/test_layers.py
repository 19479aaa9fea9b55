"""research.nets.layers.Conv computes what nnx.Conv computes, with either implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from research.nets.layers import Conv, max_pool, resolve_impl

# (kernel_size, padding, in_features, out_features, height, width)
CASES = [
    (3, "SAME", 4, 6, 8, 8),
    (3, "VALID", 4, 6, 7, 9),
    (1, "SAME", 5, 3, 6, 6),
    (2, "VALID", 3, 8, 9, 9),
    (2, "SAME", 3, 8, 6, 7),
    ((3, 1), "SAME", 2, 4, 5, 6),
    (5, "SAME", 3, 4, 8, 8),
]
IMPLS = ["xla", "matmul"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _make_pair(kernel_size, padding, cin, cout, impl, use_bias=True):
    ours = Conv(
        cin, cout, kernel_size, padding=padding, use_bias=use_bias, impl=impl, rngs=nnx.Rngs(0)
    )
    size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ref = nnx.Conv(cin, cout, size, padding=padding, use_bias=use_bias, rngs=nnx.Rngs(1))
    ref.kernel[...] = ours.kernel[...]
    if use_bias:
        ours.bias[...] = jnp.linspace(-1.0, 1.0, cout)
        ref.bias[...] = ours.bias[...]
    return ours, ref


def _input(cin, h, w, batch=2):
    return jax.random.normal(jax.random.key(42), (batch, h, w, cin), jnp.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("kernel_size", "padding", "cin", "cout", "h", "w"), CASES)
def test_forward_equals_nnx_conv(kernel_size, padding, cin, cout, h, w, impl):
    """Outputs match nnx.Conv with the same kernel and bias."""
    ours, ref = _make_pair(kernel_size, padding, cin, cout, impl)
    x = _input(cin, h, w)
    y = ours(x)
    expected = ref(x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **TOL)


@nnx.jit
def _grads(model, x):
    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    return nnx.grad(loss, argnums=(0, 1))(model, x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("kernel_size", "padding", "cin", "cout", "h", "w"), CASES)
def test_gradients_equal_nnx_conv(kernel_size, padding, cin, cout, h, w, impl):
    """Jitted gradients w.r.t. the input, kernel and bias match nnx.Conv's."""
    ours, ref = _make_pair(kernel_size, padding, cin, cout, impl)
    x = _input(cin, h, w)
    got_params, got_x = _grads(ours, x)
    ref_params, ref_x = _grads(ref, x)
    np.testing.assert_allclose(got_x, ref_x, **TOL)
    np.testing.assert_allclose(got_params["kernel"][...], ref_params["kernel"][...], **TOL)
    np.testing.assert_allclose(got_params["bias"][...], ref_params["bias"][...], **TOL)


def test_params_have_nnx_conv_shapes_and_names():
    """kernel is [kh, kw, in, out]; bias is [out] and present only with use_bias."""
    plain = Conv(24, 64, rngs=nnx.Rngs(0))
    assert plain.kernel.shape == (3, 3, 24, 64)
    assert plain.bias is None
    biased = Conv(3, 24, 2, padding="VALID", use_bias=True, rngs=nnx.Rngs(0))
    assert biased.kernel.shape == (2, 2, 3, 24)
    assert biased.bias.shape == (24,)
    assert [path for path, _ in nnx.to_flat_state(nnx.state(plain, nnx.Param))] == [("kernel",)]


def test_default_init_matches_nnx_conv():
    """With equal seeds the default kernel equals nnx.Conv's (lecun_normal)."""
    ours = Conv(8, 16, 3, rngs=nnx.Rngs(3))
    ref = nnx.Conv(8, 16, (3, 3), use_bias=False, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(ours.kernel[...], ref.kernel[...])


def test_auto_picks_matmul_on_cpu_and_xla_on_accelerators():
    """'auto' is the im2col 'matmul' on CPU and XLA's native convolution on GPU and TPU."""
    assert resolve_impl("auto", "cpu") == "matmul"
    assert resolve_impl("auto", "gpu") == "xla"
    assert resolve_impl("auto", "tpu") == "xla"
    assert resolve_impl("xla", "cpu") == "xla"
    assert resolve_impl("matmul", "gpu") == "matmul"


def test_unknown_options_are_rejected():
    """An unknown impl or padding fails at construction, naming the valid choices."""
    with pytest.raises(ValueError, match="matmul"):
        Conv(3, 4, impl="fast", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="VALID"):
        Conv(3, 4, padding="FULL", rngs=nnx.Rngs(0))


# (height, width, size): even sizes, and the odd maps of airbench94 on CIFAR-10 (31x31 after
# the 2x2 VALID stem) and on Fashion-MNIST (27x27, then 13x13 and 6x6).
POOL_CASES = [(8, 6, 2), (31, 31, 2), (27, 27, 2), (13, 13, 2), (7, 9, 3), (3, 3, 2)]


def _reference_pools(size):
    """nnx.max_pool and lax.reduce_window, both VALID: the references max_pool must match."""
    window = (1, size, size, 1)
    return [
        lambda x: nnx.max_pool(x, (size, size), (size, size)),
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID"),
    ]


@pytest.mark.parametrize(("h", "w", "size"), POOL_CASES)
def test_max_pool_floors_odd_sizes_like_nnx_max_pool(h, w, size):
    """max_pool drops the odd last row/column (31 -> 15, 27 -> 13) and keeps the values."""
    x = _input(3, h, w)
    got = max_pool(x, size)
    assert got.shape == (2, h // size, w // size, 3)
    for reference in _reference_pools(size):
        np.testing.assert_array_equal(got, reference(x))


@pytest.mark.parametrize(("h", "w", "size"), POOL_CASES)
def test_max_pool_gradient_equals_the_references(h, w, size):
    """Without ties, the input gradient is nnx.max_pool's and reduce_window's, under jit too."""
    x = _input(3, h, w)
    got = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(max_pool(x, size)))))(x)
    for reference in _reference_pools(size):
        expected = jax.grad(lambda x, f=reference: jnp.sum(jnp.sin(f(x))))(x)
        np.testing.assert_allclose(got, expected, **TOL)
    got = np.asarray(got)  # the dropped rows and columns get no gradient
    assert not got[:, (h // size) * size :].any() and not got[:, :, (w // size) * size :].any()


def test_max_pool_shares_the_gradient_of_tied_maxima():
    """A window of four equal maxima passes a quarter of the gradient to each."""
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(jax.grad(lambda x: max_pool(x).sum())(x), np.full(x.shape, 0.25))


def _rounded(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("kernel_size", "padding", "cin", "cout", "h", "w"), CASES)
def test_bfloat16_conv_gradients_match_the_float32_conv_of_the_rounded_operands(
    kernel_size, padding, cin, cout, h, w, x_dtype
):
    """conv2d(compute_dtype='bfloat16') on the matmul path (research.nets.layers.mixed_conv and its
    hand-written backward: col2im in float32, products in the plain [M, K] @ [K, N] form)
    gives the value and the input and kernel gradients of XLA's float32 convolution of the
    bfloat16-rounded operands, to bfloat16 precision; the input's gradient comes back in the
    input's dtype and the kernel's in float32."""
    from research.nets.layers import conv2d

    size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    keys = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(keys[0], (3, h, w, cin), jnp.float32).astype(x_dtype)
    kernel = jax.random.normal(keys[1], (*size, cin, cout), jnp.float32)
    out_shape = jax.eval_shape(lambda a, k: conv2d(a, k, padding, "xla"), x, kernel).shape
    # The output gradient is rounded to bfloat16 in the backward pass: give one that is exact.
    weights = _rounded(jax.random.normal(keys[2], out_shape, jnp.float32))

    def ours(a, k):
        return conv2d(a, k, padding, "matmul", "bfloat16")

    def reference(a, k):
        return conv2d(_rounded(a), _rounded(k), padding, "xla", "float32")

    def loss(conv):
        return jax.jit(jax.value_and_grad(lambda a, k: (conv(a, k) * weights).sum(), (0, 1)))

    (value, (dx, dk)), (ref_value, (rx, rk)) = loss(ours)(x, kernel), loss(reference)(x, kernel)
    assert dx.dtype == x_dtype and dk.dtype == jnp.float32
    np.testing.assert_allclose(value, ref_value, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dx, np.float32), rx, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(dk, rk, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("kernel_size", "padding", "cin", "cout", "h", "w"), CASES)
def test_the_xla_bfloat16_convolution_lowers_all_three_convolutions_to_bfloat16(
    kernel_size, padding, cin, cout, h, w, x_dtype
):
    """conv2d(impl='xla', compute_dtype='bfloat16'), the path GPUs and TPUs take, lowers every
    convolution of its value and gradients to bfloat16 operands and a bfloat16 product: none
    widens the output gradient or the operands to float32 (on an H200 that made the step 1.7x
    slower: README, Benchmarks). Its result is float32, and its value and gradients are those
    of the float32 convolution of the rounded operands to bfloat16 precision; the input's
    gradient comes back in the input's dtype and the kernel's in float32."""
    from research.nets.layers import conv2d

    size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    keys = jax.random.split(jax.random.key(11), 3)
    x = jax.random.normal(keys[0], (3, h, w, cin), jnp.float32).astype(x_dtype)
    kernel = jax.random.normal(keys[1], (*size, cin, cout), jnp.float32)

    def ours_conv(a, k):
        return conv2d(a, k, padding, "xla", "bfloat16")

    out = jax.eval_shape(ours_conv, x, kernel)
    assert out.dtype == jnp.float32
    weights = _rounded(jax.random.normal(keys[2], out.shape, jnp.float32))

    def loss(conv):
        return jax.value_and_grad(lambda a, k: (conv(a, k) * weights).sum(), (0, 1))

    ours = loss(ours_conv)
    lowered = jax.jit(ours).lower(x, kernel).as_text()
    signatures = [line.split(" : ")[-1] for line in lowered.splitlines() if "convolution" in line]
    assert len(signatures) == 3  # the value, the input's and the kernel's gradients
    for signature in signatures:
        assert "f32" not in signature and signature.count("bf16") == 3, signature

    (value, (dx, dk)) = jax.jit(ours)(x, kernel)
    reference = loss(lambda a, k: conv2d(_rounded(a), _rounded(k), padding, "xla", "float32"))
    (ref_value, (rx, rk)) = jax.jit(reference)(x, kernel)
    assert dx.dtype == x_dtype and dk.dtype == jnp.float32
    np.testing.assert_allclose(value, ref_value, rtol=1e-2, atol=1e-1)
    np.testing.assert_allclose(np.asarray(dx, np.float32), rx, rtol=2e-2, atol=3e-2)
    np.testing.assert_allclose(dk, rk, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("cin", [3, 4])
def test_bfloat16_im2col_moves_the_exact_bits_for_odd_and_even_channel_counts(cin):
    """The bfloat16 im2col (channels moved in pairs as 32-bit integers when their count is
    even, one by one as 16-bit integers when odd) equals the float32 im2col of the same values,
    bit for bit, in the patch order (i * kw + j) * C + c."""
    from research.nets.layers import _im2col

    x = jax.random.normal(jax.random.key(3), (2, 5, 6, cin), jnp.float32).astype(jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    ours = _im2col(x, (3, 3), pads)
    reference = _im2col(x.astype(jnp.float32), (3, 3), pads)
    assert ours.dtype == jnp.bfloat16 and ours.shape == (2, 5, 6, 9 * cin)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(reference))


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("kernel_size", "padding", "h", "w"),
    [
        (3, "SAME", 7, 7),
        (3, "SAME", 6, 7),
        (3, "VALID", 8, 9),
        (1, "SAME", 5, 5),
        (2, "SAME", 5, 6),
    ],
)
def test_pooled_conv_equals_max_pool_of_the_full_conv(
    kernel_size, padding, h, w, impl, compute_dtype
):
    """Conv(..)(x, pool=2), which leaves out the output rows and columns max_pool's floor drops
    (less end padding, or a cropped input), gives max_pool(Conv(..)(x)): the same values and
    the same gradients for the input, kernel and bias, with odd and even maps."""
    conv = Conv(
        3,
        4,
        kernel_size,
        padding=padding,
        use_bias=True,
        impl=impl,
        compute_dtype=compute_dtype,
        bias_init=nnx.initializers.normal(1.0),
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(1), (2, h, w, 3), jnp.float32)

    def run(pooled):
        def loss(conv, x):
            y = conv(x, pool=2) if pooled else max_pool(conv(x), 2)
            return (y * jnp.arange(y.size).reshape(y.shape) / y.size).sum(), y

        (module_grads, x_grad), y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(conv, x)
        return y, (x_grad, module_grads["kernel"][...], module_grads["bias"][...])

    (ours, ours_grads), (reference, reference_grads) = run(True), run(False)
    assert ours.shape == reference.shape == (2, reference.shape[1], reference.shape[2], 4)
    np.testing.assert_allclose(ours, reference, **TOL)
    for got, want in zip(ours_grads, reference_grads, strict=True):
        np.testing.assert_allclose(got, want, **TOL)
