"""The optimizer of a training run: parameter groups, learning-rate schedule, lookahead.

tx = create_optimizer(config, steps_per_epoch)
opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
lookahead = Lookahead(model, config.lookahead_every)   # airbench's, when configured
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from research.configs import Config


def parameter_path(path: tuple) -> tuple[str, ...]:
    """The module and parameter names on a tree path of model state, e.g.
    ('blocks', '0', 'norm1', 'bias'): the one reading of parameter paths, for the weight-decay
    mask and the parameter groups alike (attribute and index keys that NNX adds are skipped)."""
    return tuple(str(k.key) for k in path if hasattr(k, "key"))


def _is_kernel(path: tuple, _: Any) -> bool:
    return parameter_path(path)[-1] == "kernel"


def param_label(config: Config) -> Any:
    """Labels each parameter with its optimizer group: 'other', 'norm', 'stem_bias', 'frozen'
    or 'muon'.

    'norm' are batch-norm parameters (learning rate x `bias_lr_scale`, no weight decay). With
    `whiten_bias_epochs` set, the whitening stem's kernel is 'frozen' and its bias trains for
    that many epochs, as in airbench94. With the 'muon' optimizer, the convolution kernels
    after the stem (4-D) are 'muon'.
    """
    return functools.partial(
        jax.tree_util.tree_map_with_path,
        functools.partial(
            _group,
            whiten_stem_bias=config.whiten_bias_epochs is not None,
            muon=config.optimizer == "muon",
        ),
    )


def _group(path: tuple, value: Any, *, whiten_stem_bias: bool, muon: bool = False) -> str:
    names = parameter_path(path)
    if names[0] == "stem" and whiten_stem_bias:
        return "stem_bias" if names[-1] == "bias" else "frozen"
    if any(name.startswith("norm") or name.endswith("norm") for name in names[:-1]):
        return "norm"
    if muon and names[0] != "stem" and names[-1] == "kernel" and jnp.ndim(value) == 4:
        return "muon"
    return "other"


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
    if config.optimizer == "muon":
        return _muon_optimizer(config, steps_per_epoch)
    schedule = learning_rate_schedule(config, steps_per_epoch)
    stem_bias_steps = int((config.whiten_bias_epochs or 0) * steps_per_epoch)
    return optax.multi_transform(
        {
            "other": _group_optimizer(config, schedule, weight_decay=config.weight_decay),
            "norm": _group_optimizer(config, schedule, scale=config.bias_lr_scale),
            "stem_bias": optax.chain(
                _group_optimizer(config, schedule),
                optax.scale_by_schedule(lambda count: (count < stem_bias_steps).astype(float)),
            ),
            "frozen": optax.set_to_zero(),
        },
        param_label(config),
    )


# A 3x3 kernel [kh, kw, in, out] as the matrix [kh * kw * in, out] that Muon orthogonalises.
_CONV_MATRIX = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))


def _muon_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """airbench94_muon's optimizer. Muon (optax.contrib: Nesterov momentum, then 3
    Newton-Schulz steps towards the nearest orthogonal matrix) on the 3x3 kernels, at
    `muon_learning_rate`, without weight decay. Nesterov SGD with L2 weight decay on the rest:
    the head at `learning_rate` (`weight_decay`); batch-norm biases at learning_rate x
    `bias_lr_scale` (`bias_weight_decay`); the whitening stem's bias at that rate too, decaying
    linearly to 0 over `whiten_bias_epochs` and then frozen, as its kernel always is. Every
    rate but the stem bias's follows `learning_rate_schedule`.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    bias_lr = config.learning_rate * config.bias_lr_scale
    stem_bias_steps = max(int((config.whiten_bias_epochs or 0) * steps_per_epoch), 1)
    muon_scale = config.muon_learning_rate / config.learning_rate
    everything = functools.partial(jax.tree.map, lambda _: True)
    return optax.multi_transform(
        {
            "other": _group_optimizer(config, schedule, weight_decay=config.weight_decay),
            "norm": _group_optimizer(
                config,
                schedule,
                scale=config.bias_lr_scale,
                weight_decay=config.bias_weight_decay,
                decay_mask=everything,
            ),
            "stem_bias": _group_optimizer(
                config,
                optax.linear_schedule(bias_lr, 0.0, stem_bias_steps),
                weight_decay=config.bias_weight_decay,
                decay_mask=everything,
            ),
            "muon": optax.chain(
                optax.contrib.scale_by_muon(
                    ns_steps=3,
                    beta=config.muon_momentum,
                    nesterov=True,
                    weight_dimension_numbers=lambda kernels: jax.tree.map(
                        lambda _: _CONV_MATRIX, kernels
                    ),
                ),
                optax.scale_by_learning_rate(lambda count: schedule(count) * muon_scale),
            ),
            "frozen": optax.set_to_zero(),
        },
        param_label(config),
    )


def _group_optimizer(
    config: Config,
    schedule: optax.Schedule,
    *,
    scale: float = 1.0,
    weight_decay: float = 0.0,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
    """The config's optimizer (SGD or AdamW) at `schedule` x `scale`, decaying the kernels
    (or what `decay_mask` marks) by `weight_decay`."""
    lr = schedule if scale == 1.0 else (lambda count: schedule(count) * scale)
    decay_mask = decay_mask or functools.partial(jax.tree_util.tree_map_with_path, _is_kernel)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(lr, momentum=config.momentum, nesterov=True),
    )


_AVERAGED = nnx.Any(nnx.Param, nnx.BatchStat)


def lookahead_pull(model: nnx.Module, ema: nnx.State, decay: jax.Array) -> nnx.State:
    """Moves `ema` towards the model's weights and statistics by 1 - decay, then sets the
    model to it; returns the new EMA. (Jitted by the caller.)"""
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, nnx.state(model, _AVERAGED))
    nnx.update(model, ema)
    return ema


_lookahead_pull = nnx.jit(lookahead_pull)


class Lookahead:
    """airbench's lookahead: every k steps, move an EMA of the weights (and batch-norm
    statistics) towards the model, then set the model to it; at the end, the model is the EMA.

    The EMA's decay rises as 0.95**k * (step / total)**3: no averaging early, strong at the end.
    """

    def __init__(self, model: nnx.Module, every: int):
        self.every = every
        self.ema = jax.tree.map(jnp.copy, nnx.state(model, _AVERAGED))

    def decay_at(self, step: int, total_steps: int) -> float | None:
        """The decay of the pull due after step `step` (1-based), or None when none is."""
        if step % self.every:
            return None
        return 0.95**self.every * (step / total_steps) ** 3

    def finish(self, model: nnx.Module) -> None:
        """The end of the schedule: the model becomes the EMA."""
        nnx.update(model, jax.tree.map(jnp.copy, self.ema))

    def after_step(self, model: nnx.Module, step: int, total_steps: int) -> None:
        """Call after each step (1-based) of a `total_steps` schedule, `max_steps` aside.
        (The training loop does the same through its functional step: train._Stepper.)"""
        if (decay := self.decay_at(step, total_steps)) is not None:
            self.ema = _lookahead_pull(model, self.ema, jnp.float32(decay))
        if step == total_steps:
            self.finish(model)
