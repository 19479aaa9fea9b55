"""research.serving.batching: concurrent requests share a forward pass and each gets its own
answer."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from research.serving.batching import Batcher, BatchReport, bucket_chunks, run_in_buckets, take_rows
from research.serving.classifier import Classifier


class FakeClock:
    """A clock that only moves when the batcher sleeps on it: sleeping jumps to the end."""

    def __init__(self):
        self.time = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        self.sleeps.append(timeout)
        self.time += timeout


class GatedRunner:
    """A `run` that records each call's rows and can be held until released."""

    def __init__(self, fail_on: float | None = None):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.fail_on is not None and np.any(batch == self.fail_on):
            raise ValueError("poisoned input")
        return batch * 2.0


def submit_while_running(batcher: Batcher, runner: GatedRunner, inputs: list[np.ndarray]):
    """Hold a first request in `run`, queue `inputs` behind it, then let everything run.
    Returns (first result, [result or exception per input])."""
    runner.gate.clear()
    results: dict[int, object] = {}

    def call(index: int, value: np.ndarray) -> None:
        try:
            results[index] = batcher.submit(value)
        except Exception as error:
            results[index] = error

    first = threading.Thread(target=call, args=(-1, np.full((1, 2), -1.0)))
    first.start()
    assert runner.entered.wait(timeout=30)
    threads = [threading.Thread(target=call, args=(i, v)) for i, v in enumerate(inputs)]
    for thread in threads:
        thread.start()
    while len(batcher._queue) < len(inputs):  # every request queued behind the running one
        threading.Event().wait(0.001)
    runner.gate.set()
    for thread in [first, *threads]:
        thread.join(timeout=30)
    return results[-1], [results[i] for i in range(len(inputs))]


def test_queued_requests_share_one_call_and_get_their_own_rows():
    """Requests queued while a call runs go together in the next call, each with its rows."""
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=32, max_wait_s=0.0)
    inputs = [np.full((n, 2), float(i)) for i, n in enumerate([1, 3, 2, 1])]
    first, results = submit_while_running(batcher, runner, inputs)
    np.testing.assert_array_equal(first, np.full((1, 2), -2.0))
    for value, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, value * 2.0)
    assert runner.calls == [1, 7]


def test_a_batch_never_exceeds_max_batch_rows():
    """Queued requests beyond max_batch rows wait for the following call."""
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0)
    inputs = [np.full((n, 2), float(i)) for i, n in enumerate([2, 1, 2, 3, 1])]
    _, results = submit_while_running(batcher, runner, inputs)
    for value, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, value * 2.0)
    assert runner.calls[0] == 1 and all(rows <= 4 for rows in runner.calls)
    assert sum(runner.calls) == 1 + 9


def test_a_request_larger_than_max_batch_runs_alone():
    """A request of more rows than max_batch is one call of its own, not refused."""
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0)
    result = batcher.submit(np.ones((6, 2)))
    np.testing.assert_array_equal(result, np.full((6, 2), 2.0))
    assert runner.calls == [6]


def test_an_exception_in_one_request_raises_only_there():
    """A shared call that fails is retried per request: only the bad request raises."""
    runner = GatedRunner(fail_on=13.0)
    batcher = Batcher(runner, max_batch=32, max_wait_s=0.0)
    inputs = [np.full((1, 2), 1.0), np.full((2, 2), 13.0), np.full((1, 2), 3.0)]
    _, results = submit_while_running(batcher, runner, inputs)
    np.testing.assert_array_equal(results[0], inputs[0] * 2.0)
    assert isinstance(results[1], ValueError) and "poisoned" in str(results[1])
    np.testing.assert_array_equal(results[2], inputs[2] * 2.0)
    # the batcher keeps serving after the failure
    np.testing.assert_array_equal(batcher.submit(np.ones((1, 2))), np.full((1, 2), 2.0))


def test_a_request_to_an_idle_batcher_runs_at_once_without_waiting():
    """Nothing queued and nothing running: the request never sleeps, whatever the wait."""
    clock = FakeClock()
    reports: list[BatchReport] = []
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=32, max_wait_s=10.0, clock=clock, on_batch=reports.append)
    np.testing.assert_array_equal(batcher.submit(np.ones((1, 2))), np.full((1, 2), 2.0))
    assert clock.sleeps == []
    assert reports == [BatchReport(rows=1, requests=1, waits_s=(0.0,))]


def test_a_leader_waits_at_most_the_wait_bound_for_more_requests():
    """A queued leader that finds its batch not full sleeps until max_wait_s after its
    arrival, and no longer."""
    clock = FakeClock()
    reports: list[BatchReport] = []
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=32, max_wait_s=0.005, clock=clock, on_batch=reports.append)
    _, results = submit_while_running(batcher, runner, [np.ones((1, 2))])
    np.testing.assert_array_equal(results[0], np.full((1, 2), 2.0))
    assert clock.sleeps == [pytest.approx(0.005)]
    assert reports[-1].waits_s == (pytest.approx(0.005),)


def test_a_full_batch_runs_without_waiting():
    """Once max_batch rows are queued, the leader does not wait for the window to end."""
    clock = FakeClock()
    runner = GatedRunner()
    batcher = Batcher(runner, max_batch=4, max_wait_s=10.0, clock=clock)
    _, results = submit_while_running(batcher, runner, [np.ones((2, 2)), np.ones((2, 2))])
    assert clock.sleeps == []
    assert runner.calls == [1, 4]


def test_max_batch_zero_calls_run_directly():
    """max_batch 0 turns batching off: each submit is its own call."""
    calls = []
    batcher = Batcher(lambda x: calls.append(len(x)) or x, max_batch=0, max_wait_s=0.01)
    batcher.submit(np.ones((3, 2)))
    assert not batcher.enabled and calls == [3]


def test_take_rows_cuts_every_array_field_of_a_dataclass(tiny_model_dir: Path):
    """take_rows on a Classification keeps rows start:stop of probs, scores and flags."""
    classifier = Classifier.load(tiny_model_dir)
    batch = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    full = classifier.classify_arrays(batch)
    part = take_rows(full, 1, 3)
    np.testing.assert_array_equal(part.probs, full.probs[1:3])
    np.testing.assert_array_equal(part.scores, full.scores[1:3])
    np.testing.assert_array_equal(part.unknown, full.unknown[1:3])


def test_concurrent_classifications_equal_unbatched_ones(tiny_model_dir: Path):
    """Many threads submitting to one classifier's batcher each get what classify_arrays
    gives their images alone, within 1e-6, and some calls were shared."""
    classifier = Classifier.load(tiny_model_dir)
    classifier.warmup()
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in [1, 2, 1, 3] * 4]
    expected = [classifier.classify_arrays(batch) for batch in inputs]
    reports: list[BatchReport] = []
    batcher = Batcher(
        classifier.classify_arrays, max_batch=8, max_wait_s=0.005, on_batch=reports.append
    )
    results: list = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def call(index: int) -> None:
        start.wait()
        results[index] = batcher.submit(inputs[index])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for want, got in zip(expected, results, strict=True):
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=1e-6)
        np.testing.assert_array_equal(got.unknown, want.unknown)
    assert sum(report.rows for report in reports) == sum(len(batch) for batch in inputs)
    assert all(report.rows <= 8 or report.requests == 1 for report in reports)
    assert any(report.requests > 1 for report in reports)


@pytest.mark.parametrize(
    ("rows", "sizes"),
    [(1, [1]), (3, [1, 1, 1]), (6, [6]), (8, [8]), (9, [8, 1]), (14, [8, 6]), (40, [32, 8])],
)
def test_bucket_chunks_pad_only_a_nearly_full_bucket(rows, sizes):
    """Rows go in full buckets; a remainder is padded only when it nearly fills one."""
    assert bucket_chunks(rows, (1, 8, 32, 128)) == sizes


def test_run_in_buckets_equals_one_call(tiny_model_dir: Path):
    """Classifying 13 images as calls of 8, 1, 1, 1, 1, 1 gives what one call gives."""
    classifier = Classifier.load(tiny_model_dir)
    batch = np.random.default_rng(2).integers(0, 256, (13, 32, 32, 3), dtype=np.uint8)
    joined = run_in_buckets(classifier.classify_arrays, batch, (1, 8, 32, 128))
    whole = classifier.classify_arrays(batch)
    np.testing.assert_allclose(joined.probs, whole.probs, atol=1e-6)
    np.testing.assert_allclose(joined.scores, whole.scores, atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(joined.unknown, whole.unknown)
