"""``/metrics`` off the public API (confide.httpserve.metrics_listener; docs/cas.md "Metrics",
docs/ledger.md "Metrics and refusals"): the token file's rules, the bearer check, the refusal
log's rate; and a ledger tiles server run in a thread with ``metrics_listen`` and
``metrics_tokens``, driven over real sockets: the metrics listener answers ``/metrics`` only and
only with the token, the API listener answers it ``404``, the listener's own connection limit,
and both stop together."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.errors import UsageError
from confide.httpserve.limits import HttpLimits
from confide.httpserve.metrics_listener import (
    FAILURE_RATE,
    MIN_TOKEN,
    MetricsAuth,
    TokenSet,
    read_metrics_tokens,
)
from confide.httpserve.ratelimit import MAX_CLIENTS, Rate, RateLimiter, RefusalLog
from confide.ledger.http import TilesServer, ledger_limits
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction

TOKEN = b"s3cret-metrics-token-0123456789"
TOKENS = TokenSet.of([("prometheus", TOKEN)])
WAIT = 10.0


def _token_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "token"
    path.write_bytes(data)
    return path


def _one(tmp_path: Path, data: bytes) -> tuple[str, ...]:
    """The names of the tokens of a file of ``data`` that match TOKEN (the whole set: one)."""
    tokens = read_metrics_tokens(_token_file(tmp_path, data))
    assert len(tokens) == 1
    name = tokens.match(TOKEN)
    return (name,) if name is not None else ()


def test_a_token_file_of_one_token_as_before(tmp_path: Path) -> None:
    assert _one(tmp_path, TOKEN + b"\n") == ("line-1",)
    assert _one(tmp_path, TOKEN) == ("line-1",)
    assert _one(tmp_path, TOKEN + b"\r\n\n") == ("line-1",)  # a CRLF, a blank line
    tokens = read_metrics_tokens(_token_file(tmp_path, b"a" * MIN_TOKEN))
    assert tokens.match(b"a" * MIN_TOKEN) == "line-1" and tokens.match(b"a" * (MIN_TOKEN + 1)) is None


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "no token in it"),
        (b"\n", "no token in it"),
        (b"# only a comment\n\n", "no token in it"),
        (
            b"a" * (MIN_TOKEN - 1) + b"\n",
            f"line 1: the token has {MIN_TOKEN - 1} bytes, expected at least {MIN_TOKEN}",
        ),
        (b"two words in the token file", "line 1: the token has a byte that is not printable"),
        (TOKEN + b"\x00", "not printable"),
        (TOKEN + "é".encode(), "not printable"),
    ],
)
def test_bad_token_files_are_usage_errors_without_the_content(tmp_path: Path, data: bytes, says: str) -> None:
    with pytest.raises(UsageError) as info:
        read_metrics_tokens(_token_file(tmp_path, data))
    message = info.value.message
    assert says in message and "--metrics-token-file" in message and "\n" not in message
    if len(data) > 2:
        assert data.strip().decode("utf-8", "replace")[:8] not in message  # never the token


def test_a_missing_or_special_token_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read --metrics-token-file"):
        read_metrics_tokens(tmp_path / "absent")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="cannot read --metrics-token-file"):
        read_metrics_tokens(fifo)  # at once: not a read that waits for a writer
    with pytest.raises(UsageError, match="larger than"):
        read_metrics_tokens(_token_file(tmp_path, b"a" * 70000))


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers), "client": ("192.0.2.7", 40000)}


def test_the_bearer_check(caplog: pytest.LogCaptureFixture) -> None:
    auth = MetricsAuth(TOKENS, RefusalLog(logger="confide.test"))
    assert TOKEN.decode() not in repr(auth)
    assert auth.refusal(_scope((b"authorization", b"Bearer " + TOKEN)), "api") is None
    assert auth.refusal(_scope((b"authorization", b"bearer " + TOKEN)), "api") is None  # RFC 9110 §11.1
    assert auth.refusal(_scope((b"authorization", b"BEARER  " + TOKEN + b" ")), "api") is None
    assert auth.refusals is not None and auth.refused == {"missing": 0, "wrong": 0, "limited": 0}
    with caplog.at_level(logging.WARNING, logger="confide.test"):
        refused = auth.refusal(_scope(), "metrics")
        assert refused is not None
        status, headers, _ = refused
        assert status == 401 and dict(headers)[b"www-authenticate"] == b'Bearer realm="metrics"'
        for sent in (b"Bearer " + TOKEN[:-1], b"Bearer " + TOKEN + b"x", b"Basic " + TOKEN, TOKEN, b"Bearer"):
            refused = auth.refusal(_scope((b"authorization", sent)), "api")
            assert refused is not None and refused[0] == 401
        assert b'error="invalid_token"' in dict(refused[1])[b"www-authenticate"]
        two = _scope((b"authorization", b"Bearer " + TOKEN), (b"authorization", b"Bearer " + TOKEN))
        assert auth.refusal(two, "api") is not None  # two Authorization headers: refused
    # missing: none, "Basic", the bare token; wrong: shorter, longer, "Bearer" alone, two headers
    assert auth.refused == {"missing": 3, "wrong": 4, "limited": 0}
    assert len(caplog.records) == 7  # within the refusal log's burst
    for record in caplog.records:
        text = record.getMessage()
        assert TOKEN.decode()[:12] not in text
        assert '"reason": "metrics-unauthorized"' in text and '"client": "192.0.2.7"' in text


def test_the_refusal_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    auth = MetricsAuth(TOKENS, RefusalLog(Rate(1.0, 2.0), clock=lambda: now[0], logger="confide.test"))
    with caplog.at_level(logging.WARNING, logger="confide.test"):
        for _ in range(10):
            assert auth.refusal(_scope(), "metrics") is not None
        assert len(caplog.records) == 2  # the burst
        now[0] = 1.0
        assert auth.refusal(_scope(), "metrics") is not None
    assert len(caplog.records) == 3 and '"suppressed": 8' in caplog.records[-1].getMessage()
    assert auth.refused["missing"] == 11  # all counted


def test_refused_scrapes_are_rate_limited_per_client(caplog: pytest.LogCaptureFixture) -> None:
    """Each 401 takes a token from the client's bucket (5 a second, 20 at once): once it is
    empty, 429 with Retry-After and the token is not checked, the right one neither; another
    client is not affected; a right token takes nothing; the bucket fills again with time."""
    now = [0.0]
    lines = RefusalLog(Rate(100.0, 100.0), logger="confide.test")  # every refusal logged
    auth = MetricsAuth(TOKENS, lines, clock=lambda: now[0])
    assert Rate(5.0, 20.0) == FAILURE_RATE and auth.failures.max_clients == MAX_CLIENTS
    wrong = (b"authorization", b"Bearer " + b"x" * len(TOKEN))
    right = (b"authorization", b"Bearer " + TOKEN)
    for _ in range(5):
        assert auth.refusal(_scope(right), "api") is None  # takes nothing
    for _ in range(20):
        refused = auth.refusal(_scope(wrong), "metrics")
        assert refused is not None and refused[0] == 401
    with caplog.at_level(logging.WARNING, logger="confide.test"):
        for sent in (wrong, right):
            refused = auth.refusal(_scope(sent), "metrics")
            assert refused is not None
            status, headers, _ = refused
            assert status == 429 and dict(headers)[b"retry-after"] == b"1"
    assert '"cause": "limited"' in caplog.text and TOKEN.decode()[:12] not in caplog.text
    other = {"type": "http", "headers": [right], "client": ("198.51.100.1", 1)}
    assert auth.refusal(other, "metrics") is None
    now[0] = 0.2  # one refused scrape more
    assert auth.refusal(_scope(right), "metrics") is None
    refused = auth.refusal(_scope(wrong), "metrics")
    assert refused is not None and refused[0] == 401
    refused = auth.refusal(_scope(wrong), "metrics")
    assert refused is not None and refused[0] == 429
    assert auth.refused == {"missing": 0, "wrong": 21, "limited": 3}


def test_a_short_token_is_refused_by_the_class_too() -> None:
    with pytest.raises(ValueError, match="too short"):
        TokenSet.of([("a", b"short")])


# --- a ledger tiles server with its metrics listener, in a thread, over real sockets ---


def _response(s: socket.socket, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while not head and len(rest) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk, rest
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _request(port: int, method: str, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: m\r\n{extra}\r\n".encode())
        return _response(s, head=method == "HEAD")


def _closed(s: socket.socket) -> bool:
    s.settimeout(WAIT)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if (
            m is not None
            and m.group(1) == name
            and dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or "")) == labels
        ):
            return float(m.group(3))
    return None


AUTH = f"Authorization: Bearer {TOKEN.decode()}\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TilesServer]:
    db = tmp_path / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [b"e0", b"e1"])
    Ledger().sign_checkpoint(conn, NoteSigner.generate("example.com/log"))
    conn.close()
    limits: HttpLimits = ledger_limits(max_connections=8, max_connections_per_client=2)
    tiles = TilesServer(db, ("127.0.0.1", 0), limits=limits, rate=None, metrics_listen=("127.0.0.1", 0),
                        metrics_tokens=TOKENS)  # fmt: skip
    tiles.serve_in_thread()
    try:
        yield tiles
    finally:
        tiles.shutdown()
        tiles.server_close()


def test_the_metrics_listener_of_a_ledger_server(
    server: TilesServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.metrics_url is not None and server.metrics_address is not None
    api, port = server.server_address[1], server.metrics_address[1]
    assert server.metrics_url == f"http://127.0.0.1:{port}/metrics" and port != api
    with caplog.at_level(logging.INFO):
        status, headers, body = _request(port, "GET", "/metrics", AUTH)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=")
        assert headers["cache-control"] == "no-store"
        assert _metric(body.decode(), "confide_ledger_http_connections_open") is not None
        status, head_headers, head_body = _request(port, "HEAD", "/metrics?x=1", AUTH)  # query ignored
        assert status == 200 and head_body == b"" and int(head_headers["content-length"]) > 0
        status, headers, body = _request(port, "GET", "/metrics")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert b"confide_" not in body
        status, headers, _ = _request(
            port, "GET", "/metrics", "Authorization: Bearer wrong-token-0123456789\r\n"
        )
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        status, headers, _ = _request(port, "HEAD", "/metrics")
        assert status == 401
        # only /metrics: the API's paths are not there, other methods 405
        for path in ("/checkpoint", "/tile/0/000.p/2", "/", "/metrics/", "/Metrics"):
            status, headers, body = _request(port, "GET", path, AUTH)
            assert (status, body) == (404, b""), path
        status, headers, _ = _request(port, "POST", "/metrics", AUTH + "Content-Length: 0\r\n")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:  # no body is read there
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: m\r\n{AUTH}Content-Length: 5\r\n\r\nhello".encode())
            status, headers, _ = _response(s)
            assert status == 413 and _closed(s)
        # the API listener: /metrics is an unknown path there (the token changes nothing)
        for method in ("GET", "HEAD"):
            status, _, body = _request(api, method, "/metrics", AUTH)
            assert status == 404 and b"confide_" not in body
        assert _request(api, "GET", "/checkpoint")[0] == 200
        # the listener's own connection limit (2 per client), counted apart from the API's
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as a,
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as b,
        ):
            a.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n" + AUTH.encode() + b"\r\n")
            assert _response(a)[0] == 200
            b.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n" + AUTH.encode() + b"\r\n")
            assert _response(b)[0] == 200
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
                assert _closed(c)  # a third from the same client: closed when accepted
            assert _request(api, "GET", "/checkpoint")[0] == 200  # the API's slots are its own
        _, _, body = _request(port, "GET", "/metrics", AUTH)
    text = body.decode()
    assert _metric(text, "confide_metrics_unauthorized_total", reason="missing") == 2
    assert _metric(text, "confide_metrics_unauthorized_total", reason="wrong") == 1
    assert _metric(text, "confide_metrics_http_requests_total", status="401") == 3
    assert _metric(text, "confide_metrics_http_requests_total", status="404") == 5
    assert _metric(text, "confide_metrics_http_refused_total", reason="per_ip") == 1
    assert _metric(text, "confide_ledger_http_requests_total", route="other", status="404") == 2
    assert _metric(text, "confide_ledger_http_requests_total", route="metrics", status="200") is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN.decode() not in logged and "wrong-token" not in logged
    assert '"reason": "metrics-unauthorized"' in logged
    assert '"listener": "metrics", "reason": "max-connections-per-client"' in logged


def _from(source: str, port: int, extra: str = "") -> int:
    """The status of ``GET /metrics`` sent from the loopback address ``source``."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(source, 0)) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: m\r\n{extra}\r\n".encode())
        status, headers, _ = _response(s)
        if status == 429:
            assert headers["retry-after"] == "1"
        return status


WRONG = "Authorization: Bearer wrong-token-0123456789\r\n"


@pytest.mark.parametrize("where", ["metrics", "api"])
def test_a_burst_of_wrong_tokens_gets_429s(tmp_path: Path, where: str) -> None:
    """Over real sockets, on the metrics listener and on the API listener's /metrics: a client
    trying tokens gets 401 for its burst of 20, then 429 (its right token too: not checked);
    the right token from another client is served; the 429s are counted apart; the limiter
    keeps at most its bound of clients (a small one here)."""
    db = tmp_path / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    conn.close()
    listen = ("127.0.0.1", 0) if where == "metrics" else None
    tiles = TilesServer(db, ("127.0.0.1", 0), rate=None, metrics_listen=listen, metrics_tokens=TOKENS)
    tiles.serve_in_thread()
    try:
        auth = tiles.metrics_auth
        assert auth is not None and auth.failures.max_clients == MAX_CLIENTS
        now = [0.0]
        auth.failures.clock = lambda: now[0]
        port = tiles.metrics_address[1] if tiles.metrics_address else tiles.server_address[1]
        assert [_from("127.0.0.2", port, WRONG) for _ in range(20)] == [401] * 20
        assert _from("127.0.0.2", port, WRONG) == 429
        assert _from("127.0.0.2", port) == 429  # no token: 429 as well
        assert _from("127.0.0.2", port, AUTH) == 429  # not checked
        assert _from("127.0.0.3", port, AUTH) == 200  # another client
        assert _from("127.0.0.3", port, WRONG) == 401
        now[0] = 1.0  # five refused scrapes more
        assert _from("127.0.0.2", port, AUTH) == 200
        assert [_from("127.0.0.2", port, WRONG) for _ in range(6)] == [401] * 5 + [429]
        assert len(auth.failures) == 2
        auth.failures = RateLimiter(FAILURE_RATE, max_clients=2, clock=lambda: now[0])
        for source in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
            assert _from(source, port, WRONG) == 401
        assert len(auth.failures) == 2 and auth.failures.evicted == 1
        with socket.create_connection(
            ("127.0.0.1", port), timeout=WAIT, source_address=("127.0.0.3", 0)
        ) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n" + AUTH.encode() + b"\r\n")
            _, _, body = _response(s)
    finally:
        tiles.shutdown()
        tiles.server_close()
    text = body.decode()
    assert _metric(text, "confide_metrics_unauthorized_total", reason="limited") == 4
    assert _metric(text, "confide_metrics_unauthorized_total", reason="wrong") == 20 + 1 + 5 + 3
    assert _metric(text, "confide_metrics_unauthorized_total", reason="missing") == 0


def test_both_listeners_stop_together(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    conn.close()
    tiles = TilesServer(db, ("127.0.0.1", 0), metrics_listen=("127.0.0.1", 0))
    tiles.serve_in_thread()
    assert tiles.metrics_address is not None
    port = tiles.metrics_address[1]
    status, _, body = _request(port, "GET", "/metrics")  # no token: no 401
    assert status == 200 and b"confide_metrics_unauthorized" not in body
    tiles.shutdown()
    tiles.server_close()
    deadline = time.monotonic() + WAIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the metrics listener is still accepting"
        time.sleep(0.05)


def test_a_metrics_address_that_cannot_be_bound(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    connect(db).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"--metrics-listen: cannot bind 127.0.0.1:{port}"):
            TilesServer(db, ("127.0.0.1", 0), metrics_listen=("127.0.0.1", port))
