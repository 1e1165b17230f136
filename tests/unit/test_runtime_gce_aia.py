"""The GCE AK certificate's issuers from their AIA caIssuers URLs (``confide.runtime.gce_aia``, step 7
of ``confide.runtime.gce_tpm``): collected through a fake fetcher up to a pinned root, DER or
PEM; loops, too many hops, answers too large or too slow, what is not the issuer and URLs that
are not http(s) refused; ``HttpIssuerFetcher`` over a mock transport; the provider on swtpm sends
what it fetched (and the evidence verifies), keeps it, and on a failure raises or, when the
shipped intermediates chain (Google's real AK certificate), fetches nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID

from confide.errors import CertificateChainError, NetworkError, ParseError
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.runtime.gce_aia import (
    MAX_HOPS,
    MAX_ISSUER_SIZE,
    HttpIssuerFetcher,
    ca_issuer_urls,
    collect_issuers,
)
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from confide.verify.gce_tpm import long_names, verify_gce_attestation
from gce_fakes import NOT_AFTER, NOT_BEFORE, FakeGoogle, clear_gce_indices, provision_gce_vtpm
from pki import issue, key_usage

ASSETS = Path(__file__).parent.parent / "assets" / "tpm" / "google-go-tpm-tools"
REPORT_DATA = bytes(range(64))


def _aia(*urls: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(u)
            )
            for u in urls
        ]
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return _der(self.cert)


def _ca(cn: str, parent: Ca | None, *urls: str, key: ec.EllipticCurvePrivateKey | None = None) -> Ca:
    """A CA named ``cn`` signed by ``parent`` (itself without one) whose caIssuers are ``urls``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    cert = issue(
        name, key.public_key(), issuer=parent.cert.subject if parent else name,
        signing_key=parent.key if parent else key, not_before=NOT_BEFORE, not_after=NOT_AFTER, ca=True,
        usage=key_usage(cert_sign=True, digital_signature=False), extensions=[_aia(*urls)] if urls else [],
        hash_algorithm=hashes.SHA256(),
    )  # fmt: skip
    return Ca(cert, key)


def _leaf(parent: Ca, *urls: str, key: ec.EllipticCurvePublicKey | None = None) -> x509.Certificate:
    return issue(
        x509.Name([]), key or ec.generate_private_key(ec.SECP256R1()).public_key(), issuer=parent.cert.subject,
        signing_key=parent.key, not_before=NOT_BEFORE, not_after=NOT_AFTER, ca=False,
        usage=key_usage(cert_sign=False, digital_signature=True), extensions=[_aia(*urls)] if urls else [],
        hash_algorithm=hashes.SHA256(),
    )  # fmt: skip


ROOT = _ca("Test Root", None)
INTERMEDIATE = _ca("Test Intermediate", ROOT, "http://pki.test/root.crt")
INT_URL = "http://pki.test/intermediate.crt"


@dataclass
class FakeFetcher:
    """URL → answer (bytes, or an error to raise); ``cost``: seconds each fetch takes on ``clock``."""

    answers: dict[str, bytes | Exception]
    cost: float = 0.0
    now: float = 0.0
    asked: list[tuple[str, int, float]] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def fetch(self, url: str, *, limit: int, within: float) -> bytes:
        self.asked.append((url, limit, within))
        self.now += self.cost
        answer = self.answers.get(url, NetworkError(f"GET {url}: got HTTP 404, expected 200"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def _collect(leaf: x509.Certificate, fetcher: FakeFetcher, **kwargs: float) -> list[bytes]:
    return collect_issuers(leaf, fetcher, [ROOT.cert], clock=fetcher.clock, **kwargs)


def test_the_issuer_is_fetched_up_to_a_pinned_root_der_or_pem() -> None:
    leaf = _leaf(INTERMEDIATE, INT_URL)
    fetcher = FakeFetcher({INT_URL: INTERMEDIATE.der})
    assert _collect(leaf, fetcher) == [INTERMEDIATE.der]
    # signed by a pinned root: the intermediate's own URL (the root's) is not asked
    assert [(u, limit) for u, limit, _ in fetcher.asked] == [(INT_URL, MAX_ISSUER_SIZE)]
    pem = INTERMEDIATE.cert.public_bytes(serialization.Encoding.PEM)
    assert _collect(leaf, FakeFetcher({INT_URL: pem})) == [INTERMEDIATE.der]


def test_two_hops_and_nothing_to_fetch() -> None:
    upper = _ca("Upper", ROOT, "http://pki.test/root.crt")
    lower = _ca("Lower", upper, "http://pki.test/upper.crt")
    leaf = _leaf(lower, "http://pki.test/lower.crt")
    fetcher = FakeFetcher({"http://pki.test/lower.crt": lower.der, "http://pki.test/upper.crt": upper.der})
    assert _collect(leaf, fetcher) == [lower.der, upper.der]
    # no AIA, or signed by the root itself: nothing is asked
    empty = FakeFetcher({})
    assert _collect(_leaf(INTERMEDIATE), empty) == [] and _collect(_leaf(ROOT, INT_URL), empty) == []
    assert empty.asked == []
    # a fetched issuer without caIssuers that is not the root's: what was collected is sent
    orphan = _ca("Orphan", _ca("Unknown", None))
    assert _collect(_leaf(orphan, "http://o.test/c"), FakeFetcher({"http://o.test/c": orphan.der})) == [
        orphan.der
    ]


def test_a_loop_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    loopy = _ca("Loopy", None, "http://pki.test/loopy.crt", key=key)  # self-signed, not pinned
    leaf = _leaf(loopy, "http://pki.test/loopy.crt")
    fetcher = FakeFetcher({"http://pki.test/loopy.crt": loopy.der})
    with pytest.raises(CertificateChainError, match=r"gave CN=Loopy, already in the chain \(a loop\)"):
        _collect(leaf, fetcher)
    assert len(fetcher.asked) == 2


def test_more_than_max_hops_is_refused() -> None:
    chain = [_ca("Top", _ca("Not pinned", None), "http://pki.test/np.crt")]
    answers: dict[str, bytes | Exception] = {}
    for i in range(MAX_HOPS):
        url = f"http://pki.test/{i}.crt"
        answers[url] = chain[-1].der
        chain.append(_ca(f"CA {i}", chain[-1], url))
    answers["http://pki.test/np.crt"] = b"never reached"
    leaf = _leaf(chain[-1], "http://pki.test/last.crt")
    answers["http://pki.test/last.crt"] = chain[-1].der
    fetcher = FakeFetcher(answers)
    with pytest.raises(
        CertificateChainError, match=f"not signed by a pinned Google root after {MAX_HOPS} issuers"
    ):
        _collect(leaf, fetcher)
    assert len(fetcher.asked) == MAX_HOPS


def test_what_is_not_the_issuer_is_refused_and_the_next_url_tried() -> None:
    impostor = _ca("Test Intermediate", ROOT, "http://pki.test/root.crt")  # same name, another key
    leaf = _leaf(INTERMEDIATE, "http://a.test/1", "http://a.test/2", "http://a.test/3")
    answers: dict[str, bytes | Exception] = {
        "http://a.test/1": impostor.der,
        "http://a.test/2": ROOT.der,
        "http://a.test/3": INTERMEDIATE.der,
    }
    assert _collect(leaf, FakeFetcher(answers)) == [INTERMEDIATE.der]
    answers["http://a.test/3"] = b"\x30\x03\x02\x01\x00"
    with pytest.raises(ParseError) as info:
        _collect(leaf, FakeFetcher(answers))
    message = str(info.value)
    assert "the issuer of the AK certificate could not be had from its caIssuers URLs" in message
    assert "signature does not verify" in message and "got CN=Test Root, not the issuer" in message
    assert "answer of http://a.test/3" in message
    two = INTERMEDIATE.der + ROOT.der
    with pytest.raises(ParseError, match="got 2 certificates, expected 1"):
        _collect(_leaf(INTERMEDIATE, INT_URL), FakeFetcher({INT_URL: two}))


def test_only_http_and_https_and_at_most_three_urls() -> None:
    urls = ("ldap://pki.test/c", "file:///etc/passwd", "ftp://pki.test/c", "http://pki.test/4th")
    fetcher = FakeFetcher({"http://pki.test/4th": INTERMEDIATE.der})
    with pytest.raises(CertificateChainError, match="'file:///etc/passwd': not an http or https URL"):
        _collect(_leaf(INTERMEDIATE, *urls), fetcher)
    assert fetcher.asked == []
    fetcher = FakeFetcher({"https://pki.test/c": INTERMEDIATE.der})
    assert _collect(_leaf(INTERMEDIATE, "ldap://pki.test/c", "https://pki.test/c"), fetcher) == [
        INTERMEDIATE.der
    ]


def test_network_failures_and_the_time_budget() -> None:
    leaf = _leaf(INTERMEDIATE, INT_URL, "http://pki.test/other.crt")
    with pytest.raises(
        NetworkError, match=r"got HTTP 404, expected 200; GET http://pki\.test/other\.crt: got HTTP 404"
    ):
        _collect(leaf, FakeFetcher({}))
    # each fetch is given what is left; an answer that comes after the budget is refused
    slow = FakeFetcher({INT_URL: INTERMEDIATE.der}, cost=6.0)
    with pytest.raises(ParseError, match="took longer than the time left"):
        _collect(leaf, slow, budget=5.0)
    assert slow.asked[0][2] == 5.0
    # the first URL (404) spends the budget: the second is not asked
    spent = FakeFetcher({"http://pki.test/other.crt": INTERMEDIATE.der}, cost=5.0)
    with pytest.raises(
        NetworkError, match=r"other\.crt: not fetched, the time for the AK certificate's issuers is spent"
    ):
        _collect(leaf, spent, budget=5.0)
    assert [u for u, _, _ in spent.asked] == [INT_URL]
    # the time spent by the first hop: the second hop asks nothing
    upper = _ca("Upper", ROOT, "http://pki.test/root.crt")
    lower = _ca("Lower", upper, "http://pki.test/upper.crt")
    hops = FakeFetcher(
        {"http://pki.test/lower.crt": lower.der, "http://pki.test/upper.crt": upper.der}, cost=5.0
    )
    with pytest.raises(NetworkError, match=r"the issuer of issuer 1 \(CN=Lower\) could not be had"):
        _collect(_leaf(lower, "http://pki.test/lower.crt"), hops, budget=5.0)
    assert len(hops.asked) == 1


# --- HttpIssuerFetcher -------------------------------------------------------------------------


def _fetch(handler: httpx2.MockTransport, *, within: float = 5.0) -> bytes:
    return HttpIssuerFetcher(transport=handler).fetch(INT_URL, limit=MAX_ISSUER_SIZE, within=within)


def test_http_fetcher() -> None:
    asked: list[str] = []

    def honest(request: httpx2.Request) -> httpx2.Response:
        asked.append(str(request.url))
        return httpx2.Response(200, content=INTERMEDIATE.der)

    assert _fetch(httpx2.MockTransport(honest)) == INTERMEDIATE.der and asked == [INT_URL]
    with pytest.raises(NetworkError, match="got HTTP 404, expected 200"):
        _fetch(httpx2.MockTransport(lambda r: httpx2.Response(404)))
    redirect = httpx2.MockTransport(
        lambda r: httpx2.Response(302, headers={"location": "http://elsewhere.test/"})
    )
    with pytest.raises(NetworkError, match="got HTTP 302, expected 200"):  # not followed
        _fetch(redirect)

    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    with pytest.raises(NetworkError, match="ConnectError: connection refused"):
        _fetch(httpx2.MockTransport(down))


def test_http_fetcher_refuses_oversized_and_slow_answers() -> None:
    big = httpx2.MockTransport(lambda r: httpx2.Response(200, content=b"\x30" * (MAX_ISSUER_SIZE + 1)))
    with pytest.raises(
        ParseError, match=f"declares {MAX_ISSUER_SIZE + 1} bytes, more than {MAX_ISSUER_SIZE}"
    ):
        _fetch(big)

    def undeclared(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=iter([b"\x30" * 4096] * 9))  # streamed, no Content-Length

    with pytest.raises(ParseError, match=f"is larger than {MAX_ISSUER_SIZE} bytes"):
        _fetch(httpx2.MockTransport(undeclared))

    def trickle() -> Iterator[bytes]:
        for _ in range(5):
            time.sleep(0.05)
            yield b"\x30"

    with pytest.raises(ParseError, match=r"took more than 0.02 s to arrive"):
        _fetch(httpx2.MockTransport(lambda r: httpx2.Response(200, content=trickle())), within=0.02)


def test_google_ak_certificate_names_its_issuer_url() -> None:
    """Google's real AK certificate (go-tpm-tools' test attestation) names its intermediate at pki.goog."""
    att = parse_gce_attestation((ASSETS / "gce-cos-85-nonce9009.pb").read_bytes())
    ak = x509.load_der_x509_certificate(att.ak_cert)
    assert ca_issuer_urls(ak) == ["https://pki.goog/cloud_integrity/tpm_ek_intermediate_2.crt"]
    assert att.intermediate_certs == ()


def test_nothing_is_fetched_when_the_shipped_intermediates_chain() -> None:
    """Google's real AK certificate chains through ``google_vtpm_intermediates.pem`` (which the
    verifier has too): nothing is fetched, so a VM without a route to pki.goog does not wait on
    it, and the answer is kept."""
    att = parse_gce_attestation((ASSETS / "gce-cos-85-nonce9009.pb").read_bytes())
    fetcher = FakeFetcher({})
    provider = GceTpmQuoteProvider(event_log=None, issuer_fetcher=fetcher)
    assert provider._issuers(att.ak_cert) == ()
    assert provider._issuers(att.ak_cert) == ()
    assert fetcher.asked == []


# --- the provider on swtpm -------------------------------------------------------------------------


GOOGLE = FakeGoogle.make()


def _aia_ak_cert(google: FakeGoogle, key: object, url: str) -> bytes:
    cert = x509.load_der_x509_certificate(google.ak_cert(key))  # type: ignore[arg-type]
    return _der(
        issue(
            x509.Name([]), cert.public_key(), issuer=google.intermediate.subject,  # type: ignore[arg-type]
            signing_key=google.intermediate_key, not_before=NOT_BEFORE, not_after=NOT_AFTER, ca=False,
            usage=key_usage(cert_sign=False, digital_signature=True),
            extensions=[*(e.value for e in cert.extensions if not isinstance(e.value, x509.KeyUsage)
                          and not isinstance(e.value, x509.BasicConstraints)), _aia(url)],
            hash_algorithm=hashes.SHA256(),
        )
    )  # fmt: skip


def test_the_provider_sends_what_it_fetched(swtpm_tpm: Tpm) -> None:
    from datetime import UTC, datetime

    key = provision_gce_vtpm(swtpm_tpm, GOOGLE)
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=_aia_ak_cert(GOOGLE, key, INT_URL))
    fetcher = FakeFetcher({INT_URL: GOOGLE.intermediate_der})
    try:
        provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, issuer_fetcher=fetcher, roots=[GOOGLE.root])
        first = provider.get_evidence(REPORT_DATA)
        second = provider.get_evidence(REPORT_DATA)
        # fetched from a URL that does not answer: the shipped (Google's) intermediates do not
        # chain a test AK certificate, so this is an error, not a warning
        failing = GceTpmQuoteProvider(
            swtpm_tpm, event_log=None, issuer_fetcher=FakeFetcher({}), roots=[GOOGLE.root]
        )
        with pytest.raises(NetworkError, match="the issuer of the AK certificate could not be had"):
            failing.get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)
    assert len(fetcher.asked) == 1  # kept for the provider's life
    for evidence in (first, second):
        assert parse_gce_attestation(evidence.raw).intermediate_certs == (GOOGLE.intermediate_der,)
        verify_gce_attestation(
            evidence.raw, at=datetime.now(UTC), expected_nonce=REPORT_DATA, roots=[GOOGLE.root]
        )


def test_the_given_intermediates_come_first_and_are_not_repeated(swtpm_tpm: Tpm) -> None:
    key = provision_gce_vtpm(swtpm_tpm, GOOGLE)
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=_aia_ak_cert(GOOGLE, key, INT_URL))
    other = _ca("Other", None).der
    try:
        provider = GceTpmQuoteProvider(
            swtpm_tpm, event_log=None, intermediates=[other, GOOGLE.intermediate_der],
            issuer_fetcher=FakeFetcher({INT_URL: GOOGLE.intermediate_der}), roots=[GOOGLE.root],
        )  # fmt: skip
        raw = provider.get_evidence(REPORT_DATA).raw
    finally:
        clear_gce_indices(swtpm_tpm)
    assert parse_gce_attestation(raw).intermediate_certs == (other, GOOGLE.intermediate_der)


def test_a_malformed_name_in_the_ak_certificate_is_a_parse_error() -> None:
    """Names are parsed lazily: a mangled issuer name is the AK certificate's ParseError before
    anything is fetched, not a ValueError in the middle of the collection."""
    cert = parse_gce_attestation((ASSETS / "gce-cos-85-nonce9009.pb").read_bytes()).ak_cert
    with long_names():
        issuer = x509.load_der_x509_certificate(cert).issuer.public_bytes()
    mangled = bytearray(cert)
    mangled[cert.index(issuer) + 12] = 0x00  # inside the issuer's first attribute
    fetcher = FakeFetcher({})
    with pytest.raises(ParseError, match=r"AK certificate: not a valid DER X\.509 certificate"):
        GceTpmQuoteProvider(event_log=None, issuer_fetcher=fetcher)._issuers(bytes(mangled))
    assert fetcher.asked == []
