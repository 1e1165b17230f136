"""confide.cas.flight.SingleFlight: one load per key at a time, its outcome shared."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from confide.cas.flight import SingleFlight
from confide.errors import CollateralMissingError


class _CountingEvent(threading.Event):
    """Counts the callers waiting on it, so the test releases the load only once they wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self._count = threading.Lock()

    def wait(self, timeout: float | None = None) -> bool:
        with self._count:
            self.waiting += 1
        return super().wait(timeout)


def _count_waiters(flights: SingleFlight[str, int], key: str) -> _CountingEvent:
    counting = _CountingEvent()
    flights._flights[key].done = counting  # the running flight's event, before anyone waits
    return counting


def _until(predicate: object) -> None:
    deadline = time.monotonic() + 30
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_waiters_share_the_running_load_and_its_error() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow(value: int) -> int:
        calls.append(value)
        started.set()
        assert release.wait(10)
        return value

    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(flights.run, "k", lambda: slow(1))
        assert started.wait(10)
        counting = _count_waiters(flights, "k")
        waiters = [pool.submit(flights.run, "k", lambda: slow(2)) for _ in range(3)]
        _until(lambda: counting.waiting == 3)
        other = pool.submit(flights.run, "other", lambda: 7)  # another key does not wait
        assert other.result(10) == 7
        release.set()
        assert first.result(10) == 1 and [w.result(10) for w in waiters] == [1, 1, 1]
    assert calls == [1]
    assert flights.run("k", lambda: 3) == 3  # done: the next call loads again

    started.clear()
    release.clear()

    def failing() -> int:
        started.set()
        assert release.wait(10)
        raise CollateralMissingError("the service is down")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(flights.run, "e", failing)
        assert started.wait(10)
        counting = _count_waiters(flights, "e")
        waiter = pool.submit(flights.run, "e", lambda: 0)
        _until(lambda: counting.waiting == 1)
        release.set()
        with pytest.raises(CollateralMissingError, match="down"):
            first.result(10)
        with pytest.raises(CollateralMissingError, match="down") as info:
            waiter.result(10)
    assert info.value is not first.exception()  # each waiter gets its own copy
