"""The CAS and quotes whose certification data only names the PCK certificate (types 1-4): the
certificate is fetched before phase 1 (``cas serve --collateral URL``: the fake PCS on
127.0.0.1 acting as a PCCS, ``tests/pcs_fake.py``), then the collateral of the platform it
names, and phase 1 verifies with both (:mod:`confide.cas.pcs`, :mod:`confide.cas.verifier`).

The quotes are the real type-5 quotes of tests/assets with type-3 certification data
(``dcap_ppid``); as in ``test_cas_pcs``, a real quote cannot bind a fresh runtime key, so a
verified attestation ends in a ``BindingError`` with its TCB status recorded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import Clock, RuntimeKey, last_attestation, production_cas, refused, sim_policy
from confide import errors
from confide.cas.core import Cas
from confide.cas.pcs import FAILURE_GRACE, PCK_MEMORY_SECONDS
from confide.cas.verifier import CollateralJob, PlatformVerifier
from confide.collateral.dcap import BundleFileSource, PcsDirectorySource, PcsHttpSource
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from dcap_cases import ASSETS, CASES, Case
from dcap_ppid import original_pck, to_ppid_quote
from pcs_fake import FakePcs, fake_pcs

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")
TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")
NOW = datetime(2025, 6, 19, 11, 0, tzinfo=UTC)
CASE = {"sgx": SGX, "tdx": TDX}
STATUS = {"sgx": "ConfigurationAndSWHardeningNeeded", "tdx": "UpToDate"}
QUOTES = {tee: to_ppid_quote(case.quote_bytes(), 3) for tee, case in CASE.items()}


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pcs() -> Iterator[FakePcs]:
    with fake_pcs() as server:
        for tee, (raw, pck) in QUOTES.items():
            cert_id = Quote.from_bytes(raw).pck_cert_id()
            assert cert_id is not None
            server.serve_pck(cert_id, pck)
            server.serve(raw, DcapCollateral.from_dcap_qvl_json(CASE[tee].collateral_bytes()), pck)
        yield server


def cas_with(data_dir: Path, verifier: PlatformVerifier) -> Cas:
    cas = production_cas(data_dir, verifier, sim_policy())
    cas.clock = Clock(NOW.timestamp())
    return cas


def pcs_cas(tmp_path: Path, url: str) -> Cas:
    source = PcsHttpSource(url, cache_dir=tmp_path / "pcs-cache", clock=lambda: NOW)
    return cas_with(tmp_path / "cas", PlatformVerifier(dcap_source=source))


def request(cas: Cas, tee: str = "sgx", evidence: bytes | None = None, **aux: bytes) -> dict[str, Any]:
    return RuntimeKey(cas).body(
        policy="app", service="svc", platform=tee, evidence=evidence or QUOTES[tee][0], aux=aux or None
    )


def fetching(job: CollateralJob | None) -> bool:
    return job is not None and job.fetch is not None


def pck_path(pcs: FakePcs, tee: str) -> str:
    cert_id = Quote.from_bytes(QUOTES[tee][0]).pck_cert_id()
    assert cert_id is not None
    return f"/sgx/certification/v4/pckcert?qeid={cert_id.qe_id.hex()}&cpusvn={cert_id.cpu_svn.hex()}"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_the_pck_certificate_then_the_collateral_are_fetched_before_phase_one(
    pcs: FakePcs, tmp_path: Path, tee: str
) -> None:
    cas = pcs_cas(tmp_path, pcs.url)
    body = request(cas, tee)
    job = cas.collateral_job(body)
    assert fetching(job) and pcs.requests == []
    assert job is not None
    job.run()
    assert len(pcs.requests) == 5 and pcs.requests[0].startswith(pck_path(pcs, tee))
    refused(cas, body, errors.BindingError, "report data got")
    event = last_attestation(cas)
    assert event["tcb_status"] == STATUS[tee]
    assert len(pcs.requests) == 5  # phase 1 asked nothing
    # The next attestation of the platform finds both in memory.
    again = request(cas, tee)
    assert not fetching(cas.collateral_job(again))
    refused(cas, again, errors.BindingError, "report data got")
    assert len(pcs.requests) == 5


def test_the_pck_certificate_stays_in_memory_for_its_time(pcs: FakePcs, tmp_path: Path) -> None:
    cas = pcs_cas(tmp_path, pcs.url)
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.dcap_cache is not None
    monotonic = verifier.dcap_cache.monotonic = Monotonic()
    refused(cas, request(cas), errors.BindingError, "report data got")
    assert len(pcs.requests) == 5
    monotonic.now += PCK_MEMORY_SECONDS  # due in memory; the source's disk cache still has it
    job = cas.collateral_job(request(cas))
    assert fetching(job)
    assert job is not None
    job.run()
    assert len(pcs.requests) == 5


def test_a_pck_certificate_the_pcs_does_not_have_is_a_collateral_refusal(
    pcs: FakePcs, tmp_path: Path
) -> None:
    for path in [p for p in pcs.routes if "pckcert" in p]:
        del pcs.routes[path]
    cas = pcs_cas(tmp_path, pcs.url)
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.dcap_cache is not None
    monotonic = Monotonic()
    verifier.dcap_cache.monotonic = monotonic
    exc = refused(
        cas,
        request(cas),
        errors.CollateralMissingError,
        "fetching the PCK certificate for the quote's certification data type 3 \\(RSA-3072-OAEP encrypted PPID\\),"
        " CPUSVN .* from Intel PCS/PCCS .* failed: CollateralMissingError: GET .*pckcert\\?qeid=.*: 404",
    )
    assert exc.exit_code == 25
    assert len(pcs.requests) == 1  # nothing is asked about a platform whose certificate is unknown
    # Within the grace the error is reported without asking again; after it, asked again.
    refused(cas, request(cas), errors.CollateralMissingError, "fetching the PCK certificate")
    assert len(pcs.requests) == 1
    monotonic.now += FAILURE_GRACE
    refused(cas, request(cas), errors.CollateralMissingError, "fetching the PCK certificate")
    assert len(pcs.requests) == 2


def test_another_platforms_certificate_from_the_pcs_is_refused(pcs: FakePcs, tmp_path: Path) -> None:
    """A PCS that answers with a real certificate of another platform: it chains to the Intel
    root and has the same PCE ID, so its platform's collateral is fetched, but its key did not
    sign the QE report."""
    raw, _ = QUOTES["sgx"]
    cert_id = Quote.from_bytes(raw).pck_cert_id()
    assert cert_id is not None
    other, other_ext = original_pck(TDX.quote_bytes())
    pcs.serve_pck(cert_id, other)
    # Collateral for the other platform's FMSPC and CA as an SGX platform (any: it is not reached).
    sgx_paths = [p for p in pcs.routes if p.startswith("/sgx/certification/v4/tcb?")]
    pcs.routes[f"/sgx/certification/v4/tcb?fmspc={other_ext.fmspc.hex()}"] = pcs.routes[sgx_paths[0]]
    pcs.routes["/sgx/certification/v4/pckcrl?ca=platform&encoding=der"] = pcs.routes[
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der"
    ]
    cas = pcs_cas(tmp_path, pcs.url)
    refused(cas, request(cas), errors.SignatureError, "QE report signature does not verify")


def test_a_request_bundle_still_needs_the_pck_certificate_from_the_source(
    pcs: FakePcs, tmp_path: Path
) -> None:
    cas = pcs_cas(tmp_path, pcs.url)
    body = request(cas, collateral=SGX.collateral_bytes())
    job = cas.collateral_job(body)
    assert fetching(job)
    assert job is not None
    job.run()
    assert len(pcs.requests) == 1 and "pckcert" in pcs.requests[0]  # the bundle has the rest
    refused(cas, body, errors.BindingError, "report data got")
    assert last_attestation(cas)["tcb_status"] == STATUS["sgx"]


def test_a_cas_without_a_pck_certificate_source_says_what_is_needed(tmp_path: Path) -> None:
    cas = cas_with(tmp_path / "cas", PlatformVerifier(dcap_source=BundleFileSource(ASSETS / SGX.collateral)))
    assert cas.collateral_job(request(cas)) is None
    refused(
        cas,
        request(cas),
        errors.CollateralMissingError,
        "PCK certificate and its issuer chain are needed .* this CAS has no source of PCK certificates",
    )


def test_a_local_directory_source_is_read_before_phase_one(tmp_path: Path) -> None:
    case: Case = next(c for c in CASES if c.quote.endswith("tdx_prod_quote_SPR_E4.dat"))
    directory = tmp_path / "pcs"
    directory.mkdir()
    for name in (
        "sample_tcbInfo_response", "sample_qeIdentity_response", "pckcrl", "rootcrl.der",
        "pck_crl_issuer_chain.pem", "tcb_info_issuer_chain.pem", "qe_identity_issuer_chain.pem",
    ):  # fmt: skip
        shutil.copy(ASSETS / "tdx/google-go-tdx-guest" / name, directory / name)
    raw, pck = to_ppid_quote(case.quote_bytes(), 3)
    (directory / "pck.pem").write_text(pck.to_pem())
    cas = cas_with(tmp_path / "cas", PlatformVerifier(dcap_source=PcsDirectorySource(directory)))
    cas.clock = Clock(case.time.timestamp())
    body = request(cas, "tdx", raw)
    job = cas.collateral_job(body)
    assert fetching(job)
    assert job is not None
    found = job.run()
    assert list(found.pck.values()) == [pck] and len(found.dcap) == 1
    refused(cas, body, errors.TcbLevelNotFoundError, "no TCB level")  # as its type-5 original
    # Without its PCK certificate the directory is no help.
    (directory / "pck.pem").unlink()
    refused(cas, request(cas, "tdx", raw), errors.CollateralMissingError, "has none of the PCK certificates")
