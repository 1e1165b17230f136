"""Every client of a remote party bounds each answer as a whole in time: its connection, TLS
handshake, status line, headers and body (``confide.httpbody.fetch``), review of 2026-12-07.

Before, all but the GCE fetches bounded the body only (``read_body``'s ``within``): a server
sending the status line and then a header byte just within the read timeout held the CAS
client, the ledger auditor, the witness client and the collateral sources (AMD KDS, Intel PCS,
NVIDIA OCSP and RIM, Azure IMDS) for as long as the HTTP parser takes header lines. Real
sockets, a local server that trickles a header byte every 50 ms, or says nothing at all; each
client is given a deadline of half a second and must give up within it (plus a margin) with its
own error class, naming the host."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from snp_fakes import make_fake_amd

from confide import httpbody
from confide.cas import client as cas_client_module
from confide.cas import gce_crl
from confide.cas.client import CasClient
from confide.collateral.amd_kds import AmdCollateralRequest, KdsHttpCollateral
from confide.collateral.dcap import PcsHttpSource
from confide.collateral.nvidia_ocsp import HttpOcspSource
from confide.collateral.nvidia_rim import HttpRimSource
from confide.errors import ConfideError, NetworkError, ParseError
from confide.evidence.dcap import TeeType
from confide.evidence.sev_snp import AttestationReport, Product
from confide.ledger import http as ledger_http
from confide.ledger import witness_http
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction
from confide.runtime.azure_vtpm import ImdsVcekSource
from confide.runtime.gce_aia import HttpIssuerFetcher
from pki import tls_server_files

DEADLINE = 0.5  # seconds each client is given here
MARGIN = 1.5  # seconds past it a client may still take to give up (thread start, a slow CI)
HOLD_FOR = 4.0  # seconds the server goes on (trickling, or silent) unless stopped: a client not
# bounded by its deadline takes at least this long, which the elapsed-time check refuses
PACE = 0.05  # seconds between two bytes of a trickled head
READ_TIMEOUT = 10.0  # each client's read timeout, where it has one: never what ends a test
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class SlowServer:
    url: str  # http(s)://127.0.0.1:PORT
    ca: Path | None  # the https server's CA (PEM), None for http
    connections: list[float]  # the monotonic time of each accepted connection


def _read_request(conn: socket.socket, stop: threading.Event) -> None:
    """Read one request's head and its Content-Length body (what the client sends before it
    waits for the answer), giving up when stopped."""
    data = b""
    conn.settimeout(0.1)
    while b"\r\n\r\n" not in data and not stop.is_set():
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    want = int(length.group(1)) if length else 0
    while len(body) < want and not stop.is_set():
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return
        body += chunk


def _answer(conn: socket.socket, mode: str, stop: threading.Event) -> None:
    """``head``: the status line, then a header byte every PACE s; ``body``: a whole head
    without a length (the body ends with the connection) and a few bytes of it, then nothing;
    ``silent``: nothing. Each for HOLD_FOR s at most (then a proper end), or until stopped."""
    end = time.monotonic() + HOLD_FOR
    if mode == "silent":
        while time.monotonic() < end and not stop.is_set():
            time.sleep(PACE)
        return
    _read_request(conn, stop)
    if mode == "body":
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{")
        while time.monotonic() < end and not stop.is_set():
            time.sleep(PACE)
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Slow: " + b"a" * 10 + b"\r\n"
    sent = 0
    while time.monotonic() < end and not stop.is_set():
        conn.sendall(line[sent % len(line) : sent % len(line) + 1])
        sent += 1
        time.sleep(PACE)
    conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")


@contextmanager
def _serve_slowly(mode: str, scheme: str, tmp_path: Path) -> Iterator[SlowServer]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()
    tls: ssl.SSLContext | None = None
    ca: Path | None = None
    if scheme == "https":
        ca, cert, key = tls_server_files(tmp_path, "slow")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
    connections: list[float] = []
    handlers: list[threading.Thread] = []

    def handle(raw: socket.socket) -> None:
        try:
            if tls is not None and mode != "silent":  # silent: not even a TLS handshake
                raw.settimeout(2.0)
                conn = tls.wrap_socket(raw, server_side=True)
            else:
                conn = raw
            with conn:
                _answer(conn, mode, stop)
        except OSError:
            pass  # the client shut the connection down
        finally:
            raw.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(time.monotonic())
            thread = threading.Thread(target=handle, args=(raw,), daemon=True)
            handlers.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield SlowServer(f"{scheme}://127.0.0.1:{server.getsockname()[1]}", ca, connections)
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for thread in handlers:
            thread.join(timeout=5)
        server.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


# --- each client family, asked once with a deadline of DEADLINE seconds ---------------------------


def _cas(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cas_client_module, "MAX_ANSWER_TIME", DEADLINE)
    cert = server.ca
    with CasClient(server.url, cert, timeout=READ_TIMEOUT, plain_http_for_tests=cert is None) as client:
        client.read_nonce("team-db", "show")


def _ledger(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ledger_http, "MAX_ANSWER_TIME", DEADLINE)
    with ledger_http.HttpLogClient(server.url, timeout=READ_TIMEOUT) as log:
        log.fetch("checkpoint")


def _witness(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(witness_http, "MAX_ANSWER_TIME", DEADLINE)
    conn = connect(tmp_path / "log.db")
    try:
        Ledger.init_schema(conn)
        with write_transaction(conn):
            Ledger().append_batch(conn, [b"entry"])
        Ledger().sign_checkpoint(conn, NoteSigner.generate("example.test/log"))
        key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
        witness_http.request_cosignatures(conn, server.url, key)
    finally:
        conn.close()


_AMD = make_fake_amd(Product.TURIN)


def _kds(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    request = AmdCollateralRequest.for_report(
        AttestationReport.from_bytes(_AMD.sign(_AMD.report())), Product.TURIN
    )
    with KdsHttpCollateral(None, base_url=server.url, timeout=READ_TIMEOUT, answer_time=DEADLINE) as kds:
        kds.fetch(request)


def _pcs(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = PcsHttpSource(server.url, cache_dir=tmp_path / "pcs", answer_time=DEADLINE)
    try:
        source.get_collateral(fmspc=bytes(6), ca="platform", tee=TeeType.SGX)
    finally:
        source.client.close()


def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def _ocsp(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert = _certificate()
    with HttpOcspSource(server.url + "/", timeout=READ_TIMEOUT, answer_time=DEADLINE) as ocsp:
        ocsp.fetch(cert, cert)


def _rim(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = HttpRimSource(server.url + "/v1/rim/", timeout=READ_TIMEOUT, answer_time=DEADLINE)
    try:
        source.fetch("NV_GPU_DRIVER_GH100_535.86.10")
    finally:
        source.close()


def _imds(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ImdsVcekSource(
        server.url + "/metadata/THIM/amd/certification", timeout=READ_TIMEOUT, answer_time=DEADLINE
    ).get_vcek()


def _gce_aia(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    HttpIssuerFetcher().fetch(server.url + "/int.crt", limit=32 * 1024, within=DEADLINE)


def _gce_crl(server: SlowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gce_crl, "FETCH_TIME", DEADLINE)
    source = gce_crl.HttpCrlSource(timeout=READ_TIMEOUT)
    try:
        source.fetch(server.url + "/int.crl")
    finally:
        source.close()


Ask = Callable[[SlowServer, pytest.MonkeyPatch, Path], None]
FAMILIES: dict[str, tuple[Ask, type[ConfideError]]] = {
    "cas": (_cas, NetworkError),
    "ledger": (_ledger, NetworkError),
    "witness": (_witness, NetworkError),
    "amd-kds": (_kds, NetworkError),
    "intel-pcs": (_pcs, NetworkError),
    "nvidia-ocsp": (_ocsp, NetworkError),
    "nvidia-rim": (_rim, NetworkError),
    "azure-imds": (_imds, NetworkError),
    "gce-aia": (_gce_aia, ParseError),  # these two's error for a slow answer, as before
    "gce-crl": (_gce_crl, ParseError),
}


def _gives_up_in_time(
    family: str, mode: str, scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ConfideError:
    ask, error = FAMILIES[family]
    with _serve_slowly(mode, scheme, tmp_path) as server:
        start = time.monotonic()
        with pytest.raises(error) as caught:
            ask(server, monkeypatch, tmp_path)
        elapsed = time.monotonic() - start
        assert server.connections, "the client never reached the server"
    assert elapsed < DEADLINE + MARGIN, f"{family} gave up after {elapsed:.2f} s"
    assert elapsed >= DEADLINE * 0.9, (
        f"{family} gave up before its deadline ({elapsed:.2f} s): {caught.value}"
    )
    return caught.value


@pytest.mark.parametrize("mode", ["head", "silent"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_client_gives_up_on_an_answer_that_does_not_come_within_its_deadline(
    family: str, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``head``: the status line, then a header byte every 50 ms (within any read timeout);
    ``silent``: a connection and nothing on it. Either way the client stops at its deadline with
    its own error class, a one-line message naming the host and the deadline."""
    exc = _gives_up_in_time(family, mode, "http", monkeypatch, tmp_path)
    assert "127.0.0.1" in exc.message
    assert f"took more than {DEADLINE:g} s to arrive" in exc.message
    assert "\n" not in exc.message


@pytest.mark.parametrize("mode", ["head", "silent"])
def test_the_cas_client_over_tls_gives_up_within_its_deadline(
    mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Over TLS (as every CAS serves): ``silent`` stalls the handshake itself, ``head`` the
    head after it; the deadline bounds both."""
    exc = _gives_up_in_time("cas", mode, "https", monkeypatch, tmp_path)
    assert re.search(
        rf"the CAS at https://127\.0\.0\.1:\d+: its answer took more than {DEADLINE:g} s", exc.message
    )


@pytest.mark.parametrize("family", ["cas", "ledger", "nvidia-rim"])
def test_a_body_without_a_length_cut_at_the_deadline_is_not_taken_as_whole(
    family: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A body that ends with its connection (no Content-Length, not chunked): the deadline shuts
    the connection down, which reads as the body's end; what came by then is refused, not
    returned as the answer."""
    exc = _gives_up_in_time(family, "body", "http", monkeypatch, tmp_path)
    assert f"took more than {DEADLINE:g} s to arrive" in exc.message


# --- the helper itself ----------------------------------------------------------------------------


def _prompt_server(answers: int) -> tuple[str, threading.Thread, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(answers):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", thread, server


def test_a_prompt_answer_is_read_whole_and_each_request_connects_anew() -> None:
    """The deadline sees a connection only when its request makes it: the clients keep none
    alive, so a second request on one client connects again (the server here closes after one
    answer; a kept connection would be tried first, and this server would not accept it)."""
    url, thread, server = _prompt_server(2)
    try:
        with httpbody.answer_client(timeout=READ_TIMEOUT) as client:
            for _ in range(2):
                answer = httpbody.fetch(
                    client,
                    "GET",
                    url + "/x",
                    limit=5,
                    within=DEADLINE * 4,
                    too_large=ParseError,
                )
                assert (answer.status_code, answer.content) == (200, b"hello")
    finally:
        thread.join(timeout=5)
        server.close()
    assert not thread.is_alive()


def test_an_error_other_than_the_deadline_is_the_callers_to_tell() -> None:
    """No connection at all is not a deadline: ``fetch`` raises httpx2's error for the client to
    word (each client's "cannot reach ..." message)."""
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with httpbody.answer_client(timeout=READ_TIMEOUT) as client, pytest.raises(httpx2.ConnectError):
        httpbody.fetch(
            client,
            "GET",
            f"http://127.0.0.1:{port}/",
            limit=5,
            within=DEADLINE,
            too_large=ParseError,
        )
