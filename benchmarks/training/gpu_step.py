"""The device-mode train step's time per step on one accelerator, for each way of computing its
convolutions: what `layers.xla_conv`'s bfloat16 product buys (GPU, TPU; on a CPU the step uses
im2col unless `--conv_impl=xla`, and XLA:CPU widens bfloat16 convolutions to float32).

    python -m benchmarks.training.gpu_step [--steps 60] [--rounds 3] \
        [--recipes airbench94,airbench94_muon]
    python -m benchmarks.training.gpu_step --conv_impl=xla --batch_size=32 --steps=2  # CPU test

For each recipe (`--recipe` names; airbench94: batch 1024; airbench94_muon: 2,000 images in one
pass) and each variant, the loop's compiled step (`train.device_train_step`, the
same function `python -m research.train --input=device` steps) runs on a device-resident split
of 45,000 synthetic uint8 images, its batches gathered and augmented inside the step, indices
put on the device each step as the loop does. Variants:

- `bf16`: the step as it is (`compute_dtype` bfloat16, `xla_conv`'s bfloat16 product);
- `bf16_f32_product`: bfloat16 operands with the product asked for in float32
  (`preferred_element_type`), as before: JAX's derivative then convolves in float32;
- `fp32`: `--compute_dtype=float32`.

Rounds alternate the variants; each prints its median ms/step over the rounds, the images/s,
and the result types of the convolutions XLA compiled.
No TensorFlow needed: this runs on a machine with only jax, flax, optax and orbax.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research import configs, train
from research.data import device_input
from research.nets import layers
from research.train import distributed

TRAIN_EXAMPLES = 45_000  # CIFAR-10's training split after the 5,000 held out for validation
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def xla_conv_f32_product(x, kernel, pads, mixed):
    """The XLA convolution before `layers.xla_conv`: bfloat16 operands, float32 product."""
    x = x.astype(jnp.bfloat16) if mixed else x
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        (1, 1),
        pads,
        dimension_numbers=layers._DIMENSION_NUMBERS,
        preferred_element_type=jnp.float32 if mixed else None,
    )


VARIANTS = {
    "bf16": ("bfloat16", layers.xla_conv),
    "bf16_f32_product": ("bfloat16", xla_conv_f32_product),
    "fp32": ("float32", layers.xla_conv),
}


def conv_types(hlo: str) -> dict[str, int]:
    """Counts of the compiled convolutions (XLA's own, or a library's custom call such as
    cuDNN's) by their result's element type: 'kind -> type'."""
    counts: collections.Counter[str] = collections.Counter()
    for line in hlo.splitlines():
        found = re.search(r"= \(?(\w+)\[[^=]*? (convolution|custom-call)\(", line)
        if found is None:
            continue
        kind = found.group(2)
        if kind == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            if target is None or "conv" not in target.group(1).lower():
                continue
            kind = target.group(1)
        counts[f"{kind} -> {found.group(1)}"] += 1
    return dict(counts)


class Bench:
    """One recipe's step for one variant: state, data on the device, the compiled step."""

    def __init__(self, recipe: str, variant: str, overrides: dict):
        dtype, self.conv = VARIANTS[variant]
        self.config = configs.get_config(
            "cifar10", recipe, compute_dtype=dtype, input="device", **overrides
        )
        spec = configs.dataset_spec("cifar10")
        self.order = device_input.EpochOrder(
            TRAIN_EXAMPLES, self.config.batch_size, self.config.seed
        )
        self.state = train.create_train_state(
            self.config,
            None,
            num_classes=NUM_CLASSES,
            image_shape=IMAGE_SHAPE,
            mean=spec.mean,
            std=spec.std,
            steps_per_epoch=self.order.steps_per_epoch,
        )
        rng = np.random.default_rng(0)
        self.data = distributed.replicate(
            (
                rng.integers(0, 256, (TRAIN_EXAMPLES, *IMAGE_SHAPE), dtype=np.uint8),
                rng.integers(0, NUM_CLASSES, TRAIN_EXAMPLES).astype(np.int32),
                np.uint32(self.config.seed),
            ),
            self.state.replicated,
        )
        self.augmentation = device_input.Augmentation.from_config(
            self.config,
            spec.mean,
            epoch_examples=self.order.steps_per_epoch * self.config.batch_size,
        )
        self.step_fn = train.jit_step(train.device_train_update)  # its own trace of this conv
        self.stepper = train.Stepper(self.state)
        self.done = 0

    @contextlib.contextmanager
    def tracing(self):
        """This variant's convolution while the step is traced (at its first call)."""
        layers.xla_conv = self.conv
        try:
            yield
        finally:
            layers.xla_conv = VARIANTS["bf16"][1]

    def _args(self, step: int):
        indices, positions = (
            distributed.put_replicated_batch(rows, self.state.data_sharding)
            for rows in self.order.step(step)
        )
        return (*self.data[:2], indices, positions, self.data[2])

    def _static(self) -> dict:
        return dict(
            label_smoothing=self.config.label_smoothing,
            augmentation=self.augmentation,
            microbatches=self.config.microbatches,
        )

    def hlo(self) -> str:
        with self.tracing():
            lowered = self.step_fn.lower(
                self.stepper.graphdef, self.stepper.arrays, *self._args(0), **self._static()
            )
        return lowered.compile().as_text()

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps, dispatched as the loop does, waited for."""
        with self.tracing():
            start = time.perf_counter()
            for _ in range(steps):
                loss = self.stepper(self.step_fn, *self._args(self.done), **self._static())
                self.done += 1
            jax.block_until_ready(loss)
        return (time.perf_counter() - start) / steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipes", default="airbench94,airbench94_muon")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch_size", type=int, help="instead of the recipe's")
    parser.add_argument("--conv_impl", default="auto", help="xla: XLA's convolution on CPU too")
    args = parser.parse_args(argv)
    # The compiled-code listing (conv_types) compiles each step again: from this cache.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="gpu_step_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    device = jax.local_devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; "
        f"{' '.join(sys.argv[1:] if argv is None else argv) or '(defaults)'}",
        flush=True,
    )
    for recipe in args.recipes.split(","):
        # On one device the muon recipe's 2,000 images go through in one pass.
        overrides = {"microbatches": 1} if recipe == "airbench94_muon" else {}
        overrides["conv_impl"] = args.conv_impl
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        benches = {}
        for variant in args.variants.split(","):
            bench = Bench(recipe, variant, overrides)
            started = time.perf_counter()
            bench.run(2)  # compiles, then settles
            print(
                f"{recipe} {variant}: compiled in {time.perf_counter() - started:.1f}s; "
                f"convolutions {conv_types(bench.hlo())}",
                flush=True,
            )
            benches[variant] = bench
        times: dict[str, list[float]] = {variant: [] for variant in benches}
        for _ in range(args.rounds):
            for variant, bench in benches.items():
                times[variant].append(bench.run(args.steps))
        batch = next(iter(benches.values())).config.batch_size
        base = statistics.median(times[next(iter(times))])
        for variant, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"{recipe} batch {batch} {variant:>17}: {median * 1e3:6.2f} ms/step "
                f"({batch / median:8.0f} images/s; rounds "
                f"{', '.join(f'{s * 1e3:.2f}' for s in seconds)} ms; "
                f"{median / base:.2f}x the first)",
                flush=True,
            )
        for bench in benches.values():
            bench.stepper.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
