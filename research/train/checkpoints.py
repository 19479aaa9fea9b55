"""Training checkpoints: the Orbax manager, save and restore, and the serving record in each.

Every checkpoint holds three items: 'model' (parameters and batch statistics: all inference
needs), 'train' (optimizer, RNG and lookahead state: what resuming needs besides) and 'meta'
(the `ServingRecord`, with the training config and metrics). Reading model directories without
JAX is research.serving.model_dir's job; this module writes them and restores a run into its state.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from research import configs
from research.configs import Config
from research.nets import models
from research.serving.errors import IncompatibleModelError
from research.serving.record import ServingRecord
from research.train.optim import Lookahead

log = logging.getLogger(__name__)

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
        translate_tta=config.translate_tta,
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


class NoUsableCheckpointError(IncompatibleModelError):
    """Every checkpoint in a workdir is unreadable (truncated, or written by something else)."""


BROKEN_SUFFIX = ".broken"  # a step directory set aside, so a new save can take its number


def restore_checkpoint(
    mngr: ocp.CheckpointManager,
    config: Config,
    model: nnx.Module,
    opt: nnx.Optimizer,
    lookahead: Lookahead | None = None,
) -> int:
    """Restores the newest readable checkpoint into `model`, `opt` (and `lookahead`); returns
    its step.

    A newer checkpoint that cannot be read (a truncated weight or metadata file) is set aside
    as `<step>.broken` with a warning naming it, and the next older one is tried; when none is
    readable, NoUsableCheckpointError names each. Refuses, naming the field, a checkpoint
    trained under a config whose state or data differ.
    """
    broken = []
    for step in sorted(mngr.all_steps(), reverse=True):
        path = Path(mngr.directory) / str(step)
        try:
            _restore_step(mngr, step, config, model, opt, lookahead)
        except _UnreadableCheckpoint as error:
            cause = describe_cause(error.__cause__ or error)
            broken.append(f"step {step} ({path}: {cause})")
            log.warning(
                "Checkpoint step %d at %s is unreadable (%s); trying an older one.",
                step,
                path,
                cause,
            )
            continue
        if broken:
            _set_aside(mngr, [int(item.split()[1]) for item in broken])
            log.warning("Resuming from step %d; set aside: %s", step, "; ".join(broken))
        return int(step)
    raise NoUsableCheckpointError(
        f"No usable checkpoint in {mngr.directory}: "
        + ("; ".join(broken) if broken else "no steps")
        + ". Move the broken steps away to start afresh, or use another --workdir."
    )


# An object's repr where a message should be ("<bound method ...>", "<x object at 0x...>").
_REPR = re.compile(r"<(?:bound method|built-in method|function|[\w.]+ object at 0x)[^<>]*>")
_CAUSE_CHARS = 300


def describe_cause(error: BaseException) -> str:
    """'TypeName: message' of the first error in `error`'s chain whose message says something
    (reprs of objects removed, whitespace folded, at most 300 characters); else its type."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message, count = str(current), 1
        while count:  # innermost first: reprs nest ("<bound method f of <x object at 0x..>>")
            message, count = _REPR.subn("", message)
        message = " ".join(message.split()).strip(" :;,()")
        if message:
            return f"{type(current).__name__}: {message[:_CAUSE_CHARS]}"
        current = current.__cause__ or current.__context__
    return f"{type(error).__name__} (no message)"


class _UnreadableCheckpoint(Exception):  # noqa: N818  (internal: always carries the cause)
    pass


def _restore_step(
    mngr: ocp.CheckpointManager,
    step: int,
    config: Config,
    model: nnx.Module,
    opt: nnx.Optimizer,
    lookahead: Lookahead | None,
) -> None:
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        record = ServingRecord.from_meta(meta, source=f"Checkpoint {mngr.directory / str(step)}")
    except IncompatibleModelError:
        raise  # readable, but not a serving record: nothing older would be trusted either
    except Exception as error:
        raise _UnreadableCheckpoint() from error
    saved = Config.from_dict(record.config).to_dict()  # fields it predates get their defaults
    wanted = config.to_dict()
    for field in _RESUME_FIELDS:
        if saved[field] != wanted[field]:
            raise ValueError(
                f"The workdir holds a run with {field}={saved[field]!r}, not "
                f"{wanted[field]!r}: use another --workdir, or the same config."
            )
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(_abstract(models.inference_state(model))),
                train=ocp.args.StandardRestore(_abstract(_train_state(model, opt, lookahead))),
            ),
        )
    except Exception as error:
        raise _UnreadableCheckpoint() from error
    nnx.update(model, restored["model"])
    nnx.update(opt, _wrap_keys(nnx.state(opt), restored["train"]["opt"]))
    nnx.update(model, _wrap_keys(nnx.state(model, nnx.RngState), restored["train"]["rngs"]))
    if lookahead is not None:
        lookahead.ema = restored["train"]["ema"]


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
    """Rename broken step directories to `<step>.broken` (kept for inspection, never read),
    so that training can save those steps again."""
    for step in steps:
        path = Path(mngr.directory) / str(step)
        target = path.with_name(f"{step}{BROKEN_SUFFIX}")
        index = 1
        while target.exists():
            target = path.with_name(f"{step}{BROKEN_SUFFIX}{index}")
            index += 1
        path.rename(target)
        log.warning("Set aside unreadable checkpoint step %d as %s", step, target)
    mngr.reload()


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
