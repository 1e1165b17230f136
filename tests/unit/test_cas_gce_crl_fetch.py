"""``cas serve --gce-crl fetch``: the CAS fetches Google's CRLs from the CRL Distribution Points of a
*verified* AK chain (``confide.cas.gce_crl.GceCrlFetcher``, through an injected mock transport),
keeps each until its nextUpdate, and refuses a revoked AK certificate, a CRL not signed by the
issuer (not kept), an unreachable point, an oversized answer and a certificate without an http(s)
point; nothing is asked about a chain that does not verify. Evidence: the runtime provider's on
swtpm under a test Google-like PKI whose certificates name distribution points."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from test_cas_attest_gce_tpm import policy_text

from cas_inproc import RuntimeKey, last_attestation, production_cas, refused
from confide import errors
from confide.cas.core import Cas
from confide.cas.gce_crl import FAILURE_GRACE, MAX_CRL_SIZE, GceCrlFetcher, GceCrlFile, gce_crl_source
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from confide.verify.gce_crl import crl_dp_urls
from gce_fakes import NOT_BEFORE, FakeGoogle, clear_gce_indices, provision_gce_vtpm

ROOT_URL = "http://crl.test/root.crl"
INT_URL = "http://crl.test/int.crl"


def _dp(*urls: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in urls]
    )


GOOGLE = FakeGoogle.make(intermediate_extensions=[_dp(ROOT_URL)])
AT = NOT_BEFORE + timedelta(days=10)
AK = x509.load_der_x509_certificate(
    GOOGLE.ak_cert(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), extra=[_dp(INT_URL)]
    )
)
CHAIN = [AK, GOOGLE.intermediate, GOOGLE.root]


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


class Points:
    """A mock distribution point server: URL → (status, body); records what was asked."""

    def __init__(self, at: datetime, **crl_kwargs: object) -> None:
        window = {"this_update": at - timedelta(days=1), "next_update": at + timedelta(days=1)}
        self.answers: dict[str, tuple[int, bytes]] = {
            ROOT_URL: (200, _der(GOOGLE.crl("root", **window))),  # type: ignore[arg-type]
            INT_URL: (200, _der(GOOGLE.crl(**{**window, **crl_kwargs}))),  # type: ignore[arg-type]
        }
        self.asked: list[str] = []

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.asked.append(str(request.url))
        status, body = self.answers.get(str(request.url), (404, b""))
        return httpx2.Response(status, content=body)

    def fetcher(self, monotonic: Callable[[], float] = time.monotonic) -> GceCrlFetcher:
        return GceCrlFetcher(transport=httpx2.MockTransport(self.handler), monotonic=monotonic)


def test_the_distribution_points_are_read_from_the_certificates() -> None:
    assert crl_dp_urls(AK) == [INT_URL] and crl_dp_urls(GOOGLE.intermediate) == [ROOT_URL]
    assert crl_dp_urls(GOOGLE.root) == []


def test_fetched_crls_are_kept_until_their_next_update() -> None:
    points = Points(AT)
    fetcher = points.fetcher()
    assert fetcher.cached(CHAIN, AT) is None
    crls = fetcher.crls(CHAIN, AT)
    assert [_der(c) for c in crls] == [points.answers[INT_URL][1], points.answers[ROOT_URL][1]]
    assert points.asked == [INT_URL, ROOT_URL]
    assert fetcher.cached(CHAIN, AT) == crls and fetcher.crls(CHAIN, AT + timedelta(hours=23)) == crls
    assert len(points.asked) == 2
    # past their nextUpdate: asked again (and the points now serve newer ones)
    later = AT + timedelta(days=2)
    assert fetcher.cached(CHAIN, later) is None
    points.answers = Points(later).answers
    fetcher.crls(CHAIN, later)
    assert points.asked[2:] == [INT_URL, ROOT_URL]


def test_a_crl_not_signed_by_the_issuer_is_refused_and_not_kept() -> None:
    points = Points(AT, key=ec.generate_private_key(ec.SECP384R1()))
    now = [0.0]
    fetcher = points.fetcher(lambda: now[0])
    for _ in range(2):
        with pytest.raises(errors.SignatureError, match="signature does not verify with"):
            fetcher.crls(CHAIN, AT)
    # the hostile review of 2026-12-07: the failure is given again for FAILURE_GRACE seconds without asking the point
    assert points.asked == [INT_URL]
    now[0] = FAILURE_GRACE + 1
    with pytest.raises(errors.SignatureError):
        fetcher.crls(CHAIN, AT)
    assert points.asked == [INT_URL, INT_URL]


def test_concurrent_attestations_fetch_a_crl_once() -> None:
    """Hostile review of 2026-12-07: every gce-tpm attestation whose chain's CRLs were not in memory fetched them
    itself (no single flight): N concurrent requests with a (public) genuine AK chain made N
    GETs of each point, each in a thread of the CAS's shared default executor."""
    points = Points(AT)
    release = threading.Event()
    inner = points.handler

    def slow(request: httpx2.Request) -> httpx2.Response:
        release.wait(10)
        return inner(request)

    fetcher = GceCrlFetcher(transport=httpx2.MockTransport(slow))
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.crls(CHAIN, AT))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all four are waiting: one in the fetch, three for its outcome
    release.set()
    for t in threads:
        t.join(10)
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert points.asked == [INT_URL, ROOT_URL] and fetcher.requests_made == 2


def test_unreachable_oversized_and_redirected_points_are_refused() -> None:
    points = Points(AT)
    points.answers[INT_URL] = (503, b"")
    with pytest.raises(
        errors.NetworkError, match=r"Google's CRL for '': GET http://crl\.test/int\.crl: got HTTP 503"
    ):
        points.fetcher().crls(CHAIN, AT)
    points.answers[INT_URL] = (200, b"\x30" * (MAX_CRL_SIZE + 1))
    with pytest.raises(errors.ParseError, match=f"more than {MAX_CRL_SIZE}"):
        points.fetcher().crls(CHAIN, AT)
    redirect = GceCrlFetcher(
        transport=httpx2.MockTransport(
            lambda r: httpx2.Response(302, headers={"location": "http://elsewhere.test/"})
        )
    )
    with pytest.raises(errors.NetworkError, match="got HTTP 302"):
        redirect.crls(CHAIN, AT)


def test_the_next_point_is_tried_and_only_http_points_are_asked() -> None:
    points = Points(AT)
    ak = x509.load_der_x509_certificate(
        GOOGLE.ak_cert(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
            extra=[_dp("ldap://crl.test/x", "http://crl.test/down.crl", INT_URL)],
        )
    )
    assert len(points.fetcher().crls([ak, GOOGLE.intermediate, GOOGLE.root], AT)) == 2
    assert points.asked == ["http://crl.test/down.crl", INT_URL, ROOT_URL]
    no_point = x509.load_der_x509_certificate(
        GOOGLE.ak_cert(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    )
    with pytest.raises(errors.CollateralMissingError, match="names no http\\(s\\) CRL Distribution Point"):
        points.fetcher().crls([no_point, GOOGLE.intermediate, GOOGLE.root], AT)


def test_gce_crl_values(tmp_path: Path) -> None:
    assert isinstance(gce_crl_source("fetch"), GceCrlFetcher)
    source = gce_crl_source("./fetch")
    assert isinstance(source, GceCrlFile) and source.path == Path("fetch")
    cas, *_ = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None, gce_crl="fetch"
    )
    assert isinstance(cas.verifier.gce_crl, GceCrlFetcher)


# --- through the CAS ------------------------------------------------------------------------------


@pytest.fixture
def vm(swtpm_tpm: Tpm) -> Iterator[GceTpmQuoteProvider]:
    key = provision_gce_vtpm(swtpm_tpm, GOOGLE)
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=GOOGLE.ak_cert(key, extra=[_dp(INT_URL)]))
    try:
        yield GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
    finally:
        clear_gce_indices(swtpm_tpm)


def _cas(
    tmp_path: Path, tpm: Tpm, points: Points, roots: tuple[x509.Certificate, ...] = (GOOGLE.root,)
) -> Cas:
    verifier = PlatformVerifier(gce_roots=roots, gce_crl=points.fetcher())
    return production_cas(tmp_path / "cas", verifier, policy_text(tpm.pcr_read(range(24))))


def _body(cas: Cas, vm: GceTpmQuoteProvider) -> tuple[RuntimeKey, dict[str, object]]:
    rt = RuntimeKey(cas)
    return rt, rt.body(
        policy="app", service="vm", platform="gce-tpm", evidence=vm.get_evidence(rt.binding).raw
    )


def test_the_cas_fetches_and_accepts(tmp_path: Path, swtpm_tpm: Tpm, vm: GceTpmQuoteProvider) -> None:
    points = Points(datetime.now(UTC))
    cas = _cas(tmp_path, swtpm_tpm, points)
    for _ in range(2):
        rt, body = _body(cas, vm)
        rt.open(cas.attest(body))
        assert last_attestation(cas)["verdict"] == "accepted"
    assert points.asked == [INT_URL, ROOT_URL]  # the second from memory


def test_the_cas_refuses_a_revoked_ak_certificate(
    tmp_path: Path, swtpm_tpm: Tpm, vm: GceTpmQuoteProvider
) -> None:
    from confide.evidence.gce_tpm import parse_gce_attestation

    probe = vm.get_evidence(bytes(64)).raw
    serial = x509.load_der_x509_certificate(parse_gce_attestation(probe).ak_cert or b"").serial_number
    cas = _cas(tmp_path, swtpm_tpm, Points(datetime.now(UTC), revoked=[serial]))
    _rt, body = _body(cas, vm)
    refused(cas, body, errors.RevocationError, "is revoked by the CRL of")


def test_nothing_is_asked_about_a_chain_that_does_not_verify(
    tmp_path: Path, swtpm_tpm: Tpm, vm: GceTpmQuoteProvider
) -> None:
    points = Points(datetime.now(UTC))
    cas = _cas(tmp_path, swtpm_tpm, points, roots=(FakeGoogle.make().root,))
    _rt, body = _body(cas, vm)
    refused(cas, body, errors.CertificateChainError, "signature does not verify")
    assert points.asked == []


def _scoped(url: str) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
        only_contains_user_certs=True, only_contains_ca_certs=False, only_some_reasons=None,
        indirect_crl=False, only_contains_attribute_certs=False,
    )  # fmt: skip


def test_a_crl_of_its_own_distribution_point_is_fetched_and_another_partition_refused() -> None:
    """Hostile review of 2026-12-07: a CRL with an Issuing Distribution Point (RFC 5280 requires it critical) was
    refused by the fetch and the verifier alike since ``check_crl`` refuses every CRL of
    restricted scope for DCAP; the GCE path matches the point itself. A partition of the same
    issuer for another point (genuine, current, not listing the AK) served at the AK's URL by a
    network attacker covers nothing: fail closed."""
    from confide.verify.gce_crl import check_chain_revocation

    points = Points(AT, extensions=[_scoped(INT_URL)])
    crls = points.fetcher().crls(CHAIN, AT)
    assert len(check_chain_revocation(CHAIN, crls, AT)) == 2
    points = Points(AT, extensions=[_scoped("http://crl.test/int-shard-7.crl")])
    crls = points.fetcher().crls(CHAIN, AT)
    with pytest.raises(errors.CollateralMissingError, match="AK certificate: no CRL"):
        check_chain_revocation(CHAIN, crls, AT)
    revoked = Points(AT, revoked=[AK.serial_number], extensions=[_scoped(INT_URL)])
    with pytest.raises(errors.RevocationError):
        check_chain_revocation(CHAIN, revoked.fetcher().crls(CHAIN, AT), AT)


def test_the_fetches_are_in_the_metrics_sources() -> None:
    points = Points(AT)
    fetcher = points.fetcher()
    verifier = PlatformVerifier(gce_crl=fetcher)
    fetcher.crls(CHAIN, AT)
    snap = verifier.fetch_stats()["gce-crl"].snapshot()
    assert (snap.ok, snap.error) == (2, 0)
    assert "gce-crl" not in PlatformVerifier().fetch_stats()


def test_an_older_crl_after_a_newer_one_is_refused() -> None:
    """Hostile review of 2026-12-07: once a CRL was fetched for a certificate, an older one of its issuer (signed,
    still current: issued before a revocation, with a long validity) served by a network
    attacker when the kept one falls due is a rollback, refused; a newer one is taken."""
    points = Points(AT)
    now = [0.0]
    fetcher = points.fetcher(lambda: now[0])
    fetcher.crls(CHAIN, AT)  # thisUpdate AT - 1 day, nextUpdate AT + 1 day
    later = AT + timedelta(days=3)
    old = GOOGLE.crl(this_update=AT - timedelta(days=2), next_update=AT + timedelta(days=30))
    points.answers = {**Points(later).answers, INT_URL: (200, _der(old))}
    with pytest.raises(errors.CollateralError, match="older than that of a CRL of this issuer seen before"):
        fetcher.crls(CHAIN, later)
    now[0] = FAILURE_GRACE + 1
    points.answers = Points(later).answers  # the point serves a current, newer CRL again
    assert fetcher.crls(CHAIN, later)[0].last_update_utc == later - timedelta(days=1)
