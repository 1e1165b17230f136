"""I/O of chunked files (format version 3, docs/volume-format.md, "Chunk objects").

A chunked file is a list of chunk objects ``objects/<hex chunk id>``, one per chunk, each
sealed under its own key (:class:`~confide.volume.format.ChunkKeys`). :func:`write_chunks`
writes a new version of a file and re-seals only the chunks that changed, each under a new
random chunk id, keeping the objects of the others (copy-on-write of chunks): a chunk id is
never sealed twice. :func:`read_chunks_into` and :func:`decrypt_chunked` read and
authenticate them.
"""

from __future__ import annotations

import ctypes
import os
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from confide.errors import SignatureError
from confide.volume.format import (
    FILE_ID_SIZE,
    TAG_SIZE,
    ChunkKeys,
    Entry,
    Region,
    chunked_count,
    chunked_length,
)

__all__ = ["SYNCFS_THRESHOLD", "ChunkWrite", "decrypt_chunked", "read_chunks_into", "write_chunks"]

_TMP_PREFIX = ".tmp-"
# More new chunk objects than this in one write: one syncfs(2) of the volume's file system
# instead of one fsync(2) per object (thousands of fsyncs for a first write of a large file).
SYNCFS_THRESHOLD = 16


def _object(directory: Path, oid: bytes) -> Path:
    return directory / "objects" / oid.hex()


@dataclass(frozen=True)
class ChunkWrite:
    """Result of :func:`write_chunks`: the file's chunk ids in order, the ids written now, and
    the bytes written to the volume directory."""

    chunks: tuple[bytes, ...]
    new: tuple[bytes, ...]
    written: int


def _pread_full(fd: int, n: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        got = os.pread(fd, n - len(out), offset + len(out))
        if not got:
            break
        out += got
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv) :]


def _syncfs(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_chunks(
    directory: Path,
    keys: ChunkKeys,
    chunk_size: int,
    region: Region,
    src_fd: int,
    size: int,
    old: tuple[tuple[bytes, ...], int] | None = None,
    dirty: Collection[int] = (),
) -> ChunkWrite:
    """Write the first ``size`` bytes of ``src_fd`` (read with pread) as a chunked file.

    ``old`` is the previous version (chunk ids, size) of the same file in the same region, and
    ``dirty`` the indexes of the chunks changed since: chunk ``i`` keeps its old object when it
    existed, is not dirty and has the same plaintext length (so a chunk that becomes or stops
    being the last one, by truncation or extension, is rewritten); every other chunk is sealed
    under a new random id. Durable on return (fsync of the objects, or one syncfs, then the
    renames and an fsync of the objects directory); on any error the objects written by this
    call are removed and the previous ones are untouched.
    """
    if region is Region.UNPROTECTED:
        raise ValueError("unprotected files are not chunked")
    n = chunked_count(size, chunk_size)
    old_ids, old_size = old if old is not None else ((), 0)
    dirty_set = set(dirty)
    ids: list[bytes] = []
    pending: list[tuple[Path, Path, int]] = []  # (temporary, final, open fd)
    done: list[Path] = []
    written = 0
    new: list[bytes] = []
    try:
        for i in range(n):
            plen = chunked_length(size, chunk_size, i)
            if i < len(old_ids) and i not in dirty_set and chunked_length(old_size, chunk_size, i) == plen:
                ids.append(old_ids[i])
                continue
            plain = _pread_full(src_fd, plen, i * chunk_size)
            if len(plain) != plen:
                raise OSError(f"chunk {i}: source has {len(plain)} bytes, expected {plen}")
            cid = secrets.token_bytes(FILE_ID_SIZE)
            record = keys.seal(plain, cid, region)
            final = _object(directory, cid)
            tmp = final.with_name(f"{_TMP_PREFIX}{final.name}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            pending.append((tmp, final, fd))
            _write_all(fd, record)
            written += len(record)
            ids.append(cid)
            new.append(cid)
        if pending:
            if len(pending) > SYNCFS_THRESHOLD:
                _syncfs(pending[0][2])
            else:
                for _, _, fd in pending:
                    os.fsync(fd)
            while pending:
                tmp, final, fd = pending.pop()
                os.close(fd)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                done.append(final)
            dfd = os.open(directory / "objects", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        for tmp, _, fd in pending:
            os.close(fd)
            tmp.unlink(missing_ok=True)
        for final in done:
            final.unlink(missing_ok=True)
        raise
    return ChunkWrite(tuple(ids), tuple(new), written)


def _read_chunk(directory: Path, keys: ChunkKeys, e: Entry, i: int, out: memoryview, chunk_size: int) -> int:
    """Authenticate chunk ``i`` of ``e`` into ``out`` (at least its length); return the length."""
    assert e.chunks is not None
    cid = e.chunks[i]
    plen = chunked_length(e.size, chunk_size, i)
    try:
        fd = os.open(_object(directory, cid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SignatureError(f"chunk {i}: object {cid.hex()} unreadable: {exc.strerror or exc}") from None
    try:
        actual = os.fstat(fd).st_size
        if actual != plen + TAG_SIZE:
            raise SignatureError(
                f"chunk {i}: object has {actual} bytes, expected {plen + TAG_SIZE} (truncated or extended)"
            )
        record = _pread_full(fd, plen + TAG_SIZE, 0)
    finally:
        os.close(fd)
    try:
        return keys.open_into(record, cid, e.region, out)
    except SignatureError as exc:
        raise SignatureError(f"chunk {i}: {exc.message}") from None


def read_chunks_into(
    directory: Path, keys: ChunkKeys, e: Entry, chunk_size: int, offset: int, out: memoryview
) -> int:
    """Fill ``out`` with the chunked file's bytes from ``offset`` (each chunk of the range
    authenticated); return the count (short at EOF). On :class:`SignatureError` ``out`` may
    hold plaintext of earlier, authentic chunks only."""
    end = min(e.size, offset + len(out))
    if offset >= end:
        return 0
    scratch = bytearray(chunk_size)
    smv = memoryview(scratch)
    for i in range(offset // chunk_size, (end - 1) // chunk_size + 1):
        base = i * chunk_size
        plen = _read_chunk(directory, keys, e, i, smv, chunk_size)
        lo, hi = max(offset, base), min(end, base + plen)
        out[lo - offset : hi - offset] = smv[lo - base : hi - base]
    return end - offset


def decrypt_chunked(directory: Path, keys: ChunkKeys, e: Entry, chunk_size: int, out_fd: int | None) -> None:
    """Authenticate every chunk object of ``e`` (and write the plaintext to ``out_fd``, full
    zero chunks as holes, then set its size). :class:`SignatureError` names the first bad chunk;
    the plaintext of a failing chunk is never written."""
    assert e.chunks is not None
    buf = bytearray(chunk_size)
    mv = memoryview(buf)
    zero = bytes(chunk_size)
    for i in range(len(e.chunks)):
        plen = _read_chunk(directory, keys, e, i, mv, chunk_size)
        if out_fd is not None and not (plen == chunk_size and buf == zero):
            data = mv[:plen]
            off = i * chunk_size
            while data:
                k = os.pwrite(out_fd, data, off)
                data, off = data[k:], off + k
    if out_fd is not None:
        os.ftruncate(out_fd, e.size)
