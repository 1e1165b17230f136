"""``confide cas attest`` reads the CAS's evidence answer before anything is pinned, from
whoever answers at the URL: the whole answer must arrive within ``MAX_FETCH_TIME``, not only
each piece within the read timeout (a server sending a byte just within it held the command
for as long as the 1 MiB bound allows: months)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.cas import pin
from confide.errors import NetworkError, UsageError
from pki import tls_server_files

BODY = b'{"platform": "sim"}'


def _serve(directory: Path, pieces: int) -> Iterator[str]:
    """A TLS server that answers one request with a 200 whose body comes one byte per TLS
    record (each one a read of its own), ``pieces`` bytes in all, then closes."""
    _ca, cert, key = tls_server_files(directory, "trickle")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            for _ in range(pieces):
                if stop.is_set():
                    return
                try:
                    tls.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.fixture
def trickle(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path, 10_000)


def test_an_answer_trickling_in_past_the_time_limit_is_a_network_error(
    trickle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 7.0  # each look at the clock: 7 s later (a byte per read timeout, or so)
        return now[0]

    monkeypatch.setattr(pin, "monotonic", clock)
    monkeypatch.setattr(pin, "MAX_FETCH_TIME", 30.0)
    with pytest.raises(NetworkError, match="took more than 30 s to arrive"):
        pin.fetch_unverified(trickle, "/v1/cas/evidence")
    assert now[0] < 100  # stopped by the clock after a few reads, not at the end of the answer


def test_an_answer_within_the_time_limit_is_read(tmp_path: Path) -> None:
    for url in _serve(tmp_path, 5):
        cert, body = pin.fetch_unverified(url, "/v1/cas/evidence")
        assert cert and body == b" " * 5


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1:99999", "https://127.0.0.1:abc", "https://[::1", "http://127.0.0.1", "https://"],
)
def test_a_malformed_url_is_a_usage_error(url: str) -> None:
    """``cas attest URL`` (and ``--retire-attested``'s ``CONFIDE_CAS_URL``, ``Cas.attested``):
    a port out of range or not a number, or a broken IPv6 address, was a Python traceback
    (``urlsplit``'s ``ValueError``), before anything was sent."""
    with pytest.raises(UsageError, match="expected an https:// CAS URL"):
        pin.fetch_unverified(url, "/v1/cas/evidence")


def test_nothing_listening_says_where_the_cas_address_comes_from() -> None:
    """`cas attest URL` at an address nothing listens on (a stopped CAS, or one restarted on
    another port): "Connection refused" alone said nothing of what to do."""
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NetworkError, match="Connection refused") as caught:
        pin.fetch_unverified(f"https://127.0.0.1:{port}", "/v1/cas/evidence")
    assert "is a CAS running there?" in caught.value.message and "client.env" in caught.value.message
