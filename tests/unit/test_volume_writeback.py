"""Write-back of writable tmpfs/shm mounts at unmount (review of the write-back path): names
the volume format cannot hold, durability order, and random tree edits (fixed seeds) that
must read back as the tree the application left."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confide.errors import ParseError
from confide.volume import VolumeKey, add_sources, create_volume, open_volume, seal_volume, verify_volume
from confide.volume.format import (
    Entry,
    EntryKind,
    Manifest,
    ManifestState,
    Region,
    RegionRule,
    encode_manifest,
)
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def _volume(tmp: Path, chunk_size: int = 4096) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(os.urandom(10_000))
    (src / "b.txt").write_bytes(b"bee\n")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key, chunk_size=chunk_size)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _shm_mount(vol: Path, key: VolumeKey, mnt: Path, tag: str) -> _TmpfsMount:
    m, tag = load_sealed(vol, key, tag)
    return _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False)


@pytest.mark.parametrize(
    "bad",
    [
        b"new\nline",  # a control character: check_path refuses it when the manifest is read
        b"tab\tname",
        b"bad\xff",  # not UTF-8
    ],
)
def test_a_name_the_format_cannot_hold_is_skipped_and_the_volume_stays_readable(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    vol, key, tag = _volume(tmp_path)
    h = _shm_mount(vol, key, tmp_path / "mnt", tag)
    root = os.fsencode(str(h.path))
    (h.path / "good").write_bytes(b"kept")
    with open(root + b"/" + bad, "wb") as f:
        f.write(b"x")
    os.mkdir(root + b"/dir" + bad)  # a directory too, with a file below it
    with open(root + b"/dir" + bad + b"/below", "wb") as f:
        f.write(b"y")
    os.symlink(b"target\xff", root + b"/link")  # a target that is not UTF-8
    with caplog.at_level(logging.WARNING, logger="confide.volume.mount"):
        new = h.close()
    assert new != tag
    m, _ = load_sealed(vol, key, new)  # readable (before: ParseError forever, or a crash at unmount)
    assert sorted(m.by_path()) == ["b.txt", "d", "d/a.bin", "good"]
    assert verify_volume(vol, key, new).ok
    assert caplog.text.count("cannot hold") == 3


def test_the_encoder_refuses_what_the_reader_would_refuse() -> None:
    key = VolumeKey.generate()
    for e in (
        Entry("a\nb", EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("a/../b", EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("x" * 4097, EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("l", EntryKind.SYMLINK, 0o777, 0, 0, Region.UNPROTECTED, target=""),
        Entry("l", EntryKind.SYMLINK, 0o777, 0, 0, Region.UNPROTECTED, target="a\x00b"),
    ):
        m = Manifest(bytes(16), 1, ManifestState.SEALED, 4096, Region.ENCRYPTED, (), (e,))
        with pytest.raises(ParseError):
            encode_manifest(m, key.raw)


def _trace_durability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every rename (its target) and every fsync/syncfs (the path of the descriptor)."""
    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: object, dst: object, *a: object, **k: object) -> None:
        real_replace(src, dst, *a, **k)  # type: ignore[arg-type]
        target = os.fsdecode(dst)  # type: ignore[arg-type]
        dfd = k.get("dst_dir_fd")
        if isinstance(dfd, int):  # a name relative to a directory descriptor (writers of objects/)
            target = os.path.join(os.readlink(f"/proc/self/fd/{dfd}"), target)
        events.append(("replace", os.path.realpath(target)))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def _objects_durable_before_manifest(events: list[tuple[str, str]], vol: Path) -> None:
    objects, manifest = str(vol.resolve() / "objects"), str(vol.resolve() / "MANIFEST")
    last_manifest = max(i for i, (what, p) in enumerate(events) if what == "replace" and p == manifest)
    renames = [i for i, (what, p) in enumerate(events[:last_manifest]) if what == "replace" and
               os.path.dirname(p) == objects]  # fmt: skip
    assert renames, "nothing renamed into objects/ (the test must write an object)"
    synced = [i for i, e in enumerate(events[:last_manifest]) if e == ("fsync", objects)]
    # every rename of an object is made durable (fsync of objects/) before the manifest that
    # references it replaces the old one: else a power loss can keep the new manifest and lose
    # the object's directory entry
    assert synced and max(synced) > max(renames), events


def test_unmount_makes_new_unprotected_objects_durable_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pub.txt").write_bytes(b"public")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=4096, default_region=Region.UNPROTECTED)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    h = _shm_mount(vol, key, tmp_path / "mnt", tag)
    (h.path / "pub.txt").write_bytes(b"changed")
    events = _trace_durability(monkeypatch)
    new = h.close()
    monkeypatch.undo()
    _objects_durable_before_manifest(events, vol)
    assert verify_volume(vol, key, new).ok


def test_seal_makes_added_objects_durable_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"secret")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=4096)
    events = _trace_durability(monkeypatch)
    add_sources(vol, key, [src])
    seal_volume(vol, key)
    monkeypatch.undo()
    _objects_durable_before_manifest(events, vol)


CS = 4096  # chunk size of the random-edit volumes: sizes around it and its multiples


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a reader of the tree sees: per path its kind, mode, and bytes or target; files also
    their mtime (directories' times are not compared: implicit ones keep the extraction time)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            vpath = str(p.relative_to(root))
            if p.is_symlink():
                out[vpath] = ("link", os.readlink(p))
            elif p.is_dir():
                out[vpath] = ("dir", st.st_mode & 0o7777)
            else:
                out[vpath] = ("file", st.st_mode & 0o7777, p.read_bytes(), st.st_mtime_ns)
    return out


def _sizes(rng: random.Random) -> int:
    return rng.choice([0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS - 1, 3 * CS + 1, rng.randrange(5 * CS)])


def _edit(rng: random.Random, root: Path) -> str:
    """One random edit of the mounted tree; returns what it did (for the failure message)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
    links = sorted(p for p in root.rglob("*") if p.is_symlink())
    where = rng.choice([root, *dirs])
    fresh = where / f"n{rng.randrange(10**6)}"
    op = rng.choice(
        ["new", "new", "overwrite", "overwrite", "truncate", "extend", "sparse", "rename", "delete",
         "rmtree", "file_to_dir", "dir_to_file", "link_to_file", "file_to_link", "chmod", "touch",
         "same_bytes", "hardlink", "mkdir"]
    )  # fmt: skip
    if op == "new" or (not files and op in ("overwrite", "truncate", "extend", "sparse", "rename",
                                             "delete", "file_to_dir", "file_to_link", "chmod",
                                             "touch", "same_bytes", "hardlink")):  # fmt: skip
        fresh.write_bytes(rng.randbytes(_sizes(rng)))
        return f"new {fresh}"
    f = rng.choice(files) if files else fresh
    if op == "overwrite":
        size = f.stat().st_size
        at = rng.randrange(size + 1)
        with f.open("r+b") as fh:
            fh.seek(at)
            fh.write(rng.randbytes(rng.choice([1, 100, CS, CS + 7])))
    elif op == "truncate":
        os.truncate(f, rng.choice([0, 1, CS - 1, CS, CS + 1, f.stat().st_size // 2]))
    elif op == "extend":
        with f.open("ab") as fh:
            fh.write(rng.randbytes(rng.choice([1, CS - 1, CS, 2 * CS + 3])))
    elif op == "sparse":
        os.truncate(f, f.stat().st_size + rng.choice([CS, 3 * CS + 5]))  # a hole at the end
    elif op == "rename":
        os.replace(f, rng.choice([root, *dirs]) / f"r{rng.randrange(10**6)}")
    elif op == "delete":
        f.unlink()
    elif op == "rmtree" and dirs:
        shutil.rmtree(rng.choice(dirs))
    elif op == "file_to_dir":
        f.unlink()
        f.mkdir()
        (f / "inner").write_bytes(rng.randbytes(_sizes(rng)))
    elif op == "dir_to_file" and dirs:
        d = rng.choice(dirs)
        shutil.rmtree(d)
        d.write_bytes(rng.randbytes(_sizes(rng)))
    elif op == "link_to_file" and links:
        ln = rng.choice(links)
        ln.unlink()
        ln.write_bytes(rng.randbytes(_sizes(rng)))
    elif op == "file_to_link":
        f.unlink()
        os.symlink(f"target-{rng.randrange(100)}", f)
    elif op == "chmod":
        f.chmod(rng.choice([0o600, 0o644, 0o755, 0o400]))
    elif op == "touch":
        os.utime(f, ns=(0, rng.randrange(1, 2**40) * 1000))
    elif op == "same_bytes":
        st = f.stat()
        f.write_bytes(f.read_bytes())
        if rng.random() < 0.5:
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif op == "hardlink":
        os.link(f, fresh)
    else:
        fresh.mkdir(mode=rng.choice([0o700, 0o755]))
        return f"mkdir {fresh}"
    return f"{op} {f}"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("default_region", [Region.ENCRYPTED, Region.UNPROTECTED])
def test_random_edits_read_back_as_the_tree_left_at_unmount(
    tmp_path: Path, seed: int, default_region: Region
) -> None:
    rng = random.Random(seed)
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    for i, size in enumerate([0, 1, CS - 1, CS, CS + 1, 3 * CS]):
        (src / ("sub" if i % 2 else "") / f"f{i}").write_bytes(rng.randbytes(size))
    (src / "sub" / "deep" / "z").write_bytes(bytes(2 * CS) + b"tail")  # a hole
    os.symlink("f0", src / "lnk")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=CS, default_region=default_region,
                  rules=[RegionRule("pub", Region.UNPROTECTED), RegionRule("sec", Region.ENCRYPTED)])  # fmt: skip
    (src / "pub").mkdir()
    (src / "pub" / "p").write_bytes(rng.randbytes(CS + 3))
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    for session in range(4):  # one-object files first, then chunked ones from earlier unmounts
        h = _shm_mount(vol, key, tmp_path / f"mnt{session}", tag)
        done = [_edit(rng, h.path) for _ in range(rng.randrange(1, 8))]
        if session == 2:
            (h.path / "sec").mkdir(exist_ok=True)
            (h.path / "sec" / "s").write_bytes(rng.randbytes(CS + 1))
        expected = _tree(h.path)
        tag = h.close()
        out = tmp_path / f"out{session}"
        open_volume(vol, key, out, tag)
        assert _tree(out) == expected, (seed, session, done)
        report = verify_volume(vol, key, tag)
        assert report.ok and report.unreferenced_objects == [], (seed, session, done)
        m, _ = load_sealed(vol, key, tag)
        for e in m.entries:
            if e.kind is EntryKind.FILE:
                # protected stays protected: a file's region is its rule's unless it was kept
                assert (e.region is Region.UNPROTECTED) == (e.chunks is None and e.root == bytes(32)), e
                if e.path.startswith("sec/"):
                    assert e.region is Region.ENCRYPTED


def test_a_caller_that_cannot_apply_owners_keeps_the_recorded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"owned")
    (src / "g").write_bytes(b"other")
    for p in (src / "d", src / "d" / "f", src / "g"):
        os.chown(p, 1234, 2345, follow_symlinks=False)
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=CS)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    before = load_sealed(vol, key, tag)[0].by_path()
    # the non-root shm fallback: open_volume cannot apply the recorded owners (os.geteuid != 0),
    # every decrypted file belongs to the caller
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    h = _shm_mount(vol, key, tmp_path / "mnt", tag)
    monkeypatch.undo()
    assert (h.path / "g").stat().st_uid != 1234
    assert h.close() == tag  # untouched: no new generation, the recorded owners kept
    h = _shm_mount_as(vol, key, tmp_path / "mnt2", tag, monkeypatch)
    (h.path / "g").write_bytes(b"changed")
    (h.path / "new").write_bytes(b"new")
    new = h.close()
    after = load_sealed(vol, key, new)[0].by_path()
    assert (after["g"].uid, after["g"].gid) == (1234, 2345)  # changed content, owner as recorded
    assert (after["d/f"].uid, after["d"].uid) == (1234, 1234)
    assert after["new"].uid == os.getuid()  # a new file: the caller's
    assert before["g"].uid == 1234


def _shm_mount_as(
    vol: Path, key: VolumeKey, mnt: Path, tag: str, monkeypatch: pytest.MonkeyPatch
) -> _TmpfsMount:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    try:
        return _shm_mount(vol, key, mnt, tag)
    finally:
        monkeypatch.undo()


_KILLED_UNMOUNT = """
import os, signal, sys
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed
vol, keyhex, mnt, tag, kill_at = sys.argv[1:]
key, vol, kill_at = VolumeKey.from_hex(keyhex), Path(vol), int(kill_at)
m, tag = load_sealed(vol, key, tag)
h = _TmpfsMount(vol, key, Path(mnt), tag, True, m, None, private_namespace=False)
print(h.path, flush=True)
root = h.path
(root / "b.txt").write_bytes(b"changed")                        # one-object file -> chunked
with open(root / "d" / "a.bin", "r+b") as f:                    # chunked by an earlier unmount
    f.seek(5000); f.write(b"Z" * 10)
(root / "pub").mkdir(exist_ok=True)
(root / "pub" / "p.txt").write_bytes(b"public, changed")        # unprotected object
(root / "new.bin").write_bytes(bytes(range(256)) * 48 + b"x")  # new protected file
os.unlink(root / "gone.txt")                                    # deleted: its objects collected
calls = 0
def killing(real):
    def call(*a, **k):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return call
for name in ("replace", "fsync", "unlink", "write", "pwrite"):
    setattr(os, name, killing(getattr(os, name)))
print(h.close(), flush=True)
"""


def test_an_unmount_killed_at_any_step_leaves_the_old_or_the_new_version(tmp_path: Path) -> None:
    """SIGKILL at each rename, fsync, unlink and write of the write-back (a chunk conversion, a
    chunked re-seal, an unprotected copy, a new file, a deletion): the volume always loads,
    verifies and reads back as the version before or the one after, never a mix, and the
    decrypted copy in /dev/shm is removed (the guard)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(os.urandom(10_000))
    (src / "b.txt").write_bytes(b"bee\n")
    (src / "gone.txt").write_bytes(b"to be deleted")
    (src / "pub").mkdir()
    (src / "pub" / "p.txt").write_bytes(b"public")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=CS, rules=[RegionRule("pub", Region.UNPROTECTED)])
    add_sources(vol, key, [src])
    tag0 = seal_volume(vol, key)
    # a first session makes d/a.bin chunked, so the killed one re-seals chunks of it too
    h = _shm_mount(vol, key, tmp_path / "mnt", tag0)
    with (h.path / "d" / "a.bin").open("r+b") as f:
        f.write(b"first")
    tag = h.close()
    assert load_sealed(vol, key, tag)[0].by_path()["d/a.bin"].chunks is not None
    open_volume(vol, key, tmp_path / "old", tag)
    old = _tree(tmp_path / "old")
    shutil.copytree(vol, tmp_path / "vol-old")
    new: dict[str, tuple[object, ...]] | None = None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    outcomes = set()
    for kill_at in range(1, 1000):
        shutil.rmtree(vol)
        shutil.copytree(tmp_path / "vol-old", vol)  # every run starts from the same version
        proc = subprocess.run(
            [sys.executable, "-c", _KILLED_UNMOUNT, str(vol), key.hex(), str(tmp_path / f"m{kill_at}"), tag,
             str(kill_at)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        lines = proc.stdout.split()
        shm = Path(lines[0])
        deadline = time.monotonic() + 30
        while shm.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not shm.exists(), kill_at  # no plaintext left behind
        _, now = load_sealed(vol, key)  # always loads ...
        out = tmp_path / f"out{kill_at}"
        open_volume(vol, key, out, now)  # ... and reads back whole
        tree = _tree(out)
        shutil.rmtree(out)
        if now == tag:
            assert tree == old, kill_at
            outcomes.add("old")
        else:
            # the same new version, whichever step was the last (the session's mtimes differ)
            tree = {k: v[:3] for k, v in tree.items()}
            new = tree if new is None else new
            assert tree == new, kill_at
            assert "gone.txt" not in tree and tree["b.txt"][2] == b"changed", kill_at
            outcomes.add("new")
        if proc.returncode == 0:
            assert lines[1] == now != tag
            assert verify_volume(vol, key, now).unreferenced_objects == []
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        pytest.fail("the unmount never completed")
    assert outcomes == {"old", "new"}


_UNLISTABLE = """
import os, sys
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed
from confide.errors import StorageError
vol, keyhex, mnt, tag = sys.argv[1:]
key, vol = VolumeKey.from_hex(keyhex), Path(vol)
m, tag = load_sealed(vol, key, tag)
h = _TmpfsMount(vol, key, Path(mnt), tag, True, m, None, private_namespace=False)
(h.path / "b.txt").write_bytes(b"changed")
os.chmod(h.path / "d", 0)  # the application makes a directory of the volume unreadable
print(h.path)
try:
    print("sealed", h.close())
except StorageError as exc:
    print("refused", exc.message)
"""


def test_a_directory_the_unmount_cannot_list_fails_it_instead_of_dropping_its_files(tmp_path: Path) -> None:
    """Without CAP_DAC_OVERRIDE (the non-root fallback's case), a directory the application
    made unreadable could not be listed by os.walk, which skipped it silently: its files
    (d/a.bin, in the volume since before) vanished from the sealed version. Now the unmount
    fails (StorageError) and the volume keeps its previous version."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    vol, key, tag = _volume(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c", _UNLISTABLE,
         str(vol), key.hex(), str(tmp_path / "mnt"), tag],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shm, outcome = proc.stdout.split("\n", 1)
    assert outcome.startswith("refused") and "cannot list" in outcome, proc.stdout
    m, now = load_sealed(vol, key)
    assert now == tag and "d/a.bin" in m.by_path()
    # ... and the plaintext is gone from /dev/shm all the same: the unreadable directory was
    # skipped by the removal and left there, d/a.bin in clear, until it made it its owner's 0700
    assert Path(shm).parent == Path("/dev/shm") and not os.path.lexists(shm)


_KILLED_UNREADABLE = """
import os, signal, sys
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed
vol, keyhex, mnt, tag = sys.argv[1:]
key, vol = VolumeKey.from_hex(keyhex), Path(vol)
m, tag = load_sealed(vol, key, tag)
h = _TmpfsMount(vol, key, Path(mnt), tag, False, m, None, private_namespace=False)
os.chmod(h.path / "d", 0)  # the application makes a directory of the volume unreadable
os.chmod(h.path, 0o500)  # and the tree's top unwritable
print(h.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no teardown: the guard removes the plaintext
"""


def test_the_guard_removes_a_tree_the_application_made_unreadable(tmp_path: Path) -> None:
    """The guard (which removes the /dev/shm tree when the mounting process dies) without
    CAP_DAC_OVERRIDE, as a non-root caller's: it skipped a directory made unreadable, and left
    its plaintext there for good."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    vol, key, tag = _volume(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c",
         _KILLED_UNREADABLE, str(vol), key.hex(), str(tmp_path / "mnt"), tag],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    shm = Path(proc.stdout.strip())
    assert shm.parent == Path("/dev/shm")
    deadline = time.monotonic() + 60  # the guard's SIGTERM comes when its parent dies
    while os.path.lexists(shm) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.lexists(shm)
