"""Hostile review of 2026-12-07, attacks that confide already withstands (kept as tests): a proxy of
the operator's (``HTTPS_PROXY``) on the pinned CAS's connection, a redirect, and the witness
state under a quiet log's re-cosigning every minute."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from confide import errors
from confide.cas.client import CasClient
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.merkle import mth
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner
from confide.ledger.witness import Witness
from pki import tls_server_files

ORIGIN = "cas.example/log"


class MitmProxy:
    """An HTTP proxy of the operator's: answers ``CONNECT`` with 200, then completes TLS itself
    with a certificate of its own for the CAS's address, recording every byte it gets."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.plaintext = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        with conn:
            while b"\r\n\r\n" not in self.received:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                self.received += chunk
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.plaintext += tls.recv(65536)  # what it would read once the handshake passed
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


def test_an_operator_s_proxy_routes_the_cas_connection_but_cannot_read_or_answer_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTPS_PROXY`` is not removed by the launcher: httpx2 honours it, so the operator's
    proxy carries the connection (as the operator's network does anyway). TLS is end to end:
    the proxy's own certificate for the CAS's address is refused, nothing but ``CONNECT`` and a
    ClientHello reaches it in clear (no request, no session token, no evidence)."""
    real_ca, _, _ = tls_server_files(tmp_path, "real")
    _, fake_cert, fake_key = tls_server_files(tmp_path, "fake")
    proxy = MitmProxy(fake_cert, fake_key)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = CasClient("https://127.0.0.1:9", real_ca)
    try:
        with pytest.raises(errors.NetworkError):
            client.nonce()
    finally:
        client.close()
        proxy.close()
    assert proxy.received.startswith(b"CONNECT 127.0.0.1:9 ")
    assert proxy.plaintext == b""


def test_the_cas_client_follows_no_redirect(tmp_path: Path) -> None:
    """A 3xx from (or on the path to) the CAS is not followed: no second connection, to a host
    the pin was not checked for."""
    real_ca, _, _ = tls_server_files(tmp_path, "real")
    client = CasClient("https://127.0.0.1:9", real_ca)
    try:
        assert client.http.follow_redirects is False
    finally:
        client.close()


def test_the_witness_state_stays_one_checkpoint_per_log_under_re_cosigning(tmp_path: Path) -> None:
    """The CAS asks its witnesses again every 60 s while its log is quiet: each time the witness
    replaces its one checkpoint of the log (the same text), the file does not grow."""
    log = NoteSigner.generate(ORIGIN)
    witness = Witness(
        NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1), tmp_path / "w.json", {ORIGIN: log.verifier}
    )
    note = sign_checkpoint(Checkpoint(ORIGIN, 4, mth([bytes([i]) for i in range(4)])), log)
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    witness.add_checkpoint(0, [], note, at=t0)
    size = (tmp_path / "w.json").stat().st_size
    stamps = set()
    for minute in range(1, 200):
        sig = witness.add_checkpoint(4, [], note, at=t0 + timedelta(minutes=minute))
        stamps.add(sig.signature[:8])
    assert (tmp_path / "w.json").stat().st_size == size
    assert len(stamps) == 199  # a new timestamp each time
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["w.json"]
