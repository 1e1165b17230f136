"""NVIDIA RIMs the CAS fetches itself (``cas serve --nvidia-rim URL|DIR``) for GPU reports, those
the runtime did not send: a :class:`~confide.collateral.nvidia_rim.RimSource` (NVIDIA's RIM service, or a
directory of RIM files), and :class:`RimCache`, the verified RIMs in memory.

:class:`RimCache` answers "the RIM with this RIM ID (:func:`~confide.collateral.nvidia_rim.rim_ids`),
verified at ``at``": a cached one, else one fetched from the source. What it stores and for how long:

- Only a RIM that :func:`confide.verify.nvidia_rim.verify_rim` accepted at the ``at`` of its
  fetch, under the verifier's RIM root (the pinned NVIDIA RIM root; a test root in tests): size,
  DTD-free XML, one enveloped XML-DSig signature, the signer's chain to the root, the digest and
  signature. What the source answers is hostile: an answer that does not verify is refused (its
  own class: ``SignatureError``, ``CertificateChainError``; malformed XML as ``CollateralError``)
  and never cached; a source that fails (unreachable, HTTP error, no such RIM, a malformed answer)
  is a ``CollateralMissingError`` naming the source. Either failure refuses the attestation (fail
  closed) and is kept for :data:`FAILURE_GRACE` seconds of a monotonic clock for :meth:`RimCache.get`
  (a prefetch always asks again).
- Keyed by RIM ID; used while ``stored_at`` ≤ ``at`` < ``stored_at`` + :data:`MAX_AGE` (a day:
  NVIDIA may replace a RIM; revocation of its signer is OCSP's, checked at every attestation).
- At most ``max_entries`` entries (:data:`MAX_ENTRIES`), least recently used dropped.

On disk (``directory``; ``None``: memory only; the CAS gives ``DATA_DIR/rim-cache`` for a RIM
service URL), so that a restarted CAS does not need the service for RIMs it verified before:
each verified RIM is written, as the bytes the source gave, to ``directory/<RIM ID>.xml``
(atomically: a temporary file, fsync, rename; mode 0600; at most ``disk_entries``,
:data:`DISK_ENTRIES`, the oldest removed). The files are hostile: a memory miss reads the file of
its RIM ID (in the worker thread of the prefetch, never on the event loop; bounded) and verifies
it exactly as a fetched RIM, at ``at``; its modification time is its ``stored_at`` (a file older
than :data:`MAX_AGE`, or written after ``at``, is not used: the source is asked, and the file
replaced). A file that does not verify
(tampered, another root's, expired, malformed, too large) is not used and is removed
(``rejected_files`` counts them), and the source is asked. (Reading, removing and writing the
files: :class:`~confide.cas.cache_files.CacheFiles`, shared with the OCSP cache.)

Every RIM handed out, cached or fresh, is verified once more by the caller
(:func:`confide.verify.nvidia.verify_nvidia_report` at the attestation's ``at``, with the OCSP
responses about its signer chain when the CAS has ``--nvidia-ocsp``), exactly as a RIM the
runtime sent; the cache only decides when to ask again. Nothing here reads the wall clock.

Blocking: a fetch goes to the network or the disk. Attestations that miss the same RIM at the
same moment share one fetch (the memory, the failures and the single fetch are
:class:`~confide.cas.fetch_cache.FetchCache`'s). The CAS's event loop never waits for one:
``PlatformVerifier.collateral_job`` runs :meth:`RimCache.prefetch` in a worker thread and hands
its outcomes to phase 1 (``Prefetched.rims``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from confide.cas.cache_files import CacheFiles, Log
from confide.cas.fetch_cache import FetchCache
from confide.collateral.nvidia_rim import RimSource, rim_id_version
from confide.errors import CollateralError, CollateralMissingError, ConfideError, ParseError
from confide.evidence.nvidia_rim import MAX_RIM_SIZE, ReferenceManifest
from confide.verify.nvidia_rim import verify_rim

__all__ = ["DISK_ENTRIES", "FAILURE_GRACE", "MAX_AGE", "MAX_ENTRIES", "RimCache"]

log = logging.getLogger("confide.cas")

MAX_AGE = timedelta(days=1)
MAX_ENTRIES = 1024
DISK_ENTRIES = 1024
"""RIM files kept in the disk directory; past that the oldest are removed."""
_FILE_ID = re.compile(r"NV_GPU_(DRIVER|VBIOS)_[0-9A-Za-z._\-]{1,160}")
FAILURE_GRACE = 30.0
"""Seconds (monotonic clock) after a failed fetch during which :meth:`RimCache.get` reports its
error instead of asking again; a prefetch always asks again."""


@dataclass(frozen=True, slots=True)
class _Entry:
    rim: ReferenceManifest
    stored_at: datetime

    def usable(self, at: datetime) -> bool:
        return self.stored_at <= at < self.stored_at + MAX_AGE


class RimCache:
    """Verified RIMs by RIM ID (module docstring). Thread-safe. ``root``: the RIM root they must
    chain to (``None``: the pinned NVIDIA RIM root); ``where`` names the source in refusals and
    events (``service``: a URL, ``dir``: a directory, :attr:`kind`). ``fetches`` counts what was
    asked of the source."""

    def __init__(
        self,
        source: RimSource,
        *,
        where: str,
        kind: str,
        root: x509.Certificate | None = None,
        directory: Path | None = None,
        max_entries: int = MAX_ENTRIES,
        disk_entries: int = DISK_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = CacheFiles(directory, "*.xml", disk_entries, max_size=MAX_RIM_SIZE)
        self.source = source
        self.directory = directory
        self.disk_entries = disk_entries
        self.where = where
        self.kind = kind
        self.root = root
        # Memory, the failures kept FAILURE_GRACE seconds, one fetch per RIM ID at a time.
        self.memory: FetchCache[str, _Entry] = FetchCache(
            max_entries, _Entry.usable, grace=FAILURE_GRACE, monotonic=monotonic
        )
        self.stats = self.memory.stats  # the source's calls, timed, with their outcome (/metrics)

    @property
    def fetches(self) -> int:
        """Calls of the source so far."""
        return self.memory.fetches

    @property
    def rejected_files(self) -> int:
        """Files of the disk directory that did not verify (removed)."""
        return self.files.rejected

    def __len__(self) -> int:
        return len(self.memory)

    def cached(self, rim_id: str, at: datetime) -> ReferenceManifest | None:
        """The verified RIM ``rim_id`` in memory, usable at ``at`` (no I/O)."""
        entry = self.memory.cached(rim_id, at)
        return entry.rim if entry is not None else None

    def prefetch(self, rim_id: str, at: datetime) -> ReferenceManifest | ConfideError:
        """Blocking (run it off the event loop): the RIM (from memory, else fetched), or the
        error of the fetch (also kept for :meth:`get`), not raised here."""
        outcome = self.memory.prefetch(rim_id, at, lambda: self._load(rim_id, at))
        return outcome.rim if isinstance(outcome, _Entry) else outcome

    def get(self, rim_id: str, at: datetime) -> ReferenceManifest:
        """For callers that ran no prefetch: the RIM from memory; else the error of the fetch
        tried in the last :data:`FAILURE_GRACE` seconds; else :meth:`fetch` (blocking)."""
        return self.memory.get(rim_id, at, lambda: self._load(rim_id, at)).rim

    def fetch(self, rim_id: str, at: datetime) -> ReferenceManifest:
        """Blocking: memory, else the source (one fetch per RIM ID at a time; the others wait for
        its outcome), verified at ``at`` before it is cached (module docstring for the errors)."""
        return self.memory.fetch(rim_id, at, lambda: self._load(rim_id, at)).rim

    def _load(self, rim_id: str, at: datetime) -> _Entry:
        """The disk file of ``rim_id``, else the source's answer, verified at ``at``."""
        stored = self._from_disk(rim_id, at)
        if stored is not None:
            return stored
        try:
            data = self.memory.ask(lambda: self.source.fetch(rim_id))
        except ConfideError as exc:
            _log("rim-fetch-failed", rim_id, error=exc.kind)
            raise CollateralMissingError(
                f"the NVIDIA GPU report came without this RIM, and fetching RIM {rim_id} from"
                f" {self.where} failed: {exc.kind}: {exc.message}"
            ) from None
        try:
            rim = ReferenceManifest.from_bytes(data)
            verify_rim(rim.raw, at=at, root=self.root)
            _check_version(rim_id, rim)
        except ParseError as exc:  # the source's bytes, not the request's (not an HTTP 400)
            _log("rim-rejected", rim_id, error=exc.kind)
            raise CollateralError(f"RIM {rim_id} from {self.where}: {exc.message}") from None
        except ConfideError as exc:
            _log("rim-rejected", rim_id, error=exc.kind)
            exc.message = f"RIM {rim_id} from {self.where}: {exc.message}"
            exc.args = (exc.message,)
            raise
        _log("rim-fetched", rim_id)
        self._to_disk(rim_id, rim.raw)
        return _Entry(rim, at)

    # -- disk (blocking: worker threads only) -----------------------------------------------------

    def _name(self, rim_id: str) -> str | None:
        return f"{rim_id}.xml" if _FILE_ID.fullmatch(rim_id) else None

    def _from_disk(self, rim_id: str, at: datetime) -> _Entry | None:
        """The file of ``rim_id``, verified as a fetched RIM at ``at`` (module docstring), stored
        at its modification time; ``None`` when there is none, it is not usable at ``at`` (older
        than :data:`MAX_AGE`, or from after ``at``), or it does not verify (it is then removed)."""
        name = self._name(rim_id)
        if name is None:
            return None

        def check(data: bytes, mtime: float) -> _Entry | None:
            stored_at = datetime.fromtimestamp(mtime, at.tzinfo)
            if not stored_at <= at < stored_at + MAX_AGE:
                return None  # fetched again, and the file replaced
            rim = ReferenceManifest.from_bytes(data)
            verify_rim(rim.raw, at=at, root=self.root)
            _check_version(rim_id, rim)
            return _Entry(rim, stored_at)

        return self.files.load(name, check, _disk_log(rim_id))

    def _to_disk(self, rim_id: str, data: bytes) -> None:
        name = self._name(rim_id)
        if name is not None:
            self.files.store(name, data, _disk_log(rim_id))


def _check_version(rim_id: str, rim: ReferenceManifest) -> None:
    """The RIM is the one its RIM ID names: its ``colloquialVersion`` is the version in the ID
    (:func:`~confide.collateral.nvidia_rim.rim_id_version`; nvtrust names RIMs so). A RIM that
    NVIDIA signed for another driver or VBIOS version, answered for this ID (a broken or hostile
    mirror), verifies under the RIM root; kept under this ID it would refuse every report of
    this version (no RIM of its version) until :data:`MAX_AGE` has passed."""
    want = rim_id_version(rim_id)
    if want is not None and rim.version.lower() != want.lower():
        raise CollateralError(f"its colloquialVersion is {rim.version[:40]!r}, the RIM ID names {want!r}")


def _disk_log(rim_id: str) -> Log:
    return lambda event, error: _log(f"rim-cache-{event}", rim_id, error=error)


def _log(event: str, rim_id: str, **extra: str) -> None:
    log.info(json.dumps({"event": event, "rim_id": rim_id, **extra}))
