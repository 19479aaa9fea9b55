"""The training loop end to end on a tiny generated dataset: learning, checkpoints, resume."""

from __future__ import annotations

import json
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research import configs, models, train
from research.inference import Classifier


def _config(color_dataset, **overrides):
    name, data_dir = color_dataset
    return configs.get_config("tiny", dataset=name, data_dir=data_dir, **overrides)


def test_training_lowers_the_loss_and_overfits_the_tiny_set(trained):
    """Loss falls from ~log(3) and the net fits its 60 training images to 100%."""
    _, workdir, result = trained
    assert result["step"] == 12 and not result["interrupted"]
    assert result["eval"]["accuracy"] == 1.0
    assert result["eval"]["loss"] < 0.5 * np.log(3)
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["eval"]["accuracy"] == 1.0


def test_checkpoints_keep_the_latest_and_the_best(trained):
    """The workdir holds the latest few checkpoints, each with model, optimizer and metadata."""
    config, workdir, _ = trained
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12
    assert len(steps) <= config.keep_checkpoints + 1
    for item in ("model", "train", "meta"):
        assert (workdir / "checkpoints" / "12" / item).is_dir()


def test_checkpoint_carries_what_inference_needs(trained):
    """The metadata names dataset, classes, preprocessing constants, config and metrics."""
    _, workdir, _ = trained
    meta = Classifier.load(workdir).meta
    assert meta["dataset"] == "colors"
    assert meta["class_names"] == ["blue", "green", "red"]
    assert meta["image_shape"] == [32, 32, 3]
    assert len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["model"]["widths"] == [8, 16, 16] or meta["model"]["widths"] == (8, 16, 16)
    assert meta["metrics"]["eval_accuracy"] == 1.0


def test_checkpoint_save_then_restore_is_bitwise_equal(trained, tmp_path):
    """Weights, batch statistics and optimizer state come back bit for bit."""
    config, workdir, _ = trained
    info = type("Info", (), {"class_names": ("a", "b", "c"), "image_shape": (32, 32, 3)})

    def fresh(seed):
        model = models.create_model(
            config, num_classes=3, image_shape=(32, 32, 3), mean=(1,) * 3, std=(2,) * 3,
            rngs=nnx.Rngs(seed),
        )  # fmt: skip
        return model, nnx.Optimizer(model, train.create_optimizer(config, 10), wrt=nnx.Param)

    model, opt = fresh(1)
    lookahead = train.Lookahead(model, config.lookahead_every)
    mngr = train.checkpoint_manager(tmp_path / "ckpt", config)
    meta = train.build_meta(config, info=info, mean=(1,) * 3, std=(2,) * 3, step=7)
    train.save_checkpoint(mngr, 7, model, opt, meta, lookahead)
    mngr.wait_until_finished()
    restored_model, restored_opt = fresh(2)
    restored_lookahead = train.Lookahead(restored_model, config.lookahead_every)
    assert (
        train.restore_checkpoint(mngr, config, restored_model, restored_opt, restored_lookahead)
        == 7
    )
    for a, b in zip(
        jax.tree.leaves((nnx.state((model, opt)), lookahead.ema)),
        jax.tree.leaves((nnx.state((restored_model, restored_opt)), restored_lookahead.ema)),
        strict=True,
    ):
        a, b = (
            np.asarray(jax.random.key_data(a) if a.dtype == jax.dtypes.prng_key else a),
            (np.asarray(jax.random.key_data(b) if b.dtype == jax.dtypes.prng_key else b)),
        )
        assert a.tobytes() == b.tobytes()


def _tiny_model(config, seed=0):
    return models.create_model(
        config, num_classes=3, image_shape=(32, 32, 3), mean=(1,) * 3, std=(2,) * 3,
        rngs=nnx.Rngs(seed),
    )  # fmt: skip


def _params(model):
    return {
        "/".join(str(k.key) for k in path if hasattr(k, "key")): np.array(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    }


def test_parameter_groups_freeze_the_stem_and_speed_up_batch_norm():
    """airbench94's groups: the whitened stem kernel never moves, the stem bias stops after
    `whiten_bias_epochs`, batch-norm parameters take `bias_lr_scale` times larger steps than
    the other parameters, and weight decay reaches kernels only."""
    config = configs.get_config(
        "tiny", whiten_bias_epochs=1.0, bias_lr_scale=8.0, warmup_epochs=0.0, momentum=0.0,
        weight_decay=0.0, learning_rate=0.1, end_lr_fraction=1.0,
    )  # fmt: skip
    model = _tiny_model(config)
    opt = nnx.Optimizer(model, train.create_optimizer(config, steps_per_epoch=2), wrt=nnx.Param)
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
    opt = nnx.Optimizer(model, train.create_optimizer(decayed, steps_per_epoch=2), wrt=nnx.Param)
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = _params(model)
    assert (after["blocks/1/conv2/kernel"] < 1.0).all() and (after["head/kernel"] < 1.0).all()
    np.testing.assert_array_equal(after["blocks/1/norm2/bias"], 1.0)


def test_lookahead_pulls_weights_to_their_average_and_ends_on_it():
    """Every k steps the model becomes the EMA moved towards it; nothing happens in between;
    after the last step of the schedule the model is the EMA."""
    model = _tiny_model(configs.get_config("tiny"))
    start = _params(model)
    lookahead = train.Lookahead(model, every=2)
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


def test_interrupted_run_resumes_at_its_step_and_matches_an_uninterrupted_one(
    trained, color_dataset, tmp_path
):
    """Stopping at step 5 and rerunning gives the same weights as the uninterrupted run."""
    config, straight_dir, _ = trained
    partial = train.train_and_evaluate(config.replace(max_steps=5), tmp_path)
    assert partial["step"] == 5
    resumed = train.train_and_evaluate(config, tmp_path)
    assert resumed["step"] == 12
    a = Classifier.load(straight_dir)
    b = Classifier.load(tmp_path)
    for x, y in zip(
        jax.tree.leaves(models.inference_state(a.model)),
        jax.tree.leaves(models.inference_state(b.model)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_sigterm_saves_a_checkpoint_and_stops(color_dataset, tmp_path):
    """SIGTERM mid-run stops after the current step with a checkpoint to resume from."""
    config = _config(color_dataset, epochs=200.0, eval_every_epochs=1000.0)
    timer = threading.Timer(8.0, lambda: signal.raise_signal(signal.SIGTERM))
    timer.start()
    try:
        result = train.train_and_evaluate(config, tmp_path)
    finally:
        timer.cancel()
    assert result["interrupted"]
    assert 0 < result["step"] < 600
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(steps) == result["step"]


def test_non_finite_loss_stops_the_run_naming_the_step(color_dataset, tmp_path):
    """An exploding learning rate raises NonFiniteLossError that names the step."""
    config = _config(color_dataset, learning_rate=1e30, label_smoothing=0.0)
    with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
        train.train_and_evaluate(config, tmp_path)


def test_cli_reports_bad_options_without_a_traceback(capsys):
    """Unknown model names fail with the list of valid ones and exit status 2."""
    assert train.main(["--dataset=cifar10", "--model=resnet9000"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_resuming_with_a_different_recipe_is_refused_with_the_field_named(trained):
    """A workdir's run continues only under the config that started it: a changed field that
    shapes the saved state (here the lookahead) fails before anything is written."""
    config, workdir, _ = trained
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="lookahead_every=2"):
        train.train_and_evaluate(config.replace(lookahead_every=0), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
