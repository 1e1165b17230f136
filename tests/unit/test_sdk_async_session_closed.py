"""An ``AsyncCas.mount_volumes`` session whose ``__aenter__`` or ``__aexit__`` coroutine is
closed (``GeneratorExit``: its event loop closed with the task pending, then the coroutine
collected) rather than cancelled, with the volume thread's mount and seal faked: the mount
namespace descriptor opened for the closed ``__aenter__`` is closed, and an error of the seal
and report nobody awaits any more is logged at error level."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import types
from collections.abc import Coroutine
from typing import Any

import pytest

from confide.errors import StorageError
from confide.runtime import volumes as runtime_volumes
from confide.sdk import _AsyncVolumeSession


class _Mounted:
    def __init__(self) -> None:
        self.environment: dict[str, str] = {}
        self.aborted = False

    def paths(self) -> dict[str, object]:
        return {}

    def abort(self) -> None:
        self.aborted = True


def _namespace_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("mnt:[")
        except OSError:
            pass
    return count


def _session() -> _AsyncVolumeSession:
    release = types.SimpleNamespace(volumes=("data",), policy="p", session="00" * 32)
    return _AsyncVolumeSession(object(), threading.Lock(), release)  # type: ignore[arg-type]


def _step_then_close(coro: Coroutine[Any, Any, object]) -> None:
    """Run ``coro`` to its first suspension, on a loop, then close it (as the collection of a
    pending task's coroutine after its loop closed does)."""

    async def drive() -> None:
        coro.send(None)
        coro.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(drive())
    finally:
        loop.close()


def _volume_thread() -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == "confide-volumes"]
    return thread


def test_aenter_closed_while_mounting_closes_the_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    go = threading.Event()
    mounted = _Mounted()

    def mount_released(_volumes: object) -> _Mounted:
        go.wait(30)
        return mounted

    monkeypatch.setattr(runtime_volumes, "mount_released", mount_released)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root: the thread opens its namespace
    before = _namespace_fds()
    _step_then_close(_session().__aenter__())
    thread = _volume_thread()
    go.set()
    thread.join(30)
    assert not thread.is_alive() and mounted.aborted  # discarded: the block never ran
    assert _namespace_fds() == before


def test_aexit_closed_logs_the_seal_and_reports_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    go = threading.Event()

    def seal_and_report(*_args: object) -> None:
        go.wait(30)
        raise StorageError("cannot seal volume data: disk full")

    monkeypatch.setattr(runtime_volumes, "mount_released", lambda _volumes: _Mounted())
    monkeypatch.setattr(runtime_volumes, "seal_and_report", seal_and_report)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # no namespace to join
    session = _session()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(session.__aenter__())
    finally:
        loop.close()
    _step_then_close(session.__aexit__(None, None, None))
    thread = _volume_thread()
    with caplog.at_level(logging.ERROR, logger="confide.sdk"):
        go.set()
        thread.join(30)
    assert not thread.is_alive()
    (record,) = [r for r in caplog.records if r.name == "confide.sdk"]
    assert record.levelno == logging.ERROR
    assert "seal and report" in record.getMessage()
    assert "StorageError: cannot seal volume data: disk full" in record.getMessage()
