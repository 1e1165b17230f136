"""Evidence from inside an AWS Nitro Enclave: :class:`NitroQuoteProvider` over the Nitro Secure
Module (NSM) device, ``/dev/nsm``.

The protocol (aws-nitro-enclaves-nsm-api ``src/api/mod.rs`` and ``src/driver/mod.rs``; Linux
``include/uapi/linux/nsm.h`` and ``drivers/misc/nsm.c``, and the older out-of-tree nsm-driver,
which share the ioctl):

- A request is one CBOR item, serde's externally tagged encoding of the Rust ``Request`` enum.
  ``Request::Attestation { user_data, nonce, public_key }`` (each ``Option<ByteBuf>``) is a map
  of one entry, ``"Attestation"``, whose value is a map of the three fields in declaration
  order, byte strings or null::

      {"Attestation": {"user_data": null, "nonce": h'<64 bytes>', "public_key": null}}

- It is passed with ``NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw)``, ``struct nsm_raw {
  struct nsm_iovec request; struct nsm_iovec response; }``, ``struct nsm_iovec { __u64 addr;
  __u64 len; }`` (32 bytes; the older driver's two ``struct iovec`` have the same layout on
  64-bit Linux). Requests are at most ``NSM_REQUEST_MAX_SIZE`` (0x1000) bytes; the response
  buffer is ``NSM_RESPONSE_MAX_SIZE`` (0x3000) bytes, and the driver writes the response's
  length back into ``response.len``.
- The response is one CBOR item, the ``Response`` enum: ``{"Attestation": {"document":
  h'<COSE_Sign1>'}}`` on success, ``{"Error": "<ErrorCode>"}`` (a unit variant name, e.g.
  ``"InvalidArgument"``) on failure.

The response crossed the hypervisor and the kernel: it is decoded strictly
(:func:`confide.evidence.nitro.decode_cbor`: bounded size and depth, no tags, no duplicate keys,
no trailing bytes), must be exactly one of those two shapes, and the document must parse as a
Nitro attestation document (:class:`confide.evidence.nitro.NitroDocument`, the verifier's own
parser) whose ``nonce`` is the report data we asked for. The CAS checks it all again
(``confide.cas.verifier.check_binding``: the ``nonce`` must be the 64-byte binding).

Errors: :class:`~confide.errors.UsageError` (no ``/dev/nsm``: not inside a Nitro enclave; no
permission; a device that does not take the NSM ioctl), :class:`~confide.errors.StorageError`
(the ioctl failed; the NSM answered with an ``Error``), :class:`~confide.errors.ParseError`
(a malformed or unexpected response), :class:`~confide.errors.BindingError` (a document for
another nonce).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hmac
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import cbor2

from confide.errors import BindingError, ParseError, StorageError, UsageError
from confide.evidence.nitro import NitroDocument, decode_cbor
from confide.linux_ioctl import iowr
from confide.runtime.quote import Evidence, check_report_data
from confide.verify.result import Platform

__all__ = [
    "NSM_DEVICE",
    "NSM_ERROR_CODES",
    "NSM_IOCTL_RAW",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "DeviceNsmTransport",
    "NitroQuoteProvider",
    "NsmTransport",
    "attestation_request",
    "parse_attestation_response",
]

NSM_DEVICE = Path("/dev/nsm")
# include/uapi/linux/nsm.h
NSM_MAGIC = 0x0A
NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000
_NSM_RAW = struct.Struct("=QQQQ")  # struct nsm_raw: request {addr, len}, response {addr, len}


NSM_IOCTL_RAW = iowr(NSM_MAGIC, 0, _NSM_RAW.size)  # 0xC0200A00

# nsm-api src/api/mod.rs, enum ErrorCode (serialised as the variant's name).
NSM_ERROR_CODES: Mapping[str, str] = {
    "Success": "no error",
    "InvalidArgument": "input argument(s) invalid",
    "InvalidIndex": "PCR index out of bounds",
    "InvalidResponse": "the response does not correspond to the request",
    "ReadOnlyIndex": "the PCR is read-only",
    "InvalidOperation": "the request cannot be fulfilled: missing capabilities",
    "BufferTooSmall": "the output buffer is too small",
    "InputTooLarge": "the input is too large",
    "InternalError": "the NSM cannot fulfil the request: internal error",
}

_WHAT = "NSM"
_RESPONSE = "NSM response"


class NsmTransport(Protocol):
    """Sends one CBOR request to the NSM and returns its CBOR response, as bytes."""

    def request(self, cbor: bytes) -> bytes: ...


def _open_error(device: Path, exc: OSError) -> UsageError | StorageError:
    if exc.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):
        return UsageError(f"{_WHAT}: {str(device)!r} does not exist: not inside a Nitro enclave")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{_WHAT}: permission denied on {str(device)!r} (the NSM device needs root)")
    if exc.errno == errno.EISDIR:
        return UsageError(f"{_WHAT}: {str(device)!r} is a directory, not the NSM device")
    return StorageError(f"{_WHAT}: cannot open {str(device)!r}: {exc.strerror or exc}")


def _ioctl_error(device: Path, err: int) -> UsageError | StorageError:
    if err == errno.ENOTTY:
        return UsageError(
            f"{_WHAT}: {str(device)!r} does not accept NSM_IOCTL_RAW: not the NSM device of a Nitro enclave"
        )
    if err in (errno.EACCES, errno.EPERM):
        return UsageError(f"{_WHAT}: NSM_IOCTL_RAW on {str(device)!r}: permission denied (needs root)")
    detail = os.strerror(err)
    if err == errno.EMSGSIZE:
        detail += " (request or response too large for the driver)"
    return StorageError(f"{_WHAT}: NSM_IOCTL_RAW on {str(device)!r} failed: {detail}")


class DeviceNsmTransport:
    """The real NSM: one ``NSM_IOCTL_RAW`` on ``device`` per request (opened and closed each
    time; the driver serialises requests)."""

    def __init__(self, device: Path = NSM_DEVICE) -> None:
        self.device = device

    def _open(self) -> int:
        try:
            return os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(self.device, exc) from None

    def check(self) -> None:
        """Open and close the device (UsageError if absent or not permitted): a cheap early
        test before asking a CAS for a nonce."""
        os.close(self._open())

    def request(self, cbor: bytes) -> bytes:
        if not 0 < len(cbor) <= NSM_REQUEST_MAX_SIZE:
            raise UsageError(f"{_WHAT} request: got {len(cbor)} bytes, expected 1..{NSM_REQUEST_MAX_SIZE}")
        req = ctypes.create_string_buffer(cbor, len(cbor))
        resp = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        arg = bytearray(
            _NSM_RAW.pack(ctypes.addressof(req), len(cbor), ctypes.addressof(resp), NSM_RESPONSE_MAX_SIZE)
        )
        fd = self._open()
        try:
            try:
                fcntl.ioctl(fd, NSM_IOCTL_RAW, arg, True)
            except OSError as exc:
                raise _ioctl_error(self.device, exc.errno or errno.EIO) from None
        finally:
            os.close(fd)
        length = _NSM_RAW.unpack(bytes(arg))[3]
        if not 0 < length <= NSM_RESPONSE_MAX_SIZE:
            raise ParseError(
                f"the driver reported a response of {length} bytes, expected 1..{NSM_RESPONSE_MAX_SIZE}",
                structure=_RESPONSE,
            )
        return resp.raw[:length]


def attestation_request(nonce: bytes) -> bytes:
    """The CBOR of ``Request::Attestation { user_data: None, nonce: Some(nonce), public_key:
    None }`` (serde's externally tagged enum, struct fields in declaration order)."""
    fields = {"user_data": None, "nonce": bytes(nonce), "public_key": None}
    return cbor2.dumps({"Attestation": fields})


def _error_code(value: Any) -> str:
    if not isinstance(value, str) or value not in NSM_ERROR_CODES:
        shown = repr(value)[:64]
        raise ParseError(
            f"got ErrorCode {shown}, expected one of {', '.join(NSM_ERROR_CODES)}",
            structure=_RESPONSE,
            field="Error",
        )
    return value


def parse_attestation_response(raw: bytes) -> bytes:
    """The ``document`` of a ``Response::Attestation``; an ``Error`` response is a
    StorageError naming the NSM's ErrorCode, anything else a ParseError."""
    if not raw:
        raise ParseError("empty response", structure=_RESPONSE)
    if len(raw) > NSM_RESPONSE_MAX_SIZE:
        raise ParseError(
            f"got {len(raw)} bytes, expected at most {NSM_RESPONSE_MAX_SIZE}", structure=_RESPONSE
        )
    item = decode_cbor(raw, _RESPONSE)
    if isinstance(item, str):  # a unit variant (LockPCR, LockPCRs): not ours
        raise ParseError(f"got the {item[:32]!r} response, expected Attestation", structure=_RESPONSE)
    if not isinstance(item, dict) or len(item) != 1:
        raise ParseError(
            f"got {type(item).__name__}, expected a map of one response variant", structure=_RESPONSE
        )
    ((variant, body),) = item.items()
    if variant == "Error":
        code = _error_code(body)
        if code == "Success":
            raise ParseError("got an Error response with ErrorCode Success", structure=_RESPONSE)
        raise StorageError(
            f"{_WHAT} refused the Attestation request: ErrorCode {code} ({NSM_ERROR_CODES[code]})"
        )
    if variant != "Attestation":
        shown = variant[:32] if isinstance(variant, str) else type(variant).__name__
        raise ParseError(f"got the {shown!r} response, expected Attestation", structure=_RESPONSE)
    if not isinstance(body, dict) or set(body) != {"document"}:
        raise ParseError(
            "expected a map with exactly the key 'document'", structure=_RESPONSE, field="Attestation"
        )
    document = body["document"]
    if not isinstance(document, bytes) or not document:
        raise ParseError(
            f"got {type(document).__name__}, expected a non-empty byte string",
            structure=_RESPONSE,
            field="Attestation.document",
        )
    return document


class NitroQuoteProvider:
    """An attestation document from the NSM whose ``nonce`` is the report data (the
    ``user_data`` and ``public_key`` fields are left empty)."""

    def __init__(self, transport: NsmTransport | None = None) -> None:
        self._transport = transport or DeviceNsmTransport()

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        raw = self._transport.request(attestation_request(report_data))
        document = parse_attestation_response(raw)
        nonce = NitroDocument.from_bytes(document).document.nonce
        if nonce is None or not hmac.compare_digest(nonce, report_data):
            shown = nonce.hex() if nonce is not None else "none"
            raise BindingError(
                f"{_WHAT}: the attestation document's nonce is {shown}, expected {report_data.hex()}"
            )
        return Evidence(platform=Platform.AWS_NITRO, raw=document, provider="nsm")
