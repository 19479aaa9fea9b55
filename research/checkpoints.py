"""Training checkpoints: the Orbax manager, save and restore, and the serving record in each.

Every checkpoint holds three items: 'model' (parameters and batch statistics: all inference
needs), 'train' (optimizer, RNG and lookahead state: what resuming needs besides) and 'meta'
(the `ServingRecord`, with the training config and metrics). Reading model directories without
JAX is research.model_dir's job; this module writes them and restores a run into its state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from research import configs, models
from research.configs import Config
from research.optim import Lookahead
from research.record import ServingRecord

ITEMS = ("model", "train", "meta")
# Fields that shape the saved state or the data it was trained on: a run resumes only under
# the same values.
_RESUME_FIELDS = ("dataset", "model", "widths", "stem_width", "batch_size", "lookahead_every")


def serving_record(
    config: Config,
    *,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    step: int,
    metrics: dict[str, Any] | None = None,
) -> ServingRecord:
    """What serving needs besides the weights, as trained at `step`; stored in every checkpoint."""
    created = dt.datetime.now(dt.UTC)
    return ServingRecord(
        name=f"{config.dataset}-{config.model}",
        dataset=config.dataset,
        version=f"{created:%Y%m%d}-step{step}",
        step=step,
        class_names=tuple(class_names),
        image_shape=tuple(int(d) for d in image_shape),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        flip_tta=bool(config.flip_tta and configs.uses_flip(config)),  # serve as evaluated
        config=config.to_dict(),
        metrics=dict(metrics or {}),
        created=created.isoformat(timespec="seconds"),
    )


def checkpoint_manager(
    directory: Path, config: Config, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """Keeps the latest `keep_checkpoints` steps and the one with the best eval accuracy."""
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
    return ocp.CheckpointManager(Path(directory).absolute(), item_names=ITEMS, options=options)


def save_checkpoint(
    mngr: ocp.CheckpointManager,
    step: int,
    model: nnx.Module,
    opt: nnx.Optimizer,
    record: ServingRecord,
    lookahead: Lookahead | None = None,
) -> None:
    """Saves weights (for inference), optimizer and RNG state (to resume), and the record.

    Orbax writes to a temporary directory and renames it when complete, so an interrupted
    save never leaves a checkpoint that the next start would read.
    """
    accuracy = record.eval_accuracy
    mngr.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(models.inference_state(model)),
            train=ocp.args.StandardSave(_train_state(model, opt, lookahead)),
            meta=ocp.args.JsonSave(record.to_meta()),
        ),
        metrics={"eval_accuracy": accuracy} if accuracy is not None else None,
        force=True,
    )


def restore_checkpoint(
    mngr: ocp.CheckpointManager,
    config: Config,
    model: nnx.Module,
    opt: nnx.Optimizer,
    lookahead: Lookahead | None = None,
) -> int:
    """Restores the latest checkpoint into `model`, `opt` (and `lookahead`); returns its step.

    Refuses, naming the field, a checkpoint trained under a config whose state or data differ.
    """
    step = mngr.latest_step()
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    record = ServingRecord.from_meta(meta, source=f"Checkpoint {mngr.directory / str(step)}")
    saved = Config.from_dict(record.config).to_dict()  # fields it predates get their defaults
    wanted = config.to_dict()
    for field in _RESUME_FIELDS:
        if saved[field] != wanted[field]:
            raise ValueError(
                f"The workdir holds a run with {field}={saved[field]!r}, not "
                f"{wanted[field]!r}: use another --workdir, or the same config."
            )
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(models.inference_state(model))),
            train=ocp.args.StandardRestore(_abstract(_train_state(model, opt, lookahead))),
        ),
    )
    nnx.update(model, restored["model"])
    nnx.update(opt, _wrap_keys(nnx.state(opt), restored["train"]["opt"]))
    nnx.update(model, _wrap_keys(nnx.state(model, nnx.RngState), restored["train"]["rngs"]))
    if lookahead is not None:
        lookahead.ema = restored["train"]["ema"]
    return int(step)


def _train_state(model: nnx.Module, opt: nnx.Optimizer, lookahead: Lookahead | None) -> dict:
    """What resuming needs besides the weights: optimizer, RNG and lookahead state."""
    state = {
        "opt": _key_data(nnx.state(opt)),
        "rngs": _key_data(nnx.state(model, nnx.RngState)),
    }
    if lookahead is not None:
        state["ema"] = lookahead.ema
    return state


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


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
