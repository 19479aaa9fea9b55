"""Media storage that never leaves a half-written file, and what a storage failure answers.

`AtomicFileSystemStorage` (STORAGES["default"]) writes each file under a temporary name in its
final folder, flushes it to disk, then links it into place: a reader (or the reconciliation
command) sees the whole file or nothing. Any failure part-way (a full disk, a quota, an I/O
error) removes the temporary file before the error goes on. Temporary names start with
TEMP_PREFIX, so `manage.py reconcile_media` can sweep those a killed worker left.

`StorageUnavailable` is what the upload service raises when the disk refuses a write: 507 when
it is full (the operator must free space), 503 for any other failure; both with Retry-After.
"""

import contextlib
import errno
import os
import uuid

from django.core.files import locks
from django.core.files.move import file_move_safe
from django.core.files.storage import FileSystemStorage

TEMP_PREFIX = ".tmp-"
# errno values that mean "no room": the disk or the quota is full.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
RETRY_AFTER_FULL_S = 300  # freeing space takes an operator
RETRY_AFTER_ERROR_S = 30


class StorageUnavailable(Exception):
    """The media storage refused a write; nothing of the request was kept.

    `status` is 507 (disk or quota full) or 503; `code` and `public_message` are for the
    client (no path, no errno), the cause stays in the log.
    """

    def __init__(self, cause: OSError):
        super().__init__(str(cause))
        self.full = cause.errno in _FULL_ERRNOS
        self.status = 507 if self.full else 503
        self.code = "storage_full" if self.full else "storage_unavailable"
        self.retry_after = RETRY_AFTER_FULL_S if self.full else RETRY_AFTER_ERROR_S
        self.public_message = (
            "The server has no room to store images right now; nothing was stored. "
            "Please try again later."
            if self.full
            else "The server cannot store images right now; nothing was stored. "
            "Please try again shortly."
        )


class AtomicFileSystemStorage(FileSystemStorage):
    """FileSystemStorage whose saves are all-or-nothing (temporary name, fsync, link)."""

    def _save(self, name: str, content) -> str:
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        if self.directory_permissions_mode is not None:
            old_umask = os.umask(0o777 & ~self.directory_permissions_mode)
            try:
                os.makedirs(directory, self.directory_permissions_mode, exist_ok=True)
            finally:
                os.umask(old_umask)
        else:
            os.makedirs(directory, exist_ok=True)
        temp_path = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            _write_whole(temp_path, content)
            if self.file_permissions_mode is not None:
                os.chmod(temp_path, self.file_permissions_mode)
            while True:
                try:
                    _link_into_place(temp_path, full_path)
                    break
                except FileExistsError:  # never overwrite: take the next free name
                    name = self.get_available_name(name)
                    full_path = self.path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):  # linked, or never written
                os.unlink(temp_path)
        name = os.path.relpath(full_path, self.location)
        self._ensure_location_group_id(full_path)
        return str(name).replace("\\", "/")


def _write_whole(path: str, content) -> None:
    if hasattr(content, "temporary_file_path"):  # an upload Django already spooled to disk
        file_move_safe(content.temporary_file_path(), path, allow_overwrite=False)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as file:
        locks.lock(file, locks.LOCK_EX)
        for chunk in content.chunks():
            file.write(chunk if isinstance(chunk, bytes) else chunk.encode())
        file.flush()
        os.fsync(file.fileno())  # ENOSPC from delayed allocation surfaces here, not later


def _link_into_place(temp_path: str, full_path: str) -> None:
    """Give the complete file its name, failing with FileExistsError rather than replacing."""
    try:
        os.link(temp_path, full_path)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}:
            raise
        # A filesystem without hard links: rename, after checking the name is free.
        if os.path.lexists(full_path):
            raise FileExistsError(full_path) from err
        os.rename(temp_path, full_path)
