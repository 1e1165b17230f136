"""Composite CPU+GPU attestation through ``Cas.attest``, in process on a real SQLite database
and ledger: simulated CPU evidence (the cheapest CPU side) with NVIDIA GPU reports in ``aux``
(``gpu<k>``, ``gpu<k>.certs``, ``gpu<k>.rim:<name>``), forged under a test NVIDIA PKI whose
root the CAS's verifier is given. Every refusal is recorded in the ledger with its class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asgi_call import call
from cas_inproc import InProcessCas, RuntimeKey, last_attestation, refused
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas, binding_report_data
from confide.cas.verifier import MAX_GPUS
from confide.sim.platform import SimPlatform
from gpu_cas import CPU, FWID, NOW, NV_MEASUREMENTS, NV_REPORT, PKI, RIM_PKI, driver_rim
from nvidia_forge import NvidiaPki, make_leaf, resign

# Distinct GPUs: one leaf (attestation key) each, under the same test root and ICA.
GPUS = [PKI] + [NvidiaPki(PKI.root, PKI.ica, make_leaf(PKI.ica, FWID, NOW)) for _ in range(MAX_GPUS)]
M1, M22 = NV_MEASUREMENTS[1].hex(), NV_MEASUREMENTS[22].hex()

POLICY = f"""name: app
version: "0.3"
services:
  - name: ai
    command: serve --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{CPU}"
      nvidia-gpu:
        count: 2
        driver_version: "550.90.07"
        measurements: {{1: "{M1}", 22: "{M22}"}}
  - name: any-gpus
    command: serve
    attestation:
      sim: {{measurement: "{CPU}"}}
      nvidia-gpu: {{measurements: {{22: "{M22}"}}}}
  - name: strict
    command: serve
    attestation:
      sim: {{measurement: "{"cd" * 48}"}}
      nvidia-gpu: {{measurements: {{22: "{"ef" * 48}"}}}}
  - name: cpu-only
    command: serve
    attestation:
      sim: {{measurement: "{CPU}"}}
  - name: either
    command: serve
    attestation:
      - nvidia-gpu: {{measurements: {{22: "{M22}"}}}}
      - sim: {{measurement: "{CPU}"}}
        nvidia-gpu: {{count: 1, measurements: {{22: "{M22}"}}}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.fixture
def cas(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas", POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root
    )


class Runtime(RuntimeKey):
    """A confidential VM's runtime: the CPU evidence (simulated) and GPU reports (forged) that
    commit to its key and the CAS nonce."""

    def __init__(self, cas: Cas, platform: SimPlatform) -> None:
        super().__init__(cas)
        self.cas, self.platform = cas, platform

    def cpu(self, measurement: str = CPU, binding: bytes | None = None) -> bytes:
        return self.platform.issue(
            report_data=binding or self.binding, measurement=bytes.fromhex(measurement), timestamp=int(NOW.timestamp())
        ).to_bytes()  # fmt: skip

    def gpu(self, k: int, nonce: bytes | None = None) -> dict[str, bytes]:
        """GPU ``k``'s blobs in slot ``gpu<k>``: its report (SPDM nonce = the first 32 bytes of
        the binding unless given) and its certificate chain."""
        report = resign(NV_REPORT, GPUS[k].leaf[1], nonce=self.binding[:32] if nonce is None else nonce)
        return {f"gpu{k}": report, f"gpu{k}.certs": GPUS[k].chain_pem()}

    def request(
        self, service: str, aux: dict[str, bytes], *, evidence: bytes | None = None, platform: str = "sim"
    ) -> dict[str, Any]:
        return self.body(
            policy="app", service=service, platform=platform,
            evidence=self.cpu() if evidence is None else evidence, aux=aux,
        )  # fmt: skip


def runtime(inproc: InProcessCas) -> Runtime:
    return Runtime(inproc.cas, inproc.platform)


def gpus(rt: Runtime, *ks: int) -> dict[str, bytes]:
    aux: dict[str, bytes] = {}
    for k in ks:
        aux.update(rt.gpu(k))
    return aux


# --- accepted ------------------------------------------------------------------------------------


def test_cpu_evidence_with_two_bound_gpus_is_accepted_and_the_gpus_are_recorded(cas: InProcessCas) -> None:
    rt = runtime(cas)
    config = rt.open(cas.cas.attest(rt.request("ai", gpus(rt, 0, 1))))
    assert config["command"][:2] == ["serve", "--token"] and config["command"][2]
    event = last_attestation(cas.cas)
    assert event["verdict"] == "accepted" and event["platform"] == "sim" and event["measurement"] == CPU
    recorded = event["gpus"]
    assert [g["slot"] for g in recorded] == ["gpu0", "gpu1"]
    assert {g["fwid"] for g in recorded} == {FWID.hex()}
    assert len({g["attestation_key_sha256"] for g in recorded}) == 2
    assert {g["ueid"] for g in recorded} == {
        str(GPUS[0].leaf[0].serial_number),
        str(GPUS[1].leaf[0].serial_number),
    }
    assert (
        len({g["measurements_sha256"] for g in recorded}) == 1
        and len(recorded[0]["measurements_sha256"]) == 64
    )
    assert all(g["driver_version"] == "550.90.07" for g in recorded)
    token = config["command"][2]
    assert token not in json.dumps(event)  # the released secret is not in the ledger


def test_gpus_with_matching_signed_rims_are_accepted(cas: InProcessCas) -> None:
    rt = runtime(cas)
    rim = driver_rim()
    aux = {**gpus(rt, 0, 1), "gpu0.rim:driver": rim, "gpu1.rim:driver": rim}
    assert rt.open(cas.cas.attest(rt.request("ai", aux)))
    assert [g["rims_compared"] for g in last_attestation(cas.cas)["gpus"]] == [True, True]


def test_without_a_count_any_number_of_gpus_from_one_up_is_accepted(cas: InProcessCas) -> None:
    for ks in ((0,), (0, 1, 2)):
        rt = runtime(cas)
        assert rt.open(cas.cas.attest(rt.request("any-gpus", gpus(rt, *ks))))
        assert len(last_attestation(cas.cas)["gpus"]) == len(ks)


# --- GPUs missing, unbound, mismatching, duplicated, too many --------------------------------------


def test_a_missing_gpu_is_an_appraisal_refusal(cas: InProcessCas) -> None:
    rt = runtime(cas)
    refused(cas.cas, rt.request("any-gpus", {}), errors.AppraisalError, r"nvidia-gpu: got no GPU report")
    rt = runtime(cas)
    refused(
        cas.cas,
        rt.request("ai", gpus(rt, 0)),
        errors.AppraisalError,
        r"attestation\[0\]\.nvidia-gpu\.count: got 1 distinct GPU report\(s\), expected 2",
    )
    rt = runtime(cas)
    refused(cas.cas, rt.request("ai", gpus(rt, 0, 1, 2)), errors.AppraisalError, "got 3 distinct")


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param(lambda rt: binding_report_data(b"another key", bytes.fromhex(rt.nonce))[:32], id="other-key"),
        pytest.param(lambda rt: binding_report_data(rt.der, bytes.fromhex(rt.cas.new_nonce()))[:32], id="other-nonce"),
        pytest.param(lambda rt: rt.binding[32:], id="second-half"),
    ],
)  # fmt: skip
def test_a_gpu_bound_to_another_key_or_nonce_is_a_binding_refusal(cas: InProcessCas, nonce: Any) -> None:
    rt = runtime(cas)
    aux = {**rt.gpu(0), **rt.gpu(1, nonce=nonce(rt))}
    refused(
        cas.cas,
        rt.request("ai", aux),
        errors.BindingError,
        "^gpu1: nvidia-gpu nonce got .*, expected the first 32 bytes of the SHA-512 binding",
    )
    event = last_attestation(cas.cas)
    assert [g["slot"] for g in event["gpus"]] == ["gpu0", "gpu1"]  # which GPU was refused


def test_cpu_evidence_bound_elsewhere_is_refused_before_the_gpus(cas: InProcessCas) -> None:
    rt = runtime(cas)
    other = binding_report_data(rt.der, bytes.fromhex(cas.cas.new_nonce()))
    request = rt.request("ai", gpus(rt, 0, 1), evidence=rt.cpu(binding=other))
    refused(cas.cas, request, errors.BindingError, "^sim report data got")
    assert "gpus" not in last_attestation(cas.cas)


def test_gpu_and_cpu_mismatches_are_all_reported(cas: InProcessCas) -> None:
    rt = runtime(cas)
    exc = refused(cas.cas, rt.request("strict", gpus(rt, 0, 1)), errors.AppraisalError, "3 mismatch")
    assert [p.split(":")[0] for p in exc.problems] == [
        "attestation[0].sim.measurement",
        "attestation[0].gpu0.nvidia-gpu.measurements.22",
        "attestation[0].gpu1.nvidia-gpu.measurements.22",
    ]


def test_a_tampered_gpu_report_is_a_signature_refusal_naming_its_slot(cas: InProcessCas) -> None:
    rt = runtime(cas)
    aux = gpus(rt, 0, 1)
    report = bytearray(aux["gpu1"])
    report[len(report) - 200] ^= 1
    aux["gpu1"] = bytes(report)
    refused(cas.cas, rt.request("ai", aux), errors.SignatureError, "^gpu1: SPDM MEASUREMENTS signature")


@pytest.mark.parametrize("same", ["report", "gpu"])
def test_a_gpu_presented_twice_counts_once(cas: InProcessCas, same: str) -> None:
    rt = runtime(cas)
    first = rt.gpu(0)
    # The same bytes in two slots, or a second report of the same GPU (a fresh ECDSA signature
    # by the same attestation key: different bytes, same GPU).
    second = first["gpu0"] if same == "report" else rt.gpu(0)["gpu0"]
    assert (second == first["gpu0"]) is (same == "report")
    aux = {**first, "gpu1": second, "gpu1.certs": first["gpu0.certs"]}
    exc = refused(cas.cas, rt.request("ai", aux), errors.AppraisalError, "gpu1: got the same GPU as gpu0")
    assert any("count: got 1 distinct" in p for p in exc.problems)
    # Even where one GPU suffices, a duplicate is refused, not ignored.
    rt = runtime(cas)
    first = rt.gpu(0)
    aux = {**first, "gpu1": first["gpu0"], "gpu1.certs": first["gpu0.certs"]}
    refused(cas.cas, rt.request("any-gpus", aux), errors.AppraisalError, "the same GPU as gpu0")


def test_too_many_gpus_are_a_parse_refusal(cas: InProcessCas) -> None:
    rt = runtime(cas)
    request = rt.request("any-gpus", gpus(rt, *range(MAX_GPUS + 1)))
    refused(cas.cas, request, errors.ParseError, f"at most {MAX_GPUS} GPUs")
    rt = runtime(cas)  # the most allowed
    assert rt.open(cas.cas.attest(rt.request("any-gpus", gpus(rt, *range(MAX_GPUS)))))
    assert len(last_attestation(cas.cas)["gpus"]) == MAX_GPUS


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "gpu00": a["gpu0"]}, "expected gpu<k>, gpu<k>.certs"),
        (lambda a: {**a, "gpu0.vcek": b"x"}, "'gpu0.vcek'"),
        (lambda a: {**a, "gpu1234": b"x"}, "'gpu1234'"),
        (lambda a: {**a, "gpu": b"x"}, "'gpu'"),
        (lambda a: {k.replace("gpu1", "gpu2"): v for k, v in a.items()}, "no aux gpu1"),
        (lambda a: {k: v for k, v in a.items() if k != "gpu1"}, "no aux gpu1"),
    ],
)
def test_malformed_gpu_slots_are_parse_refusals(cas: InProcessCas, change: Any, match: str) -> None:
    rt = runtime(cas)
    refused(cas.cas, rt.request("ai", change(gpus(rt, 0, 1))), errors.ParseError, match)


def test_gpu_blob_problems_name_their_slot(cas: InProcessCas) -> None:
    rt = runtime(cas)
    aux = gpus(rt, 0, 1)
    del aux["gpu1.certs"]
    refused(
        cas.cas, rt.request("ai", aux), errors.CollateralMissingError, "^gpu1: NVIDIA evidence came without"
    )
    rt = runtime(cas)
    aux = {**gpus(rt, 0), "gpu0.rim:driver": b"<not a rim"}
    refused(cas.cas, rt.request("any-gpus", aux), errors.ParseError, "^gpu0: ")


def test_gpu_reports_come_only_with_a_cpu_tee(cas: InProcessCas) -> None:
    rt = runtime(cas)
    own = rt.gpu(0)
    request = rt.request(
        "either", {"certs": own["gpu0.certs"], **rt.gpu(1)}, evidence=own["gpu0"], platform="nvidia-gpu"
    )
    refused(
        cas.cas,
        request,
        errors.ParseError,
        "with nvidia-gpu evidence, expected them only with az-snp-vtpm, az-tdx-vtpm, sev-snp, sim, tdx",
    )


# --- existing shapes unchanged -------------------------------------------------------------------


def test_gpu_only_and_cpu_only_requests_against_a_composite_variant_are_refused(cas: InProcessCas) -> None:
    rt = runtime(cas)
    own = rt.gpu(0)
    request = rt.request("ai", {"certs": own["gpu0.certs"]}, evidence=own["gpu0"], platform="nvidia-gpu")
    exc = refused(cas.cas, request, errors.AppraisalError, "expected sim evidence with nvidia-gpu reports")
    assert any("gpu-only" in p for p in exc.problems)  # and GPU evidence alone still needs gpu-only


def test_either_variant_a_gpu_only_one_still_needs_gpu_only_and_the_composite_one_matches(
    cas: InProcessCas,
) -> None:
    rt = runtime(cas)
    own = rt.gpu(0)
    request = rt.request("either", {"certs": own["gpu0.certs"]}, evidence=own["gpu0"], platform="nvidia-gpu")
    refused(cas.cas, request, errors.AppraisalError, "tolerate to include 'gpu-only'")
    rt = runtime(cas)
    assert rt.open(cas.cas.attest(rt.request("either", gpus(rt, 0))))


def test_cpu_only_variant_is_unchanged_and_verifies_gpus_sent_with_it(cas: InProcessCas) -> None:
    rt = runtime(cas)
    assert rt.open(cas.cas.attest(rt.request("cpu-only", {})))
    assert "gpus" not in last_attestation(cas.cas)
    # GPUs sent along are verified and bound, and recorded; the variant says nothing about them.
    rt = runtime(cas)
    assert rt.open(cas.cas.attest(rt.request("cpu-only", gpus(rt, 0))))
    assert len(last_attestation(cas.cas)["gpus"]) == 1
    rt = runtime(cas)
    aux = {**rt.gpu(0, nonce=bytes(32))}
    refused(cas.cas, rt.request("cpu-only", aux), errors.BindingError, "^gpu0: ")


# --- over the HTTP API ----------------------------------------------------------------------------


def test_composite_attestation_over_http(cas: InProcessCas) -> None:
    app = create_app(cas.cas)

    def attest(aux_for: Any) -> tuple[int, dict[str, Any], Runtime]:
        status, body = call(app, "/v1/attest/nonce", [b""])
        assert status == 200
        rt = runtime(cas)
        rt.nonce = json.loads(body)["nonce"]
        rt.binding = binding_report_data(rt.der, bytes.fromhex(rt.nonce))
        status, body = call(app, "/v1/attest", [json.dumps(rt.request("ai", aux_for(rt))).encode()])
        return status, json.loads(body), rt

    status, release, rt = attest(lambda rt: gpus(rt, 0, 1))
    assert status == 200, release
    assert rt.open(release)["command"][0] == "serve"
    assert len(last_attestation(cas.cas)["gpus"]) == 2
    status, error, _ = attest(
        lambda rt: {**rt.gpu(0), "gpu1": rt.gpu(0)["gpu0"], "gpu1.certs": PKI.chain_pem()}
    )
    assert status == 403 and error["error"]["class"] == "AppraisalError"
    assert "the same GPU as gpu0" in json.dumps(error)
