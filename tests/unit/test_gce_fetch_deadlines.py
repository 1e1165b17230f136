"""Hostile review of 2026-12-07: the GCE fetches (the runtime's AIA issuers, ``cas serve --gce-crl fetch``) bound
the whole answer in time, its head included. ``read_body``'s ``within`` counts from the body's
first byte, and the client's read timeout bounds each wait only: a server on the path (the CRL
and caIssuers URLs are plain http) sending a header line just within the read timeout held the
fetch for as long as the HTTP parser accepts headers (hours), a CAS worker thread of the
default executor that every platform's prefetch shares. Real sockets, a local server."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization

from confide.cas import gce_crl
from confide.errors import ParseError
from confide.runtime.gce_aia import HttpIssuerFetcher
from gce_fakes import FakeGoogle
from pki import tls_server_files

TRICKLE_FOR = 6.0  # seconds the server keeps sending header lines, one every 0.2 s
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class Trickler:
    url: str
    ca: Path | None  # the https server's CA (PEM), None for http


@pytest.fixture(params=["http", "https"])
def trickler(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Trickler]:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    ca: Path | None = None
    tls: ssl.SSLContext | None = None
    if request.param == "https":
        ca, cert, key = tls_server_files(tmp_path, "slow")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)

    def serve() -> None:
        raw, _ = server.accept()
        try:
            conn = tls.wrap_socket(raw, server_side=True) if tls is not None else raw
        except OSError:
            raw.close()
            return
        with conn:
            conn.recv(4096)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                end = time.monotonic() + TRICKLE_FOR
                while time.monotonic() < end and not stop.is_set():
                    conn.sendall(b"X-Slow: 1\r\n")
                    time.sleep(0.2)
                conn.sendall(b"Content-Length: 0\r\n\r\n")
            except OSError:
                return  # the client shut the connection down

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Trickler(f"{request.param}://127.0.0.1:{server.getsockname()[1]}/slow", ca)
    stop.set()
    thread.join(timeout=10)
    server.close()


def _transport(trickler: Trickler) -> httpx2.HTTPTransport | None:
    if trickler.ca is None:
        return None
    return httpx2.HTTPTransport(verify=ssl.create_default_context(cafile=str(trickler.ca)))


def test_the_aia_fetch_is_bounded_while_the_head_trickles(trickler: Trickler) -> None:
    start = time.monotonic()
    with pytest.raises(ParseError, match=r"took more than 1 s to arrive"):
        HttpIssuerFetcher(transport=_transport(trickler)).fetch(trickler.url, limit=32 * 1024, within=1.0)
    assert time.monotonic() - start < TRICKLE_FOR / 2


def test_the_crl_fetch_is_bounded_while_the_head_trickles(
    trickler: Trickler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gce_crl, "FETCH_TIME", 1.0)
    fetcher = gce_crl.GceCrlFetcher(transport=_transport(trickler))
    start = time.monotonic()
    try:
        with pytest.raises(ParseError, match=r"took more than 1 s to arrive"):
            fetcher._fetch(trickler.url, FakeGoogle.make().intermediate)
    finally:
        fetcher.close()
    assert time.monotonic() - start < TRICKLE_FOR / 2


def test_a_prompt_answer_is_read_over_a_real_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    google = FakeGoogle.make()
    der = google.crl().public_bytes(serialization.Encoding.DER)
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(der) + der)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/int.crl"
    fetcher = gce_crl.GceCrlFetcher()
    try:
        for _ in range(2):  # no connection kept alive: the second fetch connects again
            crl = fetcher._fetch(url, google.intermediate)
            assert crl.public_bytes(serialization.Encoding.DER) == der
    finally:
        fetcher.close()
        thread.join(timeout=10)
        server.close()
