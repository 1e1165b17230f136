"""A test PKI that signs NVIDIA-style RIMs (enveloped XML-DSig) with signxml.

Used where a test needs a RIM with chosen golden values: such a RIM can only verify under
this test root (passed explicitly as ``rim_root``), never under the pinned NVIDIA RIM root.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from signxml import SignatureConstructionMethod
from signxml.signer import XMLSigner

from confide.evidence.nvidia import NvidiaAttestationReport
from confide.evidence.nvidia_rim import SHA384_NS, SWID_NS
from pki import PrivateKey, issue, key_usage

DS_SIGNATURE = "{http://www.w3.org/2000/09/xmldsig#}Signature"
VALID_FROM = datetime(2024, 1, 1, tzinfo=UTC)
VALID_UNTIL = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RimPki:
    root: x509.Certificate
    ica: x509.Certificate
    leaf: x509.Certificate
    leaf_key: PrivateKey
    root_key: ec.EllipticCurvePrivateKey
    ica_key: ec.EllipticCurvePrivateKey


def make_cert(
    cn: str,
    key: PrivateKey,
    issuer: tuple[x509.Certificate, PrivateKey] | None,
    *,
    ca: bool,
    valid: tuple[datetime, datetime] = (VALID_FROM, VALID_UNTIL),
) -> x509.Certificate:
    return issue(
        cn, key.public_key(), issuer=issuer[0].subject if issuer else cn,
        signing_key=issuer[1] if issuer else key, not_before=valid[0], not_after=valid[1], ca=ca,
        usage=key_usage(cert_sign=ca, digital_signature=not ca),
    )  # fmt: skip


def make_pki(
    prefix: str = "Test RIM",
    *,
    rsa_leaf: bool = False,
    valid: tuple[datetime, datetime] = (VALID_FROM, VALID_UNTIL),
) -> RimPki:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make_cert(f"{prefix} Root CA", root_key, None, ca=True, valid=valid)
    ica_key = ec.generate_private_key(ec.SECP384R1())
    ica = make_cert(f"{prefix} ICA", ica_key, (root, root_key), ca=True, valid=valid)
    leaf_key: PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_leaf
        else ec.generate_private_key(ec.SECP384R1())
    )
    leaf = make_cert(f"{prefix} Signer", leaf_key, (ica, ica_key), ca=False, valid=valid)
    return RimPki(root=root, ica=ica, leaf=leaf, leaf_key=leaf_key, root_key=root_key, ica_key=ica_key)


def strip_signature(xml: bytes) -> etree._Element:
    doc = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    for sig in doc.findall(DS_SIGNATURE):
        doc.remove(sig)
    return doc


def sign_rim(xml: bytes | etree._Element, pki: RimPki, *, include_root: bool = True) -> bytes:
    """Re-sign ``xml`` (any existing signature removed) as NVIDIA does: enveloped, c14n 1.1."""
    doc = strip_signature(xml) if isinstance(xml, bytes) else xml
    rsa_key = isinstance(pki.leaf_key, rsa.RSAPrivateKey)
    signer = XMLSigner(
        method=SignatureConstructionMethod.enveloped,
        signature_algorithm="rsa-sha384" if rsa_key else "ecdsa-sha384",
        digest_algorithm="sha384",
        c14n_algorithm="http://www.w3.org/2006/12/xml-c14n11",
    )
    chain = [pki.leaf, pki.ica, *([pki.root] if include_root else [])]
    signed = signer.sign(doc, key=pki.leaf_key, cert=chain)
    return etree.tostring(signed)


def rim_matching_report(
    report_bytes: bytes, rim_xml: bytes, version: str, pki: RimPki, *, change: dict[int, bytes] | None = None
) -> bytes:
    """A copy of the RIM ``rim_xml`` whose active golden values are those of the NVIDIA report
    ``report_bytes`` (RIM index i = SPDM block i + 1; ``change`` overrides some), its version
    set to ``version``, re-signed by ``pki``."""
    report = NvidiaAttestationReport.from_bytes(report_bytes)
    doc = strip_signature(rim_xml)
    meta = doc.find(f"{{{SWID_NS}}}Meta")
    assert meta is not None
    meta.set("colloquialVersion", version)
    for res in doc.iter(f"{{{SWID_NS}}}Resource"):
        if res.get("active") == "True":
            index = int(res.get("index", "0"))
            value = (change or {}).get(index, report.measurements[index + 1])
            res.set(f"{{{SHA384_NS}}}Hash0", value.hex())
    return sign_rim(doc, pki)
