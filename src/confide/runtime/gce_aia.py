"""The GCE AK certificate's issuing CAs, collected from their AIA caIssuers URLs, as go-tpm-tools'
client does (``AttestOpts.CertChainFetcher``), for field 7 ``intermediate_certs``.

The runtime only collects: the verifier (:mod:`confide.verify.gce_tpm`) decides trust. Starting
at the AK certificate, while the certificate at hand is not signed by a pinned Google root:

1. Its Authority Information Access caIssuers URLs (RFC 5280 §4.2.2.1) are read, at most
   :data:`MAX_URLS` of them (go-tpm-tools' ``maxIssuingCertificateURLs``); only ``http`` and
   ``https`` URLs are asked. The AK certificate naming none: nothing is collected.
2. Each URL in turn is fetched through the injected :class:`IssuerFetcher` (the real one,
   :class:`HttpIssuerFetcher`, over ``httpx2``: no redirects, at most :data:`MAX_ISSUER_SIZE`
   bytes), within what is left of :data:`FETCH_TIME` seconds for the whole collection
   (monotonic clock). The answer must be one certificate, DER or PEM, named as the issuer of
   the certificate at hand and whose signature on it verifies; the first URL that gives one
   wins, the next is tried otherwise.
3. A certificate collected twice is a loop; more than :data:`MAX_HOPS` issuers, or no URL
   giving the issuer (once the time is spent, no further URL is asked), is an error (the class
   of the last URL's failure: :class:`NetworkError`
   for what could not be fetched, :class:`ParseError` for an answer too large, too slow or not
   one certificate, :class:`CertificateChainError` for a certificate that is not the issuer or
   a loop). A fetched issuer naming no caIssuers URL ends the collection: what was collected
   is sent, and the verifier may still chain it through what it ships.

What :class:`~confide.runtime.gce_tpm.GceTpmQuoteProvider` does with a failure (an error, or a
warning when the shipped intermediates already chain the AK certificate) is its business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from confide.errors import CertificateChainError, ConfideError, NetworkError, ParseError
from confide.httpbody import answer_client, fetch
from confide.verify.x509util import load_certificate_chain, name_of, verify_issued_by

__all__ = [
    "FETCH_TIME",
    "MAX_HOPS",
    "MAX_ISSUER_SIZE",
    "MAX_URLS",
    "HttpIssuerFetcher",
    "IssuerFetcher",
    "ca_issuer_urls",
    "collect_issuers",
    "signed_by_one_of",
]

MAX_ISSUER_SIZE = 32 * 1024
"""The largest answer read for one issuer (bytes): Google's intermediates are under 2 KiB."""
MAX_HOPS = 3
"""At most this many issuers are collected above the AK certificate (go-tpm-tools allows 4)."""
MAX_URLS = 3
"""At most this many caIssuers URLs of one certificate are tried (go-tpm-tools: 3)."""
FETCH_TIME = 20.0
"""Seconds for the whole collection, every hop and URL together."""
PER_FETCH_TIMEOUT = 10.0
"""Seconds a connection or a read of one fetch may wait (within what is left of FETCH_TIME)."""
_SCHEMES = ("http", "https")


class IssuerFetcher(Protocol):
    """Fetches the bytes at a caIssuers URL."""

    def fetch(self, url: str, *, limit: int, within: float) -> bytes:
        """The body at ``url``: at most ``limit`` bytes, all of it within ``within`` seconds.
        :class:`NetworkError` when it cannot be had (no connection, a status other than 200),
        :class:`ParseError` when it is larger or slower than that."""
        ...


class HttpIssuerFetcher:
    """:class:`IssuerFetcher` over ``httpx2`` (``transport``: any ``httpx2.BaseTransport``, for
    tests). Redirects are not followed (Google serves its CA certificates directly); a
    proxy from the environment is used, as for any other fetch of public collateral."""

    def __init__(self, *, transport: httpx2.BaseTransport | None = None) -> None:
        self.transport = transport

    def fetch(self, url: str, *, limit: int, within: float) -> bytes:
        timeout = max(min(PER_FETCH_TIMEOUT, within), 0.001)
        where = f"issuer certificate at {url}"

        def status(response: httpx2.Response) -> None:
            if response.status_code != 200:
                raise NetworkError(f"GET {url}: got HTTP {response.status_code}, expected 200")

        try:
            with answer_client(timeout=timeout, follow_redirects=False, transport=self.transport) as client:
                return fetch(
                    client, "GET", url, limit=limit, within=within, check=status,
                    too_large=lambda how: ParseError(f"the answer {how}", structure=where),
                ).content  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"GET {url}: {type(exc).__name__}: {exc}") from None


def ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    """The certificate's AIA caIssuers URIs, in order (none: no AIA extension, or none of that
    method). A malformed extension is a :class:`CertificateChainError`."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateChainError(f"{name_of(cert)}: malformed extension: {exc}") from None
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def signed_by_one_of(cert: x509.Certificate, issuers: Sequence[x509.Certificate]) -> bool:
    """Whether one of ``issuers`` is named as ``cert``'s issuer and its signature on it verifies."""
    for issuer in issuers:
        if issuer.subject != cert.issuer:
            continue
        try:
            verify_issued_by(cert, issuer, "issuer")
        except CertificateChainError:
            continue
        return True
    return False


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _label(cert: x509.Certificate, hop: int) -> str:
    return "the AK certificate" if hop == 0 else f"issuer {hop} ({name_of(cert)})"


def collect_issuers(
    ak_cert: x509.Certificate,
    fetcher: IssuerFetcher,
    roots: Sequence[x509.Certificate],
    *,
    budget: float = FETCH_TIME,
    clock: Callable[[], float] = time.monotonic,
) -> list[bytes]:
    """The DER issuers above ``ak_cert`` up to one signed by one of ``roots`` (not included),
    collected from their caIssuers URLs (module docstring); raises as it says."""
    deadline = clock() + budget
    seen = {_der(ak_cert)}
    collected: list[bytes] = []
    current = ak_cert
    while not signed_by_one_of(current, roots):
        urls = ca_issuer_urls(current)
        if not urls:
            return collected
        if len(collected) == MAX_HOPS:
            raise CertificateChainError(
                f"the AK certificate's issuers: {_label(current, len(collected))} is not signed by a"
                f" pinned Google root after {MAX_HOPS} issuers fetched from their caIssuers URLs"
            )
        issuer = _fetch_issuer(current, len(collected), urls[:MAX_URLS], fetcher, deadline, clock)
        der = _der(issuer)
        if der in seen:
            raise CertificateChainError(
                f"the AK certificate's issuers: the caIssuers URL of {_label(current, len(collected))}"
                f" gave {name_of(issuer)}, already in the chain (a loop)"
            )
        seen.add(der)
        collected.append(der)
        current = issuer
    return collected


def _fetch_issuer(
    cert: x509.Certificate,
    hop: int,
    urls: Sequence[str],
    fetcher: IssuerFetcher,
    deadline: float,
    clock: Callable[[], float],
) -> x509.Certificate:
    """The issuer of ``cert`` from the first of ``urls`` that gives it (none is asked once the
    time is spent)."""
    reasons: list[str] = []
    last: ConfideError | None = None
    for url in urls:
        if clock() >= deadline:
            reasons.append(f"{url}: not fetched, the time for the AK certificate's issuers is spent")
            break
        try:
            return _issuer_from(cert, url, fetcher, deadline, clock)
        except ConfideError as exc:
            reasons.append(exc.message)
            last = exc
    message = (
        f"the issuer of {_label(cert, hop)} could not be had from its caIssuers URLs: {'; '.join(reasons)}"
    )
    if isinstance(last, ParseError):
        raise ParseError(message)
    raise (NetworkError if last is None else type(last))(message)


def _issuer_from(
    cert: x509.Certificate, url: str, fetcher: IssuerFetcher, deadline: float, clock: Callable[[], float]
) -> x509.Certificate:
    scheme = urlsplit(url).scheme.lower() if url.isascii() else ""
    if scheme not in _SCHEMES:
        raise CertificateChainError(f"{url!r}: not an http or https URL, not fetched")
    data = fetcher.fetch(url, limit=MAX_ISSUER_SIZE, within=deadline - clock())
    if clock() > deadline:
        raise ParseError("took longer than the time left for the AK certificate's issuers", structure=url)
    certs = load_certificate_chain(data, f"answer of {url}")
    if len(certs) != 1:
        raise ParseError(f"got {len(certs)} certificates, expected 1", structure=f"answer of {url}")
    issuer = certs[0]
    if issuer.subject != cert.issuer:
        raise CertificateChainError(
            f"{url}: got {name_of(issuer)}, not the issuer of {name_of(cert) or 'the certificate'}"
        )
    verify_issued_by(cert, issuer, url)
    return issuer
