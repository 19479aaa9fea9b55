"""The training loop: `train_and_evaluate(config, workdir)`, Flax's shape. It resumes from
the workdir's latest checkpoint; SIGINT or SIGTERM saves a checkpoint and exits, and the next
run continues at that step. The steps are research.train.steps; the state research.train.state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from research import configs
from research.configs import Config, runtime
from research.data import device_input, sources
from research.evaluation import calibrate
from research.nets import layers, models
from research.serving.artifacts import METRICS_JSONL, RESULTS_FILE, TENSORBOARD_SUBDIR
from research.serving.errors import NonFiniteLossError
from research.train import checkpoints, distributed
from research.train.state import TrainState, create_train_state
from research.train.steps import Stepper, device_train_step, evaluate_model, host_batch_step

log = logging.getLogger("research.train")


# ----------------------------------------------------------------------------- loop


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the metrics.

    One linear function, read top to bottom as Flax's examples keep theirs: the order of the
    step, the lookahead's pull, logging, evaluation and checkpoints is the loop's meaning, so
    it stays in one place rather than split over helpers (hence its length)."""
    config.validate()
    # The dtype this machine resolves 'auto' to is the model's: stored, it is served the same.
    config = config.replace(compute_dtype=layers.resolve_compute_dtype(config.compute_dtype))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mean, std = _normalization(config)
    data = sources.load_run_data(config, mean)
    num_classes = len(data.class_names)
    steps = configs.count_steps(config, data.train_examples)
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
    stepper = Stepper(state)
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
            result["calibration"] = calibrate.fit_and_store(workdir, data_dir=config.data_dir)
        if main_process and "calibration" in result:
            print(
                f"Calibrated on validation: temperature {result['calibration']['temperature']:.3f}"
                f", '{result['calibration']['unknown_score']}' unknown threshold "
                f"{result['calibration']['unknown_threshold']:.4f}",
                flush=True,
            )
        # The whole run's, calibration included (what `/usr/bin/time -v` calls its maximum
        # resident set size).
        result["peak_rss_bytes"] = runtime.peak_rss_bytes()
        result["allocator"] = runtime.allocator()
        if main_process:
            (workdir / RESULTS_FILE).write_text(json.dumps(result, indent=2))
    return result


def _feed(
    config: Config,
    data: sources.RunData,
    state: TrainState,
    stepper: Stepper,
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
        return host_batch_step(stepper, config, batch, seed, policy)

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
        self.jsonl = workdir / METRICS_JSONL
        try:
            import tensorflow as tf
        except ImportError:
            return
        self.tf, self.writer = tf, tf.summary.create_file_writer(str(workdir / TENSORBOARD_SUBDIR))

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
    data: sources.RunData,
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
        data.eval_batches(_eval_batch_size(config, state)),
        num_classes=num_classes,
        flip_tta=bool(config.flip_tta and configs.uses_flip(config)),
        sharding=state.data_sharding,
        translate_tta=translate_tta,
    )
    return {**metrics, "split": data.eval_split, "translate_tta": translate_tta}


# Images an evaluation batch holds at most. The final evaluation runs six views of each image
# (translate_tta): at the training batch of 1,024 that pass held 4.8 GB, twice the training
# step's memory; a batch of 256 holds a quarter, and per-image results do not depend on it.
EVAL_BATCH_SIZE = 256


def _eval_batch_size(config: Config, state: TrainState) -> int:
    """The training batch, capped at EVAL_BATCH_SIZE where that still divides over the
    devices."""
    devices = state.data_sharding.mesh.size
    if config.batch_size > EVAL_BATCH_SIZE and EVAL_BATCH_SIZE % devices == 0:
        return EVAL_BATCH_SIZE
    return config.batch_size


def _run_line(config: Config, data: sources.RunData, state: TrainState, steps) -> str:
    """What the run trains, on what, for how long: printed once at the start."""
    devices = jax.devices()
    return (
        f"{config.dataset}: {data.train_examples} train / {data.eval_examples or '?'} "
        f"{data.eval_split} examples, {len(data.class_names)} classes, {config.model} "
        f"({models.count_params(state.model):,} params, "
        f"{layers.resolve_compute_dtype(config.compute_dtype)}) on {len(devices)}x "
        f"{devices[0].platform}, {config.input} input, {steps.per_epoch} steps/epoch, "
        f"{steps.total} steps, {runtime.allocator()} malloc"
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


def _epoch_line(done: int, steps: configs.StepCounts, train_metrics, eval_metrics, elapsed) -> str:
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
        from tqdm import tqdm  # the bar only where the loop runs

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


def _normalization(config: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std: the config's, else the dataset spec's, else measured."""
    if config.mean is not None and config.std is not None:
        return tuple(config.mean), tuple(config.std)
    if (spec := configs.dataset_spec(config.dataset)) is not None:
        return spec.mean, spec.std
    from research.data import pipeline  # TensorFlow: only to measure a new dataset

    return pipeline.measure_mean_std(config)
