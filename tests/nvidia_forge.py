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
from cryptography.x509.oid import NameOID

from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType

FWID_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID_DER = bytes.fromhex("0609608648016503040202")

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str, now: datetime, issuer: Issuer | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP384R1())
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384())
    )
    return cert, key


def fwid_extension(fwid: bytes) -> x509.UnrecognizedExtension:
    """TCG DICE TcbInfo-like value whose last element is ``SEQUENCE { sha384, OCTET STRING }``."""
    inner = SHA384_OID_DER + b"\x04\x30" + fwid
    last = b"\x30" + bytes([len(inner)]) + inner
    body = b"\x02\x01\x01" + last
    return x509.UnrecognizedExtension(FWID_OID, b"\x30" + bytes([len(body)]) + body)


def make_leaf(issuer: Issuer, fwid: bytes | None, now: datetime) -> Issuer:
    """A GPU attestation (FMC) leaf, valid for 30 days from a day before ``now``."""
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("Test GPU FMC"))
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
    )
    if fwid is not None:
        builder = builder.add_extension(fwid_extension(fwid), critical=False)
    return builder.sign(issuer[1], hashes.SHA384()), key


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
