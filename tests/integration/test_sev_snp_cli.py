"""``python -m confide evidence verify --platform sev-snp`` run for real, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli import run_confide

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets" / "sev-snp"


def run(*args: str | Path) -> tuple[int, dict[str, Any]]:
    proc = run_confide("evidence", "verify", *args, "--platform", "sev-snp", "--json")
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("report", "vcek", "at", "signing_key"),
    [
        (
            "google-go-sev-guest/attestation.bin",
            "google-go-sev-guest/vcek.testcer",
            "2023-01-01T00:00:00Z",
            "vcek",
        ),
        ("trustee/test-vlek-report.bin", "trustee/test-vlek.der", "2025-06-01T00:00:00Z", "vlek"),
        (
            "derived-from-trustee-azure/milan_snp_report_from_hcl-report.bin",
            "derived-from-trustee-azure/milan_snp_report_from_hcl-report_vcek.pem",
            "2026-01-01T00:00:00Z",
            "vcek",
        ),
    ],
)
def test_verifies(report: str, vcek: str, at: str, signing_key: str) -> None:
    code, out = run(ASSETS / report, "--vcek", ASSETS / vcek, "--at", at)
    assert code == 0, out
    assert out["verified"] is True
    assert out["error"] is None
    assert out["platform"] == "sev-snp"
    assert out["tcb_status"] is None
    claims = out["claims"]
    assert claims["product"] == "Milan"
    assert claims["signing_key"] == signing_key
    raw = (ASSETS / report).read_bytes()
    assert claims["measurement"] == raw[0x90:0xC0].hex()
    assert claims["report_data"] == raw[0x50:0x90].hex()
    assert isinstance(claims["reported_tcb"], dict)
    assert out["verified_at"] == at


def test_go_sev_guest_claims() -> None:
    code, out = run(
        ASSETS / "google-go-sev-guest/attestation.bin",
        "--vcek",
        ASSETS / "google-go-sev-guest/vcek.testcer",
        "--at",
        "2023-01-01T00:00:00Z",
    )
    assert code == 0
    c = out["claims"]
    assert (c["policy"], c["debug"], c["vmpl"]) == (0xB0000, True, 0)
    assert c["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert c["chip_id"].startswith("3ac3fe21")


def test_hex_text_evidence(tmp_path: Path) -> None:
    hex_file = tmp_path / "report.hex"
    hex_file.write_text("0x" + (ASSETS / "google-go-sev-guest/attestation.bin").read_bytes().hex() + "\n")
    code, out = run(
        hex_file, "--vcek", ASSETS / "google-go-sev-guest/vcek.testcer", "--at", "2023-01-01T00:00:00Z"
    )
    assert code == 0 and out["verified"] is True


def test_tampered_report_exits_21(tmp_path: Path) -> None:
    raw = bytearray((ASSETS / "google-go-sev-guest/attestation.bin").read_bytes())
    raw[0x90] ^= 1  # MEASUREMENT
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(raw))
    code, out = run(
        bad, "--vcek", ASSETS / "google-go-sev-guest/vcek.testcer", "--at", "2023-01-01T00:00:00Z"
    )
    assert code == 21
    assert out["verified"] is False
    assert out["error"]["class"] == "SignatureError"
    assert out["error"]["exit_code"] == 21
    assert out["claims"] == {}


def test_expired_vlek_exits_22() -> None:
    code, out = run(
        ASSETS / "trustee/test-vlek-report.bin",
        "--vcek",
        ASSETS / "trustee/test-vlek.der",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    assert code == 22
    assert out["error"]["class"] == "CertificateChainError"
    assert "expired" in out["error"]["message"]


def test_wrong_chain_exits_22() -> None:
    code, out = run(
        ASSETS / "google-go-sev-guest/attestation.bin",
        "--vcek",
        ASSETS / "google-go-sev-guest/vcek.testcer",
        "--chain",
        ASSETS / "amd-roots/ask_ark_genoa.pem",
        "--at",
        "2023-01-01T00:00:00Z",
    )
    assert code == 22
    assert out["error"]["class"] == "CertificateChainError"


def test_truncated_report_exits_10(tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes((ASSETS / "google-go-sev-guest/attestation.bin").read_bytes()[:100])
    code, out = run(short, "--vcek", ASSETS / "google-go-sev-guest/vcek.testcer")
    assert code == 10
    assert out["error"]["class"] == "ParseError"
    assert "got 100 bytes" in out["error"]["message"]


def test_missing_vcek_exits_25() -> None:
    code, out = run(ASSETS / "google-go-sev-guest/attestation.bin")
    assert code == 25
    assert out["error"]["class"] == "CollateralMissingError"


def test_an_expired_vlek_without_at_says_how_to_verify_at_its_time() -> None:
    """trustee's VLEK expired on 2025-12-10: verified now (no --at), the refusal's line names
    --at as an expired collateral's does (text mode only); with --at, no such hint."""
    from confide.cli import CERTIFICATE_NOW_HINT
    from confide.errors import CertificateChainError

    report, vlek = ASSETS / "trustee" / "test-vlek-report.bin", ASSETS / "trustee" / "test-vlek.der"
    now = run_confide("evidence", "verify", report, "--platform", "sev-snp", "--vcek", vlek)
    assert now.returncode == CertificateChainError.exit_code, now.stderr
    assert now.stderr.startswith("error: CertificateChainError: VLEK") and now.stderr.count("\n") == 1
    assert now.stderr.endswith(f"{CERTIFICATE_NOW_HINT}\n") and "--at" in CERTIFICATE_NOW_HINT
    later = run_confide(
        "evidence", "verify", report, "--platform", "sev-snp", "--vcek", vlek, "--at", "2026-01-01T00:00:00Z"
    )
    assert later.returncode == CertificateChainError.exit_code and "expired" in later.stderr
    assert CERTIFICATE_NOW_HINT not in later.stderr
    code, out = run(report, "--vcek", vlek)
    assert code == CertificateChainError.exit_code
    assert CERTIFICATE_NOW_HINT not in out["error"]["message"]
