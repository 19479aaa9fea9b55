"""Reading datasets through tensorflow-datasets, online or offline.

Every dataset is read as a prepared tfds dataset (``<data_dir>/<name>/<version>/``), so an official
download, an original archive placed in tfds's manual-download folder and a local import
(research.data.importers) all go through the same reading path: ``get_info`` / ``load_split`` find
the
prepared dataset; if it is missing they prepare it from the original archives (the spec's
``manual_files``, research.configs.DATASETS) in ``<data_dir>/downloads/manual/<name>/`` or tfds's
shared ``<data_dir>/downloads/manual/`` (tfds checks their checksums), or download it when the
network answers, or fail within seconds with a ``DataNotFoundError`` that names the archives and
the import command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from research import configs
from research.serving.errors import DataNotFoundError

# tf.data only; keep TensorFlow away from any accelerator that JAX will use.
# (RuntimeError: TensorFlow was initialised before this import; too late, and harmless.)
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

__all__ = [
    "DataNotFoundError",  # defined in research.serving.errors; importable here as before
    "DatasetInfo",
    "count_examples_per_class",
    "default_eval_split",
    "get_info",
    "load_split",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

# How long the connectivity probe may take before a download is judged impossible.
NETWORK_PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    splits: dict[str, int]  # split name -> number of examples


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
    data_dir = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataNotFoundError(
            f"No prepared dataset {name!r} in {data_dir}, and tfds knows no dataset of that "
            f"name. Import your files first:\n"
            f"  {configs.FOLDER_IMPORT.format(source='DIR', name=name)} --data_dir {data_dir}"
            f"   (DIR laid out split/class/image)\n"
            f"  {configs.IDX_IMPORT.format(source='DIR', name=name)} --data_dir {data_dir}"
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


def resolve_data_dir(data_dir: str | None) -> str:
    """The data dir tfds would use: the argument, $TFDS_DATA_DIR or the default."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


def _expected_archive_names(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The file names tfds would take from the manual-download folder: the spec's, else tfds's."""
    spec = configs.dataset_spec(builder.name)
    if spec is not None:
        return list(spec.manual_files)
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
    spec = configs.dataset_spec(name)
    template = spec.import_command if spec and spec.import_command else configs.FOLDER_IMPORT
    default_source = "IDX_DIR" if template == configs.IDX_IMPORT else "IMAGE_DIR(split/class/image)"
    command = template.format(source=source or default_source, name=name)
    if Path(data_dir) != Path(resolve_data_dir(None)):
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
