"""Hostile AMD KDS answers and hostile cache files (AMD 57230 "KDS Interface"; AMD SEV-SNP ABI
"CRL signed by the ARK"): what the KDS source keeps on disk (``evidence verify --collateral
URL``), what the CAS's VCEK cache reads back (``cas serve --kds``), and the files it reads.

A fake KDS on 127.0.0.1 serves a test AMD PKI (``snp_fakes``; every fake shares the ARK and ASK
keys, so the VCEK of another fake chip is signed by the same ASK, as AMD's VCEKs of two chips
are)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from snp_fakes import AT, FakeAmd, _rsa_key, make_fake_amd

from confide import errors
from confide.cas.kds import KdsVcekCache, vek_request
from confide.collateral.amd_kds import (
    MAX_RESPONSE_SIZE,
    AmdCollateral,
    AmdCollateralRequest,
    KdsHttpCollateral,
    LocalKdsCollateral,
)
from confide.evidence.sev_snp import AttestationReport, Product
from confide.platforms.sev_snp import load_crl
from confide.verify.sev_snp import AmdChain, SnpVerifier, load_certificates
from kds_fake import FakeKds, fake_kds, vcek_path

DER = serialization.Encoding.DER
TURIN = make_fake_amd(Product.TURIN)
# Another chip's VCEK at the same TCB, signed by the same ASK (snp_fakes' keys are shared).
OTHER_CHIP = make_fake_amd(Product.TURIN, chip_id=bytes(range(101, 165)))
REPORT = TURIN.sign(TURIN.report())
FAR = AT + timedelta(days=3650)
CRL = TURIN.crl()  # one object: an RSA-PSS signature differs each time one is made


@pytest.fixture
def kds() -> Iterator[FakeKds]:
    with fake_kds() as server:
        yield server


def _request() -> AmdCollateralRequest:
    return AmdCollateralRequest.for_report(AttestationReport.from_bytes(REPORT), Product.TURIN)


def _serve(kds: FakeKds, *, vek: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
    kds.route(vcek_path(REPORT), vek.public_bytes(DER))
    kds.route(f"/vcek/v1/{TURIN.product}/cert_chain", TURIN.chain_pem())
    kds.route(f"/vcek/v1/{TURIN.product}/crl", crl.public_bytes(DER))


def _source(kds: FakeKds, cache: Path) -> KdsHttpCollateral:
    return KdsHttpCollateral(cache, roots=TURIN.roots(), base_url=kds.url, clock=lambda: AT)


def _verify(got: AmdCollateral) -> None:
    """What ``evidence verify --collateral URL`` does with the answer."""
    vek = load_certificates(got.vek_der, "vcek")[0]
    chain = AmdChain.from_certificates(load_certificates(got.chain_pem, "chain"))
    crl = load_crl(got.crl_der) if got.crl_der is not None else None
    SnpVerifier(TURIN.roots(), cache_size=0).verify(REPORT, vek, at=AT, chain=chain, crl=crl)


def test_a_crl_the_ark_did_not_sign_is_not_kept_until_its_own_next_update(
    kds: FakeKds, tmp_path: Path
) -> None:
    """A CRL under the ARK's name, signed by another key, naming a nextUpdate ten years ahead:
    refused by the verifier, and (before the fix) kept on disk and served until that date, so
    that every later verification of every Turin chip from this cache was refused."""
    forged = TURIN.crl(next_update=FAR, key=_rsa_key(2))
    _serve(kds, vek=TURIN.vek, crl=forged)
    with _source(kds, tmp_path) as source:
        got = source.fetch(_request())
        assert got.crl_der == forged.public_bytes(DER)
        with pytest.raises(errors.CertificateChainError, match="CRL signature"):
            _verify(got)
        assert not (tmp_path / "vcek/v1/Turin/crl.der").exists()
        # The KDS answers AMD's CRL again: the next verification gets it.
        _serve(kds, vek=TURIN.vek, crl=TURIN.crl(next_update=AT + timedelta(days=10)))
        _verify(source.fetch(_request()))
    assert (tmp_path / "vcek/v1/Turin/crl.der").exists()


def test_a_vcek_of_another_chip_is_not_kept_for_this_one(kds: FakeKds, tmp_path: Path) -> None:
    """AMD's VCEK of another chip (signed by the right ASK under the right ARK) answered for
    this chip's KDS path: before the fix it was kept for ever under this chip's name."""
    _serve(kds, vek=OTHER_CHIP.vek, crl=CRL)
    with _source(kds, tmp_path) as source:
        got = source.fetch(_request())
        with pytest.raises(errors.CertificateChainError, match="hwID"):
            _verify(got)
        assert not (tmp_path / _request().vek_relpath()).exists()
        _serve(kds, vek=TURIN.vek, crl=CRL)
        _verify(source.fetch(_request()))
    assert (tmp_path / _request().vek_relpath()).read_bytes() == TURIN.vek.public_bytes(DER)


def test_a_cached_vcek_that_does_not_verify_is_fetched_again(kds: FakeKds, tmp_path: Path) -> None:
    """A cache directory written before the fix (or by anyone else) holds another chip's VCEK
    under this chip's name: it is fetched again from the KDS, and replaced."""
    LocalKdsCollateral(tmp_path).store(_request().vek_relpath(), OTHER_CHIP.vek.public_bytes(DER))
    _serve(kds, vek=TURIN.vek, crl=CRL)
    with _source(kds, tmp_path) as source:
        _verify(source.fetch(_request()))
    assert vcek_path(REPORT) in kds.requests
    assert (tmp_path / _request().vek_relpath()).read_bytes() == TURIN.vek.public_bytes(DER)


def test_an_expired_crl_signed_by_the_ark_is_kept_and_only_it_asked_for_again(
    kds: FakeKds, tmp_path: Path
) -> None:
    """What is kept is judged by its signatures, not its dates (the verifier judges those): AMD's
    CRL whose nextUpdate is past is kept, and the next fetch asks for the CRL alone."""
    _serve(kds, vek=TURIN.vek, crl=TURIN.crl(next_update=AT - timedelta(days=1)))
    with _source(kds, tmp_path) as source:
        with pytest.raises(errors.CollateralExpiredError):
            _verify(source.fetch(_request()))
        assert len(kds.requests) == 3
        source.fetch(_request())
    assert kds.requests[3:] == ["/vcek/v1/Turin/crl"]


def _crl_version_7(der: bytes) -> bytes:
    """``der`` with its version INTEGER (v2, the first element of tbsCertList) set to 7."""
    at = der.index(b"\x02\x01\x01")
    assert at < 12
    return der[:at] + b"\x02\x01\x07" + der[at + 3 :]


BAD_VERSION_CRL = _crl_version_7(TURIN.crl(next_update=FAR).public_bytes(DER))


def test_crl_of_an_unknown_version_in_the_caches_is_a_confide_error(kds: FakeKds, tmp_path: Path) -> None:
    """``cryptography`` raises InvalidVersion (not a ValueError) for a CRL whose version is not
    v1/v2 (RFC 5280 §5.1.2.1). Before the fix it escaped the KDS source's freshness check and
    the CAS cache's (``_stale``, ``_crl_due``) as a traceback."""
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_crl(BAD_VERSION_CRL)
    _serve(kds, vek=TURIN.vek, crl=CRL)
    with _source(kds, tmp_path / "http") as source:
        source.fetch(_request())
        (tmp_path / "http/vcek/v1/Turin/crl.der").write_bytes(BAD_VERSION_CRL)
        _verify(source.fetch(_request()))  # the CRL was fetched again
    assert (tmp_path / "http/vcek/v1/Turin/crl.der").read_bytes() == CRL.public_bytes(DER)

    cache = KdsVcekCache(KdsHttpCollateral(None, base_url=kds.url), tmp_path / "cas", TURIN.roots())
    request = vek_request(REPORT)
    assert cache.fetch(request, AT).crl is not None
    cache.memory.clear()
    (tmp_path / "cas/vcek/v1/Turin/crl.der").write_bytes(BAD_VERSION_CRL)
    got = cache.fetch(request, AT)  # the files were rejected, removed and fetched again
    assert got.crl is not None and got.crl.public_bytes(DER) == CRL.public_bytes(DER)
    assert cache.rejected_files == 1


def _returns(call: Callable[[], object], fifo: Path) -> bool:
    """Whether ``call`` returns (or raises) within 10 s; if it does not (it waits on the FIFO),
    the FIFO is opened for writing and closed, so that the thread ends."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception:  # only whether it came back is asked
            pass
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if done.wait(10):
        return True
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(10)
    return False


def test_fifo_in_the_caches_is_not_waited_on(kds: FakeKds, tmp_path: Path) -> None:
    """A FIFO in place of a cached file: before the fix the read waited for a writer for ever
    (the CAS's prefetch thread, and every later fetch of that VCEK, behind it)."""
    _serve(kds, vek=TURIN.vek, crl=CRL)
    request = vek_request(REPORT)
    cache = KdsVcekCache(KdsHttpCollateral(None, base_url=kds.url), tmp_path / "cas", TURIN.roots())
    fifo = tmp_path / "cas" / request.vek_relpath()
    fifo.parent.mkdir(parents=True)
    (tmp_path / "cas/vcek/v1/Turin/cert_chain.pem").write_bytes(TURIN.chain_pem())
    (tmp_path / "cas/vcek/v1/Turin/crl.der").write_bytes(CRL.public_bytes(DER))
    os.mkfifo(fifo)
    assert _returns(lambda: cache.fetch(request, AT), fifo)
    assert cache.fetch(request, AT).vek == TURIN.vek  # fetched from the KDS

    local = tmp_path / "local"
    lfifo = local / request.vek_relpath()
    lfifo.parent.mkdir(parents=True)
    os.mkfifo(lfifo)
    assert _returns(lambda: LocalKdsCollateral(local).fetch(request), lfifo)
    with pytest.raises(errors.CollateralMissingError, match="not a regular file"):
        LocalKdsCollateral(local).fetch(request)


def test_local_files_are_read_up_to_the_limit(tmp_path: Path) -> None:
    """An operator's KDS directory: a file larger than the limit is refused after reading at most
    the limit + 1 bytes (it was read whole)."""
    request = _request()
    local = LocalKdsCollateral(tmp_path)
    local.store(request.vek_relpath(), b"\0" * (MAX_RESPONSE_SIZE + 1))
    with pytest.raises(errors.ParseError, match="more than"):
        local.fetch(request)


def test_a_cache_directory_needs_roots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="roots"):
        KdsHttpCollateral(tmp_path)


def test_other_chip_fake_is_what_it_claims() -> None:
    """The premise of the tests above: the other chip's VCEK is signed by this chip's ASK."""
    assert isinstance(OTHER_CHIP, FakeAmd)
    OTHER_CHIP.vek.verify_directly_issued_by(TURIN.ask)
    assert OTHER_CHIP.chip_id != TURIN.chip_id
