"""Volume keys: 32 random bytes, kept in a mode-0600 file or (hex) in an environment variable.

A :class:`VolumeKey` never shows its bytes in ``repr``/``str``, so it cannot leak into logs or
exception messages by accident.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from confide.errors import UsageError
from confide.fsutil import fsync_dir, new_file_error, write_new_whole
from confide.volume.format import KEY_SIZE

__all__ = ["KEY_ENV", "VolumeKey", "load_key", "write_key"]

KEY_ENV = "CONFIDE_VOLUME_KEY"


class VolumeKey:
    """A 32-byte volume key."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise UsageError(f"volume key: got {len(raw)} bytes, expected {KEY_SIZE}")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> VolumeKey:
        return cls(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_hex(cls, text: str, what: str = "volume key") -> VolumeKey:
        t = text.strip()
        if t[:2] in ("0x", "0X"):
            t = t[2:]
        try:
            raw = bytes.fromhex(t)
        except ValueError:
            raise UsageError(f"{what}: got {len(t)} non-hex characters, expected 64 hex digits") from None
        if len(raw) != KEY_SIZE:
            raise UsageError(f"{what}: got {len(raw)} bytes, expected {KEY_SIZE} (64 hex digits)")
        return cls(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    def hex(self) -> str:
        return self._raw.hex()

    def __repr__(self) -> str:
        return "VolumeKey(<secret>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VolumeKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return id(self)


def write_key(path: Path, key: VolumeKey) -> None:
    """Write ``key`` as 64 hex digits + newline to a new file of mode 0600, atomically
    (:func:`~confide.fsutil.write_new_whole`: a failed write leaves no file, the directory
    entry is synced: a power loss must not keep a volume sealed under a key whose file is
    gone). Never over an existing file. Errors (:func:`~confide.fsutil.new_file_error`):
    :class:`UsageError` when ``path`` exists, its directory does not, or permission is denied
    there; :class:`~confide.errors.StorageError` when the storage fails (a full disk, a quota,
    an I/O error, a read-only file system)."""
    try:
        write_new_whole(path, (key.hex() + "\n").encode("ascii"), 0o600)
        fsync_dir(path.parent)  # checked here, not best effort: the key must outlive a power loss
    except FileExistsError:
        raise UsageError(f"key file {str(path)!r} exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise new_file_error(exc, f"cannot create key file {str(path)!r}: {exc.strerror or exc}") from None


def load_key(path: Path | None = None, *, env: dict[str, str] | None = None) -> VolumeKey:
    """Load the key from ``path`` (32 raw bytes or 64 hex digits), else from ``$CONFIDE_VOLUME_KEY``.

    The file must not be readable or writable by group or others (as ssh insists for keys).
    """
    if path is not None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise UsageError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"key file {str(path)!r}: got a non-regular file, expected a regular file")
            if st.st_mode & 0o077:
                raise UsageError(
                    f"key file {str(path)!r}: got mode {stat.S_IMODE(st.st_mode):04o}, expected 0600 "
                    "(not accessible by group or others)"
                )
            data = f.read(1024)
        if len(data) == KEY_SIZE:
            return VolumeKey(data)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise UsageError(
                f"key file {str(path)!r}: got {len(data)} bytes, "
                f"expected {KEY_SIZE} raw bytes or 64 hex digits"
            ) from None
        return VolumeKey.from_hex(text, f"key file {str(path)!r}")
    environ = os.environ if env is None else env
    env_text = environ.get(KEY_ENV)
    if env_text:
        return VolumeKey.from_hex(env_text, f"${KEY_ENV}")
    raise UsageError(f"no volume key: got neither --key FILE nor ${KEY_ENV}, expected one of them")
