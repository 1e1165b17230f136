"""The in-process half the CAS's verifying collateral caches share (:mod:`confide.cas.kds`:
VCEKs from AMD KDS, :mod:`confide.cas.rims`: NVIDIA RIMs): what they keep in memory, the
errors they remember, and one fetch per key at a time.

:class:`FetchCache` knows nothing of what it keeps: each cache hands it a key, the ``at`` of the
attestation, and ``load``, which does that cache's own work (its disk files, its source, and
the verification of what they answer, at ``at``) and returns an entry or raises a
:class:`~confide.errors.ConfideError`. What the skeleton adds:

- memory: the entries ``load`` returned, at most ``max_entries`` (least recently used dropped),
  each handed out while the cache's ``usable(entry, at)`` says so (its expiry rule);
- failures: the error of the last failed ``load`` of a key, which :meth:`FetchCache.get` raises
  again (a copy) for ``grace`` seconds of a monotonic clock instead of loading again; a
  :meth:`FetchCache.prefetch` always loads again. A successful load forgets the key's error;
- one ``load`` per key at a time (:class:`~confide.cas.flight.SingleFlight`): the others wait
  for its outcome; an entry loaded for another attestation that is not usable at their own
  ``at`` is loaded again;
- the count and timing of the calls of the source (:meth:`FetchCache.ask`, ``fetches``,
  ``stats`` for ``/metrics``).

Blocking: :meth:`FetchCache.prefetch`, :meth:`FetchCache.get` and :meth:`FetchCache.fetch` run
``load`` (the network, the disk): worker threads only. :meth:`FetchCache.cached` does no I/O.
Thread-safe. Nothing here reads the wall clock.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

from confide.cas.fetch_stats import FetchStats
from confide.cas.flight import SingleFlight
from confide.errors import ConfideError
from confide.lru import Lru

__all__ = ["FetchCache"]

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")
T = TypeVar("T")


class FetchCache(Generic[K, E]):
    """Entries by key, with the errors of failed loads and one load per key at a time (module
    docstring). ``usable(entry, at)``: whether ``entry`` may be handed out at ``at``."""

    def __init__(
        self,
        max_entries: int,
        usable: Callable[[E, datetime], bool],
        *,
        grace: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.usable = usable
        self.grace = grace
        self.monotonic = monotonic
        self.stats = FetchStats()  # the source's calls, timed, with their outcome (/metrics)
        self.fetches = 0  # the same calls, counted when they start
        self._entries: Lru[K, E] = Lru(max_entries)
        self._failures: Lru[K, tuple[float, ConfideError]] = Lru(max_entries)
        self._flights: SingleFlight[K, E] = SingleFlight()
        self._count_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry and every failure (as evictions by other keys' loads would)."""
        self._entries.clear()
        self._failures.clear()

    def cached(self, key: K, at: datetime) -> E | None:
        """The entry of ``key`` in memory, if it is usable at ``at`` (no I/O)."""
        entry = self._entries.get(key)
        return entry if entry is not None and self.usable(entry, at) else None

    def prefetch(self, key: K, at: datetime, load: Callable[[], E]) -> E | ConfideError:
        """Blocking: :meth:`fetch`, or the error it raised (also kept for :meth:`get`), returned,
        not raised."""
        try:
            return self.fetch(key, at, load)
        except ConfideError as exc:
            return copy.copy(exc)

    def get(self, key: K, at: datetime, load: Callable[[], E]) -> E:
        """The entry from memory; else the error of the load tried in the last ``grace`` seconds;
        else :meth:`fetch` (blocking)."""
        hit = self.cached(key, at)
        if hit is not None:
            return hit
        failed = self._failures.get(key)
        if failed is not None and self.monotonic() - failed[0] < self.grace:
            raise copy.copy(failed[1])
        return self.fetch(key, at, load)

    def fetch(self, key: K, at: datetime, load: Callable[[], E]) -> E:
        """Blocking: the entry from memory, else ``load()`` (one at a time per key: the others
        wait for its outcome), kept in memory, or its error kept for :meth:`get` and raised."""
        loaded: list[E] = []

        def remembered() -> E:
            try:
                entry = load()
            except ConfideError as exc:
                self._failures.put(key, (self.monotonic(), copy.copy(exc)))
                raise
            self._entries.put(key, entry)
            self._failures.pop(key)
            loaded.append(entry)
            return entry

        while True:
            hit = self.cached(key, at)
            if hit is not None:
                return hit
            entry = self._flights.run(key, remembered)
            if loaded or self.usable(entry, at):
                return entry  # ours (loaded at our time), or another's that is usable at ours
            # Another attestation's load, made at a time that does not cover ours: again.

    def ask(self, call: Callable[[], T]) -> T:
        """``call()``, the call of the source: counted in ``fetches``, timed in ``stats``."""
        with self._count_lock:
            self.fetches += 1
        with self.stats.timed():
            return call()
