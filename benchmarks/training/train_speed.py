"""Speed of a config: training and evaluation images/s, predict latency, input pipeline images/s.

    python -m benchmarks.training.train_speed --dataset=cifar10              # docs/benchmarks.md
    python -m benchmarks.training.train_speed --dataset=fashion_mnist --batch_size=256 --steps=10
    python -m benchmarks.training.train_speed --dataset=cifar10 --checkpoint=models/cifar10

Takes the same flags as `python -m research.train` (any Config field). Training and evaluation
run the training loop's compiled step (train.host_step) and the jitted eval_step on the state
training builds (`train.create_train_state`, replicated and sharded as in training) with
synthetic uint8 batches of the config's shape; each figure is the median over --steps timed
steps, after a compiling step and a warm-up step. Without the dataset, its shape comes from
research.configs.DATASETS. Predict latency is Classifier.predict on one PIL image, as the web
product calls it, from --checkpoint or the benchmarked model exported to a temporary folder. The
input pipeline is create_train_iterator on the real dataset (skipped if it is not available),
timed after its first batch, which reads the split into the cache.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from research import (
    configs,
    train,  # noqa: E402
)
from research.configs import (
    Config,  # noqa: E402
    runtime,
)
from research.data import datasets, pipeline
from research.nets import models
from research.serving.classifier import Classifier  # noqa: E402
from research.serving.errors import DataNotFoundError  # noqa: E402
from research.train import __main__ as train_command  # noqa: E402
from research.train import checkpoints

WARMUP_STEPS = 2  # the first compiles; the second settles allocations
# The schedule's length sets learning rates, not the cost of a step.
STEPS_PER_EPOCH = 100


def time_calls(fn: Callable[[], object], runs: int, warmup: int = WARMUP_STEPS) -> list[float]:
    """Seconds of each of `runs` calls of `fn` (which blocks until done), after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _synthetic_batch(config: Config, image_shape, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(config.seed)
    return {
        "image": rng.integers(0, 256, (config.batch_size, *image_shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, config.batch_size).astype(np.int32),
    }


def train_step_call(state: train.TrainState, config: Config, batch: dict[str, np.ndarray]):
    """(`step()`, `sync()`): one step of the training loop's compiled step (`train.host_step`)
    on host `batch`, device_put included as in training, waited for; `sync()` puts the stepped
    arrays back into `state`'s modules."""
    train_step, sync = train.host_step(state, config)

    def step() -> None:
        train_step(jax.device_put(batch, state.data_sharding)).block_until_ready()

    return step, sync


def measure_train(state: train.TrainState, config: Config, batch: dict[str, np.ndarray], steps):
    """Seconds per step of the training loop's compiled step on host batches
    (`train_step_call`)."""
    step, sync = train_step_call(state, config, batch)
    try:
        return time_calls(step, steps)
    finally:
        sync()


def measure_eval(state: train.TrainState, config: Config, images: np.ndarray, steps: int):
    """Seconds per eval_step (with the config's test-time views) on host batches, as
    evaluate_model."""
    flip_tta = bool(config.flip_tta and configs.uses_flip(config))
    translate_tta = bool(config.translate_tta)

    def step() -> None:
        on_device = jax.device_put(images, state.data_sharding)
        models.eval_step(
            state.model, on_device, flip_tta, translate_tta=translate_tta
        ).block_until_ready()

    state.model.eval()
    try:
        return time_calls(step, steps), flip_tta
    finally:
        state.model.train()


def load_or_export_classifier(
    config: Config,
    checkpoint: str | None,
    state: train.TrainState,
    *,
    num_classes: int,
    image_shape,
    mean,
    std,
) -> Classifier:
    """The model at `checkpoint`, else the benchmark's own, exported and loaded back like a
    real one."""
    if checkpoint:
        return Classifier.load(checkpoint)
    record = checkpoints.serving_record(
        config,
        class_names=[f"class_{i}" for i in range(num_classes)],
        image_shape=image_shape,
        mean=mean,
        std=std,
        step=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        Classifier(state.model, record).export(tmp)
        return Classifier.load(tmp)


def measure_predict(clf: Classifier, runs: int) -> list[float]:
    """Seconds per Classifier.predict of one PIL image (preprocessing included)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, clf.image_shape, dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if clf.image_shape[-1] == 1 else pixels)
    return time_calls(lambda: clf.predict([image]), runs)


def measure_pipeline(config: Config, mean, batches: int) -> tuple[float, list[float]]:
    """(seconds to the first batch, seconds per batch after it) of create_train_iterator."""
    start = time.perf_counter()
    iterator = pipeline.create_train_iterator(config, mean=mean)
    next(iterator)
    first = time.perf_counter() - start
    return first, time_calls(lambda: next(iterator), batches, warmup=0)


def _images_per_s(batch_size: int, times: Sequence[float]) -> float:
    return batch_size / statistics.median(times)


def _device_name() -> str:
    devices = jax.local_devices()
    if devices[0].platform == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    return f"{len(devices)}x {devices[0].device_kind}"


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parse_args(argv))
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only loading
    steps, predict_runs = args.pop("steps"), args.pop("predict_runs")
    pipeline_batches, checkpoint = args.pop("pipeline_batches"), args.pop("checkpoint")
    args.pop("workdir", None)
    dataset = args.pop("dataset", "cifar10")
    try:
        config = configs.get_config(dataset, **args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spec = configs.dataset_spec(config.dataset)
    try:
        info = datasets.get_info(config.dataset, config.data_dir)
        image_shape, num_classes = tuple(info.image_shape), len(info.class_names)
    except DataNotFoundError as error:
        if spec is None:
            print(f"error: {error}", file=sys.stderr)
            return 2
        info, image_shape, num_classes = None, spec.image_shape, spec.num_classes
    mean, std = (
        (spec.mean, spec.std) if spec else ((127.5,) * image_shape[-1], (64.0,) * image_shape[-1])
    )
    batch = config.batch_size
    print(
        f"{config.dataset} {config.model} widths {config.widths}, batch {batch}, "
        f"images {image_shape}, on {_device_name()}; {steps} timed steps after {WARMUP_STEPS}",
        flush=True,
    )
    # The state training creates, without a workdir (nothing saved) or a whitened stem (the
    # stem's values do not change its cost).
    state = train.create_train_state(
        config,
        None,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        steps_per_epoch=STEPS_PER_EPOCH,
    )
    synthetic = _synthetic_batch(config, image_shape, num_classes)

    start = time.perf_counter()
    train_times = measure_train(state, config, synthetic, steps)
    train_rate = _images_per_s(batch, train_times)
    print(
        f"train     {train_rate:8.1f} images/s  "
        f"({statistics.median(train_times) * 1e3:.0f} ms/step, "
        f"{models.count_params(state.model):,} params; "
        f"{time.perf_counter() - start:.0f}s with compiling)",
        flush=True,
    )

    start = time.perf_counter()
    eval_times, flip_tta = measure_eval(state, config, synthetic["image"], steps)
    eval_rate = _images_per_s(batch, eval_times)
    print(
        f"evaluate  {eval_rate:8.1f} images/s  "
        f"({statistics.median(eval_times) * 1e3:.0f} ms/step, "
        f"flip TTA {'on' if flip_tta else 'off'}, translate TTA "
        f"{'on' if config.translate_tta else 'off'}; {time.perf_counter() - start:.0f}s)",
        flush=True,
    )

    start = time.perf_counter()
    clf = load_or_export_classifier(
        config,
        checkpoint,
        state,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
    )
    predict_ms = statistics.median(measure_predict(clf, predict_runs)) * 1e3
    print(
        f"predict   {predict_ms:8.1f} ms for one image  (median of {predict_runs}, "
        f"{'model ' + checkpoint if checkpoint else 'random model'}; "
        f"{time.perf_counter() - start:.0f}s)",
        flush=True,
    )

    pipeline_rate = None
    if info is None:
        print("pipeline  skipped: the dataset is not available here (see research.data)")
    else:
        first, pipeline_times = measure_pipeline(config, mean, pipeline_batches)
        pipeline_rate = _images_per_s(batch, pipeline_times)
        print(
            f"pipeline  {pipeline_rate:8.1f} images/s  (median of {pipeline_batches} batches, "
            f"after {first:.1f}s to the first; {pipeline_rate / train_rate:.1f}x training)",
            flush=True,
        )

    pipeline = f"{pipeline_rate:.0f}" if pipeline_rate else "-"
    print()
    print(
        "| dataset | model | batch | device | train images/s | eval images/s "
        "| predict 1 image (ms) | input pipeline images/s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    print(
        f"| {config.dataset} | {config.model} {','.join(map(str, config.widths))} | {batch} "
        f"| {_device_name()} | {train_rate:.0f} | {eval_rate:.0f} | {predict_ms:.1f} "
        f"| {pipeline} |"
    )
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = train_command.build_parser()
    parser.prog = "python -m benchmarks.training.train_speed"
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("--steps", type=int, default=5, help="timed train and eval steps")
    parser.add_argument("--predict_runs", type=int, default=30, help="timed predict calls")
    parser.add_argument("--pipeline_batches", type=int, default=20, help="timed input batches")
    parser.add_argument("--checkpoint", help="time predict on this model instead of a random one")
    return parser.parse_args(argv)


if __name__ == "__main__":
    runtime.exec_with_allocator()  # what `python -m research.train` runs with
    sys.exit(main())
