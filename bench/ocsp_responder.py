"""Benchmark: what an OCSP answer costs the CAS (docs/cas.md "OCSP"), in-process on SQLite.

Three variants, interleaved batch by batch in one run (bench/_interleave.py), for a P-256 CA
declared ``ocsp`` and ``crl_distribution`` and its leaf:

- ``crl``: the peer, ``crl_response`` of the public CRL route (``GET /v1/crl/<id>.crl`` without
  the HTTP layer: find the CA by its id, read its current CRL);
- ``cached``: ``OcspResponder.respond`` for a request without a nonce, answered from the cache
  (find the CA, check the CertID, read the CRL number, a cache hit);
- ``signed``: the same request with a fresh nonce each time: the certificate's status read from
  the database and a new ECDSA P-256 signature by the CA's delegated responder key, its
  certificate included (the per-client rate limit off);
- ``several``: one request about 4 certificates (RFC 6960 §4.1.1: the leaf, the CA's own
  serial, two never issued) with a fresh nonce: 4 status reads, one signature;
- ``first``: ``signed`` with the responder's cache of checked certificates emptied before each
  request, so that the leaf's signature is verified under the CA's key every time (what the
  first request about a certificate costs; ``good`` rests on that check).

The status reads include the checks of ``good`` (the stored certificate's signature under the
CA's key, kept per stored certificate) and of the CA's CRL (its signature, kept per CRL).

    .venv/bin/python bench/ocsp_responder.py [--seconds 2] [--rounds 3] [--json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _interleave import ab_options, best_interleaved, per_second, print_result  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402

from confide.cas.client import policy_submission  # noqa: E402
from confide.cas.db import raw_execute  # noqa: E402
from confide.cas.ocsp_responder import GENUINE_CACHE_SIZE, OcspResponder  # noqa: E402
from confide.cas.public_http import crl_response  # noqa: E402
from confide.cas.secrets import crl_distribution_id  # noqa: E402
from confide.cas.server import prepare  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.lru import Lru  # noqa: E402
from confide.policy.loader import loads_policy  # noqa: E402

POLICY = f"""name: tls
version: "0.3"
services:
  - name: svc
    command: svc
    attestation:
      sim:
        measurement: "{"ab" * 48}"
secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
    crl_distribution: true
    ocsp: true
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
    valid_for: 30 days
security:
  attestation:
    tolerate: [simulation]
"""


SHA1 = bytes.fromhex("06052b0e03021a0500")  # AlgorithmIdentifier content: sha1, NULL parameters
NONCE_OID = bytes.fromhex("06092b0601050507300102")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    head = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + head + content


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _certificate(cas: Any, name: str) -> x509.Certificate:
    with cas.db.read() as conn:
        row = raw_execute(
            conn,
            "SELECT public FROM secrets WHERE policy = 'tls' AND name = ? ORDER BY version DESC",
            (name,),
        ).fetchone()
    return x509.load_pem_x509_certificate(json.loads(row[0])["certificate"].encode())


def main() -> None:
    args = ab_options(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        cas, *_ = prepare(Path(tmp), host="127.0.0.1", dev=True, db_url=None, collateral=None)
        cas.apply(policy_submission(loads_policy(POLICY), Identity.generate(), cas=cas.tls_spki_sha256))
        ca, leaf = _certificate(cas, "ca"), _certificate(cas, "srv")
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        the_id = crl_distribution_id(ca.subject, ski)
        responder = OcspResponder(cas, signature_rate=None)

        def request(nonce: bytes | None) -> bytes:
            builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1())
            if nonce is not None:
                builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
            return builder.build().public_bytes(serialization.Encoding.DER)

        plain = request(None)
        probe = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1()).build()

        def several_request(nonce: bytes) -> bytes:
            entries = b"".join(
                _der(0x30, _der(0x30, _der(0x30, SHA1) + _der(0x04, probe.issuer_name_hash)
                                + _der(0x04, probe.issuer_key_hash) + _int(serial)))
                for serial in (leaf.serial_number, ca.serial_number, 12345, 67890)
            )  # fmt: skip
            nonce_ext = _der(0x30, NONCE_OID + _der(0x04, _der(0x04, nonce)))
            tbs = _der(0x30, _der(0x30, entries) + _der(0xA2, _der(0x30, nonce_ext)))
            return _der(0x30, tbs)

        def crl() -> object:
            status, _, body = crl_response(cas, the_id + ".crl")
            assert status == 200 and body
            return body

        def cached() -> Any:
            return responder.respond(the_id, plain, "192.0.2.1")

        def signed() -> Any:
            return responder.respond(the_id, request(os.urandom(32)), "192.0.2.1")

        def several() -> Any:
            return responder.respond(the_id, several_request(os.urandom(32)), "192.0.2.1")

        def first() -> Any:
            responder._genuine_certs = Lru(GENUINE_CACHE_SIZE)
            return responder.respond(the_id, request(os.urandom(32)), "192.0.2.1")

        good = ocsp.load_der_ocsp_response(cached().der)
        assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
        fresh = ocsp.load_der_ocsp_response(signed().der)
        assert fresh.certificate_status == ocsp.OCSPCertStatus.GOOD
        four = [r.certificate_status for r in ocsp.load_der_ocsp_response(several().der).responses]
        assert four == [ocsp.OCSPCertStatus.GOOD] + [ocsp.OCSPCertStatus.UNKNOWN] * 3, four
        result = {
            **per_second(best_interleaved(crl, cached, args), "crl", "cached"),
            **per_second(best_interleaved(crl, signed, args), "crl", "signed"),
            **per_second(best_interleaved(crl, several, args), "crl", "several"),
            **per_second(best_interleaved(crl, first, args), "crl", "first"),
        }
    print_result(
        result,
        args,
        (
            "public CRL route (peer):          {crl_per_s:>9} /s",
            "OCSP, cached (no nonce):          {cached_per_s:>9} /s  ({cached_over_crl}x the CRL route's time)",
            "OCSP, signed (a nonce each time): {signed_per_s:>9} /s  ({signed_over_crl}x the CRL route's time)",
            "OCSP, 4 certificates and a nonce: {several_per_s:>9} /s  ({several_over_crl}x the CRL route's time)",
            "OCSP, signed, leaf checked anew:  {first_per_s:>9} /s  ({first_over_crl}x the CRL route's time)",
        ),
    )


if __name__ == "__main__":
    main()
