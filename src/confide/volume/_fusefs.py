"""The FUSE file system serving a protected volume (runs in the mount's child process).

Reads go through :class:`~confide.volume.reader.VolumeReader` (only the chunks of the range,
each authenticated; an integrity failure is logged and returned as ``EIO``, never as data).
Writes (``writable``) follow the format's rule that a (key, nonce) pair is never reused: a file
opened for writing is copied, decrypted, into an anonymous memory file (``memfd_create``, so
no plaintext reaches a disk) and every commit of it (on flush, fsync, release, or a truncate
without a handle) writes it as a chunked file (format version 3): only the chunks changed since
the last commit are sealed, each under a *new random chunk id*, hence a new key; the others
keep their objects (unprotected files: the whole file under a new file id). The
volume is sealed once, at unmount, by :func:`seal` (new generation, new tag); until then the
sealed MANIFEST is untouched, so discarding a session just drops its new objects.

An ``ephemeral`` session (``eph``: writable, never sealed) commits nothing: each file written
keeps its plaintext in its memory file until the server exits, and namespace changes live in
the in-memory tree only. Nothing is written into the volume directory, so such a session takes
the volume's lock shared, next to read-only mounts and other ephemeral sessions. Its memory
files are held to a byte budget (``memory_limit``: the sum of their sizes, a sparse file
counted whole): an open for writing, a write, a truncation or a rename that would go past it
fails with ``ENOSPC`` and changes nothing; removing or truncating a file gives its bytes back.

Times (docs/volume-format.md, "Manifest"): ``st_mtime`` is the entry's recorded modification
time, and ``st_ctime`` and ``st_atime`` report it too (the format stores neither). A writable
session keeps POSIX's rules in memory (write, truncate and ``O_TRUNC`` set a file's mtime and
ctime; creating, removing or renaming an entry sets its directory's; chmod, chown, rename and
utimens set the ctime; ``utimens`` sets the mtime, ``UTIME_NOW`` and ``UTIME_OMIT`` included)
and the sealed manifest records the mtimes; ctimes are not stored. The volume root and the
implicit directories (not listed in the manifest) have no recorded time: they report the mount
time (changes below them update it in memory only), unless utimens (like chmod) lists one.

Run as ``python -m confide.volume._fusefs`` by :mod:`confide.volume.mount` (see there for
the protocol between the two processes).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mfusepy  # the parent sets FUSE_LIBRARY_PATH to libfuse 3 (see mount.fuse3_library)

from confide.errors import ConfideError, SignatureError, StorageError, UsageError
from confide.volume._chunked import write_chunks
from confide.volume._io import copy_unprotected, decrypt_object, equal_contents, open_object
from confide.volume.format import (
    FILE_ID_SIZE,
    MAX_MTIME_NS,
    ROOT_SIZE,
    ChunkCodec,
    ChunkKeys,
    Entry,
    EntryKind,
    Manifest,
    Region,
    check_path,
    check_symlink_target,
    chunked_count,
    region_for,
)
from confide.volume.keys import VolumeKey
from confide.volume.mount import HELD_SIGNALS, SERVER_STOP_SIGNAL, _from_parent
from confide.volume.reader import VolumeReader
from confide.volume.store import (
    lock_volume,
    object_path,
    open_objects_dir,
    remove_objects,
    seal_entries,
    write_object,
)

log = logging.getLogger("confide.volume.mount")

_TMP_PREFIX = ".tmp-"
READAHEAD = 4 << 20  # bytes of kernel read-ahead asked for (requests up to 1 MiB with libfuse 3)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4  # <linux/prctl.h>


@dataclass(eq=False)
class _Node:
    """One path of the mounted tree (the manifest entry, plus write state for files)."""

    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    region: Region
    entry: Entry | None = None  # files: the committed version (file id, size, root)
    target: str = ""  # symlinks
    explicit: bool = True  # False: an implicit directory (not listed in the manifest)
    buf_fd: int | None = None  # files being written: memfd with the plaintext
    dirty: bool = False  # buf_fd changed since the last commit
    dirty_chunks: set[int] = field(default_factory=set)  # chunks written since the last commit
    dirty_from: int | None = None  # every chunk from this index on changed (truncation)
    opens: int = 0
    held: int = 0  # bytes of the budget held for buf_fd (its size; 0 without one)
    orphan: bool = False  # unlinked while open
    mtime_ns: int = 0  # recorded in the manifest
    ctime_ns: int = 0  # reported only (the format stores no ctime)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _vpath(path: str) -> str:
    """FUSE path ('/a/b') -> volume path ('a/b'); the root is ''."""
    return path.strip("/")


def _err(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


# <linux/stat.h>: tv_nsec values of utimensat(2) meaning "the current time" and "unchanged";
# libfuse 3 passes them through to the file system's utimens (fuse_lib_setattr).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class VolumeFS(mfusepy.Operations):  # type: ignore[misc]
    """mfusepy operations over a sealed volume; read-only unless ``writable``. ``ephemeral``
    (with ``writable``): changes stay in memory (memfds, the tree) and are never committed to
    the volume directory; the session cannot be sealed. ``memory_limit``: the most bytes its
    memfds may hold together (their sizes), else ``ENOSPC``; None: no limit of its own."""

    use_ns = True

    def __init__(
        self,
        reader: VolumeReader,
        key: VolumeKey,
        *,
        writable: bool,
        ephemeral: bool = False,
        memory_limit: int | None = None,
    ) -> None:
        self.reader = reader
        self.manifest: Manifest = reader.manifest
        self.directory = reader.directory
        self._key = key
        self.writable = writable
        self.ephemeral = ephemeral
        self.memory_limit = memory_limit
        self.memory_used = 0  # sum of the nodes' held bytes: the memfds' sizes
        self.changed = False
        self.new_objects: set[bytes] = set()  # file and chunk ids written in this session
        self.bytes_written = 0  # bytes of chunk objects written in this session (tests, bench)
        self._chunk_keys = ChunkKeys(key.raw, self.manifest.volume_id)
        self.integrity_failures = 0
        self.on_integrity: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        # Reads of committed objects run outside the lock; objects of this session that a later
        # commit supersedes are deleted only when no such read is in flight (a read that took
        # the entry before the commit must still find its objects: else a false EIO and
        # integrity report), see _commit and read_into.
        self._reads = 0
        self._superseded: list[bytes] = []
        # a commit left the removal to the last read in flight; a removal that failed is tried
        # again by the next commit (or the seal collects them), not by every read
        self._drop_deferred = False
        self._fh: dict[int, _Node] = {}
        self._next_fh = 1
        self._mtime_ns = time.time_ns()  # of the root and implicit directories (not recorded)
        self.on_init: Any = None
        self.on_destroy: Any = None
        self.nodes: dict[str, _Node] = {}
        self.children: dict[str, set[str]] = {"": set()}
        root = _Node("", EntryKind.DIR, 0o755, os.getuid(), os.getgid(), Region.UNPROTECTED, explicit=False,
                     mtime_ns=self._mtime_ns, ctime_ns=self._mtime_ns)  # fmt: skip
        self.nodes[""] = root
        for e in self.manifest.entries:
            self._ensure_parents(e.path)
            self._insert(
                _Node(e.path, e.kind, e.mode, e.uid, e.gid, e.region, e if e.kind is EntryKind.FILE else None,
                      e.target, mtime_ns=e.mtime_ns, ctime_ns=e.mtime_ns)
            )  # fmt: skip

    # --- tree helpers (caller holds the lock) ------------------------------------------------
    def _insert(self, node: _Node) -> None:
        self.nodes[node.path] = node
        self.children.setdefault(_parent(node.path), set()).add(node.path.rsplit("/", 1)[-1])
        if node.kind is EntryKind.DIR:
            self.children.setdefault(node.path, set())

    def _ensure_parents(self, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            p = "/".join(parts[:depth])
            if p not in self.nodes:
                self._insert(_Node(p, EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED, explicit=False,
                                   mtime_ns=self._mtime_ns, ctime_ns=self._mtime_ns))  # fmt: skip

    def _remove(self, path: str) -> _Node:
        node = self.nodes.pop(path)
        parent = _parent(path)
        self.children[parent].discard(path.rsplit("/", 1)[-1])
        if node.kind is EntryKind.DIR:
            self.children.pop(path, None)
        pnode = self.nodes.get(parent)
        if pnode is not None and parent and not pnode.explicit:
            pnode.explicit = True  # an implicit directory must not vanish with its last child
        return node

    def _node(self, path: str) -> _Node:
        node = self.nodes.get(_vpath(path))
        if node is None:
            raise _err(errno.ENOENT)
        return node

    @staticmethod
    def _modified(node: _Node, now: int | None = None) -> None:
        """POSIX "mark for update" of st_mtime and st_ctime (contents or directory listing)."""
        node.mtime_ns = node.ctime_ns = time.time_ns() if now is None else now

    def _changed_dir_of(self, path: str, now: int) -> None:
        parent = self.nodes.get(_parent(path))
        if parent is not None:
            self._modified(parent, now)

    def _check_writable(self) -> None:
        if not self.writable:
            raise _err(errno.EROFS)

    def _new_child(self, path: str) -> tuple[str, _Node]:
        vp = _vpath(path)
        try:
            check_path(vp)
        except ConfideError:
            raise _err(errno.EINVAL) from None
        parent = self.nodes.get(_parent(vp))
        if parent is None:
            raise _err(errno.ENOENT)
        if parent.kind is not EntryKind.DIR:
            raise _err(errno.ENOTDIR)
        if vp in self.nodes:
            raise _err(errno.EEXIST)
        return vp, parent

    def _owner(self) -> tuple[int, int]:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return int(uid), int(gid)

    # --- file contents -----------------------------------------------------------------------
    def _materialize(self, node: _Node, *, keep_contents: bool = True) -> int:
        """Give ``node`` a memfd holding its plaintext (decrypted from its object once);
        ``keep_contents=False`` (truncation to 0) skips the decryption."""
        if node.buf_fd is not None:
            return node.buf_fd
        e = node.entry
        size = e.size if keep_contents and e is not None else 0
        self._hold(node, size)  # before anything is decrypted: ENOSPC, nothing changed
        try:
            fd = os.memfd_create("confide-volume-file", os.MFD_CLOEXEC)
        except BaseException:
            self._give_back(node)
            raise
        try:
            if keep_contents and e is not None and e.size and e.chunks is not None:
                self.reader.chunks.decrypt(e, fd)
            elif keep_contents and e is not None and e.size:
                try:
                    obj_fd = open_object(object_path(self.directory, e.file_id))
                except OSError as exc:  # missing, or not a regular file: as a read would say
                    raise SignatureError(f"object unreadable: {exc.strerror or exc}") from None
                try:
                    if e.region is Region.UNPROTECTED:
                        copy_unprotected(obj_fd, fd, e)
                    else:
                        codec = ChunkCodec(self._key.raw, self.manifest.volume_id, e.file_id, e.region)
                        decrypt_object(obj_fd, fd, codec, e, self.manifest.chunk_size)
                finally:
                    os.close(obj_fd)
        except SignatureError as exc:
            os.close(fd)
            self._give_back(node)
            self._integrity(node.path, exc)
        except BaseException:
            os.close(fd)
            self._give_back(node)
            raise
        node.buf_fd = fd
        if not keep_contents:
            self._truncated(node, 0)
        return fd

    def _hold(self, node: _Node, size: int) -> None:
        """Make ``node``'s share of the memory budget ``size`` bytes (its memfd's size to be):
        ``ENOSPC`` if that would take the session past its limit (nothing held then)."""
        grow = size - node.held
        if grow > 0 and self.memory_limit is not None and self.memory_used + grow > self.memory_limit:
            raise _err(errno.ENOSPC)
        self.memory_used += grow
        node.held = size

    def _give_back(self, node: _Node) -> None:
        """``node`` has no memfd (any more): its bytes return to the budget."""
        self.memory_used -= node.held
        node.held = 0

    def _settle(self, node: _Node) -> None:
        """Hold exactly the memfd's size (after a write that wrote less than reserved)."""
        if node.buf_fd is not None:
            self._hold(node, os.fstat(node.buf_fd).st_size)

    def _wrote(self, node: _Node, offset: int, length: int) -> None:
        """Mark the chunks of [offset, offset + length) as changed (copy-on-write at commit)."""
        if length > 0:
            cs = self.manifest.chunk_size
            node.dirty_chunks.update(range(offset // cs, (offset + length - 1) // cs + 1))

    def _truncated(self, node: _Node, length: int) -> None:
        """A truncation (or extension) to ``length``: the chunk holding the new end and all after
        it changed (extended bytes are zeros, even where the old version had data)."""
        first = length // self.manifest.chunk_size
        node.dirty_from = first if node.dirty_from is None else min(node.dirty_from, first)

    def _commit(self, node: _Node) -> None:
        """Write the node's memfd as a new version of the file.

        Protected regions: a chunked file (format version 3) in which only the chunks changed
        since the last commit are sealed, each as a new chunk object under a new random chunk
        id (so a key never seals two plaintexts); the others keep their objects. A file stored
        as one object (versions 1 and 2) or moved to another region is written in full, as
        chunks. Unprotected files: one new object under a new file id, unless the file's object
        already holds exactly the new bytes (:meth:`_same_object`: then it is kept).
        """
        if node.buf_fd is None or not node.dirty or node.orphan or self.ephemeral:
            return  # ephemeral: the memfd is the file's only copy (kept by _drop_buffer)
        try:
            objects_fd = open_objects_dir(self.directory)  # once per commit, never through a symlink
        except StorageError as exc:
            log.error("confide volume: %r not committed: %s", node.path, exc.message)
            raise _err(errno.EIO) from None  # the file stays dirty: a later commit may succeed
        try:
            self._commit_at(node, objects_fd)
        finally:
            os.close(objects_fd)

    def _commit_at(self, node: _Node, objects_fd: int) -> None:
        """:meth:`_commit` with the objects directory open (every object written relative to it)."""
        if node.buf_fd is None:
            return
        old = node.entry
        size = os.fstat(node.buf_fd).st_size
        if (
            node.region is Region.UNPROTECTED
            and old is not None
            and self._same_object(old, node.buf_fd, size)
        ):
            # the object already holds exactly these bytes (unprotected content is not
            # authenticated: keeping it or a new copy is the same to readers): nothing written
            node.entry = replace(old, path=node.path, mode=node.mode, uid=node.uid, gid=node.gid,
                                 mtime_ns=node.mtime_ns)  # fmt: skip
            new_ids: tuple[bytes, ...] = ()
        elif node.region is Region.UNPROTECTED:
            fid = secrets.token_bytes(FILE_ID_SIZE)
            src = os.dup(node.buf_fd)  # own offset
            try:
                os.lseek(src, 0, os.SEEK_SET)
                size, root = write_object(
                    self.directory, self._key, self.manifest, fid, node.region, src, objects_fd=objects_fd
                )
            finally:
                os.close(src)
            new_ids = (fid,)
            node.entry = Entry(
                node.path, EntryKind.FILE, node.mode, node.uid, node.gid, node.region, fid, size, root,
                mtime_ns=node.mtime_ns,
            )  # fmt: skip
        else:
            base = None
            if old is not None and old.chunks is not None and old.region is node.region:
                base = (old.chunks, old.size)
            n = chunked_count(size, self.manifest.chunk_size)
            dirty = set(node.dirty_chunks)
            if node.dirty_from is not None:
                dirty.update(range(node.dirty_from, n))
            w = write_chunks(
                self.directory, self._chunk_keys, self.manifest.chunk_size, node.region, node.buf_fd, size,
                base, dirty, objects_fd=objects_fd,
            )  # fmt: skip
            self.bytes_written += w.written
            new_ids = w.new
            node.entry = Entry(
                node.path, EntryKind.FILE, node.mode, node.uid, node.gid, node.region, b"", size,
                bytes(ROOT_SIZE), mtime_ns=node.mtime_ns, chunks=w.chunks,
            )  # fmt: skip
        self.new_objects.update(new_ids)
        if old is not None:  # objects of this session that the new version no longer uses
            keep = set(node.entry.chunks or (node.entry.file_id,))
            for oid in old.chunks if old.chunks is not None else (old.file_id,):
                if oid in self.new_objects and oid not in keep:
                    self._superseded.append(oid)  # superseded in-session
                    self.new_objects.discard(oid)
            self._drop_superseded()
        node.dirty = False
        node.dirty_chunks = set()
        node.dirty_from = None
        self.changed = True

    def _drop_superseded(self) -> None:
        """Delete the superseded objects of this session, unless a read is in flight (caller
        holds the lock; the last read to finish deletes them)."""
        if self._reads:
            self._drop_deferred = bool(self._superseded)
            return
        self._drop_deferred = False
        if not self._superseded:
            return
        for oid in self._superseded:
            self.reader.forget(oid)
        try:
            remove_objects(self.directory, self._superseded)
        except (OSError, ConfideError) as exc:  # a read's or commit's result stands; the seal collects them
            log.warning("confide volume: superseded objects not removed (%s); the seal removes them", exc)
            return
        self._superseded.clear()

    def _same_object(self, old: Entry, buf_fd: int, size: int) -> bool:
        """True when ``old`` is an unprotected one-object file whose object holds exactly the
        ``size`` bytes of ``buf_fd`` (docs/volume-mount.md; compared as found at this commit,
        so an object changed in storage meanwhile is rewritten from the session's copy)."""
        if old.region is not Region.UNPROTECTED or old.chunks is not None or old.size != size:
            return False
        try:
            obj = open_object(object_path(self.directory, old.file_id))
        except OSError:
            return False
        try:
            return equal_contents(buf_fd, obj, size)
        finally:
            os.close(obj)

    def _integrity(self, path: str, exc: SignatureError) -> None:
        self.integrity_failures += 1
        log.error(
            "confide volume: INTEGRITY FAILURE in %r: %s; returning EIO "
            "(unauthenticated data is never served)",
            path,
            exc.message,
        )
        if self.on_integrity is not None:
            self.on_integrity(path)
        raise _err(errno.EIO)

    # --- FUSE operations: metadata -----------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_readahead = READAHEAD  # the kernel keeps the minimum with the bdi's setting
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        if self.on_destroy is not None:
            self.on_destroy()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._lock:
            node = self._fh.get(fh) if fh else None
            if node is None:
                node = self._node(path)
            kind = {
                EntryKind.FILE: stat.S_IFREG,
                EntryKind.DIR: stat.S_IFDIR,
                EntryKind.SYMLINK: stat.S_IFLNK,
            }
            if node.kind is EntryKind.FILE:
                if node.buf_fd is not None:
                    st = os.fstat(node.buf_fd)
                    size, blocks = st.st_size, st.st_blocks
                else:
                    size = node.entry.size if node.entry else 0
                    blocks = (size + 511) // 512
                nlink = 1
            elif node.kind is EntryKind.DIR:
                size, blocks = 4096, 8
                nlink = 2 + sum(
                    1
                    for c in self.children.get(node.path, ())
                    if self._is_dir(f"{node.path}/{c}".lstrip("/"))
                )
            else:
                size, blocks, nlink = len(node.target.encode()), 0, 1
            return {
                "st_mode": kind[node.kind] | node.mode,
                "st_nlink": nlink,
                "st_size": size,
                "st_blocks": blocks,
                "st_uid": node.uid,
                "st_gid": node.gid,
                "st_atime": node.mtime_ns,  # no access times are stored
                "st_mtime": node.mtime_ns,
                "st_ctime": node.ctime_ns,
            }

    def _is_dir(self, path: str) -> bool:
        n = self.nodes.get(path)
        return n is not None and n.kind is EntryKind.DIR

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            node = self._node(path)
            if node.kind is not EntryKind.DIR:
                raise _err(errno.ENOTDIR)
            return [".", "..", *sorted(self.children.get(node.path, ()))]

    def readlink(self, path: str) -> str:
        with self._lock:
            node = self._node(path)
            if node.kind is not EntryKind.SYMLINK:
                raise _err(errno.EINVAL)
            return node.target

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.directory)
        out = {
            k: getattr(sv, k)
            for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        } | {"f_namemax": 255}
        if self.ephemeral and self.memory_limit is not None:
            # what a write can still take is the budget's rest, not the volume directory's disk
            with self._lock:
                free = max(0, self.memory_limit - self.memory_used)
            unit = out["f_frsize"] or 4096
            out |= {"f_blocks": self.memory_limit // unit, "f_bfree": free // unit, "f_bavail": free // unit}
        return out

    # --- FUSE operations: data ---------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        with self._lock:
            node = self._node(path)
            if node.kind is not EntryKind.FILE:
                raise _err(errno.EISDIR)
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                self._check_writable()
                trunc = bool(flags & os.O_TRUNC)
                if node.buf_fd is not None:
                    had = os.fstat(node.buf_fd).st_size
                else:
                    had = node.entry.size if node.entry else 0
                fd = self._materialize(node, keep_contents=not trunc)
                if trunc and had:
                    os.ftruncate(fd, 0)
                    self._hold(node, 0)
                    self._truncated(node, 0)
                    node.dirty = True
                if trunc:  # POSIX open(): O_TRUNC marks st_mtime and st_ctime, even of an empty file
                    self._modified(node)
                    self.changed = True
            node.opens += 1
            fh = self._next_fh
            self._next_fh += 1
            self._fh[fh] = node
            return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        out = bytearray(size)
        n = self.read_into(path, memoryview(out), offset, fh)
        return bytes(out[:n])

    def read_into(self, path: str | None, out: memoryview, offset: int, fh: int) -> int:
        """Fill ``out`` (libfuse's reply buffer) from ``offset``: decrypted straight into it."""
        with self._lock:
            node = self._fh.get(fh) or self._node(path or "/")
            buf_fd, entry = node.buf_fd, node.entry
            if buf_fd is not None:
                return os.preadv(buf_fd, [out], offset)
            if entry is None:
                return 0
            self._reads += 1  # entry's objects stay until this read is done (_drop_superseded)
        try:
            return self.reader.read_into(entry, offset, out)
        except SignatureError as exc:
            out[:] = bytes(len(out))  # nothing of the reply buffer goes back, but be tidy
            self._integrity(entry.path, exc)
            raise  # unreachable: _integrity raises
        finally:
            with self._lock:
                self._reads -= 1
                if self._drop_deferred:
                    self._drop_superseded()

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._check_writable()
        with self._lock:
            node = self._fh.get(fh) or self._node(path)
            fd = self._materialize(node)
            # the whole write or nothing of it: ENOSPC before a byte is written
            self._hold(node, max(node.held, offset + len(data)))
            try:
                n = os.pwrite(fd, data, offset)
            finally:
                self._settle(node)
            self._wrote(node, offset, n)
            node.dirty = True
            self._modified(node)
            self.changed = True
            return n

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check_writable()
        with self._lock:
            node = (self._fh.get(fh) if fh else None) or self._node(path)
            if node.kind is not EntryKind.FILE:
                raise _err(errno.EISDIR)
            fd = self._materialize(node, keep_contents=length > 0)
            try:
                self._hold(node, max(node.held, length))  # a shrink gives back after it is done
                try:
                    os.ftruncate(fd, length)
                finally:
                    self._settle(node)
            except BaseException:
                if not node.dirty:
                    self._drop_buffer(node)  # decrypted for this truncation only (no handle open)
                raise
            self._truncated(node, length)
            node.dirty = True
            self._modified(node)
            self.changed = True
            if node.opens == 0:
                self._commit(node)
                self._drop_buffer(node)
            return 0

    def _drop_buffer(self, node: _Node, *, gone: bool = False) -> None:
        """Close the memfd of a file no handle has open: after its commit, or (``gone``) once
        it left the tree. An ephemeral session keeps the memfd of a file in the tree that it
        changed (its changes are nowhere else); an unchanged one is read from its object again,
        and its bytes go back to the budget."""
        if node.buf_fd is not None and node.opens == 0 and (gone or not self.ephemeral or not node.dirty):
            os.close(node.buf_fd)
            node.buf_fd = None
            self._give_back(node)

    def flush(self, path: str, fh: int) -> int:
        with self._lock:
            node = self._fh.get(fh)
            if node is not None:
                self._commit(node)
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return self.flush(path, fh)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            node = self._fh.pop(fh, None)
            if node is None:
                return 0
            node.opens -= 1
            self._commit(node)
            self._drop_buffer(node, gone=node.orphan)
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._check_writable()
        with self._lock:
            vp, _parent_node = self._new_child(path)
            uid, gid = self._owner()
            region = region_for(vp, self.manifest.rules, self.manifest.default_region)
            node = _Node(vp, EntryKind.FILE, stat.S_IMODE(mode), uid, gid, region)
            node.buf_fd = os.memfd_create("confide-volume-file", os.MFD_CLOEXEC)
            node.dirty = True
            node.opens = 1
            now = time.time_ns()
            self._modified(node, now)
            self._changed_dir_of(vp, now)
            self._insert(node)
            self.changed = True
            fh = self._next_fh
            self._next_fh += 1
            self._fh[fh] = node
            return fh

    # --- FUSE operations: namespace ----------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._check_writable()
        with self._lock:
            vp, _ = self._new_child(path)
            uid, gid = self._owner()
            now = time.time_ns()
            self._insert(_Node(vp, EntryKind.DIR, stat.S_IMODE(mode), uid, gid, Region.UNPROTECTED,
                               mtime_ns=now, ctime_ns=now))  # fmt: skip
            self._changed_dir_of(vp, now)
            self.changed = True
            return 0

    def symlink(self, target: str, source: str) -> int:
        """Create the symlink ``target`` pointing to ``source`` (mfusepy's argument order)."""
        self._check_writable()
        with self._lock:
            vp, _ = self._new_child(target)
            try:
                # what the manifest can hold (a target that is not UTF-8 arrives with surrogate
                # escapes): refused now, not at the seal, which would then fail as a whole
                check_symlink_target(source)
            except ConfideError:
                raise _err(errno.EINVAL) from None
            uid, gid = self._owner()
            now = time.time_ns()
            self._insert(_Node(vp, EntryKind.SYMLINK, 0o777, uid, gid, Region.UNPROTECTED, target=source,
                               mtime_ns=now, ctime_ns=now))  # fmt: skip
            self._changed_dir_of(vp, now)
            self.changed = True
            return 0

    def unlink(self, path: str) -> int:
        self._check_writable()
        with self._lock:
            node = self._node(path)
            if node.kind is EntryKind.DIR:
                raise _err(errno.EISDIR)
            self._remove(node.path)
            if node.opens:
                node.orphan = True  # its handles keep the memfd; nothing is committed any more
            self._drop_buffer(node, gone=True)
            node.ctime_ns = time.time_ns()  # its link count changed
            self._changed_dir_of(node.path, node.ctime_ns)
            self.changed = True
            return 0

    def rmdir(self, path: str) -> int:
        self._check_writable()
        with self._lock:
            node = self._node(path)
            if not node.path:
                raise _err(errno.EBUSY)
            if node.kind is not EntryKind.DIR:
                raise _err(errno.ENOTDIR)
            if self.children.get(node.path):
                raise _err(errno.ENOTEMPTY)
            self._remove(node.path)
            self._changed_dir_of(node.path, time.time_ns())
            self.changed = True
            return 0

    def rename(self, old: str, new: str) -> int:
        self._check_writable()
        with self._lock:
            src = self._node(old)
            if not src.path:
                raise _err(errno.EBUSY)
            dst_path = _vpath(new)
            if dst_path == src.path:
                return 0
            if dst_path.startswith(src.path + "/"):
                raise _err(errno.EINVAL)
            existing = self.nodes.get(dst_path)
            if existing is None:
                self._new_child(new)  # checks the new path (EINVAL, ENOENT, ENOTDIR)
            old_path = src.path  # src.path changes below
            moved = [p for p in self.nodes if p == old_path or p.startswith(old_path + "/")]
            for p in moved:
                if p != old_path:
                    # every path below a renamed directory must still be one the manifest can
                    # hold (at most 4096 bytes), else the seal at unmount fails as a whole
                    try:
                        check_path(dst_path + p[len(old_path) :])
                    except ConfideError:
                        raise _err(errno.ENAMETOOLONG) from None
            if existing is not None:
                if existing.kind is EntryKind.DIR and src.kind is not EntryKind.DIR:
                    raise _err(errno.EISDIR)
                if existing.kind is not EntryKind.DIR and src.kind is EntryKind.DIR:
                    raise _err(errno.ENOTDIR)
                if existing.kind is EntryKind.DIR and self.children.get(dst_path):
                    raise _err(errno.ENOTEMPTY)
                self._remove(dst_path)
                if existing.opens:
                    existing.orphan = True
                self._drop_buffer(existing, gone=True)
            now = time.time_ns()
            self._changed_dir_of(src.path, now)
            moved.sort(key=len)
            nodes = [self._remove(p) for p in reversed(moved)]
            for node in reversed(nodes):
                node.path = dst_path + node.path[len(old_path) :]
                self._insert(node)
                self._reregion(node)
            src.ctime_ns = now  # as Linux file systems do for the renamed inode
            self._changed_dir_of(src.path, now)
            self.changed = True
            return 0

    def _reregion(self, node: _Node) -> None:
        """A file moved under another region rule is re-encrypted for it (new file id)."""
        if node.kind is not EntryKind.FILE:
            return
        if node.entry is not None:
            node.entry = replace(node.entry, path=node.path)
        region = region_for(node.path, self.manifest.rules, self.manifest.default_region)
        if region is node.region:
            return
        if self.ephemeral:
            # nothing is ever written under the new region: the committed version stays
            # readable from its object (its entry keeps its region), and decrypting it here
            # would hold memory (and could fail with ENOSPC) halfway through the rename
            node.region = region
            return
        self._materialize(node)
        node.region = region
        node.dirty = True
        if node.opens == 0:
            self._commit(node)
            self._drop_buffer(node)

    def chmod(self, path: str, mode: int) -> int:
        self._check_writable()
        with self._lock:
            node = self._node(path)
            if node.kind is EntryKind.SYMLINK:
                return 0
            node.mode = stat.S_IMODE(mode)
            node.explicit = True
            node.ctime_ns = time.time_ns()
            self.changed = True
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._check_writable()
        with self._lock:
            node = self._node(path)
            if uid != -1:
                node.uid = uid
            if gid != -1:
                node.gid = gid
            node.explicit = True
            node.ctime_ns = time.time_ns()
            self.changed = True
            return 0

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        """Set the modification time (ns; recorded at the next seal). ``times`` is (atime,
        mtime), None for "now" (utimensat(2) with NULL); an element None leaves that time
        (UTIME_OMIT, see :meth:`_FUSE.utimens_fuse_3`). Access times are not stored."""
        self._check_writable()
        with self._lock:
            node = self._node(path)
            now = time.time_ns()
            mtime = now if times is None else times[1]
            if mtime is not None:
                if not 0 <= mtime <= MAX_MTIME_NS:
                    raise _err(errno.EINVAL)  # before 1970 or after 2262: outside the format
                node.mtime_ns = mtime
                node.explicit = True  # as for chmod: an implicit directory gets an entry
            node.ctime_ns = now
            self.changed = True
            return 0

    def link(self, target: str, source: str) -> int:
        raise _err(errno.EPERM)  # hard links are not part of the format

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise _err(errno.EPERM)  # only files, directories and symlinks

    # --- sealing -----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        with self._lock:
            out: list[Entry] = []
            for node in self.nodes.values():
                if not node.path or not node.explicit:
                    continue
                if node.kind is EntryKind.FILE:
                    self._commit(node)
                    e = node.entry
                    if e is None:
                        raise UsageError(f"{node.path!r} has no contents")  # cannot happen: created dirty
                    out.append(replace(e, path=node.path, mode=node.mode, uid=node.uid, gid=node.gid,
                                       mtime_ns=node.mtime_ns))  # fmt: skip
                else:
                    out.append(Entry(node.path, node.kind, node.mode, node.uid, node.gid, node.region,
                                     target=node.target, mtime_ns=node.mtime_ns))  # fmt: skip
            return out

    def discard(self) -> None:
        if self.ephemeral:
            return  # nothing of the session is in the volume directory
        remove_objects(self.directory, (*self.new_objects, *self._superseded))
        self.new_objects.clear()
        self._superseded.clear()


def seal(fs: VolumeFS) -> str:
    """Seal the session's state as a new generation (no-op when nothing changed); return the tag."""
    if not fs.changed:
        return fs.reader.tag
    if fs.ephemeral:
        raise UsageError("an ephemeral session cannot be sealed")  # main() never asks
    return seal_entries(fs.directory, fs._key, fs.manifest, fs.entries(), base_tag=fs.reader.tag)


# --- child process ---------------------------------------------------------------------------


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with a zero-copy read: decrypt into libfuse's reply buffer directly
    (mfusepy's own read returns bytes that are then copied: two more copies per request)."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        fh = fip.contents.fh
        address = ctypes.cast(buf, ctypes.c_void_p).value or 0
        out = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        ops: VolumeFS = self.operations
        name = None if path is None else path.decode(self.encoding, self.errors)
        return ops.read_into(name, out, offset, fh)

    def utimens_fuse_2(self, path: bytes | None, buf: Any) -> int:
        """mfusepy folds the timespecs into plain nanoseconds, losing utimensat(2)'s UTIME_NOW
        and UTIME_OMIT (libfuse passes them in tv_nsec, fuse_lib_setattr): decode them here."""

        def one(ts: Any) -> int | None:
            if ts.tv_nsec == UTIME_OMIT:
                return None
            if ts.tv_nsec == UTIME_NOW:
                return time.time_ns()
            return int(ts.tv_sec) * 1_000_000_000 + int(ts.tv_nsec)

        if path is None:
            raise _err(errno.EINVAL)  # only with nullpath_ok, which is not asked for
        times = (one(buf.contents.actime), one(buf.contents.modtime)) if buf else None
        ops: VolumeFS = self.operations
        return ops.utimens(path.decode(self.encoding, self.errors), times)

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        return self.utimens_fuse_2(path, buf)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for :data:`SERVER_STOP_SIGNAL` when the parent dies and ignore
    :data:`HELD_SIGNALS` from now on. The stop signal is blocked in this thread, before any
    other thread exists (they inherit the mask; libfuse's workers too): only
    :class:`_StopSignal`'s thread takes it, with its sender (a mask the parent passed on is
    replaced, not kept)."""
    for sig in HELD_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [SERVER_STOP_SIGNAL])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(SERVER_STOP_SIGNAL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def _not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): no core dump of this server, which holds the volume key and
    decrypted contents (a dump would put them on disk), and no ptrace or /proc/PID/mem access
    by the same user's other processes. The mounting process's setting (``confide run`` sets
    it) does not survive the execve that started this one."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("confide volume: cannot disable core dumps of the FUSE server: %s",
                    os.strerror(ctypes.get_errno()))  # fmt: skip


_SIG_DFL, _SIG_IGN = 0, 1
# What ends libfuse's wait once fuse_exit() is called: sent by this process to its own main
# thread only; from anyone else it interrupts a system call, which libfuse and Python retry.
_WAKE_SIGNAL = int(SERVER_STOP_SIGNAL) + 1


def _hold_signals() -> None:
    """Ignore :data:`HELD_SIGNALS` (``SIG_IGN`` from any thread, through libc), so that the
    outside signals that end libfuse's loop are harmless and the loop's end stays the mounting
    process's (docs/volume-mount.md, "Signals"). Called from the file system's ``init``: libfuse
    installs its exit handler for those of SIGHUP, SIGINT and SIGTERM still at their default
    (:func:`_die_with_parent` set them to ``SIG_IGN``, but mfusepy puts SIGINT back to its
    default for the loop)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    for sig in HELD_SIGNALS:
        libc.signal(int(sig), _SIG_IGN)


def _libfuse() -> Any:
    return mfusepy._libfuse  # the library mfusepy loaded (its fuse_exit needs a request's context)


class _StopSignal:
    """:data:`SERVER_STOP_SIGNAL`, acted on only when it comes from the mounting process
    (``kill(2)``: ``si_code`` ``SI_USER`` and ``si_pid`` the parent, as ``abort()`` sends it) or
    when the parent is gone (the kernel's parent-death signal; it also comes as ``SI_USER`` from
    the dying parent). Another process of the same user that sends it (``kill -s RTMIN``, or
    ``sigqueue`` with a forged ``si_pid``: ``SI_QUEUE``) is logged and ignored; before
    2026-12-07 it ended libfuse's loop and the mount was lost.

    The signal is blocked in every thread (:func:`_die_with_parent`); a thread of its own takes
    it with ``sigwaitinfo``, which tells the sender. What a stop does depends on the moment:
    before the mount, the process ends by the signal's default action (nothing is mounted); from
    the mount to the first ``init`` it is noted and ``init`` ends the loop; while the loop runs,
    ``fuse_exit()`` and :data:`_WAKE_SIGNAL` to the main thread (repeated until the loop has
    ended: libfuse checks its exit flag when a wait is interrupted) end it, and libfuse removes
    the mount; after the loop, it is noted (:func:`_await_decision`)."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.requested = threading.Event()
        self._lock = threading.Lock()
        self._phase = "before"  # before | mounting | running | ended
        self._fuse: int | None = None
        self._main = threading.main_thread().ident

    def start(self) -> None:
        """Main thread, before the mount: the waking signal's handler (Python's: a C handler that
        interrupts the wait it lands in, no SA_RESTART) and the thread that takes the stop."""
        signal.signal(_WAKE_SIGNAL, lambda _sig, _frame: None)
        threading.Thread(target=self._watch, name="stop-signal", daemon=True).start()

    def _watch(self) -> None:
        ignored = 0
        while True:
            info = signal.sigwaitinfo([SERVER_STOP_SIGNAL])
            if _from_parent(info, self.parent):
                self.request()
                return
            ignored += 1
            if ignored > 5:  # a flood is not logged line by line
                continue
            log.warning("confide volume: ignored %s from pid %d (code %d): only the mounting process "
                        "stops this server", signal.Signals(info.si_signo).name, info.si_pid,
                        info.si_code)  # fmt: skip

    def request(self) -> None:
        with self._lock:
            self.requested.set()
            if self._phase == "before":  # nothing mounted: end now, as the signal's default action
                _default_stop_signal()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [SERVER_STOP_SIGNAL])
                signal.raise_signal(SERVER_STOP_SIGNAL)  # to this thread: the process ends
            if self._phase == "running":  # mounting: init ends the loop; ended: the decision's wait
                self._end_loop()

    def mounting(self) -> None:
        with self._lock:
            self._phase = "mounting"

    def running(self) -> bool:
        """From ``init`` (a request's thread): the loop runs; True (and the loop asked to end)
        if a stop came before, or the parent is gone."""
        fuse = _libfuse().fuse_get_context().contents.fuse
        with self._lock:
            self._fuse = fuse
            self._phase = "running"
            stop = self.requested.is_set() or os.getppid() != self.parent
            if stop:
                self._end_loop()
        return stop

    def ended(self) -> None:
        """The loop is over (from the file system's ``destroy``, while libfuse's structure still
        exists, and after the loop): no ``fuse_exit()`` from now on."""
        with self._lock:
            self._phase = "ended"
            self._fuse = None

    def _end_loop(self) -> None:  # with the lock held, the loop running
        _libfuse().fuse_exit(ctypes.c_void_p(self._fuse))
        threading.Thread(target=self._wake, name="stop-wake", daemon=True).start()

    def _wake(self) -> None:
        assert self._main is not None
        while True:
            with self._lock:
                if self._phase == "ended":
                    return
                signal.pthread_kill(self._main, _WAKE_SIGNAL)
            time.sleep(0.05)


def _default_stop_signal() -> None:
    """:data:`SERVER_STOP_SIGNAL` back to its default action, from any thread (through libc)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    libc.signal(int(SERVER_STOP_SIGNAL), _SIG_DFL)


def _await_decision(
    parent: int, decided: threading.Event, stop: _StopSignal, say: Callable[[str], None]
) -> bool:
    """The loop ended before the parent said what to do with the session: the mount was
    removed from outside (``umount`` of the mountpoint), or the parent's
    :data:`SERVER_STOP_SIGNAL` came without a command (the signals a service manager sends are
    held, see :func:`_hold_signals`, and another process's stop signal is ignored, see
    :class:`_StopSignal`). The mount is gone, the session is intact: report ``stopped`` and
    wait for the parent's ``commit`` (or ``discard``, or the end of stdin), as after an unmount
    it asked for, instead of discarding the changes that its ``close()`` is about to seal (a
    read-only session: only the report, so that its parent learns the mount is gone).
    ``discard`` (``abort()`` says it before its :data:`SERVER_STOP_SIGNAL`), the parent's stop
    signal or its death discards them (the death: as ``on_parent_exit`` says). Returns whether
    the parent's stop signal ended the wait (not its death: that signal comes from the kernel
    with the parent gone)."""
    log.warning("confide volume: the FUSE loop ended, not by the mounting process; waiting for it")
    say("stopped")
    while not decided.wait(0.05):
        if stop.requested.is_set() or os.getppid() != parent:
            break
    return stop.requested.is_set() and os.getppid() == parent


def _fuse_options(writable: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "foreground": True,
        "fsname": "confide-volume",
        "subtype": "confide",
        "default_permissions": True,  # the kernel enforces the recorded modes and owners
        # Other users (the application may drop privileges) need allow_other, which non-root
        # users get only with user_allow_other in /etc/fuse.conf.
        "allow_other": os.geteuid() == 0,
    }
    if writable:
        opts.update(attr_timeout=1, entry_timeout=1)
    else:
        # Immutable while mounted: the kernel may keep pages and attributes across opens.
        opts.update(ro=True, kernel_cache=True, attr_timeout=3600, entry_timeout=3600, negative_timeout=3600)
        # One thread: the GIL serialises Python anyway, and without the hand-offs between
        # libfuse's workers sequential reads run ~1.3x faster (measured: docs/performance.md).
        opts["nothreads"] = True
    return opts


def main(argv: list[str] | None = None) -> int:
    """Child entry point. argv: VOLUME_DIR MOUNTPOINT TAG PARENT_PID STATUS_FD rw|ro|eph
    [commit|discard [MEMORY_LIMIT [LOCK_FD]]] (``eph``: writable, changes kept in memory and never
    sealed; the lock shared; MEMORY_LIMIT: the bytes its memory files may hold, ``-`` for no
    limit; LOCK_FD: the volume's lock, taken by the parent and inherited, held until this process
    ends; ``-``, or absent: none (a shared lock without a lock file, or a caller that does not
    lock the volume: this server then takes it itself, without waiting).

    stdin: first line the volume key (hex); later lines are commands from the parent
    ('commit' = seal at unmount, 'discard'). Status lines on STATUS_FD: 'ready', then at the
    end 'sealed TAG', 'unchanged TAG' (read-only and ephemeral sessions) or 'discarded', or
    'error EXIT_CODE MESSAGE'; at any time 'integrity PATH' (PATH as a JSON string) when a file
    fails authentication.
    """
    args = sys.argv[1:] if argv is None else argv
    volume_dir, mountpoint, tag, parent, status_fd = (
        Path(args[0]),
        args[1],
        args[2],
        int(args[3]),
        int(args[4]),
    )
    ephemeral = args[5] == "eph"
    writable = args[5] == "rw" or ephemeral
    on_parent_exit = args[6] if len(args) > 6 else "discard"
    memory_limit = int(args[7]) if len(args) > 7 and args[7] != "-" else None
    inherited = int(args[8]) if len(args) > 8 and args[8] != "-" else None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    _die_with_parent(parent)
    stop = _StopSignal(parent)
    stop.start()
    _not_dumpable()  # before the key is read
    status = os.fdopen(status_fd, "w", buffering=1)
    decision = {"commit": False, "said": False}  # said: a command came (not only the end of stdin)

    def say(line: str) -> None:
        with contextlib.suppress(OSError):
            status.write(line + "\n")

    try:
        key = VolumeKey.from_hex(sys.stdin.readline())
        if inherited is not None:
            os.set_inheritable(inherited, False)  # nothing this server starts gets it
            lock: int | None = inherited
        elif len(args) > 8:  # the parent has it: a shared lock without a lock file
            lock = None
        else:
            lock = lock_volume(volume_dir, shared=not writable or ephemeral)
        reader = VolumeReader(volume_dir, key, tag)  # re-checked under the lock
    except ConfideError as exc:
        say(f"error {exc.exit_code} {exc.message}")
        return exc.exit_code
    fs = VolumeFS(reader, key, writable=writable, ephemeral=ephemeral, memory_limit=memory_limit)
    mounted = threading.Event()

    def ready() -> None:
        # before 'ready': once mounted, only the mounting process ends the loop
        _hold_signals()
        if stop.running():  # stopped, or the parent died, between the mount and init
            log.warning("confide volume: stopped before the FUSE mount was ready; unmounting")
        mounted.set()
        say("ready")

    fs.on_init = ready
    fs.on_destroy = stop.ended
    fs.on_integrity = lambda path: say("integrity " + json.dumps(path))

    decided = threading.Event()  # a command came, or stdin ended (the parent closed it or died)

    def commands() -> None:
        for line in sys.stdin:
            decision["commit"] = line.strip() == "commit"
            decision["said"] = True
            say("ack")
            decided.set()
        decided.set()

    threading.Thread(target=commands, daemon=True).start()
    try:
        stop.mounting()
        try:
            _FUSE(fs, mountpoint, **_fuse_options(writable))
        finally:
            stop.ended()
    except Exception as exc:
        if not mounted.is_set():  # the mount itself failed (no /dev/fuse, busy mountpoint, ...)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            say(f"error 50 FUSE mount of {mountpoint!r} failed: {exc}")
            return 50
        log.info("confide volume: FUSE loop ended (%s); unmounted", exc)
    # libfuse resets SIGPIPE to SIG_DFL on the way out: a status write to the pipe of a dead
    # parent would kill us before the session is discarded.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    parent_alive = os.getppid() == parent
    signalled = False  # the parent's SERVER_STOP_SIGNAL without a command: discard, never seal
    # read-only and ephemeral sessions too: an unmount without a decision was not the parent's
    # (reported 'stopped': the application's writes now go to the bare mountpoint), though
    # 'commit' seals nothing there
    if parent_alive and not decided.is_set():
        signalled = _await_decision(parent, decided, stop, say)
        # its death ends the wait as its end of stdin without a command (its descriptors close
        # before it is reparented: getppid() may still name it) or as its death signal
        parent_alive = os.getppid() == parent and (decision["said"] or not decided.is_set())
    try:
        if not writable:
            say(f"unchanged {reader.tag}")
        elif ephemeral:  # whatever was decided: nothing of it is in the volume directory
            if fs.changed:
                log.info("confide volume: ephemeral session: its changes were in memory only, dropped")
            say(f"unchanged {reader.tag}")
        elif not signalled and (decision["commit"] or (not parent_alive and on_parent_exit == "commit")):
            say(f"sealed {seal(fs)}")
        else:
            why = (
                "a signal while it waited for the mounting process"
                if signalled
                else "the mounting process exited"
                if not parent_alive
                else "the caller asked to"
            )
            log.warning("confide volume: discarding the changes of this session (%s)", why)
            fs.discard()
            say("discarded")
    except ConfideError as exc:
        say(f"error {exc.exit_code} {exc.message}")
        return exc.exit_code
    finally:
        reader.close()
        if lock is not None:
            os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
