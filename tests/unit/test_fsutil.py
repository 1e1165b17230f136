"""Durable writes and bounded reads (confide.fsutil): what they refuse and what they leave behind."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from confide import fsutil
from confide.errors import ParseError, StorageError
from confide.fsutil import TMP_PREFIX, read_bounded, write_atomic, write_new


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


def test_read_bounded_reads_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"k" * 16)
    assert read_bounded(target, 16, label="the key", expected="a key", structure="key file") == b"k" * 16
    target.write_bytes(b"k" * 17)
    with pytest.raises(ParseError, match=r"^key file: got more than 16 bytes, expected a key$"):
        read_bounded(target, 16, label="the key", expected="a key", structure="key file")


def test_read_bounded_reports_unreadable_files_with_or_without_a_label(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(
        StorageError, match=rf"^the key {re.escape(repr(str(missing)))}: No such file or directory$"
    ):
        read_bounded(missing, 16, label="the key", expected="a key", structure="key file")
    with pytest.raises(StorageError, match=rf"^{re.escape(repr(str(missing)))}: No such file or directory$"):
        read_bounded(missing, 16, label=None, expected="a key", structure="key file")


def test_read_bounded_regular_refuses_what_is_not_a_regular_file_without_waiting(tmp_path: Path) -> None:
    """``regular=True`` (the TCB evaluation floor file): a FIFO, which an open for reading would
    wait on for a writer, and a directory are a StorageError at once; a regular file reached
    through a symlink is read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match=re.escape(f"floor {str(fifo)!r}: not a regular file")):
        read_bounded(fifo, 10, label="floor", expected="x", structure="x", regular=True)
    with pytest.raises(StorageError, match="Is a directory"):  # (io refuses a directory first)
        read_bounded(tmp_path, 10, label="floor", expected="x", structure="x", regular=True)
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert (
        read_bounded(tmp_path / "link", 10, label=None, expected="x", structure="x", regular=True) == b"abc"
    )
    with pytest.raises(ParseError, match="got more than 2 bytes"):
        read_bounded(tmp_path / "f", 2, label=None, expected="x", structure="x", regular=True)


def test_the_rename_fallback_never_replaces(tmp_path: Path) -> None:
    """fsutil.write_new_whole's fallback for file systems without hard links: renameat2 with
    RENAME_NOREPLACE fails with EEXIST (FileExistsError) on an existing target, which stays."""
    src, dst = tmp_path / "new", tmp_path / "old"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        fsutil._rename_noreplace(src, dst, OSError(errno.EPERM, "no hard links"))
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
    dst.unlink()
    fsutil._rename_noreplace(src, dst, OSError(errno.EPERM, "no hard links"))
    assert dst.read_bytes() == b"new" and not src.exists()
