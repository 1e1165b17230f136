"""``confide cas attest URL``: verify the CAS's own evidence and pin its TLS identity.

The CAS publishes evidence whose report data is SHA-512("confide-cas/v1" || 0 || DER of its TLS
certificate || its transparency-log verifier key). The client fetches the certificate from the
TLS handshake itself (without trusting it yet), fetches the evidence, verifies it, checks the
binding, and only then writes the certificate as the one to trust (``CONFIDE_CAS_CERT``).

A CAS started with ``--witness-quorum N`` binds its witnesses too (docs/adr/0005-witness-quorum.md):
SHA-512("confide-cas/v2" || 0 || TLS certificate DER || log verifier key || 0 || "quorum N\\n" ||
"witness VKEY\\n" for each witness key, sorted), and its document says ``witnesses: {quorum,
keys}`` (:class:`AttestedWitnesses`). The document's member decides which binding is checked,
so removing, adding or changing it makes the binding fail; without it the v1 binding is
byte-for-byte what it was. The client can require a quorum (:func:`witness_mismatches`).

SEV-SNP: a CAS that fetched its own VCEK from AMD KDS publishes the ARK's CRL it verified that
VCEK's chain with (``amd_crl``, :mod:`confide.cas.own_vcek`). The client checks the chain
against it (signed by the pinned ARK, current at the client's time, the ASK not revoked:
:func:`~confide.verify.sev_snp.verify_vek_chain`); a CRL out of date at that time is refused
(:class:`~confide.errors.CollateralExpiredError`, saying that the CAS's published CRL is out of
date), never skipped. A document without one (a CAS before this member, a VCEK from the host's
certificate table, a KDS that served no CRL) is verified without a CRL, as before: the result
says ``crl_checked: false`` (``evidence.details``), which ``cas attest`` prints.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import socket
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from confide import jsonstrict
from confide.cas.own_vcek import AMD_CRL_FIELD
from confide.cas.verifier import PlatformVerifier, check_binding
from confide.collateral.dcap import DcapCollateralSource, check_pcs_update, source_for
from confide.errors import (
    AppraisalError,
    BindingError,
    CollateralExpiredError,
    CollateralMissingError,
    MeasurementError,
    NetworkError,
    ParseError,
    UsageError,
)
from confide.fsutil import new_file_error, write_atomic
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteVerifier
from confide.platforms import (
    AutoTcbEvaluation,
    TcbEvaluationMinimum,
    automatic_minimum_source,
    require_minimum,
)
from confide.policy.appraise import check_security
from confide.policy.model import AttestationSecurity, Tolerance
from confide.sim.platform import load_platform_public_key
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdRootStore

__all__ = [
    "DCAP_PLATFORMS",
    "MEASUREMENT_CLAIMS",
    "AttestedWitnesses",
    "PinnedCas",
    "WitnessExpectation",
    "attest_cas",
    "cas_binding",
    "fetch_unverified",
    "verify_cas_document",
    "verify_cas_evidence",
    "witness_mismatches",
]

CAS_BINDING_PREFIX = b"confide-cas/v1\x00"
CAS_BINDING_PREFIX_V2 = b"confide-cas/v2\x00"  # with the witnesses (AttestedWitnesses)
WITNESSES_FIELD = "witnesses"
MAX_WITNESSES = 32
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class AttestedWitnesses:
    """The witnesses a CAS started with ``--witness-quorum`` binds into its report data: their
    verifier keys (``vkey`` strings, sorted, distinct) and how many of them must cosign each
    checkpoint (``quorum``, 1..len(keys))."""

    quorum: int
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.keys) <= MAX_WITNESSES:
            raise ParseError(
                f"got {len(self.keys)} witness keys, expected 1 to {MAX_WITNESSES}", structure="CAS witnesses"
            )
        if list(self.keys) != sorted(set(self.keys)):
            raise ParseError("the witness keys are not sorted and distinct", structure="CAS witnesses")
        if not 1 <= self.quorum <= len(self.keys):
            raise ParseError(
                f"got quorum {self.quorum}, expected 1 to {len(self.keys)} (the number of witnesses)",
                structure="CAS witnesses",
            )
        public = set()
        for vkey in self.keys:  # each one a cosignature/v1 key, each key once (under any name)
            verifier = NoteVerifier.from_vkey(vkey)
            if verifier.sig_type != SIG_TYPE_COSIGNATURE_V1 or verifier.vkey != vkey:
                raise ParseError(
                    f"got witness key {vkey[:60]!r}, expected a cosignature/v1 verifier key",
                    structure="CAS witnesses",
                )
            public.add(verifier.public_key)
        if len(public) != len(self.keys):
            raise ParseError("a witness's public key is listed twice", structure="CAS witnesses")

    def config(self) -> bytes:
        """What the v2 binding covers after the log key: ``quorum N\\n`` and ``witness VKEY\\n``
        per key (in order: sorted)."""
        lines = [f"quorum {self.quorum}\n", *(f"witness {k}\n" for k in self.keys)]
        return "".join(lines).encode("ascii")

    def to_json(self) -> dict[str, object]:
        return {"quorum": self.quorum, "keys": list(self.keys)}

    @classmethod
    def from_json(cls, value: object) -> AttestedWitnesses:
        """The document's ``witnesses`` member (hostile input)."""
        if (
            not isinstance(value, dict)
            or set(value) != {"quorum", "keys"}
            or type(value["quorum"]) is not int
            or not isinstance(value["keys"], list)
            or len(value["keys"]) > MAX_WITNESSES
            or not all(isinstance(k, str) and k.isascii() and len(k) <= 512 for k in value["keys"])
        ):
            raise ParseError(
                "the CAS's evidence document has a witnesses member that is not"
                " {quorum: N, keys: [vkey, ...]}",
                structure="CAS evidence",
                field=WITNESSES_FIELD,
            )
        return cls(value["quorum"], tuple(value["keys"]))


@dataclass(frozen=True)
class WitnessExpectation:
    """``cas attest --expect-witnesses N [--expect-witness VKEY]...``: every checkpoint the CAS
    has cosigned by a quorum must carry at least ``minimum`` cosignatures of ``trusted`` keys
    (empty: any of the CAS's own witnesses)."""

    minimum: int
    trusted: tuple[str, ...] = ()

    @classmethod
    def of(cls, minimum: int | None, vkeys: Sequence[str], what: str) -> WitnessExpectation | None:
        """The expectation of ``--expect-witnesses``/``--expect-witness`` (or the SDK's
        arguments, named ``what`` in errors); None when neither is given. Each key must be a
        note verifier key (C2SP signed-note), else :class:`UsageError`."""
        if minimum is None and not vkeys:
            return None
        trusted = []
        for vkey in vkeys:
            try:
                trusted.append(NoteVerifier.from_vkey(vkey.strip()).vkey)
            except ParseError as exc:
                raise UsageError(f"{what}: {exc.message}") from None
        return cls(minimum or 1, tuple(trusted))


def witness_mismatches(witnesses: AttestedWitnesses | None, expect: WitnessExpectation) -> list[str]:
    """Why the attested witness set does not satisfy ``expect`` (empty when it does). Of a
    quorum of Q over W witnesses, W - T may be witnesses the client does not trust (T of them
    it does), so a quorum guarantees Q - (W - T) cosignatures by trusted ones."""
    if witnesses is None:
        return [
            f"the CAS has no witness quorum (started without --witness-quorum), expected at least"
            f" {expect.minimum} (--expect-witnesses)"
        ]
    trusted = set(expect.trusted) if expect.trusted else set(witnesses.keys)
    untrusted = sum(1 for k in witnesses.keys if k not in trusted)
    guaranteed = witnesses.quorum - untrusted
    if guaranteed >= expect.minimum:
        return []
    if expect.trusted:
        return [
            f"the CAS's quorum of {witnesses.quorum} over {len(witnesses.keys)} witnesses guarantees"
            f" {max(guaranteed, 0)} cosignatures by the witnesses of --expect-witness ({untrusted} of"
            f" its witnesses are not among them), expected at least {expect.minimum}"
        ]
    return [
        f"the CAS's witness quorum is {witnesses.quorum} (of {len(witnesses.keys)}), expected at"
        f" least {expect.minimum} (--expect-witnesses)"
    ]


@dataclass(frozen=True)
class PinnedCas:
    url: str
    certificate_pem: bytes
    certificate_sha256: str
    log_key: str
    evidence: VerifiedEvidence
    obtained_at: datetime | None = None
    """When the CAS says it obtained this evidence (the document's ``obtained_at``; ``None`` from
    a CAS that does not say, which obtains its evidence once at startup). The CAS's claim over
    the attested TLS connection, not part of the signed evidence."""
    witnesses: AttestedWitnesses | None = None
    """The witness keys and quorum bound into the report data (``None``: a CAS without
    ``--witness-quorum``, the v1 binding)."""

    @property
    def measurement_claim(self) -> str:
        """The claim that identifies the code the CAS runs (``--measurement``)."""
        return MEASUREMENT_CLAIMS[self.evidence.platform]


MAX_FETCH_TIME = 120.0
"""The longest the evidence answer of :func:`fetch_unverified` may take in all, connection
included (seconds): ``timeout`` bounds each wait for more bytes only, so a server (or whoever
answers before anything is pinned) sending a byte just within it held ``cas attest`` for as
long as :data:`MAX_BODY` allows (months). 120 s asks ~9 kB/s of the largest answer."""


def fetch_unverified(url: str, path: str, *, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """GET ``path`` over TLS *without* verifying the server; returns (certificate DER, body).
    Only safe because the caller verifies evidence bound to that very certificate. The whole
    answer must arrive within :data:`MAX_FETCH_TIME` (else :class:`NetworkError`)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443  # ValueError: a port out of range or not a number
    except ValueError:  # also a broken IPv6 address
        raise UsageError(f"got {url[:80]!r}, expected an https:// CAS URL (HOST[:PORT])") from None
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"got {url[:80]!r}, expected an https:// CAS URL")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    deadline = monotonic() + MAX_FETCH_TIME
    try:
        with (
            socket.create_connection((parts.hostname, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            cert = tls.getpeercert(binary_form=True)
            request = f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            chunks = []
            total = 0
            while True:
                left = deadline - monotonic()
                if left <= 0:
                    raise NetworkError(
                        f"the CAS's evidence answer took more than {MAX_FETCH_TIME:g} s to arrive"
                    )
                tls.settimeout(min(timeout, left))
                chunk = tls.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_BODY:
                    raise NetworkError("CAS evidence response is too large")
    except ConnectionRefusedError as exc:  # nothing listens there: most often a stopped or moved CAS
        raise NetworkError(
            f"cannot reach the CAS at {url}: {exc}; is a CAS running there? 'confide cas serve' writes"
            " the address it listens on (CONFIDE_CAS_URL) into its client.env when it starts"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot reach the CAS at {url}: {exc}") from None
    if not cert:
        raise NetworkError("the CAS presented no certificate")
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise NetworkError(f"CAS answered {status.decode(errors='replace')[:80]}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return cert, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise ParseError("bad chunked encoding", structure="CAS response") from None
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


MEASUREMENT_CLAIMS: dict[Platform, str] = {
    Platform.SIMULATED: "measurement",
    Platform.SEV_SNP: "measurement",
    Platform.TDX: "mr_td",
    Platform.SGX: "mr_enclave",
    Platform.AZURE_SNP_VTPM: "measurement",
    Platform.AZURE_TDX_VTPM: "mr_td",
}
"""The claim ``--measurement`` is compared with, per platform the CAS may run on."""
_AUX_KEYS: dict[Platform, frozenset[str]] = {
    Platform.SIMULATED: frozenset(),
    Platform.SEV_SNP: frozenset({"auxblob", "vcek"}),
    Platform.TDX: frozenset(),  # DCAP collateral comes from the client's --collateral only
    Platform.SGX: frozenset(),
    Platform.AZURE_SNP_VTPM: frozenset(),  # the VCEK is inside the evidence
    Platform.AZURE_TDX_VTPM: frozenset(),
}
_MAX_AUX = 4
DCAP_PLATFORMS = frozenset({Platform.SGX, Platform.TDX, Platform.AZURE_TDX_VTPM})
"""The platforms whose evidence needs DCAP collateral, which only the verifier supplies (a
client's ``--collateral``, the CAS's own ``--collateral``), never the CAS's document."""


def cas_binding(cert_der: bytes, log_key: str, witnesses: AttestedWitnesses | None = None) -> bytes:
    """The CAS's report data: SHA-512("confide-cas/v1" || 0 || TLS certificate DER || log key);
    with ``witnesses``, SHA-512("confide-cas/v2" || 0 || TLS certificate DER || log key || 0 ||
    :meth:`AttestedWitnesses.config`)."""
    if witnesses is None:
        return hashlib.sha512(CAS_BINDING_PREFIX + cert_der + log_key.encode()).digest()
    return hashlib.sha512(
        CAS_BINDING_PREFIX_V2 + cert_der + log_key.encode() + b"\x00" + witnesses.config()
    ).digest()


# RFC 3339 section 5.6 ``date-time``, restricted to UTC ("Z", upper case) and at most
# microseconds: what the CAS writes (confide.cas.own_evidence.rfc3339).
_OBTAINED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z", re.ASCII)


def _parse_obtained_at(value: object) -> datetime:
    if not isinstance(value, str) or not _OBTAINED_AT.fullmatch(value):
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise ParseError(
            f"the CAS's evidence document has obtained_at {shown}, expected an RFC 3339 UTC time"
            " (YYYY-MM-DDTHH:MM:SSZ)",
            structure="CAS evidence",
        )
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:  # e.g. month 13 or second 60
        raise ParseError(
            f"the CAS's evidence document has obtained_at {value!r}, which is not a valid time",
            structure="CAS evidence",
        ) from None


@dataclass(frozen=True)
class _Document:
    platform: Platform
    evidence: bytes
    aux: dict[str, bytes]
    log_key: str
    obtained_at: datetime | None
    amd_crl: x509.CertificateRevocationList | None
    witnesses: AttestedWitnesses | None


def _parse_amd_crl(value: object, platform: Platform) -> x509.CertificateRevocationList:
    if platform is not Platform.SEV_SNP:
        raise ParseError(
            f"got {AMD_CRL_FIELD} with {platform} evidence, expected it only with sev-snp evidence",
            structure="CAS evidence",
        )
    try:
        if not isinstance(value, str):
            raise TypeError
        return x509.load_der_x509_crl(base64.b64decode(value, validate=True))
    except (ValueError, TypeError):
        raise ParseError(
            f"the CAS's evidence document has an {AMD_CRL_FIELD} that is not a base64 DER CRL",
            structure="CAS evidence",
            field=AMD_CRL_FIELD,
        ) from None


def _parse_document(body: bytes) -> _Document:
    """The evidence document (hostile input): platform, evidence, aux blobs, log key and, when
    present, ``obtained_at`` (a CAS that refreshes its evidence), ``amd_crl`` and ``witnesses``
    (module docstring)."""
    doc = jsonstrict.loads(body, structure="CAS evidence")  # hostile: a duplicate key is refused
    try:
        name = doc["platform"]
        evidence = base64.b64decode(doc["evidence"], validate=True)
        log_key = doc["log_key"]
        raw_aux = doc.get("aux", {})
        if not isinstance(name, str) or not isinstance(log_key, str) or not isinstance(raw_aux, dict):
            raise TypeError
        if len(raw_aux) > _MAX_AUX:
            raise ValueError
        aux = {str(k): base64.b64decode(v, validate=True) for k, v in raw_aux.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ParseError("the CAS's evidence document is malformed", structure="CAS evidence") from None
    obtained_at = _parse_obtained_at(doc["obtained_at"]) if "obtained_at" in doc else None
    platform = next((p for p in _AUX_KEYS if p.value == name), None)
    if platform is None:
        known = ", ".join(p.value for p in _AUX_KEYS)
        raise UsageError(f"the CAS runs on {name[:40]!r}; a CAS's own evidence is verified for {known}")
    unknown = sorted(set(aux) - _AUX_KEYS[platform])
    if unknown:
        allowed = ", ".join(sorted(_AUX_KEYS[platform])) or "none"
        raise ParseError(
            f"got aux {', '.join(repr(k[:40]) for k in unknown[:4])} with {platform} evidence,"
            f" expected {allowed}",
            structure="CAS evidence",
        )
    amd_crl = _parse_amd_crl(doc[AMD_CRL_FIELD], platform) if AMD_CRL_FIELD in doc else None
    witnesses = AttestedWitnesses.from_json(doc[WITNESSES_FIELD]) if WITNESSES_FIELD in doc else None
    return _Document(platform, evidence, aux, log_key, obtained_at, amd_crl, witnesses)


def _verify_document(
    body: bytes,
    *,
    sim_key_pem: bytes | None,
    at: datetime,
    collateral: DcapCollateralSource | None,
    amd_roots: AmdRootStore | None,
) -> tuple[VerifiedEvidence, _Document]:
    """Parse the document and verify its evidence (signatures, chains, collateral; the AMD CRL
    it carries): the verified evidence and the document. No appraisal, no binding."""
    document = _parse_document(body)
    platform, evidence, aux = document.platform, document.evidence, document.aux
    sim_key = None
    if platform is Platform.SIMULATED:
        if sim_key_pem is None:
            raise UsageError(
                "the CAS presents SIMULATED evidence: pass --sim-key (the simulated platform's public key)"
            )
        sim_key = load_platform_public_key(sim_key_pem)
    elif platform in DCAP_PLATFORMS and collateral is None:
        raise CollateralMissingError(
            f"the CAS runs on {platform}: pass --collateral (DCAP collateral: a dcap-qvl JSON bundle,"
            " a PCS directory or a PCS URL)"
        )
    verifier = PlatformVerifier(sim_key=sim_key, dcap_source=collateral, amd_roots=amd_roots)
    crl = document.amd_crl
    try:
        verified = verifier.verify(platform, evidence, aux, at=at, snp_crl=crl)
    except CollateralExpiredError as exc:
        if crl is None or _crl_current(crl, at):
            raise
        raise CollateralExpiredError(
            f"the AMD CRL the CAS published with its evidence ({AMD_CRL_FIELD}) is out of date at"
            f" {at.isoformat()} ({exc.message}); the CAS fetches a current one from AMD KDS when it"
            " next refreshes its evidence (--evidence-refresh): attest again after that, or check"
            " the CAS's access to its --kds"
        ) from None
    return verified, document


def _crl_current(crl: x509.CertificateRevocationList, at: datetime) -> bool:
    """Whether ``at`` is within the CRL's thisUpdate..nextUpdate (RFC 5280 §5.1.2.4, §5.1.2.5)."""
    next_update = crl.next_update_utc
    return crl.last_update_utc <= at and (next_update is None or at <= next_update)


def _pin(cert_der: bytes, verified: VerifiedEvidence, document: _Document) -> PinnedCas:
    """Check the binding of ``verified`` to ``cert_der``, the log key and (when the document
    names them) the witnesses; the pin."""
    log_key, witnesses = document.log_key, document.witnesses
    try:
        check_binding(verified, cas_binding(cert_der, log_key, witnesses))
    except BindingError:
        what = "log key and witnesses" if witnesses is not None else "log key"
        raise BindingError(
            f"the CAS's evidence is not bound to the TLS certificate and {what} it presented"
        ) from None
    try:
        pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
    except ValueError:
        raise ParseError("the CAS's TLS certificate is not DER X.509", structure="CAS certificate") from None
    digest = hashlib.sha256(cert_der).hexdigest()
    return PinnedCas("", pem, digest, log_key, verified, document.obtained_at, witnesses)


def verify_cas_document(
    cert_der: bytes,
    body: bytes,
    *,
    sim_key_pem: bytes | None,
    at: datetime,
    collateral: DcapCollateralSource | None = None,
    amd_roots: AmdRootStore | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
) -> PinnedCas:
    """The verification core of :func:`verify_cas_evidence` without its appraisal: the document
    is parsed, its evidence verified (signatures, certificate chains, collateral) and its binding
    to ``cert_der`` and the log key checked. Debug mode, the TCB status and advisories are
    *reported* in the result (``evidence.claims["debug"]``, ``evidence.tcb_status``,
    ``evidence.advisory_ids``), not judged: that is the client's decision. The CAS runs this on
    its own document before publishing it (:mod:`confide.cas.self_check`), with
    ``min_tcb_evaluation_data_number`` of ``cas serve --min-tcb-eval-number``: DCAP evidence
    verified with older collateral is refused (:class:`~confide.errors.CollateralOutdatedError`)
    before the binding is checked; other platforms' evidence is not affected."""
    verified, document = _verify_document(
        body, sim_key_pem=sim_key_pem, at=at, collateral=collateral, amd_roots=amd_roots
    )
    if min_tcb_evaluation_data_number is not None and verified.tcb_evaluation is not None:
        verified = require_minimum(
            verified,
            min_tcb_evaluation_data_number,
            "cas serve --min-tcb-eval-number",
            ", the CAS's own evidence",
        )
    return _pin(cert_der, verified, document)


def verify_cas_evidence(
    cert_der: bytes,
    body: bytes,
    *,
    sim_key_pem: bytes | None,
    at: datetime,
    measurements: tuple[str, ...] = (),
    collateral: DcapCollateralSource | None = None,
    tolerate: tuple[Tolerance, ...] = (),
    ignore_advisories: tuple[str, ...] = (),
    amd_roots: AmdRootStore | None = None,
    expect: Mapping[str, tuple[str, ...]] | None = None,
    expect_witnesses: WitnessExpectation | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
) -> PinnedCas:
    """Verify the CAS's evidence document ``body`` for the certificate ``cert_der`` it was
    served with; see :func:`attest_cas`."""
    verified, document = _verify_document(
        body, sim_key_pem=sim_key_pem, at=at, collateral=collateral, amd_roots=amd_roots
    )
    if min_tcb_evaluation_data_number is not None:
        # As confide evidence verify --min-tcb-eval-number N|auto: CollateralOutdatedError (exit
        # 62), a UsageError for evidence of a platform without Intel collateral; with auto, the
        # list and the requirement in the pinned evidence's details.
        verified = require_minimum(
            verified, min_tcb_evaluation_data_number, "cas attest --min-tcb-eval-number"
        )
    # The same tolerance rules as a policy's security.attestation (confide.policy.appraise);
    # simulated evidence is the caller's explicit choice (--sim-key).
    try:
        security = AttestationSecurity(
            tolerate=(*tolerate, *((Tolerance.SIMULATION,) if verified.simulated else ())),
            ignore_advisories=ignore_advisories,
        )
    except ValidationError as exc:
        raise UsageError(f"--tolerate/--ignore-advisory: {exc.errors()[0]['msg']}") from None
    reasons, _tolerated = check_security(verified, security)
    if reasons:
        raise AppraisalError(
            "the CAS's evidence is not acceptable: "
            + "; ".join(str(r) for r in reasons)
            + " (--tolerate, --ignore-advisory)",
            problems=reasons,
        )
    claim = MEASUREMENT_CLAIMS[verified.platform]
    mismatches: list[str] = []
    if measurements:
        got = str(verified.claims.get(claim, "")).lower()
        if not any(hmac.compare_digest(got, m) for m in measurements):
            mismatches.append(
                f"the CAS measures {claim} {got[:32]}…, expected one of --measurement"
                f" {', '.join(m[:16] + '…' for m in measurements)}"
            )
    mismatches += expected_claim_mismatches(verified.claims, expect or {})
    if mismatches:
        raise MeasurementError("; ".join(mismatches))
    pinned = _pin(cert_der, verified, document)  # the witnesses are judged once bound
    if expect_witnesses is not None:
        refused = witness_mismatches(pinned.witnesses, expect_witnesses)
        if refused:
            raise AppraisalError("the CAS is not acceptable: " + "; ".join(refused), problems=refused)
    return pinned


def _claim_text(value: ClaimValue, expected: str) -> tuple[str, str] | None:
    """(claim, expected) normalised for comparison, or ``None`` when ``value`` is not a single
    value. Hex text compares case-insensitively; integers compare by value (``expected`` in
    decimal or ``0x`` hex); booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return ("true" if value else "false"), expected.strip().lower()
    if isinstance(value, int):
        try:
            return str(value), str(int(expected.strip(), 0))
        except ValueError:
            return str(value), expected.strip()
    if isinstance(value, str):
        return value.lower(), expected.strip().lower()
    return None


def expected_claim_mismatches(
    claims: Mapping[str, ClaimValue], expect: Mapping[str, tuple[str, ...]]
) -> list[str]:
    """Every ``--expect CLAIM=VALUE`` the evidence does not satisfy (each claim must equal one
    of its values), in the order given; empty when all hold."""
    problems: list[str] = []
    for name, values in expect.items():
        if name not in claims:
            problems.append(f"the CAS's evidence has no claim {name!r} (it has: {', '.join(sorted(claims))})")
            continue
        value = claims[name]
        pairs = [_claim_text(value, v) for v in values]
        if any(p is None for p in pairs):
            problems.append(
                f"claim {name!r} is not a single value (a {type(value).__name__});"
                " --expect compares strings, numbers and booleans"
            )
            continue
        if not any(p is not None and hmac.compare_digest(p[0].encode(), p[1].encode()) for p in pairs):
            shown = str(value)
            problems.append(
                f"claim {name}: got {shown[:96]}{'…' if len(shown) > 96 else ''},"
                f" expected {' or '.join(values)}"
            )
    return problems


def attest_collateral(
    location: str | None,
    minimum: TcbEvaluationMinimum | None,
    *,
    option: str = "--min-tcb-eval-number auto",
    collateral_option: str = "--collateral DIR|URL",
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
) -> DcapCollateralSource | None:
    """The collateral source of ``cas attest --collateral`` (and ``Cas.attested(collateral=)``)
    for ``minimum``: with :class:`~confide.platforms.AutoTcbEvaluation` a PCS directory or URL
    that also brings Intel's TCB evaluation data numbers (a bundle file: :class:`UsageError`,
    as for ``cas serve``); ``None`` without a location. ``pcs_update`` (``--pcs-update``): the
    ``update`` a URL source asks Intel PCS for, ``pcs_tcb_eval_number`` (``--pcs-tcb-eval-number``)
    the one TCB evaluation (another location, or none, both, or a number below a fixed
    ``minimum``: :class:`UsageError`, :func:`~confide.collateral.dcap.check_pcs_update`)."""
    with_list = automatic_minimum_source(
        location, minimum, option=option, collateral_option=collateral_option
    )
    grace = minimum.grace if isinstance(minimum, AutoTcbEvaluation) else None
    check_pcs_update(location, pcs_update, pcs_tcb_eval_number, minimum)
    if location is None:
        return None
    return source_for(
        location, tcb_evaluation_numbers=with_list, tcb_recovery_grace=grace, pcs_update=pcs_update,
        pcs_tcb_eval_number=pcs_tcb_eval_number,
    )  # fmt: skip


def attest_cas(
    url: str,
    *,
    sim_key_pem: bytes | None,
    at: datetime | None = None,
    measurements: tuple[str, ...] = (),
    collateral: DcapCollateralSource | None = None,
    tolerate: tuple[Tolerance, ...] = (),
    ignore_advisories: tuple[str, ...] = (),
    amd_roots: AmdRootStore | None = None,
    expect: Mapping[str, tuple[str, ...]] | None = None,
    expect_witnesses: WitnessExpectation | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
) -> PinnedCas:
    """Verify the CAS's evidence and its binding to the TLS certificate and log key (and, from
    a CAS with a witness quorum, its witnesses).

    The evidence is verified by :class:`~confide.cas.verifier.PlatformVerifier`: simulated
    (``sim_key_pem``), SEV-SNP (the VCEK/VLEK from the document's aux blobs under the pinned AMD
    roots; ``amd_roots`` replaces them, for test PKIs only), TDX and SGX (DCAP, collateral from
    ``collateral``, never from the CAS). Debug TEEs and TCB statuses other than UpToDate are
    refused unless tolerated (``tolerate``, ``ignore_advisories``: the policy vocabulary of
    ``security.attestation``). With ``measurements`` (hex), the CAS must run one of them
    (:data:`MEASUREMENT_CLAIMS`); with ``expect`` (claim → allowed values), every named claim
    must equal one of its values (:func:`expected_claim_mismatches`); with ``expect_witnesses``
    the bound witness quorum must satisfy it (:func:`witness_mismatches`). The pin is refused
    otherwise, naming every mismatch. With ``min_tcb_evaluation_data_number`` (SGX/TDX only), the
    TCB Info and QE Identity the evidence was verified with must both be of that TCB evaluation
    or later (:func:`~confide.platforms.require_minimum`:
    :class:`~confide.errors.CollateralOutdatedError`); with
    :class:`~confide.platforms.AutoTcbEvaluation`, of the one Intel's TCB evaluation data numbers
    require at ``at`` (``collateral`` must bring them: :func:`attest_collateral`)."""
    cert_der, body = fetch_unverified(url, "/v1/cas/evidence")
    pinned = verify_cas_evidence(
        cert_der,
        body,
        sim_key_pem=sim_key_pem,
        at=at or datetime.now(UTC),
        measurements=measurements,
        collateral=collateral,
        tolerate=tolerate,
        ignore_advisories=ignore_advisories,
        amd_roots=amd_roots,
        expect=expect,
        expect_witnesses=expect_witnesses,
        min_tcb_evaluation_data_number=min_tcb_evaluation_data_number,
    )
    return dataclasses.replace(pinned, url=url)


def write_pin(pinned: PinnedCas, out: Path) -> None:
    """Replace ``out`` with the pinned certificate (PEM), atomically, through a temporary file
    of a random name created anew (:func:`confide.fsutil.write_atomic`: never through a
    symlink planted beside it); a path that cannot be written is a ``UsageError`` (or a
    ``StorageError`` for the storage's failures) naming ``--out``."""
    try:
        write_atomic(out, pinned.certificate_pem, mode=0o644)
    except OSError as exc:
        raise new_file_error(
            exc, f"--out {str(out)!r}: cannot write the pinned certificate: {exc.strerror or exc}"
        ) from None
