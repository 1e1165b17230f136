"""Names and decoders for the event types of a TCG / CC event log.

Event types: TCG PC Client Platform Firmware Profile (PFP) spec, section 10.4.1, Table 9
("Events"). Event data layouts: PFP section 10.4 (``UEFI_VARIABLE_DATA``,
``UEFI_IMAGE_LOAD_EVENT``, ``UEFI_PLATFORM_FIRMWARE_BLOB2``, ``UEFI_HANDOFF_TABLE_POINTERS2``,
``UEFI_GPT_DATA``, ``TCG_PCClientTaggedEvent``), UEFI 2.10 section 10.3 (device-path nodes)
and 3.1.3 (``EFI_LOAD_OPTION``), td-shim spec Table 3.5-4 (``TD_SHIM_PLATFORM_CONFIG_INFO``)
and GRUB's ``grub_cmd:`` / ``kernel_cmdline:`` strings.

The event data is untrusted: only the digest is bound to an RTMR by replay. A decoder never
fails the log: bad data gives ``{"decode_error": ...}`` for that event only. Whether the data
matches the digest is reported separately (``confide.verify.eventlog``).
"""

from __future__ import annotations

import uuid

from confide.errors import ParseError
from confide.evidence._reader import Reader
from confide.evidence.ccel import Event
from confide.verify.result import ClaimValue

__all__ = [
    "DATA_DIGEST_TYPES",
    "EVENT_TYPE_NAMES",
    "decode_event",
    "event_type_name",
    "format_guid",
]

EV_EFI_EVENT_BASE = 0x80000000
EVENT_TYPE_NAMES: dict[int, str] = {
    0x00000000: "EV_PREBOOT_CERT",
    0x00000001: "EV_POST_CODE",
    0x00000002: "EV_UNUSED",
    0x00000003: "EV_NO_ACTION",
    0x00000004: "EV_SEPARATOR",
    0x00000005: "EV_ACTION",
    0x00000006: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS",
    0x00000008: "EV_S_CRTM_VERSION",
    0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0000000B: "EV_TABLE_OF_DEVICES",
    0x0000000C: "EV_COMPACT_HASH",
    0x0000000D: "EV_IPL",
    0x0000000E: "EV_IPL_PARTITION_DATA",
    0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG",
    0x00000011: "EV_NONHOST_INFO",
    0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x00000013: "EV_POST_CODE2",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x8000000D: "EV_EFI_GPT_EVENT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
    0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}
_T = {name: code for code, name in EVENT_TYPE_NAMES.items()}
EV_IPL = _T["EV_IPL"]
EV_PLATFORM_CONFIG_FLAGS = _T["EV_PLATFORM_CONFIG_FLAGS"]

# Event types whose digest the PFP spec defines as the hash of the event data itself
# (PFP 10.4.1 Table 9 and 10.4.4): for these a mismatch means the data was altered.
DATA_DIGEST_TYPES = frozenset(
    _T[n]
    for n in (
        "EV_SEPARATOR",
        "EV_ACTION",
        "EV_EFI_ACTION",
        "EV_S_CRTM_VERSION",
        "EV_EFI_VARIABLE_DRIVER_CONFIG",
        "EV_EFI_VARIABLE_BOOT2",
        "EV_EFI_VARIABLE_AUTHORITY",
        "EV_EFI_GPT_EVENT",
    )
)

# Linux EFI stub tagged events (drivers/firmware/efi/libstub, EFISTUB_EVT_*).
TAGGED_EVENT_NAMES = {0x8F3B22EC: "linux-initrd", 0x8F3B22ED: "linux-load-options"}

GUID_SIZE = 16
MAX_LIST_ITEMS = 256
GRUB_KERNEL_CMDLINE_PREFIX = b"kernel_cmdline: "
GRUB_CMD_PREFIX = b"grub_cmd: "
TD_SHIM_DESCRIPTOR_SIZE = 16
TD_SHIM_PAYLOAD_INFO = "td_payload_info"
EFI_GPT_HEADER_SIZE = 92
EFI_GPT_NAME_SIZE = 72
EFI_GPT_ENTRY_MIN_SIZE = 128
EFI_PCI_ROOT_HID = 0x0A0341D0  # EISA "PNP0A03"


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"EV_UNKNOWN_{event_type:#010x}")


def format_guid(raw: bytes) -> str:
    """EFI_GUID bytes (first three fields little-endian) as the usual lower-case text form."""
    return str(uuid.UUID(bytes_le=raw))


def _text(raw: bytes) -> str:
    """ASCII/UTF-8 text up to the first NUL; undecodable bytes are escaped, never dropped."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _looks_utf16(raw: bytes) -> bool:
    return len(raw) >= 2 and len(raw) % 2 == 0 and raw[1::2].count(0) >= len(raw) // 4 and raw[1] == 0


def _utf16(raw: bytes) -> str:
    if len(raw) % 2:
        raw = raw[:-1]
    text = raw.decode("utf-16-le", "backslashreplace")
    return text.split("\x00", 1)[0]


def _text_or_utf16(raw: bytes) -> str:
    return _utf16(raw) if _looks_utf16(raw) else _text(raw)


def decode_event(event: Event) -> dict[str, ClaimValue]:
    """The decoded, JSON-shaped content of ``event.data`` (empty if the type is opaque)."""
    decoder = _DECODERS.get(event.event_type)
    if decoder is None:
        return {}
    try:
        return decoder(event.data)
    except ParseError as exc:
        return {"decode_error": exc.message}


# --- individual decoders -----------------------------------------------------------------


def _separator(data: bytes) -> dict[str, ClaimValue]:
    kinds = {b"\x00\x00\x00\x00": "normal", b"\xff\xff\xff\xff": "error"}
    return {"separator": kinds.get(data, "nonstandard")}


def _string(data: bytes) -> dict[str, ClaimValue]:
    return {"string": _text_or_utf16(data)}


def _ipl(data: bytes) -> dict[str, ClaimValue]:
    if data.startswith(GRUB_KERNEL_CMDLINE_PREFIX):
        return {"string": _text(data), "kernel_cmdline": _text(data[len(GRUB_KERNEL_CMDLINE_PREFIX) :])}
    if data.startswith(GRUB_CMD_PREFIX):
        return {"string": _text(data), "grub_cmd": _text(data[len(GRUB_CMD_PREFIX) :])}
    return {"string": _text_or_utf16(data)}


def _no_action(data: bytes) -> dict[str, ClaimValue]:
    return {"signature": _text(data[:16])}


def _tagged(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "TCG_PCClientTaggedEvent")
    tag = r.u32("taggedEventID")
    size = r.u32("taggedEventDataSize")
    payload = r.take(size, "taggedEventData")
    out: dict[str, ClaimValue] = {"tagged_event_id": tag, "tagged_event_data": _text_or_utf16(payload)}
    if tag in TAGGED_EVENT_NAMES:
        out["tagged_event_name"] = TAGGED_EVENT_NAMES[tag]
    return out


def _firmware_blob(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_PLATFORM_FIRMWARE_BLOB")
    return {"blob_base": r.u64("BlobBase"), "blob_length": r.u64("BlobLength")}


def _firmware_blob2(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_PLATFORM_FIRMWARE_BLOB2")
    desc = r.take(r.u8("BlobDescriptionSize"), "BlobDescription")
    return {"description": _text(desc), "blob_base": r.u64("BlobBase"), "blob_length": r.u64("BlobLength")}


def _handoff_tables(r: Reader) -> list[ClaimValue]:
    count = r.u64("NumberOfTables")
    if count > MAX_LIST_ITEMS or count * (GUID_SIZE + 8) > r.remaining:
        raise r.error(f"{count} tables do not fit in {r.remaining} bytes", "NumberOfTables")
    tables: list[ClaimValue] = []
    for i in range(count):
        guid = format_guid(r.take(GUID_SIZE, f"TableEntry[{i}].VendorGuid"))
        r.u64(f"TableEntry[{i}].VendorTable")
        tables.append(guid)
    return tables


def _handoff1(data: bytes) -> dict[str, ClaimValue]:
    return {"tables": _handoff_tables(Reader(data, "UEFI_HANDOFF_TABLE_POINTERS"))}


def _handoff2(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_HANDOFF_TABLE_POINTERS2")
    desc = r.take(r.u8("TableDescriptionSize"), "TableDescription")
    return {"description": _text(desc), "tables": _handoff_tables(r)}


def _platform_config(data: bytes) -> dict[str, ClaimValue]:
    # td-shim: TD_SHIM_PLATFORM_CONFIG_INFO = descriptor[16] + u32 length + data.
    if len(data) >= TD_SHIM_DESCRIPTOR_SIZE + 4 and b"\x00" in data[:TD_SHIM_DESCRIPTOR_SIZE]:
        r = Reader(data, "TD_SHIM_PLATFORM_CONFIG_INFO")
        descriptor = _text(r.take(TD_SHIM_DESCRIPTOR_SIZE, "Descriptor"))
        info = r.take(r.u32("InfoLength"), "Info")
        # The record is exactly Descriptor, InfoLength and Info: bytes after Info would be
        # hashed by the digest (which covers everything after InfoLength) but not shown.
        r.expect_end()
        out: dict[str, ClaimValue] = {"descriptor": descriptor, "info_length": len(info)}
        if descriptor == TD_SHIM_PAYLOAD_INFO:
            out["kernel_cmdline"] = _text(info)
        return out
    return {"string": _text_or_utf16(data)}


def _variable(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_VARIABLE_DATA")
    guid = format_guid(r.take(GUID_SIZE, "VariableName"))
    name_len = r.u64("UnicodeNameLength")
    data_len = r.u64("VariableDataLength")
    if name_len > r.remaining // 2:
        message = f"name of {name_len} characters does not fit in {r.remaining} bytes"
        raise r.error(message, "UnicodeNameLength")
    name = r.take(2 * name_len, "UnicodeName").decode("utf-16-le", "backslashreplace")
    value = r.take(data_len, "VariableData")
    out: dict[str, ClaimValue] = {"variable_guid": guid, "variable_name": name, "data_length": len(value)}
    if name in ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode") and len(value) == 1:
        out["value"] = value[0]
    elif name == "BootOrder" and len(value) % 2 == 0:
        numbers = [int.from_bytes(value[i : i + 2], "little") for i in range(0, len(value), 2)]
        out["boot_order"] = [f"Boot{n:04X}" for n in numbers]
    elif len(name) == 8 and name.startswith("Boot") and name[4:].isalnum():
        out.update(_load_option(value))
    elif value and all(32 <= b < 127 or b in (9, 10, 13) for b in value):
        out["value_text"] = value.decode("ascii")
    return out


def _load_option(data: bytes) -> dict[str, ClaimValue]:
    """EFI_LOAD_OPTION (UEFI 2.10, 3.1.3)."""
    r = Reader(data, "EFI_LOAD_OPTION")
    attributes = r.u32("Attributes")
    path_len = r.u16("FilePathListLength")
    chars = bytearray()
    while True:
        ch = r.take(2, "Description")
        if ch == b"\x00\x00":
            break
        chars += ch
    path = r.take(path_len, "FilePathList")
    return {
        "attributes": attributes,
        "description": bytes(chars).decode("utf-16-le", "backslashreplace"),
        "device_path": device_path_text(path),
    }


def _image_load(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_IMAGE_LOAD_EVENT")
    location = r.u64("ImageLocationInMemory")
    length = r.u64("ImageLengthInMemory")
    link = r.u64("ImageLinkTimeAddress")
    path = r.take(r.u64("LengthOfDevicePath"), "DevicePath")
    return {
        "image_location": location,
        "image_length": length,
        "image_link_time_address": link,
        "device_path": device_path_text(path),
    }


def _gpt(data: bytes) -> dict[str, ClaimValue]:
    r = Reader(data, "UEFI_GPT_DATA")
    header = Reader(r.take(EFI_GPT_HEADER_SIZE, "UEFIPartitionHeader"), "EFI_PARTITION_TABLE_HEADER")
    header.take(8 + 4 + 4 + 4 + 4 + 8 * 4, "fixed fields")
    disk_guid = format_guid(header.take(GUID_SIZE, "DiskGUID"))
    header.u64("PartitionEntryLBA")
    header.u32("NumberOfPartitionEntries")
    entry_size = header.u32("SizeOfPartitionEntry")
    count = r.u64("NumberOfPartitions")
    if entry_size < EFI_GPT_ENTRY_MIN_SIZE or count > MAX_LIST_ITEMS or count * entry_size > r.remaining:
        raise r.error(f"{count} partitions of {entry_size} bytes do not fit in {r.remaining} bytes")
    partitions: list[ClaimValue] = []
    for i in range(count):
        p = Reader(r.take(entry_size, f"Partitions[{i}]"), "EFI_PARTITION_ENTRY")
        type_guid = format_guid(p.take(GUID_SIZE, "PartitionTypeGUID"))
        unique_guid = format_guid(p.take(GUID_SIZE, "UniquePartitionGUID"))
        p.take(24, "LBAs and attributes")
        name = _utf16(p.take(EFI_GPT_NAME_SIZE, "PartitionName"))
        partitions.append({"type_guid": type_guid, "unique_guid": unique_guid, "name": name})
    return {"disk_guid": disk_guid, "partitions": partitions}


# --- UEFI device paths (UEFI 2.10, 10.3) -------------------------------------------------

MAX_DEVICE_PATH_NODES = 64
_END_TYPE = 0x7F


def device_path_text(data: bytes) -> str:
    """A text form of a device path close to EDK II's ``ConvertDevicePathToText``."""
    r = Reader(data, "EFI_DEVICE_PATH_PROTOCOL")
    parts: list[str] = []
    for i in range(MAX_DEVICE_PATH_NODES):
        if not r.remaining:
            break
        at = r.pos
        node_type = r.u8(f"node[{i}].Type")
        subtype = r.u8(f"node[{i}].SubType")
        length = r.u16(f"node[{i}].Length")
        if length < 4:
            raise r.error(f"got length {length}, expected at least 4", f"node[{i}].Length", at + 2)
        body = r.take(length - 4, f"node[{i}].data")
        if node_type == _END_TYPE:
            if subtype == 0xFF:
                break
            parts.append(",")
            continue
        parts.append(_node_text(node_type, subtype, body))
    else:
        raise r.error(f"more than {MAX_DEVICE_PATH_NODES} nodes")
    return "/".join(parts).replace("/,/", ",")


def _node_text(node_type: int, subtype: int, body: bytes) -> str:
    r = Reader(body, "device path node")
    if (node_type, subtype) == (1, 1):  # Hardware: PCI
        function, device = r.u8("Function"), r.u8("Device")
        return f"Pci({device:#x},{function:#x})"
    if (node_type, subtype) == (2, 1):  # ACPI
        hid, uid = r.u32("HID"), r.u32("UID")
        return f"PciRoot({uid:#x})" if hid == EFI_PCI_ROOT_HID else f"Acpi({hid:#010x},{uid:#x})"
    if (node_type, subtype) == (3, 0x17):  # Messaging: NVMe namespace
        nsid = r.u32("NamespaceId")
        return f"NVMe({nsid:#x},{r.take(8, 'EUI64').hex('-').upper()})"
    if (node_type, subtype) == (3, 2):  # Messaging: SCSI
        return f"Scsi({r.u16('Pun'):#x},{r.u16('Lun'):#x})"
    if (node_type, subtype) in ((1, 4), (3, 10), (4, 3)):  # vendor nodes
        prefix = {1: "VenHw", 3: "VenMsg", 4: "VenMedia"}[node_type]
        return f"{prefix}({format_guid(r.take(GUID_SIZE, 'Guid'))})"
    if (node_type, subtype) == (4, 1):  # Media: hard drive
        number, start, size = r.u32("PartitionNumber"), r.u64("PartitionStart"), r.u64("PartitionSize")
        signature = r.take(16, "Signature")
        fmt, sig_type = r.u8("MBRType"), r.u8("SignatureType")
        sig = format_guid(signature) if sig_type == 2 else f"{int.from_bytes(signature[:4], 'little'):#010x}"
        kind = {1: "MBR", 2: "GPT"}.get(fmt, str(fmt))
        return f"HD({number},{kind},{sig},{start:#x},{size:#x})"
    if (node_type, subtype) == (4, 4):  # Media: file path
        return _utf16(body)
    if (node_type, subtype) == (4, 6):  # Media: PIWG firmware file
        return f"FvFile({format_guid(r.take(GUID_SIZE, 'FvFileName'))})"
    if (node_type, subtype) == (4, 7):  # Media: PIWG firmware volume
        return f"Fv({format_guid(r.take(GUID_SIZE, 'FvName'))})"
    if (node_type, subtype) == (4, 8):  # Media: relative offset range
        r.u32("Reserved")
        return f"Offset({r.u64('StartingOffset'):#x},{r.u64('EndingOffset'):#x})"
    return f"Path({node_type},{subtype},{body.hex()})"


_DECODERS = {
    _T["EV_NO_ACTION"]: _no_action,
    _T["EV_SEPARATOR"]: _separator,
    _T["EV_ACTION"]: _string,
    _T["EV_EFI_ACTION"]: _string,
    _T["EV_POST_CODE"]: _string,
    _T["EV_S_CRTM_VERSION"]: _string,
    _T["EV_IPL"]: _ipl,
    _T["EV_EVENT_TAG"]: _tagged,
    _T["EV_PLATFORM_CONFIG_FLAGS"]: _platform_config,
    _T["EV_EFI_PLATFORM_FIRMWARE_BLOB"]: _firmware_blob,
    _T["EV_EFI_PLATFORM_FIRMWARE_BLOB2"]: _firmware_blob2,
    _T["EV_EFI_HANDOFF_TABLES"]: _handoff1,
    _T["EV_EFI_HANDOFF_TABLES2"]: _handoff2,
    _T["EV_EFI_VARIABLE_DRIVER_CONFIG"]: _variable,
    _T["EV_EFI_VARIABLE_BOOT"]: _variable,
    _T["EV_EFI_VARIABLE_BOOT2"]: _variable,
    _T["EV_EFI_VARIABLE_AUTHORITY"]: _variable,
    _T["EV_EFI_BOOT_SERVICES_APPLICATION"]: _image_load,
    _T["EV_EFI_BOOT_SERVICES_DRIVER"]: _image_load,
    _T["EV_EFI_RUNTIME_SERVICES_DRIVER"]: _image_load,
    _T["EV_EFI_GPT_EVENT"]: _gpt,
}
