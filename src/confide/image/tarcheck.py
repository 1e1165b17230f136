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
* every other field an engine extracts with must read alike, or Go's refusal counts as a
  disagreement: the numbers (mode, uid, gid, size, mtime, devmajor/devminor; octal with
  spaces, NULs, signs or garbage; base-256), the checksum, V7 owner names and device numbers,
  star times, the type flags ``7``, ``X`` and ``S`` (refused), pax uid/gid/size/mtime/atime/
  ctime records (Go's ParseInt grammar) (:func:`_check_numbers`, :func:`_check_pax_numbers`),
  a GNU long name or link that runs into its padding; GNU sparse files are refused
  (:meth:`BoundedTarInfo._proc_member`);
* after the end-of-archive blocks only zeros may follow (:func:`check_tail`).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Mapping

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
        Go trims NULs and spaces first (1000), and either reads the other's data as headers; the
        other numeric fields, the checksum, the owner names and the type flag are compared by
        :func:`_check_numbers`."""
        obj = super().frombuf(buf, encoding, errors)
        _check_numbers(obj, buf, encoding, errors, cls.structure)
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
            tarfile_.fileobj = _FirstRead(tarfile_, real, self._check_pax)  # type: ignore[assignment]
        elif self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and real is not None:
            tarfile_.fileobj = _FirstRead(tarfile_, real, self._check_long_name)  # type: ignore[assignment]
        try:
            member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        except ValueError as exc:
            # tarfile parses most pax numbers leniently (0 when malformed) but not the GNU
            # sparse records ("GNU.sparse.size", ".realsize", ".map", the 1.0 map in the data):
            # int() of a hostile text raises ValueError (found by the fuzz2 mutation campaign).
            raise ParseError(f"malformed extended header: {exc}", structure=self.structure) from None
        finally:
            tarfile_.fileobj = real
        if member.issparse() or any(k.startswith("GNU.sparse.") for k in member.pax_headers):
            # GNU sparse files (typeflag 'S', pax formats 0.0, 0.1, 1.0; GNU tar manual, "Storing
            # Sparse Files") are recognized and mapped by different rules in tarfile 3.11 and Go's
            # archive/tar (Go: GNU.sparse.major/minor or .map; tarfile: .map, .size, or 1.0 with the
            # map in the data, read leniently): the same bytes can give a file other contents, or
            # another name (GNU.sparse.name). Image layers hold none (the engines' Go writer
            # writes no sparse files): refused.
            records = sorted(k for k in member.pax_headers if k.startswith("GNU.sparse."))
            how = ", ".join(records[:4]) if records else "typeflag 'S'"
            raise ParseError(
                f"member {member.name[:200]!r}: a GNU sparse file ({how}), refused: the tar readers map "
                "sparse files by different rules",
                structure=self.structure,
            )
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

    def _check_pax(self, data: bytes) -> None:
        check_pax_records(data[: self.size], self.structure)

    def _check_long_name(self, data: bytes) -> None:
        """tarfile reads a GNU long name or link from the header's data *with its padding* up to
        the first NUL; Go's archive/tar from the data alone: a name that fills its data with no
        NUL and runs into non-NUL padding reads longer in tarfile."""
        name = data[: self.size]
        if b"\0" not in name and data[self.size : self.size + 1] not in (b"", b"\0"):
            kind = "name" if self.type == tarfile.GNUTYPE_LONGNAME else "link"
            raise ParseError(
                f"a GNU long {kind} {bytes(name[:200])!r} without a NUL runs into non-zero padding: "
                "readers disagree on the name",
                structure=self.structure,
            )


_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)  # fmt: skip
_EXTENDED = {
    tarfile.XHDTYPE: "pax",
    tarfile.SOLARIS_XHDTYPE: "pax",
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}


class _FirstRead:
    """Stands in for a TarFile's stream while tarfile reads an extended header's data: the first
    read is given to ``check``, then the stream is put back."""

    def __init__(self, owner: tarfile.TarFile, real: object, check: Callable[[bytes], None]) -> None:
        self._owner, self._real, self._check = owner, real, check

    def read(self, n: int = -1) -> bytes:
        self._owner.fileobj = self._real  # type: ignore[assignment]
        data: bytes = self._real.read(n)  # type: ignore[attr-defined]
        self._check(data)
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


# the numeric fields of a header block: (name, offset, end)
_NUMERIC = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("mtime", 136, 148),
            ("devmajor", 329, 337), ("devminor", 337, 345))  # fmt: skip
# type flags tarfile reads and the engines do not: a contiguous file ('7': tarfile a regular
# file, Go's TypeCont, which Docker and containerd refuse to extract), a Solaris extended header
# ('X': tarfile a pax header, Go a member of an unknown type), an old GNU sparse file ('S')
_REFUSED_TYPES = {
    b"7": "a contiguous file",
    b"X": "a Solaris extended header",
    b"S": "an old GNU sparse file",
}


def _check_numbers(
    obj: tarfile.TarInfo, buf: bytes | bytearray, encoding: str, errors: str, what: str
) -> None:
    """Every field of one header block that Go's archive/tar (``reader.go``, ``readHeader``,
    ``parseNumeric``, ``getFormat``) reads by other rules than tarfile's ``frombuf``/``nti``
    must give the same value, or the header is refused (Go refusing it counts as a different
    value: the engine would fail to apply the layer sconify converted).

    * numbers: tarfile reads base-256 only after a first byte 0x80 or 0xff and refuses other
      high bytes; Go reads any first byte with the high bit as base-256 (sign in bit 6) and
      refuses values over 63 bits. Octal: tarfile cuts at the first NUL, then Python's ``int``
      (which strips any whitespace and takes ``+``, ``_``, ``0o``); Go trims spaces and NULs
      at both ends, cuts at a NUL, and takes only digits 0-7;
    * the checksum is octal for Go (never base-256);
    * a star header's access and change times (bytes 476-499) are parsed by Go, not by tarfile;
    * a header with neither ustar nor GNU magic (V7) has no owner names or device numbers
      for Go, which tarfile reads whatever the magic;
    * a negative size is refused (Go refuses it for a regular file); other negative numbers
      read alike and are judged where they are used (an owner outside u32 of a protected
      file, for one)."""
    name = obj.name[:200]
    size_go = _go_numeric(buf[124:136])
    if size_go != obj.size:
        said = "is refused by Go's" if size_go is None else f"reads {size_go} with Go's"
        raise ParseError(
            f"member {name!r}: its size field reads {obj.size} with Python's tar reader "
            f"and {said}: readers disagree on where the next header starts",
            structure=what,
        )
    kind = _REFUSED_TYPES.get(bytes(buf[156:157]))
    if kind is not None:
        raise ParseError(
            f"member {name!r}: type flag {bytes(buf[156:157])!r} ({kind}) is read differently by "
            "Python's and Go's tar readers, refused",
            structure=what,
        )
    magic = bytes(buf[257:263])
    v7 = magic != b"ustar\0" and not (magic == b"ustar " and bytes(buf[263:265]) == b" \0")
    for field, start, end in _NUMERIC:
        py = getattr(obj, field)
        go = 0 if v7 and field.startswith("dev") else _go_numeric(buf[start:end])
        if go != py:
            how = "is refused by Go's" if go is None else f"reads {go} with Go's"
            raise ParseError(
                f"member {name!r}: its {field} field {bytes(buf[start:end])!r} reads {py} with Python's "
                f"tar reader and {how}: readers disagree",
                structure=what,
            )
    if obj.size < 0:
        raise ParseError(
            f"member {name!r}: its size field reads {obj.size}, expected at least 0", structure=what
        )
    if magic == b"ustar\0" and bytes(buf[508:512]) == b"tar\0":
        # star's times (bytes 476-499), which Go parses (and refuses) and tarfile ignores
        for field, start, end in (("atime", 476, 488), ("ctime", 488, 500)):
            if _go_numeric(buf[start:end]) is None:
                raise ParseError(
                    f"member {name!r}: its star {field} field {bytes(buf[start:end])!r} is refused by Go's "
                    "tar reader and ignored by Python's: readers disagree",
                    structure=what,
                )
    chk = _go_octal(buf[148:156])
    if chk != obj.chksum:
        raise ParseError(
            f"member {name!r}: its checksum field {bytes(buf[148:156])!r} reads {obj.chksum} with Python's "
            f"tar reader and {'is refused by' if chk is None else f'{chk} with'} Go's: readers disagree",
            structure=what,
        )
    if v7:
        for field, start, end in (("uname", 265, 297), ("gname", 297, 329)):
            if _nts(buf[start:end], encoding, errors):
                raise ParseError(
                    f"member {name!r}: a header without ustar or GNU magic has a {field} field, which "
                    "Python's tar reader applies and Go's ignores: readers disagree",
                    structure=what,
                )


def _go_numeric(field: bytes | bytearray) -> int | None:
    """A numeric header field as Go's archive/tar reads it (``parseNumeric``); None: Go refuses
    the header. Base-256 (two's complement, big-endian) when the first byte has its high bit,
    the high bit itself ignored; more than 63 bits is an error. Else octal (:func:`_go_octal`)."""
    b = bytes(field)
    if not b or not b[0] & 0x80:
        return _go_octal(b)
    inv = 0xFF if b[0] & 0x40 else 0
    x = 0
    for i, byte in enumerate(b):
        c = (byte ^ inv) & (0x7F if i == 0 else 0xFF)
        if x >> 56:
            return None
        x = x << 8 | c
    if x >> 63:
        return None
    return ~x if inv else x


def _go_octal(field: bytes | bytearray) -> int | None:
    """Go's ``parseOctal``: spaces and NULs trimmed at both ends, cut at the first NUL left,
    then ``strconv.ParseUint(s, 8, 64)`` (digits 0-7 only: no sign, no ``_``, no ``0o``);
    None: Go refuses the header."""
    text = bytes(field).strip(b" \0").split(b"\0", 1)[0]
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        return None
    return int(text, 8)


# pax records Go parses as numbers (``mergePAX``): strconv.ParseInt(v, 10, 64), or
# ``parsePAXTime`` (ParseInt seconds, then an optional "." and digits); tarfile 3.11 takes
# int()/float() (whitespace, "_", Unicode digits, "1e3", "nan") and reads a failure as 0
_PAX_GO_INT = re.compile(r"[+-]?[0-9]+")
_PAX_GO_TIME = re.compile(r"([+-]?[0-9]+)(?:\.[0-9]*)?")
_PAX_INTS = ("uid", "gid", "size")
_PAX_TIMES = ("mtime", "atime", "ctime")


def _check_pax_numbers(info: tarfile.TarInfo, pax: Mapping[str, str], what: str) -> None:
    """The pax records that override a number must read alike: what Go's ``mergePAX`` parses
    (or refuses: the engine fails on the layer) and tarfile gives the member."""
    for key in (*_PAX_INTS, *_PAX_TIMES):
        value = pax.get(key)
        if value is None:
            continue
        m = (_PAX_GO_INT if key in _PAX_INTS else _PAX_GO_TIME).fullmatch(value)
        seconds = int(m.group(1) if key in _PAX_TIMES else m.group(0)) if m is not None else None
        if seconds is None or not -(1 << 63) <= seconds < 1 << 63:
            raise ParseError(
                f"member {info.name[:200]!r}: its pax {key} record {value[:40]!r} is refused by Go's tar "
                "reader (decimal digits with an optional sign expected, within 64 bits) and read as a "
                "number by Python's: readers disagree",
                structure=what,
            )


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
    ('g') to every later member, Go's reader ignores them (and the engines skip the entry).
    The pax records that override numbers must parse alike (:func:`_check_pax_numbers`); GNU
    sparse files never get here (refused in :meth:`BoundedTarInfo._proc_member`)."""
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
    _check_pax_numbers(info, pax, what)
    if isinstance(info, BoundedTarInfo) and (info.long_name == "" or info.long_link == ""):
        raise ParseError(
            f"member {info.name!r}: an empty GNU long name or link: readers disagree on whether it applies",
            structure=what,
        )
    named = []
    if "path" in pax:
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
    replaced = info.long_name is not None or "path" in pax
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
