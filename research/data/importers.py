"""Importing local files as prepared tfds datasets, which research.data.datasets then reads.

``import_idx`` (MNIST-format idx files) and ``import_image_folder`` (images laid out
``split/class/image`` or ``class/image``) write ``<data_dir>/<name>/<version>/``, under the official
name, version and features when the name is a tfds dataset (``fashion_mnist``, ``cifar10``, ...),
so that ``tfds.load(name, data_dir=...)`` reads it like the official one.
``python -m research.data`` is their command line.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from research import configs
from research.data.arrays import (
    DEFAULT_VALIDATION_PER_CLASS,
    IDX_PATTERNS,
    carve_validation,
    decode_image,
    find_one,
    read_idx,
)
from research.data.datasets import DatasetInfo, get_info, resolve_data_dir
from research.data.folders import list_image_folder, match_class
from research.serving.errors import DataNotFoundError

logger = logging.getLogger(__name__)

# The official CIFAR-10 labels; tfds only learns them from the archive's batches.meta.txt.
CIFAR10_CLASS_NAMES = configs.DATASETS["cifar10"].class_names


def import_idx(
    source_dir: str | os.PathLike,
    name: str,
    data_dir: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    validation_per_class: int = 0,
    overwrite: bool = False,
) -> DatasetInfo:
    """Imports MNIST-format idx files (gzipped or not) as splits 'train' and 't10k' -> 'test'.

    ``source_dir`` holds ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]`` and,
    optionally, the ``t10k-*`` pair. With ``validation_per_class`` N > 0, the last N training
    images of each class (in file order) become a 'validation' split, never trained on: the
    split to choose checkpoints, temperatures and thresholds on, leaving 'test' for reporting.
    """
    source = Path(source_dir).expanduser()
    arrays = {}
    for split, (images_glob, labels_glob) in IDX_PATTERNS.items():
        images_path = find_one(source, images_glob)
        labels_path = find_one(source, labels_glob)
        if images_path is None and labels_path is None and split != "train":
            continue
        if images_path is None or labels_path is None:
            wanted = images_glob if images_path is None else labels_glob
            raise DataNotFoundError(f"No file matching {wanted!r} (.gz or not) in {source}")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape} "
                "are not an image array [N, H, W] and its label vector [N]"
            )
        if not len(labels):
            continue
        arrays[split] = (images[..., None], labels.astype(np.int64))
        logger.info("Read %d %s images from %s", len(images), split, images_path)

    num_classes = int(max(labels.max() for _, labels in arrays.values())) + 1
    image_shape = next(iter(arrays.values()))[0].shape[1:]
    if validation_per_class > 0:
        arrays["train"], arrays["validation"] = carve_validation(
            *arrays["train"], validation_per_class
        )

    def make_generator(split: str) -> Callable[[], Iterator[tuple[int, dict[str, Any]]]]:
        images, labels = arrays[split]
        return lambda: ((i, {"image": images[i], "label": labels[i]}) for i in range(len(labels)))

    return _write_dataset(
        name,
        data_dir,
        image_shape=image_shape,
        class_names=list(class_names) if class_names else [str(i) for i in range(num_classes)],
        class_names_given=bool(class_names),
        split_generators={split: make_generator(split) for split in arrays},
        overwrite=overwrite,
    )


def import_image_folder(
    source_dir: str | os.PathLike,
    name: str,
    data_dir: str | None = None,
    *,
    validation_per_class: int = DEFAULT_VALIDATION_PER_CLASS,
    image_size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> DatasetInfo:
    """Imports images laid out ``split/class/image`` (or ``class/image``: one 'train' split).

    Class names are the sorted folder names; under the name of a dataset whose classes are known
    (a DatasetSpec with class names), folders map to those classes by name up to case and
    punctuation ('T-shirt_top' is 'T-shirt/top'), and images get the dataset's channels. With no
    'validation' split in the folder, the last
    ``validation_per_class`` images of each class of 'train' (sorted by file name) become
    'validation'. Images keep their size unless ``image_size`` (height, width) is given; then all
    must share one shape.
    """
    source = Path(source_dir).expanduser()
    files = _list_splits(source)
    spec = configs.dataset_spec(name)
    if spec is not None and spec.class_names:
        files = _to_known_classes(files, spec, source)
    class_names = sorted({cls for split in files.values() for cls in split})
    if spec is not None and spec.class_names and set(class_names) == set(spec.class_names):
        class_names = list(spec.class_names)
    for split, by_class in files.items():
        if set(by_class) != set(class_names):
            raise ValueError(
                f"Split {split!r} of {source} lacks classes "
                f"{sorted(set(class_names) - set(by_class))}"
            )
    if "validation" not in files and validation_per_class > 0:
        files["validation"] = {}
        for cls, paths in files["train"].items():
            if len(paths) <= validation_per_class:
                raise ValueError(
                    f"Class {cls!r} has {len(paths)} training images, too few to hold out "
                    f"{validation_per_class} for validation (see --validation_per_class)"
                )
            files["train"][cls] = paths[:-validation_per_class]
            files["validation"][cls] = paths[-validation_per_class:]

    first = next(iter(next(iter(files.values())).values()))[0]
    mode = None if spec is None else ("L" if spec.image_shape[-1] == 1 else "RGB")
    image_shape = decode_image(first, image_size, mode=mode).shape
    mode = "L" if image_shape[-1] == 1 else "RGB"

    def make_generator(split: str) -> Callable[[], Iterator[tuple[int, dict[str, Any]]]]:
        examples = [
            (path, label)
            for label, cls in enumerate(class_names)
            for path in files[split].get(cls, [])
        ]

        def generate() -> Iterator[tuple[int, dict[str, Any]]]:
            for path, label in examples:
                image = decode_image(path, image_size, mode)
                if image.shape != image_shape:
                    raise ValueError(
                        f"{path} is {image.shape}, but {first} is {image_shape}; all images "
                        f"must share a shape: pass --image_size HxW to resize them"
                    )
                key = path.relative_to(source).as_posix()
                yield key, {"image": image, "label": label, "id": key}

        return generate

    return _write_dataset(
        name,
        data_dir,
        image_shape=image_shape,
        class_names=class_names,
        class_names_given=True,
        split_generators={split: make_generator(split) for split in files},
        overwrite=overwrite,
        with_id=True,
    )


def _to_known_classes(
    files: dict[str, dict[str, list[Path]]], spec: configs.DatasetSpec, source: Path
) -> dict[str, dict[str, list[Path]]]:
    """Renames class folders to the dataset's class names; refuses folders that name none."""
    known = spec.class_names
    renamed: dict[str, dict[str, list[Path]]] = {}
    for split, by_class in files.items():
        renamed[split] = {}
        for folder, paths in by_class.items():
            index = match_class(folder, known)
            if index is None:
                raise ValueError(
                    f"Folder {split}/{folder} of {source} names none of {spec.name}'s classes "
                    f"{list(known)}; rename it, or import under another name "
                    f"(e.g. --dataset my_{spec.name})"
                )
            renamed[split].setdefault(known[index], []).extend(paths)
    return renamed


def _list_splits(source: Path) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: sorted image paths}} of the folder; a class/image folder is 'train'."""
    files = {
        "train" if split is None else split: by_class
        for split, by_class in list_image_folder(source).items()
    }
    if "train" not in files:
        raise ValueError(f"{source} has splits {sorted(files)} but no 'train'")
    return files


def _write_dataset(
    name: str,
    data_dir: str | None,
    *,
    image_shape: tuple[int, ...],
    class_names: Sequence[str],
    class_names_given: bool,
    split_generators: Mapping[str, Callable[[], Iterator[tuple[Any, dict[str, Any]]]]],
    overwrite: bool,
    with_id: bool = False,
) -> DatasetInfo:
    """Writes examples as a prepared tfds dataset, with the official spec for a tfds name."""
    data_dir = resolve_data_dir(data_dir)
    image_shape = tuple(int(d) for d in image_shape)
    try:
        base = tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
        base = None

    if base is not None:
        official = base(data_dir=data_dir).info.features
        official_names = list(official["label"].names)
        if name == "cifar10":
            official_names = list(CIFAR10_CLASS_NAMES)
        expected_shape = tuple(official["image"].shape)
        if expected_shape != image_shape:
            raise ValueError(
                f"{name} images are {expected_shape}, these are {image_shape}; resize them "
                f"(--image_size) or import under another name"
            )
        unsupported = set(official.keys()) - {"image", "label", "id"}
        if unsupported:
            raise ValueError(
                f"{name}'s features {sorted(unsupported)} cannot be filled from these files; "
                f"import under another name (e.g. --dataset my_{name})"
            )
        if class_names_given and list(class_names) != official_names:
            raise ValueError(
                f"Classes {list(class_names)} differ from {name}'s {official_names}; import "
                f"under another name (e.g. --dataset my_{name})"
            )
        class_names = official_names
        with_id = "id" in official
        bases: tuple[type, ...] = (base,)
    else:
        bases = (tfds.core.GeneratorBasedBuilder,)

    if not with_id:  # e.g. fashion_mnist's official features have no 'id'
        split_generators = {split: _without_id(make) for split, make in split_generators.items()}
    builder_cls = _make_import_builder(
        name, bases, image_shape, class_names, split_generators, with_id=with_id
    )
    builder = builder_cls(data_dir=data_dir)
    if builder.is_prepared() or Path(builder.data_dir).exists():
        if not overwrite:
            raise FileExistsError(
                f"{builder.data_dir} already exists; pass --overwrite to replace it"
            )
        shutil.rmtree(builder.data_dir)
    logger.info("Writing %s to %s", name, builder.data_dir)
    builder.download_and_prepare()
    return get_info(name, data_dir)


def _without_id(
    make: Callable[[], Iterator[tuple[Any, dict[str, Any]]]],
) -> Callable[[], Iterator[tuple[Any, dict[str, Any]]]]:
    def generate() -> Iterator[tuple[Any, dict[str, Any]]]:
        for key, example in make():
            yield key, {k: v for k, v in example.items() if k != "id"}

    return generate


def _make_import_builder(
    name: str,
    bases: tuple[type, ...],
    image_shape: tuple[int, ...],
    class_names: Sequence[str],
    split_generators: Mapping[str, Callable[[], Iterator[tuple[Any, dict[str, Any]]]]],
    *,
    with_id: bool,
) -> type:
    """Returns a builder class that writes the given examples instead of downloading."""
    official = bases[0] is not tfds.core.GeneratorBasedBuilder

    def _info(self: tfds.core.GeneratorBasedBuilder) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=image_shape),
            "label": tfds.features.ClassLabel(names=list(class_names)),
        }
        if with_id:
            features["id"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{name}, imported from local files by research.data.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self: tfds.core.GeneratorBasedBuilder, dl_manager: Any) -> dict:
        del dl_manager
        if official:  # the official spec may leave the label names to the archive (cifar10)
            self.info.features["label"].names = list(class_names)
        return {split: make() for split, make in split_generators.items()}

    def _generate_examples(self: Any, **kwargs: Any) -> Iterator[Any]:
        raise NotImplementedError

    namespace: dict[str, Any] = {
        "name": name,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "__module__": __name__,
    }
    if not official:
        namespace.update(VERSION=tfds.core.Version("1.0.0"), _info=_info)
    return type(f"Imported_{name}", bases, namespace, skip_registration=True)
