"""research.data.importers write prepared tfds datasets; research.data.datasets reads them or fails
fast."""

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from research import configs
from research.data import datasets, importers
from research.serving import errors

FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """Writes a uint8 array in the MNIST idx format, gzipped or not."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def make_idx_dir(directory: Path, *, size: int, train: int, test: int, compress: bool) -> Path:
    """Writes train/t10k idx pairs whose image i is filled with the value i and labelled i % 10."""
    directory.mkdir(parents=True)
    for prefix, count, offset in (("train", train, 0), ("t10k", test, 100)):
        if not count:
            continue
        values = np.arange(offset, offset + count)
        images = np.broadcast_to(values[:, None, None], (count, size, size))
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", values % 10, compress=compress)
    return directory


def make_image_folder(root: Path, classes, per_class: int, size=(8, 8), suffix=".png") -> Path:
    """Writes root/train/<class>/<i>.png whose pixels all hold the class index * 20 + i."""
    for label, cls in enumerate(classes):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(per_class):
            value = label * 20 + i
            image = Image.new("RGB", (size[1], size[0]), (value, value, value))
            image.save(root / "train" / cls / f"{i:04d}{suffix}", quality=100)
    return root


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    """A data dir with fashion_mnist imported from tiny gzipped idx files."""
    tmp = tmp_path_factory.mktemp("fashion")
    source = make_idx_dir(tmp / "idx", size=28, train=30, test=10, compress=True)
    importers.import_idx(source, "fashion_mnist", str(tmp / "data"))
    return tmp / "data"


def test_import_idx_gz_reads_back_with_tfds_load(fashion_dir):
    """Gzipped idx files become fashion_mnist train/test with the official classes and labels."""
    builder = tfds.builder("fashion_mnist", data_dir=str(fashion_dir))
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.splits["test"].num_examples == 10
    assert tuple(builder.info.features["label"].names) == FASHION_MNIST_NAMES
    test = tfds.load("fashion_mnist", split="test", data_dir=str(fashion_dir))
    examples = list(test.as_numpy_iterator())
    assert sorted(int(ex["image"][0, 0, 0]) for ex in examples) == list(range(100, 110))
    assert all(ex["label"] == ex["image"][0, 0, 0] % 10 for ex in examples)


def test_import_idx_holds_out_the_last_images_of_each_class_for_validation(tmp_path):
    """validation_per_class=1 moves each class's last training image (in file order) to a
    'validation' split and leaves test alone."""
    source = make_idx_dir(tmp_path / "idx", size=28, train=30, test=10, compress=False)
    info = importers.import_idx(
        source, "fashion_mnist", str(tmp_path / "data"), validation_per_class=1
    )
    assert info.splits == {"train": 20, "validation": 10, "test": 10}
    ds = datasets.load_split("fashion_mnist", "validation", str(tmp_path / "data"))
    pixels = sorted(int(image[0, 0, 0]) for image, _ in ds.as_numpy_iterator())
    assert pixels == list(range(20, 30))  # image i holds i; class i % 10's last is 20 + class


def test_load_split_yields_uint8_images_and_int64_labels(fashion_dir):
    """load_split gives (uint8 [28, 28, 1], int64) pairs in the same order every time."""
    ds = datasets.load_split("fashion_mnist", "train", str(fashion_dir))
    pairs = list(ds.as_numpy_iterator())
    assert len(pairs) == 30
    image, label = pairs[0]
    assert image.dtype == np.uint8 and image.shape == (28, 28, 1)
    assert label.dtype == np.int64
    assert all(label == image[0, 0, 0] % 10 for image, label in pairs)
    again = [
        int(label) for _, label in datasets.load_split("fashion_mnist", "train", str(fashion_dir))
    ]
    assert again == [int(label) for _, label in pairs]


def test_load_split_accepts_slices_and_get_info_reports_splits(fashion_dir):
    """A tfds slice string works, and get_info names classes, shape and split sizes."""
    assert len(list(datasets.load_split("fashion_mnist", "train[:10]", str(fashion_dir)))) == 10
    info = datasets.get_info("fashion_mnist", str(fashion_dir))
    assert info.class_names == FASHION_MNIST_NAMES
    assert info.image_shape == (28, 28, 1)
    assert info.splits == {"train": 30, "test": 10}
    assert datasets.default_eval_split(info) == "test"


def test_import_idx_plain_files_under_a_custom_name(tmp_path):
    """Uncompressed idx files import under a name of one's own, with the given class names."""
    source = make_idx_dir(tmp_path / "idx", size=6, train=20, test=0, compress=False)
    names = [f"c{i}" for i in range(10)]
    info = importers.import_idx(source, "tiny_digits", str(tmp_path / "data"), class_names=names)
    assert info.splits == {"train": 20}
    assert info.image_shape == (6, 6, 1)
    loaded = tfds.load("tiny_digits", split="train", data_dir=str(tmp_path / "data"))
    assert sorted(int(ex["label"]) for ex in loaded) == sorted(np.arange(20) % 10)


def test_read_idx_rejects_other_files(tmp_path):
    """A file without the idx header is refused with its header in the message."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(ValueError, match="not an idx file"):
        importers.read_idx(path)


def test_import_folder_carves_the_last_images_of_each_class_for_validation(tmp_path):
    """With only train, the last N files of each class by name become 'validation'."""
    source = make_image_folder(tmp_path / "images", ["cat", "ant", "bee"], per_class=5)
    info = importers.import_image_folder(
        source, "tiny_bugs", str(tmp_path / "data"), validation_per_class=2
    )
    assert info.class_names == ("ant", "bee", "cat")
    assert info.splits == {"train": 9, "validation": 6}
    assert datasets.default_eval_split(info) == "validation"
    validation = tfds.load("tiny_bugs", split="validation", data_dir=str(tmp_path / "data"))
    ids = sorted(ex["id"].decode() for ex in validation.as_numpy_iterator())
    assert ids == [f"train/{cls}/{i:04d}.png" for cls in ("ant", "bee", "cat") for i in (3, 4)]
    for image, label in datasets.load_split("tiny_bugs", "train", str(tmp_path / "data")):
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
        folder_label = ["cat", "ant", "bee"].index(info.class_names[int(label)])
        assert int(image[0, 0, 0]) // 20 == folder_label


def test_import_folder_of_class_folders_is_the_train_split(tmp_path):
    """A class/image folder (no split level) imports as 'train', minus the carved validation."""
    source = make_image_folder(tmp_path / "images", ["b", "a"], per_class=3) / "train"
    info = importers.import_image_folder(
        source, "flat", str(tmp_path / "data"), validation_per_class=1
    )
    assert info.class_names == ("a", "b")
    assert info.splits == {"train": 4, "validation": 2}
    validation = tfds.load("flat", split="validation", data_dir=str(tmp_path / "data"))
    assert sorted(ex["id"].decode() for ex in validation.as_numpy_iterator()) == [
        "a/0002.png",
        "b/0002.png",
    ]


def test_import_folder_keeps_a_validation_split_of_its_own(tmp_path):
    """A folder with train and validation splits is imported as laid out, nothing carved."""
    source = make_image_folder(tmp_path / "images", ["a", "b"], per_class=3)
    for cls in ("a", "b"):
        (source / "validation" / cls).mkdir(parents=True)
        (source / "train" / cls / "0002.png").rename(source / "validation" / cls / "0002.png")
    info = importers.import_image_folder(source, "split", str(tmp_path / "data"))
    assert info.splits == {"train": 4, "validation": 2}


def test_import_folder_refuses_folders_without_train_or_with_a_mixed_layout(tmp_path):
    """Splits without 'train', and class folders beside split folders, are refused by name."""
    source = make_image_folder(tmp_path / "images", ["a", "b"], per_class=2)
    (source / "train").rename(source / "test")
    with pytest.raises(ValueError, match="no 'train'"):
        importers.import_image_folder(source, "no_train", str(tmp_path / "data"))
    make_image_folder(tmp_path / "mixed", ["a"], per_class=2)
    (tmp_path / "mixed" / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "loose" / "0.png")
    with pytest.raises(ValueError, match="mixes class folders"):
        importers.import_image_folder(tmp_path / "mixed", "mixed", str(tmp_path / "data"))


def test_import_folder_missing_is_data_not_found(tmp_path):
    """A folder that does not exist, or holds no images, raises DataNotFoundError naming it."""
    with pytest.raises(errors.DataNotFoundError, match="does not exist"):
        importers.import_image_folder(tmp_path / "nowhere", "x", str(tmp_path / "data"))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(errors.DataNotFoundError, match="No images"):
        importers.import_image_folder(tmp_path / "empty", "x", str(tmp_path / "data"))


def test_import_folder_as_cifar10_uses_the_official_spec(tmp_path):
    """JPEGs named by the CIFAR-10 classes import as cifar10, which tfds.builder then reads."""
    source = make_image_folder(
        tmp_path / "images", importers.CIFAR10_CLASS_NAMES, 2, size=(32, 32), suffix=".jpg"
    )
    info = importers.import_image_folder(
        source, "cifar10", str(tmp_path / "data"), validation_per_class=1
    )
    assert info.splits == {"train": 10, "validation": 10}
    builder = tfds.builder("cifar10", data_dir=str(tmp_path / "data"))
    assert str(builder.info.version) == "3.0.2"
    assert tuple(builder.info.features["label"].names) == importers.CIFAR10_CLASS_NAMES


def test_import_folder_maps_folder_names_to_the_official_classes(tmp_path):
    """Folders named like Fashion-MNIST's classes up to punctuation ('T-shirt_top') import as
    fashion_mnist with the official class order, grey, whatever the folders' sort order."""
    names = configs.DATASETS["fashion_mnist"].class_names
    folders = [name.replace("/", "_") for name in names]
    source = make_image_folder(tmp_path / "images", folders, 2, size=(28, 28))
    info = importers.import_image_folder(
        source, "fashion_mnist", str(tmp_path / "data"), validation_per_class=1
    )
    assert info.class_names == names and info.image_shape == (28, 28, 1)
    ds = datasets.load_split("fashion_mnist", "train", str(tmp_path / "data"))
    examples = list(ds.as_numpy_iterator())
    assert sorted(int(label) for _, label in examples) == list(range(10))
    # make_image_folder fills each image with its folder's position in `names` * 20 + i
    assert all(int(image[0, 0, 0]) // 20 == label for image, label in examples)


def test_import_folder_refuses_classes_other_than_the_official_ones(tmp_path):
    """Folder classes that are not cifar10's are refused, pointing to another name."""
    source = make_image_folder(tmp_path / "images", ["a", "b"], per_class=3, size=(32, 32))
    with pytest.raises(ValueError, match="import under another name"):
        importers.import_image_folder(
            source, "cifar10", str(tmp_path / "data"), validation_per_class=1
        )


def test_import_folder_needs_one_shape_or_a_resize(tmp_path):
    """Images of different sizes are refused, and --image_size resizes them."""
    source = make_image_folder(tmp_path / "images", ["a", "b"], per_class=3)
    Image.new("RGB", (9, 7)).save(source / "train" / "b" / "0009.png")
    with pytest.raises(ValueError, match="--image_size"):
        importers.import_image_folder(source, "odd", str(tmp_path / "data"), validation_per_class=0)
    info = importers.import_image_folder(
        source,
        "odd",
        str(tmp_path / "data"),
        validation_per_class=0,
        image_size=(4, 5),
        overwrite=True,
    )
    assert info.image_shape == (4, 5, 3)
    assert info.splits == {"train": 7}


def test_import_refuses_to_overwrite_without_asking(tmp_path):
    """A second import of the same dataset stops unless overwrite is set."""
    source = make_image_folder(tmp_path / "images", ["a", "b"], per_class=2)
    importers.import_image_folder(source, "twice", str(tmp_path / "data"), validation_per_class=0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        importers.import_image_folder(
            source, "twice", str(tmp_path / "data"), validation_per_class=0
        )
    importers.import_image_folder(
        source, "twice", str(tmp_path / "data"), validation_per_class=1, overwrite=True
    )
    assert datasets.get_info("twice", str(tmp_path / "data")).splits == {
        "train": 2,
        "validation": 2,
    }


@pytest.mark.parametrize("name", sorted(configs.DATASETS))
def test_missing_official_dataset_fails_fast_even_if_the_network_hangs(name, tmp_path, monkeypatch):
    """With no data and a hanging network, the error comes within seconds and says what to do."""

    def hang(host, port):
        time.sleep(60)
        return True

    monkeypatch.setattr(datasets, "_probe", hang)
    monkeypatch.setattr(datasets, "NETWORK_PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(errors.DataNotFoundError) as error:
        datasets.get_info(name, str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(error.value)
    spec = configs.DATASETS[name]
    assert all(archive in message for archive in spec.manual_files)
    assert str(tmp_path / "downloads" / "manual" / name) in message
    source = "IDX_DIR" if "import-idx" in spec.import_command else "IMAGE_DIR(split/class/image)"
    assert spec.import_command.format(source=source, name=name) in message


def test_dataset_specs_name_the_archives_tfds_expects():
    """Each spec's manual_files are the file names in tfds's own url checksums (offline)."""
    for name, spec in configs.DATASETS.items():
        builder = tfds.builder(name)
        expected = {info.filename for info in builder.url_infos.values()}
        assert set(spec.manual_files) == expected, name
        assert builder.info.features["label"].num_classes == spec.num_classes
        assert tuple(builder.info.features["image"].shape) == spec.image_shape


def test_data_not_found_error_is_defined_once():
    """research.data.datasets.DataNotFoundError is research.serving.errors's class, not a second
    one."""
    assert datasets.DataNotFoundError is errors.DataNotFoundError


def test_missing_unknown_dataset_names_the_import_command(tmp_path):
    """A name tfds does not know, with nothing imported, points to the import commands."""
    with pytest.raises(errors.DataNotFoundError, match="research.data import-folder"):
        datasets.load_split("my_flowers", "train", str(tmp_path))


def test_rejected_manual_archive_points_to_the_import_command(tmp_path):
    """An archive in the manual folder with the wrong checksum is refused with the fix."""
    manual = make_idx_dir(
        tmp_path / "downloads" / "manual", size=28, train=3, test=2, compress=True
    )
    with pytest.raises(errors.DataNotFoundError, match="checksum") as error:
        datasets.get_info("mnist", str(tmp_path))
    assert f"import-idx {manual} --dataset mnist" in str(error.value)
