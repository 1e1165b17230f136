"""The on-disk format of protected volumes (versions 2 and 3; version 1 is still read); see
``docs/volume-format.md``.

This module is pure: it encodes, decodes and authenticates byte strings and never touches the
file system. Everything is little-endian. The pieces:

* **Key schedule** (RFC 5869 HKDF-SHA256 from the 32-byte volume key): a manifest key, a
  manifest nonce key, a file-id key (deterministic mode) and one key per file
  (``info`` = label || region || volume id || file id).
* **Chunks**: a file is cut into chunks of ``chunk_size`` plaintext bytes (the last one shorter,
  an empty file has exactly one empty chunk). Chunk ``i`` is stored as ``payload || tag[16]``
  where payload is the AES-256-GCM ciphertext (encrypted region) or the plaintext itself
  (authenticated region: the tag is the GMAC of the plaintext, i.e. AES-GCM with the plaintext
  in the associated data). The associated data binds volume id, file id, region, chunk index
  and a last-chunk flag, so chunks cannot be reordered, dropped, appended or moved between
  files or volumes. The nonce is the chunk index: each file id (hence each file key) is used
  for exactly one write of the file, so a (key, nonce) pair never repeats.
* **Root**: SHA-256 over the chunk count and the chunk tags, recorded per file in the manifest.
* **Chunk objects** (version 3): a file may instead be stored as a list of chunk objects, one
  per chunk, each named by its own random 128-bit chunk id and sealed under its own key
  (HKDF from the chunk id) with a fixed nonce: every key seals exactly one plaintext. The
  manifest lists each file's chunk ids in order, so a writer replaces only changed chunks.
* **Manifest**: header (clear, authenticated) + AES-256-GCM encrypted body listing regions and
  entries (paths, kinds, modes, owners, modification times, sizes, file ids, roots). The volume
  *tag* is the SHA-256 of the whole manifest file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.errors import ParseError, SignatureError
from confide.evidence._reader import Reader

__all__ = [
    "CHUNKED_VERSION",
    "CHUNK_AAD_MAGIC",
    "DEFAULT_CHUNK_SIZE",
    "FILE_ID_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MANIFEST_HEADER_SIZE",
    "MANIFEST_MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_MANIFEST_BODY",
    "MAX_MTIME_NS",
    "MAX_PENDING_STEP",
    "MIN_CHUNK_SIZE",
    "READABLE_VERSIONS",
    "ROOT_SIZE",
    "TAG_SIZE",
    "VOLUME_ID_SIZE",
    "ChunkCodec",
    "ChunkKeys",
    "ChunkOpener",
    "Entry",
    "EntryKind",
    "Manifest",
    "ManifestHeader",
    "ManifestState",
    "Region",
    "RegionRule",
    "check_entries",
    "check_path",
    "check_symlink_target",
    "chunk_count",
    "chunked_count",
    "chunked_length",
    "clamp_mtime_ns",
    "decode_manifest",
    "derive_file_id",
    "encode_manifest",
    "encode_manifest_body",
    "file_key",
    "finish_root",
    "manifest_version",
    "object_size",
    "parse_manifest_body",
    "parse_manifest_header",
    "pending_base_mac",
    "pending_tag",
    "region_for",
    "root_hasher",
    "volume_tag",
]

# --- sizes (bytes) -------------------------------------------------------------------------------
KEY_SIZE = 32  # AES-256 volume key
VOLUME_ID_SIZE = 16
FILE_ID_SIZE = 16
TAG_SIZE = 16  # AES-GCM tag (NIST SP 800-38D, full 128-bit tag)
NONCE_SIZE = 12  # 96-bit GCM IV (SP 800-38D section 8.2.1, deterministic construction)
ROOT_SIZE = 32  # SHA-256
_SHA256_BLOCK = 64  # bytes (FIPS 180-4 section 5.1.1)
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_PATH_BYTES = 4096
# Largest manifest body read or written (docs/volume-format.md, "Manifest", body length): a
# manifest is read whole before it authenticates, so this is what a host can make a reader
# allocate. 1 GiB holds 1M files with paths of ~1,000 bytes on average (a file entry is 80
# bytes + its path: 1M files with 100-byte paths take ~180 MB), or 4 TiB of chunked files at
# the default chunk size (16 bytes of chunk id per 64 KiB chunk); the u32 field allows 4 GiB.
MAX_MANIFEST_BODY = 1 << 30
MAX_NAME_BYTES = 255
MAX_ENTRIES = 10_000_000
MAX_FILE_SIZE = 2**62  # keeps chunk indexes and offsets far from 64-bit overflow

# Version 2 (docs/volume-format.md, "Versions") added each entry's modification time; the
# key schedule, objects and chunk format are those of version 1 (hence the v1 labels below).
# Version 3 added chunked files (a list of chunk objects per file, for copy-on-write of
# chunks); a manifest is written as version 3 only when it lists a chunked file, else as 2.
FORMAT_VERSION = 2
CHUNKED_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# Modification times are u64 nanoseconds since 1970-01-01T00:00:00Z; at most 2**63 - 1
# (2262-04-11T23:47:16.854775807Z) so that every value fits a signed 64-bit nanosecond clock
# (Linux ktime_t, Python's st_mtime_ns, a FUSE timespec) on every consumer.
MAX_MTIME_NS = 2**63 - 1
_U32_MAX = 2**32 - 1
MANIFEST_MAGIC = b"CFDVOLM1"
CHUNK_AAD_MAGIC = b"CFDVCHK1"
CHUNK_OBJECT_AAD_MAGIC = b"CFDVCHK3"  # chunk objects (version 3)
ROOT_MAGIC = b"CFDVROOT"

# Manifest header: magic(8) version(u16) state(u8) reserved(u8) volume_id(16) generation(u64)
# nonce(12) body_length(u32), then body ciphertext || tag(16).
_HEADER = struct.Struct("<8sHBB16sQ12sI")
MANIFEST_HEADER_SIZE = _HEADER.size  # 52
# Chunk associated data: magic(8) volume_id(16) file_id(16) region(u8) last(u8) index(u64).
_CHUNK_AAD_PREFIX = struct.Struct("<8s16s16sB")
_CHUNK_AAD_SUFFIX = struct.Struct("<BQ")

# HKDF info labels (RFC 5869 section 3.2: "info" separates keys for different uses).
_INFO_MANIFEST = b"confide-volume-v1 manifest key"
_INFO_MANIFEST_NONCE = b"confide-volume-v1 manifest nonce key"
_INFO_FILE = b"confide-volume-v1 file key"
_INFO_FILE_ID = b"confide-volume-v1 file id key"
_INFO_CHUNK = b"confide-volume-v3 chunk key"
_INFO_PENDING_BASE = b"confide-volume-v1 pending base key"
_INFO_PENDING_TAG = b"confide-volume-v1 pending tag key"
_PENDING_TAG_DOMAIN = b"CFDVPTG1"
MAX_PENDING_STEP = (1 << 64) - 1
# Layout byte of a version-3 file entry.
_LAYOUT_OBJECT = 0  # one object for the whole file (versions 1 and 2)
_LAYOUT_CHUNKS = 1  # one object per chunk


class Region(IntEnum):
    """Protection of a file's contents (as SCONE's file-system protection regions)."""

    UNPROTECTED = 0  # stored as is; only its path, kind and mode are in the manifest
    AUTHENTICATED = 1  # plaintext + a GMAC per chunk
    ENCRYPTED = 2  # AES-256-GCM per chunk

    @property
    def label(self) -> str:
        return {0: "unprotected", 1: "authenticated", 2: "encrypted"}[self.value]


class EntryKind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


class ManifestState(IntEnum):
    PENDING = 1  # written by `add`, not yet sealed; never accepted by verify/open
    SEALED = 2


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"volume key: got {len(key)} bytes, expected {KEY_SIZE}")


def file_key(volume_key: bytes, volume_id: bytes, file_id: bytes, region: Region) -> bytes:
    """The per-file AES-256 key: HKDF-SHA256(volume key, info = label || region || ids)."""
    _check_key(volume_key)
    return _hkdf(volume_key, _INFO_FILE + bytes([region]) + volume_id + file_id)


def pending_base_mac(volume_key: bytes, volume_id: bytes, pending: bytes, base_tag: str) -> bytes:
    """The MAC of a pending manifest's base record (docs/volume-format.md, "Pending base"):
    HMAC-SHA256 under HKDF(volume key, "confide-volume-v1 pending base key" || volume_id) over
    SHA-256(the pending manifest's bytes) || the base tag (64 lower-case hex digits, ASCII).
    It binds a staged MANIFEST.pending to the sealed version it was built on, which the
    manifest format itself does not record (only the generation)."""
    _check_key(volume_key)
    k = _hkdf(volume_key, _INFO_PENDING_BASE + volume_id)
    return hmac.new(k, hashlib.sha256(pending).digest() + base_tag.encode("ascii"), hashlib.sha256).digest()


def pending_tag(volume_key: bytes, volume_id: bytes, pending: bytes, base_tag: str, step: int) -> str:
    """The pending tag of a staged state (docs/volume-format.md, "Pending tag"): 64 lower-case
    hex digits of HMAC-SHA256 under HKDF(volume key, "confide-volume-v1 pending tag key" ||
    volume_id) over "CFDVPTG1" || volume_id || base tag (32 bytes) || u64(step) ||
    SHA-256(the pending manifest's bytes).

    It authenticates what an `add` or `rm` staged (the pending manifest's bytes), the sealed
    version it was staged on, and the staging step (1 for the first `add`/`rm` after a seal,
    +1 per later one): an earlier staged state never has the same tag, even with the same
    bytes (it has a lower step). The volume id makes a tag of another volume under the same key
    another value. Not a secret (it is written beside the pending manifest)."""
    _check_key(volume_key)
    if not 1 <= step <= MAX_PENDING_STEP:
        raise ValueError(f"pending step: got {step}, expected 1..{MAX_PENDING_STEP}")
    k = _hkdf(volume_key, _INFO_PENDING_TAG + volume_id)
    msg = (
        _PENDING_TAG_DOMAIN
        + volume_id
        + bytes.fromhex(base_tag)
        + step.to_bytes(8, "little")
        + hashlib.sha256(pending).digest()
    )
    return hmac.new(k, msg, hashlib.sha256).hexdigest()


def derive_file_id(
    volume_key: bytes, volume_id: bytes, path: str, content_digest: bytes, region: Region
) -> bytes:
    """A deterministic file id (reproducible builds): HMAC over the path, content digest and
    region (docs/volume-format.md, "Deterministic mode").

    Two different contents get different ids (and so different keys), and the same content
    gives the same ciphertext: only equality of (path, content) is revealed. The region is
    part of the input because the object's bytes depend on it: the same file added again
    under another region must not get the id (the object name) of the sealed version's
    object, which would replace that object before the seal and break the sealed version.
    """
    _check_key(volume_key)
    k = _hkdf(volume_key, _INFO_FILE_ID + volume_id)
    msg = path.encode("utf-8") + b"\x00" + content_digest + bytes([region])
    return hmac.new(k, msg, hashlib.sha256).digest()[:FILE_ID_SIZE]


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a file of ``size`` bytes (an empty file has one empty chunk)."""
    return max(1, -(-size // chunk_size))


def object_size(size: int, chunk_size: int, region: Region) -> int:
    """Exact size of the stored object of a file."""
    if region is Region.UNPROTECTED:
        return size
    return size + TAG_SIZE * chunk_count(size, chunk_size)


def root_hasher() -> hashlib._Hash:
    """A SHA-256 hasher for a file root: feed every chunk tag in order, then :func:`finish_root`.

    root = SHA-256("CFDVROOT" || tag_0 || ... || tag_{n-1} || u64le(n)); the count comes last
    so that a writer can stream a file of unknown length.
    """
    return hashlib.sha256(ROOT_MAGIC)


def finish_root(h: hashlib._Hash, n_chunks: int) -> bytes:
    h.update(n_chunks.to_bytes(8, "little"))
    return h.digest()


class ChunkCodec:
    """Seals and opens the chunks of one file (one file id, one key)."""

    __slots__ = ("_aad_prefix", "_aead", "region")

    def __init__(self, volume_key: bytes, volume_id: bytes, file_id: bytes, region: Region) -> None:
        if region is Region.UNPROTECTED:
            raise ValueError("unprotected files have no chunk codec")
        self.region = region
        self._aead = AESGCM(file_key(volume_key, volume_id, file_id, region))
        self._aad_prefix = _CHUNK_AAD_PREFIX.pack(CHUNK_AAD_MAGIC, volume_id, file_id, region)

    def aad(self, index: int, last: bool) -> bytes:
        return self._aad_prefix + _CHUNK_AAD_SUFFIX.pack(1 if last else 0, index)

    @staticmethod
    def nonce(index: int) -> bytes:
        return index.to_bytes(NONCE_SIZE, "little")

    def seal(self, plaintext: bytes | bytearray | memoryview, index: int, last: bool) -> bytes:
        """Return the stored record of a chunk: payload || tag."""
        aad = self.aad(index, last)
        if self.region is Region.ENCRYPTED:
            return self._aead.encrypt(index.to_bytes(NONCE_SIZE, "little"), plaintext, aad)
        tag = self._aead.encrypt(index.to_bytes(NONCE_SIZE, "little"), b"", aad + bytes(plaintext))
        return bytes(plaintext) + tag

    def open_into(
        self, record: bytes | bytearray | memoryview, index: int, last: bool, out: bytearray | memoryview
    ) -> int:
        """Authenticate ``record`` and write the plaintext into ``out``; return its length.

        Raises :class:`SignatureError` (without any plaintext) when the chunk does not
        authenticate as chunk ``index`` (with the given last flag) of this file.
        """
        n = len(record) - TAG_SIZE
        if n < 0:
            raise SignatureError(f"chunk {index}: got {len(record)} bytes, expected at least {TAG_SIZE}")
        aad = self.aad(index, last)
        nonce = index.to_bytes(NONCE_SIZE, "little")
        try:
            if self.region is Region.ENCRYPTED:
                self._aead.decrypt_into(nonce, record, aad, memoryview(out)[:n])
            else:
                mv = memoryview(record)
                self._aead.decrypt(nonce, mv[n:], aad + bytes(mv[:n]))
                out[:n] = mv[:n]
        except InvalidTag:
            raise SignatureError(f"chunk {index} does not authenticate") from None
        return n

    def open(self, record: bytes | bytearray | memoryview, index: int, last: bool) -> bytes:
        out = bytearray(max(0, len(record) - TAG_SIZE))
        n = self.open_into(record, index, last, out)
        return bytes(out[:n])


def chunked_count(size: int, chunk_size: int) -> int:
    """Number of chunk objects of a chunked file (version 3): ceil(size / chunk_size); an empty
    file has none."""
    return -(-size // chunk_size)


def chunked_length(size: int, chunk_size: int, index: int) -> int:
    """Plaintext bytes of chunk ``index`` of a chunked file of ``size`` bytes."""
    return min(chunk_size, size - index * chunk_size)


# (record, chunk id, out) -> plaintext length; see ChunkKeys.opener
ChunkOpener = Callable[[bytes | bytearray | memoryview, bytes, bytearray | memoryview], int]


class ChunkKeys:
    """Seals and opens the chunk objects of a volume (version 3, docs/volume-format.md,
    "Chunk objects").

    Each chunk object is sealed under its own key, HKDF-SHA256 (RFC 5869) of the volume key
    with info = label || region || volume id || chunk id, and the all-zero nonce. A chunk id is
    drawn at random (128 bits) for every write of a chunk and never written twice, so each key
    encrypts exactly one plaintext: the uniqueness requirement on (key, IV) pairs of NIST SP
    800-38D section 8 holds by construction, without a nonce counter or a random-IV bound.
    The extract step (RFC 5869 section 2.2, no salt) is done once per volume key; each chunk
    key is one HMAC of the expand step (section 2.3, one 32-byte block). The associated data
    binds volume id, chunk id and region; the chunk's place in its file is bound by the
    authenticated manifest, which lists the ids in order.
    """

    __slots__ = ("_inner", "_outer", "volume_id")

    def __init__(self, volume_key: bytes, volume_id: bytes) -> None:
        _check_key(volume_key)
        self.volume_id = volume_id
        prk = hmac.digest(bytes(32), volume_key, "sha256")  # HKDF-Extract, salt = 32 zeros
        # HMAC-SHA256 keyed with the PRK (RFC 2104 section 2): H((K ^ opad) || H((K ^ ipad) || m)),
        # K zero-padded to the 64-byte block. The two padded-key blocks are hashed once here;
        # a chunk key then costs two copies of these states (~0.8 us, a one-shot hmac.digest
        # ~2 us: a chunked file derives one key per chunk read, docs/performance.md).
        block = prk.ljust(_SHA256_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def key(self, chunk_id: bytes, region: Region) -> bytes:
        """HKDF-Expand(PRK, info, 32): T(1) = HMAC(PRK, info || 0x01)."""
        inner = self._inner.copy()
        inner.update(_INFO_CHUNK + bytes([region]) + self.volume_id + chunk_id + b"\x01")
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _aad(self, chunk_id: bytes, region: Region) -> bytes:
        return CHUNK_OBJECT_AAD_MAGIC + self.volume_id + chunk_id + bytes([region])

    def seal(self, plaintext: bytes | bytearray | memoryview, chunk_id: bytes, region: Region) -> bytes:
        """The stored chunk object: ciphertext || tag (encrypted) or plaintext || GMAC tag."""
        if region is Region.UNPROTECTED:
            raise ValueError("unprotected files are not chunked")
        aead = AESGCM(self.key(chunk_id, region))
        aad = self._aad(chunk_id, region)
        if region is Region.ENCRYPTED:
            return aead.encrypt(bytes(NONCE_SIZE), plaintext, aad)
        return bytes(plaintext) + aead.encrypt(bytes(NONCE_SIZE), b"", aad + bytes(plaintext))

    def open_into(
        self,
        record: bytes | bytearray | memoryview,
        chunk_id: bytes,
        region: Region,
        out: bytearray | memoryview,
    ) -> int:
        """Authenticate a chunk object and write its plaintext into ``out``; return the length.
        :class:`SignatureError` (no plaintext written) if it is not chunk ``chunk_id``'s."""
        return self.opener(region)(record, chunk_id, out)

    def opener(self, region: Region, cache: int = 0) -> ChunkOpener:
        """:meth:`open_into` for one region, with what does not depend on the chunk id computed
        once (a reader of many chunks calls it per chunk: ~1 us less per chunk).

        ``cache`` > 0 keeps the AES-GCM contexts of up to that many chunk ids (about 2.5 KiB
        each, with the key schedule), so that a chunk read again skips the key derivation and
        the key setup (~2 us); the whole cache is dropped when full (bounded memory, no
        per-hit bookkeeping; threads racing at the bound may add one entry each over it). A
        context depends only on (volume key, volume id, region, chunk id), so a cached one
        authenticates exactly as a fresh one would. Never caches plaintext.
        """
        if region is Region.UNPROTECTED:
            raise ValueError("unprotected files are not chunked")
        if cache < 0:
            raise ValueError(f"cache: got {cache}, expected a non-negative entry count")
        aeads: dict[bytes, AESGCM] = {}
        inner0, outer0 = self._inner, self._outer
        info = _INFO_CHUNK + bytes([region]) + self.volume_id  # || chunk id || 0x01: HKDF T(1)
        aad_prefix = CHUNK_OBJECT_AAD_MAGIC + self.volume_id
        region_byte = bytes([region])
        nonce = bytes(NONCE_SIZE)
        encrypted = region is Region.ENCRYPTED

        def open_into(
            record: bytes | bytearray | memoryview, chunk_id: bytes, out: bytearray | memoryview
        ) -> int:
            n = len(record) - TAG_SIZE
            if n < 0:
                raise SignatureError(f"chunk object: got {len(record)} bytes, expected at least {TAG_SIZE}")
            aead = aeads.get(chunk_id)
            if aead is None:
                inner = inner0.copy()  # the key: as ChunkKeys.key, inlined
                inner.update(info + chunk_id + b"\x01")
                outer = outer0.copy()
                outer.update(inner.digest())
                aead = AESGCM(outer.digest())
                if cache:
                    if len(aeads) >= cache:
                        aeads.clear()
                    aeads[chunk_id] = aead
            aad = aad_prefix + chunk_id + region_byte
            try:
                if encrypted:
                    aead.decrypt_into(nonce, record, aad, memoryview(out)[:n])
                else:
                    mv = memoryview(record)
                    aead.decrypt(nonce, mv[n:], aad + bytes(mv[:n]))
                    out[:n] = mv[:n]
            except InvalidTag:
                raise SignatureError(f"chunk object {chunk_id.hex()} does not authenticate") from None
            return n

        return open_into


# --- paths ---------------------------------------------------------------------------------------


# Unicode general category Cc ("control"): exactly U+0000-U+001F and U+007F-U+009F (Unicode
# 15.1, section 4.5; tested against unicodedata). One regex search instead of a category
# lookup per character: check_path runs on every path of every manifest read and written.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_path(path: str, what: str = "path") -> str:
    """Return ``path`` if it is a safe relative volume path, else raise :class:`ParseError`.

    Safe: relative POSIX path, '/'-separated, no empty, '.' or '..' components, no NUL or
    other control characters, valid UTF-8, at most 4096 bytes and 255 bytes per component.
    """
    if not isinstance(path, str) or not path:
        raise ParseError(f"got {path!r}, expected a non-empty relative path", field=what)
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError(f"got {path!r}, expected valid UTF-8", field=what) from None
    if len(raw) > MAX_PATH_BYTES:
        raise ParseError(f"got {len(raw)} bytes, expected at most {MAX_PATH_BYTES}", field=what)
    if path.startswith("/"):
        raise ParseError(f"got absolute path {path!r}, expected a relative path", field=what)
    if _CONTROL.search(path):
        raise ParseError(f"got {path!r}, expected no NUL or control characters", field=what)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ParseError(f"got {path!r}, expected no empty, '.' or '..' components", field=what)
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ParseError(f"got a {len(part.encode())}-byte name, expected at most 255", field=what)
    return path


def check_symlink_target(target: str, what: str = "symlink target") -> str:
    """Return ``target`` if a manifest can hold it (non-empty, valid UTF-8, no NUL, at most
    65535 bytes: a u16-length ``str``), else raise :class:`ParseError`."""
    try:
        raw = target.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError(f"got {target!r}, expected valid UTF-8", field=what) from None
    if not raw or b"\x00" in raw or len(raw) > 0xFFFF:
        raise ParseError(f"got {target[:80]!r}, expected a non-empty target without NUL", field=what)
    return target


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class RegionRule:
    """Paths equal to ``prefix`` or below it get ``region`` (longest prefix wins)."""

    prefix: str
    region: Region


def region_for(path: str, rules: Iterable[RegionRule], default: Region) -> Region:
    best: RegionRule | None = None
    for rule in rules:
        if _is_under(path, rule.prefix) and (best is None or len(rule.prefix) > len(best.prefix)):
            best = rule
    return best.region if best is not None else default


# --- manifest ------------------------------------------------------------------------------------


def clamp_mtime_ns(ns: int) -> int:
    """``ns`` limited to the format's range 0..MAX_MTIME_NS (times before 1970 become the epoch)."""
    return min(max(ns, 0), MAX_MTIME_NS)


@dataclass(frozen=True)
class Entry:
    """One manifest entry. ``file_id``/``size``/``root`` only for files, ``target`` for symlinks.

    ``mtime_ns``: modification time, nanoseconds since the Unix epoch (UTC); 0 for entries read
    from a version-1 manifest, which records no times.

    ``chunks`` (version 3): for a chunked file, its chunk ids in order (``file_id`` is then
    empty and ``root`` all zeros); None for a file stored as one object.
    """

    path: str
    kind: EntryKind
    mode: int
    uid: int = 0
    gid: int = 0
    region: Region = Region.ENCRYPTED
    file_id: bytes = b""
    size: int = 0
    root: bytes = b""
    target: str = ""
    mtime_ns: int = 0
    chunks: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class Manifest:
    volume_id: bytes
    generation: int
    state: ManifestState
    chunk_size: int = DEFAULT_CHUNK_SIZE
    default_region: Region = Region.ENCRYPTED
    rules: tuple[RegionRule, ...] = ()
    entries: tuple[Entry, ...] = field(default=())

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}


def _enc_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def manifest_version(m: Manifest) -> int:
    """The version a manifest is written in: CHUNKED_VERSION if it lists a chunked file, else
    FORMAT_VERSION (so volumes without chunked files stay readable by version-2 readers)."""
    chunked = any(e.chunks is not None for e in m.entries)
    return CHUNKED_VERSION if chunked else FORMAT_VERSION


def encode_manifest_body(m: Manifest) -> bytes:
    """The body of a manifest in :func:`manifest_version` (docs/volume-format.md, "Manifest")."""
    v3 = manifest_version(m) == CHUNKED_VERSION
    out = bytearray(struct.pack("<IBH", m.chunk_size, m.default_region, len(m.rules)))
    for rule in m.rules:
        out += bytes([rule.region]) + _enc_str(rule.prefix)
    out += struct.pack("<I", len(m.entries))
    for e in m.entries:
        out += struct.pack("<BBIIIQ", e.kind, e.region, e.mode, e.uid, e.gid, e.mtime_ns) + _enc_str(e.path)
        if e.kind is EntryKind.FILE and e.chunks is not None:
            out += bytes([_LAYOUT_CHUNKS]) + struct.pack("<Q", e.size) + b"".join(e.chunks)
        elif e.kind is EntryKind.FILE:
            out += (bytes([_LAYOUT_OBJECT]) if v3 else b"") + e.file_id + struct.pack("<Q", e.size) + e.root
        elif e.kind is EntryKind.SYMLINK:
            out += _enc_str(e.target)
    return bytes(out)


def _read_str(r: Reader, fld: str) -> str:
    n = r.u16(f"{fld}.length")
    off = r.pos
    raw = r.take(n, fld)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise r.error("not valid UTF-8", fld, off) from None


def _enum(r: Reader, cls: type[IntEnum], fld: str) -> int:
    off = r.pos
    v = r.u8(fld)
    try:
        return int(cls(v))
    except ValueError:
        allowed = ", ".join(str(int(x)) for x in cls)
        raise r.error(f"got {v}, expected one of {allowed}", fld, off) from None


def parse_manifest_body(
    data: bytes, volume_id: bytes, generation: int, state: ManifestState, version: int = FORMAT_VERSION
) -> Manifest:
    """Parse a decrypted body of format ``version`` (1: no times, every ``mtime_ns`` is 0;
    3: a layout byte per file, chunked files list their chunk ids)."""
    if version not in READABLE_VERSIONS:
        raise ParseError(f"got version {version}, expected one of {READABLE_VERSIONS}", field="version")
    r = Reader(data, "volume manifest body")
    off = r.pos
    chunk_size = r.u32("chunk_size")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise r.error(f"got {chunk_size}, expected {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", "chunk_size", off)
    default_region = Region(_enum(r, Region, "default_region"))
    rules: list[RegionRule] = []
    seen_prefixes: set[str] = set()
    for i in range(r.u16("rule_count")):
        region = Region(_enum(r, Region, f"rules[{i}].region"))
        off = r.pos
        prefix = _read_str(r, f"rules[{i}].prefix")
        _wrap_path(r, prefix, f"rules[{i}].prefix", off)
        if prefix in seen_prefixes:
            raise r.error(f"duplicate region prefix {prefix!r}", f"rules[{i}].prefix", off)
        seen_prefixes.add(prefix)
        rules.append(RegionRule(prefix, region))
    off = r.pos
    count = r.u32("entry_count")
    # Each entry takes at least 17 bytes (25 with the time): bound the count before looping
    # (hostile input).
    min_entry = 17 if version == 1 else 25
    if count > MAX_ENTRIES or count * min_entry > r.remaining:
        raise r.error(f"got {count} entries, more than the {r.remaining} remaining bytes can hold", None, off)
    entries: list[Entry] = []
    for i in range(count):
        f = f"entries[{i}]"
        kind = EntryKind(_enum(r, EntryKind, f"{f}.kind"))
        region = Region(_enum(r, Region, f"{f}.region"))
        off = r.pos
        mode = r.u32(f"{f}.mode")
        if mode & ~0o7777:
            raise r.error(f"got {mode:#o}, expected permission bits only (<= 0o7777)", f"{f}.mode", off)
        uid = r.u32(f"{f}.uid")
        gid = r.u32(f"{f}.gid")
        mtime_ns = 0
        if version >= 2:
            off = r.pos
            mtime_ns = r.u64(f"{f}.mtime_ns")
            if mtime_ns > MAX_MTIME_NS:
                raise r.error(f"got {mtime_ns}, expected at most 2**63 - 1 ns", f"{f}.mtime_ns", off)
        off = r.pos
        path = _read_str(r, f"{f}.path")
        _wrap_path(r, path, f"{f}.path", off)
        file_id, size, root, target = b"", 0, b"", ""
        chunks: tuple[bytes, ...] | None = None
        layout = _LAYOUT_OBJECT
        if kind is EntryKind.FILE and version >= CHUNKED_VERSION:
            off = r.pos
            layout = r.u8(f"{f}.layout")
            if layout not in (_LAYOUT_OBJECT, _LAYOUT_CHUNKS):
                raise r.error(f"got {layout}, expected 0 (one object) or 1 (chunks)", f"{f}.layout", off)
        if kind is EntryKind.FILE and layout == _LAYOUT_CHUNKS:
            if region is Region.UNPROTECTED:
                raise r.error("unprotected files are not chunked", f"{f}.layout", off)
            off = r.pos
            size = r.u64(f"{f}.size")
            if size > MAX_FILE_SIZE:
                raise r.error(f"got {size}, expected at most 2**62", f"{f}.size", off)
            n = chunked_count(size, chunk_size)
            if n * FILE_ID_SIZE > r.remaining:  # bound before taking (hostile input)
                raise r.error(
                    f"got size {size}: {n} chunk ids, more than the {r.remaining} remaining bytes hold",
                    f"{f}.size", off,
                )  # fmt: skip
            raw = r.take(n * FILE_ID_SIZE, f"{f}.chunks")
            chunks = tuple(raw[k : k + FILE_ID_SIZE] for k in range(0, len(raw), FILE_ID_SIZE))
            root = bytes(ROOT_SIZE)
        elif kind is EntryKind.FILE:
            file_id = r.take(FILE_ID_SIZE, f"{f}.file_id")
            off = r.pos
            size = r.u64(f"{f}.size")
            if size > MAX_FILE_SIZE:
                raise r.error(f"got {size}, expected at most 2**62", f"{f}.size", off)
            root = r.take(ROOT_SIZE, f"{f}.root")
        elif kind is EntryKind.SYMLINK:
            off = r.pos
            target = _read_str(r, f"{f}.target")
            if not target or "\x00" in target:
                raise r.error("expected a non-empty symlink target without NUL", f"{f}.target", off)
        entries.append(
            Entry(path, kind, mode, uid, gid, region, file_id, size, root, target, mtime_ns, chunks)
        )
    r.expect_end()
    m = Manifest(volume_id, generation, state, chunk_size, default_region, tuple(rules), tuple(entries))
    check_entries(m.entries)
    return m


def _wrap_path(r: Reader, path: str, fld: str, off: int) -> None:
    try:
        check_path(path)
    except ParseError as exc:
        raise r.error(exc.message.split(": ", 1)[-1], fld, off) from None


def check_entries(entries: tuple[Entry, ...]) -> None:
    """Entries must be sorted by path, unique, and every listed ancestor must be a directory;
    times must be in the format's range.

    A file or symlink listed as the parent of another entry would let extraction write
    through a symlink, so it is rejected; unlisted ancestors are implicit directories.
    """
    kinds: dict[str, EntryKind] = {}
    prev: bytes | None = None
    file_ids: set[bytes] = set()
    for i, e in enumerate(entries):
        if not 0 <= e.mtime_ns <= MAX_MTIME_NS:
            raise ParseError(
                f"got {e.mtime_ns}, expected 0..2**63 - 1 ns", structure="volume manifest",
                field=f"entries[{i}].mtime_ns",
            )  # fmt: skip
        # docs/volume-format.md, "Manifest": mode u32 (<= 0o7777), uid u32, gid u32. A tar
        # header's pax uid/gid record (sconify) can hold any integer: a ParseError here, not a
        # struct.error from the encoder (found by the fuzz2 mutation campaign).
        limits = (("mode", e.mode, 0o7777), ("uid", e.uid, _U32_MAX), ("gid", e.gid, _U32_MAX))
        for name, value, limit in limits:
            if not 0 <= value <= limit:
                raise ParseError(
                    f"{e.path!r}: got {name} {value}, expected 0..{limit}", structure="volume manifest",
                    field=f"entries[{i}].{name}",
                )  # fmt: skip
        key = e.path.encode("utf-8")
        if prev is not None and key <= prev:
            what = "duplicate" if key == prev else "unsorted"
            raise ParseError(
                f"{what} path {e.path!r}", structure="volume manifest", field=f"entries[{i}].path"
            )
        prev = key
        kinds[e.path] = e.kind
        if e.kind is EntryKind.FILE:
            # File ids and chunk ids name objects in one directory: all of them unique.
            ids = (e.file_id,) if e.chunks is None else e.chunks
            for oid in ids:
                if oid in file_ids or (e.chunks is not None and len(oid) != FILE_ID_SIZE):
                    raise ParseError(
                        f"object id of {e.path!r} used twice or not {FILE_ID_SIZE} bytes",
                        structure="volume manifest", field=f"entries[{i}]",
                    )  # fmt: skip
                file_ids.add(oid)
    for i, e in enumerate(entries):
        parts = e.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = kinds.get(parent)
            if kind is not None and kind is not EntryKind.DIR:
                raise ParseError(
                    f"{e.path!r} lies below {parent!r}, which is a {kind.name.lower()}, expected a directory",
                    structure="volume manifest",
                    field=f"entries[{i}].path",
                )


def _manifest_keys(volume_key: bytes, volume_id: bytes) -> tuple[bytes, bytes]:
    _check_key(volume_key)
    return (
        _hkdf(volume_key, _INFO_MANIFEST + volume_id),
        _hkdf(volume_key, _INFO_MANIFEST_NONCE + volume_id),
    )


def encode_manifest(m: Manifest, volume_key: bytes) -> bytes:
    """Serialise and encrypt ``m``; deterministic (same manifest and key, same bytes).

    The GCM nonce is an HMAC of header and body under its own key (a synthetic IV): equal
    manifests give equal bytes, different ones different nonces (collision ~2**-96 per pair).
    """
    if len(m.volume_id) != VOLUME_ID_SIZE:
        raise ValueError("volume id must be 16 bytes")
    check_entries(m.entries)
    for e in m.entries:
        # What the parser refuses is never written: a manifest with such a path or target
        # could not be read again (docs/volume-format.md, "Manifest"; a writable tmpfs mount
        # can hold names that no FUSE or `add` path accepts).
        check_path(e.path)
        if e.kind is EntryKind.SYMLINK:
            check_symlink_target(e.target)
        if e.chunks is not None and (
            e.region is Region.UNPROTECTED or len(e.chunks) != chunked_count(e.size, m.chunk_size)
        ):
            raise ValueError(f"{e.path!r}: chunk ids not matching the size, or an unprotected file chunked")
    body = encode_manifest_body(m)
    if len(body) > MAX_MANIFEST_BODY:  # never written: no reader would read it
        raise ParseError(
            f"got {len(body)} bytes, expected at most {MAX_MANIFEST_BODY} (too many entries or chunks "
            "for one volume)",
            field="body_length",
        )
    k_enc, k_nonce = _manifest_keys(volume_key, m.volume_id)
    version = manifest_version(m)
    pre = _HEADER.pack(MANIFEST_MAGIC, version, m.state, 0, m.volume_id, m.generation, bytes(12), len(body))
    nonce = hmac.new(k_nonce, pre + body, hashlib.sha256).digest()[:NONCE_SIZE]
    header = _HEADER.pack(MANIFEST_MAGIC, version, m.state, 0, m.volume_id, m.generation, nonce, len(body))
    return header + AESGCM(k_enc).encrypt(nonce, body, header)


@dataclass(frozen=True)
class ManifestHeader:
    version: int
    state: ManifestState
    volume_id: bytes
    generation: int
    nonce: bytes
    body_length: int


def parse_manifest_header(data: bytes) -> ManifestHeader:
    """Parse the clear header (not yet authenticated: do not act on it before decoding)."""
    r = Reader(data, "volume manifest")
    magic = r.take(len(MANIFEST_MAGIC), "magic")
    if magic != MANIFEST_MAGIC:
        raise r.error(f"got {magic!r}, expected {MANIFEST_MAGIC!r}", "magic", 0)
    version = r.u16("version")
    if version not in READABLE_VERSIONS:
        raise r.error(
            f"got {version}, expected one of {', '.join(map(str, READABLE_VERSIONS))}", "version", 8
        )
    state = ManifestState(_enum(r, ManifestState, "state"))
    off = r.pos
    if r.u8("reserved") != 0:
        raise r.error("expected 0", "reserved", off)
    volume_id = r.take(VOLUME_ID_SIZE, "volume_id")
    generation = r.u64("generation")
    nonce = r.take(NONCE_SIZE, "nonce")
    off = r.pos
    body_length = r.u32("body_length")
    if body_length > MAX_MANIFEST_BODY:
        raise r.error(f"got {body_length}, expected at most {MAX_MANIFEST_BODY}", "body_length", off)
    if r.remaining != body_length + TAG_SIZE:
        raise r.error(
            f"got {r.remaining} bytes of body and tag, expected {body_length + TAG_SIZE}", "body_length", off
        )
    return ManifestHeader(version, state, volume_id, generation, nonce, body_length)


def decode_manifest(data: bytes, volume_key: bytes) -> Manifest:
    """Authenticate, decrypt and parse a manifest file (any of READABLE_VERSIONS; the version
    field is in the header, hence in the AEAD's associated data).

    Raises :class:`ParseError` for a malformed header or body, :class:`SignatureError` when it
    does not authenticate under ``volume_key``.
    """
    h = parse_manifest_header(data)
    k_enc, _ = _manifest_keys(volume_key, h.volume_id)
    header = data[:MANIFEST_HEADER_SIZE]
    try:
        body = AESGCM(k_enc).decrypt(h.nonce, data[MANIFEST_HEADER_SIZE:], header)
    except InvalidTag:
        raise SignatureError(
            "volume manifest does not authenticate under this key (wrong key, or the manifest was modified)"
        ) from None
    return parse_manifest_body(body, h.volume_id, h.generation, h.state, h.version)


def volume_tag(manifest_bytes: bytes) -> str:
    """The volume tag: lower-case hex SHA-256 of the manifest file."""
    return hashlib.sha256(manifest_bytes).hexdigest()
