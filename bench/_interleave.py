"""Interleaved timing of two variants, for the benchmarks that compare them in one run: the
timing itself, their command-line options, the best of several rounds, their report, and the
CAS's per-attestation path with the collateral warm in memory (what the collateral benchmarks
measure)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confide.cas.verifier import PlatformVerifier
    from confide.verify.result import Platform

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


def ab_options(doc: str | None) -> argparse.Namespace:
    """The options of an A/B benchmark (``doc``: its module docstring, for ``--help``):
    ``--seconds`` per round, ``--rounds``, ``--json``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (best counts)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap.parse_args()


def best_interleaved(
    a: Callable[[], object], b: Callable[[], object], args: argparse.Namespace
) -> tuple[float, float]:
    """:func:`interleaved` for ``args.rounds`` rounds of ``args.seconds``: the lowest per-call
    seconds of each variant over the rounds."""
    best = (float("inf"), float("inf"))
    for _ in range(args.rounds):
        got = interleaved(a, b, args.seconds)
        best = (min(best[0], got[0]), min(best[1], got[1]))
    return best


def per_second(times: tuple[float, float], a: str, b: str) -> dict[str, float]:
    """``<a>_per_s``, ``<b>_per_s`` and ``<b>_over_<a>`` (the ratio of the per-call times) of
    the per-call seconds ``times`` of ``a`` and ``b``."""
    t_a, t_b = times
    return {
        f"{a}_per_s": round(1 / t_a, 1),
        f"{b}_per_s": round(1 / t_b, 1),
        f"{b}_over_{a}": round(t_b / t_a, 3),
    }


def print_result(result: dict[str, Any], args: argparse.Namespace, lines: tuple[str, ...]) -> None:
    """``result`` as one JSON object (``--json``), else each of ``lines`` formatted with it."""
    if args.json:
        print(json.dumps(result))
    else:
        for line in lines:
            print(line.format(**result))


def warm_attestation(
    verifier: PlatformVerifier,
    platform: Platform,
    evidence: bytes,
    aux: dict[str, bytes],
    at: datetime,
    what: str,
) -> Callable[[], object]:
    """What the CAS does per attestation when the collateral of ``evidence`` is in memory:
    ``collateral_job`` (which must find it all: nothing to prefetch, no thread hand-off; else
    ``AssertionError``: ``what`` is not cached), then ``verify`` with what the job found."""

    def attest() -> object:
        job = verifier.collateral_job(platform, evidence, aux, at=at)
        if job is None or job.fetch is not None:
            raise AssertionError(f"{what} is not cached")
        return verifier.verify(platform, evidence, aux, at=at, prefetched=job.found)

    return attest
