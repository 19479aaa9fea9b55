"""Liveness and readiness, for load balancers and orchestrators.

Liveness (/livez) says only that the process answers: it touches neither the database nor the
disk, so a database outage never gets healthy workers restarted. Readiness (/readyz, and
/healthz as before) says whether this worker can take an upload now: every model loaded and
compiled, the database reachable and writable, and the media storage writable with at least
settings.HEALTH_MEDIA_MIN_FREE_BYTES free. A load balancer probes readiness; a supervisor that
restarts processes probes liveness. The answers are public: the causes go to the log only.
"""

import contextlib
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from uploads import classifiers
from uploads.storage import TEMP_PREFIX

logger = logging.getLogger(__name__)


def check_liveness() -> dict[str, Any]:
    """The process answers requests (nothing else is checked)."""
    return {"alive": True}


def check_readiness() -> dict[str, Any]:
    """{'ready', 'status', 'models', 'database', 'media'}.

    status: 'ready'; 'starting' (models still loading); 'unavailable' (the database or the
    media storage fails now, which may pass); 'error' (a model is missing or failed to load:
    it will not become ready until an operator acts).
    """
    health = classifiers.get_health()
    database = check_database()
    media = check_media()
    ready = health["ready"] and database == "ok" and media == "ok"
    status = health["status"]
    if status != "error" and (database != "ok" or media != "ok"):
        status = "unavailable"
    return {**health, "ready": ready, "status": status, "database": database, "media": media}


def check_database() -> str:
    """'ok' when the database takes a write transaction, else 'error' or 'read-only'."""
    try:
        # On SQLite the transaction begins IMMEDIATE (settings.configure_sqlite): entering it
        # takes the write lock, which a read-only or unreachable file refuses.
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SHOW transaction_read_only")
                if cursor.fetchone()[0] == "on":
                    return "read-only"
            else:
                cursor.execute("SELECT 1")
    except DatabaseError as err:
        logger.error("Readiness: the database is unavailable: %s", err)
        return "error"
    return "ok"


def check_media() -> str:
    """'ok' when a file can be written under MEDIA_ROOT and enough space is left; else 'full'
    or 'error'."""
    root = Path(settings.MEDIA_ROOT)
    probe = root / f"{TEMP_PREFIX}readiness-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ready")
            os.fsync(fd)
        finally:
            os.close(fd)
        free = shutil.disk_usage(root).free
    except OSError as err:
        logger.error("Readiness: the media storage cannot be written: %s", err)
        return "full" if err.errno in {errno.ENOSPC, errno.EDQUOT} else "error"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if free < settings.HEALTH_MEDIA_MIN_FREE_BYTES:
        logger.error("Readiness: %d bytes free for media, below the minimum", free)
        return "full"
    return "ok"
