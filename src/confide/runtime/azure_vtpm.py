"""Evidence from an Azure confidential VM's paravisor vTPM: :class:`AzureVtpmQuoteProvider`.

On Azure SEV-SNP and TDX confidential VMs the guest has no ``/dev/sev-guest`` or
``/dev/tdx_guest``; the paravisor (HCL) runs below the guest and exposes a vTPM. The protocol,
as Azure's own tooling implements it (``az-cvm-vtpm``: ``vtpm::get_report_with_report_data``,
``vtpm::get_quote``, ``hcl::HclReport``; trustee's ``az-snp-vtpm`` / ``az-tdx-vtpm``
attesters):

1. Write the 64-byte report data to NV index ``0x01400002`` (defined by the guest if absent:
   owner read/write and platform read, SHA-256 name, 64 bytes).
2. Read the "HCL report" from NV index ``0x01400001``. The paravisor regenerates it with our
   report data as the ``user-data`` runtime claim; we poll until it does (Azure's tooling just
   sleeps three seconds).
3. Quote all 24 SHA-256 PCRs with the vTPM attestation key at persistent handle ``0x81000003``
   and qualifyingData = the report data, and read the PCR values.
4. SEV-SNP: fetch the VCEK from the IMDS THIM endpoint; TDX: exchange the TD report of the HCL
   report for a TD quote at IMDS ``/acc/tdquote``. Both are behind one-method interfaces
   (:class:`VcekSource`, :class:`TdQuoteSource`) with the HTTP implementations here.

The HCL report (Azure's ``AttestationReport``, ``az-cvm-vtpm/src/hcl/mod.rs``)::

    0     header: "HCLA" magic, version, report_size, request_type, status, 3 reserved (u32 LE)
    32    hardware report slot, 1184 bytes: the SEV-SNP report, or the 1024-byte TD report
    1216  IGVM request data: data_size, version, report_type (2 SNP, 4 TDX), hash type
          (1 SHA-256, 2 SHA-384, 3 SHA-512), variable_data_size (u32 LE), then variable data:
          JSON runtime claims ({"keys": [JWK "HCLAkPub", ...], "vm-configuration", "user-data"})

The hardware report's REPORT_DATA starts with H(variable data): that binds the AK to the TEE.

The evidence is the JSON document of trustee's az-snp-vtpm / az-tdx-vtpm evidence version 1:
``{"version": 1, "tpm_quote": {"signature", "message", "pcrs"} (hex), "hcl_report"
(base64url), "vcek" (SEV-SNP, base64url DER) | "td_quote" (TDX, base64url)}``.

Before returning, the provider checks what it can (the verifier checks it all again): the HCL
report parses and its hardware report carries H(variable data), its ``user-data`` is our report
data, the AK is the ``HCLAkPub`` of the report, the quote's extraData is our report data, its
PCR digest is SHA-256 over the PCR values returned, and its signature verifies with the AK.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from confide.errors import BindingError, NetworkError, ParseError, SignatureError, UsageError
from confide.runtime.quote import Evidence, _check_binding, _check_report_data, _tdx_report_data_offset
from confide.runtime.tpm import (
    PCR_COUNT,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    TPMA_NV_PPREAD,
    Alg,
    DeviceTransport,
    Tpm,
    TpmCommandError,
    parse_quote_attest,
    parse_signature,
)
from confide.verify.result import Platform
from confide.verify.sev_snp import load_certificates

__all__ = [
    "AK_HANDLE",
    "HCL_REPORT_NV_INDEX",
    "IMDS_TDQUOTE_URL",
    "IMDS_THIM_URL",
    "REPORT_DATA_NV_INDEX",
    "AzureVtpmQuoteProvider",
    "HclReport",
    "ImdsTdQuoteSource",
    "ImdsVcekSource",
    "TdQuoteSource",
    "VcekSource",
    "parse_hcl_report",
]

HCL_REPORT_NV_INDEX = 0x01400001
REPORT_DATA_NV_INDEX = 0x01400002
AK_HANDLE = 0x81000003
IMDS_THIM_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
IMDS_TDQUOTE_URL = "http://169.254.169.254/acc/tdquote"

EVIDENCE_VERSION = 1
HCL_MAGIC = b"HCLA"
HCL_HEADER_SIZE = 32
HW_REPORT_SIZE = 1184  # the slot holds max(SEV-SNP report 1184, TD report 1024)
IGVM_REQUEST_HEADER_SIZE = 20
SNP_REPORT_TYPE = 2
TDX_REPORT_TYPE = 4
TD_REPORT_SIZE = 1024
_VAR_DATA_OFFSET = HCL_HEADER_SIZE + HW_REPORT_SIZE + IGVM_REQUEST_HEADER_SIZE
_HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}
# AMD SEV-SNP ABI (56860) Table 23: REPORT_DATA at 0x50. Intel TDX Module ABI, REPORTMAC_STRUCT:
# REPORTTYPE (type 0x81 = TDX), reserved, CPUSVN, TEE_TCB_INFO_HASH, TEE_INFO_HASH, then
# REPORTDATA at 128.
_SNP_REPORT_DATA_OFFSET = 0x50
_TD_REPORT_DATA_OFFSET = 128
_TD_REPORT_TYPE_TDX = 0x81
_REPORT_DATA_SIZE = 64
_USER_DATA_NV_ATTRIBUTES = TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_PPREAD
_AK_KID = "HCLAkPub"
_QUOTE_ATTEMPTS = 3
_SIGNATURE_HASHES: Mapping[int, hashes.HashAlgorithm] = {
    Alg.SHA256: hashes.SHA256(),
    Alg.SHA384: hashes.SHA384(),
    Alg.SHA512: hashes.SHA512(),
}

# MERGE(azure): the azure branch adds Platform.AZURE_SNP_VTPM ("az-snp-vtpm") and
# Platform.AZURE_TDX_VTPM ("az-tdx-vtpm"); switch these two entries to them at merge. Until
# then the evidence is labelled with the bare TEE, which the CAS cannot verify as such.
_PLATFORMS: Mapping[int, Platform] = {SNP_REPORT_TYPE: Platform.SEV_SNP, TDX_REPORT_TYPE: Platform.TDX}


def _b64url(data: bytes) -> str:
    # trustee's az-*-vtpm evidence: URL-safe alphabet with padding.
    return base64.urlsafe_b64encode(data).decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("not base64url", structure=what) from None


# --- the HCL report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HclReport:
    raw: bytes
    report_type: int
    hw_report: bytes
    """The SEV-SNP report (1184 bytes) or the TD report (1024 bytes)."""
    var_data: bytes
    claims: Mapping[str, Any]

    @property
    def report_data(self) -> bytes:
        """The hardware report's 64-byte REPORT_DATA."""
        offset = _SNP_REPORT_DATA_OFFSET if self.report_type == SNP_REPORT_TYPE else _TD_REPORT_DATA_OFFSET
        return self.hw_report[offset : offset + _REPORT_DATA_SIZE]

    def user_data(self) -> bytes | None:
        """The ``user-data`` runtime claim (hex in the JSON), or None if absent or not hex."""
        value = self.claims.get("user-data")
        if not isinstance(value, str):
            return None
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None

    def ak_public_key(self) -> rsa.RSAPublicKey:
        """The ``HCLAkPub`` JWK (RFC 7517/7518 §6.3.1: kty RSA, n and e base64url)."""
        keys = self.claims.get("keys")
        what = "HCL report runtime claims"
        if not isinstance(keys, list):
            raise ParseError("no 'keys' list", structure=what)
        found = [k for k in keys if isinstance(k, dict) and k.get("kid") == _AK_KID]
        if len(found) != 1:
            raise ParseError(f"got {len(found)} keys with kid {_AK_KID!r}, expected 1", structure=what)
        jwk = found[0]
        n, e = jwk.get("n"), jwk.get("e")
        if jwk.get("kty") != "RSA" or not isinstance(n, str) or not isinstance(e, str):
            raise ParseError(f"{_AK_KID}: expected an RSA JWK with n and e", structure=what)
        modulus = int.from_bytes(_b64url_decode(n, f"{what} {_AK_KID}.n"), "big")
        exponent = int.from_bytes(_b64url_decode(e, f"{what} {_AK_KID}.e"), "big")
        try:
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError as exc:
            raise ParseError(f"{_AK_KID}: not a usable RSA key: {exc}", structure=what) from None


def _u32le(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 4], "little")


def parse_hcl_report(raw: bytes) -> HclReport:
    """Parse the content of NV index 0x01400001 (layout in the module docstring)."""
    what = "HCL report"
    if len(raw) < _VAR_DATA_OFFSET:
        raise ParseError(f"got {len(raw)} bytes, expected at least {_VAR_DATA_OFFSET}", structure=what)
    if raw[:4] != HCL_MAGIC:
        raise ParseError(f"got {raw[:4]!r}, expected {HCL_MAGIC!r}", structure=what, field="signature")
    report_size = _u32le(raw, 8)
    igvm = HCL_HEADER_SIZE + HW_REPORT_SIZE
    data_size = _u32le(raw, igvm)
    report_type = _u32le(raw, igvm + 8)
    hash_type = _u32le(raw, igvm + 12)
    var_size = _u32le(raw, igvm + 16)
    if data_size != IGVM_REQUEST_HEADER_SIZE + var_size:
        raise ParseError(
            f"got {data_size}, expected {IGVM_REQUEST_HEADER_SIZE} + variable_data_size {var_size}",
            structure=what,
            field="data_size",
            offset=igvm,
        )
    if not _VAR_DATA_OFFSET + var_size <= report_size <= len(raw):
        raise ParseError(
            f"got report_size {report_size}, expected {_VAR_DATA_OFFSET + var_size}..{len(raw)}",
            structure=what,
            field="report_size",
            offset=8,
        )
    if report_type == SNP_REPORT_TYPE:
        hw_report = raw[HCL_HEADER_SIZE:igvm]
    elif report_type == TDX_REPORT_TYPE:
        hw_report = raw[HCL_HEADER_SIZE : HCL_HEADER_SIZE + TD_REPORT_SIZE]
        if hw_report[0] != _TD_REPORT_TYPE_TDX:
            raise ParseError(
                f"got TD report type {hw_report[0]:#x}, expected {_TD_REPORT_TYPE_TDX:#x}",
                structure=what,
                offset=HCL_HEADER_SIZE,
            )
    else:
        raise ParseError(
            f"got {report_type}, expected {SNP_REPORT_TYPE} (SEV-SNP) or {TDX_REPORT_TYPE} (TDX)",
            structure=what,
            field="report_type",
            offset=igvm + 8,
        )
    hash_name = _HASH_TYPES.get(hash_type)
    if hash_name is None:
        raise ParseError(
            f"got {hash_type}, expected 1, 2 or 3", structure=what, field="report_data_hash_type"
        )
    var_data = raw[_VAR_DATA_OFFSET : _VAR_DATA_OFFSET + var_size]
    # The binding first: the hardware report's REPORT_DATA starts with H(variable data).
    offset = _SNP_REPORT_DATA_OFFSET if report_type == SNP_REPORT_TYPE else _TD_REPORT_DATA_OFFSET
    digest = hashlib.new(hash_name, var_data).digest()
    bound = hw_report[offset : offset + len(digest)]
    if not hmac.compare_digest(bound, digest):
        raise BindingError(
            f"{what}: the hardware report's report data starts with {bound.hex()}, "
            f"expected {hash_name}(variable data) = {digest.hex()}"
        )
    try:
        claims = json.loads(var_data)
    except (UnicodeDecodeError, ValueError):
        raise ParseError("the variable data is not JSON", structure=what, offset=_VAR_DATA_OFFSET) from None
    if not isinstance(claims, dict):
        raise ParseError("the variable data is not a JSON object", structure=what, offset=_VAR_DATA_OFFSET)
    return HclReport(raw, report_type, hw_report, var_data, claims)


# --- IMDS ----------------------------------------------------------------------------------------


class VcekSource(Protocol):
    """The VCEK of this SEV-SNP chip at its reported TCB, DER."""

    def get_vcek(self) -> bytes: ...


class TdQuoteSource(Protocol):
    """A TD quote (Intel DCAP) for a 1024-byte TD report."""

    def get_td_quote(self, td_report: bytes) -> bytes: ...


def _imds_json(
    method: str, url: str, timeout: float, transport: httpx2.BaseTransport | None, **kwargs: Any
) -> dict[str, Any]:
    try:
        # trust_env=False: IMDS is link-local and must not go through a proxy.
        with httpx2.Client(timeout=timeout, trust_env=False, transport=transport) as client:
            response = client.request(method, url, **kwargs)
    except httpx2.HTTPError as exc:
        raise NetworkError(f"{method} {url}: {exc}") from None
    if response.status_code != 200:
        raise NetworkError(f"{method} {url}: got HTTP {response.status_code}, expected 200")
    try:
        body = response.json()
    except ValueError:
        raise ParseError("not JSON", structure=f"response of {url}") from None
    if not isinstance(body, dict):
        raise ParseError("not a JSON object", structure=f"response of {url}")
    return body


class ImdsVcekSource:
    """The VCEK from Azure IMDS's THIM endpoint (``{"vcekCert": PEM, "certificateChain": PEM}``)."""

    def __init__(
        self, url: str = IMDS_THIM_URL, *, timeout: float = 5.0, transport: httpx2.BaseTransport | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport

    def get_vcek(self) -> bytes:
        body = _imds_json("GET", self.url, self.timeout, self.transport, headers={"Metadata": "true"})
        pem = body.get("vcekCert")
        if not isinstance(pem, str):
            raise ParseError("no vcekCert string", structure=f"response of {self.url}")
        certs = load_certificates(pem.encode(), "IMDS vcekCert")
        if len(certs) != 1:
            raise ParseError(f"got {len(certs)} certificates, expected 1", structure="IMDS vcekCert")
        return certs[0].public_bytes(serialization.Encoding.DER)


class ImdsTdQuoteSource:
    """A TD quote from Azure IMDS ``/acc/tdquote`` (``{"report": b64url}`` -> ``{"quote": b64url}``)."""

    def __init__(
        self,
        url: str = IMDS_TDQUOTE_URL,
        *,
        timeout: float = 30.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport

    def get_td_quote(self, td_report: bytes) -> bytes:
        if len(td_report) != TD_REPORT_SIZE:
            raise UsageError(f"TD report: got {len(td_report)} bytes, expected {TD_REPORT_SIZE}")
        report = base64.urlsafe_b64encode(td_report).rstrip(b"=").decode("ascii")
        body = _imds_json("POST", self.url, self.timeout, self.transport, json={"report": report})
        quote = body.get("quote")
        if not isinstance(quote, str) or not quote:
            raise ParseError("no quote string", structure=f"response of {self.url}")
        return _b64url_decode(quote, f"quote in the response of {self.url}")


# --- the provider --------------------------------------------------------------------------------


class AzureVtpmQuoteProvider:
    """Evidence from an Azure CVM's paravisor vTPM (see the module docstring)."""

    def __init__(
        self,
        tpm: Tpm | None = None,
        *,
        vcek_source: VcekSource | None = None,
        td_quote_source: TdQuoteSource | None = None,
        report_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._tpm = tpm
        self._vcek_source = vcek_source or ImdsVcekSource()
        self._td_quote_source = td_quote_source or ImdsTdQuoteSource()
        self._report_timeout = report_timeout
        self._clock = clock
        self._sleep = sleep
        # One request at a time: the report-data NV index is shared by everything in the VM.
        self._lock = threading.Lock()

    def _device(self) -> Tpm:
        if self._tpm is None:
            self._tpm = Tpm(DeviceTransport())
        return self._tpm

    def get_evidence(self, report_data: bytes) -> Evidence:
        _check_report_data(report_data)
        with self._lock:
            tpm = self._device()
            self._write_report_data(tpm, report_data)
            hcl = self._read_fresh_report(tpm, report_data)
            ak = self._attestation_key(tpm, hcl)
            message, signature, pcrs = self._quote(tpm, ak, report_data)
        document: dict[str, Any] = {
            "version": EVIDENCE_VERSION,
            "tpm_quote": {
                "signature": signature.hex(),
                "message": message.hex(),
                "pcrs": [p.hex() for p in pcrs],
            },
            "hcl_report": _b64url(hcl.raw),
        }
        if hcl.report_type == SNP_REPORT_TYPE:
            document["vcek"] = _b64url(self._vcek_source.get_vcek())
            kind = "snp"
        else:
            td_quote = self._td_quote_source.get_td_quote(hcl.hw_report)
            # The TD quote must quote this TD report: same REPORTDATA.
            _check_binding(td_quote, _tdx_report_data_offset(td_quote), hcl.report_data, "TD quote from IMDS")
            document["td_quote"] = _b64url(td_quote)
            kind = "tdx"
        raw = json.dumps(document, separators=(",", ":")).encode()
        return Evidence(platform=_PLATFORMS[hcl.report_type], raw=raw, provider=f"azure-vtpm/{kind}")

    @staticmethod
    def _write_report_data(tpm: Tpm, report_data: bytes) -> None:
        # As Azure's tooling: define the index if absent (or of the wrong size), then write.
        try:
            public = tpm.nv_read_public(REPORT_DATA_NV_INDEX)
        except TpmCommandError as exc:
            if exc.name != "TPM_RC_HANDLE":
                raise
            public = None
        if public is not None and public.data_size != len(report_data):
            tpm.nv_undefine_space(REPORT_DATA_NV_INDEX)
            public = None
        if public is None:
            tpm.nv_define_space(REPORT_DATA_NV_INDEX, len(report_data), _USER_DATA_NV_ATTRIBUTES)
        tpm.nv_write(REPORT_DATA_NV_INDEX, report_data)

    def _read_fresh_report(self, tpm: Tpm, report_data: bytes) -> HclReport:
        deadline = self._clock() + self._report_timeout
        delay = 0.05
        while True:
            try:
                raw = tpm.nv_read(HCL_REPORT_NV_INDEX)
            except TpmCommandError as exc:
                if exc.name == "TPM_RC_HANDLE":
                    raise UsageError(
                        f"the vTPM has no NV index {HCL_REPORT_NV_INDEX:#010x} (HCL report): this is not an "
                        "Azure confidential VM"
                    ) from None
                raise
            try:
                report = parse_hcl_report(raw)
            except (ParseError, BindingError):
                # A read that overlapped the paravisor's rewrite of the index is torn (the index
                # is read in several chunks): read again until the deadline.
                if self._clock() >= deadline:
                    raise
                self._sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            user_data = report.user_data()
            if user_data is not None and hmac.compare_digest(user_data, report_data):
                return report
            if self._clock() >= deadline:
                got = "no user-data claim" if user_data is None else f"user-data {user_data.hex()}"
                raise BindingError(
                    f"the HCL report still carries {got} after {self._report_timeout:g} s, expected "
                    f"{report_data.hex()}: the paravisor did not take the report data (or another "
                    "process wrote its own)"
                )
            self._sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _attestation_key(tpm: Tpm, hcl: HclReport) -> rsa.RSAPublicKey:
        try:
            area = tpm.read_public(AK_HANDLE)
        except TpmCommandError as exc:
            if exc.name == "TPM_RC_HANDLE":
                raise UsageError(f"the vTPM has no attestation key at {AK_HANDLE:#010x}") from None
            raise
        key = area.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise BindingError(f"the attestation key at {AK_HANDLE:#010x} is not an RSA key")
        if key.public_numbers() != hcl.ak_public_key().public_numbers():
            raise BindingError(
                f"the attestation key at {AK_HANDLE:#010x} is not the HCL report's {_AK_KID}: "
                "quotes it signs are not bound to this TEE"
            )
        return key

    def _quote(self, tpm: Tpm, ak: rsa.RSAPublicKey, report_data: bytes) -> tuple[bytes, bytes, list[bytes]]:
        pcr_indices = tuple(range(PCR_COUNT))
        for _ in range(_QUOTE_ATTEMPTS):
            quote = tpm.quote(AK_HANDLE, report_data, pcr_indices)
            pcrs = tpm.pcr_read(pcr_indices)
            attest = parse_quote_attest(quote.attest)
            if not hmac.compare_digest(attest.extra_data, report_data):
                raise BindingError(
                    f"the quote's extraData is {attest.extra_data.hex()}, expected {report_data.hex()}"
                )
            if attest.pcr_selection != ((Alg.SHA256, frozenset(pcr_indices)),):
                raise BindingError(f"the quote selects {attest.pcr_selection}, expected SHA-256 PCRs 0-23")
            signature = parse_signature(quote.signature)
            if signature.sig_alg != Alg.RSASSA or signature.hash_alg not in _SIGNATURE_HASHES:
                raise SignatureError(
                    f"the quote is signed with algorithm {signature.sig_alg:#06x}/{signature.hash_alg:#06x}, "
                    "expected RSASSA with SHA-256/384/512"
                )
            try:
                ak.verify(
                    signature.rsa, quote.attest, padding.PKCS1v15(), _SIGNATURE_HASHES[signature.hash_alg]
                )
            except InvalidSignature:
                raise SignatureError(
                    "the quote's signature does not verify with the attestation key"
                ) from None
            if hmac.compare_digest(attest.pcr_digest, hashlib.sha256(b"".join(pcrs)).digest()):
                return quote.attest, signature.rsa, pcrs
            # A PCR was extended between the quote and the read: quote again.
        raise BindingError("the PCRs kept changing between the quote and the PCR read")
