"""Fetching the PCK certificate of a quote of certification data type 1-4: Intel PCS ("Get PCK
Certificate V4", by encrypted PPID, with the subscription key) and a PCCS (by QE ID) through the
fake PCS on 127.0.0.1 (``tests/pcs_fake.py``), its disk cache, a collateral directory, and
``evidence verify`` with ``--collateral``."""

from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide import errors
from confide.collateral.dcap import PCS_API_KEY_ENV, PcsDirectorySource, PcsHttpSource, source_for
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.pem import pem_chain
from confide.platforms import VerifyRequest
from confide.platforms.dcap import fetch_collateral, verify_request
from confide.verify.dcap import DcapVerifier, verify_quote
from confide.verify.result import Platform
from dcap_cases import ASSETS, CASES
from dcap_ppid import original_pck, to_leaf_quote, to_ppid_quote
from pcs_fake import FakePcs, fake_pcs

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")
TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")
KEY = "0123456789abcdef0123456789abcdef"  # a made-up subscription key


@pytest.fixture
def pcs() -> Iterator[FakePcs]:
    with fake_pcs() as server:
        yield server


def serve(pcs: FakePcs, raw: bytes, pck: PckCertificate, case: object = SGX) -> list[str]:
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    paths = pcs.serve_pck(cert_id, pck)
    pcs.serve(raw, DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes()), pck)
    return paths


def test_intel_pcs_form_by_encrypted_ppid_with_the_subscription_key(pcs: FakePcs, tmp_path: Path) -> None:
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    _, pcs_path = serve(pcs, raw, pck)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None and cert_id.encrypted_ppid is not None
    source = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time, api_key=KEY, pck_query="pcs")
    assert source.pck_url(cert_id) == pcs.url + pcs_path
    _, ext = original_pck(SGX.quote_bytes())
    assert pcs_path == (
        f"/sgx/certification/v4/pckcert?encrypted_ppid={cert_id.encrypted_ppid.hex()}"
        f"&cpusvn={ext.cpu_svn.hex()}&pcesvn={ext.pce_svn.to_bytes(2, 'little').hex()}&pceid=0000"
    )
    assert source.get_pck_certificate(cert_id) == pck
    assert pcs.requests == [pcs_path]
    assert pcs.headers[0]["ocp-apim-subscription-key"] == KEY
    # The key goes with PCK certificate requests only.
    source.get_collateral(fmspc=ext.fmspc, ca="processor", tee=Quote.from_bytes(raw).tee)
    assert len(pcs.requests) == 5
    assert all("ocp-apim-subscription-key" not in h for h in pcs.headers[1:])
    assert KEY not in repr(source)


def test_a_pccs_is_asked_by_qe_id(pcs: FakePcs, tmp_path: Path) -> None:
    raw, pck = to_ppid_quote(TDX.quote_bytes(), 3)
    pccs_path, _ = serve(pcs, raw, pck)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert pccs_path.startswith(f"/sgx/certification/v4/pckcert?qeid={cert_id.qe_id.hex()}&cpusvn=")
    assert pccs_path.endswith(f"&encrypted_ppid={cert_id.encrypted_ppid.hex()}")  # type: ignore[union-attr]
    source = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time, api_key=KEY)
    assert source.pck_query == "pccs"
    assert source.get_pck_certificate(cert_id) == pck
    assert pcs.requests == [pccs_path]
    assert "ocp-apim-subscription-key" not in pcs.headers[0]  # a PCCS takes no PCS key


@pytest.mark.parametrize("cert_type", [1, 2, 4])
def test_a_pccs_serves_every_type_intel_pcs_only_type_3(pcs: FakePcs, tmp_path: Path, cert_type: int) -> None:
    raw, pck = (
        to_ppid_quote(SGX.quote_bytes(), cert_type) if cert_type < 4 else to_leaf_quote(SGX.quote_bytes())
    )
    (pccs_path,) = serve(pcs, raw, pck)
    assert "encrypted_ppid" not in pccs_path
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert PcsHttpSource(pcs.url, cache_dir=tmp_path).get_pck_certificate(cert_id) == pck
    with pytest.raises(errors.CollateralMissingError, match=r"RSA-3072 encrypted PPID .* use a PCCS"):
        PcsHttpSource(pcs.url, cache_dir=tmp_path / "pcs", pck_query="pcs").get_pck_certificate(cert_id)


def test_the_disk_cache_keeps_a_pck_certificate_and_checks_it_when_read_back(
    pcs: FakePcs, tmp_path: Path
) -> None:
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    serve(pcs, raw, pck)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None

    def source() -> PcsHttpSource:
        return PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time)

    assert source().get_pck_certificate(cert_id) == pck
    assert source().get_pck_certificate(cert_id) == pck  # a new source: from disk
    assert len(pcs.requests) == 1
    (record_path,) = tmp_path.iterdir()
    record = json.loads(record_path.read_text())
    assert record["expires"] == "2025-06-20T10:57:11+00:00"  # a day after the fetch
    # A record whose certificate no longer chains to the pinned root is fetched again.
    other, _ = original_pck(TDX.quote_bytes())
    record["body"] = pem_chain([other.leaf]).encode().hex()  # TDX leaf under the SGX quote's CA
    record_path.write_text(json.dumps(record))
    assert source().get_pck_certificate(cert_id) == pck
    assert len(pcs.requests) == 2
    assert json.loads(record_path.read_text())["body"] == pem_chain([pck.leaf]).encode().hex()
    record_path.write_text("{garbage")
    assert source().get_pck_certificate(cert_id) == pck
    assert len(pcs.requests) == 3
    # A day later it is fetched again.
    later = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time.replace(day=21))
    assert later.get_pck_certificate(cert_id) == pck
    assert len(pcs.requests) == 4


def test_what_does_not_chain_to_the_pinned_root_is_refused_and_not_kept(pcs: FakePcs, tmp_path: Path) -> None:
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    other, _ = original_pck(TDX.quote_bytes())
    serve(pcs, raw, pck)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    (path,) = [p for p in pcs.routes if "qeid=" in p]
    status, _, headers = pcs.routes[path]
    pcs.routes[path] = (
        status,
        pem_chain([pck.leaf]).encode(),
        {**headers, "SGX-PCK-Certificate-Issuer-Chain": "not%20PEM"},
    )
    source = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time)
    with pytest.raises(errors.ParseError):
        source.get_pck_certificate(cert_id)
    tdx_chain = urllib.parse.quote(pem_chain(other.issuer_chain))  # not the CA that issued the leaf
    pcs.routes[path] = (
        status,
        pem_chain([pck.leaf]).encode(),
        {**headers, "SGX-PCK-Certificate-Issuer-Chain": tdx_chain},
    )
    with pytest.raises((errors.CertificateChainError, errors.SignatureError)):
        source.get_pck_certificate(cert_id)
    pcs.routes[path] = (status, b"garbage", headers)
    with pytest.raises(errors.ParseError):
        source.get_pck_certificate(cert_id)
    del headers["SGX-PCK-Certificate-Issuer-Chain"]
    pcs.routes[path] = (status, pem_chain([pck.leaf]).encode(), headers)
    with pytest.raises(errors.CollateralMissingError, match="no SGX-PCK-Certificate-Issuer-Chain header"):
        source.get_pck_certificate(cert_id)
    assert not list(tmp_path.iterdir())  # nothing was kept


def test_failures_never_show_the_subscription_key(
    pcs: FakePcs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    source = PcsHttpSource(pcs.url, cache_dir=tmp_path, api_key=KEY, pck_query="pcs")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.CollateralMissingError) as missing:  # 404
        source.get_pck_certificate(cert_id)
    pcs.behaviour = lambda path: (500, b"", {})
    with pytest.raises(errors.NetworkError) as failed:
        source.get_pck_certificate(cert_id)
    dead = PcsHttpSource("http://127.0.0.1:9", cache_dir=tmp_path, api_key=KEY, pck_query="pcs")
    with pytest.raises(errors.NetworkError) as unreachable:
        dead.get_pck_certificate(cert_id)
    for exc in (missing.value, failed.value, unreachable.value):
        assert KEY not in str(exc) and KEY not in exc.message
    assert KEY not in caplog.text
    assert pcs.headers[0]["ocp-apim-subscription-key"] == KEY


def test_source_for_takes_the_subscription_key_from_the_environment(
    pcs: FakePcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PCS_API_KEY_ENV, KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = source_for(pcs.url)
    assert isinstance(source, PcsHttpSource) and source.pck_query == "pccs"
    raw, pck = to_ppid_quote(SGX.quote_bytes(), 3)
    serve(pcs, raw, pck)
    pcs_source = PcsHttpSource(pcs.url, cache_dir=tmp_path, api_key=KEY, pck_query="pcs")
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert pcs_source.get_pck_certificate(cert_id) == pck
    intel = source_for("https://api.trustedservices.intel.com")
    assert isinstance(intel, PcsHttpSource) and intel.pck_query == "pcs" and intel._api_key == KEY


# --- evidence verify ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", [SGX, TDX], ids=lambda c: c.id)
def test_evidence_verify_fetches_the_pck_certificate_then_the_collateral(
    pcs: FakePcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: object
) -> None:
    from dcap_cases import Case

    assert isinstance(case, Case)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    raw, pck = to_ppid_quote(case.quote_bytes(), 3)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    pcs.serve_pck(cert_id, pck)
    pcs.serve(raw, DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()), pck)
    platform = Platform.TDX if Quote.from_bytes(raw).is_tdx else Platform.SGX
    result = verify_request(
        VerifyRequest(platform=platform, evidence=raw, at=case.time, collateral_url=pcs.url)
    )
    original = verify_quote(
        case.quote_bytes(), DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()), at=case.time
    )
    assert (result.claims, result.tcb_status) == (original.claims, original.tcb_status)
    assert result.details["pck_source"] == "collateral"
    assert pcs.requests[0].startswith("/sgx/certification/v4/pckcert?qeid=") and len(pcs.requests) == 5


def test_evidence_verify_with_a_bundle_file_says_what_is_missing(tmp_path: Path) -> None:
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3)
    with pytest.raises(errors.CollateralMissingError, match="collateral bundle, which carries none"):
        fetch_collateral(DcapVerifier(), Quote.from_bytes(raw), str(ASSETS / SGX.collateral))


# --- a collateral directory ----------------------------------------------------------------------


GO_TDX_PCS = (
    "sample_tcbInfo_response", "sample_qeIdentity_response", "pckcrl", "rootcrl.der",
    "pck_crl_issuer_chain.pem", "tcb_info_issuer_chain.pem", "qe_identity_issuer_chain.pem",
)  # fmt: skip


def pcs_dir(tmp_path: Path) -> Path:
    """The Intel PCS responses of go-tdx-guest (collateral of its SPR E4 quote; not the quotes,
    whose embedded PCK chains a directory source would find)."""
    directory = tmp_path / "pcs"
    directory.mkdir()
    for name in GO_TDX_PCS:
        shutil.copy(ASSETS / "tdx/google-go-tdx-guest" / name, directory / name)
    return directory


def test_a_directory_with_the_pck_chain_as_one_pem_file(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.quote.endswith("tdx_prod_quote_SPR_E4.dat"))
    directory = pcs_dir(tmp_path)
    raw, pck = to_ppid_quote(case.quote_bytes(), 3)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    with pytest.raises(errors.CollateralMissingError, match="has none of the PCK certificates"):
        PcsDirectorySource(directory).get_pck_certificate(cert_id)
    (directory / "pck.pem").write_text(pck.to_pem())
    assert PcsDirectorySource(directory).get_pck_certificate(cert_id) == pck
    collateral, got = fetch_collateral(DcapVerifier(), Quote.from_bytes(raw), str(directory))
    assert got == pck and collateral is not None
    with pytest.raises(errors.TcbLevelNotFoundError):  # as the original with this collateral
        verify_quote(raw, collateral, at=case.time, pck=got)
    # The leaf alone, with the directory's chain file of its CA (the PCK CRL issuer chain).
    (directory / "pck.pem").write_text(pem_chain([pck.leaf]))
    got = PcsDirectorySource(directory).get_pck_certificate(cert_id)
    assert got.leaf == pck.leaf and got.issuer_chain[0] == pck.issuer_chain[0]
    (directory / "pck_crl_issuer_chain.pem").unlink()
    with pytest.raises(errors.CollateralMissingError, match="not its issuer chain"):
        PcsDirectorySource(directory).get_pck_certificate(cert_id)


def test_a_directory_picks_the_platforms_certificate(tmp_path: Path) -> None:
    directory = tmp_path / "pcs"
    directory.mkdir()
    sgx_pck, sgx_ext = original_pck(SGX.quote_bytes())
    tdx_pck, _ = original_pck(TDX.quote_bytes())
    (directory / "a.pem").write_text(sgx_pck.to_pem())
    (directory / "b.pem").write_text(tdx_pck.to_pem())
    # Type 1: by PPID.
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 1)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert PcsDirectorySource(directory).get_pck_certificate(cert_id) == sgx_pck
    # Type 3: by the raw TCB, when only one certificate was issued for it.
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert PcsDirectorySource(directory).get_pck_certificate(cert_id) == sgx_pck
    # Type 4: the quote's leaf.
    raw, _ = to_leaf_quote(TDX.quote_bytes())
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    assert PcsDirectorySource(directory).get_pck_certificate(cert_id) == tdx_pck
    # Two certificates, neither at the raw TCB: ambiguous.
    raw, _ = to_ppid_quote(SGX.quote_bytes(), 3, cpu_svn=bytes(16), pce_svn=sgx_ext.pce_svn + 5)
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    with pytest.raises(errors.CollateralMissingError, match="has 2, none certified at the raw TCB"):
        PcsDirectorySource(directory).get_pck_certificate(cert_id)
