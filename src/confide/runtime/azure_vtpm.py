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

The HCL report (Azure's ``AttestationReport``) is parsed by
:class:`confide.evidence.azure_vtpm.HclReport` (layout in that module): a hardware report (the
SEV-SNP report or the TD report) whose REPORT_DATA starts with H(variable data), and the variable
data, JSON runtime claims holding the AK (``HCLAkPub``) and our ``user-data``. That digest binds
the AK to the TEE.

The evidence is the JSON document of trustee's az-snp-vtpm / az-tdx-vtpm evidence version 1:
``{"version": 1, "tpm_quote": {"signature", "message", "pcrs"} (hex), "hcl_report"
(base64url), "vcek" (SEV-SNP, base64url DER) | "td_quote" (TDX, base64url)}``.

Before returning, the provider checks what it can (the verifier checks it all again) with the
verifier's own parsers: the HCL report parses and its hardware report carries H(variable data)
(otherwise the read is taken as torn and repeated), its ``user-data`` is our report data, the AK
is the ``HCLAkPub`` of the report, and :func:`confide.verify.tpm.verify_quote` accepts the quote
(RSASSA/SHA-256 signature by the AK, TPM-generated, PCR digest over the 24 PCR values read,
extraData our report data; a PCR extended between quote and read means quote again).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from confide import jsonstrict
from confide.errors import (
    BindingError,
    MeasurementError,
    NetworkError,
    ParseError,
    SignatureError,
    UsageError,
)
from confide.evidence.azure_vtpm import (
    AK_KEY_ID,
    HCL_NV_INDEX,
    MAX_EVIDENCE_SIZE,
    TD_REPORT_SIZE,
    HclReport,
    HclReportType,
    RuntimeClaims,
    TdReportStruct,
)
from confide.evidence.tpm import (
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    alg_name,
    parse_attest,
    parse_signature,
)
from confide.httpbody import answer_client, fetch
from confide.runtime.quote import (
    SNP_REPORT_DATA_OFFSET,
    Evidence,
    check_report_data,
    check_report_data_binding,
    tdx_quote_report_data_offset,
)
from confide.runtime.tpm import (
    PCR_COUNT,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    TPMA_NV_PPREAD,
    DeviceTransport,
    Tpm,
    TpmCommandError,
)
from confide.verify.result import Platform
from confide.verify.sev_snp import load_certificates
from confide.verify.tpm import verify_quote

__all__ = [
    "AK_HANDLE",
    "HCL_REPORT_NV_INDEX",
    "IMDS_TDQUOTE_URL",
    "IMDS_THIM_URL",
    "REPORT_DATA_NV_INDEX",
    "AzureVtpmQuoteProvider",
    "ImdsTdQuoteSource",
    "ImdsVcekSource",
    "TdQuoteSource",
    "VcekSource",
    "hw_report_data",
    "read_hcl_report",
]

HCL_REPORT_NV_INDEX = HCL_NV_INDEX
REPORT_DATA_NV_INDEX = 0x01400002
AK_HANDLE = 0x81000003
IMDS_THIM_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
IMDS_TDQUOTE_URL = "http://169.254.169.254/acc/tdquote"
MAX_IMDS_ANSWER = MAX_EVIDENCE_SIZE
"""The largest IMDS answer read (bytes): a VCEK with its chain, or a TD quote, base64url in JSON,
is a few KiB; the host that serves IMDS could otherwise send without end."""
IMDS_ANSWER_TIME = 60.0
"""Seconds one IMDS answer may take to arrive, its connection, status line, headers and body
(:func:`confide.httpbody.fetch`): a TD quote's read timeout is 30 s, each wait for more bytes
only. Longer is a :class:`NetworkError`."""

EVIDENCE_VERSION = 1
# Intel TDX Module ABI, REPORTMACSTRUCT.REPORTTYPE.type: 0x81 is a TDX TD report.
_TD_REPORT_TYPE_TDX = 0x81
_USER_DATA_NV_ATTRIBUTES = TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_PPREAD
_QUOTE_ATTEMPTS = 3
_PCR_INDICES = tuple(range(PCR_COUNT))
_SELECTION = tuple((TPM_ALG_SHA256, i) for i in _PCR_INDICES)
_PLATFORMS: Mapping[HclReportType, Platform] = {
    HclReportType.SNP: Platform.AZURE_SNP_VTPM,
    HclReportType.TDX: Platform.AZURE_TDX_VTPM,
}


def _b64url(data: bytes) -> str:
    # trustee's az-*-vtpm evidence: URL-safe alphabet with padding.
    return base64.urlsafe_b64encode(data).decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("not base64url", structure=what) from None


# --- the HCL report ------------------------------------------------------------------------------


def hw_report_data(report: HclReport) -> bytes:
    """The 64-byte REPORT_DATA of the HCL report's hardware report: AMD SEV-SNP ABI (56860)
    Table 23 (at 0x50 of the SEV-SNP report), Intel TDX Module ABI REPORTMACSTRUCT (the TD
    report, whose REPORTTYPE.type must be TDX)."""
    if report.report_type is HclReportType.SNP:
        return report.hw_report[SNP_REPORT_DATA_OFFSET : SNP_REPORT_DATA_OFFSET + 64]
    td = TdReportStruct.from_bytes(report.hw_report)
    if td.report_type[0] != _TD_REPORT_TYPE_TDX:
        raise ParseError(
            f"got TD report type {td.report_type[0]:#x}, expected {_TD_REPORT_TYPE_TDX:#x}",
            structure="HCL report",
            field="hw_report.reportmacstruct.report_type",
        )
    return td.report_data


def read_hcl_report(raw: bytes) -> tuple[HclReport, RuntimeClaims]:
    """Parse the content of NV index 0x01400001 and check that the hardware report's
    REPORT_DATA starts with H(variable data) (BindingError if not: e.g. a torn read)."""
    report = HclReport.from_bytes(raw)
    digest = report.var_data_digest()
    bound = hw_report_data(report)[: len(digest)]
    if not hmac.compare_digest(bound, digest):
        raise BindingError(
            f"HCL report: the hardware report's report data starts with {bound.hex()}, expected "
            f"{report.hash_type.name.lower()}(variable data) = {digest.hex()}"
        )
    return report, report.runtime_claims()


# --- IMDS ----------------------------------------------------------------------------------------


class VcekSource(Protocol):
    """The VCEK of this SEV-SNP chip at its reported TCB, DER."""

    def get_vcek(self) -> bytes: ...


class TdQuoteSource(Protocol):
    """A TD quote (Intel DCAP) for a 1024-byte TD report."""

    def get_td_quote(self, td_report: bytes) -> bytes: ...


def _imds_json(
    method: str,
    url: str,
    timeout: float,
    transport: httpx2.BaseTransport | None,
    within: float,
    **kwargs: Any,
) -> dict[str, Any]:
    def status(response: httpx2.Response) -> None:
        if response.status_code != 200:
            raise NetworkError(f"{method} {url}: got HTTP {response.status_code}, expected 200")

    try:
        # trust_env=False: IMDS is link-local and must not go through a proxy.
        with answer_client(timeout=timeout, trust_env=False, transport=transport) as client:
            # IMDS is the host's: its answer is read up to a bound, in size and time, like any
            # hostile party's
            content = fetch(
                client, method, url, limit=MAX_IMDS_ANSWER, within=within, check=status,
                too_large=lambda how: ParseError(f"the answer {how}", structure=f"response of {url}"),
                too_slow=lambda how: NetworkError(f"{method} {url}: the answer {how}"),
                **kwargs,
            ).content  # fmt: skip
    except httpx2.HTTPError as exc:
        raise NetworkError(f"{method} {url}: {exc}") from None
    body = jsonstrict.loads(content, structure=f"response of {url}")
    if not isinstance(body, dict):
        raise ParseError("not a JSON object", structure=f"response of {url}")
    return body


class ImdsVcekSource:
    """The VCEK from Azure IMDS's THIM endpoint (``{"vcekCert": PEM, "certificateChain": PEM}``)."""

    def __init__(
        self,
        url: str = IMDS_THIM_URL,
        *,
        timeout: float = 5.0,
        transport: httpx2.BaseTransport | None = None,
        answer_time: float = IMDS_ANSWER_TIME,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport
        self.answer_time = answer_time

    def get_vcek(self) -> bytes:
        body = _imds_json(
            "GET", self.url, self.timeout, self.transport, self.answer_time, headers={"Metadata": "true"}
        )
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
        answer_time: float = IMDS_ANSWER_TIME,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport = transport
        self.answer_time = answer_time

    def get_td_quote(self, td_report: bytes) -> bytes:
        if len(td_report) != TD_REPORT_SIZE:
            raise UsageError(f"TD report: got {len(td_report)} bytes, expected {TD_REPORT_SIZE}")
        report = base64.urlsafe_b64encode(td_report).rstrip(b"=").decode("ascii")
        body = _imds_json(
            "POST", self.url, self.timeout, self.transport, self.answer_time, json={"report": report}
        )
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
        check_report_data(report_data)
        with self._lock:
            tpm = self._device()
            self._write_report_data(tpm, report_data)
            hcl, claims = self._read_fresh_report(tpm, report_data)
            ak = self._attestation_key(tpm, claims)
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
        if hcl.report_type is HclReportType.SNP:
            document["vcek"] = _b64url(self._vcek_source.get_vcek())
            kind = "snp"
        else:
            td_quote = self._td_quote_source.get_td_quote(hcl.hw_report)
            # The TD quote must quote this TD report: same REPORTDATA.
            check_report_data_binding(
                td_quote, tdx_quote_report_data_offset(td_quote), hw_report_data(hcl), "TD quote from IMDS"
            )
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

    def _read_fresh_report(self, tpm: Tpm, report_data: bytes) -> tuple[HclReport, RuntimeClaims]:
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
                report, claims = read_hcl_report(raw)
            except (ParseError, BindingError):
                # A read that overlapped the paravisor's rewrite of the index is torn (the index
                # is read in several chunks): read again until the deadline.
                if self._clock() >= deadline:
                    raise
                self._sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            user_data = claims.user_data
            if user_data is not None and hmac.compare_digest(user_data, report_data):
                return report, claims
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
    def _attestation_key(tpm: Tpm, claims: RuntimeClaims) -> rsa.RSAPublicKey:
        try:
            area = tpm.read_public(AK_HANDLE)
        except TpmCommandError as exc:
            if exc.name == "TPM_RC_HANDLE":
                raise UsageError(f"the vTPM has no attestation key at {AK_HANDLE:#010x}") from None
            raise
        key = area.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise BindingError(f"the attestation key at {AK_HANDLE:#010x} is not an RSA key")
        if key.public_numbers() != claims.ak_public_key.public_numbers():
            raise BindingError(
                f"the attestation key at {AK_HANDLE:#010x} is not the HCL report's {AK_KEY_ID}: "
                "quotes it signs are not bound to this TEE"
            )
        return key

    def _quote(self, tpm: Tpm, ak: rsa.RSAPublicKey, report_data: bytes) -> tuple[bytes, bytes, list[bytes]]:
        for _ in range(_QUOTE_ATTEMPTS):
            quote = tpm.quote(AK_HANDLE, report_data, _PCR_INDICES)
            pcrs = tpm.pcr_read(_PCR_INDICES)
            attest = parse_attest(quote.attest)
            if attest.selected() != _SELECTION:
                raise BindingError(
                    f"the quote selects (bank, PCR) {attest.selected()}, expected SHA-256 PCRs 0-23"
                )
            signature = parse_signature(quote.signature)
            # The evidence carries the bare RSA signature, which the verifier reads as
            # RSASSA-PKCS1-v1_5 with SHA-256 (trustee's az-*-vtpm verifiers do the same).
            if (signature.sig_alg, signature.hash_alg) != (TPM_ALG_RSASSA, TPM_ALG_SHA256):
                raise SignatureError(
                    f"the quote is signed with {alg_name(signature.sig_alg)}/{alg_name(signature.hash_alg)}, "
                    "expected rsassa/sha256"
                )
            try:
                # Part 3 §18.4: signature, TPM_GENERATED magic, pcrDigest over the PCRs read,
                # extraData == our report data.
                verify_quote(
                    quote.attest,
                    signature,
                    ak,
                    {TPM_ALG_SHA256: dict(zip(_PCR_INDICES, pcrs, strict=True))},
                    nonce=report_data,
                )
            except MeasurementError:
                continue  # a PCR was extended between the quote and the read: quote again
            return quote.attest, signature.rsa, pcrs
        raise BindingError("the PCRs kept changing between the quote and the PCR read")
