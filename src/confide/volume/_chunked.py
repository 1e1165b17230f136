"""I/O of chunked files (format version 3, docs/volume-format.md, "Chunk objects").

A chunked file is a list of chunk objects ``objects/<hex chunk id>``, one per chunk, each
sealed under its own key (:class:`~confide.volume.format.ChunkKeys`). :func:`write_chunks`
writes a new version of a file and re-seals only the chunks that changed, each under a new
random chunk id, keeping the objects of the others (copy-on-write of chunks): a chunk id is
never sealed twice. :class:`ChunkReader` (and :func:`decrypt_chunked`) read and
authenticate them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import threading
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from confide.errors import SignatureError
from confide.volume._io import OBJECT_FLAGS, _pwrite_pieces, _zero, batch_chunks, open_objects_dir
from confide.volume.format import (
    FILE_ID_SIZE,
    TAG_SIZE,
    ChunkKeys,
    ChunkOpener,
    Entry,
    Region,
    chunked_count,
    chunked_length,
)

__all__ = ["KEY_CACHE", "SYNCFS_THRESHOLD", "ChunkReader", "ChunkWrite", "decrypt_chunked", "write_chunks"]

_TMP_PREFIX = ".tmp-"
# AES-GCM contexts of chunk ids kept per region by a ChunkReader (ChunkKeys.opener): ~2.5 KiB
# each, so ~2.5 MiB per region at most; a re-read of up to this many chunks (64 MiB at the
# default chunk size) skips the key derivation and setup (re-reads 1.00-1.09x a one-object
# file, first reads 0.89-0.98x; docs/performance.md, "Chunked reads at one-object speed").
KEY_CACHE = 1024
# More new chunk objects than this in one write: one syncfs(2) of the volume's file system
# instead of one fsync(2) per object (thousands of fsyncs for a first write of a large file).
SYNCFS_THRESHOLD = 16


def _unlink_at(name: str, dfd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)


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
    *,
    objects_fd: int | None = None,
) -> ChunkWrite:
    """Write the first ``size`` bytes of ``src_fd`` (read with pread) as a chunked file.

    ``old`` is the previous version (chunk ids, size) of the same file in the same region, and
    ``dirty`` the indexes of the chunks changed since: chunk ``i`` keeps its old object when it
    existed, is not dirty and has the same plaintext length (so a chunk that becomes or stops
    being the last one, by truncation or extension, is rewritten); every other chunk is sealed
    under a new random id. Durable on return (fsync of the objects, or one syncfs, then the
    renames and an fsync of the objects directory); on any error the objects written by this
    call are removed and the previous ones are untouched.

    Every object is created, renamed and removed relative to ``objects_fd`` (or to the objects
    directory opened here when it is None, :func:`~confide.volume._io.open_objects_dir`):
    never through a symlinked ``objects`` (:class:`StorageError`).
    """
    if region is Region.UNPROTECTED:
        raise ValueError("unprotected files are not chunked")
    if objects_fd is None:
        dfd = open_objects_dir(directory)
        try:
            return write_chunks(directory, keys, chunk_size, region, src_fd, size, old, dirty, objects_fd=dfd)
        finally:
            os.close(dfd)
    n = chunked_count(size, chunk_size)
    old_ids, old_size = old if old is not None else ((), 0)
    dirty_set = set(dirty)
    ids: list[bytes] = []
    pending: list[tuple[str, str, int]] = []  # (temporary, final, open fd), names in objects_fd
    done: list[str] = []
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
            final = cid.hex()
            tmp = f"{_TMP_PREFIX}{final}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o644, dir_fd=objects_fd)
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
                    os.replace(tmp, final, src_dir_fd=objects_fd, dst_dir_fd=objects_fd)
                except BaseException:
                    _unlink_at(tmp, objects_fd)
                    raise
                done.append(final)
            os.fsync(objects_fd)
    except BaseException:
        for tmp, _, fd in pending:
            os.close(fd)
            _unlink_at(tmp, objects_fd)
        for final in done:
            _unlink_at(final, objects_fd)
        raise
    return ChunkWrite(tuple(ids), tuple(new), written)


_local = threading.local()


def _buffers(chunk_size: int) -> tuple[memoryview, memoryview]:
    """Per-thread (record, scratch chunk) buffers, reused: no allocation or fresh pages per
    chunk. The record buffer has one byte more than the largest record, so that one read
    tells an extended object from an exact one."""
    bufs: tuple[memoryview, memoryview] | None = getattr(_local, "bufs", None)
    if bufs is None or len(bufs[1]) != chunk_size:
        bufs = (memoryview(bytearray(chunk_size + TAG_SIZE + 1)), memoryview(bytearray(chunk_size)))
        _local.bufs = bufs
    return bufs


def _batch_buffer(size: int) -> memoryview:
    """This thread's plaintext buffer for one batch of :meth:`ChunkReader.decrypt` (at least
    ``size`` bytes; reused, so its pages are touched once per thread, not per batch)."""
    buf: memoryview | None = getattr(_local, "batch", None)
    if buf is None or len(buf) < size:
        buf = memoryview(bytearray(size))
        _local.batch = buf
    return buf


class ChunkReader:
    """Reads and authenticates the chunk objects of one volume directory (format version 3).

    Per chunk: one ``open`` relative to the ``objects`` directory, held open (no path built
    or resolved per chunk), one ``preadv`` into a reused per-thread buffer (one byte more than
    the record: an extended object is seen without an ``fstat``), one ``close``, the chunk key
    (:meth:`ChunkKeys.key`) and AES-GCM straight into the caller's buffer when the whole chunk
    is wanted. The AES-GCM contexts of the last ``key_cache`` chunk ids read are kept
    (:meth:`ChunkKeys.opener`), so chunks read again skip the key derivation and setup. Every
    byte returned is authenticated under the key of the chunk id that the manifest lists at
    that position, with the plaintext length the manifest's size gives, so a swapped,
    reordered, truncated, extended or older chunk object is refused as before. Thread-safe
    (the buffers are per thread; the directory descriptor is opened once, on the first use,
    so that a volume without chunked files needs no ``objects`` directory).
    """

    def __init__(self, directory: Path, keys: ChunkKeys, chunk_size: int, key_cache: int = KEY_CACHE) -> None:
        self.directory = directory
        self.keys = keys
        self.chunk_size = chunk_size
        self._dfd: int | None = None
        self._lock = threading.Lock()
        self._openers = {r: keys.opener(r, key_cache) for r in (Region.ENCRYPTED, Region.AUTHENTICATED)}

    def _dir(self) -> int:
        dfd = self._dfd
        if dfd is not None:
            return dfd
        with self._lock:
            if self._dfd is None:
                try:
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                    self._dfd = os.open(self.directory / "objects", flags)
                except OSError as exc:
                    raise SignatureError(f"objects directory unreadable: {exc.strerror or exc}") from None
            return self._dfd

    def close(self) -> None:
        with self._lock:
            if self._dfd is not None:
                os.close(self._dfd)
                self._dfd = None

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, e: Entry, offset: int, out: memoryview) -> int:
        """Fill ``out`` with the chunked file's bytes from ``offset`` (each chunk of the range
        authenticated); return the count (short at EOF). Whole chunks are decrypted straight
        into ``out``, the partial ones at the edges through a scratch chunk. On
        :class:`SignatureError` ``out`` may hold plaintext of earlier, authentic chunks only."""
        assert e.chunks is not None
        size = e.size
        end = min(size, offset + len(out))
        if offset >= end:
            return 0
        cs = self.chunk_size
        dfd = self._dir()
        raw, scratch = _buffers(cs)
        opener, chunks = self._openers[e.region], e.chunks
        for i in range(offset // cs, (end - 1) // cs + 1):
            base = i * cs
            plen = min(cs, size - base)  # fixed by the manifest's size, never by the object
            lo, hi = max(offset, base), min(end, base + plen)
            if lo == base and hi == base + plen:  # the whole chunk is wanted
                _open_chunk(dfd, opener, chunks[i], i, plen, raw, out[lo - offset : hi - offset])
            else:
                _open_chunk(dfd, opener, chunks[i], i, plen, raw, scratch)
                out[lo - offset : hi - offset] = scratch[lo - base : hi - base]
        return end - offset

    def changed(self, e: Entry, src_fd: int, size: int) -> tuple[set[int], list[int]]:
        """Compare the first ``size`` bytes of ``src_fd`` (a new version of the chunked file
        ``e``, read with pread) with ``e``'s sealed chunks; return (the indexes of the chunks
        that must be sealed anew, the indexes of old chunks that did not authenticate).

        Chunk ``i`` is unchanged only when ``e`` has it, its plaintext length is the same and
        the old chunk object authenticates (as in :meth:`read_into`) to exactly the new bytes;
        chunks past ``e``'s end, of another length, or whose object fails authentication are
        changed (the new bytes are then sealed under a new id: nothing unauthenticated is
        kept). For :func:`write_chunks` (``dirty``) when the writes are not tracked (the
        tmpfs mounts). :class:`OSError` if ``src_fd`` has fewer than ``size`` bytes.
        """
        assert e.chunks is not None
        cs = self.chunk_size
        n = chunked_count(size, cs)
        dirty = set(range(len(e.chunks), n))
        unauthentic: list[int] = []
        dfd = self._dir()
        raw, _ = _buffers(cs)
        old, new = bytearray(cs), bytearray(cs)  # bytearray ==: memcmp (memoryview == is per item)
        omv, nmv = memoryview(old), memoryview(new)
        opener = self._openers[e.region]
        for i in range(min(len(e.chunks), n)):
            plen = chunked_length(size, cs, i)
            if plen != chunked_length(e.size, cs, i):
                dirty.add(i)
                continue
            got = os.preadv(src_fd, [nmv[:plen]], i * cs)
            while 0 < got < plen:
                k = os.preadv(src_fd, [nmv[got:plen]], i * cs + got)
                if k == 0:
                    break
                got += k
            if got != plen:
                raise OSError(f"chunk {i}: source has {got} bytes, expected {plen}")
            try:
                _open_chunk(dfd, opener, e.chunks[i], i, plen, raw, omv)
            except SignatureError:
                unauthentic.append(i)
                dirty.add(i)
                continue
            if (old != new) if plen == cs else (old[:plen] != new[:plen]):
                dirty.add(i)
        return dirty, unauthentic

    def decrypt(
        self,
        e: Entry,
        out_fd: int | None,
        *,
        executor: ThreadPoolExecutor | None = None,
        write_piece: int | None = None,
    ) -> None:
        """Authenticate every chunk object of ``e`` (and write the plaintext to ``out_fd``:
        runs of non-zero chunks at their offsets, full zero chunks as holes; then its size is
        set). :class:`SignatureError` names the first bad chunk; the plaintext of a failing
        chunk is never written.

        The chunks are cut into batches of :func:`~confide.volume._io.batch_chunks` (4 MiB of
        plaintext); with an ``executor`` the batches run in its threads (chunks are
        independent: each batch reads, authenticates and writes its own range), at most twice
        as many batches in flight as the executor has workers, one plaintext batch buffer per
        thread: memory stays bounded whatever the file size. The results are taken in file
        order, so the error raised is the one of the first failing batch, which names its first
        bad chunk, as without an executor; on an error the batches not started are cancelled
        and the running ones waited for (no thread writes after this returns or raises).
        ``write_piece`` splits each write at multiples of that many bytes of the file (see
        :data:`~confide.volume._io.LARGE_FOLIO_PIECE`).
        """
        assert e.chunks is not None
        cs = self.chunk_size
        per = batch_chunks(cs)
        piece = write_piece if write_piece is not None else per * cs
        if piece <= 0:
            raise ValueError(f"write_piece: got {piece}, expected a positive byte count")
        n = len(e.chunks)
        batches = [(a, min(n, a + per)) for a in range(0, n, per)]
        dfd = self._dir()
        if executor is None or len(batches) < 2:
            for span in batches:
                self._decrypt_batch(dfd, e, span, out_fd, piece)
        else:
            window: deque[Future[None]] = deque()
            limit = 2 * (executor._max_workers or 1)
            try:
                for span in batches:
                    window.append(executor.submit(self._decrypt_batch, dfd, e, span, out_fd, piece))
                    if len(window) >= limit:
                        window.popleft().result()
                while window:
                    window.popleft().result()
            finally:
                for fut in window:
                    fut.cancel()
                for fut in window:
                    if not fut.cancelled():
                        fut.exception()  # wait, so no worker writes after we return
        if out_fd is not None:
            os.ftruncate(out_fd, e.size)

    def _decrypt_batch(
        self, dfd: int, e: Entry, span: tuple[int, int], out_fd: int | None, piece: int
    ) -> None:
        """Authenticate chunks [first, end) of ``e`` into this thread's batch buffer; write
        each run of non-zero chunks with one ``pwrite`` (split at multiples of ``piece``)."""
        assert e.chunks is not None
        first, end = span
        cs = self.chunk_size
        raw, _ = _buffers(cs)
        pmv = _batch_buffer((end - first) * cs)
        plain = pmv.obj
        assert isinstance(plain, bytearray)
        zero = _zero(cs)
        opener, chunks = self._openers[e.region], e.chunks
        run: int | None = None  # first chunk of the current run of non-zero plaintext
        for i in range(first, end):
            plen = chunked_length(e.size, cs, i)
            k = (i - first) * cs
            _open_chunk(dfd, opener, chunks[i], i, plen, raw, pmv[k : k + plen])
            if out_fd is None:
                continue
            hole = plen == cs and plain.startswith(zero, k)  # memcmp, no copy
            if hole and run is not None:
                _pwrite_pieces(out_fd, pmv[(run - first) * cs : k], run * cs, piece)
                run = None
            elif not hole and run is None:
                run = i
        if out_fd is not None and run is not None:
            hi = min((end - first) * cs, e.size - first * cs)
            _pwrite_pieces(out_fd, pmv[(run - first) * cs : hi], run * cs, piece)


# never through a symlink, never blocking on a FIFO put in an object's place (it then fails
# in preadv: ESPIPE); a device's bytes fail the exact length or the authentication
_OBJECT_FLAGS = OBJECT_FLAGS


def _open_chunk(
    dfd: int, opener: ChunkOpener, cid: bytes, i: int, plen: int, raw: memoryview, out: memoryview
) -> None:
    """Authenticate chunk ``i``, object ``cid`` of the objects directory ``dfd``, into ``out``.

    The object must hold exactly ``plen + TAG_SIZE`` bytes (``plen`` from the manifest): it is
    read with one ``preadv`` of one byte more, so an extended object shows without an
    ``fstat``. :class:`SignatureError` for a missing, unreadable, truncated, extended or
    unauthentic object (no plaintext of it is written then).
    """
    want = plen + TAG_SIZE
    try:
        fd = os.open(cid.hex(), _OBJECT_FLAGS, dir_fd=dfd)
        try:
            got = os.preadv(fd, [raw[: want + 1]], 0)
            while 0 < got < want:  # a short read before the end (not seen on local file systems)
                n = os.preadv(fd, [raw[got : want + 1]], got)
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
    except OSError as exc:
        raise SignatureError(f"chunk {i}: object {cid.hex()} unreadable: {exc.strerror or exc}") from None
    if got != want:
        have = f"more than {want}" if got > want else str(got)
        raise SignatureError(f"chunk {i}: object has {have} bytes, expected {want} (truncated or extended)")
    try:
        opener(raw[:want], cid, out)
    except SignatureError as exc:
        raise SignatureError(f"chunk {i}: {exc.message}") from None


def decrypt_chunked(
    directory: Path,
    keys: ChunkKeys,
    e: Entry,
    chunk_size: int,
    out_fd: int | None,
    *,
    executor: ThreadPoolExecutor | None = None,
    write_piece: int | None = None,
) -> None:
    """:meth:`ChunkReader.decrypt` with a reader of its own (closed on return; every chunk is
    read once, so no contexts are cached)."""
    reader = ChunkReader(directory, keys, chunk_size, key_cache=0)
    try:
        reader.decrypt(e, out_fd, executor=executor, write_piece=write_piece)
    finally:
        reader.close()
