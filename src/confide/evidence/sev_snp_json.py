"""SEV-SNP evidence in the JSON form that trustee (the CoCo attestation service) and the
``sev`` Rust crate's serde write: ``{"attestation_report": {...fields...}, "cert_chain":
[{"cert_type": "VCEK", "data": [bytes]}]}``.

The report is rebuilt byte for byte into the ``ATTESTATION_REPORT`` layout of the AMD SEV-SNP
ABI (Table 23; TCB_VERSION of Milan/Genoa: boot loader, TEE, 4 reserved, SNP, microcode; Turin:
FMC first) and then verified like any raw report: nothing in the JSON is trusted, only the
signature over the rebuilt bytes. Every value is type- and range-checked (ParseError).
"""

from __future__ import annotations

import struct
from typing import Any

from confide import jsonstrict
from confide.errors import ParseError
from confide.evidence.sev_snp import REPORT_SIZE

__all__ = ["report_from_serde_json"]

_S = "sev_snp_json"
MAX_JSON = 1 << 20


def _err(message: str, field: str | None = None) -> ParseError:
    return ParseError(message, structure=_S, field=field)


def _int(obj: Any, key: str, bits: int) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise _err(f"got {value!r}, expected an integer of {bits} bits", key)
    return value


def _bytes(obj: Any, key: str, size: int) -> bytes:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list) or len(value) != size:
        raise _err(f"expected a list of {size} bytes", key)
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
        raise _err("expected byte values 0..255", key)
    return bytes(value)


def _tcb(obj: Any, key: str) -> bytes:
    t = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(t, dict):
        raise _err("expected an object", key)
    fmc = t.get("fmc")
    parts = [_int(t, "bootloader", 8), _int(t, "tee", 8), _int(t, "snp", 8), _int(t, "microcode", 8)]
    if fmc is None:  # Milan / Genoa TCB_VERSION
        return bytes([parts[0], parts[1], 0, 0, 0, 0, parts[2], parts[3]])
    fmc_value = _int(t, "fmc", 8)  # Turin: FMC, boot loader, TEE, SNP, 3 reserved, microcode
    return bytes([fmc_value, parts[0], parts[1], parts[2], 0, 0, 0, parts[3]])


def _version(obj: Any, key: str) -> bytes:
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, dict):
        raise _err("expected {major, minor, build}", key)
    return bytes([_int(v, "build", 8), _int(v, "minor", 8), _int(v, "major", 8), 0])


def report_from_serde_json(text: bytes) -> tuple[bytes, bytes | None]:
    """(raw report bytes, the VCEK/VLEK DER from ``cert_chain`` if present)."""
    if len(text) > MAX_JSON:
        raise _err(f"got {len(text)} bytes, expected at most {MAX_JSON}")
    doc = jsonstrict.loads(text, structure=_S)
    r = doc.get("attestation_report") if isinstance(doc, dict) else None
    if not isinstance(r, dict):
        raise _err("expected an object with attestation_report", "attestation_report")
    version = _int(r, "version", 32)
    if version not in (2, 3):
        raise _err(f"got version {version}, expected 2 or 3", "version")
    cpuid = b"\x00" * 3
    if version >= 3:
        cpuid = bytes([_int(r, "cpuid_fam_id", 8), _int(r, "cpuid_mod_id", 8), _int(r, "cpuid_step", 8)])
    sig = r.get("signature")
    out = b"".join(
        (
            struct.pack("<IIQ", version, _int(r, "guest_svn", 32), _int(r, "policy", 64)),
            _bytes(r, "family_id", 16),
            _bytes(r, "image_id", 16),
            struct.pack("<II", _int(r, "vmpl", 32), _int(r, "sig_algo", 32)),
            _tcb(r, "current_tcb"),
            struct.pack("<QI", _int(r, "plat_info", 64), _int(r, "key_info", 32)),
            bytes(4),
            _bytes(r, "report_data", 64),
            _bytes(r, "measurement", 48),
            _bytes(r, "host_data", 32),
            _bytes(r, "id_key_digest", 48),
            _bytes(r, "author_key_digest", 48),
            _bytes(r, "report_id", 32),
            _bytes(r, "report_id_ma", 32),
            _tcb(r, "reported_tcb"),
            cpuid + bytes(24 - 3),
            _bytes(r, "chip_id", 64),
            _tcb(r, "committed_tcb"),
            _version(r, "current"),
            _version(r, "committed"),
            _tcb(r, "launch_tcb"),
            bytes(0x2A0 - 0x1F8),
            _bytes(sig, "r", 72),
            _bytes(sig, "s", 72),
        )
    )
    out += bytes(REPORT_SIZE - len(out))
    vek = None
    chain = doc.get("cert_chain")
    if isinstance(chain, list):
        for item in chain:
            if isinstance(item, dict) and item.get("cert_type") in ("VCEK", "VLEK"):
                data = item.get("data")
                if not isinstance(data, list) or not 0 < len(data) <= 16384:
                    raise _err("expected the certificate as a list of bytes", "cert_chain")
                vek = _bytes(item, "data", len(data))
                break
    return out, vek
