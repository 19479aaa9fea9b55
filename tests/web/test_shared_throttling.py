"""Throttling shared by every worker: the rate is counted in the database atomically, so
120/min holds however many workers (processes or threads, each with its own connection) count
one client at once; the window slides; a database outage falls back to per-process counting."""

import threading

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from django.urls import reverse

from classifier_site.middleware import ClientRateThrottle
from tests.web.conftest import database_unreachable
from uploads import throttling
from uploads.models import RateCount

RATE, REQUESTS = 120, 300
MID_WINDOW = 1_800_000_030.0  # 30 s into a minute: no boundary during the test


def _throttle(rate: str = f"{RATE}/min", now: float = MID_WINDOW) -> ClientRateThrottle:
    throttle = ClientRateThrottle()
    throttle.rate = rate
    throttle.num_requests, throttle.duration = throttle.parse_rate(rate)
    throttle.timer = lambda: now
    return throttle


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("workers", [2, 4])
def test_the_rate_holds_within_5_percent_across_concurrent_workers(workers):
    """300 rapid requests of one client spread over 2 or 4 concurrent workers, each on its own
    database connection: 120 admitted (within 5%), never one per worker's share."""
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.7")
    admitted = []
    start = threading.Barrier(workers)

    def work(count: int) -> None:
        start.wait()
        try:
            mine = sum(_throttle().allow_request(request, None) for _ in range(count))
            admitted.append(mine)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=work, args=(REQUESTS // workers,)) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(admitted) == workers
    assert abs(sum(admitted) - RATE) <= RATE * 0.05
    assert sum(admitted) <= RATE  # the count never overshoots: admission is one statement


@pytest.mark.django_db
def test_the_window_slides_across_its_boundary():
    """A client that used its whole rate just before a minute ends is not given a fresh rate
    as it begins (a fixed window would admit 120 more at once); room comes back as the old
    window slides out."""
    start = 1_800_000_000  # a minute boundary (divisible by 60)
    for _ in range(RATE):
        assert throttling.admit("c", limit=RATE, duration=60, now=start - 1).allowed
    refused = throttling.admit("c", limit=RATE, duration=60, now=start)
    assert not refused.allowed and refused.wait_s > 0
    early = [throttling.admit("c", limit=RATE, duration=60, now=start + 3) for _ in range(RATE)]
    assert sum(d.allowed for d in early) == 6  # 5% of the window gone: 5% of the rate back
    later = [throttling.admit("c", limit=RATE, duration=60, now=start + 30) for _ in range(RATE)]
    assert sum(d.allowed for d in later) == 60 - 6


@pytest.mark.django_db
def test_refused_requests_are_not_counted():
    """Only admitted requests count: a client hammering past its rate is not locked out for
    longer than the rate says."""
    for _ in range(3 * RATE):
        throttling.admit("h", limit=RATE, duration=60, now=MID_WINDOW)
    assert RateCount.objects.get(key="h").hits == RATE


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_falls_back_to_counting_per_process(upload_file):
    """With the database unreachable the throttle still decides (per process), so the
    endpoint that stores nothing keeps answering."""
    client = Client(raise_request_exception=False)
    with database_unreachable():
        response = client.post(reverse("uploads:api-classify"), {"image": upload_file()})
    assert response.status_code == 200
