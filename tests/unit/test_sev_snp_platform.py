"""``confide.platforms.sev_snp``: the file-reading front end of the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from snp_fakes import AT, make_fake_amd

from confide.errors import CertificateChainError, ParseError, RevocationError, UsageError
from confide.evidence.sev_snp import Product
from confide.platforms import VerifyRequest, detect_platform
from confide.platforms import verify_request as dispatch
from confide.platforms.sev_snp import verify_request
from confide.verify.result import Platform
from confide.verify.sev_snp import load_certificates

ASSETS = Path(__file__).parent.parent / "assets" / "sev-snp"
GO_REPORT = (ASSETS / "google-go-sev-guest/attestation.bin").read_bytes()
GO_AT = datetime(2023, 1, 1, tzinfo=UTC)
ASK_PEM = (ASSETS / "amd-roots/ask_ark_milan.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0] + (
    b"-----END CERTIFICATE-----\n"
)


def req(evidence: bytes, at: datetime = GO_AT, **files: Path) -> VerifyRequest:
    return VerifyRequest(evidence=evidence, platform=Platform.SEV_SNP, at=at, **files)  # type: ignore[arg-type]


def test_dispatch_through_platform_modules() -> None:
    result = dispatch(req(GO_REPORT, vcek=ASSETS / "google-go-sev-guest/vcek.testcer"))
    assert result.claims["product"] == "Milan"


def test_vcek_pem_with_ask_and_ark() -> None:
    r = (ASSETS / "derived-from-trustee-azure/milan_snp_report_from_hcl-report.bin").read_bytes()
    pem = ASSETS / "derived-from-trustee-azure/milan_snp_report_from_hcl-report_vcek.pem"
    result = verify_request(req(r, at=datetime(2026, 1, 1, tzinfo=UTC), vcek=pem))
    assert result.claims["signing_key"] == "vcek"


def test_vcek_pem_with_a_foreign_ark_is_rejected(tmp_path: Path) -> None:
    fake = make_fake_amd(Product.MILAN)
    vcek = load_certificates((ASSETS / "google-go-sev-guest/vcek.testcer").read_bytes(), "vcek")[0]
    vcek_pem = vcek.public_bytes(serialization.Encoding.PEM)
    ask_pem = ASK_PEM
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(vcek_pem + ask_pem + fake.ark.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateChainError, match="not a pinned AMD root"):
        verify_request(req(GO_REPORT, vcek=bundle))


def test_vcek_bundle_and_chain_together_is_a_usage_error() -> None:
    pem = ASSETS / "derived-from-trustee-azure/milan_snp_report_from_hcl-report_vcek.pem"
    with pytest.raises(UsageError, match="drop --chain"):
        verify_request(req(GO_REPORT, vcek=pem, chain=ASSETS / "amd-roots/ask_ark_milan.pem"))


def test_two_certificates_in_vcek_file_is_rejected(tmp_path: Path) -> None:
    two = tmp_path / "two.pem"
    two.write_bytes((ASSETS / "amd-roots/ask_ark_milan.pem").read_bytes())
    with pytest.raises(CertificateChainError, match="got 2 certificates"):
        verify_request(req(GO_REPORT, vcek=two))


def test_chain_option_and_wrong_chain() -> None:
    vcek = ASSETS / "google-go-sev-guest/vcek.testcer"
    ok = verify_request(req(GO_REPORT, vcek=vcek, chain=ASSETS / "amd-roots/ask_ark_milan.pem"))
    assert ok.claims["product"] == "Milan"
    with pytest.raises(CertificateChainError):
        verify_request(req(GO_REPORT, vcek=vcek, chain=ASSETS / "amd-roots/ask_ark_turin_vcek.pem"))


def test_unreadable_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        verify_request(req(GO_REPORT, vcek=tmp_path / "missing.der"))
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"\x30\x03junk")
    with pytest.raises(ParseError):
        verify_request(req(GO_REPORT, vcek=junk))


def test_root_override_with_private_pki_and_crl_in_chain_file(tmp_path: Path) -> None:
    fake = make_fake_amd(Product.TURIN)
    (tmp_path / "report.bin").write_bytes(fake.sign(fake.report()))
    (tmp_path / "vcek.pem").write_bytes(fake.vek_pem())
    (tmp_path / "ark.pem").write_bytes(fake.ark.public_bytes(serialization.Encoding.PEM))
    crl_pem = fake.crl().public_bytes(serialization.Encoding.PEM)
    (tmp_path / "chain.pem").write_bytes(fake.chain_pem() + crl_pem)
    raw = (tmp_path / "report.bin").read_bytes()
    files = {"vcek": tmp_path / "vcek.pem", "chain": tmp_path / "chain.pem", "root": tmp_path / "ark.pem"}
    result = verify_request(req(raw, at=AT, **files))
    assert result.claims["product"] == "Turin"
    assert result.details["crl_checked"] is True
    # Without --root the private ARK is not trusted.
    with pytest.raises(CertificateChainError, match="not a pinned AMD root"):
        verify_request(req(raw, at=AT, vcek=tmp_path / "vcek.pem", chain=tmp_path / "chain.pem"))
    # A revoking CRL in the chain file.
    revoking = fake.crl(revoked_serials=(fake.ask.serial_number,)).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "chain.pem").write_bytes(fake.chain_pem() + revoking)
    with pytest.raises(RevocationError):
        verify_request(req(raw, at=AT, **files))


def test_root_override_must_be_an_ark(tmp_path: Path) -> None:
    (tmp_path / "ask.pem").write_bytes(ASK_PEM)
    with pytest.raises(UsageError, match="expected an ARK"):
        verify_request(
            req(GO_REPORT, vcek=ASSETS / "google-go-sev-guest/vcek.testcer", root=tmp_path / "ask.pem")
        )


@pytest.mark.parametrize("path", sorted(ASSETS.rglob("*.bin")), ids=lambda p: p.name)
def test_reports_are_detected_as_sev_snp(path: Path) -> None:
    assert detect_platform(path.read_bytes()) is Platform.SEV_SNP
