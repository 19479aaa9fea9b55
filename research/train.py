"""Training and evaluation library: `train_and_evaluate(config, workdir)`.

    python -m research.train --dataset=cifar10 --workdir=workdirs/cifar10

Running the same command again resumes from the latest checkpoint in the workdir. Ctrl-C or
SIGTERM saves a checkpoint and exits; the next run continues at that step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
import time
import types
from collections.abc import Iterable
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

from research import configs, models
from research.configs import Config

log = logging.getLogger("research.train")


class NonFiniteLossError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- steps


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array], label_smoothing: float):
    logits = model(batch["image"])
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, logits


@functools.partial(nnx.jit, static_argnames="label_smoothing", donate_argnames=("model", "opt"))
def train_step(
    model: nnx.Module,
    opt: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    batch: dict[str, jax.Array],
    label_smoothing: float,
) -> jax.Array:
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch, label_smoothing)
    opt.update(model, grads)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    return loss


@functools.partial(nnx.jit, static_argnames="flip_tta")
def eval_step(model: nnx.Module, images: jax.Array, flip_tta: bool) -> jax.Array:
    return models.predict_logits(model, images, flip_tta=flip_tta)


def evaluate_model(
    model: nnx.Module,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    num_classes: int,
    flip_tta: bool,
    sharding: NamedSharding | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix over padded batches."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, count = 0.0, 0
    for batch in batches:
        images = batch["image"] if sharding is None else jax.device_put(batch["image"], sharding)
        logits = np.asarray(eval_step(model, images, flip_tta), np.float64)
        mask, labels = batch["mask"], batch["label"]
        logits, labels = logits[mask], labels[mask]
        log_probs = logits - _logsumexp(logits)
        loss_sum += float(-log_probs[np.arange(len(labels)), labels].sum())
        count += len(labels)
        np.add.at(confusion, (labels, logits.argmax(-1)), 1)
    model.train()
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": float(confusion.trace() / max(count, 1)),
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.tolist(),
        "count": count,
    }


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- state


def _is_kernel(path: tuple, _: Any) -> bool:
    return any(getattr(k, "key", None) == "kernel" for k in path)


def param_label(config: Config) -> Any:
    """Labels each parameter with its optimizer group: 'other', 'norm', 'stem_bias' or 'frozen'.

    'norm' are batch-norm parameters (learning rate x `bias_lr_scale`, no weight decay). With
    `whiten_bias_epochs` set, the whitening stem's kernel is 'frozen' and its bias trains for
    that many epochs, as in airbench94.
    """

    def label(path: tuple, _: Any) -> str:
        keys = [str(k.key) for k in path if hasattr(k, "key")]  # module and parameter names
        if keys[0] == "stem" and config.whiten_bias_epochs is not None:
            return "stem_bias" if keys[-1] == "bias" else "frozen"
        if any(k.startswith("norm") or k.endswith("norm") for k in keys[:-1]):
            return "norm"
        return "other"

    return functools.partial(jax.tree_util.tree_map_with_path, label)


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from `warmup_start_fraction` to the peak, then linear decay."""
    total = max(int(config.epochs * steps_per_epoch), 1)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    peak, end = config.learning_rate, config.learning_rate * config.end_lr_fraction
    if warmup <= 0:
        return optax.linear_schedule(peak, end, total)
    return optax.join_schedules(
        [
            optax.linear_schedule(peak * config.warmup_start_fraction, peak, warmup),
            optax.linear_schedule(peak, end, total - warmup),
        ],
        [warmup],
    )


def create_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """Optax optimizer: the schedule above, weight decay on kernels only, parameter groups.

    SGD is Nesterov momentum with L2 weight decay added to the gradient (as PyTorch's SGD);
    AdamW decays decoupled.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    decay_mask = functools.partial(jax.tree_util.tree_map_with_path, _is_kernel)

    def optimizer(scale: float = 1.0, weight_decay: float = 0.0):
        lr = schedule if scale == 1.0 else (lambda count: schedule(count) * scale)
        if config.optimizer == "adamw":
            return optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask)
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.sgd(lr, momentum=config.momentum, nesterov=True),
        )

    stem_bias_steps = int((config.whiten_bias_epochs or 0) * steps_per_epoch)
    return optax.multi_transform(
        {
            "other": optimizer(weight_decay=config.weight_decay),
            "norm": optimizer(scale=config.bias_lr_scale),
            "stem_bias": optax.chain(
                optimizer(),
                optax.scale_by_schedule(lambda count: (count < stem_bias_steps).astype(float)),
            ),
            "frozen": optax.set_to_zero(),
        },
        param_label(config),
    )


_AVERAGED = nnx.Any(nnx.Param, nnx.BatchStat)


@nnx.jit
def _lookahead_pull(model: nnx.Module, ema: nnx.State, decay: jax.Array) -> nnx.State:
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, nnx.state(model, _AVERAGED))
    nnx.update(model, ema)
    return ema


class Lookahead:
    """airbench's lookahead: every k steps, move an EMA of the weights (and batch-norm
    statistics) towards the model, then set the model to it; at the end, the model is the EMA.

    The EMA's decay rises as 0.95**k * (step / total)**3: no averaging early, strong at the end.
    """

    def __init__(self, model: nnx.Module, every: int):
        self.every = every
        self.ema = jax.tree.map(jnp.copy, nnx.state(model, _AVERAGED))

    def after_step(self, model: nnx.Module, step: int, total_steps: int) -> None:
        """Call after each step (1-based) of a `total_steps` schedule, `max_steps` aside."""
        if step % self.every == 0:
            decay = 0.95**self.every * (step / total_steps) ** 3
            self.ema = _lookahead_pull(model, self.ema, jnp.float32(decay))
        if step == total_steps:
            nnx.update(model, jax.tree.map(jnp.copy, self.ema))


def _key_data(tree: Any) -> Any:
    """PRNG key arrays -> raw uint32 data, which Orbax can store."""
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
        tree,
    )


def _wrap_keys(like: Any, tree: Any) -> Any:
    return jax.tree.map(
        lambda ref, x: (
            jax.random.wrap_key_data(x) if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key) else x
        ),
        like,
        tree,
    )


def checkpoint_manager(directory: Path, config: Config, *, read_only: bool = False):
    policy = ocp.checkpoint_managers.preservation_policy
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy.AnyPreservationPolicy(
            [
                policy.LatestN(config.keep_checkpoints),
                policy.BestN(
                    get_metric_fn=lambda m: m["eval_accuracy"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        ),
        cleanup_tmp_directories=True,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        directory.absolute(), item_names=("model", "train", "meta"), options=options
    )


def build_meta(
    config: Config,
    *,
    info: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    step: int,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything inference needs besides the weights, stored in every checkpoint."""
    created = dt.datetime.now(dt.UTC)
    return {
        "name": f"{config.dataset}-{config.model}",
        "dataset": config.dataset,
        "version": f"{created:%Y%m%d}-step{step}",
        "step": step,
        "class_names": list(info.class_names),
        "image_shape": list(info.image_shape),
        "mean": list(mean),
        "std": list(std),
        "flip_tta": bool(config.flip_tta and configs.uses_flip(config)),  # serve as evaluated
        "model": config.to_dict(),
        "metrics": metrics or {},
        "created": created.isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- loop


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
    values = jax.device_get([loss for _, loss in losses])
    for (step, _), value in zip(losses, values, strict=True):
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"Training loss became {float(value)} at step {step}. Lower --learning_rate "
                "or check the data; the last good checkpoint is kept in the workdir."
            )
    return float(values[-1])


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the metrics."""
    import tensorflow as tf

    from research import datasets, input_pipeline  # TensorFlow only on the training path

    config.validate()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = datasets.get_info(config.dataset, config.data_dir)
    eval_split = config.eval_split or datasets.default_eval_split(info)
    if config.mean is not None and config.std is not None:
        mean, std = tuple(config.mean), tuple(config.std)
    elif (spec := configs.dataset_spec(config.dataset)) is not None:
        mean, std = spec.mean, spec.std
    else:
        mean, std = input_pipeline.measure_mean_std(config)
    num_classes = len(info.class_names)

    devices = jax.local_devices()
    if config.batch_size % len(devices):
        raise ValueError(f"batch_size {config.batch_size} must divide over {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    model = models.create_model(
        config,
        num_classes=num_classes,
        image_shape=info.image_shape,
        mean=mean,
        std=std,
        rngs=nnx.Rngs(config.seed),
    )
    train_examples = info.splits.get(config.train_split)
    if train_examples is None:  # a slice such as 'train[:90%]'
        train_examples = int(
            datasets.load_split(config.dataset, config.train_split, config.data_dir).cardinality()
        )
    steps_per_epoch = train_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {train_examples} examples")
    total_steps = schedule_steps = max(int(config.epochs * steps_per_epoch), 1)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1)
    opt = nnx.Optimizer(model, create_optimizer(config, steps_per_epoch), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())

    mngr = checkpoint_manager(workdir / "checkpoints", config)
    start_step = 0
    if mngr.latest_step() is None and config.whiten_stem:
        sample = datasets.load_split(config.dataset, config.train_split, config.data_dir)
        images = np.stack([image for image, _ in sample.take(5000).as_numpy_iterator()])
        if models.init_stem_whitening(model, images):
            log.info("Stem initialised to whiten 2x2 patches of %d training images.", len(images))
    lookahead = Lookahead(model, config.lookahead_every) if config.lookahead_every else None
    if mngr.latest_step() is not None:
        start_step = restore_checkpoint(mngr, config, model, opt, lookahead)
        log.info("Resumed from %s at step %d.", workdir / "checkpoints", start_step)

    def replicate(*nodes: Any) -> None:  # one sharding for every state, so jit compiles once
        for node in nodes:
            nnx.update(node, jax.device_put(nnx.state(node), replicated))

    replicate(model, opt, metrics)
    if lookahead is not None:
        lookahead.ema = jax.device_put(lookahead.ema, replicated)

    def save(step: int, eval_metrics: dict[str, Any] | None = None) -> None:
        meta = build_meta(config, info=info, mean=mean, std=std, step=step, metrics=eval_metrics)
        save_checkpoint(mngr, step, model, opt, meta, lookahead)

    flip_tta = bool(config.flip_tta and configs.uses_flip(config))
    eval_ds = input_pipeline.create_eval_dataset(config, eval_split, info.image_shape)

    def run_eval() -> dict[str, Any]:
        eval_metrics = evaluate_model(
            model,
            input_pipeline.iterate_padded_batches(eval_ds, config.batch_size),
            num_classes=num_classes,
            flip_tta=flip_tta,
            sharding=data_sharding,
        )
        return {**eval_metrics, "split": eval_split}

    summary = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    train_iter = input_pipeline.create_train_iterator(config, mean=mean, start_step=start_step)
    print(
        f"{config.dataset}: {train_examples} train / {info.splits.get(eval_split, '?')} "
        f"{eval_split} examples, {num_classes} classes, {config.model} "
        f"({models.count_params(model):,} params) on {len(devices)}x {devices[0].platform}, "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps",
        flush=True,
    )
    result: dict[str, Any] = {"step": start_step}
    pending: list[tuple[int, jax.Array]] = []
    eval_metrics: dict[str, Any] | None = None
    started = time.time()
    with _StopRequest() as stop, _progress(start_step, total_steps) as bar:
        for step in range(start_step, total_steps):
            batch = jax.device_put(next(train_iter), data_sharding)
            if step == start_step:
                bar.set_description("compiling", refresh=False)
                log.info("Compiling the train step...")
            loss = train_step(model, opt, metrics, batch, config.label_smoothing)
            pending.append((step + 1, loss))
            bar.update(1)
            done = step + 1
            if lookahead is not None:
                lookahead.after_step(model, done, schedule_steps)
            if done % config.log_every_steps == 0 or done == total_steps or stop.signal:
                bar.set_description(f"epoch {done / steps_per_epoch:.2f}", refresh=False)
                bar.set_postfix(loss=f"{_check_finite(pending):.3f}", refresh=False)
                pending.clear()
            if done % eval_every == 0 or done == total_steps:
                train_metrics = {k: float(v) for k, v in metrics.compute().items()}
                metrics.reset()
                replicate(metrics)
                eval_metrics = run_eval()
                elapsed = time.time() - started
                bar.write(
                    f"epoch {done / steps_per_epoch:5.2f}  step {done:6d}  "
                    f"train loss {train_metrics['loss']:.4f} acc {train_metrics['accuracy']:.4f}  "
                    f"{eval_split} loss {eval_metrics['loss']:.4f} "
                    f"acc {eval_metrics['accuracy']:.4f}"
                    f"  [{elapsed:.0f}s]"
                )
                with summary.as_default(step=done):
                    for name, value in train_metrics.items():
                        tf.summary.scalar(f"train/{name}", value)
                    tf.summary.scalar(f"{eval_split}/loss", eval_metrics["loss"])
                    tf.summary.scalar(f"{eval_split}/accuracy", eval_metrics["accuracy"])
                summary.flush()
                save(done, _scalar_metrics(eval_metrics, train_metrics, elapsed))
            elif done % config.checkpoint_every_steps == 0 or stop.signal:
                save(done)
            result["step"] = done
            if stop.signal:
                break
    if eval_metrics is None and not stop.signal:  # resumed a finished run: report it again
        eval_metrics = run_eval()
    mngr.wait_until_finished()
    mngr.close()
    result.update(
        interrupted=bool(stop.signal),
        total_steps=total_steps,
        wall_seconds=time.time() - started,
        eval=eval_metrics,
    )
    if stop.signal:
        print(f"Stopped at step {result['step']}; run the same command to resume.", flush=True)
    else:
        (workdir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def _scalar_metrics(eval_metrics, train_metrics, elapsed) -> dict[str, Any]:
    return {
        "eval_accuracy": eval_metrics["accuracy"],
        "eval_loss": eval_metrics["loss"],
        "eval_split": eval_metrics["split"],
        "eval_count": eval_metrics["count"],
        "train_accuracy": train_metrics["accuracy"],
        "train_loss": train_metrics["loss"],
        "train_seconds": round(elapsed, 1),
    }


def save_checkpoint(
    mngr: ocp.CheckpointManager,
    step: int,
    model: nnx.Module,
    opt: nnx.Optimizer,
    meta: dict[str, Any],
    lookahead: Lookahead | None = None,
) -> None:
    """Saves weights (for inference), optimizer and RNG state (to resume), and metadata.

    Orbax writes to a temporary directory and renames it when complete, so an interrupted
    save never leaves a checkpoint that the next start would read.
    """
    accuracy = meta["metrics"].get("eval_accuracy")
    mngr.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(models.inference_state(model)),
            train=ocp.args.StandardSave(_train_state(model, opt, lookahead)),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics={"eval_accuracy": accuracy} if accuracy is not None else None,
        force=True,
    )


def _train_state(model: nnx.Module, opt: nnx.Optimizer, lookahead: Lookahead | None) -> dict:
    """What resuming needs besides the weights: optimizer, RNG and lookahead state."""
    state = {
        "opt": _key_data(nnx.state(opt)),
        "rngs": _key_data(nnx.state(model, nnx.RngState)),
    }
    if lookahead is not None:
        state["ema"] = lookahead.ema
    return state


def restore_checkpoint(
    mngr: ocp.CheckpointManager,
    config: Config,
    model: nnx.Module,
    opt: nnx.Optimizer,
    lookahead: Lookahead | None = None,
) -> int:
    """Restores the latest checkpoint into `model`, `opt` (and `lookahead`); returns its step."""
    step = mngr.latest_step()
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved = Config.from_dict(meta["model"]).to_dict()  # fields it predates get their defaults
    for field in ("dataset", "model", "widths", "stem_width", "batch_size", "lookahead_every"):
        if saved[field] != config.to_dict()[field]:
            raise ValueError(
                f"The workdir holds a run with {field}={saved[field]!r}, not "
                f"{config.to_dict()[field]!r}: use another --workdir, or the same config."
            )
    abstract_train = _train_state(model, opt, lookahead)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(models.inference_state(model))),
            train=ocp.args.StandardRestore(_abstract(abstract_train)),
        ),
    )
    nnx.update(model, restored["model"])
    nnx.update(opt, _wrap_keys(nnx.state(opt), restored["train"]["opt"]))
    nnx.update(model, _wrap_keys(nnx.state(model, nnx.RngState), restored["train"]["rngs"]))
    if lookahead is not None:
        lookahead.ema = restored["train"]["ema"]
    return int(step)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import
    from research.datasets import DataNotFoundError

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # over absl's
    for noisy in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = vars(build_parser().parse_args(argv))
    workdir = args.pop("workdir", None)
    dataset = args.pop("dataset", "cifar10")
    try:
        config = configs.get_config(dataset, **args)
        result = train_and_evaluate(config, workdir or Path("workdirs") / dataset)
    except (DataNotFoundError, ValueError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result["interrupted"]:
        return 130
    accuracy = result["eval"]["accuracy"] if result["eval"] else float("nan")
    print(
        f"done: {result['eval']['split'] if result['eval'] else 'eval'} accuracy "
        f"{accuracy:.4f} after {result['step']} steps ({result['wall_seconds']:.0f}s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
