"""``cas serve --opaque-refusals --refusal-delay SECONDS`` (docs/cas.md "Opaque refusals"): the
answer to an opaque refusal is sent no earlier than a fixed time after its request arrived, so
that how long the CAS took to refuse (one head lookup for an unknown policy, loading the policy
for an unknown service, the appraisal for a mismatch, the write transaction's spread) does not
show in when the answer comes.

The time is the event loop's monotonic clock (``loop.time()``, the clock asyncio's timers run
on), read once the request's body was read (its arrival: what the CAS decides from starts
there), and the wait is an ``asyncio.sleep`` on the loop until that arrival plus the delay: no
thread and no loop iteration is held, only the connection (and, for a volume tag report, its
small body). A refusal that took longer than the delay to decide (an overloaded CAS) is answered
at once and counted as ``missed``: its time then shows again
(``confide_opaque_refusals_total{route, deadline}`` in ``/metrics``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client.core import CounterMetricFamily

from confide.errors import UsageError

__all__ = [
    "ARRIVED",
    "DEFAULT_REFUSAL_DELAY",
    "MAX_REFUSAL_DELAY",
    "ROUTES",
    "RefusalDelay",
    "RefusalDelayCollector",
    "check_refusal_delay",
]

DEFAULT_REFUSAL_DELAY = 0.05
"""Seconds (docs/cas.md "Opaque refusals", docs/performance.md "Refusal times by cause"): above
the refusal paths over HTTPS, the group commit's durable write included; the slowest refusal
measured on 2 vCPUs with SQLite took 9 ms idle, 34 ms under 100 attestations a second and 31 ms
with the machine saturated."""

MAX_REFUSAL_DELAY = 10.0
"""The longest delay accepted: each waiting refusal holds its connection (a per-client
connection limit of 128 at 10 s allows 12.8 refusals a second to one address)."""

ARRIVED = "confide.arrived"
"""The ASGI scope key of the request's arrival (``RefusalDelay.now()`` once its body was read)."""

ROUTES = ("/v1/attest", "/v1/volumes/tag")
"""The routes whose refusals are made opaque (the metric's ``route`` label)."""


def check_refusal_delay(seconds: float) -> float:
    """``seconds`` if it is a delay the CAS takes (0 to :data:`MAX_REFUSAL_DELAY`), else a
    :class:`UsageError` naming the option."""
    if not 0.0 <= seconds <= MAX_REFUSAL_DELAY:  # also refuses NaN
        raise UsageError(f"--refusal-delay must be from 0 to {MAX_REFUSAL_DELAY:g} seconds, got {seconds!r}")
    return seconds


class RefusalDelay:
    """The wait before an opaque refusal's answer, and how many answers met their deadline.

    ``clock`` and ``sleep`` are the event loop's (``loop.time`` of the running loop,
    :func:`asyncio.sleep`) unless injected (tests). Counted only from the event loop's thread
    (no lock); a scrape copies the table (atomic under the GIL)."""

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.seconds = check_refusal_delay(seconds)
        self._clock = clock
        self._sleep = sleep
        self.counts: dict[tuple[str, str], int] = {}

    def now(self) -> float:
        """The arrival time to give :meth:`wait`: the running event loop's monotonic clock."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    async def wait(self, arrived: float, route: str) -> None:
        """Return no earlier than ``arrived`` plus the delay; at once (counted ``missed``) when
        that time has passed already."""
        remaining = arrived + self.seconds - self.now()
        if remaining > 0:
            self._count(route, "met")
            await self._sleep(remaining)
        else:
            self._count(route, "missed")

    def _count(self, route: str, deadline: str) -> None:
        key = (route if route in ROUTES else "other", deadline)
        self.counts[key] = self.counts.get(key, 0) + 1


class RefusalDelayCollector:
    """``confide_opaque_refusals_total{route, deadline}``: the opaque refusals answered after
    waiting for their deadline (``met``) or at once because it had passed (``missed``)."""

    def __init__(self, delay: RefusalDelay) -> None:
        self.delay = delay

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "confide_opaque_refusals",
            "Opaque refusals by whether their answer waited for the --refusal-delay deadline (met)"
            " or was sent at once because the deadline had passed (missed)",
            labels=("route", "deadline"),
        )
        counts = dict(self.delay.counts)
        for route in ROUTES:
            for deadline in ("met", "missed"):
                family.add_metric([route, deadline], float(counts.get((route, deadline), 0)))
        for (route, deadline), value in sorted(counts.items()):
            if route not in ROUTES:
                family.add_metric([route, deadline], float(value))
        yield family
