"""Tar headers that readers resolve alike, or a refusal (shared by the layer tars of
:mod:`confide.image.flatten` and the ``docker save`` archive of :mod:`confide.image.oci`).

What sconify reads with Python's ``tarfile`` is read again by the container engine with Go's
``archive/tar`` (Docker, containerd): wherever the two could see different members, different
names or different ends, the archive is refused rather than read one way:

* extended headers are bounded (:data:`MAX_HEADER`) and at most one of each kind names a
  member (two pax headers, two GNU long names: each reader keeps another one);
* a pax ``path``/``linkpath`` record and a GNU long name/link must agree with the name
  tarfile applies; global pax records other than ``comment`` are refused (:func:`check_names`);
* after the end-of-archive blocks only zeros may follow (:func:`check_tail`).
"""

from __future__ import annotations

import tarfile

from confide.errors import ParseError

__all__ = ["MAX_HEADER", "BoundedTarInfo", "check_names", "check_tail", "clean_name"]

MAX_HEADER = 1 << 20  # bytes of one pax / GNU long-name header


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax and GNU long-name headers before tarfile reads them into memory,
    and records which extended headers named the member (checked by :func:`check_names`).
    ``structure``: what its errors name (a subclass per kind of archive)."""

    structure = "layer tar"

    long_name: str | None = None  # a GNU long-name header's name ('L'), as tarfile applied it
    long_link: str | None = None  # a GNU long-link header's target ('K')
    extended: tuple[str, ...] = ()  # the kinds of extended header that preceded the member

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_HEADER:
            raise ParseError(
                f"got a {self.size}-byte extended header, expected at most {MAX_HEADER}",
                structure=self.structure,
            )
        try:
            member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        except ValueError as exc:
            # tarfile parses most pax numbers leniently (0 when malformed) but not the GNU
            # sparse records ("GNU.sparse.size", ".realsize", ".map", the 1.0 map in the data):
            # int() of a hostile text raises ValueError (found by the fuzz2 mutation campaign).
            raise ParseError(f"malformed extended header: {exc}", structure=self.structure) from None
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
