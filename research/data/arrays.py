"""Datasets as uint8 numpy arrays, read without TensorFlow.

The device-resident input mode (research.data.device_input) keeps a whole split in accelerator
memory; this module gives it the split, from whichever source is at hand:

- a prepared tfds dataset (`source=None`; needs TensorFlow, as the tf.data path does),
- an image folder laid out ``class/image`` or ``split/class/image``, or a ``.tar.gz`` of one
  (decoded with Pillow), or
- a folder of idx files (the MNIST format: ``train-images-idx3-ubyte[.gz]`` and labels).

Folders and idx files hold out a 'validation' split by the importer's rule, the last
`validation_per_class` examples of each class in file order, so a model trained from the raw
files is validated on the very images `python -m research.data import-folder` would hold out.
No JAX or TensorFlow is imported here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from research import configs
from research.data.folders import IMAGE_SUFFIXES, list_image_folder, match_class
from research.serving.errors import DataNotFoundError

DEFAULT_VALIDATION_PER_CLASS = 500
IDX_PATTERNS = {
    "train": ("train-images*idx3*", "train-labels*idx1*"),
    "test": ("t10k-images*idx3*", "t10k-labels*idx1*"),
}


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split in memory: uint8 images [N, H, W, C], int32 labels [N], the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


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


def carve_validation(
    images: np.ndarray, labels: np.ndarray, per_class: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, validation): the last `per_class` examples of each class go to validation."""
    held_out = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if len(where) <= per_class:
            raise ValueError(
                f"Class {label} has {len(where)} training images, too few to hold out "
                f"{per_class} for validation (see --validation_per_class)"
            )
        held_out[where[-per_class:]] = True
    return (images[~held_out], labels[~held_out]), (images[held_out], labels[held_out])


def find_one(directory: Path, pattern: str) -> Path | None:
    matches = sorted(directory.glob(pattern))
    if len(matches) > 1:
        raise ValueError(f"Several files match {pattern!r} in {directory}: {matches}")
    return matches[0] if matches else None


def decode_image(
    data: Path | bytes, image_size: tuple[int, int] | None = None, mode: str | None = None
) -> np.ndarray:
    """uint8 HWC pixels of an image file (or its bytes), in `mode` ('L', 'RGB'; None: by the
    file's own mode), resized bicubically to `image_size` (height, width) when given."""
    from PIL import Image  # only where image files are decoded (idx files need none)

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        if mode is None:
            mode = "L" if image.mode in ("1", "L", "I;16", "I") else "RGB"
        image = image.convert(mode)
        if image_size is not None and image.size != (image_size[1], image_size[0]):
            image = image.resize((image_size[1], image_size[0]), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


# ----------------------------------------------------------------------------- sources


def load_split(
    dataset: str,
    split: str,
    source: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    validation_per_class: int = DEFAULT_VALIDATION_PER_CLASS,
    limit: int | None = None,
) -> ArraySplit:
    """`split` of `dataset` in memory, from `source` (see the module docstring; None: the
    prepared tfds dataset in `data_dir`); only its first `limit` examples when given (tfds:
    read no further)."""
    if source is None:
        return _from_tfds(dataset, split, data_dir, limit)
    loaded = _from_files(dataset, split, source, validation_per_class)
    if limit is None:
        return loaded
    return ArraySplit(loaded.images[:limit], loaded.labels[:limit], loaded.class_names)


def _from_files(
    dataset: str, split: str, source: str | os.PathLike, validation_per_class: int
) -> ArraySplit:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"Data source {path} does not exist")
    stat = path.stat()
    return _decoded(dataset, split, path.resolve(), stat.st_mtime_ns, validation_per_class)


# A training run reads its splits again to calibrate (research.calibrate, same process): decoded
# once, kept read-only. The key holds the source's modification time, so a rewritten archive or
# folder (its top level) is read afresh.
@functools.lru_cache(maxsize=4)
def _decoded(
    dataset: str, split: str, path: Path, mtime_ns: int, validation_per_class: int
) -> ArraySplit:
    if path.is_dir() and any(find_one(path, pattern[0]) for pattern in IDX_PATTERNS.values()):
        loaded = _from_idx(dataset, split, path, validation_per_class)
    else:
        loaded = _from_images(dataset, split, path, validation_per_class)
    loaded.images.setflags(write=False)
    loaded.labels.setflags(write=False)
    return loaded


def _from_tfds(dataset: str, split: str, data_dir: str | None, limit: int | None) -> ArraySplit:
    from research.data import datasets  # TensorFlow

    info = datasets.get_info(dataset, data_dir)
    ds = datasets.load_split(dataset, split, data_dir)
    if limit is not None:
        ds = ds.take(limit)
    images, labels = [], []
    for image_batch, label_batch in ds.batch(1024).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise DataNotFoundError(f"No images in {dataset} {split}")
    return ArraySplit(
        np.concatenate(images).astype(np.uint8),
        np.concatenate(labels).astype(np.int32),
        tuple(info.class_names),
    )


def _class_names(dataset: str, found: list[str]) -> tuple[str, ...]:
    spec = configs.dataset_spec(dataset)
    if spec is not None and spec.class_names:
        return tuple(spec.class_names)
    return tuple(found)


def _from_idx(dataset: str, split: str, path: Path, validation_per_class: int) -> ArraySplit:
    wanted = "train" if split == "validation" else split
    if wanted not in IDX_PATTERNS:
        raise DataNotFoundError(f"idx files hold 'train' and 'test' splits, not {split!r}")
    image_file, label_file = (find_one(path, p) for p in IDX_PATTERNS[wanted])
    if image_file is None or label_file is None:
        raise DataNotFoundError(f"No {wanted} idx files in {path}")
    images = read_idx(image_file).astype(np.uint8)
    labels = read_idx(label_file).astype(np.int32)
    if images.ndim == 3:
        images = images[..., None]
    if wanted == "train" and validation_per_class > 0:
        train, validation = carve_validation(images, labels, validation_per_class)
        images, labels = validation if split == "validation" else train
    found = [str(i) for i in range(int(labels.max()) + 1)]
    return ArraySplit(images, labels, _class_names(dataset, found))


@functools.lru_cache(maxsize=1)  # a .tar.gz is read once for its train and validation splits
def _folder_listing(path: Path, mtime_ns: int) -> tuple[dict[str, dict[str, list]], Any]:
    """({split: {class: sorted entries}}, how to read an entry) of a folder or a .tar.gz."""
    if path.is_dir():
        listing = {("train" if s is None else s): c for s, c in list_image_folder(path).items()}
        return listing, Path.read_bytes
    if not tarfile.is_tarfile(path):
        raise DataNotFoundError(f"{path} is neither a folder of images nor a tar archive")
    contents: dict[str, bytes] = {}  # read in archive order: a gzip stream does not seek
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                contents[member.name] = archive.extractfile(member).read()
    folders: dict[tuple[str, ...], list[str]] = {}
    for name in contents:
        parts = Path(name).parts
        folders.setdefault(parts[:-1], []).append(name)
    depths = {len(folder) for folder in folders}
    if len(depths) != 1 or depths.pop() not in (1, 2):
        raise DataNotFoundError(f"{path} is not laid out class/image or split/class/image")
    listing: dict[str, dict[str, list]] = {}
    for folder, names in sorted(folders.items()):
        split, cls = ("train", folder[0]) if len(folder) == 1 else folder
        listing.setdefault(split, {})[cls] = sorted(names, key=lambda n: Path(n).name)
    return listing, contents.__getitem__


def _from_images(dataset: str, split: str, path: Path, validation_per_class: int) -> ArraySplit:
    listing, read = _folder_listing(path, path.stat().st_mtime_ns)
    spec = configs.dataset_spec(dataset)
    if spec is not None and spec.class_names:
        renamed: dict[str, dict[str, list]] = {}
        for name, by_class in listing.items():
            for folder, entries in by_class.items():
                index = match_class(folder, spec.class_names)
                if index is None:
                    raise ValueError(f"Folder {name}/{folder} names none of {dataset}'s classes")
                renamed.setdefault(name, {}).setdefault(spec.class_names[index], []).extend(entries)
        listing = renamed
    class_names = _class_names(dataset, sorted({c for s in listing.values() for c in s}))
    if "train" not in listing:
        raise DataNotFoundError(f"{path} has splits {sorted(listing)} but no 'train'")
    if "validation" not in listing and validation_per_class > 0:
        for cls, entries in listing["train"].items():
            if len(entries) <= validation_per_class:
                raise ValueError(
                    f"Class {cls!r} has {len(entries)} training images, too few to hold out "
                    f"{validation_per_class} for validation (see --validation_per_class)"
                )
    if split == "validation" and "validation" not in listing and validation_per_class > 0:
        chosen = {cls: entries[-validation_per_class:] for cls, entries in listing["train"].items()}
    elif split == "train" and "validation" not in listing and validation_per_class > 0:
        chosen = {cls: entries[:-validation_per_class] for cls, entries in listing["train"].items()}
    elif split in listing:
        chosen = listing[split]
    else:
        raise DataNotFoundError(f"{path} has no {split!r} split (it has {sorted(listing)})")
    examples = [
        (entry, label) for label, cls in enumerate(class_names) for entry in chosen.get(cls, [])
    ]
    mode = None if spec is None else ("L" if spec.image_shape[-1] == 1 else "RGB")
    size = None if spec is None else spec.image_shape[:2]
    if not examples:
        raise DataNotFoundError(f"No images in the {split!r} split of {path}")
    if mode is None:  # an unknown dataset: every image in the first one's mode, as the importer
        first = decode_image(read(examples[0][0]))
        mode = "L" if first.shape[-1] == 1 else "RGB"
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        images = list(pool.map(lambda e: decode_image(read(e[0]), size, mode), examples))
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"The images of {path} differ in size; import them with --image_size")
    return ArraySplit(
        np.stack(images), np.asarray([label for _, label in examples], np.int32), class_names
    )


def padded_batches(split: ArraySplit, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """{'image', 'label', 'mask'} batches of `split` in order; the last padded to `batch_size`
    with masked-out copies of the first example (so every batch has one shape)."""
    for start in range(0, len(split), batch_size):
        images = split.images[start : start + batch_size]
        labels = split.labels[start : start + batch_size]
        mask = np.ones(batch_size, bool)
        if (short := batch_size - len(labels)) > 0:
            mask[len(labels) :] = False
            images = np.concatenate([images, np.repeat(split.images[:1], short, 0)])
            labels = np.concatenate([labels, np.repeat(split.labels[:1], short, 0)])
        yield {"image": images, "label": labels, "mask": mask}
