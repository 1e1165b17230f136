"""``confide run``'s end of volume update policies, on the tmpfs fallback (/dev/shm): what
``MountedVolumes.close`` does with a writable volume's changes for each released mode. (The
FUSE path is exercised end to end by tests/integration/test_cas_e2e.py.)"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confide.errors import RollbackError, StorageError
from confide.policy.model import UpdatePolicy
from confide.runtime.volumes import MountedVolumes, VolumeRelease
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume.mount import _TmpfsMount, _unmount_cmd, fuse_usable, mount_volume
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def _volume(tmp: Path) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes(b"first\n")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _mount(release: VolumeRelease, key: VolumeKey, mnt: Path) -> MountedVolumes:
    manifest, tag = load_sealed(release.directory, key, release.expected_tag)
    handle = _TmpfsMount(release.directory, key, mnt, tag, True, manifest, None, private_namespace=False)
    return MountedVolumes([(release, handle)], {}, mounted_tags={release.name: tag})


def _write(mnt: Path) -> None:
    with (mnt / "notes.txt").open("ab") as f:
        f.write(b"second\n")


def test_ephemeral_changes_are_discarded_and_nothing_is_reported(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    release = VolumeRelease("data", vol, key.raw, tag, UpdatePolicy.EPHEMERAL)
    mnt = tmp_path / "mnt"
    mounted = _mount(release, key, mnt)
    _write(mnt)
    assert (mnt / "notes.txt").read_bytes() == b"first\nsecond\n"  # writable during the run
    assert mounted.close() == {}
    manifest, now = load_sealed(vol, key)
    assert now == tag and manifest.by_path()["notes.txt"].size == len(b"first\n")


@pytest.mark.parametrize("mode", [UpdatePolicy.ROLLBACK_PROTECTED, UpdatePolicy.NO_ROLLBACK_PROTECTION])
def test_persisting_modes_report_the_new_tag(tmp_path: Path, mode: UpdatePolicy) -> None:
    vol, key, tag0 = _volume(tmp_path)
    # the CAS's recorded tag is another (newer) one than the copy on disk
    cas_tag = "77" * 32
    release = VolumeRelease("data", vol, key.raw, cas_tag, mode)
    if mode is UpdatePolicy.ROLLBACK_PROTECTED:
        with pytest.raises(RollbackError):
            _mount(release, key, tmp_path / "mnt")
        release = VolumeRelease("data", vol, key.raw, tag0, mode)
    mnt = tmp_path / "mnt"
    mounted = _mount(release, key, mnt)
    _write(mnt)
    [(old, new)] = mounted.close().values()
    # rollback_protected reports from the CAS's tag; no_rollback_protection from the version mounted
    assert old == tag0 and new == load_sealed(vol, key)[1] != tag0


class _Client:
    def __init__(self) -> None:
        self.reports: list[tuple[str, ...]] = []

    def report_volume_tag(self, *args: str) -> None:
        self.reports.append(args)


@pytest.mark.parametrize("failing", [0, 1])  # closed in reverse order: the failure after or before
def test_a_volume_that_fails_to_seal_does_not_keep_another_volumes_new_tag_unreported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    from confide.runtime import run as run_module
    from confide.runtime.run import Launch, supervise

    handles = []
    tags = []
    for i in range(2):
        (tmp_path / f"v{i}").mkdir()
        vol, key, tag = _volume(tmp_path / f"v{i}")
        tags.append(tag)
        release = VolumeRelease(f"vol{i}", vol, key.raw, tag)
        manifest, _ = load_sealed(vol, key, tag)
        mnt = tmp_path / f"mnt{i}"
        handles.append(
            (release, _TmpfsMount(vol, key, mnt, tag, True, manifest, None, private_namespace=False))
        )
    mounted = MountedVolumes(
        handles, {}, mounted_tags={r.name: t for (r, _), t in zip(handles, tags, strict=True)}
    )
    monkeypatch.setattr(run_module, "mount_released", lambda _volumes, _locks=None: mounted)
    bad = tmp_path / f"v{failing}" / "vol" / "objects"
    # the program changes both volumes; the host removes one volume's objects directory meanwhile
    script = (
        f"printf more >> {tmp_path}/mnt0/notes.txt; printf more >> {tmp_path}/mnt1/notes.txt; rm -r {bad}"
    )
    plan = Launch(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", None)
    client = _Client()
    with pytest.raises(StorageError, match=f"vol{failing}: "):
        supervise(plan, client)  # type: ignore[arg-type]
    ok = 1 - failing
    ok_dir = tmp_path / f"v{ok}" / "vol"
    key_ok = VolumeKey(handles[ok][0].key)
    new = load_sealed(ok_dir, key_ok)[1]
    assert new != tags[ok]  # sealed: its old version is gone from the volume directory ...
    # ... so its new tag must reach the CAS, else the next run is refused (RollbackError)
    assert client.reports == [("pol", f"vol{ok}", "s", tags[ok], new)]
    assert all(h.closed for _, h in handles)


# supervise() in a process of its own, with mount_released (or the seal) wrapped to send the
# process a signal from inside at the window: right after the volumes were mounted and the
# program's session wrote a change (the program not started yet), or as the seal starts (the
# program has exited). Prints the exit code and the tag reports.
_SUPERVISE_SIGNALLED = """
import json, os, sys
from pathlib import Path
from confide.runtime import run as run_module
from confide.runtime.run import Launch, supervise
from confide.runtime.volumes import MountedVolumes, VolumeRelease
from confide.volume import VolumeKey
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed

vol, key_hex, tag, mnt, where, sig = sys.argv[1:7]
key = VolumeKey.from_hex(key_hex)
release = VolumeRelease("data", Path(vol), key.raw, tag)

def mount_released(_volumes, _locks=None):
    manifest, t = load_sealed(Path(vol), key, tag)
    handle = _TmpfsMount(Path(vol), key, Path(mnt), t, True, manifest, None, private_namespace=False)
    mounted = MountedVolumes([(release, handle)], {}, mounted_tags={"data": t})
    with (Path(mnt) / "notes.txt").open("ab") as f:
        f.write(b"second\\n")
    if where == "mounted":
        os.kill(os.getpid(), int(sig))
    else:
        seal = mounted.seal
        def sealing():
            os.kill(os.getpid(), int(sig))
            return seal()
        mounted.seal = sealing
    return mounted

class Client:
    reports = []
    def report_volume_tag(self, *args):
        self.reports.append(list(args))

run_module.mount_released = mount_released
# mounted: a program that the signal passed on stops (dash ignores a SIGTERM that comes as it
# starts); sealing: one that has exited with 7 by then
argv = ["/bin/sleep", "60"] if where == "mounted" else ["/bin/sh", "-c", "exit 7"]
plan = Launch(argv, {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", None)
client = Client()
code = supervise(plan, client)
print(json.dumps({"code": code, "reports": client.reports}))
"""


@pytest.mark.parametrize("where", ["mounted", "sealing"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_volume_set_up_or_seal_ends_sealed_and_reported(
    tmp_path: Path, where: str, sig: int
) -> None:
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _SUPERVISE_SIGNALLED, str(vol), key.hex(), tag, str(mnt), where, str(int(sig))],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    result = json.loads(proc.stdout.splitlines()[-1])
    new = load_sealed(vol, key)[1]
    assert new != tag  # the session's change was sealed ...
    assert result["reports"] == [["pol", "data", "s", tag, new]]  # ... and its tag reported
    # mounted: the signal was passed on to the program as it started (killed by it: 128 + N);
    # sealing: the program had exited (7), the signal came too late for it and was ignored
    assert result["code"] == (128 + sig if where == "mounted" else 7)
    assert not mnt.is_symlink() and not any(Path("/dev/shm").glob(f"confide-volume-*{mnt.name}*"))


# supervise() in a process of its own ("confide run") with a writable FUSE volume; the program
# signals its FUSE server ($SERVER) as a service manager's stop does (systemd's default
# KillMode=control-group: every process of the unit), then, for "every", confide run and itself.
# Prints the exit code, the tag reports and the server's ignored-signal mask.
_SUPERVISE_FUSE = """
import json, sys
from pathlib import Path
from confide.runtime import run as run_module
from confide.runtime.run import Launch, supervise
from confide.runtime.volumes import MountedVolumes, VolumeRelease
from confide.volume import VolumeKey
from confide.volume.mount import mount_volume

vol, key_hex, tag, mnt, script = sys.argv[1:6]
key = VolumeKey.from_hex(key_hex)
release = VolumeRelease("data", Path(vol), key.raw, tag)
ignored = []

def mount_released(_volumes, _locks=None):
    handle = mount_volume(Path(vol), key, Path(mnt), expected_tag=tag, mode="fuse", writable=True)
    server = handle._proc.pid
    status = Path(f"/proc/{server}/status").read_text().splitlines()
    ignored.append(int(next(x for x in status if x.startswith("SigIgn:")).split()[1], 16))
    return MountedVolumes([(release, handle)], {"SERVER": str(server)}, mounted_tags={"data": tag})

class Client:
    reports = []
    def report_volume_tag(self, *args):
        self.reports.append(list(args))

run_module.mount_released = mount_released
plan = Launch(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", None)
client = Client()
code = supervise(plan, client)
print(json.dumps({"code": code, "reports": client.reports, "ignored": ignored[0]}))
"""


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
@pytest.mark.parametrize("who", ["every", "server"])
def test_sigterm_to_the_fuse_server_changes_nothing_the_run_ends_sealed_and_reported(
    tmp_path: Path, who: str
) -> None:
    """ "every": SIGTERM to the FUSE server, to confide run (which passes it on) and to the program
    (which makes a last write to the volume in its handler, then exits 3): the volume is sealed
    with that write, its tag reported, the exit code the program's. "server": the server alone
    gets SIGTERM, SIGINT and SIGHUP; the program keeps its files, writes one more and exits 0:
    sealed and reported. Before 2026-12-07 the server's loop ended, the mount was lost, the
    session was discarded and confide run failed (exit 50)."""
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    notes = mnt / "notes.txt"
    if who == "every":
        script = (
            # the handler may run once per SIGTERM (from itself, and passed on by confide run)
            f"trap 'kill $! 2>/dev/null; printf last > {mnt}/last.txt; exit 3' TERM; printf more >> {notes}; "
            'kill -TERM "$SERVER"; kill -TERM "$PPID"; kill -TERM $$; sleep 60 & wait $!'
        )
    else:
        script = (
            f'printf more >> {notes}; kill -TERM "$SERVER"; kill -INT "$SERVER"; kill -HUP "$SERVER"; '
            f"printf after > {mnt}/after.txt; exit 0"
        )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _SUPERVISE_FUSE, str(vol), key.hex(), tag, str(mnt), script],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    result = json.loads(proc.stdout.splitlines()[-1])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # dropped by the kernel at once
        assert result["ignored"] & (1 << (sig - 1)), signal.Signals(sig).name
    manifest, new = load_sealed(vol, key)
    assert new != tag and result["reports"] == [["pol", "data", "s", tag, new]]
    assert "lost" not in proc.stderr, proc.stderr
    files = manifest.by_path()
    if who == "every":
        assert result["code"] == 3
        assert files["notes.txt"].size == len(b"first\nmore")
        assert files["last.txt"].size == len(b"last")  # the handler's write is in it
    else:
        assert result["code"] == 0
        assert files["notes.txt"].size == len(b"first\nmore") and files["after.txt"].size == len(b"after")
    assert not any(
        line.split()[4] == str(mnt) for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


# The mount lost while the program runs: its FUSE server killed (SIGKILL cannot be held; the
# mount stays, dead: the program's writes fail with ENOTCONN) or the mount removed from outside
# (the program's writes from then on land in the bare directory below it, unencrypted). confide
# run must not end in a silent success. As an integrity failure: the program is stopped, nothing
# of the session is sealed or reported; StorageError (exit 50).
@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
@pytest.mark.parametrize(
    ("how", "program"), [("killed", "running"), ("killed", "exited"), ("unmounted", "running")]
)
@pytest.mark.parametrize("policy", [UpdatePolicy.ROLLBACK_PROTECTED, UpdatePolicy.EPHEMERAL])
def test_a_lost_fuse_mount_stops_the_program_and_discards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, program: str, policy: UpdatePolicy
) -> None:
    from confide.runtime import run as run_module
    from confide.runtime.run import Launch, supervise

    vol, key, tag = _volume(tmp_path)
    release = VolumeRelease("data", vol, key.raw, tag, policy)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ephemeral = policy is UpdatePolicy.EPHEMERAL  # as mount_released mounts it: shared, in memory
    handle = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True, ephemeral=ephemeral)
    mounted = MountedVolumes([(release, handle)], {}, mounted_tags={"data": tag})
    monkeypatch.setattr(run_module, "mount_released", lambda _volumes, _locks=None: mounted)
    server = handle._proc.pid  # type: ignore[attr-defined]
    # the program changes the volume, then loses the mount and writes a file there
    lose = f"kill -KILL {server}" if how == "killed" else " ".join(_unmount_cmd(mnt, False))
    script = f"printf more >> {mnt}/notes.txt; {lose}; printf leak > {mnt}/after.txt; " + (
        "exec sleep 30" if program == "running" else "exit 0"
    )
    plan = Launch(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", None)
    client = _Client()
    start = time.monotonic()
    try:
        with pytest.raises(StorageError, match=r"data.*(lost|died).*(discarded|lost)") as ei:
            supervise(plan, client)  # type: ignore[arg-type]
    finally:
        handle.abort()
    assert ei.value.exit_code == 50
    assert time.monotonic() - start < 20  # the running program was stopped, not waited for
    assert client.reports == []  # nothing reported ...
    manifest, now = load_sealed(vol, key)
    assert now == tag and manifest.by_path()["notes.txt"].size == len(b"first\n")  # ... or sealed
    assert handle.closed
    assert not any(
        line.split()[4] == str(mnt) for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    if how == "unmounted":
        assert (mnt / "after.txt").read_bytes() == b"leak"  # what the limitation is about
    else:
        assert not (mnt / "after.txt").exists()  # the dead mount refused it (ENOTCONN)


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
def test_seal_and_report_discards_after_a_lost_mount(tmp_path: Path) -> None:
    """The end of ``Cas.mount_volumes`` (no program, no poll): a server that reported 'stopped'
    (its mount removed from outside) during the block makes seal_and_report discard everything and raise StorageError."""
    from confide.runtime.volumes import seal_and_report

    vol, key, tag = _volume(tmp_path)
    release = VolumeRelease("data", vol, key.raw, tag)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    handle = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    mounted = MountedVolumes([(release, handle)], {}, mounted_tags={"data": tag})
    client = _Client()
    try:
        _write(mnt)
        subprocess.run(_unmount_cmd(mnt, False), check=True, capture_output=True)  # from outside
        while not handle.mount_lost():  # the server's 'stopped' report
            select.select([handle.status_fd()], [], [], 10)  # type: ignore[list-item]
        assert mounted.lost_mount() == f"data at {mnt}"
        with pytest.raises(StorageError, match=r"data at .* was lost.*unmounted from outside.*discarded"):
            seal_and_report(mounted, client, "pol", "s")  # type: ignore[arg-type]
    finally:
        handle.abort()
    assert client.reports == []
    manifest, now = load_sealed(vol, key)
    assert now == tag and manifest.by_path()["notes.txt"].size == len(b"first\n")


class _FailingClose:
    """Mounted volumes whose close (the seal before the program started) fails."""

    environment: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self) -> None:
        self.closed = False

    def regions(self) -> list[object]:
        return []

    def close(self) -> dict[str, tuple[str, str]]:
        self.closed = True
        raise StorageError("volume 'x': cannot seal (the test's)")


@pytest.mark.parametrize("where", ["before_exec", "exec"])
def test_injected_files_are_removed_when_closing_the_volumes_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The program does not start (before_exec refuses, or its exec fails) and closing the volumes
    fails as well: the injected secrets still go (before, the close's error skipped their
    removal: they stayed behind in the memory file system)."""
    import uuid

    from confide.runtime import run as run_module
    from confide.runtime.run import Launch, supervise

    mounted = _FailingClose()
    monkeypatch.setattr(run_module, "mount_released", lambda _volumes, _locks=None: mounted)
    secret = Path("/dev/shm") / f"confide-xr19-{uuid.uuid4().hex}" / "secret.txt"
    argv = ["/nonexistent/program"] if where == "exec" else ["/bin/true"]
    plan = Launch(argv, {"PATH": "/usr/bin:/bin"}, {str(secret): b"s3cret"}, None, "pol", (), "s", None)

    def refuse() -> None:
        assert secret.read_bytes() == b"s3cret"  # injected by now
        raise RuntimeError("the GPUs' ready state (the test's)")

    try:
        with pytest.raises(StorageError, match=r"cannot seal \(the test's\)"):
            supervise(plan, _Client(), before_exec=refuse if where == "before_exec" else None)  # type: ignore[arg-type]
        assert mounted.closed
        assert not secret.exists()
    finally:
        secret.unlink(missing_ok=True)
        secret.parent.rmdir()


class _Sealing:
    """Mounted volumes that close (seal) without a change and report no failure."""

    environment: dict[str, str] = {}  # noqa: RUF012 - read only

    def regions(self) -> list[object]:
        return []

    def integrity_failure(self) -> None:
        return None

    def lost_mount(self) -> None:
        return None


def test_injected_files_are_removed_when_the_supervised_program_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile review of 2026-12-07: a supervised run's injected files on a memory file system (/dev/shm, which
    `--ipc=host` makes the host's) are removed once the program has ended; before, the secrets
    stayed there after the run, for whoever reads that tmpfs next."""
    import uuid

    from confide.runtime import run as run_module
    from confide.runtime.run import Launch, supervise

    monkeypatch.setattr(run_module, "mount_released", lambda _volumes, _locks=None: _Sealing())
    sealed: list[str] = []
    monkeypatch.setattr(
        run_module, "seal_and_report", lambda _m, _c, policy, *_a, **_k: sealed.append(policy)
    )
    secret = Path("/dev/shm") / f"confide-review-{uuid.uuid4().hex}" / "secret.txt"
    gone = secret.parent / "removed-by-the-program"
    seen = tmp_path / "seen"
    script = f"cat {secret} > {seen}; rm {gone}"
    files = {str(secret): b"s3cret", str(gone): b"other"}
    plan = Launch(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, files, None, "pol", (), "s", None)
    try:
        assert supervise(plan, _Client()) == 0  # type: ignore[arg-type]
        assert seen.read_bytes() == b"s3cret"  # the program had it
        assert sealed == ["pol"]
        assert not secret.exists() and not gone.exists()
    finally:
        secret.unlink(missing_ok=True)
        gone.unlink(missing_ok=True)
        secret.parent.rmdir()
