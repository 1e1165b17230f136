"""Per-client token buckets for expensive endpoints (the CAS's, the ledger servers'), in bounded memory.

A client is its IP address, an IPv6 client its /64 (:func:`client_key`: one subscriber's
network usually gets a whole /64, so counting single IPv6 addresses would let one host take
2^64 of them). Each :class:`RateLimiter` holds one token bucket per client: ``rate`` tokens a
second up to ``burst``, one token per request; a request that finds less than one token is
refused (``429 Too Many Requests``, RFC 6585 §4, with ``Retry-After`` in seconds, RFC 9110
§10.2.3) and takes nothing. The buckets are an LRU of at most ``max_clients`` entries: a
flood of source addresses evicts the least recently seen clients (counted in
:attr:`RateLimiter.evicted`) instead of growing memory; an evicted client comes back with a
full bucket, so an address flood can give others at most one more burst each.

Only the event loop's thread calls :meth:`RateLimiter.take` (no lock); ``/metrics`` reads the
counters from another thread (plain ints).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from confide.errors import UsageError

__all__ = [
    "ATTEST_RATE",
    "MAX_CLIENTS",
    "REFUSAL_LOG_RATE",
    "WRITE_RATE",
    "Rate",
    "RateLimiter",
    "RefusalLog",
    "client_key",
    "parse_rate",
    "retry_after",
]

# Buckets kept per limiter: ~150 bytes each (key, list, LRU links), so ~10 MiB at most.
MAX_CLIENTS = 65536

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def client_key(host: str) -> str:
    """The client an address belongs to: an IPv4 address itself; an IPv6 address's /64 (as
    ``"2001:db8:1:2::/64"``), an IPv4-mapped one (``::ffff:a.b.c.d``, from a dual-stack socket)
    as its IPv4 address; anything unparsable as itself."""
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return host
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + b"\x00" * 8) + "/64"


class Rate(NamedTuple):
    per_second: float
    burst: float


# The defaults of `confide cas serve`. Nonces and attestations (two requests per attestation):
# 100 attestations a second per client, 200 at once: a fleet of services starting together
# behind one address passes, while one client takes at most a seventh of a CAS core's ~700
# attestations a second (docs/performance.md). Policy submissions and updates, board approvals
# and volume tags (signature checks, key generation, a durable write each): 10 a second, 20 at
# once, more than a deployment pipeline applies. Bursts are twice the rate (parse_rate).
ATTEST_RATE = Rate(200.0, 400.0)
WRITE_RATE = Rate(10.0, 20.0)


def parse_rate(rate: str, burst: str | None, option: str) -> Rate | None:
    """``--OPTION-rate`` (requests per second per client; 0: off) and ``--OPTION-burst`` (the
    bucket's size; default twice the rate, at least 1)."""
    try:
        per_second = float(rate)
        size = float(burst) if burst is not None else max(1.0, 2 * per_second)
    except ValueError:
        raise UsageError(
            f"--{option}-rate/--{option}-burst: got {rate!r}/{burst!r}, expected numbers"
        ) from None
    if not (math.isfinite(per_second) and math.isfinite(size)) or per_second < 0:
        raise UsageError(f"--{option}-rate: got {rate!r}, expected a rate >= 0 (0: off)")
    if per_second == 0:
        return None
    if size < 1:
        raise UsageError(f"--{option}-burst: got {burst!r}, expected at least 1")
    return Rate(per_second, size)


class RateLimiter:
    """Token buckets per client key, at most ``max_clients`` of them (LRU). ``clock``: seconds,
    monotonic (tests pass their own)."""

    def __init__(
        self, rate: Rate, *, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients: got {max_clients}, expected at least 1")
        self.rate, self.burst = rate.per_second, rate.burst
        self.max_clients = max_clients
        self.clock = clock
        self.limited = 0  # requests refused
        self.evicted = 0  # buckets dropped to stay within max_clients
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, when]

    def __len__(self) -> int:
        return len(self._buckets)

    def waiting(self, key: str) -> float:
        """The seconds until ``key``'s bucket has a token (0.0: it has one, or ``key`` has no
        bucket yet), taking nothing: for a caller that takes a token only on some outcomes (a
        wrong metrics token, :mod:`confide.httpserve.metrics_listener`)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + (self.clock() - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket: 0.0 when there was one, else the seconds until
        there will be (the request is refused and takes nothing)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
                self.evicted += 1
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        self._buckets.move_to_end(key)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        self.limited += 1
        return (1.0 - tokens) / self.rate


def retry_after(wait: float) -> str:
    """``Retry-After`` delay-seconds (RFC 9110 §10.2.3: a whole number) for a wait: rounded up."""
    return str(max(1, math.ceil(wait)))


REFUSAL_LOG_RATE = Rate(5.0, 10.0)
"""Refusal lines a second a :class:`RefusalLog` writes (a burst of twice that)."""


class RefusalLog:
    """Refusals as JSON lines (``{"event": "refused", "reason": ..., "client": ..., ...}``) on
    the logger ``logger``, at most :data:`REFUSAL_LOG_RATE` a second: a flood of refusals does
    not flood the log; the next line logged says how many were left out (``suppressed``), and
    the caller's counters count them all. ``clock``: monotonic seconds (tests pass their own).
    The ledger's servers' refusals (docs/ledger.md "Metrics and refusals") and the refused
    scrapes of ``/metrics`` (:mod:`confide.httpserve.metrics_listener`)."""

    def __init__(
        self,
        rate: Rate = REFUSAL_LOG_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: str = "confide.ledger",
    ) -> None:
        self._bucket = RateLimiter(rate, max_clients=1, clock=clock)
        self._log = logging.getLogger(logger)
        self.suppressed = 0  # refusals not logged since the last line

    def log(self, reason: str, client: str, **fields: Any) -> None:
        if self._bucket.take(""):
            self.suppressed += 1
            return
        line: dict[str, Any] = {"event": "refused", "reason": reason, "client": client, **fields}
        if self.suppressed:
            line["suppressed"] = self.suppressed
            self.suppressed = 0
        self._log.warning(json.dumps(line, sort_keys=True))
