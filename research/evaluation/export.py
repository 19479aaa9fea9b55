"""Exporting a trained model for serving: the checkpoint research.serving.model_dir picks,
without optimizer state, and its model card, written from the serving record. The command is
research.export.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

from research.configs import RECIPES, Config, get_config
from research.nets import models
from research.serving import model_dir
from research.serving.classifier import Classifier
from research.serving.errors import ModelNotFoundError
from research.serving.record import ServingRecord


def export_model(
    workdir: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> Classifier:
    """Exports the best checkpoint of `workdir` to `out_dir`; returns the loaded model.

    An existing `out_dir` is replaced only with `overwrite`, and only if it holds a model.
    """
    out_dir = Path(out_dir)
    if out_dir.absolute() == Path(workdir).absolute():
        raise ValueError("--out must differ from --workdir")
    replace = out_dir.exists() and any(out_dir.iterdir())
    if replace:
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite")
        try:
            model_dir.find_checkpoints(out_dir)
        except ModelNotFoundError:
            raise FileExistsError(f"{out_dir} holds no model: not replacing it") from None
    clf = Classifier.load(workdir)
    if replace:
        shutil.rmtree(out_dir)
    clf.export(out_dir)
    return clf


def tta_words(record: ServingRecord) -> str:
    """The record's test-time augmentation, for people."""
    if record.translate_tta:
        views = "6 views" if record.flip_tta else "3 views"
        mirror = "the image and its mirror" if record.flip_tta else "the image"
        return f"{mirror}, also shifted a pixel up-left and down-right ({views})"
    return "horizontal flip" if record.flip_tta else "none"


def training_command(record: ServingRecord) -> str:
    """The research.train command that gives the record's training config: the dataset's
    defaults, or the named recipe (configs.RECIPES) closest to it, plus a flag for each field
    that differs from them."""
    saved = Config.from_dict(record.config)
    commands = []
    for recipe in [None, *RECIPES]:
        start = get_config(saved.dataset, recipe)
        flags = [f"--dataset={saved.dataset}"] + ([f"--recipe={recipe}"] if recipe else [])
        for field in dataclasses.fields(Config):
            value = getattr(saved, field.name)
            if field.name != "dataset" and value != getattr(start, field.name):
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                flags.append(f"--{field.name}={text}")
        commands.append(flags)
    return "python -m research.train " + " ".join(min(commands, key=len))


def render_model_card(
    clf: Classifier,
    *,
    out_dir: str | Path,
    size_bytes: int,
    command: str | None = None,
    notes: str | None = None,
) -> str:
    """MODEL_CARD.md for an exported model, from its serving record."""
    record = clf.record
    metrics = record.metrics
    config = Config.from_dict(record.config)
    height, width, channels = record.image_shape
    accuracy, split = metrics.get("eval_accuracy"), metrics.get("eval_split", "?")
    count, seconds = metrics.get("eval_count"), metrics.get("train_seconds")
    shown_accuracy = "not evaluated"
    if accuracy is not None:
        shown_accuracy = f"**{accuracy:.2%}** on `{split}`" + (
            f" ({count} images)" if count else ""
        )
    wall = f"{seconds / 60:.1f} min" if seconds is not None else "not recorded"
    rows = [
        (
            "Dataset",
            f"`{record.dataset}`: {record.num_classes} classes, {height}x{width}x{channels}",
        ),
        ("Accuracy", shown_accuracy),
        ("Training wall time", f"{wall}, {record.step} steps"),
        ("Trained", f"{record.created[:10] or '?'} (version `{record.version}`)"),
        ("Model", f"`{config.model}`, {models.count_params(clf.model):,} parameters"),
        ("Test-time augmentation", tta_words(record)),
        ("Size on disk", format_size(size_bytes)),
        ("Exported", dt.date.today().isoformat()),
    ]
    out = Path(out_dir)
    lines = [
        f"# {record.name}",
        "",
        f"An image classifier for `{record.dataset}`, trained with `research.train` and exported "
        "with `research.export` (inference weights only).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        "## Reproduce",
        "",
        "```",
        command or training_command(record),
        "```",
        "",
        "## Use",
        "",
        "```",
        f"python -m research.predict --checkpoint {out} IMAGE...",
        f"python -m research.evaluate --checkpoint {out} --split {split}",
        "```",
        "",
        "## Classes",
        "",
        ", ".join(f"{i} `{name}`" for i, name in enumerate(record.class_names)),
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    lines += [
        "## Training config",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=None),
        "```",
        "",
    ]
    return "\n".join(lines)


def disk_size(path: str | Path) -> int:
    """Bytes of all files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def format_size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.0f} kB"
