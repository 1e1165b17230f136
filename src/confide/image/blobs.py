"""Content-addressed blobs: digests, bounded hashing readers, streaming (de)compression.

Everything read from an image is hostile until its digest matched: readers count and hash
every byte and the caller calls :meth:`HashingReader.verify` after the last byte. Layers are
streamed (one buffer at a time), never held whole in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from typing import IO, Any, Protocol

from confide.errors import ParseError, UsageError

__all__ = [
    "GZIP",
    "NONE",
    "ZSTD",
    "CompressingWriter",
    "DecompressingReader",
    "HashingReader",
    "HashingWriter",
    "check_digest",
    "sha256_digest",
]

NONE, GZIP, ZSTD = "none", "gzip", "zstd"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # bytes 1..3 of a skippable frame's magic 0x184D2A5?


def _zstd_frame_start(data: bytes) -> bool:
    """Whether ``data`` starts a zstd frame, or a prefix of one (RFC 8878 3.1.1: magic
    0xFD2FB528) or a skippable frame (3.1.2: magic 0x184D2A50..0x184D2A5F, little-endian; its
    user data is ignored by decoders). zstd:chunked layers (containers/storage) end with
    skippable frames holding their table of contents."""
    head = data[:4]
    if _ZSTD_MAGIC.startswith(head):
        return True
    return (head[0] & 0xF0) == 0x50 and _SKIPPABLE_TAIL.startswith(head[1:])


READ_SIZE = 1 << 20
_OUT_MAX = 4 << 20  # bytes of decompressed output per step


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def check_digest(value: object, what: str) -> str:
    """Return ``value`` if it is a ``sha256:<64 lower-case hex>`` digest, else raise ParseError."""
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) < 100 else type(value).__name__
        raise ParseError(f"got {shown!r}, expected sha256:<64 lower-case hex digits>", field=what)
    return value


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HashingReader:
    """Read at most ``limit`` bytes of ``raw``, hashing them; :meth:`verify` checks size and digest."""

    def __init__(
        self, raw: _Readable, what: str, *, digest: str | None, size: int | None, limit: int
    ) -> None:
        self._raw = raw
        self._what = what
        self._digest = digest
        self._size = size
        self._limit = limit if size is None else min(limit, size)
        self._h = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        want = self._limit - self.count + 1  # one byte more than allowed reveals an oversize blob
        if n < 0 or n > want:
            n = want
        data = self._raw.read(n)
        self.count += len(data)
        if self.count > self._limit:
            if self._size is not None:
                raise ParseError(
                    f"got more than {self._size} bytes, expected exactly {self._size}", field=self._what
                )
            raise ParseError(f"got more than {self._limit} bytes, the limit", field=self._what)
        self._h.update(data)
        return data

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()

    def verify(self) -> str:
        """Drain the rest, then check size and digest; return the digest."""
        self.drain()
        if self._size is not None and self.count != self._size:
            raise ParseError(f"got {self.count} bytes, expected {self._size} (truncated)", field=self._what)
        got = self.hexdigest()
        if self._digest is not None and not hmac.compare_digest(got, self._digest):
            raise ParseError(f"got digest {got}, expected {self._digest}", field=self._what)
        return got


_MAX_READS_PAST_END = 64


class DecompressingReader:
    """Decompress a gzip, zstd or plain tar stream (detected by magic), hashing the output.

    ``diff_id`` (the digest of the uncompressed tar, from the image config) is checked by
    :meth:`verify`; ``limit`` bounds the uncompressed size (decompression bombs). Output is
    produced in bounded pieces, so memory stays at a few MiB whatever the layer size.
    """

    def __init__(self, raw: HashingReader, what: str, *, diff_id: str | None, limit: int) -> None:
        self._raw = raw
        self._what = what
        self._diff_id = diff_id
        self._limit = limit
        self._h = hashlib.sha256()
        self.count = 0
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._reads_past_end = 0
        self._more = False  # the decompressor holds output without needing input
        self._pending = raw.read(4)
        self._d: Any = None
        if self._pending.startswith(_GZIP_MAGIC):
            self.compression = GZIP
            self._d = zlib.decompressobj(wbits=31)
        elif len(self._pending) == 4 and _zstd_frame_start(self._pending):
            self.compression = ZSTD
            self._d = _zstd_module().ZstdDecompressor()
        else:
            self.compression = NONE

    def _input(self) -> bytes:
        data = self._pending or self._raw.read(READ_SIZE)
        self._pending = b""
        return data

    def _next_chunk(self) -> bytes:
        if self.compression == NONE:
            data = self._input()
            self._eof = not data
            return data
        if self.compression == GZIP:
            return self._gunzip()
        return self._unzstd()

    def _gunzip(self) -> bytes:
        d = self._d
        data = d.unconsumed_tail if self._more else self._input()
        self._more = False
        if not data:
            if not d.eof:
                raise ParseError("gzip stream ends early (truncated)", field=self._what)
            self._eof = True
            return b""
        if d.eof:  # a concatenated gzip member follows
            if not data.startswith(_GZIP_MAGIC[: len(data)]):
                raise ParseError("got bytes after the gzip stream, expected none", field=self._what)
            self._d = d = zlib.decompressobj(wbits=31)
        try:
            out: bytes = d.decompress(data, _OUT_MAX)
        except zlib.error as exc:
            raise ParseError(f"bad gzip data: {exc}", field=self._what) from None
        if d.unconsumed_tail:
            self._more = True
        elif d.eof and d.unused_data:
            self._pending = d.unused_data
        return out

    def _unzstd(self) -> bytes:
        zstd = _zstd_module()
        d = self._d
        data = b"" if self._more else self._input()
        if not data and not self._more:
            if not d.eof:
                raise ParseError("zstd stream ends early (truncated)", field=self._what)
            self._eof = True
            return b""
        self._more = False
        if d.eof:  # another frame follows (a skippable one too: the decompressor skips it)
            if not _zstd_frame_start(data):
                raise ParseError("got bytes after the zstd stream, expected none", field=self._what)
            self._d = d = zstd.ZstdDecompressor()
        try:
            out: bytes = d.decompress(data, _OUT_MAX)
        except zstd.ZstdError as exc:
            raise ParseError(f"bad zstd data: {exc}", field=self._what) from None
        if not d.eof and not d.needs_input:
            self._more = True
        elif d.eof and d.unused_data:
            self._pending = d.unused_data
        return out

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        parts = []
        while n > 0:
            if self._pos >= len(self._buf):
                if self._eof:
                    # tarfile skips a member's data in stream mode by reading block after
                    # block, and does not stop at the end: a header declaring 2**63 bytes
                    # (a pax "size" record) looped for ever (found by the fuzz2 campaign).
                    # A reader reads at the end a few times, not thousands.
                    self._reads_past_end += 1
                    if self._reads_past_end > _MAX_READS_PAST_END:
                        raise ParseError(
                            "read past the end of the data: a tar member is larger than the layer",
                            field=self._what,
                        )
                    break
                chunk = self._next_chunk()
                self.count += len(chunk)
                if self.count > self._limit:
                    raise ParseError(
                        f"uncompressed size exceeds the limit of {self._limit} bytes", field=self._what
                    )
                if self.compression != NONE:  # uncompressed: the blob digest is the diff_id
                    self._h.update(chunk)
                self._buf, self._pos = chunk, 0
                continue
            piece = self._buf[self._pos : self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def verify(self) -> tuple[str, str]:
        """Drain the rest; check the uncompressed digest and the blob; return (digest, diff_id)."""
        while self.read(READ_SIZE):
            pass
        blob = self._raw.verify() if self.compression == NONE else None
        diff_id = blob or "sha256:" + self._h.hexdigest()
        if self._diff_id is not None and not hmac.compare_digest(diff_id, self._diff_id):
            raise ParseError(
                f"uncompressed digest: got {diff_id}, expected diff_id {self._diff_id}", field=self._what
            )
        return blob or self._raw.verify(), diff_id


def _zstd_module() -> Any:
    try:
        from backports import zstd  # noqa: PLC0415 - optional: only zstd layers need it
    except ImportError:  # pragma: no cover - declared dependency
        raise UsageError("zstd layers need the backports.zstd package (pip install backports.zstd)") from None
    return zstd


class HashingWriter:
    """Write to ``out`` counting and hashing every byte."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._h = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._h.update(data)
        self.count += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class CompressingWriter:
    """Uncompressed bytes in (hashed: the diff_id), compressed bytes out to a :class:`HashingWriter`.

    gzip output is reproducible: no file name, mtime 0 in the header, a fixed level.
    """

    def __init__(self, out: HashingWriter, compression: str, *, level: int = 6) -> None:
        self._out = out
        self.compression = compression
        self._h = hashlib.sha256()
        self.count = 0
        self._crc = 0
        if compression == GZIP:
            self._z: Any = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
            # RFC 1952 header: magic, CM=8, FLG=0, MTIME=0, XFL=0, OS=255 (unknown)
            out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        elif compression == ZSTD:
            self._z = _zstd_module().ZstdCompressor(level=3)
        elif compression == NONE:
            self._z = None
        else:
            raise UsageError(f"compression: got {compression!r}, expected gzip, zstd or none")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        b = bytes(data)
        if self.compression != NONE:  # uncompressed: the blob digest is the diff_id
            self._h.update(b)
        self.count += len(b)
        if self.compression == GZIP:
            self._crc = zlib.crc32(b, self._crc)
            self._out.write(self._z.compress(b))
        elif self.compression == ZSTD:
            self._out.write(self._z.compress(b))
        else:
            self._out.write(b)
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> tuple[str, str]:
        """Finish the stream; return (blob digest, diff_id)."""
        if self.compression == GZIP:
            self._out.write(self._z.flush())
            self._out.write(self._crc.to_bytes(4, "little") + (self.count & 0xFFFFFFFF).to_bytes(4, "little"))
        elif self.compression == ZSTD:
            self._out.write(self._z.flush(_zstd_module().ZstdCompressor.FLUSH_FRAME))
        self._out.flush()
        blob = self._out.digest()
        return blob, blob if self.compression == NONE else "sha256:" + self._h.hexdigest()
