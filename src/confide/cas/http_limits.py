"""Bounds on the CAS's connections and on what its HTTP/1.1 server buffers and waits for.

**Connections.** :class:`HttpLimits` counts the open connections, in total and per client (an
IP address, an IPv6 client's /64: :func:`confide.cas.ratelimit.client_key`), from the moment
they are accepted: the loop's server is plain TCP, and :meth:`HttpLimits.tls_protocol` gives
each accepted connection the TLS layer itself (uvloop's own ``SSLProtocol``, as uvloop's TLS
server would), so a connection over either limit is closed in ``connection_made`` before a byte
of its TLS handshake is read, and costs neither the handshake's CPU nor its buffers. It gets no
``503``: that would need the handshake first. uvicorn's own ``limit_concurrency`` is not used:
it counts connections only after their handshake and answers ``503`` once a request head is
parsed, so the handshakes it was to bound have all been paid for. ``backlog`` bounds only the
connections the kernel has accepted and the CAS not yet (``listen(1024)``), none of which holds
any of the CAS's memory. The TLS handshake itself must complete within
:attr:`HttpLimits.handshake_timeout` (uvloop's default is 60 s).

**Request heads.** uvicorn's httptools protocol keeps a request's URL and each header value in
memory until the head is complete, with no limit of its own: a client that never ends its head
can make the CAS buffer gigabytes. :class:`BoundedHttpToolsProtocol` counts the bytes of each
request head as they are read, before the parser sees them (a head that comes in one read
included), and answers ``431 Request Header Fields Too Large`` (RFC 6585 §5), then closes the
connection, once a head exceeds :data:`MAX_HEAD` bytes (:data:`PUBLIC_MAX_HEAD` on the public
listener, :meth:`HttpLimits.plain_protocol`), and closes a connection whose request
head is not complete :data:`HEAD_TIMEOUT` seconds after the connection was made (after its TLS
handshake) or after the request's first byte (``408 Request Timeout``, RFC 9110 §15.5.9, when
some of it came): uvicorn itself bounds only the idle time between requests
(``timeout_keep_alive``, 5 s).

**Request bodies.** A body must be complete :attr:`HttpLimits.body_timeout` seconds after its
head (:data:`BODY_TIMEOUT`), else ``408`` and the connection is closed: a client trickling a
body a byte at a time holds its connection (and what it sent) for that long at most. The timer
is armed only when a body did not come whole with its head (no cost for the usual request).
Bodies are bounded in size by the application (``confide.cas.app.MAX_BODY``: 413, RFC 9110
§15.5.14) and by uvicorn's flow control, which stops reading from a connection whose body the
application has not consumed yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

import uvloop.loop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from confide.cas.ratelimit import client_key

__all__ = [
    "BODY_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "HEAD_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_CLIENT",
    "MAX_HEAD",
    "PUBLIC_MAX_HEAD",
    "BoundedHttpToolsProtocol",
    "HttpLimits",
]

# The request line and all header fields of one request. The largest legitimate head is a
# policy read's signed X-Confide-Read header (a few KiB).
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0  # seconds for a whole request head
BODY_TIMEOUT = 60.0  # seconds for a whole body after its head: 16 MiB (MAX_BODY) at 280 KB/s
HANDSHAKE_TIMEOUT = 10.0  # seconds for a TLS handshake (one round trip in TLS 1.3)
# Open connections at once. Each holds a file descriptor and TLS state (uvloop's read buffer
# is allocated per connection; its pages are touched only as data comes).
MAX_CONNECTIONS = 1024
# Per client (IPv4 address, IPv6 /64): an eighth of the total, so that one client cannot hold
# every connection; well above what one machine's workloads open at once (the attestation
# benchmark's 64 concurrent clients on one address included).
MAX_CONNECTIONS_PER_CLIENT = 128

# The public HTTP listener's request heads (confide.cas.public_http): a GET of a short path,
# which needs no header of any size.
PUBLIC_MAX_HEAD = 8 * 1024


def _refusal(max_head: int) -> bytes:
    body = f"the request head exceeds {max_head} bytes\n".encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_REFUSAL = _refusal(MAX_HEAD)
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HttpLimits:
    """The limits of one server, and its counts of what they refused (read by ``/metrics``).
    Each limit: 0 is off. Only the event loop's thread changes the counts."""

    def __init__(
        self,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_head: int = MAX_HEAD,
    ) -> None:
        if max_head < 1024:
            raise ValueError("request heads are bounded at 1024 bytes or more")
        if max_connections < 0 or max_connections_per_client < 0 or body_timeout < 0:
            raise ValueError("connection limits and timeouts are >= 0 (0: off)")
        if head_timeout <= 0 or handshake_timeout <= 0:
            raise ValueError("the head and handshake timeouts are > 0")
        self.max_connections = max_connections
        self.max_per_client = max_connections_per_client
        self.head_timeout, self.body_timeout = head_timeout, body_timeout
        self.handshake_timeout = handshake_timeout
        self.max_head = max_head
        self.open = 0  # connections accepted and not yet closed (handshakes included)
        self._per_client: dict[str, int] = {}
        # What was refused, by reason (confide_cas_connections_refused_total and
        # confide_cas_requests_refused_total in /metrics).
        self.refused_total = 0
        self.refused_per_client = 0
        self.head_too_large = 0
        self.head_timeouts = 0
        self.body_timeouts = 0

    def admit(self, peername: Any) -> str | None:
        """Count a new connection from ``peername``: its client key, or ``None`` when it is over
        a limit (and must be closed, uncounted)."""
        if self.max_connections and self.open >= self.max_connections:
            self.refused_total += 1
            return None
        key = client_key(str(peername[0])) if isinstance(peername, tuple) and peername else ""
        if self.max_per_client:
            n = self._per_client.get(key, 0)
            if n >= self.max_per_client:
                self.refused_per_client += 1
                return None
            self._per_client[key] = n + 1
        self.open += 1
        return key

    def release(self, key: str) -> None:
        self.open -= 1
        if self.max_per_client:
            n = self._per_client[key] - 1
            if n:
                self._per_client[key] = n
            else:
                del self._per_client[key]

    def clients(self) -> int:
        """Clients with a connection open (0 while the per-client limit is off)."""
        return len(self._per_client)

    def http_protocol(self) -> type[BoundedHttpToolsProtocol]:
        """:class:`BoundedHttpToolsProtocol` with these timeouts and head bound, counting into
        these limits."""
        return type(
            "LimitedHttpToolsProtocol",
            (BoundedHttpToolsProtocol,),
            {"head_timeout": self.head_timeout, "body_timeout": self.body_timeout, "limits": self,
             "max_head": self.max_head, "refusal": _refusal(self.max_head)},
        )  # fmt: skip

    def plain_protocol(self) -> type[BoundedHttpToolsProtocol]:
        """:meth:`http_protocol` for a plain-HTTP server (the public listener,
        ``confide.cas.public_http``; ``Config.http``): each connection is admitted by
        :meth:`admit` when accepted, and closed at once when over a limit, before a byte is
        read; released when lost. Its head deadline counts from the accept."""
        limits = self

        class GatedHttp(self.http_protocol()):  # type: ignore[misc]
            _gate_key: str | None = None

            def connection_made(self, transport: asyncio.Transport) -> None:
                key = limits.admit(transport.get_extra_info("peername"))
                if key is None:  # over a limit: closed, nothing read or answered
                    transport.abort()
                    return
                self._gate_key = key
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                key = self._gate_key
                if key is None:
                    return  # refused: never started
                self._gate_key = None
                limits.release(key)
                super().connection_lost(exc)

        return GatedHttp

    def tls_protocol(
        self, http: Callable[..., asyncio.Protocol], context: ssl.SSLContext
    ) -> Callable[..., asyncio.BaseProtocol]:
        """A protocol factory for uvicorn (``Config.http_protocol_class``, with ``Config.ssl``
        unset so that the loop's server is plain TCP, on uvloop): uvloop's ``SSLProtocol`` over
        ``http``'s protocol, admitted by :meth:`admit` when the connection is
        accepted and released when it is lost, handshake failures included."""
        # The class uvloop's own TLS server uses: its transports read into it directly (a
        # subclass keeps that fast path). Not in uvloop's type stubs.
        base: Any = getattr(uvloop.loop, "SSLProtocol")  # noqa: B009
        limits = self

        class GatedTls(base):  # type: ignore[misc]
            _gate_key: str | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                key = limits.admit(transport.get_extra_info("peername"))
                if key is None:  # over a limit: closed before the handshake
                    transport.abort()  # type: ignore[attr-defined]
                    return
                self._gate_key = key
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                key = self._gate_key
                if key is None:
                    return  # refused: never started
                self._gate_key = None
                limits.release(key)
                super().connection_lost(exc)

        handshake_timeout = self.handshake_timeout

        def factory(**kwargs: Any) -> asyncio.BaseProtocol:
            app = cast(HttpToolsProtocol, http(**kwargs))
            tls = GatedTls(
                app.loop, app, context, None, server_side=True, ssl_handshake_timeout=handshake_timeout
            )
            return cast(asyncio.BaseProtocol, tls)

        return factory


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over :attr:`max_head` bytes or
    :attr:`head_timeout` seconds, and bodies not complete :attr:`body_timeout` seconds after
    their head (0: no limit)."""

    head_timeout = HEAD_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_head = MAX_HEAD
    refusal = _REFUSAL  # the 431 response, naming max_head
    limits: HttpLimits | None = None  # counts refusals when set (HttpLimits.http_protocol)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0  # of the head being received, counted before the parser sees them
        self._head_tail = b""  # its last 3 bytes, to find a CRLF CRLF across reads
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # A refusal behind a pending response (_end_after_pending): made once that response is
        # sent; meanwhile nothing more is read.
        self._refusal_after: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()  # a later request on a kept-alive connection: its own deadline

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_body_timer()
        super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _end_after_pending(self, refuse: Callable[[], None]) -> bool:
        """Whether a response to an earlier, pipelined request is still to be written; if so,
        ``refuse`` (write the refusal and close) is called once it (and any queued before the
        refused request) is sent, not now: the client would take the refusal for that response
        (RFC 9112 §9.3.2: responses in the order of the requests); nothing more is read
        meanwhile. The fuzz4 campaign found a valid request followed by an invalid one in the
        same read answered with uvicorn's 400 only, and, when the app then wrote to the closed
        transport, "Exception in ASGI application" logged at ERROR."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return False
        self._refusal_after = refuse
        self.transport.pause_reading()
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next pipelined request
        refuse = self._refusal_after
        cycle = self.cycle
        done = cycle is not None and cycle.response_complete and not self.pipeline  # the last before it
        if refuse is not None and done and not self.transport.is_closing():
            self._refusal_after = None
            refuse()

    def send_400_response(self, msg: str) -> None:
        if not self._end_after_pending(lambda: super(BoundedHttpToolsProtocol, self).send_400_response(msg)):
            super().send_400_response(msg)

    def _write_and_close(self, response: bytes) -> None:
        self.transport.write(response)
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing() or self._refusal_after is not None:
            return
        if self.limits is not None:
            self.limits.head_timeouts += 1
        if self._end_after_pending(lambda: self._write_and_close(_TIMEOUT)):
            return
        if self._head_bytes:  # some of a head came: say why the connection ends
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        if self.limits is not None:
            self.limits.body_timeouts += 1
        cycle = self.cycle
        if cycle is None or not cycle.response_started:  # never in the middle of a response
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refusal_after is not None:
            return
        if not self._in_body and not self.transport.is_closing():
            # A request head (or the next one, between requests) is coming: its bytes in this
            # read are counted before the parser buffers any, up to the empty line that ends it
            # (CRLF CRLF, RFC 9112 §2.1) when it ends here. What follows it in the same read (a
            # body, a pipelined request) is the parser's: at most one read's worth uncounted.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            size = len(data) if end < 0 else end + 4 - len(self._head_tail)
            if self._head_bytes + size > self.max_head:
                self._refuse_head()
                return
            if end < 0:
                self._head_bytes, self._head_tail = self._head_bytes + size, window[-3:]
            else:
                self._head_bytes, self._head_tail = 0, b""
        super().data_received(data)
        if (
            self._in_body
            and self._body_timer is None
            and self.body_timeout
            and not self.transport.is_closing()
        ):
            # A body still coming after the read that completed its head: its deadline counts
            # from that read (the head was timed by the head deadline until then).
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _refuse_head(self) -> None:
        if self.limits is not None:
            self.limits.head_too_large += 1
        logging.getLogger("confide.cas").warning(
            json.dumps({"event": "request", "status": 431, "reason": f"head over {self.max_head} bytes"})
        )
        if self._end_after_pending(lambda: self._write_and_close(self.refusal)):
            return
        self.transport.write(self.refusal)
        self.transport.close()
