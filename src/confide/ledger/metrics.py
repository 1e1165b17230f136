"""``/metrics`` and refusal logs of the ledger's servers (docs/ledger.md "Metrics and refusals").

``confide ledger serve`` and ``confide ledger witness serve`` answer ``GET /metrics`` (the
server's root, also under an embedding's path ``prefix``) in the Prometheus text format, as the CAS does
(:mod:`confide.cas.app`: a ``prometheus_client`` :class:`CollectorRegistry` of collectors that
read counts kept by the request path, rendered by ``generate_latest``):

- ``confide_ledger_http_requests_total{route, status}``: answered requests (``route``:
  ``checkpoint``, ``tile``, ``entries``, ``add-checkpoint``, ``metrics``, ``other``);
- ``confide_ledger_http_connections_refused_total{reason}``: ``max-connections``,
  ``max-connections-per-client`` (closed before any TLS handshake or byte read);
- ``confide_ledger_http_requests_refused_total{reason}``: ``head-too-large`` (431: a request
  head or a chunked body's trailer section), ``head-timeout`` and ``body-timeout`` (408),
  ``rate-limited`` (429), ``body-limit`` (400: an add-checkpoint without a Content-Length of at
  most 1 MiB), ``pipeline-too-deep`` (503: more than ``MAX_PIPELINE`` requests pipelined);
- ``confide_ledger_http_connections_open``;
- the tiles server: ``confide_ledger_tree_size`` (the size of the latest signed checkpoint,
  what the server publishes);
- the witness: ``confide_witness_cosignatures_total{origin}`` (issued since the start) and
  ``confide_witness_tree_size{origin}`` (the size it cosigned last, from its state file).

Every refusal is also a JSON line on the ``confide.ledger`` logger
(:class:`~confide.httpserve.ratelimit.RefusalLog`):
``{"event": "refused", "reason": ..., "client": ..., ...}``: the client's address (its /64 for
IPv6, :func:`~confide.httpserve.ratelimit.client_key`), never a request's content. At most
:data:`REFUSAL_LOG_RATE` lines a second (a burst of twice that): a flood of refusals does not
flood the log; the next line logged says how many were left out (``suppressed``), and the
counters above count them all.

Counts change on the event loop's thread only; a scrape (in a worker thread) copies each table
(one C-level dict copy), as the CAS's ``/metrics`` does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from confide.errors import ConfideError
from confide.httpserve.limits import HttpLimits
from confide.httpserve.ratelimit import REFUSAL_LOG_RATE, RefusalLog, client_key
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.note import parse_note
from confide.ledger.store import Ledger, connect

__all__ = ["METRICS_PATH", "REFUSAL_LOG_RATE", "LedgerMetrics", "RefusalLog", "tiles_route", "tree_size_of"]

METRICS_PATH = "/metrics"

Metric = CounterMetricFamily | GaugeMetricFamily


class LedgerMetrics:
    """The counts of one ledger server, and its ``/metrics`` registry. ``limits``: the server's
    connection limits (their refusals counted there, logged here); ``extra``: the collector of
    what the server is (tree size, cosignatures)."""

    def __init__(self, limits: HttpLimits, refusals: RefusalLog | None = None) -> None:
        self.limits = limits
        self.refusals = refusals or RefusalLog()
        self.requests: dict[tuple[str, int], int] = {}
        self.refused: dict[str, int] = {}  # refused by the application: rate-limited, body-limit
        self.extra: Callable[[], Iterator[Metric]] | None = None
        limits.on_refusal = self.refusals.log  # the protocol's refusals: counted by limits
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def refuse(self, reason: str, scope: Any, route: str, status: int) -> None:
        """A request the application refused (``rate-limited`` 429, ``body-limit`` 400):
        counted and logged."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        client = scope.get("client")
        self.refusals.log(reason, client_key(str(client[0])) if client else "", route=route, status=status)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "confide_ledger_http_requests",
            "Requests answered, by route and status",
            labels=["route", "status"],
        )
        for (route, status), n in sorted(self.requests.copy().items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        limits = self.limits
        connections = CounterMetricFamily(
            "confide_ledger_http_connections_refused", "Connections closed over a limit", labels=["reason"]
        )
        connections.add_metric(["max-connections"], limits.refused_total)
        connections.add_metric(["max-connections-per-client"], limits.refused_per_client)
        yield connections
        refused = CounterMetricFamily(
            "confide_ledger_http_requests_refused", "Requests refused, by reason", labels=["reason"]
        )
        app = self.refused.copy()
        for reason, n in (
            ("head-too-large", limits.head_too_large), ("head-timeout", limits.head_timeouts),
            ("body-timeout", limits.body_timeouts), ("rate-limited", app.get("rate-limited", 0)),
            ("body-limit", app.get("body-limit", 0)), ("pipeline-too-deep", limits.pipeline_too_deep),
        ):  # fmt: skip
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily("confide_ledger_http_connections_open", "Connections open", value=limits.open)
        if self.extra is not None:
            yield from self.extra()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def tiles_route(target: str, prefix: str) -> str:
    """The ``route`` label of a tiles server's request target (never the target itself)."""
    if target == METRICS_PATH:
        return "metrics"
    rel = target[len(prefix) + 1 :] if target.startswith(prefix + "/") else None
    if rel == "checkpoint":
        return "checkpoint"
    if rel is not None and rel.startswith("tile/entries/"):
        return "entries"
    if rel is not None and rel.startswith("tile/"):
        return "tile"
    return "other"


def tree_size_of(db: Path) -> Callable[[], Iterator[Metric]]:
    """The tiles server's extra collector: the size of the latest signed checkpoint."""

    def collect() -> Iterator[Metric]:
        size = 0
        try:
            conn = connect(db, durable=False)
            try:
                note = Ledger.latest_checkpoint(conn)
            finally:
                conn.close()
            if note is not None:
                size = Checkpoint.from_text(parse_note(note).text).size
        except (ConfideError, sqlite3.Error):
            return  # no gauge rather than a wrong one
        yield GaugeMetricFamily(
            "confide_ledger_tree_size", "Size of the latest signed checkpoint", value=size
        )

    return collect
