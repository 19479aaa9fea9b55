"""Training and evaluation library: `train_and_evaluate(config, workdir)`.

    python -m research.train --dataset=cifar10 --workdir=workdirs/cifar10

Running the same command again resumes from the latest checkpoint in the workdir. Ctrl-C or
SIGTERM saves a checkpoint and exits; the next run continues at that step.

The optimizer lives in research.optim, checkpoints in research.checkpoints; this module holds
the steps, the setup (`create_train_state`, which benchmarks/train_speed.py shares) and the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import checkpoints, cli, configs, device_input, distributed, layers, models, run_data
from research.augment import AugmentPolicy
from research.configs import Config
from research.errors import DataNotFoundError, NonFiniteLossError  # train.NonFiniteLossError too
from research.model_dir import CHECKPOINTS_SUBDIR
from research.optim import Lookahead, create_optimizer, lookahead_pull
from research.record import ServingRecord

log = logging.getLogger("research.train")


# ----------------------------------------------------------------------------- steps


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array], label_smoothing: float):
    logits = model(batch["image"])
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    loss = -(targets * models.log_probabilities(logits)).sum(-1).mean()
    return loss, logits


def _gradients(model, batch, label_smoothing: float, microbatches: int = 1):
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


def _update(model, opt, metrics, batch, label_smoothing: float, microbatches: int = 1):
    loss, logits, grads = _gradients(model, batch, label_smoothing, microbatches)
    opt.update(model, grads)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    return loss


def _host_update(
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
    return _update(model, opt, metrics, batch, label_smoothing, microbatches)


def _device_update(
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
    (the device input mode: research.device_input)."""
    batch = device_input.gather_batch(images, labels, indices, positions, seed, augmentation)
    return _update(model, opt, metrics, batch, label_smoothing, microbatches)


# XLA options the training loop's step compiles with. Fast math on XLA:CPU (ignored by other
# backends) lets LLVM reassociate and contract (fused multiply-add) the step's float
# arithmetic, as PyTorch's kernels do; NaNs, infinities, division and functions keep their
# IEEE behaviour (XLA's `xla_cpu_fast_math_honor_*` defaults). 3-4% faster a step on this CPU
# (README, Benchmarks); deterministic, so a resumed run still equals an uninterrupted one.
STEP_COMPILER_OPTIONS = {"xla_cpu_enable_fast_math": True}


def _functional(
    update: Callable[..., jax.Array], compiler_options: dict[str, Any] | None = None
) -> Callable[..., tuple[jax.Array, Any]]:
    """`update(model, opt, metrics, *args)` as one `jax.jit` function of the arrays alone:
    `(graphdef, arrays, *args) -> (loss, arrays)`, the arrays donated, compiled with
    `compiler_options` (default STEP_COMPILER_OPTIONS). Flax's "functional training loop"
    (guides/performance): nnx.jit walks the module graph in Python at every call (3-5 ms on this
    CPU, more than a GPU's whole step); this walks it once, at `nnx.split`."""

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


# The training loop's two steps, one per input mode, as `(graphdef, arrays, *args, **static) ->
# (loss, arrays)`; `_Stepper` calls them on `nnx.split` state.
train_step = _functional(_host_update)
device_train_step = _functional(_device_update)


def host_step(
    state: TrainState, config: Config
) -> tuple[Callable[[dict[str, jax.Array]], jax.Array], Callable[[], None]]:
    """(`step(batch) -> loss`, not waited for; `sync()`): the training loop's compiled step on
    a host batch (the tf.data input mode, no robust policy), for benchmarks. It steps a split
    copy of `state`'s arrays (donating them), as the loop does: `sync()` puts them back into
    `state`'s modules before anything else reads those."""
    stepper = _Stepper(state)
    return functools.partial(_host_batch_step, stepper, config), stepper.sync


def _host_batch_step(
    stepper: _Stepper,
    config: Config,
    batch: dict[str, jax.Array],
    seed: jax.Array | None = None,
    policy: AugmentPolicy | None = None,
) -> jax.Array:
    """The loop's compiled step on a host batch already on the devices."""
    return stepper(
        train_step,
        batch,
        label_smoothing=config.label_smoothing,
        seed=seed,
        robust=policy,
        microbatches=config.microbatches,
    )


@functools.partial(jax.jit, donate_argnums=1)  # not the EMA: a checkpoint may still hold it
def _functional_pull(graphdef, arrays, ema, decay):
    objects = nnx.merge(graphdef, arrays)
    ema = lookahead_pull(objects[0], ema, decay)
    return nnx.state(objects), ema


class _Stepper:
    """The training loop's steps on the state as one pytree of arrays (`_functional`). The
    modules fall behind while it steps (and pulls the lookahead's EMA): `sync()` before the host
    reads or saves them, and `reload()` after it changes them (the lookahead's end, the
    metrics' reset)."""

    def __init__(self, state: TrainState):
        self.objects = (state.model, state.opt, state.metrics)
        state.model.train()  # the split graph is the training one, whatever evaluation sets
        self.graphdef, self.arrays = nnx.split(self.objects)
        self.behind = False

    def __call__(self, step: Callable[..., tuple[jax.Array, Any]], *args, **static) -> jax.Array:
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
    logits = models.predict_logits(model, images, flip_tta=flip_tta, translate_tta=translate_tta)
    return models.log_probabilities(logits, temperature)


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


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """How long a run is, in optimizer steps."""

    per_epoch: int
    schedule: int  # the learning-rate and lookahead schedules' length: epochs x per_epoch
    total: int  # where this run stops: the schedule's end, or max_steps if sooner
    eval_every: int


def count_steps(config: Config, train_examples: int) -> StepCounts:
    """The step counts of `config` over `train_examples` (the last partial batch is dropped)."""
    per_epoch = train_examples // config.batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {train_examples} examples")
    schedule = max(int(config.epochs * per_epoch), 1)
    total = schedule if config.max_steps is None else min(schedule, config.max_steps)
    eval_every = max(int(config.eval_every_epochs * per_epoch), 1)
    return StepCounts(per_epoch=per_epoch, schedule=schedule, total=total, eval_every=eval_every)


@dataclasses.dataclass
class TrainState:
    """Everything a run updates, placed on the devices: what `create_train_state` returns."""

    model: nnx.Module
    opt: nnx.Optimizer
    metrics: nnx.MultiMetric  # accumulated on the device since the last evaluation
    lookahead: Lookahead | None
    checkpoints: ocp.CheckpointManager | None  # None: nothing is saved (benchmarks)
    step: int  # where training starts: 0, or the restored checkpoint's step
    data_sharding: NamedSharding  # batches: split over the devices
    replicated: NamedSharding  # state: a copy on every device

    def save(self, record: ServingRecord) -> None:
        """Checkpoints the state at `record.step`, with `record` as its metadata."""
        checkpoints.save_checkpoint(
            self.checkpoints, record.step, self.model, self.opt, record, self.lookahead
        )

    def take_metrics(self) -> dict[str, float]:
        """The training metrics since the last call, which starts them afresh."""
        values = {name: float(value) for name, value in self.metrics.compute().items()}
        self.metrics.reset()
        _replicate(self.replicated, self.metrics)
        return values


def create_train_state(
    config: Config,
    workdir: str | Path | None,
    *,
    num_classes: int,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    steps_per_epoch: int,
    whitening_images: Callable[[], np.ndarray] | None = None,
) -> TrainState:
    """The model, optimizer, metrics and lookahead of `config`, replicated over every
    process's devices and restored from the latest checkpoint in `workdir` when it holds one.

    A fresh airbench stem is whitened on `whitening_images()` (uint8 training images; None
    leaves it random). `workdir=None` keeps no checkpoints, as the speed benchmark does.
    """
    mesh = distributed.global_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size {config.batch_size} must divide over {mesh.size} devices")
    model = models.create_model(
        config,
        num_classes=num_classes,
        image_shape=tuple(image_shape),
        mean=tuple(mean),
        std=tuple(std),
        rngs=nnx.Rngs(config.seed),
    )
    opt = nnx.Optimizer(model, create_optimizer(config, steps_per_epoch), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    mngr = None
    if workdir is not None:
        mngr = checkpoints.checkpoint_manager(Path(workdir) / CHECKPOINTS_SUBDIR, config)
    resume = mngr is not None and mngr.latest_step() is not None
    if not resume and config.whiten_stem and whitening_images is not None:
        images = whitening_images()
        if models.init_stem_whitening(model, images):
            log.info("Stem initialised to whiten 2x2 patches of %d training images.", len(images))
    # After whitening: the average starts from the weights training starts from.
    lookahead = Lookahead(model, config.lookahead_every) if config.lookahead_every else None
    step = 0
    if resume:
        step = checkpoints.restore_checkpoint(mngr, config, model, opt, lookahead)
        log.info("Resumed from %s at step %d.", mngr.directory, step)
    replicated = NamedSharding(mesh, P())
    _replicate(replicated, model, opt, metrics)
    if lookahead is not None:
        lookahead.ema = distributed.replicate(lookahead.ema, replicated)
    return TrainState(
        model=model,
        opt=opt,
        metrics=metrics,
        lookahead=lookahead,
        checkpoints=mngr,
        step=step,
        data_sharding=NamedSharding(mesh, P("data")),
        replicated=replicated,
    )


def _replicate(sharding: NamedSharding, *nodes: Any) -> None:
    """One sharding for every state, so the jitted steps compile once."""
    for node in nodes:
        nnx.update(node, distributed.replicate(nnx.state(node), sharding))


def _normalization(config: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std: the config's, else the dataset spec's, else measured."""
    if config.mean is not None and config.std is not None:
        return tuple(config.mean), tuple(config.std)
    if (spec := configs.dataset_spec(config.dataset)) is not None:
        return spec.mean, spec.std
    from research import input_pipeline

    return input_pipeline.measure_mean_std(config)


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the metrics."""
    config.validate()
    # The dtype this machine resolves 'auto' to is the model's: stored, it is served the same.
    config = config.replace(compute_dtype=layers.resolve_compute_dtype(config.compute_dtype))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mean, std = _normalization(config)
    data = run_data.load_run_data(config, mean)
    num_classes = len(data.class_names)
    steps = count_steps(config, data.train_examples)
    state = create_train_state(
        config,
        workdir,
        num_classes=num_classes,
        image_shape=data.image_shape,
        mean=mean,
        std=std,
        steps_per_epoch=steps.per_epoch,
        whitening_images=data.whitening_images,
    )
    start_step = state.step
    record = functools.partial(
        checkpoints.serving_record,
        config,
        class_names=data.class_names,
        image_shape=data.image_shape,
        mean=mean,
        std=std,
    )
    evaluate = functools.partial(_evaluate, config, state, data, num_classes)
    stepper = _Stepper(state)
    feed = _feed(config, data, state, stepper, mean, start_step)
    main_process = distributed.is_main_process()  # the one that logs and writes results
    summary = _Summary(workdir if main_process else None)
    if main_process:
        print(_run_line(config, data, state, steps), flush=True)
    result: dict[str, Any] = {"step": start_step}
    stopping = False
    pending: list[tuple[int, jax.Array]] = []  # losses not yet checked for NaN
    eval_metrics: dict[str, Any] | None = None
    started = time.time()
    timer = _EpochTimer(config.batch_size)
    with _StopRequest() as stop, _progress(start_step, steps.total) as bar:
        for step in range(start_step, steps.total):
            if step == start_step:
                bar.set_description("compiling", refresh=False)
                log.info("Compiling the train step...")
            loss = feed(step, timer)
            if step == start_step:  # compiling: not training time (airbench times it apart too)
                jax.block_until_ready(loss)
                result["compile_seconds"] = time.time() - started
                timer.restart()
            done = step + 1
            pending.append((done, loss))
            bar.update(1)
            # A signal reaches processes at different steps: all stop at the same one.
            stopping = distributed.any_process(stop.signal is not None)
            if (lookahead := state.lookahead) is not None:  # lookahead.after_step, functional
                if (decay := lookahead.decay_at(done, steps.schedule)) is not None:
                    lookahead.ema = stepper.pull(lookahead.ema, decay)
                if done == steps.schedule:
                    stepper.sync()
                    lookahead.finish(state.model)
                    stepper.reload()
            if done % config.log_every_steps == 0 or done == steps.total or stopping:
                bar.set_description(f"epoch {done / steps.per_epoch:.2f}", refresh=False)
                bar.set_postfix(loss=f"{_check_finite(pending):.3f}", refresh=False)
                pending.clear()
            if done % steps.eval_every == 0 or done == steps.total:
                stepper.sync()
                train_metrics = state.take_metrics() | timer.take(loss)
                eval_metrics = evaluate(final=done == steps.total)
                elapsed = time.time() - started
                if main_process:
                    bar.write(_epoch_line(done, steps, train_metrics, eval_metrics, elapsed))
                summary.write(done, train_metrics, eval_metrics)
                scalars = _scalar_metrics(eval_metrics, train_metrics, elapsed)
                state.save(record(step=done, metrics=scalars))
                stepper.reload()  # the metrics were reset
                timer.restart()  # evaluation and the checkpoint are not training time
            elif done % config.checkpoint_every_steps == 0 or stopping:
                stepper.sync()
                state.save(record(step=done))
            result["step"] = done
            if stopping:
                break
    stepper.sync()
    if eval_metrics is None and not stopping:  # resumed a finished run: report it again
        eval_metrics = evaluate(final=True)
    state.checkpoints.wait_until_finished()
    state.checkpoints.close()
    summary.close()
    result.update(
        interrupted=stopping,
        total_steps=steps.total,
        wall_seconds=time.time() - started,
        # Stepping alone: steps after the first (whose time is compile_seconds), without
        # evaluations and checkpoint saves; what airbench calls its training time.
        loop_seconds=timer.total_seconds,
        eval=eval_metrics,
    )
    if stopping:
        if main_process:
            print(f"Stopped at step {result['step']}; run the same command to resume.", flush=True)
    else:
        # Every process calibrates (Orbax restores in step across processes; each computes and
        # atomically writes the same record); process 0 reports.
        if data.eval_split == "validation":  # calibrate on it; a test split is never fitted on
            from research import calibrate

            result["calibration"] = calibrate.fit_and_store(workdir, data_dir=config.data_dir)
        if main_process and "calibration" in result:
            print(
                f"Calibrated on validation: temperature {result['calibration']['temperature']:.3f}"
                f", '{result['calibration']['unknown_score']}' unknown threshold "
                f"{result['calibration']['unknown_threshold']:.4f}",
                flush=True,
            )
        if main_process:
            (workdir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def _feed(
    config: Config,
    data: run_data.RunData,
    state: TrainState,
    stepper: _Stepper,
    mean,
    start_step: int,
) -> Callable[[int, _EpochTimer], jax.Array]:
    """`feed(step, timer)` runs train step `step` on its batch, in the config's input mode,
    and returns its loss (not waited for); the timer counts the host's wait for data."""
    if data.train_arrays is not None:
        order = device_input.EpochOrder(data.train_examples, config.batch_size, config.seed)
        # The same arrays in every process: a copy of the split on every device.
        images, labels, seed = distributed.replicate(
            (data.train_arrays.images, data.train_arrays.labels, np.uint32(config.seed)),
            state.replicated,
        )
        augmentation = device_input.Augmentation.from_config(
            config, mean, epoch_examples=order.steps_per_epoch * config.batch_size
        )

        def device_feed(step: int, timer: _EpochTimer) -> jax.Array:
            with timer.waiting():
                indices, positions = (
                    distributed.put_replicated_batch(rows, state.data_sharding)
                    for rows in order.step(step)
                )
            return stepper(
                device_train_step,
                images,
                labels,
                indices,
                positions,
                seed,
                label_smoothing=config.label_smoothing,
                augmentation=augmentation,
                microbatches=config.microbatches,
            )

        return device_feed
    rows = distributed.process_rows(state.data_sharding, config.batch_size)
    iterator = data.train_iterator(start_step, rows)
    policy = device_input.robust_policy(config)
    seed = distributed.replicate(np.uint32(config.seed), state.replicated) if policy else None

    def host_feed(step: int, timer: _EpochTimer) -> jax.Array:
        with timer.waiting():
            batch = distributed.put_batch(next(iterator), state.data_sharding)
        return _host_batch_step(stepper, config, batch, seed, policy)

    return host_feed


class _EpochTimer:
    """Training telemetry between evaluations: images/s, time per step and the time the host
    waited for input (a slow input pipeline shows as a large wait)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.restart()

        self.total_seconds = 0.0  # every interval between restarts and takes, summed

    def restart(self) -> None:
        self.start, self.steps, self.wait = time.perf_counter(), 0, 0.0

    @contextlib.contextmanager
    def waiting(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.wait += time.perf_counter() - started
            self.steps += 1

    def take(self, last_loss: jax.Array) -> dict[str, float]:
        """The figures since the last restart; waits for the device to finish `last_loss`."""
        jax.block_until_ready(last_loss)
        seconds = time.perf_counter() - self.start
        self.total_seconds += seconds
        steps = max(self.steps, 1)
        return {
            "images_per_second": self.steps * self.batch_size / max(seconds, 1e-9),
            "step_ms": 1000 * seconds / steps,
            "data_wait_ms": 1000 * self.wait / steps,
        }


class _Summary:
    """The epoch figures to TensorBoard (when TensorFlow is installed) and to
    `<workdir>/metrics.jsonl`, one JSON object per evaluation (readable without TensorFlow)."""

    def __init__(self, workdir: Path | None):
        self.jsonl, self.tf, self.writer = None, None, None
        if workdir is None:  # not the main process: it writes nothing
            return
        self.jsonl = workdir / "metrics.jsonl"
        try:
            import tensorflow as tf
        except ImportError:
            return
        self.tf, self.writer = tf, tf.summary.create_file_writer(str(workdir / "tensorboard"))

    def write(self, step: int, train_metrics: dict, eval_metrics: dict) -> None:
        if self.jsonl is None:
            return
        split = eval_metrics["split"]
        scalars = {f"train/{name}": value for name, value in train_metrics.items()}
        scalars |= {f"{split}/{k}": eval_metrics[k] for k in ("loss", "accuracy")}
        views = {f"{split}/translate_tta": bool(eval_metrics.get("translate_tta"))}
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **scalars, **views}) + "\n")
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for name, value in scalars.items():
                    self.tf.summary.scalar(name, value)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _evaluate(
    config: Config,
    state: TrainState,
    data: run_data.RunData,
    num_classes: int,
    *,
    final: bool,
) -> dict[str, Any]:
    """The eval split's metrics, with the views the model is served with (`tta_views`) at the
    `final` evaluation. The interim ones, which show progress, leave out translate_tta's
    shifted views (a third of the cost), as airbench's per-epoch evaluations do: on CIFAR-10 at
    airbench94_muon's batch, 6 views of the 5,000 validation images cost ~45 s an epoch on
    this CPU, a quarter of an epoch's stepping. The best checkpoint is still chosen by these
    figures, which favours the last one: where a schedule decays to zero, the one it ends on."""
    translate_tta = config.translate_tta and final
    metrics = evaluate_model(
        state.model,
        data.eval_batches(config.batch_size),
        num_classes=num_classes,
        flip_tta=bool(config.flip_tta and configs.uses_flip(config)),
        sharding=state.data_sharding,
        translate_tta=translate_tta,
    )
    return {**metrics, "split": data.eval_split, "translate_tta": translate_tta}


def _run_line(config: Config, data: run_data.RunData, state: TrainState, steps) -> str:
    """What the run trains, on what, for how long: printed once at the start."""
    devices = jax.devices()
    return (
        f"{config.dataset}: {data.train_examples} train / {data.eval_examples or '?'} "
        f"{data.eval_split} examples, {len(data.class_names)} classes, {config.model} "
        f"({models.count_params(state.model):,} params, "
        f"{layers.resolve_compute_dtype(config.compute_dtype)}) on {len(devices)}x "
        f"{devices[0].platform}, {config.input} input, {steps.per_epoch} steps/epoch, "
        f"{steps.total} steps"
    )


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("Received %s: saving a checkpoint, then exiting.", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(losses: list[tuple[int, jax.Array]]) -> float:
    """The last loss, after checking all of them (one transfer, so the device keeps ahead)."""
    values = jax.device_get([loss for _, loss in losses])
    for (step, _), value in zip(losses, values, strict=True):
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"Training loss became {float(value)} at step {step}. Lower --learning_rate "
                "or check the data; the last good checkpoint is kept in the workdir."
            )
    return float(values[-1])


def _epoch_line(done: int, steps: StepCounts, train_metrics, eval_metrics, elapsed) -> str:
    return (
        f"epoch {done / steps.per_epoch:5.2f}  step {done:6d}  "
        f"train loss {train_metrics['loss']:.4f} acc {train_metrics['accuracy']:.4f}  "
        f"{eval_metrics['split']} loss {eval_metrics['loss']:.4f} "
        f"acc {eval_metrics['accuracy']:.4f}"
        f"{' (+ shifted views)' if eval_metrics.get('translate_tta') else ''}  "
        f"{train_metrics['images_per_second']:.0f} img/s, step {train_metrics['step_ms']:.0f} ms"
        f" (data wait {train_metrics['data_wait_ms']:.0f} ms)"
        f"  [{elapsed:.0f}s]"
    )


def _scalar_metrics(eval_metrics, train_metrics, elapsed) -> dict[str, Any]:
    """The metrics stored in a checkpoint's record (the best checkpoint is chosen by them)."""
    return {
        "eval_accuracy": eval_metrics["accuracy"],
        "eval_loss": eval_metrics["loss"],
        "eval_split": eval_metrics["split"],
        "eval_count": eval_metrics["count"],
        "train_accuracy": train_metrics["accuracy"],
        "train_loss": train_metrics["loss"],
        "train_seconds": round(elapsed, 1),
    }


class _progress:
    """A tqdm bar on a terminal; plain periodic lines when output is a file."""

    def __init__(self, start: int, total: int):
        from tqdm import tqdm

        self.bar = tqdm(
            initial=start,
            total=total,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
            disable=not distributed.is_main_process(),
        )

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- CLI


def _parse_value(text: str, annotation: str) -> Any:
    if text.lower() in ("none", "") and "None" in annotation:
        return None
    if annotation.startswith("tuple"):
        kind = float if "float" in annotation else int
        return tuple(kind(v) for v in text.split(",") if v)
    if annotation.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if annotation.startswith("int"):
        return int(text)
    if annotation.startswith("float"):
        return float(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", help="checkpoints, TensorBoard logs and results (default: workdirs/<dataset>)"
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(configs.RECIPES),
        help="start from this recipe instead of the dataset's defaults (research.configs), "
        "e.g. --dataset=cifar10 --recipe=airbench94: the SGD recipe of models/cifar10_v1",
    )
    cluster = parser.add_argument_group(
        "several processes (jax.distributed; each defaults to its environment variable)"
    )
    cluster.add_argument(
        "--coordinator_address",
        help=f"host:port of process 0, or 'auto' to detect a TPU pod or SLURM/MPI job "
        f"(${distributed.ENV_ADDRESS})",
        default=argparse.SUPPRESS,  # absent unless given, so the rest are Config fields
    )
    cluster.add_argument(
        "--num_processes",
        type=int,
        help=f"(${distributed.ENV_COUNT})",
        default=argparse.SUPPRESS,
    )
    cluster.add_argument(
        "--process_id",
        type=int,
        help=f"0..num_processes-1 (${distributed.ENV_ID})",
        default=argparse.SUPPRESS,
    )
    for field in dataclasses.fields(Config):
        annotation = str(field.type)
        parser.add_argument(
            f"--{field.name}",
            type=functools.partial(_parse_value, annotation=annotation),
            default=argparse.SUPPRESS,
            help=f"{annotation}",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging(logging.WARNING, force=True)  # force: over absl's handler
    args = vars(build_parser().parse_args(argv))
    workdir = args.pop("workdir", None)
    dataset = args.pop("dataset", "cifar10")
    recipe = args.pop("recipe", None)
    cluster = [
        args.pop(name, None) for name in ("coordinator_address", "num_processes", "process_id")
    ]
    try:
        distributed.initialize(distributed.ProcessGroup.from_flags(*cluster))
        if not distributed.is_main_process():  # process 0 reports; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        config = configs.get_config(dataset, recipe, **args)
        result = train_and_evaluate(config, workdir or Path("workdirs") / dataset)
    except (DataNotFoundError, ValueError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result["interrupted"]:
        return 130
    accuracy = result["eval"]["accuracy"] if result["eval"] else float("nan")
    if distributed.is_main_process():
        print(
            f"done: {result['eval']['split'] if result['eval'] else 'eval'} accuracy "
            f"{accuracy:.4f} after {result['step']} steps ({result['wall_seconds']:.0f}s; "
            f"stepping {result['loop_seconds']:.1f}s, compiling "
            f"{result.get('compile_seconds', 0):.1f}s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    cli.exec_with_malloc_tunables()
    sys.exit(main())
