"""The metrics listener's tokens and TLS (confide.httpserve.metrics_listener; docs/cas.md "Metrics:
a listener of its own, tokens", docs/ledger.md "Metrics and refusals"): the token file's lines
(names, comments, duplicates), the compare against every token, the file reloaded (a bad one
keeps the tokens in use), the scrapes counted per scraper; and a ledger tiles server run in a
thread whose metrics listener serves HTTPS, driven over real sockets with a client verifying
against the CA (another CA refused, plain HTTP and TLS 1.1 refused), its tokens rotated and its
certificate reloaded."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from confide.errors import UsageError
from confide.httpserve import metrics_listener
from confide.httpserve.certreload import CertificateReloader
from confide.httpserve.metrics_listener import (
    MAX_TOKENS,
    METRICS_TLS_OPTIONS,
    MetricsAuth,
    MetricsTokenFile,
    TokenSet,
    metrics_files,
    parse_metrics_tokens,
)
from confide.httpserve.ratelimit import Rate, RefusalLog
from confide.ledger.http import TilesServer
from confide.ledger.store import Ledger, connect
from pki import tls_server_files

OLD = "old-token-0123456789abcdefghij"
NEW = "new-token-ZYXWVUTSRQPONMLKJIH"
OTHER = "grafana-agent-token-9876543210"
WHERE = "--metrics-token-file 't'"


def _parse(text: str) -> TokenSet:
    return parse_metrics_tokens(text.encode(), WHERE)


def test_the_lines_of_a_token_file() -> None:
    tokens = _parse(
        f"# the scrapers of /metrics\n\nprometheus:{OLD}\n  {OTHER}  \r\n\t# indented comment\n"
        f"prom-2.b_x:{NEW}\n"
    )
    assert tokens.names == ("prometheus", "line-4", "prom-2.b_x")
    assert tokens.match(OLD.encode()) == "prometheus"
    assert tokens.match(OTHER.encode()) == "line-4"  # unnamed: its line number
    assert tokens.match(NEW.encode()) == "prom-2.b_x"
    assert tokens.match(b"prometheus:" + OLD.encode()) is None  # the name is not part of the token
    assert tokens.match(OLD.encode()[:-1]) is None and tokens.match(b"") is None
    assert OLD not in repr(tokens) and repr(tokens) == "TokenSet(prometheus, line-4, prom-2.b_x)"
    # a colon in a token: the part before it is a name only if it looks like one
    odd = "a token?:" + "x" * 20
    assert _parse(odd.replace(" ", "")).match(b"x" * 20) is None  # "atoken?" is no name: the whole line
    assert _parse("scraper:" + OLD + ":more").match((OLD + ":more").encode()) == "scraper"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no token in it (blank lines and # comments only)"),
        ("# nothing\n   \n", "no token in it"),
        (f"{OLD}\nshort-token\n", "line 2: the token has 11 bytes, expected at least 16"),
        ("name:\n", "line 1: the token has 0 bytes"),
        (f"a:{OLD}\nb:{OLD}\n", "line 2: the same token as line 1"),
        (f"{OLD}\n\n{OLD}\n", "line 3: the same token as line 1"),
        (f"p:{OLD}\np:{NEW}\n", "line 2: the name 'p' is line 1's too"),
        (f"line-2:{OLD}\n{NEW}\n", "line 2: the name 'line-2' is line 1's too"),
        (f"{OLD} {NEW}\n", "line 1: the token has a byte that is not printable ASCII"),
        (f"p:{OLD}\x00\n", "line 1: the token has a byte that is not printable ASCII"),
        (f"p:{OLD}é\n", "line 1: the token has a byte that is not printable ASCII"),
    ],
)
def test_bad_token_files_name_the_line_never_the_token(text: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        _parse(text)
    message = info.value.message
    assert message.startswith(WHERE) and says in message and "\n" not in message, message
    for token in (OLD, NEW, "short-token"):
        assert token[:8] not in message


def test_at_most_max_tokens() -> None:
    lines = [f"s{i}:{i:032d}" for i in range(MAX_TOKENS)]
    assert len(_parse("\n".join(lines))) == MAX_TOKENS
    with pytest.raises(UsageError, match=f"more than {MAX_TOKENS} tokens"):
        _parse("\n".join([*lines, "one-more:" + "y" * 32]))


def test_a_scrape_is_compared_with_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest of SHA-256 digests, once for each token, whichever matches (the first,
    the last, none): no early exit, nothing compared as it was sent."""
    tokens = _parse(f"a:{OLD}\nb:{NEW}\nc:{OTHER}\n")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(metrics_listener.hmac, "compare_digest", spy)
    for sent, name in ((OLD, "a"), (OTHER, "c"), ("nope-nope-nope-nope", None), ("", None), (NEW, "b")):
        calls.clear()
        assert tokens.match(sent.encode()) == name
        assert len(calls) == 3, sent
        digest = hashlib.sha256(sent.encode()).digest()
        assert all(a == digest and len(b) == 32 for a, b in calls)
        assert {b for _, b in calls} == {hashlib.sha256(t.encode()).digest() for t in (OLD, NEW, OTHER)}


def _scope(token: str | None, client: str = "192.0.2.9") -> dict[str, object]:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return {"type": "http", "headers": headers, "client": (client, 1)}


def _write(path: Path, text: str) -> None:
    """Replace ``path`` by a rename (a reader sees the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_token_file_reloaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Rotation: the old token and the new one both accepted while both are in the file, the
    old one refused once it is gone and the file reloaded; a bad file keeps the tokens in use
    (logged without a token, counted); poll() reloads only a changed file; each scraper's
    accepted scrapes counted, its first one (again after a reload) logged."""
    path = tmp_path / "tokens"
    _write(path, f"prometheus:{OLD}\n")
    tokens = MetricsTokenFile(path, logger="test.tokens")
    auth = MetricsAuth(tokens, RefusalLog(Rate(100.0, 100.0), logger="test.tokens"), logger="test.tokens")
    assert auth.reloader is tokens and auth.check(_scope(OLD), "metrics") == (None, "prometheus")
    with caplog.at_level(logging.INFO, logger="test.tokens"):
        assert tokens.poll() is None  # unchanged: not read
        _write(path, f"prometheus:{OLD}\nprometheus-next:{NEW}\n")  # the new token added
        assert tokens.poll() is True
        assert auth.check(_scope(OLD), "metrics") == (None, "prometheus")
        assert auth.check(_scope(NEW), "api") == (None, "prometheus-next")
        _write(path, f"prometheus-next:{NEW}\n")  # the old one removed
        assert tokens.reload("SIGHUP") is True
        refused, name = auth.check(_scope(OLD), "metrics")
        assert refused is not None and refused[0] == 401 and name is None
        assert auth.check(_scope(NEW), "metrics") == (None, "prometheus-next")
        for bad in (f"{NEW}\n{NEW}\n", "short\n", "", f"a:{OLD} b\n"):
            _write(path, bad)
            assert tokens.reload() is False
            assert auth.check(_scope(NEW), "metrics") == (None, "prometheus-next")  # kept
        path.unlink()
        assert tokens.poll() is False  # a missing file: kept as well
        assert auth.check(_scope(NEW), "metrics") == (None, "prometheus-next")
        assert tokens.poll() is None  # still missing: not logged again
    assert (tokens.reloaded, tokens.failed) == (2, 5)
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    reloads = [x for x in lines if x["event"] == "metrics-token-reload"]
    assert [x["result"] for x in reloads] == ["ok", "ok"] + ["failed"] * 5
    assert reloads[0] == {"event": "metrics-token-reload", "result": "ok", "trigger": "poll", "tokens": 2,
                          "scrapers": ["prometheus", "prometheus-next"], "listener": "metrics"}  # fmt: skip
    assert reloads[2]["tokens"] == 1 and "the same token as line 1" in reloads[2]["error"]
    seen = [(x["scraper"], x["listener"]) for x in lines if x["event"] == "metrics-scraper"]
    # first use since each reload (the first scrape, before the capture, logged too)
    assert seen == [("prometheus", "metrics"), ("prometheus-next", "api"), ("prometheus-next", "metrics")]
    text = caplog.text
    assert OLD not in text and NEW not in text
    assert auth.scrapes == {"prometheus": 2, "prometheus-next": 7}
    families = {f.name: f for f in auth.collect()}
    scrapes = {s.labels["scraper"]: s.value for s in families["confide_metrics_scrapes"].samples}
    assert scrapes == {"prometheus-next": 7}  # the tokens in use
    reload_counts = {s.labels["result"]: s.value for s in families["confide_metrics_token_reloads"].samples}
    assert reload_counts == {"ok": 2, "failed": 5}
    assert families["confide_metrics_tokens"].samples[0].value == 1


def test_a_bad_token_file_at_start_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    _write(path, f"{OLD}\n{OLD}\n")
    with pytest.raises(UsageError, match="line 2: the same token as line 1"):
        MetricsTokenFile(path)


# --- a ledger tiles server whose metrics listener serves HTTPS, in a thread, over real sockets ---


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path, Path]]:
    return {"a": tls_server_files(tmp_path, "a"), "b": tls_server_files(tmp_path, "b")}


@pytest.fixture
def served(tmp_path: Path, pki: dict[str, tuple[Path, Path, Path]]) -> Iterator[TilesServer]:
    db = tmp_path / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    conn.close()
    _, cert, key = pki["a"]
    cert_in_use, key_in_use = tmp_path / "metrics-cert.pem", tmp_path / "metrics-key.pem"
    _write(cert_in_use, cert.read_text())
    _write(key_in_use, key.read_text())
    _write(tmp_path / "tokens", f"# two scrapers\nprometheus:{OLD}\n{OTHER}\n")
    tls = CertificateReloader(
        cert_in_use, key_in_use, options=METRICS_TLS_OPTIONS, metric_prefix="confide_metrics_tls_certificate",
        listener="metrics", logger="test.metrics",
    )  # fmt: skip
    tiles = TilesServer(db, ("127.0.0.1", 0), rate=None, metrics_listen=("127.0.0.1", 0),
                        metrics_tokens=MetricsTokenFile(tmp_path / "tokens", logger="test.metrics"),
                        metrics_tls=tls)  # fmt: skip
    tiles.serve_in_thread()
    try:
        yield tiles
    finally:
        tiles.shutdown()
        tiles.server_close()


def _client(ca: Path) -> httpx2.Client:
    return httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10)


def _peer_sha256(port: int, ca: Path, version: ssl.TLSVersion | None = None) -> str:
    """The SHA-256 of the certificate a new connection verified against ``ca`` is served
    (``version``: the only TLS version the client offers)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert tls.version() == ("TLSv1.2" if version is not None else "TLSv1.3")
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_the_metrics_listener_over_https(
    tmp_path: Path, served: TilesServer, pki: dict[str, tuple[Path, Path, Path]]
) -> None:
    ca_a, cert_a, _ = pki["a"]
    ca_b, cert_b, key_b = pki["b"]
    url = served.metrics_url
    assert url is not None and url.startswith("https://127.0.0.1:") and served.metrics_address is not None
    port = served.metrics_address[1]
    with _client(ca_a) as client:
        r = client.get(url, headers={"Authorization": f"Bearer {OLD}"})
        assert r.status_code == 200 and "confide_ledger_http_connections_open" in r.text
        assert client.get(url, headers={"Authorization": f"Bearer {OTHER}"}).status_code == 200
        assert client.get(url, headers={"Authorization": f"Bearer {NEW}"}).status_code == 401
        assert client.get(url).status_code == 401
    # a client trusting another CA: the handshake fails, nothing is served
    with _client(ca_b) as wrong, pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        wrong.get(url, headers={"Authorization": f"Bearer {OLD}"})
    # plain HTTP on the TLS port: no answer of /metrics
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {OLD}\r\n\r\n".encode())
        s.settimeout(10)
        try:
            answer = s.recv(65536)
        except ConnectionResetError:
            answer = b""
        assert b"confide_" not in answer and not answer.startswith(b"HTTP/1.1 200")
    # TLS 1.2 or later: the ledger servers' context (a TLS 1.2 client is served, nothing older)
    assert served.metrics_tls is not None
    assert served.metrics_tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert _peer_sha256(port, ca_a, ssl.TLSVersion.TLSv1_2) == _sha256(cert_a)
    assert _peer_sha256(port, ca_a) == _sha256(cert_a)

    # the tokens rotated: the file changed, reloaded (SIGHUP or a poll does this in a server)
    auth = served.metrics_auth
    assert auth is not None and auth.reloader is not None
    _write(tmp_path / "tokens", f"prometheus:{NEW}\n{OTHER}\n")
    assert auth.reloader.reload() is True
    with _client(ca_a) as client:
        assert client.get(url, headers={"Authorization": f"Bearer {OLD}"}).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {NEW}"}).status_code == 200
        # a bad file keeps the tokens in use
        _write(tmp_path / "tokens", f"prometheus:{NEW}\nagain:{NEW}\n")
        assert auth.reloader.reload() is False
        assert client.get(url, headers={"Authorization": f"Bearer {NEW}"}).status_code == 200
        assert client.get(url, headers={"Authorization": f"Bearer {OLD}"}).status_code == 401

    # the certificate reloaded: new connections get B (a client trusting B only is served)
    tls = served.metrics_tls
    assert tls is not None
    _write(tmp_path / "metrics-cert.pem", cert_b.read_text())
    _write(tmp_path / "metrics-key.pem", key_b.read_text())
    assert tls.reload() is True
    assert _peer_sha256(port, ca_b) == _sha256(cert_b)
    with _client(ca_b) as client:
        text = client.get(url, headers={"Authorization": f"Bearer {NEW}"}).text
    # by name, whichever token: OLD once, NEW three times (this scrape too)
    assert 'confide_metrics_scrapes_total{scraper="prometheus"} 4.0' in text
    assert 'confide_metrics_scrapes_total{scraper="line-3"}' not in text  # OTHER's first line: gone
    assert 'confide_metrics_scrapes_total{scraper="line-2"} 0.0' in text  # OTHER's line now
    assert 'confide_metrics_token_reloads_total{result="failed"} 1.0' in text
    assert 'confide_metrics_tls_certificate_reloads_total{result="ok"} 1.0' in text
    assert "confide_metrics_tls_certificate_not_after_seconds" in text
    assert 'confide_metrics_unauthorized_total{reason="wrong"} 3.0' in text
    assert "confide_tls_certificate_reloads_total" not in text  # the API listener is plain HTTP


def _sha256(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def test_metrics_tls_needs_a_metrics_listener(
    tmp_path: Path, pki: dict[str, tuple[Path, Path, Path]]
) -> None:
    db = tmp_path / "log.db"
    connect(db).close()
    _, cert, key = pki["a"]
    tls = CertificateReloader(cert, key, options=METRICS_TLS_OPTIONS)
    with pytest.raises(UsageError, match="--metrics-cert and --metrics-key need --metrics-listen"):
        TilesServer(db, ("127.0.0.1", 0), metrics_tls=tls)


def test_metrics_certificate_errors_name_the_metrics_options(pki: dict[str, tuple[Path, Path, Path]]) -> None:
    _, cert_a, _ = pki["a"]
    _, _, key_b = pki["b"]
    with pytest.raises(UsageError, match=r"^--metrics-cert/--metrics-key: cannot load: the key in"):
        CertificateReloader(cert_a, key_b, options=METRICS_TLS_OPTIONS)
    with pytest.raises(UsageError, match=r"^--metrics-key '.*': does not exist"):
        CertificateReloader(cert_a, key_b.with_name("absent"), options=METRICS_TLS_OPTIONS)


def test_the_metrics_files_of_a_command(tmp_path: Path, pki: dict[str, tuple[Path, Path, Path]]) -> None:
    """metrics_files (both CLIs'): the pair goes together and needs a metrics listener; each
    file read at once, with the poll interval and logger given."""
    _, cert, key = pki["a"]
    tokens_path = tmp_path / "tokens"
    _write(tokens_path, f"p:{OLD}\n")
    with pytest.raises(UsageError, match="--metrics-cert and --metrics-key go together"):
        metrics_files(True, None, cert, None, poll_interval=0.0, logger="t")
    with pytest.raises(UsageError, match="need --metrics-listen"):
        metrics_files(False, None, cert, key, poll_interval=0.0, logger="t")
    assert metrics_files(False, None, None, None, poll_interval=0.0, logger="t") == (None, None)
    tokens, tls = metrics_files(True, tokens_path, cert, key, poll_interval=2.5, logger="t")
    assert tokens is not None and tls is not None
    assert tokens.poll_interval == tls.poll_interval == 2.5 and tokens().names == ("p",)
    assert tls.options == METRICS_TLS_OPTIONS and tls.listener == "metrics"
    assert {f.name for f in tls.collect()} == {
        "confide_metrics_tls_certificate_reloads",
        "confide_metrics_tls_certificate_not_after_seconds",
    }
    tokens, tls = metrics_files(False, tokens_path, None, None, poll_interval=0.0, logger="t")
    assert tokens is not None and tls is None  # a token file guards /metrics on the API too
