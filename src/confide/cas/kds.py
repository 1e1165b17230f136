"""The CAS's VCEKs from AMD KDS (``confide cas serve --kds URL``), for SEV-SNP evidence sent
without its VCEK/VLEK (hosts whose configfs-tsm certificate table is empty).

Three layers, each asked only when the one before has nothing:

1. memory: a bounded LRU (:data:`MEMORY_ENTRIES`) of collateral verified in this process;
2. disk: ``DATA_DIR/kds-cache`` in :class:`~confide.collateral.amd_kds.LocalKdsCollateral`
   layout, bounded to :data:`DISK_VEKS` VCEKs (the oldest are removed). The files are treated
   as hostile: every load is verified again (:func:`verified_collateral`), and a file that does
   not verify is removed and fetched again;
3. the injected :class:`~confide.collateral.amd_kds.AmdCollateralSource` (one method,
   ``fetch``: in ``cas serve``, :class:`~confide.collateral.amd_kds.KdsHttpCollateral` without
   a cache of its own). What it returns is verified before it is kept.

"Verified" means what the CAS checks for a VCEK a runtime sends, before any report is looked
at: the VCEK chains to the *pinned* ARK of its product through the KDS's ASK (and the CRL, when
the source gives one, is signed by that ARK and current), and it is the VCEK that was asked for
(product, chip id, reported TCB). The report itself is then verified as usual
(:class:`~confide.verify.sev_snp.SnpVerifier`, which checks the chain once more).

Blocking: a fetch goes to the network. The CAS's event loop does not wait for one:
:meth:`KdsVcekCache.prefetch` runs in a thread before phase 1 of an attestation and returns the
collateral, or the error it ran into, which is handed to that attestation's phase 1 directly
(``PlatformVerifier.collateral_job``, :class:`~confide.cas.verifier.Prefetched`): phase 1 does
not need the VCEK to be still in memory (more than :data:`MEMORY_ENTRIES` others may have been
fetched meanwhile) and never fetches on the loop. :meth:`KdsVcekCache.get` (memory, else the
error of a fetch in the last :data:`FAILURE_GRACE` seconds, else a blocking fetch) is for callers
that ran no prefetch. Two attestations that need the same VCEK at once share one fetch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from confide.cas.fetch_cache import FetchCache
from confide.collateral.amd_kds import (
    MAX_RESPONSE_SIZE,
    AmdCollateral,
    AmdCollateralRequest,
    AmdCollateralSource,
    LocalKdsCollateral,
    check_collateral,
    read_file,
)
from confide.errors import CollateralMissingError, ConfideError
from confide.evidence.sev_snp import AttestationReport, SigningKey
from confide.fsutil import prune_oldest
from confide.verify.sev_snp import AmdChain, AmdRootStore
from confide.verify.x509util import CERTIFICATE_ERRORS

__all__ = [
    "DISK_VEKS",
    "MEMORY_ENTRIES",
    "FetchedVek",
    "KdsVcekCache",
    "vek_key",
    "vek_request",
    "verified_collateral",
]

log = logging.getLogger("confide.cas")

MEMORY_ENTRIES = 256
"""Verified VCEKs (with their chain and CRL) kept in memory, least recently used dropped first."""
DISK_VEKS = 1024
"""VCEK files kept in ``DATA_DIR/kds-cache``; past that the oldest are removed."""
MAX_FILE_SIZE = MAX_RESPONSE_SIZE
"""A cached file larger than this is not read (and is fetched again)."""
CRL_MARGIN = timedelta(minutes=5)
"""A CRL whose nextUpdate is this close is fetched again (so that phase 1 of an attestation
that starts just after a prefetch still finds it current)."""
NO_CRL_RECHECK = timedelta(hours=1)
"""How long collateral fetched without a CRL (a KDS mirror that answers 404 for it) is used
before the CRL is asked for again."""
FAILURE_GRACE = 30.0
"""Seconds for which :meth:`KdsVcekCache.get` reports the error of the fetch just tried
(monotonic clock) instead of trying again."""
_ZERO_CHIP_ID = bytes(64)

_Key = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class FetchedVek:
    """A VCEK and its ASK+ARK (and the ARK's CRL, when the source gave one), verified for the
    request they were fetched for."""

    vek: x509.Certificate
    chain: AmdChain
    crl: x509.CertificateRevocationList | None
    checked_at: datetime

    def current(self, at: datetime) -> bool:
        """Whether the CRL is still current a margin after ``at``; without a CRL (the KDS had
        none), whether it was asked for less than :data:`NO_CRL_RECHECK` ago."""
        if self.crl is None:
            return at < self.checked_at + NO_CRL_RECHECK
        next_update = self.crl.next_update_utc
        return next_update is not None and at + CRL_MARGIN < next_update


def vek_request(evidence: bytes) -> AmdCollateralRequest:
    """What to ask AMD KDS for a report sent without its VEK (AMD 57230 §2: a VCEK is named by
    product, chip id and reported TCB). Refused with :class:`CollateralMissingError` when no
    VCEK can be asked for: a VLEK-signed report (KDS serves VLEKs to cloud providers, not by chip
    id), a masked chip id (``MASK_CHIP_ID``: all zero), a v2 report (no CPUID: no product).
    A malformed report is a :class:`ParseError`."""
    report = AttestationReport.from_bytes(evidence)
    if report.signing_key is not SigningKey.VCEK:
        raise CollateralMissingError(
            "SEV-SNP evidence came without its VLEK, and AMD KDS does not serve VLEKs by chip id:"
            " the runtime must send it (configfs-tsm's certificate table or aux 'vcek')"
        )
    if report.chip_id == _ZERO_CHIP_ID:
        raise CollateralMissingError(
            "SEV-SNP evidence came without its VCEK, and its CHIP_ID is masked (all zero,"
            " MASK_CHIP_ID): AMD KDS cannot be asked for it; the runtime must send it"
        )
    product = report.cpuid_product
    if product is None:
        raise CollateralMissingError(
            f"SEV-SNP evidence came without its VCEK, and a v{report.version} report does not name"
            " its product (CPUID, from v3 on): AMD KDS cannot be asked for it; the runtime must send it"
        )
    return AmdCollateralRequest.for_report(report, product)


def vek_key(request: AmdCollateralRequest) -> tuple[str, str, str, int]:
    """What the VCEK of ``request`` is kept by (product, kind, chip id, reported TCB)."""
    return (request.product.value, request.kind.value, request.hwid, request.reported_tcb.raw)


def verified_collateral(
    request: AmdCollateralRequest, collateral: AmdCollateral, roots: AmdRootStore, at: datetime
) -> FetchedVek:
    """Parse and verify ``collateral`` (hostile: from the network or the cache directory) for
    ``request`` at ``at``: one VCEK, chained through the ASK of the cert_chain to the pinned ARK
    of ``roots`` (with the CRL, if any: ARK-signed and current), for the requested product, chip
    id and TCB. Raises :class:`ParseError` or a :class:`~confide.errors.VerificationError`."""
    checked = check_collateral(request, collateral, roots, at)
    return FetchedVek(checked.vek, checked.chain, checked.crl, at)


class KdsVcekCache:
    """VCEKs for the CAS: memory, then ``directory`` (``None``: memory only), then ``source``
    (module docstring). ``roots``: the roots the CAS verifies SEV-SNP evidence with (the pinned
    AMD roots; a test PKI's only in tests). ``where``: how refusals name the source (its URL).
    ``require_crl``: cached files without a CRL are not used, but fetched again (a CRL file
    removed from the cache must not switch the revocation check off)."""

    def __init__(
        self,
        source: AmdCollateralSource,
        directory: Path | None,
        roots: AmdRootStore,
        *,
        where: str = "AMD KDS",
        require_crl: bool = True,
        memory_entries: int = MEMORY_ENTRIES,
        disk_veks: int = DISK_VEKS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if memory_entries < 1 or disk_veks < 1:
            raise ValueError("memory_entries and disk_veks must be >= 1")
        self.source = source
        self.disk = LocalKdsCollateral(directory) if directory is not None else None
        self.roots = roots
        self.where = where
        self.require_crl = require_crl
        self.memory_entries = memory_entries
        self.disk_veks = disk_veks
        # Memory, the failures kept FAILURE_GRACE seconds, one fetch per VCEK at a time.
        self.memory: FetchCache[_Key, FetchedVek] = FetchCache(
            memory_entries, FetchedVek.current, grace=FAILURE_GRACE, monotonic=monotonic
        )
        self.stats = self.memory.stats  # the source's calls, timed, with their outcome (/metrics)
        self.rejected_files = 0  # cached files that did not verify (removed, fetched again)

    @property
    def fetches(self) -> int:
        """Calls of the source so far."""
        return self.memory.fetches

    # -- memory (no I/O: safe on the event loop) --------------------------------------------

    def cached(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek | None:
        """The verified collateral in memory, if it is there and its CRL current at ``at``."""
        return self.memory.cached(vek_key(request), at)

    # -- the two entry points ------------------------------------------------------------------

    def prefetch(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek | ConfideError:
        """Blocking (run it off the event loop): bring the collateral into memory, and return it
        (for phase 1 of the attestation that asked: ``PlatformVerifier.collateral_job``), or the
        error of the fetch (also kept for :meth:`get`), not raised here."""
        return self.memory.prefetch(vek_key(request), at, lambda: self._load(request, at))

    def get(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek:
        """For callers that ran no prefetch (a CAS's phase 1 takes what its prefetch returned):
        the collateral from memory; else the error of the fetch tried in the last
        :data:`FAILURE_GRACE` seconds; else :meth:`fetch` (blocking)."""
        return self.memory.get(vek_key(request), at, lambda: self._load(request, at))

    def fetch(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek:
        """Blocking: memory, disk, then the source; one fetch at a time per VCEK (the others
        wait for its outcome; one fetched for another attestation whose CRL falls due at ours is
        fetched again). Errors: :class:`CollateralMissingError` when the source fails
        (unreachable, HTTP 404/429/5xx, a malformed answer), the verification error when what it
        answered does not verify."""
        return self.memory.fetch(vek_key(request), at, lambda: self._load(request, at))

    # -- disk and source -----------------------------------------------------------------------

    def _load(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek:
        from_disk = self._from_disk(request, at)
        if from_disk is not None:
            return from_disk
        try:
            collateral = self.memory.ask(lambda: self.source.fetch(request))
        except ConfideError as exc:
            _log("kds-fetch-failed", request, error=exc.kind)
            raise CollateralMissingError(
                f"SEV-SNP evidence came without its VCEK, and fetching it from {self.where} failed:"
                f" {exc.kind}: {exc.message}"
            ) from None
        fetched = verified_collateral(request, collateral, self.roots, at)
        _log("kds-fetched", request)
        self._to_disk(request, collateral)
        return fetched

    def _paths(self, request: AmdCollateralRequest) -> tuple[str, str, str]:
        product = request.product_dir()
        return request.vek_relpath(), f"{product}/cert_chain.pem", f"{product}/crl.der"

    def _read(self, rel: str) -> bytes | None:
        """A cached file, or ``None``: absent, unreadable, larger than :data:`MAX_FILE_SIZE`, or
        not a regular file (a FIFO put there is not waited on: it would hold the prefetch's
        worker thread, and the fetch of that VCEK, for ever)."""
        assert self.disk is not None
        try:
            return read_file(self.disk.root / rel)
        except ConfideError:
            return None

    def _from_disk(self, request: AmdCollateralRequest, at: datetime) -> FetchedVek | None:
        """The cached files for ``request``, verified; ``None`` when absent, when the CRL is due,
        or when they do not verify (they are then removed)."""
        if self.disk is None:
            return None
        vek_rel, chain_rel, crl_rel = self._paths(request)
        vek, chain, crl = self._read(vek_rel), self._read(chain_rel), self._read(crl_rel)
        if vek is None or chain is None or (crl is None and self.require_crl):
            return None
        if crl is not None and _crl_due(crl, at):
            return None  # fetched again, with the VCEK (the source answers all three)
        try:
            fetched = verified_collateral(request, AmdCollateral(vek, chain, crl), self.roots, at)
        except ConfideError as exc:
            self.rejected_files += 1
            _log("kds-cache-rejected", request, error=exc.kind)
            for rel in (vek_rel, chain_rel, crl_rel):
                (self.disk.root / rel).unlink(missing_ok=True)
            return None
        if not fetched.current(at):
            return None
        return fetched

    def _to_disk(self, request: AmdCollateralRequest, collateral: AmdCollateral) -> None:
        if self.disk is None:
            return
        vek_rel, chain_rel, crl_rel = self._paths(request)
        try:
            self.disk.store(chain_rel, collateral.chain_pem)
            if collateral.crl_der is not None:
                self.disk.store(crl_rel, collateral.crl_der)
            self.disk.store(vek_rel, collateral.vek_der)
            self._prune()
        except OSError as exc:  # the collateral is in memory; the next start fetches again
            _log("kds-cache-write-failed", request, error=type(exc).__name__)

    def _prune(self) -> None:
        """Keep at most :attr:`disk_veks` VCEK files, removing the oldest."""
        assert self.disk is not None
        prune_oldest(self.disk.root, "*/v1/*/*/*.der", self.disk_veks)


def _crl_due(crl_der: bytes, at: datetime) -> bool:
    """Whether a cached CRL's nextUpdate is past (or within :data:`CRL_MARGIN` of) ``at``; a CRL
    that does not parse is not due here (it is rejected, and removed, by the verification)."""
    try:
        next_update = x509.load_der_x509_crl(crl_der).next_update_utc
    except CERTIFICATE_ERRORS:  # InvalidVersion (RFC 5280 §5.1.2.1) is not a ValueError
        return False
    return next_update is None or next_update <= at + CRL_MARGIN


def _log(event: str, request: AmdCollateralRequest, **extra: str) -> None:
    log.info(
        json.dumps(
            {"event": event, "product": request.product.value, "hwid": request.hwid[:16],
             "tcb": request.tcb_name, **extra}
        )
    )  # fmt: skip
