"""What a run updates, placed on the devices: `TrainState` and `create_train_state`, which
the loop and the speed benchmarks share; restored from the workdir's latest checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.configs import Config
from research.nets import models
from research.serving.artifacts import CHECKPOINTS_SUBDIR
from research.serving.record import ServingRecord
from research.train import checkpoints, distributed
from research.train.optim import Lookahead, create_optimizer

log = logging.getLogger("research.train")


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
        elif config.whiten_bias_epochs is not None and getattr(model, "stem", None) is not None:
            # The recipe freezes the stem's kernel: unwhitened, it stays random for the run.
            log.warning(
                "The %d-channel stem cannot whiten %d-channel images, so its kernel stays "
                "random and, under this recipe, frozen; --stem_width=%d whitens them.",
                config.stem_width,
                images.shape[-1],
                models.whitening_width(images.shape[-1], model.stem.kernel_size[0]),
            )
    # After whitening: the average starts from the weights training starts from.
    lookahead = Lookahead(model, config.lookahead_every) if config.lookahead_every else None
    step = 0
    if resume:
        try:
            step = checkpoints.restore_checkpoint(mngr, config, model, opt, lookahead)
        except BaseException:
            # Closed here, not by the garbage collector at exit, where Orbax's pending
            # coroutines printed "Exception ignored in: <coroutine ...>" after the real error.
            mngr.close()
            raise
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
