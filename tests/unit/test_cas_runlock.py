"""The CAS run lock (:mod:`confide.cas.runlock`): one process per data directory, through a lock
file that is created 0600, never through a symlink, never deleted, and that names its holder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from confide.cas.runlock import LOCK_NAME, run_lock
from confide.errors import UsageError

ONE_CAS = "one cas serve per data directory; replicas share a database (--db), each with its own --data-dir"


def test_a_second_cas_on_the_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    # flock(2) locks belong to the open file description: a second open in this process
    # conflicts as a second process would.
    with run_lock(tmp_path, None, exclusive=False):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} cas serve\n"
        with pytest.raises(UsageError) as refused, run_lock(tmp_path, None, exclusive=False):
            pass
        assert str(refused.value) == (
            f"the data directory {str(tmp_path)!r} is in use by another CAS (pid {os.getpid()}, "
            f"confide cas serve): {ONE_CAS}"
        )
        assert refused.value.exit_code == 2
        # the refused process changed nothing: the holder's record is intact
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} cas serve\n"
    # Released: the record is cleared, the file stays (deleting a lock file races).
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
    assert (tmp_path / LOCK_NAME).read_bytes() == b""
    with run_lock(tmp_path, None, exclusive=False):
        pass


def test_a_running_cas_and_a_rotation_exclude_each_other(tmp_path: Path) -> None:
    pid = os.getpid()
    with (
        run_lock(tmp_path, None, exclusive=False),
        pytest.raises(
            UsageError, match=rf"^a CAS is running on .* \(pid {pid}, confide cas serve\): stop it"
        ),
        run_lock(tmp_path, None, exclusive=True),
    ):
        pass
    with run_lock(tmp_path, None, exclusive=True):
        assert (tmp_path / LOCK_NAME).read_text() == f"{pid} cas rotate-master-key\n"
        with (
            pytest.raises(UsageError, match=rf"^a master-key rotation is running on .* \(pid {pid}, "),
            run_lock(tmp_path, None, exclusive=False),
        ):
            pass
        with (
            pytest.raises(UsageError, match="wait for it to finish"),
            run_lock(tmp_path, None, exclusive=True),
        ):
            pass
    with run_lock(tmp_path, None, exclusive=True):  # released: free again
        pass


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"123 cas serve", b"0 cas serve\n", b"\x1b[2J 1\n"])
def test_an_unknown_holder_is_said_so(tmp_path: Path, content: bytes) -> None:
    with run_lock(tmp_path, None, exclusive=False):
        (tmp_path / LOCK_NAME).write_bytes(content)  # the hint only: never trusted
        with pytest.raises(UsageError) as refused, run_lock(tmp_path, None, exclusive=False):
            pass
        assert str(refused.value) == (
            f"the data directory {str(tmp_path)!r} is in use by another confide process (pid unknown): {ONE_CAS}"
        )
        with (
            pytest.raises(UsageError, match=r"\(pid unknown\): stop it"),
            run_lock(tmp_path, None, exclusive=True),
        ):
            pass


def test_the_lock_file_is_0600_whatever_the_umask_or_its_mode_before(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would create it 0400: not even writable by its owner
    try:
        with run_lock(tmp_path, None, exclusive=False):
            assert stat.S_IMODE((tmp_path / LOCK_NAME).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    (tmp_path / LOCK_NAME).chmod(0o644)
    with run_lock(tmp_path, None, exclusive=False):
        assert stat.S_IMODE((tmp_path / LOCK_NAME).stat().st_mode) == 0o600


def test_a_symlinked_lock_file_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (data / LOCK_NAME).symlink_to(elsewhere)  # dangling: O_CREAT would create the target
    with (
        pytest.raises(UsageError, match=f"{LOCK_NAME} is a symbolic link"),
        run_lock(data, None, exclusive=False),
    ):
        pass
    assert not elsewhere.exists()
    elsewhere.write_bytes(b"keep")
    with pytest.raises(UsageError, match="symbolic link"), run_lock(data, None, exclusive=True):
        pass
    assert elsewhere.read_bytes() == b"keep"


def test_a_fifo_or_a_directory_in_its_place_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / LOCK_NAME)  # opened without blocking, then refused
    with pytest.raises(UsageError, match="is not a regular file"), run_lock(tmp_path, None, exclusive=False):
        pass
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).mkdir()
    with (
        pytest.raises(UsageError, match=f"cannot open {LOCK_NAME}"),
        run_lock(tmp_path, None, exclusive=False),
    ):
        pass


def test_a_missing_data_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file"), run_lock(tmp_path / "absent", None, exclusive=True):
        pass
    (tmp_path / "file").write_bytes(b"")
    with (
        pytest.raises(UsageError, match="Not a directory"),
        run_lock(tmp_path / "file", None, exclusive=True),
    ):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_hard_linked_lock_file_is_refused_and_the_other_name_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    other = data / "master.key"
    other.write_bytes(b"key bytes")
    other.chmod(0o400)
    os.link(other, data / LOCK_NAME)  # O_NOFOLLOW does not refuse a hard link
    for exclusive in (False, True):
        with (
            pytest.raises(UsageError, match=f"{LOCK_NAME} has 2 hard links, expected 1"),
            run_lock(data, None, exclusive=exclusive),
        ):
            pass
    assert other.read_bytes() == b"key bytes"  # neither truncated nor rewritten
    assert stat.S_IMODE(other.stat().st_mode) == 0o400  # nor chmod'ed
