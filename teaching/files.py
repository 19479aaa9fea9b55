"""Where a taught classifier's files live, all under settings.TEACH_ROOT (outside MEDIA_ROOT,
which uploads.reconcile owns, and outside models/):

    examples/<classifier id>/<class id>/<hex>.<jpg|png>   the examples (atomic storage)
    models/<model name>/<version>/                        the taught model directories
    work/job-<id>/                                        one training's scratch folder
"""

from pathlib import Path

from django.conf import settings

from uploads.storage import AtomicFileSystemStorage

WORK_PREFIX = "job-"


def example_storage() -> AtomicFileSystemStorage:
    """The examples' storage: the uploads' all-or-nothing storage, in its own folder."""
    return AtomicFileSystemStorage(location=examples_root())


def examples_root() -> Path:
    return Path(settings.TEACH_ROOT) / "examples"


def models_root() -> Path:
    return Path(settings.TEACH_ROOT) / "models"


def work_root() -> Path:
    return Path(settings.TEACH_ROOT) / "work"


def work_dir(job_id: int) -> Path:
    """The scratch folder of one job: its examples as class/image, the model being written."""
    return work_root() / f"{WORK_PREFIX}{job_id}"
