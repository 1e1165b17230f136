"""`confide.httpserve.limits.BoundedHttpToolsProtocol` under a real uvicorn server on loopback:
request heads are bounded in size (431) and time (408, or a silent close), and ordinary
requests, kept-alive ones included, are served as before; its responses (``OneWriteCycle``) go
out in one write, streaming, ``HEAD``, chunked, large and ``Connection: close`` ones framed as
uvicorn frames them."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from confide.httpserve.limits import MAX_HEAD, BoundedHttpToolsProtocol, OneWriteCycle

BIG = bytes(range(256)) * 400  # 100 KiB: more than one TLS record
# The head deadline of the server under test. Each pause below is a fraction of it, chosen so that
# a client or a server thread delayed by a loaded machine by up to about a second (and the server's
# timers firing that late) changes no outcome.
HEAD_TIMEOUT = 4.0
WAIT = HEAD_TIMEOUT + 26.0  # how long a read waits for what must come (only a failure waits this long)
_STREAM_BODY = threading.Event()  # set by the test: /stream's body may go


class _Quick(BoundedHttpToolsProtocol):
    head_timeout = HEAD_TIMEOUT


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/stream":  # chunked, its first part late: the head must not wait for it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(int(WAIT / 0.01)):  # until the test has read the head
            if _STREAM_BODY.is_set():
                break
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body, headers = b"ok", [(b"content-length", b"2")]
    if path == "/addr":  # the addresses uvicorn puts in the scope
        body = json.dumps([scope["server"], scope["client"]]).encode()
        headers = [(b"content-length", str(len(body)).encode())]
    elif path == "/big":
        body, headers = BIG, [(b"content-length", str(len(BIG)).encode())]
    elif path == "/close":
        headers.append((b"connection", b"close"))
    elif path == "/empty":
        body, headers = b"", []
    await send(
        {"type": "http.response.start", "status": 204 if path == "/empty" else 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


def _serve(host: str = "127.0.0.1", loop: str = "asyncio") -> Iterator[int]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    config = uvicorn.Config(_app, http=_Quick, loop=loop, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _serve()


def _read_all(s: socket.socket, timeout: float = WAIT) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def _response(s: socket.socket) -> bytes:
    """One whole response of the test app (head, then the two-byte body)."""
    s.settimeout(WAIT)
    out = b""
    while not (out.startswith(b"HTTP/1.1 ") and out.endswith(b"\r\n\r\nok")):
        data = s.recv(4096)
        assert data, out
        out += data
    return out


def _request(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_requests_are_served_and_kept_alive(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request())
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5 * HEAD_TIMEOUT)  # idle: uvicorn's keep-alive (5 s), not the head deadline
        s.sendall(_request())
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.4 * HEAD_TIMEOUT)  # a third head gets its own deadline, counted from its first byte
        s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.4 * HEAD_TIMEOUT)  # past the connection's first deadline, within the head's
        s.sendall(b"Host: t\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_scope_has_the_connections_addresses(host: str, loop: str) -> None:
    """The server's and the client's address in the scope, IPv4 from what the transport noted
    when it accepted the connection, IPv6 as uvicorn looks them up: the socket's own."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    served = _serve(host, loop)
    try:
        port = next(served)
    except OSError:
        pytest.skip(f"cannot bind {host}")
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /addr HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            server, client = json.loads(_read_all(s).split(b"\r\n\r\n", 1)[1])
            assert server == list(s.getpeername()[:2])
            assert client == list(s.getsockname()[:2])
    finally:
        next(served, None)


def test_a_silent_connection_is_closed(port: int) -> None:
    started = time.monotonic()  # before the server can have accepted it
    with socket.create_connection(("127.0.0.1", port)) as s:
        assert _read_all(s) == b""  # closed without a word
        assert 0.9 * HEAD_TIMEOUT < time.monotonic() - started < HEAD_TIMEOUT + 10  # not the default 30 s


def test_a_slow_head_gets_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finished
        started = time.monotonic()
        assert _read_all(s).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < HEAD_TIMEOUT + 10  # not the default 30 s


def test_a_long_head_gets_431(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            for _ in range(2 * MAX_HEAD // 1024):
                s.sendall(b"a" * 1024)
        except OSError:
            pass
        assert _read_all(s).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port)) as s:  # just below the limit: served
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD - 200) + b"\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200 ")


def test_a_long_head_is_refused_when_it_comes_in_one_read(port: int) -> None:
    """Counted before the parser sees it: a whole head over MAX_HEAD sent at once (which the
    parser would complete in one read) is refused too; the body after a head under the limit,
    and a second head on the same connection, are not counted into it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n")
        assert _read_all(s).startswith(b"HTTP/1.1 431 ")
    head = b"POST / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD // 2) + b"\r\n"
    body = b"b" * MAX_HEAD
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        s.sendall(head + b"Content-Length: 0\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200 ")


def _read_until(s: socket.socket, end: bytes, timeout: float = WAIT) -> bytes:
    s.settimeout(timeout)
    out = b""
    while not out.endswith(end):
        data = s.recv(65536)
        assert data, out
        out += data
    return out


def test_a_streaming_head_is_sent_before_its_late_body(port: int) -> None:
    _STREAM_BODY.clear()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request("/stream"))
        head = _read_until(s, b"\r\n\r\n")  # the body waits for this read to end
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked\r\n" in head
        _STREAM_BODY.set()
        rest = _read_until(s, b"0\r\n\r\n")
        assert rest == b"5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n"
        s.sendall(_request())  # kept alive after a chunked response
        assert _response(s).startswith(b"HTTP/1.1 200 ")


def test_head_large_empty_and_closing_responses(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = _read_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 2\r\n" in head
        s.sendall(_request("/big"))  # the HEAD response had no body: this one follows directly
        data = _read_until(s, BIG)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + BIG)
        s.sendall(_request("/empty"))
        assert _read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 204 ")
        s.sendall(_request() + _request())  # pipelined: two responses, in order
        data = _read_until(s, b"\r\n\r\nok")
        if data.count(b"HTTP/1.1 200 ") == 1:
            data += _read_until(s, b"\r\n\r\nok")
        assert data.count(b"HTTP/1.1 200 ") == 2 and data.count(b"\r\n\r\nok") == 2
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request("/close"))
        data = _read_all(s)  # the server closes after the response
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok")
        assert b"connection: close\r\n" in data


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Flow:
    write_paused = False


def _cycle(method: str, transport: _Transport, *, keep_alive: bool = True) -> OneWriteCycle:
    scope: Any = {"type": "http", "method": method, "http_version": "1.1"}
    cycle = OneWriteCycle(
        scope=scope, transport=transport, flow=_Flow(), logger=None, access_logger=None,  # type: ignore[arg-type]
        access_log=False, default_headers=[], message_event=asyncio.Event(), expect_100_continue=False,
        keep_alive=keep_alive, on_response=lambda: None,
    )  # fmt: skip
    cycle.loop = asyncio.get_running_loop()
    return cycle


def test_one_write_per_response() -> None:
    async def run() -> None:
        t = _Transport()
        cycle = _cycle("POST", t)
        await cycle.send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        assert t.writes == []  # kept for the body
        await cycle.send({"type": "http.response.body", "body": b"hello"})
        assert t.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
        assert cycle.response_complete and not t.closed
        await asyncio.sleep(0)  # the end-of-iteration flush finds nothing left
        assert len(t.writes) == 1

        t = _Transport()  # a large body: head and body in one writelines
        cycle = _cycle("GET", t, keep_alive=False)
        await cycle.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(BIG)).encode())],
            }
        )
        await cycle.send({"type": "http.response.body", "body": BIG})
        assert len(t.writes) == 1 and t.writes[0].endswith(b"connection: close\r\n\r\n" + BIG)
        assert t.closed

        t = _Transport()  # no body yet at the end of the iteration: the head goes alone
        cycle = _cycle("GET", t)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        assert t.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
        await cycle.send({"type": "http.response.body", "body": b"abc", "more_body": False})
        assert t.writes[1:] == [b"3\r\nabc\r\n0\r\n\r\n"]

        t = _Transport()  # framing errors are still refused
        cycle = _cycle("GET", t)
        await cycle.send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]}
        )
        with pytest.raises(RuntimeError, match="longer than Content-Length"):
            await cycle.send({"type": "http.response.body", "body": b"xx"})
        cycle = _cycle("GET", _Transport())
        with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
            await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb")]})

    asyncio.run(run())


def test_head_deadlines_first_from_the_connection_then_from_each_head(port: int) -> None:
    # The first head's deadline counts from the connection: a late first byte does not move it.
    # Counted from that byte, the 408 could come no sooner than pause + HEAD_TIMEOUT after
    # `started`; counted from the connection it comes at HEAD_TIMEOUT (later only by as much as
    # the server is delayed, which may be up to almost `pause` here).
    pause = 0.5 * HEAD_TIMEOUT
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        time.sleep(pause)
        s.sendall(b"GET / HTTP/1.1\r\n")
        assert _read_all(s).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < pause + HEAD_TIMEOUT - 0.1
    # A later head's counts from its first byte, also when the connection's timer fires while
    # it is coming (at HEAD_TIMEOUT here, the head's deadline being 1.5 * HEAD_TIMEOUT).
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request())
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5 * HEAD_TIMEOUT)
        s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.6 * HEAD_TIMEOUT)
        s.sendall(b"Host: t\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()  # before the server can have its first byte
        s.sendall(b"GET / HTTP/1.1\r\n")  # and a third head that never ends is timed out
        assert _read_all(s).startswith(b"HTTP/1.1 408 ")
        assert 0.9 * HEAD_TIMEOUT < time.monotonic() - started < HEAD_TIMEOUT + 10  # not the default 30 s
