"""Where Intel DCAP collateral comes from: a ``DcapCollateralSource``.

Three sources, one method (``get_collateral``):

- :class:`BundleFileSource`: one JSON file in dcap-qvl's ``QuoteCollateralV3`` layout;
- :class:`PcsDirectorySource`: a directory of raw Intel PCS API v4 responses (see
  ``docs/collateral.md`` for the layout);
- :class:`PcsHttpSource`: Intel PCS or a PCCS over HTTPS (Intel PCS API v4 endpoints), with an
  on-disk cache that serves a response until its own ``nextUpdate``.

A quote whose certification data only names its PCK certificate (types 1-4: PPID or encrypted
PPID with the raw TCB, or the PCK leaf alone) also needs that certificate: the directory and
HTTP sources are also a :class:`PckCertificateSource` (``get_pck_certificate``), the HTTP one
through Intel PCS API v4 "Get PCK Certificate V4" (by encrypted PPID) or a PCCS (by QE ID).

Sources only fetch and parse; they never decide whether collateral is valid — the verifier
checks every signature, chain and date. Time and the HTTP transport are injected. The HTTP
source keeps a response on disk (until its own ``nextUpdate``) only when its signatures lead to
the pinned root (no dates): one answer that is not Intel's is not served again until a date it
names itself. One caching decision reads an unverified field: an HTTP source given
``min_tcb_evaluation_data_number`` neither serves from its disk cache nor keeps a TCB Info or
QE Identity whose ``tcbEvaluationDataNumber`` is below it (a response older than required is
asked for again, and refused when the service answers it again), so that collateral of a TCB
evaluation that was superseded is not cached until its ``nextUpdate``; given
``tcb_recovery_grace`` (``--min-tcb-eval-number auto``), the minimum that its TCB evaluation
data numbers set at its clock with that grace is one too (the list read unverified, for the
cache only; the verifier checks it and judges the verified numbers). A ``floor`` (the CAS's
:class:`~confide.cas.tcb_floor.TcbEvaluationFloor`: the highest numbers it has verified for the
platform) is a minimum of the same kind, per TCB Info (TEE type, FMSPC) and QE Identity (TEE
type).

With ``tcb_evaluation_numbers`` (``--min-tcb-eval-number auto``) the directory and HTTP sources
also bring Intel's TCB evaluation data numbers for the TEE type with the collateral
(``DcapCollateral.tcb_evaluation_numbers``: a ``{"tcbEvaluationDataNumbers":...}`` file of the
directory, or ``GET /{sgx,tdx}/certification/v4/tcbevaluationdatanumbers``, cached on disk like
TCB Info); the verifier checks it with the rest.

``update`` (``--pcs-update early|standard``): the HTTP source asks Intel PCS for TCB Info and QE
Identity of that update (Intel PCS API v4 "Get TCB Info" and "Get Intel's QE Identity", query
parameter ``update``; without it PCS serves ``standard``); its disk cache keys each answer by
the whole URL, so the kinds are cached apart. A PCCS may ignore the parameter: what comes back is
judged all the same (the verifier, the minimum, the floor).

``tcb_evaluation_data_number`` (``--pcs-tcb-eval-number N``): the HTTP source asks for TCB Info
and QE Identity as of TCB evaluation ``N`` (the same endpoints, query parameter
``tcbEvaluationDataNumber``, which Intel PCS API v4 does not take with ``update``: the two are
exclusive, :func:`check_pcs_update`). An answer whose ``tcbEvaluationDataNumber`` is not ``N`` (a
PCCS that ignores the parameter, or serves another evaluation) is refused, read from the network or
from the disk cache (:class:`CollateralMissingError`); a 404 or 410 answer (Intel PCS: a number it
does not, or no longer, serve) is a :class:`CollateralMissingError` naming ``N``. The disk cache
keys by the whole URL: answers for ``N`` never serve a request without it, nor the reverse. With
the TCB evaluation data numbers (``--min-tcb-eval-number auto``), an ``N`` the list does not name,
or below the minimum it sets, is refused before TCB Info is asked for
(:func:`check_asked_evaluation`; the list read unverified: a refusal only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide import jsonstrict
from confide.collateral import cache_dir as default_cache_dir
from confide.collateral import is_url, public_url
from confide.errors import (
    CertificateChainError,
    CollateralMissingError,
    CollateralOutdatedError,
    ConfideError,
    NetworkError,
    ParseError,
    StorageError,
    UsageError,
)
from confide.evidence.dcap import CERT_TYPE_PPID_CLEARTEXT, CERT_TYPE_PPID_RSA3072, PckCertId, TeeType
from confide.evidence.dcap_collateral import (
    MAX_JSON_SIZE,
    PCK_CHAIN_LENGTH,
    DcapCollateral,
    PckCertificate,
    TcbEvaluationNumbersText,
    split_pcs_response,
)
from confide.evidence.pck import PckExtension, parse_pck_extension
from confide.evidence.pem import normalise_pem, parse_pem_chain
from confide.fsutil import read_bounded, write_atomic
from confide.httpbody import answer_client, fetch
from confide.platforms import MAX_TCB_EVAL_NUMBER
from confide.verify.dcap import DcapVerifier, pck_lookup
from confide.verify.result import TcbEvalNumber, TcbEvaluationNumbers
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_TCB_SIGNING_2025_DER
from confide.verify.x509util import (
    CERTIFICATE_ERRORS,
    check_certificate_fields,
    check_crl_fields,
    check_pinned_root,
    load_der_certificate,
    verify_chain_signatures,
)

__all__ = [
    "PCS_API_KEY_ENV",
    "PCS_UPDATES",
    "BundleFileSource",
    "DcapCollateralSource",
    "PckCertificateSource",
    "PcsDirectorySource",
    "PcsHttpSource",
    "TcbEvaluationNumbersSource",
    "check_asked_evaluation",
    "check_pcs_update",
    "crl_from_bytes",
    "source_for",
    "unverified_tcb_evaluation_numbers",
    "verify_pck_certificate",
]

PCS_API_KEY_ENV = "CONFIDE_PCS_API_KEY"
"""The Intel PCS subscription key (``Ocp-Apim-Subscription-Key``) for PCK certificate look-ups
by ``--collateral https://api.trustedservices.intel.com``; never logged nor shown."""
PCK_CERT_CACHE_TIME = timedelta(days=1)
"""How long a fetched PCK certificate is served from the disk cache (at most until its
notAfter): a PCK certificate has no nextUpdate, and the PCS may issue another for the same raw
TCB after a TCB recovery."""

MAX_RESPONSE_SIZE = 4 << 20
ANSWER_TIME = 60.0
"""Seconds one answer of the PCS/PCCS may take to arrive, its connection, status line, headers
and body (:func:`confide.httpbody.fetch`): the read timeout (30 s) bounds each wait for more
bytes only. Longer is a :class:`NetworkError`."""
PCS_UPDATES = ("early", "standard")
"""The values of Intel PCS API v4's ``update`` query parameter of TCB Info and QE Identity
(``--pcs-update``): ``early``, the collateral of the newest TCB evaluation from the day of its
TCB recovery event; ``standard`` (PCS's default), that of an evaluation about twelve months
later."""
EvaluationFloor = Callable[[str, str, str], int]
"""(piece ``tcbInfo`` or ``enclaveIdentity``, TEE type ``sgx``/``tdx``, FMSPC hex) → the lowest
tcbEvaluationDataNumber to keep or serve (0: any);
:meth:`confide.cas.tcb_floor.TcbEvaluationFloor.minimum`."""


class DcapCollateralSource(Protocol):
    """One method: the collateral for a platform (FMSPC), its PCK CA and its TEE type."""

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral: ...


@runtime_checkable
class PckCertificateSource(Protocol):
    """One method: the PCK certificate (and issuer chain) a quote's certification data of type
    1-4 names (:class:`~confide.evidence.dcap.PckCertId`), unverified."""

    def get_pck_certificate(self, cert_id: PckCertId) -> PckCertificate: ...


@runtime_checkable
class TcbEvaluationNumbersSource(Protocol):
    """One method: Intel's TCB evaluation data numbers response for a TEE type and its issuer
    chain (DER, leaf first), unverified (:class:`PcsDirectorySource`, :class:`PcsHttpSource`)."""

    def get_tcb_evaluation_numbers(self, tee: TeeType) -> tuple[bytes, tuple[bytes, ...]]: ...


def verify_pck_certificate(pck: PckCertificate, root_der: bytes = INTEL_SGX_ROOT_CA_DER) -> PckExtension:
    """The SGX extension of ``pck`` once its leaf and CA chain to the pinned root (signatures
    only): what a source checks before it keeps a PCK certificate on disk, and again when it
    reads one back. The verifier checks all of it (dates, CRL, platform) at every use."""
    if len(pck.issuer_chain) != PCK_CHAIN_LENGTH - 1:
        raise CertificateChainError(f"PCK issuer chain has {len(pck.issuer_chain)} certificates, expected 2")
    check_pinned_root(pck.issuer_chain[-1], root_der, hashlib.sha256(root_der).digest(), "PCK certificate")
    leaf = load_der_certificate(pck.leaf, "pck_certificate")
    ca = load_der_certificate(pck.issuer_chain[0], "pck_certificate.issuer_chain[0]")
    root = load_der_certificate(root_der, "pinned root")
    verify_chain_signatures((leaf, ca), root, root_der, "PCK certificate")
    return _leaf_extension(pck.leaf)


def _leaf_extension(der: bytes) -> PckExtension:
    leaf = load_der_certificate(der, "pck_certificate")
    try:
        ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value
    except x509.ExtensionNotFound:
        raise CertificateChainError("PCK leaf certificate has no SGX extension") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ParseError("unexpected SGX extension type", structure="pck_certificate")
    return parse_pck_extension(ext.value)


def crl_from_bytes(data: bytes, what: str) -> bytes:
    """A CRL as DER, from DER, PEM or hex text (PCCS serves hex)."""
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER)
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError
            raise ParseError("invalid PEM CRL", structure=what) from None
    if stripped[:1] != b"\x30":
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ParseError("expected a CRL in DER, PEM or hex", structure=what) from None
    return data


@dataclass(frozen=True)
class BundleFileSource:
    """A dcap-qvl ``QuoteCollateralV3`` JSON file (same collateral for every quote)."""

    path: Path

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
        # At most MAX_JSON_SIZE + 1 bytes (what the bundle's parse accepts), a regular file only:
        # neither a huge file nor a FIFO/device given as the bundle is read without bound.
        try:
            text = read_bounded(
                self.path, MAX_JSON_SIZE, label="collateral bundle", expected="a collateral bundle (JSON)",
                structure="collateral_bundle", regular=True,
            )  # fmt: skip
        except StorageError as exc:
            raise CollateralMissingError(f"cannot read {exc.message}") from None
        return DcapCollateral.from_dcap_qvl_json(text)


def _member(obj: dict[str, Any], key: str, default: str = "") -> str:
    """A string member of an unverified TCB Info / QE Identity in a directory file, for choosing
    among the files only; ``default`` when absent, "" when not a string (the file then matches
    nothing: the verifier parses and checks what is chosen)."""
    value = obj.get(key, default)
    return value if isinstance(value, str) else ""


def _head(path: Path) -> bytes | None:
    """At most MAX_RESPONSE_SIZE + 1 bytes of a directory file (a larger one is skipped by the
    caller): a huge file is not read whole to be cut afterwards. ``None``: it cannot be read
    (skipped too)."""
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_RESPONSE_SIZE + 1)
    except OSError:
        return None


def _cn(der: bytes) -> str:
    """The subject CN of a certificate in a directory file, "" when it does not parse (the file
    is then not recognised; a certificate used later is parsed and checked again)."""
    try:
        cert = check_certificate_fields(x509.load_der_x509_certificate(der))
    except CERTIFICATE_ERRORS:
        return ""
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _crl_issuer_cn(der: bytes) -> str:
    try:
        crl = check_crl_fields(x509.load_der_x509_crl(der))
    except CERTIFICATE_ERRORS:
        return ""
    attrs = crl.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


_CA_CN = {"platform": "Intel SGX PCK Platform CA", "processor": "Intel SGX PCK Processor CA"}


@dataclass(frozen=True)
class PcsDirectorySource:
    """A directory of raw Intel PCS API v4 responses, recognised by content, not by name:

    - JSON files ``{"tcbInfo":...,"signature":...}`` (any number; chosen by FMSPC and SGX/TDX)
      and ``{"enclaveIdentity":...,"signature":...}`` (chosen by id QE / TD_QE);
    - CRLs (DER, PEM or hex), told apart by issuer: Root CA CRL, PCK Platform/Processor CA CRL;
    - PEM files with the issuer chains (``TCB-Info-Issuer-Chain`` etc. headers). Without one,
      the embedded Intel SGX TCB Signing certificate (2025 issuance) and root are used;
    - JSON files ``{"tcbEvaluationDataNumbers":...,"signature":...}`` (chosen by id SGX / TDX),
      included in the collateral when ``tcb_evaluation_numbers`` (``--min-tcb-eval-number auto``).
    """

    path: Path
    tcb_evaluation_numbers: bool = False

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.path.iterdir() if p.is_file())
        except OSError as exc:
            raise CollateralMissingError(
                f"cannot list collateral directory {self.path}: {exc.strerror}"
            ) from None

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
        want_tcb = "TDX" if tee == TeeType.TDX else "SGX"
        want_qe = "TD_QE" if tee == TeeType.TDX else "QE"
        tcb: tuple[bytes, bytes] | None = None
        qe: tuple[bytes, bytes] | None = None
        root_crl = pck_crl = None
        signing_chain: tuple[bytes, ...] | None = None
        pck_issuer_chain: tuple[bytes, ...] | None = None
        skipped: list[str] = []
        for f in self._files():
            data = _head(f)
            if data is None or len(data) > MAX_RESPONSE_SIZE:
                skipped.append(f"{f.name} ({'unreadable' if data is None else 'too large'})")
                continue
            try:
                kind, value = _classify(data, f.name)
            except ParseError as exc:
                skipped.append(f"{f.name} ({exc.message})")
                continue
            if kind == "tcbInfo":
                text, sig = value
                obj = jsonstrict.loads(text, structure=f.name)
                newer = tcb is None or _member(obj, "issueDate") > _member(
                    jsonstrict.loads(tcb[0]), "issueDate"
                )
                if (
                    _member(obj, "fmspc").lower() == fmspc.hex()
                    and _member(obj, "id", "SGX") == want_tcb
                    and newer
                ):
                    tcb = (text, sig)
            elif kind == "enclaveIdentity":
                text, sig = value
                obj = jsonstrict.loads(text, structure=f.name)
                newer = qe is None or _member(obj, "issueDate") > _member(
                    jsonstrict.loads(qe[0]), "issueDate"
                )
                if _member(obj, "id") == want_qe and newer:
                    qe = (text, sig)
            elif kind == "chain":
                chain = value
                names = [_cn(d) for d in chain]
                if names and names[0] == "Intel SGX TCB Signing":
                    signing_chain = chain
                elif names and names[0] == _CA_CN.get(ca):
                    pck_issuer_chain = chain
            elif kind == "crl":
                (der,) = value
                issuer = _crl_issuer_cn(der)
                if issuer == "Intel SGX Root CA":
                    root_crl = der
                elif issuer == _CA_CN.get(ca):
                    pck_crl = der
        missing = [
            name
            for name, value in (
                ("TCB Info", tcb),
                ("QE Identity", qe),
                ("Root CA CRL", root_crl),
                ("PCK CRL", pck_crl),
            )
            if value is None
        ]
        if missing or tcb is None or qe is None or root_crl is None or pck_crl is None:
            note = f"; skipped: {', '.join(skipped)}" if skipped else ""
            raise CollateralMissingError(
                f"{self.path} lacks {', '.join(missing)} for FMSPC {fmspc.hex()} ({want_tcb}, {ca} CA){note}"
            )
        signing = signing_chain or (INTEL_SGX_TCB_SIGNING_2025_DER, INTEL_SGX_ROOT_CA_DER)
        numbers, numbers_chain = (
            self.get_tcb_evaluation_numbers(tee) if self.tcb_evaluation_numbers else (None, ())
        )
        return DcapCollateral(
            pck_crl_issuer_chain=pck_issuer_chain or (),
            root_ca_crl=root_crl,
            pck_crl=pck_crl,
            tcb_info_issuer_chain=signing,
            tcb_info=tcb[0],
            tcb_info_signature=tcb[1],
            qe_identity_issuer_chain=signing,
            qe_identity=qe[0],
            qe_identity_signature=qe[1],
            tcb_evaluation_numbers=numbers,
            tcb_evaluation_numbers_issuer_chain=numbers_chain,
        )

    def get_tcb_evaluation_numbers(self, tee: TeeType) -> tuple[bytes, tuple[bytes, ...]]:
        """The TCB evaluation data numbers response of the directory for ``tee`` (a JSON file
        ``{"tcbEvaluationDataNumbers":...,"signature":...}`` whose ``id`` is SGX or TDX; the
        latest ``issueDate`` among several) and the TCB signing chain of the directory (as for
        TCB Info: Intel PCS serves the same chain), else the embedded one. Nothing verified."""
        want = "TDX" if tee == TeeType.TDX else "SGX"
        found: tuple[str, bytes] | None = None
        signing_chain: tuple[bytes, ...] | None = None
        for f in self._files():
            data = _head(f)
            if data is None or len(data) > MAX_RESPONSE_SIZE:
                continue
            try:
                kind, value = _classify(data, f.name)
            except ParseError:
                continue
            if kind == _TCB_EVAL_KEY:
                text, _sig = value
                obj = jsonstrict.loads(text, structure=f.name)
                issued = _member(obj, "issueDate")
                if _member(obj, "id") == want and (found is None or issued > found[0]):
                    found = (issued, data)
            elif kind == "chain" and value and _cn(value[0]) == "Intel SGX TCB Signing":
                signing_chain = value
        if found is None:
            raise CollateralMissingError(
                f"{self.path} has no TCB evaluation data numbers for {want} (a file holding Intel PCS's "
                f"answer to GET /{want.lower()}/certification/v4/tcbevaluationdatanumbers)"
            )
        return found[1], signing_chain or (INTEL_SGX_TCB_SIGNING_2025_DER, INTEL_SGX_ROOT_CA_DER)

    def get_pck_certificate(self, cert_id: PckCertId) -> PckCertificate:
        """The PCK certificate of the quote's platform from a PEM file of the directory whose
        first certificate is an "Intel SGX PCK Certificate": leaf, PCK CA and root in one file,
        or the leaf alone with the directory's chain file of its CA (the PCK CRL issuer chain).
        The platform's: the quote's PCE ID and, for type 1, PPID (type 4: the quote's leaf);
        among several, the one certified at the raw TCB. Nothing is verified here."""
        want = pck_lookup(cert_id)
        leaves: list[tuple[bytes, ...]] = []
        ca_chains: dict[str, tuple[bytes, ...]] = {}
        for f in self._files():
            data = _head(f)
            if data is None or len(data) > MAX_RESPONSE_SIZE or b"-----BEGIN CERTIFICATE-----" not in data:
                continue
            try:
                chain = tuple(parse_pem_chain(normalise_pem(data, structure=f.name), structure=f.name))
            except ParseError:
                continue
            name = _cn(chain[0])
            if name == _PCK_LEAF_CN:
                leaves.append(chain)
            elif name in _CA_CN.values():
                ca_chains[name] = chain
        matches: list[tuple[tuple[bytes, ...], PckExtension]] = []
        for chain in leaves:
            try:
                ext = _leaf_extension(chain[0])
            except ConfideError:
                continue
            if cert_id.leaf_der is not None:
                if chain[0] == cert_id.leaf_der:
                    matches.append((chain, ext))
            elif ext.pce_id == cert_id.pce_id and (
                cert_id.cert_type != CERT_TYPE_PPID_CLEARTEXT or ext.ppid == cert_id.ppid
            ):
                matches.append((chain, ext))
        exact = [m for m in matches if (m[1].cpu_svn, m[1].pce_svn) == (want.cpu_svn, want.pce_svn)]
        picked = exact or matches
        leaves_found = {chain[0] for chain, _ in picked}
        if len(leaves_found) != 1:
            problem = (
                "has none" if not leaves_found else f"has {len(leaves_found)}, none certified at the raw TCB"
            )
            raise CollateralMissingError(
                f"{self.path} {problem} of the PCK certificates for the quote's {cert_id.describe()}"
            )
        chain, _ = picked[0]
        if len(chain) == PCK_CHAIN_LENGTH:
            return PckCertificate(chain[0], chain[1:])
        issuer = _issuer_cn(chain[0])
        ca_chain = ca_chains.get(issuer)
        if len(chain) != 1 or ca_chain is None:
            raise CollateralMissingError(
                f"{self.path} has the PCK certificate for the quote's {cert_id.describe()} but not "
                f"its issuer chain ({issuer or 'unknown issuer'} and root)"
            )
        return PckCertificate(chain[0], ca_chain)


_PCK_LEAF_CN = "Intel SGX PCK Certificate"


def _issuer_cn(der: bytes) -> str:
    try:
        cert = check_certificate_fields(x509.load_der_x509_certificate(der))
    except CERTIFICATE_ERRORS:
        return ""
    attrs = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


_TCB_EVAL_KEY = "tcbEvaluationDataNumbers"


def _classify(data: bytes, name: str) -> tuple[str, Any]:
    """What a file of a PCS directory holds: a signed TCB Info / identity, a chain, a CRL."""
    head = data.lstrip()[:32]
    if head.startswith(b'{"tcbInfo"'):
        return "tcbInfo", split_pcs_response(data, "tcbInfo")
    if head.startswith(b'{"enclaveIdentity"'):
        return "enclaveIdentity", split_pcs_response(data, "enclaveIdentity")
    if head.startswith(b'{"' + _TCB_EVAL_KEY.encode()):
        return _TCB_EVAL_KEY, split_pcs_response(data, _TCB_EVAL_KEY)
    if head.startswith(b"{"):
        return "other", None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "chain", tuple(parse_pem_chain(normalise_pem(data, structure=name), structure=name))
    return "crl", (crl_from_bytes(data, name),)


# --- Intel PCS / PCCS over HTTP ------------------------------------------------------------

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
INTEL_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def _next_update(kind: str, body: bytes, now: datetime) -> datetime | None:
    """When a response stops being current: its own nextUpdate (PCS API v4); a PCK certificate
    :data:`PCK_CERT_CACHE_TIME` after its fetch, or its notAfter if that is earlier."""
    try:
        if kind == "pckcert":
            ders = parse_pem_chain(normalise_pem(body, structure="pckcert"), structure="pckcert")
            not_after = load_der_certificate(ders[0], "pckcert").not_valid_after_utc
            return min(not_after, now + PCK_CERT_CACHE_TIME)
        if kind in ("tcb", "qe", "tcbeval"):
            key = {"tcb": "tcbInfo", "qe": "enclaveIdentity", "tcbeval": _TCB_EVAL_KEY}[kind]
            text, _ = split_pcs_response(body, key)
            value = jsonstrict.loads(text)["nextUpdate"]
            when = datetime.fromisoformat(value) if isinstance(value, str) else None
            # Intel PCS API v4 gives nextUpdate in UTC with its zone ("…Z"). One without a zone
            # (an unsigned answer: its signature is checked later, by the verifier) cannot be
            # compared with the clock: the answer is not cached, and the verifier refuses it.
            return when if when is not None and when.tzinfo is not None else None
        crl = x509.load_der_x509_crl(crl_from_bytes(body, kind))
        next_update: datetime | None = crl.next_update_utc
        return next_update
    except (ConfideError, ValueError, KeyError, TypeError, x509.InvalidVersion):
        # InvalidVersion (a CRL version other than v1/v2, RFC 5280 §5.1.2.1) is not a
        # ValueError: such an answer is not cached either, and the verifier refuses it.
        return None


def _pem_ders(pem: bytes, what: str) -> tuple[bytes, ...]:
    """The DER certificates of an issuer chain header (re-flowed PEM)."""
    return tuple(parse_pem_chain(normalise_pem(pem, structure=what), structure=what))


_LONG_PPID = re.compile(r"(encrypted_ppid=[0-9a-fA-F]{16})[0-9a-fA-F]+")


class PcsHttpSource:
    """Intel PCS API v4 (or a PCCS at ``base_url``), cached on disk until ``nextUpdate``.

    Endpoints (Intel PCS API v4): ``/{sgx|tdx}/certification/v4/tcb?fmspc=``,
    ``/{sgx|tdx}/certification/v4/qe/identity``, ``/sgx/certification/v4/pckcrl?ca=&encoding=der``;
    issuer chains come URL-encoded in the ``TCB-Info-Issuer-Chain``,
    ``SGX-Enclave-Identity-Issuer-Chain`` and ``SGX-PCK-CRL-Issuer-Chain`` headers. The Root CA
    CRL comes from ``root_crl_url`` (a PCCS serves it at ``/sgx/certification/v4/rootcacrl``).

    PCK certificates (:meth:`get_pck_certificate`), ``GET /sgx/certification/v4/pckcert``: from
    Intel PCS ("Get PCK Certificate V4") by ``encrypted_ppid``, ``cpusvn``, ``pcesvn`` and
    ``pceid`` with the subscription key ``api_key`` in ``Ocp-Apim-Subscription-Key`` (sent with
    this request only, never logged); from a PCCS by ``qeid``, ``cpusvn``, ``pcesvn`` and ``pceid``
    (and ``encrypted_ppid`` when the quote has one, for a PCCS that fetches from Intel on a
    miss). ``pck_query``: ``"pcs"`` or ``"pccs"`` (default: ``"pcs"`` for Intel's URL). All
    values are hex of the quote's bytes (PCESVN and PCE ID little-endian, as in the quote). The
    leaf is the PEM body, its issuer chain the URL-encoded ``SGX-PCK-Certificate-Issuer-Chain``
    header. A PCK certificate is kept on disk only once it chains to the pinned root, and is
    checked so again when read back (:func:`verify_pck_certificate`).
    """

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        *,
        cache_dir: Path,
        root_crl_url: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        client: httpx2.Client | None = None,
        api_key: str | None = None,
        pck_query: str | None = None,
        root_ca_der: bytes = INTEL_SGX_ROOT_CA_DER,
        min_tcb_evaluation_data_number: int | None = None,
        floor: EvaluationFloor | None = None,
        tcb_evaluation_numbers: bool = False,
        tcb_recovery_grace: timedelta | None = None,
        update: str | None = None,
        tcb_evaluation_data_number: int | None = None,
        answer_time: float = ANSWER_TIME,
    ) -> None:
        if update is not None and update not in PCS_UPDATES:
            raise ValueError(f"update is {update!r}, expected 'early' or 'standard'")
        if tcb_evaluation_data_number is not None:
            if update is not None:
                raise ValueError("update and tcb_evaluation_data_number are exclusive")
            if (
                type(tcb_evaluation_data_number) is not int
                or not 1 <= tcb_evaluation_data_number <= MAX_TCB_EVAL_NUMBER
            ):
                raise ValueError(
                    f"tcb_evaluation_data_number is {tcb_evaluation_data_number!r}, "
                    f"expected 1..{MAX_TCB_EVAL_NUMBER}"
                )
        self.update = update
        self.tcb_evaluation_data_number = tcb_evaluation_data_number
        self.base_url = base_url.rstrip("/")
        self.tcb_evaluation_numbers = tcb_evaluation_numbers
        self.tcb_recovery_grace = tcb_recovery_grace
        self.min_tcb_evaluation_data_number = min_tcb_evaluation_data_number
        self.floor = floor
        self.cache_dir = cache_dir
        if root_crl_url is None:
            root_crl_url = (
                INTEL_ROOT_CRL_URL
                if self.base_url == INTEL_PCS_URL
                else f"{self.base_url}/sgx/certification/v4/rootcacrl"
            )
        self.root_crl_url = root_crl_url
        self.clock = clock
        if pck_query is None:
            pck_query = "pcs" if self.base_url == INTEL_PCS_URL else "pccs"
        if pck_query not in ("pcs", "pccs"):
            raise ValueError(f"pck_query is {pck_query!r}, expected 'pcs' or 'pccs'")
        self.pck_query = pck_query
        self.root_ca_der = root_ca_der
        self._verifier = DcapVerifier(root_ca_der=root_ca_der, chain_cache_size=16, collateral_cache_size=16)
        self._api_key = api_key
        self.answer_time = answer_time
        # client: one keeping no connection alive (each answer's deadline sees its connection made)
        self.client = client or answer_client(timeout=30.0, follow_redirects=False)

    def __repr__(self) -> str:  # never the API key
        update = f", update={self.update!r}" if self.update is not None else ""
        if self.tcb_evaluation_data_number is not None:
            update += f", tcb_evaluation_data_number={self.tcb_evaluation_data_number}"
        return f"PcsHttpSource({public_url(self.base_url)!r}, pck_query={self.pck_query!r}{update})"

    @staticmethod
    def _shown(url: str) -> str:
        """``url`` for messages: :func:`public_url`, an encrypted PPID cut to its first bytes."""
        return _LONG_PPID.sub(r"\1...", public_url(url))

    def _cache_path(self, url: str) -> Path:
        return self.cache_dir / hashlib.sha256(url.encode()).hexdigest()

    def _fetch(
        self,
        url: str,
        kind: str,
        chain_header: str | None,
        *,
        headers: dict[str, str] | None = None,
        check: Callable[[bytes, bytes], object] | None = None,
        signed: Callable[[bytes, bytes], object] | None = None,
        missing: Callable[[int], str | None] | None = None,
    ) -> tuple[bytes, bytes]:
        """(body, issuer chain PEM) from the cache if still current, else from the network.
        ``check`` (raises ConfideError): what a response must pass to be returned and kept on
        disk. ``signed`` (raises ConfideError): what it must pass to be kept on disk only (its
        signatures lead to the pinned root); one that does not is returned, for the verifier to
        refuse with its own error, but not kept until the ``nextUpdate`` it names itself. A
        cached one that no longer passes either is fetched again. ``missing``: HTTP status →
        what a :class:`CollateralMissingError` says of it (``None``: the usual handling)."""
        path = self._cache_path(url)
        now = self.clock()
        try:
            cached = jsonstrict.loads(path.read_bytes(), structure="collateral cache file")
            expires = datetime.fromisoformat(cached["expires"])
            if now < expires:
                body, chain = bytes.fromhex(cached["body"]), bytes.fromhex(cached["chain"])
                try:
                    for must in (check, signed):
                        if must is not None:
                            must(body, chain)
                    return body, chain
                except ConfideError:
                    pass  # not what was written, or no longer chains: fetch again
        except (OSError, ValueError, KeyError, TypeError, ParseError):
            pass
        shown = self._shown(url)

        def status(response: httpx2.Response) -> None:
            said = missing(response.status_code) if missing is not None else None
            if said is not None:
                raise CollateralMissingError(f"GET {shown}: {response.status_code}, {said}")
            if response.status_code == 404:
                raise CollateralMissingError(
                    f"GET {shown}: 404, the collateral service has nothing for this platform"
                )
            if response.status_code != 200:
                raise NetworkError(f"GET {shown}: HTTP {response.status_code}, expected 200")

        try:
            # Read at most MAX_RESPONSE_SIZE (Intel PCS API v4 answers are a few KiB, a PCK CRL
            # some hundreds): a hostile or broken service cannot make the source read, and hold,
            # an answer without bound (a Content-Length above it is refused first), nor wait for
            # it longer than answer_time, its head included.
            answer = fetch(
                self.client, "GET", url, headers=headers, limit=MAX_RESPONSE_SIZE, within=self.answer_time,
                check=status, too_large=lambda how: NetworkError(f"GET {shown}: the answer {how}"),
            )  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"GET {shown} failed: {type(exc).__name__}") from None
        body, response_headers = answer.content, answer.headers
        chain = b""
        if chain_header:
            raw = response_headers.get(chain_header)
            if raw is None:
                raise CollateralMissingError(f"GET {self._shown(url)}: no {chain_header} header")
            chain = urllib.parse.unquote(raw).encode()
        if check is not None:
            check(body, chain)
        keep = True
        if signed is not None:
            try:
                signed(body, chain)
            except ConfideError:
                keep = False
        expires_at = _next_update(kind, body, now) if keep else None
        if expires_at is not None and now < expires_at:
            record = {
                "url": self._shown(url),
                "expires": expires_at.isoformat(),
                "body": body.hex(),
                "chain": chain.hex(),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(record).encode())
        return body, chain

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
        if ca not in _CA_CN:
            raise ParseError(
                f"got PCK CA {ca!r}, expected platform or processor", structure="collateral request"
            )
        tee_path = "tdx" if tee == TeeType.TDX else "sgx"
        v4 = f"{self.base_url}/{{}}/certification/v4"
        # update=: Intel PCS API v4 "Get TCB Info" and "Get Intel's QE Identity" (module docstring)
        tcb_url = f"{v4.format(tee_path)}/tcb?fmspc={fmspc.hex()}"
        qe_url = f"{v4.format(tee_path)}/qe/identity"
        # tcbEvaluationDataNumber=: the same endpoints, one evaluation (module docstring)
        asked = self.tcb_evaluation_data_number
        if self.update is not None:
            tcb_url += f"&update={self.update}"
            qe_url += f"?update={self.update}"
        elif asked is not None:
            tcb_url += f"&tcbEvaluationDataNumber={asked}"
            qe_url += f"?tcbEvaluationDataNumber={asked}"
        floor_key = (tee_path, fmspc.hex())
        numbers, numbers_chain = (
            self.get_tcb_evaluation_numbers(tee) if self.tcb_evaluation_numbers else (None, ())
        )
        listed = self._automatic_minimum(numbers)
        if asked is not None:
            check_asked_evaluation(
                asked,
                numbers,
                self.clock(),
                self.tcb_recovery_grace,
                tee=tee_path.upper(),
                where=f"from {public_url(self.base_url)}",
            )
        tcb_check = self._evaluation_check(tcb_url, "tcbInfo", floor_key, listed)
        tcb_body, tcb_chain = self._fetch(
            tcb_url,
            "tcb",
            "TCB-Info-Issuer-Chain",
            check=tcb_check,
            signed=self._signed_json("tcbInfo"),
            missing=self._asked_missing,
        )
        qe_body, qe_chain = self._fetch(
            qe_url,
            "qe",
            "SGX-Enclave-Identity-Issuer-Chain",
            check=self._evaluation_check(qe_url, "enclaveIdentity", floor_key, listed),
            signed=self._signed_json("enclaveIdentity"),
            missing=self._asked_missing,
        )
        crl_body, crl_chain = self._fetch(
            f"{v4.format('sgx')}/pckcrl?ca={ca}&encoding=der",
            "crl",
            "SGX-PCK-CRL-Issuer-Chain",
            signed=self._signed_crl("PCK CRL", with_chain=True),
        )
        root_body, _ = self._fetch(
            self.root_crl_url, "crl", None, signed=self._signed_crl("Root CA CRL", with_chain=False)
        )
        tcb_text, tcb_sig = split_pcs_response(tcb_body, "tcbInfo")
        qe_text, qe_sig = split_pcs_response(qe_body, "enclaveIdentity")

        def chain(pem: bytes, what: str) -> tuple[bytes, ...]:
            return tuple(parse_pem_chain(normalise_pem(pem, structure=what), structure=what))

        return DcapCollateral(
            pck_crl_issuer_chain=chain(crl_chain, "SGX-PCK-CRL-Issuer-Chain"),
            root_ca_crl=crl_from_bytes(root_body, "root_ca_crl"),
            pck_crl=crl_from_bytes(crl_body, "pck_crl"),
            tcb_info_issuer_chain=chain(tcb_chain, "TCB-Info-Issuer-Chain"),
            tcb_info=tcb_text,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=chain(qe_chain, "SGX-Enclave-Identity-Issuer-Chain"),
            qe_identity=qe_text,
            qe_identity_signature=qe_sig,
            tcb_evaluation_numbers=numbers,
            tcb_evaluation_numbers_issuer_chain=numbers_chain,
        )

    def tcb_evaluation_numbers_url(self, tee: TeeType) -> str:
        tee_path = "tdx" if tee == TeeType.TDX else "sgx"
        return f"{self.base_url}/{tee_path}/certification/v4/tcbevaluationdatanumbers"

    def get_tcb_evaluation_numbers(self, tee: TeeType) -> tuple[bytes, tuple[bytes, ...]]:
        """Intel PCS API v4 ``GET /{sgx,tdx}/certification/v4/tcbevaluationdatanumbers`` (a PCCS
        serves the same path), its issuer chain in the ``TCB-Evaluation-Data-Numbers-Issuer-Chain``
        header; kept on disk until its ``nextUpdate`` when its signature leads to the pinned root,
        as TCB Info."""
        url = self.tcb_evaluation_numbers_url(tee)
        body, chain = self._fetch(
            url,
            "tcbeval",
            "TCB-Evaluation-Data-Numbers-Issuer-Chain",
            signed=self._signed_json(_TCB_EVAL_KEY),
        )
        return body, _pem_ders(chain, "TCB-Evaluation-Data-Numbers-Issuer-Chain")

    # Intel PCS API v4 answers are kept on disk until their own nextUpdate only when their
    # signatures lead to the pinned root (DcapVerifier.check_signed_json, check_crl_signature;
    # no dates): an answer that is not Intel's (a broken or hostile PCCS, a corrupted one) must
    # not be served again until a date it names itself.
    def _signed_json(self, key: str) -> Callable[[bytes, bytes], None]:
        def signed(body: bytes, chain: bytes) -> None:
            text, sig = split_pcs_response(body, key)
            self._verifier.check_signed_json(_pem_ders(chain, key), text, sig, key)

        return signed

    def _signed_crl(self, what: str, *, with_chain: bool) -> Callable[[bytes, bytes], None]:
        def signed(body: bytes, chain: bytes) -> None:
            issuers = _pem_ders(chain, what) if with_chain else None
            self._verifier.check_crl_signature(crl_from_bytes(body, what), issuers, what)

        return signed

    def _automatic_minimum(self, numbers: bytes | None) -> tuple[int, str] | None:
        """With ``tcb_recovery_grace``: the minimum that the TCB evaluation data numbers response
        ``numbers`` sets at this source's clock, and why (read unverified, for the cache only:
        :meth:`_evaluation_check`); ``None`` without one, or for a response that does not parse
        (the verifier refuses it)."""
        listed = unverified_tcb_evaluation_numbers(numbers)
        if listed is None or self.tcb_recovery_grace is None:
            return None
        required = listed.required(self.clock(), self.tcb_recovery_grace)
        return required.number, f"--min-tcb-eval-number auto: {required.reason()}"

    def _asked_missing(self, status: int) -> str | None:
        """With ``tcb_evaluation_data_number``: what a 404 or 410 answer to a TCB Info or QE
        Identity request for it says (``_fetch``'s ``missing``)."""
        asked = self.tcb_evaluation_data_number
        if asked is None or status not in (404, 410):
            return None
        if status == 410:
            return (
                f"the collateral service no longer serves TCB evaluation data number {asked} "
                f"(--pcs-tcb-eval-number {asked}: Intel PCS answers 410 for a number it has dropped)"
            )
        return (
            f"the collateral service has no TCB evaluation data number {asked} for this platform "
            f"(--pcs-tcb-eval-number {asked}: a number it does not serve, or nothing for this FMSPC)"
        )

    def _evaluation_check(
        self, url: str, key: str, floor_key: tuple[str, str], listed: tuple[int, str] | None = None
    ) -> Callable[[bytes, bytes], None] | None:
        """With ``tcb_evaluation_data_number``, ``min_tcb_evaluation_data_number``, the
        automatic minimum ``listed`` (number, reason: :meth:`_automatic_minimum`) or a ``floor``:
        a check (``_fetch``) refusing a TCB Info or QE Identity response of another evaluation
        than the one asked for, or of an older one than required (module docstring). The number
        is read unverified: the verifier checks the signature over the same bytes, and the
        caller (``evidence verify --min-tcb-eval-number``, a policy, the CAS's floor) the
        verified numbers."""
        configured, floor, asked = (
            self.min_tcb_evaluation_data_number,
            self.floor,
            self.tcb_evaluation_data_number,
        )
        why = "the collateral service serves an older TCB evaluation than required"
        if listed is not None and (configured is None or listed[0] > configured):
            configured, why = listed[0], f"{why}: {listed[1]}"
        if configured is None and floor is None and asked is None:
            return None

        def check(body: bytes, _chain: bytes) -> None:
            text, _sig = split_pcs_response(body, key)
            number = jsonstrict.loads(text, structure=f"pcs_response.{key}").get("tcbEvaluationDataNumber")
            if not isinstance(number, int) or isinstance(number, bool):
                raise ParseError("missing or not an integer", structure=key, field="tcbEvaluationDataNumber")
            if asked is not None and number != asked:
                raise CollateralMissingError(
                    f"GET {self._shown(url)}: tcbEvaluationDataNumber {number}, expected {asked} "
                    f"(--pcs-tcb-eval-number {asked}: the collateral service ignored the parameter or "
                    "served another TCB evaluation; not used)"
                )
            if configured is not None and number < configured:
                raise CollateralOutdatedError(
                    f"GET {self._shown(url)}: tcbEvaluationDataNumber {number}, expected at least "
                    f"{configured} ({why})"
                )
            seen = floor(key, *floor_key) if floor is not None else 0
            if number < seen:
                cause = (
                    f"--pcs-tcb-eval-number {asked} asks for an older TCB evaluation than it has verified"
                    if asked is not None
                    else "the collateral service serves an older TCB evaluation than before"
                )
                raise CollateralOutdatedError(
                    f"GET {self._shown(url)}: tcbEvaluationDataNumber {number}, this CAS has already "
                    f"verified {seen} ({cause})"
                )

        return check

    def pck_url(self, cert_id: PckCertId) -> str:
        """The ``pckcert`` request for ``cert_id`` (class docstring)."""
        want = pck_lookup(cert_id)
        tcb = f"cpusvn={want.cpu_svn.hex()}&pcesvn={want.pce_svn_le.hex()}&pceid={want.pce_id.hex()}"
        url = f"{self.base_url}/sgx/certification/v4/pckcert"
        if self.pck_query == "pcs":
            if cert_id.cert_type != CERT_TYPE_PPID_RSA3072 or cert_id.encrypted_ppid is None:
                raise CollateralMissingError(
                    f"Intel PCS looks a PCK certificate up by the RSA-3072 encrypted PPID "
                    f"(certification data type 3); the quote's {cert_id.describe()} has none: "
                    "use a PCCS (it looks up by QE ID), or put the certificate in a --collateral DIR"
                )
            return f"{url}?encrypted_ppid={cert_id.encrypted_ppid.hex()}&{tcb}"
        url = f"{url}?qeid={want.qe_id.hex()}&{tcb}"
        if cert_id.cert_type == CERT_TYPE_PPID_RSA3072 and cert_id.encrypted_ppid is not None:
            url += f"&encrypted_ppid={cert_id.encrypted_ppid.hex()}"
        return url

    def get_pck_certificate(self, cert_id: PckCertId) -> PckCertificate:
        """The PCK certificate a quote's certification data (types 1-4) names (class docstring)."""
        url = self.pck_url(cert_id)
        headers = (
            {"Ocp-Apim-Subscription-Key": self._api_key}
            if self._api_key and self.pck_query == "pcs"
            else None
        )

        def check(body: bytes, chain: bytes) -> None:
            verify_pck_certificate(
                PckCertificate.from_pem(body, chain, structure="pckcert"), self.root_ca_der
            )

        body, chain = self._fetch(
            url, "pckcert", "SGX-PCK-Certificate-Issuer-Chain", headers=headers, check=check
        )
        return PckCertificate.from_pem(body, chain, structure="pckcert")


def unverified_tcb_evaluation_numbers(numbers: bytes | None) -> TcbEvaluationNumbers | None:
    """A TCB evaluation data numbers response parsed, **not verified**, for a cache's decisions
    only (what to serve or keep: the automatic minimum it sets; its ``verified_at`` is its
    ``issueDate``); ``None`` for none, or for one that does not parse (the verifier refuses it).
    Never judge evidence by it."""
    if numbers is None:
        return None
    try:
        parsed = TcbEvaluationNumbersText.from_response(numbers)
    except ParseError:
        return None
    return TcbEvaluationNumbers(
        parsed.id, parsed.version, parsed.issue_date, parsed.next_update,
        tuple(TcbEvalNumber(*entry) for entry in parsed.numbers), parsed.issue_date,
    )  # fmt: skip


def check_pcs_update(
    location: str | None,
    pcs_update: str | None,
    pcs_tcb_eval_number: object = None,
    minimum: object = None,
) -> None:
    """``--pcs-update`` (Intel PCS API v4's ``update`` parameter): ``early`` or ``standard``;
    ``--pcs-tcb-eval-number`` (its ``tcbEvaluationDataNumber``): an integer 1..2**32-1, not with
    ``--pcs-update`` (Intel PCS takes one or the other), nor below a fixed ``minimum``
    (``--min-tcb-eval-number N``: what it asks for would be refused); either only with
    ``--collateral URL`` (Intel PCS or a PCCS). A :class:`UsageError` otherwise. The one check of
    every command, the CAS and the SDK."""
    if pcs_update is None and pcs_tcb_eval_number is None:
        return
    if pcs_update is not None and pcs_update not in PCS_UPDATES:
        raise UsageError(f"--pcs-update: got {pcs_update!r}, expected early or standard")
    option = "--pcs-update"
    if pcs_tcb_eval_number is not None:
        option = "--pcs-tcb-eval-number"
        if type(pcs_tcb_eval_number) is not int or not 1 <= pcs_tcb_eval_number <= MAX_TCB_EVAL_NUMBER:
            raise UsageError(
                f"--pcs-tcb-eval-number: got {pcs_tcb_eval_number!r}, expected an integer, "
                f"1 to {MAX_TCB_EVAL_NUMBER}"
            )
        if pcs_update is not None:
            raise UsageError(
                "--pcs-update and --pcs-tcb-eval-number are exclusive (Intel PCS API v4 takes update= or "
                "tcbEvaluationDataNumber=, not both)"
            )
        if type(minimum) is int and pcs_tcb_eval_number < minimum:
            raise UsageError(
                f"--pcs-tcb-eval-number {pcs_tcb_eval_number} is below --min-tcb-eval-number {minimum}: "
                "the collateral it asks for would be refused"
            )
    if not location:
        raise UsageError(f"{option} needs --collateral URL (Intel PCS or a PCCS)")
    if not is_url(location):
        raise UsageError(
            f"{option} is for --collateral URL (Intel PCS or a PCCS); {location} is a directory or a file"
        )


def check_asked_evaluation(
    asked: int, numbers: bytes | None, at: datetime, grace: timedelta | None, *, tee: str, where: str
) -> None:
    """``--pcs-tcb-eval-number asked`` against Intel's TCB evaluation data numbers response
    ``numbers`` (``None``: none, nothing checked), **read unverified**: a refusal only, before
    anything is asked for. A number the list does not name (Intel PCS serves those it lists) is a
    :class:`CollateralMissingError`; with ``grace`` (``--min-tcb-eval-number auto``), one below the
    minimum the list sets at ``at`` a :class:`CollateralOutdatedError` with the list's reason.
    ``tee``: ``SGX`` or ``TDX`` (a list of the other TEE type, or one that does not parse, is left
    to the verifier to refuse); ``where``: where the list is from, for the message."""
    listed = unverified_tcb_evaluation_numbers(numbers)
    if listed is None or listed.id != tee:
        return
    known = sorted({entry.number for entry in listed.numbers}, reverse=True)
    if asked not in known:
        names = ", ".join(str(n) for n in known) or "none"
        raise CollateralMissingError(
            f"--pcs-tcb-eval-number {asked}: Intel's TCB evaluation data numbers for {tee} ({where}, issued "
            f"{listed.issue_date.isoformat().replace('+00:00', 'Z')}) name {names}, not {asked}"
        )
    if grace is not None:
        required = listed.required(at, grace)
        if asked < required.number:
            raise CollateralOutdatedError(
                f"--pcs-tcb-eval-number {asked} is below the minimum {required.number} that "
                f"--min-tcb-eval-number auto sets: {required.reason()}"
            )


def source_for(
    location: str,
    *,
    cache_dir: Path | None = None,
    min_tcb_evaluation_data_number: int | None = None,
    floor: EvaluationFloor | None = None,
    tcb_evaluation_numbers: bool = False,
    tcb_recovery_grace: timedelta | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
) -> DcapCollateralSource:
    """The source named by ``--collateral``: an http(s) URL (Intel PCS or a PCCS; the PCS
    subscription key for PCK certificate look-ups from ``$CONFIDE_PCS_API_KEY``;
    ``min_tcb_evaluation_data_number``: see the module docstring), a directory, or a bundle
    file. ``tcb_evaluation_numbers``: a URL or directory source also brings Intel's TCB
    evaluation data numbers with the collateral (a bundle has none); ``tcb_recovery_grace``
    (with it, ``--min-tcb-eval-number auto``): a URL source keeps out of its disk cache what is
    below the minimum they set (module docstring). ``pcs_update`` (``--pcs-update``): the ``update``
    a URL source asks for (module docstring); ``pcs_tcb_eval_number`` (``--pcs-tcb-eval-number``):
    the one TCB evaluation it asks for instead (module docstring); with a directory or a bundle,
    or both, :class:`UsageError`."""
    check_pcs_update(location, pcs_update, pcs_tcb_eval_number, min_tcb_evaluation_data_number)
    if is_url(location):
        return PcsHttpSource(
            location,
            cache_dir=cache_dir or default_cache_dir("pcs"),
            api_key=os.environ.get(PCS_API_KEY_ENV) or None,
            min_tcb_evaluation_data_number=min_tcb_evaluation_data_number,
            floor=floor,
            tcb_evaluation_numbers=tcb_evaluation_numbers,
            tcb_recovery_grace=tcb_recovery_grace if tcb_evaluation_numbers else None,
            update=pcs_update,
            tcb_evaluation_data_number=pcs_tcb_eval_number,
        )
    path = Path(location)
    if path.is_dir():
        return PcsDirectorySource(path, tcb_evaluation_numbers=tcb_evaluation_numbers)
    return BundleFileSource(path)
