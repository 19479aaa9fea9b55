"""The optimizer: parameter paths and groups, the learning-rate schedule, lookahead."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research import configs
from research.nets import models
from research.train import optim


def _tiny_model(config, seed=0):
    return models.create_model(
        config, num_classes=3, image_shape=(32, 32, 3), mean=(1,) * 3, std=(2,) * 3,
        rngs=nnx.Rngs(seed),
    )  # fmt: skip


def _params(model):
    return {
        "/".join(optim.parameter_path(path)): np.array(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    }


def test_parameter_path_names_modules_and_parameters():
    """parameter_path gives the module and parameter names of a state leaf, indices as text."""
    model = _tiny_model(configs.get_config("tiny"))
    paths = [
        optim.parameter_path(path)
        for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    ]
    assert ("stem", "kernel") in paths and ("stem", "bias") in paths
    assert ("blocks", "0", "norm1", "bias") in paths and ("head", "kernel") in paths
    assert all(isinstance(name, str) for path in paths for name in path)


@pytest.mark.parametrize(
    ("model", "whiten_bias_epochs", "expected"),
    [
        (
            "airbench94",
            1.0,
            {
                ("stem", "kernel"): "frozen",
                ("stem", "bias"): "stem_bias",
                ("blocks", "0", "conv1", "kernel"): "other",
                ("blocks", "0", "norm1", "bias"): "norm",
                ("head", "kernel"): "other",
            },
        ),
        (
            "airbench94",
            None,
            {("stem", "kernel"): "other", ("stem", "bias"): "other"},
        ),
        (
            "airbench",
            None,
            {("stem_norm", "scale"): "norm", ("stem", "kernel"): "other"},
        ),
        ("baseline", None, {("norms", "3", "scale"): "norm", ("convs", "0", "kernel"): "other"}),
    ],
)
def test_param_label_groups_each_parameter(model, whiten_bias_epochs, expected):
    """Each net's parameters fall in the groups named for them: batch-norm parameters (also
    modules named '*_norm' or 'norms') in 'norm', the stem frozen only with whiten_bias_epochs."""
    config = configs.get_config("tiny", model=model, whiten_bias_epochs=whiten_bias_epochs)
    state = nnx.state(_tiny_model(config), nnx.Param)
    labels = {
        optim.parameter_path(path): label
        for path, label in jax.tree_util.tree_leaves_with_path(optim.param_label(config)(state))
    }
    assert set(labels.values()) <= {"other", "norm", "stem_bias", "frozen"}
    for path, label in expected.items():
        assert labels[path] == label, path


def test_schedule_warms_up_from_its_start_fraction_then_decays_to_its_end():
    """Linear from start_fraction x peak to the peak over the warm-up, then to end_fraction x."""
    config = configs.get_config(
        "tiny", learning_rate=1.0, epochs=10.0, warmup_epochs=2.0, warmup_start_fraction=0.2,
        end_lr_fraction=0.1,
    )  # fmt: skip
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 10, 20, 60, 100)], [0.2, 0.6, 1.0, 0.55, 0.1], rtol=1e-6
    )
    no_warmup = optim.learning_rate_schedule(config.replace(warmup_epochs=0.0), 10)
    np.testing.assert_allclose([no_warmup(0), no_warmup(100)], [1.0, 0.1], rtol=1e-6)


def test_parameter_groups_freeze_the_stem_and_speed_up_batch_norm():
    """airbench94's groups: the whitened stem kernel never moves, the stem bias stops after
    `whiten_bias_epochs`, batch-norm parameters take `bias_lr_scale` times larger steps than
    the other parameters, and weight decay reaches kernels only."""
    config = configs.get_config(
        "tiny", whiten_bias_epochs=1.0, bias_lr_scale=8.0, warmup_epochs=0.0, momentum=0.0,
        weight_decay=0.0, learning_rate=0.1, end_lr_fraction=1.0,
    )  # fmt: skip
    model = _tiny_model(config)
    opt = nnx.Optimizer(model, optim.create_optimizer(config, steps_per_epoch=2), wrt=nnx.Param)
    ones = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    history = [_params(model)]
    for _ in range(3):
        opt.update(model, ones)
        history.append(_params(model))
    first = {name: history[1][name] - history[0][name] for name in history[0]}
    np.testing.assert_array_equal(first["stem/kernel"], 0.0)
    np.testing.assert_allclose(first["stem/bias"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(first["blocks/0/conv1/kernel"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(first["head/kernel"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(first["blocks/0/norm1/bias"], -0.8, rtol=1e-6)
    # One epoch is two steps: the stem bias moved in steps 1 and 2, not in step 3.
    np.testing.assert_allclose(history[2]["stem/bias"] - history[0]["stem/bias"], -0.2, rtol=1e-5)
    np.testing.assert_array_equal(history[3]["stem/bias"], history[2]["stem/bias"])
    np.testing.assert_array_equal(history[3]["stem/kernel"], history[0]["stem/kernel"])

    decayed = configs.get_config("tiny", weight_decay=0.5, learning_rate=0.1, warmup_epochs=0.0)
    model = _tiny_model(decayed)
    nnx.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    opt = nnx.Optimizer(model, optim.create_optimizer(decayed, steps_per_epoch=2), wrt=nnx.Param)
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = _params(model)
    assert (after["blocks/1/conv2/kernel"] < 1.0).all() and (after["head/kernel"] < 1.0).all()
    np.testing.assert_array_equal(after["blocks/1/norm2/bias"], 1.0)


def test_lookahead_pulls_weights_to_their_average_and_ends_on_it():
    """Every k steps the model becomes the EMA moved towards it; nothing happens in between;
    after the last step of the schedule the model is the EMA."""
    model = _tiny_model(configs.get_config("tiny"))
    start = _params(model)
    lookahead = optim.Lookahead(model, every=2)
    nnx.update(model, jax.tree.map(lambda p: p + 1.0, nnx.state(model, nnx.Param)))
    lookahead.after_step(model, 1, total_steps=10)
    np.testing.assert_allclose(_params(model)["head/kernel"], start["head/kernel"] + 1.0)
    lookahead.after_step(model, 2, total_steps=10)
    decay = 0.95**2 * 0.2**3
    for name in start:
        np.testing.assert_allclose(_params(model)[name], start[name] + 1 - decay, rtol=1e-5)
    ema = _params(model)
    nnx.update(model, jax.tree.map(lambda p: p + 1.0, nnx.state(model, nnx.Param)))
    lookahead.after_step(model, 10, total_steps=10)
    decay = 0.95**2
    for name in start:
        np.testing.assert_allclose(_params(model)[name], ema[name] + 1 - decay, rtol=1e-5)


def _labels(config, model):
    state = nnx.state(model, nnx.Param)
    return {
        optim.parameter_path(path): label
        for path, label in jax.tree_util.tree_leaves_with_path(optim.param_label(config)(state))
    }


def test_muon_groups_the_3x3_kernels_and_leaves_the_head_and_biases_to_sgd():
    """With optimizer 'muon', every 3x3 kernel after the stem is 'muon'; the head stays 'other',
    batch-norm biases 'norm', and the whitened stem is frozen but for its bias."""
    config = configs.get_config("tiny", model="airbench94_muon", optimizer="muon")
    labels = _labels(config, _tiny_model(config))
    kernels = [p for p in labels if p[-1] == "kernel" and p[0] == "blocks"]
    assert len(kernels) == 6 and all(labels[p] == "muon" for p in kernels)
    assert labels[("head", "kernel")] == "other"
    assert labels[("blocks", "2", "norm2", "bias")] == "norm"
    assert labels[("stem", "kernel")] == "frozen" and labels[("stem", "bias")] == "stem_bias"
    sgd = configs.get_config("tiny", model="airbench94_muon")
    assert "muon" not in _labels(sgd, _tiny_model(sgd)).values()


def test_muon_steps_the_kernels_by_a_near_orthogonal_matrix_and_decays_the_rest():
    """One Muon step moves a 3x3 kernel, read as the [9 * in, out] matrix, by the learning rate
    times a matrix whose singular values are all near 1 (three Newton-Schulz steps), whatever
    the gradient's scale; the head and the biases take SGD steps with their weight decay, and
    the stem bias's rate has decayed to 0 after `whiten_bias_epochs`."""
    config = configs.get_config(
        "tiny", model="airbench94_muon", optimizer="muon", muon_learning_rate=0.01,
        learning_rate=0.1, bias_lr_scale=2.0, weight_decay=0.5, bias_weight_decay=0.25,
        momentum=0.0, warmup_epochs=0.0, end_lr_fraction=1.0, whiten_bias_epochs=1.0,
    )  # fmt: skip
    model = _tiny_model(config)
    opt = nnx.Optimizer(model, optim.create_optimizer(config, steps_per_epoch=2), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(
        lambda p: jnp.asarray(1000 * rng.normal(size=p.shape), p.dtype),
        nnx.state(model, nnx.Param),
    )
    before = _params(model)
    opt.update(model, grads)
    after = _params(model)
    kernel = "blocks/1/conv2/kernel"
    step = (after[kernel] - before[kernel]).reshape(-1, before[kernel].shape[-1]) / 0.01
    singular = np.linalg.svd(step, compute_uv=False)
    assert singular.min() > 0.3 and singular.max() < 1.6, singular
    grad = {"/".join(optim.parameter_path(p)): np.asarray(g) for p, g in
            jax.tree_util.tree_leaves_with_path(grads)}  # fmt: skip
    for name, rate, decay in [
        ("head/kernel", 0.1, 0.5),
        ("blocks/0/norm1/bias", 0.2, 0.25),
        ("stem/bias", 0.2, 0.25),  # the stem bias's schedule: 0.2 -> 0 over 2 steps
    ]:
        expected = before[name] - rate * (grad[name] + decay * before[name])
        np.testing.assert_allclose(after[name], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(after["stem/kernel"], before["stem/kernel"])
    opt.update(model, grads)
    opt.update(model, grads)  # the stem bias's rate is 0 from its second step's end
    np.testing.assert_allclose(
        _params(model)["stem/bias"],
        after["stem/bias"] - 0.1 * (grad["stem/bias"] + 0.25 * after["stem/bias"]),
        rtol=1e-4,
        atol=1e-4,
    )
