"""confide.cas.pin.expected_claim_mismatches: ``confide cas attest --expect CLAIM=VALUE``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cli import run_confide
from confide.cas.pin import expected_claim_mismatches
from confide.errors import UsageError
from confide.verify.result import ClaimValue

CLAIMS: dict[str, ClaimValue] = {
    "rtmr1": "AB" * 48,
    "vmpl": 0,
    "debug": False,
    "policy": 0x30000,
    "event_log": {"x": 1},
}


@pytest.mark.parametrize(
    "expect",
    [
        {},
        {"rtmr1": ("ab" * 48,)},
        {"rtmr1": ("00", "Ab" * 48)},
        {"vmpl": ("0",), "debug": ("false",), "policy": ("0x30000",)},
        {"policy": ("196608",)},
    ],
)
def test_matching_expectations(expect: dict[str, tuple[str, ...]]) -> None:
    assert expected_claim_mismatches(CLAIMS, expect) == []


def test_every_mismatch_is_named() -> None:
    problems = expected_claim_mismatches(
        CLAIMS,
        {"rtmr1": ("00",), "vmpl": ("one",), "nope": ("1",), "event_log": ("1",), "debug": ("true",)},
    )
    assert len(problems) == 5
    assert problems[0].startswith("claim rtmr1: got " + "AB" * 48)
    assert problems[1] == "claim vmpl: got 0, expected one"
    assert problems[2].startswith("the CAS's evidence has no claim 'nope' (it has: debug, event_log, ")
    assert "not a single value (a dict)" in problems[3]
    assert problems[4] == "claim debug: got False, expected true"


@pytest.mark.parametrize("spec", ["rtmr1", "=00", "rtmr1=", " = "])
def test_cli_refuses_malformed_expectations(spec: str) -> None:
    r = run_confide("cas", "attest", "https://127.0.0.1:9", "--expect", spec)
    assert r.returncode == UsageError.exit_code, r.stderr
    assert "--expect: got" in r.stderr and "expected CLAIM=VALUE" in r.stderr


@pytest.mark.parametrize(
    ("crl_checked", "line"), [(True, "AMD CRL: checked"), (False, "AMD CRL: not checked")]
)
def test_cas_attest_prints_whether_an_amd_crl_was_checked(
    monkeypatch: pytest.MonkeyPatch, crl_checked: bool, line: str
) -> None:
    """``confide cas attest`` says whether the SEV-SNP chain was checked against the CRL the CAS
    published (``amd_crl``), so a CAS that published none is not passed over in silence."""
    from click.testing import CliRunner

    from confide.cas import cli, pin
    from confide.verify.result import Platform, VerifiedEvidence

    evidence = VerifiedEvidence(
        platform=Platform.SEV_SNP, claims={"measurement": "cd" * 48}, verified_at=datetime.now(UTC),
        evidence_digest="00" * 32, details={"crl_checked": crl_checked},
    )  # fmt: skip
    pinned = pin.PinnedCas("https://cas", b"", "ab" * 32, "log-key", evidence)
    monkeypatch.setattr(pin, "attest_cas", lambda url, **_kw: pinned)
    result = CliRunner().invoke(cli.cas, ["attest", "https://cas.example"])
    assert result.exit_code == 0, result.output
    assert line in result.stderr
