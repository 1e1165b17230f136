"""Identity files (``confide identity create``, ``--identity FILE``): written atomically with
mode 0600 and never over an existing file; hostile files refused with a clear error that never
carries the key."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from cli import run_confide
from confide import cli, errors, identity
from confide.identity import Identity, load_identity


def test_a_failed_write_leaves_no_file_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "alice.id"

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(identity.os, "fsync", full_disk)
    with pytest.raises(errors.StorageError, match=r"cannot write .*alice\.id: No space left on device"):
        Identity.generate().save(path)
    monkeypatch.undo()
    # Nothing at the path (a truncated identity there would also block the next create), and no
    # stray copy of the key beside it.
    assert sorted(tmp_path.iterdir()) == []
    Identity.generate().save(path)  # the retry succeeds
    assert load_identity(path)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS])
def test_a_storage_failure_is_a_storage_error_exit_50(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], err: int
) -> None:
    """``confide identity create`` run in this process (so that os.write can fail): a storage
    failure exits 50 (StorageError), not 2, and leaves nothing behind."""
    path = tmp_path / "alice.id"
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        if fd > 2:  # the identity's temporary file, not this process's stdout/stderr
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(identity.os, "write", failing_write)
    monkeypatch.setattr(sys, "argv", ["confide", "identity", "create", "--out", str(path)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    monkeypatch.undo()
    assert info.value.code == errors.StorageError.exit_code
    assert os.strerror(err) in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


def test_a_missing_directory_stays_a_usage_error(tmp_path: Path) -> None:
    """What the user asked wrongly stays exit 2: the directory of --out does not exist."""
    result = run_confide("identity", "create", "--out", tmp_path / "nowhere" / "alice.id")
    assert result.returncode == errors.UsageError.exit_code, result.stderr
    assert "No such file or directory" in result.stderr
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_the_file_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        Identity.generate().save(tmp_path / "id")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "id").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["id"]


def test_an_existing_file_or_link_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_text("mine")
    with pytest.raises(errors.UsageError, match="exists; refusing to overwrite"):
        Identity.generate().save(path)
    assert path.read_text() == "mine"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(errors.UsageError, match="exists; refusing to overwrite"):
        Identity.generate().save(dangling)
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "link"]


def test_identity_create_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "owner.id"
    first = run_confide("identity", "create", "--out", out, "--name", "owner")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == load_identity(out).fingerprint
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = run_confide("identity", "create", "--out", out)
    assert again.returncode == errors.UsageError.exit_code
    assert "refusing to overwrite" in again.stderr
    assert load_identity(out).fingerprint == first.stdout.strip()


_GOOD = json.loads(Identity.generate("x").to_json())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not JSON"),
        (Identity.generate().to_json().encode()[:60], "not JSON"),
        (b"[]", "expected type"),
        (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n", "not JSON"),
        (bytes(range(128, 256)), "not UTF-8"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        # a P-384 scalar, and an X25519 key whose public half is not the Ed25519 one of the seed
        (
            json.dumps({**_GOOD, "private_key": base64.b64encode(b"\x01" * 48).decode()}).encode(),
            "got 48 bytes",
        ),
        (
            json.dumps({**_GOOD, "public_key": base64.b64encode(b"\x09" + b"\x00" * 31).decode()}).encode(),
            "does not belong",
        ),
        (json.dumps({**_GOOD, "type": "confide-identity/v2"}).encode(), "expected type"),
        (b'{"type": "confide-identity/v1", "type": "x"}', "duplicate key"),
    ],
)
def test_hostile_identity_files_are_parse_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "id"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(errors.ParseError, match=expected) as info:
        load_identity(path)
    assert _GOOD["private_key"] not in str(info.value)


def test_another_file_in_place_of_an_identity_is_named_as_such(tmp_path: Path) -> None:
    """A file that is not an identity (a policy file: `policy apply ID --identity POLICY`, the
    arguments swapped) is named so, with its path; "chmod 600" is only for an identity file
    readable by others, whose key that mode has exposed."""
    policy = tmp_path / "my-policy.yaml"
    policy.write_text('name: demo\nversion: "0.3"\n')
    policy.chmod(0o644)
    with pytest.raises(errors.UsageError) as refused:
        load_identity(policy)
    assert refused.value.message == (
        f"--identity: {policy} is not an identity file (`confide identity create --out FILE` writes one)"
    )
    policy.chmod(0o600)
    with pytest.raises(errors.ParseError) as malformed:
        load_identity(policy)
    assert malformed.value.message.startswith(f"--identity: {policy} is not an identity file (identity, ")
    assert malformed.value.message.endswith("; `confide identity create --out FILE` writes one)")
    loose = tmp_path / "alice.id"
    loose.write_text(Identity.generate().to_json())
    loose.chmod(0o640)
    with pytest.raises(errors.UsageError, match=r"readable by others \(mode 640\); chmod 600 it"):
        load_identity(loose)


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_bytes(b" " * (identity.MAX_IDENTITY_FILE + 1) + Identity.generate().to_json().encode())
    path.chmod(0o600)
    with pytest.raises(errors.UsageError, match="larger than 65536 bytes"):
        load_identity(path)


def test_a_fifo_or_a_device_is_not_an_identity_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(errors.UsageError, match="not a regular file"):
        load_identity(fifo)  # refused before it is opened: no reader blocks on it
    with pytest.raises(errors.UsageError, match="not a regular file"):
        load_identity(Path("/dev/null"))


def test_the_checks_apply_to_the_file_that_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The type, mode and size checks judge the descriptor that is read, not an earlier look at
    the path: a file swapped in between (here: someone else's identity, readable by all) is
    refused, never loaded. The swap is made deterministic by doing it right after the first
    stat of the path."""
    path = tmp_path / "id"
    Identity.generate("mine").save(path)
    theirs = Identity.generate("theirs")
    real_stat = os.stat
    swapped: list[bool] = []

    def stat_then_swap(p: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(p, *args, **kwargs)  # type: ignore[arg-type]
        if os.fspath(p) == str(path) and not swapped:  # type: ignore[call-overload]
            swapped.append(True)
            replacement = tmp_path / "theirs"
            replacement.write_text(theirs.to_json())
            replacement.chmod(0o644)
            replacement.replace(path)
        return result

    monkeypatch.setattr(identity.os, "stat", stat_then_swap)
    try:
        loaded = load_identity(path)
    except errors.UsageError as exc:
        assert "readable by others" in exc.message
    else:
        assert loaded.fingerprint != theirs.fingerprint, "a world-readable file swapped in was loaded"


def test_a_failing_chmod_closes_the_descriptor_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "id"

    def refuse(fd: int, mode: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(identity.os, "fchmod", refuse)
    with pytest.raises(errors.UsageError, match="Operation not permitted"):
        Identity.generate().save(path)
    monkeypatch.undo()
    assert _open_below(tmp_path) == []
    assert sorted(tmp_path.iterdir()) == []


def _open_below(directory: Path) -> list[str]:
    """What this process's descriptors name below ``directory`` (deleted files included)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor
            continue
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


@pytest.mark.parametrize("link_errno", [errno.EPERM, errno.EOPNOTSUPP])
def test_a_file_system_without_hard_links_still_gets_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_errno: int
) -> None:
    """vfat/exfat refuse link(2) with EPERM, sshfs and CIFS with EOPNOTSUPP: the file is then
    renamed into place with RENAME_NOREPLACE (still never over an existing file)."""
    path = tmp_path / "id"

    def no_links(src: object, dst: object, *args: object, **kwargs: object) -> None:
        raise OSError(link_errno, os.strerror(link_errno))

    monkeypatch.setattr(os, "link", no_links)
    person = Identity.generate()
    person.save(path)
    with pytest.raises(errors.UsageError, match="exists; refusing to overwrite"):
        Identity.generate().save(path)
    monkeypatch.undo()
    assert load_identity(path).fingerprint == person.fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["id"]
