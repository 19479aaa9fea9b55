"""What a training run reads, for either input mode: `RunData` from `load_run_data(config)`.

- `config.input == 'tfdata'` (the default): a prepared tfds dataset streamed by
  research.data.pipeline (TensorFlow), augmented on the host.
- `config.input == 'device'`: the training split as uint8 arrays (research.data.arrays: a prepared
  tfds dataset, or without TensorFlow an image folder, a .tar.gz of one, or idx files named by
  `config.data_source`), placed on the device and augmented inside the train step
  (research.data.device_input).

The loop (research.train) sees one interface: class names, shapes, counts, evaluation batches,
the whitening sample, and either a host batch iterator or the arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from research.configs import Config
from research.data import arrays
from research.data.arrays import ArraySplit

WHITENING_IMAGES = 5000  # training images whose 2x2 patches airbench's stem whitens
INPUTS = ("tfdata", "device")


@dataclasses.dataclass
class RunData:
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    train_examples: int
    eval_split: str
    eval_examples: int | None
    eval_batches: Callable[[int], Iterable[dict[str, np.ndarray]]]  # batch size -> padded
    whitening_images: Callable[[], np.ndarray]
    train_arrays: ArraySplit | None = None  # 'device' mode
    # 'tfdata': (start step, this process's rows of each batch or None) -> host batches
    train_iterator: Callable[..., Iterator[dict[str, np.ndarray]]] | None = None


def load_run_data(config: Config, mean: tuple[float, ...]) -> RunData:
    if config.input not in INPUTS:
        raise ValueError(f"Unknown input {config.input!r}; choose one of {', '.join(INPUTS)}")
    if config.input == "device":
        return _device_data(config)
    if config.data_source is not None:
        raise ValueError(
            "data_source is read by the device input mode (--input=device); the tf.data mode "
            "reads prepared datasets: import the files with `python -m research.data`"
        )
    return _tfdata_data(config, mean)


def _tfdata_data(config: Config, mean: tuple[float, ...]) -> RunData:
    from research.data import (
        datasets,
        pipeline,  # TensorFlow
    )

    info = datasets.get_info(config.dataset, config.data_dir)
    eval_split = config.eval_split or datasets.default_eval_split(info)
    if config.train_split in info.splits:
        train_examples = info.splits[config.train_split]
    else:  # a slice such as 'train[:90%]': count it
        split = datasets.load_split(config.dataset, config.train_split, config.data_dir)
        train_examples = int(split.cardinality())
    eval_ds = pipeline.create_eval_dataset(config, eval_split, info.image_shape)

    def whitening_images() -> np.ndarray:
        sample = datasets.load_split(config.dataset, config.train_split, config.data_dir)
        return np.stack([image for image, _ in sample.take(WHITENING_IMAGES).as_numpy_iterator()])

    return RunData(
        class_names=tuple(info.class_names),
        image_shape=tuple(info.image_shape),
        train_examples=train_examples,
        eval_split=eval_split,
        eval_examples=info.splits.get(eval_split),
        eval_batches=lambda size: pipeline.iterate_padded_batches(eval_ds, size),
        whitening_images=whitening_images,
        train_iterator=lambda start, rows=None: pipeline.create_train_iterator(
            config, mean=mean, start_step=start, rows=rows
        ),
    )


def _device_data(config: Config) -> RunData:
    def load(split: str) -> ArraySplit:
        return arrays.load_split(
            config.dataset,
            split,
            config.data_source,
            data_dir=config.data_dir,
            validation_per_class=config.validation_per_class,
        )

    train = load(config.train_split)
    eval_split = config.eval_split or "validation"
    if config.eval_split is None and config.data_source is None:
        from research.data import datasets  # a prepared tfds dataset: TensorFlow is there

        eval_split = datasets.default_eval_split(datasets.get_info(config.dataset, config.data_dir))
    evaluation = load(eval_split)

    def whitening_images() -> np.ndarray:  # a seeded sample: folders are stored class by class
        rng = np.random.default_rng(config.seed)
        count = min(WHITENING_IMAGES, len(train))
        return train.images[np.sort(rng.choice(len(train), count, replace=False))]

    return RunData(
        class_names=train.class_names,
        image_shape=tuple(train.images.shape[1:]),
        train_examples=len(train),
        eval_split=eval_split,
        eval_examples=len(evaluation),
        eval_batches=lambda size: arrays.padded_batches(evaluation, size),
        whitening_images=whitening_images,
        train_arrays=train,
    )
