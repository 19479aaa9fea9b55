"""The training loop end to end on a tiny generated dataset: learning, checkpoints, resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from research import configs, train
from research.configs import runtime
from research.nets import layers, models
from research.serving import model_dir
from research.serving.classifier import Classifier
from research.serving.errors import IncompatibleModelError, NonFiniteLossError
from research.serving.record import ServingRecord
from research.train import __main__ as train_command
from research.train import checkpoints, optim


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


def test_a_run_records_its_peak_resident_memory(trained):
    """results.json carries the run's peak resident memory (getrusage), in bytes."""
    _, workdir, result = trained
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["peak_rss_bytes"] == result["peak_rss_bytes"]
    assert 50 << 20 < saved["peak_rss_bytes"] <= runtime.peak_rss_bytes()


def test_the_commands_last_line_states_the_peak_memory(monkeypatch, capsys):
    """`done:` names the accuracy, the steps, the times and the peak memory in GiB."""
    result = {
        "interrupted": False,
        "step": 12,
        "eval": {"split": "validation", "accuracy": 0.9},
        "wall_seconds": 61.0,
        "loop_seconds": 50.0,
        "compile_seconds": 3.0,
        "peak_rss_bytes": 3 << 30,
    }
    monkeypatch.setattr(train_command, "train_and_evaluate", lambda config, workdir: result)
    assert train_command.main(["--dataset=cifar10", "--workdir=unused"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done: validation accuracy 0.9000 after 12 steps")
    assert last.endswith("peak memory 3.0 GiB)")


def test_checkpoints_keep_the_latest_and_the_best(trained):
    """The workdir holds the latest few checkpoints, each with model, optimizer and metadata."""
    config, workdir, _ = trained
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12
    assert len(steps) <= config.keep_checkpoints + 1
    for item in ("model", "train", "meta"):
        assert (workdir / "checkpoints" / "12" / item).is_dir()


def test_checkpoint_carries_what_inference_needs(trained):
    """Each checkpoint's meta is a ServingRecord: dataset, classes, preprocessing constants,
    flip TTA as evaluated, the training config, metrics, and a name and version built from
    the dataset, model, date and step."""
    config, workdir, _ = trained
    directory = model_dir.find_checkpoints(workdir)
    record = model_dir.read_record(directory, 12)
    assert record.dataset == "colors" and record.name == "colors-airbench94"
    assert record.class_names == ("blue", "green", "red")
    assert record.image_shape == (32, 32, 3)
    assert len(record.mean) == len(record.std) == 3
    assert record.flip_tta is True  # the tiny config flips; unknown datasets flip by default
    assert record.step == 12 and record.version == f"{record.created[:10].replace('-', '')}-step12"
    # The config as trained: with the compute dtype this machine resolved 'auto' to.
    resolved = layers.resolve_compute_dtype(config.compute_dtype)
    assert configs.Config.from_dict(record.config) == config.replace(compute_dtype=resolved)
    assert record.metrics["eval_accuracy"] == 1.0 and record.metrics["eval_split"] == "train"
    assert Classifier.load(workdir).record.class_names == record.class_names


def test_serving_record_tta_follows_the_flip_setting(trained):
    """flip_tta is stored only when training flips: a no-flip config serves without TTA."""
    config, _, _ = trained
    record = checkpoints.serving_record(
        config.replace(flip=False), class_names=("a", "b"), image_shape=(8, 8, 1), mean=(1.0,),
        std=(2.0,), step=3,
    )  # fmt: skip
    assert record.flip_tta is False and record.metrics == {}
    assert ServingRecord.from_meta(record.to_meta()) == record


def _trained_a_little(config, seed):
    """A tiny model and optimizer after two updates, so momentum and the EMA are non-trivial."""
    model = models.create_model(
        config, num_classes=3, image_shape=(32, 32, 3), mean=(1,) * 3, std=(2,) * 3,
        rngs=nnx.Rngs(seed),
    )  # fmt: skip
    opt = nnx.Optimizer(model, optim.create_optimizer(config, 10), wrt=nnx.Param)
    lookahead = optim.Lookahead(model, config.lookahead_every)
    for step in (1, 2):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * seed), nnx.state(model, nnx.Param))
        opt.update(model, grads)
        lookahead.after_step(model, step, total_steps=10)
    return model, opt, lookahead


def _leaf_bytes(tree):
    return [
        np.asarray(jax.random.key_data(x) if x.dtype == jax.dtypes.prng_key else x).tobytes()
        for x in jax.tree.leaves(tree)
    ]


def test_checkpoint_save_then_restore_is_bitwise_equal(trained, tmp_path):
    """Weights, batch statistics, optimizer and lookahead state come back bit for bit."""
    config, _, _ = trained
    model, opt, lookahead = _trained_a_little(config, seed=1)
    mngr = checkpoints.checkpoint_manager(tmp_path / "ckpt", config)
    record = checkpoints.serving_record(
        config, class_names=("a", "b", "c"), image_shape=(32, 32, 3), mean=(1,) * 3,
        std=(2,) * 3, step=7,
    )  # fmt: skip
    checkpoints.save_checkpoint(mngr, 7, model, opt, record, lookahead)
    mngr.wait_until_finished()
    restored_model, restored_opt, restored_lookahead = _trained_a_little(config, seed=2)
    assert _leaf_bytes(nnx.state(opt)) != _leaf_bytes(nnx.state(restored_opt))
    step = checkpoints.restore_checkpoint(
        mngr, config, restored_model, restored_opt, restored_lookahead
    )
    assert step == 7
    assert _leaf_bytes((nnx.state((model, opt)), lookahead.ema)) == _leaf_bytes(
        (nnx.state((restored_model, restored_opt)), restored_lookahead.ema)
    )
    saved = model_dir.read_record(tmp_path / "ckpt", 7).to_meta()
    assert saved == json.loads(json.dumps(record.to_meta()))  # the record, as JSON keeps it
    mngr.close()


def test_restoring_a_checkpoint_without_a_serving_record_is_refused(trained, tmp_path):
    """A checkpoint whose meta is not a serving record fails with IncompatibleModelError."""
    config, _, _ = trained
    model, opt, lookahead = _trained_a_little(config, seed=1)
    mngr = checkpoints.checkpoint_manager(tmp_path / "ckpt", config)
    mngr.save(
        3,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(models.inference_state(model)),
            train=ocp.args.StandardSave({"opt": 0}),
            meta=ocp.args.JsonSave({"model": config.to_dict()}),
        ),
    )
    mngr.wait_until_finished()
    with pytest.raises(IncompatibleModelError, match="lacks serving-record fields"):
        checkpoints.restore_checkpoint(mngr, config, model, opt, lookahead)
    mngr.close()


def test_step_counts_follow_epochs_batch_size_and_max_steps():
    """Steps per epoch drop the last partial batch; max_steps shortens the run, not the
    schedule; too large a batch is refused."""
    config = configs.get_config("tiny", batch_size=16, epochs=2.5, eval_every_epochs=0.5)
    assert configs.count_steps(config, 100) == configs.StepCounts(
        per_epoch=6, schedule=15, total=15, eval_every=3
    )
    short = configs.count_steps(config.replace(max_steps=4), 100)
    assert (short.schedule, short.total) == (15, 4)
    with pytest.raises(ValueError, match="exceeds the 10 examples"):
        configs.count_steps(config, 10)


def test_create_train_state_starts_fresh_or_resumes_the_latest_checkpoint(trained):
    """Without a workdir: step 0, no checkpoints, the stem whitened on the given images.
    On a finished workdir: its latest step, optimizer and weights, and no whitening."""
    config, workdir, _ = trained
    shapes = _state_kwargs(workdir)
    record = model_dir.read_record(model_dir.find_checkpoints(workdir), 12)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    whitened = config.replace(stem_width=24)  # 2x2x3 patches: 12 eigenvectors and negatives
    fresh = train.create_train_state(whitened, None, whitening_images=lambda: images, **shapes)
    assert fresh.step == 0 and fresh.checkpoints is None
    normalized = (images.astype(np.float32) - np.asarray(record.mean)) / np.asarray(record.std)
    np.testing.assert_allclose(
        np.asarray(fresh.model.stem.kernel[...]), models.whitening_kernel(normalized, 2), rtol=1e-6
    )

    def refuse():
        raise AssertionError("a resumed run must not re-whiten its stem")

    resumed = train.create_train_state(config, workdir, whitening_images=refuse, **shapes)
    try:
        assert resumed.step == 12 and int(resumed.opt.step[...]) == 12
        assert resumed.model.head.kernel[...].sharding == resumed.replicated
        saved = Classifier.load(workdir)  # step 12: the latest of the best
        assert saved.record.step == 12
        assert _leaf_bytes(models.inference_state(resumed.model)) == _leaf_bytes(
            models.inference_state(saved.model)
        )
    finally:
        resumed.checkpoints.close()


def test_a_frozen_stem_that_cannot_whiten_the_images_is_reported(trained, caplog):
    """Under a recipe that freezes the stem's kernel, a stem too narrow to whiten the images
    (8 channels for colour) is not left random in silence: the log names the width that fits."""
    config, workdir, _ = trained
    shapes = _state_kwargs(workdir)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    assert config.stem_width == 8 and config.whiten_bias_epochs is not None
    with caplog.at_level("WARNING", logger="research.train"):
        train.create_train_state(config, None, whitening_images=lambda: images, **shapes)
    assert "--stem_width=24" in caplog.text and "frozen" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="research.train"):
        train.create_train_state(
            config.replace(stem_width=24), None, whitening_images=lambda: images, **shapes
        )
    assert "stem" not in caplog.text


def test_evaluate_model_uses_the_temperature_and_skips_padding(trained):
    """Loss is the mean negative log-probability at the temperature over unmasked rows;
    accuracy does not depend on the temperature."""
    _, workdir, _ = trained
    model = Classifier.load(workdir).model
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
        "label": np.array([0, 1, 2, 0, 1, 2], np.int32),
        "mask": np.array([True] * 5 + [False]),
    }
    logits = np.asarray(models.predict_logits(model, batch["image"], flip_tta=True))[:5]
    for temperature in (1.0, 2.5):
        metrics = train.evaluate_model(
            model, [batch], num_classes=3, flip_tta=True, temperature=temperature
        )
        log_probs = np.asarray(jax.nn.log_softmax(logits / temperature, axis=-1))
        assert metrics["count"] == 5
        np.testing.assert_allclose(
            metrics["loss"], -log_probs[np.arange(5), batch["label"][:5]].mean(), rtol=1e-5
        )
        assert metrics["accuracy"] == np.mean(logits.argmax(-1) == batch["label"][:5])


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
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train.train_and_evaluate(config, tmp_path)


def test_cli_reports_bad_options_without_a_traceback(capsys):
    """Unknown model names fail with the list of valid ones and exit status 2."""
    assert train_command.main(["--dataset=cifar10", "--model=resnet9000"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_resuming_with_a_different_recipe_is_refused_with_the_field_named(trained):
    """A workdir's run continues only under the config that started it: a changed field that
    shapes the saved state (here the lookahead) fails before anything is written."""
    config, workdir, _ = trained
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="lookahead_every=2"):
        train.train_and_evaluate(config.replace(lookahead_every=0), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_help_imports_no_tensorflow():
    """`python -m research.train --help` lists the flags without importing TensorFlow."""
    script = (
        "import runpy, sys\n"
        "sys.argv = ['research.train', '--help']\n"
        "try:\n"
        "    runpy.run_module('research.train', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--learning_rate" in done.stdout and "--workdir" in done.stdout


def _copy_of(workdir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy


def _truncate_weights(step_dir):
    """Cut every weight data file of a step's 'model' item in half, as a crash mid-write would."""
    files = [p for p in (step_dir / "model").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_meta(step_dir):
    path = step_dir / "meta" / "metadata"
    path.write_text(path.read_text()[:40])


def _state_kwargs(workdir):
    record = model_dir.read_record(model_dir.find_checkpoints(workdir), 12)
    return dict(
        num_classes=3, image_shape=(32, 32, 3), mean=record.mean, std=record.std,
        steps_per_epoch=3,
    )  # fmt: skip


@pytest.mark.parametrize("damage", [_truncate_weights, _truncate_meta], ids=["weights", "meta"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_readable_one(
    trained, tmp_path, caplog, damage
):
    """A truncated weight or metadata file in the latest step: training resumes from the
    step before it with a warning naming the broken step and its path, sets the broken one
    aside, and runs on to the end."""
    config, workdir, _ = trained
    run = _copy_of(workdir, tmp_path)
    steps = model_dir.list_steps(run / "checkpoints")
    latest, previous = steps[-1], steps[-2]
    damage(run / "checkpoints" / str(latest))
    kwargs = _state_kwargs(workdir)
    with caplog.at_level("WARNING", logger="research.train.checkpoints"):
        state = train.create_train_state(config, run, **kwargs)
    state.checkpoints.close()
    assert state.step == previous
    warning = caplog.text
    assert f"step {latest}" in warning and str(run / "checkpoints" / str(latest)) in warning
    assert (run / "checkpoints" / f"{latest}.broken").is_dir()
    assert model_dir.list_steps(run / "checkpoints")[-1] == previous
    result = train.train_and_evaluate(config, run)
    assert result["step"] == 12 and latest in model_dir.list_steps(run / "checkpoints")


def test_no_readable_checkpoint_is_an_error_naming_each(trained, tmp_path):
    """When every step is broken, NoUsableCheckpointError names each step and path."""
    config, workdir, _ = trained
    run = _copy_of(workdir, tmp_path)
    steps = model_dir.list_steps(run / "checkpoints")
    for step in steps:
        _truncate_meta(run / "checkpoints" / str(step))
    with pytest.raises(checkpoints.NoUsableCheckpointError) as error:
        train.create_train_state(config, run, **_state_kwargs(workdir))
    for step in steps:
        assert f"step {step} ({run / 'checkpoints' / str(step)}" in str(error.value)
    assert "bound method" not in str(error.value) and " object at 0x" not in str(error.value)
    assert model_dir.list_steps(run / "checkpoints") == steps  # nothing moved or deleted


def test_the_loops_functional_lookahead_pull_equals_lookahead_after_step(trained):
    """The training loop pulls the lookahead's EMA on the split arrays (train.Stepper.pull);
    the weights and the EMA it leaves are Lookahead.after_step's, bit for bit."""
    config, _, _ = trained
    model, opt, lookahead = _trained_a_little(config, seed=1)
    twin, twin_opt, twin_lookahead = _trained_a_little(config, seed=1)
    step = config.lookahead_every * 2  # a pull is due
    lookahead.after_step(model, step, total_steps=100)
    state = train.TrainState(
        model=twin, opt=twin_opt, metrics=nnx.MultiMetric(loss=nnx.metrics.Average("loss")),
        lookahead=twin_lookahead, checkpoints=None, step=0, data_sharding=None, replicated=None,
    )  # fmt: skip
    stepper = train.Stepper(state)
    decay = twin_lookahead.decay_at(step, 100)
    assert decay is not None and twin_lookahead.decay_at(step + 1, 100) is None
    twin_lookahead.ema = stepper.pull(twin_lookahead.ema, decay)
    stepper.sync()
    assert _leaf_bytes(nnx.state(twin)) == _leaf_bytes(nnx.state(model))
    assert _leaf_bytes(twin_lookahead.ema) == _leaf_bytes(lookahead.ema)


def _muon_config(color_dataset, **overrides):
    """The cifar10 recipe's mechanisms (Muon, alternating flips, two microbatches, the muon
    head) at the tiny size, with rates the tiny set trains at."""
    recipe = dict(configs.AIRBENCH94_MUON_RECIPE)
    for size_field in ("widths", "stem_width", "batch_size", "epochs"):
        recipe.pop(size_field)
    recipe.update(learning_rate=0.5, bias_lr_scale=1.0, weight_decay=5e-4, bias_weight_decay=5e-4)
    return _config(color_dataset, **{**recipe, "epochs": 4.0, **overrides})


def test_microbatches_average_the_gradients_of_interleaved_slices():
    """microbatches=2: the loss and gradients are the means of those of the slices of examples
    0, 2, 4, ... and 1, 3, 5, ... (each normalized by its own batch-norm statistics), and the
    logits come back in the batch's order."""
    config = configs.get_config("tiny", model="airbench94_muon")
    model = models.create_model(
        config, num_classes=3, image_shape=(16, 16, 3), mean=(128,) * 3, std=(64,) * 3,
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3), np.uint8)),
        "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
    }
    graphdef, state = nnx.split(model)
    loss, logits, grads = train.compute_gradients(nnx.merge(graphdef, state), batch, 0.1, 2)
    halves = [{key: value[j::2] for key, value in batch.items()} for j in (0, 1)]
    slices = [train.compute_gradients(nnx.merge(graphdef, state), half, 0.1) for half in halves]
    np.testing.assert_allclose(loss, (slices[0][0] + slices[1][0]) / 2, rtol=1e-5)
    np.testing.assert_allclose(logits[0::2], slices[0][1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits[1::2], slices[1][1], rtol=1e-4, atol=1e-6)
    for g, a, b in zip(
        *(jax.tree.leaves(t) for t in (grads, slices[0][2], slices[1][2])), strict=True
    ):
        np.testing.assert_allclose(g, (a + b) / 2, rtol=1e-4, atol=1e-6)
    whole = train.compute_gradients(nnx.merge(graphdef, state), batch, 0.1)
    assert not np.allclose(whole[1], logits, atol=1e-3)  # ghost batch norm: not the same pass


@pytest.mark.parametrize("input_mode", ["tfdata", "device"])
def test_muon_recipe_run_resumes_exactly_and_learns(color_dataset, tmp_path, input_mode):
    """The cifar10 recipe's mechanisms at tiny size, in either input mode: stopping at step 5
    and rerunning gives the uninterrupted run's weights, and the run learns the tiny set."""
    config = _muon_config(color_dataset, input=input_mode)
    straight = train.train_and_evaluate(config, tmp_path / "straight")
    assert straight["eval"]["accuracy"] > 0.9
    partial = train.train_and_evaluate(config.replace(max_steps=5), tmp_path / "resumed")
    assert partial["step"] == 5
    resumed = train.train_and_evaluate(config, tmp_path / "resumed")
    assert resumed["step"] == straight["step"] == 12
    a, b = (Classifier.load(tmp_path / name) for name in ("straight", "resumed"))
    for x, y in zip(
        jax.tree.leaves(models.inference_state(a.model)),
        jax.tree.leaves(models.inference_state(b.model)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_microbatches_must_divide_the_batch():
    """A batch that does not split into `microbatches` equal slices is refused up front."""
    with pytest.raises(ValueError, match="microbatches"):
        configs.get_config("tiny", batch_size=16, microbatches=3)


def test_translate_tta_is_trained_into_the_record_and_served_as_evaluated(color_dataset, tmp_path):
    """translate_tta=True: the run evaluates on the six views, its serving record says so, and
    the Classifier's probabilities are the six-view average of the same weights."""
    config = _config(color_dataset, epochs=1.0, translate_tta=True)
    result = train.train_and_evaluate(config, tmp_path)
    clf = Classifier.load(tmp_path)
    assert clf.record.translate_tta and clf.record.flip_tta
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    logits = models.predict_logits(
        clf.model, jnp.asarray(images), flip_tta=True, translate_tta=True
    )
    expected = jax.nn.softmax(np.asarray(logits) / clf.record.temperature, axis=-1)
    np.testing.assert_allclose(clf.predict_arrays(images), expected, rtol=1e-4, atol=1e-5)
    assert result["eval"]["count"] == 12


def test_interim_evaluations_leave_out_the_shifted_views_and_the_last_uses_them(
    color_dataset, tmp_path
):
    """With translate_tta, the per-epoch evaluations before the last average the image and its
    mirror only (a third of the cost); the last one, which the run reports, averages all six
    served views. metrics.jsonl says which each was."""
    config = _config(color_dataset, epochs=2.0, eval_every_epochs=1.0, translate_tta=True)
    result = train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    split = result["eval"]["split"]
    assert [row[f"{split}/translate_tta"] for row in rows] == [False, True]
    assert result["eval"]["translate_tta"]
    assert rows[-1][f"{split}/loss"] == pytest.approx(result["eval"]["loss"])
    # The last step's record carries the six-view figure that the run reports.
    _, ranked = model_dir.rank_checkpoints(tmp_path)
    last_record = dict(ranked)[max(step for step, _ in ranked)]
    assert last_record.metrics["eval_loss"] == pytest.approx(result["eval"]["loss"])


def test_the_fast_math_step_equals_the_ieee_step_up_to_float_rounding(color_dataset):
    """STEP_COMPILER_OPTIONS' fast math only reorders and fuses float arithmetic: two steps from
    the same state and batch give the losses and weights of the step compiled without it, to
    float32 rounding (far below what bfloat16 compute itself changes)."""
    config = _config(color_dataset, compute_dtype="float32")
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (config.batch_size, 32, 32, 3), np.uint8),
        "label": rng.integers(0, 3, config.batch_size).astype(np.int32),
    }
    outcomes = []
    for step in (train.train_step, train.jit_step(train.train_update, compiler_options={})):
        state = train.create_train_state(
            config,
            None,
            num_classes=3,
            image_shape=(32, 32, 3),
            mean=(127.0,) * 3,
            std=(64.0,) * 3,
            steps_per_epoch=4,
        )
        stepper = train.Stepper(state)
        losses = [float(stepper(step, batch, label_smoothing=0.1)) for _ in range(2)]
        stepper.sync()
        outcomes.append((losses, jax.tree.leaves(nnx.state(state.model, nnx.Param))))
    (fast_losses, fast), (ieee_losses, ieee) = outcomes
    np.testing.assert_allclose(fast_losses, ieee_losses, rtol=1e-5)
    for a, b in zip(fast, ieee, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert train.STEP_COMPILER_OPTIONS["xla_cpu_enable_fast_math"]
