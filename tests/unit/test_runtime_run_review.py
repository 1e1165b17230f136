"""confide.runtime.run: exit status, injection failures, the measured program, malformed releases."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from confide.errors import UsageError
from confide.runtime import run
from confide.runtime.run import Launch, supervise


def test_supervise_reports_a_program_killed_by_a_signal_as_128_plus_n() -> None:
    plan = Launch(["/bin/sh", "-c", "kill -KILL $$"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 128 + signal.SIGKILL  # type: ignore[arg-type]  # no volumes: no CAS call
    plan = Launch(["/bin/sh", "-c", "exit 3"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 3  # type: ignore[arg-type]


def test_nothing_is_written_when_a_later_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory, disk = tmp_path / "shm" / "secret", tmp_path / "disk" / "app.conf"
    monkeypatch.setattr(run, "is_memory_backed", lambda p: p == memory)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="would land on persistent storage"):
        run._write_files({str(memory): b"s3cret", str(disk): b"other"})
    assert not memory.exists() and not disk.exists()


def test_a_failed_write_removes_the_files_already_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p: True)
    first = tmp_path / "a"
    (tmp_path / "dir").mkdir()  # a directory where the second file goes: its write fails
    with pytest.raises(IsADirectoryError):
        run._write_files({str(first): b"s3cret", str(tmp_path / "dir"): b"x"})
    assert not first.exists()


def test_injected_files_are_removed_when_the_program_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p: True)
    secret = tmp_path / "secret"
    plan = Launch(["no-such-program-xyz"], {"PATH": str(tmp_path)}, {str(secret): b"s3cret"}, None)
    with pytest.raises(UsageError, match="not found on PATH"):
        run.launch(plan)
    assert not secret.exists()
    with pytest.raises(UsageError, match="not found on PATH"):
        supervise(plan, None)  # type: ignore[arg-type]
    assert not secret.exists()

    def refuse() -> None:
        raise UsageError("not ready")

    ok = Launch(["/bin/true"], {}, {str(secret): b"s3cret"}, None)
    with pytest.raises(UsageError, match="not ready"):
        run.launch(ok, before_exec=refuse)
    assert not secret.exists()
