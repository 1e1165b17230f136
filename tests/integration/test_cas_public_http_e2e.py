"""The public HTTP listener end to end (docs/cas.md "The public HTTP listener"): a real ``confide
cas serve --public-http-listen 127.0.0.1:PORT --public-url http://127.0.0.1:PORT`` process
(SQLite). A service started with ``confide run`` receives a certificate under a CA declared
``crl_distribution`` and ``ca_issuers``; ``openssl verify -crl_download -crl_check``, given
nothing but the CA certificate, fetches the CRL from the listener by itself and accepts the
certificate, and refuses it once ``confide policy revoke`` revoked it; the caIssuers URL gives the
CA certificate. The listener serves nothing else, and refuses what it does not serve."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import SHM, app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess, start_with_public_listener
from confide import errors
from confide.httpserve.limits import PUBLIC_MAX_HEAD

NAME = "pki/web"


def secrets_body(inject: Path) -> str:
    return f"""secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Web CA
    valid_for: 30 days
    crl_distribution: true
    ca_issuers: true
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
    valid_for: 1 day
images:
  - name: img
    injection_files:
      - path: {inject}/srv.pem
        content: "$$SCONE::srv:crt$$"
      - path: {inject}/ca.pem
        content: "$$SCONE::ca:crt$$"
"""


def crl_url(cert: x509.Certificate) -> str:
    (point,) = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert point.full_name is not None
    (uri,) = point.full_name
    return str(uri.value)


def ca_issuers_url(cert: x509.Certificate) -> str:
    (access,) = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert access.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    return str(access.access_location.value)


def raw(port: int, request: bytes) -> bytes:
    """One request over a fresh connection; everything the server sent until it closed (or 30 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_openssl_fetches_the_crl_from_the_public_listener(tmp_path: Path) -> None:
    cas, base = start_with_public_listener(tmp_path / "cas")
    port = int(base.rsplit(":", 1)[1])
    inject = SHM / f"confide-public-http-{os.getpid()}-{tmp_path.name}"
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        script = app_script(tmp_path)
        m = measure(cas, "/bin/sh", str(script))
        service = f"    image_name: img\n    command: /bin/sh {script}\n"
        text = policy_yaml(NAME, m, extra_service=service, body=secrets_body(inject))
        assert apply(cas, tmp_path, text, alice).returncode == 0

        def run() -> x509.Certificate:
            r = confide(
                cas, "run", "--config-id", f"{NAME}/app", "--tee", "sim", "--", "/bin/sh", str(script)
            )
            assert r.returncode == 0, r.stderr
            (tmp_path / "ca.pem").write_bytes((inject / "ca.pem").read_bytes())
            leaf = x509.load_pem_x509_certificate((inject / "srv.pem").read_bytes())
            (tmp_path / f"leaf-{leaf.serial_number:x}.pem").write_bytes(
                leaf.public_bytes(serialization.Encoding.PEM)
            )
            return leaf

        def verify(leaf: x509.Certificate, *extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), *extra,
                 str(tmp_path / f"leaf-{leaf.serial_number:x}.pem")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        leaf = run()
        ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        ca_info = shown["secrets"]["ca"]
        assert crl_url(leaf) == ca_info["crl"]["distribution_point"] == base + ca_info["crl"]["public_path"]
        assert (
            ca_issuers_url(leaf)
            == ca_info["ca_issuers"]["url"]
            == base + ca_info["ca_issuers"]["public_path"]
        )

        # The relying party has the CA certificate only: without -crl_download it has no CRL.
        no_crl = verify(leaf, "-crl_check")
        assert no_crl.returncode != 0 and "unable to get certificate CRL" in no_crl.stdout + no_crl.stderr
        ok = verify(leaf, "-crl_check", "-crl_download")
        assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr

        # caIssuers: the CA's certificate, DER, over plain HTTP, to anyone.
        got = httpx2.get(ca_issuers_url(leaf), timeout=30)
        assert got.status_code == 200 and got.headers["content-type"] == "application/pkix-cert"
        assert x509.load_der_x509_certificate(got.content) == ca
        assert leaf.verify_directly_issued_by(x509.load_der_x509_certificate(got.content)) is None
        head = httpx2.head(crl_url(leaf), timeout=30)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0

        r = confide(cas, "policy", "revoke", NAME, "srv", "--serial", format(leaf.serial_number, "x"),
                    "--reason", "keyCompromise", "--identity", str(alice), check=True)  # fmt: skip
        assert [c["serial"] for c in json.loads(r.stdout)["revoked"]] == [format(leaf.serial_number, "x")]
        refused = verify(leaf, "-crl_check", "-crl_download")
        assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
        current = run()  # the re-issued certificate, under the same CA
        assert current.serial_number != leaf.serial_number and crl_url(current) == crl_url(leaf)
        again = verify(current, "-crl_check", "-crl_download")
        assert again.returncode == 0, again.stdout + again.stderr

        # Nothing else is served; no other method; no content; no oversized head.
        for path in ("/v1/health", f"/v1/policies/{NAME}", "/v1/attest/nonce", "/v1/attest", "/metrics",
                     "/v1/log/checkpoint", "/v1/cas/evidence", f"/v1/policies/{NAME}/crl/ca"):  # fmt: skip
            got = httpx2.get(base + path, timeout=30)
            assert got.status_code == 404 and got.content == b"", path
        for path in ("/v1/attest/nonce", "/v1/attest", "/v1/policies", crl_url(leaf).removeprefix(base)):
            got = httpx2.post(base + path, json={"name": NAME}, timeout=30)
            assert got.status_code == 405 and got.headers["allow"] == "GET, HEAD", path
        crl_path = crl_url(leaf).removeprefix(base).encode()
        answer = raw(port, b"GET " + crl_path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 413 ")
        filler = b"X-Filler: " + b"a" * (PUBLIC_MAX_HEAD + 1) + b"\r\n"
        answer = raw(port, b"GET " + crl_path + b" HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")

        # The TLS API serves the same certificate, and counts the public listener's requests.
        tls = httpx2.Client(verify=ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"]), timeout=30)
        with tls:
            path = ca_info["ca_issuers"]["public_path"]
            assert x509.load_der_x509_certificate(tls.get(cas.env["CONFIDE_CAS_URL"] + path).content) == ca
            metrics = tls.get(cas.env["CONFIDE_CAS_URL"] + "/metrics").text
        assert 'confide_cas_public_http_requests_total{route="/v1/ca/{id}",status="200"} 1.0' in metrics
        assert 'confide_cas_public_http_refused_total{reason="head_too_large"} 1.0' in metrics
        # SIGTERM stops both listeners.
        assert cas.proc is not None
        cas.proc.send_signal(signal.SIGTERM)
        cas.proc.wait(timeout=30)
        with pytest.raises(httpx2.TransportError):
            httpx2.get(crl_url(leaf), timeout=5)
    finally:
        cas.stop()
        for f in inject.iterdir() if inject.exists() else ():
            f.unlink()
        if inject.exists():
            inject.rmdir()


def test_the_listen_address_is_checked_at_start(tmp_path: Path) -> None:
    """A malformed ``--public-http-listen``, or one that cannot be bound, is refused at start
    (exit 2, naming the option)."""
    for n, value in enumerate(("8080", "127.0.0.1:http", "127.0.0.1:70000")):
        bad = CasProcess(tmp_path / f"bad{n}", None, extra_args=("--public-http-listen", value))
        with pytest.raises(RuntimeError, match="--public-http-listen"):
            bad.start()
        assert bad.proc is not None and bad.proc.returncode == errors.UsageError.exit_code
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = CasProcess(tmp_path / "busy", None, extra_args=("--public-http-listen", f"127.0.0.1:{port}"))
        with pytest.raises(RuntimeError, match="--public-http-listen: cannot bind"):
            busy.start()
        assert busy.proc is not None and busy.proc.returncode == errors.UsageError.exit_code
