"""Storage faults: every media file is written whole or not at all, and a full or failing disk
answers 507/503 with Retry-After (JSON for the API, a page for the form), leaving nothing."""

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from tests.web.conftest import encode_image, make_image
from uploads import storage
from uploads.models import Prediction, Upload
from uploads.storage import TEMP_PREFIX, AtomicFileSystemStorage

pytestmark = pytest.mark.django_db


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _row_files() -> set[str]:
    """Every media name the rows refer to."""
    names = set()
    for image, thumbnail in Upload.objects.values_list("image", "thumbnail"):
        names.add(image)
        if thumbnail:
            names.add(thumbnail)
    return names


def _image_files(root: Path) -> set[str]:
    """Every stored image and thumbnail under `root` (derived model inputs left out)."""
    return {
        path.relative_to(root).as_posix()
        for kind in ("images", "thumbnails")
        for path in (root / kind).rglob("*")
        if path.is_file()
    }


def test_default_storage_writes_through_a_temporary_name(settings, media_files):
    """The site's storage is the atomic one, and a save leaves only the named file."""
    assert isinstance(default_storage._wrapped, AtomicFileSystemStorage) or isinstance(
        default_storage, AtomicFileSystemStorage
    )
    name = default_storage.save("images/2026/12/a.png", ContentFile(b"x" * 5000))
    assert [p.relative_to(settings.MEDIA_ROOT).as_posix() for p in media_files()] == [name]
    assert (Path(settings.MEDIA_ROOT) / name).read_bytes() == b"x" * 5000


def test_save_never_replaces_an_existing_file(settings):
    """A second save under a taken name gets a new name; the first file is untouched."""
    first = default_storage.save("saliency/x/a.png", ContentFile(b"first"))
    second = default_storage.save("saliency/x/a.png", ContentFile(b"second"))
    assert first != second
    assert (Path(settings.MEDIA_ROOT) / first).read_bytes() == b"first"
    assert (Path(settings.MEDIA_ROOT) / second).read_bytes() == b"second"


def test_a_write_failing_part_way_leaves_no_file(monkeypatch, media_files):
    """ENOSPC after some bytes were written: the partial temporary file is removed."""
    monkeypatch.setattr(storage.os, "fsync", _enospc)  # the bytes are in, the flush fails
    with pytest.raises(OSError) as raised:
        default_storage.save("images/2026/12/b.png", ContentFile(b"y" * 100_000))
    assert raised.value.errno == errno.ENOSPC
    assert media_files() == []


def _failing_saves(monkeypatch, prefix: str, after: int = 0) -> None:
    """Storage saves of names under `prefix` fail with ENOSPC, after `after` succeeded."""
    real_save = AtomicFileSystemStorage._save
    done = []

    def save(self, name, content):
        if name.startswith(prefix):
            if len(done) >= after:
                _enospc()
            done.append(name)
        return real_save(self, name, content)

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", save)


def test_api_answers_507_with_retry_after_when_the_disk_is_full(
    client, upload_file, media_files, monkeypatch
):
    """The stored image's write fails: 507 JSON with Retry-After, no row, no file."""
    _failing_saves(monkeypatch, "images/")
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 507
    assert response.json()["code"] == "storage_full"
    assert int(response["Retry-After"]) > 0
    assert "/" not in response.json()["error"]  # no path in the public message
    assert Upload.objects.count() == Prediction.objects.count() == 0
    assert media_files() == []


def test_a_batch_failing_at_its_second_image_removes_the_first(
    client, upload_file, media_files, monkeypatch
):
    """The second image of a form batch finds the disk full after the first was written: the
    first file is removed, no row stays, and the page says why."""
    _failing_saves(monkeypatch, "images/", after=1)
    response = client.post(
        reverse("uploads:classify"),
        {"images": [upload_file(), upload_file()], "model": "cifar10"},
    )
    assert response.status_code == 507
    assert Upload.objects.count() == Prediction.objects.count() == 0
    assert media_files() == []


def test_a_derived_file_failing_after_the_answer_keeps_the_upload_whole(
    client, upload_file, media_files, monkeypatch, caplog
):
    """The model-input PNG is written after the answer: when the disk refuses it the client
    already has its 201, the upload and its image stay, no partial file is left, and the
    failure is logged (the reconciliation reports the missing derived file)."""
    _failing_saves(monkeypatch, "model_inputs/")
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 201
    assert Upload.objects.count() == Prediction.objects.count() == 1
    files = [path.as_posix() for path in media_files()]
    assert any("/images/" in name for name in files)
    assert not any("/model_inputs/" in name or ".tmp-" in name for name in files)
    assert "No space left on device" in caplog.text


def test_api_answers_503_when_the_disk_fails_otherwise(
    client, upload_file, media_files, monkeypatch
):
    """An I/O error (not a full disk): 503 with Retry-After, nothing stored."""

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", eio)
    response = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    assert response.status_code == 503
    assert response.json()["code"] == "storage_unavailable"
    assert int(response["Retry-After"]) > 0
    assert Upload.objects.count() == 0 and media_files() == []


def test_form_shows_a_clear_page_when_the_disk_is_full(
    client, upload_file, media_files, monkeypatch
):
    """The HTML form answers 507 with its page, the reason, and Retry-After."""
    monkeypatch.setattr(storage.os, "fsync", _enospc)
    response = client.post(
        reverse("uploads:classify"), {"images": upload_file(), "model": "cifar10"}
    )
    assert response.status_code == 507
    assert "no room to store images" in response.content.decode()
    assert int(response["Retry-After"]) > 0
    assert Upload.objects.count() == 0 and media_files() == []


def test_saliency_is_still_answered_when_it_cannot_be_cached(
    client, upload_file, media_files, monkeypatch
):
    """The overlay is a cache: a full disk leaves it unsaved, the answer still comes."""
    created = client.post(reverse("uploads:api-predict"), {"image": upload_file()})
    before = media_files()
    monkeypatch.setattr(storage.os, "fsync", _enospc)
    response = client.get(reverse("uploads:api-saliency", args=[created.json()["id"]]))
    assert response.status_code == 200
    assert media_files() == before


@pytest.fixture
def small_tmpfs(settings):
    """MEDIA_ROOT on a real 2 MiB tmpfs, mounted for the test (root only; skipped otherwise)."""
    mount_point = Path(f"/tmp/classifier-tmpfs-{uuid.uuid4().hex[:8]}")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip("mounting a tmpfs needs root (or the mount capability) here")
    settings.MEDIA_ROOT = mount_point
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        shutil.rmtree(mount_point, ignore_errors=True)


def test_filling_a_real_disk_answers_507_and_leaves_nothing_half_written(small_tmpfs):
    """Uploads until a real tmpfs is full: 201s then 507s, never 500; every file has its row,
    every row its files, and no temporary or truncated file is left."""
    client = Client(raise_request_exception=False)
    statuses = []
    for seed in range(40):  # 400x400 noise PNGs: ~480 KB each as uploaded
        data = encode_image(make_image((400, 400), seed=seed), "PNG")
        response = client.post(
            reverse("uploads:api-predict"), {"image": ContentFile(data, name=f"{seed}.png")}
        )
        statuses.append(response.status_code)
        if response.status_code == 507:
            assert response.json()["code"] == "storage_full"
            assert int(response["Retry-After"]) > 0
    assert 507 in statuses and 201 in statuses
    assert set(statuses) <= {201, 507}
    assert Upload.objects.count() == statuses.count(201)
    assert _image_files(small_tmpfs) == _row_files()
    leftovers = [p for p in small_tmpfs.rglob(f"{TEMP_PREFIX}*")]
    assert leftovers == []
    for name in _row_files():  # every stored file whole: it decodes
        assert os.path.getsize(small_tmpfs / name) > 0
    assert client.get(reverse("uploads:api-predictions")).json()["count"] == statuses.count(201)
