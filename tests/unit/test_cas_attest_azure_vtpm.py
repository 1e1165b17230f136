"""The CAS accepts Azure confidential-VM evidence (``az-snp-vtpm``, ``az-tdx-vtpm``): dispatch to
the Azure verifier, the binding of the runtime key and nonce (vTPM quote extraData *and* HCL
user-data), appraisal of the ``az-*-vtpm`` policy factors (SEV-SNP/TDX fields and vTPM PCRs),
and refusals recorded in the ledger.

SEV-SNP evidence is forged end to end under a test AMD PKI (``snp_fakes``) with a fresh vTPM AK,
so that it can be bound to each request's key; the real Azure TDX evidence (trustee) cannot be
re-bound, so it is taken through verification up to the binding check."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from snp_fakes import make_fake_amd

from cas_inproc import RuntimeKey, last_attestation, production_cas, refused, submission
from cli import run_confide
from confide import errors
from confide.cas.core import Cas
from confide.cas.pin import verify_cas_evidence
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.evidence.azure_vtpm import VAR_DATA_OFFSET
from confide.evidence.sev_snp import Product
from confide.policy.loader import loads_policy
from confide.policy.model import Policy
from confide.runtime.azure_vtpm import AzureVtpmQuoteProvider
from confide.runtime.tpm import TcpTransport, Tpm
from confide.verify.result import Platform
from tpm_fakes import (
    HCL_INDEX,
    USER_DATA_INDEX,
    EmulatedParavisor,
    build_hcl_report,
    clear_index,
    define_hcl_index,
    pcr_extend,
    provision_ak,
)

ASSETS = Path(__file__).parent.parent / "assets"
AMD = make_fake_amd(Product.MILAN)
AK = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MEASUREMENT = "cd" * 48  # snp_fakes' report measurement
PCRS = [hashlib.sha256(bytes([i])).digest() for i in range(24)]

POLICY = f"""name: app
version: "0.3"
services:
  - name: az
    command: az --token $$SCONE::token$$
    attestation:
      az-snp-vtpm:
        measurement: "{MEASUREMENT}"
        vmpl: 0
        pcrs:
          "0": "{PCRS[0].hex()}"
          "7": ["{"00" * 32}", "{PCRS[7].hex()}"]
  - name: aztdx
    command: aztdx
    attestation:
      az-tdx-vtpm:
        pcrs:
          "0": "{"00" * 32}"
secrets:
  - name: token
    kind: ascii
"""


def _b64url_int(v: int) -> str:
    return base64.urlsafe_b64encode(v.to_bytes((v.bit_length() + 7) // 8, "big")).decode().rstrip("=")


def tpms_attest(extra_data: bytes, pcrs: list[bytes]) -> bytes:
    """A TPMS_ATTEST of a TPM2_Quote (TPM 2.0 Part 2 §10.12.12): SHA-256 PCRs 0-23."""
    signer = b"\x00\x0b" + bytes(32)
    return (
        struct.pack(">IH", 0xFF544347, 0x8018)
        + struct.pack(">H", len(signer)) + signer
        + struct.pack(">H", len(extra_data)) + extra_data
        + struct.pack(">QIIB", 1000, 1, 0, 1)  # TPMS_CLOCK_INFO
        + struct.pack(">Q", 0x20240101)  # firmwareVersion
        + struct.pack(">IHB", 1, 0x000B, 3) + b"\xff\xff\xff"  # TPML_PCR_SELECTION
        + struct.pack(">H", 32) + hashlib.sha256(b"".join(pcrs)).digest()
    )  # fmt: skip


def azure_snp_evidence(
    *, user_data: bytes, extra_data: bytes, pcrs: list[bytes] = PCRS, quote_pcrs: list[bytes] | None = None
) -> bytes:
    """trustee's az-snp-vtpm evidence v1, as ``confide run --tee az-vtpm`` sends it: the SNP
    report (fake AMD VCEK) binds the runtime claims (AK, user-data); the AK signs the quote."""
    pub = AK.public_key().public_numbers()
    claims = {
        "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": _b64url_int(pub.e),
                  "n": _b64url_int(pub.n)}],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
        "user-data": user_data.hex().upper(),
    }  # fmt: skip
    var = json.dumps(claims).encode()
    report = AMD.sign(AMD.report(vmpl=0, report_data=hashlib.sha256(var).digest() + bytes(32)))
    header = b"HCLA" + struct.pack("<IIII", 1, VAR_DATA_OFFSET + len(var), 2, 0) + bytes(12)
    hcl = header + report + struct.pack("<IIIII", 20 + len(var), 1, 2, 1, len(var)) + var
    message = tpms_attest(extra_data, quote_pcrs if quote_pcrs is not None else pcrs)
    doc = {
        "version": 1,
        "tpm_quote": {
            "signature": AK.sign(message, padding.PKCS1v15(), hashes.SHA256()).hex(),
            "message": message.hex(),
            "pcrs": [p.hex() for p in pcrs],
        },
        "hcl_report": base64.urlsafe_b64encode(hcl).decode(),
        "vcek": base64.urlsafe_b64encode(AMD.vek.public_bytes(serialization.Encoding.DER)).decode(),
    }
    return json.dumps(doc).encode()


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return production_cas(tmp_path / "cas", PlatformVerifier(amd_roots=AMD.roots()), POLICY)


def request(rt: RuntimeKey, evidence: bytes, *, service: str = "az", platform: str = "az-snp-vtpm",
            aux: dict[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
    return rt.body(policy="app", service=service, platform=platform, evidence=evidence, aux=aux)


def test_bound_evidence_is_accepted_and_recorded(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    evidence = azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding)
    config = rt.open(cas.attest(request(rt, evidence)))
    assert config["command"][0] == "az" and len(config["command"][2]) > 0
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["platform"] == "az-snp-vtpm"
    assert event["measurement"] == MEASUREMENT
    assert event["evidence_sha256"] == hashlib.sha256(evidence).hexdigest()


def test_pcr_mismatch_is_refused_with_the_pcr_named(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    pcrs = list(PCRS)
    pcrs[7] = hashlib.sha256(b"another boot chain").digest()
    evidence = azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding, pcrs=pcrs)
    error = refused(cas, request(rt, evidence), errors.AppraisalError, "az-snp-vtpm.pcrs.7")
    assert "1 mismatch" in error.message


@pytest.mark.parametrize("which", ["extra_data", "user_data"])
def test_evidence_not_bound_to_this_key_and_nonce_is_refused(cas: Cas, which: str) -> None:
    rt, other = RuntimeKey(cas), RuntimeKey(cas)
    parts = {"user_data": rt.binding, "extra_data": rt.binding, which: other.binding}
    evidence = azure_snp_evidence(**parts)
    claim = "nonce" if which == "extra_data" else "hcl user data"
    refused(cas, request(rt, evidence), errors.BindingError, f"az-snp-vtpm {claim}")


def test_pcrs_that_do_not_match_the_quote_are_refused(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    pcrs = list(PCRS)
    pcrs[0] = bytes(32)  # the quote's pcrDigest was made over PCRS
    evidence = azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding, pcrs=pcrs, quote_pcrs=PCRS)
    refused(cas, request(rt, evidence), errors.MeasurementError, "pcrDigest")


def test_evidence_of_another_platform_than_the_service_is_refused(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    evidence = azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding)
    refused(cas, request(rt, evidence, service="aztdx"), errors.AppraisalError, "az-tdx-vtpm evidence")


def test_unknown_aux_blobs_are_refused(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    evidence = azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding)
    refused(cas, request(rt, evidence, aux={"vcek": b"x"}), errors.ParseError, "aux 'vcek'")


def test_malformed_evidence_is_refused(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    refused(cas, request(rt, b'{"version": 1}'), errors.ParseError, "Azure")


def test_real_azure_tdx_evidence_is_verified_up_to_the_binding(cas: Cas) -> None:
    # trustee's real Azure TDX CVM evidence with its collateral: genuine, but bound to the nonce
    # "challenge", not to this request's key and nonce.
    evidence = (ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json").read_bytes()
    collateral = (
        ASSETS / "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json"
    ).read_bytes()
    cas.clock = lambda: 1_749_030_758.0  # 2025-06-04T09:52:38Z, inside the collateral's window
    rt = RuntimeKey(cas)
    body = request(rt, evidence, service="aztdx", platform="az-tdx-vtpm", aux={"collateral": collateral})
    refused(cas, body, errors.BindingError, "az-tdx-vtpm nonce got 6368616c6c656e6765")
    # the TD quote's collateral vintage is recorded (Intel PCS API v4 tcbEvaluationDataNumber)
    bundle = json.loads(collateral)
    want = {
        "tcb_info": json.loads(bundle["tcb_info"])["tcbEvaluationDataNumber"],
        "qe_identity": json.loads(bundle["qe_identity"])["tcbEvaluationDataNumber"],
    }
    assert last_attestation(cas)["tcb_evaluation"] == want


def test_other_platforms_record_no_tcb_evaluation(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    rt.open(cas.attest(request(rt, azure_snp_evidence(user_data=rt.binding, extra_data=rt.binding))))
    assert "tcb_evaluation" not in last_attestation(cas)


def test_policy_factors_are_validated() -> None:
    base = "name: p\nversion: '0.3'\nservices:\n  - name: s\n    attestation:\n"
    bad = {
        "      az-snp-vtpm: {}\n": "empty az-snp-vtpm variant",
        "      az-tdx-vtpm:\n        pcrs: {'32': '" + "00" * 32 + "'}\n": "expected an index 0..31",
        "      az-snp-vtpm:\n        pcrs: {'0': 'abcd'}\n": "expected 64 hex digits",
        "      az-snp-vtpm:\n        pcrs: {'0': '" + "00" * 32 + "'}\n      aws-nitro:\n"
        "        pcrs: {'0': '" + "00" * 48 + "'}\n": "exactly one platform",
    }
    for text, match in bad.items():
        with pytest.raises(errors.PolicyError, match=match):
            loads_policy(base + text)
    composite = loads_policy(base + "      az-snp-vtpm: {vmpl: 0}\n      nvidia-gpu: {count: 8}\n")
    assert isinstance(composite, Policy)
    variant = composite.service("s").attestation[0]
    assert variant.platform is Platform.AZURE_SNP_VTPM and variant.composite


# --- end to end: the guest's provider on a real swtpm, then the CAS -----------------------------


@dataclass
class _Vcek:
    der: bytes

    def get_vcek(self) -> bytes:
        return self.der


@dataclass
class _NoTdQuotes:
    def get_td_quote(self, td_report: bytes) -> bytes:
        raise AssertionError("an SEV-SNP VM asks IMDS for no TD quote")


def _snp_report(report_data: bytes) -> bytes:
    return AMD.sign(AMD.report(vmpl=0, report_data=report_data))


def azure_guest(swtpm_tpm: Tpm) -> AzureVtpmQuoteProvider:
    """The guest side of an Azure SEV-SNP CVM on swtpm: an AK at 0x81000003, the HCL report NV
    index, and an emulated paravisor that signs its SNP reports under the test AMD PKI."""
    ak = provision_ak(swtpm_tpm)
    clear_index(swtpm_tpm, USER_DATA_INDEX)
    define_hcl_index(swtpm_tpm, build_hcl_report(ak, bytes(64), sign_hw=_snp_report))
    assert isinstance(swtpm_tpm.transport, TcpTransport)
    return AzureVtpmQuoteProvider(
        Tpm(EmulatedParavisor(swtpm_tpm.transport, ak, sign_hw=_snp_report)),
        vcek_source=_Vcek(AMD.vek.public_bytes(serialization.Encoding.DER)),
        td_quote_source=_NoTdQuotes(),
    )


def test_guest_provider_on_swtpm_to_cas(cas: Cas, swtpm_tpm: Tpm) -> None:
    """``confide run --tee az-vtpm``'s provider against a real swtpm whose emulated paravisor signs
    its SNP reports with the test AMD PKI; the evidence it produces is accepted by the CAS for a
    policy pinning the vTPM's PCRs, and refused once a PCR is extended."""
    provider = azure_guest(swtpm_tpm)
    pcrs = swtpm_tpm.pcr_read(range(24))
    policy = POLICY.replace("name: app", "name: vm").replace(
        f'"0": "{PCRS[0].hex()}"', f'"0": "{pcrs[0].hex()}"'
    ).replace(f'"{PCRS[7].hex()}"', f'"{pcrs[7].hex()}"')  # fmt: skip
    cas.apply(submission(cas, policy))
    try:
        rt = RuntimeKey(cas)
        evidence = provider.get_evidence(rt.binding)
        assert evidence.platform is Platform.AZURE_SNP_VTPM
        body = rt.body(policy="vm", service="az", platform=evidence.platform.value, evidence=evidence.raw)
        config = rt.open(cas.attest(body))
        assert config["command"][0] == "az"
        assert last_attestation(cas)["verdict"] == "accepted"
        # The guest's boot chain changes: PCR 7 is extended, the same policy refuses the VM.
        pcr_extend(swtpm_tpm.transport, 7, hashlib.sha256(b"another bootloader").digest())
        rt = RuntimeKey(cas)
        evidence = provider.get_evidence(rt.binding)
        body = rt.body(policy="vm", service="az", platform=evidence.platform.value, evidence=evidence.raw)
        refused(cas, body, errors.AppraisalError, "az-snp-vtpm.pcrs.7")
    finally:
        clear_index(swtpm_tpm, USER_DATA_INDEX)
        clear_index(swtpm_tpm, HCL_INDEX)


# --- a CAS running in an Azure confidential VM attests itself ------------------------------------


def test_cas_on_an_azure_cvm_attests_itself(tmp_path: Path, swtpm_tpm: Tpm) -> None:
    """``confide cas serve --tee az-vtpm``: the CAS's own evidence comes from the paravisor's vTPM
    (swtpm + emulated paravisor signing under the test AMD PKI), bound to its TLS certificate and
    log key; ``verify_cas_evidence`` (what ``confide cas attest`` runs) pins it."""
    provider = azure_guest(swtpm_tpm)
    try:
        cas, evidence, _key, cert_path, _env, _signer = prepare(
            tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None,
            tee="az-vtpm", quote_provider=provider, amd_roots=AMD.roots(),
        )  # fmt: skip
        cas.db.dispose()
    finally:
        clear_index(swtpm_tpm, USER_DATA_INDEX)
        clear_index(swtpm_tpm, HCL_INDEX)
    assert evidence is not None
    document = evidence.document
    assert document["platform"] == "az-snp-vtpm" and document["aux"] == {}
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    body = evidence.body
    now = datetime.now(UTC)
    pinned = verify_cas_evidence(cert_der, body, sim_key_pem=None, at=now, amd_roots=AMD.roots(),
                                 measurements=(MEASUREMENT,))  # fmt: skip
    assert pinned.evidence.platform is Platform.AZURE_SNP_VTPM and pinned.measurement_claim == "measurement"
    with pytest.raises(errors.MeasurementError):
        verify_cas_evidence(cert_der, body, sim_key_pem=None, at=now, amd_roots=AMD.roots(),
                            measurements=("ab" * 48,))  # fmt: skip
    # The same evidence presented with another certificate: not bound to it.
    with pytest.raises(errors.BindingError, match="not bound to the TLS certificate"):
        verify_cas_evidence(cert_der + b"\x00", body, sim_key_pem=None, at=now, amd_roots=AMD.roots())
    with pytest.raises(errors.CertificateChainError):  # the real AMD roots do not vouch for the test PKI
        verify_cas_evidence(cert_der, body, sim_key_pem=None, at=now)


def test_cli_serve_az_vtpm_without_a_tpm(tmp_path: Path) -> None:
    if Path("/dev/tpmrm0").exists():
        pytest.skip("/dev/tpmrm0 exists on this machine")
    r = run_confide("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0",
                    "--tee", "az-vtpm")  # fmt: skip
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    assert "no (v)TPM" in r.stderr and "not starting" in r.stderr, r.stderr
