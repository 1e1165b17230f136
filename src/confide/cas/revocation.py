"""OCSP responses (RFC 6960) for the NVIDIA GPU chains the CAS verifies (``cas serve
--nvidia-ocsp URL|DIR``), fetched from an :class:`~confide.collateral.nvidia_ocsp.OcspSource`
and cached in memory.

:class:`OcspCache` answers "the response about this certificate, usable at ``at``": a cached one,
else one fetched from the source. What it stores and for how long:

- Only a response that :func:`confide.verify.ocsp.verify_ocsp_response` found ``good`` at ``at``
  when it was fetched. A revoked, unknown or unverifiable answer and a failed fetch raise, and are
  not cached (the next attestation asks again: the CAS fails closed, it never falls back to "not
  checked").
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
here reads a clock. :meth:`OcspCache.response` may wait on the network (the source's ``fetch``),
so the CAS API runs such attestations off its event loop (``Cas.attest_may_wait``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.collateral.nvidia_ocsp import OcspSource
from confide.verify.dcap import _Lru
from confide.verify.ocsp import OcspResponse, verify_ocsp_response

__all__ = ["MAX_ENTRIES", "NO_NEXT_UPDATE_TTL", "OcspCache"]

NO_NEXT_UPDATE_TTL = timedelta(minutes=5)
MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class _Entry:
    response: OcspResponse
    stored_at: datetime
    expires: datetime


class OcspCache:
    """Good OCSP responses by (issuer key, serial), in memory, until their ``nextUpdate`` (see
    the module docstring). Thread-safe: attestations run it from worker threads. ``hits`` and
    ``fetches`` count what it served from memory and what it asked the source for."""

    def __init__(self, source: OcspSource, *, max_entries: int = MAX_ENTRIES) -> None:
        self.source = source
        self._entries: _Lru[tuple[bytes, int], _Entry] = _Lru(max_entries)
        self._count_lock = threading.Lock()
        self.hits = 0
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._entries)

    def responses(
        self, targets: Sequence[tuple[x509.Certificate, x509.Certificate]], *, at: datetime
    ) -> list[OcspResponse]:
        """One response per (certificate, issuer) pair, in order (:meth:`response`)."""
        return [self.response(cert, issuer, at=at) for cert, issuer in targets]

    def response(self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime) -> OcspResponse:
        """:meth:`cached`, else :meth:`fetch`."""
        cached = self.cached(cert, issuer, at=at)
        return cached if cached is not None else self.fetch(cert, issuer, at=at)

    def cached(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime
    ) -> OcspResponse | None:
        """The cached response about ``cert`` usable at ``at`` (module docstring), or ``None``."""
        entry = self._entries.get((_key_hash(issuer), cert.serial_number))
        if entry is None or not entry.stored_at <= at < entry.expires:
            return None
        with self._count_lock:
            self.hits += 1
        return entry.response

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime) -> OcspResponse:
        """A fresh response about ``cert`` from the source, verified good at ``at``, then
        cached. ``issuer`` must be verified (a link of a chain to a pinned root): the source is
        asked about it. Raises what the source or the verification raises
        (``RevocationError`` for a revoked or unknown certificate)."""
        with self._count_lock:
            self.fetches += 1
        fetched = self.source.fetch(cert, issuer)
        check = verify_ocsp_response(fetched, cert, issuer, at=at)
        expires = check.next_update if check.next_update is not None else at + NO_NEXT_UPDATE_TTL
        self._entries.put((_key_hash(issuer), cert.serial_number), _Entry(fetched, at, expires))
        return fetched


def _key_hash(issuer: x509.Certificate) -> bytes:
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()
