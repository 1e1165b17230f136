"""confide.cas.fetch_cache.FetchCache: the memory, the failures kept for a grace period and the
one load per key that the KDS and RIM caches share (their own tests drive it through them)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cas_inproc import Clock
from confide.cas.fetch_cache import FetchCache
from confide.errors import CollateralMissingError

NOW = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Entry:
    value: int
    loaded_at: datetime

    def usable(self, at: datetime) -> bool:
        return self.loaded_at <= at < self.loaded_at + timedelta(hours=1)


def _cache(monotonic: Clock | None = None, max_entries: int = 4) -> FetchCache[str, _Entry]:
    return FetchCache(max_entries, _Entry.usable, grace=30.0, monotonic=monotonic or Clock(0.0))


def test_an_entry_is_kept_while_usable_then_loaded_again() -> None:
    cache, loads = _cache(), []

    def load(at: datetime) -> _Entry:
        loads.append(at)
        return _Entry(len(loads), at)

    assert cache.cached("k", NOW) is None
    assert cache.fetch("k", NOW, lambda: load(NOW)).value == 1
    assert cache.get("k", NOW + timedelta(minutes=59), lambda: load(NOW)).value == 1
    assert cache.cached("k", NOW - timedelta(seconds=1)) is None  # a clock set back misses
    later = NOW + timedelta(hours=1)
    assert cache.prefetch("k", later, lambda: load(later)) == _Entry(2, later)
    assert loads == [NOW, later] and len(cache) == 1
    cache.clear()
    assert cache.cached("k", later) is None and len(cache) == 0


def test_memory_is_bounded_least_recently_used_first() -> None:
    cache = _cache(max_entries=2)
    for key in ("a", "b"):
        cache.fetch(key, NOW, lambda: _Entry(0, NOW))
    assert cache.cached("a", NOW) is not None  # "b" is now the least recently used
    cache.fetch("c", NOW, lambda: _Entry(0, NOW))
    assert [k for k in "abc" if cache.cached(k, NOW) is not None] == ["a", "c"]


def test_a_failure_is_raised_again_by_get_for_the_grace_period_only() -> None:
    monotonic, calls = Clock(100.0), []
    cache = _cache(monotonic)

    def failing() -> _Entry:
        calls.append(1)
        raise CollateralMissingError("the service is down")

    first = cache.prefetch("k", NOW, failing)
    assert isinstance(first, CollateralMissingError) and calls == [1]
    monotonic.now += 29
    with pytest.raises(CollateralMissingError, match="down") as again:
        cache.get("k", NOW, failing)  # within the grace period: not loaded again
    assert calls == [1] and again.value is not first
    assert isinstance(cache.prefetch("k", NOW, failing), CollateralMissingError)  # a prefetch asks
    assert calls == [1, 1]
    monotonic.now += 31
    assert cache.get("k", NOW, lambda: _Entry(7, NOW)).value == 7  # past it: loaded again
    monotonic.now = 130.0  # within the grace of the last failure, had the success kept it
    later = NOW + timedelta(hours=2)
    assert cache.get("k", later, lambda: _Entry(8, later)).value == 8


def test_a_waiter_loads_again_when_the_shared_entry_is_not_usable_at_its_time() -> None:
    cache = _cache()
    started, release, loads = threading.Event(), threading.Event(), []

    def slow() -> _Entry:
        loads.append("first")
        started.set()
        assert release.wait(10)
        return _Entry(1, NOW)

    class Counting(threading.Event):
        waiting = 0

        def wait(self, timeout: float | None = None) -> bool:
            Counting.waiting += 1
            return super().wait(timeout)

    later = NOW + timedelta(hours=2)  # the first load's entry is not usable then

    def for_later() -> _Entry:
        loads.append("later")
        return _Entry(2, later)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(cache.fetch, "k", NOW, slow)
        assert started.wait(10)
        cache._flights._flights["k"].done = Counting()  # the running flight's event
        same = pool.submit(cache.fetch, "k", NOW + timedelta(minutes=1), lambda: _Entry(9, NOW))
        other = pool.submit(cache.fetch, "k", later, for_later)
        deadline = time.monotonic() + 30
        while Counting.waiting < 2:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        release.set()
        assert first.result(10).value == 1 and same.result(10).value == 1  # shared
        assert other.result(10) == _Entry(2, later)  # loaded again, for its own time
    assert loads == ["first", "later"]


def test_ask_counts_and_times_the_calls_of_the_source() -> None:
    cache = _cache()
    assert cache.ask(lambda: 5) == 5

    def down() -> int:
        raise CollateralMissingError("down")

    with pytest.raises(CollateralMissingError):
        cache.ask(down)
    snapshot = cache.stats.snapshot()
    assert (cache.fetches, snapshot.ok, snapshot.error) == (2, 1, 1)
