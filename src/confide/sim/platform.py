"""The simulated platform: a "platform key" kept in a directory.

The key's type decides the evidence version it issues (``docs/simulator.md``): ECDSA P-256
(version 2, what new platforms get, as real SGX/TDX quotes are signed with ECDSA P-256) or
Ed25519 (version 1, platforms created before version 2 existed; they keep working).

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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_public_key,
    load_pem_private_key,
    load_pem_public_key,
)

from confide.errors import ParseError, SignatureError, StorageError, UsageError
from confide.evidence.sim import (
    MEASUREMENT_SIZE,
    REPORT_DATA_SIZE,
    SIGNATURE_SIZE,
    VERSION_ED25519,
    SimEvidence,
)
from confide.verify.sim import SimPlatformPublicKey, key_version, platform_key_id

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SimPlatform",
    "load_platform_public_key",
]

PRIVATE_KEY_FILE = "platform-key.pem"
PUBLIC_KEY_FILE = "platform-key.pub.pem"
_RAW_KEY_SIZE = 32  # Ed25519
_P256_POINT_SIZE = 65  # uncompressed P-256 point, SEC 1 v2 section 2.3.3
_P256_SCALAR_SIZE = 32
_MAX_KEY_FILE = 64 * 1024  # a PEM P-256 or Ed25519 private key is a few hundred bytes

SimPlatformPrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class SimPlatform:
    """The simulated platform's signing key and the evidence it issues (version 2 with an
    ECDSA P-256 key, version 1 with an Ed25519 key)."""

    __slots__ = ("_key", "_key_id", "_public", "_version")

    def __init__(self, private_key: SimPlatformPrivateKey) -> None:
        self._key = private_key
        self._public: SimPlatformPublicKey = private_key.public_key()
        try:
            self._version = key_version(self._public)
        except SignatureError:
            raise UsageError("the simulated platform key must be Ed25519 or ECDSA P-256") from None
        self._key_id = platform_key_id(self._public)  # the key never changes

    def __repr__(self) -> str:  # never show key material
        return f"SimPlatform(key_id={self.key_id.hex()}, version={self._version})"

    @classmethod
    def generate(cls, *, ed25519: bool = False) -> SimPlatform:
        """A new platform key: ECDSA P-256 (evidence version 2), or Ed25519 (version 1) if asked."""
        if ed25519:
            return cls(Ed25519PrivateKey.generate())
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> SimPlatformPublicKey:
        return self._public

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def version(self) -> int:
        """The evidence version this platform issues (1: Ed25519, 2: ECDSA P-256)."""
        return self._version

    @property
    def algorithm(self) -> str:
        return "Ed25519" if self._version == VERSION_ED25519 else "ECDSA P-256"

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
            version=self._version,
        )
        return SimEvidence(
            debug=debug,
            svn=svn,
            timestamp=timestamp,
            measurement=measurement,
            report_data=report_data,
            platform_key_id=self._key_id,
            signature=self._sign(unsigned.signed_bytes()),
            version=self._version,
        )

    def _sign(self, message: bytes) -> bytes:
        key = self._key
        if isinstance(key, Ed25519PrivateKey):
            return key.sign(message)  # RFC 8032 section 5.1.6
        # FIPS 186-5 section 6.4.1 (OpenSSL's randomised k), SHA-256; the DER signature is
        # re-encoded as r || s, 32-byte big-endian integers (docs/simulator.md, version 2).
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_P256_SCALAR_SIZE, "big") + s.to_bytes(_P256_SCALAR_SIZE, "big")

    # --- storage -----------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> SimPlatform:
        """Load the platform key from ``directory``; it must exist and be private (0600)."""
        path = directory / PRIVATE_KEY_FILE
        try:
            # non-blocking: a FIFO in the key's place is refused below, not waited on for ever
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UsageError(
                f"no simulated platform key at {str(path)!r}; create one with `confide sim init --dir DIR`"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise UsageError(f"{str(path)!r} is not a regular file (the simulated platform key)")
            if stat.S_IMODE(mode) & 0o077:
                raise UsageError(
                    f"{str(path)!r} has mode {stat.S_IMODE(mode):04o}, expected 0600 (the simulated "
                    "platform key must not be readable by others)"
                )
            data = fh.read(_MAX_KEY_FILE + 1)
        if len(data) > _MAX_KEY_FILE:
            raise ParseError(f"larger than {_MAX_KEY_FILE} bytes, expected a PEM key", structure=str(path))
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ParseError("not a PEM PKCS#8 private key", structure=str(path)) from None
        if not isinstance(key, Ed25519PrivateKey) and not (
            isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
        ):
            raise ParseError(
                f"got a {type(key).__name__}, expected an ECDSA P-256 or Ed25519 key", structure=str(path)
            )
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


def load_platform_public_key(data: bytes, *, source: str = "platform public key") -> SimPlatformPublicKey:
    """Parse a simulated platform public key: PEM or DER SubjectPublicKeyInfo (ECDSA P-256 or
    Ed25519), the raw 32-byte Ed25519 key or the 65-byte uncompressed P-256 point (SEC 1 v2
    section 2.3.3; each binary or hex text)."""
    text = data.strip()
    key: object
    try:
        # The binary forms first, judged on the bytes as given: a raw key may begin or end with
        # bytes that are white space (0x0a, 0x20, ...), so its stripped length says nothing.
        # Neither binary form is ever PEM or hex text (a point starts with 0x04; a text that is
        # 32 bytes long is no key in any text form).
        if len(data) == _RAW_KEY_SIZE:
            key = Ed25519PublicKey.from_public_bytes(data)
        elif len(data) == _P256_POINT_SIZE and data[0] == 0x04:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
        elif text.startswith(b"-----BEGIN"):
            key = load_pem_public_key(text)
        elif len(text) == 2 * _RAW_KEY_SIZE:
            key = Ed25519PublicKey.from_public_bytes(binascii.unhexlify(text))
        elif len(text) == 2 * _P256_POINT_SIZE and text[:2] == b"04":
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), binascii.unhexlify(text))
        else:
            key = load_der_public_key(data)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise ParseError(
            "got neither a PEM/DER public key, a raw 32-byte Ed25519 key nor a 65-byte uncompressed "
            "P-256 point",
            structure=source,
        ) from None
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    name = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise ParseError(f"got a {name} key, expected an ECDSA P-256 or Ed25519 public key", structure=source)
