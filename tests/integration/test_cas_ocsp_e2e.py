"""The OCSP responder end to end (docs/cas.md "OCSP"): a real ``confide cas serve
--public-http-listen 127.0.0.1:PORT --public-url http://127.0.0.1:PORT`` process (SQLite). A
service started with ``confide run`` receives a certificate under a CA declared ``ocsp``; its
AuthorityInfoAccess names the responder; ``openssl ocsp -issuer ca.pem -cert leaf.pem -url URL
-CAfile ca.pem`` (OpenSSL's own nonce included) says ``good``, then ``revoked`` with the reason
once ``confide policy revoke`` revoked it; the GET form (RFC 6960 Appendix A.1) gives the same;
a malformed request is answered ``malformedRequest``; the TLS listener answers too. Every
response is signed by the CA's delegated responder (RFC 6960 §4.2.2.2), whose certificate it
carries and OpenSSL checks against ``ca.pem`` (id-kp-OCSPSigning, OCSP No Check); one request
about several certificates (``openssl ocsp -cert A -serial B``, §4.1.1) gets one answer each.
After a policy update to ``ocsp: {signer: ca}`` the responses are the CA's own (no
certificate, responderID the CA's key), which OpenSSL and ``cryptography`` verify."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import SHM, app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import start_with_public_listener

NAME = "pki/ocsp"


def secrets_body(inject: Path) -> str:
    return f"""secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: OCSP CA
    valid_for: 30 days
    ocsp: true
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


def ocsp_url(cert: x509.Certificate) -> str:
    (access,) = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert access.access_method == AuthorityInformationAccessOID.OCSP
    return str(access.access_location.value)


def test_openssl_asks_the_responder(tmp_path: Path) -> None:
    cas, base = start_with_public_listener(tmp_path / "cas")
    inject = SHM / f"confide-ocsp-{os.getpid()}-{tmp_path.name}"
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        script = app_script(tmp_path)
        m = measure(cas, "/bin/sh", str(script))
        service = f"    image_name: img\n    command: /bin/sh {script}\n"
        text = policy_yaml(NAME, m, extra_service=service, body=secrets_body(inject))
        assert apply(cas, tmp_path, text, alice).returncode == 0
        r = confide(cas, "run", "--config-id", f"{NAME}/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "leaf.pem"
        ca_pem.write_bytes((inject / "ca.pem").read_bytes())
        leaf_pem.write_bytes((inject / "srv.pem").read_bytes())
        ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        leaf = x509.load_pem_x509_certificate(leaf_pem.read_bytes())
        url = ocsp_url(leaf)
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        assert (
            url
            == shown["secrets"]["ca"]["ocsp"]["url"]
            == base + shown["secrets"]["ca"]["ocsp"]["public_path"]
        )

        def openssl_ocsp() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["openssl", "ocsp", "-issuer", str(ca_pem), "-cert", str(leaf_pem), "-url", url,
                 "-CAfile", str(ca_pem)], capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        good = openssl_ocsp()
        assert good.returncode == 0, good.stdout + good.stderr
        assert f"{leaf_pem}: good" in good.stdout
        assert "Response verify OK" in good.stderr and "nonce" not in (good.stdout + good.stderr).lower()

        # The delegated responder (RFC 6960 §4.2.2.2), as OpenSSL prints it; several
        # certificates in one request (§4.1.1): the leaf, a serial never issued, the CA itself.
        several = subprocess.run(
            ["openssl", "ocsp", "-issuer", str(ca_pem), "-cert", str(leaf_pem), "-serial", "0x1234",
             "-cert", str(ca_pem), "-url", url, "-CAfile", str(ca_pem), "-resp_text"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert several.returncode == 0, several.stdout + several.stderr
        assert "Response verify OK" in several.stderr, several.stderr
        assert f"{leaf_pem}: good" in several.stdout and "0x1234: unknown" in several.stdout
        assert f"{ca_pem}: unknown" in several.stdout
        assert several.stdout.count("Cert Status:") == 3
        assert "OCSP Signing" in several.stdout and "OCSP No Check" in several.stdout
        assert "OCSP CA OCSP responder" in several.stdout  # the responder certificate's subject
        assert "Responder Id: " in several.stdout  # byKey (§4.2.2.3)
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        responder_pem = shown["secrets"]["ca/ocsp-responder"]["certificate"]
        responder = x509.load_pem_x509_certificate(responder_pem.encode())
        assert responder.issuer == ca.subject and "PRIVATE" not in json.dumps(shown)

        def get_form() -> ocsp.OCSPResponse:
            der = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, ca, hashes.SHA1())
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
            got = httpx2.get(f"{url}/{quote(base64.b64encode(der).decode(), safe='')}", timeout=30)
            assert got.status_code == 200 and got.headers["content-type"] == "application/ocsp-response"
            response = ocsp.load_der_ocsp_response(got.content)
            assert response.serial_number == leaf.serial_number
            assert response.certificates == [responder]  # the delegated responder's certificate
            public = responder.public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
            return response

        assert get_form().certificate_status == ocsp.OCSPCertStatus.GOOD

        r = confide(cas, "policy", "revoke", NAME, "srv", "--serial", format(leaf.serial_number, "x"),
                    "--reason", "keyCompromise", "--identity", str(alice), check=True)  # fmt: skip
        assert [c["serial"] for c in json.loads(r.stdout)["revoked"]] == [format(leaf.serial_number, "x")]
        revoked = openssl_ocsp()
        assert f"{leaf_pem}: revoked" in revoked.stdout, revoked.stdout + revoked.stderr
        assert "Reason: keyCompromise" in revoked.stdout and "Response verify OK" in revoked.stderr
        response = get_form()
        assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason == x509.ReasonFlags.key_compromise

        # Malformed: malformedRequest (HTTP 200), not an error page.
        bad = httpx2.post(url, content=b"\x30\x03junk", headers={"content-type": "application/ocsp-request"})
        assert bad.status_code == 200
        assert (
            ocsp.load_der_ocsp_response(bad.content).response_status
            == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )
        bad_get = httpx2.get(f"{url}/not-base64!", timeout=30)
        assert bad_get.status_code == 200
        assert (
            ocsp.load_der_ocsp_response(bad_get.content).response_status
            == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )

        # The TLS listener answers the same, and counts the public listener's OCSP requests.
        tls = httpx2.Client(verify=ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"]), timeout=30)
        with tls:
            path = url.removeprefix(base)
            der = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, ca, hashes.SHA1())
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
            got = tls.post(cas.env["CONFIDE_CAS_URL"] + path, content=der,
                           headers={"content-type": "application/ocsp-request"})  # fmt: skip
            assert ocsp.load_der_ocsp_response(got.content).certificate_status == ocsp.OCSPCertStatus.REVOKED
            metrics = tls.get(cas.env["CONFIDE_CAS_URL"] + "/metrics").text
        assert 'confide_cas_public_http_requests_total{route="/v1/ocsp/{id}",status="200"}' in metrics

        # Signed by the CA's own key instead (`ocsp: {signer: ca}`, §4.2.2.2), by a policy
        # update: the next response is the CA's, the same GET as above included (answered from
        # the cache before, signed by the responder): no certificate, responderID the CA's key.
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        update = text.replace("    ocsp: true\n", "    ocsp:\n      signer: ca\n").replace(
            'version: "0.3"', f'version: "0.3"\npredecessor: "{shown["hash"]}"'
        )
        assert "signer: ca" in update and apply(cas, tmp_path, update, alice).returncode == 0
        by_ca = subprocess.run(
            ["openssl", "ocsp", "-issuer", str(ca_pem), "-cert", str(leaf_pem), "-url", url,
             "-CAfile", str(ca_pem), "-resp_text"], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert by_ca.returncode == 0 and "Response verify OK" in by_ca.stderr, by_ca.stdout + by_ca.stderr
        assert f"{leaf_pem}: revoked" in by_ca.stdout and "Reason: keyCompromise" in by_ca.stdout
        assert "Certificate:" not in by_ca.stdout and "OCSP responder" not in by_ca.stdout
        der = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1()).build()
        got = httpx2.get(f"{url}/{quote(base64.b64encode(der.public_bytes(serialization.Encoding.DER)).decode(), safe='')}",
                         timeout=30)  # fmt: skip
        response = ocsp.load_der_ocsp_response(got.content)
        assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED and response.certificates == []
        ca_key = ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(ca_key).digest
        ca_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        assert shown["secrets"]["ca"]["ocsp"]["signer"] == "ca"
    finally:
        cas.stop()
        for f in inject.iterdir() if inject.exists() else ():
            f.unlink()
        if inject.exists():
            inject.rmdir()
