"""Accuracy under common corruptions (research.data.corruptions) through the serving forward:
loading a split's images (`load_images`), measuring (`measure`), the markdown table
(`format_table`) and the examples PNG (`draw_examples`). The command is research.robustness.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from research.data import arrays, corruptions
from research.serving.classifier import Classifier

EXAMPLE_ROWS = 3  # images shown in the PNG, one per class from class 0
EXAMPLE_SCALE = 2  # each pixel drawn as a 2x2 block


# ----------------------------------------------------------------------------- data


def load_images(
    clf: Classifier, split: str, *, data_dir: str | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, H, W, C] images, int64 [N] labels) of a tfds split of the model's dataset,
    in the split's fixed order; the first `limit` only when given."""
    loaded = arrays.load_split(clf.dataset, split, data_dir=data_dir, limit=limit)
    if list(loaded.class_names) != clf.class_names:
        raise ValueError(
            f"Dataset {clf.dataset!r} has classes {list(loaded.class_names)}, but the model "
            f"was trained on {clf.class_names}"
        )
    if loaded.images.shape[1:] != tuple(clf.image_shape):
        raise ValueError(
            f"{clf.dataset} {split} has images of shape {loaded.images.shape[1:]}, the model "
            f"takes {tuple(clf.image_shape)}"
        )
    return loaded.images, loaded.labels.astype(np.int64)


# ----------------------------------------------------------------------------- benchmark


def measure(
    clf: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    severities: Sequence[int] = (corruptions.MIDDLE_SEVERITY,),
    names: Sequence[str] | None = None,
    seed: int = 0,
    on_result: Any = None,
) -> dict[str, Any]:
    """Accuracy of `clf` on the clean images and on each corruption x severity.

    -> {"clean_accuracy", "accuracy": {name: {severity: acc}}, "mean_issue_seven" (None
    unless severity 3 is measured), "mean_all", "mean_per_corruption", "mean_per_severity",
    "predictions": {"clean" or "name/severity": int [N] predicted classes}}.
    `on_result(name, severity, accuracy)` is called after each measurement.
    """
    names = list(names or corruptions.names_for(images.shape[-1]))
    predictions = {"clean": _predict(clf, images)}
    clean = float(np.mean(predictions["clean"] == labels))
    if on_result:
        on_result("none", 0, clean)
    accuracy: dict[str, dict[int, float]] = {}
    for name in names:
        accuracy[name] = {}
        for severity in severities:
            corrupted = corruptions.corrupt_batch(images, name, severity, seed=seed)
            predicted = _predict(clf, corrupted)
            predictions[f"{name}/{severity}"] = predicted
            accuracy[name][severity] = float(np.mean(predicted == labels))
            if on_result:
                on_result(name, severity, accuracy[name][severity])
    middle = corruptions.MIDDLE_SEVERITY
    seven = [accuracy[n][middle] for n in corruptions.ISSUE_SEVEN if middle in accuracy.get(n, {})]
    every = [a for by_severity in accuracy.values() for a in by_severity.values()]
    return {
        "clean_accuracy": clean,
        "accuracy": accuracy,
        "mean_issue_seven": float(np.mean(seven)) if len(seven) == 7 else None,
        "mean_all": float(np.mean(every)) if every else None,
        "mean_per_corruption": {n: float(np.mean(list(a.values()))) for n, a in accuracy.items()},
        "mean_per_severity": {
            s: float(np.mean([accuracy[n][s] for n in names])) for s in severities if names
        },
        "predictions": predictions,
    }


def _predict(clf: Classifier, images: np.ndarray) -> np.ndarray:
    return np.argmax(clf.predict_arrays(images), axis=-1)


# ----------------------------------------------------------------------------- reports


def format_table(result: dict[str, Any], severities: Sequence[int]) -> str:
    """The markdown table: one row per corruption, a column per severity (and their mean)."""
    many = len(severities) > 1
    head = [f"severity {s}" for s in severities] + (["mean"] if many else [])
    lines = [
        "| corruption | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
        "| none (clean) | "
        + " | ".join([f"{100 * result['clean_accuracy']:.2f}%"] * len(severities))
        + (f" | {100 * result['clean_accuracy']:.2f}%" if many else "")
        + " |",
    ]
    for name, by_severity in result["accuracy"].items():
        cells = [f"{100 * by_severity[s]:.2f}%" for s in severities]
        if many:
            cells.append(f"{100 * result['mean_per_corruption'][name]:.2f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result["mean_issue_seven"] is not None:
        lines.append(
            f"| **mean of the seven common ones** (severity {corruptions.MIDDLE_SEVERITY}) | "
            f"**{100 * result['mean_issue_seven']:.2f}%** |" + " |" * (len(head) - 1)
        )
    if result["mean_all"] is not None:
        per_severity = [f"{100 * result['mean_per_severity'][s]:.2f}%" for s in severities]
        if many:
            per_severity.append(f"{100 * result['mean_all']:.2f}%")
        lines.append(
            f"| **mean of all {len(result['accuracy'])}** | "
            + " | ".join(f"**{c}**" for c in per_severity)
            + " |"
        )
    return "\n".join(lines)


def draw_examples(
    clf: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    result: dict[str, Any],
    severity: int,
    path: Path,
    *,
    seed: int = 0,
) -> Path:
    """A PNG grid: rows = a few images (one per class from class 0), columns = clean and each
    corruption at `severity`; a green frame when the model classified the image right."""
    rows = []
    for cls in range(clf.record.num_classes):
        hits = np.flatnonzero(labels == cls)
        if len(hits):
            rows.append(int(hits[0]))
        if len(rows) == EXAMPLE_ROWS:
            break
    names = list(result["accuracy"])
    columns = ["clean", *names]
    h, w, channels = images.shape[1:]
    tile_h, tile_w = h * EXAMPLE_SCALE + 4, w * EXAMPLE_SCALE + 4
    header = 7 * max(len(c) for c in columns) + 6
    grid = Image.new("RGB", (tile_w * len(columns), header + tile_h * len(rows)), "white")
    for c, column in enumerate(columns):
        label = Image.new("RGB", (header, tile_w), "white")
        ImageDraw.Draw(label).text((2, tile_w // 2 - 6), column, fill="black")
        grid.paste(label.rotate(90, expand=True), (c * tile_w, 0))
        if column == "clean":
            pixels, predicted = images[rows], result["predictions"]["clean"][rows]
        else:
            seeded = [
                corruptions.corrupt(images[i], column, severity, seed=(seed, i)) for i in rows
            ]
            pixels = np.stack(seeded)
            predicted = result["predictions"][f"{column}/{severity}"][rows]
        for r, (pixel, guess, index) in enumerate(zip(pixels, predicted, rows, strict=True)):
            colour = (0, 160, 0) if guess == labels[index] else (210, 0, 0)
            tile = Image.new("RGB", (tile_w, tile_h), colour)
            picture = Image.fromarray(pixel[..., 0] if channels == 1 else pixel).convert("RGB")
            picture = picture.resize(
                (w * EXAMPLE_SCALE, h * EXAMPLE_SCALE), Image.Resampling.NEAREST
            )
            tile.paste(picture, (2, 2))
            grid.paste(tile, (c * tile_w, header + r * tile_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


# ----------------------------------------------------------------------------- CLI
