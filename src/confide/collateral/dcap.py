"""Where Intel DCAP collateral comes from: a ``DcapCollateralSource``.

Three sources, one method (``get_collateral``):

- :class:`BundleFileSource`: one JSON file in dcap-qvl's ``QuoteCollateralV3`` layout;
- :class:`PcsDirectorySource`: a directory of raw Intel PCS API v4 responses (see
  ``docs/collateral.md`` for the layout);
- :class:`PcsHttpSource`: Intel PCS or a PCCS over HTTPS (Intel PCS API v4 endpoints), with an
  on-disk cache that serves a response until its own ``nextUpdate``.

Sources only fetch and parse; they never decide whether collateral is valid — the verifier
checks every signature, chain and date. Time and the HTTP transport are injected.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide.collateral import cache_dir as default_cache_dir
from confide.collateral import is_url, public_url
from confide.errors import CollateralMissingError, NetworkError, ParseError
from confide.evidence.dcap import TeeType
from confide.evidence.dcap_collateral import DcapCollateral, split_pcs_response
from confide.evidence.pem import normalise_pem, parse_pem_chain
from confide.fsutil import write_atomic
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_TCB_SIGNING_2025_DER
from confide.verify.x509util import CERTIFICATE_ERRORS, check_certificate_fields, check_crl_fields

__all__ = [
    "BundleFileSource",
    "DcapCollateralSource",
    "PcsDirectorySource",
    "PcsHttpSource",
    "crl_from_bytes",
    "source_for",
]

MAX_RESPONSE_SIZE = 4 << 20


class DcapCollateralSource(Protocol):
    """One method: the collateral for a platform (FMSPC), its PCK CA and its TEE type."""

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral: ...


def crl_from_bytes(data: bytes, what: str) -> bytes:
    """A CRL as DER, from DER, PEM or hex text (PCCS serves hex)."""
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER)
        except ValueError:
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
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            raise CollateralMissingError(
                f"cannot read collateral bundle {self.path}: {exc.strerror}"
            ) from None
        return DcapCollateral.from_dcap_qvl_json(text)


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
      the embedded Intel SGX TCB Signing certificate (2025 issuance) and root are used.
    """

    path: Path

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
            data = f.read_bytes()[: MAX_RESPONSE_SIZE + 1]
            if len(data) > MAX_RESPONSE_SIZE:
                skipped.append(f"{f.name} (too large)")
                continue
            try:
                kind, value = _classify(data, f.name)
            except ParseError as exc:
                skipped.append(f"{f.name} ({exc.message})")
                continue
            if kind == "tcbInfo":
                text, sig = value
                obj = json.loads(text)
                newer = tcb is None or obj.get("issueDate", "") > json.loads(tcb[0]).get("issueDate", "")
                if obj.get("fmspc", "").lower() == fmspc.hex() and obj.get("id", "SGX") == want_tcb and newer:
                    tcb = (text, sig)
            elif kind == "enclaveIdentity":
                text, sig = value
                obj = json.loads(text)
                newer = qe is None or obj.get("issueDate", "") > json.loads(qe[0]).get("issueDate", "")
                if obj.get("id") == want_qe and newer:
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
        )


def _classify(data: bytes, name: str) -> tuple[str, Any]:
    """What a file of a PCS directory holds: a signed TCB Info / identity, a chain, a CRL."""
    head = data.lstrip()[:24]
    if head.startswith(b'{"tcbInfo"'):
        return "tcbInfo", split_pcs_response(data, "tcbInfo")
    if head.startswith(b'{"enclaveIdentity"'):
        return "enclaveIdentity", split_pcs_response(data, "enclaveIdentity")
    if head.startswith(b"{"):
        return "other", None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "chain", tuple(parse_pem_chain(normalise_pem(data, structure=name), structure=name))
    return "crl", (crl_from_bytes(data, name),)


# --- Intel PCS / PCCS over HTTP ------------------------------------------------------------

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
INTEL_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def _next_update(kind: str, body: bytes) -> datetime | None:
    """When a response stops being current: its own nextUpdate (PCS API v4)."""
    try:
        if kind in ("tcb", "qe"):
            key = "tcbInfo" if kind == "tcb" else "enclaveIdentity"
            text, _ = split_pcs_response(body, key)
            value = json.loads(text)["nextUpdate"]
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        crl = x509.load_der_x509_crl(crl_from_bytes(body, kind))
        next_update: datetime | None = crl.next_update_utc
        return next_update
    except (ParseError, ValueError, KeyError, TypeError):
        return None


class PcsHttpSource:
    """Intel PCS API v4 (or a PCCS at ``base_url``), cached on disk until ``nextUpdate``.

    Endpoints (Intel PCS API v4): ``/{sgx|tdx}/certification/v4/tcb?fmspc=``,
    ``/{sgx|tdx}/certification/v4/qe/identity``, ``/sgx/certification/v4/pckcrl?ca=&encoding=der``;
    issuer chains come URL-encoded in the ``TCB-Info-Issuer-Chain``,
    ``SGX-Enclave-Identity-Issuer-Chain`` and ``SGX-PCK-CRL-Issuer-Chain`` headers. The Root CA
    CRL comes from ``root_crl_url`` (a PCCS serves it at ``/sgx/certification/v4/rootcacrl``).
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = cache_dir
        if root_crl_url is None:
            root_crl_url = (
                INTEL_ROOT_CRL_URL
                if self.base_url == INTEL_PCS_URL
                else f"{self.base_url}/sgx/certification/v4/rootcacrl"
            )
        self.root_crl_url = root_crl_url
        self.clock = clock
        headers = {"Ocp-Apim-Subscription-Key": api_key} if api_key else {}
        self.client = client or httpx2.Client(timeout=30.0, headers=headers, follow_redirects=False)

    def _cache_path(self, url: str) -> Path:
        return self.cache_dir / hashlib.sha256(url.encode()).hexdigest()

    def _fetch(self, url: str, kind: str, chain_header: str | None) -> tuple[bytes, bytes]:
        """(body, issuer chain PEM) from the cache if still current, else from the network."""
        path = self._cache_path(url)
        now = self.clock()
        try:
            cached = json.loads(path.read_text())
            expires = datetime.fromisoformat(cached["expires"])
            if now < expires:
                return bytes.fromhex(cached["body"]), bytes.fromhex(cached["chain"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            response = self.client.get(url)
        except httpx2.HTTPError as exc:
            raise NetworkError(f"GET {public_url(url)} failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise CollateralMissingError(
                f"GET {public_url(url)}: 404, the collateral service has nothing for this platform"
            )
        if response.status_code != 200:
            raise NetworkError(f"GET {public_url(url)}: HTTP {response.status_code}, expected 200")
        body = response.content
        if len(body) > MAX_RESPONSE_SIZE:
            raise NetworkError(f"GET {public_url(url)}: response of {len(body)} bytes is too large")
        chain = b""
        if chain_header:
            raw = response.headers.get(chain_header)
            if raw is None:
                raise CollateralMissingError(f"GET {public_url(url)}: no {chain_header} header")
            chain = urllib.parse.unquote(raw).encode()
        expires_at = _next_update(kind, body)
        if expires_at is not None and now < expires_at:
            record = {
                "url": public_url(url),
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
        tcb_body, tcb_chain = self._fetch(
            f"{v4.format(tee_path)}/tcb?fmspc={fmspc.hex()}", "tcb", "TCB-Info-Issuer-Chain"
        )
        qe_body, qe_chain = self._fetch(
            f"{v4.format(tee_path)}/qe/identity", "qe", "SGX-Enclave-Identity-Issuer-Chain"
        )
        crl_body, crl_chain = self._fetch(
            f"{v4.format('sgx')}/pckcrl?ca={ca}&encoding=der", "crl", "SGX-PCK-CRL-Issuer-Chain"
        )
        root_body, _ = self._fetch(self.root_crl_url, "crl", None)
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
        )


def source_for(location: str, *, cache_dir: Path | None = None) -> DcapCollateralSource:
    """The source named by ``--collateral``: an http(s) URL, a directory, or a bundle file."""
    if is_url(location):
        return PcsHttpSource(location, cache_dir=cache_dir or default_cache_dir("pcs"))
    path = Path(location)
    if path.is_dir():
        return PcsDirectorySource(path)
    return BundleFileSource(path)
