"""The one reader of model directories: where checkpoints are, which one to use, what it says.

A model directory is a training workdir (its checkpoints under ``checkpoints/``) or an exported
model (steps directly inside). Each finished step is a directory named by its number holding
Orbax items, among them ``meta``: the JSON serving record (research.serving.record). This module is
the
only code outside Orbax that knows that layout, and it imports neither JAX nor TensorFlow, so
the web can list models without loading one.

    directory, step, record = pick_checkpoint("models/cifar10")  # best, else latest
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from research.serving.artifacts import (
    CHECKPOINTS_SUBDIR,
    EXAMPLE_FILE_NAME,
    EXAMPLES_DIR,
    EXAMPLES_INDEX_FILE,
    STATISTICS_FILE,
)
from research.serving.errors import IncompatibleModelError, ModelNotFoundError
from research.serving.record import ServingRecord

log = logging.getLogger(__name__)

META_ITEM = "meta"  # the Orbax item holding the serving record
_JSON_ITEM_FILE = "metadata"  # the file Orbax's JsonSave writes inside an item directory
# Beside the Orbax items of a step: arrays the serving record refers to (the feature
# statistics of the 'mahalanobis' unknown score). Orbax ignores files it did not write.


def find_checkpoints(path: str | Path) -> Path:
    """The directory holding the step directories: ``<workdir>/checkpoints``, or `path` itself
    for an exported model. Raises ModelNotFoundError when neither holds a step."""
    path = Path(path)
    for candidate in (path / CHECKPOINTS_SUBDIR, path):
        if candidate.is_dir() and list_steps(candidate):
            return candidate.absolute()
    raise ModelNotFoundError(
        f"No model checkpoint in {path}: expected a workdir written by `python -m research.train`"
        " or a model exported by `python -m research.export`."
    )


def list_steps(directory: str | Path) -> list[int]:
    """Finished steps in a checkpoint directory, oldest first (Orbax writes a step under a
    temporary name and renames it when complete, so unfinished saves are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def meta_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / str(step) / META_ITEM / _JSON_ITEM_FILE


def read_record(directory: str | Path, step: int) -> ServingRecord:
    """The serving record of one step; IncompatibleModelError if unreadable or invalid."""
    path = meta_path(directory, step)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise IncompatibleModelError(f"Checkpoint metadata {path} is unreadable: {error}") from None
    return ServingRecord.from_meta(meta, source=f"Checkpoint {Path(directory) / str(step)}")


def write_record(directory: str | Path, step: int, record: ServingRecord) -> Path:
    """Rewrites the serving record of one step atomically (a temporary file, then a rename),
    keeping the other keys of its meta item (training config, metrics). Returns its path."""
    path = meta_path(directory, step)
    if not path.is_file():
        raise ModelNotFoundError(f"No checkpoint step {step} in {directory}")
    meta = json.loads(path.read_text())
    meta.update(record.to_meta())
    _write_atomically(path, (json.dumps(meta, indent=2) + "\n").encode())
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; readable like Orbax's files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def statistics_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / str(step) / STATISTICS_FILE


def write_statistics(directory: str | Path, step: int, arrays: dict[str, np.ndarray]) -> Path:
    """Stores named float arrays beside one step's record (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    path = statistics_path(directory, step)
    _write_atomically(path, buffer.getvalue())
    return path


def read_statistics(directory: str | Path, step: int) -> dict[str, np.ndarray] | None:
    """The arrays `write_statistics` stored for one step, or None when it has none."""
    path = statistics_path(directory, step)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise IncompatibleModelError(f"Statistics {path} are unreadable: {error}") from None


def rank_checkpoints(path: str | Path) -> tuple[Path, list[tuple[int, ServingRecord]]]:
    """(checkpoint directory, [(step, record)] best first: by eval accuracy, then the latest).
    Steps whose record is unreadable are left out with a warning naming them; if none is
    usable, ModelNotFoundError names the broken ones."""
    directory = find_checkpoints(path)
    ranked: list[tuple[tuple[float, int], ServingRecord]] = []
    broken = []
    for step in list_steps(directory):
        try:
            record = read_record(directory, step)
        except IncompatibleModelError as error:
            broken.append(str(error))
            log.warning("Skipping checkpoint step %d: %s", step, error)
            continue
        accuracy = record.eval_accuracy
        ranked.append(((accuracy if accuracy is not None else -1.0, step), record))
    if not ranked:
        raise ModelNotFoundError(
            f"No usable checkpoint in {directory}: " + "; ".join(broken or ["no steps"])
        )
    ranked.sort(key=lambda item: item[0], reverse=True)
    return directory, [(key[1], record) for key, record in ranked]


def pick_checkpoint(path: str | Path) -> tuple[Path, int, ServingRecord]:
    """(checkpoint directory, step, record) of the step with the best eval accuracy, else the
    latest (see `rank_checkpoints`)."""
    directory, ranked = rank_checkpoints(path)
    step, record = ranked[0]
    return directory, step, record


def describe(path: str | Path) -> ServingRecord | None:
    """The record `pick_checkpoint` would choose, or None when there is no usable one."""
    try:
        return pick_checkpoint(path)[2]
    except (ModelNotFoundError, IncompatibleModelError):
        return None


# ----------------------------------------------------------------------------- examples


@dataclasses.dataclass(frozen=True)
class Example:
    """One shipped example image: its file name in the examples folder and its true label."""

    file: str
    label: str


def examples_dir(model_path: str | Path) -> Path:
    """The examples folder of a model directory."""
    return Path(model_path) / EXAMPLES_DIR


def read_examples(model_path: str | Path) -> list[Example]:
    """The examples a model directory ships, in order; [] when it has none or the index is
    unreadable (a warning says why). Only entries with a safe file name that exists are kept."""
    index = examples_dir(model_path) / EXAMPLES_INDEX_FILE
    try:
        entries = json.loads(index.read_text())["examples"]
        examples = [Example(file=str(e["file"]), label=str(e["label"])) for e in entries]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Ignoring unreadable %s: %s", index, error)
        return []
    return [
        example
        for example in examples
        if EXAMPLE_FILE_NAME.fullmatch(example.file) and (index.parent / example.file).is_file()
    ]


def find_example(model_path: str | Path, file: str) -> Path | None:
    """The path of one shipped example file, or None unless `file` is listed in the index."""
    if not EXAMPLE_FILE_NAME.fullmatch(file):
        return None
    if all(example.file != file for example in read_examples(model_path)):
        return None
    return examples_dir(model_path) / file
