"""Interleaved timing of two variants, for the benchmarks that compare them in one run."""

from __future__ import annotations

import time
from collections.abc import Callable

BATCH = 20


def batch_time(fn: Callable[[], object]) -> float:
    """Seconds per call of ``fn``, over one batch of :data:`BATCH` calls."""
    start = time.perf_counter()
    for _ in range(BATCH):
        fn()
    return (time.perf_counter() - start) / BATCH


def interleaved(a: Callable[[], object], b: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Per-call seconds of ``a`` and ``b``, batches alternating for ``seconds`` (at least 10 each).

    Each returns the 10th percentile of its batch times: the machine is shared, and load
    spikes only ever make a batch slower, so a low percentile is the fair estimate for both.
    """
    times_a: list[float] = []
    times_b: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times_a) < 10:
        times_a.append(batch_time(a))
        times_b.append(batch_time(b))
    times_a.sort()
    times_b.sort()
    k = len(times_a) // 10
    return times_a[k], times_b[k]
