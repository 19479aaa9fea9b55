"""Reconciliation of media files with their rows: what a killed worker, a full disk or a
hand-deleted file can leave behind, found and (on request) repaired.

Three kinds of leftover:
- files without rows: a stored image or thumbnail that no Upload names, and a derived file
  (model input, saliency overlay) whose upload is gone;
- temporary files: a write that never finished (uploads.storage.TEMP_PREFIX);
- rows without files: an Upload whose stored image is missing.

Files and rows younger than `min_age_s` are left alone: an upload writes its files a moment
before its row commits, so a file that new may belong to a request in flight. At start-up,
before any worker serves, min_age_s=0 is safe.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from uploads import services
from uploads.models import Upload
from uploads.storage import TEMP_PREFIX

DEFAULT_MIN_AGE_S = 600  # far longer than an upload takes from its first file to its commit


@dataclass
class Reconciliation:
    """What was found (and, with repair, removed): media names relative to MEDIA_ROOT."""

    orphan_files: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    rows_without_files: list[int] = field(default_factory=list)  # Upload ids
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (self.orphan_files or self.temporary_files or self.rows_without_files)


def reconcile_media(
    *, repair: bool = False, min_age_s: float = DEFAULT_MIN_AGE_S
) -> Reconciliation:
    """Compare MEDIA_ROOT with the Upload rows; with repair, delete the leftover files and the
    rows whose image is gone (with their predictions and remaining files)."""
    root = Path(settings.MEDIA_ROOT)
    cutoff = time.time() - min_age_s
    files = _old_files(root, cutoff)  # listed before the rows are read: see the docstring
    uploads = list(Upload.objects.values_list("pk", "image", "thumbnail", "created_at"))
    referenced = {name for _, image, thumbnail, _ in uploads for name in (image, thumbnail) if name}
    stems = {_stem(image) for _, image, _, _ in uploads}
    result = Reconciliation()
    for name in files:
        base = PurePosixPath(name).name
        if base.startswith(TEMP_PREFIX):
            result.temporary_files.append(name)
        elif not _is_kept(name, referenced, stems):
            result.orphan_files.append(name)
    row_cutoff = timezone.now() - timezone.timedelta(seconds=min_age_s)
    result.rows_without_files = [
        pk
        for pk, image, _, created_at in uploads
        if created_at <= row_cutoff and not (root / image).is_file()
    ]
    if repair:
        for name in result.orphan_files + result.temporary_files:
            default_storage.delete(name)
        if result.rows_without_files:
            services.delete_uploads(uploads=Upload.objects.filter(pk__in=result.rows_without_files))
        result.repaired = True
    return result


def _old_files(root: Path, cutoff: float) -> list[str]:
    names = []
    if not root.is_dir():
        return names
    for directory, _, files in os.walk(root):
        for file in files:
            path = Path(directory, file)
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:  # deleted meanwhile
                continue
            names.append(path.relative_to(root).as_posix())
    return sorted(names)


def _stem(name: str) -> str:
    """'images/2026/11/<hex>.jpg' -> '2026/11/<hex>': the stem its derived files share."""
    parts = PurePosixPath(name).with_suffix("").parts
    return "/".join(parts[1:])


def _is_kept(name: str, referenced: set[str], stems: set[str]) -> bool:
    """Whether a file belongs to a row: named by it, or derived from its image."""
    if name in referenced:
        return True
    parts = PurePosixPath(name).parts
    if parts[0] == services.MODEL_INPUTS_DIR:
        return _stem(name) in stems
    if parts[0] == services.SALIENCY_DIR and len(parts) > 2:
        return "/".join(parts[1:-1]) in stems  # saliency/<stem>/<model>.png
    return False
