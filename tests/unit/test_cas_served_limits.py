"""The CAS's connection limits, body timeout and rate limits, against a served CAS: the real
``prepare()``, ``create_app()`` and ``uvicorn_server()`` (uvloop, TLS under the connection gate)
in a thread on loopback, driven over real sockets and real TLS. The rate limiters run on a clock
the tests move; connections from 127.0.0.2 and 127.0.0.3 are other clients (all of 127/8 is
loopback)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from confide import errors
from confide.cas.app import create_app
from confide.cas.client import RATE_LIMIT_RETRIES, CasClient
from confide.cas.server import prepare, uvicorn_server
from confide.httpserve.limits import MAX_PIPELINE, HttpLimits
from confide.httpserve.ratelimit import Rate, RateLimiter

# The TLS handshake and request body deadlines: a client or server delayed by a loaded machine by
# a second or two still meets them (the tests that want a timeout wait for it); and how long a
# read or a wait for a condition may take (only a failure waits this long).
TIMEOUT = 3.0
WAIT = 30.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    port: int
    context: ssl.SSLContext
    limits: HttpLimits
    attest: RateLimiter
    clock: _Clock
    cert: Path

    def tcp(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0))

    def tls(self, source: str = "127.0.0.1") -> ssl.SSLSocket:
        return self.context.wrap_socket(self.tcp(source), server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("cas")
    cas, evidence, key_path, cert_path, _env, _signer = prepare(
        data / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    clock = _Clock()
    limits = HttpLimits(
        max_connections=3, max_connections_per_client=2, body_timeout=TIMEOUT, handshake_timeout=TIMEOUT
    )
    attest = RateLimiter(Rate(1.0, 2.0), clock=clock)
    app = create_app(cas, cas_evidence=evidence, http_limits=limits, attest_limiter=attest)
    server = uvicorn_server(app, key_path, cert_path, None, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    context = ssl.create_default_context(cafile=str(cert_path))
    yield Served(sock.getsockname()[1], context, limits, attest, clock, cert_path)
    server.should_exit = True
    thread.join(10)


@pytest.fixture(autouse=True)
def _idle(served: Served) -> Iterator[None]:
    """Each test starts with no connection open and full buckets."""
    served.clock.now += 3600
    yield
    _until(lambda: served.limits.open == 0)


def _until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _exchange(s: socket.socket, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on an open connection; the status, headers and body of its response."""
    s.sendall(head.encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk, rest
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _post(path: str, body: bytes = b"") -> str:
    return f"POST {path} HTTP/1.1\r\nHost: cas\r\nContent-Length: {len(body)}\r\n\r\n"


def _health(s: socket.socket) -> int:
    return _exchange(s, "GET /v1/health HTTP/1.1\r\nHost: cas\r\n\r\n")[0]


def _refused(s: socket.socket) -> bool:
    """Closed by the CAS without a byte (not even a TLS alert), before any ClientHello."""
    with s:
        s.settimeout(WAIT)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def test_connections_over_the_limits_are_closed_before_the_handshake(served: Served) -> None:
    limits = served.limits
    per_client, total = limits.refused_per_client, limits.refused_total
    a, b = served.tls(), served.tls()  # the per-IP limit (2) from 127.0.0.1
    assert _health(a) == _health(b) == 200
    assert _refused(served.tcp())  # a third from 127.0.0.1
    assert limits.refused_per_client == per_client + 1
    with pytest.raises(OSError):
        served.tls()  # the same over TLS: the handshake fails
    c = served.tls("127.0.0.2")  # another client: admitted, the total limit (3) reached
    assert _health(c) == 200
    assert _refused(served.tcp("127.0.0.3"))
    assert limits.refused_total == total + 1
    assert limits.open == 3
    # A connection within the limits that sends nothing is held (until the handshake
    # deadline), not closed at once like the refused ones.
    a.close()
    _until(lambda: limits.open == 2)
    idle = served.tcp("127.0.0.3")
    idle.settimeout(0.3)
    with pytest.raises(TimeoutError):
        idle.recv(1)
    idle.close()
    _until(lambda: limits.open == 2)
    d = served.tls()  # recovered: 127.0.0.1 has one connection again
    assert _health(d) == 200
    metrics = _exchange(d, "GET /metrics HTTP/1.1\r\nHost: cas\r\n\r\n")[2].decode()
    assert "confide_cas_connections 3.0" in metrics
    assert f'confide_cas_connections_refused_total{{limit="per_ip"}} {limits.refused_per_client}.0' in metrics
    assert f'confide_cas_connections_refused_total{{limit="total"}} {limits.refused_total}.0' in metrics
    for s in (b, c, d):
        s.close()


def test_a_handshake_must_complete_in_time(served: Served) -> None:
    started = time.monotonic()  # before the CAS can have accepted it
    with served.tcp() as s:  # connects, never sends a ClientHello
        s.settimeout(WAIT)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        assert 0.9 * TIMEOUT < time.monotonic() - started < TIMEOUT + 5  # not the default 10 s
    _until(lambda: served.limits.open == 0)  # and its place is given back


def test_a_slow_body_gets_408(served: Served) -> None:
    before = served.limits.body_timeouts
    with served.tls() as s:
        body = json.dumps({"padding": "x" * 100}).encode()
        # In time (the body's deadline is TIMEOUT): served.
        s.sendall(_post("/v1/volumes/tag", body).encode() + body[:10])
        time.sleep(0.4)
        status, _, _ = _exchange(s, "", body[10:])
        assert status == 422  # the CAS's answer to this body (fields missing), not a timeout
        # Too slow: 408, and the connection is closed.
        started = time.monotonic()
        s.sendall(_post("/v1/volumes/tag", body).encode() + body[:10])
        status, headers, _ = _exchange(s, "")
        assert status == 408 and headers["connection"] == "close"
        assert 0.9 * TIMEOUT < time.monotonic() - started < TIMEOUT + 10  # not the default 60 s
        assert s.recv(1) == b""
    assert served.limits.body_timeouts == before + 1


@pytest.mark.parametrize("path", ["/v1/attest", "/v1/attest/nonce", "/v1/policies"])
def test_a_malformed_chunked_body_gets_400_at_once(served: Served, path: str) -> None:
    """On the attestation fast path and the full stack alike: a chunk size that is not hex ends
    the request with 400 and the connection closed, not with 408 at the body deadline (uvicorn
    held it, its application waiting for the rest of a body that could never come)."""
    before = served.limits.body_timeouts
    with served.tls() as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: cas\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\nZZ\r\n".encode()
        )
        status, headers, body = _exchange(s, "")
        assert (status, headers["connection"], body) == (400, "close", b"Invalid HTTP request received.")
        assert s.recv(1) == b""
    assert served.limits.body_timeouts == before


def test_pipelined_requests_past_the_bound_get_503(served: Served) -> None:
    """Over TLS, on the CAS: MAX_PIPELINE requests wait behind the first, the next is answered
    503 and the connection closed; /metrics counts it (uvicorn queued them all)."""
    before = served.limits.pipeline_too_deep
    with served.tls() as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: cas\r\n\r\n" * (MAX_PIPELINE + 20))
        statuses = [_exchange(s, "")[0] for _ in range(MAX_PIPELINE + 2)]
        assert statuses == [200] * (MAX_PIPELINE + 1) + [503]
        assert s.recv(1) == b""
    assert served.limits.pipeline_too_deep == before + 1
    with served.tls() as s:
        metrics = _exchange(s, "GET /metrics HTTP/1.1\r\nHost: cas\r\n\r\n")[2].decode()
    assert f'confide_cas_requests_refused_total{{reason="pipeline_too_deep"}} {before + 1}.0' in metrics


def test_rate_limit_429_with_retry_after_then_recovery(served: Served) -> None:
    limited = served.attest.limited
    with served.tls() as s:
        for _ in range(2):  # the burst
            status, _, body = _exchange(s, _post("/v1/attest/nonce"))
            assert status == 200 and json.loads(body)["nonce"]
        status, headers, body = _exchange(s, _post("/v1/attest/nonce"))
        assert status == 429 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["class"] == "NetworkError"
        attest = b'{"evidence": "' + b"A" * 5000 + b'"}'
        status, headers, _ = _exchange(s, _post("/v1/attest", attest), attest)  # the body is discarded
        assert status == 429 and "connection" not in headers  # kept alive
        spoofed = "POST /v1/attest/nonce HTTP/1.1\r\nHost: cas\r\nX-Forwarded-For: 203.0.113.9\r\n"
        assert _exchange(s, spoofed + "Content-Length: 0\r\n\r\n")[0] == 429  # not another client
        with served.tls("127.0.0.2") as other:  # another client has its own bucket
            assert _exchange(other, _post("/v1/attest/nonce"))[0] == 200
        served.clock.now += 0.5
        assert _exchange(s, _post("/v1/attest/nonce"))[0] == 429  # half a token
        served.clock.now += 0.5
        status, _, body = _exchange(s, _post("/v1/attest/nonce"))  # refilled, same connection
        assert status == 200 and json.loads(body)["nonce"]
        metrics = _exchange(s, "GET /metrics HTTP/1.1\r\nHost: cas\r\n\r\n")[2].decode()
    assert served.attest.limited == limited + 4
    assert f'confide_cas_rate_limited_total{{limit="attest"}} {served.attest.limited}.0' in metrics
    assert 'confide_requests_total{route="/v1/attest/nonce",status="429"}' in metrics
    assert 'limit="write"' not in metrics  # no write limiter configured


def test_the_client_waits_out_a_429(served: Served) -> None:
    """CasClient sends a request refused with 429 again after its Retry-After (here a sleep that
    moves the limiter's clock), a bounded number of times."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        served.clock.now += seconds

    url = f"https://127.0.0.1:{served.port}"
    with CasClient(url, served.cert, sleep=sleep) as client:
        assert len({client.nonce() for _ in range(4)}) == 4  # a burst of 2, then one a second
    assert waits == [1.0, 1.0]
    waits.clear()
    client = CasClient(url, served.cert, sleep=waits.append)  # the clock stands still
    with client, pytest.raises(errors.NetworkError, match="too many requests"):
        client.nonce()
    assert waits == [1.0] * RATE_LIMIT_RETRIES


def test_the_bucket_table_stays_bounded_under_many_clients(served: Served, tmp_path: Path) -> None:
    """Many source addresses (127.0.1.x) against a limiter with room for 4 buckets."""
    limiter = served.attest
    saved = limiter.max_clients
    limiter.max_clients = 4
    try:
        for n in range(1, 13):
            with served.tls(f"127.0.1.{n}") as s:
                assert _exchange(s, _post("/v1/attest/nonce"))[0] == 200
            _until(lambda: served.limits.open == 0)
        assert len(limiter) <= 4
        assert limiter.evicted >= 8
    finally:
        limiter.max_clients = saved


def test_no_session_tickets_by_default(served: Served) -> None:
    """confide's clients never resume a TLS session, so the CAS sends no TLS 1.3 session
    tickets (``SESSION_TICKETS``; a client that reads after the handshake would have them)."""
    with served.tls() as s:
        assert s.version() == "TLSv1.3"
        assert _health(s) == 200
        assert s.session is not None and not s.session.has_ticket


def test_session_tickets_when_asked_for(tmp_path: Path) -> None:
    cas, evidence, key_path, cert_path, _env, _signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    app = create_app(cas, cas_evidence=evidence)
    server = uvicorn_server(app, key_path, cert_path, None, HttpLimits(), session_tickets=2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _until(lambda: server.started, 20)
        context = ssl.create_default_context(cafile=str(cert_path))
        raw = socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=WAIT)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert _health(s) == 200
            assert s.session is not None and s.session.has_ticket
    finally:
        server.should_exit = True
        thread.join(10)
