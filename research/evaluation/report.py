"""The model report: a model's validation-split figures, training curves and most confident
mistakes per confusion cell, written as files under the model directory's report folder (names
in research.serving.artifacts) for the web's model page. The command is research.model_report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from research.configs import Config, count_steps
from research.evaluation import plots
from research.evaluation.export import training_command
from research.evaluation.metrics import evaluate_split, saved_data_dir
from research.nets import models as nets
from research.serving import calibration, model_dir
from research.serving.artifacts import (
    CONFUSION_FILE,
    CURVES_FILE,
    METRICS_JSONL,
    REPORT_DIR,
    REPORT_EXAMPLES_DIR,
    REPORT_FILE,
    REPORT_FORMAT,
    TENSORBOARD_SUBDIR,
)
from research.serving.classifier import Classifier
from research.serving.errors import DataNotFoundError, IncompatibleModelError, ModelNotFoundError

# Mistakes kept per true/predicted cell (the most confident first). At most
# classes x (classes - 1) x 8 thumbnails; the shipped models' reports hold a few hundred.
EXAMPLES_PER_CELL = 8
SPLIT = "validation"  # the only split examples are chosen from
CURVE_KEYS = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")


# ----------------------------------------------------------------------------- mistakes


@dataclasses.dataclass(frozen=True)
class Example:
    """One misclassified image: its position in the split, and what the model said."""

    index: int  # position in the split's order
    confidence: float  # calibrated probability of the (wrong) predicted class
    true_probability: float  # calibrated probability of the true class
    image: np.ndarray  # uint8 [H, W, C], as the model saw it


class MistakeCollector:
    """A research.evaluate `collect` callback keeping the `per_cell` most confident mistakes
    of each (true, predicted) pair, at the model's temperature (as serving shows them)."""

    def __init__(self, temperature: float, per_cell: int = EXAMPLES_PER_CELL):
        self.temperature = temperature
        self.per_cell = per_cell
        self.seen = 0
        # (true, predicted) -> min-heap of (confidence, -index, Example): the least confident
        # (then the latest) is dropped first, so ties keep the split's order.
        self._cells: dict[tuple[int, int], list[tuple[float, int, Example]]] = {}

    def __call__(self, images: np.ndarray, log_probs: np.ndarray, labels: np.ndarray) -> None:
        probs = np.exp(calibration.log_probabilities(log_probs, self.temperature))
        predicted = probs.argmax(-1)
        for i in np.flatnonzero(predicted != labels):
            true, guess = int(labels[i]), int(predicted[i])
            example = Example(
                index=self.seen + int(i),
                confidence=float(probs[i, guess]),
                true_probability=float(probs[i, true]),
                image=np.array(images[i], np.uint8),
            )
            heap = self._cells.setdefault((true, guess), [])
            heapq.heappush(heap, (example.confidence, -example.index, example))
            if len(heap) > self.per_cell:
                heapq.heappop(heap)
        self.seen += len(labels)

    def cells(self) -> dict[tuple[int, int], list[Example]]:
        """(true, predicted) -> its kept mistakes, the most confident first."""
        return {
            key: [item[2] for item in sorted(heap, key=lambda item: (-item[0], -item[1]))]
            for key, heap in sorted(self._cells.items())
        }


# ----------------------------------------------------------------------------- curves


def read_curves(
    model: str | Path, workdir: str | Path | None = None, *, steps_per_epoch: float | None = None
) -> dict[str, Any]:
    """Per-evaluation training metrics the run recorded, oldest first.

    Sources, later ones filling and overriding earlier: the serving record of every kept step
    of `model` and of `workdir` (steps saved at an evaluation carry train and eval loss and
    accuracy), then `<workdir>/tensorboard`'s scalars and `<workdir>/metrics.jsonl` (every
    evaluation of the run). Returns
    {"available", "points": [{step, epoch, train_loss, ...}], "sources", "eval_split",
    "note"}; "available" needs two or more evaluations.
    """
    points: dict[int, dict[str, float]] = {}
    sources: list[str] = []
    eval_split = None
    for path in filter(None, (model, workdir)):
        found, split = _record_points(Path(path))
        if found:
            sources.append("checkpoint records")
            eval_split = eval_split or split
            for step, values in found.items():
                points.setdefault(step, {}).update(values)
    if workdir is not None:
        for source, reader, path in (
            ("TensorBoard events", read_tensorboard, Path(workdir) / TENSORBOARD_SUBDIR),
            ("metrics.jsonl", read_metrics_jsonl, Path(workdir) / METRICS_JSONL),
        ):
            found, split = reader(path) if path.exists() else ({}, None)
            if found:
                sources.append(source)
                eval_split = eval_split or split
                for step, values in found.items():
                    points.setdefault(step, {}).update(values)
    rows = [
        {
            "step": step,
            "epoch": round(step / steps_per_epoch, 3) if steps_per_epoch else None,
            **{key: values.get(key) for key in CURVE_KEYS},
        }
        for step, values in sorted(points.items())
    ]
    available = len(rows) >= 2
    note = ""
    if not available:
        note = (
            "The training curves are not available for this model: the exported model keeps "
            "only its final step's metrics, and its training run's TensorBoard events were "
            "not given when this report was written."
        )
    return {
        "available": available,
        "points": rows,
        "sources": list(dict.fromkeys(sources)),
        "eval_split": eval_split,
        "steps_per_epoch": steps_per_epoch,
        "note": note,
    }


def _record_points(path: Path) -> tuple[dict[int, dict[str, float]], str | None]:
    """{step: metrics} from the serving records of every kept step under `path`."""
    try:
        directory = model_dir.find_checkpoints(path)
    except ModelNotFoundError:
        return {}, None
    points, split = {}, None
    for step in model_dir.list_steps(directory):
        try:
            metrics = model_dir.read_record(directory, step).metrics
        except IncompatibleModelError:
            continue
        values = {key: float(metrics[key]) for key in CURVE_KEYS if metrics.get(key) is not None}
        if values:
            points[step] = values
            split = split or metrics.get("eval_split")
    return points, split


def read_tensorboard(directory: str | Path) -> tuple[dict[int, dict[str, float]], str | None]:
    """({step: {train_loss, train_accuracy, eval_loss, eval_accuracy}}, the eval split) from
    the scalars research.train writes ('train/loss', '<split>/accuracy', ...). A file cut off
    mid-record (a run killed while writing) is read up to the cut."""
    import tensorflow as tf  # TensorFlow only here
    from tensorflow.core.util import event_pb2

    points: dict[int, dict[str, float]] = {}
    split = None
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        try:
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                event = event_pb2.Event.FromString(raw)
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        number = float(tf.make_ndarray(value.tensor))
                    else:
                        number = float(value.simple_value)
                    split = _add_scalar(points, int(event.step), value.tag, number) or split
        except tf.errors.DataLossError:
            continue
    return points, split


def read_metrics_jsonl(path: str | Path) -> tuple[dict[int, dict[str, float]], str | None]:
    """As `read_tensorboard`, from `<workdir>/metrics.jsonl` (one JSON object per evaluation:
    step and the same scalar names), which research.train writes beside the events."""
    points: dict[int, dict[str, float]] = {}
    split = None
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut off by a killed run
        for tag, value in row.items():
            if isinstance(value, (int, float)) and tag != "step":
                split = _add_scalar(points, step, tag, float(value)) or split
    return points, split


def _add_scalar(points: dict[int, dict[str, float]], step: int, tag: str, value: float) -> str:
    """Files 'train/loss' as train_loss and '<split>/accuracy' as eval_accuracy; returns the
    eval split a tag names ('' for others)."""
    prefix, _, name = tag.partition("/")
    if name not in ("loss", "accuracy"):
        return ""
    kind = "train" if prefix == "train" else "eval"
    points.setdefault(step, {})[f"{kind}_{name}"] = value
    return "" if kind == "train" else prefix


# ----------------------------------------------------------------------------- report


def build_report(
    model: str | Path,
    *,
    workdir: str | Path | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    per_cell: int = EXAMPLES_PER_CELL,
    out: str | Path | None = None,
) -> Path:
    """Evaluates the model at `model` on its validation split and writes its report folder
    (default `<model>/report`); returns the folder."""
    clf = Classifier.load(model)
    workdir = workdir or default_workdir(model)
    started = time.monotonic()
    collector = MistakeCollector(clf.record.temperature, per_cell)
    data_dir = data_dir or saved_data_dir(clf)
    metrics = evaluate_split(
        clf, SPLIT, data_dir=data_dir, batch_size=batch_size, collect=collector
    )
    if metrics["count"] == 0:
        raise ValueError(f"The {SPLIT} split of {clf.dataset} holds no images")
    return write_report(
        Path(out) if out else Path(model) / REPORT_DIR,
        clf,
        metrics,
        collector,
        model=model,
        workdir=workdir,
        split=SPLIT,
        seconds=time.monotonic() - started,
        steps_per_epoch=steps_per_epoch(clf.record, data_dir),
    )


def write_report(
    out: Path,
    clf: Any,
    metrics: dict[str, Any],
    collector: MistakeCollector,
    *,
    model: str | Path,
    workdir: str | Path | None,
    split: str,
    seconds: float = 0.0,
    steps_per_epoch: float | None = None,
) -> Path:
    """Writes report.json, the PNGs and the examples of one evaluation (research.evaluate's
    `metrics` with `collector` as its `collect`) to `out`, replacing it; returns `out`.
    `steps_per_epoch` puts the curves on an epoch axis (else steps)."""
    if split != SPLIT:
        raise ValueError(f"A model report is made on the {SPLIT} split, not {split!r}")
    record = clf.record
    names = list(clf.class_names)
    confusion = np.asarray(metrics["confusion"], np.int64)
    directory = model_dir.find_checkpoints(model)
    curves = read_curves(model, workdir, steps_per_epoch=steps_per_epoch)
    title = f"{record.name} on {split}: accuracy {metrics['accuracy']:.2%} ({metrics['count']})"

    staging = out.parent / f".{out.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / REPORT_EXAMPLES_DIR).mkdir(parents=True)
    plots.render_confusion(confusion, names, title).save(staging / CONFUSION_FILE, optimize=True)
    if curves["available"]:
        plots.render_curves(curves["points"], f"{record.name}: training").save(
            staging / CURVES_FILE, optimize=True
        )
    cells, total_images, total_bytes = _write_examples(staging, collector, confusion)
    counts = confusion.sum(1)
    report = {
        "format": REPORT_FORMAT,
        "model": record.name,
        "dataset": record.dataset,
        "version": record.version,
        "step": record.step,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "split": split,
        "count": int(metrics["count"]),
        "accuracy": float(metrics["accuracy"]),
        "loss": float(metrics["loss"]),
        "temperature": record.temperature,
        "flip_tta": record.flip_tta,
        "translate_tta": record.translate_tta,
        "class_names": names,
        "per_class_accuracy": [float(a) for a in metrics["per_class_accuracy"]],
        "per_class_count": [int(n) for n in counts],
        "confusion": confusion.tolist(),
        "calibration": metrics.get("calibration"),
        "parameters": int(nets.count_params(clf.model)),
        "size_bytes": _disk_size(directory / str(record.step)),
        "trained": record.created,
        "command": _portable(training_command(record)),
        "curves": curves,
        "examples": {
            "per_cell": collector.per_cell,
            "order": "most confident first",
            "images": total_images,
            "bytes": total_bytes,
            "cells": cells,
        },
        "seconds": round(seconds, 1),
    }
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    _replace(out, staging)
    return out


def _write_examples(staging: Path, collector: MistakeCollector, confusion: np.ndarray):
    """Writes each confusion cell's kept mistakes as PNGs under `staging`; returns (the cells
    for report.json, how many images, their bytes)."""
    cells, total_bytes, total_images = [], 0, 0
    for (true, predicted), examples in collector.cells().items():
        images = []
        for k, example in enumerate(examples):
            name = f"{REPORT_EXAMPLES_DIR}/{true}-{predicted}/{k}.png"
            path = staging / name
            path.parent.mkdir(exist_ok=True)
            pixels = example.image[..., 0] if example.image.shape[-1] == 1 else example.image
            Image.fromarray(pixels).save(path, optimize=True)
            total_bytes += path.stat().st_size
            images.append(
                {
                    "file": name,
                    "index": example.index,
                    "confidence": round(example.confidence, 4),
                    "true_probability": round(example.true_probability, 4),
                }
            )
        total_images += len(images)
        cells.append(
            {
                "true": true,
                "predicted": predicted,
                "count": int(confusion[true, predicted]),
                "images": images,
            }
        )
    return cells, total_images, total_bytes


def _replace(out: Path, staging: Path) -> None:
    """`staging` becomes `out` by two renames: readers see the old report or the new, briefly
    none, never a mix."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def default_workdir(model: str | Path) -> Path | None:
    """`model` itself when it is a training workdir with TensorBoard events, else None."""
    return Path(model) if (Path(model) / TENSORBOARD_SUBDIR).is_dir() else None


def steps_per_epoch(record: Any, data_dir: str | None) -> float | None:
    """Training steps per epoch of the record's run (as research.train counts them), or None
    when its training split cannot be read here."""
    from research.data import datasets  # TensorFlow, only to count a split

    try:
        config = Config.from_dict(record.config).replace(data_dir=data_dir)
        info = datasets.get_info(config.dataset, config.data_dir)
        examples = info.splits.get(config.train_split)
        if examples is None:  # a slice such as 'train[:90%]': count it
            split = datasets.load_split(config.dataset, config.train_split, config.data_dir)
            examples = int(split.cardinality())
        return float(count_steps(config, examples).per_epoch)
    except (DataNotFoundError, ValueError, KeyError, TypeError) as error:
        logging.getLogger(__name__).warning("Epochs unknown (%s): curves by step", error)
        return None


def _portable(command: str) -> str:
    """The training command without where the training machine kept its data (--data_dir,
    --data_source: paths, not the recipe; without them the command reads the tfds copy)."""
    machine = ("--data_dir=", "--data_source=")
    return " ".join(word for word in command.split() if not word.startswith(machine))


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def format_summary(report_dir: Path) -> str:
    """A few lines on what a report folder holds (for the CLIs)."""
    report = json.loads((report_dir / REPORT_FILE).read_text())
    examples = report["examples"]
    size = sum(p.stat().st_size for p in report_dir.rglob("*") if p.is_file())
    curves = report["curves"]
    shown = f"{len(curves['points'])} points" if curves["available"] else "unavailable"
    return (
        f"{report['model']} on {report['split']}: accuracy {report['accuracy']:.4f} "
        f"({report['count']} images); curves {shown}; {examples['images']} examples in "
        f"{len(examples['cells'])} cells (<= {examples['per_cell']} each); "
        f"{size / 1e3:.0f} kB in {report_dir}"
    )


# ----------------------------------------------------------------------------- CLI
