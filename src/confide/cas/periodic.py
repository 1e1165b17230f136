"""A background task of ``cas serve`` that runs every ``interval`` seconds on a daemon thread
(the evidence refresher, the certificate renewer)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from confide.errors import UsageError

__all__ = ["PeriodicTask"]


class PeriodicTask:
    """Calls :meth:`tick` every ``interval`` seconds (first at once when ``tick_at_start``)
    until :meth:`stop`. ``wait(seconds)`` returns True when the task should stop (default: the
    stop event's ``wait``); tests inject their own. ``what`` names the interval in the error
    for one that is not a positive number of seconds."""

    tick_at_start = False

    def __init__(
        self, interval: float, *, what: str, thread_name: str, wait: Callable[[float], bool] | None = None
    ) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise UsageError(f"{what}: got {interval!r}, expected a positive number of seconds")
        self.interval = interval
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread = threading.Thread(target=self.run, name=thread_name, daemon=True)

    def tick(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def run(self) -> None:
        if self.tick_at_start:
            self.tick()
        while not self._wait(self.interval):
            self.tick()
