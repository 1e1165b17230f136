"""Sealing keys: where the CAS gets the key that protects its master key at rest.

One method, ``sealing_key() -> bytes`` (32 bytes, the same for the same TEE identity on the same
platform, different otherwise), plus two descriptive attributes written into the sealed file:
``name`` (the provider) and ``binding`` (what the key is bound to). Implementations:

- :class:`GramineSealingKeyProvider`: Gramine-SGX's ``/dev/attestation/keys/_sgx_mrenclave``
  (default) or ``_sgx_mrsigner``: the SGX seal key (``EGETKEY``) for the enclave's MRENCLAVE or
  MRSIGNER identity on this CPU. Gramine documents these files as "a 16-byte raw binary value"
  (Documentation/attestation.rst, "Low-level /dev/attestation interface"; the special key names
  in Documentation/manifest-syntax.rst).
- :class:`SnpSealingKeyProvider`: an AMD SEV-SNP guest's derived key (``MSG_KEY_REQ``) through
  the Linux ``SNP_GET_DERIVED_KEY`` ioctl on ``/dev/sev-guest``, bound by default to the launch
  measurement and the guest policy.

Intel TDX has no sealing-key primitive (no ``EGETKEY`` or ``MSG_KEY_REQ`` equivalent), so
:func:`provider_for` refuses ``tdx`` with a :class:`~confide.errors.UsageError` that says so
and names the alternative: a key released by a running CAS (``cas serve --join``,
:mod:`confide.cas.join`), held in memory.

Every provider expands its platform key with HKDF-SHA256 (RFC 5869, no salt, info
``confide-cas-master/v1``): the raw platform key is never used directly, and Gramine's 16-byte
key becomes a 32-byte AES-256 key. Device roots and the ioctl are injectable: the tests run
against a fake ``/dev/attestation`` tree and a fake ``/dev/sev-guest``.

Errors: :class:`~confide.errors.UsageError` (not in this TEE, no permission, a request the
firmware refuses as invalid), :class:`~confide.errors.ParseError` (a key or response of the
wrong shape), :class:`~confide.errors.StorageError` (the device or firmware failed).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from confide.errors import ParseError, StorageError, UsageError
from confide.linux_ioctl import iowr

__all__ = [
    "GRAMINE_ATTESTATION_ROOT",
    "SEALING_KEY_SIZE",
    "SEAL_PROVIDERS",
    "SEV_GUEST_DEVICE",
    "SNP_GET_DERIVED_KEY",
    "DerivedKeyIoctl",
    "GramineSealingKeyProvider",
    "GuestField",
    "SealingKeyProvider",
    "SnpDerivedKeyRequest",
    "SnpSealingKeyProvider",
    "linux_derived_key_ioctl",
    "parse_derived_key_response",
    "provider_for",
]

SEALING_KEY_SIZE = 32
HKDF_LABEL = b"confide-cas-master/v1"
GRAMINE_ATTESTATION_ROOT = Path("/dev/attestation")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")

# ``--seal`` values; ``file`` means no sealing (the plain ``master.key``, development only) and
# ``tdx`` is listed only to be refused with an explanation.
SEAL_PROVIDERS = ("file", "gramine", "gramine-mrsigner", "sev-snp", "tdx")


class SealingKeyProvider(Protocol):
    """A TEE's sealing key: 32 bytes, deterministic for the same TEE identity."""

    @property
    def name(self) -> str:
        """The provider, as recorded in the sealed file (``gramine``, ``sev-snp``)."""
        ...

    @property
    def binding(self) -> str:
        """What the key is bound to, as recorded in the sealed file (printable ASCII)."""
        ...

    def sealing_key(self) -> bytes: ...


def _expand(platform_key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), SEALING_KEY_SIZE, None, HKDF_LABEL).derive(platform_key)


def _open_error(what: str, path: Path, exc: OSError, hint: str) -> UsageError | StorageError:
    if exc.errno == errno.ENOENT:
        return UsageError(f"{what}: {str(path)!r} does not exist: {hint}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{what}: permission denied on {str(path)!r}")
    return StorageError(f"{what}: {str(path)!r}: {exc.strerror or exc}")


# --- Gramine-SGX -------------------------------------------------------------------------------

_GRAMINE_KEY_SIZE = 16  # "a 16-byte raw binary value" (Documentation/attestation.rst)
_GRAMINE_KEYS = {"mrenclave": "_sgx_mrenclave", "mrsigner": "_sgx_mrsigner"}


class GramineSealingKeyProvider:
    """The SGX seal key for MRENCLAVE (this exact enclave) or MRSIGNER (any enclave signed by
    the same key), on this CPU, from Gramine's ``/dev/attestation/keys/``."""

    name = "gramine"

    def __init__(self, root: Path = GRAMINE_ATTESTATION_ROOT, *, identity: str = "mrenclave") -> None:
        if identity not in _GRAMINE_KEYS:
            raise UsageError(f"gramine sealing: got identity {identity!r}, expected mrenclave or mrsigner")
        self.root = root
        self.identity = identity

    @property
    def binding(self) -> str:
        return f"sgx-{self.identity}"

    def sealing_key(self) -> bytes:
        what = "gramine sealing key"
        path = self.root / "keys" / _GRAMINE_KEYS[self.identity]
        hint = "not running inside Gramine-SGX (gramine-direct has no SGX sealing keys)"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(what, path, exc, hint) from None
        try:
            raw = os.read(fd, _GRAMINE_KEY_SIZE + 1)  # one more: detect an oversized file
        except OSError as exc:
            raise StorageError(f"{what}: {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(raw) != _GRAMINE_KEY_SIZE:
            got = f"more than {_GRAMINE_KEY_SIZE}" if len(raw) > _GRAMINE_KEY_SIZE else str(len(raw))
            raise ParseError(f"got {got} bytes, expected {_GRAMINE_KEY_SIZE}", structure=str(path))
        if raw == bytes(_GRAMINE_KEY_SIZE):
            raise ParseError("got an all-zero key, expected an SGX seal key", structure=str(path))
        return _expand(raw)


# --- AMD SEV-SNP -------------------------------------------------------------------------------
#
# AMD "SEV Secure Nested Paging Firmware ABI Specification" (publication 56860), section 7.2
# "Key Derivation": MSG_KEY_REQ (Table 19, "MSG_KEY_REQ Message Structure"), its
# GUEST_FIELD_SELECT bit field, and MSG_KEY_RSP (STATUS at 0x00, reserved 0x04..0x1F,
# DERIVED_KEY at 0x20..0x3F). Linux passes the first 32 bytes of MSG_KEY_REQ through
# include/uapi/linux/sev-guest.h:
#
#   struct snp_derived_key_req { __u32 root_key_select; __u32 rsvd; __u64 guest_field_select;
#                                __u32 vmpl; __u32 guest_svn; __u64 tcb_version; };
#   struct snp_derived_key_resp { __u8 data[64]; };             /* MSG_KEY_RSP */
#   struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data;
#                                    __u64 exitinfo2; };  /* [63:32] VMM error, [31:0] firmware */
#   #define SNP_GET_DERIVED_KEY _IOWR('S', 0x1, struct snp_guest_request_ioctl)

_SNP_REQ = struct.Struct("<IIQIIQ")  # snp_derived_key_req, 32 bytes
_SNP_IOCTL = struct.Struct("<B7xQQQ")  # snp_guest_request_ioctl, 32 bytes (natural alignment)
_SNP_RESP_SIZE = 64
_SNP_RESP_STATUS = struct.Struct("<I")
_SNP_RESP_KEY_OFFSET = 0x20
_SNP_MSG_VERSION = 1  # "message version number (must be non-zero)"; MSG_KEY_REQ version 1
_SNP_STATUS_INVALID_PARAM = 0x16  # MSG_KEY_RSP STATUS (firmware status codes, Table "Status Codes")
_SNP_VMM_ERR_INVALID_LEN = 1  # sev-guest.h SNP_GUEST_VMM_ERR_INVALID_LEN
_SNP_VMM_ERR_BUSY = 2  # sev-guest.h SNP_GUEST_VMM_ERR_BUSY
_VMPL_MAX = 3


SNP_GET_DERIVED_KEY = iowr(ord("S"), 0x1, _SNP_IOCTL.size)


class GuestField(enum.IntFlag):
    """MSG_KEY_REQ ``GUEST_FIELD_SELECT``: the guest data mixed into the derived key."""

    GUEST_POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5


_FIELD_NAMES = {
    GuestField.GUEST_POLICY: "guest-policy",
    GuestField.IMAGE_ID: "image-id",
    GuestField.FAMILY_ID: "family-id",
    GuestField.MEASUREMENT: "measurement",
    GuestField.GUEST_SVN: "guest-svn",
    GuestField.TCB_VERSION: "tcb-version",
}
_ALL_FIELDS = GuestField(sum(_FIELD_NAMES))
_ROOT_KEYS = {"vcek": 0, "vmrk": 1}  # ROOT_KEY_SELECT bit 0: 0 = VCEK, 1 = VMRK


@dataclass(frozen=True, slots=True)
class SnpDerivedKeyRequest:
    """The ``snp_derived_key_req`` the ioctl carries (MSG_KEY_REQ 0x00..0x1F)."""

    fields: GuestField = GuestField.MEASUREMENT | GuestField.GUEST_POLICY
    root_key: str = "vcek"
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0

    def __post_init__(self) -> None:
        if self.root_key not in _ROOT_KEYS:
            raise UsageError(f"sev-snp sealing: got root key {self.root_key!r}, expected vcek or vmrk")
        if int(self.fields) & ~int(_ALL_FIELDS) or not int(self.fields):
            raise UsageError(
                f"sev-snp sealing: got guest fields {int(self.fields):#x}, expected a non-empty "
                f"subset of {int(_ALL_FIELDS):#x}"
            )
        if not 0 <= self.vmpl <= _VMPL_MAX:
            raise UsageError(f"sev-snp sealing: got vmpl {self.vmpl}, expected 0..{_VMPL_MAX}")
        if not 0 <= self.guest_svn < 1 << 32:
            raise UsageError(f"sev-snp sealing: got guest_svn {self.guest_svn}, expected a 32-bit value")
        if not 0 <= self.tcb_version < 1 << 64:
            raise UsageError(f"sev-snp sealing: got tcb_version {self.tcb_version}, expected a 64-bit value")

    def to_bytes(self) -> bytes:
        return _SNP_REQ.pack(
            _ROOT_KEYS[self.root_key], 0, int(self.fields), self.vmpl, self.guest_svn, self.tcb_version
        )

    def describe(self) -> str:
        names = ",".join(n for f, n in _FIELD_NAMES.items() if f in self.fields)
        return (
            f"snp-derived-key root={self.root_key} fields={names} vmpl={self.vmpl} "
            f"guest-svn={self.guest_svn} tcb-version={self.tcb_version:#018x}"
        )


def parse_derived_key_response(raw: bytes) -> bytes:
    """The 32-byte ``DERIVED_KEY`` of a MSG_KEY_RSP, after checking its size, ``STATUS`` and
    reserved bytes (the buffer crossed the kernel and the firmware: trust nothing)."""
    what = "MSG_KEY_RSP"
    if len(raw) != _SNP_RESP_SIZE:
        raise ParseError(f"got {len(raw)} bytes, expected {_SNP_RESP_SIZE}", structure=what)
    (status,) = _SNP_RESP_STATUS.unpack_from(raw, 0)
    if status == _SNP_STATUS_INVALID_PARAM:
        raise UsageError(
            "sev-snp sealing: the firmware refused the key request (INVALID_PARAM): VMPL below the "
            "guest's current VMPL, guest SVN above the launch SVN, or TCB version above the "
            "committed TCB"
        )
    if status != 0:
        raise StorageError(f"sev-snp sealing: {what} STATUS is {status:#x}, expected 0 (success)")
    if any(raw[4:_SNP_RESP_KEY_OFFSET]):
        raise ParseError("reserved bytes are not zero", structure=what, field="reserved", offset=4)
    key = raw[_SNP_RESP_KEY_OFFSET:]
    if key == bytes(len(key)):
        raise ParseError(
            "got an all-zero key (no response written)",
            structure=what,
            field="DERIVED_KEY",
            offset=_SNP_RESP_KEY_OFFSET,
        )
    return key


DerivedKeyIoctl = Callable[[bytes], tuple[int, bytes, int]]
"""Sends one ``snp_derived_key_req`` (32 bytes); returns ``(errno, response, exitinfo2)``:
``errno`` 0 on success, ``response`` the 64-byte ``snp_derived_key_resp`` buffer as the kernel
left it. Raises :class:`OSError` only when the device cannot be opened."""


def linux_derived_key_ioctl(device: Path = SEV_GUEST_DEVICE) -> DerivedKeyIoctl:
    """The real ``SNP_GET_DERIVED_KEY`` ioctl on ``device``."""

    def call(request: bytes) -> tuple[int, bytes, int]:
        if len(request) != _SNP_REQ.size:
            raise UsageError(f"snp_derived_key_req: got {len(request)} bytes, expected {_SNP_REQ.size}")
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(_SNP_RESP_SIZE)
        arg = bytearray(_SNP_IOCTL.pack(_SNP_MSG_VERSION, ctypes.addressof(req), ctypes.addressof(resp), 0))
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, SNP_GET_DERIVED_KEY, arg, True)
                err = 0
            except OSError as exc:
                err = exc.errno or errno.EIO
        finally:
            os.close(fd)
        exitinfo2 = _SNP_IOCTL.unpack(bytes(arg))[3]
        response = resp.raw
        ctypes.memset(resp, 0, _SNP_RESP_SIZE)  # do not leave the key in this buffer
        return err, response, exitinfo2

    return call


class SnpSealingKeyProvider:
    """An SEV-SNP guest's derived key, bound by default to the launch measurement and the guest
    policy (``GUEST_FIELD_SELECT`` bits 3 and 0), derived from the chip's VCEK: the same CAS image
    with the same policy on the same chip gets the same key; another image, policy or chip does
    not."""

    name = "sev-snp"

    def __init__(
        self,
        device: Path = SEV_GUEST_DEVICE,
        *,
        request: SnpDerivedKeyRequest | None = None,
        ioctl: DerivedKeyIoctl | None = None,
    ) -> None:
        self.device = device
        self.request = request or SnpDerivedKeyRequest()
        self._ioctl = ioctl or linux_derived_key_ioctl(device)

    @property
    def binding(self) -> str:
        return self.request.describe()

    def sealing_key(self) -> bytes:
        what = "sev-snp sealing key"
        try:
            err, response, exitinfo2 = self._ioctl(self.request.to_bytes())
        except OSError as exc:
            raise _open_error(what, self.device, exc, "not an SEV-SNP guest (sev-guest driver)") from None
        if err:
            raise _ioctl_error(what, self.device, err, exitinfo2)
        return _expand(parse_derived_key_response(response))


def _ioctl_error(what: str, device: Path, err: int, exitinfo2: int) -> UsageError | StorageError:
    if err in (errno.ENOTTY, errno.EINVAL) and not exitinfo2:
        return UsageError(
            f"{what}: {str(device)!r} does not accept SNP_GET_DERIVED_KEY: not an SEV-SNP guest"
        )
    if err in (errno.EACCES, errno.EPERM):
        return UsageError(f"{what}: permission denied on {str(device)!r}")
    fw_error, vmm_error = exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32
    detail = f"{os.strerror(err)}; firmware error {fw_error:#x}, VMM error {vmm_error:#x}"
    if vmm_error == _SNP_VMM_ERR_BUSY:
        detail += " (the hypervisor is busy: retry)"
    elif vmm_error == _SNP_VMM_ERR_INVALID_LEN:
        detail += " (the hypervisor reports an invalid length)"
    return StorageError(f"{what}: SNP_GET_DERIVED_KEY on {str(device)!r} failed: {detail}")


# --- selection ---------------------------------------------------------------------------------


def provider_for(name: str) -> SealingKeyProvider | None:
    """The provider for a ``--seal`` value; ``None`` for ``file`` (no sealing)."""
    match name:
        case "file":
            return None
        case "gramine":
            return GramineSealingKeyProvider()
        case "gramine-mrsigner":
            return GramineSealingKeyProvider(identity="mrsigner")
        case "sev-snp":
            return SnpSealingKeyProvider()
        case "tdx":
            raise UsageError(
                "--seal tdx: Intel TDX has no sealing key (no EGETKEY or MSG_KEY_REQ equivalent: "
                "nothing in a TD derives a key from its measurement). A CAS in a TD receives its "
                "master key from a running attested CAS and holds it in memory: cas serve --join URL "
                '--tee tdx (docs/cas.md "Joining a running CAS", docs/limitations.md)'
            )
        case _:
            raise UsageError(f"--seal: got {name!r}, expected one of {', '.join(SEAL_PROVIDERS)}")
