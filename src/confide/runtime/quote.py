"""Where the runtime gets its evidence: the :class:`QuoteProvider` interface.

One method, ``get_evidence(report_data) -> Evidence``, with three implementations:

- :class:`SimQuoteProvider`: the development simulator (``docs/simulator.md``).
- :class:`ConfigfsTsmQuoteProvider`: Linux configfs-tsm (``/sys/kernel/config/tsm/report``,
  Linux >= 6.7; TDX and SEV-SNP guests). Follows the kernel ABI document
  ``Documentation/ABI/testing/configfs-tsm``: a report entry per request (mkdir), read
  ``provider`` (``sev_guest`` or ``tdx_guest``: refused if it is not the platform asked for),
  write ``privlevel`` (SEV-SNP VMPL, optional) and ``inblob``, read ``outblob``, ``auxblob``,
  then check that ``generation`` advanced by exactly our writes, and rmdir.
- :class:`GramineQuoteProvider`: Gramine-SGX's ``/dev/attestation`` pseudo-files: write
  ``user_report_data``, read ``quote``.

Device roots are injectable (tests run against fake trees). Every provider also checks that the
evidence it got carries the report data it asked for (a cheap guard against a confused or
interfering writer; the verifier checks it again).

Errors (all :class:`~confide.errors.ConfideError`, one exit code each):

- :class:`~confide.errors.UsageError`: the device is absent, unusable here (not a TEE guest,
  attestation disabled, no permission, a configfs-tsm provider of another platform than asked
  for or of none confide knows) or the request is malformed (report data not 64 bytes).
- :class:`~confide.errors.BindingError`: the ``generation`` counter shows a concurrent writer,
  or the evidence does not carry our report data.
- :class:`~confide.errors.ParseError`: the evidence is too short to hold report data, or an
  attribute is longer than the interface ever returns (``outblob``/``auxblob`` more than
  :data:`TSM_OUTBLOB_MAX`, a text attribute more than a page, a Gramine quote more than the
  verifier takes): it is read no further.
- :class:`~confide.errors.StorageError`: the device returned an I/O error.
"""

from __future__ import annotations

import errno
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from confide.errors import BindingError, ParseError, StorageError, UsageError
from confide.evidence.dcap import MAX_QUOTE_SIZE
from confide.evidence.sim import REPORT_DATA_SIZE
from confide.sim.measure import Measurement, measure_command
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform

__all__ = [
    "CONFIGFS_TSM_ROOT",
    "GRAMINE_ATTESTATION_ROOT",
    "SNP_REPORT_DATA_OFFSET",
    "ConfigfsTsmQuoteProvider",
    "Evidence",
    "GramineQuoteProvider",
    "QuoteProvider",
    "SimQuoteProvider",
    "check_report_data",
    "check_report_data_binding",
    "tdx_quote_report_data_offset",
]

CONFIGFS_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
GRAMINE_ATTESTATION_ROOT = Path("/dev/attestation")

# Offsets of the 64-byte report data inside each platform's evidence.
# AMD SEV-SNP ABI (56860), Table 23 ATTESTATION_REPORT: REPORT_DATA at 0x50.
SNP_REPORT_DATA_OFFSET = 0x50
# Intel TDX DCAP Quoting Library API, A.3: 48-byte header; v4 body (TD report, Table A.3.3) has
# REPORTDATA after TEE_TCB_SVN(16) MRSEAM(48) MRSIGNERSEAM(48) SEAMATTRIBUTES(8) TDATTRIBUTES(8)
# XFAM(8) MRTD(48) MRCONFIGID(48) MROWNER(48) MROWNERCONFIG(48) RTMR0-3(4*48) = 520 bytes.
# v5 inserts a body descriptor (type u16, size u32) before the body.
_QUOTE_HEADER_SIZE = 48
_TD_REPORT_DATA_OFFSET = 520
_V5_BODY_DESCRIPTOR_SIZE = 6
# Intel SGX DCAP Quote Library API, "Quote Format": 48-byte header, then the 384-byte ISV
# enclave report body with REPORTDATA at offset 320.
_SGX_REPORT_DATA_OFFSET = 320

_CONFIGFS_PROVIDERS: dict[str, Platform] = {"sev_guest": Platform.SEV_SNP, "tdx_guest": Platform.TDX}
_PLATFORM_NAMES = {Platform.SEV_SNP: "an SEV-SNP", Platform.TDX: "a TDX"}
_PRIVLEVEL_MAX = 3  # include/linux/tsm.h TSM_PRIVLEVEL_MAX
TSM_OUTBLOB_MAX = 32 * 1024
"""include/linux/tsm.h ``TSM_OUTBLOB_MAX`` (SZ_32K; ``TSM_REPORT_OUTBLOB_MAX`` in later kernels): the
``cb_max_size`` of the ``outblob`` and ``auxblob`` binary attributes, more than configfs ever
returns. A longer read is not the kernel's configfs-tsm: ParseError."""
TEXT_ATTRIBUTE_MAX = 4096
"""configfs text attributes (``generation``, ``provider``, ``privlevel_floor``) are one page at
most (fs/configfs/file.c, ``SIMPLE_ATTR_SIZE``); so are Gramine's ``attestation_type``."""
_MKDIR_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Evidence:
    """Raw evidence as the platform produced it, plus what the verifier needs beside it."""

    platform: Platform
    raw: bytes
    provider: str
    """Where it came from: ``sim``, ``configfs-tsm/sev_guest``, ``gramine/dcap``, ..."""
    aux: Mapping[str, bytes] = field(default_factory=dict)
    """Auxiliary blobs, e.g. ``{"auxblob": <SEV-SNP certificate table>}``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "aux", MappingProxyType(dict(self.aux)))


class QuoteProvider(Protocol):
    """Produces evidence whose report data is exactly ``report_data`` (64 bytes)."""

    def get_evidence(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> None:
    """A provider's argument: exactly 64 bytes (UsageError otherwise)."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise UsageError(f"report_data: got {len(report_data)} bytes, expected {REPORT_DATA_SIZE}")


def check_report_data_binding(raw: bytes, offset: int, report_data: bytes, what: str) -> None:
    """``raw[offset:offset + 64]`` is ``report_data`` (ParseError if too short, BindingError if not)."""
    end = offset + REPORT_DATA_SIZE
    if len(raw) < end:
        raise ParseError(
            f"got {len(raw)} bytes, expected at least {end}", structure=what, field="report_data"
        )
    if not hmac.compare_digest(raw[offset:end], report_data):
        raise BindingError(
            f"{what}: report data in the evidence is {raw[offset:end].hex()}, expected {report_data.hex()}"
        )


def tdx_quote_report_data_offset(raw: bytes) -> int:
    """Where REPORTDATA sits in a TDX DCAP quote of version 4 or 5 (see the offsets above)."""
    version = int.from_bytes(raw[0:2], "little") if len(raw) >= 2 else 0
    if version == 5:
        return _QUOTE_HEADER_SIZE + _V5_BODY_DESCRIPTOR_SIZE + _TD_REPORT_DATA_OFFSET
    return _QUOTE_HEADER_SIZE + _TD_REPORT_DATA_OFFSET


# --- simulator ---------------------------------------------------------------------------------


class SimQuoteProvider:
    """Simulated evidence for a fixed launch measurement (development only)."""

    def __init__(
        self,
        platform: SimPlatform,
        measurement: bytes,
        *,
        debug: bool = False,
        svn: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._platform = platform
        self._measurement = measurement
        self._debug = debug
        self._svn = svn
        self._clock = clock
        self.launch_measurement: Measurement | None = None
        """The measured command when made by :meth:`for_command` (its absent components are
        checked by ``confide run`` after mounting the volumes)."""

    @classmethod
    def for_command(
        cls,
        platform_dir: Path,
        argv: Sequence[str],
        *,
        search_path: str | None = None,
        cwd: Path | None = None,
        debug: bool = False,
        svn: int = 0,
    ) -> SimQuoteProvider:
        """Measure ``argv`` (see :mod:`confide.sim.measure`) with the platform key in ``platform_dir``."""
        platform = SimPlatform.load(platform_dir)
        measurement = measure_command(argv, search_path=search_path, cwd=cwd)
        provider = cls(platform, measurement.digest, debug=debug, svn=svn)
        provider.launch_measurement = measurement
        return provider

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        evidence = self._platform.issue(
            report_data=report_data,
            measurement=self._measurement,
            timestamp=int(self._clock().timestamp()),
            debug=self._debug,
            svn=self._svn,
        )
        return Evidence(platform=Platform.SIMULATED, raw=evidence.to_bytes(), provider="sim")


# --- Linux configfs-tsm ------------------------------------------------------------------------


def _io_error(what: str, path: Path, exc: OSError) -> StorageError | UsageError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{what}: permission denied on {str(path)!r} (attestation needs root)")
    if exc.errno == errno.ENOENT:
        return UsageError(f"{what}: {str(path)!r} does not exist")
    return StorageError(f"{what}: {str(path)!r}: {exc.strerror or exc}")


def _read(path: Path, what: str, limit: int) -> bytes:
    """The content of the attribute ``path``, at most ``limit`` bytes: a longer one is a
    ParseError, read no further (a device tree that answers without end cannot exhaust memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _io_error(what, path, exc) from None
    try:
        chunks = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(1 << 16, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _io_error(what, path, exc) from None
    finally:
        os.close(fd)
    if size > limit:
        raise ParseError(
            f"got more than {limit} bytes, expected at most {limit}", structure=f"{what} {str(path)!r}"
        )
    return b"".join(chunks)


def _write(path: Path, data: bytes, what: str) -> None:
    # No O_CREAT: the attribute must already exist (the kernel creates them); a missing one
    # means this is not the interface we think it is.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _io_error(what, path, exc) from None
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise StorageError(f"{what}: short write to {str(path)!r}: {written} of {len(data)} bytes")
    except OSError as exc:
        raise _io_error(what, path, exc) from None
    finally:
        try:
            os.close(fd)  # configfs binary attributes commit on release
        except OSError as exc:
            raise _io_error(what, path, exc) from None


def _read_int(path: Path, what: str) -> int:
    text = _read(path, what, TEXT_ATTRIBUTE_MAX).strip()
    try:
        return int(text)
    except ValueError:
        raise ParseError(f"got {text[:32]!r}, expected a decimal number", structure=str(path)) from None


class ConfigfsTsmQuoteProvider:
    """TDX / SEV-SNP evidence through Linux configfs-tsm (one report entry per request).

    ``expect``: the platform the caller asked for (``confide run --tee tdx`` or ``sev-snp``).
    The kernel's ``provider`` attribute names the format of ``outblob`` (ABI: ``sev_guest`` or
    ``tdx_guest``); a provider of another platform is a :class:`UsageError` before anything is
    written to the entry (:meth:`check` finds it before the caller contacts anyone). None:
    whichever of the two the kernel provides (``Evidence.platform`` says which)."""

    def __init__(
        self,
        root: Path = CONFIGFS_TSM_ROOT,
        *,
        privlevel: int | None = None,
        expect: Platform | None = None,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= _PRIVLEVEL_MAX:
            raise UsageError(f"privlevel: got {privlevel}, expected 0..{_PRIVLEVEL_MAX}")
        if expect is not None and expect not in _CONFIGFS_PROVIDERS.values():
            raise UsageError(f"configfs-tsm: got expected platform {expect}, expected tdx or sev-snp")
        self.root = root
        self.privlevel = privlevel
        self.expect = expect

    def check(self) -> Platform:
        """The platform of this kernel's configfs-tsm provider, refused (UsageError) if unknown
        or not :attr:`expect`: a report entry is created, its ``provider`` read and the entry
        removed, with no write (no report is generated, ``generation`` does not move)."""
        entry = self._make_entry()
        failed = True
        try:
            _, platform = self._provider(entry)
            failed = False
        finally:
            self._remove(entry, failed)
        return platform

    def _provider(self, entry: Path) -> tuple[str, Platform]:
        # Documentation/ABI/testing/configfs-tsm, provider: "(RO) A name for the
        # format-specification of @outblob like "sev_guest" [...] or "tdx_guest"".
        what = "configfs-tsm"
        raw = _read(entry / "provider", what, TEXT_ATTRIBUTE_MAX).strip()
        provider = raw.decode("ascii", "replace")
        platform = _CONFIGFS_PROVIDERS.get(provider)
        if platform is None:
            raise UsageError(
                f"{what}: got provider {provider[:64]!r}, expected one of "
                f"{', '.join(sorted(_CONFIGFS_PROVIDERS))}"
            )
        if self.expect is not None and platform is not self.expect:
            raise UsageError(
                f"{what}: --tee {self.expect}, but the kernel's attestation provider is {provider!r}: "
                f"this is {_PLATFORM_NAMES[platform]} guest, not {_PLATFORM_NAMES[self.expect]} one "
                f"(use --tee {platform})"
            )
        return provider, platform

    def _remove(self, entry: Path, failed: bool) -> None:
        try:
            entry.rmdir()
        except OSError as exc:
            if not failed:  # do not mask the original error
                raise _io_error("configfs-tsm: removing the report entry", entry, exc) from None

    def _make_entry(self) -> Path:
        what = "configfs-tsm"
        if not self.root.is_dir():
            raise UsageError(
                f"{what}: {str(self.root)!r} not found: this is not a TDX or SEV-SNP guest with "
                "configfs-tsm (Linux >= 6.7, configfs mounted on /sys/kernel/config)"
            )
        for _ in range(_MKDIR_ATTEMPTS):
            entry = self.root / f"confide-{os.getpid()}-{secrets.token_hex(8)}"
            try:
                entry.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise _io_error(what, entry, exc) from None
            return entry
        raise StorageError(f"{what}: could not create a fresh report entry under {str(self.root)!r}")

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        entry = self._make_entry()
        failed = True
        try:
            evidence = self._request(entry, report_data)
            failed = False
        finally:
            self._remove(entry, failed)
        return evidence

    def _request(self, entry: Path, report_data: bytes) -> Evidence:
        what = "configfs-tsm"
        # The provider first: evidence of another platform than asked for is not even requested.
        provider, platform = self._provider(entry)
        # The ABI: "Userspace can detect conflicts by checking generation before writing to any
        # attribute and making sure the number of writes matches expectations after reading
        # @outblob". We own the entry, so any extra write is an interfering process.
        before = _read_int(entry / "generation", what)
        writes = 0
        if self.privlevel is not None:
            floor_path = entry / "privlevel_floor"
            if not (entry / "privlevel").exists():
                raise UsageError(f"{what}: this TSM has no privlevel attribute; do not set a privilege level")
            if floor_path.exists():
                floor = _read_int(floor_path, what)
                if self.privlevel < floor:
                    raise UsageError(
                        f"privlevel: got {self.privlevel}, expected at least {floor} on this guest"
                    )
            _write(entry / "privlevel", f"{self.privlevel}\n".encode(), what)
            writes += 1
        _write(entry / "inblob", report_data, what)
        writes += 1
        outblob = _read(entry / "outblob", what, TSM_OUTBLOB_MAX)
        aux: dict[str, bytes] = {}
        if (entry / "auxblob").exists():
            auxblob = _read(entry / "auxblob", what, TSM_OUTBLOB_MAX)
            if auxblob:
                aux["auxblob"] = auxblob
        after = _read_int(entry / "generation", what)
        if after != before + writes:
            raise BindingError(
                f"{what}: generation went from {before} to {after}, expected {before + writes}: another "
                "process wrote to the report entry, so the report may not carry our report data"
            )
        if not outblob:
            raise StorageError(f"{what}: the TSM returned an empty outblob")
        if platform is Platform.SEV_SNP:
            check_report_data_binding(
                outblob, SNP_REPORT_DATA_OFFSET, report_data, "SEV-SNP report from configfs-tsm"
            )
        else:
            check_report_data_binding(
                outblob, tdx_quote_report_data_offset(outblob), report_data, "TDX quote from configfs-tsm"
            )
        return Evidence(platform=platform, raw=outblob, provider=f"configfs-tsm/{provider}", aux=aux)


# --- Gramine /dev/attestation ------------------------------------------------------------------


class GramineQuoteProvider:
    """SGX DCAP quotes inside Gramine-SGX via the ``/dev/attestation`` pseudo-files."""

    _lock = threading.Lock()
    """The pseudo-files hold one user_report_data per process: the requests of every provider
    object in this process are serialised (a lock per object let two interleave)."""

    def __init__(self, root: Path = GRAMINE_ATTESTATION_ROOT) -> None:
        self.root = root

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        what = "gramine /dev/attestation"
        if not (self.root / "attestation_type").is_file():
            raise UsageError(
                f"{what}: {str(self.root / 'attestation_type')!r} not found: not running inside Gramine-SGX"
            )
        kind = (
            _read(self.root / "attestation_type", what, TEXT_ATTRIBUTE_MAX).strip().decode("ascii", "replace")
        )
        if kind == "none":
            raise UsageError(
                f"{what}: attestation_type is 'none': set sgx.remote_attestation = \"dcap\" in the manifest"
            )
        if kind != "dcap":
            raise UsageError(f"{what}: got attestation_type {kind!r}, expected 'dcap'")
        with self._lock:
            _write(self.root / "user_report_data", report_data, what)
            # Gramine's own quote buffer is 8 KiB (SGX_QUOTE_MAX_SIZE, sgx_arch.h); more than the
            # verifier takes (confide.evidence.dcap.MAX_QUOTE_SIZE, 1 MiB) is not read at all.
            quote = _read(self.root / "quote", what, MAX_QUOTE_SIZE)
        if not quote:
            raise StorageError(f"{what}: empty quote")
        check_report_data_binding(
            quote, _QUOTE_HEADER_SIZE + _SGX_REPORT_DATA_OFFSET, report_data, "SGX quote from Gramine"
        )
        return Evidence(platform=Platform.SGX, raw=quote, provider="gramine/dcap")
