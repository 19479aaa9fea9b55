"""Share one forward pass among concurrent requests: a small batcher for a serving process.

    batcher = Batcher(classifier.classify_arrays, max_batch=32, max_wait_s=0.002)
    result = batcher.submit(model_inputs)  # from any thread: this request's rows only

No thread of its own: the request threads take turns leading. A request that finds nothing
queued and nothing running runs at once, alone (a single client never waits). A request that
arrives while a batch runs queues; when the batch ends, the oldest queued request leads the
next one: it waits until `max_wait_s` after its own arrival for more requests (or until
`max_batch` rows are queued), then runs every queued request that fits, in arrival order, as
one call of `run` on their rows concatenated, and hands each request its own rows of the
answer. A request larger than `max_batch` rows runs alone. When a shared call raises, each of
its requests runs again alone, so one bad request fails only itself.

Model-generic: `run` takes an array [N, ...] and returns something with N rows (an array, a
tuple of arrays or a dataclass of arrays, cut by `take_rows`). No JAX here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

# Compiled batch sizes: a request of n images runs in the smallest bucket >= n (zero-padded),
# larger requests in chunks of the largest, so no new image count or size ever recompiles.
BATCH_BUCKETS = (1, 8, 32, 128)

R = TypeVar("R")

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the batcher reads the time and sleeps: real by default, fake in tests."""

    def now(self) -> float: ...

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        """Sleep up to `timeout` seconds or until `condition` is notified (lock held)."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        condition.wait(timeout)


@dataclasses.dataclass(frozen=True)
class BatchReport:
    """What one shared call carried: for metrics."""

    rows: int  # images in the call (before padding to a compiled bucket)
    requests: int
    waits_s: tuple[float, ...]  # per request: from its arrival to the call's start


def take_rows(result: Any, start: int, stop: int) -> Any:
    """Rows start:stop of an array, of each array in a tuple or list, or of each array field
    of a dataclass (other fields kept)."""
    if isinstance(result, np.ndarray):
        return result[start:stop]
    if isinstance(result, tuple | list):
        return type(result)(take_rows(part, start, stop) for part in result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        changes = {
            field.name: getattr(result, field.name)[start:stop]
            for field in dataclasses.fields(result)
            if isinstance(getattr(result, field.name), np.ndarray)
        }
        return dataclasses.replace(result, **changes)
    raise TypeError(f"Cannot take rows of a {type(result).__name__}")


def concat_rows(results: Sequence[Any]) -> Any:
    """The inverse of take_rows: results of consecutive row ranges joined into one."""
    first = results[0]
    if len(results) == 1:
        return first
    if isinstance(first, np.ndarray):
        return np.concatenate(results)
    if isinstance(first, tuple | list):
        return type(first)(concat_rows(parts) for parts in zip(*results, strict=True))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        changes = {
            field.name: np.concatenate([getattr(result, field.name) for result in results])
            for field in dataclasses.fields(first)
            if isinstance(getattr(first, field.name), np.ndarray)
        }
        return dataclasses.replace(first, **changes)
    raise TypeError(f"Cannot join rows of a {type(first).__name__}")


def bucket_chunks(rows: int, buckets: Sequence[int], min_fill: float = 0.75) -> list[int]:
    """Sizes of the calls that cover `rows` rows with little padding: as many full calls of
    the largest bucket that fits as possible, then the same for what is left; a remainder
    that fills at least `min_fill` of the next bucket up is one padded call, else calls of
    one row each (on a CPU a call's cost grows with its padded size: 2 rows padded to 8 cost
    about 5 single calls)."""
    buckets = sorted(buckets)
    sizes = []
    while rows:
        fitting = [b for b in buckets if b <= rows]
        largest = fitting[-1] if fitting else 0
        above = next((b for b in buckets if b > rows), None)
        if above is not None and rows >= min_fill * above:
            sizes.append(rows)  # padded up to `above` by the runner
            break
        if largest <= 1:
            sizes.extend([1] * rows)
            break
        sizes.append(largest)
        rows -= largest
    return sizes


def run_in_buckets(run: Callable[[np.ndarray], R], batch: np.ndarray, buckets: Sequence[int]) -> R:
    """`run(batch)` as calls of the sizes bucket_chunks picks, joined."""
    sizes = bucket_chunks(len(batch), buckets)
    if len(sizes) <= 1:
        return run(batch)
    starts = np.cumsum([0, *sizes])
    return concat_rows([run(batch[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)])


@dataclasses.dataclass(eq=False)
class _Request:
    inputs: np.ndarray
    arrived: float
    idle: bool  # nothing queued and nothing running when it came: run at once
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class Batcher(Generic[R]):
    """Runs `run` on the rows of concurrent `submit` calls together (see the module doc).

    max_batch: most rows per shared call (pick one of the compiled batch sizes); 0 or 1
        turns batching off: every submit calls `run` directly.
    max_wait_s: how long the leader of a batch waits for more requests after its own arrival
        (never when it arrived to an idle batcher); 0 still shares a call among the requests
        that queued while the previous one ran.
    on_batch: called with a BatchReport after each call of `run` (not under the lock).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], R],
        *,
        max_batch: int,
        max_wait_s: float,
        split: Callable[[R, int, int], R] = take_rows,
        on_batch: Callable[[BatchReport], None] | None = None,
        clock: Clock | None = None,
    ):
        if max_batch < 0 or max_wait_s < 0:
            raise ValueError(
                f"max_batch and max_wait_s must be >= 0, got {max_batch}, {max_wait_s}"
            )
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.split = split
        self.on_batch = on_batch
        self.clock = clock or MonotonicClock()
        self._condition = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._running = False

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def submit(self, inputs: np.ndarray) -> R:
        """This request's answer: `run(inputs)`, possibly computed together with others."""
        if not self.enabled:
            return self.run(inputs)
        with self._condition:
            request = _Request(inputs, self.clock.now(), idle=not self._queue and not self._running)
            self._queue.append(request)
            self._condition.notify_all()  # a leader waiting for more may now be full
            batch = None
            while not request.done:
                if not self._running and self._queue[0] is request:
                    try:
                        batch = self._take(request)
                    except BaseException:  # interrupted while waiting: let another lead
                        if request in self._queue:
                            self._queue.remove(request)
                        self._condition.notify_all()
                        raise
                    self._running = True
                    break
                self._condition.wait()
        if batch is not None:
            self._lead(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self, leader: _Request) -> list[_Request]:
        """Wait for the batch window (lock held), then remove and return the requests of the
        next call: the leader and those behind it that fit in max_batch rows."""
        deadline = leader.arrived + self.max_wait_s
        while True:
            taken, rows = self._fitting()
            full = rows >= self.max_batch or len(taken) < len(self._queue)
            remaining = deadline - self.clock.now()
            if leader.idle or full or remaining <= 0:
                for _ in taken:
                    self._queue.popleft()
                return taken
            self.clock.wait(self._condition, remaining)

    def _fitting(self) -> tuple[list[_Request], int]:
        taken, rows = [], 0
        for request in self._queue:
            if taken and rows + len(request.inputs) > self.max_batch:
                break
            taken.append(request)
            rows += len(request.inputs)
        return taken, rows

    def _lead(self, batch: list[_Request]) -> None:
        """Run one call for `batch`, deliver each request's rows, and pass the lead on."""
        started = self.clock.now()
        try:
            self._execute(batch)
        finally:
            with self._condition:
                for request in batch:
                    if not request.done:  # interrupted before delivery
                        request.error = RuntimeError("The batch was interrupted.")
                        request.done = True
                self._running = False
                self._condition.notify_all()
        if self.on_batch is not None:
            report = BatchReport(
                rows=sum(len(request.inputs) for request in batch),
                requests=len(batch),
                waits_s=tuple(max(0.0, started - request.arrived) for request in batch),
            )
            try:
                self.on_batch(report)
            except Exception:  # metrics must never fail an answer already delivered
                log.exception("on_batch failed")

    def _execute(self, batch: Sequence[_Request]) -> None:
        if len(batch) > 1:
            try:
                result = self.run(np.concatenate([request.inputs for request in batch]))
            except Exception:  # one request's rows may be the cause: run each alone below
                pass
            else:
                start = 0
                for request in batch:
                    stop = start + len(request.inputs)
                    self._deliver(request, lambda s=start, e=stop: self.split(result, s, e))
                    start = stop
                return
        for request in batch:
            self._deliver(request, lambda r=request: self.run(r.inputs))

    def _deliver(self, request: _Request, compute: Callable[[], R]) -> None:
        try:
            value = compute()
        except Exception as error:
            value, request.error = None, error
        with self._condition:
            request.result = value
            request.done = True
            self._condition.notify_all()
