"""Reading an HTTP answer's body up to a limit, for every confide client of a remote party that
may be hostile (the CAS client, the ledger auditor, the witness client).

A larger answer, declared (``Content-Length``, RFC 9110 §8.6) or sent, stops the read with the
caller's own error (its class and wording).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import httpx2

from confide.errors import ConfideError

# At most this many digits are read as a number: more is larger than any limit (and int() of
# thousands of digits is a ValueError).
_MAX_LENGTH_DIGITS = 18


def read_body(
    response: httpx2.Response,
    limit: int,
    too_large: Callable[[str], ConfideError],
    *,
    within: float | None = None,
) -> bytes:
    """The body of a streamed ``response`` (after content decoding), at most ``limit`` bytes;
    ``too_large(how)`` is raised before anything is read when its ``Content-Length`` says more,
    or as soon as more has come (``how``: "declares N bytes, ..." / "is larger than ...").

    ``within``: seconds the whole body may take (monotonic clock, checked at each chunk), else
    ``too_large("took more than N s to arrive")``. A client's read timeout bounds the wait for
    each chunk only: a server sending a byte just within it would hold the client for as long as
    the limit in bytes allows (16 MiB at a byte per 30 s: fifteen years)."""
    start = monotonic()
    declared = response.headers.get("content-length", "")
    if (
        declared.isascii()
        and declared.isdigit()
        and (len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limit)
    ):
        raise too_large(f"declares {declared[:20]} bytes, more than {limit}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(f"is larger than {limit} bytes")
        if within is not None and monotonic() - start > within:
            raise too_large(f"took more than {within:g} s to arrive ({size} bytes by then)")
        chunks.append(chunk)
    return b"".join(chunks)


class AnswerDeadline:
    """Bounds one request's whole answer in time, its head included: ``read_body``'s ``within``
    counts from the first byte of the body only, and a client's read timeout bounds each wait
    for more bytes, so a server sending a header line (or a byte of one) just within that
    timeout held the client for as long as the parser takes headers (hours: h11 reads 16 KiB of
    them). Passed as the request's ``trace`` extension (``extensions={"trace": deadline.trace}``),
    it learns the connection's socket when it is made (``connect_tcp`` / ``start_tls``, a
    proxy's too) and shuts it down once ``seconds`` have passed since :meth:`__enter__`: the
    blocked read ends and ``httpx2`` raises one of its errors; :attr:`expired` then tells why.
    A connection taken from a pool is not seen: use it with a client that keeps none alive (a
    new client, or ``max_keepalive_connections=0``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> AnswerDeadline:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def abort(self) -> None:
        """End the answer now, from another thread (a shutdown): as when its time is up (its
        connection shut down, or the next one as soon as it is made), whether or not it began."""
        self._expire()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        # connection.connect_tcp / start_tls, and a proxy's (proxy.start_tls, socks.*): a TLS
        # socket takes the TCP socket's descriptor over, so the newest stream is the one to shut
        if not name.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        stream = info.get("return_value")
        if stream is None:
            return
        with self._lock:
            self._streams.append(stream)
            expired = self.expired
        if expired:
            _shut(stream)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            streams = list(self._streams)
        for stream in streams:
            _shut(stream)


def _shut(stream: Any) -> None:
    """Shut the stream's socket down (both ways) from another thread; one already closed, or a
    stream without a socket, is left alone."""
    try:
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            # the plain method: an SSLSocket's own would drop its TLS state under the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError):
        pass
