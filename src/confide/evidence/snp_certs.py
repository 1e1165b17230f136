"""The SEV-SNP certificate table that comes with a report (``auxblob`` of configfs-tsm, the
extended guest request's certificate buffer).

Layout (AMD GHCB specification, "SNP Extended Guest Request", certificate table): entries of
GUID (16 bytes, little-endian fields as in EFI_GUID), offset (u32) and length (u32) of a DER
certificate, both relative to the start of the table; an all-zero entry ends the table.
"""

from __future__ import annotations

import uuid

from confide.errors import ParseError
from confide.evidence._reader import Reader

__all__ = ["ARK_GUID", "ASK_GUID", "VCEK_GUID", "VLEK_GUID", "build_cert_table", "parse_cert_table"]

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ENTRY_SIZE = 24
MAX_ENTRIES = 64


def parse_cert_table(data: bytes) -> dict[uuid.UUID, bytes]:
    """GUID -> DER certificate. Malformed tables raise ParseError (field, offset)."""
    r = Reader(data, "snp_cert_table")
    out: dict[uuid.UUID, bytes] = {}
    for _ in range(MAX_ENTRIES + 1):
        at = r.pos
        guid = uuid.UUID(bytes_le=r.take(16, "guid"))
        offset = r.u32("offset")
        length = r.u32("length")
        if guid.int == 0 and offset == 0 and length == 0:
            return out
        if offset < ENTRY_SIZE or offset + length > len(data) or length == 0:
            raise ParseError(
                f"certificate at {offset:#x}+{length} lies outside the table ({len(data)} bytes)",
                structure="snp_cert_table", field="offset", offset=at + 16,
            )  # fmt: skip
        if guid in out:
            raise ParseError(f"duplicate entry {guid}", structure="snp_cert_table", field="guid", offset=at)
        out[guid] = data[offset : offset + length]
    raise ParseError(f"more than {MAX_ENTRIES} entries or no terminator", structure="snp_cert_table")


def build_cert_table(entries: dict[uuid.UUID, bytes]) -> bytes:
    """The certificate table of ``entries`` (GUID -> DER certificate, in that order), in the
    layout :func:`parse_cert_table` reads: the entries, the all-zero terminator, then the
    certificates. Used by the CAS for the VCEK it fetched for its own report
    (:mod:`confide.cas.own_vcek`)."""
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"got {len(entries)} certificates, at most {MAX_ENTRIES} fit a table")
    head, body = bytearray(), bytearray()
    offset = ENTRY_SIZE * (len(entries) + 1)
    for guid, der in entries.items():
        if guid.int == 0 or not der:
            raise ValueError("a certificate table entry needs a non-zero GUID and a certificate")
        head += guid.bytes_le + (offset + len(body)).to_bytes(4, "little") + len(der).to_bytes(4, "little")
        body += der
    return bytes(head + bytes(ENTRY_SIZE) + body)
