"""Time forward+backward of one convolution layer: XLA's native conv against im2col + matmul.

    python -m benchmarks.training.conv            # airbench94's layer shapes, batch 256, 5 runs
    python -m benchmarks.training.conv --batch 512 --runs 9

Each row is jax.grad (w.r.t. input and kernel) of a sum over the layer's output, jitted, timed
with block_until_ready; the two implementations run alternately so that load from other
processes hits both alike. 'ratio' is native / matmul (above 1: matmul is faster); 'auto' is
what research.nets.layers.Conv(impl='auto') picks on this backend.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from research.nets.layers import conv2d, resolve_impl

# (height = width, in_features, out_features, kernel_size, padding): the layers of airbench94
# at widths 64/256/256 on 32x32 images, in order (the 2x2 stem leaves 31x31, each pool floors
# the size), then 32x32 shapes from issue 2 for comparison.
SHAPES = [
    (32, 3, 24, 2, "VALID"),
    (31, 24, 64, 3, "SAME"),
    (15, 64, 64, 3, "SAME"),
    (15, 64, 256, 3, "SAME"),
    (7, 256, 256, 3, "SAME"),
    (3, 256, 256, 3, "SAME"),
    (32, 64, 64, 3, "SAME"),
    (32, 64, 128, 3, "SAME"),
    (16, 256, 256, 3, "SAME"),
]


def _make_step(impl, padding):
    def loss(x, kernel):
        return jnp.sum(conv2d(x, kernel, padding, impl))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def time_layer(size, cin, cout, kernel_size, padding, batch, runs):
    """Median milliseconds of forward+backward per impl, as {'xla': ms, 'matmul': ms}."""
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin), jnp.float32)
    kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, cin, cout)) * 0.1
    steps = {impl: _make_step(impl, padding) for impl in ("xla", "matmul")}
    for step in steps.values():
        jax.block_until_ready(step(x, kernel))  # compile
        jax.block_until_ready(step(x, kernel))  # warm up
    times = {impl: [] for impl in steps}
    for _ in range(runs):
        for impl, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(x, kernel))
            times[impl].append(time.perf_counter() - start)
    return {impl: 1e3 * statistics.median(t) for impl, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per impl and layer")
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} batch={args.batch} runs={args.runs} (median ms)")
    print(f"{'layer':<24} {'native':>9} {'matmul':>9} {'ratio':>6}  auto")
    for size, cin, cout, k, padding in SHAPES:
        ms = time_layer(size, cin, cout, k, padding, args.batch, args.runs)
        name = f"{size}x{size}x{cin}->{cout} {k}x{k}"
        ratio = ms["xla"] / ms["matmul"]
        auto = resolve_impl("auto")
        print(
            f"{name:<24} {ms['xla']:>9.1f} {ms['matmul']:>9.1f} {ratio:>6.2f}  {auto}", flush=True
        )


if __name__ == "__main__":
    main()
