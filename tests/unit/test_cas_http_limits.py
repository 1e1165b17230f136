"""`confide.cas.http_limits.BoundedHttpToolsProtocol` under a real uvicorn server on loopback:
request heads are bounded in size (431) and time (408, or a silent close), and ordinary
requests, kept-alive ones included, are served as before."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from confide.cas.http_limits import MAX_HEAD, BoundedHttpToolsProtocol


class _Quick(BoundedHttpToolsProtocol):
    head_timeout = 1.0


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=_Quick, loop="asyncio", log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
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
    s.settimeout(5)
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
        time.sleep(0.6)  # idle between requests: uvicorn's keep-alive (5 s), not the head deadline
        s.sendall(_request())
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.6)  # a second head gets its own deadline, counted from its first byte
        s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.6)
        s.sendall(b"Host: t\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200 ")


def test_a_silent_connection_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        assert _read_all(s) == b""  # closed without a word
        assert 0.8 < time.monotonic() - started < 4


def test_a_slow_head_gets_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finished
        started = time.monotonic()
        assert _read_all(s).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 4


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
