"""mount.StopSignals (``confide volume mount``'s hold of SIGINT, SIGTERM and SIGHUP): entering it
where signal handlers cannot be set (a thread other than the main one) fails cleanly; the libfuse
probe run while it holds them is out of the caller's process group."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from confide.volume.mount import StopSignals, fuse_usable


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


def _fake_interpreter(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def _dev_fuse_or_skip() -> None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        pytest.skip(f"/dev/fuse is not usable: {exc}")


def test_the_libfuse_probe_runs_in_a_session_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fuse_usable's `python -c 'import mfusepy'` (run by `volume mount` while it holds the stop
    signals) is not in the caller's process group: a terminal's ^C, or `timeout -s INT`, sent to
    the group killed it, and the mount failed with "libfuse cannot be loaded"."""
    _dev_fuse_or_skip()
    sid = tmp_path / "sid"
    monkeypatch.setattr(
        sys, "executable", str(_fake_interpreter(tmp_path, f"cut -d' ' -f6 /proc/$$/stat > {sid}"))
    )
    fuse_usable()
    assert int(sid.read_text()) != os.getsid(0)


def test_a_killed_libfuse_probe_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dev_fuse_or_skip()
    monkeypatch.setattr(sys, "executable", str(_fake_interpreter(tmp_path, "kill -INT $$")))
    reason = fuse_usable()
    assert reason is not None and reason.endswith("was killed by SIGINT") and "cannot be loaded" not in reason
