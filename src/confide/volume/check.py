"""Reading whole protected volumes: verify (report every bad file) and open (extract).

``open_volume`` never leaves unauthenticated bytes readable under a final name: each file is
decrypted into a mode-0600 temporary name inside a private staging directory and renamed
only after all its chunks and its root authenticated; the staging directory is removed on
any error, and entries are moved into the target only after the whole volume authenticated.
Recorded modification times are applied last for directories (after their contents are in
place, which would otherwise change them again).
"""

from __future__ import annotations

import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from confide.errors import ConfideError, SignatureError, StorageError, UsageError
from confide.volume._chunked import ChunkReader
from confide.volume._io import check_unprotected, copy_unprotected, decrypt_object, open_object
from confide.volume.format import ChunkCodec, ChunkKeys, Entry, EntryKind, Manifest, Region
from confide.volume.keys import VolumeKey
from confide.volume.store import (
    OBJECTS_DIR,
    PENDING_NAME,
    live_objects,
    load_sealed,
    object_path,
    pending_is_sealed_leftover,
)

__all__ = ["OpenResult", "Problem", "VerifyReport", "open_volume", "verify_volume"]


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass
class VerifyReport:
    tag: str
    generation: int
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    unreferenced_objects: list[str] = field(default_factory=list)
    pending_changes: bool = False
    sealed_leftover: bool = False
    """MANIFEST.pending only repeats what MANIFEST seals (an interrupted seal's leftover; kept)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            listed = "; ".join(f"{p.path}: {p.reason}" for p in self.problems[:5])
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            raise SignatureError(f"{len(self.problems)} file(s) failed verification: {listed}{more}")


def _workers(workers: int | None) -> int:
    return max(1, workers if workers is not None else min(4, os.cpu_count() or 1))


def _chunk_reader(directory: Path, key: VolumeKey, m: Manifest) -> ChunkReader:
    """One reader of the chunk objects for a whole verify/open (every chunk is read once, so
    no AES-GCM contexts are cached)."""
    return ChunkReader(directory, ChunkKeys(key.raw, m.volume_id), m.chunk_size, key_cache=0)


def _check_file(
    directory: Path,
    key: VolumeKey,
    m: Manifest,
    e: Entry,
    *,
    out_fd: int | None,
    pool: ThreadPoolExecutor | None,
    chunks: ChunkReader,
    write_piece: int | None = None,
) -> None:
    if e.chunks is not None:  # a chunked file (version 3): one object per chunk, batches in the pool
        chunks.decrypt(e, out_fd, executor=pool, write_piece=write_piece)
        return
    try:
        obj_fd = open_object(object_path(directory, e.file_id))
    except FileNotFoundError:
        raise SignatureError(f"object {e.file_id.hex()} is missing") from None
    except OSError as exc:
        raise SignatureError(f"object {e.file_id.hex()} unreadable: {exc.strerror or exc}") from None
    try:
        if e.region is Region.UNPROTECTED:  # content not authenticated; its size is
            if out_fd is not None:
                copy_unprotected(obj_fd, out_fd, e)
            else:
                check_unprotected(obj_fd, e)
            return
        codec = ChunkCodec(key.raw, m.volume_id, e.file_id, e.region)
        decrypt_object(obj_fd, out_fd, codec, e, m.chunk_size, executor=pool, write_piece=write_piece)
    finally:
        os.close(obj_fd)


def verify_volume(
    directory: Path, key: VolumeKey, expected_tag: str | None = None, *, workers: int | None = None
) -> VerifyReport:
    """Authenticate the manifest, check the tag, then every file; report every bad file.

    Raises (without a report) when the manifest itself is unusable: :class:`SignatureError`,
    :class:`~confide.errors.ParseError`, or :class:`~confide.errors.RollbackError` for an
    authentic manifest whose tag is not ``expected_tag``.

    Changes nothing: a ``MANIFEST.pending`` that MANIFEST already seals (left by a `seal`
    interrupted between its renames) is not a pending change (``sealed_leftover``) and is left
    in place for `add`, `rm`, `seal` or a writable mount to remove.
    """
    m, tag = load_sealed(directory, key, expected_tag)
    report = VerifyReport(tag=tag, generation=m.generation)
    if (directory / PENDING_NAME).exists():
        # read-only: a leftover of an interrupted seal is reported as such, not removed
        report.sealed_leftover = pending_is_sealed_leftover(directory, key, m, tag)
        report.pending_changes = not report.sealed_leftover
    chunks = _chunk_reader(directory, key, m)
    with chunks, ThreadPoolExecutor(_workers(workers)) as pool:
        for e in m.entries:
            if e.kind is not EntryKind.FILE:
                continue
            report.files += 1
            try:
                _check_file(directory, key, m, e, out_fd=None, pool=pool, chunks=chunks)
                report.bytes += e.size
            except SignatureError as exc:
                report.problems.append(Problem(e.path, exc.message))
    live = live_objects(m.entries)
    try:
        names = sorted(p.name for p in (directory / OBJECTS_DIR).iterdir())
    except OSError as exc:
        raise StorageError(f"cannot list objects: {exc.strerror or exc}") from None
    report.unreferenced_objects = [n for n in names if n not in live]
    return report


@dataclass(frozen=True)
class OpenResult:
    tag: str
    generation: int
    files: int
    bytes: int


def _prepare_target(target: Path) -> None:
    try:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UsageError(f"--to {str(target)!r}: got a non-directory, expected an empty directory")
        if target.exists():
            if any(target.iterdir()):
                raise UsageError(f"--to {str(target)!r}: got a non-empty directory, expected an empty one")
        else:
            target.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise StorageError(f"cannot prepare {str(target)!r}: {exc.strerror or exc}") from None


def _implicit_dirs(path: Path, top: Path) -> None:
    """Create ``path`` and its missing parents below ``top``: directories the manifest does not
    list (implicit), mode 0755 whatever the umask, as the FUSE mount reports them and as a
    writable tmpfs mount's unmount expects them (a 0700 one, under umask 077, would be sealed
    as a listed directory of that mode: a new tag for an unchanged tree)."""
    missing: list[Path] = []
    while path != top and not path.is_dir():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)  # noqa: S103 - what implicit directories are (docs/volume-format.md)


def open_volume(
    directory: Path,
    key: VolumeKey,
    target: Path,
    expected_tag: str | None = None,
    *,
    workers: int | None = None,
    preserve_owner: bool | None = None,
    write_piece: int | None = None,
) -> OpenResult:
    """Decrypt the sealed volume into ``target`` (absent or empty, e.g. on a tmpfs).

    Raises on the first integrity failure (:class:`SignatureError` naming the file) after
    removing everything it wrote. ``preserve_owner`` (default: when running as root) applies
    the recorded uid/gid. Zero chunks become holes, so sparse files stay sparse. Every listed
    entry gets its recorded modification time (the access time is set to it as well: the format
    stores no access times); implicit directories keep the time of extraction.
    ``write_piece`` splits the plaintext writes at multiples of that many bytes (see
    :data:`confide.volume._io.LARGE_FOLIO_PIECE`, for a tmpfs mounted with huge=within_size).
    """
    m, tag = load_sealed(directory, key, expected_tag)
    _prepare_target(target)
    owner = os.geteuid() == 0 if preserve_owner is None else preserve_owner
    staging = target / f".confide-open-{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    total = files = 0
    chunks = _chunk_reader(directory, key, m)
    try:
        with chunks, ThreadPoolExecutor(_workers(workers)) as pool:
            for e in m.entries:
                dest = staging / e.path
                _implicit_dirs(dest.parent, staging)
                if e.kind is EntryKind.DIR:
                    dest.mkdir(mode=0o700, exist_ok=True)
                elif e.kind is EntryKind.SYMLINK:
                    os.symlink(e.target, dest)
                    if owner:
                        os.lchown(dest, e.uid, e.gid)
                    os.utime(dest, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
                else:
                    tmp = dest.with_name(f".confide-part-{secrets.token_hex(8)}")
                    out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    try:
                        _check_file(
                            directory,
                            key,
                            m,
                            e,
                            out_fd=out_fd,
                            pool=pool,
                            chunks=chunks,
                            write_piece=write_piece,
                        )
                        if owner:
                            os.fchown(out_fd, e.uid, e.gid)
                        os.fchmod(out_fd, e.mode)
                        os.utime(out_fd, ns=(e.mtime_ns, e.mtime_ns))  # after the last write
                    except ConfideError as exc:
                        raise SignatureError(f"volume file {e.path!r}: {exc.message}") from None
                    finally:
                        os.close(out_fd)
                    os.rename(tmp, dest)
                    files += 1
                    total += e.size
        # Everything authenticated: move the tree into place, then set directory modes and
        # times, children before parents (reverse path order), after the last change inside.
        for child in sorted(staging.iterdir()):
            os.rename(child, target / child.name)
        staging.rmdir()
        for e in reversed(m.entries):
            if e.kind is EntryKind.DIR:
                path = target / e.path
                if owner:
                    os.lchown(path, e.uid, e.gid)
                os.chmod(path, e.mode)
                os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StorageError(f"cannot write into {str(target)!r}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return OpenResult(tag=tag, generation=m.generation, files=files, bytes=total)
