"""``confide ui`` prints the CAS's URL and how it is trusted (a certificate file's path) through
:func:`confide.termsafe.printable`: both are the environment's text (client.env) and could
carry escape sequences a terminal obeys."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.cli import cli
from confide.httpserve.server import HttpServer


def _self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cas")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_the_serving_line_is_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_file = tmp_path / "cas\x1b]0;owned\x07.pem"
    cert_file.write_bytes(_self_signed_pem())
    served: list[bool] = []
    monkeypatch.setattr(HttpServer, "serve_forever", lambda self, *a, **k: served.append(True))
    env = {"CONFIDE_CAS_URL": "https://127.0.0.1:9/", "CONFIDE_CAS_CERT": str(cert_file)}
    args = ["ui", "--listen", "127.0.0.1:0", "--state", str(tmp_path / "ui" / "state.json")]
    r = CliRunner().invoke(cli, args, env=env)
    assert r.exit_code == 0, r.output
    assert served == [True]
    (line,) = r.stderr.splitlines()
    assert line.startswith("confide ui: serving https://127.0.0.1:9")
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "cas\\x1b]0;owned\\x07.pem" in line
