"""Datasets through tensorflow-datasets, online or offline.

Every dataset is read as a prepared tfds dataset (``<data_dir>/<name>/<version>/``), so an official
download, an original archive placed in tfds's manual-download folder and a local import all go
through the same reading path:

* ``get_info`` / ``load_split`` find the prepared dataset; if it is missing they prepare it from
  the original archives in ``<data_dir>/downloads/manual/<name>/`` or tfds's shared
  ``<data_dir>/downloads/manual/`` (tfds checks their checksums), or
  download it when the network answers, or fail within seconds with ``DataNotFoundError``.
  The archives tfds expects there (names and checksums from tfds's url_checksums):
    mnist, fashion_mnist: train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
                          t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
    cifar10: cifar-10-binary.tar.gz        cifar100: cifar-100-binary.tar.gz
* ``import_idx`` and ``import_image_folder`` turn local files into a prepared tfds dataset, under
  the official name, version and features when the name is a tfds dataset (``fashion_mnist``,
  ``cifar10``, ...), so that ``tfds.load(name, data_dir=...)`` reads it like the official one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

# tf.data only; keep TensorFlow away from any accelerator that JAX will use.
# (RuntimeError: TensorFlow was initialised before this import; too late, and harmless.)
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

logger = logging.getLogger(__name__)

# How long the connectivity probe may take before a download is judged impossible.
NETWORK_PROBE_TIMEOUT_S = 3.0
# Images in a folder import; anything else (README, .DS_Store, ...) is ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_VALIDATION_PER_CLASS = 500
# The official CIFAR-10 labels; tfds only learns them from the archive's batches.meta.txt.
CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Which import command suits which official dataset (shown in DataNotFoundError).
_IDX_IMPORT = "python -m research.data import-idx {source} --dataset {name}"
_FOLDER_IMPORT = "python -m research.data import-folder {source} --dataset {name}"
_IMPORT_COMMANDS = {
    "mnist": _IDX_IMPORT,
    "fashion_mnist": _IDX_IMPORT,
    # A folder gives no coarse labels, so CIFAR-100 images go in under a name of their own.
    "cifar100": _FOLDER_IMPORT.replace("{name}", "my_{name}"),
}
_IDX_PATTERNS = {
    "train": ("train-images*idx3*", "train-labels*idx1*"),
    "test": ("t10k-images*idx3*", "t10k-labels*idx1*"),
}


class DataNotFoundError(RuntimeError):
    """The dataset is neither prepared nor obtainable; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    splits: dict[str, int]  # split name -> number of examples


# --------------------------------------------------------------------------------------------
# Reading


def get_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Returns class names, image shape and split sizes of a dataset, preparing it if needed."""
    builder = _get_prepared_builder(name, data_dir)
    features = builder.info.features
    return DatasetInfo(
        name=name,
        class_names=tuple(features["label"].names),
        image_shape=tuple(int(d) for d in features["image"].shape),
        splits={split: int(s.num_examples) for split, s in builder.info.splits.items()},
    )


def load_split(name: str, split: str, data_dir: str | None = None) -> tf.data.Dataset:
    """Returns (image uint8 [H, W, C], label int64) pairs of a split, in a fixed order.

    ``split`` may be any tfds split string, e.g. ``'train[:90%]'``.
    """
    builder = _get_prepared_builder(name, data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    return ds.map(
        lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def default_eval_split(info: DatasetInfo) -> str:
    """Returns 'validation' when the dataset has one, else 'test'."""
    return "validation" if "validation" in info.splits else "test"


def count_examples_per_class(name: str, split: str, data_dir: str | None = None) -> np.ndarray:
    """Returns the number of examples of each class in a split (images are not decoded)."""
    builder = _get_prepared_builder(name, data_dir)
    num_classes = builder.info.features["label"].num_classes
    ds = builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    labels = ds.map(lambda ex: ex["label"]).batch(8192).prefetch(2)
    counts = np.zeros(num_classes, np.int64)
    for batch in labels.as_numpy_iterator():
        counts += np.bincount(batch, minlength=num_classes)
    return counts


def _get_prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Returns the builder of a prepared dataset: already there, from archives or downloaded."""
    data_dir = _resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataNotFoundError(
            f"No prepared dataset {name!r} in {data_dir}, and tfds knows no dataset of that "
            f"name. Import your files first:\n"
            f"  python -m research.data import-folder DIR --dataset {name} --data_dir {data_dir}"
            f"   (DIR laid out split/class/image)\n"
            f"  python -m research.data import-idx DIR --dataset {name} --data_dir {data_dir}"
            f"   (DIR with MNIST-style idx files)"
        ) from None
    if builder.is_prepared():
        return builder

    # tfds's manual folder is shared by all datasets, and mnist and fashion_mnist use the same
    # file names, so a subfolder per dataset is looked at first.
    shared_manual_dir = Path(data_dir) / "downloads" / "manual"
    manual_dir = shared_manual_dir / name
    archives = _expected_archive_names(builder)
    missing = [a for a in archives if not (manual_dir / a).exists()]
    if missing and all((shared_manual_dir / a).exists() for a in archives):
        manual_dir, missing = shared_manual_dir, []
    if archives and not missing:
        logger.info("Preparing %s from the archives in %s", name, manual_dir)
        _download_and_prepare(builder, data_dir, manual_dir)
        return builder

    unreachable = _find_unreachable_host(builder)
    if unreachable is None:
        logger.info("Downloading %s with tfds into %s", name, data_dir)
        _download_and_prepare(builder, data_dir, manual_dir)
        return builder
    raise DataNotFoundError(
        _describe_missing_data(builder, data_dir, manual_dir, archives, missing, unreachable)
    )


def _download_and_prepare(
    builder: tfds.core.DatasetBuilder, data_dir: str, manual_dir: Path
) -> None:
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    try:
        builder.download_and_prepare(download_config=config)
    except NonMatchingChecksumError as e:
        raise DataNotFoundError(
            f"An archive for {builder.name} in {manual_dir} does not have the checksum tfds "
            f"expects (a re-packed copy?). Import the files instead:\n"
            f"  {_import_command(builder.name, data_dir, str(manual_dir))}\n{e}"
        ) from None


def _resolve_data_dir(data_dir: str | None) -> str:
    """Returns the data dir tfds would use: the argument, $TFDS_DATA_DIR or the default."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


def _expected_archive_names(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Returns the file names tfds would take from the manual-download folder."""
    try:
        url_infos = builder.url_infos or {}
    except Exception:  # read-only builders and some community builders know no URLs
        return []
    return sorted({info.filename for info in url_infos.values() if info.filename})


def _find_unreachable_host(builder: tfds.core.DatasetBuilder) -> str | None:
    """Returns a host that the download would need but that does not answer, else None.

    tfds retries a failed download for minutes, so probe each host (or the proxy) first, with
    name resolution included in the timeout.
    """
    try:
        urls = list((builder.url_infos or {}).keys())
    except Exception:
        urls = []
    if not urls:  # the builder downloads from elsewhere; the tfds bucket stands in for it
        urls = ["https://storage.googleapis.com/tfds-data/"]
    proxies = urllib.request.getproxies()
    hosts = set()
    for url in urls:
        parts = urllib.parse.urlsplit(proxies.get(urllib.parse.urlsplit(url).scheme) or url)
        hosts.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    # Daemon threads: a name lookup stuck in the resolver must not hold up the exit either.
    results: dict[str, bool] = {}
    threads = []
    for host, port in sorted(hosts):
        address = f"{host}:{port}"
        thread = threading.Thread(
            target=lambda h=host, p=port, a=address: results.update({a: _probe(h, p)}),
            daemon=True,
        )
        thread.start()
        threads.append((address, thread))
    deadline = time.monotonic() + NETWORK_PROBE_TIMEOUT_S + 0.5
    for address, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if not results.get(address):
            return address
    return None


def _probe(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _import_command(name: str, data_dir: str, source: str | None = None) -> str:
    """Returns the import command that would prepare ``name`` from local files."""
    template = _IMPORT_COMMANDS.get(name, _FOLDER_IMPORT)
    default_source = "IDX_DIR" if template == _IDX_IMPORT else "IMAGE_DIR(split/class/image)"
    command = template.format(source=source or default_source, name=name)
    if Path(data_dir) != Path(_resolve_data_dir(None)):
        command += f" --data_dir {data_dir}"
    return command


def _describe_missing_data(
    builder: tfds.core.DatasetBuilder,
    data_dir: str,
    manual_dir: Path,
    archives: Sequence[str],
    missing: Sequence[str],
    unreachable: str,
) -> str:
    name = builder.name
    lines = [
        f"Dataset {name!r} is not prepared in {builder.data_dir} and cannot be downloaded "
        f"(no answer from {unreachable}). Do one of these:",
    ]
    if archives:
        lines.append(
            f"  - put the original archive(s) {', '.join(missing)} in {manual_dir}/ "
            f"(or in tfds's shared {manual_dir.parent}/); tfds checks their checksums"
        )
    lines.append(f"  - import local files: {_import_command(name, data_dir)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Importing


def import_idx(
    source_dir: str | os.PathLike,
    name: str,
    data_dir: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> DatasetInfo:
    """Imports MNIST-format idx files (gzipped or not) as splits 'train' and 't10k' -> 'test'.

    ``source_dir`` holds ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]`` and,
    optionally, the ``t10k-*`` pair.
    """
    source = Path(source_dir).expanduser()
    arrays = {}
    for split, (images_glob, labels_glob) in _IDX_PATTERNS.items():
        images_path = _find_one(source, images_glob)
        labels_path = _find_one(source, labels_glob)
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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (the MNIST format), gzipped or not, into an array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != b"\x00\x00" or dtype_code not in dtypes:
        raise ValueError(f"{path} is not an idx file (header {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def _find_one(directory: Path, pattern: str) -> Path | None:
    matches = sorted(directory.glob(pattern))
    if len(matches) > 1:
        raise ValueError(f"Several files match {pattern!r} in {directory}: {matches}")
    return matches[0] if matches else None


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

    Class names are the sorted folder names. With no 'validation' split in the folder, the last
    ``validation_per_class`` images of each class of 'train' (sorted by file name) become
    'validation'. Images keep their size unless ``image_size`` (height, width) is given; then all
    must share one shape.
    """
    source = Path(source_dir).expanduser()
    files = _list_image_folder(source)
    class_names = sorted({cls for split in files.values() for cls in split})
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
    image_shape = _decode_image(first, image_size, mode=None).shape
    mode = "L" if image_shape[-1] == 1 else "RGB"

    def make_generator(split: str) -> Callable[[], Iterator[tuple[int, dict[str, Any]]]]:
        examples = [
            (path, label)
            for label, cls in enumerate(class_names)
            for path in files[split].get(cls, [])
        ]

        def generate() -> Iterator[tuple[int, dict[str, Any]]]:
            for path, label in examples:
                image = _decode_image(path, image_size, mode)
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


def _list_image_folder(source: Path) -> dict[str, dict[str, list[Path]]]:
    """Returns {split: {class: sorted image paths}} of a split/class/image or class/image tree."""
    if not source.is_dir():
        raise DataNotFoundError(f"Image folder {source} does not exist")

    def images_in(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    subdirs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs and all(images_in(d) for d in subdirs):  # class/image: one split
        return {"train": {d.name: images_in(d) for d in subdirs}}
    files = {}
    for split_dir in subdirs:
        classes = {d.name: images_in(d) for d in sorted(split_dir.iterdir()) if d.is_dir()}
        classes = {cls: paths for cls, paths in classes.items() if paths}
        if classes:
            files[split_dir.name] = classes
    if not files:
        raise DataNotFoundError(f"No images laid out split/class/image or class/image in {source}")
    if "train" not in files:
        raise ValueError(f"{source} has splits {sorted(files)} but no 'train'")
    return files


def _decode_image(path: Path, image_size: tuple[int, int] | None, mode: str | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if mode is None:
            mode = "L" if image.mode in ("1", "L", "I;16", "I") else "RGB"
        image = image.convert(mode)
        if image_size is not None and image.size != (image_size[1], image_size[0]):
            image = image.resize((image_size[1], image_size[0]), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


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
    data_dir = _resolve_data_dir(data_dir)
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
