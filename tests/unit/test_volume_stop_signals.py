"""mount.StopSignals (``confide volume mount``'s hold of SIGINT, SIGTERM and SIGHUP): entering it
where signal handlers cannot be set (a thread other than the main one) fails cleanly."""

from __future__ import annotations

import os
import signal
import threading

from confide.volume.mount import StopSignals


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_entering_outside_the_main_thread_raises_and_leaves_nothing_behind() -> None:
    before_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    before = _open_fds()
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with StopSignals():
                pass
        except ValueError as exc:  # signal handlers and the wakeup fd: main thread only
            errors.append(exc)

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert len(errors) == 1
    assert _open_fds() == before  # the wakeup pipe is closed again
    assert {sig: signal.getsignal(sig) for sig in before_handlers} == before_handlers


def test_a_signal_before_wait_is_returned_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGHUP)
    fds = _open_fds()
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.wait() == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) == before and _open_fds() == fds
