"""Request rates shared by every worker: counted in the database, one atomic statement each.

Django's cache framework was the obvious store, but a per-process cache (LocMem) counts per
worker (120/min became 240 with two workers), and a shared one is read and written with `get`
then `set` (what DRF's throttles do, and what DatabaseCache's `incr` does), which loses counts
when two workers count one client at once. Here a request is admitted by one statement,
INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING (SQLite 3.35+, PostgreSQL),
which reads the previous window's count itself: the count of admitted requests rises only while
it is under the limit, whatever process asks. A refused request reads the counts once more, to
say when to retry.

The window slides: the previous fixed window's count, weighted by how much of it still lies
within the last `duration` seconds, is added to the current one's (the usual approximation of
a sliding log, exact for a steady rate), so a client never gets twice the rate across a window
boundary.
"""

import random
import time
from dataclasses import dataclass

from django.apps import apps
from django.db import connection

CLEANUP_ONE_IN = 200  # requests; each cleanup drops windows older than the longest rate
LONGEST_WINDOW_S = 24 * 3600  # DRF's rates go up to a day


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait_s: float  # when refused: seconds until a request would be admitted


def admit(key: str, *, limit: int, duration: float, now: float | None = None) -> Decision:
    """Admit one request of `key` if fewer than `limit` were admitted in the last `duration`
    seconds (sliding), counting it. Raises django.db.DatabaseError when the database is
    unavailable."""
    rate_count = apps.get_model("uploads", "RateCount")  # not imported: settings read this early
    now = time.time() if now is None else now
    start = int(now // duration * duration)
    elapsed = (now - start) / duration
    table = connection.ops.quote_name(rate_count._meta.db_table)
    before, weight = start - int(duration), 1 - elapsed  # the previous window's share still in
    previous_hits = f"COALESCE((SELECT hits FROM {table} WHERE key = %s AND bucket = %s), 0)"
    with connection.cursor() as cursor:
        # One statement: a new window's row is inserted, or an existing one counted, only while
        # admitted + previous x weight stays under the limit; a row comes back when admitted.
        cursor.execute(
            f"INSERT INTO {table} (key, bucket, hits) SELECT %s, %s, 1 "  # noqa: S608
            f"WHERE {previous_hits} * %s < %s "
            f"ON CONFLICT (key, bucket) DO UPDATE SET hits = {table}.hits + 1 "
            f"WHERE {table}.hits + {previous_hits} * %s < %s RETURNING hits",
            [key, start, key, before, weight, limit, key, before, weight, limit],
        )
        row = cursor.fetchone()
        if row is None:  # refused (rare): the counts say how long to wait
            cursor.execute(
                f"SELECT bucket, hits FROM {table} WHERE key = %s AND bucket IN (%s, %s)",  # noqa: S608
                [key, before, start],
            )
            counts = dict(cursor.fetchall())
    if random.randrange(CLEANUP_ONE_IN) == 0:
        rate_count.objects.filter(bucket__lt=now - LONGEST_WINDOW_S).delete()
    if row is not None:
        return Decision(True, 0.0)
    current, previous = counts.get(start, 0), counts.get(before, 0)
    return Decision(False, _wait(limit, duration, elapsed, current, previous / max(1e-9, weight)))


def _wait(limit: int, duration: float, elapsed: float, current: int, previous: int) -> float:
    """Seconds until current + previous x (1 - elapsed) leaves room for one more request."""
    to_window_end = (1 - elapsed) * duration
    if current + 1 > limit or previous <= 0:
        return to_window_end
    needed = 1 - (limit - current - 1) / previous  # the elapsed share that makes room
    return max(0.0, min(to_window_end, (needed - elapsed) * duration))
