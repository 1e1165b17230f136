"""A minimal, strict TPM 2.0 command client (the guest side of vTPM attestation).

References: TCG "Trusted Platform Module Library" Family 2.0, Level 00 Revision 01.59 (and
later): Part 1 "Architecture" (command/response framing, authorization areas), Part 2
"Structures" (constants and marshalled structures), Part 3 "Commands" (one section per
command). Section numbers below are those of revision 1.59.

The client speaks to the TPM through a :class:`TpmTransport` (one method, ``transmit``):

- :class:`DeviceTransport`: a TPM character device, by default ``/dev/tpmrm0`` (the Linux
  kernel's resource manager): one ``write`` of a command, one response read back.
- :class:`TcpTransport`: swtpm's TCP command socket (raw TPM commands; tests).

:func:`transport_from_env` picks one for ``confide run --tee gce-tpm``: ``$CONFIDE_TPM``, a device
path or ``swtpm:HOST:PORT`` (development and tests: a software TPM protects nothing, and its
quotes verify only under a test PKI's root, which only an in-process verifier can be given).

Only password authorizations with an empty password (``TPM_RS_PW``, Part 1 §19.6.6) are used:
that is what an Azure CVM's vTPM expects for the owner hierarchy and its NV indices.

Responses are hostile input: the tag, the size and every length are checked against the bytes
received, nothing may be left over, and a non-zero response code becomes a
:class:`TpmCommandError` (a :class:`~confide.errors.StorageError`) whose message names the
decoded code and the command: ``TPM returned TPM_RC_HANDLE (handle 1) for TPM2_NV_ReadPublic``.
The structures a verifier reads too (``TPMT_PUBLIC``, ``TPMT_SIGNATURE``; ``TPMS_ATTEST`` is
returned as bytes) are parsed with :mod:`confide.evidence.tpm`, the verifier's own parsers.

Errors:

- :class:`~confide.errors.UsageError`: the device is absent or not accessible (permission).
- :class:`~confide.errors.StorageError`: I/O on the device or socket failed;
  :class:`TpmCommandError` (a subclass) when the TPM answered with an error code.
- :class:`~confide.errors.ParseError`: a malformed response.

``evict_control`` exists so that tests can provision an emulated TPM like Azure's paravisor
does. On Azure the runtime only reads NV indices, writes its report data, reads PCRs and
quotes; on GCE it also creates the AK from Google's template (``create_primary``) and flushes
it (``flush_context``).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from confide.errors import ParseError, StorageError, UsageError
from confide.evidence._reader import BigEndianReader
from confide.evidence.tpm import TpmPublic, parse_public, parse_signature

__all__ = [
    "DEFAULT_TPM_DEVICE",
    "PCR_COUNT",
    "TPMA_NV_AUTHREAD",
    "TPMA_NV_AUTHWRITE",
    "TPMA_NV_OWNERREAD",
    "TPMA_NV_OWNERWRITE",
    "TPMA_NV_PPREAD",
    "TPMA_NV_WRITTEN",
    "TPM_RH_ENDORSEMENT",
    "TPM_RH_OWNER",
    "Alg",
    "CommandCode",
    "DeviceTransport",
    "NvPublic",
    "TcpTransport",
    "Tpm",
    "TpmCommandError",
    "TpmQuote",
    "TpmTransport",
    "describe_rc",
    "transport_from_env",
]

DEFAULT_TPM_DEVICE = Path("/dev/tpmrm0")
TPM_ENV = "CONFIDE_TPM"
PCR_COUNT = 24  # PC Client Platform TPM Profile: 24 PCRs per bank

_HEADER = struct.Struct(">HII")  # Part 1 §18.2: tag, commandSize/responseSize, commandCode/responseCode
_HEADER_SIZE = _HEADER.size
# A response larger than this is not a TPM response (TPM_PT_MAX_RESPONSE_SIZE is 4096 on
# common TPMs and the kernel's TPM_BUFSIZE is 4096); read buffers are sized by it.
_MAX_RESPONSE_SIZE = 1 << 16

# Part 2 §6.9 TPM_ST
TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
# Part 2 §6.5 TPM_SU
TPM_SU_CLEAR = 0x0000
# Part 2 §6.12 TPM_CAP and §6.13 TPM_PT
TPM_CAP_TPM_PROPERTIES = 0x00000006
TPM_PT_FIXED = 0x100
TPM_PT_NV_BUFFER_MAX = TPM_PT_FIXED + 44
# Part 2 §7.4 TPM_RH and §7.3 TPM_HT
TPM_RH_OWNER = 0x40000001
TPM_RH_NULL = 0x40000007
TPM_RS_PW = 0x40000009
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RH_PLATFORM = 0x4000000C
_TPM_HT_NV_INDEX = 0x01
_TPM_HT_PERSISTENT = 0x81
# Part 2 §13.4 TPMA_NV (bits used here)
TPMA_NV_PPWRITE = 1 << 0
TPMA_NV_OWNERWRITE = 1 << 1
TPMA_NV_AUTHWRITE = 1 << 2
TPMA_NV_PPREAD = 1 << 16
TPMA_NV_OWNERREAD = 1 << 17
TPMA_NV_AUTHREAD = 1 << 18
TPMA_NV_WRITTEN = 1 << 29
# Part 2 §10.13.2 / §15: TPM2B_DATA holds at most sizeof(TPMT_HA) (a SHA-512 digest + alg).
_MAX_QUALIFYING_DATA = 64
# Part 2 §10.6.1: TPMS_PCR_SELECTION.sizeofSelect is at least PCR_SELECT_MIN (3 for 24 PCRs).
_PCR_SELECT_SIZE = 3
# Part 2 §10.9.2 TPML_DIGEST: at most 8 digests in one list.
_MAX_DIGESTS_PER_LIST = 8
_RETRY_ATTEMPTS = 5


class CommandCode(enum.IntEnum):
    """Part 2 §6.5.2 TPM_CC (the commands this client sends)."""

    EvictControl = 0x120
    NV_UndefineSpace = 0x122
    NV_DefineSpace = 0x12A
    CreatePrimary = 0x131
    NV_Write = 0x137
    Startup = 0x144
    NV_Read = 0x14E
    Quote = 0x158
    FlushContext = 0x165
    NV_ReadPublic = 0x169
    ReadPublic = 0x173
    GetCapability = 0x17A
    PCR_Read = 0x17E


class Alg(enum.IntEnum):
    """Part 2 §6.3 TPM_ALG_ID (the algorithms this client understands)."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    KEYEDHASH = 0x0008
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    ECC = 0x0023
    SYMCIPHER = 0x0025


_HASHES: dict[int, str] = {Alg.SHA1: "sha1", Alg.SHA256: "sha256", Alg.SHA384: "sha384", Alg.SHA512: "sha512"}


# --- response codes (Part 2 §6.6) ---------------------------------------------------------------

_RC_FMT1 = 0x080
_RC_VER1 = 0x100
_RC_WARN = 0x900
_RC_FMT0_NAMES: dict[int, str] = {
    0x000: "TPM_RC_INITIALIZE",  # RC_VER1 + 0x000
    0x001: "TPM_RC_FAILURE",
    0x003: "TPM_RC_SEQUENCE",
    0x00B: "TPM_RC_PRIVATE",
    0x019: "TPM_RC_HMAC",
    0x020: "TPM_RC_DISABLED",
    0x021: "TPM_RC_EXCLUSIVE",
    0x024: "TPM_RC_AUTH_TYPE",
    0x025: "TPM_RC_AUTH_MISSING",
    0x026: "TPM_RC_POLICY",
    0x027: "TPM_RC_PCR",
    0x028: "TPM_RC_PCR_CHANGED",
    0x02D: "TPM_RC_UPGRADE",
    0x02E: "TPM_RC_TOO_MANY_CONTEXTS",
    0x02F: "TPM_RC_AUTH_UNAVAILABLE",
    0x030: "TPM_RC_REBOOT",
    0x031: "TPM_RC_UNBALANCED",
    0x042: "TPM_RC_COMMAND_SIZE",
    0x043: "TPM_RC_COMMAND_CODE",
    0x044: "TPM_RC_AUTHSIZE",
    0x045: "TPM_RC_AUTH_CONTEXT",
    0x046: "TPM_RC_NV_RANGE",
    0x047: "TPM_RC_NV_SIZE",
    0x048: "TPM_RC_NV_LOCKED",
    0x049: "TPM_RC_NV_AUTHORIZATION",
    0x04A: "TPM_RC_NV_UNINITIALIZED",
    0x04B: "TPM_RC_NV_SPACE",
    0x04C: "TPM_RC_NV_DEFINED",
    0x050: "TPM_RC_BAD_CONTEXT",
    0x051: "TPM_RC_CPHASH",
    0x052: "TPM_RC_PARENT",
    0x053: "TPM_RC_NEEDS_TEST",
    0x054: "TPM_RC_NO_RESULT",
    0x055: "TPM_RC_SENSITIVE",
}
_RC_WARN_NAMES: dict[int, str] = {
    0x001: "TPM_RC_CONTEXT_GAP",
    0x002: "TPM_RC_OBJECT_MEMORY",
    0x003: "TPM_RC_SESSION_MEMORY",
    0x004: "TPM_RC_MEMORY",
    0x005: "TPM_RC_SESSION_HANDLES",
    0x006: "TPM_RC_OBJECT_HANDLES",
    0x007: "TPM_RC_LOCALITY",
    0x008: "TPM_RC_YIELDED",
    0x009: "TPM_RC_CANCELED",
    0x00A: "TPM_RC_TESTING",
    **{0x010 + i: f"TPM_RC_REFERENCE_H{i}" for i in range(7)},
    **{0x018 + i: f"TPM_RC_REFERENCE_S{i}" for i in range(7)},
    0x020: "TPM_RC_NV_RATE",
    0x021: "TPM_RC_LOCKOUT",
    0x022: "TPM_RC_RETRY",
    0x023: "TPM_RC_NV_UNAVAILABLE",
    0x07F: "TPM_RC_NOT_USED",
}
_RC_FMT1_NAMES: dict[int, str] = {
    0x01: "TPM_RC_ASYMMETRIC",
    0x02: "TPM_RC_ATTRIBUTES",
    0x03: "TPM_RC_HASH",
    0x04: "TPM_RC_VALUE",
    0x05: "TPM_RC_HIERARCHY",
    0x07: "TPM_RC_KEY_SIZE",
    0x08: "TPM_RC_MGF",
    0x09: "TPM_RC_MODE",
    0x0A: "TPM_RC_TYPE",
    0x0B: "TPM_RC_HANDLE",
    0x0C: "TPM_RC_KDF",
    0x0D: "TPM_RC_RANGE",
    0x0E: "TPM_RC_AUTH_FAIL",
    0x0F: "TPM_RC_NONCE",
    0x10: "TPM_RC_PP",
    0x12: "TPM_RC_SCHEME",
    0x15: "TPM_RC_SIZE",
    0x16: "TPM_RC_SYMMETRIC",
    0x17: "TPM_RC_TAG",
    0x18: "TPM_RC_SELECTOR",
    0x1A: "TPM_RC_INSUFFICIENT",
    0x1B: "TPM_RC_SIGNATURE",
    0x1C: "TPM_RC_KEY",
    0x1D: "TPM_RC_POLICY_FAIL",
    0x1F: "TPM_RC_INTEGRITY",
    0x20: "TPM_RC_TICKET",
    0x21: "TPM_RC_RESERVED_BITS",
    0x22: "TPM_RC_BAD_AUTH",
    0x23: "TPM_RC_EXPIRED",
    0x24: "TPM_RC_POLICY_CC",
    0x25: "TPM_RC_BINDING",
    0x26: "TPM_RC_CURVE",
    0x27: "TPM_RC_ECC_POINT",
}
# Warnings after which Part 3 §5 (and Part 1 §18.11) says the command may simply be resent.
_RETRYABLE = frozenset({_RC_WARN + 0x008, _RC_WARN + 0x00A, _RC_WARN + 0x022})


def _rc_name(rc: int) -> tuple[str, str]:
    """(base name, qualifier) of a non-zero response code; Part 2 §6.6.1 Figure 16."""
    if rc >> 16:
        # Bits above 15 are not the TPM's: the TSS "layer" of the code (e.g. a resource manager).
        return f"response code {rc:#010x} from software layer {rc >> 16:#x}", ""
    if rc & _RC_FMT1:
        # Format one: bits 0-5 error number, bit 6 P (parameter), bits 8-11 N.
        name = _RC_FMT1_NAMES.get(rc & 0x3F, f"TPM_RC_{(rc & 0x3F) | _RC_FMT1:#05x}")
        n = (rc >> 8) & 0xF
        if rc & 0x40:
            where = f"parameter {n}"
        elif n & 0x8:
            where = f"session {n & 0x7}"
        elif n:
            where = f"handle {n}"
        else:
            where = ""
        return name, where
    if not rc & _RC_VER1:
        return f"TPM 1.2 response code {rc:#x}", ""
    if rc & 0x400:
        return f"vendor-defined response code {rc:#x}", ""
    if rc & 0x800:
        return _RC_WARN_NAMES.get(rc & 0x7F, f"TPM warning {rc:#x}"), ""
    return _RC_FMT0_NAMES.get(rc & 0x7F, f"TPM error {rc:#x}"), ""


def describe_rc(rc: int) -> str:
    """A readable name of a TPM response code, e.g. ``TPM_RC_HANDLE (handle 1)``."""
    if rc == 0:
        return "TPM_RC_SUCCESS"
    name, where = _rc_name(rc)
    return f"{name} ({where})" if where else name


class TpmCommandError(StorageError):
    """The TPM answered a command with a non-zero response code."""

    def __init__(self, command: str, rc: int) -> None:
        self.command = command
        self.rc = rc
        self.name = _rc_name(rc)[0]
        super().__init__(f"TPM returned {describe_rc(rc)} ({rc:#x}) for {command}")


# --- marshalling (Part 2 §4-5: big-endian, TPM2B = UINT16 size + bytes) --------------------------


def _u16(v: int) -> bytes:
    return struct.pack(">H", v)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def _tpm2b(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise UsageError(f"a TPM2B buffer holds at most 65535 bytes, got {len(data)}")
    return _u16(len(data)) + data


def _pcr_selection(hash_alg: int, pcrs: Iterable[int]) -> bytes:
    """TPML_PCR_SELECTION with one TPMS_PCR_SELECTION (Part 2 §10.6.2, §10.9.7)."""
    bitmap = bytearray(_PCR_SELECT_SIZE)
    for pcr in pcrs:
        if not 0 <= pcr < PCR_COUNT:
            raise UsageError(f"PCR index: got {pcr}, expected 0..{PCR_COUNT - 1}")
        bitmap[pcr // 8] |= 1 << (pcr % 8)
    return _u32(1) + _u16(hash_alg) + bytes([_PCR_SELECT_SIZE]) + bytes(bitmap)


class _Reader(BigEndianReader):
    """Bounds-checked reader of one marshalled response structure (the verifier's reader, plus
    unbounded TPM2B fields and TPM2B-wrapped structures)."""

    __slots__ = ()

    def tpm2b(self, field: str) -> bytes:
        return self.take(self.u16(f"{field}.size"), field)

    def sized(self, field: str) -> _Reader:
        """A reader over the content of a TPM2B-wrapped structure (e.g. TPM2B_PUBLIC)."""
        size = self.u16(f"{field}.size")
        start = self.base + self.pos
        return _Reader(self.take(size, field), f"{self.structure} {field}", base=start)


def _check_name(name: bytes, name_alg: int, public_area: bytes, what: str) -> None:
    """Part 1 §16: the Name of an entity with a public area is nameAlg || H_nameAlg(public area)."""
    hash_name = _HASHES.get(name_alg)
    if hash_name is None:
        raise ParseError(f"got nameAlg {name_alg:#06x}, expected one of SHA-1/256/384/512", structure=what)
    expected = _u16(name_alg) + hashlib.new(hash_name, public_area).digest()
    if name != expected:
        raise ParseError(
            f"the name {name.hex()} is not nameAlg || H(public area) = {expected.hex()}", structure=what
        )


# --- parsed structures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvPublic:
    """TPMS_NV_PUBLIC (Part 2 §13.5) and the index's Name."""

    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int
    name: bytes


def _read_pcr_selection(rd: _Reader, field: str) -> tuple[tuple[int, frozenset[int]], ...]:
    count = rd.u32(f"{field}.count")
    if count > 16:  # Part 2 §10.9.7: at most HASH_COUNT entries
        raise rd.error(f"got {count} PCR selections, expected at most 16", f"{field}.count")
    out = []
    for i in range(count):
        alg = rd.u16(f"{field}[{i}].hash")
        size = rd.u8(f"{field}[{i}].sizeofSelect")
        bitmap = rd.take(size, f"{field}[{i}].pcrSelect")
        pcrs = frozenset(b * 8 + bit for b, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1)
        out.append((alg, pcrs))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TpmQuote:
    """What TPM2_Quote returned: the TPMS_ATTEST (TPM2B_ATTEST content) and the TPMT_SIGNATURE."""

    attest: bytes
    signature: bytes


# --- transports ----------------------------------------------------------------------------------


class TpmTransport(Protocol):
    """Sends one marshalled command and returns the TPM's whole response."""

    def transmit(self, command: bytes) -> bytes: ...


def _response_size(head: bytes) -> int:
    size = int.from_bytes(head[2:6], "big")
    if not _HEADER_SIZE <= size <= _MAX_RESPONSE_SIZE:
        raise ParseError(
            f"got responseSize {size}, expected {_HEADER_SIZE}..{_MAX_RESPONSE_SIZE}",
            structure="TPM response",
            field="responseSize",
        )
    return size


def _open_device(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise UsageError(f"TPM device {str(path)!r} is not a character device")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _device_error(path: Path, exc: OSError) -> UsageError | StorageError:
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return UsageError(f"TPM device {str(path)!r} does not exist: this machine has no (v)TPM")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"TPM device {str(path)!r}: permission denied (needs root or the tss group)")
    return StorageError(f"TPM device {str(path)!r}: {exc.strerror or exc}")


class DeviceTransport:
    """A TPM character device: write one command, read its response (``/dev/tpmrm0``).

    The kernel's ``tpmrm`` device gives each open file its own resource-manager context, so the
    descriptor is opened once (lazily) and kept until :meth:`close`. ``opener`` (a path to a
    file descriptor) is injectable for tests; the default refuses anything but a character
    device.
    """

    def __init__(self, path: Path | None = None, *, opener: Callable[[Path], int] = _open_device) -> None:
        self.path = Path(path) if path is not None else DEFAULT_TPM_DEVICE
        self._opener = opener
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        if self._fd is None:
            try:
                self._fd = self._opener(self.path)
            except OSError as exc:
                raise _device_error(self.path, exc) from None
        return self._fd

    def transmit(self, command: bytes) -> bytes:
        with self._lock:
            fd = self._descriptor()
            try:
                written = os.write(fd, command)
                if written != len(command):
                    raise StorageError(
                        f"TPM device {str(self.path)!r}: short write, {written} of {len(command)} bytes"
                    )
                response = os.read(fd, _MAX_RESPONSE_SIZE)
                # The kernel returns the whole response to one read; a partial read (allowed
                # since Linux 4.20) is completed up to the size the header announces.
                while len(response) < _HEADER_SIZE or len(response) < _response_size(response):
                    more = os.read(fd, _MAX_RESPONSE_SIZE - len(response))
                    if not more:
                        raise ParseError(
                            f"the device closed after {len(response)} bytes of a response",
                            structure="TPM response",
                        )
                    response += more
            except OSError as exc:
                raise _device_error(self.path, exc) from None
            return response

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)


class TcpTransport:
    """swtpm's TCP command socket (``swtpm socket --server type=tcp,port=N``): raw commands."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise UsageError(
                    f"TPM socket {self.host}:{self.port}: cannot connect: {exc.strerror or exc}"
                ) from None
        return self._sock

    def _recv_exactly(self, sock: socket.socket, n: int) -> bytes:
        chunks = []
        while n:
            chunk = sock.recv(n)
            if not chunk:
                raise ParseError(
                    "the TPM socket closed in the middle of a response", structure="TPM response"
                )
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def transmit(self, command: bytes) -> bytes:
        with self._lock:
            sock = self._socket()
            try:
                sock.sendall(command)
                head = self._recv_exactly(sock, _HEADER_SIZE)
                return head + self._recv_exactly(sock, _response_size(head) - _HEADER_SIZE)
            except OSError as exc:
                self._close()
                raise StorageError(f"TPM socket {self.host}:{self.port}: {exc.strerror or exc}") from None
            except ParseError:
                self._close()
                raise

    def _close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._close()


def transport_from_env(environ: Mapping[str, str] | None = None) -> TpmTransport:
    """``$CONFIDE_TPM``: a TPM character device's path, or ``swtpm:HOST:PORT`` (swtpm's TCP
    command port); unset or empty: :data:`DEFAULT_TPM_DEVICE`. Anything else: UsageError."""
    value = (os.environ if environ is None else environ).get(TPM_ENV, "")
    if not value:
        return DeviceTransport()
    if value.startswith("swtpm:"):
        host, sep, port = value[len("swtpm:") :].rpartition(":")
        if not sep or not host or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(f"${TPM_ENV}: got {value[:80]!r}, expected swtpm:HOST:PORT or a device path")
        return TcpTransport(host, int(port))
    if not value.startswith("/"):
        raise UsageError(
            f"${TPM_ENV}: got {value[:80]!r}, expected an absolute device path or swtpm:HOST:PORT"
        )
    return DeviceTransport(Path(value))


# --- the client ----------------------------------------------------------------------------------

# Part 1 §19.6.6 / Part 2 §10.13.2 TPMS_AUTH_COMMAND for a password session with an empty
# password: sessionHandle TPM_RS_PW, empty nonceCaller, sessionAttributes continueSession,
# empty hmac (the password).
_PW_AUTH = _u32(TPM_RS_PW) + _u16(0) + b"\x01" + _u16(0)


class Tpm:
    """TPM 2.0 commands over a :class:`TpmTransport` (not thread-safe: one caller at a time)."""

    def __init__(self, transport: TpmTransport, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.transport = transport
        self._sleep = sleep
        self._nv_buffer_max: int | None = None

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def _execute(
        self,
        cc: CommandCode,
        handles: Sequence[int] = (),
        params: bytes = b"",
        *,
        sessions: int = 0,
        response_handles: int = 0,
    ) -> tuple[tuple[int, ...], _Reader]:
        """Send a command (Part 1 §18.2-18.9) and return the response's handles and a reader
        over its parameter area (the caller reads it to the end)."""
        what = f"TPM2_{cc.name}"
        body = b"".join(_u32(h) for h in handles)
        if sessions:
            auth = _PW_AUTH * sessions
            body += _u32(len(auth)) + auth
        body += params
        tag = TPM_ST_SESSIONS if sessions else TPM_ST_NO_SESSIONS
        command = _HEADER.pack(tag, _HEADER_SIZE + len(body), cc) + body
        for attempt in range(_RETRY_ATTEMPTS):
            response = self.transport.transmit(command)
            structure = f"{what} response"
            if len(response) < _HEADER_SIZE:
                raise ParseError(
                    f"got {len(response)} bytes, expected at least the {_HEADER_SIZE}-byte header",
                    structure=structure,
                )
            rtag, size, rc = _HEADER.unpack_from(response)
            if size != len(response):
                raise ParseError(
                    f"responseSize says {size} bytes, got {len(response)}",
                    structure=structure,
                    field="responseSize",
                )
            if rc != 0:
                # Part 1 §18.10: an error response is the header alone, tagged TPM_ST_NO_SESSIONS.
                if rtag != TPM_ST_NO_SESSIONS or size != _HEADER_SIZE:
                    raise ParseError(
                        f"an error response ({describe_rc(rc)}) with tag {rtag:#06x} and {size} bytes, "
                        f"expected tag {TPM_ST_NO_SESSIONS:#06x} and {_HEADER_SIZE} bytes",
                        structure=structure,
                    )
                if rc in _RETRYABLE and attempt + 1 < _RETRY_ATTEMPTS:
                    self._sleep(0.05 * 2**attempt)
                    continue
                raise TpmCommandError(what, rc)
            if rtag != tag:
                raise ParseError(
                    f"got tag {rtag:#06x}, expected {tag:#06x}", structure=structure, field="tag"
                )
            rd = _Reader(response[_HEADER_SIZE:], structure, base=_HEADER_SIZE)
            out_handles = tuple(rd.u32(f"handle[{i}]") for i in range(response_handles))
            if not sessions:
                return out_handles, rd
            # Part 1 §18.9: parameterSize, parameters, then one TPMS_AUTH_RESPONSE per session.
            param_size = rd.u32("parameterSize")
            start = rd.base + rd.pos
            params_out = rd.take(param_size, "parameters")
            for i in range(sessions):
                if rd.tpm2b(f"auth[{i}].nonceTPM"):
                    raise rd.error("a password session's response carries a nonce", f"auth[{i}].nonceTPM")
                rd.u8(f"auth[{i}].sessionAttributes")
                if rd.tpm2b(f"auth[{i}].hmac"):
                    raise rd.error("a password session's response carries an HMAC", f"auth[{i}].hmac")
            rd.expect_end()
            return out_handles, _Reader(params_out, structure, base=start)
        raise AssertionError("unreachable")  # pragma: no cover

    # TPM2_Startup: Part 3 §9.3
    def startup(self) -> None:
        _, rd = self._execute(CommandCode.Startup, params=_u16(TPM_SU_CLEAR))
        rd.expect_end()

    # TPM2_GetCapability: Part 3 §30.2 (TPM_CAP_TPM_PROPERTIES, one property)
    def get_tpm_property(self, prop: int) -> int:
        params = _u32(TPM_CAP_TPM_PROPERTIES) + _u32(prop) + _u32(1)
        _, rd = self._execute(CommandCode.GetCapability, params=params)
        more = rd.u8("moreData")
        if more > 1:
            raise rd.error(f"got {more}, expected TPMI_YES_NO", "moreData")
        capability = rd.u32("capabilityData.capability")
        if capability != TPM_CAP_TPM_PROPERTIES:
            raise rd.error(f"got capability {capability:#x}, expected TPM_CAP_TPM_PROPERTIES", "capability")
        count = rd.u32("tpmProperties.count")
        if count != 1:
            raise rd.error(f"got {count} properties, expected the 1 requested", "tpmProperties.count")
        got = rd.u32("tpmProperties[0].property")
        value = rd.u32("tpmProperties[0].value")
        rd.expect_end()
        if got != prop:
            raise ParseError(
                f"got property {got:#x}, expected {prop:#x} (the TPM does not report it)",
                structure="TPM2_GetCapability response",
            )
        return value

    def nv_buffer_max(self) -> int:
        """TPM_PT_NV_BUFFER_MAX: the most bytes one TPM2_NV_Read / TPM2_NV_Write moves."""
        if self._nv_buffer_max is None:
            value = self.get_tpm_property(TPM_PT_NV_BUFFER_MAX)
            if not 1 <= value <= 0xFFFF:
                raise ParseError(f"got TPM_PT_NV_BUFFER_MAX {value}, expected 1..65535")
            self._nv_buffer_max = value
        return self._nv_buffer_max

    # TPM2_NV_ReadPublic: Part 3 §31.6
    def nv_read_public(self, index: int) -> NvPublic:
        _, rd = self._execute(CommandCode.NV_ReadPublic, (index,))
        pub = rd.sized("nvPublic")
        got = pub.u32("nvIndex")
        name_alg = pub.u16("nameAlg")
        attributes = pub.u32("attributes")
        policy = pub.tpm2b("authPolicy")
        size = pub.u16("dataSize")
        pub.expect_end()
        name = rd.tpm2b("nvName")
        rd.expect_end()
        if got != index:
            raise ParseError(f"got NV index {got:#010x}, expected {index:#010x}", structure="TPMS_NV_PUBLIC")
        _check_name(name, name_alg, pub.data, "TPM2_NV_ReadPublic response")
        return NvPublic(got, name_alg, attributes, policy, size, name)

    # TPM2_NV_Read: Part 3 §31.13, in chunks of TPM_PT_NV_BUFFER_MAX
    def nv_read(self, index: int, size: int | None = None, *, auth: int = TPM_RH_OWNER) -> bytes:
        if size is None:
            size = self.nv_read_public(index).data_size
        chunk_max = self.nv_buffer_max()
        out = bytearray()
        while len(out) < size:
            want = min(chunk_max, size - len(out))
            params = _u16(want) + _u16(len(out))
            _, rd = self._execute(CommandCode.NV_Read, (auth, index), params, sessions=1)
            data = rd.tpm2b("data")
            rd.expect_end()
            if len(data) != want:
                raise ParseError(
                    f"got {len(data)} bytes at offset {len(out)}, expected {want}",
                    structure="TPM2_NV_Read response",
                    field="data",
                )
            out += data
        return bytes(out)

    # TPM2_NV_Write: Part 3 §31.7, in chunks of TPM_PT_NV_BUFFER_MAX
    def nv_write(self, index: int, data: bytes, *, offset: int = 0, auth: int = TPM_RH_OWNER) -> None:
        if not data:
            raise UsageError("TPM2_NV_Write: no data to write")
        chunk_max = self.nv_buffer_max()
        for done in range(0, len(data), chunk_max):
            chunk = data[done : done + chunk_max]
            _, rd = self._execute(
                CommandCode.NV_Write, (auth, index), _tpm2b(chunk) + _u16(offset + done), sessions=1
            )
            rd.expect_end()

    # TPM2_NV_DefineSpace: Part 3 §31.3 (empty authValue)
    def nv_define_space(
        self,
        index: int,
        size: int,
        attributes: int,
        *,
        auth: int = TPM_RH_OWNER,
        name_alg: int = Alg.SHA256,
        auth_policy: bytes = b"",
    ) -> None:
        if index >> 24 != _TPM_HT_NV_INDEX:
            raise UsageError(f"NV index: got {index:#010x}, expected 0x01xxxxxx")
        public = _u32(index) + _u16(name_alg) + _u32(attributes) + _tpm2b(auth_policy) + _u16(size)
        _, rd = self._execute(CommandCode.NV_DefineSpace, (auth,), _tpm2b(b"") + _tpm2b(public), sessions=1)
        rd.expect_end()

    # TPM2_NV_UndefineSpace: Part 3 §31.4
    def nv_undefine_space(self, index: int, *, auth: int = TPM_RH_OWNER) -> None:
        _, rd = self._execute(CommandCode.NV_UndefineSpace, (auth, index), sessions=1)
        rd.expect_end()

    # TPM2_ReadPublic: Part 3 §12.4
    def read_public(self, handle: int) -> TpmPublic:
        _, rd = self._execute(CommandCode.ReadPublic, (handle,))
        area = self._read_public_area(rd, "outPublic")
        name = rd.tpm2b("name")
        rd.tpm2b("qualifiedName")
        rd.expect_end()
        _check_name(name, area.name_alg, area.raw, "TPM2_ReadPublic response")
        return area

    @staticmethod
    def _read_public_area(rd: _Reader, field: str) -> TpmPublic:
        # TPM2B_PUBLIC: the TPMT_PUBLIC parsed as the verifier parses it (confide.evidence.tpm).
        return parse_public(rd.sized(field).data)

    # TPM2_PCR_Read: Part 3 §22.4, repeated until every requested PCR was returned
    def pcr_read(
        self, pcrs: Sequence[int] = tuple(range(PCR_COUNT)), hash_alg: int = Alg.SHA256
    ) -> list[bytes]:
        """The values of ``pcrs`` in one bank, in the order given; all read under one
        pcrUpdateCounter (if a PCR changes between two reads, the whole read starts again)."""
        digest_size = hashlib.new(_HASHES[hash_alg]).digest_size
        wanted = set(pcrs)
        for _ in range(_RETRY_ATTEMPTS):
            values: dict[int, bytes] = {}
            counter: int | None = None
            while len(values) < len(wanted):
                remaining = sorted(wanted - values.keys())
                _, rd = self._execute(CommandCode.PCR_Read, params=_pcr_selection(hash_alg, remaining))
                update = rd.u32("pcrUpdateCounter")
                selection = _read_pcr_selection(rd, "pcrSelectionOut")
                count = rd.u32("pcrValues.count")
                if count > _MAX_DIGESTS_PER_LIST:
                    raise rd.error(
                        f"got {count} digests, expected at most {_MAX_DIGESTS_PER_LIST}", "pcrValues"
                    )
                digests = [rd.tpm2b(f"pcrValues[{i}]") for i in range(count)]
                rd.expect_end()
                returned = sorted(p for alg, sel in selection if alg == hash_alg for p in sel)
                if any(alg != hash_alg for alg, sel in selection if sel) or not set(returned) <= set(
                    remaining
                ):
                    raise ParseError(
                        f"returned PCRs {returned} outside the requested {remaining}",
                        structure="TPM2_PCR_Read response",
                    )
                if len(returned) != count or any(len(d) != digest_size for d in digests):
                    raise ParseError(
                        f"{len(returned)} PCRs selected but {count} digests of sizes "
                        f"{[len(d) for d in digests]}, expected {digest_size}-byte digests",
                        structure="TPM2_PCR_Read response",
                    )
                if not returned:
                    raise ParseError(
                        f"no PCR returned for {remaining}: the TPM has no such PCRs in this bank",
                        structure="TPM2_PCR_Read response",
                    )
                if counter is not None and update != counter:
                    break  # a PCR changed between two reads: read all again
                counter = update
                # Part 3 §22.4.1: digests are in PCR order of the returned selection.
                values.update(zip(returned, digests, strict=True))
            else:
                return [values[p] for p in pcrs]
        raise StorageError("TPM2_PCR_Read: the PCRs kept changing while being read")

    # TPM2_Quote: Part 3 §18.4 (inScheme TPM_ALG_NULL: the key's own scheme)
    def quote(
        self,
        sign_handle: int,
        qualifying_data: bytes,
        pcrs: Sequence[int] = tuple(range(PCR_COUNT)),
        hash_alg: int = Alg.SHA256,
    ) -> TpmQuote:
        if len(qualifying_data) > _MAX_QUALIFYING_DATA:
            raise UsageError(f"qualifyingData: got {len(qualifying_data)} bytes, expected at most 64")
        params = _tpm2b(qualifying_data) + _u16(Alg.NULL) + _pcr_selection(hash_alg, pcrs)
        _, rd = self._execute(CommandCode.Quote, (sign_handle,), params, sessions=1)
        attest = rd.tpm2b("quoted")
        # The TPMT_SIGNATURE is the last parameter: the rest, parsed (strictly, nothing may
        # follow) as the verifier parses it (confide.evidence.tpm).
        signature = rd.rest("signature")
        parse_signature(signature)
        return TpmQuote(attest, signature)

    # TPM2_CreatePrimary: Part 3 §24.1 (empty userAuth and data, no creation PCRs): the GCE AK
    # from Google's template (confide.runtime.gce_tpm); tests provision keys with it too.
    def create_primary(self, hierarchy: int, template: bytes) -> tuple[int, TpmPublic]:
        sensitive = _tpm2b(_tpm2b(b"") + _tpm2b(b""))
        params = sensitive + _tpm2b(template) + _tpm2b(b"") + _u32(0)
        (handle,), rd = self._execute(
            CommandCode.CreatePrimary, (hierarchy,), params, sessions=1, response_handles=1
        )
        area = self._read_public_area(rd, "outPublic")
        rd.tpm2b("creationData")
        rd.tpm2b("creationHash")
        rd.u16("creationTicket.tag")
        rd.u32("creationTicket.hierarchy")
        rd.tpm2b("creationTicket.digest")
        name = rd.tpm2b("name")
        rd.expect_end()
        _check_name(name, area.name_alg, area.raw, "TPM2_CreatePrimary response")
        return handle, area

    # TPM2_EvictControl: Part 3 §28.5. Tests only.
    def evict_control(self, object_handle: int, persistent_handle: int, *, auth: int = TPM_RH_OWNER) -> None:
        if persistent_handle >> 24 != _TPM_HT_PERSISTENT:
            raise UsageError(f"persistent handle: got {persistent_handle:#010x}, expected 0x81xxxxxx")
        _, rd = self._execute(
            CommandCode.EvictControl, (auth, object_handle), _u32(persistent_handle), sessions=1
        )
        rd.expect_end()

    # TPM2_FlushContext: Part 3 §28.4 (the handle is a parameter).
    def flush_context(self, handle: int) -> None:
        _, rd = self._execute(CommandCode.FlushContext, params=_u32(handle))
        rd.expect_end()
