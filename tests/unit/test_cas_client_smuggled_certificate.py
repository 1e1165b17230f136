"""``CONFIDE_CAS_SPKI`` pins the key of the one CAS a runtime may talk to (set by an image's
launcher, ``sconify --cas``), while the certificate file ``CONFIDE_CAS_CERT`` comes from the
host. The client must trust exactly the certificate whose key it checked: a second certificate
hidden in the file from the pin's parser (its PEM label holds a non-ASCII character, which the
TLS context's reading dropped) was trusted by TLS all the same, so a server of the host's choice
passed both the pin and the handshake."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.client import ENV_CERT, ENV_PIN, ENV_URL, CasClient
from confide.cas.documents import spki_sha256
from confide.errors import NetworkError
from pki import issue, key_usage, self_signed_pem

E_ACUTE = "é".encode()


def _hidden(pem: bytes) -> bytes:
    """``pem`` with ``é`` inside both of its labels: a block that is no CERTIFICATE to
    cryptography's PEM reader, and one once the non-ASCII bytes are dropped."""
    return pem.replace(b"CERTIFICATE-----", b"CERT" + E_ACUTE + b"IFICATE-----")


def _self_signed_server(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (as a CAS's own), PEM files."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = issue(
        "impostor", key.public_key(), issuer="impostor", signing_key=key, not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=1), ca=False, usage=key_usage(cert_sign=False, digital_signature=True),
        extensions=[san],
    )  # fmt: skip
    cert_path, key_path = directory / "impostor-cert.pem", directory / "impostor-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A TLS server (127.0.0.1) with a self-signed certificate of its own: (URL, its certificate,
    the genuine CAS's certificate, whose key no server here has)."""
    genuine = self_signed_pem(tmp_path / "genuine.pem")
    cert, key = _self_signed_server(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    reached = threading.Event()

    def run() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        reached.set()
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(65536)
                body = b'{"nonce": "00"}'
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", cert, genuine
    finally:
        listener.close()
        thread.join(timeout=10)


def test_a_certificate_hidden_from_the_pin_is_not_trusted(
    impostor: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, impostor_cert, genuine = impostor
    bundle = tmp_path / "client-cert.pem"
    bundle.write_bytes(genuine.read_bytes() + _hidden(impostor_cert.read_bytes()))
    pin = spki_sha256(x509.load_pem_x509_certificate(genuine.read_bytes()))
    env = {ENV_URL: url, ENV_CERT: str(bundle), ENV_PIN: pin}
    client = CasClient.from_env(env)  # one certificate to the pin's reader: the genuine one
    assert client.cas_spki_sha256 == pin
    with client, pytest.raises(NetworkError, match="not the one this client trusts"):
        client.nonce()  # the impostor's certificate does not verify: nothing is read from it


def test_the_one_certificate_of_the_file_is_trusted(impostor: tuple[str, Path, Path]) -> None:
    """The control: the impostor's own certificate, as the file, is trusted (so the refusal
    above is the hidden certificate's doing)."""
    url, impostor_cert, _genuine = impostor
    with CasClient(url, impostor_cert) as client:
        assert client.nonce() == "00"
