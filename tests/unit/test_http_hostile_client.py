"""The shared serving layer (:class:`confide.httpserve.server.HttpServer` on uvloop, the
protocol of :mod:`confide.httpserve.limits`) against a hostile client over real sockets: a
malformed body is answered ``400`` at once (not held until the body deadline), a chunked body's
trailer section is bounded like a head and never merged into the request's headers, and
pipelined requests wait in a bounded queue. The CAS and the ledger's servers run on this
protocol (``tests/unit/test_cas_served_limits.py`` drives the CAS's over TLS)."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from confide.httpserve.limits import MAX_HEAD, MAX_PIPELINE, HttpLimits
from confide.httpserve.server import HttpServer
from confide.ledger.http import ledger_limits
from confide.ledger.metrics import LedgerMetrics

# The body deadline of the server under test: far longer than any wait below, so that a test
# expecting an answer at once fails (by WAIT) where the old code answered only at the deadline.
BODY_TIMEOUT = 120.0
WAIT = 30.0  # how long a read waits for what must come (only a failure waits this long)
BIG = b"x" * (1 << 20)
SLOW = 2.0  # seconds /slow takes to answer: a response still pending when the next request is read


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, then answers with what it saw (headers, body size, whether the
    client disconnected); /slow answers after SLOW seconds; /nap answers after SLOW seconds
    without reading its (empty) body, as a GET route does."""
    body, disconnected = b"", False
    if scope["path"] == "/nap":
        await asyncio.sleep(SLOW)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected = True
            break
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW)
    if scope["path"] == "/big":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(BIG))]}
        )
        await send({"type": "http.response.body", "body": BIG})
        return
    SEEN.append({"path": scope["path"], "disconnected": disconnected})
    out = json.dumps(
        {"path": scope["path"], "body": len(body), "headers": [k.decode() for k, _ in scope["headers"]]}
    ).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(out))]}
    )
    await send({"type": "http.response.body", "body": out})


SEEN: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, HttpLimits]]:
    limits = HttpLimits(body_timeout=BODY_TIMEOUT, log_name="confide.test")
    server = HttpServer(_app, ("127.0.0.1", 0), limits=limits)
    server.serve_in_thread()
    yield server.server_address[1], limits
    server.shutdown()
    server.server_close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def _responses(s: socket.socket, count: int | None = None) -> list[tuple[int, bytes]]:
    """Every response until the server closes the connection, or ``count`` responses: (status,
    body)."""
    data = b""
    s.settimeout(WAIT)
    while count is None or data.count(b"HTTP/1.1 ") < count or not data.endswith(b"}"):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode().split("\r\n")
        length = next(
            int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"
        )
        out.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return out


def _chunked(path: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


@pytest.mark.parametrize(
    "head, body",
    [
        (_chunked("/a"), b"2\r\n{}\r\nZZ\r\n"),  # a chunk size that is not hex
        (_chunked("/a"), b"2\r\n{}\r\n-1\r\n"),
        (_chunked("/a"), b"10000000000000000\r\n"),  # a chunk size over 64 bits
        (_chunked("/a"), b"2\n{}\n0\n\n"),  # chunk lines ended by LF alone
        (b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", b"{}"),
    ],
    ids=["not-hex", "negative", "overflow", "bare-lf", "identity"],
)
def test_a_malformed_body_gets_400_at_once(served: tuple[int, HttpLimits], head: bytes, body: bytes) -> None:
    """uvicorn held the request, its application waiting for a body that would never come,
    until the body deadline (then 408)."""
    port, _limits = served
    SEEN.clear()
    with _connect(port) as s:
        s.sendall(head + body)
        responses = _responses(s)
    assert [status for status, _ in responses] == [400]
    assert responses[0][1] == b"Invalid HTTP request received."


def test_a_malformed_body_behind_a_pending_response_gets_400_after_it(served: tuple[int, HttpLimits]) -> None:
    """The second, pipelined request's body is malformed while the first's response is pending:
    the first is answered, then 400, in order; the second's application never runs."""
    port, _limits = served
    SEEN.clear()
    with _connect(port) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + _chunked("/second") + b"2\r\n{}\r\nZZ\r\n")
        responses = _responses(s)
    assert [status for status, _ in responses] == [200, 400]
    assert json.loads(responses[0][1])["path"] == "/slow"
    assert [seen["path"] for seen in SEEN] == ["/slow"]


def test_trailer_fields_are_not_merged_into_the_headers(served: tuple[int, HttpLimits]) -> None:
    port, _limits = served
    with _connect(port) as s:
        s.sendall(
            _chunked("/a") + b"2\r\n{}\r\n0\r\nX-Confide-Read: forged\r\nHost: elsewhere\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        responses = _responses(s)
    assert [status for status, _ in responses] == [200, 200]
    first = json.loads(responses[0][1])
    assert first["body"] == 2
    assert first["headers"] == ["host", "transfer-encoding"]
    assert json.loads(responses[1][1])["path"] == "/next"


def test_a_trailer_section_is_bounded_like_a_head(served: tuple[int, HttpLimits]) -> None:
    """A trailer field that never ends: 431 once the trailer passes MAX_HEAD (uvicorn buffered it
    whole, and every field, until the body deadline)."""
    port, limits = served
    before = limits.head_too_large
    with _connect(port) as s:
        s.sendall(_chunked("/a") + b"2\r\n{}\r\n0\r\nX-Long: ")
        sent = 0
        try:  # until the server answers (or closes): it must, long before 4 MiB
            while sent < 64 * MAX_HEAD and not select.select([s], [], [], 0)[0]:
                s.sendall(b"a" * 1024)
                sent += 1024
        except OSError:
            pass
        responses = _responses(s)
    assert sent < 64 * MAX_HEAD
    assert [status for status, _ in responses] == [431]
    assert limits.head_too_large == before + 1


def test_long_chunked_bodies_of_small_chunks_pass(served: tuple[int, HttpLimits]) -> None:
    """The trailer bound counts only bytes that are neither data nor chunk headers: a body of
    many one-byte chunks (four bytes of framing each) far past MAX_HEAD is served."""
    port, _limits = served
    chunks = b"1\r\nx\r\n" * (4 * MAX_HEAD // 6) + b"3;name=value\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    with _connect(port) as s:
        s.sendall(_chunked("/a").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + chunks)
        responses = _responses(s)
    assert [status for status, _ in responses] == [200]
    assert json.loads(responses[0][1])["body"] == 4 * MAX_HEAD // 6 + 3


def test_pipelined_requests_are_bounded(served: tuple[int, HttpLimits]) -> None:
    """Requests sent at once, more than MAX_PIPELINE behind the first: those are answered, the
    next gets 503 and the connection is closed (uvicorn queued every one, ~2 KiB each, without
    bound: 200 000 in a few seconds from one connection)."""
    port, limits = served
    before = limits.pipeline_too_deep
    n = MAX_PIPELINE + 50
    with _connect(port) as s:
        s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n)))
        responses = _responses(s)
    statuses = [status for status, _ in responses]
    assert statuses == [200] * (MAX_PIPELINE + 1) + [503]
    assert [json.loads(body)["path"] for _, body in responses[:-1]] == [
        f"/p{i}" for i in range(MAX_PIPELINE + 1)
    ]
    assert limits.pipeline_too_deep == before + 1


def test_pipelining_within_the_bound_is_served(served: tuple[int, HttpLimits]) -> None:
    """A client that keeps MAX_PIPELINE requests in flight, batch after batch, is served whole."""
    port, _limits = served
    with _connect(port) as s:
        for batch in range(5):
            s.sendall(
                b"".join(b"GET /b%d-%d HTTP/1.1\r\nHost: t\r\n\r\n" % (batch, i) for i in range(MAX_PIPELINE))
            )
            paths = [json.loads(body)["path"] for _, body in _responses(s, MAX_PIPELINE)]
            assert paths == [f"/b{batch}-{i}" for i in range(MAX_PIPELINE)]


def test_the_ledger_servers_metrics_name_the_pipeline_refusals() -> None:
    limits = ledger_limits()
    limits.pipeline_too_deep = 3
    text = LedgerMetrics(limits).render().decode()
    assert 'confide_ledger_http_requests_refused_total{reason="pipeline-too-deep"} 3.0' in text


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_client_that_never_reads_and_leaves_costs_no_error(served: tuple[int, HttpLimits]) -> None:
    """Large responses pipelined and never read: the server waits for the client to drain what
    it wrote (memory bounded), and when the client leaves, the request being answered is told
    so. uvicorn told only the last request read, and the one being answered wrote on into the
    closed connection: "Exception in ASGI application" at ERROR, with a traceback, per
    connection."""
    port, limits = served
    errors = _Errors()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(errors)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 16
        )  # 16 MiB of answers: more than any socket holds
        time.sleep(SLOW)  # the server fills the socket and waits for it to drain
        s.close()
        deadline = time.monotonic() + WAIT
        while limits.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert limits.open == 0
        time.sleep(SLOW)  # what the request being answered does next, it has done by now
    finally:
        logger.removeHandler(errors)
    assert errors.messages == []


def test_the_body_of_the_last_pipelined_request_is_read_while_earlier_ones_are_answered() -> None:
    """Four requests whose application reads nothing (a GET route), then a POST whose body comes
    a little later: once the first is answered (SLOW), the rest of that body is read, so it is
    complete long before the body deadline (2 * SLOW). Reading stayed paused until the last of
    them had started (3 * SLOW), and the POST got 408 (in place of an earlier request's answer),
    its body waiting unread in the socket. A margin of SLOW on either side."""
    body_timeout = 2 * SLOW
    limits = HttpLimits(body_timeout=body_timeout, log_name="confide.test")
    server = HttpServer(_app, ("127.0.0.1", 0), limits=limits)
    server.serve_in_thread()
    try:
        with _connect(server.server_address[1]) as s:
            s.sendall(
                b"GET /nap HTTP/1.1\r\nHost: t\r\n\r\n" * 4
                + b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab"
            )
            time.sleep(SLOW / 2)  # the rest of the body, while the first /nap is answered
            s.sendall(b"cd")
            responses = _responses(s)
    finally:
        server.shutdown()
        server.server_close()
    assert [status for status, _ in responses] == [200] * 5
    assert json.loads(responses[4][1])["path"] == "/c"
    assert json.loads(responses[4][1])["body"] == 4
    assert limits.body_timeouts == 0
