"""``confide.verify.azure_vtpm`` and ``confide.platforms.azure_vtpm``: real Azure CVM evidence
(trustee's vectors, see tests/assets/tpm/README.md), every tamper case of MANIFEST.md §5, and
forged-but-signed evidence under a fake AMD PKI for what real vectors cannot show."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from snp_fakes import AT as FAKE_AT
from snp_fakes import make_fake_amd

from confide.errors import (
    BindingError,
    CertificateChainError,
    CollateralMissingError,
    ConfideError,
    MeasurementError,
    ParseError,
    SignatureError,
    UsageError,
)
from confide.evidence.azure_vtpm import VAR_DATA_OFFSET, HclReportType, parse_evidence
from confide.evidence.sev_snp import Product
from confide.platforms import VerifyRequest, detect_platform, verify_request
from confide.verify.azure_vtpm import verify_azure_snp
from confide.verify.result import Platform
from confide.verify.sev_snp import SnpVerifier, load_certificates

ASSETS = Path(__file__).parent.parent / "assets"
SNP = ASSETS / "tpm" / "trustee-az-snp-vtpm"
TDX = ASSETS / "tpm" / "trustee-az-tdx-vtpm"
TD_QUOTE = (ASSETS / "tdx/trustee-az-tdx-vtpm/td-quote.bin").read_bytes()
COLLATERAL = ASSETS / "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json"
SNP_AT = datetime(2026, 1, 1, tzinfo=UTC)
TDX_AT = datetime(2025, 6, 4, 9, 52, 38, tzinfo=UTC)
CHALLENGE = b"challenge"
V2_NONCE = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
)
SNP_V01_PCR0 = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
SNP_V2_PCR0 = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
SNP_RAW_PCR0 = "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be"
TDX_PCR0 = "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"


def snp(evidence: bytes, nonce: bytes | None = CHALLENGE, at: datetime = SNP_AT, **kw: Any) -> Any:
    return verify_request(
        VerifyRequest(evidence=evidence, platform=Platform.AZURE_SNP_VTPM, at=at, nonce=nonce, **kw)
    )


def tdx(
    evidence: bytes, nonce: bytes | None = CHALLENGE, collateral: Path | None = COLLATERAL, **kw: Any
) -> Any:
    req = VerifyRequest(
        evidence=evidence,
        platform=Platform.AZURE_TDX_VTPM,
        at=TDX_AT,
        nonce=nonce,
        collateral=collateral,
        **kw,
    )
    return verify_request(req)


def _quote_lists(path: Path) -> dict[str, Any]:
    q = json.loads(path.read_text())
    return {k: list(bytes.fromhex(q[k])) for k in ("signature", "message")} | {
        "pcrs": [list(bytes.fromhex(p)) for p in q["pcrs"]]
    }


def raw_snp(hcl: bytes | None = None, quote: dict[str, Any] | None = None) -> bytes:
    """A v0 container of the raw files hcl-report.bin, tpm-quote-v1.json and vcek.pem."""
    hcl = (SNP / "hcl-report.bin").read_bytes() if hcl is None else hcl
    doc = {"quote": quote or _quote_lists(SNP / "tpm-quote-v1.json"), "report": list(hcl)}
    doc["vcek"] = (SNP / "vcek.pem").read_text()
    return json.dumps(doc).encode()


def raw_tdx(hcl: bytes | None = None, td_quote: bytes = TD_QUOTE) -> bytes:
    hcl = (TDX / "hcl-report.bin").read_bytes() if hcl is None else hcl
    doc = {
        "tpm_quote": _quote_lists(TDX / "tpm-quote-v1.json"),
        "hcl_report": list(hcl),
        "td_quote": list(td_quote),
    }
    return json.dumps(doc).encode()


def flip(data: bytes, offset: int, value: int | None = None) -> bytes:
    out = bytearray(data)
    out[offset] = (out[offset] + 1) % 256 if value is None else value
    return bytes(out)


# --- real evidence verifies to what MANIFEST.md says ------------------------------------------


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_snp_v0_v1(name: str) -> None:
    result = snp((SNP / name).read_bytes())
    assert result.platform is Platform.AZURE_SNP_VTPM
    c = result.claims
    assert c["nonce"] == "6368616c6c656e6765" and c["nonce_checked"] is True
    assert c["pcrs"]["0"] == SNP_V01_PCR0 and len(c["pcrs"]) == 24
    assert c["vmpl"] == 0 and c["product"] == "Milan" and c["debug"] is False
    assert c["vm_configuration"] == {
        "console-enabled": True,
        "secure-boot": True,
        "tpm-enabled": True,
        "vmUniqueId": "26F8BC30-774E-4290-8E7A-535F3B672AEE",
    }
    assert c["hcl_user_data"] == "00" * 64 and c["hcl_user_data_checked"] is False
    # REPORT_DATA = SHA-256(runtime claims) ‖ 0*32
    assert c["report_data"] == result.details["hcl_var_data_sha256"] + "00" * 32
    assert result.details["evidence_version"] == int(name[-6])
    assert result.evidence_digest == hashlib.sha256((SNP / name).read_bytes()).hexdigest()


def test_snp_v2_binds_user_data() -> None:
    result = snp((SNP / "evidence-v2.json").read_bytes(), nonce=V2_NONCE)
    c = result.claims
    assert c["nonce"] == V2_NONCE.hex() and c["pcrs"]["0"] == SNP_V2_PCR0
    assert c["hcl_user_data"] == V2_NONCE.hex() + "00" * 16 and c["hcl_user_data_checked"] is True


def test_snp_v2_wrong_report_data_fails_on_user_data() -> None:
    # trustee: "User-data in HCL variable data doesn't match report_data"
    with pytest.raises(BindingError, match="step 5: user-data in the HCL runtime claims"):
        snp((SNP / "evidence-v2.json").read_bytes(), nonce=bytes.fromhex("123abc"))


def test_snp_raw_files() -> None:
    result = snp(raw_snp())
    assert result.claims["pcrs"]["0"] == SNP_RAW_PCR0 and result.claims["version"] == 2


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_tdx(name: str) -> None:
    result = tdx((TDX / name).read_bytes())
    c = result.claims
    assert result.platform is Platform.AZURE_TDX_VTPM
    assert c["nonce"] == CHALLENGE.hex() and c["pcrs"]["0"] == TDX_PCR0
    assert result.tcb_status is not None and result.tcb_status.value == "OutOfDate"
    assert result.advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    assert c["fmspc"] == "00806f050000" and c["sept_ve_disable"] is False
    assert c["report_data"] == result.details["hcl_var_data_sha256"] + "00" * 32
    assert c["vm_configuration"]["tpm-persisted"] is False  # type: ignore[index]


def test_tdx_raw_files() -> None:
    assert tdx(raw_tdx()).claims["pcrs"]["0"] == TDX_PCR0


def test_no_nonce_reports_extra_data_unchecked() -> None:
    c = snp((SNP / "evidence-v2.json").read_bytes(), nonce=None).claims
    assert (
        c["nonce"] == V2_NONCE.hex() and c["nonce_checked"] is False and c["hcl_user_data_checked"] is False
    )


# --- MANIFEST.md tamper cases and flipped bytes -----------------------------------------------


def test_snp_reported_tcb_changed() -> None:
    # trustee: HCL byte 0x01a6 := 0 -> "SNP version mismatch" (REPORTED_TCB.SNP vs the VCEK).
    with pytest.raises(CertificateChainError, match="REPORTED_TCB"):
        snp(raw_snp(flip((SNP / "hcl-report.bin").read_bytes(), 0x01A6, 0)))


@pytest.mark.parametrize("offset", [0x06E0, 0x0540, VAR_DATA_OFFSET, 2345])
def test_snp_runtime_claims_changed(offset: int) -> None:
    with pytest.raises(BindingError, match="step 3"):
        snp(raw_snp(flip((SNP / "hcl-report.bin").read_bytes(), offset)))


def test_tdx_runtime_claims_changed() -> None:
    # trustee: HCL byte 0x0880 +1 -> "TDX Quote report data mismatch"
    with pytest.raises(BindingError, match="step 3"):
        tdx(raw_tdx(flip((TDX / "hcl-report.bin").read_bytes(), 0x0880)))


@pytest.mark.parametrize("case", ["snp", "tdx"])
def test_reversed_nonce(case: str) -> None:
    # trustee: reversed report data -> "TPM quote nonce doesn't match expected report_data"
    with pytest.raises(BindingError, match=r"extraData|nonce"):
        if case == "snp":
            snp((SNP / "evidence-v1.json").read_bytes(), nonce=CHALLENGE[::-1])
        else:
            tdx((TDX / "evidence-v1.json").read_bytes(), nonce=CHALLENGE[::-1])


@pytest.mark.parametrize("offset", [0x20 + 0x50, 0x20 + 0x90, 0x20 + 0x2A0, 0x20 + 0x2F0])
def test_snp_report_bytes_flipped(offset: int) -> None:
    # report_data, measurement, signature R, signature S
    with pytest.raises(SignatureError):
        snp(raw_snp(flip((SNP / "hcl-report.bin").read_bytes(), offset)))


def test_snp_report_header_fields_are_checked() -> None:
    hcl = (SNP / "hcl-report.bin").read_bytes()
    with pytest.raises(ParseError, match="report_type"):
        snp(raw_snp(struct.pack("<I", 4).join((hcl[:0x4C8], hcl[0x4CC:]))))


def _mutate_quote(field: str, offset: int) -> dict[str, Any]:
    q = _quote_lists(SNP / "tpm-quote-v1.json")
    if field == "pcrs":
        q["pcrs"][offset][0] ^= 1
    else:
        q[field][offset] ^= 1
    return q


@pytest.mark.parametrize(
    ("field", "offset", "error"),
    [
        ("message", 0, SignatureError),
        ("message", 40, SignatureError),
        ("message", 121, SignatureError),
        ("signature", 0, SignatureError),
        ("signature", 255, SignatureError),
        ("pcrs", 0, MeasurementError),
        ("pcrs", 23, MeasurementError),
    ],
)
def test_tpm_quote_flipped(field: str, offset: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        snp(raw_snp(quote=_mutate_quote(field, offset)))


def test_quote_of_another_vm_is_refused() -> None:
    # v2's TPM quote with v1's HCL report: the AK in v1's runtime claims did not sign it.
    v1 = json.loads((SNP / "evidence-v1.json").read_text())
    v2 = json.loads((SNP / "evidence-v2.json").read_text())
    v1["tpm_quote"] = v2["tpm_quote"]
    with pytest.raises(SignatureError):
        snp(json.dumps(v1).encode(), nonce=V2_NONCE)


def test_vcek_flipped() -> None:
    doc = json.loads((SNP / "evidence-v1.json").read_text())
    der = bytearray(base64.urlsafe_b64decode(doc["vcek"] + "=="))
    der[-10] ^= 1  # inside the certificate's signature
    doc["vcek"] = base64.urlsafe_b64encode(bytes(der)).decode()
    with pytest.raises(CertificateChainError):
        snp(json.dumps(doc).encode())
    der[5] ^= 0x55  # DER structure
    doc["vcek"] = base64.urlsafe_b64encode(bytes(der)).decode()
    with pytest.raises((ParseError, CertificateChainError)):
        snp(json.dumps(doc).encode())


def test_vcek_of_another_chip() -> None:
    doc = json.loads((SNP / "evidence-v1.json").read_text())
    other = load_certificates((SNP / "vcek.pem").read_bytes(), "vcek.pem")[0]  # the raw HCL's VM
    doc["vcek"] = base64.urlsafe_b64encode(other.public_bytes(serialization.Encoding.DER)).decode()
    with pytest.raises(CertificateChainError, match=r"REPORTED_TCB|CHIP_ID"):
        snp(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("offset", "name"),
    [
        (0x20 + 256 + 8, "TEE_TCB_SVN"),
        (0x20 + 512 + 16, "MRTD"),
        (0x20 + 512 + 208 + 48, "RTMR1"),
        (0x20 + 128, "REPORTDATA"),
    ],
)
def test_tdx_td_report_differs_from_quote(offset: int, name: str) -> None:
    with pytest.raises(BindingError, match=f"step 2: the HCL's TD report {name}"):
        tdx(raw_tdx(flip((TDX / "hcl-report.bin").read_bytes(), offset)))


def test_tdx_td_report_hash_fields() -> None:
    with pytest.raises(BindingError, match="TEE_INFO_HASH"):
        tdx(raw_tdx(flip((TDX / "hcl-report.bin").read_bytes(), 0x20 + 80)))


@pytest.mark.parametrize("offset", [100, 700, 1000, 4000])
def test_td_quote_flipped(offset: int) -> None:
    with pytest.raises((SignatureError, ParseError, CertificateChainError)):
        tdx(raw_tdx(td_quote=flip(TD_QUOTE, offset)))


def test_tdx_needs_collateral() -> None:
    with pytest.raises(CollateralMissingError):
        tdx((TDX / "evidence-v1.json").read_bytes(), collateral=None)


def test_wrong_platform_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        tdx((SNP / "evidence-v1.json").read_bytes())
    with pytest.raises(ParseError):
        snp((TDX / "evidence-v1.json").read_bytes())


def test_certificate_options_are_refused() -> None:
    with pytest.raises(UsageError, match="drop --vcek"):
        snp((SNP / "evidence-v1.json").read_bytes(), vcek=SNP / "vcek.pem")
    with pytest.raises(UsageError, match="drop --collateral"):
        snp((SNP / "evidence-v1.json").read_bytes(), collateral=COLLATERAL)


# --- forged evidence under a fake AMD PKI (what real vectors cannot show) ---------------------

_AK = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_REAL = json.loads((SNP / "evidence-v1.json").read_text())


def _b64url_int(v: int) -> str:
    return base64.urlsafe_b64encode(v.to_bytes((v.bit_length() + 7) // 8, "big")).decode().rstrip("=")


def forge(*, vmpl: int = 0, hash_type: int = 1, user_data: bytes = bytes(64)) -> tuple[bytes, SnpVerifier]:
    """Evidence v2 whose SNP report is signed by a fake AMD VCEK and whose TPM quote (the real
    v1 TPMS_ATTEST, extraData "challenge") is re-signed by a fresh AK."""
    amd = make_fake_amd(Product.MILAN)
    pub = _AK.public_key().public_numbers()
    claims = {
        "keys": [
            {
                "kid": "HCLAkPub",
                "key_ops": ["sign"],
                "kty": "RSA",
                "e": _b64url_int(pub.e),
                "n": _b64url_int(pub.n),
            }
        ],
        "vm-configuration": {"secure-boot": False, "tpm-enabled": True},
        "user-data": user_data.hex(),
    }
    var = json.dumps(claims).encode()
    digest = hashlib.new({1: "sha256", 2: "sha384", 3: "sha512"}[hash_type], var).digest()
    report = amd.sign(amd.report(vmpl=vmpl, report_data=digest + bytes(64 - len(digest))))
    header = b"HCLA" + struct.pack("<IIII", 1, VAR_DATA_OFFSET + len(var), 2, 0) + bytes(12)
    request = struct.pack("<IIIII", 20 + len(var), 1, 2, hash_type, len(var))
    hcl = header + report + request + var
    message = bytes.fromhex(_REAL["tpm_quote"]["message"])
    signature = _AK.sign(message, padding.PKCS1v15(), hashes.SHA256())
    doc = {
        "version": 2,
        "tpm_quote": {
            "signature": signature.hex(),
            "message": message.hex(),
            "pcrs": _REAL["tpm_quote"]["pcrs"],
        },
        "hcl_report": base64.urlsafe_b64encode(hcl).decode(),
        "vcek": base64.urlsafe_b64encode(amd.vek.public_bytes(serialization.Encoding.DER)).decode(),
    }
    return json.dumps(doc).encode(), SnpVerifier(amd.roots(), cache_size=0)


def verify_forged(raw: bytes, verifier: SnpVerifier, nonce: bytes | None = CHALLENGE) -> Any:
    return verify_azure_snp(parse_evidence(raw, HclReportType.SNP), verifier, at=FAKE_AT, nonce=nonce)


@pytest.mark.parametrize("hash_type", [1, 2, 3])
def test_forged_evidence_verifies_with_every_hash_type(hash_type: int) -> None:
    raw, verifier = forge(hash_type=hash_type, user_data=CHALLENGE + bytes(55))
    result = verify_forged(raw, verifier)
    assert result.claims["pcrs"]["0"] == SNP_V01_PCR0 and result.claims["hcl_user_data_checked"] is True
    assert result.claims["vm_configuration"] == {"secure-boot": False, "tpm-enabled": True}


def test_forged_report_not_from_vmpl0() -> None:
    raw, verifier = forge(vmpl=1, user_data=CHALLENGE + bytes(55))
    with pytest.raises(BindingError, match="VMPL is 1"):
        verify_forged(raw, verifier)


def test_forged_v2_without_user_data_binding() -> None:
    raw, verifier = forge(user_data=bytes(64))
    with pytest.raises(BindingError, match="user-data"):
        verify_forged(raw, verifier)


def test_forged_nonce_too_long_for_user_data() -> None:
    raw, verifier = forge()
    with pytest.raises(BindingError, match="at most 64"):
        verify_forged(raw, verifier, nonce=bytes(65))


def test_forged_evidence_does_not_chain_to_the_pinned_roots() -> None:
    raw, _ = forge(user_data=CHALLENGE + bytes(55))
    with pytest.raises(CertificateChainError):
        snp(raw, at=FAKE_AT)


def test_forged_hcl_with_another_ak_in_the_claims() -> None:
    # An attacker swaps in its own AK but keeps the genuine SNP report: step 3 catches it.
    raw, verifier = forge(user_data=CHALLENGE + bytes(55))
    doc = json.loads(raw)
    hcl = bytearray(base64.urlsafe_b64decode(doc["hcl_report"]))
    at = hcl.index(b'"n": "') + 10
    hcl[at] = ord("A") if hcl[at] != ord("A") else ord("B")
    doc["hcl_report"] = base64.urlsafe_b64encode(bytes(hcl)).decode()
    with pytest.raises(BindingError, match="step 3"):
        verify_forged(json.dumps(doc).encode(), verifier)


def test_verified_evidence_is_frozen() -> None:
    result = snp((SNP / "evidence-v1.json").read_bytes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.platform = Platform.SEV_SNP  # type: ignore[misc]


# --- detection and fuzzing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "platform"),
    [
        (SNP / "evidence-v0.json", Platform.AZURE_SNP_VTPM),
        (SNP / "evidence-v1.json", Platform.AZURE_SNP_VTPM),
        (SNP / "evidence-v2.json", Platform.AZURE_SNP_VTPM),
        (TDX / "evidence-v0.json", Platform.AZURE_TDX_VTPM),
        (TDX / "evidence-v1.json", Platform.AZURE_TDX_VTPM),
    ],
)
def test_detect_platform(path: Path, platform: Platform) -> None:
    assert detect_platform(path.read_bytes()) is platform


@pytest.mark.parametrize(
    "data", [b"{}", b'{"hcl_report": 1}', b'{"quote": 1, "report": 2}', b"{" * 5000, b"[1]"]
)
def test_other_json_is_not_detected(data: bytes) -> None:
    with pytest.raises(ParseError, match="pass --platform"):
        detect_platform(data)


_RAW_SNP = raw_snp()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2599), st.integers(1, 255))
def test_fuzz_verify_mutated_hcl(offset: int, delta: int) -> None:
    """Any single-byte change of the HCL report is refused with a ConfideError (padding aside)."""
    hcl = bytearray((SNP / "hcl-report.bin").read_bytes())
    hcl[offset] = (hcl[offset] + delta) % 256
    try:
        snp(raw_snp(bytes(hcl)))
    except ConfideError:
        return
    # Only the unauthenticated bytes may change without failing: the header version's low byte
    # (1 may become the other known version, 2; reported in details only), header
    # reserved/request type/status, the hardware report field's padding and the NV padding
    # after report_size.
    assert offset == 4 or offset in range(12, 32) or offset >= 2346


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["message", "signature"]), st.integers(0, 255), st.integers(1, 255))
def test_fuzz_verify_mutated_quote(field: str, offset: int, delta: int) -> None:
    q = _quote_lists(SNP / "tpm-quote-v1.json")
    offset %= len(q[field])
    q[field][offset] = (q[field][offset] + delta) % 256
    with pytest.raises(ConfideError):
        snp(raw_snp(quote=q))


# Bytes of the TDX HCL report nothing vouches for: header version (its low byte: 2 may become
# the other known version, 1; reported in details only), request type/status/reserved; in the
# TDREPORT (at 0x20) REPORTTYPE, reserved, CPUSVN, reserved, MAC (the MAC is checkable only on
# the platform), the 17 reserved bytes after TEE_TCB_INFO, the field's padding; NV padding.
_TDX_FREE = [
    range(4, 5),
    range(12, 32),
    range(32, 32 + 64),
    range(32 + 192, 32 + 256),
    range(32 + 495, 32 + 512),
]
_TDX_FREE += [range(32 + 1024, 32 + 1184), range(2437, 2600)]


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2599), st.integers(1, 255))
def test_fuzz_verify_mutated_tdx_hcl(offset: int, delta: int) -> None:
    hcl = bytearray((TDX / "hcl-report.bin").read_bytes())
    hcl[offset] = (hcl[offset] + delta) % 256
    try:
        tdx(raw_tdx(bytes(hcl)))
    except ConfideError:
        return
    assert any(offset in r for r in _TDX_FREE)
