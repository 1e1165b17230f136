"""Durable writes (confide.fsutil): what they refuse and what they leave behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from confide.fsutil import TMP_PREFIX, write_atomic, write_new


def test_write_new_creates_with_the_mode_and_refuses_existing_files_and_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_new(target, b"k" * 32)
    assert target.read_bytes() == b"k" * 32
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_new(target, b"other")
    assert target.read_bytes() == b"k" * 32  # nothing lost
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        write_new(link, b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest"
    target.write_bytes(b"old")
    write_atomic(target, b"new" * 100_000, mode=0o640)
    assert target.read_bytes() == b"new" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["manifest"]


def test_a_failed_replacement_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.mkdir()  # rename of a file over a directory fails
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "inside").read_bytes() == b"kept"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_the_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "file", b"x")
    assert os.listdir(tmp_path) == []
