"""Google's CRLs for ``gce-tpm`` evidence: ``cas serve --gce-crl FILE|fetch`` (docs/gce-tpm.md,
"Revocation (CRLs)"). ``fetch``: :class:`GceCrlFetcher` (below); a file: :class:`GceCrlFile`.

The file holds the CRLs of the CAs above GCE AK certificates (DER, concatenated, or PEM ``X509
CRL`` blocks; at most :data:`MAX_FILE_SIZE` bytes and
:data:`~confide.verify.gce_crl.MAX_CRLS` CRLs), as Google publishes them at the CRL
Distribution Points its certificates name. It is read before phase 1 of every ``gce-tpm``
attestation (:meth:`confide.cas.verifier.PlatformVerifier.collateral_job`), parsed again only
when it changed (device, inode, size or modification time), so an operator replaces it
atomically (write, then rename) while the CAS runs. What it holds is verified at every use
(:mod:`confide.verify.gce_crl`: signed by the certificate's issuer, current at the attestation's
time, fail closed when a certificate's CRL is missing); a file that cannot be read or parsed
refuses every ``gce-tpm`` attestation with its error until it is fixed.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide.cas.fetch_cache import FetchCache
from confide.errors import (
    CollateralError,
    CollateralMissingError,
    ConfideError,
    NetworkError,
    ParseError,
    StorageError,
)
from confide.httpbody import AnswerDeadline, read_body
from confide.lru import Lru
from confide.verify.gce_crl import crl_dp_urls, crl_is_current, iso_z, load_crls
from confide.verify.x509util import check_crl, name_of

__all__ = [
    "CACHE_ENTRIES",
    "FAILURE_GRACE",
    "MAX_CRL_SIZE",
    "MAX_FILE_SIZE",
    "GceCrlFetcher",
    "GceCrlFile",
    "gce_crl_source",
]

MAX_FILE_SIZE = 16 * 1024 * 1024
"""The largest ``--gce-crl`` file read (bytes)."""


class GceCrlFile:
    """The CRLs of ``path`` (module docstring), kept parsed while the file does not change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._kept: tuple[tuple[int, int, int, int], tuple[x509.CertificateRevocationList, ...]] | None = None

    def load(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The CRLs now in the file: :class:`StorageError` when it cannot be read,
        :class:`ParseError` when it is too large or not CRLs."""
        what = f"--gce-crl {str(self.path)!r}"
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                with self._lock:
                    kept = self._kept
                if kept is not None and kept[0] == stamp:
                    return kept[1]
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            raise StorageError(f"{what}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise ParseError(f"more than {MAX_FILE_SIZE} bytes", structure=what)
        crls = load_crls(data, what)
        with self._lock:
            self._kept = (stamp, crls)
        return crls


MAX_CRL_SIZE = 1024 * 1024
"""The largest CRL fetched from a distribution point (bytes)."""
MAX_POINTS = 3
"""At most this many distribution point URLs of one certificate are asked."""
FETCH_TIME = 30.0
"""Seconds one CRL's answer may take in all."""
CACHE_ENTRIES = 64
"""CRLs kept in memory (by a certificate's points and issuer), each until its nextUpdate."""
NEWEST_ENTRIES = 1024
"""Certificates (by points and issuer) whose newest fetched CRL's thisUpdate is remembered."""
FAILURE_GRACE = 30.0
"""Seconds for which a failed fetch's error is given again without asking the points (as
AMD KDS's, :data:`confide.cas.kds.FAILURE_GRACE`)."""

_Key = tuple[tuple[str, ...], bytes]
"""A certificate's distribution point URLs and its issuer's DER: a CRL fetched for one issuer is
never handed out for another's certificate naming the same URL."""


def _key(urls: Sequence[str], issuer: x509.Certificate) -> _Key:
    return tuple(urls), issuer.public_bytes(Encoding.DER)


class GceCrlFetcher:
    """``cas serve --gce-crl fetch``: the CRLs at the http(s) CRL Distribution Points of a
    *verified* AK chain's certificates (:func:`confide.verify.gce_tpm.verified_ak_chain`: the
    CAS asks nothing about certificates a request made up), fetched over ``httpx2``
    (``transport``: any ``httpx2.BaseTransport``, for tests; no redirects; at most
    :data:`MAX_CRL_SIZE` bytes within :data:`FETCH_TIME` seconds, head and body). A fetched CRL
    is kept (by the certificate's points and its issuer, at most :data:`CACHE_ENTRIES`) only
    when it is issued and signed by the certificate's issuer, and used while it is current
    (thisUpdate ≤ at ≤ nextUpdate): its nextUpdate bounds the cache. For each certificate the
    first point giving such a CRL wins; none: the last point's error (the reasons of all), a
    certificate naming no http(s) point: :class:`CollateralMissingError`. The verifier checks
    what it returns again.

    One fetch per certificate at a time (:class:`~confide.cas.fetch_cache.FetchCache`): the
    attestations that need it meanwhile wait for its outcome instead of asking the points
    again; a failed fetch's error is given again for :data:`FAILURE_GRACE` seconds
    (``monotonic``) without asking."""

    def __init__(
        self,
        *,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # No connection kept alive: each fetch's AnswerDeadline must see its connection made.
        self._client = httpx2.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            limits=httpx2.Limits(max_keepalive_connections=0),
        )
        self._lock = threading.Lock()
        self._memory: FetchCache[_Key, x509.CertificateRevocationList] = FetchCache(
            CACHE_ENTRIES, crl_is_current, grace=FAILURE_GRACE, monotonic=monotonic
        )
        self.stats = self._memory.stats
        # The newest thisUpdate fetched per certificate's points and issuer: an older CRL after
        # it is refused (a network attacker's rollback to before a revocation), even once the
        # kept CRL has fallen due or was dropped. Lost on restart.
        self._newest: Lru[_Key, datetime] = Lru(NEWEST_ENTRIES)

    @property
    def requests_made(self) -> int:
        """GETs of distribution points so far."""
        return self._memory.fetches

    def close(self) -> None:
        self._client.close()

    def cached(
        self, chain: Sequence[x509.Certificate], at: datetime
    ) -> tuple[x509.CertificateRevocationList, ...] | None:
        """The current CRLs for every certificate of ``chain`` below its root, from memory
        alone (no I/O); ``None`` when one is missing."""
        out = []
        for cert, issuer in itertools.pairwise(chain):
            crl = self._memory.cached(_key(crl_dp_urls(cert)[:MAX_POINTS], issuer), at)
            if crl is None:
                return None
            out.append(crl)
        return tuple(out)

    def crls(
        self, chain: Sequence[x509.Certificate], at: datetime
    ) -> tuple[x509.CertificateRevocationList, ...]:
        """The current CRLs for every certificate of ``chain`` (verified, leaf first, root
        last) below its root, fetching what memory does not hold (blocking)."""
        return tuple(self._crl_for(cert, issuer, at) for cert, issuer in itertools.pairwise(chain))

    def _crl_for(
        self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime
    ) -> x509.CertificateRevocationList:
        urls = crl_dp_urls(cert)[:MAX_POINTS]
        if not urls:
            raise CollateralMissingError(
                f"certificate {name_of(cert)!r} names no http(s) CRL Distribution Point: its revocation"
                " cannot be checked (--gce-crl fetch)"
            )
        return self._memory.get(_key(urls, issuer), at, lambda: self._load(cert, urls, issuer))

    def _load(
        self, cert: x509.Certificate, urls: Sequence[str], issuer: x509.Certificate
    ) -> x509.CertificateRevocationList:
        failures: list[ConfideError] = []
        key = _key(urls, issuer)
        for url in urls:
            try:
                crl = self._memory.ask(lambda url=url: self._fetch(url, issuer))  # type: ignore[misc]
                self._not_older(key, crl, url)
                return crl
            except ConfideError as exc:
                failures.append(exc)
        last = failures[-1]
        message = f"Google's CRL for {name_of(cert)!r}: " + "; ".join(f.message for f in failures)
        if isinstance(last, ParseError):
            raise ParseError(message)
        raise type(last)(message)

    def _not_older(self, key: _Key, crl: x509.CertificateRevocationList, url: str) -> None:
        """Refuse ``crl`` when one with a later thisUpdate was fetched for ``key`` before; else
        remember its thisUpdate."""
        this_update = crl.last_update_utc
        with self._lock:
            newest = self._newest.get(key)
            if newest is not None and this_update < newest:
                raise CollateralError(
                    f"CRL at {url}: thisUpdate {iso_z(this_update)} is older than that of the CRL"
                    f" fetched for this certificate before ({iso_z(newest)}): a rollback, refused"
                )
            self._newest.put(key, this_update)

    def _fetch(self, url: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        what = f"CRL at {url}"
        try:
            # FETCH_TIME for the whole answer, its head too (read_body's within counts the body)
            with (
                AnswerDeadline(FETCH_TIME) as deadline,
                self._client.stream("GET", url, extensions={"trace": deadline.trace}) as response,
            ):
                if response.status_code != 200:
                    raise NetworkError(f"GET {url}: got HTTP {response.status_code}, expected 200")
                data = read_body(
                    response, MAX_CRL_SIZE, lambda how: ParseError(f"the answer {how}", structure=what),
                    within=FETCH_TIME,
                )  # fmt: skip
        except httpx2.HTTPError as exc:
            if deadline.expired:
                slow = f"the answer took more than {FETCH_TIME:g} s to arrive"
                raise ParseError(slow, structure=what) from None
            raise NetworkError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        crls = load_crls(data, what)
        if len(crls) != 1:
            raise ParseError(f"got {len(crls)} CRLs, expected 1", structure=what)
        check_crl(crls[0], issuer, what, scope_checked=True)  # not kept unless its issuer made it
        return crls[0]


def gce_crl_source(value: str) -> GceCrlFile | GceCrlFetcher:
    """``--gce-crl``'s value: ``fetch``, else a file (``./fetch`` for a file of that name)."""
    if value == "fetch":
        return GceCrlFetcher()
    return GceCrlFile(Path(value))
