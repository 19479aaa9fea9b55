"""Training, in Flax's shape: `train_and_evaluate(config, workdir)` and the steps it calls.

    steps        loss_fn, train_step, device_train_step, Stepper, evaluate_model
    state        TrainState, create_train_state
    loop         train_and_evaluate
    optim        the optimizers and the lookahead
    checkpoints  Orbax checkpoints with the serving record
    distributed  several processes (jax.distributed), meshes and batch placement
    __main__     the command, `python -m research.train`

The public names of `steps`, `state` and `loop` are importable from here.

May import every library package below it (research.evaluation, research.data,
research.serving, research.nets, research.configs).
"""

from research.train.loop import train_and_evaluate
from research.train.state import TrainState, create_train_state
from research.train.steps import (
    STEP_COMPILER_OPTIONS,
    Stepper,
    compute_gradients,
    device_train_step,
    device_train_update,
    evaluate_model,
    host_step,
    jit_step,
    loss_fn,
    train_step,
    train_update,
)

__all__ = [
    "STEP_COMPILER_OPTIONS",
    "Stepper",
    "TrainState",
    "compute_gradients",
    "create_train_state",
    "device_train_step",
    "device_train_update",
    "evaluate_model",
    "host_step",
    "jit_step",
    "loss_fn",
    "train_and_evaluate",
    "train_step",
    "train_update",
]
