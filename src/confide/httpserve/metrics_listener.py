"""``/metrics`` off the public API: a listener of its own, and a bearer token (``--metrics-listen``,
``--metrics-token-file`` of ``confide cas serve``, ``confide ledger serve`` and ``confide ledger
witness serve``; docs/cas.md "Metrics", docs/ledger.md "Metrics and refusals").

:class:`MetricsListenerApp` is the bare ASGI application of the metrics listener, served by
:func:`~confide.httpserve.server.plain_server` (plain HTTP/1.1, on the main server's event loop,
connections and request heads bounded by an :class:`~confide.httpserve.limits.HttpLimits` of its
own, :func:`listener_limits`): ``GET`` and ``HEAD`` of ``/metrics`` (a query string ignored), any
other path an empty ``404``, any other method ``405`` with ``Allow: GET, HEAD`` (RFC 9110
§15.5.6), a request with content ``413`` and the connection closed (nothing reads a body there).
It has no other route: nothing of the API can be reached through it.

:class:`MetricsAuth` is the token of ``--metrics-token-file`` (:func:`read_metrics_token`),
required on whichever listener serves ``/metrics``: ``Authorization: Bearer <token>`` (RFC 6750
§2.1), compared in constant time (:func:`hmac.compare_digest` of SHA-256 digests); absent or
wrong, ``401`` with ``WWW-Authenticate: Bearer ...`` (RFC 6750 §3), counted
(``confide_metrics_unauthorized_total{reason="missing"|"wrong"}``) and logged as a
rate-limited ``refused`` line (:class:`~confide.httpserve.ratelimit.RefusalLog`) naming the
client's address, never what it sent. The token is in no log line, exception or metric. Each
``401`` takes a token from the client's bucket of failures (:data:`FAILURE_RATE`, a
:class:`~confide.httpserve.ratelimit.RateLimiter` keyed as the other limiters key clients,
bounded as they are): a client whose bucket is empty gets ``429`` with ``Retry-After`` without
its token being checked (``reason="limited"``), so nothing guesses tokens faster than that.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from confide.errors import UsageError
from confide.fsutil import read_small_file
from confide.httpserve.limits import PUBLIC_MAX_HEAD, HttpLimits
from confide.httpserve.ratelimit import MAX_CLIENTS, Rate, RateLimiter, RefusalLog, client_key, retry_after

__all__ = [
    "FAILURE_RATE",
    "MAX_TOKEN_FILE",
    "METRICS_PATH",
    "MIN_TOKEN",
    "MetricsAuth",
    "MetricsListenerApp",
    "limits_refused",
    "listener_limits",
    "read_metrics_token",
]

METRICS_PATH = "/metrics"
MIN_TOKEN = 16
"""The shortest token accepted (bytes): a guessable one would be no access control."""
MAX_TOKEN_FILE = 4096
FAILURE_RATE = Rate(5.0, 20.0)
"""Refused scrapes (``401``: no token, or a wrong one) a client may make a second, and at once,
before its scrapes get ``429`` without the token being checked: a scraper's typo shows in 20
refusals, a guesser gets 5 tries a second."""

Metric = CounterMetricFamily | GaugeMetricFamily
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_NO_STORE = (b"cache-control", b"no-store")
_ALLOW = b"GET, HEAD"
_NOSNIFF = b"nosniff"
_TEXT = b"text/plain; charset=utf-8"


def read_metrics_token(path: Path, option: str = "--metrics-token-file") -> bytes:
    """The bearer token in ``path`` (read by :func:`~confide.fsutil.read_small_file`, at most
    :data:`MAX_TOKEN_FILE` bytes; one trailing newline stripped): at least :data:`MIN_TOKEN`
    bytes, each printable ASCII other than a space (``0x21``-``0x7e``: what an
    ``Authorization`` header carries as it is). A :class:`UsageError` otherwise, naming the
    file and what is wrong, never the file's content."""
    data = read_small_file(path, MAX_TOKEN_FILE, option)
    if data.endswith(b"\n"):
        data = data[:-1]
    where = f"{option} {str(path)[:200]!r}"
    if not data:
        raise UsageError(f"{where}: the token is empty")
    if len(data) < MIN_TOKEN:
        raise UsageError(f"{where}: the token has {len(data)} bytes, expected at least {MIN_TOKEN}")
    if any(b < 0x21 or b > 0x7E for b in data):
        raise UsageError(
            f"{where}: the token has a byte that is not printable ASCII (0x21-0x7e: no space, no"
            " control character, no second line)"
        )
    return data


class MetricsAuth:
    """The bearer token ``/metrics`` requires (module docstring); ``refusals``: where a refused
    scrape is logged (the server's :class:`~confide.httpserve.ratelimit.RefusalLog`);
    ``failures``: each client's bucket of refused scrapes (:data:`FAILURE_RATE`, at most
    ``max_clients`` clients, ``clock`` monotonic seconds). Counts and buckets change on the
    event loop's thread only."""

    def __init__(
        self,
        token: bytes,
        refusals: RefusalLog,
        *,
        failures: Rate = FAILURE_RATE,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(token) < MIN_TOKEN:
            raise ValueError("the metrics token is too short")
        self._digest = hashlib.sha256(token).digest()
        self.refusals = refusals
        self.failures = RateLimiter(failures, max_clients=max_clients, clock=clock)
        self.refused = {"missing": 0, "wrong": 0, "limited": 0}

    def __repr__(self) -> str:
        return "MetricsAuth(<token>)"  # never the token

    def refusal(self, scope: Any, listener: str) -> Response | None:
        """``None`` when ``scope`` carries the token; else the ``401`` to send, or the ``429``
        when the client has used up its refused scrapes (counted and logged, ``listener``
        naming where)."""
        client = scope.get("client")
        address = client_key(str(client[0])) if client else ""
        wait = self.failures.waiting(address)
        if wait > 0.0:  # the token is not even looked at
            self.refused["limited"] += 1
            self.refusals.log("metrics-unauthorized", address, listener=listener, cause="limited")
            headers = [(b"retry-after", retry_after(wait).encode()), _NO_STORE, (b"content-type", _TEXT)]
            return 429, headers, b"too many refused requests\n"
        given: list[bytes] = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
        reason = "missing"
        if len(given) > 1:
            reason = "wrong"  # two Authorization headers: refused, as a wrong token
        elif given:
            scheme, _, credentials = given[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                # compare_digest of the digests: the time depends neither on where the first
                # difference is nor on the length of what was sent
                sent = hashlib.sha256(credentials.strip(b" ")).digest()
                if hmac.compare_digest(sent, self._digest):
                    return None
                reason = "wrong"
        self.refused[reason] += 1
        self.failures.take(address)
        self.refusals.log("metrics-unauthorized", address, listener=listener, cause=reason)
        challenge = b'Bearer realm="metrics"'
        if reason == "wrong":
            challenge += b', error="invalid_token"'
        headers = [(b"www-authenticate", challenge), _NO_STORE, (b"content-type", _TEXT)]
        return 401, headers, b"unauthorized\n"

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "confide_metrics_unauthorized",
            "Requests of /metrics refused (reason: 401 for no bearer token or a wrong one; limited:"
            " 429, the client's refused requests over their rate, its token not checked)",
            labels=["reason"],
        )
        for reason, n in sorted(self.refused.copy().items()):
            family.add_metric([reason], n)
        yield family


def listener_limits(like: HttpLimits) -> HttpLimits:
    """A plain companion listener's limits (the metrics listener's, the CAS's public one's): the
    values of ``like`` (the API listener's), counted apart from them; request heads of at most
    :data:`~confide.httpserve.limits.PUBLIC_MAX_HEAD` bytes (neither needs a large header)."""
    return HttpLimits(
        max_connections=like.max_connections,
        max_connections_per_client=like.max_per_client,
        head_timeout=like.head_timeout,
        body_timeout=like.body_timeout,
        handshake_timeout=like.handshake_timeout,
        max_head=PUBLIC_MAX_HEAD,
        log_name=like.log_name,
    )


class MetricsListenerApp:
    """The ASGI application of the metrics listener (module docstring). ``render``: the
    server's metrics in the Prometheus text format (run in a worker thread); ``auth``: the
    token required (``None``: none); ``limits``: the listener's own (its counts exported by
    :meth:`collect`); ``logger``: where one JSON line per request goes at level INFO (``None``:
    no request lines, as the ledger's servers log none)."""

    def __init__(
        self,
        render: Callable[[], bytes],
        *,
        auth: MetricsAuth | None,
        limits: HttpLimits,
        logger: str | None = None,
    ) -> None:
        self.render, self.auth, self.limits = render, auth, limits
        self._log = logging.getLogger(logger) if logger is not None else None
        self.responses: dict[int, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets never reach a plain HTTP/1.1 app
            return
        start = time.perf_counter()
        method = scope["method"]
        response: Response
        if method not in ("GET", "HEAD"):
            response = 405, [(b"allow", _ALLOW), _NO_STORE], b""
        elif _has_content(scope):
            response = 413, [(b"connection", b"close"), _NO_STORE], b""
        elif scope["path"] != METRICS_PATH:
            response = 404, [_NO_STORE], b""
        else:
            refused = self.auth.refusal(scope, "metrics") if self.auth is not None else None
            if refused is not None:
                response = refused
            else:
                body = await asyncio.to_thread(self.render)
                response = 200, [(b"content-type", CONTENT_TYPE_LATEST.encode()), _NO_STORE], body
        status, headers, body = response
        raw = [(b"content-length", str(len(body)).encode()), *headers, (b"x-content-type-options", _NOSNIFF)]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        self.responses[status] = self.responses.get(status, 0) + 1
        if self._log is not None and self._log.isEnabledFor(logging.INFO):
            route = METRICS_PATH if scope["path"] == METRICS_PATH else "unmatched"
            self._log.info(
                json.dumps(
                    {"event": "request", "listener": "metrics", "method": method[:16], "route": route,
                     "status": status, "ms": round((time.perf_counter() - start) * 1000, 2)}
                )
            )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        """The listener's answers by status, its open connections and what its limits refused."""
        responses = CounterMetricFamily(
            "confide_metrics_http_requests", "Requests answered by the metrics listener", labels=["status"]
        )
        for status, n in sorted(self.responses.copy().items()):
            responses.add_metric([str(status)], n)
        yield responses
        limits = self.limits
        yield GaugeMetricFamily(
            "confide_metrics_http_connections", "Connections open on the metrics listener", value=limits.open
        )
        yield limits_refused("confide_metrics_http_refused", "the metrics listener", limits)


def limits_refused(name: str, listener: str, limits: HttpLimits) -> CounterMetricFamily:
    """The counter family ``name`` of what a plain listener's ``limits`` refused, by reason
    (``listener``: how its help text names the listener)."""
    refused = CounterMetricFamily(
        name,
        f"Connections and requests {listener}'s limits refused (reason: total and per_ip"
        " connections, head_too_large 431, head_timeout 408 or close, pipeline_too_deep 503)",
        labels=["reason"],
    )
    refused.add_metric(["total"], limits.refused_total)
    refused.add_metric(["per_ip"], limits.refused_per_client)
    refused.add_metric(["head_too_large"], limits.head_too_large)
    refused.add_metric(["head_timeout"], limits.head_timeouts)
    refused.add_metric(["pipeline_too_deep"], limits.pipeline_too_deep)
    return refused


def _has_content(scope: Any) -> bool:
    """Whether the request carries content (RFC 9112 §6.3): a Transfer-Encoding, or a
    Content-Length other than 0."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip().strip(b"0")):
            return True
    return False
