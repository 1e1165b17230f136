"""``confide evidence verify --platform az-snp-vtpm | az-tdx-vtpm``, run as a real subprocess
(the vectors: tests/assets/tpm/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli import run_confide

ASSETS = Path(__file__).parent.parent / "assets"
SNP = ASSETS / "tpm" / "trustee-az-snp-vtpm"
TDX = ASSETS / "tpm" / "trustee-az-tdx-vtpm"
COLLATERAL = ASSETS / "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json"
CHALLENGE = b"challenge"
V2_NONCE = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
SNP_V2_PCR0 = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
TDX_PCR0 = "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"


def test_cli_snp_json() -> None:
    proc = run_confide(
        "evidence", "verify", SNP / "evidence-v2.json", "--platform", "az-snp-vtpm",
        "--nonce", V2_NONCE, "--at", "2026-01-01T00:00:00Z", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["platform"] == "az-snp-vtpm" and out["claims"]["pcrs"]["0"] == SNP_V2_PCR0


def test_cli_tdx_text() -> None:
    proc = run_confide(
        "evidence", "verify", TDX / "evidence-v1.json", "--platform", "az-tdx-vtpm", "--nonce", CHALLENGE.hex(),
        "--collateral", COLLATERAL, "--at", "2025-06-04T09:52:38Z",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "verified: az-tdx-vtpm" in proc.stdout and "tcb_status: OutOfDate" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((SNP / "evidence-v2.json", "--nonce", "123abc"), 28),
        ((SNP / "evidence-v1.json", "--nonce", CHALLENGE[::-1].hex()), 28),
        ((SNP / "hcl-report.bin",), 10),
        ((SNP / "evidence-v1.json", "--vcek", SNP / "vcek.pem"), 2),
        ((TDX / "evidence-v1.json",), 10),
    ],
)
def test_cli_exit_codes(args: tuple[Any, ...], code: int) -> None:
    proc = run_confide(
        "evidence", "verify", *args, "--platform", "az-snp-vtpm", "--at", "2026-01-01T00:00:00Z", "--json"
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["verified"] is False


def test_cli_tdx_json_claims() -> None:
    proc = run_confide(
        "evidence", "verify", TDX / "evidence-v0.json", "--platform", "az-tdx-vtpm", "--nonce", CHALLENGE.hex(),
        "--collateral", COLLATERAL, "--at", "2025-06-04T09:52:38Z", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["claims"]["pcrs"]["0"] == TDX_PCR0 and out["tcb_status"] == "OutOfDate"


def test_cli_tdx_reversed_nonce_and_missing_collateral() -> None:
    base = (
        "evidence",
        "verify",
        TDX / "evidence-v1.json",
        "--platform",
        "az-tdx-vtpm",
        "--at",
        "2025-06-04T09:52:38Z",
    )
    proc = run_confide(
        *base, "--nonce", CHALLENGE[::-1].hex(), "--collateral", COLLATERAL, drop=("CONFIDE_DCAP_COLLATERAL",)
    )
    assert proc.returncode == 28, proc.stdout + proc.stderr
    proc = run_confide(*base, "--nonce", CHALLENGE.hex(), drop=("CONFIDE_DCAP_COLLATERAL",))
    assert proc.returncode == 25, proc.stdout + proc.stderr
