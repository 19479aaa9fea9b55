"""The training step and the evaluation pass: what the loop calls, one hop away.

    stepper = Stepper(state)                      # the state split once into arrays
    loss = stepper(train_step, batch, label_smoothing=0.2)           # tf.data input mode
    loss = stepper(device_train_step, images, labels, indices, positions, seed,
                   label_smoothing=0.2, augmentation=augmentation)   # device input mode
    stepper.sync()                                # before the host reads the modules
    metrics = evaluate_model(state.model, batches, num_classes=10, flip_tta=True)

`train_step` and `device_train_step` are one `jax.jit` function each of `(graphdef, arrays,
*args)`: Flax's "functional training loop" (guides/performance). nnx.jit walks the module graph
in Python at every call (3-5 ms on a 2-core CPU, more than a GPU's whole step); these walk it
once, at `nnx.split`, and donate the arrays they update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from research.configs import Config
from research.data import device_input
from research.data.augment import AugmentPolicy
from research.nets import models
from research.nets.models import eval_step
from research.train import distributed
from research.train.optim import lookahead_pull
from research.train.state import TrainState

# XLA options the training loop's step compiles with. Fast math on XLA:CPU (ignored by other
# backends) lets LLVM reassociate and contract (fused multiply-add) the step's float
# arithmetic, as PyTorch's kernels do; NaNs, infinities, division and functions keep their
# IEEE behaviour (XLA's `xla_cpu_fast_math_honor_*` defaults). 3-4% faster a step on a Zen 4
# CPU (docs/benchmarks.md); deterministic, so a resumed run still equals an uninterrupted one.
STEP_COMPILER_OPTIONS = {"xla_cpu_enable_fast_math": True}


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array], label_smoothing: float):
    """(label-smoothed cross-entropy, logits) of `batch` under `model`."""
    logits = model(batch["image"])
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    loss = -(targets * models.log_probabilities(logits)).sum(-1).mean()
    return loss, logits


def compute_gradients(model, batch, label_smoothing: float, microbatches: int = 1):
    """(loss, logits, gradients) of the batch: in one pass, or averaged over `microbatches`
    interleaved slices taken one after the other (lax.scan), which needs the memory of one
    slice. Batch norm then normalizes each slice with its own statistics and updates its running
    averages after each (Config.microbatches)."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        (loss, logits), grads = grad_fn(model, batch, label_smoothing)
        return loss, logits, grads
    # [B, ...] -> [m, B / m, ...], slice j holding examples j, j + m, ...: each device's rows
    # of a data-parallel batch split evenly between the slices.
    slices = jax.tree.map(
        lambda x: jnp.swapaxes(
            x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1
        ),
        batch,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def one_slice(carry, piece):  # (the parameters ride in the carry, unchanged)
        params, rest, loss_sum, grad_sum = carry
        sliced = nnx.merge(graphdef, params, rest)
        (loss, logits), grads = grad_fn(sliced, piece, label_smoothing)
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        _, params, rest = nnx.split(sliced, nnx.Param, ...)
        return (params, rest, loss_sum + loss, grad_sum), logits

    start = (params, rest, jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (_, rest, loss_sum, grad_sum), logits = jax.lax.scan(one_slice, start, slices)
    nnx.update(model, rest)
    logits = jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1])  # back in batch order
    grads = jax.tree.map(lambda g: g / microbatches, grad_sum)
    return loss_sum / microbatches, logits, grads


def train_update(
    model: nnx.Module,
    opt: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    batch: dict[str, jax.Array],
    label_smoothing: float,
    seed: jax.Array | None = None,
    robust: AugmentPolicy | None = None,
    microbatches: int = 1,
) -> jax.Array:
    """One optimizer step on a batch the host prepared (the tf.data input mode); a `robust`
    policy is applied here, to image b with the key of (seed, batch['position'][b])."""
    if robust is not None:
        keys = device_input.example_keys(seed, batch["position"])
        batch = {
            "image": device_input.robust_augment(batch["image"], keys, robust),
            "label": batch["label"],
        }
    loss, logits, grads = compute_gradients(model, batch, label_smoothing, microbatches)
    opt.update(model, grads)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    return loss


def device_train_update(
    model: nnx.Module,
    opt: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    positions: jax.Array,
    seed: jax.Array,
    label_smoothing: float,
    augmentation: device_input.Augmentation,
    microbatches: int = 1,
) -> jax.Array:
    """One optimizer step on examples `indices` of the device-resident split, augmented here
    (the device input mode: research.data.device_input)."""
    batch = device_input.gather_batch(images, labels, indices, positions, seed, augmentation)
    return train_update(
        model, opt, metrics, batch, label_smoothing=label_smoothing, microbatches=microbatches
    )


def jit_step(
    update: Callable[..., jax.Array], compiler_options: dict[str, Any] | None = None
) -> Callable[..., tuple[jax.Array, Any]]:
    """`update(model, opt, metrics, *args)` as one `jax.jit` function of the arrays alone:
    `(graphdef, arrays, *args, **static) -> (loss, arrays)`, the arrays donated, compiled with
    `compiler_options` (default STEP_COMPILER_OPTIONS). Each call traces anew: a benchmark that
    swaps a layer's implementation builds its own step with it."""

    @functools.partial(
        jax.jit,
        static_argnames=("label_smoothing", "augmentation", "robust", "microbatches"),
        donate_argnums=1,
        compiler_options=STEP_COMPILER_OPTIONS if compiler_options is None else compiler_options,
    )
    def step(graphdef, arrays, *args, **static):
        objects = nnx.merge(graphdef, arrays)
        loss = update(*objects, *args, **static)
        return loss, nnx.state(objects)

    return step


# The training loop's two steps, one per input mode; `Stepper` calls them on `nnx.split` state.
train_step = jit_step(train_update)
device_train_step = jit_step(device_train_update)


@functools.partial(jax.jit, donate_argnums=1)  # not the EMA: a checkpoint may still hold it
def _functional_pull(graphdef, arrays, ema, decay):
    objects = nnx.merge(graphdef, arrays)
    ema = lookahead_pull(objects[0], ema, decay)
    return nnx.state(objects), ema


class Stepper:
    """The training loop's steps on the state as one pytree of arrays (`jit_step`). The
    modules fall behind while it steps (and pulls the lookahead's EMA): `sync()` before the host
    reads or saves them, and `reload()` after it changes them (the lookahead's end, the
    metrics' reset)."""

    def __init__(self, state: TrainState):
        self.objects = (state.model, state.opt, state.metrics)
        state.model.train()  # the split graph is the training one, whatever evaluation sets
        self.graphdef, self.arrays = nnx.split(self.objects)
        self.behind = False

    def __call__(self, step: Callable[..., tuple[jax.Array, Any]], *args, **static) -> jax.Array:
        """Runs `step` (train_step or device_train_step) on the arrays; returns its loss, not
        waited for."""
        loss, self.arrays = step(self.graphdef, self.arrays, *args, **static)
        self.behind = True
        return loss

    def pull(self, ema: Any, decay: float) -> Any:
        """The lookahead's pull (optim.lookahead_pull) on the arrays; returns the new EMA."""
        self.arrays, ema = _functional_pull(self.graphdef, self.arrays, ema, np.float32(decay))
        self.behind = True
        return ema

    def sync(self) -> None:
        if self.behind:
            nnx.update(self.objects, self.arrays)
            self.behind = False

    def reload(self) -> None:
        self.sync()  # (a no-op where the caller synced before changing the modules)
        self.arrays = nnx.state(self.objects)


def host_batch_step(
    stepper: Stepper,
    config: Config,
    batch: dict[str, jax.Array],
    seed: jax.Array | None = None,
    policy: AugmentPolicy | None = None,
) -> jax.Array:
    """The loop's compiled step on a host batch already on the devices, with `config`'s
    label smoothing and microbatches."""
    return stepper(
        train_step,
        batch,
        label_smoothing=config.label_smoothing,
        seed=seed,
        robust=policy,
        microbatches=config.microbatches,
    )


def host_step(
    state: TrainState, config: Config
) -> tuple[Callable[[dict[str, jax.Array]], jax.Array], Callable[[], None]]:
    """(`step(batch) -> loss`, not waited for; `sync()`): the training loop's compiled step on
    a host batch (the tf.data input mode, no robust policy), for benchmarks. It steps a split
    copy of `state`'s arrays (donating them), as the loop does: `sync()` puts them back into
    `state`'s modules before anything else reads those."""
    stepper = Stepper(state)
    return functools.partial(host_batch_step, stepper, config), stepper.sync


def evaluate_model(
    model: nnx.Module,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    num_classes: int,
    flip_tta: bool,
    sharding: NamedSharding | None = None,
    temperature: float = 1.0,
    translate_tta: bool = False,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix over padded batches."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, count = 0.0, 0
    for batch in batches:
        images = batch["image"]
        if sharding is not None:
            images = distributed.put_replicated_batch(images, sharding)
        log_probs = distributed.to_host(
            eval_step(model, images, flip_tta, temperature, translate_tta)
        )
        mask, labels = batch["mask"], batch["label"]
        log_probs, labels = log_probs[mask], labels[mask]
        loss_sum -= float(log_probs[np.arange(len(labels)), labels].sum(dtype=np.float64))
        count += len(labels)
        np.add.at(confusion, (labels, log_probs.argmax(-1)), 1)
    model.train()
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": float(confusion.trace() / max(count, 1)),
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.tolist(),
        "count": count,
    }
