"""One fetch per key at a time (the CAS's collateral caches: AMD KDS VCEKs, Intel PCS collateral).

Attestations that need the same collateral at the same moment do not each ask the vendor's
service: the first runs the fetch, the others wait for its outcome and get its result, or a copy
of its error.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confide.errors import ConfideError

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


@dataclass
class _Flight(Generic[R]):
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: ConfideError | None = None


class SingleFlight(Generic[K, R]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, _Flight[R]] = {}

    def run(self, key: K, load: Callable[[], R]) -> R:
        """``load()`` unless a call for ``key`` is under way, else that call's outcome (its
        result, or a copy of the :class:`ConfideError` it raised). Blocking."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise copy.copy(flight.error)
            assert flight.result is not None
            return flight.result
        try:
            flight.result = load()
            return flight.result
        except ConfideError as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
