"""Verify a Google Compute Engine vTPM attestation (go-tpm-tools ``attest.Attestation``).

Steps (after go-tpm-tools ``server/verify.go`` ``VerifyAttestation``, with confide's errors):

1. Parse the protobuf, the AK public area, every quote and the event log
   (``confide.evidence.gce_tpm``) → :class:`ParseError`.
2. The AK certificate must chain, at ``at``, through an intermediate (the attestation's own or
   one shipped in ``confide/roots/google_vtpm_intermediates.pem``) to a pinned Google root
   (``tpm_ek_root_1`` or "EK/AK CA Root") → :class:`CertificateChainError`; the AK certificate
   itself must be a signing end entity (not a CA; KeyUsage, when present, with
   ``digitalSignature``: the same CAs issue EK certificates, whose keys encrypt)
   → :class:`CertificateChainError`. Its public key must be the AK of ``ak_pub``
   → :class:`BindingError`.
2b. Given CRLs (``crls``), the AK certificate and every intermediate of that chain must be
   covered by a current CRL signed by its issuer and not listed on it
   (:mod:`confide.verify.gce_crl`: :class:`RevocationError`, :class:`CollateralMissingError`,
   :class:`CollateralExpiredError`, :class:`SignatureError`); without ``crls`` revocation is not
   checked.
3. Every quote must verify with the AK against its own bank's PCR values
   (``confide.verify.tpm.verify_quote``: signature, TPM_GENERATED magic, pcrDigest, and
   extraData = ``expected_nonce`` when one is given). Its signed ``qualifiedSigner`` must be the
   qualified name of ``ak_pub`` as a primary key of the endorsement hierarchy (where the GCE AK
   lives) or the owner hierarchy → :class:`BindingError`: this ties the otherwise unsigned
   ``ak_pub`` (object attributes, hence ``ak_restricted_signing``, and policy included) to the
   key the TPM signed with.
4. The event log, if present, is replayed into the SHA-256 bank (TCG PFP §10.2: a PCR starts
   at zero, or at the StartupLocality value for PCR 0, and is extended by
   ``PCR := H(PCR || digest)``); every PCR the log extends must equal the quoted value
   → :class:`MeasurementError`. Only events of reproduced PCRs are reported as verified.
5. The platform state from PCR 0's verified events before its separator, as go-tpm-tools
   ``getPlatformState``: the GCE firmware version (EV_S_CRTM_VERSION) and the confidential
   technology (EV_NONHOST_INFO, "GCE NonHostInfo"); and the Secure Boot state from PCR 7's
   verified events before its separator (TCG PFP §3.3.4.8, as go-attestation
   ``ParseSecurebootState``): the firmware's EV_EFI_VARIABLE_DRIVER_CONFIG event of the
   ``SecureBoot`` variable of EFI_GLOBAL_VARIABLE (none without PCR 7's separator). An event
   that looks like a separator but is not a valid one, one of these events (for PCR 7: any
   EV_EFI_VARIABLE_DRIVER_CONFIG event before the separator) whose digest is not the hash of
   its data, or a second or malformed ``SecureBoot`` event →
   :class:`MeasurementError` (the event type itself is not measured). Events after the
   separator come from code the firmware started, which can extend a PCR with any event (an
   unsigned boot loader writing "SecureBoot = 1"): they say nothing of the firmware's state.
6. The instance the AK belongs to comes from the AK certificate's Google extension
   (``confide.evidence.gce_instance``), decoded only after the chain verified; a malformed
   extension → :class:`CertificateChainError`. As in go-tpm-tools ``getInstanceInfoFromExtensions``,
   only a *production* instance is claimed (``instance``); the protobuf's unsigned
   ``instance_info``, when present, must agree with it → :class:`BindingError`.
7. A Confidential VM's hardware report (field 8, SEV-SNP, or 9, TDX; rebuilt byte for byte from
   the structured protobuf by ``confide.evidence.gce_tee``) is verified by the existing
   verifiers: SEV-SNP by :class:`~confide.verify.sev_snp.SnpVerifier` (the VCEK/VLEK of the
   attestation's certificate chain, with its ASK/ASVK and ARK when sent, the chain ending at the
   pinned ARK; else the one given in :class:`GceTeeCollateral`, such as AMD KDS's), TDX by
   :class:`~confide.verify.dcap.DcapVerifier` with the DCAP collateral given
   (:class:`CollateralMissingError` without). Then the binding (go-tpm-tools ``client/attest.go``
   with no TEENonce: the TPM nonce, truncated or zero-filled to 64 bytes): REPORT_DATA must be
   the quotes' extraData zero-filled (or truncated) to 64 bytes → :class:`BindingError`. A
   report that does not verify fails the whole attestation: it is never dropped. Its claims go
   to ``claims["tee"]`` (``type``: ``sev-snp`` or ``tdx``, and the verifier's claims), its
   ``debug`` claim to ``claims["debug"]`` and a TDX TCB status and advisories to the result's,
   so a policy's tolerances judge them.

No I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.errors import (
    BindingError,
    CertificateChainError,
    CollateralMissingError,
    MeasurementError,
    ParseError,
)
from confide.evidence.ccel import EV_NO_ACTION, Event, EventLog
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.gce_instance import (
    GCE_INSTANCE_EXTENSION_OID,
    GceCertInstance,
    parse_gce_instance_extension,
)
from confide.evidence.gce_tee import GceSnpAttestation, GceTdxAttestation
from confide.evidence.gce_tpm import GceAttestation, parse_gce_attestation
from confide.evidence.sev_snp import REPORT_DATA_SIZE, SigningKey
from confide.evidence.tcg_events import DATA_DIGEST_TYPES, decode_event, event_type_name
from confide.evidence.tpm import TPM_ALG_SHA256, alg_name
from confide.roots import read_root
from confide.verify._pinned_chain import (
    check_signing_end_entity,
    fingerprint,
    load_chain_certificate,
    load_pinned_root,
    verify_pinned_chain,
)
from confide.verify.dcap import DcapVerifier
from confide.verify.gce_crl import check_chain_revocation
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdChain, SnpVerifier, load_certificates
from confide.verify.tpm import VerifiedQuote, verify_quote

__all__ = [
    "GOOGLE_EK_AK_CA_ROOT_SHA256",
    "GOOGLE_TPM_EK_ROOT_1_SHA256",
    "GceTeeCollateral",
    "google_roots",
    "long_names",
    "replay_pcrs",
    "shipped_intermediates",
    "tee_report_data",
    "verified_ak_chain",
    "verify_gce_attestation",
]

GOOGLE_TPM_EK_ROOT_1_SHA256 = "9bd5285f8fb18502a7947e621ffd470266f49fcd3b73e19a190f690ad32a7caf"
GOOGLE_EK_AK_CA_ROOT_SHA256 = "594759594b9b61524f6c8ef668f7177f7b9066bc0674f2f49fe9e052be78beb2"
_ROOT_FILES = (
    ("google_tpm_ek_root_1.pem", GOOGLE_TPM_EK_ROOT_1_SHA256),
    ("google_ek_ak_ca_root.pem", GOOGLE_EK_AK_CA_ROOT_SHA256),
)
INTERMEDIATES_FILE = "google_vtpm_intermediates.pem"
REPLAY_BANK = TPM_ALG_SHA256
PCR_SIZE = 32
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"  # TCG PFP §10.4.5.3
MAX_CHAIN = 4
# TPM 2.0 Part 2 §7.4 TPM_RH: the hierarchies a primary AK can live in. Part 1 §16: a
# hierarchy's qualified name is its handle, a primary object's is H_nameAlg(handle ‖ Name).
TPM_RH_OWNER = 0x40000001
TPM_RH_ENDORSEMENT = 0x4000000B
EV_SEPARATOR = 0x4  # TCG PFP §10.4.1, event types
EV_S_CRTM_VERSION = 0x8
EV_NONHOST_INFO = 0x11
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
SECURE_BOOT_PCR = 7  # TCG PFP §3.3.4.8: PCR[7], Secure Boot policy measurements
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # UEFI 2.10 §3.3
SECURE_BOOT_VARIABLE = "SecureBoot"
SEPARATOR_DATA = (bytes(4), b"\xff" * 4)  # TCG PFP §10.4.4: 00000000h, or FFFFFFFFh on errors
# "GCE Virtual Firmware v" in little-endian UCS-2, then the version digits and a NUL
# (go-tpm-tools server/policy_constants.go, GceVirtualFirmwarePrefix).
GCE_FIRMWARE_PREFIX = "GCE Virtual Firmware v".encode("utf-16-le")
GCE_NONHOST_SIGNATURE = b"GCE NonHostInfo\x00"  # then one technology byte, 15 reserved bytes
# go-tpm-tools proto/attest.proto, enum GCEConfidentialTechnology.
GCE_CONFIDENTIAL_TECHNOLOGY = {0: "NONE", 1: "AMD_SEV", 2: "AMD_SEV_ES", 3: "INTEL_TDX", 4: "AMD_SEV_SNP"}


@dataclass(frozen=True, slots=True)
class GceTeeCollateral:
    """What verifies a Confidential VM's hardware report (step 7) besides the attestation.

    ``snp``: the SEV-SNP verifier (its pinned AMD roots and caches). ``vek``, ``vek_chain``: a
    VCEK/VLEK (and its ASK/ASVK+ARK) the caller chose (``--vcek``, AMD KDS's), used instead of
    the attestation's own;
    ``vek_crl``: an ARK-signed CRL to check the chain with. ``dcap``: the DCAP verifier;
    ``tdx_collateral`` and ``tdx_pck``: the quote's DCAP collateral and, for a quote that only
    names its PCK certificate, that certificate."""

    snp: SnpVerifier | None = None
    vek: x509.Certificate | None = None
    vek_chain: AmdChain | None = None
    vek_crl: x509.CertificateRevocationList | None = None
    dcap: DcapVerifier | None = None
    tdx_collateral: DcapCollateral | None = None
    tdx_pck: PckCertificate | None = None


def tee_report_data(extra_data: bytes) -> bytes:
    """The REPORT_DATA a TEE report bound to TPM quotes with ``extra_data`` carries: go-tpm-tools'
    default TEENonce, the nonce zero-filled or truncated to 64 bytes."""
    return extra_data[:REPORT_DATA_SIZE].ljust(REPORT_DATA_SIZE, b"\x00")


def _sent_vek(
    tee: GceSnpAttestation,
) -> tuple[x509.Certificate, AmdChain | None] | None:
    """The VCEK or VLEK (as the report's SIGNING_KEY names) of the attestation's certificate
    chain, with its ASK/ASVK and ARK when both were sent; ``None`` when it carries none."""
    vlek = tee.parsed.signing_key is SigningKey.VLEK
    der = tee.vlek if vlek else tee.vcek
    name = "vlek_cert" if vlek else "vcek_cert"
    if der is None:
        return None
    certs = load_certificates(der, f"sev_snp_attestation {name}")
    if len(certs) != 1:
        raise CertificateChainError(f"sev_snp_attestation {name}: got {len(certs)} certificates, expected 1")
    chain: AmdChain | None = None
    if (tee.ask is None) != (tee.ark is None):
        raise CertificateChainError(
            "sev_snp_attestation certificate_chain: got one of ask_cert and ark_cert,"
            " expected both or neither"
        )
    if tee.ask is not None and tee.ark is not None:
        inter = load_certificates(tee.ask, "sev_snp_attestation ask_cert")
        ark = load_certificates(tee.ark, "sev_snp_attestation ark_cert")
        chain = AmdChain.from_certificates([*inter, *ark], "sev_snp_attestation certificate_chain")
    return certs[0], chain


def _verify_tee(
    tee: GceSnpAttestation | GceTdxAttestation, ctx: GceTeeCollateral, at: datetime
) -> tuple[str, VerifiedEvidence, bytes]:
    """Step 7's verification: (type, the verifier's result, REPORT_DATA)."""
    if isinstance(tee, GceSnpAttestation):
        if ctx.snp is None:
            raise CollateralMissingError(
                "the attestation carries an SEV-SNP report, and no SEV-SNP verifier (AMD roots) was given"
            )
        sent = _sent_vek(tee)  # read (and refused when malformed) even when ctx.vek is given
        if ctx.vek is not None:
            vek, chain = ctx.vek, ctx.vek_chain
        elif sent is not None:
            vek, chain = sent
        else:
            raise CollateralMissingError(
                "the attestation's SEV-SNP report came without its VCEK/VLEK (certificate_chain):"
                " give one (--vcek), or attest to a CAS that fetches it from AMD KDS (--kds)"
            )
        hw = ctx.snp.verify(tee.report, vek, at=at, chain=chain, crl=ctx.vek_crl)
        return "sev-snp", hw, tee.parsed.report_data
    dcap = ctx.dcap if ctx.dcap is not None else DcapVerifier()
    if ctx.tdx_collateral is None:
        raise CollateralMissingError(
            "the attestation carries a TDX quote, and no DCAP collateral was given (--collateral)"
        )
    hw = dcap.verify_parsed(tee.parsed, tee.quote, ctx.tdx_collateral, at=at, pck=ctx.tdx_pck)
    report = tee.parsed.report
    return "tdx", hw, report.report_data


@contextmanager
def long_names() -> Iterator[None]:
    """Google's intermediates have a 79-character CN (X.520 allows 64); ``cryptography`` warns
    when such a name is read. The certificates are genuine, so that warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
        yield


def google_roots() -> tuple[x509.Certificate, ...]:
    """The pinned Google vTPM roots, each checked against its fingerprint."""
    return tuple(load_pinned_root(name, sha) for name, sha in _ROOT_FILES)


def shipped_intermediates() -> list[x509.Certificate]:
    """Google's vTPM intermediates shipped in ``confide/roots/google_vtpm_intermediates.pem``."""
    return x509.load_pem_x509_certificates(read_root(INTERMEDIATES_FILE))


def _name(name: x509.Name) -> str:
    with long_names():
        return name.rfc4514_string()


def _build_chain(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], x509.Certificate]:
    """Leaf → intermediates from ``pool`` (matched by name) → one of ``roots``."""
    chain = [leaf]
    with long_names():
        while len(chain) <= MAX_CHAIN:
            issuer_name = chain[-1].issuer
            for root in roots:
                if root.subject == issuer_name:
                    return [*chain, root], root
            candidates = [c for c in pool if c.subject == issuer_name and c not in chain]
            if not candidates:
                break
            chain.append(candidates[0])
    where = "" if len(chain) == 1 else f"'s chain ends at {_name(chain[-1].subject)!r},"
    raise CertificateChainError(
        f"AK certificate{where} issued by {_name(chain[-1].issuer)!r}: got no path to a pinned Google root"
        f" (expected one of {[fingerprint(r) for r in roots]})"
    )


def _check_ak_cert(
    att: GceAttestation, at: datetime, roots: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], x509.Certificate]:
    if att.ak_cert is None:
        raise CertificateChainError("the attestation has no AK certificate: the AK cannot be tied to Google")
    leaf = load_chain_certificate(att.ak_cert, "ak_cert")
    pool = [
        load_chain_certificate(c, f"intermediate_certs[{i}]") for i, c in enumerate(att.intermediate_certs)
    ]
    # (load_chain_certificate reads the names too: a malformed one is the certificate's error.)
    chain, root = _build_chain(leaf, [*pool, *shipped_intermediates()], roots)
    with long_names():
        verify_pinned_chain(chain, root, at)
        # Google's EK/AK CAs issue EK certificates too (a decryption key's): only a certificate
        # for a signing key vouches for the key that signed the quotes.
        check_signing_end_entity(leaf, "AK certificate")
    cert_key = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ak_key = att.ak_pub.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if not hmac.compare_digest(cert_key, ak_key):
        raise BindingError(
            f"AK certificate key: got SHA-256 {hashlib.sha256(cert_key).hexdigest()},"
            f" expected the ak_pub key (SHA-256 {hashlib.sha256(ak_key).hexdigest()})"
        )
    return chain, root


def verified_ak_chain(
    evidence: bytes, *, at: datetime, roots: Sequence[x509.Certificate] | None = None
) -> list[x509.Certificate]:
    """The AK certificate's chain (leaf first, pinned root last) of an attestation, verified as
    step 2 verifies it (its errors): what a CAS may ask Google's CRL Distribution Points about."""
    att = parse_gce_attestation(evidence)
    chain, _root = _check_ak_cert(att, at, tuple(roots) if roots is not None else google_roots())
    return chain


def replay_pcrs(log: EventLog, bank: int = REPLAY_BANK) -> dict[int, bytes]:
    """PCR values the log's events extend to in ``bank``, for every PCR the log touches."""
    size = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64}[bank]
    name = alg_name(bank)
    pcrs: dict[int, bytes] = {}
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            # TCG PFP §10.4.5.3: a StartupLocality event in PCR 0 sets PCR 0's initial value.
            if event.mr_index == 0 and event.data.startswith(STARTUP_LOCALITY_SIGNATURE) and 0 not in pcrs:
                locality = event.data[len(STARTUP_LOCALITY_SIGNATURE) : len(STARTUP_LOCALITY_SIGNATURE) + 1]
                pcrs[0] = bytes(size - 1) + locality
            continue
        digest = event.digest(bank)
        if digest is None:
            raise MeasurementError(
                f"event {event.number} at offset {event.offset:#x} has no {name} digest: cannot replay"
            )
        current = pcrs.get(event.mr_index, bytes(size))
        pcrs[event.mr_index] = hashlib.new(name, current + digest).digest()
    return pcrs


def _cert_instance(leaf: x509.Certificate) -> GceCertInstance | None:
    """The AK certificate's instance extension, or ``None`` when it has none."""
    oid = x509.ObjectIdentifier(GCE_INSTANCE_EXTENSION_OID)
    try:
        ext = leaf.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    if not isinstance(
        ext.value, x509.UnrecognizedExtension
    ):  # pragma: no cover - cryptography decodes no Google OID
        raise CertificateChainError(
            f"AK certificate extension {GCE_INSTANCE_EXTENSION_OID}: unexpected decoding"
        )
    try:
        return parse_gce_instance_extension(ext.value.value)
    except ParseError as exc:
        raise CertificateChainError(f"AK certificate: malformed instance extension: {exc}") from None


def _production(instance: GceCertInstance | None) -> GceCertInstance | None:
    """``instance`` when the certificate marks it as production, else ``None``: go-tpm-tools
    returns no instance information for non-production (test) instances."""
    if instance is None or instance.security is None or not instance.security.is_production:
        return None
    return instance


def _instance_claim(instance: GceCertInstance) -> dict[str, ClaimValue]:
    sec = instance.security
    return {
        "zone": instance.zone,
        "project_id": instance.project_id,
        "project_number": instance.project_number,
        "instance_name": instance.instance_name,
        "instance_id": instance.instance_id,
        "security_version": None if sec is None else sec.security_version,
        "is_production": sec is not None and sec.is_production,
        "tpm_data_always_encrypted": sec is not None and sec.tpm_data_always_encrypted,
        "suspend_resume_always_disabled": sec is not None and sec.suspend_resume_always_disabled,
        "vmtd_always_disabled": sec is not None and sec.vmtd_always_disabled,
        "always_in_yarn": sec is not None and sec.always_in_yarn,
    }


def _check_instance_info(att: GceAttestation, production: GceCertInstance | None) -> None:
    """The protobuf's unsigned ``instance_info`` must not contradict the certificate."""
    info = att.instance_info
    if info is None or production is None:
        return
    got = (info.zone, info.project_id, info.project_number, info.instance_name, info.instance_id)
    want = (
        production.zone,
        production.project_id,
        production.project_number,
        production.instance_name,
        production.instance_id,
    )
    if got != want:
        raise BindingError(f"instance_info: got {got!r}, expected the AK certificate's instance {want!r}")


def _gce_firmware_version(data: bytes) -> int | None:
    """The version number of a GCE S-CRTM version string, ``None`` when it is not one."""
    body = data[len(GCE_FIRMWARE_PREFIX) :]
    if not data.startswith(GCE_FIRMWARE_PREFIX) or len(data) % 2 or not body.endswith(b"\x00\x00"):
        return None
    try:
        digits = body[:-2].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 10:
        return None
    version = int(digits)
    return version if version <= 0xFFFFFFFF else None


def _pre_separator_events(log: EventLog, pcr: int) -> tuple[list[tuple[Event, bool]], bool]:
    """The events of ``pcr`` before its first separator, each with whether its digest is the
    SHA-256 of its data (TCG PFP §10.4.4: firmware events before EV_SEPARATOR), and whether that
    separator was found. An event that looks like a separator (by type or by digest, as
    go-tpm-tools ``checkIfValidSeparator``) but is not a valid one → :class:`MeasurementError`.
    Only called for a reproduced ``pcr``."""
    separators = {hashlib.sha256(d).digest() for d in SEPARATOR_DATA}
    events: list[tuple[Event, bool]] = []
    for event in log.events:
        if event.mr_index != pcr or event.event_type == EV_NO_ACTION:
            continue
        digest = event.digest(REPLAY_BANK)
        digest_ok = digest is not None and hmac.compare_digest(hashlib.sha256(event.data).digest(), digest)
        if event.event_type == EV_SEPARATOR or digest in separators:
            if event.event_type != EV_SEPARATOR or not digest_ok or event.data not in SEPARATOR_DATA:
                raise MeasurementError(
                    f"event {event.number} in PCR {pcr} looks like a separator but is not a valid one"
                    " (type EV_SEPARATOR, data 00000000h or FFFFFFFFh, digest of the data)"
                )
            return events, True  # nothing after the separator is the firmware's
        events.append((event, digest_ok))
    return events, False


def _platform_state(log: EventLog) -> dict[str, ClaimValue]:
    """Firmware version and confidential technology from PCR 0 (module docstring, step 5);
    only called when PCR 0 was reproduced, so every PCR 0 event's digest is in the quote."""
    version_data: bytes | None = None
    nonhost: bytes | None = None
    for event, digest_ok in _pre_separator_events(log, 0)[0]:
        if event.event_type in (EV_S_CRTM_VERSION, EV_NONHOST_INFO):
            if not digest_ok:
                raise MeasurementError(
                    f"event {event.number} ({event_type_name(event.event_type)}) in PCR 0:"
                    " its digest is not the SHA-256 of its data"
                )
            if event.event_type == EV_S_CRTM_VERSION:
                version_data = event.data
            else:
                nonhost = event.data
    version = None if version_data is None else _gce_firmware_version(version_data)
    technology: str | None = None
    if (
        nonhost is not None
        and nonhost.startswith(GCE_NONHOST_SIGNATURE)
        and len(nonhost) > len(GCE_NONHOST_SIGNATURE)
    ):
        technology = GCE_CONFIDENTIAL_TECHNOLOGY.get(nonhost[len(GCE_NONHOST_SIGNATURE)])
    return {
        "gce_firmware_version": version,
        "scrtm_version_id": None if version is not None or version_data is None else version_data.hex(),
        "confidential_technology": technology,
    }


def _secure_boot(log: EventLog) -> bool | None:
    """The ``SecureBoot`` variable the firmware measured into PCR 7 before its separator (module
    docstring, step 5; TCG PFP §3.3.4.8, UEFI 2.10 §3.3: one byte, 1 = enabled), ``None`` when
    the log has no such event or no PCR 7 separator (then nothing tells the firmware's events
    from a boot loader's). Only called when PCR 7 was reproduced."""
    found: bool | None = None
    events, separated = _pre_separator_events(log, SECURE_BOOT_PCR)
    for event, digest_ok in events:
        if event.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG:
            continue
        if not digest_ok:
            # Before its name is read: with the data edited (the digest, which the quote covers,
            # unchanged), the SecureBoot event would read as another variable and be skipped,
            # and the state, on or off, would become "unknown" (null).
            raise MeasurementError(
                f"event {event.number} (EFI variable) in PCR 7 before the separator: its digest is"
                " not the SHA-256 of its data"
            )
        details = decode_event(event)
        if (
            details.get("variable_guid") != EFI_GLOBAL_VARIABLE
            or details.get("variable_name") != SECURE_BOOT_VARIABLE
        ):
            continue
        value = details.get("value")  # set by the decoder for a one-byte value only
        problem = (
            "a second SecureBoot event before the separator"
            if found is not None
            else "its value is not one byte"
            if not isinstance(value, int)
            else None
        )
        if problem is not None:
            raise MeasurementError(f"event {event.number} (SecureBoot variable) in PCR 7: {problem}")
        found = value == 1
    return found if separated else None


def _event_claim(event: Event, verified: bool) -> dict[str, ClaimValue]:
    digest = event.digest(REPLAY_BANK)
    matches = digest is not None and hmac.compare_digest(hashlib.sha256(event.data).digest(), digest)
    return {
        "number": event.number,
        "pcr": event.mr_index,
        "type": event.event_type,
        "type_name": event_type_name(event.event_type),
        "digest": digest.hex() if digest is not None else None,
        "data_length": len(event.data),
        "verified": verified,
        "digest_matches_event": matches,
        "digest_of_data_required": event.event_type in DATA_DIGEST_TYPES,
        "details": decode_event(event),
    }


def _replay_claims(
    log: EventLog, quoted: Mapping[int, bytes]
) -> tuple[dict[str, ClaimValue], list[ClaimValue]]:
    if log.trailing:
        raise MeasurementError(
            f"event log: got {len(log.trailing)} bytes after the last event, expected none"
        )
    replayed = replay_pcrs(log)
    for index in sorted(replayed):
        if index not in quoted:
            raise MeasurementError(f"event log extends PCR {index}, which the SHA-256 quote does not cover")
        if not hmac.compare_digest(replayed[index], quoted[index]):
            raise MeasurementError(
                f"PCR {index} replayed from the event log: got {replayed[index].hex()},"
                f" expected the quoted {quoted[index].hex()}"
            )
    events: list[ClaimValue] = [
        _event_claim(event, event.event_type != EV_NO_ACTION and event.mr_index in replayed)
        for event in log.events
    ]
    summary: dict[str, ClaimValue] = {
        "bank": "sha256",
        "platform": _platform_state(log) if 0 in replayed else None,
        "reproduced_pcrs": list[ClaimValue](sorted(replayed)),
        "not_in_log": list[ClaimValue](sorted(set(quoted) - set(replayed))),
        "event_count": len(log.events),
        "secure_boot": _secure_boot(log) if SECURE_BOOT_PCR in replayed else None,
    }
    return summary, events


def _check_qualified_signer(att: GceAttestation, verified: Sequence[VerifiedQuote]) -> None:
    """Step 3: every quote's ``qualifiedSigner`` (TPMS_ATTEST, Part 2 §10.12.12) must be the
    qualified name of ``ak_pub`` as a primary key (Part 1 §16), so ``ak_pub`` is the TPM's own."""
    ak = att.ak_pub
    name = ak.name()
    expected = {
        ak.name_alg.to_bytes(2, "big")
        + hashlib.new(alg_name(ak.name_alg), h.to_bytes(4, "big") + name).digest()
        for h in (TPM_RH_ENDORSEMENT, TPM_RH_OWNER)
    }
    for i, v in enumerate(verified):
        if v.attest.qualified_signer not in expected:
            raise BindingError(
                f"quote {i}: qualifiedSigner {v.attest.qualified_signer.hex()} is not the qualified name"
                " of ak_pub as a primary key of the endorsement or owner hierarchy (ak_pub is not the"
                " key that signed)"
            )


def verify_gce_attestation(
    evidence: bytes,
    *,
    at: datetime,
    expected_nonce: bytes | None = None,
    roots: Sequence[x509.Certificate] | None = None,
    tee: GceTeeCollateral | None = None,
    crls: Sequence[x509.CertificateRevocationList] | None = None,
) -> VerifiedEvidence:
    """Verify a binary ``attest.Attestation``; see the module docstring for the steps.
    ``tee``: what verifies a Confidential VM's SEV-SNP report or TDX quote (step 7); an
    attestation that carries one is refused without what verifies it. ``crls``: Google's CRLs
    (step 2b; ``None``: revocation is not checked, and ``details["revocation"]`` says so)."""
    # 1. parse
    att = parse_gce_attestation(evidence)
    # 2. AK certificate chain and key
    pinned = tuple(roots) if roots is not None else google_roots()
    chain, root = _check_ak_cert(att, at, pinned)
    # 2b. revocation of the AK certificate and its intermediates
    revocation: list[ClaimValue] | None = None
    if crls is not None:
        with long_names():
            revocation = check_chain_revocation(chain, crls, at)
    # 3. every quote against its own bank
    verified: list[VerifiedQuote] = [
        verify_quote(q.raw_attest, q.signature, att.ak_pub, {q.hash_alg: q.pcrs}, nonce=expected_nonce)
        for q in att.quotes
    ]
    _check_qualified_signer(att, verified)
    extra = {v.attest.extra_data for v in verified}
    if len(extra) != 1:
        raise BindingError(f"quotes carry different extraData values: {sorted(e.hex() for e in extra)}")
    # 4. event log replay into the SHA-256 bank
    sha256 = next((v.pcrs[REPLAY_BANK] for v in verified if REPLAY_BANK in v.pcrs), None)
    log_summary: ClaimValue = None
    events: list[ClaimValue] = []
    if att.event_log is not None:
        if sha256 is None:
            raise MeasurementError(
                "the attestation has an event log but no SHA-256 quote to replay it against"
            )
        summary, events = _replay_claims(att.event_log, sha256)
        log_summary = summary

    leaf = chain[0]
    # 5. the instance, from the AK certificate
    cert_instance = _cert_instance(leaf)
    production = _production(cert_instance)
    _check_instance_info(att, production)
    # 7. the Confidential VM's hardware report, bound to the quotes' nonce
    tee_type: str | None = None
    hw: VerifiedEvidence | None = None
    if att.tee is not None:
        tee_type, hw, report_data = _verify_tee(att.tee, tee if tee is not None else GceTeeCollateral(), at)
        expected = tee_report_data(verified[0].attest.extra_data)
        if not hmac.compare_digest(report_data, expected):
            raise BindingError(
                f"the {tee_type} report's REPORT_DATA is {report_data.hex()[:32]}..., expected the quotes'"
                f" extraData zero-filled to 64 bytes ({expected.hex()[:32]}...): the hardware report"
                " was not made for this attestation"
            )
    pcr_claims: dict[str, ClaimValue] = {}
    for v in verified:
        for bank, values in v.pcrs.items():
            pcr_claims[alg_name(bank)] = {str(i): value.hex() for i, value in values.items()}
    first = verified[0].attest
    first_sig = verified[0].signature
    claims: dict[str, ClaimValue] = {
        "pcrs": pcr_claims,
        "extra_data": first.extra_data.hex(),
        "nonce": first.extra_data.hex(),
        "nonce_checked": expected_nonce is not None,
        "firmware_version": first.firmware_version,
        "clock_safe": first.clock_info.safe,
        "reset_count": first.clock_info.reset_count,
        "restart_count": first.clock_info.restart_count,
        "ak_restricted_signing": att.ak_pub.restricted_signing,
        "ak_cert_subject": _name(leaf.subject),
        "ak_cert_issuer": _name(leaf.issuer),
        "ak_cert_serial": format(leaf.serial_number, "x"),
        "event_log": log_summary,
        "instance": None if production is None else _instance_claim(production),
        "tee": None if hw is None else {**hw.claims, "type": tee_type},
    }
    if hw is not None:
        claims["debug"] = hw.claims.get("debug")
    info = att.instance_info
    details: dict[str, ClaimValue] = {
        "signature_algorithm": f"{alg_name(first_sig.sig_alg)}/{alg_name(first_sig.hash_alg)}",
        "banks": [alg_name(q.hash_alg) for q in att.quotes],
        "chain": [_name(c.subject) for c in chain],
        "ak_cert_not_after": leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "root_sha256": fingerprint(root),
        "root_overridden": roots is not None,
        "revocation": revocation,
        "ak_attributes": list(att.ak_pub.attribute_names),
        "events": events,
        "ak_cert_instance": None if cert_instance is None else _instance_claim(cert_instance),
        "ak_cert_instance_unknown_fields": None
        if cert_instance is None
        else {
            "security_properties": list[ClaimValue](
                () if cert_instance.security is None else cert_instance.security.unknown_security_fields
            ),
            "trailing_elements": cert_instance.trailing_elements,
        },
        "unverified_instance_info": None
        if info is None
        else {
            "zone": info.zone,
            "project_id": info.project_id,
            "project_number": info.project_number,
            "instance_name": info.instance_name,
            "instance_id": info.instance_id,
        },
        "tee": None if hw is None else {**hw.details, "type": tee_type},
    }
    return VerifiedEvidence(
        platform=Platform.GCE_TPM,
        claims=claims,
        verified_at=at,
        evidence_digest=hashlib.sha256(evidence).hexdigest(),
        details=details,
        tcb_status=None if hw is None else hw.tcb_status,
        advisory_ids=() if hw is None else hw.advisory_ids,
        tcb_evaluation=None if hw is None else hw.tcb_evaluation,
        tcb_evaluation_numbers=None if hw is None else hw.tcb_evaluation_numbers,
    )
