"""AzureVtpmQuoteProvider against a real swtpm provisioned like an Azure CVM's paravisor vTPM
(AK at 0x81000003, HCL report at 0x01400001 regenerated after report data is written to
0x01400002), the HCL-report parser against real Azure captures, and the IMDS clients against
httpx2 mock transports (no network)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from confide.errors import BindingError, NetworkError, ParseError, SignatureError, UsageError
from confide.evidence.azure_vtpm import HclReport, HclReportType
from confide.evidence.tpm import (
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TpmSignature,
    parse_attest,
    parse_signature,
)
from confide.runtime.azure_vtpm import (
    AzureVtpmQuoteProvider,
    ImdsTdQuoteSource,
    ImdsVcekSource,
    hw_report_data,
    read_hcl_report,
)
from confide.runtime.tpm import TPMA_NV_OWNERREAD, TPMA_NV_OWNERWRITE, Alg, TcpTransport, Tpm
from confide.verify.result import Platform
from confide.verify.tpm import verify_quote
from tpm_fakes import (
    AK_HANDLE,
    HCL_INDEX,
    USER_DATA_INDEX,
    EmulatedParavisor,
    QuoteInterceptor,
    ak_template,
    build_hcl_report,
    clear_index,
    define_hcl_index,
    pcr_extend,
    provision_ak,
    quote_response,
    with_pcr_selection,
)

REPORT_DATA = hashlib.sha512(b"ephemeral key || nonce").digest()
ASSETS = Path(__file__).parents[1] / "assets" / "azure-vtpm-guest"


@pytest.fixture(scope="module")
def ak(swtpm_tpm: Tpm) -> rsa.RSAPublicKey:
    return provision_ak(swtpm_tpm)


@pytest.fixture
def vtpm(swtpm_tpm: Tpm, ak: rsa.RSAPublicKey) -> Iterator[Tpm]:
    """The paravisor's indices as at boot: an HCL report with zero user-data; no report-data index."""
    clear_index(swtpm_tpm, USER_DATA_INDEX)
    define_hcl_index(swtpm_tpm, build_hcl_report(ak, bytes(64)))
    yield swtpm_tpm
    clear_index(swtpm_tpm, USER_DATA_INDEX)
    clear_index(swtpm_tpm, HCL_INDEX)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeVcek:
    der: bytes = b"\x30\x03\x02\x01\x00"
    calls: int = 0

    def get_vcek(self) -> bytes:
        self.calls += 1
        return self.der


@dataclass
class FakeTdQuotes:
    """Returns a v4 TDX quote whose REPORTDATA is the TD report's (or ``wrong`` data)."""

    wrong: bool = False
    reports: list[bytes] = field(default_factory=list)

    def get_td_quote(self, td_report: bytes) -> bytes:
        self.reports.append(td_report)
        report_data = bytes(64) if self.wrong else td_report[128:192]
        return struct.pack("<HH", 4, 2) + bytes(44) + bytes(520) + report_data + bytes(100)


def _provider(
    vtpm: Tpm, ak: rsa.RSAPublicKey, clock: FakeClock | None = None, **paravisor: object
) -> tuple[AzureVtpmQuoteProvider, EmulatedParavisor, FakeVcek, FakeTdQuotes]:
    assert isinstance(vtpm.transport, TcpTransport)
    emulated = EmulatedParavisor(vtpm.transport, ak, **paravisor)  # type: ignore[arg-type]
    vcek, td = FakeVcek(), FakeTdQuotes()
    clock = clock or FakeClock()
    provider = AzureVtpmQuoteProvider(
        Tpm(emulated), vcek_source=vcek, td_quote_source=td, clock=clock, sleep=clock.sleep
    )
    return provider, emulated, vcek, td


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_azure_vtpm_handles() -> None:
    # The paravisor's: AK persisted at 0x81000003, HCL report NV index 0x01400001, report data
    # written by the guest to NV index 0x01400002 (Azure confidential VM guest attestation).
    assert (AK_HANDLE, HCL_INDEX, USER_DATA_INDEX) == (0x81000003, 0x01400001, 0x01400002)


def test_snp_evidence(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    provider, emulated, vcek, _ = _provider(vtpm, ak)
    evidence = provider.get_evidence(REPORT_DATA)
    assert evidence.platform is Platform.AZURE_SNP_VTPM and evidence.provider == "azure-vtpm/snp"
    doc = json.loads(evidence.raw)
    assert set(doc) == set(json.loads((ASSETS / "az-snp-vtpm-evidence-v1.json").read_text()))
    assert doc["version"] == 1 and _b64url(doc["vcek"]) == vcek.der and vcek.calls == 1
    assert emulated.writes == [REPORT_DATA]
    assert vtpm.nv_read_public(USER_DATA_INDEX).data_size == 64  # defined by the provider
    hcl = _b64url(doc["hcl_report"])
    assert hcl == vtpm.nv_read(HCL_INDEX)
    assert read_hcl_report(hcl)[1].user_data == REPORT_DATA
    # The quote, checked independently of the provider's own checks.
    message = bytes.fromhex(doc["tpm_quote"]["message"])
    signature = bytes.fromhex(doc["tpm_quote"]["signature"])
    pcrs = [bytes.fromhex(p) for p in doc["tpm_quote"]["pcrs"]]
    ak_from_tpm = vtpm.read_public(AK_HANDLE).public_key()
    assert isinstance(ak_from_tpm, rsa.RSAPublicKey)
    ak_from_tpm.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    signer_len = int.from_bytes(message[6:8], "big")
    extra_at = 8 + signer_len
    assert message[extra_at : extra_at + 2] == b"\x00\x40"
    assert message[extra_at + 2 : extra_at + 66] == REPORT_DATA
    assert message[-34:] == b"\x00\x20" + hashlib.sha256(b"".join(pcrs)).digest()
    assert pcrs == vtpm.pcr_read()


def test_tdx_evidence(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    define_hcl_index(vtpm, build_hcl_report(ak, bytes(64), report_type=4))
    provider, _, vcek, td = _provider(vtpm, ak, report_type=4)
    evidence = provider.get_evidence(REPORT_DATA)
    assert evidence.platform is Platform.AZURE_TDX_VTPM and evidence.provider == "azure-vtpm/tdx"
    doc = json.loads(evidence.raw)
    assert set(doc) == set(json.loads((ASSETS / "az-tdx-vtpm-evidence-v1.json").read_text()))
    hcl = _b64url(doc["hcl_report"])
    assert td.reports == [hcl[32 : 32 + 1024]] and vcek.calls == 0
    assert _b64url(doc["td_quote"])[568:632] == hcl[32 + 128 : 32 + 192]


def test_td_quote_of_another_report_is_refused(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    define_hcl_index(vtpm, build_hcl_report(ak, bytes(64), report_type=4))
    provider, _, _, td = _provider(vtpm, ak, report_type=4)
    td.wrong = True
    with pytest.raises(BindingError, match="TD quote from IMDS"):
        provider.get_evidence(REPORT_DATA)


def test_existing_report_data_index_of_another_size_is_redefined(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    vtpm.nv_define_space(USER_DATA_INDEX, 32, TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD)
    provider, emulated, _, _ = _provider(vtpm, ak)
    provider.get_evidence(REPORT_DATA)
    assert vtpm.nv_read_public(USER_DATA_INDEX).data_size == 64 and emulated.writes == [REPORT_DATA]
    # and an index of the right size is reused as it is
    provider.get_evidence(bytes(reversed(REPORT_DATA)))
    assert emulated.writes == [REPORT_DATA, bytes(reversed(REPORT_DATA))]


def test_waits_for_the_paravisor(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    clock = FakeClock()
    provider, _, _, _ = _provider(vtpm, ak, clock, lag=3)
    evidence = provider.get_evidence(REPORT_DATA)
    assert read_hcl_report(_b64url(json.loads(evidence.raw)["hcl_report"]))[1].user_data == REPORT_DATA
    assert clock.sleeps == [0.05, 0.1, 0.2]


def test_a_torn_read_is_read_again(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    clock = FakeClock()
    provider, _, _, _ = _provider(vtpm, ak, clock, tear=True)
    provider.get_evidence(REPORT_DATA)
    assert clock.sleeps == [0.05]


def test_a_stale_report_is_refused(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    clock = FakeClock()
    provider, _, _, _ = _provider(vtpm, ak, clock, stale=True)
    with pytest.raises(BindingError, match=r"still carries user-data 0000.* after 10 s"):
        provider.get_evidence(REPORT_DATA)
    assert clock.now >= 10


def test_an_ak_that_is_not_the_reports_is_refused(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    other = rsa.generate_private_key(65537, 2048).public_key()
    provider, _, _, _ = _provider(vtpm, ak, ak_in_report=other)
    with pytest.raises(BindingError, match="is not the HCL report's HCLAkPub"):
        provider.get_evidence(REPORT_DATA)


def test_not_an_azure_cvm(swtpm_tpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    clear_index(swtpm_tpm, HCL_INDEX)
    provider, _, _, _ = _provider(swtpm_tpm, ak)
    try:
        with pytest.raises(UsageError, match="no NV index 0x01400001"):
            provider.get_evidence(REPORT_DATA)
    finally:
        clear_index(swtpm_tpm, USER_DATA_INDEX)


def test_report_data_must_be_64_bytes(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    provider, emulated, _, _ = _provider(vtpm, ak)
    with pytest.raises(UsageError, match="expected 64"):
        provider.get_evidence(b"short")
    assert emulated.writes == []


@dataclass
class _QuoteTamper:
    """Forwards to a real TPM but alters TPM2_Quote responses."""

    inner: TcpTransport
    flip_signature: bool = False

    def transmit(self, command: bytes) -> bytes:
        response = self.inner.transmit(command)
        if int.from_bytes(command[6:10], "big") == 0x158 and self.flip_signature:
            # the last byte of the RSA signature sits before the 5-byte auth area
            response = response[:-6] + bytes([response[-6] ^ 1]) + response[-5:]
        return response


def test_a_quote_that_does_not_verify_is_refused(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    assert isinstance(vtpm.transport, TcpTransport)
    # the report already carries the report data: no paravisor needed
    define_hcl_index(vtpm, build_hcl_report(ak, REPORT_DATA))
    tampered = Tpm(_QuoteTamper(vtpm.transport, flip_signature=True))
    provider = AzureVtpmQuoteProvider(tampered, vcek_source=FakeVcek(), td_quote_source=FakeTdQuotes())
    with pytest.raises(SignatureError, match="does not verify"):
        provider.get_evidence(REPORT_DATA)


def _quoting_provider(
    vtpm: Tpm, ak: rsa.RSAPublicKey, interceptor: QuoteInterceptor
) -> AzureVtpmQuoteProvider:
    # the report already carries the report data: no paravisor needed
    define_hcl_index(vtpm, build_hcl_report(ak, REPORT_DATA))
    return AzureVtpmQuoteProvider(Tpm(interceptor), vcek_source=FakeVcek(), td_quote_source=FakeTdQuotes())


def test_a_pcr_extended_between_quote_and_read_means_quote_again(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    assert isinstance(vtpm.transport, TcpTransport)
    transport = vtpm.transport
    before = vtpm.pcr_read()

    def extend_once(quotes: int) -> None:
        if quotes == 1:
            pcr_extend(transport, 23, hashlib.sha256(b"measured between quote and read").digest())

    interceptor = QuoteInterceptor(transport, after_quote=extend_once)
    evidence = _quoting_provider(vtpm, ak, interceptor).get_evidence(REPORT_DATA)
    assert len(interceptor.quotes) == 2
    # the first quote was over the PCRs before the extend, so it did not match the read
    first = parse_attest(quote_response(interceptor.quotes[0][1])[0])
    assert first.pcr_digest == hashlib.sha256(b"".join(before)).digest()
    quote = json.loads(evidence.raw)["tpm_quote"]
    pcrs = [bytes.fromhex(p) for p in quote["pcrs"]]
    assert pcrs == vtpm.pcr_read() and pcrs[23] != before[23] and pcrs[:23] == before[:23]
    assert bytes.fromhex(quote["message"]) == quote_response(interceptor.quotes[1][1])[0]
    verified = verify_quote(
        bytes.fromhex(quote["message"]),
        TpmSignature(TPM_ALG_RSASSA, TPM_ALG_SHA256, rsa=bytes.fromhex(quote["signature"])),
        ak,
        {TPM_ALG_SHA256: dict(enumerate(pcrs))},
        nonce=REPORT_DATA,
    )
    assert verified.attest.pcr_digest == hashlib.sha256(b"".join(pcrs)).digest()


def test_pcrs_that_keep_changing_are_refused(vtpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    assert isinstance(vtpm.transport, TcpTransport)
    transport = vtpm.transport

    def extend(quotes: int) -> None:
        pcr_extend(transport, 23, hashlib.sha256(b"measurement %d" % quotes).digest())

    interceptor = QuoteInterceptor(transport, after_quote=extend)
    with pytest.raises(BindingError, match="the PCRs kept changing between the quote and the PCR read"):
        _quoting_provider(vtpm, ak, interceptor).get_evidence(REPORT_DATA)
    assert len(interceptor.quotes) == 3  # the provider's _QUOTE_ATTEMPTS


@pytest.mark.parametrize(
    ("scheme", "hash_alg", "name"),
    [(Alg.RSASSA, Alg.SHA384, "rsassa/sha384"), (Alg.RSAPSS, Alg.SHA256, "rsapss/sha256")],
)
def test_a_quote_not_signed_with_rsassa_sha256_is_refused(
    vtpm: Tpm, ak: rsa.RSAPublicKey, scheme: Alg, hash_alg: Alg, name: str
) -> None:
    """The evidence carries the bare RSA signature, which verifiers read as RSASSA-SHA256: an AK
    of another scheme (whose quote verify_quote itself would accept) is refused."""
    assert isinstance(vtpm.transport, TcpTransport)
    other = provision_ak(vtpm, template=ak_template(scheme, hash_alg))
    try:
        assert other.public_numbers() != ak.public_numbers()
        interceptor = QuoteInterceptor(vtpm.transport)
        with pytest.raises(SignatureError, match=f"the quote is signed with {name}, expected rsassa/sha256"):
            _quoting_provider(vtpm, other, interceptor).get_evidence(REPORT_DATA)
        # the TPM really signed with that scheme, and the signature is good
        attest, raw_signature = quote_response(interceptor.quotes[0][1])
        signature = parse_signature(raw_signature)
        assert (signature.sig_alg, signature.hash_alg) == (scheme, hash_alg)
        pcrs = vtpm.pcr_read()
        verify_quote(
            attest,
            signature,
            other,
            {TPM_ALG_SHA256: dict(enumerate(pcrs))},
            nonce=REPORT_DATA,
        )
    finally:
        assert provision_ak(vtpm).public_numbers() == ak.public_numbers()  # the module's AK again


@pytest.mark.parametrize(
    "selection",
    [
        [(Alg.SHA256, list(range(23)))],  # PCR 23 left out
        [(Alg.SHA256, list(range(1, 24)))],  # PCR 0 left out
        [(Alg.SHA1, list(range(24)))],  # another bank
        [(Alg.SHA384, list(range(24)))],
        [(Alg.SHA256, list(range(24))), (Alg.SHA1, [0])],  # and one more
        [(Alg.SHA256, list(range(24))), (Alg.SHA256, [0])],  # PCR 0 twice
    ],
)
def test_a_quote_of_another_pcr_selection_is_refused(
    vtpm: Tpm, ak: rsa.RSAPublicKey, selection: list[tuple[int, list[int]]]
) -> None:
    """The TPM is asked (by rewriting the TPM2_Quote command on its way) to quote another PCR
    selection than SHA-256 PCRs 0-23; it does, signs it, and the provider refuses the quote."""
    assert isinstance(vtpm.transport, TcpTransport)
    interceptor = QuoteInterceptor(vtpm.transport, rewrite=lambda c: with_pcr_selection(c, selection))
    selected = tuple((int(bank), i) for bank, pcrs in selection for i in pcrs)
    message = f"the quote selects (bank, PCR) {selected}, expected SHA-256 PCRs 0-23"
    with pytest.raises(BindingError, match=f"^{re.escape(message)}$"):
        _quoting_provider(vtpm, ak, interceptor).get_evidence(REPORT_DATA)
    assert len(interceptor.quotes) == 1
    assert parse_attest(quote_response(interceptor.quotes[0][1])[0]).selected() == selected


# --- the HCL report: confide.evidence.azure_vtpm's parser plus the binding check -----------------
# (malformed headers and runtime claims: tests/unit/test_azure_vtpm_parse.py)


@pytest.mark.parametrize(("name", "report_type"), [("az-snp-vtpm", 2), ("az-tdx-vtpm", 4)])
def test_real_azure_evidence_parses(name: str, report_type: int) -> None:
    doc = json.loads((ASSETS / f"{name}-evidence-v1.json").read_text())
    report, claims = read_hcl_report(_b64url(doc["hcl_report"]))
    assert report.report_type == report_type and claims.user_data == bytes(64)
    message = bytes.fromhex(doc["tpm_quote"]["message"])
    attest = parse_attest(message)
    assert attest.extra_data == b"challenge"
    pcrs = b"".join(bytes.fromhex(p) for p in doc["tpm_quote"]["pcrs"])
    assert attest.pcr_digest == hashlib.sha256(pcrs).digest()
    claims.ak_public_key.verify(
        bytes.fromhex(doc["tpm_quote"]["signature"]), message, padding.PKCS1v15(), hashes.SHA256()
    )


def _valid(report_type: int = 2) -> bytearray:
    key = rsa.generate_private_key(65537, 2048).public_key()
    return bytearray(build_hcl_report(key, REPORT_DATA, report_type=report_type))


def _set(raw: bytearray, offset: int, value: bytes) -> bytes:
    raw[offset : offset + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize("report_type", [2, 4])
def test_synthetic_hcl_reports_are_what_the_verifier_parses(report_type: int) -> None:
    """tpm_fakes.build_hcl_report, as the emulated paravisor writes it, passes the evidence
    parser (report_size = 0x4D4 + variable_data_size, NV padding after it)."""
    raw = bytes(_valid(report_type))
    report = HclReport.from_bytes(raw)
    assert report.report_type is HclReportType(report_type) and report.report_size < len(raw)
    assert hw_report_data(report)[:32] == hashlib.sha256(report.var_data).digest()
    assert report.runtime_claims().user_data == REPORT_DATA


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        # a torn read: the variable data or the hardware report of another generation
        (lambda r: _set(r, 1236, b"["), BindingError, r"expected sha256\(variable data\)"),
        (lambda r: _set(r, 32 + 0x50, bytes(32)), BindingError, "report data starts with 0000"),
        # the evidence parser's errors come through as they are
        (lambda r: _set(r, 0, b"HCLB"), ParseError, "header.signature"),
        (lambda r: bytes(r[:1000]), ParseError, "truncated"),
    ],
)
def test_hcl_report_negatives(mutate: object, error: type[Exception], match: str) -> None:
    assert read_hcl_report(bytes(_valid()))[1].user_data == REPORT_DATA  # the positive twin
    with pytest.raises(error, match=match):
        read_hcl_report(mutate(_valid()))  # type: ignore[operator]


def test_tdx_hcl_report_needs_a_td_report() -> None:
    raw = _valid(report_type=4)
    report, _ = read_hcl_report(bytes(raw))
    assert hw_report_data(report)[:32] == hashlib.sha256(report.var_data).digest()
    raw[32] = 0x00
    with pytest.raises(ParseError, match="TD report type 0x0"):
        read_hcl_report(bytes(raw))


# --- IMDS -----------------------------------------------------------------------------------------


def _cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )


def test_imds_vcek() -> None:
    cert = _cert()
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"vcekCert": pem, "certificateChain": pem, "tcbm": "x"})

    der = ImdsVcekSource(transport=httpx2.MockTransport(handler)).get_vcek()
    assert der == cert.public_bytes(serialization.Encoding.DER)
    assert str(seen[0].url) == "http://169.254.169.254/metadata/THIM/amd/certification"
    assert seen[0].headers["Metadata"] == "true"


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (httpx2.Response(404), NetworkError, "got HTTP 404"),
        (httpx2.Response(200, content=b"<html>"), ParseError, "not JSON"),
        (httpx2.Response(200, json=["x"]), ParseError, "not a JSON object"),
        (httpx2.Response(200, json={"tcbm": "x"}), ParseError, "no vcekCert"),
        (
            httpx2.Response(
                200, json={"vcekCert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}
            ),
            ParseError,
            "certificate",
        ),
    ],
)
def test_imds_vcek_negatives(reply: httpx2.Response, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ImdsVcekSource(transport=httpx2.MockTransport(lambda _: reply)).get_vcek()


@pytest.mark.parametrize("declared", [True, False])
def test_imds_answer_larger_than_evidence_is_refused_unread(declared: bool) -> None:
    # IMDS is served by the host: a well-formed answer padded past the bound (the evidence size
    # limit, MAX_IMDS_ANSWER) is not taken
    from confide.evidence.azure_vtpm import MAX_EVIDENCE_SIZE as MAX_IMDS_ANSWER

    pem = _cert().public_bytes(serialization.Encoding.PEM).decode()
    body = json.dumps({"vcekCert": pem, "pad": "x" * MAX_IMDS_ANSWER}).encode()
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1 << 16):
            sent.append(i)
            yield body[i : i + (1 << 16)]

    headers = {"Content-Length": str(len(body))} if declared else {}
    reply = httpx2.Response(200, headers=headers, content=chunks())
    with pytest.raises(ParseError, match=f"larger than {MAX_IMDS_ANSWER} bytes|declares {len(body)} bytes"):
        ImdsVcekSource(transport=httpx2.MockTransport(lambda _: reply)).get_vcek()
    assert len(sent) <= MAX_IMDS_ANSWER // (1 << 16) + 1  # read no further than the bound


def test_imds_unreachable_is_a_network_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("no route", request=request)

    with pytest.raises(NetworkError, match="no route"):
        ImdsVcekSource(transport=httpx2.MockTransport(handler)).get_vcek()


def test_imds_td_quote() -> None:
    td_report = bytes(range(256)) * 4
    quote = b"\x04\x00quote\xff\xfe"
    seen: list[dict[str, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.method == "POST" and str(request.url) == "http://169.254.169.254/acc/tdquote"
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json={"quote": base64.urlsafe_b64encode(quote).decode().rstrip("=")})

    assert ImdsTdQuoteSource(transport=httpx2.MockTransport(handler)).get_td_quote(td_report) == quote
    assert _b64url(seen[0]["report"]) == td_report and "=" not in seen[0]["report"]
    with pytest.raises(UsageError, match="expected 1024"):
        ImdsTdQuoteSource(transport=httpx2.MockTransport(handler)).get_td_quote(td_report[:-1])
    for body in ({"quote": "a*b"}, {"quote": ""}, {"nope": 1}):
        source = ImdsTdQuoteSource(
            transport=httpx2.MockTransport(lambda _, b=body: httpx2.Response(200, json=b))
        )
        with pytest.raises(ParseError):
            source.get_td_quote(td_report)


# --- confide run --tee az-vtpm --------------------------------------------------------------------


def test_cli_run_az_vtpm_uses_the_vtpm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The provider is wired to ``confide run --tee az-vtpm``: it reaches for the TPM device
    (here: a path that does not exist) after asking the CAS for a nonce."""
    from click.testing import CliRunner

    from confide.cas import cli
    from confide.cas.client import CasClient
    from confide.runtime import tpm

    class FakeCas:
        def nonce(self) -> str:
            return "00" * 32

        def close(self) -> None:
            pass

    monkeypatch.setattr(CasClient, "from_env", classmethod(lambda cls: FakeCas()))
    monkeypatch.setattr(tpm, "DEFAULT_TPM_DEVICE", tmp_path / "tpmrm0")
    result = CliRunner().invoke(cli.run, ["--config-id", "p/s", "--tee", "az-vtpm", "--", "/bin/true"])
    assert result.exit_code == UsageError.exit_code, result.output
    assert result.output.startswith("error: UsageError: ") and result.output.count("\n") == 1, result.output
    assert f"{str(tmp_path / 'tpmrm0')!r} does not exist: this machine has no (v)TPM" in result.output
