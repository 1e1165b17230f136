"""NVIDIA GPU and AWS Nitro evidence through the CAS's attestation flow (``Cas.attest``), in
process on a real SQLite database and ledger.

Accepted evidence is forged under test PKIs whose roots the CAS's verifier is given in its
constructor (``tests/nvidia_forge.py``, ``tests/nitro_forge.py``, ``tests/rim_pki.py``); each
acceptance has refusal twins, every refusal recorded in the ledger with its error class. The
real vectors from ``tests/assets`` (vendor-signed, with fixed nonces) verify under the pinned
roots and are refused at the binding step.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asgi_call import call
from cas_inproc import Clock, RuntimeKey, last_attestation, production_cas, refused, submission
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas, binding_report_data, check_binding
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.evidence.nitro import NitroDocument
from confide.verify.result import Platform, VerifiedEvidence
from gpu_cas import NOW, NV_CHAIN, NV_MEASUREMENTS, NV_REPORT, RIM_PKI, driver_rim
from gpu_cas import PKI as NV_PKI
from nitro_forge import forge_document
from nitro_forge import make_pki as make_nitro_pki
from nvidia_forge import resign

ASSETS = Path(__file__).parents[1] / "assets"
NITRO_EXAMPLE = base64.b64decode((ASSETS / "nitro/example_attestation.b64").read_bytes())
NITRO_EXAMPLE_AT = datetime(2024, 9, 9, 19, 49, 12, 400000, tzinfo=UTC)

NITRO_PKI = make_nitro_pki(NOW)
PCRS = {i: bytes([i]) * 48 for i in range(16)}  # the forged documents' PCRs

POLICY = f"""name: app
version: "0.3"
services:
  - name: gpu
    command: gpu --token $$SCONE::token$$
    attestation:
      nvidia-gpu:
        driver_version: "550.90.07"
        measurements: {{1: "{NV_MEASUREMENTS[1].hex()}", 22: "{NV_MEASUREMENTS[22].hex()}"}}
  - name: other-gpu
    command: gpu
    attestation:
      nvidia-gpu:
        measurements: {{22: "{"ab" * 48}"}}
  - name: enclave
    command: enclave --token $$SCONE::token$$
    attestation:
      aws-nitro:
        pcrs: {{0: "{PCRS[0].hex()}", 8: "{PCRS[8].hex()}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [gpu-only]
"""


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    verifier = PlatformVerifier(
        nvidia_root=NV_PKI.root[0], nvidia_rim_root=RIM_PKI.root, nitro_root=NITRO_PKI.root_cert
    )
    return production_cas(tmp_path / "cas", verifier, POLICY)


class Runtime(RuntimeKey):
    def request(
        self,
        service: str,
        platform: Platform,
        evidence: bytes,
        aux: dict[str, bytes] | None = None,
        policy: str = "app",
    ) -> dict[str, Any]:
        return self.body(policy=policy, service=service, platform=platform.value, evidence=evidence, aux=aux)


def gpu_evidence(nonce: bytes) -> bytes:
    return resign(NV_REPORT, NV_PKI.leaf[1], nonce=nonce)


# --- NVIDIA GPU ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_gpu_evidence_bound_to_the_key_is_accepted(cas: Cas, encoding: str) -> None:
    rt = Runtime(cas)
    certs = NV_PKI.chain_pem() if encoding == "pem" else NV_PKI.chain_der()
    release = cas.attest(
        rt.request("gpu", Platform.NVIDIA_GPU, gpu_evidence(rt.binding[:32]), {"certs": certs})
    )
    config = rt.open(release)
    assert config["command"][0] == "gpu" and len(config["command"][2]) > 0
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["platform"] == "nvidia-gpu"


def test_gpu_evidence_alone_needs_the_gpu_only_tolerance(cas: Cas) -> None:
    strict = POLICY.replace("name: app", "name: strict", 1).split("security:")[0]
    cas.apply(submission(cas, strict))
    rt = Runtime(cas)
    request = rt.request(
        "gpu",
        Platform.NVIDIA_GPU,
        gpu_evidence(rt.binding[:32]),
        {"certs": NV_PKI.chain_pem()},
        policy="strict",
    )
    refused(cas, request, errors.AppraisalError, "tolerate to include 'gpu-only'")


def test_gpu_evidence_with_matching_signed_rims_is_accepted(cas: Cas) -> None:
    rt = Runtime(cas)
    rim = driver_rim()
    aux = {"certs": NV_PKI.chain_pem(), "rim:driver": rim}
    assert rt.open(cas.attest(rt.request("gpu", Platform.NVIDIA_GPU, gpu_evidence(rt.binding[:32]), aux)))


def test_gpu_evidence_with_a_mismatching_rim_is_refused(cas: Cas) -> None:
    rt = Runtime(cas)
    rim = driver_rim(change={21: b"\xab" * 48})
    aux = {"certs": NV_PKI.chain_pem(), "rim:driver": rim}
    request = rt.request("gpu", Platform.NVIDIA_GPU, gpu_evidence(rt.binding[:32]), aux)
    refused(cas, request, errors.MeasurementError, r"index 21 \(SPDM block 22\)")


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param(lambda b: b[32:], id="second-half"),
        pytest.param(lambda b: bytes(32), id="zeros"),
        pytest.param(lambda b: binding_report_data(b"other key", b"n")[:32], id="other-key"),
    ],
)
def test_gpu_evidence_with_another_nonce_is_a_binding_refusal(cas: Cas, nonce: Any) -> None:
    rt = Runtime(cas)
    evidence = gpu_evidence(nonce(rt.binding))
    refused(
        cas,
        rt.request("gpu", Platform.NVIDIA_GPU, evidence, {"certs": NV_PKI.chain_pem()}),
        errors.BindingError,
        "nvidia-gpu nonce got .*, expected the first 32 bytes of the SHA-512 binding",
    )


def test_gpu_measurement_mismatch_is_an_appraisal_refusal(cas: Cas) -> None:
    rt = Runtime(cas)
    request = rt.request(
        "other-gpu", Platform.NVIDIA_GPU, gpu_evidence(rt.binding[:32]), {"certs": NV_PKI.chain_pem()}
    )
    refused(cas, request, errors.AppraisalError, r"nvidia-gpu\.measurements\.22")


def test_tampered_gpu_report_is_a_signature_refusal(cas: Cas) -> None:
    rt = Runtime(cas)
    evidence = bytearray(gpu_evidence(rt.binding[:32]))
    evidence[len(evidence) - 200] ^= 1  # inside the signed opaque data
    refused(
        cas,
        rt.request("gpu", Platform.NVIDIA_GPU, bytes(evidence), {"certs": NV_PKI.chain_pem()}),
        errors.SignatureError,
        "SPDM MEASUREMENTS signature",
    )


def test_gpu_chain_not_to_the_pinned_root_is_refused(cas: Cas) -> None:
    cas.verifier = PlatformVerifier()  # the embedded NVIDIA Device Identity CA
    rt = Runtime(cas)
    evidence = gpu_evidence(rt.binding[:32])
    refused(
        cas,
        rt.request("gpu", Platform.NVIDIA_GPU, evidence, {"certs": NV_PKI.chain_pem()}),
        errors.CertificateChainError,
        "expected the pinned root 'NVIDIA Device Identity CA'",
    )


@pytest.mark.parametrize(
    ("aux", "error", "match"),
    [
        ({}, errors.CollateralMissingError, "certificate chain"),
        ({"certs": b"\x30\x82\x05"}, errors.ParseError, "aux 'certs'"),
        ({"certs": NV_CHAIN, "vcek": b"x"}, errors.ParseError, "'vcek'"),
    ],
)
def test_gpu_aux_problems_are_recorded_refusals(
    cas: Cas, aux: dict[str, bytes], error: type[errors.ConfideError], match: str
) -> None:
    rt = Runtime(cas)
    refused(cas, rt.request("gpu", Platform.NVIDIA_GPU, gpu_evidence(rt.binding[:32]), aux), error, match)


def test_real_gpu_report_reaches_the_binding_check(cas: Cas) -> None:
    cas.verifier = PlatformVerifier()
    rt = Runtime(cas)
    refused(
        cas,
        rt.request("gpu", Platform.NVIDIA_GPU, NV_REPORT, {"certs": NV_CHAIN}),
        errors.BindingError,
        "nvidia-gpu nonce got 931d8dd0",
    )


# --- AWS Nitro ----------------------------------------------------------------------------------


def test_nitro_document_bound_to_the_key_is_accepted(cas: Cas) -> None:
    rt = Runtime(cas)
    doc = forge_document(NITRO_PKI, nonce=rt.binding, tagged=True)
    config = rt.open(cas.attest(rt.request("enclave", Platform.AWS_NITRO, doc)))
    assert config["command"][0] == "enclave"
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["measurement"] == PCRS[0].hex()


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param(lambda b: b[:32], id="first-half"),
        pytest.param(lambda b: b + b"\x00", id="longer"),
        pytest.param(lambda b: None, id="none"),
    ],
)
def test_nitro_document_with_another_nonce_is_a_binding_refusal(cas: Cas, nonce: Any) -> None:
    rt = Runtime(cas)
    doc = forge_document(NITRO_PKI, nonce=nonce(rt.binding))
    refused(
        cas,
        rt.request("enclave", Platform.AWS_NITRO, doc),
        errors.BindingError,
        "aws-nitro nonce got .*, expected the SHA-512 binding",
    )


def test_nitro_pcr_mismatch_and_debug_enclave_are_appraisal_refusals(cas: Cas) -> None:
    rt = Runtime(cas)
    doc = forge_document(NITRO_PKI, nonce=rt.binding, pcrs={**PCRS, 8: b"\x07" * 48})
    refused(cas, rt.request("enclave", Platform.AWS_NITRO, doc), errors.AppraisalError, r"aws-nitro\.pcrs\.8")
    rt = Runtime(cas)
    debug = forge_document(
        NITRO_PKI, nonce=rt.binding, pcrs={**PCRS, 0: bytes(48), 1: bytes(48), 2: bytes(48)}
    )
    refused(cas, rt.request("enclave", Platform.AWS_NITRO, debug), errors.AppraisalError, "debug")


def test_tampered_nitro_document_is_a_signature_refusal(cas: Cas) -> None:
    rt = Runtime(cas)
    doc = bytearray(forge_document(NITRO_PKI, nonce=rt.binding))
    doc[-1] ^= 1  # the last byte of the COSE signature
    refused(cas, rt.request("enclave", Platform.AWS_NITRO, bytes(doc)), errors.SignatureError, "COSE_Sign1")


def test_nitro_chain_not_to_the_pinned_root_is_refused(cas: Cas) -> None:
    cas.verifier = PlatformVerifier()  # the embedded AWS Nitro Enclaves root G1
    rt = Runtime(cas)
    doc = forge_document(NITRO_PKI, nonce=rt.binding)
    refused(
        cas,
        rt.request("enclave", Platform.AWS_NITRO, doc),
        errors.CertificateChainError,
        "pinned AWS Nitro root",
    )


def test_real_nitro_document_reaches_the_binding_check(cas: Cas) -> None:
    cas.verifier = PlatformVerifier()
    cas.clock = Clock(NITRO_EXAMPLE_AT.timestamp())  # its leaf lives three hours
    rt = Runtime(cas)
    assert NitroDocument.from_bytes(NITRO_EXAMPLE).document.nonce == bytes(19) + b"\x01"
    refused(
        cas,
        rt.request("enclave", Platform.AWS_NITRO, NITRO_EXAMPLE),
        errors.BindingError,
        "aws-nitro nonce got 0000",
    )


def test_nitro_clock_outside_the_leaf_validity_is_refused(cas: Cas) -> None:
    cas.clock = Clock(time.time() + 4 * 3600)
    rt = Runtime(cas)
    doc = forge_document(NITRO_PKI, nonce=rt.binding)
    refused(cas, rt.request("enclave", Platform.AWS_NITRO, doc), errors.CertificateChainError, "expired")


# --- the binding rule itself --------------------------------------------------------------------


def _verified(platform: Platform, **claims: Any) -> VerifiedEvidence:
    return VerifiedEvidence(platform=platform, claims=claims, verified_at=NOW, evidence_digest="00" * 32)


def test_check_binding_per_platform() -> None:
    b = binding_report_data(b"key", b"nonce")
    check_binding(_verified(Platform.NVIDIA_GPU, nonce=b[:32].hex()), b)
    check_binding(_verified(Platform.AWS_NITRO, nonce=b.hex().upper()), b)
    check_binding(_verified(Platform.SEV_SNP, report_data=b.hex()), b)
    bad = [
        _verified(Platform.NVIDIA_GPU, nonce=b.hex()),  # the full 64 bytes: not what the GPU signs
        _verified(Platform.NVIDIA_GPU, report_data=b[:32].hex()),
        _verified(Platform.AWS_NITRO, nonce=b[:32].hex()),
        _verified(Platform.AWS_NITRO, nonce=None),
        _verified(Platform.AWS_NITRO, report_data=b.hex()),
        _verified(Platform.TDX, report_data=b[:63].hex()),
        _verified(Platform.TDX, nonce=b.hex()),
        _verified(Platform.SGX, report_data="zz" * 64),
    ]
    for v in bad:
        with pytest.raises(errors.BindingError):
            check_binding(v, b)


# --- over the HTTP API ----------------------------------------------------------------------------

NITRO_ONLY = f"""name: enclaves
version: "0.3"
services:
  - name: enclave
    command: enclave --token $$SCONE::token$$
    attestation:
      - aws-nitro:
          pcrs: {{0: "{PCRS[0].hex()}"}}
secrets:
  - name: token
    kind: ascii
"""


def test_nitro_policy_applied_and_attested_over_http(tmp_path: Path) -> None:
    cas, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None)
    cas.verifier = PlatformVerifier(nitro_root=NITRO_PKI.root_cert)
    app = create_app(cas)
    signed = submission(cas, NITRO_ONLY)
    status, body = call(app, "/v1/policies", [json.dumps(signed).encode()])
    assert status == 200, body
    assert json.loads(body)["state"] == "active"

    def attest(nonce_for: Any) -> tuple[int, dict[str, Any], Runtime]:
        status, body = call(app, "/v1/attest/nonce", [b""])
        assert status == 200
        rt = Runtime(cas)
        rt.nonce = json.loads(body)["nonce"]
        rt.binding = binding_report_data(rt.der, bytes.fromhex(rt.nonce))
        request = rt.request(
            "enclave", Platform.AWS_NITRO, forge_document(NITRO_PKI, nonce=nonce_for(rt.binding))
        )
        request["policy"] = "enclaves"
        status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
        return status, json.loads(body), rt

    status, release, rt = attest(lambda b: b)
    assert status == 200, release
    assert rt.open(release)["command"][0] == "enclave"
    status, error, _ = attest(lambda b: bytes(64))
    assert status == 403
    assert error["error"]["class"] == "BindingError"
    assert last_attestation(cas)["verdict"] == "refused"
