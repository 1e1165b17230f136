"""OCSP responses (RFC 6960) for the NVIDIA GPU chains the CAS verifies (``cas serve
--nvidia-ocsp URL|DIR``), fetched from an :class:`~confide.collateral.nvidia_ocsp.OcspSource`
and cached in memory.

:class:`OcspCache` answers "the response about this certificate, usable at ``at``": a cached one,
else one fetched from the source. What it stores and for how long:

- Only a response that :func:`confide.verify.ocsp.verify_ocsp_response` found ``good`` at ``at``
  when it was fetched. A revoked, unknown or unverifiable answer and a failed fetch raise, and are
  not cached as answers (the next attestation's prefetch asks again: the CAS fails closed, it
  never falls back to "not checked").
- Keyed by (SHA-256 of the issuer's SubjectPublicKeyInfo, serial number): the issuer key and
  serial that an RFC 6960 §4.1.1 ``CertID`` names.
- Used while ``stored_at`` ≤ ``at`` < ``expires``, where ``expires`` is the response's
  ``nextUpdate`` (§2.4, §4.2.2.1: newer information is due then; an entry is never used at or
  after it), or ``stored_at`` + :data:`NO_NEXT_UPDATE_TTL` (5 minutes) for a response without
  ``nextUpdate`` (accepted at all only because it carried the request's nonce, §4.4.1, so it
  said something about the moment it was made and nothing later). A clock set back before
  ``stored_at`` misses too.
- At most ``max_entries`` entries (:data:`MAX_ENTRIES` by default), least recently used dropped.

Every response handed out, cached or fresh, is verified once more by the caller
(:func:`confide.verify.nvidia.verify_nvidia_report` at the attestation's ``at``); the cache only
decides when to ask again. The time is the caller's ``at`` (the CAS's injected clock): nothing
here reads a clock.

Blocking: a fetch goes to the network. The CAS's event loop does not wait for one: an
attestation whose responses are not all cached first runs :meth:`OcspCache.prefetch` in a
worker thread (``PlatformVerifier.collateral_job``), which returns each response or the error
it ran into; they are handed to that attestation's phase 1 directly
(:class:`~confide.cas.verifier.Prefetched`), so phase 1 does not need them to be still in memory
(a ``nextUpdate`` may pass, or more than ``max_entries`` others be fetched, in between) and never
asks the responder on the loop. :meth:`OcspCache.get` (the cached response, else the error of a
fetch in the last :data:`FAILURE_GRACE` seconds of a monotonic clock, injectable, else a
blocking fetch) is for callers that ran no prefetch. Attestations that miss the same response
at the same time may each ask the responder.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.cas.fetch_stats import FetchStats
from confide.collateral.nvidia_ocsp import OcspSource
from confide.errors import ConfideError
from confide.lru import Lru
from confide.verify.ocsp import OcspResponse, verify_ocsp_response

__all__ = ["FAILURE_GRACE", "MAX_ENTRIES", "NO_NEXT_UPDATE_TTL", "OcspCache", "ocsp_key"]

NO_NEXT_UPDATE_TTL = timedelta(minutes=5)
MAX_ENTRIES = 4096
FAILURE_GRACE = 30.0
"""Seconds (monotonic clock) after a failed fetch during which :meth:`OcspCache.get` reports its
error instead of asking again; a prefetch always asks again."""


@dataclass(frozen=True, slots=True)
class _Entry:
    response: OcspResponse
    stored_at: datetime
    expires: datetime


class OcspCache:
    """Good OCSP responses by (issuer key, serial), in memory, until their ``nextUpdate`` (see
    the module docstring). Thread-safe: attestations run it from worker threads. ``fetches``
    counts what was asked of the source."""

    def __init__(
        self,
        source: OcspSource,
        *,
        max_entries: int = MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.monotonic = monotonic
        self._entries: Lru[tuple[bytes, int], _Entry] = Lru(max_entries)
        self._count_lock = threading.Lock()
        self._failures: Lru[tuple[bytes, int], tuple[float, ConfideError]] = Lru(max_entries)
        self.fetches = 0
        self.stats = FetchStats()  # the source's calls, timed, with their outcome (/metrics)

    def __len__(self) -> int:
        return len(self._entries)

    def prefetch(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime
    ) -> OcspResponse | ConfideError:
        """Blocking (run it off the event loop): bring a good response into memory unless one is
        there, and return it (for phase 1 of the attestation that asked:
        ``PlatformVerifier.collateral_job``), or the error of the fetch (also kept for
        :meth:`get`), not raised here."""
        cached = self.cached(cert, issuer, at=at)
        if cached is not None:
            return cached
        try:
            return self.fetch(cert, issuer, at=at)
        except ConfideError as exc:
            return copy.copy(exc)

    def get(self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime) -> OcspResponse:
        """For callers that ran no prefetch (a CAS's phase 1 takes what its prefetch returned):
        the cached response; else the error of the fetch tried in the last
        :data:`FAILURE_GRACE`; else :meth:`fetch` (blocking)."""
        cached = self.cached(cert, issuer, at=at)
        if cached is not None:
            return cached
        failed = self._failures.get(ocsp_key(cert, issuer))
        if failed is not None and self.monotonic() - failed[0] < FAILURE_GRACE:
            raise copy.copy(failed[1])
        return self.fetch(cert, issuer, at=at)

    def cached(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime
    ) -> OcspResponse | None:
        """The cached response about ``cert`` usable at ``at`` (module docstring), or ``None``."""
        entry = self._entries.get(ocsp_key(cert, issuer))
        if entry is None or not entry.stored_at <= at < entry.expires:
            return None
        return entry.response

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime) -> OcspResponse:
        """A fresh response about ``cert`` from the source, verified good at ``at``, then
        cached. ``issuer`` must be verified (a link of a chain to a pinned root): the source is
        asked about it. Raises what the source or the verification raises
        (``RevocationError`` for a revoked or unknown certificate)."""
        with self._count_lock:
            self.fetches += 1
        key = ocsp_key(cert, issuer)
        try:
            with self.stats.timed():
                fetched = self.source.fetch(cert, issuer)
            check = verify_ocsp_response(fetched, cert, issuer, at=at)
        except ConfideError as exc:
            self._failures.put(key, (self.monotonic(), copy.copy(exc)))
            raise
        expires = check.next_update if check.next_update is not None else at + NO_NEXT_UPDATE_TTL
        self._entries.put(key, _Entry(fetched, at, expires))
        return fetched


def ocsp_key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
    """(SHA-256 of the issuer's SubjectPublicKeyInfo, serial number): what a CertID names."""
    return _key_hash(issuer), cert.serial_number


@functools.lru_cache(maxsize=256)
def _key_hash(issuer: x509.Certificate) -> bytes:
    # Memoised per issuer certificate (hashed and compared by its DER): the same few
    # intermediates come with every GPU's chain.
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()
