"""The one lister of image folders, laid out ``class/image`` or ``split/class/image``.

Used by the importer (research.data.datasets) and by evaluation of folders (research.evaluate).
No JAX or TensorFlow here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from research.serving.errors import DataNotFoundError

# Images in a folder; anything else (README, .DS_Store, ...) is ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def subdirs(directory: Path) -> list[Path]:
    """Sorted visible subdirectories."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_in(directory: Path) -> list[Path]:
    """Sorted image files directly inside `directory`."""
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def list_image_folder(root: str | Path) -> dict[str | None, dict[str, list[Path]]]:
    """{split: {class: sorted image paths}} of a folder; the split is None for ``class/image``.

    The layout is ``class/image`` when the folder's subdirectories hold images themselves, and
    ``split/class/image`` when they hold class folders; a mix of the two is refused. Classes
    without images are left out.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"Image folder {root} does not exist")
    top = subdirs(root)
    with_images = [d for d in top if images_in(d)]
    if with_images:
        if len(with_images) != len(top):
            others = [d.name for d in top if d not in with_images]
            if any(images_in(c) for d in top if d not in with_images for c in subdirs(d)):
                raise ValueError(
                    f"{root} mixes class folders ({with_images[0].name}, ...) with split "
                    f"folders ({', '.join(others)}): lay it out class/image or split/class/image"
                )
        return {None: {d.name: images_in(d) for d in with_images}}
    splits = {}
    for split_dir in top:
        classes = {d.name: images_in(d) for d in subdirs(split_dir)}
        classes = {name: paths for name, paths in classes.items() if paths}
        if classes:
            splits[split_dir.name] = classes
    if not splits:
        raise DataNotFoundError(f"No images laid out class/image or split/class/image in {root}")
    return splits


def _normalize(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def match_class(folder_name: str, class_names: Sequence[str]) -> int | None:
    """The class a folder holds: its exact name, its name up to case and punctuation
    ('T-shirt_top' for 'T-shirt/top', which cannot be a folder name), or its index."""
    if folder_name in class_names:
        return list(class_names).index(folder_name)
    normalized = [_normalize(name) for name in class_names]
    if normalized.count(_normalize(folder_name)) == 1:
        return normalized.index(_normalize(folder_name))
    if folder_name.isdigit() and int(folder_name) < len(class_names):
        return int(folder_name)
    return None
