"""Modification times in protected volumes (format version 2): recorded, authenticated, restored.

Covers the producers (add, $SOURCE_DATE_EPOCH), the consumers (open into a directory, the
/dev/shm tmpfs mount, FUSE read-only and writable where /dev/fuse works), tampering, hostile
values and volumes written in format version 1 (tests/assets/volume-v1, no times).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confide.errors import ParseError, RollbackError, SignatureError, UsageError
from confide.image.flatten import tar_mtime_ns
from confide.volume import (
    Region,
    RegionRule,
    VolumeKey,
    add_sources,
    create_volume,
    open_volume,
    seal_volume,
    verify_volume,
)
from confide.volume import format as vf
from confide.volume.format import (
    MANIFEST_HEADER_SIZE,
    MAX_MTIME_NS,
    Entry,
    EntryKind,
    Manifest,
    ManifestState,
    decode_manifest,
    encode_manifest,
    encode_manifest_body,
    parse_manifest_body,
    volume_tag,
)
from confide.volume.mount import _TmpfsMount, fuse_usable, mount_volume
from confide.volume.store import MANIFEST_NAME, load_sealed, source_date_epoch

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "volume-v1"
V1_KEY = VolumeKey(b"\x11" * 32)
V1_TAG = "e46c55d1697397bc2b6ee161480ba075bd737f6e0d9b45b16efcc9560728048d"
NS = 1_000_000_000
T0 = 1_600_000_000 * NS + 123_456_789  # a time with a nanosecond part
VID = bytes(range(16))
FUSE_WHY = fuse_usable()
needs_fuse = pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE unavailable: {FUSE_WHY}")


def _source(root: Path) -> dict[str, int]:
    """A tree in three regions with distinct times (directories' set last); path -> mtime_ns."""
    files = {"enc/a.txt": b"encrypted\n", "enc/sub/b.bin": os.urandom(9000), "auth/c": b"mac'ed\n",
             "plain/d": b"as is\n", "top.txt": b""}  # fmt: skip
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink("enc/a.txt", root / "link")
    times: dict[str, int] = {}
    paths = [*files, "link", "enc/sub", "enc", "auth", "plain"]  # children before parents
    for i, rel in enumerate(paths):
        times[rel] = T0 + i * 1_000_003_007
        os.utime(root / rel, ns=(T0, times[rel]), follow_symlinks=False)
    return times


def _volume(tmp: Path, **add: object) -> tuple[Path, VolumeKey, str, dict[str, int]]:
    src = tmp / "src"
    times = _source(src)
    key = VolumeKey.generate()
    vol = tmp / "vol"
    rules = [RegionRule("auth", Region.AUTHENTICATED), RegionRule("plain", Region.UNPROTECTED)]
    create_volume(vol, key, chunk_size=4096, rules=rules)
    add_sources(vol, key, [src], **add)  # type: ignore[arg-type]
    return vol, key, seal_volume(vol, key), times


def _mtimes(root: Path, paths: list[str] | dict[str, int]) -> dict[str, int]:
    return {p: (root / p).lstat().st_mtime_ns for p in paths}


# --- format ----------------------------------------------------------------------------------


def test_manifest_round_trips_times_and_writes_version_2() -> None:
    key = b"\x07" * 32
    entries = (
        Entry("d", EntryKind.DIR, 0o755, mtime_ns=MAX_MTIME_NS),
        Entry(
            "d/f", EntryKind.FILE, 0o644, 0, 0, Region.ENCRYPTED, b"\x01" * 16, 3, b"\x02" * 32, mtime_ns=T0
        ),
        Entry("l", EntryKind.SYMLINK, 0o777, target="d/f", mtime_ns=0),
    )
    m = Manifest(VID, 3, ManifestState.SEALED, entries=entries)
    data = encode_manifest(m, key)
    assert struct.unpack_from("<H", data, 8)[0] == 2 == vf.FORMAT_VERSION
    assert decode_manifest(data, key) == m
    # the time is in the authenticated manifest: another time, another tag
    other = replace(m, entries=(entries[0], replace(entries[1], mtime_ns=T0 + 1), entries[2]))
    assert volume_tag(encode_manifest(other, key)) != volume_tag(data)


@pytest.mark.parametrize("bad", [MAX_MTIME_NS + 1, 2**64 - 1])  # 2**64 - 1 is -1 as an i64
def test_hostile_times_are_parse_errors_even_after_authentication(bad: int) -> None:
    entry = Entry("x", EntryKind.DIR, 0o755, mtime_ns=bad)
    body = encode_manifest_body(Manifest(VID, 1, ManifestState.SEALED, entries=(entry,)))
    with pytest.raises(ParseError, match=r"entries\[0\]\.mtime_ns"):
        parse_manifest_body(body, VID, 1, ManifestState.SEALED)
    # sealed under the right key (as a key holder could): still refused, as a ParseError
    with pytest.raises(ParseError, match="mtime_ns"):
        decode_manifest(_seal_raw(body, b"\x07" * 32), b"\x07" * 32)
    # and the writer refuses to produce it (negative times included)
    for value in (bad, -1):
        with pytest.raises(ParseError, match="mtime_ns"):
            encode_manifest(Manifest(VID, 1, ManifestState.SEALED, entries=(replace(entry, mtime_ns=value),)),
                            b"\x07" * 32)  # fmt: skip


def _seal_raw(body: bytes, key: bytes, version: int = 2) -> bytes:
    """Encrypt ``body`` as a sealed manifest of ``version`` without any of the writer's checks."""
    k_enc, _ = vf._manifest_keys(key, VID)
    nonce = hashlib.sha256(body).digest()[:12]
    header = vf._HEADER.pack(vf.MANIFEST_MAGIC, version, ManifestState.SEALED, 0, VID, 1, nonce, len(body))
    return header + AESGCM(k_enc).encrypt(nonce, body, header)


def test_version_1_body_has_no_time_field() -> None:
    """The same entry bytes as version 1 (no time) and version 2 (8 more bytes per entry)."""
    e = Entry("x", EntryKind.DIR, 0o755, 1, 2, mtime_ns=0)
    v2 = encode_manifest_body(Manifest(VID, 1, ManifestState.SEALED, entries=(e,)))
    v1 = v2[:7] + v2[7:11] + v2[11:25] + v2[33:]  # drop the u64 after kind, region, mode, uid, gid
    assert parse_manifest_body(v1, VID, 1, ManifestState.SEALED, version=1).entries == (e,)
    with pytest.raises(ParseError):
        parse_manifest_body(v1, VID, 1, ManifestState.SEALED, version=2)
    # version 3 differs only for files (a layout byte): a body without files reads the same
    assert parse_manifest_body(v2, VID, 1, ManifestState.SEALED, version=3).entries == (e,)
    with pytest.raises(ParseError, match="version"):
        parse_manifest_body(v2, VID, 1, ManifestState.SEALED, version=4)


# --- producers and open ----------------------------------------------------------------------


def test_add_seal_open_round_trips_times_of_files_dirs_and_symlinks(tmp_path: Path) -> None:
    vol, key, tag, times = _volume(tmp_path)
    recorded = {e.path: e.mtime_ns for e in load_sealed(vol, key, tag)[0].entries}
    assert recorded == times  # every entry listed, each with its source's time to the nanosecond
    out = tmp_path / "out"
    open_volume(vol, key, out, tag)
    assert _mtimes(out, times) == times
    assert (out / "enc/sub/b.bin").read_bytes() == (tmp_path / "src/enc/sub/b.bin").read_bytes()
    assert verify_volume(vol, key, tag).ok


def test_tampered_time_in_the_sealed_manifest_is_detected(tmp_path: Path) -> None:
    vol, key, tag, times = _volume(tmp_path)
    data = (vol / MANIFEST_NAME).read_bytes()
    m = decode_manifest(data, key.raw)
    body = encode_manifest_body(replace(m, state=ManifestState.SEALED))
    at = body.index(struct.pack("<Q", times["enc/a.txt"]))  # the entry's mtime_ns field
    tampered = bytearray(data)
    tampered[MANIFEST_HEADER_SIZE + at] ^= 0x01  # one second-ish earlier, in the ciphertext (CTR)
    (vol / MANIFEST_NAME).write_bytes(bytes(tampered))
    with pytest.raises(SignatureError):
        open_volume(vol, key, tmp_path / "out", tag)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(SignatureError):
        verify_volume(vol, key)
    # a key holder re-sealing another time makes another volume: the expected tag refuses it
    changed = tuple(replace(e, mtime_ns=e.mtime_ns - NS) if e.path == "enc/a.txt" else e for e in m.entries)
    (vol / MANIFEST_NAME).write_bytes(encode_manifest(replace(m, entries=changed), key.raw))
    with pytest.raises(RollbackError):
        open_volume(vol, key, tmp_path / "out2", tag)


def test_header_version_is_authenticated(tmp_path: Path) -> None:
    vol, key, _, _ = _volume(tmp_path)
    data = bytearray((vol / MANIFEST_NAME).read_bytes())
    data[8:10] = struct.pack("<H", 1)  # claim version 1: the body would parse without times
    with pytest.raises(SignatureError):
        decode_manifest(bytes(data), key.raw)


def test_fixed_mtime_and_source_date_epoch_clamp(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name, secs in (("old", 1000), ("new", 3000), ("d/x", 2500)):
        (src / name).write_bytes(name.encode())
        os.utime(src / name, ns=(0, secs * NS + 5))
    os.utime(src / "d", ns=(0, 2600 * NS))
    key = VolumeKey.generate()
    clamped = tmp_path / "clamped"
    create_volume(clamped, key)
    add_sources(clamped, key, [src], mtime_clamp_ns=2000 * NS)
    got = {e.path: e.mtime_ns for e in load_sealed(clamped, key, seal_volume(clamped, key))[0].entries}
    assert got == {"old": 1000 * NS + 5, "new": 2000 * NS, "d": 2000 * NS, "d/x": 2000 * NS}
    fixed = tmp_path / "fixed"
    create_volume(fixed, key)
    add_sources(fixed, key, [src], mtime_ns=42 * NS)
    got = {e.path: e.mtime_ns for e in load_sealed(fixed, key, seal_volume(fixed, key))[0].entries}
    assert set(got.values()) == {42 * NS} and len(got) == 4
    with pytest.raises(UsageError, match="mtime_ns"):
        add_sources(fixed, key, [src], mtime_ns=-1)


def test_times_before_1970_are_recorded_as_the_epoch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1969")
    try:
        os.utime(src / "f", ns=(0, -86400 * NS))
    except OSError:
        pytest.skip("this file system refuses times before 1970")
    if (src / "f").stat().st_mtime_ns >= 0:
        pytest.skip("this file system clamps times before 1970 itself")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    assert load_sealed(vol, key, seal_volume(vol, key))[0].entries[0].mtime_ns == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0),
        ("1700000000", 1_700_000_000 * NS),
        (str(MAX_MTIME_NS // NS), MAX_MTIME_NS // NS * NS),
    ],
)
def test_source_date_epoch_values(value: str | None, expected: int | None) -> None:
    env = {} if value is None else {"SOURCE_DATE_EPOCH": value}
    assert source_date_epoch(env) == expected


@pytest.mark.parametrize(
    "value", ["-1", "1.5", " 1", "1 ", "abc", "1e9", "0x10", "\u0663", str(MAX_MTIME_NS // NS + 1)]
)
def test_malformed_source_date_epoch_is_a_usage_error(value: str) -> None:
    # reproducible-builds.org: a malformed value should make the build fail
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": value})


def test_deterministic_volumes_differ_by_time_and_match_with_a_fixed_time(tmp_path: Path) -> None:
    key = VolumeKey.generate()

    def build(name: str, secs: int, **add: object) -> str:
        src = tmp_path / f"src-{name}"
        src.mkdir()
        (src / "f").write_bytes(b"same content")
        os.utime(src / "f", ns=(0, secs * NS))
        vol = tmp_path / name
        create_volume(vol, key, volume_id=VID)
        add_sources(vol, key, [src / "f"], deterministic=True, **add)  # type: ignore[arg-type]
        return seal_volume(vol, key)

    a, a2, b = build("a", 1000), build("a2", 1000), build("b", 1001)
    assert a == a2 and a != b  # same input, same tag; only the time differs: another tag
    assert build("c", 1000, mtime_ns=7 * NS) == build("d", 1001, mtime_ns=7 * NS)


# --- format version 1 ------------------------------------------------------------------------


def _v1_copy(tmp: Path) -> Path:
    vol = tmp / "v1"
    shutil.copytree(ASSETS, vol, ignore=shutil.ignore_patterns("README.md"))
    return vol


def test_version_1_volume_still_opens_with_every_time_at_the_epoch(tmp_path: Path) -> None:
    vol = _v1_copy(tmp_path)
    assert struct.unpack_from("<H", (vol / MANIFEST_NAME).read_bytes(), 8)[0] == 1
    m, tag = load_sealed(vol, V1_KEY, V1_TAG)
    assert tag == V1_TAG and {e.mtime_ns for e in m.entries} == {0}
    assert verify_volume(vol, V1_KEY, V1_TAG).ok
    out = tmp_path / "out"
    open_volume(vol, V1_KEY, out, V1_TAG)
    assert (out / "docs/a.txt").read_bytes() == b"hello v1\n"
    assert (out / "auth/b.txt").read_bytes() == b"authenticated\n"
    assert (out / "plain/c.txt").read_bytes() == b"plain\n"
    assert os.readlink(out / "link") == "docs/a.txt"
    paths = ["auth", "auth/b.txt", "docs", "docs/a.txt", "link", "plain", "plain/c.txt"]
    assert set(_mtimes(out, paths).values()) == {0}


def test_adding_to_a_version_1_volume_writes_version_2(tmp_path: Path) -> None:
    vol = _v1_copy(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.txt").write_bytes(b"new")
    os.utime(src / "new.txt", ns=(0, T0))
    add_sources(vol, V1_KEY, [src])
    tag = seal_volume(vol, V1_KEY)
    assert struct.unpack_from("<H", (vol / MANIFEST_NAME).read_bytes(), 8)[0] == 2
    by = load_sealed(vol, V1_KEY, tag)[0].by_path()
    assert by["new.txt"].mtime_ns == T0 and by["docs/a.txt"].mtime_ns == 0
    with pytest.raises(RollbackError):
        load_sealed(vol, V1_KEY, V1_TAG)


# --- mounts ----------------------------------------------------------------------------------


def test_shm_mount_restores_times_and_reseals_changed_ones(tmp_path: Path) -> None:
    vol, key, tag, times = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m, tag = load_sealed(vol, key, tag)
    h = _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False)
    try:
        assert _mtimes(h.path, times) == times
        os.utime(h.path / "top.txt", ns=(0, T0 + 77))
        before = time.time_ns()
        (h.path / "enc/a.txt").write_bytes(b"rewritten\n")
    finally:
        new = h.close()
    assert new != tag
    by = load_sealed(vol, key, new)[0].by_path()
    assert by["top.txt"].mtime_ns == T0 + 77
    assert abs(by["enc/a.txt"].mtime_ns - before) < 60 * NS  # the kernel's (coarse) clock
    assert by["auth/c"].mtime_ns == times["auth/c"]  # untouched: unchanged


def test_unchanged_shm_session_keeps_the_tag(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m, tag = load_sealed(vol, key, tag)
    h = _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False)
    assert h.close() == tag  # restored times compare equal to the recorded ones


@needs_fuse
def test_fuse_read_only_reports_recorded_times(tmp_path: Path) -> None:
    vol, key, tag, times = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as h:
        assert h.mode == "fuse"
        assert _mtimes(mnt, times) == times
        assert {p: (mnt / p).lstat().st_ctime_ns for p in times} == times
        with pytest.raises(OSError):
            os.utime(mnt / "top.txt", ns=(0, 5))  # read-only


_UTIME_OMIT = (1 << 30) - 2
_AT_FDCWD = -100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _set_atime_only(path: Path, atime_s: int) -> None:
    """utimensat(2) with the mtime UTIME_OMIT (os.utime cannot express it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ts = (_Timespec * 2)(_Timespec(atime_s, 0), _Timespec(0, _UTIME_OMIT))
    if libc.utimensat(_AT_FDCWD, bytes(path), ts, 0) != 0:
        raise OSError(ctypes.get_errno(), "utimensat")


@needs_fuse
def test_fuse_writable_sets_times_and_the_new_manifest_records_them(tmp_path: Path) -> None:
    vol, key, tag, times = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        t_start = time.time_ns()
        with (mnt / "enc/a.txt").open("r+b") as f:  # write: mtime and ctime now
            f.write(b"E")
        os.truncate(mnt / "plain/d", 2)  # truncate without a handle
        (mnt / "enc/new.txt").write_bytes(b"created")  # create: the directory's mtime too
        os.utime(mnt / "top.txt", ns=(1, T0 + 999))  # explicit time (utimens)
        os.utime(mnt / "auth", ns=(1, T0 + 555))  # a directory
        os.utime(mnt / "link", ns=(1, T0 + 333), follow_symlinks=False)  # the symlink itself
        os.utime(mnt / "auth/c")  # touch: UTIME_NOW
        _set_atime_only(mnt / "enc/sub/b.bin", 12345)  # mtime UTIME_OMIT: unchanged
        t_end = time.time_ns()
        seen = _mtimes(mnt, [*times, "enc/new.txt"])
    finally:
        new = h.close()
    for p in ("enc/a.txt", "plain/d", "enc/new.txt", "enc", "auth/c"):
        assert t_start - NS <= seen[p] <= t_end, p
    assert seen["top.txt"] == T0 + 999 and seen["auth"] == T0 + 555 and seen["link"] == T0 + 333
    assert seen["enc/sub/b.bin"] == times["enc/sub/b.bin"] and seen["enc/sub"] == times["enc/sub"]
    recorded = {e.path: e.mtime_ns for e in load_sealed(vol, key, new)[0].entries}
    assert recorded == seen
    out = tmp_path / "out"
    open_volume(vol, key, out, new)
    assert _mtimes(out, seen) == seen


@needs_fuse
def test_fuse_utimens_outside_the_format_range_is_einval(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        with pytest.raises(OSError) as ei:
            os.utime(mnt / "top.txt", ns=(0, -NS))
        assert ei.value.errno == 22
    finally:
        h.abort()


# --- tar headers (sconify) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pax", "mtime", "expected"),
    [
        (None, 1_700_000_000, 1_700_000_000 * NS),
        ("1700000000.123456789", 0, 1_700_000_000 * NS + 123_456_789),  # exact, not via a float
        ("1700000000.5", 0, 1_700_000_000 * NS + 500_000_000),
        ("1700000000.1234567891", 0, 1_700_000_000 * NS + 123_456_789),  # past ns: truncated
        ("-1.5", 0, -1_500_000_000),  # negative: the caller clamps
        ("nonsense", 0.0, 0),  # tarfile's own value for an unparsable number
        ("1e400", float("inf"), 0),
    ],
)
def test_tar_mtime_ns(pax: str | None, mtime: float, expected: int) -> None:
    info = tarfile.TarInfo("x")
    info.mtime = mtime
    if pax is not None:
        info.pax_headers = {"mtime": pax}
    assert tar_mtime_ns(info) == expected


def test_tar_mtime_from_a_real_pax_stream(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"mtime": "1234567890.000000001"}
        tf.addfile(ti, io.BytesIO(b""))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r") as tf:
        (member,) = tf.getmembers()
    assert tar_mtime_ns(member) == 1_234_567_890 * NS + 1


def _pax_member(mtime: str) -> tarfile.TarInfo:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"mtime": mtime}
        tf.addfile(ti, io.BytesIO(b""))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r") as tf:
        (member,) = tf.getmembers()
    return member


@pytest.mark.parametrize(
    ("pax", "clamped"),
    [("1e300", vf.MAX_MTIME_NS), ("-1e300", 0), ("1.7e308", vf.MAX_MTIME_NS), ("1e9", 10**18)],
)
def test_a_huge_finite_pax_mtime_is_clamped_not_a_crash(pax: str, clamped: int) -> None:
    """Found by the mutation campaign: tarfile reads pax ``mtime="1e300"`` as the float 1e300
    (not POSIX's decimal form, so not read exactly), and ``1e300 * 10**9`` overflowed to
    infinity: ``math.floor`` raised OverflowError out of sconify. Now exact (a fraction)."""
    ns = tar_mtime_ns(_pax_member(pax))
    assert isinstance(ns, int) and vf.clamp_mtime_ns(ns) == clamped


def test_mutated_pax_mtimes_never_raise() -> None:
    """Mutation campaign, bounded (fixed seed, 300 values): any pax ``mtime`` text gives an
    integer, which the format's clamp puts in range."""
    import random

    rng = random.Random(20261205)
    alphabet = "0123456789.-+eE_ naifINF\u0661\uff11x"
    seeds = ["1700000000.123456789", "-1.5", "1e300", "nan", "0"]
    for _ in range(300):
        text = list(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text) + 1)
            op = rng.randrange(3)
            if op == 0:
                text.insert(at, rng.choice(alphabet))
            elif op == 1 and at < len(text):
                text[at] = rng.choice(alphabet)
            elif text:
                del text[min(at, len(text) - 1)]
        value = "".join(text)
        if not value or (value != value.strip() and "\n" in value):
            continue
        ns = tar_mtime_ns(_pax_member(value))
        assert isinstance(ns, int) and 0 <= vf.clamp_mtime_ns(ns) <= vf.MAX_MTIME_NS, value
