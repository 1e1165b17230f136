"""Apply image layers in order (OCI whiteouts, opaque directories, hard links) and rewrite them.

Pass 1 (:func:`index_layers`) streams every layer once, checks blob digests, diff_ids and
every tar member, and builds the final file-system tree (metadata only, no contents):

* ``dir/.wh.NAME`` deletes ``dir/NAME`` (and everything below) from the *lower* layers;
  ``dir/.wh..wh..opq`` hides every lower child of ``dir`` (image-spec layer.md, "Whiteouts");
  whiteouts apply before the layer's own entries, whatever their order in the tar.
* a hard link takes the content of its target as the target is at that point.
* member names must be relative without ``..``; a member whose parent is a symlink or a
  non-directory is refused (extraction would follow the symlink, possibly out of the root).

Pass 2 (:func:`rewrite_layer`) streams a layer again and writes a copy without any member at
or below a protected path (including whiteouts of protected paths), hands the bytes of the
members that provide the protected paths' *final* contents to a sink, and checks the digests
again. Members are copied header by header with their data streamed.
"""

from __future__ import annotations

import math
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO

from confide.errors import ParseError, UsageError
from confide.image.blobs import (
    CompressingWriter,
    DecompressingReader,
    HashingReader,
)
from confide.image.oci import MAX_BLOB, Layer
from confide.image.tarcheck import BoundedTarInfo, check_names, check_tail

__all__ = [
    "MAX_LAYER_BYTES",
    "FsIndex",
    "Node",
    "index_layers",
    "is_under",
    "normalize",
    "read_members",
    "rewrite_layer",
    "tar_mtime_ns",
]

MAX_LAYER_BYTES = 1 << 40  # uncompressed bytes per layer
MAX_MEMBERS = 2_000_000  # tar members per layer
# tar members of all layers together: pass 1 keeps a node per path (~0.5 KiB each) and takes
# ~0.1 ms per member, so 1000 layers of MAX_MEMBERS each would need ~1 TB of memory first
MAX_TOTAL_MEMBERS = 5_000_000
MAX_PATH = 4096
MAX_NAME = 255
WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"

FILE, DIR, SYMLINK, CHAR, BLOCK, FIFO = "file", "dir", "symlink", "char", "block", "fifo"
_KINDS = {
    tarfile.REGTYPE: FILE,
    tarfile.AREGTYPE: FILE,
    tarfile.DIRTYPE: DIR,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.CHRTYPE: CHAR,
    tarfile.BLKTYPE: BLOCK,
    tarfile.FIFOTYPE: FIFO,
}


@dataclass
class Node:
    """The final state of one path (no file contents: ``source`` says which member holds them)."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    linkname: str = ""
    source: tuple[int, int] | None = None  # (layer, member ordinal) whose data is the content
    children: dict[str, Node] | None = None
    mtime_ns: int = 0  # from the tar header (tar_mtime_ns: any integer; the user clamps it)
    xattrs: tuple[str, ...] = ()  # names of its extended attributes (pax SCHILY.xattr.* records)


def _new_dir(mode: int = 0o755) -> Node:
    return Node(DIR, mode, 0, 0, children={})


def normalize(name: str, what: str = "member") -> str:
    """A tar member name as a clean relative path ('' for the root); ParseError if unsafe."""
    if "\x00" in name:
        raise ParseError(f"got a name with NUL: {name!r}", structure="layer tar", field=what)
    if name.startswith("/"):
        raise ParseError(
            f"got absolute name {name!r}, expected a relative one", structure="layer tar", field=what
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ParseError(
            f"got {name!r} with '..', expected no parent references", structure="layer tar", field=what
        )
    path = "/".join(parts)
    for part in parts:  # NAME_MAX (POSIX.1-2017 <limits.h>; 255 on Linux): no engine creates it
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise ParseError(
                f"got a path component of {len(part)} characters in {name[:100]!r}, "
                f"expected at most {MAX_NAME} bytes",
                structure="layer tar",
                field=what,
            )
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise ParseError(
            f"got a {len(path)}-character name, expected at most {MAX_PATH}", structure="layer tar"
        )
    return path


_PAX_TIME = re.compile(r"([+-]?)([0-9]{1,30})(?:\.([0-9]{0,100}))?")
_NS = 1_000_000_000


def tar_mtime_ns(info: tarfile.TarInfo) -> int:
    """A member's modification time in nanoseconds since the epoch (any integer: the caller
    limits it to the range it can store).

    The pax ``mtime`` record (POSIX.1-2017 pax, "pax Extended Header": decimal seconds with an
    optional fraction) is read exactly from its text, since tarfile turns it into a float
    (microsecond rounding); otherwise the ustar/GNU header's whole seconds (tarfile's
    ``mtime``). A malformed or non-finite value counts as 0 (the epoch), as tarfile does for
    unparsable pax numbers.
    """
    raw = info.pax_headers.get("mtime")
    if raw is not None:
        m = _PAX_TIME.fullmatch(raw)
        if m is not None:
            sign, whole, frac = m.group(1), int(m.group(2)), (m.group(3) or "")[:9].ljust(9, "0")
            ns = whole * _NS + int(frac)
            return -ns if sign == "-" else ns
    value = info.mtime
    if isinstance(value, float):
        # Exact, as a fraction: a finite float such as 1e300 (tarfile's float() of a pax "1e300")
        # overflows a float multiplication to infinity.
        return math.floor(Fraction(value) * _NS) if math.isfinite(value) else 0
    return int(value) * _NS


_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


def xattr_names(info: tarfile.TarInfo) -> tuple[str, ...]:
    """The extended attributes a member carries: pax records ``SCHILY.xattr.NAME`` (star, GNU
    tar, Go's archive/tar as Docker and containerd write and apply them) and libarchive's
    ``LIBARCHIVE.xattr.NAME`` (name URL-encoded; shown as found)."""
    return tuple(sorted(k.split(".xattr.", 1)[1] for k in info.pax_headers if k.startswith(_XATTR_PREFIXES)))


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@dataclass(slots=True)
class _Member:
    """What pass 1 keeps of a tar header (a TarInfo is several times larger)."""

    ordinal: int
    path: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    mtime_ns: int
    xattrs: tuple[str, ...]

    @classmethod
    def of(cls, ordinal: int, path: str, info: tarfile.TarInfo) -> _Member:
        link = info.linkname
        if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            link = f"{info.devmajor}:{info.devminor}"
        return cls(
            ordinal, path, info.type, info.mode, info.uid, info.gid, info.size, link, tar_mtime_ns(info),
            xattr_names(info),
        )  # fmt: skip


@dataclass
class FsIndex:
    """The final tree plus, per layer, the facts pass 2 needs."""

    root: Node = field(default_factory=_new_dir)
    compressions: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    touches_protected: list[bool] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # uncompressed bytes per layer
    digests: list[str] = field(default_factory=list)  # each blob's digest as pass 1 read it

    def lookup(self, path: str) -> Node | None:
        node = self.root
        if not path:
            return node
        for part in path.split("/"):
            if node.kind != DIR or node.children is None:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    def walk(self, path: str) -> Iterator[tuple[str, Node]]:
        """(path, node) for ``path`` and everything below it, sorted by path."""
        top = self.lookup(path)
        if top is None:
            return
        stack = [(path, top)]
        while stack:
            p, n = stack.pop()
            yield p, n
            if n.children:
                for name in sorted(n.children, reverse=True):
                    stack.append((f"{p}/{name}" if p else name, n.children[name]))

    # -- mutation (pass 1)

    def _parent(self, path: str, create: bool) -> tuple[Node, str] | None:
        parts = path.split("/")
        node = self.root
        for i, part in enumerate(parts[:-1]):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                if not create:
                    return None
                child = _new_dir()
                node.children[part] = child
            elif child.kind == SYMLINK:
                if not create:
                    return None
                link = "/".join(parts[: i + 1])
                raise ParseError(
                    f"member {path!r} goes through the symlink {link!r} (refused: could escape the root)",
                    structure="layer tar",
                )
            elif child.kind != DIR:
                if not create:
                    return None
                parent = "/".join(parts[: i + 1])
                raise ParseError(
                    f"member {path!r}: parent {parent!r} is a {child.kind}, expected a directory",
                    structure="layer tar",
                )
            node = child
        return node, parts[-1]

    def remove(self, path: str) -> None:
        found = self._parent(path, create=False)
        if found is not None and found[0].children is not None:
            found[0].children.pop(found[1], None)

    def clear(self, path: str) -> None:
        node = self.lookup(path)
        if node is not None and node.kind == DIR:
            node.children = {}

    def put(self, path: str, node: Node) -> None:
        if not path:  # the root entry: only its metadata
            if node.kind == DIR:
                self.root.mode, self.root.uid, self.root.gid = node.mode, node.uid, node.gid
            return
        parent, name = self._parent(path, create=True) or (self.root, path)
        assert parent.children is not None
        old = parent.children.get(name)
        if old is not None and old.kind == DIR and node.kind == DIR:
            node.children = old.children  # a directory entry over a directory merges
        parent.children[name] = node


def _protected(path: str, roots: Sequence[str]) -> bool:
    return any(is_under(path, r) for r in roots)


def whiteout_target(path: str) -> str | None:
    """For a whiteout member, the path it deletes ('' + opaque marker handled by the caller)."""
    head, _, base = path.rpartition("/")
    if not base.startswith(WH_PREFIX) or base.startswith(WH_PREFIX + WH_PREFIX):
        return None
    name = base[len(WH_PREFIX) :]
    return f"{head}/{name}" if head else name


def dropped(path: str, roots: Sequence[str]) -> bool:
    """Whether a member at ``path`` is removed from the rewritten layers."""
    if _protected(path, roots):
        return True
    target = whiteout_target(path)
    return target is not None and _protected(target, roots)


@contextmanager
def _layer_stream(layer: Layer) -> Iterator[tuple[DecompressingReader, tarfile.TarFile]]:
    what = f"layer {layer.index}"
    with layer.open() as raw:
        hr = HashingReader(raw, what, digest=layer.digest, size=layer.size, limit=MAX_BLOB)
        dr = DecompressingReader(hr, what, diff_id=layer.diff_id, limit=MAX_LAYER_BYTES)
        if layer.compression is not None and dr.compression != layer.compression:
            raise ParseError(
                f"got {dr.compression} data, expected {layer.compression} (media type {layer.media_type})",
                structure=what,
            )
        try:
            tf = tarfile.open(fileobj=dr, mode="r|", tarinfo=BoundedTarInfo)  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, EOFError) as exc:
            raise ParseError(f"not a tar stream: {exc}", structure=what) from None
        try:
            yield dr, tf
        except (tarfile.TarError, EOFError) as exc:
            raise ParseError(f"corrupt or truncated tar: {exc}", structure=what) from None
        finally:
            tf.close()


def _members(layer: Layer, tf: tarfile.TarFile) -> Iterator[tuple[int, str, tarfile.TarInfo]]:
    expanded = 0  # bytes of the members' contents the headers declare
    for ordinal, info in enumerate(tf):
        kept: list[tarfile.TarInfo] = tf.members  # type: ignore[attr-defined]
        if len(kept) >= 1024:
            kept.clear()  # stream mode keeps every TarInfo otherwise (memory grows per member)
        if ordinal >= MAX_MEMBERS:
            raise ParseError(f"more than {MAX_MEMBERS} members", structure=f"layer {layer.index}")
        if info.size < 0:  # a pax "size" record is any integer (fuzz2 mutation campaign)
            raise ParseError(
                f"member {info.name!r} has size {info.size}, expected at least 0",
                structure=f"layer {layer.index}",
            )
        if info.type not in _KINDS and info.type != tarfile.LNKTYPE:
            raise ParseError(
                f"member {info.name!r} has tar type {info.type!r}, expected a file, directory, link, device",
                structure=f"layer {layer.index}",
            )
        if info.isreg():
            # The sizes the headers declare count against the layer's limit before tarfile skips
            # or reads the data (a pax size of 2**63 was skipped block by block past the end of
            # the stream). GNU sparse files, which declared expanded sizes of holes, are refused
            # (confide.image.tarcheck).
            expanded += info.size
            if expanded > MAX_LAYER_BYTES:
                raise ParseError(
                    f"member {info.name!r}: the members' contents exceed the limit of {MAX_LAYER_BYTES} "
                    "bytes",
                    structure=f"layer {layer.index}",
                )
        check_names(info, tf, f"layer {layer.index}")
        yield ordinal, normalize(info.name), info


def index_layers(
    layers: Sequence[Layer], roots: Sequence[str], progress: Callable[[int], None] | None = None
) -> FsIndex:
    """Pass 1: verify every layer and compute the final tree (see the module docstring)."""
    idx = FsIndex()
    total = 0
    for layer in layers:
        members: list[_Member] = []
        with _layer_stream(layer) as (dr, tf):
            before = 0
            for ordinal, path, info in _members(layer, tf):
                total += 1
                if total > MAX_TOTAL_MEMBERS:
                    raise ParseError(
                        f"more than {MAX_TOTAL_MEMBERS} tar members in the layers up to this one",
                        structure=f"layer {layer.index}",
                    )
                members.append(_Member.of(ordinal, path, info))
                if progress is not None and dr.count - before > (1 << 22):
                    progress(dr.count - before)
                    before = dr.count
            check_tail(tf, f"layer {layer.index}")
            digest, diff_id = dr.verify()
            if progress is not None:
                progress(dr.count - before)
        idx.compressions.append(dr.compression)
        idx.diff_ids.append(diff_id)
        idx.sizes.append(dr.count)
        idx.digests.append(digest)
        idx.touches_protected.append(any(dropped(m.path, roots) for m in members))
        _apply(idx, layer.index, members, roots)
    return idx


def _apply(idx: FsIndex, layer_no: int, members: list[_Member], roots: Sequence[str]) -> None:
    # 1. whiteouts act on the lower layers only, before this layer's entries
    dirs: dict[str, int] = {}  # path -> ordinal of this layer's first directory entry there
    for m in members:
        if m.type == tarfile.DIRTYPE:
            dirs.setdefault(m.path, m.ordinal)
    earliest = _earliest_entries(members)
    for m in members:
        head, _, base = m.path.rpartition("/")
        if base == WH_OPAQUE:
            _check_whiteout_parent(idx, m, head, dirs, layer_no)
            idx.clear(head)
        elif (target := whiteout_target(m.path)) is not None:
            if target.rpartition("/")[2] in ("", ".", ".."):
                # image-spec layer.md, "Whiteouts": ".wh." plus the *basename* of the path to
                # delete; ".wh..." would make an engine delete the marker's parent directory
                raise ParseError(
                    f"whiteout {m.path!r} names {target.rpartition('/')[2]!r}, expected a file name",
                    structure=f"layer {layer_no}",
                )
            _check_whiteout_parent(idx, m, head, dirs, layer_no)
            if earliest.get(target, m.ordinal) < m.ordinal:
                # image-spec layer.md, "Whiteouts": a whiteout does not hide entries of its own
                # layer, but the engines apply the tar in order and delete those before it
                raise ParseError(
                    f"whiteout {m.path!r} follows an entry at or below {target!r} in the same layer "
                    "(engines would delete it, the image-spec keeps it)",
                    structure=f"layer {layer_no}",
                )
            idx.remove(target)
    # 2. this layer's entries, in order
    for m in members:
        base = m.path.rpartition("/")[2]
        if base.startswith(WH_PREFIX):
            continue
        meta = (m.mode & 0o7777, m.uid, m.gid)
        if m.type == tarfile.LNKTYPE:
            target = normalize(m.linkname, "linkname")
            if _protected(target, roots) != _protected(m.path, roots):
                raise UsageError(
                    f"layer {layer_no}: hard link {'/' + m.path!r} -> {'/' + target!r} crosses the "
                    "boundary of the protected paths; protect both paths or neither"
                )
            tnode = idx.lookup(target)
            if tnode is None or tnode.kind not in (FILE, CHAR, BLOCK, FIFO):
                got = "missing" if tnode is None else f"a {tnode.kind}"
                raise ParseError(
                    f"hard link {m.path!r} -> {target!r}: target is {got}, expected an earlier file",
                    structure=f"layer {layer_no}",
                )
            node = Node(
                tnode.kind, tnode.mode, tnode.uid, tnode.gid, tnode.size, tnode.linkname, tnode.source,
                mtime_ns=tnode.mtime_ns, xattrs=tnode.xattrs,  # one inode: the target's
            )  # fmt: skip
        else:
            kind = _KINDS[m.type]
            node = Node(kind, *meta, mtime_ns=m.mtime_ns, xattrs=m.xattrs)
            if kind == FILE:
                node.size, node.source = m.size, (layer_no, m.ordinal)
            elif kind == DIR:
                node.children = {}
            else:  # symlink target, or major:minor of a device
                node.linkname = m.linkname
        idx.put(m.path, node)


def _earliest_entries(members: list[_Member]) -> dict[str, int]:
    """For every path a whiteout of this layer names: the ordinal of the layer's first entry at
    or below it (whiteouts themselves excluded)."""
    targets = {t for m in members if (t := whiteout_target(m.path)) is not None}
    out: dict[str, int] = {}
    if not targets:
        return out
    for m in members:
        if m.path.rpartition("/")[2].startswith(WH_PREFIX):
            continue
        parts = m.path.split("/")
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            if prefix in targets and prefix not in out:
                out[prefix] = m.ordinal
    return out


def _check_whiteout_parent(
    idx: FsIndex, m: _Member, directory: str, dirs: dict[str, int], layer_no: int
) -> None:
    """Refuse a whiteout acting in ``directory`` (a plain one's parent, an opaque marker's own
    directory) reached through a symlink of the lower layers: the engines resolve the symlink
    inside the root (containerd's RootPath of the marker's parent, moby in a chroot) and
    delete below its target, where this tree would delete nothing. Entries through a symlink
    are refused likewise. Accepted: the layer replaces the symlink by a directory *before* the
    marker in the tar (as overlayfs-based diffs write it: ``lnk/`` then ``lnk/.wh..wh..opq``),
    which the engines apply first too, leaving nothing below it to delete."""
    node = idx.root
    parts = directory.split("/") if directory else []
    for i, part in enumerate(parts):
        child = node.children.get(part) if node.children is not None else None
        if child is None or child.kind != DIR:
            prefix = "/".join(parts[: i + 1])
            if child is not None and child.kind == SYMLINK and dirs.get(prefix, m.ordinal) >= m.ordinal:
                raise ParseError(
                    f"whiteout {m.path!r} goes through the symlink {prefix!r} (refused: an engine "
                    "would delete below its target)",
                    structure=f"layer {layer_no}",
                )
            return
        node = child


def rewrite_layer(
    layer: Layer,
    roots: Sequence[str],
    out: CompressingWriter,
    sink: Callable[[tuple[int, int], IO[bytes], int], None],
    wanted: set[tuple[int, int]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Pass 2: copy ``layer`` into ``out`` without the members :func:`dropped` selects.

    ``sink((layer, ordinal), data, size)`` receives the members in ``wanted`` (the final
    contents of protected files). The digests are checked again at the end (a source
    changed between the passes is refused).
    """
    with _layer_stream(layer) as (dr, tf):
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tw:  # type: ignore[call-overload]
            before = 0
            for ordinal, path, info in _members(layer, tf):
                if dropped(path, roots):
                    if (layer.index, ordinal) in wanted:
                        f = tf.extractfile(info)
                        assert f is not None
                        sink((layer.index, ordinal), f, info.size)
                    continue
                data = tf.extractfile(info) if info.isreg() else None
                if isinstance(info.mtime, float) and not math.isfinite(info.mtime):
                    # tarfile's writer rounds a float mtime (ValueError for a pax "nan",
                    # OverflowError for "inf"; fuzz2 campaign); the ustar field gets 0 and
                    # the member's own pax record is copied as it was.
                    info.mtime = 0
                tw.addfile(info, data)
                if progress is not None and dr.count - before > (1 << 22):
                    progress(dr.count - before)
                    before = dr.count
        dr.verify()
        if progress is not None:
            progress(dr.count - before)


def read_members(
    layer: Layer,
    wanted: set[int],
    sink: Callable[[int, IO[bytes], int], None],
) -> None:
    """Stream ``layer`` and hand the data of the members whose ordinals are in ``wanted`` to
    ``sink(ordinal, data, size)`` (for the simulated measurement of the image's command). The
    digests are checked at the end, as in both passes: the caller must not use what ``sink``
    received if this raises."""
    with _layer_stream(layer) as (dr, tf):
        for ordinal, _path, info in _members(layer, tf):
            if ordinal in wanted and info.isreg():
                f = tf.extractfile(info)
                assert f is not None
                sink(ordinal, f, info.size)
        dr.verify()
