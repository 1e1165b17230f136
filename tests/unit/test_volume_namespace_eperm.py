"""`confide run` / `volume mount` as root without CAP_SYS_ADMIN (a container started without
`--cap-add SYS_ADMIN`): unshare(CLONE_NEWNS) fails with EPERM, and the StorageError says what
it takes (docs/sconify.md "Running the image"); another errno is reported as it is."""

from __future__ import annotations

import ctypes
import errno

import pytest

from confide.errors import StorageError
from confide.volume import mount


class _Libc:
    def __init__(self, code: int) -> None:
        self.code = code

    def unshare(self, flags: int) -> int:
        ctypes.set_errno(self.code)
        return -1

    def mount(self, *args: object) -> int:  # never reached: unshare failed first
        raise AssertionError("mount after a failed unshare")


def test_eperm_says_cap_sys_admin_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount, "_libc", lambda: _Libc(errno.EPERM))
    with pytest.raises(StorageError) as caught:
        mount._private_namespace()
    assert str(caught.value) == (
        "unshare(CLONE_NEWNS) for a private mount namespace failed: Operation not permitted (errno 1): "
        "mounting protected volumes and injecting files over disk paths takes CAP_SYS_ADMIN (in a "
        "container: --cap-add SYS_ADMIN, and --device /dev/fuse for FUSE)"
    )


def test_another_errno_is_reported_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount, "_libc", lambda: _Libc(errno.ENOMEM))
    with pytest.raises(StorageError) as caught:
        mount._private_namespace()
    assert str(caught.value) == (
        f"unshare(CLONE_NEWNS) for a private mount namespace failed: Cannot allocate memory (errno {errno.ENOMEM})"
    )
