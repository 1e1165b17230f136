"""Verify the enveloped XML-DSig signature of an NVIDIA RIM (SWID tag) and its signing chain.

A RIM is trusted only after every step here succeeds; its golden measurements are then read
from the **signed bytes** (the canonical form the signature covers), never from the file:

1. Size cap, then the file is parsed with ``defusedxml`` (no DTD, no entities, no external
   references): a hostile document is refused before ``lxml`` ever sees it.
2. Parsed again with a hardened ``lxml`` parser (no entity resolution, no network, no DTD
   loading, no huge trees); exactly one ``ds:Signature``, a direct child of the root
   (XML-DSig 1.1 §2 "enveloped"). A RIM without one is refused (``SignatureError``).
3. ``SignedInfo``: exactly one ``Reference`` with ``URI=""`` (the whole document), transforms
   exactly ``enveloped-signature`` optionally followed by one canonicalisation (XML-DSig 1.1
   §6.6.4, §6.5), ECDSA or RSA with SHA-256/384/512, digest SHA-256/384/512.
4. ``KeyInfo/X509Data/X509Certificate`` (XML-DSig 1.1 §4.5.4): ordered from the signer up by
   issuer names, the pinned root appended when absent, then checked link by link at ``at``
   (:func:`confide.verify._pinned_chain.verify_pinned_chain`); the signer must not be a CA and
   must allow ``digitalSignature`` when it has a KeyUsage extension. With ``ocsp`` responses,
   the signer and every intermediate (not the root; nvtrust checks the RIM chain from index 0)
   must be ``good`` (RFC 6960, :func:`confide.verify.ocsp.verify_ocsp_response`); without them
   there is no revocation check.
5. ``signxml`` verifies the reference digest (after the declared transforms and
   canonicalisation) and the signature over the canonicalised ``SignedInfo`` with the
   signer's key, at ``at`` (its clock is never read).
6. The signed bytes are parsed into a :class:`ReferenceManifest`.

RIMs that passed steps 1-3, 5 and 6 are remembered (a bounded memo keyed by the SHA-256 of the
file and of the root, files up to :data:`MEMO_MAX_SIZE` only): the same bytes under the same root
give the same structure, chain, digest and signature outcome, so a RIM verified again (the CAS
compares every GPU report with the same few RIMs) skips them, while step 4 (the chain at ``at``,
the signer's constraints, the OCSP responses) is always run again. None of the skipped steps
depends on ``at``: signxml's own certificate time check (step 5) never fails after step 4 passed.

Pure: no file, network or clock access.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.verifier import SignatureConfiguration, XMLVerifier

from confide.errors import CertificateChainError, ParseError, SignatureError
from confide.evidence.nvidia_rim import ReferenceManifest
from confide.lru import Lru
from confide.verify._pinned_chain import (
    check_signing_end_entity,
    fingerprint,
    load_pinned_root,
    subject_cn,
    verify_pinned_chain,
)
from confide.verify.ocsp import OcspResponse, check_chain
from confide.verify.result import ClaimValue

__all__ = [
    "NVIDIA_RIM_ROOT_SHA256",
    "VerifiedRim",
    "nvidia_rim_root",
    "rim_ocsp_targets",
    "verify_rim",
]

NVIDIA_RIM_ROOT_FILE = "nvidia_rim_root.pem"
NVIDIA_RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
MAX_CERTIFICATES = 8
ALLOWED_SIGNATURE_METHODS = frozenset(
    {
        SignatureMethod.ECDSA_SHA256,
        SignatureMethod.ECDSA_SHA384,
        SignatureMethod.ECDSA_SHA512,
        SignatureMethod.RSA_SHA256,
        SignatureMethod.RSA_SHA384,
        SignatureMethod.RSA_SHA512,
    }
)
ALLOWED_DIGESTS = frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
_C14N = frozenset(m.value for m in CanonicalizationMethod)
_STRUCTURE = "NVIDIA RIM signature (XML-DSig)"
MEMO_MAX_SIZE = 256 * 1024
"""Larger RIMs are not remembered (the memo holds at most 64 × this)."""


@dataclass(frozen=True, slots=True)
class _Checked:
    """What steps 1-3, 5 and 6 established about a file under a root (module docstring)."""

    chain: tuple[x509.Certificate, ...]
    method: str
    c14n: str
    manifest: ReferenceManifest


_MEMO: Lru[bytes, _Checked] = Lru(64)


@dataclass(frozen=True, slots=True)
class VerifiedRim:
    manifest: ReferenceManifest
    """Parsed from the signed bytes only (``raw`` is the file as given)."""
    signer: str
    """CN of the signing certificate."""
    chain: tuple[str, ...]
    """CNs from the signer to the root."""
    signature_algorithm: str
    canonicalization: str
    root_sha256: str
    ocsp: tuple[ClaimValue, ...] | None = None
    """The OCSP checks of the signing chain (``None``: revocation not checked)."""


def nvidia_rim_root() -> x509.Certificate:
    """The embedded NVIDIA RIM signing root ("NVIDIA CoRIM signing Root CA"), pinned by SHA-256."""
    return load_pinned_root(NVIDIA_RIM_ROOT_FILE, NVIDIA_RIM_ROOT_SHA256)


def _hardened_parser() -> etree.XMLParser:
    # A fresh parser per call (lxml parsers are not thread-safe).
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


def _one(parent: etree._Element, name: str, where: str) -> etree._Element:
    found = parent.findall(_ds(name))
    if len(found) != 1:
        raise SignatureError(f"{where}: got {len(found)} ds:{name} elements, expected exactly one")
    return found[0]


def _check_signed_info(signature: etree._Element) -> tuple[str, str]:
    """Structure of SignedInfo (step 3); returns (signature method, canonicalisation) URIs."""
    signed_info = _one(signature, "SignedInfo", "ds:Signature")
    c14n = _one(signed_info, "CanonicalizationMethod", "ds:SignedInfo").get("Algorithm", "")
    if c14n not in _C14N:
        raise SignatureError(f"CanonicalizationMethod: got {c14n!r}, expected a W3C canonical XML algorithm")
    method = _one(signed_info, "SignatureMethod", "ds:SignedInfo").get("Algorithm", "")
    allowed = sorted(m.value for m in ALLOWED_SIGNATURE_METHODS)
    if method not in allowed:
        raise SignatureError(f"SignatureMethod: got {method!r}, expected one of {allowed}")
    reference = _one(signed_info, "Reference", "ds:SignedInfo")
    if reference.get("URI") != "":
        raise SignatureError(
            f'Reference URI: got {reference.get("URI")!r}, expected "" (the whole document, enveloped)'
        )
    transforms_el = reference.findall(_ds("Transforms"))
    transforms = (
        [t.get("Algorithm", "") for t in transforms_el[0].findall(_ds("Transform"))] if transforms_el else []
    )
    if len(transforms_el) != 1 or not transforms or transforms[0] != ENVELOPED:
        raise SignatureError(f"Reference transforms: got {transforms}, expected [{ENVELOPED}, <c14n>?]")
    if len(transforms) > 2 or (len(transforms) == 2 and transforms[1] not in _C14N):
        raise SignatureError(
            f"Reference transforms: got {transforms}, expected enveloped-signature and at most one c14n"
        )
    digest = _one(reference, "DigestMethod", "ds:Reference").get("Algorithm", "")
    allowed_digests = sorted(d.value for d in ALLOWED_DIGESTS)
    if digest not in allowed_digests:
        raise SignatureError(f"DigestMethod: got {digest!r}, expected one of {allowed_digests}")
    return method, transforms[1] if len(transforms) == 2 else c14n


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    key_info = signature.findall(_ds("KeyInfo"))
    x509_data = key_info[0].findall(_ds("X509Data")) if len(key_info) == 1 else []
    texts = [c.text or "" for d in x509_data for c in d.findall(_ds("X509Certificate"))]
    if not texts:
        raise CertificateChainError(
            "RIM signature has no KeyInfo/X509Data/X509Certificate: expected the signing certificate chain"
        )
    if len(texts) > MAX_CERTIFICATES:
        raise CertificateChainError(
            f"got {len(texts)} certificates in X509Data, expected at most {MAX_CERTIFICATES}"
        )
    certs: list[x509.Certificate] = []
    for position, text in enumerate(texts):
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode("".join(text.split()), validate=True))
            # cryptography parses fields lazily: touch every one used later so that a malformed
            # certificate fails here, as a chain error, and not deep inside path building.
            with warnings.catch_warnings():  # e.g. "Attribute's length must be ..." for a bad C=
                warnings.simplefilter("error", UserWarning)
                _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
                cert.public_key()
                cert.extensions  # noqa: B018
        except (
            ValueError,
            TypeError,  # a malformed name (a BIT STRING value under an OID other than x500UniqueIdentifier)
            binascii.Error,
            x509.InvalidVersion,  # not a ValueError
            UnsupportedAlgorithm,
            x509.DuplicateExtension,
            UserWarning,
        ) as e:
            raise CertificateChainError(
                f"X509Certificate #{position}: not a well-formed base64 DER certificate: {e}"
            ) from None
        certs.append(cert)
    return certs


def _order(certs: Sequence[x509.Certificate], root: x509.Certificate) -> list[x509.Certificate]:
    """Signer first, following issuer names up to ``root`` (appended when not included)."""
    pool = [c for c in certs if c != root]
    if not pool:
        raise CertificateChainError("X509Data holds only the root: expected the signing certificate")
    leaves = [c for c in pool if not any(o is not c and o.issuer == c.subject for o in pool)]
    if len(leaves) != 1:
        names = [subject_cn(c) for c in leaves]
        raise CertificateChainError(
            f"X509Data: got {len(leaves)} candidate signing certificates {names}, expected one"
        )
    chain = [leaves[0]]
    remaining = [c for c in pool if c is not leaves[0]]
    while chain[-1].issuer != root.subject:
        nxt = [c for c in remaining if c.subject == chain[-1].issuer]
        if len(nxt) != 1:
            break
        chain.append(nxt[0])
        remaining.remove(nxt[0])
    if chain[-1].issuer != root.subject:
        top = chain[-1]
        raise CertificateChainError(
            f"RIM signer chain ends at {subject_cn(top)!r} (issuer {top.issuer.rfc4514_string()!r},"
            f" SHA-256 {fingerprint(top)}), expected the pinned root {subject_cn(root)!r}"
            f" (SHA-256 {fingerprint(root)})"
        )
    if remaining:
        raise CertificateChainError(
            f"X509Data: certificates {[subject_cn(c) for c in remaining]} are not on the signer's chain"
        )
    return [*chain, root]


def _check_signer(leaf: x509.Certificate) -> None:
    check_signing_end_entity(leaf, "RIM signer")
    if not isinstance(leaf.public_key(), (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise CertificateChainError(
            f"RIM signer {subject_cn(leaf)!r}: got an unsupported key, expected EC or RSA"
        )


def _signature(data: bytes) -> etree._Element:
    """Steps 1-2: the one enveloped ``ds:Signature`` of a bounded, DTD-free document."""
    # 1. bounded, DTD-free, entity-free (defusedxml); structure of a SWID tag
    ReferenceManifest.from_bytes(data)
    # 2. hardened lxml parse; one enveloped signature
    try:
        doc = etree.fromstring(data, parser=_hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise ParseError(f"not acceptable XML: {exc}", structure=_STRUCTURE) from None
    docinfo = doc.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:  # pragma: no cover - step 1
        raise ParseError("DTD declarations are not accepted", structure=_STRUCTURE)
    signatures = list(doc.iter(_ds("Signature")))
    if not signatures:
        raise SignatureError("RIM is not signed (no ds:Signature): unsigned RIMs are refused")
    if len(signatures) != 1 or signatures[0].getparent() is not doc:
        raise SignatureError(
            f"got {len(signatures)} ds:Signature element(s), expected exactly one, a child of the root"
        )
    signature: etree._Element = signatures[0]
    return signature


def rim_ocsp_targets(
    data: bytes, root: x509.Certificate | None = None
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) pairs of a RIM's signing chain whose OCSP status is checked: the
    signer and every intermediate, ordered as step 4 orders them but **not verified** (for a
    collateral source to fetch; :func:`verify_rim` verifies the chain before the responses)."""
    chain = _order(_certificates(_signature(data)), root if root is not None else nvidia_rim_root())
    return [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]


def verify_rim(
    data: bytes,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    ocsp: Sequence[OcspResponse] | None = None,
) -> VerifiedRim:
    """Verify a RIM's signature and chain at ``at``; see the module docstring for the steps.
    ``ocsp``: one response per pair of :func:`rim_ocsp_targets`, in order."""
    pinned = root if root is not None else nvidia_rim_root()
    key = hashlib.sha256(data).digest() + bytes.fromhex(fingerprint(pinned))
    checked = _MEMO.get(key) if len(data) <= MEMO_MAX_SIZE else None
    if checked is None:
        checked = _check_document(data, pinned, at)
        if len(data) <= MEMO_MAX_SIZE:
            _MEMO.put(key, checked)
    else:  # 4. the chain, again at ``at`` (steps 1-3, 5 and 6 are those of the same bytes)
        verify_pinned_chain(list(checked.chain), pinned, at)
        _check_signer(checked.chain[0])
    chain = checked.chain
    targets = [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
    checks = (
        None
        if ocsp is None
        else tuple(check_chain(targets, ocsp, at=at, what=f"RIM signer {subject_cn(chain[0])!r}"))
    )
    return VerifiedRim(
        manifest=checked.manifest,
        signer=subject_cn(chain[0]),
        chain=tuple(subject_cn(c) for c in chain),
        signature_algorithm=checked.method.rsplit("#", 1)[-1],
        canonicalization=checked.c14n,
        root_sha256=fingerprint(pinned),
        ocsp=checks,
    )


def _check_document(data: bytes, pinned: x509.Certificate, at: datetime) -> _Checked:
    """Steps 1-6 but the OCSP checks, at ``at``."""
    signature = _signature(data)
    # 3. what is signed, and how
    method, c14n = _check_signed_info(signature)
    # 4. signer chain to the pinned root
    chain = _order(_certificates(signature), pinned)
    verify_pinned_chain(chain, pinned, at)
    _check_signer(chain[0])
    # 5. digest and signature (signxml), at ``at``
    config = SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=ALLOWED_SIGNATURE_METHODS,
        digest_algorithms=ALLOWED_DIGESTS,
        verification_time=at,
    )
    try:
        result = XMLVerifier().verify(
            data, x509_cert=chain[0], parser=_hardened_parser(), expect_config=config
        )
    except InvalidDigest:
        raise SignatureError(
            "RIM digest does not match: the signed content was changed after signing"
        ) from None
    except InvalidCertificate as exc:  # pragma: no cover - step 4 checks the dates first
        raise CertificateChainError(f"RIM signer certificate: {exc}") from None
    except InvalidSignature as exc:
        raise SignatureError(
            f"RIM signature does not verify with the key of {subject_cn(chain[0])!r}: {exc}"
        ) from None
    except (InvalidInput, SignXMLException, ValueError, etree.LxmlError) as exc:
        raise SignatureError(f"RIM signature is malformed: {exc}") from None
    verified = result[0] if isinstance(result, list) else result
    signed = verified.signed_data
    if not isinstance(signed, bytes):  # pragma: no cover - URI="" always yields canonical bytes
        raise SignatureError("RIM signature: signed data is not the canonical document")
    # 6. golden values from the signed bytes only
    manifest = dataclasses.replace(ReferenceManifest.from_bytes(signed), raw=data)
    return _Checked(tuple(chain), method, c14n, manifest)
