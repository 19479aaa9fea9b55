"""Model family: output shapes, pinned parameter counts, normalization."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research import configs
from research.nets import models


def _model(name: str, shape=(32, 32, 3), num_classes=10, **overrides):
    config = configs.get_config(name, **overrides)
    channels = shape[-1]
    return models.create_model(
        config,
        num_classes=num_classes,
        image_shape=shape,
        mean=(127.5,) * channels,
        std=(64.0,) * channels,
        rngs=nnx.Rngs(0),
    )


@pytest.mark.parametrize(
    ("name", "shape", "overrides", "expected"),
    [
        ("cifar10", (32, 32, 3), {}, 1_971_640),  # airbench94 widths 64/256/256
        ("cifar10", (32, 32, 3), {"model": "airbench"}, 1_972_816),  # + norm scales, stem norm
        ("fashion_mnist", (28, 28, 1), {}, 1_962_152),  # airbench94, an 8-channel grey stem
        ("fashion_mnist", (28, 28, 1), {"recipe": "fashion_mnist_small"}, 294_928),  # 32/64/128
        ("tiny", (32, 32, 3), {}, 9_560),
        ("cifar10", (32, 32, 3), {"model": "baseline"}, 845_514),
    ],
)
def test_parameter_count_is_pinned(name, shape, overrides, expected):
    """Each named config builds the network it documents, to the parameter."""
    assert models.count_params(_model(name, shape, **overrides)) == expected


@pytest.mark.parametrize("model_name", configs.MODELS)
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_output_is_one_logit_per_class(model_name, shape):
    """uint8 NHWC images in, float32 [N, num_classes] logits out, for both image sizes."""
    model = _model("tiny", shape, num_classes=7, model=model_name)
    logits = model(jnp.zeros((3, *shape), jnp.uint8))
    assert logits.shape == (3, 7)
    assert logits.dtype == jnp.float32


def test_normalize_uses_mean_and_std():
    """normalize maps mean to 0 and mean+std to 1, per channel."""
    images = jnp.array([[[[10, 20], [13, 28]]]], jnp.uint8)
    out = models.normalize(images, mean=(10, 20), std=(3, 8))
    np.testing.assert_allclose(np.asarray(out), [[[[0, 0], [1, 1]]]])


def test_flip_tta_averages_image_and_mirror():
    """predict_logits with flip_tta is the mean of the logits of the image and its mirror."""
    model = _model("tiny")
    model.eval()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)
    expected = 0.5 * (model(images) + model(images[:, :, ::-1]))
    got = models.predict_logits(model, images, flip_tta=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_translate_tta_weighs_the_image_half_and_two_one_pixel_shifts_a_quarter_each():
    """airbench's tta_level 2: 0.5 x the flip average of the image, 0.25 x that of the image
    shifted a pixel up-left (reflect padding) and 0.25 x that of it shifted down-right; the
    features and stage statistics are averaged the same way."""
    model = _model("tiny")
    model.eval()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = jnp.asarray(padded[:, :32, :32]), jnp.asarray(padded[:, 2:, 2:])
    assert np.array_equal(np.asarray(up_left[:, 1:, 1:]), np.asarray(images[:, :-1, :-1]))

    def flip_average(x):
        return models.predict_logits(model, x, flip_tta=True)

    expected = 0.5 * flip_average(images) + 0.25 * (
        flip_average(up_left) + flip_average(down_right)
    )
    got = models.predict_logits(model, images, flip_tta=True, translate_tta=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    logits, features, _ = models.predict_logits_and_features(
        model, images, flip_tta=True, translate_tta=True
    )
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(model.head_logits(features)), np.asarray(expected), rtol=1e-4, atol=1e-5
    )  # the head is linear: the averaged features give the averaged logits
    assert len(models.tta_views(images, flip_tta=False, translate_tta=True)) == 3


def test_unknown_model_name_lists_the_valid_ones():
    """A typo in the model name fails with the list of valid names."""
    with pytest.raises(ValueError, match="airbench"):
        configs.get_config("cifar10", model="resnet9000")


def test_whitening_kernel_decorrelates_patches():
    """The stem's whitening init maps 2x2 patches to (nearly) unit, uncorrelated features."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 16, 16, 1))
    images = np.concatenate([base, 0.5 * base + rng.normal(size=base.shape), base**2], axis=-1)
    kernel = models.whitening_kernel(images.astype(np.float32), 2, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    patches = np.stack(
        [images[:, i : 15 + i, j : 15 + j] for i in range(2) for j in range(2)], axis=3
    ).reshape(-1, 12)
    features = patches @ kernel.reshape(12, 24)[:, :12]
    np.testing.assert_allclose(features.T @ features / len(features), np.eye(12), atol=1e-3)


def test_stem_whitening_applies_only_to_matching_stems():
    """init_stem_whitening sets a 24-channel RGB stem and leaves other stems alone."""
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
    model = _model("cifar10")
    before = np.asarray(model.stem.kernel[...]).copy()
    assert models.init_stem_whitening(model, images)
    assert not np.allclose(before, np.asarray(model.stem.kernel[...]))
    assert not models.init_stem_whitening(_model("tiny"), images)  # 8-channel stem


def test_airbench94_recipe_maps_airbench_units_to_mean_loss_units():
    """The airbench94 recipe: airbench's lr 11.5 and decay 0.0153 per 1024 at momentum 0.85."""
    config = configs.Config(dataset="cifar10", **configs.AIRBENCH94_RECIPE)
    airbench_scale = 1 + 1 / (1 - config.momentum)  # airbench's kilostep_scale / 1024
    assert config.learning_rate == pytest.approx(11.5 / airbench_scale)
    assert config.learning_rate * config.weight_decay == pytest.approx(0.0153 / airbench_scale)
    assert config.warmup_epochs == pytest.approx(0.23 * config.epochs)
    assert configs.dataset_spec("cifar10").flip and config.flip_tta


def test_tiny_derives_from_the_airbench94_recipe():
    """tiny trains airbench94's net with its lookahead and stem freezing, at toy size."""
    tiny, recipe = configs.get_config("tiny"), configs.AIRBENCH94_RECIPE
    assert tiny.model == recipe["model"] == "airbench94"
    assert tiny.lookahead_every > 0 and tiny.whiten_bias_epochs is not None
    assert tiny.batch_size < recipe["batch_size"] and max(tiny.widths) < min(recipe["widths"])


def test_stem_init_is_the_variants_own():
    """airbench94's stem starts PyTorch-uniform (|w| <= 1/sqrt(fan_in)); airbench's LeCun-normal."""
    bound = 1 / np.sqrt(2 * 2 * 3)  # fan_in of the 2x2 RGB stem
    assert models.AIRBENCH_VARIANTS["airbench94"].stem_init is models.TORCH_KERNEL_INIT
    torch_like = np.asarray(_model("cifar10", stem_width=256).stem.kernel[...])
    assert np.abs(torch_like).max() <= bound and np.abs(torch_like).max() > 0.9 * bound
    lecun = np.asarray(_model("cifar10", model="airbench", stem_width=256).stem.kernel[...])
    assert np.abs(lecun).max() > 1.5 * bound
    np.testing.assert_allclose(lecun.std(), bound, rtol=0.15)


def test_cifar10_defaults_to_airbench94_at_14_epochs_evaluated_once_on_six_views():
    """The default CIFAR-10 run is airbench94's SGD recipe at 14 epochs (its warm-up still 23%
    of the run), each step in sixteen slices of 64 images, evaluated once, at the end, with the
    mirror and translate views."""
    config = configs.get_config("cifar10")
    assert config == configs.get_config("cifar10", recipe="cifar10")
    airbench94 = configs.get_config("cifar10", recipe="airbench94")
    assert config == airbench94.replace(
        epochs=14.0,
        warmup_epochs=0.23 * 14,
        translate_tta=True,
        eval_every_epochs=14.0,
        microbatches=16,
    )
    assert config.optimizer == "sgd" and config.lookahead_every == 5


def test_fashion_mnist_defaults_to_the_cifar10_recipe_with_a_whitened_grey_stem():
    """The default Fashion-MNIST run is the CIFAR-10 default's net and recipe at 20 epochs
    (warm-up 23%, evaluated once), with an 8-channel stem: the four directions of a 2x2 grey
    patch and their negatives, so that the whitening applies to one-channel images."""
    config = configs.get_config("fashion_mnist")
    assert config == configs.get_config("fashion_mnist", recipe="cifar10").replace(
        stem_width=8, epochs=20.0, warmup_epochs=0.23 * 20, eval_every_epochs=20.0
    )
    grey = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1)).astype(np.uint8)
    model = _model("fashion_mnist", shape=(28, 28, 1))
    before = np.asarray(model.stem.kernel[...]).copy()
    assert models.init_stem_whitening(model, grey)
    assert not np.allclose(before, np.asarray(model.stem.kernel[...]))
    assert not models.init_stem_whitening(
        _model("fashion_mnist", shape=(28, 28, 1), stem_width=24), grey
    )
    # The first recipe, behind the shipped Fashion-MNIST models, stays one flag away.
    small = configs.get_config("fashion_mnist", recipe="fashion_mnist_small")
    assert (small.model, small.widths, small.epochs) == ("airbench", (32, 64, 128), 16.0)


def test_the_muon_recipe_is_in_mean_loss_units():
    """airbench94_muon's recipe: its per-sum rates (head 0.67, biases 0.053) times the
    2,000-image batch, and its decay of 2e-6 x 2000 of each weight per step at the peak."""
    config = configs.get_config("cifar10", recipe="airbench94_muon")
    assert config == configs.Config(dataset="cifar10", **configs.AIRBENCH94_MUON_RECIPE)
    assert config.optimizer == "muon" and config.batch_size == 2000
    assert config.learning_rate == pytest.approx(0.67 * 2000)
    assert config.learning_rate * config.bias_lr_scale == pytest.approx(0.053 * 2000)
    assert config.learning_rate * config.weight_decay == pytest.approx(2e-6 * 2000)
    bias_rate = config.learning_rate * config.bias_lr_scale
    assert bias_rate * config.bias_weight_decay == pytest.approx(2e-6 * 2000)
    assert config.alternate_flip and config.lookahead_every == 0 and config.warmup_epochs == 0


def test_muon_head_starts_at_unit_std_and_divides_by_the_feature_count():
    """airbench94_muon's head: weights rescaled to standard deviation 1, logits = head / 256."""
    net = _model("cifar10", recipe="airbench94_muon")
    kernel = np.asarray(net.head.kernel[...])
    np.testing.assert_allclose(kernel.std(ddof=1), 1.0, rtol=1e-5)
    assert net.head_scale == pytest.approx(1 / 256)
    features = jnp.ones((1, 256))
    np.testing.assert_allclose(
        np.asarray(net.head_logits(features)), kernel.sum(0, keepdims=True) / 256, rtol=1e-5
    )
    assert _model("cifar10", model="airbench94").head_scale == pytest.approx(1 / 9)


def test_a_named_recipe_replaces_the_datasets_defaults():
    """--recipe=airbench94 brings back the SGD recipe on cifar10 (and any recipe on any
    dataset); an unknown name is refused with the valid ones listed."""
    sgd = configs.get_config("cifar10", recipe="airbench94", epochs=2.0)
    assert sgd == configs.Config(dataset="cifar10", **configs.AIRBENCH94_RECIPE).replace(epochs=2)
    assert configs.get_config("fashion_mnist", recipe="airbench94_muon").optimizer == "muon"
    with pytest.raises(ValueError, match="airbench94_muon"):
        configs.get_config("cifar10", recipe="nope")
