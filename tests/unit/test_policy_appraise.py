"""Appraisal of verified evidence against policies: every platform, every mismatch reported,
the TCB tolerance matrix, advisories, debug and simulation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import AppraisalError, PolicyError
from confide.platforms.sev_snp import embedded_roots
from confide.policy import (
    AppraisalResult,
    Policy,
    Reason,
    Tolerance,
    appraise,
    loads_policy,
    raise_for_result,
)
from confide.policy.appraise import check_security
from confide.policy.model import AttestationSecurity
from confide.verify.result import ClaimValue, Platform, TcbStatus, VerifiedEvidence
from confide.verify.sev_snp import load_certificates, verify_report

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
H32 = {c: c * 64 for c in "abcdef0123"}
H48 = {c: c * 96 for c in "abcdef0123"}


def evidence(
    platform: Platform,
    claims: dict[str, ClaimValue],
    *,
    tcb: TcbStatus | None = TcbStatus.UP_TO_DATE,
    advisories: tuple[str, ...] = (),
    verified_at: datetime = AT - timedelta(seconds=1),
) -> VerifiedEvidence:
    return VerifiedEvidence(
        platform=platform,
        claims=claims,
        verified_at=verified_at,
        evidence_digest="00" * 32,
        tcb_status=tcb,
        advisory_ids=advisories,
        simulated=platform is Platform.SIMULATED,
    )


def policy(attestation: str, security: str = "") -> Policy:
    text = f'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    attestation:\n{attestation}'
    if security:
        text += f"security:\n  attestation:\n{security}"
    return loads_policy(text)


def fields(result: AppraisalResult) -> list[str]:
    return [r.field for r in result.reasons]


# --- SGX ---------------------------------------------------------------------------------------

SGX_POLICY = policy(
    f"""      - mrenclave: [{H32["a"]}, {H32["b"]}]
        signer: {{mrsigner: {H32["c"]}, isvprodid: 6, isvsvn_min: 3, isvsvn_max: 9}}
      - signer: {{mrsigner: {H32["d"]}, isvprodid: 213, isvsvn: 13}}
"""
)


def sgx(**over: ClaimValue) -> dict[str, ClaimValue]:
    claims: dict[str, ClaimValue] = {
        "mr_enclave": H32["b"].upper(),
        "mr_signer": H32["c"],
        "isv_prod_id": 6,
        "isv_svn": 3,
        "debug": False,
    }
    claims.update(over)
    return claims


def test_sgx_first_variant_matches_case_insensitively() -> None:
    result = appraise(evidence(Platform.SGX, sgx()), SGX_POLICY, "svc", at=AT)
    assert result.accepted and result.matched_variant == 0
    assert result.reasons == () and result.tolerated == ()
    assert str(result).startswith("accepted by variant 0")


def test_sgx_second_variant_matches() -> None:
    claims = sgx(mr_enclave=H32["e"], mr_signer=H32["d"], isv_prod_id=213, isv_svn=13)
    result = appraise(evidence(Platform.SGX, claims), SGX_POLICY, "svc", at=AT)
    assert result.accepted and result.matched_variant == 1


def test_sgx_every_mismatch_of_every_variant_is_reported() -> None:
    claims = sgx(mr_enclave=H32["e"], mr_signer=H32["f"], isv_prod_id=7, isv_svn=2)
    result = appraise(evidence(Platform.SGX, claims), SGX_POLICY, "svc", at=AT)
    assert not result.accepted and result.matched_variant is None
    assert fields(result) == [
        "attestation[0].mrenclave",
        "attestation[0].signer.mrsigner",
        "attestation[0].signer.isvprodid",
        "attestation[0].signer.isvsvn_min/isvsvn_max",
        "attestation[1].signer.mrsigner",
        "attestation[1].signer.isvprodid",
        "attestation[1].signer.isvsvn",
    ]
    first = result.reasons[0]
    assert first.got == H32["e"] and first.expected == f"one of [{H32['a']}, {H32['b']}]"
    assert (
        str(result.reasons[3])
        == "attestation[0].signer.isvsvn_min/isvsvn_max: got 2, expected 3 <= isv_svn <= 9"
    )
    assert str(result.reasons[6]) == "attestation[1].signer.isvsvn: got 2, expected 13"


def test_sgx_svn_above_max_and_missing_or_mistyped_claims() -> None:
    result = appraise(evidence(Platform.SGX, sgx(isv_svn=10)), SGX_POLICY, "svc", at=AT)
    assert "attestation[0].signer.isvsvn_min/isvsvn_max" in fields(result)
    claims = sgx()
    del claims["mr_enclave"]
    claims["isv_prod_id"] = True  # a bool is not an integer
    result = appraise(evidence(Platform.SGX, claims), SGX_POLICY, "svc", at=AT)
    by_field = {r.field: r for r in result.reasons}
    assert by_field["attestation[0].mrenclave"].got == "no claim"
    assert by_field["attestation[0].signer.isvprodid"].got == "true"


def test_deprecated_mrenclaves_are_a_variant() -> None:
    legacy = loads_policy(
        f'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    mrenclaves: [{H32["a"]}]\n'
    )
    assert appraise(evidence(Platform.SGX, sgx(mr_enclave=H32["a"])), legacy, "svc", at=AT).accepted
    assert not appraise(evidence(Platform.SGX, sgx(mr_enclave=H32["b"])), legacy, "svc", at=AT).accepted


# --- TDX ---------------------------------------------------------------------------------------

TDX_POLICY = policy(
    f"""      tdx:
        mr_td: [{H48["a"]}, {H48["b"]}]
        rtmr0: {H48["c"]}
        rtmr1: {H48["d"]}
        mr_seam: {H48["e"]}
        td_attributes: "0000001000000000"
        xfam: e702060000000000
        sept_ve_disable: true
"""
)


def tdx(**over: ClaimValue) -> dict[str, ClaimValue]:
    claims: dict[str, ClaimValue] = {
        "mr_td": H48["a"],
        "rtmr0": H48["c"],
        "rtmr1": H48["d"],
        "rtmr2": H48["0"],
        "rtmr3": H48["0"],
        "mr_seam": H48["e"].upper(),
        "td_attributes": "0000001000000000",
        "xfam": "E702060000000000",
        "sept_ve_disable": True,
        "debug": False,
    }
    claims.update(over)
    return claims


def test_tdx_accepts_and_reports_every_mismatch() -> None:
    assert appraise(evidence(Platform.TDX, tdx()), TDX_POLICY, "svc", at=AT).accepted
    bad = tdx(mr_td=H48["f"], rtmr1=H48["1"], td_attributes="0000000000000000", sept_ve_disable=False)
    del bad["xfam"]
    result = appraise(evidence(Platform.TDX, bad), TDX_POLICY, "svc", at=AT)
    assert fields(result) == [
        "attestation[0].tdx.mr_td",
        "attestation[0].tdx.rtmr1",
        "attestation[0].tdx.td_attributes",
        "attestation[0].tdx.xfam",
        "attestation[0].tdx.sept_ve_disable",
    ]
    assert str(result.reasons[-1]) == "attestation[0].tdx.sept_ve_disable: got false, expected true"


# --- SEV-SNP -----------------------------------------------------------------------------------

SNP_POLICY = policy(
    f"""      sev-snp:
        measurement: {H48["a"]}
        host_data: {H32["b"]}
        family_id: "{"11" * 16}"
        policy: 0x30000
        vmpl: 0
        guest_svn_min: 2
"""
)


def snp(**over: ClaimValue) -> dict[str, ClaimValue]:
    claims: dict[str, ClaimValue] = {
        "measurement": H48["a"],
        "host_data": H32["b"],
        "family_id": "11" * 16,
        "image_id": "00" * 16,
        "policy": 0x30000,
        "vmpl": 0,
        "guest_svn": 2,
        "debug": False,
    }
    claims.update(over)
    return claims


def test_sev_snp_accepts_without_tcb_status_and_reports_every_mismatch() -> None:
    assert appraise(evidence(Platform.SEV_SNP, snp(), tcb=None), SNP_POLICY, "svc", at=AT).accepted
    bad = snp(measurement=H48["b"], host_data=H32["c"], policy=0x70000, vmpl=1, guest_svn=1, family_id=7)
    result = appraise(evidence(Platform.SEV_SNP, bad, tcb=None), SNP_POLICY, "svc", at=AT)
    assert fields(result) == [
        "attestation[0].sev-snp.measurement",
        "attestation[0].sev-snp.host_data",
        "attestation[0].sev-snp.family_id",
        "attestation[0].sev-snp.policy",
        "attestation[0].sev-snp.vmpl",
        "attestation[0].sev-snp.guest_svn_min/guest_svn_max",
    ]
    assert result.reasons[2].got == "7"
    assert result.reasons[3] == Reason("attestation[0].sev-snp.policy", str(0x70000), str(0x30000))


def test_sev_snp_id_block_keys_can_be_pinned() -> None:
    # family_id/image_id come from the host's ID block, signed by any ID key the host likes:
    # only the ID key (and author key) digests make them the image owner's (ABI Table 23).
    pinned = policy(
        f"""      sev-snp:
        measurement: {H48["a"]}
        image_id: "{"22" * 16}"
        id_key_digest: {H48["c"]}
        author_key_digest: [{H48["d"]}, {H48["e"]}]
"""
    )
    owners = snp(image_id="22" * 16, id_key_digest=H48["c"], author_key_digest=H48["e"].upper())
    assert appraise(evidence(Platform.SEV_SNP, owners, tcb=None), pinned, "svc", at=AT).accepted
    hosts = snp(image_id="22" * 16, id_key_digest=H48["f"], author_key_digest=H48["0"])
    result = appraise(evidence(Platform.SEV_SNP, hosts, tcb=None), pinned, "svc", at=AT)
    assert fields(result) == [
        "attestation[0].sev-snp.id_key_digest",
        "attestation[0].sev-snp.author_key_digest",
    ]


SNP_TCB_POLICY = policy(
    f"""      sev-snp:
        measurement: {H48["a"]}
        min_tcb: {{bootloader: 3, snp: 8, microcode: 115}}
"""
)
MILAN_TCB: dict[str, ClaimValue] = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_sev_snp_min_tcb_judges_every_component_of_the_reported_tcb() -> None:
    """``min_tcb``: each SPL given is a minimum for the same component of REPORTED_TCB (the TCB
    the VCEK/VLEK certifies). SEV-SNP has no TCB status, so this is how a policy refuses an old
    firmware or microcode; every component below its minimum is reported."""
    ok = evidence(Platform.SEV_SNP, snp(reported_tcb=MILAN_TCB), tcb=None)
    assert appraise(ok, SNP_TCB_POLICY, "svc", at=AT).accepted
    newer = snp(reported_tcb={**MILAN_TCB, "bootloader": 4, "microcode": 219})
    assert appraise(evidence(Platform.SEV_SNP, newer, tcb=None), SNP_TCB_POLICY, "svc", at=AT).accepted
    old = snp(reported_tcb={**MILAN_TCB, "bootloader": 2, "microcode": 68})
    result = appraise(evidence(Platform.SEV_SNP, old, tcb=None), SNP_TCB_POLICY, "svc", at=AT)
    assert result.reasons == (
        Reason("attestation[0].sev-snp.min_tcb.bootloader", "2", ">= 3 (reported_tcb)"),
        Reason("attestation[0].sev-snp.min_tcb.microcode", "68", ">= 115 (reported_tcb)"),
    )
    for claims in (snp(), snp(reported_tcb="0300000000000873"), snp(reported_tcb={"bootloader": 3})):
        result = appraise(evidence(Platform.SEV_SNP, claims, tcb=None), SNP_TCB_POLICY, "svc", at=AT)
        assert not result.accepted and fields(result)[0].startswith("attestation[0].sev-snp.min_tcb")
    turin = policy(f"      sev-snp: {{measurement: {H48['a']}, min_tcb: {{fmc: 1, snp: 3}}}}\n")
    milan = appraise(evidence(Platform.SEV_SNP, snp(reported_tcb=MILAN_TCB), tcb=None), turin, "svc", at=AT)
    assert [str(r) for r in milan.reasons] == [
        "attestation[0].sev-snp.min_tcb.fmc: got no component, expected >= 1 (reported_tcb; Turin only)"
    ]
    with pytest.raises(PolicyError, match="min_tcb"):
        policy(f"      sev-snp: {{measurement: {H48['a']}, min_tcb: {{}}}}\n")
    with pytest.raises(PolicyError, match="min_tcb"):
        policy(f"      sev-snp: {{measurement: {H48['a']}, min_tcb: {{snp: 256}}}}\n")


def test_sev_snp_min_tcb_on_a_real_report() -> None:
    """trustee's Milan report (REPORTED_TCB bl 3, tee 0, snp 8, ucode 115), verified under the
    pinned AMD roots: a minimum it reaches passes, one microcode SPL above it does not."""
    assets = Path(__file__).parents[1] / "assets" / "sev-snp" / "trustee"
    vek = load_certificates((assets / "test-vcek.der").read_bytes(), "vcek")[0]
    verified = verify_report(
        (assets / "test-report.bin").read_bytes(), vek, embedded_roots(), at=datetime(2024, 1, 1, tzinfo=UTC)
    )
    measurement = verified.claims["measurement"]
    at = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    for microcode, accepted in ((115, True), (116, False)):
        pol = policy(f"      sev-snp: {{measurement: {measurement}, min_tcb: {{microcode: {microcode}}}}}\n")
        assert appraise(verified, pol, "svc", at=at).accepted is accepted


# --- NVIDIA GPU, AWS Nitro, simulator ---------------------------------------------------------

GPU_ATTESTATION = f"""      nvidia-gpu:
        driver_version: ["550.54.15", "550.90.07"]
        vbios_version: 96.00.88.00.11
        measurements: {{0: {H48["a"]}, 2: [{H48["b"]}, {H48["c"]}]}}
"""
GPU_POLICY = policy(GPU_ATTESTATION, "    tolerate: [gpu-only]\n")


@pytest.mark.parametrize(
    "measurements",
    [[H48["a"], H48["f"], H48["c"]], {"0": H48["a"], "2": H48["c"].upper()}],
    ids=["list", "map"],
)
def test_nvidia_gpu(measurements: Any) -> None:
    good = {"driver_version": "550.90.07", "vbios_version": "96.00.88.00.11", "measurements": measurements}
    assert appraise(evidence(Platform.NVIDIA_GPU, good, tcb=None), GPU_POLICY, "svc", at=AT).accepted
    bad = {"driver_version": "535.1", "vbios_version": "96.00.88.00.12", "measurements": [H48["f"]]}
    result = appraise(evidence(Platform.NVIDIA_GPU, bad, tcb=None), GPU_POLICY, "svc", at=AT)
    assert fields(result) == [
        "attestation[0].nvidia-gpu.driver_version",
        "attestation[0].nvidia-gpu.vbios_version",
        "attestation[0].nvidia-gpu.measurements.0",
        "attestation[0].nvidia-gpu.measurements.2",
    ]
    assert result.reasons[3].got == "no claim"


def test_a_gpu_report_alone_needs_the_gpu_only_tolerance() -> None:
    good = {
        "driver_version": "550.90.07",
        "vbios_version": "96.00.88.00.11",
        "measurements": [H48["a"], H48["f"], H48["c"]],
    }
    accepted = appraise(evidence(Platform.NVIDIA_GPU, good, tcb=None), GPU_POLICY, "svc", at=AT)
    assert accepted.accepted and accepted.tolerated == ("gpu-only",)
    result = appraise(evidence(Platform.NVIDIA_GPU, good, tcb=None), policy(GPU_ATTESTATION), "svc", at=AT)
    assert not result.accepted
    assert fields(result) == ["platform"]
    assert "gpu-only" in result.reasons[0].expected


# --- composite: a confidential VM with GPUs -----------------------------------------------------

COMPOSITE_POLICY = policy(
    f"""      tdx:
        mr_td: {H48["a"]}
      nvidia-gpu:
        count: 2
        driver_version: "550.90.07"
        measurements: {{0: {H48["a"]}}}
"""
)
GPU_GOOD: dict[str, ClaimValue] = {"driver_version": "550.90.07", "measurements": {"0": H48["a"]}}


def gpu(
    k: int, claims: dict[str, ClaimValue] = GPU_GOOD, *, key: int | None = None, **kw: Any
) -> VerifiedEvidence:
    """GPU ``k``'s verified report: its own digest and attestation key (``key`` to share one)."""
    return VerifiedEvidence(
        platform=Platform.NVIDIA_GPU,
        claims={**claims, "attestation_key_sha256": f"{k if key is None else key:064x}"},
        verified_at=kw.get("verified_at", AT - timedelta(seconds=1)),
        evidence_digest=f"{k + 1:064x}",
    )


def test_composite_holds_when_the_cpu_and_every_gpu_hold() -> None:
    vm = evidence(Platform.TDX, tdx())
    result = appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[gpu(0), gpu(1)])
    assert result.accepted and result.platform is Platform.TDX and result.tolerated == ()
    assert result.matched_variant == 0


def test_composite_reports_cpu_and_per_gpu_mismatches_together() -> None:
    vm = evidence(Platform.TDX, tdx(mr_td=H48["b"]))
    other = gpu(1, {"driver_version": "535.1", "measurements": {"0": H48["c"]}})
    result = appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[gpu(0), other])
    assert fields(result) == [
        "attestation[0].tdx.mr_td",
        "attestation[0].gpu1.nvidia-gpu.driver_version",
        "attestation[0].gpu1.nvidia-gpu.measurements.0",
    ]
    assert result.reasons[2].got == H48["c"]


def test_composite_gpu_count_is_exact_and_defaults_to_at_least_one() -> None:
    vm = evidence(Platform.TDX, tdx())
    for devices in ([], [gpu(0)], [gpu(0), gpu(1), gpu(2)]):
        result = appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=devices)
        assert fields(result) == ["attestation[0].nvidia-gpu.count"]
        assert result.reasons[0] == Reason(
            "attestation[0].nvidia-gpu.count", f"{len(devices)} distinct GPU report(s)", "2"
        )
    any_count = policy(
        f"      tdx: {{mr_td: {H48['a']}}}\n      nvidia-gpu: {{driver_version: '550.90.07'}}\n"
    )
    assert fields(appraise(vm, any_count, "svc", at=AT)) == ["attestation[0].nvidia-gpu"]
    for n in (1, 5):
        assert appraise(vm, any_count, "svc", at=AT, devices=[gpu(k) for k in range(n)]).accepted


@pytest.mark.parametrize("same", ["report", "key"])
def test_a_gpu_presented_twice_is_reported_and_counts_once(same: str) -> None:
    vm = evidence(Platform.TDX, tdx())
    twin = gpu(0) if same == "report" else gpu(1, key=0)
    result = appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[gpu(0), twin])
    assert fields(result) == ["gpu1", "attestation[0].nvidia-gpu.count"]
    assert str(result.reasons[0]) == "gpu1: got the same GPU as gpu0, expected each GPU presented once"
    assert result.reasons[1].got == "1 distinct GPU report(s)"


def test_devices_only_with_cpu_tee_evidence_and_only_gpu_reports() -> None:
    alone = evidence(Platform.NVIDIA_GPU, dict(GPU_GOOD), tcb=None)
    result = appraise(alone, GPU_POLICY, "svc", at=AT, devices=[gpu(1)])
    assert "devices" in fields(result) and not result.accepted
    sgx_ev = evidence(Platform.SGX, sgx())
    assert fields(appraise(sgx_ev, SGX_POLICY, "svc", at=AT, devices=[gpu(0)])) == ["devices"]
    vm = evidence(Platform.TDX, tdx())
    result = appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[gpu(0), evidence(Platform.TDX, tdx())])
    assert fields(result) == ["gpu1", "attestation[0].nvidia-gpu.count"]
    late = gpu(1, verified_at=AT + timedelta(seconds=1))
    assert fields(appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[gpu(0), late])) == [
        "gpu1.verified_at"
    ]
    with pytest.raises(TypeError, match="expected VerifiedEvidence"):
        appraise(vm, COMPOSITE_POLICY, "svc", at=AT, devices=[SimpleNamespace(platform=Platform.NVIDIA_GPU)])  # type: ignore[list-item]


def test_composite_and_single_platform_variants_side_by_side() -> None:
    pol = policy(
        f"""      - tdx: {{mr_td: {H48["a"]}}}
      - sev-snp: {{measurement: {H48["a"]}}}
        nvidia-gpu: {{measurements: {{0: {H48["a"]}}}}}
      - nvidia-gpu: {{measurements: {{0: {H48["a"]}}}}}
"""
    )
    vm = evidence(Platform.TDX, tdx())
    # A variant without nvidia-gpu says nothing about GPUs sent along.
    assert appraise(vm, pol, "svc", at=AT).accepted
    assert appraise(vm, pol, "svc", at=AT, devices=[gpu(0)]).matched_variant == 0
    snp_vm = evidence(Platform.SEV_SNP, snp(measurement=H48["a"]), tcb=None)
    result = appraise(snp_vm, pol, "svc", at=AT)
    assert fields(result) == ["attestation[0]", "attestation[1].nvidia-gpu", "attestation[2]"]
    assert result.reasons[2].expected == "nvidia-gpu evidence"
    assert result.reasons[0].expected == "tdx evidence"
    assert appraise(snp_vm, pol, "svc", at=AT, devices=[gpu(0)]).matched_variant == 1
    # GPU evidence alone still needs gpu-only, and a composite variant wants CPU evidence.
    alone = appraise(evidence(Platform.NVIDIA_GPU, dict(GPU_GOOD), tcb=None), pol, "svc", at=AT)
    assert fields(alone) == ["platform"] and alone.matched_variant == 2
    result = appraise(evidence(Platform.NVIDIA_GPU, dict(GPU_GOOD), tcb=None), COMPOSITE_POLICY, "svc", at=AT)
    assert result.reasons[-1].expected == "tdx evidence with nvidia-gpu reports"


def test_aws_nitro_pcrs() -> None:
    nitro = policy(f"      aws-nitro:\n        pcrs: {{0: {H48['a']}, 8: {H48['b']}}}\n")
    claims: dict[str, ClaimValue] = {"pcr0": H48["a"], "pcr1": H48["0"], "pcr8": H48["b"], "debug": False}
    assert appraise(evidence(Platform.AWS_NITRO, claims, tcb=None), nitro, "svc", at=AT).accepted
    result = appraise(
        evidence(Platform.AWS_NITRO, {"pcr0": H48["0"], "debug": False}, tcb=None), nitro, "svc", at=AT
    )
    assert fields(result) == ["attestation[0].aws-nitro.pcrs.0", "attestation[0].aws-nitro.pcrs.8"]


def test_aws_nitro_needs_a_debug_claim() -> None:
    # A debug-mode enclave (PCR0..2 zero) needs tolerate: [debug-mode]; evidence that does not say
    # whether it is one is refused as for every CPU TEE, not taken for a production enclave.
    nitro = policy(f"      aws-nitro:\n        pcrs: {{0: {H48['a']}}}\n")
    result = appraise(evidence(Platform.AWS_NITRO, {"pcr0": H48["a"]}, tcb=None), nitro, "svc", at=AT)
    assert fields(result) == ["claims.debug"] and not result.accepted
    debug = appraise(
        evidence(Platform.AWS_NITRO, {"pcr0": H48["a"], "debug": True}, tcb=None), nitro, "svc", at=AT
    )
    assert fields(debug) == ["claims.debug"]


SIM_POLICY = policy(f"      - sim: {{measurement: {H32['a']}}}\n", "    tolerate: [simulation]\n")


def test_simulated_evidence_is_accepted_only_with_the_tolerance_and_marked() -> None:
    sim = evidence(Platform.SIMULATED, {"measurement": H32["a"], "debug": False}, tcb=None)
    result = appraise(sim, SIM_POLICY, "svc", at=AT)
    assert result.accepted and result.tolerated == (Tolerance.SIMULATION,)
    result = appraise(sim, SGX_POLICY, "svc", at=AT)
    assert not result.accepted
    assert str(result.reasons[0]) == (
        "platform: got simulated evidence (sim), "
        "expected security.attestation.tolerate to include 'simulation'"
    )
    assert "attestation[0]" in fields(result) and "attestation[1]" in fields(result)
    wrong = evidence(Platform.SIMULATED, {"measurement": H32["b"], "debug": False}, tcb=None)
    assert fields(appraise(wrong, SIM_POLICY, "svc", at=AT)) == ["attestation[0].sim.measurement"]


def test_platform_mismatch() -> None:
    result = appraise(evidence(Platform.TDX, tdx()), SGX_POLICY, "svc", at=AT)
    assert str(result.reasons[0]) == "attestation[0]: got tdx evidence, expected sgx evidence"
    assert len(result.reasons) == 2


# --- TCB status, advisories, debug --------------------------------------------------------------

# Independent statement of the rule (issue 4 / Intel TCB statuses): what each status needs, as
# groups of tolerances of which one each must be tolerated (the first one named when none is).
NEEDS: dict[TcbStatus, list[tuple[str, ...]] | None] = {
    TcbStatus.UP_TO_DATE: [],
    TcbStatus.SW_HARDENING_NEEDED: [("software-hardening-needed",)],
    TcbStatus.CONFIGURATION_NEEDED: [("configuration-needed",)],
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED: [
        ("configuration-needed",),
        ("software-hardening-needed",),
    ],
    TcbStatus.OUT_OF_DATE: [("outdated-tcb",)],
    TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED: [("outdated-tcb",), ("configuration-needed",)],
    TcbStatus.REVOKED: None,
    # a TD advised to relaunch: its own tolerance, or the wider outdated-tcb
    TcbStatus.TD_RELAUNCH_ADVISED: [("relaunch-advised", "outdated-tcb")],
    TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED: [
        ("relaunch-advised", "outdated-tcb"),
        ("configuration-needed",),
    ],
}
TOLERABLE = ["software-hardening-needed", "configuration-needed", "outdated-tcb", "relaunch-advised"]
SUBSETS = [set(c) for n in range(5) for c in itertools.combinations(TOLERABLE, n)]


@pytest.mark.parametrize("status", list(TcbStatus), ids=str)
@pytest.mark.parametrize("tolerate", SUBSETS, ids=lambda s: "+".join(sorted(s)) or "none")
def test_tcb_status_tolerance_matrix(status: TcbStatus, tolerate: set[str]) -> None:
    security = f"    tolerate: [{', '.join(sorted(tolerate))}]\n" if tolerate else ""
    pol = policy(f"      mrenclave: {H32['b']}\n", security)
    result = appraise(evidence(Platform.SGX, sgx(), tcb=status), pol, "svc", at=AT)
    groups = NEEDS[status]
    if groups is None:
        assert not result.accepted
        assert fields(result) == ["tcb_status"] and "Revoked" in str(result.reasons[0])
        return
    missing = {g[0] for g in groups if not set(g) & tolerate}
    used = {next(t for t in g if t in tolerate) for g in groups if set(g) & tolerate}
    assert result.accepted == (not missing)
    assert len(result.reasons) == len(missing)
    assert {r.expected.split("'")[1] for r in result.reasons} == missing
    assert {t.value for t in result.tolerated} == used


def test_scone_insecure_configuration_is_configuration_needed() -> None:
    pol = policy(f"      mrenclave: {H32['b']}\n", "    tolerate: [insecure-configuration]\n")
    result = appraise(evidence(Platform.SGX, sgx(), tcb=TcbStatus.CONFIGURATION_NEEDED), pol, "svc", at=AT)
    assert result.accepted and result.tolerated == (Tolerance.INSECURE_CONFIGURATION,)


def test_missing_tcb_status_on_intel_is_refused() -> None:
    result = appraise(evidence(Platform.SGX, sgx(), tcb=None), SGX_POLICY, "svc", at=AT)
    assert fields(result) == ["tcb_status"]


def test_advisories() -> None:
    sec = "    tolerate: [outdated-tcb, hyperthreading]\n    ignore_advisories: [INTEL-SA-00161]\n"
    pol = policy(f"      mrenclave: {H32['b']}\n", sec)
    ok = evidence(
        Platform.SGX, sgx(), tcb=TcbStatus.OUT_OF_DATE, advisories=("intel-sa-00161", "INTEL-SA-00233")
    )
    result = appraise(ok, pol, "svc", at=AT)
    assert result.accepted
    assert result.tolerated == (Tolerance.HYPERTHREADING, Tolerance.OUTDATED_TCB)
    bad = evidence(
        Platform.SGX, sgx(), tcb=TcbStatus.OUT_OF_DATE, advisories=("INTEL-SA-00615", "INTEL-SA-00219")
    )
    result = appraise(bad, pol, "svc", at=AT)
    assert [r.got for r in result.reasons] == ["'INTEL-SA-00615'", "'INTEL-SA-00219'"]
    assert "insecure-igpu" in result.reasons[1].expected
    wildcard = policy(
        f"      mrenclave: {H32['b']}\n",
        '    tolerate: [debug-mode, outdated-tcb]\n    ignore_advisories: "*"\n',
    )
    assert appraise(bad, wildcard, "svc", at=AT).accepted


def test_debug_mode() -> None:
    debug = evidence(Platform.SGX, sgx(debug=True))
    result = appraise(debug, SGX_POLICY, "svc", at=AT)
    assert [str(r) for r in result.reasons] == [
        "claims.debug: got true (debug mode), expected security.attestation.tolerate to include 'debug-mode'"
    ]
    tolerant = policy(f"      mrenclave: {H32['b']}\n", "    tolerate: [debug-mode]\n")
    result = appraise(debug, tolerant, "svc", at=AT)
    assert result.accepted and result.tolerated == (Tolerance.DEBUG_MODE,)
    claims = sgx()
    del claims["debug"]
    assert fields(appraise(evidence(Platform.SGX, claims), SGX_POLICY, "svc", at=AT)) == ["claims.debug"]
    assert fields(appraise(evidence(Platform.SGX, sgx(debug="no")), SGX_POLICY, "svc", at=AT)) == [
        "claims.debug"
    ]


def test_global_and_variant_problems_are_reported_together() -> None:
    ev = evidence(
        Platform.SGX,
        sgx(debug=True, mr_enclave=H32["f"]),
        tcb=TcbStatus.REVOKED,
        advisories=("INTEL-SA-00001",),
    )
    result = appraise(ev, SGX_POLICY, "svc", at=AT)
    assert fields(result)[:3] == ["claims.debug", "tcb_status", "advisory_ids"]
    assert "attestation[0].mrenclave" in fields(result) and "attestation[1].signer.mrsigner" in fields(result)


# --- API contract ------------------------------------------------------------------------------


def test_only_verified_evidence_is_accepted() -> None:
    duck = SimpleNamespace(
        **{f: getattr(evidence(Platform.SGX, sgx()), f) for f in VerifiedEvidence.__slots__}
    )
    with pytest.raises(TypeError, match="expected VerifiedEvidence"):
        appraise(duck, SGX_POLICY, "svc", at=AT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected VerifiedEvidence"):
        appraise({"platform": "sgx"}, SGX_POLICY, "svc", at=AT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timezone-aware"):
        appraise(evidence(Platform.SGX, sgx()), SGX_POLICY, "svc", at=datetime(2026, 1, 1))


def test_check_security_accepts_only_verified_evidence() -> None:
    """The tolerances-only entry point (the CAS's own evidence, a peer's) keeps the same typed
    boundary as :func:`appraise`: a look-alike of verified evidence is refused, not judged."""
    security = AttestationSecurity()
    assert check_security(evidence(Platform.SGX, sgx()), security) == ((), ())
    duck = SimpleNamespace(
        **{f: getattr(evidence(Platform.SGX, sgx()), f) for f in VerifiedEvidence.__slots__}
    )
    for fake in (duck, {"platform": "sgx"}):
        with pytest.raises(TypeError, match="expected VerifiedEvidence"):
            check_security(fake, security)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an AttestationSecurity"):
        check_security(evidence(Platform.SGX, sgx()), {"tolerate": ["debug-mode"]})  # type: ignore[arg-type]


def test_evidence_from_the_future_and_unknown_service() -> None:
    future = evidence(Platform.SGX, sgx(), verified_at=AT + timedelta(minutes=5))
    assert fields(appraise(future, SGX_POLICY, "svc", at=AT)) == ["verified_at"]
    result = appraise(evidence(Platform.SGX, sgx()), SGX_POLICY, "nope", at=AT)
    assert not result.accepted and fields(result) == ["service"] and "'svc'" in result.reasons[0].expected


def test_raise_for_result() -> None:
    ok = appraise(evidence(Platform.SGX, sgx()), SGX_POLICY, "svc", at=AT)
    assert raise_for_result(ok) is ok
    bad = appraise(evidence(Platform.SGX, sgx(mr_enclave=H32["f"], isv_svn=0)), SGX_POLICY, "svc", at=AT)
    with pytest.raises(AppraisalError) as info:
        raise_for_result(bad)
    assert info.value.problems == bad.reasons
    assert all(str(r) in str(info.value) for r in bad.reasons)
    assert info.value.exit_code == 31


_claim_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.text(max_size=100), st.sampled_from(list(H48.values()))
    ),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=6,
)
_claim_names = st.sampled_from(
    [
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "debug",
        "mr_td",
        "rtmr1",
        "xfam",
        "sept_ve_disable",
        "measurement",
        "host_data",
        "policy",
        "vmpl",
        "guest_svn",
        "family_id",
        "driver_version",
        "vbios_version",
        "measurements",
        "pcr0",
        "pcr8",
    ]
)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Platform)),
    st.dictionaries(_claim_names, _claim_values, max_size=12),
    st.sampled_from([None, *TcbStatus]),
    st.lists(st.text(max_size=20), max_size=3),
)
def test_arbitrary_claims_never_crash_and_never_pass_unchecked(
    platform: Platform, claims: dict[str, ClaimValue], tcb: TcbStatus | None, advisories: list[str]
) -> None:
    ev = evidence(platform, claims, tcb=tcb, advisories=tuple(advisories))
    for pol in (SGX_POLICY, TDX_POLICY, SNP_POLICY, GPU_POLICY, SIM_POLICY, COMPOSITE_POLICY):
        result = appraise(ev, pol, "svc", at=AT)
        assert result.accepted == (not result.reasons)
        if result.accepted:
            assert result.matched_variant is not None
            assert pol.service("svc").variants()[result.matched_variant].platform is platform


def test_a_tcb_status_unknown_to_appraisal_is_refused() -> None:
    ev = evidence(Platform.SGX, sgx(), tcb="SomeFutureStatus")  # type: ignore[arg-type]
    result = appraise(ev, SGX_POLICY, "svc", at=AT)
    assert not result.accepted and fields(result) == ["tcb_status"]
    assert result.reasons[0].got == "SomeFutureStatus"


def test_hyperthreading_shortcut_stands_for_its_configuration_category() -> None:
    pol = policy(
        f"      mrenclave: {H32['b']}\n",
        "    tolerate: [hyperthreading]\n    ignore_advisories: [INTEL-SA-00615]\n",
    )
    only_ht = evidence(
        Platform.SGX, sgx(), tcb=TcbStatus.CONFIGURATION_NEEDED, advisories=("INTEL-SA-00233",)
    )
    result = appraise(only_ht, pol, "svc", at=AT)
    assert result.accepted and result.tolerated == (Tolerance.HYPERTHREADING,)
    more = evidence(
        Platform.SGX,
        sgx(),
        tcb=TcbStatus.CONFIGURATION_NEEDED,
        advisories=("INTEL-SA-00233", "INTEL-SA-00615"),
    )
    result = appraise(more, pol, "svc", at=AT)
    assert [str(r) for r in result.reasons] == [
        "tcb_status: got ConfigurationNeeded, "
        "expected security.attestation.tolerate to include 'configuration-needed'"
    ]
    no_advisory = evidence(Platform.SGX, sgx(), tcb=TcbStatus.CONFIGURATION_NEEDED)
    assert fields(appraise(no_advisory, pol, "svc", at=AT)) == ["tcb_status"]
    outdated = evidence(Platform.SGX, sgx(), tcb=TcbStatus.OUT_OF_DATE, advisories=("INTEL-SA-00233",))
    assert fields(appraise(outdated, pol, "svc", at=AT)) == ["tcb_status"]
