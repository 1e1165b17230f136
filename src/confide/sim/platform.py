"""The simulated platform: an Ed25519 "platform key" kept in a directory.

A real TEE keeps its attestation key in hardware; the simulator keeps it in
``DIR/platform-key.pem`` (PKCS#8, mode 0600, directory 0700), so anyone who can read that file
can forge simulated evidence. That is why simulated evidence is only accepted by policies that
tolerate ``simulation``. The public half is written to ``DIR/platform-key.pub.pem`` for
verifiers (``confide evidence verify --platform sim --root DIR/platform-key.pub.pem``).
"""

from __future__ import annotations

import binascii
import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_public_key,
    load_pem_private_key,
    load_pem_public_key,
)

from confide.errors import ParseError, StorageError, UsageError
from confide.evidence.sim import MEASUREMENT_SIZE, REPORT_DATA_SIZE, SIGNATURE_SIZE, SimEvidence
from confide.verify.sim import platform_key_id

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SimPlatform",
    "load_platform_public_key",
]

PRIVATE_KEY_FILE = "platform-key.pem"
PUBLIC_KEY_FILE = "platform-key.pub.pem"
_RAW_KEY_SIZE = 32


class SimPlatform:
    """The simulated platform's signing key and the evidence it issues."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._key_id = platform_key_id(private_key.public_key())  # the key never changes

    def __repr__(self) -> str:  # never show key material
        return f"SimPlatform(key_id={self.key_id.hex()})"

    @classmethod
    def generate(cls) -> SimPlatform:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def issue(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        timestamp: int,
        debug: bool = False,
        svn: int = 0,
    ) -> SimEvidence:
        """Sign simulated evidence (``report_data`` exactly 64 bytes, ``measurement`` 48)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise UsageError(f"report_data: got {len(report_data)} bytes, expected {REPORT_DATA_SIZE}")
        if len(measurement) != MEASUREMENT_SIZE:
            raise UsageError(f"measurement: got {len(measurement)} bytes, expected {MEASUREMENT_SIZE}")
        unsigned = SimEvidence(  # checks the fields' ranges before they are signed
            debug=debug,
            svn=svn,
            timestamp=timestamp,
            measurement=measurement,
            report_data=report_data,
            platform_key_id=self._key_id,
            signature=bytes(SIGNATURE_SIZE),
        )
        return SimEvidence(
            debug=debug,
            svn=svn,
            timestamp=timestamp,
            measurement=measurement,
            report_data=report_data,
            platform_key_id=self._key_id,
            signature=self._key.sign(unsigned.signed_bytes()),
        )

    # --- storage -----------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> SimPlatform:
        """Load the platform key from ``directory``; it must exist and be private (0600)."""
        path = directory / PRIVATE_KEY_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise UsageError(
                f"no simulated platform key at {str(path)!r}; create one with `confide sim init --dir DIR`"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_IMODE(mode) & 0o077:
                raise UsageError(
                    f"{str(path)!r} has mode {stat.S_IMODE(mode):04o}, expected 0600 (the simulated "
                    "platform key must not be readable by others)"
                )
            data = fh.read()
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ParseError("not a PEM PKCS#8 private key", structure=str(path)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ParseError("got a non-Ed25519 key, expected Ed25519", structure=str(path))
        return cls(key)

    @classmethod
    def load_or_create(cls, directory: Path) -> SimPlatform:
        """Load the platform key from ``directory``, creating directory and key on first use.

        Creation is atomic: the key is written to a temporary file and hard-linked into
        place, so concurrent first uses agree on one key and nobody reads a half-written file.
        """
        path = directory / PRIVATE_KEY_FILE
        if path.exists():
            platform = cls.load(directory)
            platform._write_public(directory)
            return platform
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {str(directory)!r}: {exc.strerror or exc}") from None
        platform = cls.generate()
        pem = platform._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        tmp = directory / f".{PRIVATE_KEY_FILE}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                platform = cls.load(directory)  # another process won the race: use its key
        except OSError as exc:
            raise StorageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        platform._write_public(directory)
        return platform

    def _write_public(self, directory: Path) -> None:
        path = directory / PUBLIC_KEY_FILE
        pem = self.public_key_pem()
        with contextlib.suppress(OSError):
            if path.read_bytes() == pem:
                return
        tmp = directory / f".{PUBLIC_KEY_FILE}.{secrets.token_hex(8)}.tmp"
        try:
            tmp.write_bytes(pem)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def load_platform_public_key(data: bytes, *, source: str = "platform public key") -> Ed25519PublicKey:
    """Parse a simulated platform public key: PEM or DER SubjectPublicKeyInfo, or the raw
    32-byte key (binary or hex text)."""
    text = data.strip()
    key: object
    try:
        if text.startswith(b"-----BEGIN"):
            key = load_pem_public_key(text)
        elif len(data) == _RAW_KEY_SIZE:
            key = Ed25519PublicKey.from_public_bytes(data)
        elif len(text) == 2 * _RAW_KEY_SIZE:
            key = Ed25519PublicKey.from_public_bytes(binascii.unhexlify(text))
        else:
            key = load_der_public_key(data)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise ParseError(
            "got neither a PEM/DER public key nor a raw 32-byte Ed25519 key", structure=source
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ParseError(f"got a {type(key).__name__}, expected an Ed25519 public key", structure=source)
    return key
