"""tf.data pipelines: shapes, dtypes, ranges, augmentation on train only, determinism."""

import numpy as np
import pytest

from research import configs
from research.data import pipeline


@pytest.fixture
def config(color_dataset):
    name, data_dir = color_dataset
    return configs.get_config("tiny", dataset=name, data_dir=data_dir, cutout=8)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_are_uint8_images_and_int_labels(config):
    """Training batches are uint8 [B, 32, 32, 3] images in 0..255 with int32 labels < 3."""
    batch = next(pipeline.create_train_iterator(config, mean=(128, 128, 128)))
    assert batch["image"].shape == (16, 32, 32, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= {0, 1, 2}
    assert batch["image"].max() > 128  # real pixel values, not normalized floats


def test_same_seed_gives_same_batches_and_another_seed_does_not(config):
    """A seed fixes order and augmentation; a different seed changes them."""
    first = _take(pipeline.create_train_iterator(config, mean=(0, 0, 0)), 5)
    again = _take(pipeline.create_train_iterator(config, mean=(0, 0, 0)), 5)
    other = _take(pipeline.create_train_iterator(config.replace(seed=1), mean=(0, 0, 0)), 5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not all(
        np.array_equal(a["image"], c["image"]) for a, c in zip(first, other, strict=True)
    )


def test_resumed_iterator_continues_where_the_run_was(config):
    """start_step=k yields exactly the batches k, k+1, ... of an uninterrupted run (3 epochs)."""
    full = _take(pipeline.create_train_iterator(config, mean=(0, 0, 0)), 9)
    resumed = _take(pipeline.create_train_iterator(config, mean=(0, 0, 0), start_step=4), 5)
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_each_epoch_is_a_new_permutation_of_whole_batches(config):
    """An epoch (60 examples, batch 16 -> 3 batches) reshuffles; labels stay balanced."""
    batches = _take(pipeline.create_train_iterator(config.replace(batch_size=20), mean=(0,) * 3), 6)
    epoch1 = np.concatenate([b["label"] for b in batches[:3]])
    epoch2 = np.concatenate([b["label"] for b in batches[3:]])
    assert np.bincount(epoch1).tolist() == [20, 20, 20]
    assert np.bincount(epoch2).tolist() == [20, 20, 20]
    assert not np.array_equal(epoch1, epoch2)


def test_augmentation_changes_train_images_but_not_eval_images(config, color_dataset):
    """Evaluation images are the stored pixels; training images are translated/flipped/cut."""
    from research.data import datasets

    name, data_dir = color_dataset
    raw = [img for img, _ in datasets.load_split(name, "validation", data_dir).as_numpy_iterator()]
    eval_ds = pipeline.create_eval_dataset(config, "validation", (32, 32, 3))
    batch = next(pipeline.iterate_padded_batches(eval_ds, 16))
    np.testing.assert_array_equal(batch["image"][: len(raw)], np.stack(raw))

    plain = config.replace(crop_padding=0, flip=False, cutout=0)
    train_raw = {
        img.tobytes() for img, _ in datasets.load_split(name, "train", data_dir).as_numpy_iterator()
    }
    unaugmented = next(pipeline.create_train_iterator(plain, mean=(0, 0, 0)))
    assert all(img.tobytes() in train_raw for img in unaugmented["image"])
    augmented = next(pipeline.create_train_iterator(config, mean=(0, 0, 0)))
    assert sum(img.tobytes() not in train_raw for img in augmented["image"]) >= 12


def test_eval_batches_are_padded_to_a_fixed_size_with_a_mask(config):
    """12 validation images in batches of 8 -> two batches of 8; the mask marks 12 real rows."""
    eval_ds = pipeline.create_eval_dataset(config, "validation", (32, 32, 3))
    batches = list(pipeline.iterate_padded_batches(eval_ds, 8))
    assert [b["image"].shape[0] for b in batches] == [8, 8]
    assert sum(int(b["mask"].sum()) for b in batches) == 12


def test_flip_is_off_for_digits_and_on_for_objects():
    """Horizontal flips are a default for CIFAR and clothes, never for MNIST digits."""
    assert configs.uses_flip(configs.get_config("cifar10"))
    assert configs.uses_flip(configs.get_config("fashion_mnist"))
    assert not configs.uses_flip(configs.get_config("mnist"))


def test_flip_follows_the_dataset_spec_unless_the_config_sets_it():
    """uses_flip is each spec's flip, True for unknown datasets, and config.flip when given."""
    for name, spec in configs.DATASETS.items():
        assert configs.uses_flip(configs.get_config(name)) is spec.flip
        assert configs.uses_flip(configs.get_config(name, flip=not spec.flip)) is not spec.flip
    assert configs.uses_flip(configs.get_config("tiny", dataset="my_own"))


def test_mean_std_is_the_configs_else_the_specs_else_measured(config):
    """Normalization statistics come from the config, then the spec, then the training split."""
    cifar = configs.get_config("cifar10")
    spec = configs.dataset_spec("cifar10")
    assert pipeline.mean_std(cifar) == (spec.mean, spec.std)
    assert pipeline.mean_std(cifar.replace(mean=(1.0,) * 3, std=(2.0,) * 3)) == (
        (1.0,) * 3,
        (2.0,) * 3,
    )
    mean, std = pipeline.mean_std(config)  # 'colors' has no spec
    assert (mean, std) == pipeline.measure_mean_std(config)
    assert len(mean) == 3 and all(0 < m < 255 for m in mean) and all(s > 0 for s in std)
