"""manage.py reconcile_media: files without rows, unfinished writes, derived files without
their upload and rows without their image are reported, and removed with --repair."""

import io
import os
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from uploads import services
from uploads.models import Prediction, Upload
from uploads.reconcile import reconcile_media

pytestmark = pytest.mark.django_db

HEX = "0123456789abcdef0123456789abcdef"


def _plant(root: Path, name: str, *, age_s: float = 3600) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"leftover")
    old = time.time() - age_s
    os.utime(path, (old, old))
    return name


@pytest.fixture
def leftovers(settings, upload_file):
    """Two good uploads, one upload whose image was deleted, and one leftover of each kind."""
    root = Path(settings.MEDIA_ROOT)
    good = [services.classify_upload(file=upload_file()) for _ in range(2)]
    broken = services.classify_upload(file=upload_file())
    (root / broken.upload.image.name).unlink()
    planted = {
        "orphan": [
            _plant(root, f"images/2026/01/{HEX}.png"),
            _plant(root, f"thumbnails/2026/01/{HEX}.jpg"),
            _plant(root, f"model_inputs/2026/01/{HEX}.png"),
            _plant(root, f"saliency/2026/01/{HEX}/0011223344556677.png"),
        ],
        "temporary": [_plant(root, "images/2026/01/.tmp-deadbeef")],
    }
    return good, broken, planted


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_report_finds_every_kind_of_leftover_and_deletes_nothing(settings, leftovers):
    """Without --repair: each leftover is named, nothing is removed."""
    good, broken, planted = leftovers
    before = _all_files(Path(settings.MEDIA_ROOT))
    result = reconcile_media(min_age_s=0)
    assert sorted(result.orphan_files) == sorted(planted["orphan"])
    assert result.temporary_files == planted["temporary"]
    assert result.rows_without_files == [broken.upload.pk]
    assert _all_files(Path(settings.MEDIA_ROOT)) == before
    assert Upload.objects.count() == 3


def test_repair_removes_leftovers_and_keeps_every_good_upload(
    settings, leftovers, django_capture_on_commit_callbacks
):
    """With --repair: leftovers and the broken row go; good uploads keep every file."""
    good, broken, planted = leftovers
    root = Path(settings.MEDIA_ROOT)
    with django_capture_on_commit_callbacks(execute=True):  # the broken row's files go on commit
        result = reconcile_media(repair=True, min_age_s=0)
    assert not result.clean and result.repaired
    files = _all_files(root)
    assert not files & set(planted["orphan"] + planted["temporary"])
    assert set(Upload.objects.values_list("pk", flat=True)) == {p.upload.pk for p in good}
    assert not Prediction.objects.filter(pk=broken.pk).exists()
    for prediction in good:
        assert prediction.upload.image.name in files
        assert services._model_input_name(prediction.upload.image.name) in files
    assert reconcile_media(min_age_s=0).clean


def test_recent_files_are_left_for_uploads_in_flight(settings):
    """A file newer than the minimum age may belong to an upload not yet committed."""
    name = _plant(Path(settings.MEDIA_ROOT), f"images/2026/01/{HEX}.png", age_s=5)
    assert reconcile_media(repair=True).clean
    assert (Path(settings.MEDIA_ROOT) / name).is_file()


def test_command_reports_counts_and_repairs(leftovers, django_capture_on_commit_callbacks):
    """The command prints a count per kind, then removes them with --repair."""
    out = io.StringIO()
    call_command("reconcile_media", "--min-age", "0", stdout=out)
    assert "files without rows: 4 found" in out.getvalue()
    assert "unfinished writes: 1 found" in out.getvalue()
    assert "rows without their image (upload ids): 1 found" in out.getvalue()
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("reconcile_media", "--repair", "--min-age", "0", stdout=out)
    assert "files without rows: 4 removed" in out.getvalue()
    out = io.StringIO()
    call_command("reconcile_media", "--min-age", "0", stdout=out)
    assert "Media and rows agree." in out.getvalue()
