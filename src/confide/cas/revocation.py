"""OCSP responses (RFC 6960) for the NVIDIA GPU chains the CAS verifies (``cas serve
--nvidia-ocsp URL|DIR``), fetched from an :class:`~confide.collateral.nvidia_ocsp.OcspSource`
and cached in memory and, for a responder URL, on disk (``DATA_DIR/ocsp-cache``).

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

On disk (``directory``; ``None``: memory only), so that a restarted CAS does not need the
responder for what it verified before: each good response that has a ``nextUpdate`` is written,
as the responder's DER, to ``directory/<issuer key hash>-<serial>.der`` (atomically: a temporary
file, fsync, rename; at most ``disk_entries``, :data:`DISK_ENTRIES` by default, the oldest
removed). A response without ``nextUpdate`` is never written: it was accepted only for the nonce
of the request it answered, which says nothing after that moment. The files are hostile: a memory
miss reads the file of its key (in the worker thread of the prefetch, never on the event loop)
and verifies it exactly as a fresh response is verified (:func:`verify_ocsp_response` at ``at``:
size and DER, ``successful``, one ``SingleResponse`` whose ``CertID`` names this certificate and
issuer, the signer the issuer or a delegated responder it authorised, valid at ``at``, the
signature, ``thisUpdate``/``nextUpdate`` against ``at``, status ``good``), without a nonce: the
nonce of the request it once answered proves nothing now, so, as for a stored response
(``--nvidia-ocsp DIR``), its ``nextUpdate`` bounds its use. A file that does not pass (tampered,
another certificate's, expired, not yet valid at ``at``, revoked, malformed, too large) is not
used and is removed (``rejected_files`` counts them), and the source is asked; one that cannot be
read is not used either (logged, left in place). (Reading, removing and writing the files:
:class:`~confide.cas.cache_files.CacheFiles`, shared with the RIM cache.)

Every response handed out, cached or fresh, is verified once more by the caller
(:func:`confide.verify.nvidia.verify_nvidia_report` at the attestation's ``at``); the cache only
decides when to ask again. The time is the caller's ``at`` (the CAS's injected clock): nothing
here reads a clock.

Blocking: a fetch reads the disk, then goes to the network. The CAS's event loop does not wait for one: an
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
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.cas.cache_files import CacheFiles, Log
from confide.cas.fetch_stats import FetchStats
from confide.collateral.nvidia_ocsp import OcspSource
from confide.errors import ConfideError
from confide.lru import Lru
from confide.policy._types import option_duration
from confide.verify.ocsp import MAX_RESPONSE_SIZE, OcspResponse, verify_ocsp_response

__all__ = [
    "DISK_ENTRIES",
    "FAILURE_GRACE",
    "MAX_ENTRIES",
    "MAX_STAPLED_MAX_AGE",
    "MIN_STAPLED_MAX_AGE",
    "NO_NEXT_UPDATE_TTL",
    "STAPLED",
    "OcspCache",
    "ocsp_key",
    "parse_stapled_max_age",
]

log = logging.getLogger("confide.cas")

NO_NEXT_UPDATE_TTL = timedelta(minutes=5)
MAX_ENTRIES = 4096
DISK_ENTRIES = 4096
"""Response files kept in the disk directory; past that the oldest are removed."""
STAPLED = "stapled"
"""``cas serve --nvidia-ocsp stapled``: no source; stapled responses only (``confide.cas.verifier``)."""
MIN_STAPLED_MAX_AGE = timedelta(minutes=1)
MAX_STAPLED_MAX_AGE = timedelta(days=30)
FAILURE_GRACE = 30.0
"""Seconds (monotonic clock) after a failed fetch during which :meth:`OcspCache.get` reports its
error instead of asking again; a prefetch always asks again."""


@dataclass(frozen=True, slots=True)
class _Entry:
    response: OcspResponse
    stored_at: datetime
    expires: datetime


class OcspCache:
    """Good OCSP responses by (issuer key, serial), in memory and in ``directory`` (``None``:
    memory only), until their ``nextUpdate`` (see the module docstring). Thread-safe:
    attestations run it from worker threads. ``fetches`` counts what was asked of the source,
    ``rejected_files`` the files of ``directory`` that did not verify (removed)."""

    def __init__(
        self,
        source: OcspSource,
        *,
        directory: Path | None = None,
        max_entries: int = MAX_ENTRIES,
        disk_entries: int = DISK_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = CacheFiles(directory, "*.der", disk_entries, max_size=MAX_RESPONSE_SIZE)
        self.source = source
        self.directory = directory
        self.disk_entries = disk_entries
        self.monotonic = monotonic
        self._entries: Lru[tuple[bytes, int], _Entry] = Lru(max_entries)
        self._count_lock = threading.Lock()
        self._failures: Lru[tuple[bytes, int], tuple[float, ConfideError]] = Lru(max_entries)
        self.fetches = 0
        self.stats = FetchStats()  # the source's calls, timed, with their outcome (/metrics)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def rejected_files(self) -> int:
        """Files of the disk directory that did not verify (removed)."""
        return self.files.rejected

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
        """Blocking: the response about ``cert`` from the disk (verified at ``at``), else a
        fresh one from the source, verified good at ``at``, then cached (in memory, and on disk
        when it has a ``nextUpdate``). ``issuer`` must be verified (a link of a chain to a
        pinned root): the source is asked about it. Raises what the source or the verification
        raises (``RevocationError`` for a revoked or unknown certificate)."""
        key = ocsp_key(cert, issuer)
        stored = self._from_disk(key, cert, issuer, at)
        if stored is not None:
            return stored
        with self._count_lock:
            self.fetches += 1
        try:
            with self.stats.timed():
                fetched = self.source.fetch(cert, issuer)
            check = verify_ocsp_response(fetched, cert, issuer, at=at)
        except ConfideError as exc:
            self._failures.put(key, (self.monotonic(), copy.copy(exc)))
            raise
        expires = check.next_update if check.next_update is not None else at + NO_NEXT_UPDATE_TTL
        self._entries.put(key, _Entry(fetched, at, expires))
        if check.next_update is not None:
            self._to_disk(key, fetched.der)
        return fetched

    # -- disk (blocking: worker threads only) -----------------------------------------------------

    @staticmethod
    def _name(key: tuple[bytes, int]) -> str:
        return f"{key[0].hex()}-{key[1]:x}.der"

    def _from_disk(
        self, key: tuple[bytes, int], cert: x509.Certificate, issuer: x509.Certificate, at: datetime
    ) -> OcspResponse | None:
        """The file of ``key``, verified as a fresh response at ``at`` without a nonce (module
        docstring), then kept in memory; ``None`` when there is none, or when it does not
        verify (it is then removed)."""

        def check(der: bytes, _mtime: float) -> _Entry:
            stored = OcspResponse(der)  # no nonce: its nextUpdate bounds it (RFC 6960 §4.2.2.1)
            result = verify_ocsp_response(stored, cert, issuer, at=at)
            assert result.next_update is not None  # without a nonce, verify_ocsp_response requires it
            return _Entry(stored, at, result.next_update)

        entry = self.files.load(self._name(key), check, _disk_log(key))
        if entry is None:
            return None
        self._entries.put(key, entry)
        self._failures.pop(key)
        return entry.response

    def _to_disk(self, key: tuple[bytes, int], der: bytes) -> None:
        self.files.store(self._name(key), der, _disk_log(key))


def parse_stapled_max_age(text: str) -> timedelta:
    """``cas serve --nvidia-ocsp-max-age``: a duration as in policies (``24 hours``, ``12h``)
    from :data:`MIN_STAPLED_MAX_AGE` to :data:`MAX_STAPLED_MAX_AGE`."""
    low, high = int(MIN_STAPLED_MAX_AGE.total_seconds()), int(MAX_STAPLED_MAX_AGE.total_seconds())
    return timedelta(seconds=option_duration(text, "--nvidia-ocsp-max-age", low, high, "'24 hours'"))


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


def _disk_log(key: tuple[bytes, int]) -> Log:
    return lambda event, error: _log(f"ocsp-cache-{event}", key, error=error)


def _log(event: str, key: tuple[bytes, int], **extra: str) -> None:
    log.info(
        json.dumps({"event": event, "issuer_key_sha256": key[0].hex()[:16], "serial": f"{key[1]:x}", **extra})
    )
