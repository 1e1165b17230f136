"""Verify NVIDIA H100 GPU attestation reports (SPDM MEASUREMENTS signed by the GPU).

Steps (numbered as in the code):

1. Parse the report (:mod:`confide.evidence.nvidia`); the signature is located by structure.
2. Check the certificate chain (leaf first) link by link up to the pinned NVIDIA Device
   Identity CA, at ``at``.
3. Read the FWID from the leaf's TCG DICE extension (OID 2.23.133.5.4.1, its last element:
   ``SEQUENCE { hashAlg OID sha384, digest OCTET STRING (48) }``).
4. Verify the ECDSA P-384/SHA-384 signature (r‖s) over request ‖ response-up-to-signature
   (DSP0274 §10.11: the signature covers L1 = the GET_MEASUREMENTS request and the response
   without its signature field) with the leaf's public key.
5. The report's opaque FWID must equal the leaf's FWID (the key that signed is the key of the
   firmware that was measured).
6. The request nonce must equal ``expected_nonce`` when one is given.
7. Optionally compare the measurement blocks with RIM golden values; every mismatch is
   reported. Each RIM's XML-DSig signature and signing chain (to the pinned NVIDIA RIM root)
   are verified first (:mod:`confide.verify.nvidia_rim`), and only the signed content is
   compared; a RIM that fails is never compared.
8. With ``ocsp`` responses (RFC 6960, fetched by :mod:`confide.collateral.nvidia_ocsp`), every
   certificate of the chain between the leaf and the root must be ``good``
   (:func:`confide.verify.ocsp.verify_ocsp_response`), checked right after step 2. The leaf is
   skipped as NVIDIA's verifier skips it (nvtrust ``ocsp_certificate_chain_validation`` starts at
   index 1 for the GPU chain): it is issued on the GPU by the GSP BROM's key, so NVIDIA's responder
   has no status for it.

No I/O, no clock: the caller passes certificates, RIM bytes and the time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from confide.errors import (
    BindingError,
    CertificateChainError,
    CollateralMissingError,
    MeasurementError,
    ParseError,
    SignatureError,
)
from confide.evidence import _der as der
from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from confide.evidence.nvidia_rim import ReferenceManifest
from confide.verify._pinned_chain import (
    extensions,
    fingerprint,
    load_pinned_root,
    subject_cn,
    verify_pinned_chain,
)
from confide.verify.nvidia_rim import VerifiedRim, nvidia_rim_root, verify_rim
from confide.verify.ocsp import OcspResponse, check_chain
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence

__all__ = [
    "NVIDIA_DEVICE_ROOT_SHA256",
    "RimMismatchError",
    "leaf_fwid",
    "nvidia_device_root",
    "ocsp_targets",
    "verify_nvidia_report",
]

NVIDIA_DEVICE_ROOT_FILE = "nvidia_device_identity_ca.pem"
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
FWID_EXTENSION_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID_DER = bytes.fromhex("0609608648016503040202")  # OID 2.16.840.1.101.3.4.2.2
FWID_SIZE = 48
COORDINATE_SIZE = 48
NVDEC_DISABLED = 0x55
NVDEC_OPTIONAL_RIM_INDEX = 35  # NVDEC0 measurement, only meaningful when NVDEC0 is enabled
NVIDIA_SAN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")


class RimMismatchError(MeasurementError):
    """The report's measurements differ from the RIM golden values (``mismatches``: RIM indexes)."""

    def __init__(self, message: str, mismatches: tuple[int, ...]) -> None:
        super().__init__(message)
        self.mismatches = mismatches


def nvidia_device_root() -> x509.Certificate:
    """The embedded NVIDIA Device Identity CA, checked against its pinned fingerprint."""
    return load_pinned_root(NVIDIA_DEVICE_ROOT_FILE, NVIDIA_DEVICE_ROOT_SHA256)


def ocsp_targets(chain: Sequence[x509.Certificate]) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) pairs whose OCSP status is checked: every link between the leaf and
    the root (step 8 of the module docstring), in chain order."""
    return [(chain[i], chain[i + 1]) for i in range(1, len(chain) - 1)]


def _der_children(data: bytes, structure: str) -> list[tuple[int, bytes]]:
    """Split DER ``data`` into (tag, content) pairs with the strict reader of
    :mod:`confide.evidence._der` (definite, minimal lengths)."""
    return [(tag, data[vs:ve]) for tag, vs, ve in der.children(data, 0, len(data), structure)]


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The FWID (SHA-384 digest) from the leaf's extension 2.23.133.5.4.1."""
    try:
        ext = extensions(leaf).get_extension_for_oid(FWID_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise CertificateChainError(
            f"leaf {subject_cn(leaf)!r} has no FWID extension {FWID_EXTENSION_OID.dotted_string}:"
            " expected the GPU's attestation (FMC) certificate first in the chain"
        ) from None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    try:
        (outer,) = _der_children(raw, "FWID extension")
        if outer[0] != der.TAG_SEQUENCE:
            raise ValueError("not a SEQUENCE")
        last = _der_children(outer[1], "FWID extension")[-1]
        if last[0] != der.TAG_SEQUENCE:
            raise ValueError("last element not a SEQUENCE")
        oid, digest = _der_children(last[1], "FWID extension")
        if (
            bytes([oid[0], len(oid[1])]) + oid[1] != SHA384_OID_DER
            or digest[0] != der.TAG_OCTET_STRING
            or len(digest[1]) != FWID_SIZE
        ):
            raise ValueError("expected SEQUENCE { sha384, OCTET STRING (48) }")
    except (ValueError, IndexError, ParseError) as exc:
        raise CertificateChainError(f"leaf FWID extension is malformed: {exc}") from None
    if digest[1] != raw[-FWID_SIZE:]:  # pragma: no cover - structural parse ends the extension
        raise CertificateChainError("leaf FWID extension: digest is not its last 48 bytes")
    return digest[1]


def _public_key(cert: x509.Certificate) -> object:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(f"leaf {subject_cn(cert)!r}: unusable public key: {exc}") from None


def _verify_signature(report: NvidiaAttestationReport, leaf: x509.Certificate) -> None:
    key = _public_key(leaf)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError(f"leaf {subject_cn(leaf)!r}: got a non-P-384 key, expected ECDSA P-384")
    r = int.from_bytes(report.signature[:COORDINATE_SIZE], "big")
    s = int.from_bytes(report.signature[COORDINATE_SIZE:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            f"SPDM MEASUREMENTS signature does not verify with the key of {subject_cn(leaf)!r}"
        ) from None


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    stripped = value.rstrip(b"\x00")
    try:
        text = stripped.decode("ascii")
    except UnicodeDecodeError:
        return value.hex()
    return text if text.isprintable() else value.hex()


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _vbios_version(value: bytes | None) -> str | None:
    # NVIDIA formats the 8-byte little-endian VBIOS version as bytes 3.2.1.0.4 in hex.
    if value is None or len(value) < 5:
        return _hex(value)
    return ".".join(f"{value[i]:02x}" for i in (3, 2, 1, 0, 4))


def _gpu_model(chain: Sequence[x509.Certificate]) -> tuple[str | None, str | None]:
    """(model, device id) from the leaf's SAN otherName ``NVIDIA:<model>:<id>`` when present."""
    try:
        san = extensions(chain[0]).get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, None
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id != NVIDIA_SAN_OID:
            continue
        try:
            (utf8,) = _der_children(other.value, "NVIDIA SAN otherName")
            parts = utf8[1].decode("utf-8").split(":")
        except (ValueError, UnicodeDecodeError, ParseError):
            return None, None
        if len(parts) == 3 and parts[0] == "NVIDIA":
            return parts[1], parts[2]
    return None, None


def _compare_rims(report: NvidiaAttestationReport, verified: Sequence[VerifiedRim]) -> list[ClaimValue]:
    rims = [v.manifest for v in verified]
    driver = _text(report.response.field(OpaqueFieldType.DRIVER_VERSION)) or ""
    vbios = _vbios_version(report.response.field(OpaqueFieldType.VBIOS_VERSION)) or ""
    nvdec = report.response.field(OpaqueFieldType.NVDEC0_STATUS)
    runtime = report.measurements
    problems: list[str] = []
    golden: dict[int, tuple[str, tuple[bytes, ...], int]] = {}
    for rim in rims:
        if rim.version.lower() not in (driver.lower(), vbios.lower()):
            problems.append(
                f"RIM {rim.tag_id[:16]}… version {rim.version} matches neither driver {driver}"
                f" nor VBIOS {vbios}"
            )
        for index, m in rim.active.items():
            if index in golden:
                problems.append(f"index {index} is active in two RIMs")
                continue
            golden[index] = (rim.version, m.alternatives, m.size)
    mismatches: list[int] = []
    for index in sorted(golden):
        if index == NVDEC_OPTIONAL_RIM_INDEX and nvdec == bytes([NVDEC_DISABLED]):
            continue
        version, alternatives, size = golden[index]
        value = runtime.get(index + 1)
        if value is None:
            mismatches.append(index)
            problems.append(f"index {index} (SPDM block {index + 1}): absent from the report")
        elif len(value) != size or not any(hmac.compare_digest(value, alt) for alt in alternatives):
            mismatches.append(index)
            expected = ", ".join(alt.hex()[:16] + "…" for alt in alternatives)
            problems.append(
                f"index {index} (SPDM block {index + 1}): got {value.hex()[:16]}…,"
                f" expected one of [{expected}] (RIM {version})"
            )
    if problems:
        raise RimMismatchError("RIM comparison failed: " + "; ".join(problems), tuple(mismatches))
    return [
        {
            "tag_id": v.manifest.tag_id,
            "version": v.manifest.version,
            "active": len(v.manifest.active),
            "signer": v.signer,
            "signer_chain": list(v.chain),
            "signature_algorithm": v.signature_algorithm,
            "canonicalization": v.canonicalization,
            "ocsp": None if v.ocsp is None else list(v.ocsp),
        }
        for v in verified
    ]


def verify_nvidia_report(
    evidence: bytes,
    cert_chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    expected_nonce: bytes | None = None,
    root: x509.Certificate | None = None,
    rims: Sequence[ReferenceManifest] = (),
    rim_root: x509.Certificate | None = None,
    ocsp: Sequence[OcspResponse] | None = None,
    rim_ocsp: Sequence[Sequence[OcspResponse]] | None = None,
) -> VerifiedEvidence:
    """Verify an NVIDIA GPU attestation report; see the module docstring for the steps.

    ``rims`` are checked from their ``raw`` bytes (signature, chain to ``rim_root`` or the
    embedded NVIDIA RIM root, at ``at``); the parsed fields passed in are not trusted.
    ``ocsp``: one response per certificate of :func:`ocsp_targets` (``None``: revocation is not
    checked, and the claims say so). ``rim_ocsp``: for each RIM, one response per pair of
    :func:`confide.verify.nvidia_rim.rim_ocsp_targets`.
    """
    # 1. parse
    report = NvidiaAttestationReport.from_bytes(evidence)
    # 2. chain to the pinned root
    pinned = root if root is not None else nvidia_device_root()
    verify_pinned_chain(cert_chain, pinned, at)
    leaf = cert_chain[0]
    # 8. revocation of the verified chain's links (before anything else trusts them)
    ocsp_checks = (
        check_chain(ocsp_targets(cert_chain), ocsp, at=at, what="the GPU chain") if ocsp is not None else []
    )
    # 3. FWID of the certified firmware
    cert_fwid = leaf_fwid(leaf)
    # 4. signature
    _verify_signature(report, leaf)
    # 5. FWID binding
    report_fwid = report.response.field(OpaqueFieldType.FWID)
    if report_fwid is None:
        raise BindingError("report has no FWID opaque field (type 20): cannot bind it to the certificate")
    if report_fwid != cert_fwid:
        raise BindingError(
            f"FWID: got {report_fwid.hex()} in the report, expected {cert_fwid.hex()} (leaf cert)"
        )
    # 6. nonce
    if expected_nonce is not None and not hmac.compare_digest(report.nonce, expected_nonce):
        raise BindingError(f"nonce: got {report.nonce.hex()}, expected {expected_nonce.hex()}")
    # 7. reference measurements
    rim_pinned = (rim_root if rim_root is not None else nvidia_rim_root()) if rims else None
    if rim_ocsp is not None and len(rim_ocsp) != len(rims):
        raise CollateralMissingError(f"OCSP: got responses for {len(rim_ocsp)} RIMs, expected {len(rims)}")
    verified_rims = [
        verify_rim(rim.raw, at=at, root=rim_pinned, ocsp=None if rim_ocsp is None else rim_ocsp[i])
        for i, rim in enumerate(rims)
    ]
    rim_details: list[ClaimValue] = _compare_rims(report, verified_rims) if verified_rims else []

    resp = report.response
    model, device_id = _gpu_model(cert_chain)
    msrscnt = resp.field(OpaqueFieldType.MSRSCNT)
    claims: dict[str, ClaimValue] = {
        "spdm_version": f"{resp.version >> 4}.{resp.version & 0xF}",
        "nonce": report.nonce.hex(),
        "nonce_checked": expected_nonce is not None,
        "responder_nonce": resp.nonce.hex(),
        "measurements": {str(b.index): b.value.hex() for b in resp.blocks},
        "driver_version": _text(resp.field(OpaqueFieldType.DRIVER_VERSION)),
        "vbios_version": _vbios_version(resp.field(OpaqueFieldType.VBIOS_VERSION)),
        "fwid": cert_fwid.hex(),
        "board_id": _hex(resp.field(OpaqueFieldType.BOARD_ID)),
        "chip_sku": _text(resp.field(OpaqueFieldType.CHIP_SKU)),
        "chip_sku_mod": _text(resp.field(OpaqueFieldType.CHIP_SKU_MOD)),
        "project": _text(resp.field(OpaqueFieldType.PROJECT)),
        "project_sku": _text(resp.field(OpaqueFieldType.PROJECT_SKU)),
        "project_sku_mod": _text(resp.field(OpaqueFieldType.PROJECT_SKU_MOD)),
        "gpu_info": _hex(resp.field(OpaqueFieldType.GPU_INFO)),
        "cpr_info": _hex(resp.field(OpaqueFieldType.CPRINFO)),
        "nvdec0_status": _hex(resp.field(OpaqueFieldType.NVDEC0_STATUS)),
        "protected_pcie_status": _hex(resp.field(OpaqueFieldType.PROTECTED_PCIE_STATUS)),
        "measurement_count": None
        if msrscnt is None
        else [int.from_bytes(msrscnt[i : i + 4], "little") for i in range(0, len(msrscnt), 4)],
        "gpu_model": model,
        "device_id": device_id,
        "hwmodel": subject_cn(cert_chain[1]),
        "ueid": str(leaf.serial_number),
        # The signing key identifies the GPU (and its firmware): the CAS counts GPUs by it.
        "attestation_key_sha256": hashlib.sha256(
            leaf.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest(),
        "rims_compared": bool(rims),
        "revocation_checked": ocsp is not None,
        "rim_revocation_checked": bool(rims) and rim_ocsp is not None,
    }
    details: dict[str, ClaimValue] = {
        "signature_algorithm": "ECDSA P-384 SHA-384",
        "chain": [subject_cn(c) for c in cert_chain],
        "root_sha256": fingerprint(pinned),
        "root_overridden": root is not None,
        "rims": rim_details,
        "rim_signatures_verified": bool(verified_rims),
        "rim_root_sha256": None if rim_pinned is None else fingerprint(rim_pinned),
        "rim_root_overridden": rim_root is not None,
        "opaque_field_types": [f.type for f in resp.opaque_fields],
        "ocsp": ocsp_checks,
    }
    return VerifiedEvidence(
        platform=Platform.NVIDIA_GPU,
        claims=claims,
        verified_at=at,
        evidence_digest=hashlib.sha256(evidence).hexdigest(),
        details=details,
    )
