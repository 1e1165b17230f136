"""Counts and durations of the CAS's collateral fetches, for ``/metrics`` (``confide_cas_
collateral_fetches_total{source, outcome}`` and ``confide_cas_collateral_fetch_seconds{source}``,
docs/cas.md "Metrics").

One :class:`FetchStats` per source (``pcs``: :mod:`confide.cas.pcs`, ``kds``:
:mod:`confide.cas.kds`, ``ocsp``: :mod:`confide.cas.revocation`, ``rim``: :mod:`confide.cas.rims`),
updated by the worker threads that fetch and read at scrape time. A fetch is one call of the
source (a platform's DCAP collateral set, a VCEK with its chain and CRL, one OCSP response, one
NVIDIA RIM); its outcome is ``ok`` when the
source answered, ``error`` when it raised (unreachable, an HTTP error, a malformed answer).
Whether an answer then verifies is the attestation's outcome, not the fetch's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["BUCKETS", "FetchSnapshot", "FetchStats"]

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the duration histogram's buckets; ``+Inf`` is added."""


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    ok: int
    error: int
    buckets: tuple[int, ...]
    """Cumulative counts per :data:`BUCKETS` bound, then ``+Inf`` (= ``ok + error``)."""
    seconds: float


class FetchStats:
    """Thread-safe counters of one source's fetches (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._ok = 0
        self._error = 0
        self._bins = [0] * (len(BUCKETS) + 1)
        self._seconds = 0.0

    def record(self, ok: bool, seconds: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        with self._lock:
            if ok:
                self._ok += 1
            else:
                self._error += 1
            self._bins[index] += 1
            self._seconds += seconds

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Record the block as one fetch: ``error`` if it raises (the exception propagates)."""
        start = self.clock()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.record(ok, max(0.0, self.clock() - start))

    def snapshot(self) -> FetchSnapshot:
        with self._lock:
            bins, ok, error, seconds = list(self._bins), self._ok, self._error, self._seconds
        cumulative, total = [], 0
        for count in bins:
            total += count
            cumulative.append(total)
        return FetchSnapshot(ok, error, tuple(cumulative), seconds)
