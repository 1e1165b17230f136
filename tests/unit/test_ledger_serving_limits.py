"""The ledger's servers (`TilesServer`, `WitnessServer`) on the shared hardened stack, over real
sockets on 127.0.0.1: connections over the total or per-client limit closed when accepted (and
before a TLS handshake), slow heads and bodies timed out (408), oversized heads (431) and
bodies (400) refused, per-client rate limits (429 with Retry-After, waited out by the
auditor's client), TLS, and concurrent add-checkpoint requests serialised by the witness."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import httpx2
import pytest

import confide.ledger.http
from confide.httpserve.ratelimit import Rate
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.http import HttpLogClient, TilesServer, ledger_limits, server_tls_context
from confide.ledger.merkle import mth
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import MAX_REQUEST_SIZE, Witness
from confide.ledger.witness_http import WitnessServer
from pki import tls_server_files

ORIGIN = "cas.example/ledger"
S = TypeVar("S", TilesServer, WitnessServer)
LEAVES = [i.to_bytes(4, "big") for i in range(64)]
# Deadlines of the servers under test: a client delayed by a loaded machine by a second or two
# still sends what it means to send in time (and only a failure waits WAIT for an answer).
TIMEOUT = 3.0
WAIT = 30.0


class _Clock:
    """A rate limiter's monotonic clock that moves only when the test moves it: no pause of a
    loaded machine between two requests refills a bucket."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "log.db"
    conn = connect(path)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [f"e{i}".encode() for i in range(300)])
    Ledger().sign_checkpoint(conn, NoteSigner.generate(ORIGIN))
    conn.close()
    return path


@pytest.fixture
def witness(tmp_path: Path) -> tuple[Witness, NoteSigner]:
    log = NoteSigner.generate(ORIGIN)
    signer = NoteSigner.generate("w.example/1", SIG_TYPE_COSIGNATURE_V1)
    return Witness(signer, tmp_path / "w.json", {ORIGIN: log.verifier}), log


@contextlib.contextmanager
def _started(server: S) -> Iterator[S]:
    server.serve_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _port(server: TilesServer | WitnessServer) -> int:
    return server.server_address[1]


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed SOCK without answering (EOF or reset within WAIT)."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _add_body(old: int, note: bytes) -> bytes:
    return f"old {old}\n".encode() + b"\n" + note


def _cp(log: NoteSigner, n: int) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, n, mth(LEAVES[:n])), log)


def test_connections_over_the_limits_are_closed_when_accepted(db: Path) -> None:
    limits = ledger_limits(max_connections=0, max_connections_per_client=2)
    with _started(TilesServer(db, ("127.0.0.1", 0), limits=limits, rate=None)) as server:
        held = [socket.create_connection(("127.0.0.1", _port(server))) for _ in range(2)]
        try:
            with socket.create_connection(("127.0.0.1", _port(server))) as third:
                assert _closed(third)  # over the per-client limit: closed, nothing answered
            held[0].sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_all(held[0]).startswith(b"HTTP/1.1 200 ")  # the admitted ones are served
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + WAIT
        while server.limits.open and time.monotonic() < deadline:  # released when closed
            time.sleep(0.01)
        assert server.limits.open == 0
        assert server.limits.refused_per_client == 1
        assert httpx2.get(server.url + "/checkpoint", timeout=10).status_code == 200

    limits = ledger_limits(max_connections=1, max_connections_per_client=0)
    with _started(TilesServer(db, ("127.0.0.1", 0), limits=limits, rate=None)) as server:
        with socket.create_connection(("127.0.0.1", _port(server))) as first:
            first.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n\r\n")
            first.settimeout(10)
            assert first.recv(4096).startswith(b"HTTP/1.1 200 ")  # admitted (and kept alive)
            with socket.create_connection(("127.0.0.1", _port(server))) as second:
                assert _closed(second)
        assert server.limits.refused_total == 1


def test_slow_heads_and_bodies_are_timed_out(witness: tuple[Witness, NoteSigner]) -> None:
    w, log = witness
    limits = ledger_limits(head_timeout=TIMEOUT, body_timeout=TIMEOUT)
    with _started(WitnessServer(w, ("127.0.0.1", 0), limits=limits, rate=None)) as server:
        with socket.create_connection(("127.0.0.1", _port(server))) as slow:
            slow.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            assert _read_all(slow).startswith(b"HTTP/1.1 408 ")
        with socket.create_connection(("127.0.0.1", _port(server))) as silent:
            assert _closed(silent)  # nothing sent: closed without an answer
        body = _add_body(0, _cp(log, 10))
        with socket.create_connection(("127.0.0.1", _port(server))) as trickle:
            head = f"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            trickle.sendall(head.encode() + body[:10])  # the rest of the body never comes
            assert _read_all(trickle).startswith(b"HTTP/1.1 408 ")
        assert (server.limits.head_timeouts, server.limits.body_timeouts) == (2, 1)
        assert w.latest(ORIGIN) is None  # nothing cosigned by the cut-off request
        resp = httpx2.post(server.url + "/add-checkpoint", content=body, timeout=10)
        assert resp.status_code == 200


def test_oversized_heads_and_bodies_are_refused(witness: tuple[Witness, NoteSigner]) -> None:
    w, _ = witness
    with _started(WitnessServer(w, ("127.0.0.1", 0), rate=None)) as server:
        with socket.create_connection(("127.0.0.1", _port(server))) as big_head:
            big_head.sendall(b"POST /add-checkpoint HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
            assert _read_all(big_head).startswith(b"HTTP/1.1 431 ")
        with socket.create_connection(("127.0.0.1", _port(server))) as big_body:
            head = (
                f"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_REQUEST_SIZE + 1}\r\n\r\n"
            )
            big_body.sendall(head.encode() + b"x" * 65536)
            reply = _read_all(big_body)  # answered without reading the body, then closed
            assert reply.startswith(b"HTTP/1.1 400 ") and b"connection: close" in reply.lower()
        resp = httpx2.post(server.url + "/add-checkpoint", content=b"x" * (MAX_REQUEST_SIZE + 1), timeout=10)
        assert resp.status_code == 400
        chunked = httpx2.post(server.url + "/add-checkpoint", content=iter([b"old 0\n"]), timeout=10)
        assert chunked.status_code == 400  # no Content-Length: refused as before


def test_rate_limits(db: Path, witness: tuple[Witness, NoteSigner], monkeypatch: pytest.MonkeyPatch) -> None:
    w, log = witness
    clock = _Clock()
    with _started(WitnessServer(w, ("127.0.0.1", 0), rate=Rate(0.5, 2))) as server:
        assert server.limiter is not None
        server.limiter.clock = clock
        with httpx2.Client(timeout=10) as http:
            post = lambda body: http.post(server.url + "/add-checkpoint", content=body)  # noqa: E731
            assert post(_add_body(0, _cp(log, 10))).status_code == 200
            assert post(_add_body(0, _cp(log, 20))).status_code == 409
            refused = post(_add_body(10, _cp(log, 20)))
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "2"
            assert refused.headers["content-type"] == "text/plain; charset=utf-8"
        assert w.latest(ORIGIN) is not None and w.latest(ORIGIN).size == 10  # type: ignore[union-attr]
        assert server.limiter is not None and server.limiter.limited == 1

    with (
        _started(TilesServer(db, ("127.0.0.1", 0), rate=Rate(1, 1))) as server,
        httpx2.Client(timeout=10) as http,
    ):
        assert server.limiter is not None
        server.limiter.clock = clock
        assert http.get(server.url + "/checkpoint").status_code == 200
        refused = http.get(server.url + "/checkpoint")
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
        # The auditor's client waits out Retry-After (a second here) and gets it.
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            clock.now += seconds

        monkeypatch.setattr(confide.ledger.http, "time", SimpleNamespace(sleep=sleep))
        assert HttpLogClient(server.url, client=http).fetch("checkpoint") is not None
        assert waits == [1] and server.limiter.limited == 2


def test_tls(tmp_path: Path, db: Path) -> None:
    ca, cert, key = tls_server_files(tmp_path, "ledger")
    limits = ledger_limits(max_connections_per_client=1, handshake_timeout=TIMEOUT)
    tls = server_tls_context(cert, key)
    with _started(TilesServer(db, ("127.0.0.1", 0), tls=tls, limits=limits, rate=None)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        client = ssl.create_default_context(cafile=str(ca))
        with httpx2.Client(verify=client, timeout=10) as http:
            resp = http.get(server.url + "/checkpoint")
            assert resp.status_code == 200 and resp.text.startswith(ORIGIN + "\n300\n")
            assert resp.headers["content-type"] == "text/plain; charset=utf-8"
            assert resp.headers["cache-control"] == "no-cache"
            tile = http.get(server.url + "/tile/0/000")
            assert tile.status_code == 200 and len(tile.content) == 256 * 32
            assert tile.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert http.get(server.url + "/tile/entries/000").status_code == 404  # not public
        # The one connection this client may hold: a second is closed before its handshake.
        with socket.create_connection(("127.0.0.1", _port(server))) as held:
            with socket.create_connection(("127.0.0.1", _port(server))) as refused:
                assert _closed(refused)
            assert _closed(held)  # no ClientHello within the handshake timeout: closed
        assert server.limits.refused_per_client == 1


def test_concurrent_add_checkpoints_are_serialised(witness: tuple[Witness, NoteSigner]) -> None:
    """Sixteen logs' worth of racing requests from size 0: exactly one is cosigned, the others
    learn its size (409), and the state file holds that one."""
    w, log = witness
    with _started(WitnessServer(w, ("127.0.0.1", 0), rate=None)) as server:
        bodies = [_add_body(0, _cp(log, n)) for n in range(10, 26)]

        def post(body: bytes) -> httpx2.Response:
            return httpx2.post(server.url + "/add-checkpoint", content=body, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(post, bodies))
        ok = [n for n, r in zip(range(10, 26), replies, strict=True) if r.status_code == 200]
        assert len(ok) == 1
        assert sorted(r.status_code for r in replies) == [200] + [409] * 15
        assert {r.text for r in replies if r.status_code == 409} == {f"{ok[0]}\n"}
        assert {r.headers["content-type"] for r in replies if r.status_code == 409} == {"text/x.tlog.size"}
        reloaded = Witness(w.signer, w.state_path, dict(w.logs))
        assert reloaded.latest(ORIGIN) is not None and reloaded.latest(ORIGIN).size == ok[0]  # type: ignore[union-attr]


def test_methods_and_paths(db: Path, witness: tuple[Witness, NoteSigner]) -> None:
    w, _ = witness
    with _started(WitnessServer(w, ("127.0.0.1", 0), prefix="/w/")) as server:
        assert server.url.endswith("/w")
        with httpx2.Client(timeout=10) as http:
            assert http.get(server.url + "/add-checkpoint").status_code == 501
            assert http.post(server.url + "/add-checkpoint?x=1", content=b"").status_code == 404
            assert (
                http.post(server.url.removesuffix("/w") + "/add-checkpoint", content=b"").status_code == 404
            )
            assert http.post(server.url + "/add-checkpoint", content=b"garbage").status_code == 400
    with (
        _started(TilesServer(db, ("127.0.0.1", 0), prefix="/log")) as tiles,
        httpx2.Client(timeout=10) as http,
    ):
        assert http.post(tiles.url + "/checkpoint").status_code == 501
        head = http.head(tiles.url + "/checkpoint")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert http.get(tiles.url + "/checkpoint?x").status_code == 404
        assert http.get(tiles.url.removesuffix("/log") + "/checkpoint").status_code == 404
        assert http.get(tiles.url + "/tile/0/001").status_code == 404  # beyond the tree
        partial = http.get(tiles.url + "/tile/0/001.p/44")
        assert partial.status_code == 200 and len(partial.content) == 44 * 32
