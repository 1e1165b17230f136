"""Tar headers that readers resolve alike, or a refusal (shared by the layer tars of
:mod:`confide.image.flatten` and the ``docker save`` archive of :mod:`confide.image.oci`).

What sconify reads with Python's ``tarfile`` is read again by the container engine with Go's
``archive/tar`` (Docker, containerd): wherever the two could see different members, different
names or different ends, the archive is refused rather than read one way:

* extended headers are bounded (:data:`MAX_HEADER`) and at most one of each kind names a
  member (two pax headers, two GNU long names: each reader keeps another one);
* a pax ``path``/``linkpath`` record and a GNU long name/link must agree with the name
  tarfile applies; global pax records other than ``comment`` are refused (:func:`check_names`);
* the header fields the two readers parse by different rules must give the same values:
  the ``prefix`` field (tarfile prepends it to every name, Go only in a ustar header), an
  old-style regular file (typeflag NUL) named with a trailing ``/`` (tarfile judges the
  header's name field, Go the final name: one reads a directory where the other reads a file
  and its data), empty pax records (Go drops them, tarfile applies them) and octal numbers
  with a leading NUL (tarfile stops there, Go skips it) (:meth:`BoundedTarInfo.frombuf`,
  :func:`check_names`); a pax header's data must be well-formed records from end to end
  (Python 3.11's tarfile ignores what follows a record it cannot match, such as a length with
  a ``+`` sign, which Go applies) (:func:`check_pax_records`);
* after the end-of-archive blocks only zeros may follow (:func:`check_tail`).
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping

from confide.errors import ParseError

__all__ = ["MAX_HEADER", "BoundedTarInfo", "check_names", "check_pax_records", "check_tail", "clean_name"]

MAX_HEADER = 1 << 20  # bytes of one pax / GNU long-name header


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax and GNU long-name headers before tarfile reads them into memory,
    and records which extended headers named the member (checked by :func:`check_names`).
    ``structure``: what its errors name (a subclass per kind of archive)."""

    structure = "layer tar"

    long_name: str | None = None  # a GNU long-name header's name ('L'), as tarfile applied it
    long_link: str | None = None  # a GNU long-link header's target ('K')
    extended: tuple[str, ...] = ()  # the kinds of extended header that preceded the member
    # what Go's archive/tar reads in the member's own header block (see frombuf)
    raw_type: bytes = b""  # the typeflag byte as stored (tarfile turns NUL + "name/" into '5')
    raw_dir_name: bool = False  # the name field (bytes 0-99) ends with "/"
    go_name: str = ""  # the name and prefix fields as Go joins them
    py_name: str = ""  # the same fields as tarfile joins them

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> BoundedTarInfo:
        """tarfile's parse of one header block, and the fields Go's archive/tar (Docker,
        containerd) parses by other rules: ``prefix`` (bytes 345-499) is joined to the name
        only in a ustar header (magic ``ustar\\0``; star's 131 bytes), never in a GNU or V7
        one, which keep times or nothing there; tarfile joins it whatever the magic (compared
        in :func:`check_names`, when no pax path or GNU long name replaces the name). The
        ``size`` field must read alike: tarfile stops at the first NUL (``\\0 0001750`` is 0),
        Go trims NULs and spaces first (1000), and either reads the other's data as headers."""
        obj = super().frombuf(buf, encoding, errors)
        size_go = _go_octal(buf[124:136])
        if size_go is not None and size_go != obj.size:
            go = "is refused by Go's" if size_go < 0 else f"reads {size_go} with Go's"
            raise ParseError(
                f"member {obj.name[:100]!r}: its size field reads {obj.size} with Python's tar reader "
                f"and {go}: readers disagree on where the next header starts",
                structure=cls.structure,
            )
        name = _nts(buf[0:100], encoding, errors)
        py_prefix = _nts(buf[345:500], encoding, errors) if obj.type not in tarfile.GNU_TYPES else ""
        go_prefix = ""
        if bytes(buf[257:263]) == b"ustar\0":
            star = bytes(buf[508:512]) == b"tar\0"  # star keeps its times in bytes 476-499
            go_prefix = _nts(buf[345:476] if star else buf[345:500], encoding, errors)
        obj.raw_type = bytes(buf[156:157])
        obj.raw_dir_name = name.endswith("/")
        obj.py_name = f"{py_prefix}/{name}" if py_prefix else name
        obj.go_name = f"{go_prefix}/{name}" if go_prefix else name
        return obj

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_HEADER:
            raise ParseError(
                f"got a {self.size}-byte extended header, expected at most {MAX_HEADER}",
                structure=self.structure,
            )
        real = tarfile_.fileobj
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and real is not None:
            # tarfile reads the records from the first read of its data: checked there
            tarfile_.fileobj = _PaxBodyCheck(tarfile_, real, self.size, self.structure)  # type: ignore[assignment]
        try:
            member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        except ValueError as exc:
            # tarfile parses most pax numbers leniently (0 when malformed) but not the GNU
            # sparse records ("GNU.sparse.size", ".realsize", ".map", the 1.0 map in the data):
            # int() of a hostile text raises ValueError (found by the fuzz2 mutation campaign).
            raise ParseError(f"malformed extended header: {exc}", structure=self.structure) from None
        finally:
            tarfile_.fileobj = real
        kind = _EXTENDED.get(self.type)
        if kind is not None and isinstance(member, BoundedTarInfo):
            # tarfile applies a chain of extended headers from the last to the first (the first
            # wins), Go's archive/tar (Docker, containerd) keeps the last pax header and lets a
            # GNU long name win over any pax path: two of a kind name a member ambiguously.
            if kind in member.extended:
                raise ParseError(
                    f"member {member.name!r} has two {kind} headers, expected at most one",
                    structure=self.structure,
                )
            member.extended = (*member.extended, kind)
            if self.type == tarfile.GNUTYPE_LONGNAME:
                member.long_name = member.name
            elif self.type == tarfile.GNUTYPE_LONGLINK:
                member.long_link = member.linkname
        return member


_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)  # fmt: skip
_EXTENDED = {
    tarfile.XHDTYPE: "pax",
    tarfile.SOLARIS_XHDTYPE: "pax",
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}


class _PaxBodyCheck:
    """Stands in for a TarFile's stream while tarfile reads a pax header's data: the first read
    is checked by :func:`check_pax_records`, then the stream is put back."""

    def __init__(self, owner: tarfile.TarFile, real: object, size: int, structure: str) -> None:
        self._owner, self._real, self._size, self._structure = owner, real, size, structure

    def read(self, n: int = -1) -> bytes:
        self._owner.fileobj = self._real  # type: ignore[assignment]
        data: bytes = self._real.read(n)  # type: ignore[attr-defined]
        check_pax_records(data[: self._size], self._structure)
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def check_pax_records(body: bytes, structure: str) -> None:
    """A pax header's data must be records ``"%d %s=%s\\n"`` (POSIX.1-2017 pax, "pax Extended
    Header Format") from its first byte to its last, the length in plain decimal digits.

    Python 3.11's tarfile stops reading records, silently, at the first it cannot match (a
    length with a sign, ``+20 path=...``, or any bytes that are not a record) and ignores the
    rest; Go's archive/tar (Docker, containerd) parses the length with a sign too (``ParseInt``)
    and applies the record, or refuses the whole header: the engine named a member by a pax
    path that sconify never saw."""
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos, pos + 21)
        digits = body[pos:space] if space > pos else b""
        n = int(digits) if digits.isdigit() and digits.isascii() else 0
        end = pos + n
        record = body[space + 1 : end - 1] if n else b""
        if n < 5 or end > len(body) or body[end - 1 : end] != b"\n" or b"=" not in record:
            raise ParseError(
                f"malformed pax record at byte {pos} of an extended header "
                f"({bytes(body[pos : pos + 40])!r}): readers disagree on the records that follow",
                structure=structure,
            )
        pos = end


def _nts(field: bytes | bytearray, encoding: str, errors: str) -> str:
    """A NUL-terminated header field as text (tarfile's ``nts``)."""
    return bytes(field).split(b"\0", 1)[0].decode(encoding, errors)


def _go_octal(field: bytes | bytearray) -> int | None:
    """A numeric header field as Go's archive/tar reads it (``parseNumeric``): base-256 when
    the first byte has its high bit (None: tarfile reads those alike, or refuses the header),
    else octal after trimming spaces and NULs at both ends, up to the first NUL left. -1: Go
    refuses the header (not octal digits)."""
    if field[0] & 0x80:
        return None
    text = bytes(field).strip(b" \0").split(b"\0", 1)[0]
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        return -1
    return int(text, 8)


def clean_name(name: str) -> str:
    """A member name without empty and ``.`` components (``./a//b`` is ``a/b``)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def check_names(info: tarfile.TarInfo, tf: tarfile.TarFile, what: str) -> None:
    """Refuse a member whose name or link target depends on which tar reader reads it.

    A layer is applied by the container engine (Go's archive/tar in Docker and containerd),
    but indexed and rewritten here with Python's tarfile; where they disagree on a name, the
    protected paths would be cut out of the wrong members (and a ``docker save`` archive would
    hold another image for ``docker load`` than for sconify). POSIX.1-2017 pax ("pax Extended
    Header"): a ``path``/``linkpath`` record overrides the header field; GNU tar's long-name
    and long-link headers ('L', 'K') do the same; tarfile applies a global header's records
    ('g') to every later member, Go's reader ignores them (and the engines skip the entry);
    a ``GNU.sparse.name`` names only a sparse file (GNU tar manual, "Storing Sparse Files")."""
    glob = sorted(k for k in tf.pax_headers if k != "comment")
    if glob:
        raise ParseError(
            f"a global pax header sets {', '.join(glob)}: readers disagree on whether it applies "
            "(only comment records are accepted)",
            structure=what,
        )
    pax = info.pax_headers
    empty = sorted(
        k for k, v in pax.items() if not v and (k in tarfile.PAX_FIELDS or k.startswith("GNU.sparse."))
    )
    if empty:
        # POSIX.1-2017 pax: an empty value deletes the keyword (Go drops the record and keeps the
        # header's field), tarfile applies it (an empty name, size 0, ...)
        raise ParseError(
            f"member {info.name!r}: empty pax record(s) {', '.join(empty)}: readers disagree on "
            "whether the header's field or the empty value applies",
            structure=what,
        )
    if isinstance(info, BoundedTarInfo) and (info.long_name == "" or info.long_link == ""):
        raise ParseError(
            f"member {info.name!r}: an empty GNU long name or link: readers disagree on whether it applies",
            structure=what,
        )
    named = []
    if "GNU.sparse.name" in pax:  # a sparse 1.0 member's path names the header, not the file
        if not info.issparse():
            raise ParseError(
                f"member {info.name!r}: GNU.sparse.name on a file that is not sparse", structure=what
            )
        named.append(("GNU.sparse.name", pax["GNU.sparse.name"]))
    elif "path" in pax:
        named.append(("path record", pax["path"]))
    if isinstance(info, BoundedTarInfo) and info.long_name is not None:
        named.append(("GNU long name", info.long_name))
    for source, value in named:
        if clean_name(value) != clean_name(info.name):
            raise ParseError(
                f"member named {info.name!r} and, by its {source}, {value!r}: readers disagree",
                structure=what,
            )
    if isinstance(info, BoundedTarInfo):
        _check_header_fields(info, pax, what)
    linked = [("linkpath record", pax["linkpath"])] if "linkpath" in pax else []
    if isinstance(info, BoundedTarInfo) and info.long_link is not None:
        linked.append(("GNU long link", info.long_link))
    for source, value in linked:
        if value != info.linkname:
            raise ParseError(
                f"member {info.name!r} links to {info.linkname!r} and, by its {source}, {value!r}: "
                "readers disagree",
                structure=what,
            )


def _check_header_fields(info: BoundedTarInfo, pax: Mapping[str, str], what: str) -> None:
    """The name and type Go's archive/tar gives the member's header, against tarfile's (see
    :meth:`BoundedTarInfo.frombuf`). Go's final name is the GNU long name, else the pax path,
    else prefix and name as Go joins them; a typeflag NUL is a directory when that final name
    ends with ``/`` (and then has no data), where tarfile looks at the name field alone."""
    replaced = info.long_name is not None or "path" in pax or "GNU.sparse.name" in pax
    if not replaced and clean_name(info.go_name) != clean_name(info.py_name):
        raise ParseError(
            f"member named {info.py_name[:200]!r} by Python's tar reader and {info.go_name[:200]!r} by "
            "Go's (a prefix field outside a ustar header): readers disagree",
            structure=what,
        )
    if info.raw_type != tarfile.AREGTYPE:
        return
    if info.raw_dir_name and info.long_name is not None:
        # tarfile drops a directory's trailing "/" from the long name it applies: whether Go's
        # final name has one is unknown here, so the type is too
        raise ParseError(
            f"member {info.name!r}: a type-NUL directory (name field ending in '/') with a GNU long "
            "name: readers may disagree on its type",
            structure=what,
        )
    final = info.long_name if info.long_name is not None else pax.get("path", info.go_name)
    if final.endswith("/") != info.raw_dir_name:
        raise ParseError(
            f"member {info.name!r} (type NUL) is a {'directory' if info.raw_dir_name else 'file'} by its "
            f"name field and a {'directory' if final.endswith('/') else 'file'} by its full name "
            f"{final[:200]!r}: readers disagree on its type and on where the next header starts",
            structure=what,
        )


def check_tail(tf: tarfile.TarFile, what: str, *, seek: bool = False) -> None:
    """Refuse bytes other than zeros after the end of the archive (call it once tarfile has
    read the last member's header; ``seek``: a random-access archive, read from where tarfile
    found the end, ``tf.offset``; a stream goes on from where it stopped).

    tarfile stops at the first zero block, and (after the first member) at a block that is
    not a valid header; Go's archive/tar (the engines) stops at two zero blocks and fails on a
    zero block followed by a header. What follows is in no reader's tree, but it is in the
    blob, which sconify copies unchanged when no member is protected: a second tar appended to
    a layer (``cat a.tar b.tar``) could carry a protected file's plaintext into the output,
    and a ``docker save`` archive's appended members are what another reader may load.
    Writers pad the end with zeros only (POSIX.1-2017 pax, "ustar Interchange Format": two
    zero blocks; GNU tar and tarfile fill the last record with zeros)."""
    stream = tf.fileobj
    assert stream is not None
    if seek:
        stream.seek(tf.offset)
    while chunk := stream.read(1 << 20):
        if chunk.count(0) != len(chunk):
            raise ParseError(
                "got data after the end-of-archive blocks, expected only zeros (a second tar "
                "appended, or a header after one zero block)",
                structure=what,
            )
