"""Writing protected volumes: create, add, seal.

A volume is a directory::

    DIR/MANIFEST           sealed manifest (its SHA-256 is the volume tag)
    DIR/MANIFEST.pending   manifest written by `add`, replaced into MANIFEST by `seal`
    DIR/MANIFEST.pending.base  the sealed tag that pending manifest was built on, its staging
                           step and pending tag (docs/volume-format.md, "Pending tag")
    DIR/objects/<hex id>   one object per file, named by its random file id
    DIR/.lock              flock(2) lock: exclusive for writers, shared for read-only and
                           ephemeral mounts (created empty with the volume, or by the first
                           locker of an older volume; never in a directory without MANIFEST)
    DIR/.lock.intent       flock(2) lock a waiting writer holds, so that new shared lockers
                           wait behind it (confide.volume.lock; created empty with the
                           volume, or by the first writer of an older one)

Every write goes to a temporary name and is renamed into place after fsync, so a crash or an
error leaves the previous state intact (at worst unreferenced objects, removed by the next
seal). A sealed volume stays valid and unchanged while files are being added: only `seal`
replaces MANIFEST.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from confide.errors import ParseError, RollbackError, SignatureError, StorageError, UsageError
from confide.fsutil import fsync_dir, write_atomic
from confide.volume._io import copy_raw, encrypt_stream, open_objects_dir
from confide.volume.format import (
    DEFAULT_CHUNK_SIZE,
    FILE_ID_SIZE,
    MANIFEST_HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MAX_MANIFEST_BODY,
    MAX_MTIME_NS,
    MAX_PENDING_STEP,
    MIN_CHUNK_SIZE,
    ROOT_SIZE,
    TAG_SIZE,
    VOLUME_ID_SIZE,
    ChunkCodec,
    Entry,
    EntryKind,
    Manifest,
    ManifestState,
    Region,
    RegionRule,
    check_entries,
    check_path,
    clamp_mtime_ns,
    decode_manifest,
    derive_file_id,
    encode_manifest,
    pending_base_mac,
    pending_tag,
    region_for,
    volume_tag,
)
from confide.volume.keys import VolumeKey
from confide.volume.lock import INTENT_NAME, LOCK_NAME, acquire, lock_volume, open_lock

__all__ = [
    "INTENT_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "NO_PENDING",
    "OBJECTS_DIR",
    "PENDING_BASE_NAME",
    "PENDING_NAME",
    "SOURCE_DATE_EPOCH",
    "Staged",
    "add_sources",
    "check_expected_pending",
    "check_expected_tag",
    "create_volume",
    "live_objects",
    "load_sealed",
    "lock_volume",
    "object_path",
    "open_objects_dir",
    "pending_changes",
    "pending_is_sealed_leftover",
    "remove_objects",
    "seal_entries",
    "seal_volume",
    "source_date_epoch",
]

MANIFEST_NAME = "MANIFEST"
PENDING_NAME = "MANIFEST.pending"
PENDING_BASE_NAME = "MANIFEST.pending.base"
# Version 1 (written before pending tags): "<64 hex tag> <64 hex MAC>\n", exactly this long
_BASE_RECORD_SIZE = 2 * 64 + 2
# Version 2: a header line, then one or two "<64 hex base tag> <step> <64 hex pending tag>\n"
_RECORD_HEADER = b"confide-volume-pending 2\n"
_RECORD_MAX = len(_RECORD_HEADER) + 2 * (64 + 1 + 20 + 1 + 64 + 1)
NO_PENDING = "none"
"""``expected_pending`` value (CLI ``--expect-pending none``): there must be no staged changes."""
OBJECTS_DIR = "objects"
_TMP_PREFIX = ".tmp-"
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
_NS = 1_000_000_000

log = logging.getLogger("confide.volume")


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int | None:
    """``$SOURCE_DATE_EPOCH`` in nanoseconds, or None when it is unset or empty.

    reproducible-builds.org, "SOURCE_DATE_EPOCH specification" (section "SOURCE_DATE_EPOCH"):
    the value is an integer number of seconds since the epoch as printed by ``date +%s``, and a
    malformed value should make the build fail: :class:`UsageError` for anything but decimal
    digits (no sign, no fraction) or a value past the format's range.
    """
    raw = (os.environ if environ is None else environ).get(SOURCE_DATE_EPOCH)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) * _NS > MAX_MTIME_NS:
        raise UsageError(
            f"${SOURCE_DATE_EPOCH}: got {raw[:40]!r}, expected a decimal integer of seconds since "
            f"1970-01-01 UTC (0..{MAX_MTIME_NS // _NS}), as printed by `date +%s`"
        )
    return int(raw) * _NS


def object_path(directory: Path, file_id: bytes) -> Path:
    return directory / OBJECTS_DIR / file_id.hex()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the volume's lock exclusively (``add``, ``rm``, ``seal``), waiting as long as it
    takes, ahead of new shared lockers (:mod:`confide.volume.lock`)."""
    try:
        fd = open_lock(directory)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            # The volume directory is absent or a file: most often the arguments' order
            # (`confide volume add SRC DIR`). The class stays StorageError (exit 50).
            hint = (
                ": not a protected volume (the volume DIR comes first, as in `confide volume add DIR "
                "SRC...`; `confide volume create DIR` makes one)"
            )
        raise StorageError(f"volume {str(directory)!r}: cannot lock: {exc.strerror or exc}{hint}") from None
    try:
        acquire(directory, fd, shared=False, wait=math.inf)
        yield
    finally:
        os.close(fd)


@contextmanager
def _objects_dir(directory: Path) -> Iterator[int]:
    """The objects directory opened once for a writer (:func:`open_objects_dir`), closed after."""
    fd = open_objects_dir(directory)
    try:
        yield fd
    finally:
        os.close(fd)


def remove_objects(directory: Path, ids: Iterable[bytes]) -> None:
    """Remove the objects ``ids`` (absent ones are fine); see :func:`_remove` (the first
    failure is raised after trying all)."""
    names = [oid.hex() for oid in ids]
    if names:
        _remove(directory, names)


def _remove(directory: Path, names: Iterable[str] | None, keep: Collection[str] = ()) -> None:
    """Remove objects of the volume: ``names``, or with ``None`` every object not in ``keep``.
    The one delete loop of the writers (:func:`remove_objects`, :func:`_collect`).

    The objects directory is opened by :func:`open_objects_dir`: never through a symlink, and
    only one this user or root owns that neither group nor others can write (else
    :class:`StorageError`, nothing removed); every name is removed relative to it. The host,
    which controls the volume directory, could otherwise replace ``objects`` with a symlink to
    any directory of ours, or another user put names there, and have our files deleted. Absent
    objects are fine; the first other failure (e.g. a directory put there) is raised after
    trying all the others."""
    with _objects_dir(directory) as dfd:
        failed: OSError | None = None
        for name in os.listdir(dfd) if names is None else names:
            if name in keep:
                continue
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


def live_objects(entries: Sequence[Entry]) -> set[str]:
    """Names of the objects the entries reference: file ids, and chunk ids of chunked files."""
    live: set[str] = set()
    for e in entries:
        if e.kind is EntryKind.FILE:
            if e.chunks is None:
                live.add(e.file_id.hex())
            else:
                live.update(c.hex() for c in e.chunks)
    return live


def _objects_durable(directory: Path) -> None:
    """fsync the objects directory before a manifest that references its entries replaces
    the old one: :func:`write_object` renames each object into place after an fsync of its
    data, but the rename itself (the directory entry) is durable only once the directory is
    synced; without this a power loss could keep the new manifest and lose an object it
    lists (the manifest's own rename is synced by :func:`write_atomic`, a different
    directory). One fsync per seal, not per object."""
    if not os.path.lexists(directory / OBJECTS_DIR):
        return  # nothing written (a volume whose objects directory is gone has no objects)
    dfd = open_objects_dir(directory)  # never a symlink: the objects must be in the volume's own
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _collect(directory: Path, live: set[str]) -> None:
    """Delete the objects the new (durable) manifest does not reference (:func:`_remove`, so
    with the writers' checks of the objects directory). Best effort: the seal has happened, so
    a failure here (a removal refused, or an objects directory that is a symlink, or writable by
    others, since the seal checked it) must not report it as failed (its new tag would be lost
    to the caller); what is left is removed by the next seal (logged)."""
    try:
        _remove(directory, None, live)
    except (OSError, StorageError) as exc:
        reason = exc.message if isinstance(exc, StorageError) else exc.strerror or exc
        log.warning(
            "confide volume: %r: unreferenced objects not all removed (%s); the next seal removes them",
            str(directory),
            reason,
        )


def seal_entries(
    directory: Path, key: VolumeKey, base: Manifest, entries: Sequence[Entry], *, base_tag: str | None = None
) -> str:
    """Seal ``entries`` as the generation after ``base`` (the caller holds the lock); return the tag.

    The objects of all files must already be in place (fsync'ed). Objects no longer
    referenced are deleted once the new manifest is durable.

    ``base_tag`` (a mount's seal: the tag it mounted): MANIFEST must still have it, else
    :class:`StorageError` and nothing is written. Under the lock nobody else seals; but a lock
    file removed or replaced while the mount held it (a backup restored, ``rm``, the host) lets
    another writer in, and its seal, replaced here, would lose that writer's version (whose tag
    a CAS may hold by now) and delete the objects only it references.
    """
    if base_tag is not None:
        try:
            now = volume_tag(_read(directory / MANIFEST_NAME, MANIFEST_NAME))
        except UsageError:  # MANIFEST gone
            now = ""
        if not hmac.compare_digest(now.encode(), base_tag.encode()):
            raise StorageError(
                f"volume {str(directory)!r}: MANIFEST changed while the volume was mounted (tag "
                f"{now or 'none'}, mounted {base_tag}): another writer sealed it (was its lock file "
                f"{LOCK_NAME} removed or replaced?); this session's changes were not sealed"
            )
    ordered = tuple(sorted(entries, key=lambda e: e.path.encode()))
    sealed = replace(base, state=ManifestState.SEALED, generation=base.generation + 1, entries=ordered)
    data = encode_manifest(sealed, key.raw)
    _objects_durable(directory)
    write_atomic(directory / MANIFEST_NAME, data)
    _collect(directory, live_objects(ordered))
    return volume_tag(data)


def _read(path: Path, what: str) -> bytes:
    """A manifest file's bytes, as much as its header says it holds (plus one byte, so that a
    longer file is seen: :func:`parse_manifest_header` refuses any other length).

    The file is host storage: only a regular file is read (opened without blocking, so that a
    FIFO put in its place is an error, not a read that waits for ever), and never more than its
    header's body length allows, not a symlink to ``/dev/zero`` read until memory runs out; a
    body length above :data:`MAX_MANIFEST_BODY` (1 GiB) is a :class:`ParseError` before any
    of the body is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{str(path.parent)!r} is not a protected volume: {what} missing") from None
    except OSError as exc:
        raise StorageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"cannot read {str(path)!r}: not a regular file")
        head = _pread_upto(fd, MANIFEST_HEADER_SIZE, 0)
        if len(head) < MANIFEST_HEADER_SIZE:
            return head  # too short: parse_manifest_header names what is missing
        body_length = int.from_bytes(head[MANIFEST_HEADER_SIZE - 4 :], "little")
        if body_length > MAX_MANIFEST_BODY:  # refused before reading any of it
            raise ParseError(
                f"got {body_length}, expected at most {MAX_MANIFEST_BODY}",
                structure="volume manifest",
                field="body_length",
                offset=MANIFEST_HEADER_SIZE - 4,
            )
        return head + _pread_upto(fd, body_length + TAG_SIZE + 1, MANIFEST_HEADER_SIZE)
    except OSError as exc:
        raise StorageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _pread_upto(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes of ``fd`` from ``offset`` (fewer only at its end)."""
    out = bytearray()
    while len(out) < n:
        got = os.pread(fd, min(n - len(out), 1 << 24), offset + len(out))
        if not got:
            break
        out += got
    return bytes(out)


def load_sealed(directory: Path, key: VolumeKey, expected_tag: str | None = None) -> tuple[Manifest, str]:
    """Read, authenticate and parse the sealed manifest; return it with the volume tag.

    Order: authenticity first (:class:`SignatureError` if modified or wrong key), then the
    tag: an authentic manifest with another tag than ``expected_tag`` is an old (or forked)
    version of the volume, :class:`RollbackError`.
    """
    data = _read(directory / MANIFEST_NAME, MANIFEST_NAME)
    manifest = decode_manifest(data, key.raw)
    if manifest.state is not ManifestState.SEALED:
        raise SignatureError("MANIFEST is not a sealed manifest (a pending manifest was put in its place)")
    tag = volume_tag(data)
    if expected_tag is not None:
        want = expected_tag.strip().lower()
        if not hmac.compare_digest(tag.encode(), want.encode()):
            raise RollbackError(
                f"volume tag: got {tag} (generation {manifest.generation}), expected {want}: "
                "an old or different version of the volume"
            )
    return manifest, tag


def create_volume(
    directory: Path,
    key: VolumeKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    default_region: Region = Region.ENCRYPTED,
    rules: Sequence[RegionRule] = (),
    volume_id: bytes | None = None,
) -> str:
    """Create an empty sealed volume (generation 0) in ``directory``; return its tag.

    ``directory`` must be absent or empty. ``volume_id`` defaults to 16 random bytes (pass one
    only for reproducible builds).
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size: got {chunk_size}, expected {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    vid = secrets.token_bytes(VOLUME_ID_SIZE) if volume_id is None else volume_id
    if len(vid) != VOLUME_ID_SIZE:
        raise UsageError(f"volume id: got {len(vid)} bytes, expected {VOLUME_ID_SIZE}")
    rules = _merge_rules((), rules)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise UsageError(f"{str(directory)!r}: got a non-empty directory, expected an absent/empty one")
        (directory / OBJECTS_DIR).mkdir(mode=0o755)
        fsync_dir(directory.parent)  # the volume directory's own entry (write_atomic syncs its contents)
    except OSError as exc:
        raise StorageError(f"cannot create volume {str(directory)!r}: {exc.strerror or exc}") from None
    m = Manifest(vid, 0, ManifestState.SEALED, chunk_size, default_region, rules, ())
    data = encode_manifest(m, key.raw)
    write_atomic(directory / MANIFEST_NAME, data)
    # the lock file now, so that shared lockers (read-only and ephemeral mounts) never have to
    # create anything in the volume directory
    for name in (LOCK_NAME, INTENT_NAME):
        with suppress(OSError):
            os.close(open_lock(directory, name))
    return volume_tag(data)


def _merge_rules(old: Sequence[RegionRule], new: Sequence[RegionRule]) -> tuple[RegionRule, ...]:
    merged = {r.prefix: r for r in old}
    for r in new:
        try:
            check_path(r.prefix, "region prefix")
        except ParseError as exc:
            raise UsageError(exc.message) from None
        merged[r.prefix] = r
    return tuple(sorted(merged.values(), key=lambda r: r.prefix.encode()))


def check_expected_tag(expected_tag: str | None) -> str | None:
    """``expected_tag`` normalised (stripped, lower case), or None; :class:`UsageError` unless it
    is 64 hex digits (a volume tag, docs/volume-format.md, "Directory layout")."""
    if expected_tag is None:
        return None
    want = expected_tag.strip().lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise UsageError(f"expected tag: got {expected_tag[:80]!r}, expected 64 hex digits (a volume tag)")
    return want


def check_expected_pending(expected_pending: str | None) -> str | None:
    """``expected_pending`` normalised: None, :data:`NO_PENDING` (``none``, any case), or a pending
    tag (64 lower-case hex digits); :class:`UsageError` otherwise (docs/volume-format.md,
    "Pending tag")."""
    if expected_pending is None:
        return None
    want = expected_pending.strip().lower()
    if want == NO_PENDING:
        return NO_PENDING
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise UsageError(
            f"expected pending tag: got {expected_pending[:80]!r}, expected 64 hex digits (the pending "
            f"tag an add or rm printed) or {NO_PENDING!r}"
        )
    return want


@dataclass(frozen=True)
class _Record:
    """What the base record says of the pending manifest it authenticates: the sealed tag it was
    staged on and, for a version 2 record, its staging step and pending tag (None for a version 1
    record, written before pending tags existed)."""

    base: str
    step: int | None = None
    tag: str | None = None


def _is_hex64(raw: bytes) -> bool:
    return len(raw) == 64 and all(c in b"0123456789abcdef" for c in raw)


def _read_record(directory: Path) -> bytes | None:
    """The base record's bytes (at most :data:`_RECORD_MAX` + 1), or None when it is missing,
    not a regular file (never read through a symlink, never a FIFO) or unreadable."""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(directory / PENDING_BASE_NAME, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, _RECORD_MAX + 1, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _pending_record(directory: Path, key: VolumeKey, volume_id: bytes, pending: bytes) -> _Record | None:
    """The base record of the pending manifest ``pending`` (docs/volume-format.md, "Pending base"
    and "Pending tag"), or None when the record is missing, malformed or does not authenticate
    for these pending bytes (a pending manifest staged by a confide without base records, an
    interrupted add/rm, or a host's edit: all are "base unknown", which a caller with an
    expected tag or pending tag refuses).

    A version 2 record lists the staged state and, from step 2 on, the state before it (written
    before the pending manifest, so that an add/rm killed between the two writes leaves the
    previous pending manifest with a record that still authenticates it); the line whose
    pending tag authenticates ``pending`` is the one returned. The record is host storage: read
    bounded and strictly, each line checked by recomputing its MAC (constant-time compare)."""
    raw = _read_record(directory)
    if raw is None or len(raw) > _RECORD_MAX:
        return None
    if raw.startswith(_RECORD_HEADER):
        body = raw[len(_RECORD_HEADER) :]
        if not body.endswith(b"\n"):
            return None
        lines = body[:-1].split(b"\n")
        if not 1 <= len(lines) <= 2:
            return None
        for line in lines:
            parts = line.split(b" ")
            if len(parts) != 3:
                return None
            base, step_raw, tag = parts
            if not (_is_hex64(base) and _is_hex64(tag) and step_raw.isdigit() and len(step_raw) <= 20):
                return None
            if step_raw.startswith(b"0"):
                return None
            step = int(step_raw)
            if step > MAX_PENDING_STEP:
                return None
            want = pending_tag(key.raw, volume_id, pending, base.decode("ascii"), step)
            if hmac.compare_digest(want.encode("ascii"), tag):
                return _Record(base.decode("ascii"), step, want)
        return None
    parts = raw.split(b" ")
    if len(raw) != _BASE_RECORD_SIZE or len(parts) != 2 or not raw.endswith(b"\n"):
        return None
    if not (_is_hex64(parts[0]) and _is_hex64(parts[1][:-1])):
        return None
    base_tag = parts[0].decode("ascii")
    mac = bytes.fromhex(parts[1][:-1].decode("ascii"))
    if not hmac.compare_digest(mac, pending_base_mac(key.raw, volume_id, pending, base_tag)):
        return None
    return _Record(base_tag)


def _write_pending(
    directory: Path, key: VolumeKey, m: Manifest, base_tag: str, previous: _Record | None
) -> tuple[str, int]:
    """Write the pending manifest ``m`` and its base record; return (pending tag, step).

    ``previous``: the authentic record of the pending manifest this one replaces (None when
    there was none, or it was unknown). The step is one more than its step when it was a
    version 2 record of the same base, else 1. The record is written first and lists the new
    state and the previous one: a crash between the two writes leaves the previous pending
    manifest, which the record still authenticates (at its own step and tag), not a pending
    manifest of unknown base. Each write is atomic (:func:`write_atomic`)."""
    prev_step = previous.step if previous is not None and previous.base == base_tag else None
    step = 1 if prev_step is None else prev_step + 1
    if step > MAX_PENDING_STEP:
        raise StorageError(f"{PENDING_NAME}: {step - 1} staging steps since the seal: seal first")
    data = encode_manifest(m, key.raw)
    tag = pending_tag(key.raw, m.volume_id, data, base_tag, step)
    lines = [f"{base_tag} {step} {tag}\n"]
    if previous is not None and prev_step is not None:
        lines.append(f"{previous.base} {prev_step} {previous.tag}\n")
    write_atomic(directory / PENDING_BASE_NAME, _RECORD_HEADER + "".join(lines).encode("ascii"))
    write_atomic(directory / PENDING_NAME, data)
    return tag, step


def _drop_pending(directory: Path) -> None:
    """Remove MANIFEST.pending, then its base record (missing either is fine), durably."""
    (directory / PENDING_NAME).unlink(missing_ok=True)
    (directory / PENDING_BASE_NAME).unlink(missing_ok=True)
    fsync_dir(directory)


def _already_sealed(pending: Manifest, sealed: Manifest, tag: str, key: VolumeKey) -> bool:
    """Whether the (authentic) pending manifest ``pending`` is what MANIFEST (``sealed``, with
    tag ``tag``) already seals: the leftover of a `seal` interrupted between its two renames."""
    if pending.generation + 1 != sealed.generation:
        return False
    # encode_manifest is deterministic: equal bytes iff this pending is what was sealed
    as_sealed = replace(pending, state=ManifestState.SEALED, generation=sealed.generation)
    return hmac.compare_digest(volume_tag(encode_manifest(as_sealed, key.raw)), tag)


def pending_is_sealed_leftover(directory: Path, key: VolumeKey, sealed: Manifest, tag: str) -> bool:
    """Whether ``MANIFEST.pending`` exists and only repeats what MANIFEST (``sealed``, loaded and
    authenticated by the caller, with tag ``tag``) already seals: the leftover of an interrupted
    `seal` (see :func:`_working`). Read-only, for `verify`: nothing is removed (`add`, `rm`,
    `seal` and a writable mount remove it). A pending manifest that cannot be read or does not
    authenticate under ``key`` is not such a leftover (``False``)."""
    try:
        pending = decode_manifest(_read(directory / PENDING_NAME, PENDING_NAME), key.raw)
    except (ParseError, SignatureError, StorageError, UsageError):  # absent, unreadable, or not ours
        return False
    return pending.state is ManifestState.PENDING and _already_sealed(pending, sealed, tag, key)


def _working(
    directory: Path,
    key: VolumeKey,
    expected_tag: str | None = None,
    *,
    expected_pending: str | None = None,
    check_base: bool = True,
) -> tuple[Manifest, str, _Record | None]:
    """The manifest that `add`/`rm`/`seal` change: the pending one, else the sealed one (the
    caller holds the lock), with the current sealed tag and the pending manifest's authentic
    base record (None when nothing is pending or its base is unknown). A pending manifest that
    the current MANIFEST already seals is the leftover of a `seal` interrupted between the two
    renames (:func:`seal_volume` replaces MANIFEST, then removes MANIFEST.pending): it is
    removed, not reported as a conflict.

    Freshness (docs/volume-format.md, "Pending base"): with ``expected_tag`` (normalised by
    :func:`check_expected_tag`), a sealed MANIFEST with another tag is a :class:`RollbackError`.
    A pending manifest whose base record names another tag than the current MANIFEST's was
    built on another sealed version (the host rolled MANIFEST back or swapped in a fork of the
    same generation since): :class:`RollbackError`, with or without ``expected_tag``. One whose
    base is unknown is refused only with ``expected_tag`` (its freshness cannot be shown).

    ``expected_pending`` (normalised by :func:`check_expected_pending`; "Pending tag"): a pending
    tag requires the pending manifest whose authentic record carries exactly this tag (an
    earlier staged state, another volume's or base's, or no pending manifest at all:
    :class:`RollbackError`); :data:`NO_PENDING` requires that nothing is staged. An
    already-sealed leftover counts as nothing staged, and as the expected state when its record
    carries the expected tag (the seal that made it completed). Every refusal changes nothing.
    ``check_base=False`` (:func:`pending_changes`, which only reports) skips the base record."""
    sealed, tag = load_sealed(directory, key, expected_tag)
    pending_path = directory / PENDING_NAME
    if not pending_path.exists():
        if expected_pending not in (None, NO_PENDING):
            raise RollbackError(
                f"pending tag: got no {PENDING_NAME} (nothing staged on tag {tag}), expected pending "
                f"tag {expected_pending}: the staged changes were removed or already sealed; "
                "nothing was changed"
            )
        return sealed, tag, None
    data = _read(pending_path, PENDING_NAME)
    pending = decode_manifest(data, key.raw)
    if pending.state is not ManifestState.PENDING or pending.volume_id != sealed.volume_id:
        raise SignatureError(f"{PENDING_NAME} does not belong to this volume's current state")
    record = _pending_record(directory, key, pending.volume_id, data) if check_base else None
    if _already_sealed(pending, sealed, tag, key):
        if expected_pending not in (None, NO_PENDING) and not (
            record is not None
            and record.tag is not None
            and hmac.compare_digest(record.tag.encode(), expected_pending.encode())
        ):
            raise RollbackError(
                f"pending tag: got only an already sealed {PENDING_NAME} (tag {tag}), expected pending "
                f"tag {expected_pending}: the staged changes were removed; nothing was changed"
            )
        log.info("confide volume: %r: removing %s, already sealed (an interrupted seal)", str(directory),
                 PENDING_NAME)  # fmt: skip
        _drop_pending(directory)
        return sealed, tag, None
    if expected_pending == NO_PENDING:
        at = f" (step {record.step}, pending tag {record.tag})" if record is not None and record.step else ""
        raise RollbackError(
            f"pending tag: got a staged {PENDING_NAME}{at}, expected none: changes are staged that this "
            "command was told not to build on; nothing was changed. Give their pending tag instead, or "
            f"remove {PENDING_NAME} and stage again"
        )
    if expected_pending is not None:
        if record is None or record.tag is None:
            why = "no authentic base record" if record is None else "a base record without a pending tag"
            raise RollbackError(
                f"pending tag: {PENDING_NAME} has {why} (staged by an older confide, an interrupted add/rm "
                f"or edited), expected pending tag {expected_pending}: it cannot be shown to be the "
                "staged state; nothing was changed"
            )
        if not hmac.compare_digest(record.tag.encode(), expected_pending.encode()):
            raise RollbackError(
                f"pending tag: got {record.tag} (step {record.step}), expected {expected_pending}: "
                f"{PENDING_NAME} is not the state last staged (an earlier one put back, or another "
                "volume's or base's); nothing was changed"
            )
    if pending.generation != sealed.generation:
        raise StorageError(
            f"{PENDING_NAME}: got base generation {pending.generation}, expected {sealed.generation}; "
            "remove it and add the files again"
        )
    if not check_base:
        return pending, tag, None
    if record is not None and not hmac.compare_digest(record.base.encode(), tag.encode()):
        raise RollbackError(
            f"{PENDING_NAME} was staged on volume tag {record.base}, but MANIFEST now has tag {tag} "
            f"(generation {sealed.generation}): the sealed version changed since (rolled back or "
            f"forked); nothing was changed. Check the volume (verify --tag), then remove {PENDING_NAME} "
            "and add the files again"
        )
    if record is None and expected_tag is not None:
        raise RollbackError(
            f"{PENDING_NAME} records no authentic base tag (staged by an older confide, an interrupted "
            f"add/rm, or edited), so it cannot be shown to build on tag {tag}; nothing was changed. "
            f"Remove {PENDING_NAME} and add the files again"
        )
    return pending, tag, record


def _walk(src: Path, dest: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield (volume path, source path, lstat) for ``src`` and everything below it, no symlink followed."""
    try:
        st = src.lstat()
    except OSError as exc:
        raise UsageError(f"cannot read source {str(src)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        if dest:
            yield dest, src, st
        stack = [(src, dest)]
        while stack:
            d, vpath = stack.pop()
            try:
                with os.scandir(d) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise UsageError(f"cannot list {str(d)!r}: {exc.strerror or exc}") from None
            for child in children:
                cpath = f"{vpath}/{child.name}" if vpath else child.name
                cst = child.stat(follow_symlinks=False)
                yield cpath, Path(child.path), cst
                if stat.S_ISDIR(cst.st_mode):
                    stack.append((Path(child.path), cpath))
    else:
        name = f"{dest}/{src.name}" if dest else src.name
        yield name, src, st


def _content_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _store_file(
    directory: Path,
    key: VolumeKey,
    m: Manifest,
    vpath: str,
    src: Path,
    *,
    region: Region,
    deterministic: bool,
    objects_fd: int | None = None,
) -> tuple[bytes, int, bytes, int]:
    """Write the object of one file; return (file id, size, root, source mtime in ns).

    The time is the source's when it was opened (before its contents were read).
    ``objects_fd``: as for :func:`write_object`."""
    if deterministic:
        file_id = derive_file_id(key.raw, m.volume_id, vpath, _content_digest(src), region)
    else:
        file_id = secrets.token_bytes(FILE_ID_SIZE)
    src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{str(src)!r} changed into a non-regular file while adding")
        size, root = write_object(directory, key, m, file_id, region, src_fd, objects_fd=objects_fd)
    finally:
        os.close(src_fd)
    return file_id, size, root, st.st_mtime_ns


def write_object(
    directory: Path,
    key: VolumeKey,
    m: Manifest,
    file_id: bytes,
    region: Region,
    src_fd: int,
    *,
    objects_fd: int | None = None,
) -> tuple[int, bytes]:
    """Write the object of ``file_id`` from ``src_fd`` (read from its current offset to EOF):
    encrypted in chunks (format.md, "Objects"), or copied as is for the unprotected region.
    Written under a temporary name, fsynced, then renamed: a failure leaves nothing behind.
    Returns (plaintext size, file root; zeros for unprotected objects).

    Written relative to ``objects_fd`` (from :func:`~confide.volume._io.open_objects_dir`; the
    caller keeps it open across its writes), or to the objects directory opened here when it
    is None: never through a symlinked ``objects`` (:class:`StorageError`)."""
    dfd = open_objects_dir(directory) if objects_fd is None else objects_fd
    try:
        final = file_id.hex()
        # A new name of our own, never through a symlink: a file id can be known in advance
        # (deterministic ids of a file added again), and the host could have put a symlink there.
        tmp = f"{_TMP_PREFIX}{final}-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst_fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
        try:
            try:
                if region is Region.UNPROTECTED:
                    size, root = copy_raw(src_fd, dst_fd), bytes(ROOT_SIZE)
                else:
                    codec = ChunkCodec(key.raw, m.volume_id, file_id, region)
                    size, root = encrypt_stream(src_fd, dst_fd, codec, m.chunk_size)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
            os.replace(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        if objects_fd is None:
            os.close(dfd)
    return size, root


class Staged(list[Entry]):
    """The entries an :func:`add_sources` or :func:`remove_paths` added or removed (a list, as
    before), with what it staged: ``pending_tag`` (64 hex digits, docs/volume-format.md,
    "Pending tag"; pass it as ``expected_pending`` to the next add, rm or seal) and ``step``
    (1 for the first add/rm after a seal)."""

    def __init__(self, entries: Iterable[Entry], pending_tag: str, step: int) -> None:
        super().__init__(entries)
        self.pending_tag = pending_tag
        self.step = step


def add_sources(
    directory: Path,
    key: VolumeKey,
    sources: Sequence[Path],
    *,
    dest: str = "",
    rules: Sequence[RegionRule] = (),
    deterministic: bool = False,
    mtime_ns: int | None = None,
    mtime_clamp_ns: int | None = None,
    expected_tag: str | None = None,
    expected_pending: str | None = None,
) -> Staged:
    """Add files, directories and symlinks from ``sources`` to the pending manifest.

    Each entry records its source's modification time (``lstat``; a file's when it is opened),
    or ``mtime_ns`` for every entry when given; ``mtime_clamp_ns`` (e.g. from
    :func:`source_date_epoch`) lowers every later time to it, as reproducible-builds.org's
    SOURCE_DATE_EPOCH specification describes ("Timestamp clamping"). Times before 1970 are
    recorded as the epoch (the format's range, docs/volume-format.md).

    A source directory's *contents* go below ``dest`` (the volume root by default); a source
    file or symlink goes to ``dest/<name>``. ``rules`` add region rules to the volume (longest
    prefix wins; paths matching none get the volume's default region). Files already in the
    volume are replaced (a new file id, hence a new key). Special files are refused. Hard links
    are stored as separate files. Returns the entries added or replaced, with the new pending
    tag (:class:`Staged`). Nothing is visible to verify/open until :func:`seal_volume`.

    ``expected_tag``: refuse (:class:`RollbackError`, nothing changed) unless the sealed
    MANIFEST has this tag and any pending manifest was staged on it (:func:`_working`).
    ``expected_pending``: refuse likewise unless the staged state is the one with this pending
    tag (the last add/rm printed it), or with ``"none"`` unless nothing is staged.
    """
    want = check_expected_tag(expected_tag)
    want_pending = check_expected_pending(expected_pending)
    if dest:
        try:
            check_path(dest, "--dest")
        except ParseError as exc:
            raise UsageError(exc.message) from None
    for what, value in (("mtime_ns", mtime_ns), ("mtime_clamp_ns", mtime_clamp_ns)):
        if value is not None and not 0 <= value <= MAX_MTIME_NS:
            raise UsageError(f"{what}: got {value} ns, expected 0..{MAX_MTIME_NS}")

    def recorded(source_ns: int) -> int:
        t = source_ns if mtime_ns is None else mtime_ns
        return clamp_mtime_ns(t if mtime_clamp_ns is None else min(t, mtime_clamp_ns))

    with _locked(directory), _objects_dir(directory) as objects_fd:
        m, base_tag, record = _working(directory, key, want, expected_pending=want_pending)
        merged = _merge_rules(m.rules, rules)
        entries = m.by_path()
        added: list[Entry] = []
        for src in sources:
            for vpath, spath, st in _walk(src, dest):
                try:
                    check_path(vpath)
                except ParseError as exc:
                    raise UsageError(f"source {str(spath)!r}: {exc.message}") from None
                mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                t = recorded(st.st_mtime_ns)
                old = entries.get(vpath)
                if stat.S_ISDIR(st.st_mode):
                    e = Entry(vpath, EntryKind.DIR, mode, uid, gid, Region.UNPROTECTED, mtime_ns=t)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(spath)
                    try:
                        target.encode("utf-8")
                    except UnicodeEncodeError:
                        raise UsageError(f"symlink {str(spath)!r}: target is not valid UTF-8") from None
                    e = Entry(
                        vpath,
                        EntryKind.SYMLINK,
                        mode,
                        uid,
                        gid,
                        Region.UNPROTECTED,
                        target=target,
                        mtime_ns=t,
                    )
                elif stat.S_ISREG(st.st_mode):
                    region = region_for(vpath, merged, m.default_region)
                    fid, size, root, file_ns = _store_file(
                        directory, key, m, vpath, spath, region=region, deterministic=deterministic,
                        objects_fd=objects_fd,
                    )  # fmt: skip
                    e = Entry(vpath, EntryKind.FILE, mode, uid, gid, region, fid, size, root,
                              mtime_ns=recorded(file_ns))  # fmt: skip
                else:
                    raise UsageError(
                        f"source {str(spath)!r}: got a special file (mode {st.st_mode:#o}), "
                        "expected a regular file, directory or symlink"
                    )
                if old is not None and old.kind is not e.kind:
                    raise UsageError(
                        f"{vpath!r}: got a {e.kind.name.lower()}, but the volume has a "
                        f"{old.kind.name.lower()} there"
                    )
                entries[vpath] = e
                added.append(e)
        new = replace(
            m,
            state=ManifestState.PENDING,
            rules=merged,
            entries=tuple(sorted(entries.values(), key=lambda e: e.path.encode())),
        )
        try:
            check_entries(new.entries)
        except ParseError as exc:
            raise UsageError(exc.message) from None
        ptag, step = _write_pending(directory, key, new, base_tag, record)
        return Staged(added, ptag, step)


def remove_paths(
    directory: Path,
    key: VolumeKey,
    paths: Sequence[str],
    *,
    recursive: bool = False,
    expected_tag: str | None = None,
    expected_pending: str | None = None,
) -> Staged:
    """Remove ``paths`` (volume paths) from the pending manifest; return the entries removed.

    A directory that still has entries below it (listed, or an implicit directory: a prefix
    of other paths) is removed only with ``recursive``, together with everything below it.
    A path that is not in the volume is an error. All or nothing: on any error the pending
    manifest is unchanged. The removed files' objects are deleted by :func:`seal_volume`, so
    the sealed version stays readable until then. ``expected_tag``, ``expected_pending`` and the
    result's pending tag: as for :func:`add_sources`.
    """
    want = check_expected_tag(expected_tag)
    want_pending = check_expected_pending(expected_pending)
    wanted: list[str] = []
    for raw in paths:
        path = raw.strip("/")
        try:
            check_path(path, "path")
        except ParseError as exc:
            raise UsageError(exc.message) from None
        wanted.append(path)
    if not wanted:
        raise UsageError("got no path to remove, expected at least one")
    with _locked(directory):
        m, base_tag, record = _working(directory, key, want, expected_pending=want_pending)
        entries = m.by_path()
        removed: dict[str, Entry] = {}
        for path in wanted:
            below = [p for p in entries if p.startswith(path + "/")]
            if path not in entries and not below:
                raise UsageError(f"{path!r} is not in the volume")
            if below and not recursive:
                raise UsageError(
                    f"{path!r} is a directory with {len(below)} entries below it; use --recursive"
                )
            for p in ([path] if path in entries else []) + below:
                removed[p] = entries[p]
        kept = tuple(e for p, e in sorted(entries.items(), key=lambda kv: kv[0].encode()) if p not in removed)
        new = replace(m, state=ManifestState.PENDING, entries=kept)
        ptag, step = _write_pending(directory, key, new, base_tag, record)
        return Staged(sorted(removed.values(), key=lambda e: e.path.encode()), ptag, step)


def pending_changes(directory: Path, key: VolumeKey, *, locked: bool = False) -> bool:
    """Whether the volume has unsealed changes (``MANIFEST.pending``), after removing a pending
    manifest that the current MANIFEST already seals (see :func:`_working`). Takes the writer
    lock without waiting when there is a pending manifest (:class:`StorageError` if in use),
    unless the caller holds it (``locked``)."""
    if not (directory / PENDING_NAME).exists():
        return False
    lock = None if locked else lock_volume(directory, shared=False)
    try:
        _working(directory, key, check_base=False)
        return (directory / PENDING_NAME).exists()
    finally:
        if lock is not None:
            os.close(lock)


def seal_volume(
    directory: Path, key: VolumeKey, expected_tag: str | None = None, *, expected_pending: str | None = None
) -> str:
    """Turn the pending manifest into the sealed one (generation + 1); return the new tag.

    Without pending changes, the current tag is returned unchanged. Objects no longer
    referenced are deleted after the new manifest is in place. ``expected_tag``: refuse
    (:class:`RollbackError`, nothing changed) unless the sealed MANIFEST has this tag and the
    pending manifest was staged on it; without it, a pending manifest staged on another tag
    is still refused (:func:`_working`). ``expected_pending``: refuse likewise unless the staged
    state is the one with this pending tag (docs/volume-format.md, "Pending tag"): a host that put
    an earlier pending manifest back cannot have the later changes dropped.
    """
    want = check_expected_tag(expected_tag)
    want_pending = check_expected_pending(expected_pending)
    with _locked(directory):
        pending_path = directory / PENDING_NAME
        m, tag, _record = _working(directory, key, want, expected_pending=want_pending)
        if not pending_path.exists():  # nothing pending (or only an already sealed leftover)
            return tag
        sealed = replace(m, state=ManifestState.SEALED, generation=m.generation + 1)
        data = encode_manifest(sealed, key.raw)
        _objects_durable(directory)
        write_atomic(directory / MANIFEST_NAME, data)
        _drop_pending(directory)
        _collect(directory, live_objects(sealed.entries))
        return volume_tag(data)
