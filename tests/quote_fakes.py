"""Fake TEE device trees for the quote providers' tests (served over FUSE by a child process).

- configfs-tsm (:class:`FakeTsm`): behaves like the kernel's configfs-tsm
  (Documentation/ABI/testing/configfs-tsm): ``mkdir`` creates a report entry with its
  attributes, writing ``inblob`` or an option bumps ``generation``, reading ``outblob`` produces
  a report that carries ``inblob`` at the platform's report-data offset, ``rmdir`` drops the
  entry. Knobs (:class:`TsmBehaviour`) simulate a concurrent writer and a misbehaving TSM.
- Gramine (:class:`FakeGramine`): ``attestation_type``, ``user_report_data`` (64-byte writes
  only) and ``quote``, produced at read time over the current report data.

Importing this module skips the importing test module when mfusepy or libfuse is missing.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_DATA = 0x50
SNP_VMPL = 0x30

try:
    import mfusepy
except (ImportError, OSError) as exc:  # OSError: libfuse itself is not installed
    pytest.skip(
        f"the FUSE fakes need mfusepy and libfuse (apt-get install libfuse2): {exc}", allow_module_level=True
    )


OVERSIZE = 32 * 1024 + 1  # include/linux/tsm.h TSM_OUTBLOB_MAX + 1


@dataclass
class TsmBehaviour:
    provider: str = "sev_guest"
    interfere: str | None = None  # None | "option" | "inblob": a concurrent writer
    misplace_report_data: bool = False  # a TSM whose report does not carry inblob
    outblob_error: int | None = None  # errno returned when outblob is read
    privlevel_floor: int = 0
    quote_version: int = 4
    oversize: str | None = None  # an attribute answered with more than the kernel ever returns
    make_report: Callable[[bytes], bytes] | None = None  # outblob from inblob (a real-shaped report)
    auxblob: bytes | None = None  # None: b"certificate table" (not one)


class FakeTsm(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True
    _RO = stat.S_IFREG | 0o444
    _WO = stat.S_IFREG | 0o200

    def __init__(self, behaviour: TsmBehaviour) -> None:
        self.b = behaviour
        self.entries: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def _attrs(self) -> dict[str, int]:
        attrs = {"inblob": self._WO, "outblob": self._RO, "provider": self._RO, "generation": self._RO}
        if self.b.provider == "sev_guest":
            attrs |= {"auxblob": self._RO, "privlevel": self._WO, "privlevel_floor": self._RO}
        return attrs

    def _split(self, path: str) -> tuple[dict[str, Any], str | None]:
        parts = path.strip("/").split("/")
        entry = self.entries.get(parts[0])
        if entry is None or len(parts) > 2 or (len(parts) == 2 and parts[1] not in self._attrs()):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return entry, (parts[1] if len(parts) == 2 else None)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        with self.lock:
            _, attr = self._split(path)
        if attr is None:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        return {"st_mode": self._attrs()[attr], "st_nlink": 1, "st_size": 4096}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.lock:
            if path == "/":
                return [".", "..", *self.entries]
            self._split(path)
            return [".", "..", *self._attrs()]

    def mkdir(self, path: str, mode: int) -> int:
        name = path.strip("/")
        with self.lock:
            if "/" in name:
                raise mfusepy.FuseOSError(errno.EPERM)
            if name in self.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            self.entries[name] = {"inblob": b"", "privlevel": 0, "generation": 0, "interfered": False}
        return 0

    def rmdir(self, path: str) -> int:
        with self.lock:
            _, attr = self._split(path)
            if attr is not None:
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            del self.entries[path.strip("/")]
        return 0

    def open(self, path: str, flags: int) -> int:
        with self.lock:
            _, attr = self._split(path)
        if attr is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        writable = self._attrs()[attr] == self._WO
        if (flags & os.O_ACCMODE) != (os.O_WRONLY if writable else os.O_RDONLY):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return 0

    def _store(self, entry: dict[str, Any], attr: str, data: bytes) -> None:
        if attr == "inblob":
            if len(data) > 64:
                raise mfusepy.FuseOSError(errno.EINVAL)
            entry["inblob"] = data
        else:
            level = int(data.strip())
            if not self.b.privlevel_floor <= level <= 3:
                raise mfusepy.FuseOSError(errno.EINVAL)
            entry["privlevel"] = level
        entry["generation"] += 1  # "increments each time @inblob or any option is written"

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.lock:
            entry, attr = self._split(path)
            assert attr is not None
            self._store(entry, attr, bytes(data))
        return len(data)

    def _report(self, entry: dict[str, Any]) -> bytes:
        inblob = entry["inblob"].ljust(64, b"\0")
        if self.b.misplace_report_data:
            inblob = bytes(64)
        if self.b.make_report is not None:
            return self.b.make_report(inblob)
        if self.b.provider == "sev_guest":
            report = bytearray(SNP_REPORT_SIZE)
            report[0:4] = (3).to_bytes(4, "little")
            report[SNP_VMPL : SNP_VMPL + 4] = entry["privlevel"].to_bytes(4, "little")
            report[SNP_REPORT_DATA : SNP_REPORT_DATA + 64] = inblob
            return bytes(report)
        header = self.b.quote_version.to_bytes(2, "little") + (2).to_bytes(2, "little")
        header += (0x81).to_bytes(4, "little") + bytes(40)
        descriptor = (
            (2).to_bytes(2, "little") + (584).to_bytes(4, "little") if self.b.quote_version == 5 else b""
        )
        body = bytearray(584)
        body[520:584] = inblob
        return header + descriptor + bytes(body) + bytes(4)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.lock:
            entry, attr = self._split(path)
            if attr in ("outblob", "auxblob"):
                if self.b.outblob_error is not None:
                    raise mfusepy.FuseOSError(self.b.outblob_error)
                if self.b.interfere and not entry["interfered"]:
                    entry["interfered"] = True  # another process writes between our write and read
                    if self.b.interfere == "inblob":
                        self._store(entry, "inblob", b"someone else's report data")
                    else:
                        self._store(entry, "privlevel", b"%d\n" % entry["privlevel"])
                auxblob = self.b.auxblob if self.b.auxblob is not None else b"certificate table"
                data = self._report(entry) if attr == "outblob" else auxblob
            elif attr == "provider":
                data = self.b.provider.encode() + b"\n"
            elif attr == "generation":
                data = b"%d\n" % entry["generation"]
            elif attr == "privlevel_floor":
                data = b"%d\n" % self.b.privlevel_floor
            else:
                raise mfusepy.FuseOSError(errno.EACCES)
            if attr == self.b.oversize:  # outblob/auxblob beyond TSM_OUTBLOB_MAX, text beyond a page
                data = data.rstrip(b"\n") + b" " * (OVERSIZE - len(data)) + b"\n"
        return data[offset : offset + size]


def serve_fuse(mountpoint: str, operations: Any) -> None:
    mfusepy.FUSE(operations, mountpoint, foreground=True, direct_io=True, attr_timeout=0, entry_timeout=0)


@contextlib.contextmanager
def mounted(mountpoint: Path, operations: Any) -> Iterator[Path]:
    """Serve ``operations`` on ``mountpoint`` from a child process (the kernel talks to it)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse to serve the fake device tree")
    mountpoint.mkdir(parents=True)
    child = multiprocessing.get_context("fork").Process(target=serve_fuse, args=(str(mountpoint), operations))
    child.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if not child.is_alive() or time.monotonic() > deadline:
                pytest.fail("the fake device file system did not mount")
            time.sleep(0.01)
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()


class FakeGramine(mfusepy.Operations):  # type: ignore[misc]
    """``attestation_type`` (RO), ``user_report_data`` (RW, exactly 64 bytes per write) and
    ``quote`` (RO): reading ``quote`` produces an SGX quote v3 over the current report data."""

    use_ns = True

    def __init__(self, attestation_type: str = "dcap", misplace: bool = False) -> None:
        self.attestation_type = attestation_type
        self.misplace = misplace
        self.report_data = bytes(64)
        self.lock = threading.Lock()
        self.files = {
            "/attestation_type": stat.S_IFREG | 0o444,
            "/user_report_data": stat.S_IFREG | 0o666,
            "/quote": stat.S_IFREG | 0o444,
        }

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path not in self.files:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return {"st_mode": self.files[path], "st_nlink": 1, "st_size": 4096}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *(p[1:] for p in self.files)]

    def open(self, path: str, flags: int) -> int:
        self.getattr(path)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path != "/user_report_data":
            raise mfusepy.FuseOSError(errno.EACCES)
        if offset != 0 or len(data) != 64:
            raise mfusepy.FuseOSError(errno.EINVAL)
        with self.lock:
            self.report_data = bytes(data)
        return len(data)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.lock:
            if path == "/attestation_type":
                data = self.attestation_type.encode() + b"\n"
            elif path == "/user_report_data":
                data = self.report_data
            else:
                header = (3).to_bytes(2, "little") + (2).to_bytes(2, "little") + bytes(44)
                body = bytearray(384)
                body[320:384] = bytes(64) if self.misplace else self.report_data
                data = header + bytes(body) + (0).to_bytes(4, "little")
        return data[offset : offset + size]
