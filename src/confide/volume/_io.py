"""Streaming chunk I/O: encrypt a source into an object, authenticate/decrypt an object.

Memory stays constant (one chunk buffer per worker, plus a bounded window of batches); the
only per-file state kept is the running root hash.
"""

from __future__ import annotations

import errno
import hmac
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from confide.errors import SignatureError, StorageError
from confide.volume.format import (
    TAG_SIZE,
    ChunkCodec,
    Entry,
    chunk_count,
    finish_root,
    object_size,
    root_hasher,
)

__all__ = [
    "BATCH_BYTES",
    "LARGE_FOLIO_PIECE",
    "OBJECT_FLAGS",
    "batch_chunks",
    "check_unprotected",
    "copy_raw",
    "copy_unprotected",
    "decrypt_object",
    "encrypt_stream",
    "equal_contents",
    "open_object",
    "open_objects_dir",
    "read_full",
    "same_plaintext",
]

# Plaintext per unit of parallel work: one preadv and one pwrite per run of non-zero chunks.
# 4 MiB (64 chunks at the default size) rather than 1 MiB: fewer system calls and fewer
# hand-offs of the tmpfs inode lock, which serialises the pwrites of the workers; +10 % for
# open_volume into /dev/shm (docs/performance.md, "Protected volumes"). Two buffers of this
# size per worker thread.
BATCH_BYTES = 4 << 20

# Write piece for a tmpfs with large folios (``decrypt_object(write_piece=...)``): a run of
# non-zero chunks is written in pieces ending on multiples of this many bytes of the file.
# Since Linux 6.14 a tmpfs mounted with huge=within_size sizes each new folio by the write
# (mm/shmem.c, "mm: shmem: add large folio support for tmpfs"), so this caps its folios at
# 512 KiB: fewer per-page costs than 4 KiB pages, without the 1-2 MiB folios that fell to
# 0.3-0.9 GiB/s on memory the host had reclaimed (docs/performance.md, "tmpfs first read").
# Not the default: on a 4 KiB-page tmpfs the extra writes cost ~8 % (more inode-lock
# hand-offs).
LARGE_FOLIO_PIECE = 512 << 10


def batch_chunks(chunk_size: int) -> int:
    """Chunks per batch: BATCH_BYTES of plaintext, at least one chunk."""
    return max(1, BATCH_BYTES // chunk_size)


def read_full(fd: int, buf: bytearray) -> int:
    """Fill ``buf`` from ``fd`` (short reads retried); return the byte count (< len only at EOF)."""
    mv = memoryview(buf)
    got = 0
    while got < len(buf):
        n = os.readv(fd, [mv[got:]])
        if n == 0:
            break
        got += n
    return got


COMPARE_BLOCK = 1 << 20  # bytes read at a time from each side by equal_contents


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def equal_contents(a_fd: int, b_fd: int, size: int) -> bool:
    """True when both descriptors hold exactly ``size`` bytes, the same ones (read with
    ``preadv`` in blocks of :data:`COMPARE_BLOCK`, stopping at the first difference). For
    content that is not secret (unprotected files): not constant-time."""
    if os.fstat(a_fd).st_size != size or os.fstat(b_fd).st_size != size:
        return False
    a, b = bytearray(min(size, COMPARE_BLOCK)), bytearray(min(size, COMPARE_BLOCK))
    amv, bmv = memoryview(a), memoryview(b)
    offset = 0
    while offset < size:
        want = min(len(a), size - offset)
        if _pread_into(a_fd, amv[:want], offset) != want or _pread_into(b_fd, bmv[:want], offset) != want:
            return False
        if (a != b) if want == len(a) else (a[:want] != b[:want]):  # bytearray ==: memcmp
            return False
        offset += want
    return True


def encrypt_stream(src_fd: int, dst_fd: int, codec: ChunkCodec, chunk_size: int) -> tuple[int, bytes]:
    """Seal everything readable from ``src_fd`` into ``dst_fd``; return (size, root).

    One chunk of read-ahead tells whether the current chunk is the last one, so files whose
    size is unknown or changes while reading still get a correct last-chunk mark.
    """
    cur, nxt = bytearray(chunk_size), bytearray(chunk_size)
    n_cur = read_full(src_fd, cur)
    index, size = 0, 0
    h = root_hasher()
    while True:
        n_nxt = read_full(src_fd, nxt) if n_cur == chunk_size else 0
        last = n_nxt == 0
        record = codec.seal(memoryview(cur)[:n_cur], index, last)
        _write_all(dst_fd, record)
        h.update(record[-TAG_SIZE:])
        size += n_cur
        index += 1
        if last:
            return size, finish_root(h, index)
        cur, nxt, n_cur = nxt, cur, n_nxt


def _write_all(fd: int, data: bytes | memoryview) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _pwrite_pieces(fd: int, data: memoryview, offset: int, piece: int) -> None:
    """Write ``data`` at ``offset`` in pieces ending on multiples of ``piece`` in the file."""
    while data:
        n = min(len(data), piece - offset % piece)
        _pwrite_all(fd, data[:n], offset)
        data, offset = data[n:], offset + n


_local = threading.local()


def _buffers(size: int) -> tuple[bytearray, bytearray]:
    """Per-thread (records, plaintext) buffers, reused across batches (no page faults per batch)."""
    bufs: tuple[bytearray, bytearray] | None = getattr(_local, "bufs", None)
    if bufs is None or len(bufs[0]) < size:
        bufs = (bytearray(size), bytearray(size))
        _local.bufs = bufs
    return bufs


def _batch(
    obj_fd: int,
    out_fd: int | None,
    codec: ChunkCodec,
    span: tuple[int, int],
    geometry: tuple[int, int, int],
    piece: int,
) -> bytes:
    """Authenticate chunks [first, end); write plaintext to ``out_fd`` (holes for zero chunks).

    ``geometry`` is (chunk count, file size, chunk size). One ``preadv`` for the whole batch,
    one ``pwrite`` per run of non-zero chunks (split at multiples of ``piece`` bytes of the
    file): few system calls per byte.
    """
    first, end = span
    n_chunks, size, chunk_size = geometry
    rec = chunk_size + TAG_SIZE
    start = first * rec
    want = min(end * rec, object_size(size, chunk_size, codec.region)) - start
    raw, plain = _buffers((end - first) * rec)
    got = os.preadv(obj_fd, [memoryview(raw)[:want]], start)
    if got != want:
        raise SignatureError(f"chunks {first}..{end - 1}: got {got} bytes, expected {want} (truncated)")
    rmv, pmv = memoryview(raw), memoryview(plain)
    zero = _zero(chunk_size)
    tags = bytearray()
    run_start: int | None = None  # first chunk of the current run of non-zero plaintext
    pos = 0
    for i in range(first, end):
        last = i == n_chunks - 1
        plen = size - chunk_size * i if last else chunk_size
        k = (i - first) * chunk_size
        out = pmv[k : k + plen]
        codec.open_into(rmv[pos : pos + plen + TAG_SIZE], i, last, out)
        tags += rmv[pos + plen : pos + plen + TAG_SIZE]
        pos += plen + TAG_SIZE
        if out_fd is None:
            continue
        hole = plen == chunk_size and plain.startswith(zero, k)  # memcmp, no copy
        if hole and run_start is not None:
            _flush(out_fd, pmv, (first, run_start, i), chunk_size, piece)
            run_start = None
        elif not hole and run_start is None:
            run_start = i
    if out_fd is not None and run_start is not None:
        _flush(out_fd, pmv, (first, run_start, end), chunk_size, piece, size)
    return bytes(tags)


def _zero(chunk_size: int) -> bytes:
    z: bytes | None = getattr(_local, "zero", None)
    if z is None or len(z) != chunk_size:
        z = bytes(chunk_size)
        _local.zero = z
    return z


def _flush(
    out_fd: int,
    pmv: memoryview,
    run: tuple[int, int, int],
    chunk_size: int,
    piece: int,
    size: int | None = None,
) -> None:
    first, a, b = run
    lo = (a - first) * chunk_size
    hi = (b - first) * chunk_size
    if size is not None:
        hi = min(hi, size - first * chunk_size)
    _pwrite_pieces(out_fd, pmv[lo:hi], a * chunk_size, piece)


def decrypt_object(
    obj_fd: int,
    out_fd: int | None,
    codec: ChunkCodec,
    entry: Entry,
    chunk_size: int,
    *,
    executor: ThreadPoolExecutor | None = None,
    write_piece: int | None = None,
) -> None:
    """Authenticate the whole object of ``entry`` (and decrypt into ``out_fd`` if given).

    ``write_piece`` (bytes, e.g. :data:`LARGE_FOLIO_PIECE`) splits the writes at its multiples;
    default: one write per run of non-zero chunks in a batch.

    Checks the exact object size (truncation/extension), every chunk tag with its index and
    last-chunk mark, and the file root from the manifest. Raises :class:`SignatureError`
    naming the first failure; plaintext of a failing chunk is never written.
    """
    expected = object_size(entry.size, chunk_size, entry.region)
    actual = os.fstat(obj_fd).st_size
    if actual != expected:
        raise SignatureError(f"object has {actual} bytes, expected {expected} (truncated or extended)")
    n = chunk_count(entry.size, chunk_size)
    h = root_hasher()
    geometry = (n, entry.size, chunk_size)
    per = batch_chunks(chunk_size)
    piece = write_piece if write_piece is not None else per * chunk_size
    if piece <= 0:
        raise ValueError(f"write_piece: got {piece}, expected a positive byte count")
    batches = [(a, min(n, a + per)) for a in range(0, n, per)]
    if executor is None or len(batches) < 2:
        for a, b in batches:
            h.update(_batch(obj_fd, out_fd, codec, (a, b), geometry, piece))
    else:
        window: deque[Future[bytes]] = deque()
        limit = 2 * (executor._max_workers or 1)
        it = iter(batches)
        try:
            for a, b in it:
                window.append(executor.submit(_batch, obj_fd, out_fd, codec, (a, b), geometry, piece))
                if len(window) >= limit:
                    h.update(window.popleft().result())
            while window:
                h.update(window.popleft().result())
        finally:
            for fut in window:
                fut.cancel()
            for fut in window:
                if not fut.cancelled():
                    fut.exception()  # wait, so no worker writes after we return
    root = finish_root(h, n)
    if not hmac.compare_digest(root, entry.root):
        raise SignatureError("file root does not match the manifest (chunks replaced from another version?)")
    if out_fd is not None:
        os.ftruncate(out_fd, entry.size)


def same_plaintext(obj_fd: int, src_fd: int, codec: ChunkCodec, entry: Entry, chunk_size: int) -> bool:
    """True when ``src_fd`` holds exactly the plaintext of ``entry``'s object ``obj_fd`` (one
    object, a protected region): every chunk authenticated as :func:`decrypt_object` does
    (exact object size, index and last-chunk mark, then the file root) and compared with the
    same range of ``src_fd``, stopping at the first difference. :class:`SignatureError` when
    a chunk read does not authenticate or the root does not match (the object changed in
    storage), so that a caller never keeps an unauthentic object as "unchanged".
    """
    size = entry.size
    if os.fstat(src_fd).st_size != size:
        return False
    expected = object_size(size, chunk_size, entry.region)
    actual = os.fstat(obj_fd).st_size
    if actual != expected:
        raise SignatureError(f"object has {actual} bytes, expected {expected} (truncated or extended)")
    n = chunk_count(size, chunk_size)
    h = root_hasher()
    rec, old, new = bytearray(chunk_size + TAG_SIZE), bytearray(chunk_size), bytearray(chunk_size)
    rmv, omv, nmv = memoryview(rec), memoryview(old), memoryview(new)
    for i in range(n):
        last = i == n - 1
        plen = size - chunk_size * i if last else chunk_size
        want = plen + TAG_SIZE
        if _pread_into(obj_fd, rmv[:want], i * (chunk_size + TAG_SIZE)) != want:
            raise SignatureError(f"chunk {i}: object truncated")
        codec.open_into(rmv[:want], i, last, omv[:plen])
        h.update(rmv[plen:want])
        if _pread_into(src_fd, nmv[:plen], i * chunk_size) != plen:
            return False
        if (old != new) if plen == chunk_size else (old[:plen] != new[:plen]):  # bytearray ==: memcmp
            return False
    if not hmac.compare_digest(finish_root(h, n), entry.root):
        raise SignatureError("file root does not match the manifest (chunks replaced from another version?)")
    return True


def copy_raw(src_fd: int, dst_fd: int) -> int:
    """Copy a source file as is into a new unprotected object; return the byte count."""
    total = 0
    while chunk := os.read(src_fd, 1 << 20):
        _write_all(dst_fd, chunk)
        total += len(chunk)
    return total


# Stored objects are host storage: opened never through a symlink and never blocking (a FIFO
# put in an object's place would make open(2) wait for a writer for ever; O_NONBLOCK changes
# nothing for regular files).
OBJECT_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_object(path: str | os.PathLike[str]) -> int:
    """Open a one-object file's object for reading (:data:`OBJECT_FLAGS`); :class:`OSError`
    unless it is a regular file (a FIFO, device, socket or directory put in its place)."""
    fd = os.open(path, OBJECT_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def open_objects_dir(directory: str | os.PathLike[str]) -> int:
    """Open the volume's ``objects`` directory for the writers (docs/volume-format.md,
    "Directory layout"): never through a symlink (``O_NOFOLLOW|O_DIRECTORY``), and only a
    directory owned by this user or root that neither group nor others can write. Every new
    object is then created, renamed and removed relative to this descriptor (``dir_fd=``), so
    a host that replaces ``objects`` with a symlink cannot make a writer put objects (or its
    temporary files) into another directory, and a swap after the open changes nothing.
    :class:`StorageError` otherwise; the caller closes the descriptor."""
    path = os.path.join(directory, "objects")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        what = "a symlink or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise StorageError(f"cannot open the volume's objects directory {path!r}: {what or exc}") from None
    st = os.fstat(fd)
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
        os.close(fd)
        raise StorageError(
            f"the volume's objects directory {path!r}: got owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):#o}, expected this user's or root's and not writable by others"
        )
    return fd


def check_unprotected(obj_fd: int, entry: Entry) -> None:
    """An unprotected object must hold exactly the size its (authenticated) manifest entry
    records: its bytes are not authenticated, but its size is (docs/volume-format.md,
    "File objects"). :class:`SignatureError` otherwise, so that nothing copies or serves more
    (or less) than the sealed size, e.g. a huge sparse file put in its place."""
    actual = os.fstat(obj_fd).st_size
    if actual != entry.size:
        raise SignatureError(f"unprotected object has {actual} bytes, expected {entry.size}")


def copy_unprotected(obj_fd: int, dst_fd: int, entry: Entry) -> None:
    """Copy the unprotected object of ``entry`` (exactly its recorded size, checked first and
    while copying) into ``dst_fd``."""
    check_unprotected(obj_fd, entry)
    left, offset = entry.size, 0
    while left:
        chunk = os.pread(obj_fd, min(left, 1 << 20), offset)
        if not chunk:
            raise SignatureError(f"unprotected object shrank to {offset} bytes, expected {entry.size}")
        _write_all(dst_fd, chunk)
        left -= len(chunk)
        offset += len(chunk)
