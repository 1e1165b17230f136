"""Reading an HTTP answer up to a limit in size and a deadline in time, for every confide client
of a remote party that may be hostile: the CAS client, the ledger auditor, the witness client,
the collateral sources (AMD KDS, Intel PCS/PCCS, NVIDIA OCSP and RIM services, Azure IMDS) and
the GCE fetches (AIA issuers, CRLs).

:func:`fetch` is the one way they ask: one request whose whole answer (connection, status line,
headers and body) must arrive within its deadline (:class:`AnswerDeadline`) and whose body is
read up to its limit (:func:`read_body`). A larger answer, declared (``Content-Length``, RFC
9110 §8.6) or sent, or a slower one, stops the read with the caller's own error (its class and
wording). The clients it is given keep no connection alive (:func:`answer_client`): a deadline
sees the connections its request makes, not one taken from a pool.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
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
    too_slow: Callable[[str], ConfideError] | None = None,
    start: float | None = None,
) -> bytes:
    """The body of a streamed ``response`` (after content decoding), at most ``limit`` bytes;
    ``too_large(how)`` is raised before anything is read when its ``Content-Length`` says more,
    or as soon as more has come (``how``: "declares N bytes, ..." / "is larger than ...").

    ``within``: seconds the whole body may take (monotonic clock, checked at each chunk, counted
    from ``start``, default now), else ``too_slow("took more than N s to arrive ...")`` (default
    ``too_large``). A client's read timeout bounds the wait for each chunk only: a server sending
    a byte just within it would hold the client for as long as the limit in bytes allows (16 MiB
    at a byte per 30 s: fifteen years). The head is not counted: :func:`fetch` bounds both."""
    start = monotonic() if start is None else start
    slow = too_large if too_slow is None else too_slow
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
            raise slow(f"took more than {within:g} s to arrive ({size} bytes by then)")
        chunks.append(chunk)
    return b"".join(chunks)


def answer_client(**kwargs: Any) -> httpx2.Client:
    """An ``httpx2.Client`` (``kwargs``: its arguments, but ``limits``) that keeps no connection
    alive, for :func:`fetch`: each request's :class:`AnswerDeadline` sees the connection it makes
    (one taken from a pool would not be seen, and its head not bounded). The price: a TCP (and
    TLS) handshake per request. A ``transport`` given (tests) keeps its own limits."""
    return httpx2.Client(limits=httpx2.Limits(max_keepalive_connections=0), **kwargs)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read by :func:`fetch`: its status, headers and whole body."""

    status_code: int
    headers: httpx2.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def fetch(
    client: httpx2.Client,
    method: str,
    url: str,
    *,
    limit: int,
    within: float,
    too_large: Callable[[str], ConfideError],
    too_slow: Callable[[str], ConfideError] | None = None,
    check: Callable[[httpx2.Response], None] | None = None,
    trace: Callable[[str, dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> Answer:
    """One request (``client.stream(method, url, **kwargs)``) whose whole answer, its connection,
    TLS handshake, status line, headers and body, must arrive within ``within`` seconds
    (:class:`AnswerDeadline`), its body at most ``limit`` bytes (:func:`read_body`).

    Past the deadline: ``too_slow(how)`` (default ``too_large``), ``how`` starting "took more
    than N s to arrive", for the caller to name the host in its own error class; a larger answer:
    ``too_large(how)``. ``check(response)``, when given, sees the status and headers before the
    body is read (to raise the caller's error for a status without reading its body). Any other
    ``httpx2.HTTPError`` (no connection, a refused certificate, a malformed answer) is raised as
    it is, for the caller to tell its own way. ``client``: from :func:`answer_client` (or
    another keeping no connection alive), else a pooled connection's head is not bounded.
    ``trace``: a ``trace`` extension of the caller's, called after this deadline's (an outer
    :class:`AnswerDeadline` bounding several requests together, as a witness round's).

    Not bounded here: the resolution of the host's name (the system's resolver, before any
    socket), as with every client of ``httpx2``."""
    slow = too_large if too_slow is None else too_slow
    deadline = AnswerDeadline(within)

    def traced(name: str, info: dict[str, Any]) -> None:
        deadline.trace(name, info)
        if trace is not None:
            trace(name, info)

    try:
        with deadline, client.stream(method, url, extensions={"trace": traced}, **kwargs) as response:
            if check is not None:
                check(response)
            body = read_body(response, limit, too_large, within=within, too_slow=slow, start=deadline.started)
            answer = Answer(response.status_code, response.headers, body)
    except httpx2.HTTPError as exc:
        # A timeout of the client's own ending at the deadline (a read timeout as long as what
        # was left) is the deadline's too: one error whichever thread was first.
        late = isinstance(exc, httpx2.TimeoutException) and monotonic() - (deadline.started or 0.0) >= within
        if deadline.expired or late:
            raise slow(f"took more than {within:g} s to arrive (status line, headers and body)") from None
        raise
    if deadline.expired:
        # The connection was shut down under an answer whose end is its connection's close (no
        # Content-Length, not chunked): what came is not the whole of it.
        raise slow(f"took more than {within:g} s to arrive (cut at {len(body)} bytes)")
    return answer


class AnswerDeadline:
    """Bounds one request's whole answer in time, its head included: ``read_body``'s ``within``
    counts from the first byte of the body only, and a client's read timeout bounds each wait
    for more bytes, so a server sending a header line (or a byte of one) just within that
    timeout held the client for as long as the parser takes headers (hours: h11 reads 16 KiB of
    them). Passed as the request's ``trace`` extension (``extensions={"trace": deadline.trace}``),
    it learns the connection's socket when it is made (``connect_tcp``, and ``start_tls`` over
    it, a proxy's too) and shuts it down once ``seconds`` have passed since :meth:`__enter__`:
    the blocked read (or TLS handshake) ends and ``httpx2`` raises one of its errors;
    :attr:`expired` then tells why. It holds a duplicate of the socket's descriptor until
    :meth:`__exit__`: a TLS handshake runs on a socket that took the TCP socket's descriptor
    over (the TCP socket object no longer has one), and is shut down through the duplicate.
    A connection taken from a pool is not seen: use it with a client that keeps none alive
    (:func:`answer_client`). :func:`fetch` uses it; clients use :func:`fetch`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.started: float | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> AnswerDeadline:
        self.started = monotonic()
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()

    def abort(self) -> None:
        """End the answer now, from another thread (a shutdown): as when its time is up (its
        connection shut down, or the next one as soon as it is made), whether or not it began."""
        self._expire()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        # connection.connect_tcp / start_tls, and a proxy's (proxy.start_tls, socks.*)
        if not name.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        held = _duplicate(info.get("return_value"))
        if held is None:
            return
        with self._lock:
            self._held.append(held)
            expired = self.expired
        if expired:
            _shut(held)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            held = list(self._held)
        for sock in held:
            _shut(sock)


def _duplicate(stream: Any) -> socket.socket | None:
    """A plain socket on a duplicate of the descriptor of ``stream``'s socket (the same
    connection); ``None`` for a stream without one, or one already closed."""
    try:
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket) and sock.fileno() >= 0:
            return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _shut(sock: socket.socket) -> None:
    """Shut the connection down (both ways) from another thread: a read blocked on it, on any
    descriptor of it, ends."""
    with contextlib.suppress(OSError):  # not connected any more
        sock.shutdown(socket.SHUT_RDWR)
