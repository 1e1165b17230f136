"""``confide evidence verify`` for NVIDIA and Nitro evidence, run as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cli import run_confide
from confide.evidence.nvidia import NvidiaAttestationReport
from confide.evidence.nvidia_rim import SHA384_NS, SWID_NS
from rim_pki import make_pki, sign_rim, strip_signature

ROOT = Path(__file__).parent.parent.parent
NV = ROOT / "tests" / "assets" / "nvidia"
NITRO = ROOT / "tests" / "assets" / "nitro"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


def run(*args: str | Path) -> tuple[int, dict[str, Any]]:
    proc = run_confide("evidence", "verify", *args, "--json")
    return proc.returncode, json.loads(proc.stdout)


def test_nvidia_report_verifies() -> None:
    code, out = run(
        NV / "hopperAttestationReport.txt", "--platform", "nvidia-gpu",
        "--cert-chain", NV / "hopperCertChain.txt", "--nonce", NONCE, "--at", "2025-06-01T00:00:00Z",
    )  # fmt: skip
    assert code == 0, out
    assert out["verified"] is True
    assert out["platform"] == "nvidia-gpu"
    assert out["claims"]["driver_version"] == "550.90.07"
    assert out["claims"]["vbios_version"] == "96.00.9f.00.01"
    assert out["claims"]["nonce"] == NONCE
    assert out["verified_at"] == "2025-06-01T00:00:00Z"
    assert out["error"] is None


@pytest.mark.parametrize(
    ("extra", "code", "kind"),
    [
        (["--cert-chain", NV / "hopperCertChain.txt", "--nonce", "00" * 32], 28, "BindingError"),
        (["--cert-chain", NV / "hopper_cert_chain_case2.txt"], 22, "CertificateChainError"),
        (["--cert-chain", NV / "hopper_cert_chain_case3.txt"], 22, "CertificateChainError"),
        (["--cert-chain", NV / "hopper_cert_chain_case4.txt"], 22, "CertificateChainError"),
        (
            ["--cert-chain", NV / "hopperCertChain.txt", "--collateral", NV, "--at", "2025-06-01T00:00:00Z"],
            29,
            "RimMismatchError",
        ),
        # Now (after 2025-06-26) NVIDIA's sample RIM signers have expired: refused, not compared.
        (["--cert-chain", NV / "hopperCertChain.txt", "--collateral", NV], 22, "CertificateChainError"),
        ([], 2, "UsageError"),
    ],
)
def test_nvidia_failures_have_their_exit_codes(extra: list[str | Path], code: int, kind: str) -> None:
    got, out = run(NV / "hopperAttestationReport.txt", "--platform", "nvidia-gpu", *extra)
    assert got == code, out
    assert out["verified"] is False
    assert out["error"]["class"] == kind
    assert out["error"]["exit_code"] == code


def _matching_rims(tmp_path: Path) -> tuple[Path, Path]:
    """Driver and VBIOS RIMs rewritten to the sample report's values, signed by a test PKI."""
    report = NvidiaAttestationReport.from_bytes(
        bytes.fromhex((NV / "hopperAttestationReport.txt").read_text())
    )
    pki = make_pki()
    rims = tmp_path / "rims"
    rims.mkdir()
    for name, version in (
        ("Driver_RIM_test_no_gpu.swidtag", "550.90.07"),
        ("1010_0200_882_96005E0001_test_no_gpu.swidtag", "96.00.9F.00.01"),
    ):
        doc = strip_signature((NV / name).read_bytes())
        doc.find(f"{{{SWID_NS}}}Meta").set("colloquialVersion", version)
        for res in doc.iter(f"{{{SWID_NS}}}Resource"):
            if res.get("active") == "True":
                value = report.measurements[int(res.get("index", "0")) + 1]
                res.set(f"{{{SHA384_NS}}}Hash0", value.hex())
        (rims / name).write_bytes(sign_rim(doc, pki))
    root = tmp_path / "rim_root.pem"
    root.write_bytes(pki.root.public_bytes(Encoding.PEM))
    return rims, root


def test_nvidia_report_with_signed_matching_rims(tmp_path: Path) -> None:
    rims, rim_root = _matching_rims(tmp_path)
    args = [
        NV / "hopperAttestationReport.txt", "--platform", "nvidia-gpu", "--cert-chain", NV / "hopperCertChain.txt",
        "--collateral", rims, "--at", "2025-06-01T00:00:00Z",
    ]  # fmt: skip
    code, out = run(*args, "--rim-root", rim_root)
    assert code == 0, out
    assert out["claims"]["rims_compared"] is True
    assert out["details"]["rim_signatures_verified"] is True
    # Twin: the same RIMs under the pinned NVIDIA RIM root.
    code, out = run(*args)
    assert code == 22, out
    assert out["error"]["class"] == "CertificateChainError"
    # Twin: one golden value edited after signing.
    driver = rims / "Driver_RIM_test_no_gpu.swidtag"
    driver.write_bytes(driver.read_bytes().replace(b'active="True"', b'active="False"', 1))
    code, out = run(*args, "--rim-root", rim_root)
    assert code == 21, out
    assert out["error"]["class"] == "SignatureError"


def test_nitro_document_verifies_at_its_timestamp() -> None:
    code, out = run(
        NITRO / "example_attestation.b64", "--platform", "aws-nitro",
        "--at", "2024-09-09T19:49:12.400Z", "--nonce", "00" * 19 + "01",
    )  # fmt: skip
    assert code == 0, out
    assert out["claims"]["module_id"] == "i-0bbf1bfe232b8c2ce-enc0191ba35c9d1b77a"
    assert out["claims"]["debug"] is True
    assert out["claims"]["pcr0"] == "00" * 48


def test_binary_nitro_document_verifies() -> None:
    code, out = run(
        NITRO / "realAttestation_repaired.cose", "--platform", "aws-nitro", "--at", "2026-01-03T20:41:07.402Z"
    )
    assert code == 0, out
    assert out["claims"]["debug"] is False


@pytest.mark.parametrize(
    ("args", "code", "kind"),
    [
        ([NITRO / "invalid_attestation.b64", "--at", "2024-07-23T21:29:40.771Z"], 21, "SignatureError"),
        ([NITRO / "realAttestation_as_committed_truncated.b64"], 10, "ParseError"),
        ([NITRO / "example_attestation.b64"], 22, "CertificateChainError"),  # now: leaf long expired
        (
            [NITRO / "example_attestation.b64", "--at", "2024-09-09T19:49:12.400Z", "--nonce", "02"],
            28,
            "BindingError",
        ),
        (
            [
                NITRO / "example_attestation.b64",
                "--at",
                "2024-09-09T19:49:12.400Z",
                "--root",
                NV / "verifier_device_root.pem",
            ],
            22,
            "CertificateChainError",
        ),
    ],
)
def test_nitro_failures_have_their_exit_codes(args: list[str | Path], code: int, kind: str) -> None:
    got, out = run(args[0], "--platform", "aws-nitro", *args[1:])
    assert got == code, out
    assert out["error"]["class"] == kind
