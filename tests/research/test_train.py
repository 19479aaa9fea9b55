"""The training loop end to end on a tiny generated dataset: learning, checkpoints, resume."""

from __future__ import annotations

import json
import signal
import threading

import jax
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
    mngr = train.checkpoint_manager(tmp_path / "ckpt", config)
    meta = train.build_meta(config, info=info, mean=(1,) * 3, std=(2,) * 3, step=7)
    train.save_checkpoint(mngr, 7, model, opt, meta)
    mngr.wait_until_finished()
    restored_model, restored_opt = fresh(2)
    assert train.restore_checkpoint(mngr, config, restored_model, restored_opt) == 7
    for a, b in zip(
        jax.tree.leaves(nnx.state((model, opt))),
        jax.tree.leaves(nnx.state((restored_model, restored_opt))),
        strict=True,
    ):
        a, b = (
            np.asarray(jax.random.key_data(a) if a.dtype == jax.dtypes.prng_key else a),
            (np.asarray(jax.random.key_data(b) if b.dtype == jax.dtypes.prng_key else b)),
        )
        assert a.tobytes() == b.tobytes()


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
