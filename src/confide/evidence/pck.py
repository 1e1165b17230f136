"""The Intel SGX PCK certificate extension (OID 1.2.840.113741.1.13.1).

Layout from the Intel SGX PCK Certificate and Certificate Revocation List Profile
Specification, section 1.5 ("Intel SGX PCK Certificate extensions"): a SEQUENCE of
(OID, value) pairs: PPID (.1), TCB (.2, itself a SEQUENCE of 16 component SVNs .2.1-.2.16,
PCESVN .2.17 and CPUSVN .2.18), PCE-ID (.3), FMSPC (.4), SGX Type (.5), and for platform CA
certificates PlatformInstanceID (.6) and Configuration (.7: dynamicPlatform, cachedKeys,
SMTEnabled).

``cryptography`` returns this extension as ``UnrecognizedExtension``; this module reads exactly
that structure with the strict DER reader of :mod:`confide.evidence._der`. Hostile input raises ParseError.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence import _der as der

__all__ = ["SGX_EXTENSION_OID", "PckExtension", "parse_pck_extension"]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_BASE = (1, 2, 840, 113741, 1, 13, 1)

_TAG_BOOLEAN = der.TAG_BOOLEAN
_TAG_INTEGER = der.TAG_INTEGER
_TAG_OCTET_STRING = der.TAG_OCTET_STRING
_TAG_OID = der.TAG_OID
_TAG_ENUMERATED = der.TAG_ENUMERATED
_TAG_SEQUENCE = der.TAG_SEQUENCE

PPID_SIZE = 16
CPUSVN_SIZE = 16
PCEID_SIZE = 2
FMSPC_SIZE = 6
PLATFORM_INSTANCE_ID_SIZE = 16
TCB_COMPONENTS = 16
_MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class PckExtension:
    ppid: bytes
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None

    @property
    def sgx_type_name(self) -> str:
        return {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}.get(
            self.sgx_type, str(self.sgx_type)
        )


_STRUCTURE = "pck_sgx_extension"


def _err(message: str, offset: int, field: str | None = None) -> ParseError:
    return ParseError(message, structure=_STRUCTURE, field=field, offset=offset)


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, value_start, value_end) of the DER element at ``pos``."""
    return der.tlv(data, pos, _STRUCTURE)


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    return der.children(data, start, end, _STRUCTURE)


@functools.lru_cache(maxsize=512)
def _decode_oid(raw: bytes) -> tuple[int, ...] | tuple[str, int]:
    """Decode OID contents; on error return (message, index). Memoised: the SGX extension
    repeats the same few dozen OIDs in every certificate."""
    if not raw:
        return ("empty OID", 0)
    arcs: list[int] = []
    value = 0
    for i, b in enumerate(raw):
        if value == 0 and b == 0x80:
            return ("non-minimal OID arc", i)
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if raw[-1] & 0x80:
        return ("truncated OID", len(raw) - 1)
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return (*head, *arcs[1:])


def _oid(data: bytes, start: int, end: int) -> tuple[int, ...]:
    decoded = _decode_oid(data[start:end])
    if decoded and isinstance(decoded[0], str):
        message, index = decoded
        raise _err(str(message), start + int(index))
    return decoded


def _uint(data: bytes, tag: int, start: int, end: int, field: str, want_tag: int = _TAG_INTEGER) -> int:
    if tag != want_tag:
        raise _err(f"got tag {tag:#x}, expected {want_tag:#x}", start, field)
    if start == end or end - start > 3:
        raise _err("integer of unexpected size", start, field)
    if data[start] & 0x80:
        raise _err("negative integer", start, field)
    return int.from_bytes(data[start:end], "big")


def _octets(data: bytes, tag: int, start: int, end: int, size: int, field: str) -> bytes:
    if tag != _TAG_OCTET_STRING:
        raise _err(f"got tag {tag:#x}, expected OCTET STRING", start, field)
    if end - start != size:
        raise _err(f"got {end - start} bytes, expected {size}", start, field)
    return data[start:end]


def _bool(data: bytes, tag: int, start: int, end: int, field: str) -> bool:
    if tag != _TAG_BOOLEAN or end - start != 1 or data[start] not in (0x00, 0xFF):
        raise _err("expected a DER BOOLEAN", start, field)
    return data[start] == 0xFF


def _pairs(data: bytes, start: int, end: int) -> list[tuple[tuple[int, ...], int, int, int]]:
    out = []
    for tag, vs, ve in _children(data, start, end):
        if tag != _TAG_SEQUENCE:
            raise _err("expected SEQUENCE { OID, value }", vs)
        kids = _children(data, vs, ve)
        if len(kids) != 2 or kids[0][0] != _TAG_OID:
            raise _err("expected SEQUENCE { OID, value }", vs)
        out.append((_oid(data, kids[0][1], kids[0][2]), *kids[1]))
    return out


def parse_pck_extension(data: bytes) -> PckExtension:
    """Parse the DER value of the SGX extension (the extnValue contents)."""
    tag, start, end = _tlv(data, 0)
    if tag != _TAG_SEQUENCE or end != len(data):
        raise _err("expected one top-level SEQUENCE", 0)
    fields: dict[int, tuple[int, int, int]] = {}
    for oid, vtag, vs, ve in _pairs(data, start, end):
        if len(oid) != len(_BASE) + 1 or oid[: len(_BASE)] != _BASE:
            raise _err(f"unexpected OID {'.'.join(map(str, oid))}", vs)
        if oid[-1] in fields:
            raise _err(f"duplicate OID .{oid[-1]}", vs)
        fields[oid[-1]] = (vtag, vs, ve)
    for required, name in ((1, "ppid"), (2, "tcb"), (3, "pceid"), (4, "fmspc"), (5, "sgx_type")):
        if required not in fields:
            raise _err("missing", 0, name)
    ppid = _octets(data, *fields[1], PPID_SIZE, "ppid")
    ttag, ts, te = fields[2]
    if ttag != _TAG_SEQUENCE:
        raise _err("expected SEQUENCE", ts, "tcb")
    comps: dict[int, int] = {}
    pce_svn: int | None = None
    cpu_svn: bytes | None = None
    for oid, vtag, vs, ve in _pairs(data, ts, te):
        if len(oid) != len(_BASE) + 2 or oid[: len(_BASE) + 1] != (*_BASE, 2):
            raise _err(f"unexpected OID {'.'.join(map(str, oid))}", vs, "tcb")
        arc = oid[-1]
        if 1 <= arc <= TCB_COMPONENTS and arc not in comps:
            value = _uint(data, vtag, vs, ve, f"tcb.comp{arc:02d}")
            if value > 0xFF:
                raise _err("component SVN above 255", vs, f"tcb.comp{arc:02d}")
            comps[arc] = value
        elif arc == 17 and pce_svn is None:
            pce_svn = _uint(data, vtag, vs, ve, "tcb.pcesvn")
            if pce_svn > 0xFFFF:
                raise _err("PCESVN above 65535", vs, "tcb.pcesvn")
        elif arc == 18 and cpu_svn is None:
            cpu_svn = _octets(data, vtag, vs, ve, CPUSVN_SIZE, "tcb.cpusvn")
        else:
            raise _err(f"unexpected or duplicate TCB arc {arc}", vs, "tcb")
    if len(comps) != TCB_COMPONENTS or pce_svn is None or cpu_svn is None:
        raise _err("incomplete TCB", ts, "tcb")
    pce_id = _octets(data, *fields[3], PCEID_SIZE, "pceid")
    fmspc = _octets(data, *fields[4], FMSPC_SIZE, "fmspc")
    sgx_type = _uint(data, *fields[5], "sgx_type", want_tag=_TAG_ENUMERATED)
    instance: bytes | None = None
    dyn = cached = smt = None
    if 6 in fields:
        instance = _octets(data, *fields[6], PLATFORM_INSTANCE_ID_SIZE, "platform_instance_id")
    if 7 in fields:
        ctag, cs, ce = fields[7]
        if ctag != _TAG_SEQUENCE:
            raise _err("expected SEQUENCE", cs, "configuration")
        for oid, vtag, vs, ve in _pairs(data, cs, ce):
            if len(oid) != len(_BASE) + 2 or oid[: len(_BASE) + 1] != (*_BASE, 7):
                raise _err("unexpected OID", vs, "configuration")
            value = _bool(data, vtag, vs, ve, f"configuration.{oid[-1]}")
            if oid[-1] == 1:
                dyn = value
            elif oid[-1] == 2:
                cached = value
            elif oid[-1] == 3:
                smt = value
    unknown = set(fields) - {1, 2, 3, 4, 5, 6, 7}
    if unknown:
        raise _err(f"unexpected fields {sorted(unknown)}", start)
    return PckExtension(
        ppid=ppid,
        tcb_components=tuple(comps[i] for i in range(1, TCB_COMPONENTS + 1)),
        pce_svn=pce_svn,
        cpu_svn=cpu_svn,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=sgx_type,
        platform_instance_id=instance,
        dynamic_platform=dyn,
        cached_keys=cached,
        smt_enabled=smt,
    )
