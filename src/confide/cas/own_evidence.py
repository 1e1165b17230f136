"""The CAS's own evidence as ``GET /v1/cas/evidence`` serves it, and its periodic refresh.

:class:`CasEvidence` holds the published document. :meth:`CasEvidence.refresh` asks the same
source (the TEE's quote provider, or the simulated platform with ``--dev``) for new evidence over
the same report data (the binding to the TLS certificate and the log key does not change), adds
``obtained_at``, checks it with the optional ``check`` (:class:`~confide.cas.self_check.SelfCheck`:
verified as a client would, before anyone can fetch it) and replaces the published document in
one reference assignment: a reader sees the old document or the new one, never a mix. A failed
refresh (no evidence, or evidence that does not verify) raises and leaves the published document
as it was. After a refresh published new evidence it calls :attr:`CasEvidence.on_refresh` (when
set; it must not raise), still holding the refresh lock: with ``--replica-min-tcb`` the CAS's
own TCB is judged again there (:class:`~confide.cas.key_release.OwnTcbWatch`), in the order
the documents were published.

:class:`EvidenceRefresher` calls it every ``interval`` seconds in a daemon thread (like the
``Checkpointer``); a failure is logged (one JSON line, no evidence bytes, no secret values),
counted (:attr:`CasEvidence.failures`, ``/metrics``) and retried on the next period, and never
stops the CAS. Time and waiting are injected, so tests drive :meth:`EvidenceRefresher.run` and
:meth:`EvidenceRefresher.refresh_once` without sleeping.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confide.cas.periodic import PeriodicTask
from confide.errors import ConfideError, UsageError

__all__ = [
    "DEFAULT_REFRESH_SECONDS",
    "MAX_REFRESH_SECONDS",
    "MIN_REFRESH_SECONDS",
    "CasEvidence",
    "EvidenceRefresher",
    "parse_refresh_interval",
    "rfc3339",
]

DEFAULT_REFRESH_SECONDS = 3600
MIN_REFRESH_SECONDS = 10  # a quote provider is not asked more often than this
MAX_REFRESH_SECONDS = 30 * 86400

log = logging.getLogger("confide.cas")

Obtain = Callable[[datetime], dict[str, Any]]
"""Obtains a new evidence document (without ``obtained_at``) at the given time."""
Check = Callable[[bytes, datetime], dict[str, Any]]
"""Verifies a serialised document obtained at the given time before it is published; returns a
summary for the log (no secret values, no evidence bytes) or raises."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(at: datetime) -> str:
    """``at`` as RFC 3339 (section 5.6) ``date-time`` in UTC, whole seconds: ``2025-01-31T12:00:00Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_refresh_interval(text: str) -> int:
    """``--evidence-refresh SECONDS``: 0 (no refresh) or whole seconds in
    ``MIN_REFRESH_SECONDS..MAX_REFRESH_SECONDS``."""
    value = text.strip()
    expected = f"expected 0 (no refresh) or whole seconds from {MIN_REFRESH_SECONDS} to {MAX_REFRESH_SECONDS}"
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise UsageError(f"--evidence-refresh: got {text[:40]!r}, {expected}")
    seconds = int(value)
    if seconds != 0 and not MIN_REFRESH_SECONDS <= seconds <= MAX_REFRESH_SECONDS:
        raise UsageError(f"--evidence-refresh: got {seconds}, {expected}")
    return seconds


@dataclass(frozen=True)
class _Published:
    body: bytes  # the serialised document, built before it is published
    obtained_at: datetime
    check: dict[str, Any] | None  # the check's summary (None: no check configured)


class CasEvidence:
    """The CAS's own evidence document; obtains (and with ``check``, verifies) the first one when
    constructed (any error propagates: the CAS does not start without it)."""

    def __init__(
        self,
        obtain: Obtain,
        *,
        check: Check | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._obtain, self._check, self._clock = obtain, check, clock or _utcnow
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self.refreshes = 0  # successful refreshes after the first document
        self.failures = 0  # failed refreshes
        self.on_refresh: Callable[[], object] | None = None  # after each published refresh; never raises
        self._current = self._build()

    def _build(self) -> _Published:
        now = self._clock().astimezone(UTC)
        document = self._obtain(now)
        if not isinstance(document, dict) or "obtained_at" in document:
            raise TypeError("an evidence source returns a document without obtained_at")
        body = json.dumps({**document, "obtained_at": rfc3339(now)}).encode()
        summary = None
        if self._check is not None:
            try:
                summary = self._check(body, now)
            except ConfideError as exc:  # the same class (exit code), saying what failed
                raise type(exc)(
                    f"the evidence obtained does not verify (checked as a client would): {exc.message}"
                ) from None
        return _Published(body, now.replace(microsecond=0), summary)

    @property
    def body(self) -> bytes:
        """The published document, serialised (what ``GET /v1/cas/evidence`` returns)."""
        return self._current.body

    @property
    def document(self) -> dict[str, Any]:
        """A copy of the published document."""
        value: dict[str, Any] = json.loads(self._current.body)
        return value

    @property
    def obtained_at(self) -> datetime:
        return self._current.obtained_at

    @property
    def check(self) -> dict[str, Any] | None:
        """The check's summary of the published document (``None``: not checked by the CAS)."""
        return self._current.check

    def refresh(self) -> None:
        """Obtain new evidence, check it and publish it; on any error (no evidence, or evidence
        that does not verify) count it, keep the published document and re-raise."""
        with self._lock:
            try:
                published = self._build()
            except Exception:
                self.failures += 1
                raise
            self._current = published  # one reference assignment: atomic for readers
            self.refreshes += 1
            if self.on_refresh is not None:
                self.on_refresh()


class EvidenceRefresher(PeriodicTask):
    """Refreshes ``evidence`` every ``interval`` seconds (:class:`PeriodicTask`)."""

    def __init__(
        self,
        evidence: CasEvidence,
        interval: float,
        *,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(
            interval, what="evidence refresh interval", thread_name="cas-evidence-refresher", wait=wait
        )
        self.evidence = evidence

    def tick(self) -> bool:
        return self.refresh_once()

    def refresh_once(self) -> bool:
        """One refresh; True when new evidence is published. Never raises (a failure is logged
        and counted, and the previous evidence stays served)."""
        try:
            self.evidence.refresh()
        except Exception as exc:  # keep serving; retried on the next period
            detail = exc.message if isinstance(exc, ConfideError) else str(exc)
            log.warning(
                json.dumps(
                    {
                        "event": "cas-evidence-refresh-failed",
                        "error": type(exc).__name__,
                        "detail": detail[:200],
                        "serving_obtained_at": rfc3339(self.evidence.obtained_at),
                        "retry_in_seconds": self.interval,
                        "failures": self.evidence.failures,
                    }
                )
            )
            return False
        refreshed: dict[str, Any] = {
            "event": "cas-evidence-refreshed",
            "obtained_at": rfc3339(self.evidence.obtained_at),
        }
        if self.evidence.check is not None:
            refreshed["self_check"] = self.evidence.check
        log.info(json.dumps(refreshed))
        return True
