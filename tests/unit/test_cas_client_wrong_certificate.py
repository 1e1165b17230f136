"""A CAS reached over TLS whose certificate is not the one the client trusts (``CONFIDE_CAS_CERT``
of another CAS's client.env, or a CAS started anew on another data directory) is named as such:
the client said "cannot reach the CAS at URL: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]",
which sends a new user looking for a network problem. Still a ``NetworkError`` (exit 40). Over a
real TLS socket on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.cas.client import NOT_LISTENING, CasClient
from confide.errors import NetworkError, UsageError

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{"ok": "1"}'


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A TLS server on 127.0.0.1 answering every connection with one JSON answer; yields its URL,
    its certificate and another CAS's certificate."""
    cert, key = _certificate(tmp_path, "this-cas")
    other, _ = _certificate(tmp_path, "other-cas")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes up to see ``stop``
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(65536)
                        tls.sendall(ANSWER)
                except (OSError, ssl.SSLError):
                    pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", cert, other
    finally:
        stop.set()
        listener.close()
        thread.join(10)


def test_a_cas_with_another_certificate_is_named_as_such(server: tuple[str, Path, Path]) -> None:
    url, cert, other = server
    with CasClient(url, cert) as trusted:
        assert trusted._call("GET", "/v1/anything") == {"ok": "1"}
    with CasClient(url, other) as client, pytest.raises(NetworkError) as info:
        client._call("GET", "/v1/anything")
    message = str(info.value)
    assert info.value.exit_code == 40
    assert message.startswith(f"the CAS at {url} is not the one this client trusts")
    assert "does not verify against CONFIDE_CAS_CERT" in message
    assert "source the client.env of the CAS at that address" in message
    assert "cannot reach" not in message


def test_a_cas_that_is_not_there_cannot_be_reached(tmp_path: Path) -> None:
    cert, _ = _certificate(tmp_path, "cas")
    # Bound and not listening: the connection is refused, and no other process takes the port.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with CasClient(f"https://127.0.0.1:{port}", cert) as client, pytest.raises(NetworkError) as info:
            client._call("GET", "/v1/anything")
    assert str(info.value).startswith(f"cannot reach the CAS at https://127.0.0.1:{port}: ConnectError")
    assert str(info.value).endswith(NOT_LISTENING)  # and what to do about it


def test_a_client_env_without_the_certificate_says_where_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_CAS_URL", "https://127.0.0.1:8443")
    monkeypatch.delenv("CONFIDE_CAS_CERT", raising=False)
    with pytest.raises(UsageError) as info:
        CasClient.from_env()
    assert info.value.exit_code == 2
    assert str(info.value) == (
        "CONFIDE_CAS_CERT is not set: the CAS certificate to trust is required (source the client.env "
        "that 'confide cas serve' wrote, or set it to the file 'confide cas attest --out PEM' wrote)"
    )
