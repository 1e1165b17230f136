"""AMD KDS collateral: a local-files source and the HTTP source against a fake KDS on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from snp_fakes import AT, NOT_BEFORE, FakeAmd, make_fake_amd

from cli import run_confide
from confide.collateral.amd_kds import (
    MAX_RESPONSE_SIZE,
    AmdCollateralRequest,
    KdsHttpCollateral,
    LocalKdsCollateral,
)
from confide.errors import CollateralMissingError, NetworkError, ParseError, UsageError
from confide.evidence.sev_snp import AttestationReport, Product
from confide.platforms import VerifyRequest
from confide.platforms.sev_snp import embedded_roots, load_crl, verify_request
from confide.verify.result import Platform
from confide.verify.sev_snp import AmdChain, SnpVerifier, VekKind, load_certificates
from kds_fake import FakeKds, fake_kds

ASSETS = Path(__file__).parent.parent / "assets" / "sev-snp"
GO_REPORT = (ASSETS / "google-go-sev-guest/attestation.bin").read_bytes()
GO_VCEK = (ASSETS / "google-go-sev-guest/vcek.testcer").read_bytes()
MILAN_CHAIN = (ASSETS / "amd-roots/ask_ark_milan.pem").read_bytes()
MILAN_VLEK_CHAIN = (ASSETS / "amd-roots/ask_ark_milan_vlek.pem").read_bytes()
GO_AT = datetime(2023, 1, 1, tzinfo=UTC)  # inside the go-sev-guest VCEK's validity


@pytest.fixture
def kds() -> Iterator[FakeKds]:
    with fake_kds() as server:
        yield server


def go_request() -> AmdCollateralRequest:
    return AmdCollateralRequest.for_report(AttestationReport.from_bytes(GO_REPORT), Product.MILAN)


def go_vcek_path() -> str:
    chip = AttestationReport.from_bytes(GO_REPORT).chip_id.hex()
    return f"/vcek/v1/Milan/{chip}?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=68"


def test_request_names_the_kds_resources() -> None:
    req = go_request()
    assert req.kind is VekKind.VCEK
    assert req.query == {"blSPL": "02", "teeSPL": "00", "snpSPL": "05", "ucodeSPL": "68"}
    assert req.vek_relpath() == f"vcek/v1/Milan/{req.chip_id.hex()}/bl02-tee00-snp05-ucode68.der"
    turin = make_fake_amd(Product.TURIN)
    treq = AmdCollateralRequest.for_report(
        AttestationReport.from_bytes(turin.sign(turin.report())), Product.TURIN
    )
    assert treq.hwid == turin.chip_id[:8].hex()
    assert list(treq.query) == ["fmcSPL", "blSPL", "teeSPL", "snpSPL", "ucodeSPL"]


def test_http_fetches_once_then_serves_from_disk(kds: FakeKds, tmp_path: Path) -> None:
    kds.route(go_vcek_path(), GO_VCEK)
    kds.route("/vcek/v1/Milan/cert_chain", MILAN_CHAIN)
    with KdsHttpCollateral(
        tmp_path, roots=embedded_roots(), base_url=kds.url, with_crl=False, clock=lambda: GO_AT
    ) as source:
        got = source.fetch(go_request())
        assert got.vek_der == GO_VCEK and got.chain_pem == MILAN_CHAIN and got.crl_der is None
        assert kds.requests == [go_vcek_path(), "/vcek/v1/Milan/cert_chain"]
        source.fetch(go_request())
        assert len(kds.requests) == 2
    # A new source over the same cache directory asks nothing either.
    with KdsHttpCollateral(
        tmp_path, roots=embedded_roots(), base_url=kds.url, with_crl=False, clock=lambda: GO_AT
    ) as again:
        again.fetch(go_request())
    assert len(kds.requests) == 2
    # What was fetched verifies the report.
    vek = load_certificates(got.vek_der, "vcek")[0]
    chain = AmdChain.from_certificates(load_certificates(got.chain_pem, "chain"))
    result = SnpVerifier(embedded_roots()).verify(GO_REPORT, vek, at=GO_AT, chain=chain)
    assert result.claims["chip_id"] == AttestationReport.from_bytes(GO_REPORT).chip_id.hex()


def test_http_turin_with_crl_and_refresh(kds: FakeKds, tmp_path: Path) -> None:
    turin: FakeAmd = make_fake_amd(Product.TURIN)
    raw = turin.sign(turin.report())
    req = AmdCollateralRequest.for_report(AttestationReport.from_bytes(raw), Product.TURIN)
    vcek_path = f"/vcek/v1/Turin/{turin.chip_id[:8].hex()}?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
    kds.route(vcek_path, turin.vek.public_bytes(serialization.Encoding.DER))
    kds.route("/vcek/v1/Turin/cert_chain", turin.chain_pem())
    crl = turin.crl(next_update=AT + timedelta(days=10))
    kds.route("/vcek/v1/Turin/crl", crl.public_bytes(serialization.Encoding.DER))
    now = [AT]
    source = KdsHttpCollateral(tmp_path, roots=turin.roots(), base_url=kds.url, clock=lambda: now[0])
    got = source.fetch(req)
    assert got.crl_der is not None
    result = SnpVerifier(turin.roots()).verify(
        raw, turin.vek, at=AT, chain=AmdChain(turin.ask, turin.ark), crl=load_crl(got.crl_der)
    )
    assert result.details["crl_checked"] is True
    assert len(kds.requests) == 3
    source.fetch(req)
    assert len(kds.requests) == 3  # CRL still fresh
    now[0] = AT + timedelta(days=11)
    source.fetch(req)
    assert kds.requests[-1] == "/vcek/v1/Turin/crl" and len(kds.requests) == 4
    source.close()


def test_http_404_is_collateral_missing(kds: FakeKds, tmp_path: Path) -> None:
    with (
        KdsHttpCollateral(tmp_path, roots=embedded_roots(), base_url=kds.url) as source,
        pytest.raises(CollateralMissingError, match="HTTP 404"),
    ):
        source.fetch(go_request())
    assert not any(tmp_path.rglob("*.der"))


@pytest.mark.parametrize(
    ("status", "headers", "message"),
    [(500, {}, "got HTTP 500"), (429, {"Retry-After": "30"}, "retry after 30 s"), (503, {}, "HTTP 503")],
)
def test_http_errors_are_network_errors(
    status: int, headers: dict[str, str], message: str, kds: FakeKds, tmp_path: Path
) -> None:
    kds.route(go_vcek_path(), b"busy", status, headers)
    with (
        KdsHttpCollateral(tmp_path, roots=embedded_roots(), base_url=kds.url) as source,
        pytest.raises(NetworkError, match=message),
    ):
        source.fetch(go_request())


def test_unreachable_kds_is_a_network_error(tmp_path: Path, refused_port: int) -> None:
    with (
        KdsHttpCollateral(
            tmp_path, roots=embedded_roots(), base_url=f"http://127.0.0.1:{refused_port}", timeout=2
        ) as source,
        pytest.raises(NetworkError, match="ConnectError"),
    ):
        source.fetch(go_request())


def test_garbage_from_kds_is_not_cached(kds: FakeKds, tmp_path: Path) -> None:
    kds.route(go_vcek_path(), b"<html>maintenance</html>")
    with (
        KdsHttpCollateral(tmp_path, roots=embedded_roots(), base_url=kds.url) as source,
        pytest.raises(ParseError),
    ):
        source.fetch(go_request())
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_vlek_must_be_provided_locally(kds: FakeKds, tmp_path: Path) -> None:
    report = AttestationReport.from_bytes((ASSETS / "trustee/test-vlek-report.bin").read_bytes())
    req = AmdCollateralRequest.for_report(report, Product.MILAN)
    assert req.kind is VekKind.VLEK
    kds.route("/vlek/v1/Milan/cert_chain", MILAN_VLEK_CHAIN)
    vlek_at = datetime(2025, 6, 1, tzinfo=UTC)  # the VLEK is valid 2024-12-10..2025-12-10
    with KdsHttpCollateral(
        tmp_path, roots=embedded_roots(), base_url=kds.url, with_crl=False, clock=lambda: vlek_at
    ) as source:
        with pytest.raises(CollateralMissingError, match="does not serve VLEKs"):
            source.fetch(req)
        assert kds.requests == []
        LocalKdsCollateral(tmp_path).store(req.vek_relpath(), (ASSETS / "trustee/test-vlek.der").read_bytes())
        got = source.fetch(req)
    assert got.chain_pem == MILAN_VLEK_CHAIN
    assert kds.requests == ["/vlek/v1/Milan/cert_chain"]


def test_local_source(tmp_path: Path) -> None:
    local = LocalKdsCollateral(tmp_path)
    req = go_request()
    with pytest.raises(CollateralMissingError, match="no VCEK for Milan"):
        local.fetch(req)
    local.store(req.vek_relpath(), GO_VCEK)
    with pytest.raises(CollateralMissingError, match="no cert_chain"):
        local.fetch(req)
    local.store("vcek/v1/Milan/cert_chain.pem", MILAN_CHAIN)
    got = local.fetch(req)
    assert (got.vek_der, got.chain_pem, got.crl_der) == (GO_VCEK, MILAN_CHAIN, None)


def _azure_request(tmp_path: Path, report_bytes: bytes) -> VerifyRequest:
    return VerifyRequest(
        evidence=report_bytes,
        platform=Platform.SEV_SNP,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        collateral=tmp_path,
    )


def test_platform_uses_a_local_kds_mirror(tmp_path: Path) -> None:
    raw = (ASSETS / "derived-from-trustee-azure/milan_snp_report_from_evidence-v0.bin").read_bytes()
    vcek_pem = (ASSETS / "derived-from-trustee-azure/milan_snp_report_from_evidence-v0_vcek.pem").read_bytes()
    req = AmdCollateralRequest.for_report(AttestationReport.from_bytes(raw), Product.MILAN)
    local = LocalKdsCollateral(tmp_path)
    with pytest.raises(CollateralMissingError):
        verify_request(_azure_request(tmp_path, raw))
    local.store(
        req.vek_relpath(), load_certificates(vcek_pem, "v")[0].public_bytes(serialization.Encoding.DER)
    )
    local.store("vcek/v1/Milan/cert_chain.pem", MILAN_CHAIN)
    result = verify_request(_azure_request(tmp_path, raw))
    assert result.claims["product"] == "Milan"
    assert result.details["crl_checked"] is False


def test_platform_needs_a_product_for_v2_reports(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="v2 report"):
        verify_request(_azure_request(tmp_path, GO_REPORT))


def test_platform_without_any_vcek_source() -> None:
    req = VerifyRequest(evidence=GO_REPORT, platform=Platform.SEV_SNP, at=NOT_BEFORE)
    with pytest.raises(CollateralMissingError, match="--vcek"):
        verify_request(req)


def test_cli_collateral_url_fetches_from_kds(kds: FakeKds, tmp_path: Path) -> None:
    """``evidence verify --platform sev-snp --collateral URL``: VCEK, chain and CRL come from
    the KDS (here a fake one on loopback, with a private AMD-shaped PKI) and are cached."""
    turin: FakeAmd = make_fake_amd(Product.TURIN)
    raw = turin.sign(turin.report())
    vcek_path = f"/vcek/v1/Turin/{turin.chip_id[:8].hex()}?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
    kds.route(vcek_path, turin.vek.public_bytes(serialization.Encoding.DER))
    kds.route("/vcek/v1/Turin/cert_chain", turin.chain_pem())
    kds.route(
        "/vcek/v1/Turin/crl",
        turin.crl(next_update=AT + timedelta(days=10)).public_bytes(serialization.Encoding.DER),
    )
    report, root = tmp_path / "report.bin", tmp_path / "ark.pem"
    report.write_bytes(raw)
    root.write_bytes(turin.ark.public_bytes(serialization.Encoding.PEM))
    args = ("evidence", "verify", report, "--platform", "sev-snp", "--collateral", kds.url,
            "--root", root, "--at", AT.isoformat(), "--json")  # fmt: skip
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = run_confide(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert '"crl_checked": true' in r.stdout
    assert len(kds.requests) == 3
    assert run_confide(*args, env=env).returncode == 0
    assert len(kds.requests) == 3  # served from $XDG_CACHE_HOME/confide/kds
    assert any((tmp_path / "cache" / "confide" / "kds").rglob("*.der"))


def test_cli_collateral_url_is_refused_where_nothing_is_fetched(tmp_path: Path) -> None:
    report = tmp_path / "r.bin"
    report.write_bytes(GO_REPORT)
    r = run_confide(
        "evidence", "verify", report, "--platform", "aws-nitro", "--collateral", "https://example.invalid"
    )
    assert r.returncode == UsageError.exit_code and "needs no collateral" in r.stderr


def test_http_without_a_cache_asks_every_time_and_writes_nothing(kds: FakeKds, tmp_path: Path) -> None:
    """``cache_dir=None`` (the CAS's source: it keeps a verified cache of its own)."""
    kds.route(go_vcek_path(), GO_VCEK)
    kds.route("/vcek/v1/Milan/cert_chain", MILAN_CHAIN)
    with KdsHttpCollateral(None, base_url=kds.url, crl_required=False) as source:
        got = source.fetch(go_request())
        assert (got.vek_der, got.chain_pem, got.crl_der) == (GO_VCEK, MILAN_CHAIN, None)
        source.fetch(go_request())
    assert kds.requests == [go_vcek_path(), "/vcek/v1/Milan/cert_chain", "/vcek/v1/Milan/crl"] * 2
    assert source.cache is None


def test_http_crl_404_is_an_error_unless_not_required(kds: FakeKds, tmp_path: Path) -> None:
    kds.route(go_vcek_path(), GO_VCEK)
    kds.route("/vcek/v1/Milan/cert_chain", MILAN_CHAIN)
    with (
        KdsHttpCollateral(None, base_url=kds.url) as source,
        pytest.raises(CollateralMissingError, match="crl \\(HTTP 404\\)"),
    ):
        source.fetch(go_request())
    kds.route("/vcek/v1/Milan/crl", b"garbage")
    with KdsHttpCollateral(None, base_url=kds.url, crl_required=False) as source, pytest.raises(ParseError):
        source.fetch(go_request())  # a CRL that is served must parse


def test_http_response_size_is_bounded(kds: FakeKds, tmp_path: Path) -> None:
    kds.route(go_vcek_path(), b"\x30" * (MAX_RESPONSE_SIZE + 1))
    with KdsHttpCollateral(None, base_url=kds.url) as source, pytest.raises(ParseError, match="more than"):
        source.fetch(go_request())
