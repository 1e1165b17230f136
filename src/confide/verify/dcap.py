"""Verification of Intel DCAP quotes (SGX v3/v4, TDX v4/v5) against Intel collateral.

The steps follow Intel's DCAP Quote Verification Library (QVL, ``QuoteVerifier::verify`` and
``Checks/TcbLevelCheck``, ``Checks/TdxModuleCheck``) and the Intel PCS API v4 collateral model:

1. parse the quote (``confide.evidence.dcap``);
2. the PCK certificate chain leads to the pinned Intel SGX Root CA, its leaf an end entity, and
   is valid at ``at``: the
   chain of certification data type 5, or, for a quote whose certification data only names its
   PCK certificate (types 1-4: PPID or encrypted PPID with the raw CPUSVN, PCESVN and PCE ID, or
   the PCK leaf alone), the certificate and issuer chain given as collateral
   (:class:`~confide.evidence.dcap_collateral.PckCertificate`), which must also be that
   platform's: the PCE ID of its SGX extension is the quote's, its PPID is the quote's when the
   quote gives it in clear (type 1), it is the quote's leaf (type 4), and its PCESVN is not above
   the raw one (Intel PCS issues the certificate of the highest TCB level at or below the raw
   TCB). That the PCK key is this platform's is then proven by step 3 (the PCE signed the QE
   report with it). The certificate's TCB (CPUSVN/PCESVN: the TCB the PCS chose for the raw
   TCB) is the platform TCB of step 8; both are reported (details);
3. the QE report is signed by the PCK key, and its report data is
   SHA-256(attestation key || QE authentication data) followed by 32 zero bytes;
4. the quote (header and body) is signed by the attestation key;
5. the collateral: Root CA CRL signed by the root; PCK CRL signed by the quote's PCK issuer CA;
   TCB Info and QE Identity signed by the Intel SGX TCB Signing certificate, their issuer chain
   exactly that certificate (subject CN, an end entity) and the root (any other certificate
   under the root, such as a platform's PCK certificate, is refused as their signer); all of
   them, and their issuer chains, valid at ``at``;
6. revocation: the PCK issuer CA and the TCB signing certificate against the Root CA CRL, the
   PCK leaf against the PCK CRL;
7. TCB Info matches the platform (FMSPC, PCE-ID, SGX vs TDX), QE Identity matches the QE
   (MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES) and gives the QE TCB status;
8. TCB level matching (QVL ``matchTcbLevels``, levels highest TCB first as QVL orders them,
   whatever the TCB Info's order): the first level whose SGX components and PCESVN
   are at most the PCK certificate's; for TDX the first such level whose TDX components are at
   most the TEE TCB SVN (skipping the first two when the TDX module version is non-zero); the
   TDX module identity ``TDX_<version>`` checks MRSIGNER_SEAM and SEAM_ATTRIBUTES and gives
   the module's TCB status;
9. statuses are converged as in QVL (module, then QE; each of their levels must say UpToDate,
   OutOfDate or Revoked, :func:`_identity_status`) and advisory IDs collected from every level
   that contributed;
10. TD relaunch advice (QVL ``TcbLevelCheck`` 4.1.2.5.1.20, TD report 1.5 only): the current
    TCB, TEE_TCB_SVN2 (the TDX module running now, after any TD preserving update), is
    evaluated as steps 8-9 evaluate the launch TCB (TEE_TCB_SVN); when the launch TCB is
    OutOfDate(ConfigurationNeeded) and the current one is UpToDate, SWHardeningNeeded,
    ConfigurationNeeded or ConfigurationAndSWHardeningNeeded, the status is TDRelaunchAdvised
    (TDRelaunchAdvisedConfigurationNeeded when either needs configuration); the advisory IDs
    stay the launch TCB's. A current TCB that matches no level fails as the launch TCB would
    (``TcbLevelNotFoundError``); one that is Revoked makes the status Revoked (confide: QVL keeps
    the launch status; dcap-qvl refuses it too).

The TCB evaluation data numbers of the TCB Info and QE Identity used are returned
(``VerifiedEvidence.tcb_evaluation``); how recent they must be is a policy's decision. When the
collateral carries Intel's TCB evaluation data numbers list, it is verified too (signed as TCB
Info is, Root CA CRL, dates, SGX/TDX: :meth:`DcapVerifier.verify_tcb_evaluation_numbers`) and
returned (``VerifiedEvidence.tcb_evaluation_numbers``), for a policy's automatic minimum.

Nothing here reads the clock or does I/O. Claims are reported, never judged: debug enclaves,
TDs without SEPT_VE_DISABLE or with MRSERVICETD are verified and flagged for the policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralMissingError,
    ConfideError,
    ParseError,
    RevocationError,
    SignatureError,
    TcbLevelNotFoundError,
    VerificationError,
)
from confide.evidence.dcap import (
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_PPID_CLEARTEXT,
    INTEL_QE_VENDOR_ID,
    EnclaveReport,
    PckCertId,
    Quote,
    TdReport,
    cert_type_name,
)
from confide.evidence.dcap_collateral import (
    PCK_CHAIN_LENGTH,
    DcapCollateral,
    EnclaveIdentity,
    IdentityTcbLevel,
    PckCertificate,
    TcbEvaluationNumbersText,
    TcbInfo,
    TcbLevel,
)
from confide.evidence.pck import SGX_EXTENSION_OID, PckExtension, parse_pck_extension
from confide.evidence.pem import parse_pem_chain
from confide.lru import Lru
from confide.verify._pinned_chain import check_signing_end_entity
from confide.verify.result import (
    ClaimValue,
    Platform,
    TcbEvalNumber,
    TcbEvaluation,
    TcbEvaluationNumbers,
    TcbStatus,
    VerifiedEvidence,
)
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER
from confide.verify.x509util import (
    check_crl,
    check_pinned_root,
    check_validity,
    load_der_certificate,
    load_der_crl,
    name_of,
    verify_chain_signatures,
)

__all__ = [
    "DcapVerifier",
    "PckChain",
    "VerifiedCollateral",
    "missing_pck_error",
    "pck_info",
    "pck_lookup",
    "verify_quote",
]

_SGX_EXT = x509.ObjectIdentifier(SGX_EXTENSION_OID)
_PCK_CHAIN_LENGTH = PCK_CHAIN_LENGTH


@dataclass(frozen=True, slots=True)
class PckChain:
    """A PCK chain whose signatures link to the pinned root (dates not yet checked)."""

    certificates: tuple[x509.Certificate, ...]
    """Leaf and issuing CA (the root is the verifier's pinned one)."""
    extension: PckExtension
    ca: str  # "platform" or "processor"
    leaf_key: ec.EllipticCurvePublicKey
    leaf_der: bytes
    intermediate_der: bytes
    root_der: bytes
    cert_id: PckCertId | None = None
    """The quote's PCK certificate identifier when the chain came as collateral (types 1-4);
    ``None``: from the quote (type 5)."""

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def intermediate(self) -> x509.Certificate:
        return self.certificates[1]


@dataclass(frozen=True, slots=True)
class VerifiedCollateral:
    """Collateral whose signatures were checked (validity windows are checked per call)."""

    tcb_info: TcbInfo
    qe_identity: EnclaveIdentity
    root_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    issuer_chains: tuple[tuple[str, tuple[x509.Certificate, ...]], ...]
    tcb_signing_revoked: bool


def _ca_kind(intermediate: x509.Certificate) -> str:
    try:
        cn = intermediate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:
        raise ParseError("malformed subject", structure="pck_cert_chain[1]") from None
    name = str(cn[0].value) if cn else ""
    if name == "Intel SGX PCK Platform CA":
        return "platform"
    if name == "Intel SGX PCK Processor CA":
        return "processor"
    raise CertificateChainError(f"PCK issuer is {name!r}, expected Intel SGX PCK Platform CA or Processor CA")


_TCB_SIGNING_CN = "Intel SGX TCB Signing"
"""The subject CN of the one certificate that signs TCB Info and QE Identity (Intel PCS API v4;
QVL ``constants::TCB_SUBJECT``)."""


def _subject_cn(cert: x509.Certificate) -> str:
    try:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(cn[0].value) if len(cn) == 1 else ""


def _revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    except ValueError:
        raise ParseError("malformed revoked-certificate entry", structure="crl") from None


def _raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _verify_p256(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(_raw_sig(sig), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise SignatureError("attestation key is not a point on P-256") from None


def _in_window(name: str, start: datetime, end: datetime, at: datetime) -> None:
    if at < start:
        raise CollateralExpiredError(
            f"{name} is not valid yet: issued {start.isoformat()}, at {at.isoformat()}"
        )
    if at > end:
        raise CollateralExpiredError(
            f"{name} has expired: next update was {end.isoformat()}, at {at.isoformat()}"
        )


def _crl_next_update(crl: x509.CertificateRevocationList, name: str) -> datetime:
    """The CRL's ``nextUpdate``. RFC 5280 §5.1.2.5 requires conforming issuers to include it, and
    every Intel PCS CRL (PCK Platform/Processor CA, Root CA) carries one (Intel SGX PCK CRL
    profile); without it nothing says until when the CRL is current, so such a CRL is refused
    rather than taken as current forever."""
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralError(
            f"{name} has no nextUpdate (RFC 5280 §5.1.2.5): cannot tell whether it is current"
        )
    return next_update


_STATUS_OK = TcbStatus.UP_TO_DATE


def _converge(level_status: TcbStatus, other: TcbStatus) -> TcbStatus:
    """QVL ``convergeTcbStatusWithQeTcbStatus`` / ``...WithTdxModuleStatus``: an OutOfDate QE or
    TDX module makes the platform OutOfDate (keeping ConfigurationNeeded); Revoked wins."""
    if other is TcbStatus.OUT_OF_DATE:
        if level_status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if level_status in (TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return level_status


_IDENTITY_STATUSES = frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED})
"""What an identity's TCB level (the QE's, the TDX module's) may say: Intel PCS API v4, Enclave
Identity V2 ``tcbStatus`` (UpToDate, OutOfDate, Revoked). QVL converges only OutOfDate and
Revoked of the QE and of the TDX module (``convergeTcbStatusWithQeTcbStatus``,
``...WithTdxModuleStatus``); dcap-qvl 0.7.0 refuses any other module status."""


def _identity_status(level: IdentityTcbLevel, what: str) -> TcbStatus:
    """The status of an identity's TCB level, refused unless UpToDate, OutOfDate or Revoked:
    :func:`_converge` would otherwise take, say, an OutOfDateConfigurationNeeded module as
    up to date."""
    status = TcbStatus(level.status)
    if status not in _IDENTITY_STATUSES:
        raise CollateralError(
            f"{what} level for ISVSVN {level.isv_svn} has status {status.value}, expected UpToDate, "
            "OutOfDate or Revoked (the statuses of an identity's TCB levels)"
        )
    return status


_RELAUNCH_FROM = frozenset({TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED})
_RELAUNCH_TO = frozenset(
    {
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    }
)
_NEEDS_CONFIGURATION = frozenset(
    {
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
    }
)


def _relaunch(launch: TcbStatus, current: TcbStatus) -> TcbStatus:
    """QVL ``checkForRelaunch(launch, current)`` (TcbLevelCheck 4.1.2.5.1.20.2; step 10 of the
    module docstring): relaunch advice when only the launch TCB is out of date. A Revoked
    current TCB is Revoked (confide's addition: the TD runs on a revoked TDX module now)."""
    if current is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    if launch in _RELAUNCH_FROM and current in _RELAUNCH_TO:
        if launch in _NEEDS_CONFIGURATION or current in _NEEDS_CONFIGURATION:
            return TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
        return TcbStatus.TD_RELAUNCH_ADVISED
    return launch


def _identity_level(levels: tuple[IdentityTcbLevel, ...], isv_svn: int) -> IdentityTcbLevel | None:
    # Levels are ordered from highest to lowest ISVSVN (PCS API v4); the first one the SVN
    # reaches applies.
    for level in sorted(levels, key=lambda lvl: lvl.isv_svn, reverse=True):
        if isv_svn >= level.isv_svn:
            return level
    return None


def _level_order(level: TcbLevel) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """QVL's order of TCB levels (``TcbLevel::operator>``: SGX components, then PCESVN, then for
    TDX the TDX components, each compared lexicographically)."""
    return level.sgx_components, level.pce_svn, level.tdx_components or ()


def _matching_order(info: TcbInfo) -> list[TcbLevel]:
    """The TCB levels in the order QVL matches them: highest TCB first, whatever order the TCB
    Info lists them in (QVL keeps them in a ``std::set<TcbLevel, std::greater<TcbLevel>>``;
    dcap-qvl sorts them too). Intel lists them so; the sort is stable, so levels that compare
    equal keep their listed order (the first of them matches, as QVL keeps the first)."""
    return sorted(info.tcb_levels, key=_level_order, reverse=True)


def _match_levels(
    info: TcbInfo, pck: PckExtension, tee_tcb_svn: bytes | None
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """QVL ``matchTcbLevels``: the SGX level and (for TDX) the TDX level, trying the levels
    highest TCB first (:func:`_matching_order`)."""
    sgx_level: TcbLevel | None = None
    start = 2 if tee_tcb_svn is not None and tee_tcb_svn[1] > 0 else 0
    for level in _matching_order(info):
        if pck.pce_svn < level.pce_svn:
            continue
        if any(p < t for p, t in zip(pck.tcb_components, level.sgx_components, strict=True)):
            continue
        if tee_tcb_svn is None:
            return level, None
        if sgx_level is None:
            sgx_level = level
        tdx = level.tdx_components or ()
        if all(tee_tcb_svn[i] >= tdx[i] for i in range(start, len(tdx))):
            return sgx_level, level
    return sgx_level, None


def _module_level(info: TcbInfo, tee_tcb_svn: bytes, what: str) -> IdentityTcbLevel | None:
    """The TDX module's TCB level for a TEE TCB SVN (QVL ``checkTdxModuleTcbStatus``): ``None``
    for module version 0 (TEE_TCB_SVN[1], no module identity applies), else the level of
    identity ``TDX_<version>`` that the module's ISVSVN (TEE_TCB_SVN[0]) reaches."""
    version, isv_svn = tee_tcb_svn[1], tee_tcb_svn[0]
    if version == 0:
        return None
    want = f"TDX_{version:02X}"
    found = [m for m in info.tdx_module_identities if m.id.upper() == want]
    if not found:
        raise TcbLevelNotFoundError(
            f"TCB Info has no TDX module identity {want} for TDX module version {version} ({what})"
        )
    level = _identity_level(found[0].tcb_levels, isv_svn)
    if level is None:
        raise TcbLevelNotFoundError(f"TDX module ISVSVN {isv_svn} ({what}) is below every level of {want}")
    return level


def pck_info(quote: Quote, pck: PckCertificate | None = None) -> tuple[bytes, str]:
    """FMSPC and PCK CA kind ("platform"/"processor") of a quote, for collateral lookup (the
    quote's own chain; for certification data types 1-4 the PCK certificate ``pck``)."""
    chain = _parse_pck_chain(quote, pck)
    return chain.extension.fmspc, chain.ca


def pck_lookup(cert_id: PckCertId) -> PckCertId:
    """What a PCK certificate lookup takes for ``cert_id``: itself for types 1-3; for type 4 (the
    leaf alone) the CPUSVN, PCESVN and PCE ID of the leaf's own SGX extension filled in (the
    leaf is parsed as hostile input; nothing is verified here)."""
    if cert_id.leaf_der is None:
        return cert_id
    leaf = load_der_certificate(cert_id.leaf_der, "certification_data[type 4]")
    try:
        ext = leaf.extensions.get_extension_for_oid(_SGX_EXT).value
    except x509.ExtensionNotFound:
        raise CertificateChainError("PCK leaf certificate has no SGX extension") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ParseError("unexpected SGX extension type", structure="pck_certificate")
    pck = parse_pck_extension(ext.value)
    return dataclasses.replace(cert_id, cpu_svn=pck.cpu_svn, pce_svn=pck.pce_svn, pce_id=pck.pce_id)


def missing_pck_error(cert_id: PckCertId) -> CollateralMissingError:
    """The refusal of a quote whose PCK certificate (types 1-4) was not given: what is needed."""
    return CollateralMissingError(
        f"the quote does not carry its PCK certificate chain: its {cert_id.describe()} names it; "
        "the platform's PCK certificate and its issuer chain are needed as collateral (Intel PCS "
        "or a PCCS: GET /sgx/certification/v4/pckcert, --collateral URL; or a PEM file of leaf, "
        "PCK CA and root in a --collateral DIR)"
    )


def _parse_pck_chain(quote: Quote, pck: PckCertificate | None = None) -> PckChain:
    cert = quote.signature_data.qe.certification
    cert_id = quote.pck_cert_id()
    if cert_id is not None:
        if pck is None:
            raise missing_pck_error(cert_id)
        ders = [pck.leaf, *pck.issuer_chain]
        what = "PCK certificate (collateral) with its issuer chain"
    elif cert.cert_type == CERT_TYPE_PCK_CHAIN:
        ders = parse_pem_chain(cert.data)
        what = "PCK chain"
    else:
        raise CollateralMissingError(
            f"quote carries certification data type {cert.cert_type} ({cert_type_name(cert.cert_type)}), "
            f"expected {CERT_TYPE_PCK_CHAIN} (PCK certificate chain) or 1-4 (a PCK certificate identifier)"
        )
    if len(ders) != _PCK_CHAIN_LENGTH:
        raise CertificateChainError(f"{what} has {len(ders)} certificates, expected {_PCK_CHAIN_LENGTH}")
    certs = tuple(load_der_certificate(d, f"pck_cert_chain[{i}]") for i, d in enumerate(ders[:2]))
    try:
        ext = certs[0].extensions.get_extension_for_oid(_SGX_EXT).value
    except x509.ExtensionNotFound:
        raise CertificateChainError("PCK leaf certificate has no SGX extension") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ParseError("unexpected SGX extension type", structure="pck_certificate")
    key = certs[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateChainError("PCK leaf key is not a P-256 key")
    return PckChain(
        certs, parse_pck_extension(ext.value), _ca_kind(certs[1]), key, ders[0], ders[1], ders[2], cert_id
    )


def _check_platform(chain: PckChain) -> None:
    """A PCK certificate given as collateral is the quote's platform's (module docstring, step
    2): PCE ID, PPID (type 1), leaf (type 4), PCESVN not above the raw one."""
    cid, ext = chain.cert_id, chain.extension
    if cid is None:
        return
    if cid.leaf_der is not None:
        if chain.leaf_der != cid.leaf_der:
            raise CollateralError(
                "the PCK certificate given as collateral is not the PCK leaf the quote carries "
                "(certification data type 4)"
            )
        return
    if ext.pce_id != cid.pce_id:
        raise CollateralError(
            f"the PCK certificate given as collateral is for PCE ID {ext.pce_id.hex()}, "
            f"the quote's is {cid.pce_id.hex()}"
        )
    if cid.cert_type == CERT_TYPE_PPID_CLEARTEXT and ext.ppid != cid.ppid:
        # Neither PPID is shown: it identifies the platform.
        raise CollateralError(
            "the PCK certificate given as collateral is another platform's: its PPID is not the "
            "quote's (certification data type 1)"
        )
    if ext.pce_svn > cid.pce_svn:
        raise CollateralError(
            f"the PCK certificate given as collateral is for PCESVN {ext.pce_svn}, above the quote's "
            f"raw PCESVN {cid.pce_svn} (a PCK certificate is issued for a TCB at or below the raw TCB)"
        )


class DcapVerifier:
    """Verifies DCAP quotes; caches what repeats across quotes (bounded).

    Cached: PCK chains (by the exact certification bytes), QE report checks (by the exact QE
    report, signature, attestation key and auth data) and signature-verified collateral (by the
    exact collateral bytes). Validity dates and revocation are re-checked at every call.
    """

    def __init__(
        self,
        *,
        root_ca_der: bytes = INTEL_SGX_ROOT_CA_DER,
        chain_cache_size: int = 1024,
        collateral_cache_size: int = 256,
    ) -> None:
        self._root_der = root_ca_der
        self._root_sha256 = hashlib.sha256(root_ca_der).digest()
        self._root = load_der_certificate(root_ca_der, "pinned root")
        self._chains: Lru[bytes | tuple[bytes, ...], PckChain] = Lru(chain_cache_size)
        self._qe_ok: Lru[tuple[bytes, ...], bool] = Lru(chain_cache_size)
        self._att_keys: Lru[bytes, ec.EllipticCurvePublicKey] = Lru(chain_cache_size)
        self._signing_chains: Lru[tuple[bytes, ...], tuple[x509.Certificate, ...]] = Lru(
            collateral_cache_size
        )
        self._collateral: Lru[tuple[DcapCollateral, bytes], VerifiedCollateral] = Lru(collateral_cache_size)
        self._issuing_cas: Lru[bytes, x509.Certificate] = Lru(16)
        self._tcb_numbers: Lru[
            tuple[bytes, tuple[bytes, ...], bytes],
            tuple[TcbEvaluationNumbersText, tuple[x509.Certificate, ...], x509.CertificateRevocationList],
        ] = Lru(16)

    def forget_platforms(self) -> None:
        """Drop what is cached per platform (PCK chains, QE report checks, attestation keys);
        verified collateral stays (benchmarks of a first quote from a new platform)."""
        for cache in (self._chains, self._qe_ok, self._att_keys):
            cache.clear()

    # -- PCK chain --------------------------------------------------------------------------
    def pck_chain(self, quote: Quote, pck: PckCertificate | None = None) -> PckChain:
        """The quote's PCK chain, its signatures verified to the pinned root (dates are checked
        per call): the quote's own (type 5; ``pck`` is not used), or for certification data
        types 1-4 the certificate ``pck`` given as collateral, which must also be the platform's
        (:func:`_check_platform`)."""
        certification = quote.signature_data.qe.certification
        key: bytes | tuple[bytes, ...]
        if certification.cert_type == CERT_TYPE_PCK_CHAIN:
            key = certification.data
        elif pck is not None and quote.pck_cert_id() is not None:
            key = (certification.data, quote.header.user_data, pck.leaf, *pck.issuer_chain)
        else:
            _parse_pck_chain(quote, pck)  # raises the precise error
            raise AssertionError("unreachable")  # pragma: no cover
        cached = self._chains.get(key)
        if cached is not None:
            return cached
        chain = _parse_pck_chain(quote, pck)
        what = "PCK chain" if chain.cert_id is None else "PCK certificate (collateral)"
        check_pinned_root(chain.root_der, self._root_der, self._root_sha256, what)
        issuing_ca = self._issuing_cas.get(chain.intermediate_der)
        if issuing_ca is not None:
            # The PCK Platform/Processor CA certificate is shared by every platform and was
            # verified against the pinned root before (same bytes): only the leaf link is new.
            verify_chain_signatures(chain.certificates[:1], issuing_ca, chain.intermediate_der, what)
        else:
            verify_chain_signatures(chain.certificates, self._root, self._root_der, what)
            self._issuing_cas.put(chain.intermediate_der, chain.intermediate)
        # The PCK certificate is an end entity (Intel: CA false, KeyUsage digitalSignature), as
        # QVL and dcap-qvl (webpki: CaUsedAsEndEntity) require: a CA certificate under the PCK CA
        # is not a platform's PCK certificate, whatever SGX extension it carries.
        check_signing_end_entity(chain.leaf, f"{what}: leaf")
        _check_platform(chain)
        self._chains.put(key, chain)
        return chain

    # -- collateral -------------------------------------------------------------------------
    def verified_collateral(self, collateral: DcapCollateral, chain: PckChain) -> VerifiedCollateral:
        key = (collateral, chain.intermediate_der)
        cached = self._collateral.get(key)
        if cached is not None:
            return cached
        verified = self._verify_collateral(collateral, chain.intermediate)
        self._collateral.put(key, verified)
        return verified

    def _signing_chain(self, chain_der: tuple[bytes, ...], what: str) -> tuple[x509.Certificate, ...]:
        """The issuer chain of a TCB Info or QE Identity, verified once per verifier (LRU):
        exactly the Intel SGX TCB Signing certificate and the pinned root, as Intel PCS API v4
        serves it (``TCB-Info-Issuer-Chain`` / ``SGX-Enclave-Identity-Issuer-Chain``); QVL
        (``TCBInfoVerifier::verify``, ``QEIdentityVerifier::verify``) takes the signer by its
        subject (``chain.get(constants::TCB_SUBJECT)``, CN=Intel SGX TCB Signing) and checks the
        signature with that certificate's key only.
        Any other certificate under the root is refused as a signer, however validly it chains:
        a PCK certificate's key is a platform's, held by its PCE, and a platform whose PCK key
        was extracted (the out-of-date platforms TCB recovery is for) must not sign a TCB Info
        that rates it UpToDate; the PCK CA's key signs PCK certificates and CRLs, not TCB
        Info."""
        cached = self._signing_chains.get(chain_der)
        if cached is not None:
            return cached
        if len(chain_der) != 2:
            raise CollateralError(
                f"{what} has {len(chain_der)} certificate(s), expected 2: the Intel SGX TCB Signing "
                "certificate and the root"
            )
        try:
            check_pinned_root(chain_der[-1], self._root_der, self._root_sha256, what)
            chain = tuple(load_der_certificate(d, what) for d in chain_der[:-1])
            signer = chain[0]
            if _subject_cn(signer) != _TCB_SIGNING_CN:
                raise CertificateChainError(
                    f"{what}: the signer is {name_of(signer)}, expected the {_TCB_SIGNING_CN} certificate"
                )
            check_signing_end_entity(signer, f"{what}: signer")
            verify_chain_signatures(chain, self._root, self._root_der, what)
        except CertificateChainError as exc:
            raise CollateralError(exc.message) from None
        self._signing_chains.put(chain_der, chain)
        return chain

    def _signed_json(
        self, chain_der: tuple[bytes, ...], text: bytes, sig: bytes, what: str
    ) -> tuple[x509.Certificate, ...]:
        chain = self._signing_chain(chain_der, f"{what} issuer chain")
        key = chain[0].public_key()
        if (
            len(sig) != 64
            or not isinstance(key, ec.EllipticCurvePublicKey)
            or not _verify_p256(key, sig, text)
        ):
            raise SignatureError(f"{what} signature does not verify with {name_of(chain[0])}")
        return (*chain, self._root)

    # -- signatures only, for collateral sources and caches (no dates, no quote) ---------------
    def check_signed_json(self, chain_der: tuple[bytes, ...], text: bytes, sig: bytes, what: str) -> None:
        """Step 5 for one TCB Info or QE Identity, signatures only (no dates): ``sig`` over
        ``text`` by the Intel SGX TCB Signing certificate of ``chain_der``, which leads to the
        pinned root. Raises a ConfideError otherwise."""
        self._signed_json(chain_der, text, sig, what)

    def check_crl_signature(
        self, crl_der: bytes, issuer_chain_der: tuple[bytes, ...] | None, what: str
    ) -> None:
        """Step 5 for one CRL, signatures only (no dates): ``issuer_chain_der`` ``None``, the
        Root CA CRL, signed by the pinned root; else a PCK CRL signed by the first certificate of
        its issuer chain (the ``SGX-PCK-CRL-Issuer-Chain`` header: the PCK Platform or Processor
        CA, then the pinned root), that CA issued by the root. (The verification proper checks
        a PCK CRL against the quote's own PCK CA.) Raises a ConfideError otherwise."""
        crl = load_der_crl(crl_der, what)
        if issuer_chain_der is None:
            check_crl(crl, self._root, what)
            return
        where = f"{what} issuer chain"
        if len(issuer_chain_der) != 2:
            raise CollateralError(
                f"{where} has {len(issuer_chain_der)} certificate(s), expected the PCK CA and the root"
            )
        try:
            check_pinned_root(issuer_chain_der[-1], self._root_der, self._root_sha256, where)
            ca = load_der_certificate(issuer_chain_der[0], where)
            _ca_kind(ca)
            verify_chain_signatures((ca,), self._root, self._root_der, where)
        except CertificateChainError as exc:
            raise CollateralError(exc.message) from None
        check_crl(crl, ca, what)

    def collateral_signed(self, c: DcapCollateral) -> bool:
        """Whether every signature of ``c`` leads to the pinned root (:meth:`check_signed_json`,
        :meth:`check_crl_signature`; the PCK CRL against its own issuer chain). What a source or
        cache checks before it keeps collateral until its (unsigned until then) ``nextUpdate``:
        one answer that is not Intel's must not be served again until a date it names itself.
        Dates and the platform are the verification's business."""
        try:
            self.check_signed_json(c.tcb_info_issuer_chain, c.tcb_info, c.tcb_info_signature, "TCB Info")
            self.check_signed_json(
                c.qe_identity_issuer_chain, c.qe_identity, c.qe_identity_signature, "QE Identity"
            )
            self.check_crl_signature(c.root_ca_crl, None, "Root CA CRL")
            self.check_crl_signature(c.pck_crl, c.pck_crl_issuer_chain, "PCK CRL")
            if c.tcb_evaluation_numbers is not None:
                numbers = TcbEvaluationNumbersText.from_response(c.tcb_evaluation_numbers)
                chain = c.tcb_evaluation_numbers_issuer_chain or c.tcb_info_issuer_chain
                self.check_signed_json(chain, numbers.text, numbers.signature, "TCB evaluation data numbers")
        except ConfideError:
            return False
        return True

    def _verify_collateral(self, c: DcapCollateral, pck_issuer: x509.Certificate) -> VerifiedCollateral:
        root_crl = load_der_crl(c.root_ca_crl, "root_ca_crl")
        check_crl(root_crl, self._root, "Root CA CRL")
        pck_crl = load_der_crl(c.pck_crl, "pck_crl")
        check_crl(pck_crl, pck_issuer, "PCK CRL")
        tcb_chain = self._signed_json(c.tcb_info_issuer_chain, c.tcb_info, c.tcb_info_signature, "TCB Info")
        qe_chain = self._signed_json(
            c.qe_identity_issuer_chain, c.qe_identity, c.qe_identity_signature, "QE Identity"
        )
        revoked = any(_revoked(root_crl, ch[0]) for ch in (tcb_chain, qe_chain))
        return VerifiedCollateral(
            tcb_info=TcbInfo.from_json_text(c.tcb_info),
            qe_identity=EnclaveIdentity.from_json_text(c.qe_identity),
            root_crl=root_crl,
            pck_crl=pck_crl,
            issuer_chains=(("TCB Info issuer chain", tcb_chain), ("QE Identity issuer chain", qe_chain)),
            tcb_signing_revoked=revoked,
        )

    # -- TCB evaluation data numbers ---------------------------------------------------------
    def verify_tcb_evaluation_numbers(
        self,
        body: bytes,
        issuer_chain_der: tuple[bytes, ...],
        root_ca_crl_der: bytes,
        *,
        tee_id: str,
        at: datetime,
    ) -> TcbEvaluationNumbers:
        """Intel's TCB evaluation data numbers list (Intel PCS API v4 ``GET
        /{sgx,tdx}/certification/v4/tcbevaluationdatanumbers``), verified as a TCB Info is
        (step 5): ``body`` is the whole response; its signature is over the exact text of the
        ``tcbEvaluationDataNumbers`` member, by the Intel SGX TCB Signing certificate of
        ``issuer_chain_der`` (``TCB-Evaluation-Data-Numbers-Issuer-Chain``: that certificate and
        the pinned root, the chain of TCB Info); the Root CA CRL is signed by the root, current
        at ``at`` and does not revoke the signer; the chain and the list (``issueDate`` ..
        ``nextUpdate``) are valid at ``at``; the list's ``id`` is ``tee_id`` (``SGX`` or
        ``TDX``). Errors: ParseError, CollateralError (chain, id), SignatureError,
        CollateralExpiredError, RevocationError."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        what = "TCB evaluation data numbers"
        key = (body, issuer_chain_der, root_ca_crl_der)
        signed = self._tcb_numbers.get(key)
        if signed is None:
            parsed = TcbEvaluationNumbersText.from_response(body)
            chain = self._signed_json(issuer_chain_der, parsed.text, parsed.signature, what)
            root_crl = load_der_crl(root_ca_crl_der, "root_ca_crl")
            check_crl(root_crl, self._root, "Root CA CRL")
            signed = (parsed, chain, root_crl)
            self._tcb_numbers.put(key, signed)  # signatures only: what follows is checked per call
        parsed, chain, root_crl = signed
        if parsed.id != tee_id:
            raise CollateralError(f"the {what} are for {parsed.id}, expected {tee_id}")
        _in_window("Root CA CRL", root_crl.last_update_utc, _crl_next_update(root_crl, "Root CA CRL"), at)
        if _revoked(root_crl, chain[0]):
            raise RevocationError(f"the TCB signing certificate of the {what} is revoked by the Root CA CRL")
        check_validity(chain, at, f"{what} issuer chain", collateral=True)
        _in_window(what, parsed.issue_date, parsed.next_update, at)
        return TcbEvaluationNumbers(
            id=parsed.id,
            version=parsed.version,
            issue_date=parsed.issue_date,
            next_update=parsed.next_update,
            numbers=tuple(TcbEvalNumber(n, event, date) for n, event, date in parsed.numbers),
            verified_at=at,
        )

    # -- the whole verification -------------------------------------------------------------
    def verify(
        self,
        raw: bytes,
        collateral: DcapCollateral | None,
        *,
        at: datetime,
        pck: PckCertificate | None = None,
    ) -> VerifiedEvidence:
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        quote = Quote.from_bytes(raw)
        return self.verify_parsed(quote, raw, collateral, at=at, pck=pck)

    def verify_parsed(
        self,
        quote: Quote,
        raw: bytes,
        collateral: DcapCollateral | None,
        *,
        at: datetime,
        pck: PckCertificate | None = None,
    ) -> VerifiedEvidence:
        """Verify a parsed quote (module docstring). ``pck``: the platform's PCK certificate for
        a quote whose certification data only names it (types 1-4); not used for type 5."""
        header = quote.header
        if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
            raise VerificationError(
                f"QE vendor ID is {header.qe_vendor_id.hex()}, expected Intel's {INTEL_QE_VENDOR_ID.hex()}"
            )
        sig = quote.signature_data
        qe = sig.qe

        # Step 2: PCK chain (signatures cached, dates now).
        chain = self.pck_chain(quote, pck)
        check_validity(
            (*chain.certificates, self._root),
            at,
            "PCK chain" if chain.cert_id is None else "PCK certificate (collateral)",
        )

        # Step 3: QE report signed by the PCK key and binding the attestation key.
        qe_cache_key = (
            chain.leaf_der,
            qe.qe_report_raw,
            qe.qe_report_signature,
            sig.attestation_key,
            qe.qe_auth_data,
        )
        if self._qe_ok.get(qe_cache_key) is None:
            if not _verify_p256(chain.leaf_key, qe.qe_report_signature, qe.qe_report_raw):
                raise SignatureError("QE report signature does not verify with the PCK certificate's key")
            expected = hashlib.sha256(sig.attestation_key + qe.qe_auth_data).digest() + bytes(32)
            if qe.qe_report.report_data != expected:
                raise SignatureError(
                    "QE report data is not SHA-256(attestation key || QE authentication data) || 0*32: "
                    f"got {qe.qe_report.report_data.hex()}, expected {expected.hex()}"
                )
            self._qe_ok.put(qe_cache_key, True)

        # Step 4: the quote signed by the attestation key.
        att_key = self._att_keys.get(sig.attestation_key)
        if att_key is None:
            att_key = _attestation_key(sig.attestation_key)
            self._att_keys.put(sig.attestation_key, att_key)
        if not _verify_p256(att_key, sig.signature, quote.signed_bytes(raw)):
            raise SignatureError("quote signature does not verify with the attestation key")

        # Step 5: collateral.
        if collateral is None:
            raise CollateralMissingError(
                "no collateral given (TCB Info, QE Identity, CRLs): pass --collateral or configure a source"
            )
        vc = self.verified_collateral(collateral, chain)
        info, ident = vc.tcb_info, vc.qe_identity
        _in_window("TCB Info", info.issue_date, info.next_update, at)
        _in_window("QE Identity", ident.issue_date, ident.next_update, at)
        _in_window(
            "Root CA CRL", vc.root_crl.last_update_utc, _crl_next_update(vc.root_crl, "Root CA CRL"), at
        )
        _in_window("PCK CRL", vc.pck_crl.last_update_utc, _crl_next_update(vc.pck_crl, "PCK CRL"), at)
        for name, issuer_chain in vc.issuer_chains:
            check_validity(issuer_chain, at, name, collateral=True)

        # Step 6: revocation.
        if vc.tcb_signing_revoked:
            raise RevocationError("the TCB signing certificate is revoked by the Root CA CRL")
        if _revoked(vc.root_crl, chain.intermediate):
            raise RevocationError(f"PCK issuer {name_of(chain.intermediate)} is revoked by the Root CA CRL")
        if _revoked(vc.pck_crl, chain.leaf):
            raise RevocationError(
                f"PCK certificate serial {chain.leaf.serial_number:x} is revoked by the PCK CRL"
            )

        # Step 7: collateral belongs to this platform and QE.
        ext = chain.extension
        want_id = "TDX" if quote.is_tdx else "SGX"
        if info.id != want_id or (quote.is_tdx and info.version < 3):
            raise CollateralError(
                f"TCB Info is for {info.id} v{info.version}, expected {want_id} (v3 for TDX)"
            )
        if info.fmspc != ext.fmspc:
            raise CollateralError(
                f"TCB Info is for FMSPC {info.fmspc.hex()}, the PCK certificate's is {ext.fmspc.hex()}"
            )
        if info.pce_id != ext.pce_id:
            raise CollateralError(f"TCB Info is for PCE-ID {info.pce_id.hex()}, expected {ext.pce_id.hex()}")
        want_qe = "TD_QE" if quote.is_tdx else "QE"
        if ident.id != want_qe:
            raise CollateralError(f"QE Identity is for {ident.id}, expected {want_qe}")
        qe_level = self._check_qe_identity(qe.qe_report, ident)

        # Step 8: TCB levels.
        report = quote.report
        tee_tcb_svn = report.tee_tcb_svn if isinstance(report, TdReport) else None
        sgx_level, tdx_level = _match_levels(info, ext, tee_tcb_svn)
        if sgx_level is None:
            raise TcbLevelNotFoundError(
                f"no TCB level of the TCB Info (FMSPC {info.fmspc.hex()}, evaluation data number "
                f"{info.tcb_evaluation_data_number}) matches the platform's PCK TCB "
                f"(components {list(ext.tcb_components)}, PCESVN {ext.pce_svn})"
            )
        advisories: list[str] = []
        module_status: TcbStatus | None = None
        if isinstance(report, TdReport):
            if tdx_level is None:
                raise TcbLevelNotFoundError(
                    f"no TDX TCB level matches the TEE TCB SVN {report.tee_tcb_svn.hex()} "
                    f"(TCB Info evaluation data number {info.tcb_evaluation_data_number})"
                )
            module_level = self._check_tdx_module(report, info)
            module_status = (
                _identity_status(module_level, f"TDX module identity TDX_{report.tee_tcb_svn[1]:02X}")
                if module_level
                else _STATUS_OK
            )
            status = _converge(TcbStatus(tdx_level.status), module_status)
            advisories += tdx_level.advisory_ids
            if module_level:
                advisories += module_level.advisory_ids
            platform_level = tdx_level
        else:
            status = TcbStatus(sgx_level.status)
            advisories += sgx_level.advisory_ids
            platform_level = sgx_level
        qe_status = _identity_status(qe_level, f"QE Identity ({ident.id})")
        status = _converge(status, qe_status)
        advisories += qe_level.advisory_ids
        launch_status = status

        # Step 10: TD relaunch advice (TD report 1.5).
        current_status: TcbStatus | None = None
        if isinstance(report, TdReport) and report.tee_tcb_svn2 is not None:
            current_status = _current_tcb_status(info, ext, report.tee_tcb_svn2, qe_status)
            status = _relaunch(status, current_status)

        # Step 5 (optional): Intel's TCB evaluation data numbers, when they came with the collateral.
        tcb_numbers = None
        if collateral.tcb_evaluation_numbers is not None:
            tcb_numbers = self.verify_tcb_evaluation_numbers(
                collateral.tcb_evaluation_numbers,
                collateral.tcb_evaluation_numbers_issuer_chain or collateral.tcb_info_issuer_chain,
                collateral.root_ca_crl,
                tee_id=want_id,
                at=at,
            )

        claims = _claims(quote, ext)
        details: dict[str, ClaimValue] = {
            "quote_version": header.version,
            "pck_ca": chain.ca,
            "pck_serial": format(chain.leaf.serial_number, "x"),
            "tcb_evaluation_data_number": info.tcb_evaluation_data_number,
            "qe_identity_tcb_evaluation_data_number": ident.tcb_evaluation_data_number,
            "tcb_info_version": info.version,
            "tcb_info_issue_date": info.issue_date.isoformat(),
            "tcb_level_date": platform_level.tcb_date.isoformat(),
            "platform_tcb_status": platform_level.status,
            "qe_tcb_status": qe_status.value,
            "tdx_module_tcb_status": module_status.value if module_status else None,
            "collateral_expiry": min(
                info.next_update,
                ident.next_update,
                _crl_next_update(vc.root_crl, "Root CA CRL"),
                _crl_next_update(vc.pck_crl, "PCK CRL"),
            ).isoformat(),
            "trailing_bytes": len(quote.trailing),
            "certification_data_type": qe.certification.cert_type,
            "pck_source": "quote" if chain.cert_id is None else "collateral",
        }
        if current_status is not None:
            details["launch_tcb_status"] = launch_status.value
            details["current_tcb_status"] = current_status.value
        cid = chain.cert_id
        if cid is not None and cid.leaf_der is None:
            # The raw TCB the PCE signed at, and the TCB of the certificate the PCS chose for it
            # (the platform TCB matched against the TCB Info above).
            details.update(
                {
                    "raw_cpu_svn": cid.cpu_svn.hex(),
                    "raw_pce_svn": cid.pce_svn,
                    "pck_cpu_svn": ext.cpu_svn.hex(),
                    "pck_pce_svn": ext.pce_svn,
                    "qe_id": cid.qe_id.hex(),
                }
            )
        return VerifiedEvidence(
            platform=Platform.TDX if quote.is_tdx else Platform.SGX,
            claims=claims,
            verified_at=at,
            evidence_digest=hashlib.sha256(raw).hexdigest(),
            tcb_status=status,
            advisory_ids=tuple(dict.fromkeys(advisories)),
            details=details,
            tcb_evaluation=TcbEvaluation(info.tcb_evaluation_data_number, ident.tcb_evaluation_data_number),
            tcb_evaluation_numbers=tcb_numbers,
        )

    @staticmethod
    def _check_qe_identity(report: EnclaveReport, ident: EnclaveIdentity) -> IdentityTcbLevel:
        problems = []
        if report.mr_signer != ident.mr_signer:
            problems.append(f"MRSIGNER got {report.mr_signer.hex()}, expected {ident.mr_signer.hex()}")
        if report.isv_prod_id != ident.isv_prod_id:
            problems.append(f"ISVPRODID got {report.isv_prod_id}, expected {ident.isv_prod_id}")
        if report.misc_select & ident.miscselect_mask != ident.miscselect:
            # Shown as the report's bytes, as QE Identity gives them (little-endian).
            got = (report.misc_select & ident.miscselect_mask).to_bytes(4, "little").hex()
            problems.append(
                f"masked MISCSELECT got {got}, expected {ident.miscselect.to_bytes(4, 'little').hex()}"
            )
        masked = bytes(a & m for a, m in zip(report.attributes, ident.attributes_mask, strict=True))
        if masked != ident.attributes:
            problems.append(f"masked ATTRIBUTES got {masked.hex()}, expected {ident.attributes.hex()}")
        if problems:
            raise VerificationError("the quoting enclave is not Intel's: " + "; ".join(problems))
        level = _identity_level(ident.tcb_levels, report.isv_svn)
        if level is None:
            raise TcbLevelNotFoundError(f"QE ISVSVN {report.isv_svn} is below every level of the QE Identity")
        return level

    @staticmethod
    def _check_tdx_module(report: TdReport, info: TcbInfo) -> IdentityTcbLevel | None:
        """QVL ``checkTdxModuleTcbStatus`` and the TDX module identity check."""
        version = report.tee_tcb_svn[1]
        if version == 0:
            signer, attrs, mask = (
                info.tdx_module_mr_signer,
                info.tdx_module_attributes,
                info.tdx_module_attributes_mask,
            )
            name = "tdxModule"
        else:
            want = f"TDX_{version:02X}"
            found = [m for m in info.tdx_module_identities if m.id.upper() == want]
            if not found:
                raise TcbLevelNotFoundError(
                    f"TCB Info has no TDX module identity {want} for TDX module version {version}"
                )
            ident = found[0]
            signer, attrs, mask, name = ident.mr_signer, ident.attributes, ident.attributes_mask, want
        if signer is None or attrs is None or mask is None:
            raise CollateralError("TDX TCB Info lacks the tdxModule section")
        masked = bytes(a & m for a, m in zip(report.seam_attributes, mask, strict=True))
        if report.mr_signer_seam != signer or masked != attrs:
            raise VerificationError(
                f"TDX module does not match {name}: MRSIGNER_SEAM {report.mr_signer_seam.hex()} "
                f"(expected {signer.hex()}), masked SEAM_ATTRIBUTES {masked.hex()} (expected {attrs.hex()})"
            )
        return _module_level(info, report.tee_tcb_svn, "TEE_TCB_SVN")


def _current_tcb_status(
    info: TcbInfo, pck: PckExtension, tee_tcb_svn2: bytes, qe_status: TcbStatus
) -> TcbStatus:
    """Step 10: the current TCB (TEE_TCB_SVN2) evaluated as the launch TCB is in steps 8-9
    (QVL ``tdxEvaluateTCB`` on TEE_TCB_SVN2): the TDX level it reaches, converged with its TDX
    module's level and the QE's status."""
    _, level = _match_levels(info, pck, tee_tcb_svn2)
    if level is None:
        raise TcbLevelNotFoundError(
            f"no TDX TCB level matches the current TEE TCB SVN (TEE_TCB_SVN2) {tee_tcb_svn2.hex()} "
            f"(TD report 1.5; TCB Info evaluation data number {info.tcb_evaluation_data_number})"
        )
    module = _module_level(info, tee_tcb_svn2, "TEE_TCB_SVN2")
    module_status = (
        _identity_status(module, f"TDX module identity TDX_{tee_tcb_svn2[1]:02X} (TEE_TCB_SVN2)")
        if module
        else _STATUS_OK
    )
    status = _converge(TcbStatus(level.status), module_status)
    return _converge(status, qe_status)


def _claims(quote: Quote, pck: PckExtension) -> dict[str, ClaimValue]:
    report = quote.report
    claims: dict[str, ClaimValue]
    if isinstance(report, EnclaveReport):
        claims = {
            "mr_enclave": report.mr_enclave.hex(),
            "mr_signer": report.mr_signer.hex(),
            "isv_prod_id": report.isv_prod_id,
            "isv_svn": report.isv_svn,
            "report_data": report.report_data.hex(),
            "debug": report.debug,
            "mode64bit": report.mode64bit,
            "attributes": report.attributes.hex(),
            "misc_select": report.misc_select.to_bytes(4, "little").hex(),
            "cpu_svn": report.cpu_svn.hex(),
            "config_id": report.config_id.hex(),
            "config_svn": report.config_svn,
            "isv_ext_prod_id": report.isv_ext_prod_id.hex(),
            "isv_family_id": report.isv_family_id.hex(),
        }
    else:
        claims = {
            "mr_td": report.mr_td.hex(),
            "mr_config_id": report.mr_config_id.hex(),
            "mr_owner": report.mr_owner.hex(),
            "mr_owner_config": report.mr_owner_config.hex(),
            "rtmr0": report.rtmr0.hex(),
            "rtmr1": report.rtmr1.hex(),
            "rtmr2": report.rtmr2.hex(),
            "rtmr3": report.rtmr3.hex(),
            "report_data": report.report_data.hex(),
            "debug": report.debug,
            "sept_ve_disable": report.sept_ve_disable,
            "td_attributes": report.td_attributes.hex(),
            "xfam": report.xfam.hex(),
            "mr_seam": report.mr_seam.hex(),
            "mr_signer_seam": report.mr_signer_seam.hex(),
            "seam_attributes": report.seam_attributes.hex(),
            "tee_tcb_svn": report.tee_tcb_svn.hex(),
            "tdx_module_version": report.tee_tcb_svn[1],
            "mr_servicetd": report.mr_servicetd.hex() if report.mr_servicetd is not None else None,
            "tee_tcb_svn2": report.tee_tcb_svn2.hex() if report.tee_tcb_svn2 is not None else None,
        }
    claims.update(
        {
            "fmspc": pck.fmspc.hex(),
            "pce_id": pck.pce_id.hex(),
            "pce_svn": pck.pce_svn,
            "platform_cpu_svn": pck.cpu_svn.hex(),
            "tcb_components": list(pck.tcb_components),
            "sgx_type": pck.sgx_type_name,
            "qe_vendor_id": quote.header.qe_vendor_id.hex(),
            "user_data": quote.header.user_data.hex(),
        }
    )
    for name, flag in (
        ("dynamic_platform", pck.dynamic_platform),
        ("cached_keys", pck.cached_keys),
        ("smt_enabled", pck.smt_enabled),
    ):
        if flag is not None:
            claims[name] = flag
    return claims


_DEFAULT = DcapVerifier()


def verify_quote(
    raw: bytes,
    collateral: DcapCollateral | None,
    *,
    at: datetime,
    verifier: DcapVerifier | None = None,
    pck: PckCertificate | None = None,
) -> VerifiedEvidence:
    """Verify a raw DCAP quote at time ``at`` (module-level convenience, shared caches);
    ``pck``: the PCK certificate of a quote of certification data type 1-4."""
    return (verifier or _DEFAULT).verify(raw, collateral, at=at, pck=pck)
