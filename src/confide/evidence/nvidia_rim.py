"""NVIDIA reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2:2015) with golden
measurements, following the TCG "Reference Integrity Manifest Information Model" binding.

A RIM lists ``<Resource type="Measurement" index=N active=... alternatives=K size=S
Hash0=... HashK-1=...>`` entries inside ``<Payload>``; ``index`` counts measurement blocks
from 0, so RIM index ``N`` is SPDM measurement block ``N + 1``. The hash attributes live in the
namespace ``http://www.w3.org/2001/04/xmlenc#sha384``.

The XML is treated as hostile: parsed with ``defusedxml`` (no DTDs, no entities, no external
references) and bounded in size. This module only parses: the enveloped XML-DSig signature and
its chain to the NVIDIA RIM root are verified by :func:`confide.verify.nvidia_rim.verify_rim`,
which re-parses the *signed* bytes; a manifest from :meth:`ReferenceManifest.from_bytes` alone
is a claim by whoever supplied the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from confide.errors import ParseError

__all__ = ["MAX_RIM_SIZE", "ReferenceManifest", "RimMeasurement"]

MAX_RIM_SIZE = 4 * 1024 * 1024
MAX_RESOURCES = 4096
MAX_ALTERNATIVES = 64
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
SHA384_SIZE = 48
_HASH_ATTR = re.compile(r"\{" + re.escape(SHA384_NS) + r"\}Hash(\d+)")
_STRUCTURE = "NVIDIA RIM (SWID tag)"


@dataclass(frozen=True, slots=True)
class RimMeasurement:
    index: int
    """0-based: SPDM measurement block ``index + 1``."""
    active: bool
    size: int
    alternatives: tuple[bytes, ...]
    name: str


@dataclass(frozen=True, slots=True)
class ReferenceManifest:
    tag_id: str
    name: str
    version: str
    """``Meta/@colloquialVersion``: the driver version or the VBIOS version."""
    measurements: tuple[RimMeasurement, ...]
    raw: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceManifest:
        if len(data) > MAX_RIM_SIZE:
            raise ParseError(f"got {len(data)} bytes, expected at most {MAX_RIM_SIZE}", structure=_STRUCTURE)
        try:
            root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except (ET.ParseError, DefusedXmlException, ValueError) as exc:
            raise ParseError(f"not acceptable XML: {exc}", structure=_STRUCTURE) from None
        if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
            raise ParseError(
                f"got root element {root.tag!r}, expected SWID SoftwareIdentity", structure=_STRUCTURE
            )
        meta = root.find(f"{{{SWID_NS}}}Meta")
        payload = root.find(f"{{{SWID_NS}}}Payload")
        if meta is None or payload is None:
            raise ParseError("missing Meta or Payload element", structure=_STRUCTURE)
        version = meta.get("colloquialVersion")
        if not version:
            raise ParseError("Meta has no colloquialVersion", structure=_STRUCTURE, field="colloquialVersion")
        resources = payload.findall(f"{{{SWID_NS}}}Resource")
        if len(resources) > MAX_RESOURCES:
            raise ParseError(
                f"got {len(resources)} resources, expected at most {MAX_RESOURCES}", structure=_STRUCTURE
            )
        measurements: list[RimMeasurement] = []
        seen: set[int] = set()
        for res in resources:
            if res.get("type") != "Measurement":
                continue
            m = _measurement(res)
            if m.index in seen:
                raise ParseError(f"index {m.index} appears twice", structure=_STRUCTURE, field="index")
            seen.add(m.index)
            measurements.append(m)
        return cls(
            tag_id=root.get("tagId", ""),
            name=root.get("name", ""),
            version=version,
            measurements=tuple(measurements),
            raw=data,
        )

    def to_bytes(self) -> bytes:
        return self.raw

    @property
    def active(self) -> dict[int, RimMeasurement]:
        return {m.index: m for m in self.measurements if m.active}


def _int_attr(res: ET.Element, name: str, limit: int) -> int:
    text = res.get(name)
    if text is None or not text.isdigit() or len(text) > 6 or int(text) > limit:
        raise ParseError(f"got {text!r}, expected an integer 0..{limit}", structure=_STRUCTURE, field=name)
    return int(text)


def _measurement(res: ET.Element) -> RimMeasurement:
    index = _int_attr(res, "index", 255)
    where = f"Resource index {index}"
    active_text = res.get("active", "")
    if active_text not in ("True", "False", "true", "false"):
        raise ParseError(
            f"got active={active_text!r}, expected True or False", structure=_STRUCTURE, field=where
        )
    size = _int_attr(res, "size", 1024)
    count = _int_attr(res, "alternatives", MAX_ALTERNATIVES)
    hashes: dict[int, bytes] = {}
    for key, value in res.attrib.items():
        match = _HASH_ATTR.fullmatch(key)
        if not match:
            continue
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            raise ParseError(f"{key}: not hex", structure=_STRUCTURE, field=where) from None
        if len(digest) != size:
            raise ParseError(
                f"Hash{match.group(1)}: got {len(digest)} bytes, expected size {size}",
                structure=_STRUCTURE,
                field=where,
            )
        hashes[int(match.group(1))] = digest
    if sorted(hashes) != list(range(count)):
        raise ParseError(
            f"got hashes {sorted(hashes)}, expected Hash0..Hash{count - 1} (alternatives={count})",
            structure=_STRUCTURE,
            field=where,
        )
    return RimMeasurement(
        index=index,
        active=active_text.lower() == "true",
        size=size,
        alternatives=tuple(hashes[i] for i in range(count)),
        name=res.get("name", ""),
    )
