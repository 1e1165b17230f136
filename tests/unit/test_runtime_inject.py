"""confide.runtime.run: where injected files may go (memory only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confide.errors import UsageError
from confide.runtime import run


def test_a_persistent_path_without_root_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    target = tmp_path / "app.conf"
    with pytest.raises(UsageError, match=r"would land on persistent storage; .*run confide run as root"):
        run._write_files({str(target): b"secret"})
    assert not target.exists()


def test_memory_paths_are_written_in_place_mode_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: True)
    target = tmp_path / "sub" / "f"
    run._write_files({str(target): b"x" * 70000})
    assert target.read_bytes() == b"x" * 70000 and target.stat().st_mode & 0o777 == 0o600


def test_relative_paths_are_refused() -> None:
    with pytest.raises(UsageError, match="expected an absolute path"):
        run._write_files({"etc/app.conf": b""})


def test_mount_point_is_created_empty_or_must_be_a_regular_file(tmp_path: Path) -> None:
    missing = tmp_path / "new.conf"
    fd = run._mount_point_for(missing)
    assert os.path.samestat(os.fstat(fd), missing.stat())  # the mount goes onto the file checked
    os.close(fd)
    assert missing.read_bytes() == b"" and missing.stat().st_mode & 0o777 == 0o600
    existing = tmp_path / "old.conf"
    existing.write_text("keep")
    os.close(run._mount_point_for(existing))
    assert existing.read_text() == "keep"
    link = tmp_path / "link.conf"
    link.symlink_to(existing)
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        run._mount_point_for(link)
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        run._mount_point_for(tmp_path)
    with pytest.raises(UsageError, match="cannot create its mount point"):
        run._mount_point_for(tmp_path / "no-such-dir" / "f")
