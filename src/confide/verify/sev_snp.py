"""Verification of AMD SEV-SNP attestation reports.

What is checked, in order (numbers are used in error messages and ``docs/sev-snp.md``):

1. The report parses (:mod:`confide.evidence.sev_snp`, versions 2, 3, 5) and its
   ``SIGNATURE_ALGO`` is 1 (ECDSA P-384 with SHA-384, ABI Table 23); ``SIGNING_KEY`` names
   the VCEK or the VLEK and ``MASK_CHIP_KEY`` is clear (otherwise the report is unsigned).
2. The VEK (VCEK or VLEK) certificate chains, link by link, to an AMD Root Key pinned by its
   SHA-256 fingerprint (:data:`PINNED_ARK_SHA256`): VEK -> ASK (VCEK) or ASVK (VLEK) -> ARK.
   Each link: issuer name = subject name, RSA-PSS signature (``verify_directly_issued_by``),
   validity at ``at``, BasicConstraints CA and keyCertSign on the issuer. The ARK is
   self-signed. ``cryptography``'s ``PolicyBuilder`` refuses AMD's RSA-PSS encoding, hence
   the manual walk. Optionally an ARK-signed CRL: its signature, its validity window at
   ``at``, and the ASK/ASVK serial must not be listed.
3. The VEK is of the kind the report names, and its product (chain, product-name extension)
   matches the report's CPUID family/model (v3+).
4. The VEK's TCB extensions (AMD 57230, "VCEK Certificate Extensions": blSPL, teeSPL,
   snpSPL, ucodeSPL, fmcSPL for Turin) equal the report's ``REPORTED_TCB``; a VCEK's hwID
   equals ``CHIP_ID`` (Turin: its first 8 bytes) unless the chip id is masked (all zero).
5. ``R``, ``S`` (72-byte little-endian, upper 24 bytes zero, reserved tail zero) are a valid
   ECDSA P-384 signature by the VEK over SHA-384 of report bytes 0x000..0x29F.

Verified chains are cached (bounded LRU keyed by the certificates' and CRL's fingerprints), so
a repeated VEK costs only steps 1, 3-5. Nothing here reads files, sockets or the clock.
SEV-SNP has no TCB *status* like Intel's: ``tcb_status`` is always None; policies compare the
reported TCB components instead.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ParseError,
    RevocationError,
    SignatureError,
)
from confide.evidence.sev_snp import (
    CHIP_ID_SIZE,
    ECDSA_COMPONENT_SIZE,
    SIGNATURE_RESERVED_SIZE,
    SIGNED_SIZE,
    AttestationReport,
    Product,
    SigningKey,
    TcbVersion,
)
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence
from confide.verify.x509util import (
    CERTIFICATE_ERRORS,
    check_cert_dates,
    check_certificate_fields,
    check_issuer_is_ca,
)

__all__ = [
    "PINNED_ARK_SHA256",
    "AmdChain",
    "AmdRootStore",
    "SnpVerifier",
    "VekExtensions",
    "VekInfo",
    "VekKind",
    "load_certificates",
    "parse_vek_extensions",
    "verify_report",
    "verify_vek_chain",
]

# AMD Root Keys, SHA-256 over the DER certificate (as served by AMD KDS cert_chain).
PINNED_ARK_SHA256: Mapping[Product, str] = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

SIG_ALGO_ECDSA_P384_SHA384 = 1  # ABI Table 23, SIGNATURE_ALGO
_P384_COMPONENT_SIZE = 48  # the upper 24 of the 72 little-endian bytes must be zero

# AMD 57230 ("VCEK Certificate and KDS Interface Specification"), VCEK/VLEK extensions.
_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{_AMD}.3.9")
OID_HWID = x509.ObjectIdentifier(f"{_AMD}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{_AMD}.5")

HWID_SIZE = 64  # Milan, Genoa: the full CHIP_ID
HWID_SIZE_TURIN = 8  # Turin: the first 8 bytes of CHIP_ID

_DER_INTEGER = 0x02
_DER_OCTET_STRING = 0x04
_DER_IA5STRING = 0x16

DEFAULT_CACHE_SIZE = 256

_ZERO_PAD = bytes(ECDSA_COMPONENT_SIZE - _P384_COMPONENT_SIZE)
_ZERO_SIGNATURE_TAIL = bytes(SIGNATURE_RESERVED_SIZE)
_ZERO_CHIP_ID = bytes(CHIP_ID_SIZE)


class VekKind(enum.StrEnum):
    """Versioned Chip (VCEK) or Loaded (VLEK) Endorsement Key."""

    VCEK = "vcek"
    VLEK = "vlek"

    def __str__(self) -> str:
        return self.value

    @property
    def subject_cn(self) -> str:
        return "SEV-VCEK" if self is VekKind.VCEK else "SEV-VLEK"

    def intermediate_cn(self, product: Product) -> str:
        """CN of the ASK (VCEK) or ASVK (VLEK) of ``product``."""
        return f"SEV-{product}" if self is VekKind.VCEK else f"SEV-VLEK-{product}"

    @property
    def intermediate_role(self) -> str:
        return "ASK" if self is VekKind.VCEK else "ASVK"


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Load one DER certificate, or every certificate of a PEM text, in order.

    AMD VCEKs have serial number 0, for which ``cryptography`` warns; that one warning is
    silenced here, around the load only.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
            )
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
            # Parse now what verification reads later (cryptography parses lazily).
            for cert in certs:
                check_certificate_fields(cert)
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"not a DER or PEM X.509 certificate: {exc}", structure=what) from None
    return certs


# ---------------------------------------------------------------------------------------------
# Roots


@dataclass(frozen=True, slots=True)
class AmdChain:
    """An intermediate (ASK or ASVK) and the ARK that signed it, as AMD KDS serves them."""

    intermediate: x509.Certificate
    ark: x509.Certificate

    @classmethod
    def from_certificates(cls, certs: Sequence[x509.Certificate], what: str = "AMD chain") -> AmdChain:
        """``certs`` is [ASK or ASVK, ARK], in that order (AMD KDS ``cert_chain``)."""
        if len(certs) != 2:
            raise CertificateChainError(
                f"{what}: got {len(certs)} certificates, expected 2 (ASK or ASVK, then ARK)"
            )
        intermediate, ark = certs
        if intermediate.subject == intermediate.issuer:
            raise CertificateChainError(
                f"{what}: certificate 1 is self-signed ({intermediate.subject.rfc4514_string()}), "
                "expected the ASK/ASVK first and the ARK second"
            )
        return cls(intermediate, ark)


class AmdRootStore:
    """Trusted AMD Root Keys (pinned by fingerprint) and the default ASK/ASVK per product.

    Built from bytes: the caller (``confide.platforms.sev_snp``) reads the shipped files.
    ``pinned`` may be replaced only to test with a private PKI.
    """

    def __init__(
        self,
        chains: Mapping[tuple[Product, VekKind], AmdChain],
        *,
        pinned: Mapping[Product, str] = PINNED_ARK_SHA256,
    ) -> None:
        self._pinned = dict(pinned)
        self._arks: dict[Product, x509.Certificate] = {}
        self._chains: dict[tuple[Product, VekKind], AmdChain] = {}
        for (product, kind), chain in chains.items():
            fp = _sha256(chain.ark)
            if self._pinned.get(product) != fp:
                raise CertificateChainError(
                    f"ARK for {product}: got fingerprint {fp}, expected pinned {self._pinned.get(product)}"
                )
            self._arks[product] = chain.ark
            self._chains[(product, kind)] = chain

    @classmethod
    def from_pem(
        cls,
        pems: Mapping[tuple[Product, VekKind], bytes],
        *,
        pinned: Mapping[Product, str] = PINNED_ARK_SHA256,
    ) -> AmdRootStore:
        chains = {
            key: AmdChain.from_certificates(load_certificates(pem, f"{key[0]} {key[1]} chain"))
            for key, pem in pems.items()
        }
        return cls(chains, pinned=pinned)

    def product_of_ark(self, ark: x509.Certificate) -> Product | None:
        fp = _sha256(ark)
        for product, pinned in self._pinned.items():
            if pinned == fp:
                return product
        return None

    def ark(self, product: Product) -> x509.Certificate | None:
        return self._arks.get(product)

    def default_chain(self, issuer: x509.Name) -> tuple[Product, VekKind, AmdChain] | None:
        """The shipped chain whose ASK/ASVK subject equals a VEK's ``issuer``."""
        for (product, kind), chain in self._chains.items():
            if chain.intermediate.subject == issuer:
                return product, kind, chain
        return None


# ---------------------------------------------------------------------------------------------
# VEK extensions


@dataclass(frozen=True, slots=True)
class VekExtensions:
    """The AMD extensions of a VCEK/VLEK certificate."""

    struct_version: int | None
    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None
    hwid: bytes | None
    csp_id: str | None

    def tcb(self) -> TcbVersion:
        """The TCB_VERSION these extensions certify (Turin layout iff fmcSPL is present)."""
        return TcbVersion.compose(
            bootloader=self.bl_spl,
            tee=self.tee_spl,
            snp=self.snp_spl,
            microcode=self.ucode_spl,
            fmc=self.fmc_spl,
        )


def _der(value: bytes, tag: int, field: str) -> bytes:
    """Decode one DER TLV of ``tag`` that spans all of ``value``."""

    def bad(msg: str) -> ParseError:
        return ParseError(msg, structure="VEK certificate extension", field=field)

    if len(value) < 2 or value[0] != tag:
        raise bad(f"got {value[:1].hex() or 'nothing'}, expected DER tag {tag:#04x}")
    length = value[1]
    pos = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or len(value) < 2 + n:
            raise bad("bad DER length")
        length = int.from_bytes(value[2 : 2 + n], "big")
        pos += n
    if pos + length != len(value):
        raise bad(f"DER length {length} does not match the {len(value) - pos} bytes present")
    return value[pos:]


def _ext_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ParseError(f"extension {oid.dotted_string} has an unexpected type", structure="VEK certificate")
    return value.value


def _ext_int(cert: x509.Certificate, oid: x509.ObjectIdentifier, name: str, *, required: bool) -> int | None:
    raw = _ext_value(cert, oid)
    if raw is None:
        if required:
            raise CertificateChainError(f"VEK certificate lacks the {name} extension ({oid.dotted_string})")
        return None
    body = _der(raw, _DER_INTEGER, name)
    if not body or body[0] & 0x80:
        raise ParseError(f"got {body.hex()}, expected a non-negative INTEGER", field=name)
    value = int.from_bytes(body, "big")
    if value > 0xFF:
        raise ParseError(f"got {value}, expected a security patch level 0..255", field=name)
    return value


def _ext_ia5(cert: x509.Certificate, oid: x509.ObjectIdentifier, name: str) -> str | None:
    raw = _ext_value(cert, oid)
    if raw is None:
        return None
    try:
        return _der(raw, _DER_IA5STRING, name).decode("ascii")
    except UnicodeDecodeError:
        raise ParseError("not ASCII", field=name) from None


def parse_vek_extensions(cert: x509.Certificate) -> VekExtensions:
    """Read the AMD extensions (57230 Tables 8/11). Missing TCB extensions are an error."""
    hwid_raw = _ext_value(cert, OID_HWID)
    hwid: bytes | None = None
    if hwid_raw is not None:
        # AMD writes the raw bytes; some tools wrap them in a DER OCTET STRING. Accept both.
        if len(hwid_raw) in (HWID_SIZE, HWID_SIZE_TURIN):
            hwid = hwid_raw
        else:
            hwid = _der(hwid_raw, _DER_OCTET_STRING, "hwID")
            if len(hwid) not in (HWID_SIZE, HWID_SIZE_TURIN):
                raise ParseError(f"got {len(hwid)} bytes, expected 64 or 8", field="hwID")
    product_name = _ext_ia5(cert, OID_PRODUCT_NAME, "productName")
    if product_name is None:
        raise CertificateChainError("VEK certificate lacks the productName extension (1.3.6.1.4.1.3704.1.2)")

    def spl(oid: x509.ObjectIdentifier, name: str) -> int:
        value = _ext_int(cert, oid, name, required=True)
        assert value is not None
        return value

    return VekExtensions(
        struct_version=_ext_int(cert, OID_STRUCT_VERSION, "structVersion", required=False),
        product_name=product_name,
        bl_spl=spl(OID_BL_SPL, "blSPL"),
        tee_spl=spl(OID_TEE_SPL, "teeSPL"),
        snp_spl=spl(OID_SNP_SPL, "snpSPL"),
        ucode_spl=spl(OID_UCODE_SPL, "ucodeSPL"),
        fmc_spl=_ext_int(cert, OID_FMC_SPL, "fmcSPL", required=False),
        hwid=hwid,
        csp_id=_ext_ia5(cert, OID_CSP_ID, "cspId"),
    )


# ---------------------------------------------------------------------------------------------
# Chain


@dataclass(frozen=True)  # no slots: ``details`` is a cached_property
class VekInfo:
    """A VEK whose chain verified: what the report checks need, plus the validity window."""

    product: Product
    kind: VekKind
    public_key: ec.EllipticCurvePublicKey
    extensions: VekExtensions
    expected_tcb_raw: int
    not_before: datetime  # latest notBefore over the chain
    not_after: datetime  # earliest notAfter over the chain (and the CRL's nextUpdate)
    vek_sha256: str
    intermediate_sha256: str
    ark_sha256: str
    subject: str
    crl_checked: bool

    @functools.cached_property
    def details(self) -> dict[str, ClaimValue]:
        """The chain's part of ``VerifiedEvidence.details`` (computed once per cached chain)."""
        out: dict[str, ClaimValue] = {
            "vek_subject": self.subject,
            "vek_sha256": self.vek_sha256,
            "intermediate_sha256": self.intermediate_sha256,
            "ark_sha256": self.ark_sha256,
            "vek_product_name": self.extensions.product_name,
            "chain_valid_until": self.not_after.isoformat().replace("+00:00", "Z"),
            "crl_checked": self.crl_checked,
            "tcb_status_note": "SEV-SNP has no TCB status; compare reported_tcb in a policy",
        }
        if self.extensions.csp_id is not None:
            out["vlek_csp_id"] = self.extensions.csp_id
        return out


def _check_link(child: x509.Certificate, child_role: str, issuer: x509.Certificate, issuer_role: str) -> None:
    if child.issuer != issuer.subject:
        raise CertificateChainError(
            f"{child_role} issuer: got {child.issuer.rfc4514_string()}, "
            f"expected the {issuer_role} subject {issuer.subject.rfc4514_string()}"
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise CertificateChainError(
            f"{child_role} ({_cn(child.subject)}) is not signed by the {issuer_role} "
            f"({_cn(issuer.subject)}): {exc or type(exc).__name__}"
        ) from None


def _check_crl(
    crl: x509.CertificateRevocationList,
    ark: x509.Certificate,
    intermediate: x509.Certificate,
    at: datetime,
    *,
    signatures_only: bool = False,
) -> datetime | None:
    if crl.issuer != ark.subject:
        raise CertificateChainError(
            f"CRL issuer: got {crl.issuer.rfc4514_string()}, expected the ARK {ark.subject.rfc4514_string()}"
        )
    try:
        valid = crl.is_signature_valid(ark.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CertificateChainError(f"CRL signature cannot be checked: {exc}") from None
    if not valid:
        raise CertificateChainError("CRL signature does not verify with the ARK")
    if signatures_only:
        return crl.next_update_utc
    if at < crl.last_update_utc:
        raise CollateralExpiredError(
            f"CRL not yet valid at {at.isoformat()}: thisUpdate {crl.last_update_utc.isoformat()}"
        )
    next_update = crl.next_update_utc
    if next_update is None:
        # RFC 5280 §5.1.2.5 requires nextUpdate of conforming issuers, and AMD KDS's CRLs carry
        # it; without it nothing says until when the CRL is current (an old one, from before
        # an ASK/ASVK was revoked, would pass for ever).
        raise CollateralError("CRL has no nextUpdate (RFC 5280 §5.1.2.5): cannot tell whether it is current")
    if at > next_update:
        raise CollateralExpiredError(f"CRL expired at {at.isoformat()}: nextUpdate {next_update.isoformat()}")
    try:  # the revoked entries are parsed lazily, here
        revoked = crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
        revoked_at = None if revoked is None else revoked.revocation_date_utc
    except ValueError as exc:
        raise CertificateChainError(f"CRL revokedCertificates: malformed: {exc}") from None
    if revoked_at is not None:
        raise RevocationError(
            f"{_cn(intermediate.subject)} (serial {intermediate.serial_number:#x}) is revoked by the AMD CRL "
            f"since {revoked_at.isoformat()}"
        )
    return next_update


def verify_vek_chain(
    vek: x509.Certificate,
    roots: AmdRootStore,
    at: datetime,
    *,
    chain: AmdChain | None = None,
    crl: x509.CertificateRevocationList | None = None,
    signatures_only: bool = False,
) -> VekInfo:
    """Step 2 (and the certificate half of 3): the VEK chains to a pinned ARK at ``at``.

    ``signatures_only``: the names, signatures, CA flags, kind, product and extensions, but no
    validity dates (of the certificates or the CRL) and no revocation: whether collateral is
    AMD's, for a cache deciding what it may keep (``confide.collateral.amd_kds``); never for
    verifying evidence."""

    def dates(cert: x509.Certificate, what: Callable[[], str]) -> None:
        if not signatures_only:
            check_cert_dates(cert, at, what)

    if chain is None:
        found = roots.default_chain(vek.issuer)
        if found is None:
            raise CertificateChainError(
                f"VEK issuer {vek.issuer.rfc4514_string()} is not an AMD ASK/ASVK known to confide "
                "(expected SEV-Milan, SEV-Genoa, SEV-Turin or their SEV-VLEK-* counterparts)"
            )
        _, _, chain = found
    ark = chain.ark
    product = roots.product_of_ark(ark)
    if product is None:
        raise CertificateChainError(
            f"ARK {ark.subject.rfc4514_string()} (sha256 {_sha256(ark)}) is not a pinned AMD root"
        )
    if _cn(ark.subject) != f"ARK-{product}":
        raise CertificateChainError(f"ARK subject: got {_cn(ark.subject)!r}, expected 'ARK-{product}'")
    # The ARK: self-signed, a CA, valid now.
    _check_link(ark, "ARK", ark, "ARK")
    check_issuer_is_ca(ark, below=1, what="ARK")
    dates(ark, lambda: f"ARK ({_cn(ark.subject)})")
    # The ASK/ASVK.
    inter = chain.intermediate
    cn = _cn(inter.subject)
    if cn == VekKind.VCEK.intermediate_cn(product):
        kind = VekKind.VCEK
    elif cn == VekKind.VLEK.intermediate_cn(product):
        kind = VekKind.VLEK
    else:
        raise CertificateChainError(
            f"intermediate subject: got {cn!r}, expected 'SEV-{product}' (ASK) or 'SEV-VLEK-{product}' (ASVK)"
        )
    role = kind.intermediate_role
    _check_link(inter, role, ark, f"ARK-{product}")
    check_issuer_is_ca(inter, below=0, what=role)
    dates(inter, lambda: f"{role} ({_cn(inter.subject)})")
    # The VEK itself.
    vek_role = kind.value.upper()
    if _cn(vek.subject) != kind.subject_cn:
        raise CertificateChainError(
            f"{role} {cn} issues {vek_role}s: got a certificate for {_cn(vek.subject)!r}, "
            f"expected {kind.subject_cn!r}"
        )
    _check_link(vek, vek_role, inter, role)
    dates(vek, lambda: f"{vek_role} ({_cn(vek.subject)})")
    try:
        bc = vek.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise CertificateChainError(f"{vek_role} BasicConstraints: got cA=TRUE, expected an end entity")
    except x509.ExtensionNotFound:
        pass
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError(f"{vek_role} key: got {type(key).__name__}, expected ECDSA P-384")
    ext = parse_vek_extensions(vek)
    if not ext.product_name.startswith(str(product)):
        raise CertificateChainError(
            f"{vek_role} productName: got {ext.product_name!r}, expected {product} (from the ARK)"
        )
    if (ext.fmc_spl is not None) != (product is Product.TURIN):
        raise CertificateChainError(
            f"{vek_role} fmcSPL: {'present' if ext.fmc_spl is not None else 'absent'}, "
            f"expected it {'present' if product is Product.TURIN else 'absent'} for {product}"
        )
    if kind is VekKind.VCEK:
        if ext.hwid is None:
            raise CertificateChainError("VCEK lacks the hwID extension (1.3.6.1.4.1.3704.1.4)")
        want = HWID_SIZE_TURIN if product is Product.TURIN else HWID_SIZE
        if len(ext.hwid) != want:
            raise CertificateChainError(
                f"VCEK hwID: got {len(ext.hwid)} bytes, expected {want} for {product}"
            )
    not_after = min(c.not_valid_after_utc for c in (vek, inter, ark))
    crl_next: datetime | None = None
    if crl is not None:
        crl_next = _check_crl(crl, ark, inter, at, signatures_only=signatures_only)
        if crl_next is not None:
            not_after = min(not_after, crl_next)
    return VekInfo(
        product=product,
        kind=kind,
        public_key=key,
        extensions=ext,
        expected_tcb_raw=ext.tcb().raw,
        not_before=max(
            [c.not_valid_before_utc for c in (vek, inter, ark)]
            + ([crl.last_update_utc] if crl is not None else [])
        ),
        not_after=not_after,
        vek_sha256=_sha256(vek),
        intermediate_sha256=_sha256(inter),
        ark_sha256=_sha256(ark),
        subject=vek.subject.rfc4514_string(),
        crl_checked=crl is not None,
    )


# ---------------------------------------------------------------------------------------------
# Report


def _check_report_header(report: AttestationReport) -> SigningKey:
    """Step 1 (what needs no certificate)."""
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SignatureError(
            f"SIGNATURE_ALGO: got {report.signature_algo}, expected {SIG_ALGO_ECDSA_P384_SHA384} "
            "(ECDSA P-384 with SHA-384)"
        )
    key = report.signing_key
    if key is None:
        raise SignatureError(
            f"SIGNING_KEY: got reserved value {report.signing_key_value}, expected 0 (VCEK) or 1 (VLEK)"
        )
    if key is SigningKey.NONE:
        raise SignatureError("SIGNING_KEY is 7: the report is not signed")
    if report.mask_chip_key:
        raise SignatureError("MASK_CHIP_KEY is set: the firmware did not sign this report")
    return key


def _check_report_signature(report: AttestationReport, raw: bytes, key: ec.EllipticCurvePublicKey) -> None:
    """Step 5."""
    for name, comp in (("R", report.signature_r), ("S", report.signature_s)):
        if comp[_P384_COMPONENT_SIZE:ECDSA_COMPONENT_SIZE] != _ZERO_PAD:
            raise SignatureError(f"signature {name}: bytes 48..71 must be zero for P-384")
    if report.signature_reserved != _ZERO_SIGNATURE_TAIL:
        raise SignatureError("signature field bytes 0x90..0x1FF (reserved) must be zero")
    der = encode_dss_signature(report.signature_r_int, report.signature_s_int)
    try:
        key.verify(der, raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            "report signature does not verify with the VEK (ECDSA P-384/SHA-384 over bytes 0x000..0x29F)"
        ) from None


def _check_report_against_vek(report: AttestationReport, signing_key: SigningKey, info: VekInfo) -> bool:
    """Steps 3 and 4. Returns whether the chip id was masked (hwID not compared)."""
    expected_kind = VekKind.VCEK if signing_key is SigningKey.VCEK else VekKind.VLEK
    if info.kind is not expected_kind:
        raise CertificateChainError(
            f"report SIGNING_KEY says {expected_kind.value.upper()}, "
            f"got a {info.kind.value.upper()} certificate"
        )
    cpuid_product = report.cpuid_product
    if cpuid_product is not None and cpuid_product is not info.product:
        raise CertificateChainError(
            f"report CPUID (family {report.cpuid_fam_id:#x}, model {report.cpuid_mod_id:#x}) "
            f"is {cpuid_product}, "
            f"but the {info.kind.value.upper()} chains to the {info.product} ARK"
        )
    if report.reported_tcb_raw != info.expected_tcb_raw:
        got = TcbVersion(report.reported_tcb_raw, info.product is Product.TURIN)
        want = TcbVersion(info.expected_tcb_raw, info.product is Product.TURIN)
        raise CertificateChainError(
            f"REPORTED_TCB {got.to_dict()} (raw {got.raw:#018x}) does not match the "
            f"{info.kind.value.upper()}'s TCB extensions {want.to_dict()} (raw {want.raw:#018x})"
        )
    hwid = info.extensions.hwid
    masked = report.chip_id == _ZERO_CHIP_ID
    if info.kind is VekKind.VCEK and not masked:
        assert hwid is not None
        if report.chip_id[: len(hwid)] != hwid:
            raise CertificateChainError(
                f"CHIP_ID {report.chip_id[: len(hwid)].hex()} does not match the VCEK's hwID {hwid.hex()}"
            )
    return masked


def _claims(report: AttestationReport, info: VekInfo) -> dict[str, ClaimValue]:
    turin = info.product is Product.TURIN
    policy = report.policy
    raw_policy = policy.raw
    claims: dict[str, ClaimValue] = {
        "version": report.version,
        "product": info.product.value,
        "signing_key": info.kind.value,
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "policy": raw_policy,
        "policy_flags": policy.to_dict(),  # type: ignore[dict-item]
        "debug": bool(raw_policy >> policy.DEBUG_BIT & 1),
        "migrate_ma": bool(raw_policy >> policy.MIGRATE_MA_BIT & 1),
        "smt_allowed": bool(raw_policy >> policy.SMT_BIT & 1),
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "author_key_en": report.author_key_en,
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "chip_id": report.chip_id.hex(),
        "platform_info": report.platform_info.raw,
        "platform_info_flags": report.platform_info.to_dict(),  # type: ignore[dict-item]
        "reported_tcb": TcbVersion(report.reported_tcb_raw, turin).to_dict(),  # type: ignore[dict-item]
        "committed_tcb": TcbVersion(report.committed_tcb_raw, turin).to_dict(),  # type: ignore[dict-item]
        "launch_tcb": TcbVersion(report.launch_tcb_raw, turin).to_dict(),  # type: ignore[dict-item]
        "current_tcb": TcbVersion(report.current_tcb_raw, turin).to_dict(),  # type: ignore[dict-item]
        "current_firmware": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        "committed_firmware": f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
    }
    if report.cpuid_fam_id is not None:
        claims["cpuid_fam_id"] = report.cpuid_fam_id
        claims["cpuid_mod_id"] = report.cpuid_mod_id
        claims["cpuid_step"] = report.cpuid_step
    if report.launch_mit_vector is not None:
        claims["launch_mit_vector"] = report.launch_mit_vector
        claims["current_mit_vector"] = report.current_mit_vector
    return claims


_CacheKey = tuple[x509.Certificate, AmdChain | None, bytes | None]


class SnpVerifier:
    """Verifies SEV-SNP reports against ``roots``, caching verified VEK chains.

    The cache maps (VEK, ASK/ASVK+ARK, CRL fingerprint) to the verified
    :class:`VekInfo`; an entry is used only while ``at`` lies inside the chain's (and CRL's)
    validity window, otherwise the chain is verified again (and fails with the precise error).
    """

    def __init__(self, roots: AmdRootStore, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.roots = roots
        self.cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, VekInfo] = OrderedDict()
        self._certs: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        self._ident: dict[
            tuple[int, int, int],
            tuple[x509.Certificate, AmdChain | None, x509.CertificateRevocationList | None, _CacheKey],
        ] = {}

    def _load_vek(self, der_or_pem: bytes) -> x509.Certificate:
        """The VEK certificate of ``der_or_pem``, parsed once per distinct content (bounded)."""
        digest = hashlib.sha256(der_or_pem).digest()
        cert = self._certs.get(digest)
        if cert is None:
            certs = load_certificates(der_or_pem, "VEK certificate")
            if len(certs) != 1:
                raise CertificateChainError(f"VEK: got {len(certs)} certificates, expected 1")
            cert = certs[0]
            if self.cache_size:
                self._certs[digest] = cert
                while len(self._certs) > self.cache_size:
                    self._certs.popitem(last=False)
        return cert

    def vek_info(
        self,
        vek: x509.Certificate,
        at: datetime,
        *,
        chain: AmdChain | None = None,
        crl: x509.CertificateRevocationList | None = None,
    ) -> VekInfo:
        # Fast path: the very same objects as a cached entry (the entry holds them, so their
        # ids cannot be reused while it exists). Otherwise the content key: certificates hash
        # and compare by their full DER (in Rust, ~4 us; a fingerprint costs ~20 us), the CRL
        # by its SHA-256.
        ident = (id(vek), id(chain), id(crl))
        seen = self._ident.get(ident)
        if seen is not None and seen[0] is vek and seen[1] is chain and seen[2] is crl:
            key = seen[3]
        else:
            key = (vek, chain, crl.fingerprint(hashes.SHA256()) if crl is not None else None)
        info = self._cache.get(key)
        if info is not None and info.not_before <= at <= info.not_after:
            self._cache.move_to_end(key)
            return info
        info = verify_vek_chain(vek, self.roots, at, chain=chain, crl=crl)
        if self.cache_size:
            self._cache[key] = info
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            self._ident[ident] = (vek, chain, crl, key)
            while len(self._ident) > self.cache_size:
                del self._ident[next(iter(self._ident))]
        return info

    def verify(
        self,
        evidence: bytes,
        vek: x509.Certificate | bytes,
        *,
        at: datetime,
        chain: AmdChain | None = None,
        crl: x509.CertificateRevocationList | None = None,
    ) -> VerifiedEvidence:
        """Verify one report (steps 1-5) and return its claims.

        ``vek`` is the VCEK/VLEK certificate, or its DER/PEM bytes (parsed once per content).
        """
        report = AttestationReport.from_bytes(evidence)
        if isinstance(vek, bytes):
            vek = self._load_vek(vek)
        signing_key = _check_report_header(report)
        info = self.vek_info(vek, at, chain=chain, crl=crl)
        masked = _check_report_against_vek(report, signing_key, info)
        _check_report_signature(report, evidence, info.public_key)
        details = dict(info.details)
        details["chip_id_masked"] = masked
        return VerifiedEvidence(
            platform=Platform.SEV_SNP,
            claims=_claims(report, info),
            verified_at=at,
            evidence_digest=hashlib.sha256(evidence).hexdigest(),
            tcb_status=None,
            details=details,
        )


def verify_report(
    evidence: bytes,
    vek: x509.Certificate,
    roots: AmdRootStore,
    *,
    at: datetime,
    chain: AmdChain | None = None,
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedEvidence:
    """One-shot verification without a cache (see :class:`SnpVerifier`)."""
    return SnpVerifier(roots, cache_size=0).verify(evidence, vek, at=at, chain=chain, crl=crl)
