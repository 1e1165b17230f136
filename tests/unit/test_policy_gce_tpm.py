"""The ``gce-tpm`` attestation variant: its factors (validation with file, line and column) and
their appraisal against what ``confide.verify.gce_tpm`` verified, on the real GCE Shielded VM
attestation of go-tpm-tools (tests/assets/tpm/google-go-tpm-tools) and on edited claims."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from confide.errors import PolicyError
from confide.policy import Policy, appraise, canonical_json, loads_policy, policy_hash, policy_warnings
from confide.policy.model import GceTpmFactors, Tolerance
from confide.policy.problems import Problem
from confide.verify.gce_tpm import verify_gce_attestation
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence

ASSETS = Path(__file__).parent.parent / "assets" / "tpm" / "google-go-tpm-tools"
AT = datetime(2024, 1, 1, tzinfo=UTC)
REAL = verify_gce_attestation((ASSETS / "gce-cos-85-nonce9009.pb").read_bytes(), at=AT)
SHA256 = REAL.claims["pcrs"]["sha256"]  # type: ignore[index,call-overload]
PCR0, PCR7 = SHA256["0"], SHA256["7"]
OTHER = "ab" * 32

# What the real attestation proves (tests/assets/tpm/README.md; test_verify_gce_tpm.py)
FACTORS = f"""        gce-tpm:
          pcrs: {{"0": "{PCR0}", "7": ["{OTHER}", "{PCR7.upper()}"]}}
          secure_boot: true
          gce_firmware_version_min: 1
          confidential_technology: [AMD_SEV, AMD_SEV_SNP]
          project_id: google.com:wuale-gcp-testing
          project_number: 117478743145
          zone: [us-central1-a, us-central1-b]
          instance_id: 6797026933021542085
          instance_name: cos-test
          min_security_version: 0
"""


PROJECT = 117478743145  # the real attestation's project number
VTPM_ONLY = "security:\n  attestation:\n    tolerate: [vtpm-only]\n"


def policy(attestation: str, security: str = VTPM_ONLY) -> Policy:
    text = f'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    attestation:\n{attestation}'
    return loads_policy(text.rstrip("\n") + "\n" + security, source="p.yaml")


def with_claims(**changes: Any) -> VerifiedEvidence:
    claims: dict[str, ClaimValue] = dict(REAL.claims)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: Any = claims
        for key in parents:
            node[key] = dict(node[key])
            node = node[key]
        node[last] = value
    return dataclasses.replace(REAL, claims=claims)


def fields(p: Policy, evidence: VerifiedEvidence = REAL) -> list[str]:
    result = appraise(evidence, p, "svc", at=AT)
    assert not result.accepted or not result.reasons
    return [r.field for r in result.reasons]


def test_the_real_attestation_matches_every_factor() -> None:
    p = policy(FACTORS)
    variant = p.service("svc").variants()[0]
    assert variant.platform is Platform.GCE_TPM and isinstance(variant.gce_tpm, GceTpmFactors)
    result = appraise(REAL, p, "svc", at=AT)
    assert result.accepted and result.matched_variant == 0, result
    assert result.tolerated == (Tolerance.VTPM_ONLY,), result


def test_a_vtpm_quote_needs_the_vtpm_only_tolerance() -> None:
    """Google runs the vTPM and the host: relying on its quote is the policy's explicit choice."""
    result = appraise(REAL, policy(FACTORS, security=""), "svc", at=AT)
    assert not result.accepted
    assert [(r.field, r.expected) for r in result.reasons] == [
        ("platform", "security.attestation.tolerate to include 'vtpm-only'")
    ]


def test_a_variant_without_the_tolerance_is_warned_about_when_applied() -> None:
    """Valid, but it accepts nothing: `policy apply` (and the SDK's) says so before the first
    attestation is refused; with `vtpm-only`, no warning. An NVIDIA GPU variant alone without
    `gpu-only` likewise."""
    [warning] = policy_warnings(policy(FACTORS, security=""))
    assert warning == (
        "warning: service 'svc' attestation[0] (gce-tpm) accepts nothing: a Google vTPM's quote is"
        " accepted only with security.attestation.tolerate: [vtpm-only] (docs/gce-tpm.md)"
    )
    assert policy_warnings(policy(FACTORS)) == ()
    gpu = "        nvidia-gpu:\n          count: 1\n"
    [warning] = policy_warnings(policy(gpu, security=""))
    assert "(nvidia-gpu) accepts nothing" in warning and "[gpu-only]" in warning
    assert (
        policy_warnings(policy(gpu, security="security:\n  attestation:\n    tolerate: [gpu-only]\n")) == ()
    )


def test_every_mismatch_is_reported_with_what_was_found() -> None:
    text = f"""        gce-tpm:
          pcrs: {{"0": "{OTHER}", "9": "{OTHER}", "23": "{OTHER}"}}
          secure_boot: false
          gce_firmware_version_min: 2
          confidential_technology: INTEL_TDX
          project_id: another-project
          project_number: [1, 2]
          zone: europe-west4-a
          instance_id: 7
          instance_name: COS-TEST
          min_security_version: 1
"""
    result = appraise(REAL, policy(text), "svc", at=AT)
    assert not result.accepted
    shown = {r.field: (r.got, r.expected) for r in result.reasons}
    assert list(shown) == [
        "attestation[0].gce-tpm.pcrs.0",
        "attestation[0].gce-tpm.pcrs.9",
        "attestation[0].gce-tpm.pcrs.23",
        "attestation[0].gce-tpm.secure_boot",
        "attestation[0].gce-tpm.gce_firmware_version_min",
        "attestation[0].gce-tpm.confidential_technology",
        "attestation[0].gce-tpm.project_id",
        "attestation[0].gce-tpm.zone",
        "attestation[0].gce-tpm.instance_name",
        "attestation[0].gce-tpm.project_number",
        "attestation[0].gce-tpm.instance_id",
        "attestation[0].gce-tpm.min_security_version",
    ]
    assert shown["attestation[0].gce-tpm.pcrs.0"] == (PCR0, OTHER)
    assert shown["attestation[0].gce-tpm.secure_boot"] == ("true", "false")
    assert shown["attestation[0].gce-tpm.gce_firmware_version_min"] == ("1", ">= 2")
    assert shown["attestation[0].gce-tpm.confidential_technology"] == ("'AMD_SEV'", "INTEL_TDX")
    assert shown["attestation[0].gce-tpm.project_number"] == ("117478743145", "one of [1, 2]")
    assert shown["attestation[0].gce-tpm.instance_name"][0] == "'cos-test'"  # names compare exactly
    assert shown["attestation[0].gce-tpm.min_security_version"] == ("0", ">= 1")


def test_a_list_of_variants_is_any_a_map_is_all() -> None:
    wrong_zone = FACTORS.replace("zone: [us-central1-a, us-central1-b]", "zone: asia-east1-a")
    both = policy(
        "      - "
        + wrong_zone.strip().replace("\n", "\n  ")
        + "\n      - "
        + FACTORS.strip().replace("\n", "\n  ")
    )
    result = appraise(REAL, both, "svc", at=AT)
    assert result.accepted and result.matched_variant == 1
    alone = appraise(REAL, policy(wrong_zone), "svc", at=AT)
    assert [r.field for r in alone.reasons] == ["attestation[0].gce-tpm.zone"]  # all other factors held


def test_evidence_of_another_platform_and_other_variants_on_gce_evidence() -> None:
    nitro = policy(f'        aws-nitro: {{pcrs: {{0: "{"00" * 48}"}}}}\n')
    assert fields(nitro) == ["attestation[0]"]
    other = dataclasses.replace(REAL, platform=Platform.AZURE_SNP_VTPM)
    assert "attestation[0]" in fields(policy(FACTORS), other)


def test_no_production_instance_fails_every_instance_factor() -> None:
    result = appraise(with_claims(instance=None), policy(FACTORS), "svc", at=AT)
    reasons = {r.field: r for r in result.reasons}
    assert sorted(reasons) == sorted(
        f"attestation[0].gce-tpm.{f}"
        for f in (
            "project_id",
            "project_number",
            "zone",
            "instance_id",
            "instance_name",
            "min_security_version",
        )
    )
    assert reasons["attestation[0].gce-tpm.zone"].got == "no production instance in the AK certificate"


def test_a_variant_must_pin_the_project_or_the_instance() -> None:
    """PCRs say which image booted, not whose VM it is: anyone can boot a public image in a project
    of their own, and Google's vTPM quotes for them too."""
    for unpinned in (
        f'        gce-tpm: {{pcrs: {{"0": "{PCR0}"}}}}\n',
        "        gce-tpm: {secure_boot: true, zone: us-central1-a, instance_name: cos-test}\n",
    ):
        found = problems(unpinned)
        assert len(found) == 1 and "must pin the project" in found[0].message, found
        assert (found[0].line, found[0].column) == (6, 18), found[0]  # the gce-tpm map
    for pinned in ("project_id: p", "project_number: 1", "instance_id: 2"):
        policy(f'        gce-tpm: {{pcrs: {{"0": "{PCR0}"}}, {pinned}}}\n')


def test_secure_boot_unknown_matches_neither_true_nor_false() -> None:
    for value in (True, False):
        p = policy(f"        gce-tpm: {{secure_boot: {str(value).lower()}, project_number: {PROJECT}}}\n")
        unknown = appraise(with_claims(event_log__secure_boot=None), p, "svc", at=AT)
        assert [r.got for r in unknown.reasons] == [
            "no SecureBoot state (PCR 7 not replayed, or no SecureBoot event before its separator)"
        ]
        no_log = appraise(with_claims(event_log=None), p, "svc", at=AT)
        assert [r.got for r in no_log.reasons] == ["no event log"]
    off = appraise(
        with_claims(event_log__secure_boot=False),
        policy(f"        gce-tpm: {{secure_boot: true, project_number: {PROJECT}}}\n"),
        "svc",
        at=AT,
    )
    assert [(r.got, r.expected) for r in off.reasons] == [("false", "true")]


def test_firmware_and_technology_need_the_replayed_platform_state() -> None:
    p = policy(
        f"        gce-tpm: {{gce_firmware_version_min: 1, confidential_technology: NONE, project_number: {PROJECT}}}\n"
    )
    result = appraise(with_claims(event_log__platform=None), p, "svc", at=AT)
    assert [(r.field, r.got) for r in result.reasons] == [
        ("attestation[0].gce-tpm.gce_firmware_version_min", "no claim"),
        ("attestation[0].gce-tpm.confidential_technology", "no claim"),
    ]


def test_an_ak_that_is_not_restricted_is_refused_whatever_the_policy() -> None:
    result = appraise(with_claims(ak_restricted_signing=False), policy(FACTORS), "svc", at=AT)
    assert not result.accepted
    assert [(r.field, r.got) for r in result.reasons] == [("claims.ak_restricted_signing", "false")]


def test_tolerances_do_not_apply_to_a_vtpm() -> None:
    """No debug claim and no TCB status: a vTPM has neither; nothing but vtpm-only is relied on."""
    assert "debug" not in REAL.claims and REAL.tcb_status is None
    security = "security:\n  attestation:\n    tolerate: [debug-mode, outdated-tcb, vtpm-only]\n"
    result = appraise(REAL, policy(FACTORS, security), "svc", at=AT)
    assert result.accepted and result.tolerated == (Tolerance.VTPM_ONLY,)


# --- validation -----------------------------------------------------------------------------------


def problems(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        policy(text)
    found = [p for p in info.value.problems if isinstance(p, Problem)]
    assert found and str(info.value).startswith("p.yaml: "), info.value
    return found


@pytest.mark.parametrize(
    ("factors", "where", "message"),
    [
        ("        gce-tpm: {}\n", (6, 18), "empty gce-tpm variant"),
        ("        gce-tpm:\n          pcr: {}\n", (7, 11), "got unknown key 'pcr'"),
        (
            '        gce-tpm:\n          pcrs: {"24": "' + "00" * 32 + '"}\n',
            (7, 24),
            "expected an index 0..23",
        ),
        ('        gce-tpm:\n          pcrs: {"0": "' + "00" * 48 + '"}\n', (7, 23), "expected 64 hex digits"),
        (
            '        gce-tpm:\n          pcrs: {"7": "' + "00" * 32 + '", "07": "' + "00" * 32 + '"}\n',
            (7, 17),
            "both index 7",
        ),
        ("        gce-tpm:\n          secure_boot: yes\n", (7, 24), "expected a boolean"),
        ("        gce-tpm:\n          project_number: -1\n", (7, 27), "got integer -1, expected >= 0"),
        (
            "        gce-tpm:\n          instance_id: 18446744073709551616\n",
            (7, 24),
            "expected <= 18446744073709551615",
        ),
        ("        gce-tpm:\n          project_number: '12'\n", (7, 27), "expected an integer (unquoted)"),
        ("        gce-tpm:\n          zone: 5\n", (7, 17), "expected a string"),
        (
            "        gce-tpm:\n          confidential_technology: SEV\n",
            (7, 36),
            "expected one of NONE, AMD_SEV",
        ),
        (
            "        gce-tpm:\n          gce_firmware_version_min: 4294967296\n",
            (7, 37),
            "expected <= 4294967295",
        ),
        ("        gce-tpm:\n          instance_name: []\n", (7, 26), "at least 1"),
        (
            f'        gce-tpm: {{pcrs: {{"0": "{"00" * 32}"}}, project_number: 1}}\n        nvidia-gpu: {{count: 1}}\n',
            (6, 9),
            "got gce-tpm with nvidia-gpu",
        ),
        (
            f'        gce-tpm: {{pcrs: {{"0": "{"00" * 32}"}}, project_number: 1}}\n        aws-nitro: {{pcrs: {{0: "{"00" * 48}"}}}}\n',
            (6, 9),
            "exactly one platform",
        ),
    ],
)
def test_bad_factors_are_errors_with_file_line_and_column(
    factors: str, where: tuple[int, int], message: str
) -> None:
    found = problems(factors)
    assert len(found) == 1, found
    assert message in found[0].message, found[0]
    assert (found[0].line, found[0].column) == where, found[0]
    assert str(found[0]).startswith(f"p.yaml:{where[0]}:{where[1]}: services[0].attestation"), found[0]


def test_scalars_stand_for_lists_and_values_are_normalised() -> None:
    p = policy(
        f"""        gce-tpm:
          pcrs: {{"07": "{PCR7.upper()}"}}
          project_number: 117478743145
          zone: us-central1-a
"""
    )
    factors = p.service("svc").variants()[0].gce_tpm
    assert factors is not None
    assert factors.pcrs == {"7": (PCR7,)} and factors.project_number == (117478743145,)
    assert factors.zone == ("us-central1-a",)
    assert appraise(REAL, p, "svc", at=AT).accepted


def stored_factors(p: Policy) -> Any:
    return json.loads(canonical_json(p))["services"][0]["attestation"][0]["gce-tpm"]


def test_ids_beyond_2_53_have_a_hash_and_survive_the_stored_round_trip() -> None:
    """A real GCE instance id (19 digits) is beyond the integers RFC 8785 encodes exactly (2^53 -
    1): the canonical JSON writes such a value as its decimal string, which the CAS (and an
    auditor reading a ledger entry) reads back as the same integer. Before, `policy apply` of a
    policy pinning `instance_id` failed with a ParseError about canonical JSON."""
    p = policy(FACTORS)
    factors = stored_factors(p)
    assert factors["instance_id"] == ["6797026933021542085"]
    assert factors["project_number"] == [117478743145]  # within 2^53 - 1: a JSON number, as before
    document = json.loads(canonical_json(p))
    stored = loads_policy(json.dumps(document), source="stored", stored=True)
    assert policy_hash(stored) == policy_hash(p)
    assert stored.service("svc").variants()[0].gce_tpm.instance_id == (6797026933021542085,)  # type: ignore[union-attr]
    assert appraise(REAL, stored, "svc", at=AT).accepted
    big = f"        gce-tpm:\n          project_number: 1\n          min_security_version: {2**53}\n"
    assert stored_factors(policy(big))["min_security_version"] == str(2**53)
    # 2^53 - 1 stays a number, so the hash of every policy that could be hashed before is unchanged
    edge = f"        gce-tpm:\n          instance_id: {2**53 - 1}\n"
    assert stored_factors(policy(edge))["instance_id"] == [2**53 - 1]


@pytest.mark.parametrize(
    "value",
    [
        '["12"]',
        '["9007199254740991"]',
        '["06797026933021542085"]',
        '["+6797026933021542085"]',
        '["18446744073709551616"]',
    ],
)
def test_only_the_canonical_string_of_a_large_id_is_read_as_it(value: str) -> None:
    """A string stands for an integer only as the canonical JSON writes one: the decimal digits
    of a value from 2^53 to 2^64 - 1, no sign, no leading zero."""
    with pytest.raises(PolicyError):
        policy(f"        gce-tpm:\n          instance_id: {value}\n")


# --- a Confidential VM's hardware report (gce-tpm.sev-snp, gce-tpm.tdx) ---------------------------

SNP_ASSETS = Path(__file__).parent.parent / "assets" / "sev-snp" / "google-go-sev-guest"


def _snp_tee() -> dict[str, ClaimValue]:
    """The claims of the real go-sev-guest Milan report, as the verifier puts them in ``tee``."""
    from confide.platforms.sev_snp import embedded_verifier

    report = (SNP_ASSETS / "attestation.bin").read_bytes()
    verified = embedded_verifier().verify(report, (SNP_ASSETS / "vcek.testcer").read_bytes(), at=AT)
    return {"type": "sev-snp", **verified.claims}


SNP_TEE = _snp_tee()
WITH_SNP = with_claims(tee=SNP_TEE, debug=SNP_TEE["debug"])
MEASUREMENT = SNP_TEE["measurement"]
PIN = f"          project_number: {PROJECT}\n"
DEBUG_AND_VTPM = "security:\n  attestation:\n    tolerate: [vtpm-only, debug-mode]\n"


def test_the_tee_factors_match_the_verified_report() -> None:
    p = policy(f"        gce-tpm:\n{PIN}          sev-snp:\n            measurement: {MEASUREMENT}\n"
               "            vmpl: 0\n", DEBUG_AND_VTPM)  # fmt: skip
    result = appraise(WITH_SNP, p, "svc", at=AT)
    assert result.accepted, result
    # the report still comes with Google's vTPM (PCRs: the host's word): vtpm-only is needed,
    # and the go-sev-guest report's policy allows debugging: so is debug-mode
    assert set(result.tolerated) == {Tolerance.VTPM_ONLY, Tolerance.DEBUG_MODE}
    assert fields(policy(f"        gce-tpm:\n{PIN}          sev-snp:\n            vmpl: 0\n")) == [
        "attestation[0].gce-tpm.sev-snp"
    ]  # no report at all
    without_debug = fields(
        policy(f"        gce-tpm:\n{PIN}          sev-snp:\n            vmpl: 0\n"), WITH_SNP
    )
    assert without_debug == ["claims.debug"]


def test_every_tee_mismatch_is_reported() -> None:
    p = policy(
        f"        gce-tpm:\n{PIN}          sev-snp:\n            measurement: {'ab' * 48}\n"
        "            vmpl: 1\n            min_tcb: {snp: 200}\n",
        DEBUG_AND_VTPM,
    )
    assert fields(p, WITH_SNP) == [
        "attestation[0].gce-tpm.sev-snp.measurement",
        "attestation[0].gce-tpm.sev-snp.vmpl",
        "attestation[0].gce-tpm.sev-snp.min_tcb.snp",
    ]
    tdx = policy(f"        gce-tpm:\n{PIN}          tdx:\n            mr_td: {'ab' * 48}\n", DEBUG_AND_VTPM)
    result = appraise(WITH_SNP, tdx, "svc", at=AT)
    assert [(r.field, r.got) for r in result.reasons] == [("attestation[0].gce-tpm.tdx", "a sev-snp report")]


def test_one_technology_per_variant() -> None:
    text = f"        gce-tpm:\n{PIN}          sev-snp: {{vmpl: 0}}\n          tdx: {{mr_td: {'ab' * 48}}}\n"
    with pytest.raises(PolicyError, match="one Confidential VM technology"):
        policy(text)
