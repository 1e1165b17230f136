"""The files that travel with evidence (``--vcek``, ``--chain``, ``--cert-chain``, NVIDIA RIMs)
are read to a limit, as EVIDENCE is: they were read whole (``path.read_bytes()``), so a huge
file, or ``/dev/zero``, took memory without bound before any parser looked at it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide import errors
from confide.evidence.nvidia_rim import MAX_RIM_SIZE
from confide.platforms import MAX_CERTIFICATE_FILE, VerifyRequest, read_input_file, verify_request
from confide.verify.result import Platform

ASSETS = Path(__file__).parents[1] / "assets"
SNP = ASSETS / "sev-snp" / "google-go-sev-guest"
NV = ASSETS / "nvidia"
AT = datetime(2023, 1, 1, tzinfo=UTC)
ZERO = Path("/dev/zero")


def snp(**files: Path) -> VerifyRequest:
    return VerifyRequest(
        evidence=(SNP / "attestation.bin").read_bytes(), platform=Platform.SEV_SNP, at=AT, **files
    )


def nvidia(**files: Path) -> VerifyRequest:
    report = bytes.fromhex((NV / "hopperAttestationReport.txt").read_text())
    return VerifyRequest(
        evidence=report, platform=Platform.NVIDIA_GPU, at=datetime(2025, 6, 1, tzinfo=UTC), **files
    )


def test_read_input_file_reads_to_the_limit_and_no_further(tmp_path: Path) -> None:
    exact = tmp_path / "exact"
    exact.write_bytes(b"a" * 100)
    assert read_input_file(exact, "X", 100, "a") == b"a" * 100
    with pytest.raises(errors.ParseError, match=r"^X: got more than 99 bytes, expected a$"):
        read_input_file(exact, "X", 99, "a")
    with pytest.raises(errors.ParseError, match="got more than 4096 bytes"):
        read_input_file(ZERO, "X", 4096, "a")
    with pytest.raises(errors.UsageError, match=r"^cannot read X '.*missing': No such file"):
        read_input_file(tmp_path / "missing", "X", 100, "a")


@pytest.mark.parametrize(
    ("request_", "what"),
    [
        (snp(vcek=ZERO), "--vcek"),
        (snp(vcek=SNP / "vcek.testcer", chain=ZERO), "--chain"),
        (nvidia(cert_chain=ZERO), "--cert-chain"),
    ],
    ids=["vcek", "chain", "cert-chain"],
)
def test_certificate_files_past_the_limit_are_a_parse_error(request_: VerifyRequest, what: str) -> None:
    with pytest.raises(errors.ParseError, match=f"^{what}: got more than {MAX_CERTIFICATE_FILE} bytes"):
        verify_request(request_)


def test_a_rim_past_its_size_limit_is_not_read_whole(tmp_path: Path) -> None:
    rim = tmp_path / "big.swidtag"
    with rim.open("wb") as f:
        f.truncate(MAX_RIM_SIZE + 1)  # sparse: costs no disk
    request = nvidia(cert_chain=NV / "hopperCertChain.txt", collateral=rim)
    with pytest.raises(
        errors.ParseError, match=f"^--collateral: got more than {MAX_RIM_SIZE} bytes, expected an NVIDIA RIM"
    ):
        verify_request(request)


def test_files_within_the_limits_still_verify() -> None:
    assert verify_request(snp(vcek=SNP / "vcek.testcer")).platform is Platform.SEV_SNP
    assert verify_request(nvidia(cert_chain=NV / "hopperCertChain.txt")).platform is Platform.NVIDIA_GPU
