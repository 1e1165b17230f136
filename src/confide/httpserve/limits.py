"""Bounds on a server's connections and on what its HTTP/1.1 server buffers and waits for: the
CAS's (``confide cas serve``, its public listener) and the ledger's (``confide ledger serve``,
``confide ledger witness serve``, :mod:`confide.httpserve.server`).

**Connections.** :class:`HttpLimits` counts the open connections, in total and per client (an
IP address, an IPv6 client's /64: :func:`confide.httpserve.ratelimit.client_key`), from the moment
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

**Failed TLS handshakes.** uvloop's ``SSLProtocol`` logs a failed handshake at debug level only
(the client without a certificate, with one of another CA's, ...). With
:attr:`HttpLimits.on_handshake_failure` set (the metrics listener's), each connection gives it a
future, which uvloop ends with the handshake's exception: once the connection is lost, the
failure is counted by reason (:func:`handshake_failure`, :data:`HANDSHAKE_FAILURES`) and told.

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

**Trailers.** A chunked body's trailer section (RFC 9112 §7.1.2) is bounded as a head is: the
bytes a body brings that are neither its data nor a chunk's size line (a trailer section, a
chunk's size line and extensions, after the last chunk header or data) are counted read by
read, and past :data:`MAX_HEAD` the request is refused with ``431`` (counted as a head too
large): httptools buffers a trailer field whole, and uvicorn appended every trailer field to
the request's headers, so a trailer section that never ended grew memory until the body
deadline. Trailer fields are discarded (RFC 9112 §7.1.2 allows it), never merged into the
headers the application sees (RFC 9110 §6.5.1).

**Malformed bodies.** A request whose body turns out malformed (a bad chunk size, a
``Transfer-Encoding`` other than chunked) gets ``400`` and the connection is closed at once: its
application is told the client disconnected. uvicorn's answer waited, since the request's own
response was still pending, until the body deadline (``408``).

**Pipelining.** At most :data:`MAX_PIPELINE` requests wait behind the one being answered on a
connection; nothing more is read from it until they are answered but the rest of the last
one's body (uvicorn read again after each response, and parsed every request of a read: one
connection sending requests faster than they were answered queued them without bound, ~2 KiB
each). A request past the bound is answered ``503`` with ``Connection: close`` after the
responses to those before it.

**Responses.** :class:`OneWriteCycle` writes a response's head together with its body: one
TLS record and one socket write per response where uvicorn wrote two (docs/performance.md,
"The serving layer").
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, cast

import httptools  # type: ignore[import-untyped]
import uvloop.loop
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import (
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)

from confide.httpserve.ratelimit import client_key

__all__ = [
    "BODY_TIMEOUT",
    "CLIENT_CERT",
    "HANDSHAKE_FAILURES",
    "HANDSHAKE_TIMEOUT",
    "HEAD_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_CLIENT",
    "MAX_HEAD",
    "MAX_PIPELINE",
    "PUBLIC_MAX_HEAD",
    "BoundedHttpToolsProtocol",
    "HttpLimits",
    "OneWriteCycle",
    "handshake_failure",
]

CLIENT_CERT = "confide.client_cert"
"""The ASGI scope's key of the client certificate (DER) a TLS connection was made with, set
only when there is one (a context requiring one: ``--metrics-client-ca``)."""
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

# Requests parsed and waiting on one connection behind the one being answered (pipelining, RFC
# 9112 §9.3.2): far more than any client sends before reading a response.
MAX_PIPELINE = 64

# The public HTTP listener's request heads (confide.cas.public_http): a GET of a short path,
# which needs no header of any size.
PUBLIC_MAX_HEAD = 8 * 1024


HANDSHAKE_FAILURES = (
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "crl",
    "bad_certificate",
    "peer_alert",
    "tls_version",
    "protocol",
    "timeout",
    "closed",
)
"""Why a TLS handshake failed (:func:`handshake_failure`): the client sent no certificate; its
certificate does not chain to a trusted CA, has expired, is not yet valid, is revoked, could not
be checked for revocation (no CRL of its issuer, or one past its nextUpdate, not yet valid, or
whose signature does not verify), or failed another check (a signature, its purpose); the client
sent an alert (it refused the server's certificate); the client offered no TLS version the
listener speaks (a TLS 1.2-only client where client certificates are required: TLS 1.3 only
there); another TLS error (no common cipher, not TLS at all); the handshake timed out; the
connection ended during it."""

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) a client certificate's verification fails with.
_VERIFY_REASONS = {
    2: "unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT
    18: "unknown_ca",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown_ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown_ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    23: "revoked",  # CERT_REVOKED
    3: "crl",  # UNABLE_TO_GET_CRL
    5: "crl",  # UNABLE_TO_DECRYPT_CRL_SIGNATURE
    8: "crl",  # CRL_SIGNATURE_FAILURE
    11: "crl",  # CRL_NOT_YET_VALID
    12: "crl",  # CRL_HAS_EXPIRED
    15: "crl",  # ERROR_IN_CRL_LAST_UPDATE_FIELD
    16: "crl",  # ERROR_IN_CRL_NEXT_UPDATE_FIELD
    33: "crl",  # UNABLE_TO_GET_CRL_ISSUER
    35: "crl",  # KEYUSAGE_NO_CRL_SIGN
    36: "crl",  # UNHANDLED_CRITICAL_CRL_EXTENSION
    44: "crl",  # DIFFERENT_CRL_SCOPE
}


def handshake_failure(exc: BaseException | None) -> tuple[str, str]:
    """The reason (one of :data:`HANDSHAKE_FAILURES`) a server's TLS handshake failed with
    ``exc`` (what the ``ssl`` module raised), and OpenSSL's words for it (its verification
    message, else its reason code: fixed texts, nothing the client chose)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        words = str(exc.verify_message or exc.reason or code)[:200]
        return _VERIFY_REASONS.get(code, "bad_certificate"), words
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate", reason
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            return "peer_alert", reason[:200]
        if reason == "UNSUPPORTED_PROTOCOL":
            return "tls_version", reason
        if isinstance(exc, ssl.SSLEOFError):
            return "closed", reason[:200]
        return "protocol", reason[:200]
    return "closed", type(exc).__name__ if exc is not None else ""


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


def _plain(status: bytes, text: str) -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_MALFORMED = _plain(b"400 Bad Request", "Invalid HTTP request received.")
_DEEP_PIPELINE = _plain(
    b"503 Service Unavailable",
    f"more than {MAX_PIPELINE} requests pipelined; send the rest on a new connection\n",
)


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
        log_name: str = "confide.cas",
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
        self.log_name = log_name  # the logger of refused heads (a JSON line each)
        self.open = 0  # connections accepted and not yet closed (handshakes included)
        self._per_client: dict[str, int] = {}
        # What was refused, by reason (confide_cas_connections_refused_total and
        # confide_cas_requests_refused_total in /metrics).
        self.refused_total = 0
        self.refused_per_client = 0
        self.head_too_large = 0
        self.head_timeouts = 0
        self.body_timeouts = 0
        self.pipeline_too_deep = 0
        # Told of each refusal (reason, client key), on the event loop's thread: the ledger's
        # servers log them (confide.ledger.metrics.RefusalLog); None: only counted (and a 431
        # logged to log_name, as the CAS does).
        self.on_refusal: Callable[[str, str], None] | None = None
        # TLS handshakes that failed, by reason (HANDSHAKE_FAILURES), counted only while
        # on_handshake_failure is set (the metrics listener's: confide.httpserve.metrics_listener
        # watch_handshakes), which is told of each (reason, client key, OpenSSL's words).
        self.handshake_failures: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURES, 0)
        self.on_handshake_failure: Callable[[str, str, str], None] | None = None

    def refused(self, reason: str, client: str) -> None:
        """Tell :attr:`on_refusal` (reasons: ``max-connections``, ``max-connections-per-client``,
        ``head-too-large``, ``head-timeout``, ``body-timeout``, ``pipeline-too-deep``)."""
        if self.on_refusal is not None:
            self.on_refusal(reason, client)

    def handshake_failed(self, client: str, exc: BaseException | None, *, lost: bool = False) -> None:
        """Count a TLS handshake that did not complete (:func:`handshake_failure`; ``lost``: the
        connection ended during it, ``exc`` what ended it) and tell :attr:`on_handshake_failure`."""
        if lost:  # uvloop's handshake timeout aborts the connection
            reason, detail = ("timeout" if isinstance(exc, ConnectionAbortedError) else "closed"), ""
        else:
            reason, detail = handshake_failure(exc)
        self.handshake_failures[reason] = self.handshake_failures.get(reason, 0) + 1
        if self.on_handshake_failure is not None:
            self.on_handshake_failure(reason, client, detail)

    def admit(self, peername: Any) -> str | None:
        """Count a new connection from ``peername``: its client key, or ``None`` when it is over
        a limit (and must be closed, uncounted)."""
        key = client_key(str(peername[0])) if isinstance(peername, tuple) and peername else ""
        if self.max_connections and self.open >= self.max_connections:
            self.refused_total += 1
            self.refused("max-connections", key)
            return None
        if self.max_per_client:
            n = self._per_client.get(key, 0)
            if n >= self.max_per_client:
                self.refused_per_client += 1
                self.refused("max-connections-per-client", key)
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
             "max_head": self.max_head, "refusal": _refusal(self.max_head), "log_name": self.log_name},
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
        self, http: Callable[..., asyncio.Protocol], context: ssl.SSLContext | Callable[[], ssl.SSLContext]
    ) -> Callable[..., asyncio.BaseProtocol]:
        """A protocol factory for uvicorn (``Config.http_protocol_class``, with ``Config.ssl``
        unset so that the loop's server is plain TCP, on uvloop): uvloop's ``SSLProtocol`` over
        ``http``'s protocol, admitted by :meth:`admit` when the connection is
        accepted and released when it is lost, handshake failures included. ``context``: the
        server context, or a function asked for it at each new connection (a
        :class:`~confide.httpserve.certreload.CertificateReloader`: a reload changes the
        certificate of new connections only, each keeping the context it was made with). With
        :attr:`on_handshake_failure` set, a handshake that fails (or a connection that ends
        during it) is counted by reason in :attr:`handshake_failures` and told to it, once the
        connection is lost (:func:`handshake_failure`)."""
        # The class uvloop's own TLS server uses: its transports read into it directly (a
        # subclass keeps that fast path). Not in uvloop's type stubs.
        base: Any = getattr(uvloop.loop, "SSLProtocol")  # noqa: B009
        limits = self

        class GatedTls(base):  # type: ignore[misc]
            _gate_key: str | None = None
            _handshake: asyncio.Future[None] | None = None  # watched: the handshake's outcome

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
                handshake = self._handshake
                during = handshake is not None and not handshake.done()  # lost before it ended
                super().connection_lost(exc)  # ends the handshake's future, if it had not ended
                if handshake is None:
                    return
                self._handshake = None
                failed = None
                if handshake.done() and not handshake.cancelled():
                    failed = handshake.exception()  # retrieved: no "never retrieved" warning
                if during:
                    limits.handshake_failed(key, exc, lost=True)
                elif failed is not None:
                    limits.handshake_failed(key, failed)

        handshake_timeout = self.handshake_timeout

        fixed = context if isinstance(context, ssl.SSLContext) else None

        def current() -> ssl.SSLContext:
            return fixed if fixed is not None else cast(Callable[[], ssl.SSLContext], context)()

        def factory(**kwargs: Any) -> asyncio.BaseProtocol:
            app = cast(HttpToolsProtocol, http(**kwargs))
            # Watched (on_handshake_failure set): uvloop ends the future it is given with the
            # handshake's outcome (its exception on a failure, which it logs nowhere but at
            # debug level), else None: nothing is made for an unwatched connection.
            waiter = app.loop.create_future() if limits.on_handshake_failure is not None else None
            tls = GatedTls(
                app.loop, app, current(), waiter, server_side=True, ssl_handshake_timeout=handshake_timeout
            )
            tls._handshake = waiter
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
    max_pipeline = MAX_PIPELINE
    limits: HttpLimits | None = None  # counts refusals when set (HttpLimits.http_protocol)
    log_name = "confide.cas"  # the logger of refused heads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0  # of the head being received, counted before the parser sees them
        self._head_tail = b""  # its last 3 bytes, to find a CRLF CRLF across reads
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._served = False  # a request began on this connection
        self._body_timer: asyncio.TimerHandle | None = None
        # Bytes of the body being received that were neither data nor a chunk header, since the
        # last of either (a trailer section, a size line's extensions): bounded by max_head.
        self._framing = 0
        self._framing_reset = False  # data or a chunk header came in the current read
        self._running: RequestResponseCycle | None = None  # the request being answered
        # A refusal behind a pending response (_end_after_pending): made once that response is
        # sent; meanwhile nothing more is read.
        self._refusal_after: Callable[[], None] | None = None
        self._client_cert: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's HttpToolsProtocol.connection_made (uvicorn 0.54.0, pinned), with an IPv4
        # connection's addresses as the loop's TCP transport noted them when it accepted the
        # connection: uvicorn asks the socket again (get_local_addr, get_remote_addr: a socket
        # object made twice, four getsockname and one getpeername system calls per connection).
        # Other addresses (IPv6, which may carry a scope) are looked up as uvicorn does.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        local, remote = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        if type(local) is tuple and len(local) == 2 and type(remote) is tuple and len(remote) == 2:
            self.server = (str(local[0]), int(local[1]))
            self.client = (str(remote[0]), int(remote[1]))
        else:
            self.server = get_local_addr(transport)
            self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        # The client's certificate (DER), where the TLS context asked for one (the metrics
        # listener's --metrics-client-ca): the handshake is over when this is called.
        tls = transport.get_extra_info("ssl_object") if self.scheme == "https" else None
        self._client_cert = tls.getpeercert(binary_form=True) if tls is not None else None
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]:d} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        running = self._running
        super().connection_lost(exc)
        if running is not None and not running.response_complete:
            # uvicorn tells only the last request read (self.cycle): with pipelined requests
            # waiting, the one being answered wrote on into the closed transport once its
            # drain ended ("Exception in ASGI application", logged at ERROR).
            running.disconnected = True
            running.message_event.set()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_cert is not None:
            self.scope[CLIENT_CERT] = self._client_cert  # type: ignore[literal-required]
        self._in_head = True
        if self._served:  # a later request on a kept-alive connection: its own deadline
            self._arm_head_timer()
        self._served = True  # the first one's counts from the connection (connection_made)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # a trailer field: discarded (RFC 9112 §7.1.2), never one of the headers
        super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._framing_reset = True

    def on_body(self, body: bytes) -> None:
        self._framing_reset = True
        if self._refusal_after is None:
            super().on_body(body)

    def on_headers_complete(self) -> None:
        self._in_head = False  # the head timer, still armed, finds this when it fires
        if self._refusal_after is not None:
            return  # the rest of a read after a refusal: not served
        self._in_body = True
        self._framing, self._framing_reset = 0, True
        # uvicorn's HttpToolsProtocol.on_headers_complete (uvicorn 0.54.0, pinned), with the
        # request-response cycle of this module, which writes a response in one write.
        parser = self.parser
        http_version = parser.get_http_version()
        method = parser.get_method()
        scope = self.scope
        scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        app = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing_cycle = self.cycle
        self.cycle = cycle = OneWriteCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        cycle.loop = self.loop
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        elif len(self.pipeline) >= self.max_pipeline:
            # Too many waiting: this one is refused after the responses to those before it,
            # and nothing more is read (the rest of this read is parsed and dropped).
            self.cycle = existing_cycle
            self._in_body = False
            if self.limits is not None:
                self.limits.pipeline_too_deep += 1
                self.limits.refused("pipeline-too-deep", self._client_key())
            self._end_after_pending(lambda: self._write_and_close(_DEEP_PIPELINE))
        else:  # pipelined: queued until the previous response is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_body_timer()
        if self._refusal_after is None:
            super().on_message_complete()

    def _arm_head_timer(self) -> None:
        """Start the head's deadline. One timer per connection, not one per request: it stays
        armed when a head completes, and when it fires it re-arms itself for a later head's
        deadline (or does nothing between heads), so a request costs a clock read here instead
        of arming and cancelling a timer (``_head_timed_out``)."""
        self._head_deadline = self.loop.time() + self.head_timeout
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
        if self.pipeline and not self._in_body and not self.transport.is_closing():
            # uvicorn resumed reading: not while requests still wait (MAX_PIPELINE), unless the
            # last one read is still receiving its body: that body is read on (a request is
            # queued only once, so the queue does not grow by it), else its deadline would run
            # out while the earlier responses are written and nothing is read.
            self.flow.pause_reading()
        refuse = self._refusal_after
        cycle = self.cycle
        done = cycle is not None and cycle.response_complete and not self.pipeline  # the last before it
        if refuse is not None and done and not self.transport.is_closing():
            self._refusal_after = None
            refuse()

    def send_400_response(self, msg: str) -> None:
        if self._in_body:  # the body of the last request read is malformed
            self._refuse_in_body(_MALFORMED)
            return
        if not self._end_after_pending(lambda: super(BoundedHttpToolsProtocol, self).send_400_response(msg)):
            super().send_400_response(msg)

    def _refuse_in_body(self, response: bytes) -> None:
        """Refuse the request whose body is being received (the last one read), which cannot
        be completed: with ``response`` and the connection closed, at once when it is the one
        being answered and its response has not begun (its application is told the client
        disconnected), after the responses before it when it waits behind them (it is then
        never started); closed without a second response when its own has begun."""
        cycle = self.cycle
        self._in_body = False
        self._cancel_body_timer()
        if cycle is None or cycle.response_complete:  # answered already (a 429 before its body)
            self.transport.close()
            return
        if self.pipeline and self.pipeline[0][0] is cycle:  # waiting: dropped, never started
            self.pipeline.popleft()
            self._refusal_after = lambda: self._write_and_close(response)
            self.transport.pause_reading()
            cycle.response_complete = cycle.disconnected = True  # nothing will answer it
            return
        cycle.disconnected = True  # its application's receive() says so; its sends go nowhere
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._write_and_close(response)

    def _write_and_close(self, response: bytes) -> None:
        self.transport.write(response)
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing() or self._refusal_after is not None:
            return  # between heads (the next one arms the timer again), or a refusal is pending
        remaining = self._head_deadline - self.loop.time()
        if remaining > 0:  # a later head than the one the timer was armed for
            self._head_timer = self.loop.call_later(remaining, self._head_timed_out)
            return
        if self.limits is not None:
            self.limits.head_timeouts += 1
            self.limits.refused("head-timeout", self._client_key())
        if self._end_after_pending(lambda: self._write_and_close(_TIMEOUT)):
            return
        if self._head_bytes:  # some of a head came: say why the connection ends
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing() or self._refusal_after is not None:
            return
        if self.limits is not None:
            self.limits.body_timeouts += 1
            self.limits.refused("body-timeout", self._client_key())
        cycle = self.cycle
        if cycle is None or not cycle.response_started:  # never in the middle of a response
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refusal_after is not None:
            return
        if self._in_body:
            self._framing_reset = False
            super().data_received(data)
            if self._in_body and not self.transport.is_closing() and self._refusal_after is None:
                # Still in a body: a read that brought neither data nor a chunk header (nor a
                # new body) was all framing (a trailer section, a size line's extensions).
                self._framing = 0 if self._framing_reset else self._framing + len(data)
                if self._framing > self.max_head:
                    if self.limits is not None:
                        self.limits.head_too_large += 1
                        self.limits.refused("head-too-large", self._client_key())
                    self._refuse_in_body(self.refusal)
                    return
        elif not self.transport.is_closing():
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
        else:
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

    def _client_key(self) -> str:
        client = getattr(self, "client", None)
        return client_key(str(client[0])) if client else ""

    def _refuse_head(self) -> None:
        if self.limits is not None:
            self.limits.head_too_large += 1
        if self.limits is not None and self.limits.on_refusal is not None:
            self.limits.refused("head-too-large", self._client_key())
        else:
            logging.getLogger(self.log_name).warning(
                json.dumps({"event": "request", "status": 431, "reason": f"head over {self.max_head} bytes"})
            )
        if self._end_after_pending(lambda: self._write_and_close(self.refusal)):
            return
        self.transport.write(self.refusal)
        self.transport.close()


# A response's head and body up to this size go out as one TLS record (16 KiB of plaintext at
# most, RFC 8446 §5.1); a larger body follows its head in the same socket write.
_ONE_RECORD = 16 * 1024 - 1024


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle (uvicorn 0.54.0), writing a response's head together
    with its body: one ``transport.write`` — one TLS record and one socket write — for a whole
    response of up to ~15 KiB, where uvicorn writes the head and the body separately (two TLS
    records, two writes). The head is kept from ``http.response.start`` until the first
    ``http.response.body``, and at most until the end of the loop iteration it was made in: a
    streaming response whose first body part comes later has its head sent on its own, at once,
    as before. Everything else (header checks, ``Content-Length`` accounting, chunked encoding,
    ``HEAD``, keep-alive and ``Connection: close``, flow control) is uvicorn's.

    ``send`` and ``_response_head`` are adapted from uvicorn's ``RequestResponseCycle.send``
    (uvicorn 0.54.0, BSD-3-Clause, Copyright © 2017-present, Encode OSS Ltd.); re-check them
    against uvicorn's when its pin moves."""

    loop: asyncio.AbstractEventLoop
    _head: bytes | None = None

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            self._head = self._response_head(message)
            self.loop.call_soon(self._flush_head)
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            data: bytes = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        head, self._head = self._head, None
        if head is None:
            self.transport.write(data)
        elif len(data) <= _ONE_RECORD:
            self.transport.write(head + data)
        else:
            self.transport.writelines((head, data))
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _response_head(self, message: Any) -> bytes:
        """The status line and header fields of ``http.response.start``, as uvicorn writes them
        (and the response's framing: ``Content-Length``, chunked, keep-alive)."""
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for raw_name, value in headers:
            if HEADER_RE.search(raw_name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = raw_name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                self.keep_alive = False
                has_connection_close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True  # neither Content-Length nor Transfer-Encoding
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)
