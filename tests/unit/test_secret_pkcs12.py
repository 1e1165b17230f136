"""``$$SCONE::cert:pkcs12-with-private-key$$`` (SCONE v0.3.9): a DER PKCS#12 archive of the
certificate, its private key and its chain, under the empty password; files only; refused at
load time where it cannot be rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from test_secret_generation_review import PKI, RUNTIME, _ca_pem, _generate_all, _policy

from confide.cas.pkcs12 import ITERATIONS
from confide.cas.secrets import SecretValue, render
from confide.errors import PolicyError
from confide.policy.loader import loads_policy
from confide.policy.placeholders import Context, Encoding, encoding_for, find_placeholders

P12 = "pkcs12-with-private-key"


@pytest.fixture(scope="module")
def pki() -> dict[str, SecretValue]:
    return _generate_all(loads_policy(_policy(PKI)))


def _key_der(key: object) -> bytes:
    der: bytes = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der


def test_the_format_is_scones_spelling_for_certificates_only() -> None:
    [found] = find_placeholders(f"$$SCONE::leaf:{P12}$$")
    assert (found.name, found.format) == ("leaf", P12)
    for kind in ("x509", "x509-ca"):
        assert encoding_for(kind, P12, Context.FILE) is Encoding.PKCS12
        assert Encoding.PKCS12.is_binary
        for context in (Context.COMMAND, Context.ENVIRONMENT):
            with pytest.raises(ValueError, match="binary values only go into injected files"):
                encoding_for(kind, P12, context)
    for kind in ("ascii", "binary", "private-key", "public-key"):
        with pytest.raises(ValueError, match=f"got format '{P12}' for a {kind} secret"):
            encoding_for(kind, P12, Context.FILE)
    for wrong in ("pkcs12", "pkcs12-with-privatekey", "pkcs12:with-private-key"):
        with pytest.raises(ValueError):
            encoding_for("x509", wrong, Context.FILE)


@pytest.mark.parametrize("name", ["leaf", "mid", "root"])
def test_the_archive_holds_the_key_certificate_and_chain_of_the_pem_formats(
    pki: dict[str, SecretValue], name: str
) -> None:
    value = pki[name]
    archive = render(value, Encoding.PKCS12)
    loaded = pkcs12.load_pkcs12(archive, b"")  # the empty password, as SCONE documents
    assert loaded.key is not None and loaded.cert is not None
    assert _key_der(loaded.key) == serialization.load_pem_private_key(
        render(value, Encoding.PEM_PKCS8), None
    ).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert loaded.cert.certificate == x509.load_pem_x509_certificate(render(value, Encoding.CERT_PEM))
    chain = render(value, Encoding.CHAIN_PEM)
    assert [c.certificate for c in loaded.additional_certs] == (
        x509.load_pem_x509_certificates(chain) if chain else []
    )
    with pytest.raises(ValueError):  # a MAC over the content: a wrong password does not open it
        pkcs12.load_pkcs12(archive, b"wrong")


def test_salts_are_fresh_at_each_rendering(pki: dict[str, SecretValue]) -> None:
    one, two = render(pki["leaf"], Encoding.PKCS12), render(pki["leaf"], Encoding.PKCS12)
    assert one != two
    assert pkcs12.load_pkcs12(one, b"").cert == pkcs12.load_pkcs12(two, b"").cert


def test_a_tampered_archive_fails_its_mac(pki: dict[str, SecretValue]) -> None:
    archive = bytearray(render(pki["leaf"], Encoding.PKCS12))
    archive[-40] ^= 1  # inside the MAC value
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(bytes(archive), b"")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_openssl_reads_it_with_the_empty_password(pki: dict[str, SecretValue], tmp_path: Path) -> None:
    path = tmp_path / "leaf.p12"
    path.write_bytes(render(pki["leaf"], Encoding.PKCS12))
    info = subprocess.run(
        ["openssl", "pkcs12", "-info", "-nokeys", "-passin", "pass:", "-in", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "PBES2, PBKDF2, AES-256-CBC" in info.stderr
    assert f"MAC: sha256, Iteration {ITERATIONS}" in info.stderr
    certs = x509.load_pem_x509_certificates(info.stdout.encode())
    leaf, mid, root = (
        x509.load_der_x509_certificate(pki[n].certificate or b"") for n in ("leaf", "mid", "root")
    )
    assert certs == [leaf, mid, root]
    keys = subprocess.run(
        ["openssl", "pkcs12", "-nocerts", "-nodes", "-passin", "pass:", "-in", str(path)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    key = serialization.load_pem_private_key(keys.stdout[keys.stdout.index(b"-----BEGIN") :], None)
    assert _key_der(key) == pki["leaf"].data


def test_a_certificate_without_a_key_here_is_refused_at_load_and_at_release() -> None:
    pem = "\n".join("      " + line for line in _ca_pem().strip().splitlines())
    secrets = f"  - name: ext\n    kind: x509-ca\n    value: |\n{pem}\n"
    with pytest.raises(PolicyError, match="private-key format for a certificate given as an explicit value"):
        loads_policy(_policy(secrets, f"$$SCONE::ext:{P12}$$"))
    keyless = SecretValue("x509", b"", b"cert")
    with pytest.raises(PolicyError, match="no private key to inject"):
        render(keyless, Encoding.PKCS12)


def test_a_runtime_certificate_is_refused_at_load_and_at_release() -> None:
    """Its key never leaves the runtime: the CAS cannot build the archive."""
    with pytest.raises(PolicyError, match="pkcs12-with-private-key for a certificate issued to the runtime"):
        loads_policy(_policy(RUNTIME, f"$$SCONE::rt:{P12}$$"))
    with pytest.raises(PolicyError, match="no private key for a PKCS#12 archive"):
        render(SecretValue("x509", b"", b"cert", runtime_key=True), Encoding.PKCS12)


def test_it_is_refused_in_the_command_with_line_and_column() -> None:
    text = _policy(PKI).replace("command: app", f"command: app $$SCONE::leaf:{P12}$$")
    with pytest.raises(PolicyError) as info:
        loads_policy(text)
    assert "binary values only go into injected files" in str(info.value)
    assert "<policy>:6:14: services[0].command[1]" in str(info.value)
    loads_policy(_policy(PKI, f"$$SCONE::leaf:{P12}$$"))  # in a file it loads
    with pytest.raises(PolicyError, match=f"got format '{P12}' for a private-key secret"):
        loads_policy(_policy(PKI, f"$$SCONE::leaf_key:{P12}$$"))


@pytest.mark.parametrize("key_type", ["P-256", "P-384", "Ed25519", "RSA-2048"])
def test_every_key_type_goes_into_the_archive(key_type: str) -> None:
    secrets = f"  - name: k\n    kind: private-key\n    key_type: {key_type}\n  - name: c\n    kind: x509\n    private_key: k\n"
    value = _generate_all(loads_policy(_policy(secrets, f"$$SCONE::c:{P12}$$")))["c"]
    loaded = pkcs12.load_pkcs12(render(value, Encoding.PKCS12), b"")
    assert loaded.key is not None and _key_der(loaded.key) == value.data
    assert loaded.cert is not None and loaded.additional_certs == []  # self-signed: no chain
