"""Intel DCAP collateral for the CAS from a URL (``cas serve --collateral https://...``: Intel
PCS or a PCCS, :class:`~confide.collateral.dcap.PcsHttpSource`), kept in memory.

:class:`DcapCollateralCache` answers "the collateral of this platform usable at ``at``": the
TCB Info and QE Identity (SGX or TDX) and the PCK CRL and Root CA CRL of a platform named by
its FMSPC, PCK CA (``platform`` / ``processor``) and TEE type (:class:`DcapKey`; Intel PCS API
v4 serves them per FMSPC, per CA and per TEE). What it keeps and for how long:

- What the source answered, whole, keyed by :class:`DcapKey` (the DCAP verifier checks every
  signature, chain and date of it at every attestation, and refuses what is out of date).
- Used while ``at`` is before the earliest ``nextUpdate`` of the four (TCB Info and QE
  Identity: Intel PCS API v4 ``nextUpdate``; CRLs: RFC 5280 §5.1.2.5), and only if its
  signatures lead to the pinned root (:meth:`~confide.verify.dcap.DcapVerifier.collateral_signed`,
  no dates): newer collateral is due then, and the next attestation's prefetch asks the source
  again. Collateral that is not Intel's is never current, whatever ``nextUpdate`` it names.
  The source keeps its own on-disk cache of each response until that response's
  ``nextUpdate``, so a restarted CAS reads what is still current from disk, not from the
  network.
- Collateral that is already out of date when it is fetched (a PCCS that serves stale
  collateral), or becomes so within :data:`FAILURE_GRACE` seconds of its fetch, is handed to
  phase 1 for those seconds (the verifier refuses what is out of date at ``at``); the source is
  asked again after them, not at every attestation.
- At most ``max_entries`` platforms (:data:`MEMORY_ENTRIES`), least recently used dropped.

Blocking: the source goes to the network. The CAS's event loop does not wait for it: an
attestation whose collateral is not in memory first runs :meth:`DcapCollateralCache.prefetch`
in a worker thread (``PlatformVerifier.collateral_job``), which returns what the prefetch
brought (also when it is already out of date: the verifier then refuses it with its own error)
or the error it ran into, and that is handed to the attestation's phase 1 directly
(:class:`~confide.cas.verifier.Prefetched`): phase 1 does not need the entry to be still in
memory (more than ``max_entries`` other platforms may have been fetched meanwhile) and never
asks the source on the loop. Outcomes are also kept :data:`FAILURE_GRACE` seconds (monotonic
clock, injectable) for :meth:`DcapCollateralCache.get`, which callers that ran no prefetch use.
Attestations that need the same platform's collateral at once share one fetch (the others wait
for its outcome, in their own worker threads).

A source failure (unreachable, HTTP 404/429/5xx, a malformed answer) is a
:class:`~confide.errors.CollateralMissingError` that names the platform, the source and the
cause: a refusal recorded with the attestation. A source built with a minimum TCB evaluation
data number (``cas serve --min-tcb-eval-number``) that answers older collateral fails with
:class:`~confide.errors.CollateralOutdatedError` instead, kept like any failure (and the source
keeps no such answer on its disk), so the next attestation after :data:`FAILURE_GRACE` asks
again. With a :class:`~confide.cas.tcb_floor.TcbEvaluationFloor` (``floor``), collateral in
memory whose TCB Info or QE Identity is below the floor the CAS has reached since it was fetched
(another CA's entry of the same FMSPC, another platform's newer QE Identity) is not served: the
prefetch fetches it again (its numbers are read once, unverified, when it is fetched: they only
decide what is served from memory; the verified ones are judged). Under ``--min-tcb-eval-number
auto`` (a source with ``tcb_recovery_grace``), so is collateral below the minimum its own TCB
evaluation data numbers (read once, unverified) set at the attestation's time: a grace period
that ends while it is held does not leave it served, and refused, until its ``nextUpdate``.

PCK certificates: a quote whose certification data only names its PCK certificate (types 1-4,
:class:`~confide.evidence.dcap.PckCertId`) needs it before the platform's FMSPC and PCK CA (the
:class:`DcapKey`) are known. :meth:`DcapCollateralCache.pck_prefetch` fetches it from the
source's ``get_pck_certificate`` (:class:`~confide.collateral.dcap.PckCertificateSource`; the
HTTP source keeps it on disk, checked to chain to the pinned root when written and when read
back), keeps it in memory :data:`PCK_MEMORY_SECONDS` (monotonic) by its identifier, at most
``max_entries`` of them, and shares one fetch between attestations of the same platform, like
the collateral (memory, failures and the single fetch: a
:class:`~confide.cas.fetch_cache.FetchCache`, whose entries' age is monotonic, not ``at``'s).
Nothing is verified here either: the verifier checks the certificate (chain,
dates, CRL, that it is the quote's platform's) at every attestation.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from cryptography import x509

from confide import jsonstrict
from confide.cas.fetch_cache import FetchCache
from confide.cas.fetch_stats import FetchStats
from confide.cas.flight import SingleFlight
from confide.cas.tcb_floor import TcbEvaluationFloor
from confide.collateral.dcap import (
    PCK_CERT_CACHE_TIME,
    DcapCollateralSource,
    PckCertificateSource,
    PcsHttpSource,
    unverified_tcb_evaluation_numbers,
)
from confide.errors import CollateralMissingError, CollateralOutdatedError, ConfideError, ParseError
from confide.evidence.dcap import PckCertId, TeeType
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate, TcbEvaluationNumbersText
from confide.lru import Lru
from confide.verify.dcap import DcapVerifier, missing_pck_error
from confide.verify.result import TcbEvaluationNumbers
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER

__all__ = ["FAILURE_GRACE", "MEMORY_ENTRIES", "PCK_MEMORY_SECONDS", "DcapCollateralCache", "DcapKey"]

log = logging.getLogger("confide.cas")

MEMORY_ENTRIES = 256
FAILURE_GRACE = 30.0
"""Seconds (monotonic clock) for which the outcome of the fetch just tried (its collateral or
its error) is taken instead of asking again (:meth:`DcapCollateralCache.get`; collateral that is
not current is not prefetched again within them either, an error is)."""
PCK_MEMORY_SECONDS = PCK_CERT_CACHE_TIME.total_seconds()
"""Seconds (monotonic clock) a fetched PCK certificate is kept in memory (the HTTP source keeps
it on disk as long)."""
_PCK_AT = datetime.min.replace(tzinfo=UTC)
"""The ``at`` given to the PCK certificates' FetchCache, which does not read it: their age is
monotonic (:data:`PCK_MEMORY_SECONDS`)."""


@dataclass(frozen=True, slots=True)
class DcapKey:
    """What Intel PCS API v4 serves collateral by: FMSPC, PCK CA, SGX or TDX."""

    fmspc: bytes
    ca: str
    tee: TeeType

    def __str__(self) -> str:
        return f"FMSPC {self.fmspc.hex()} ({'TDX' if self.tee == TeeType.TDX else 'SGX'}, {self.ca} CA)"


@dataclass(frozen=True, slots=True)
class _Entry:
    collateral: DcapCollateral
    expires: datetime | None
    """The earliest nextUpdate of the four pieces; ``None``: one had none (never current)."""
    fetched: float  # monotonic
    numbers: tuple[int, int] = (0, 0)
    """The (TCB Info, QE Identity) tcbEvaluationDataNumber as read, unverified, when fetched."""
    listed: TcbEvaluationNumbers | None = None
    """Its TCB evaluation data numbers as read, unverified, when fetched (a source under
    ``--min-tcb-eval-number auto``): the minimum they set at an attestation's time decides
    whether it is still served (:meth:`DcapCollateralCache._below_automatic`)."""


class DcapCollateralCache:
    """DCAP collateral from ``source`` in memory (module docstring). ``where`` names the source
    in refusals (its URL). Thread-safe: prefetches run in worker threads."""

    def __init__(
        self,
        source: DcapCollateralSource,
        *,
        where: str = "Intel PCS",
        max_entries: int = MEMORY_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
        floor: TcbEvaluationFloor | None = None,
        root_ca_der: bytes | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.source = source
        # Only collateral whose signatures lead to this root is kept as current until its
        # nextUpdate (:meth:`_load`); the source's own root when it has one.
        if root_ca_der is None:
            root_ca_der = source.root_ca_der if isinstance(source, PcsHttpSource) else INTEL_SGX_ROOT_CA_DER
        self._signatures = DcapVerifier(
            root_ca_der=root_ca_der, chain_cache_size=16, collateral_cache_size=16
        )
        self.floor = floor
        self.where = where
        self.max_entries = max_entries
        self.monotonic = monotonic
        self.stats = FetchStats()
        self._memory: Lru[DcapKey, _Entry] = Lru(max_entries)
        self._failures: Lru[DcapKey, tuple[float, ConfideError]] = Lru(max_entries)
        self._flights: SingleFlight[DcapKey, DcapCollateral] = SingleFlight()
        # The PCK certificates: memory (fetched less than PCK_MEMORY_SECONDS ago), failures
        # kept FAILURE_GRACE seconds, one fetch per certificate at a time. Their fetches are
        # timed in self.stats, with the collateral's (not in the FetchCache's own stats).
        self._pcks: FetchCache[PckCertId, tuple[float, PckCertificate]] = FetchCache(
            max_entries,
            lambda entry, _at: self.monotonic() - entry[0] < PCK_MEMORY_SECONDS,
            grace=FAILURE_GRACE,
            monotonic=lambda: self.monotonic(),  # noqa: PLW0108 (self.monotonic as it is then)
        )

    @property
    def fetches(self) -> int:
        """Calls of the source so far."""
        snapshot = self.stats.snapshot()
        return snapshot.ok + snapshot.error

    # -- memory (no I/O: safe on the event loop) ------------------------------------------------

    def cached(self, key: DcapKey, at: datetime) -> DcapCollateral | None:
        """The collateral in memory if it is current at ``at`` (before its earliest nextUpdate)."""
        entry = self._memory.get(key)
        if (
            entry is None
            or entry.expires is None
            or not at < entry.expires
            or self._below_floor(key, entry)
            or self._below_automatic(entry, at)
        ):
            return None
        return entry.collateral

    def _below_automatic(self, entry: _Entry, at: datetime) -> bool:
        """Whether ``entry`` is below the minimum its TCB evaluation data numbers set at ``at``
        with the source's grace (``--min-tcb-eval-number auto``; a grace period has ended since
        it was fetched): not served, fetched again (the source then refuses what is still below
        it, and keeps none of it)."""
        grace = self.source.tcb_recovery_grace if isinstance(self.source, PcsHttpSource) else None
        if entry.listed is None or grace is None:
            return False
        return min(entry.numbers) < entry.listed.required(at, grace).number

    def _below_floor(self, key: DcapKey, entry: _Entry) -> bool:
        """Whether ``entry`` is older than the floor reached since it was fetched (module
        docstring): not served, fetched again."""
        if self.floor is None:
            return False
        tee = "tdx" if key.tee == TeeType.TDX else "sgx"
        tcb_info, qe_identity = self.floor.floors(tee, key.fmspc.hex())
        return entry.numbers[0] < tcb_info or entry.numbers[1] < qe_identity

    def _recent(self, key: DcapKey) -> _Entry | tuple[float, ConfideError] | None:
        """The outcome of a fetch of ``key`` in the last :data:`FAILURE_GRACE` seconds."""
        now = self.monotonic()
        entry, failed = self._memory.get(key), self._failures.get(key)
        if (
            failed is not None
            and (entry is None or failed[0] >= entry.fetched)
            and now - failed[0] < FAILURE_GRACE
        ):
            return failed
        if entry is not None and now - entry.fetched < FAILURE_GRACE and not self._below_floor(key, entry):
            return entry
        return None

    def _remember(self, key: DcapKey, entry: _Entry) -> None:
        self._memory.put(key, entry)
        self._failures.pop(key)

    def _failed(self, key: DcapKey, exc: ConfideError) -> None:
        self._failures.put(key, (self.monotonic(), exc))

    # -- the two entry points --------------------------------------------------------------------

    def found(self, key: DcapKey, at: datetime) -> DcapCollateral | None:
        """No I/O: the collateral to use without asking the source, if any: the current one in
        memory, else the one fetched in the last :data:`FAILURE_GRACE` seconds (a source that
        serves out-of-date collateral is not asked again at every attestation; after a failed
        fetch it is). ``None``: a prefetch asks the source."""
        hit = self.cached(key, at)
        if hit is not None:
            return hit
        recent = self._recent(key)
        return recent.collateral if isinstance(recent, _Entry) else None

    def prefetch(self, key: DcapKey, at: datetime) -> DcapCollateral | ConfideError:
        """Blocking (run it off the event loop): bring current collateral into memory unless
        :meth:`found` has some, and return what phase 1 of the attestation
        that asked is to use (``PlatformVerifier.collateral_job``): the collateral, or the error
        of the fetch (also kept for :meth:`get`), not raised here."""
        found = self.found(key, at)
        if found is not None:
            return found
        try:
            return self.fetch(key)
        except ConfideError as exc:
            return copy.copy(exc)

    def get(self, key: DcapKey, at: datetime) -> DcapCollateral:
        """For callers that ran no prefetch (a CAS's phase 1 takes what its prefetch returned):
        the current collateral from memory; else the outcome of the fetch tried in the last
        :data:`FAILURE_GRACE` seconds; else :meth:`fetch` (blocking)."""
        hit = self.cached(key, at)
        if hit is not None:
            return hit
        recent = self._recent(key)
        if isinstance(recent, _Entry):
            return recent.collateral
        if recent is not None:
            raise copy.copy(recent[1])
        return self.fetch(key)

    def fetch(self, key: DcapKey) -> DcapCollateral:
        """Blocking: ask the source, one fetch at a time per platform (the others wait for its
        outcome). Raises :class:`CollateralMissingError` when the source fails."""

        def load() -> DcapCollateral:
            try:
                return self._load(key)
            except ConfideError as exc:
                self._failed(key, exc)
                raise

        return self._flights.run(key, load)

    def _load(self, key: DcapKey) -> DcapCollateral:
        try:
            with self.stats.timed():
                collateral = self.source.get_collateral(fmspc=key.fmspc, ca=key.ca, tee=key.tee)
        except ConfideError as exc:
            _log("pcs-fetch-failed", key, error=exc.kind)
            # A source that serves an older TCB evaluation than the CAS requires (its
            # min_tcb_evaluation_data_number) keeps that distinct refusal; it is asked again
            # after FAILURE_GRACE, and what it answered is not kept (here or on its disk).
            error = (
                CollateralOutdatedError
                if isinstance(exc, CollateralOutdatedError)
                else CollateralMissingError
            )
            raise error(
                f"fetching the DCAP collateral of {key} from {self.where} failed: {exc.kind}: {exc.message}"
            ) from None
        # Current until its earliest nextUpdate only if its signatures lead to the pinned root:
        # collateral that is not Intel's (a broken or hostile PCCS) names its own nextUpdate, and
        # would be handed to every attestation until then. Not current, it is handed over for
        # FAILURE_GRACE seconds (the verifier refuses it), then fetched again.
        expires = _expires(collateral) if self._signatures.collateral_signed(collateral) else None
        listed = unverified_tcb_evaluation_numbers(collateral.tcb_evaluation_numbers)
        self._remember(key, _Entry(collateral, expires, self.monotonic(), _numbers(collateral), listed))
        _log("pcs-fetched", key, next_update=expires.isoformat() if expires else "none")
        return collateral

    # -- PCK certificates of quotes of certification data type 1-4 (module docstring) ---------

    def pck_found(self, cert_id: PckCertId) -> PckCertificate | None:
        """No I/O: the PCK certificate in memory (fetched less than :data:`PCK_MEMORY_SECONDS`
        ago), if any."""
        entry = self._pcks.cached(cert_id, _PCK_AT)
        return None if entry is None else entry[1]

    def pck_prefetch(self, cert_id: PckCertId) -> PckCertificate | ConfideError:
        """Blocking (run it off the event loop): the certificate from memory, else fetched; a
        failure is returned, not raised (a fetch that failed in the last :data:`FAILURE_GRACE`
        seconds is not tried again)."""
        try:
            return self.pck_get(cert_id)
        except ConfideError as exc:
            return copy.copy(exc)

    def pck_get(self, cert_id: PckCertId) -> PckCertificate:
        """The certificate from memory; else the error of a fetch in the last
        :data:`FAILURE_GRACE` seconds; else fetched (blocking, one fetch per platform at a
        time). Raises :class:`CollateralMissingError` when the source fails."""
        return self._pcks.get(cert_id, _PCK_AT, partial(self._pck_load, cert_id))[1]

    def _pck_load(self, cert_id: PckCertId) -> tuple[float, PckCertificate]:
        source = self.source
        try:
            if not isinstance(source, PckCertificateSource):
                raise missing_pck_error(cert_id)
            with self.stats.timed():
                pck = source.get_pck_certificate(cert_id)
        except ConfideError as exc:
            log.info(
                json.dumps({"event": "pck-fetch-failed", "cert_type": cert_id.cert_type, "error": exc.kind})
            )
            raise CollateralMissingError(
                f"fetching the PCK certificate for the quote's {cert_id.describe()} from {self.where} "
                f"failed: {exc.kind}: {exc.message}"
            ) from None
        log.info(json.dumps({"event": "pck-fetched", "cert_type": cert_id.cert_type}))
        return self.monotonic(), pck


def _numbers(c: DcapCollateral) -> tuple[int, int]:
    """The (TCB Info, QE Identity) tcbEvaluationDataNumber as the texts say (unverified: they
    decide what memory serves, :meth:`DcapCollateralCache._below_floor`); 0 where unreadable
    (the verifier refuses such collateral anyway)."""
    found = []
    for text in (c.tcb_info, c.qe_identity):
        try:
            number = json.loads(text).get("tcbEvaluationDataNumber")
        except (ValueError, AttributeError):
            number = None
        found.append(number if isinstance(number, int) and not isinstance(number, bool) else 0)
    return found[0], found[1]


def _expires(c: DcapCollateral) -> datetime | None:
    """The earliest nextUpdate of the TCB Info, the QE Identity, the two CRLs (and the TCB
    evaluation data numbers when the collateral has them); ``None`` when
    one has none or does not parse (never current: the verifier refuses or reports it)."""
    dates: list[datetime | None] = []
    texts = [c.tcb_info, c.qe_identity]
    if c.tcb_evaluation_numbers is not None:
        try:
            texts.append(TcbEvaluationNumbersText.from_response(c.tcb_evaluation_numbers).text)
        except ParseError:
            return None
    for text in texts:
        try:
            value = jsonstrict.loads(text).get("nextUpdate")
            dates.append(datetime.fromisoformat(value) if isinstance(value, str) else None)
        except (ValueError, AttributeError, TypeError, ParseError):
            dates.append(None)
    for der in (c.pck_crl, c.root_ca_crl):
        try:
            dates.append(x509.load_der_x509_crl(der).next_update_utc)
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError
            dates.append(None)
    if any(d is None or d.tzinfo is None for d in dates):
        return None
    return min(d for d in dates if d is not None)


def _log(event: str, key: DcapKey, **extra: str) -> None:
    log.info(json.dumps({"event": event, "fmspc": key.fmspc.hex(), "ca": key.ca,
                         "tee": "tdx" if key.tee == TeeType.TDX else "sgx", **extra}))  # fmt: skip
