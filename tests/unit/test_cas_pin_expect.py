"""confide.cas.pin.expected_claim_mismatches: ``confide cas attest --expect CLAIM=VALUE``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cli import run_confide
from confide.cas.pin import expected_claim_mismatches
from confide.errors import UsageError
from confide.verify.result import ClaimValue
from pki import self_signed_pem

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
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, crl_checked: bool, line: str
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
    pinned = pin.PinnedCas(
        "https://cas", self_signed_pem(tmp_path / "cas.pem").read_bytes(), "ab" * 32, "log-key", evidence
    )
    monkeypatch.setattr(pin, "attest_cas", lambda url, **_kw: pinned)
    result = CliRunner().invoke(cli.cas, ["attest", "https://cas.example"])
    assert result.exit_code == 0, result.output
    assert line in result.stderr


def test_cas_attest_reads_the_simulated_platform_key_as_a_small_regular_file(tmp_path: Path) -> None:
    """``cas attest --sim-key FILE`` (and ``$CONFIDE_SIM_DIR/platform-key.pub.pem``) was read with
    ``read_bytes``: a FIFO was waited on for ever, a file of any size read whole (``Cas.attested``'s
    ``sim_key`` is read bounded, without blocking). A UsageError at once."""
    import os
    import threading

    from click.testing import CliRunner

    from confide.cas import cli

    fifo = tmp_path / "platform-key.pub.pem"
    os.mkfifo(fifo)
    runs = {
        "--sim-key": (["attest", "https://127.0.0.1:9", "--sim-key", str(fifo), "--measurement", "ab" * 48], {}),
        "CONFIDE_SIM_DIR": (["attest", "https://127.0.0.1:9", "--measurement", "ab" * 48],
                            {"CONFIDE_SIM_DIR": str(tmp_path)}),
    }  # fmt: skip
    for what, (args, env) in runs.items():
        outcome: list[Any] = []

        def run(args: list[str] = args, env: dict[str, str] = env) -> None:
            outcome.append(CliRunner().invoke(cli.cas, args, env=env))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10.0)
        if thread.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
            thread.join(10.0)
            pytest.fail(f"{what}: waited on a FIFO")
        error = outcome[0].exception  # confide's main maps it to its exit code (2)
        assert isinstance(error, UsageError), (what, outcome[0].output, error)
        assert "not a regular file" in error.message, what
