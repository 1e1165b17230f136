"""``/metrics`` and refusal logs of ``confide ledger serve`` and ``confide ledger witness serve``
(confide.ledger.metrics; docs/ledger.md "Metrics and refusals"): the real servers as
subprocesses over TLS, driven over real sockets: answered requests by route and status, each
kind of refusal (429, 431, 408, a connection over the per-client limit, an add-checkpoint
without a bounded Content-Length) counted and logged as one JSON line naming only the reason,
the client and the route; cosignatures and tree sizes. The log's rate limit is a unit test."""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
from pathlib import Path

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_ledger_tls import ORIGIN, _cli, _start, _stop, setup  # noqa: F401 (the fixture)

from confide.ledger.metrics import RefusalLog

LOG_FIELDS = {"event", "reason", "client", "route", "status", "suppressed"}


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in a Prometheus text exposition (labels in any order)."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return None


def refusals(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in stderr.splitlines() if x.startswith("{") and '"refused"' in x]
    assert all(set(line) <= LOG_FIELDS for line in lines), lines  # nothing of a request's content
    return lines


def tls_socket(port: int, ca: Path) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1")


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return out


def test_tiles_server_metrics_and_refusals_over_tls(setup: dict[str, object]) -> None:  # noqa: F811
    db = setup["db"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(db, Path)
    proc, url = _start(["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key), "--request-rate", "0.01", "--request-burst", "4",
                        "--max-connections-per-ip", "2", "--head-timeout", "3"])  # fmt: skip
    url = url.rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    try:
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as http:
            assert http.get(url + "/checkpoint").status_code == 200
            assert http.get(url + "/tile/0/000.p/40").status_code == 200
            assert http.get(url + "/tile/entries/000.p/40").status_code == 404  # not public here
            assert http.get(url + "/checkpoint").status_code == 200
            assert http.get(url + "/checkpoint").status_code == 429  # the burst of 4 is spent
            with tls_socket(port, ca) as big:  # a head over 8 KiB
                big.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
                assert read_all(big).startswith(b"HTTP/1.1 431 ")
            with tls_socket(port, ca) as slow:  # a head that never ends
                slow.sendall(b"GET /checkpoint HTTP/1.1\r\n")
                assert read_all(slow).startswith(b"HTTP/1.1 408 ")
            # the client's second connection, held; a third is over the limit
            with tls_socket(port, ca), socket.create_connection(("127.0.0.1", port)) as third:
                third.settimeout(10)
                assert read_all(third) == b""
        # Scraped from another address (its own bucket): 127.0.0.1 gets a token back only after
        # 100 s, so that no pause of a loaded machine gave one back before the fifth request.
        tls = ssl.create_default_context(cafile=str(ca))
        transport = httpx2.HTTPTransport(verify=tls, local_address="127.0.0.2")
        with httpx2.Client(transport=transport, timeout=10) as other:
            scraped = other.get(url + "/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        text = scraped.text
        requests = "confide_ledger_http_requests_total"
        assert metric(text, requests, route="checkpoint", status="200") == 2
        assert metric(text, requests, route="tile", status="200") == 1
        assert metric(text, requests, route="entries", status="404") == 1
        assert metric(text, requests, route="checkpoint", status="429") == 1
        refused = "confide_ledger_http_requests_refused_total"
        assert metric(text, refused, reason="rate-limited") == 1
        assert metric(text, refused, reason="head-too-large") == 1
        assert metric(text, refused, reason="head-timeout") == 1
        assert metric(text, refused, reason="body-timeout") == 0
        conns = "confide_ledger_http_connections_refused_total"
        assert metric(text, conns, reason="max-connections-per-client") == 1
        assert metric(text, conns, reason="max-connections") == 0
        assert metric(text, "confide_ledger_tree_size") == 40
        assert (metric(text, "confide_ledger_http_connections_open") or 0) >= 1  # the scrape's own
    finally:
        rest = _stop(proc)
    assert "Traceback" not in rest, rest
    lines = refusals(rest)
    assert {(x["reason"], x.get("status"), x.get("route")) for x in lines} == {
        ("rate-limited", 429, "checkpoint"),
        ("head-too-large", None, None),
        ("head-timeout", None, None),
        ("max-connections-per-client", None, None),
    }
    assert all(x["client"] == "127.0.0.1" for x in lines)


def test_witness_metrics_cosignatures_and_a_body_refusal_over_tls(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
) -> None:
    db, keys = setup["db"], setup["keys"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(db, Path) and isinstance(keys, dict)
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key")]
    argv += ["--log", keys["log"], "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc, url = _start(argv)
    base = url.removesuffix("/add-checkpoint")
    port = int(base.rsplit(":", 1)[1])
    try:
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as http:
            before = http.get(base + "/metrics").text
            assert metric(before, "confide_witness_cosignatures_total", origin=ORIGIN) is None
            res = _cli("request-cosignature", "--log-db", str(db), "--witness-url", base,
                       "--witness-key", keys["witness"], "--cacert", str(ca))  # fmt: skip
            assert res.returncode == 0, res.stderr
            with tls_socket(port, ca) as chunked:  # no Content-Length: refused unread
                chunked.sendall(
                    b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                assert read_all(chunked).startswith(b"HTTP/1.1 400 ")
            assert http.get(base + "/nope").status_code == 501  # a GET of anything but /metrics
            text = http.get(base + "/metrics").text
    finally:
        rest = _stop(proc)
    assert metric(text, "confide_witness_cosignatures_total", origin=ORIGIN) == 1
    assert metric(text, "confide_witness_tree_size", origin=ORIGIN) == 40
    requests = "confide_ledger_http_requests_total"
    assert metric(text, requests, route="add-checkpoint", status="200") == 1
    assert metric(text, requests, route="add-checkpoint", status="400") == 1
    assert metric(text, requests, route="other", status="501") == 1
    assert metric(text, requests, route="metrics", status="200") == 1  # the first scrape
    assert metric(text, "confide_ledger_http_requests_refused_total", reason="body-limit") == 1
    assert "Traceback" not in rest, rest
    (line,) = refusals(rest)
    assert line == {"event": "refused", "reason": "body-limit", "client": "127.0.0.1",
                    "route": "add-checkpoint", "status": 400}  # fmt: skip


def test_a_flood_of_refusals_is_logged_at_the_log_rate_and_says_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = RefusalLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="confide.ledger"):
        for _ in range(1000):
            log.log("rate-limited", "192.0.2.1", route="tile", status=429)
        assert len(caplog.records) == 10  # the burst
        now[0] += 1.0
        for _ in range(1000):
            log.log("max-connections", "192.0.2.2")
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert len(lines) == 15  # and five more a second after
    assert lines[10] == {"event": "refused", "reason": "max-connections", "client": "192.0.2.2",
                         "suppressed": 990}  # fmt: skip
    assert sum(int(x.get("suppressed", 0)) for x in lines) + len(lines) + log.suppressed == 2000
