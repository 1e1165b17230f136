"""Bounds on what the CAS's HTTP/1.1 server buffers for a request before the application runs.

uvicorn's httptools protocol keeps a request's URL and each header value in memory until the
head is complete, with no limit of its own: a client that never ends its head can make the CAS
buffer gigabytes. :class:`BoundedHttpToolsProtocol` counts the bytes of each request head and
answers ``431 Request Header Fields Too Large`` (RFC 6585 §5), then closes the connection, once
a head exceeds :data:`MAX_HEAD` bytes, and closes a connection whose request head is not complete
:data:`HEAD_TIMEOUT` seconds after the connection was made (after its TLS handshake) or after
the request's first byte (``408 Request Timeout``, RFC 9110 §15.5.9, when some of it came):
uvicorn itself bounds only the TLS handshake (60 s) and the idle time between requests
(``timeout_keep_alive``), so a client that completed its handshake and then sent nothing, or
half a head, held its connection forever. Bodies are bounded by the application
(``confide.cas.app.MAX_BODY``: 413, RFC 9110 §15.5.14) and by uvicorn's flow control, which
stops reading from a connection whose body the application has not consumed yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "BoundedHttpToolsProtocol"]

# The request line and all header fields of one request. The largest legitimate head is a
# policy read's signed X-Confide-Read header (a few KiB).
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0  # seconds for a whole request head

_BODY = b"the request head exceeds 65536 bytes\n"
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over :data:`MAX_HEAD` bytes or
    :data:`HEAD_TIMEOUT` seconds."""

    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._arm_head_timer()  # a later request on a kept-alive connection: its own deadline

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes:  # some of a head came: say why the connection ends
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still in a head after the parser took all of `data`: every byte of it was head (but
        # for the end of a previous pipelined request in the same read, counted too: at most one
        # read's worth of over-counting, never under-counting).
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data) or 1
            if self._head_bytes > MAX_HEAD:
                logging.getLogger("confide.cas").warning(
                    json.dumps({"event": "request", "status": 431, "reason": f"head over {MAX_HEAD} bytes"})
                )
                self.transport.write(_REFUSAL)
                self.transport.close()
