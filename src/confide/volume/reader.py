"""Random access to a sealed protected volume (the layer a FUSE file system sits on).

``VolumeReader.read(path, offset, size)`` decrypts only the chunks covering the range, each
checked against its index and last-chunk mark. On the first access to a file the reader also
checks the object's exact size and the file root over all chunk tags (16 bytes per chunk are
read, not the data), so a file whose chunks were swapped with another version of itself is
refused before any byte is served. Thread-safe: it only uses ``pread``.
"""

from __future__ import annotations

import hmac
import os
import stat
import threading
from pathlib import Path
from types import TracebackType

from confide.errors import SignatureError, UsageError
from confide.volume._chunked import ChunkReader
from confide.volume._io import check_unprotected, open_object
from confide.volume.format import (
    TAG_SIZE,
    ChunkCodec,
    ChunkKeys,
    Entry,
    EntryKind,
    Manifest,
    Region,
    chunk_count,
    finish_root,
    object_size,
    root_hasher,
)
from confide.volume.keys import VolumeKey
from confide.volume.store import load_sealed, object_path

__all__ = ["VolumeReader"]

_TAG_BATCH = 4096  # chunk tags read per batch while checking a root


_local = threading.local()


def _buffers(raw_size: int, chunk_size: int) -> tuple[bytearray, memoryview]:
    """Per-thread (records, scratch chunk) buffers, reused: no fresh pages per read."""
    bufs: tuple[bytearray, bytearray] | None = getattr(_local, "bufs", None)
    if bufs is None or len(bufs[0]) < raw_size or len(bufs[1]) < chunk_size:
        size = max(raw_size, len(bufs[0]) if bufs else 0)
        bufs = (bytearray(size), bytearray(chunk_size))
        _local.bufs = bufs
    return bufs[0], memoryview(bufs[1])[:chunk_size]


class _Open:
    __slots__ = ("codec", "fd", "n_chunks")

    def __init__(self, fd: int, codec: ChunkCodec | None, n_chunks: int) -> None:
        self.fd, self.codec, self.n_chunks = fd, codec, n_chunks


class VolumeReader:
    """Read-only view of a sealed volume; ``expected_tag`` pins the version (freshness)."""

    def __init__(self, directory: Path, key: VolumeKey, expected_tag: str | None = None) -> None:
        self.directory = directory
        self._key = key
        self.manifest: Manifest
        self.manifest, self.tag = load_sealed(directory, key, expected_tag)
        self._entries = self.manifest.by_path()
        self._children: dict[str, set[str]] = {"": set()}
        for p in self._entries:
            parts = p.split("/")
            for depth in range(1, len(parts) + 1):
                self._children.setdefault("/".join(parts[: depth - 1]), set()).add(parts[depth - 1])
        self._open: dict[bytes, _Open] = {}  # by file id
        # chunked files (version 3); also used by the FUSE layer for the chunks it writes
        keys = ChunkKeys(key.raw, self.manifest.volume_id)
        self.chunks = ChunkReader(directory, keys, self.manifest.chunk_size)
        self._lock = threading.Lock()

    # --- metadata ----------------------------------------------------------------------------
    def entry(self, path: str) -> Entry:
        """The manifest entry of ``path`` ('' is the root); implicit directories get mode 0755."""
        path = path.strip("/")
        e = self._entries.get(path)
        if e is not None:
            return e
        if path in self._children:
            return Entry(path, EntryKind.DIR, 0o755, region=Region.UNPROTECTED)
        raise UsageError(f"{path!r}: got a path that is not in the volume")

    def listdir(self, path: str = "") -> list[str]:
        path = path.strip("/")
        if self.entry(path).kind is not EntryKind.DIR:
            raise UsageError(f"{path!r}: got a {self.entry(path).kind.name.lower()}, expected a directory")
        return sorted(self._children.get(path, ()))

    def st_mode(self, path: str) -> int:
        e = self.entry(path)
        kind = {EntryKind.FILE: stat.S_IFREG, EntryKind.DIR: stat.S_IFDIR, EntryKind.SYMLINK: stat.S_IFLNK}
        return kind[e.kind] | e.mode

    def readlink(self, path: str) -> str:
        e = self.entry(path)
        if e.kind is not EntryKind.SYMLINK:
            raise UsageError(f"{path!r}: got a {e.kind.name.lower()}, expected a symlink")
        return e.target

    # --- data --------------------------------------------------------------------------------
    def _get(self, e: Entry) -> _Open:
        with self._lock:
            o = self._open.get(e.file_id)
            if o is not None:
                return o
            cs = self.manifest.chunk_size
            try:
                fd = open_object(object_path(self.directory, e.file_id))
            except OSError as exc:
                raise SignatureError(f"{e.path!r}: object unreadable: {exc.strerror or exc}") from None
            try:
                actual = os.fstat(fd).st_size
                if e.region is Region.UNPROTECTED:
                    try:
                        check_unprotected(fd, e)  # its recorded size (content not authenticated)
                    except SignatureError as exc:
                        raise SignatureError(f"{e.path!r}: {exc.message}") from None
                    o = _Open(fd, None, 0)
                else:
                    expected = object_size(e.size, cs, e.region)
                    if actual != expected:
                        raise SignatureError(
                            f"{e.path!r}: object has {actual} bytes, expected {expected} "
                            "(truncated or extended)"
                        )
                    n = chunk_count(e.size, cs)
                    self._check_root(fd, e, n)
                    o = _Open(fd, ChunkCodec(self._key.raw, self.manifest.volume_id, e.file_id, e.region), n)
            except BaseException:
                os.close(fd)
                raise
            self._open[e.file_id] = o
            return o

    def _check_root(self, fd: int, e: Entry, n: int) -> None:
        cs = self.manifest.chunk_size
        rec = cs + TAG_SIZE
        h = root_hasher()
        for i in range(n):
            end = min(rec * (i + 1), object_size(e.size, cs, e.region))
            tag = os.pread(fd, TAG_SIZE, end - TAG_SIZE)
            h.update(tag)
        if not hmac.compare_digest(finish_root(h, n), e.root):
            raise SignatureError(f"{e.path!r}: file root does not match the manifest")

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Return up to ``size`` bytes of ``path`` from ``offset`` (short only at end of file)."""
        e = self.entry(path)
        if e.kind is not EntryKind.FILE:
            raise UsageError(f"{path!r}: got a {e.kind.name.lower()}, expected a file")
        return self.read_entry(e, offset, size)

    def read_entry(self, e: Entry, offset: int, size: int) -> bytes:
        """Read a file given its entry: one of this manifest's, or a later version of the file
        written into the same volume (same key and volume id; the FUSE layer's new objects).
        """
        if offset < 0 or size < 0:
            raise UsageError(f"read: got offset {offset}, size {size}, expected non-negative values")
        n = max(0, min(size, e.size - offset))
        out = bytearray(n)
        got = self.read_into(e, offset, memoryview(out))
        return bytes(out[:got])

    def read_into(self, e: Entry, offset: int, out: memoryview) -> int:
        """Fill ``out`` with the file's bytes from ``offset``; return the count (short at EOF).

        One ``preadv`` of all the chunks of the range into a reused per-thread buffer; each
        chunk is authenticated (index and last-chunk mark) and decrypted straight into ``out``
        (partial chunks at the edges through a scratch chunk). On an integrity failure
        :class:`SignatureError` is raised and ``out`` may hold plaintext of *earlier, authentic*
        chunks only; the caller must not use it.
        """
        if offset < 0:
            raise UsageError(f"read: got offset {offset}, expected a non-negative value")
        if e.chunks is not None:  # a chunked file (version 3): each chunk its own object
            try:
                return self.chunks.read_into(e, offset, out)
            except SignatureError as exc:
                raise SignatureError(f"volume file {e.path!r}: {exc.message}") from None
        o = self._get(e)
        end = min(e.size, offset + len(out))
        if offset >= end:
            return 0
        if o.codec is None:  # unprotected: as stored, up to the recorded size
            want = end - offset
            got = 0
            while got < want:
                n = os.preadv(o.fd, [out[got:want]], offset + got)
                if n == 0:
                    # shrunk since _get checked its size (the host truncated the object this
                    # descriptor holds): its recorded size is authenticated, a short read is not
                    raise SignatureError(
                        f"volume file {e.path!r}: unprotected object shrank to {offset + got} bytes, "
                        f"expected {e.size}"
                    )
                got += n
            return want
        cs = self.manifest.chunk_size
        rec = cs + TAG_SIZE
        first, last_chunk = offset // cs, (end - 1) // cs
        want = min((last_chunk + 1) * rec, object_size(e.size, cs, e.region)) - first * rec
        raw, scratch = _buffers(want, cs)
        rmv = memoryview(raw)[:want]
        try:
            got = os.preadv(o.fd, [rmv], first * rec)
            if got != want:
                raise SignatureError(f"chunks {first}..{last_chunk}: got {got} bytes, expected {want}")
            for i in range(first, last_chunk + 1):
                is_last = i == o.n_chunks - 1
                plen = e.size - cs * i if is_last else cs
                k = (i - first) * rec
                record = rmv[k : k + plen + TAG_SIZE]
                lo = max(offset, i * cs)  # file range of this chunk that is wanted
                hi = min(end, i * cs + plen)
                dst = lo - offset
                if lo == i * cs and hi == i * cs + plen:
                    o.codec.open_into(record, i, is_last, out[dst : dst + plen])
                else:
                    o.codec.open_into(record, i, is_last, scratch)
                    out[dst : dst + hi - lo] = scratch[lo - i * cs : hi - i * cs]
        except SignatureError as exc:
            raise SignatureError(f"volume file {e.path!r}: {exc.message}") from None
        return end - offset

    def forget(self, file_id: bytes) -> None:
        """Close the descriptor kept for the object ``file_id`` (a writer superseded it; the
        caller guarantees that no read of it is in flight)."""
        with self._lock:
            o = self._open.pop(file_id, None)
        if o is not None:
            os.close(o.fd)

    def close(self) -> None:
        with self._lock:
            for o in self._open.values():
                os.close(o.fd)
            self._open.clear()
        self.chunks.close()

    def __enter__(self) -> VolumeReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
