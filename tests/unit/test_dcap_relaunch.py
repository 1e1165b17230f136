"""TD relaunch advice (docs/dcap.md, step 10; Intel QVL ``TcbLevelCheck`` 4.1.2.5.1.20).

No public quote carries a TD preserving update that a TCB Info rates (tests/assets/README.md,
MANIFEST.md): the v5 sample of go-tdx-guest (``quote_v5_sample.dat``) was launched on TDX module
SVN 11 (TEE_TCB_SVN 0b.01.04) and runs module SVN 13 now (TEE_TCB_SVN2 0d.01.04), but Intel's
Feb-2026 TCB Info rates both UpToDate. These tests keep that real quote (body, TEE_TCB_SVNs,
attestation key and quote signature) and re-sign its PCK chain and the collateral under a test PKI
in Intel's shape (tests/dcap_forge.py), with the TDX module levels edited to the TCB recovery
that would make SVN 11 out of date; TEE_TCB_SVN2 itself is edited (and the quote re-signed with
a new attestation key) only where the real value cannot show a case. Each case is checked
against dcap-qvl 0.7.0, a peer that implements the same rule.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import dcap_qvl._dcap_qvl as qvl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide import errors
from confide.evidence.dcap_collateral import DcapCollateral
from confide.verify.dcap import DcapVerifier, _relaunch
from confide.verify.result import TcbStatus, VerifiedEvidence
from dcap_cases import CASES, TDX_V5_MIXED
from dcap_forge import ForgedPki

V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat") and c.collateral == TDX_V5_MIXED)
V4 = next(c for c in CASES if c.quote.endswith("phala-dcap-qvl/tdx_quote"))
ALL_STATUSES = [s.value for s in TcbStatus if s is not TcbStatus.UP_TO_DATE]


def _level(isvsvn: int, status: str) -> dict[str, Any]:
    return {"tcb": {"isvsvn": isvsvn}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status}


# TDX module identity TDX_01 as a TCB recovery to module SVN 13 would leave it: the quote's launch
# module (SVN 11) out of date, the module it runs now (SVN 13) up to date.
RECOVERY_13 = [_level(13, "UpToDate"), _level(6, "OutOfDate")]


def _collateral(
    pki: ForgedPki,
    real: DcapCollateral,
    module_levels: list[dict[str, Any]],
    *,
    top_status: str | None = None,
    qe_status: str | None = None,
) -> DcapCollateral:
    info = json.loads(real.tcb_info)
    (module,) = [m for m in info["tdxModuleIdentities"] if m["id"] == "TDX_01"]
    module["tcbLevels"] = module_levels
    if top_status is not None:
        info["tcbLevels"][0]["tcbStatus"] = top_status
    qe = json.loads(real.qe_identity)
    if qe_status is not None:
        for level in qe["tcbLevels"]:
            level["tcbStatus"] = qe_status
    edited = dataclasses.replace(
        real,
        tcb_info=json.dumps(info, separators=(",", ":")).encode(),
        qe_identity=json.dumps(qe, separators=(",", ":")).encode(),
    )
    return pki.forge_collateral(edited)


def _dcap_qvl(pki: ForgedPki, raw: bytes, coll: DcapCollateral, at: int) -> str:
    """dcap-qvl 0.7.0's status (its policy set to accept every status and platform property)."""
    policy = qvl.PyQuotePolicy.claims_only(at)
    for status in ALL_STATUSES:
        policy = policy.allow_status(status)
    policy = policy.allow_dynamic_platform(True).allow_cached_keys(True).allow_smt(True)
    policy = policy.platform_grace_period(1 << 40).qe_grace_period(1 << 40)
    try:
        claims = qvl.PyQuoteVerifier(pki.root_der).verify_with_policy(
            raw, qvl.PyQuoteCollateralV3.from_json(coll.to_dcap_qvl_json()), at, policy
        )
    except ValueError as exc:
        return str(exc)
    status: str = json.loads(claims.to_json())["tcb"]["status"]
    return status


def _verify(
    module_levels: list[dict[str, Any]], *, raw: bytes | None = None, pki: ForgedPki | None = None, **kw: Any
) -> tuple[VerifiedEvidence, str]:
    pki = pki or ForgedPki(at=V5.time)
    raw = raw or pki.forge_quote(V5.quote_bytes())
    coll = _collateral(pki, DcapCollateral.from_dcap_qvl_json(V5.collateral_bytes()), module_levels, **kw)
    verified = DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=V5.time)
    return verified, _dcap_qvl(pki, raw, coll, int(V5.time.timestamp()))


def test_the_real_quote_is_a_td_preserving_update() -> None:
    v, theirs = _verify([_level(6, "UpToDate"), _level(4, "OutOfDate")])  # Intel's real levels
    assert v.claims["tee_tcb_svn"].startswith("0b0104")  # type: ignore[union-attr]
    assert v.claims["tee_tcb_svn2"].startswith("0d0104")  # type: ignore[union-attr]
    assert v.tcb_status is TcbStatus.UP_TO_DATE and theirs == "UpToDate"
    assert v.details["launch_tcb_status"] == v.details["current_tcb_status"] == "UpToDate"


def test_launched_on_an_out_of_date_module_running_a_current_one() -> None:
    v, theirs = _verify(RECOVERY_13)
    assert v.tcb_status is TcbStatus.TD_RELAUNCH_ADVISED
    assert theirs == "TDRelaunchAdvised"
    assert v.details["launch_tcb_status"] == "OutOfDate"
    assert v.details["current_tcb_status"] == "UpToDate"
    assert v.details["tdx_module_tcb_status"] == "OutOfDate"  # the launch module's


def test_no_advice_when_the_current_module_is_out_of_date_too() -> None:
    v, theirs = _verify([_level(14, "UpToDate"), _level(6, "OutOfDate")])
    assert v.tcb_status is TcbStatus.OUT_OF_DATE and theirs == "OutOfDate"
    assert v.details["current_tcb_status"] == "OutOfDate"


def test_the_current_module_need_not_be_the_latest_level_only_not_out_of_date() -> None:
    """Intel's 2026 rule (and dcap-qvl's): the current TCB is evaluated, not compared with the
    latest level (QVL's 2024 TDRelaunchCheck compared TEE_TCB_SVN2 with the first level only)."""
    v, theirs = _verify([_level(15, "UpToDate"), _level(13, "UpToDate"), _level(6, "OutOfDate")])
    assert v.tcb_status is TcbStatus.TD_RELAUNCH_ADVISED and theirs == "TDRelaunchAdvised"


def test_configuration_needed_carries_over() -> None:
    v, theirs = _verify(RECOVERY_13, top_status="ConfigurationNeeded")
    assert v.details["launch_tcb_status"] == "OutOfDateConfigurationNeeded"
    assert v.details["current_tcb_status"] == "ConfigurationNeeded"
    assert v.tcb_status is TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
    assert theirs == "TDRelaunchAdvisedConfigurationNeeded"


def test_an_out_of_date_qe_makes_both_out_of_date() -> None:
    v, theirs = _verify(RECOVERY_13, qe_status="OutOfDate")
    assert v.details["current_tcb_status"] == "OutOfDate"
    assert v.tcb_status is TcbStatus.OUT_OF_DATE and theirs == "OutOfDate"


def test_a_revoked_current_module_is_revoked() -> None:
    v, theirs = _verify([_level(13, "Revoked"), _level(6, "OutOfDate")])
    assert v.details["launch_tcb_status"] == "OutOfDate"
    assert v.tcb_status is TcbStatus.REVOKED
    assert "Revoked" in theirs  # dcap-qvl refuses it


def test_a_revoked_launch_stays_revoked() -> None:
    v, theirs = _verify([_level(13, "UpToDate"), _level(11, "Revoked")])
    assert v.tcb_status is TcbStatus.REVOKED and "Revoked" in theirs


def test_td_report_10_gets_no_advice() -> None:
    """A v4 quote (TD report 1.0) has no TEE_TCB_SVN2: its out-of-date module stays OutOfDate."""
    pki = ForgedPki(at=V4.time)
    raw = pki.forge_quote(V4.quote_bytes())  # TEE_TCB_SVN 06.01.03
    real = DcapCollateral.from_dcap_qvl_json(V4.collateral_bytes())
    coll = _collateral(pki, real, [_level(7, "UpToDate"), _level(2, "OutOfDate")])
    v = DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=V4.time)
    assert v.tcb_status is TcbStatus.OUT_OF_DATE
    assert "current_tcb_status" not in v.details and v.claims["tee_tcb_svn2"] is None
    assert _dcap_qvl(pki, raw, coll, int(V4.time.timestamp())) == "OutOfDate"


def test_a_current_module_of_another_version() -> None:
    """TEE_TCB_SVN2 edited to module version 3 (identity TDX_03: SVN 3 UpToDate in the TCB Info):
    the current TCB is rated by that identity."""
    pki = ForgedPki(at=V5.time)
    raw = pki.forge_td_quote(V5.quote_bytes(), tee_tcb_svn2=bytes.fromhex("030304") + bytes(13))
    v, theirs = _verify(RECOVERY_13, raw=raw, pki=pki)
    assert v.details["current_tcb_status"] == "UpToDate"
    assert v.tcb_status is TcbStatus.TD_RELAUNCH_ADVISED and theirs == "TDRelaunchAdvised"


def test_a_current_tcb_that_matches_no_level_fails() -> None:
    """TEE_TCB_SVN2 naming a module version the TCB Info has no identity for (2), or a TDX
    component below every level: refused as the launch TCB would be (QVL returns the current
    evaluation's error)."""
    pki = ForgedPki(at=V5.time)
    for svn2, match in (("0d0204", "TDX_02"), ("0d0101", "TEE_TCB_SVN2")):
        raw = pki.forge_td_quote(V5.quote_bytes(), tee_tcb_svn2=bytes.fromhex(svn2) + bytes(13))
        with pytest.raises(errors.TcbLevelNotFoundError, match=match):
            _verify(RECOVERY_13, raw=raw, pki=pki)


def test_the_edited_quote_needs_its_new_signature() -> None:
    """Negative twin of the forging helper: the edited body under the real quote's signature
    does not verify."""
    pki = ForgedPki(at=V5.time)
    forged = pki.forge_td_quote(V5.quote_bytes(), tee_tcb_svn2=bytes.fromhex("030304") + bytes(13))
    original = pki.forge_quote(V5.quote_bytes())
    body = slice(48 + 6, 48 + 6 + 648)  # after the header and the v5 body descriptor: TD report 1.5
    spliced = original[: body.start] + forged[body] + original[body.stop :]
    assert spliced != original
    with pytest.raises(errors.SignatureError):
        _verify(RECOVERY_13, raw=spliced, pki=pki)


@pytest.mark.parametrize(
    ("launch", "current", "expected"),
    [
        ("OutOfDate", "UpToDate", "TDRelaunchAdvised"),
        ("OutOfDate", "SWHardeningNeeded", "TDRelaunchAdvised"),
        ("OutOfDate", "ConfigurationNeeded", "TDRelaunchAdvisedConfigurationNeeded"),
        ("OutOfDate", "ConfigurationAndSWHardeningNeeded", "TDRelaunchAdvisedConfigurationNeeded"),
        ("OutOfDateConfigurationNeeded", "UpToDate", "TDRelaunchAdvisedConfigurationNeeded"),
        ("OutOfDate", "OutOfDate", "OutOfDate"),
        ("OutOfDate", "OutOfDateConfigurationNeeded", "OutOfDate"),
        ("OutOfDate", "Revoked", "Revoked"),
        ("UpToDate", "UpToDate", "UpToDate"),
        ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
        ("SWHardeningNeeded", "OutOfDate", "SWHardeningNeeded"),
        ("Revoked", "UpToDate", "Revoked"),
    ],
)
def test_relaunch_rule(launch: str, current: str, expected: str) -> None:
    assert _relaunch(TcbStatus(launch), TcbStatus(current)) is TcbStatus(expected)


_NOT_IDENTITY_STATUSES = [
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDateConfigurationNeeded",
]


@pytest.mark.parametrize("status", _NOT_IDENTITY_STATUSES)
def test_a_module_or_qe_identity_status_other_than_the_three_is_refused(status: str) -> None:
    """An identity's TCB level (the TDX module's, the TD QE's) is judged UpToDate, OutOfDate or
    Revoked (QVL ``convergeTcbStatusWithTdxModuleStatus`` / ``...WithQeTcbStatus``; Intel PCS API
    v4 Enclave Identity V2 ``tcbStatus`` enumerates only these). Any other status of the module
    was taken as UpToDate (an OutOfDateConfigurationNeeded module passed as up to date); it is
    now refused, as dcap-qvl refuses it. A QE level with such a status is refused too (dcap-qvl
    ignores it: confide is stricter than its peer there)."""
    pki = ForgedPki(at=V5.time)
    raw = pki.forge_quote(V5.quote_bytes())
    coll = _collateral(pki, DcapCollateral.from_dcap_qvl_json(V5.collateral_bytes()), [_level(6, status)])
    with pytest.raises(errors.CollateralError, match=f"TDX module identity TDX_01 .*{status}"):
        DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=V5.time)
    assert "TDX module" in _dcap_qvl(pki, raw, coll, int(V5.time.timestamp()))
    coll = _collateral(
        pki,
        DcapCollateral.from_dcap_qvl_json(V5.collateral_bytes()),
        [_level(6, "UpToDate")],
        qe_status=status,
    )
    with pytest.raises(errors.CollateralError, match=f"QE Identity .*{status}"):
        DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=V5.time)
