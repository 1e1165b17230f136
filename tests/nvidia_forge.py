"""A test PKI in NVIDIA's device-identity shape (root → ICA → GPU attestation leaf carrying the
TCG DICE FWID extension, ECDSA P-384) and SPDM reports re-signed by its leaf.

A forged report keeps the real sample's measurements and opaque data (so its FWID matches a
leaf made with that FWID) and may carry a new requester nonce. It verifies only under this
PKI's root passed explicitly (``root=``), never under the pinned NVIDIA Device Identity CA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from pki import Issuer, issue, p384_cert

FWID_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID_DER = bytes.fromhex("0609608648016503040202")


def make_ca(cn: str, now: datetime, issuer: Issuer | None = None) -> Issuer:
    return p384_cert(cn, now - timedelta(days=1), now + timedelta(days=365), issuer)


def fwid_extension(fwid: bytes) -> x509.UnrecognizedExtension:
    """TCG DICE TcbInfo-like value whose last element is ``SEQUENCE { sha384, OCTET STRING }``."""
    inner = SHA384_OID_DER + b"\x04\x30" + fwid
    last = b"\x30" + bytes([len(inner)]) + inner
    body = b"\x02\x01\x01" + last
    return x509.UnrecognizedExtension(FWID_OID, b"\x30" + bytes([len(body)]) + body)


def make_leaf(issuer: Issuer, fwid: bytes | None, now: datetime) -> Issuer:
    """A GPU attestation (FMC) leaf, valid for 30 days from a day before ``now``."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue(
        "Test GPU FMC", key.public_key(), issuer=issuer[0].subject, signing_key=issuer[1],
        not_before=now - timedelta(days=1), not_after=now + timedelta(days=30), ca=None,
        extensions=[fwid_extension(fwid)] if fwid is not None else (),
    )  # fmt: skip
    return cert, key


def resign(report_bytes: bytes, key: ec.EllipticCurvePrivateKey, *, nonce: bytes | None = None) -> bytes:
    """``report_bytes`` re-signed by ``key``, with a new requester nonce when given."""
    report = NvidiaAttestationReport.from_bytes(report_bytes)
    if nonce is not None:
        report = dataclasses.replace(report, request=dataclasses.replace(report.request, nonce=nonce))
    r, s = decode_dss_signature(key.sign(report.signed_bytes, ec.ECDSA(hashes.SHA384())))
    return report.signed_bytes + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclass(frozen=True)
class NvidiaPki:
    root: Issuer
    ica: Issuer
    leaf: Issuer

    @property
    def chain(self) -> list[x509.Certificate]:
        """Leaf first, root last (as the GPU's chain is sent)."""
        return [self.leaf[0], self.ica[0], self.root[0]]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.DER) for c in self.chain)


def make_pki(report_bytes: bytes, now: datetime) -> NvidiaPki:
    """A PKI whose leaf certifies the FWID of ``report_bytes``."""
    fwid = NvidiaAttestationReport.from_bytes(report_bytes).response.field(OpaqueFieldType.FWID)
    root = make_ca("Test Device Identity CA", now)
    ica = make_ca("Test ICA", now, root)
    return NvidiaPki(root, ica, make_leaf(ica, fwid, now))


# --- OCSP responses (RFC 6960) under this PKI ------------------------------------------------------


def make_responder(issuer: Issuer, now: datetime, *, eku: bool = True) -> Issuer:
    """A delegated OCSP responder certificate issued by ``issuer`` (§4.2.2.2: id-kp-OCSPSigning)."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue(
        "Test OCSP Responder", key.public_key(), issuer=issuer[0].subject, signing_key=issuer[1],
        not_before=now - timedelta(days=1), not_after=now + timedelta(days=30), ca=None,
        extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])] if eku else (),
    )  # fmt: skip
    return cert, key


def ocsp_response(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    signer: Issuer,
    *,
    this_update: datetime,
    next_update: datetime | None,
    nonce: bytes | None = None,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    carry: bool = False,
    by_name: bool = False,
) -> bytes:
    """A DER Basic OCSP response about ``cert``, signed by ``signer`` (the issuer or a delegated
    responder, carried in ``certs`` when ``carry``), whose ResponderID is the signer's key hash
    (or its name, ``by_name``)."""
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=issuer,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=this_update - timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(
            ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH, signer[0]
        )
    )
    if carry:
        builder = builder.certificates([signer[0]])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.sign(signer[1], hashes.SHA384()).public_bytes(Encoding.DER)
