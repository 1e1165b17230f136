"""Stakeholder identities: Ed25519 key pairs that sign policy documents, approvals and reads.

An identity is named in policies by its *fingerprint*: the lower-case hex SHA-256 of the raw
32-byte Ed25519 public key. The identity file (``confide identity create --out FILE``) is JSON,
mode 0600, written atomically (:meth:`Identity.save`)::

    {"type": "confide-identity/v1", "name": "...", "fingerprint": "<hex>",
     "public_key": "<base64 raw>", "private_key": "<base64 raw seed>"}

Signatures are over RFC 8785 canonical JSON (``confide.policy.canonical.jcs``) of a document
whose ``type`` names what is signed, so a signature for one purpose never verifies for another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from confide import jsonstrict
from confide.errors import ParseError, SignatureError, UsageError
from confide.fsutil import new_file_error, write_new_whole

__all__ = ["Identity", "PublicIdentity", "fingerprint_of", "fingerprint_of_public_key", "load_identity"]

IDENTITY_TYPE = "confide-identity/v1"


def fingerprint_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


_P = 2**255 - 19  # RFC 8032 §5.1: the field of edwards25519
# The y coordinates (mod p) of the eight points of small order: the identity (1), the point of
# order 2 (-1), those of order 4 (0) and of order 8 (two values, each with both signs of x).
_SMALL_ORDER_Y = frozenset(
    {1, _P - 1, 0}
    | {
        int.from_bytes(bytes.fromhex(h), "little") & ((1 << 255) - 1)
        for h in (
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        )
    }
)


def is_small_order(public_raw: bytes) -> bool:
    """Whether ``public_raw`` encodes a point of small order (RFC 8032 §5.1.3 decoding: the low
    255 bits are y, taken mod p here, so encodings with y >= p are caught as well). Such a key
    verifies signatures nobody made: with R of small order and S = 0, [S]B = R + [k]A holds for
    one message in eight or more (every message for the identity point)."""
    return (int.from_bytes(public_raw, "little") & ((1 << 255) - 1)) % _P in _SMALL_ORDER_Y


def fingerprint_of_public_key(key: object) -> str:
    """The identity fingerprint of a public key object (``cryptography``): that of an identity
    whose key it is, as :class:`PublicIdentity` computes it. :class:`ValueError` saying why
    when it names no identity: a key of another type (identities are Ed25519 keys), or an
    Ed25519 key of small order, whose signatures :meth:`PublicIdentity.verify` refuses (an
    access entry naming it would grant nothing)."""
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            f"got a {_key_type_name(key)} key, expected an Ed25519 key (confide identities are Ed25519 "
            "key pairs, confide identity create)"
        )
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if is_small_order(raw):
        raise ValueError("got an Ed25519 key of small order, expected one whose signatures prove something")
    return fingerprint_of(raw)


def _key_type_name(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"{key.curve.name} EC"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str, size: int) -> bytes:
    if not isinstance(text, str):
        raise ParseError(f"got {type(text).__name__}, expected base64 text", structure="identity", field=what)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ParseError("invalid base64", structure="identity", field=what) from None
    if len(raw) != size:
        raise ParseError(f"got {len(raw)} bytes, expected {size}", structure="identity", field=what)
    return raw


@dataclass(frozen=True)
class PublicIdentity:
    """A verifier of an identity's signatures."""

    public_raw: bytes

    @classmethod
    def from_base64(cls, text: object) -> PublicIdentity:
        raw = _unb64(text, "public_key", 32)
        return cls(raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_raw)

    @property
    def public_base64(self) -> str:
        return _b64(self.public_raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        if is_small_order(self.public_raw):
            # No private key is needed to "sign" for such a key: it signs nothing (a board
            # member named only by its fingerprint could otherwise be anyone's).
            raise SignatureError(
                f"identity {self.fingerprint[:16]}… is an Ed25519 key of small order: its signatures "
                "prove nothing"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.public_raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"signature of identity {self.fingerprint[:16]}… does not verify") from None


class Identity:
    """A stakeholder's key pair. ``repr`` never shows the private key."""

    def __init__(self, private_key: Ed25519PrivateKey, name: str = "") -> None:
        self._key = private_key
        self.name = name
        self.public = PublicIdentity(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, fingerprint={self.fingerprint[:16]}…)"

    @classmethod
    def generate(cls, name: str = "") -> Identity:
        return cls(Ed25519PrivateKey.generate(), name)

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_json(self) -> str:
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return json.dumps(
            {
                "type": IDENTITY_TYPE,
                "name": self.name,
                "fingerprint": self.fingerprint,
                "public_key": self.public.public_base64,
                "private_key": _b64(seed),
            },
            indent=2,
        )

    def save(self, path: Path) -> None:
        """Write the identity file with mode 0600, atomically, and never over an existing file.

        The key is written and synced to a fresh temporary file in the same directory, which is
        then hard-linked to ``path`` (``link`` fails when ``path`` exists, so nothing is ever
        replaced; without hard links, renamed with ``RENAME_NOREPLACE``) and removed
        (:func:`confide.fsutil.write_new_whole`): ``path`` appears whole or not at all, and a
        failed write (a full disk, an interrupt) leaves neither a truncated identity at ``path``
        nor a key in a stray file. The directory is synced so that the new name survives a crash.

        Errors (:func:`confide.fsutil.new_file_error`): :class:`UsageError` when ``path`` exists,
        its directory does not, or permission is denied there; :class:`StorageError` when the
        storage fails (a full disk, a quota, an I/O error, a read-only file system)."""
        try:
            write_new_whole(path, self.to_json().encode(), 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists; refusing to overwrite an identity") from None
        except OSError as exc:
            raise new_file_error(exc, f"cannot write {path}: {exc.strerror or exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Identity:
        obj: Any = jsonstrict.loads(text, structure="identity")
        if not isinstance(obj, dict) or obj.get("type") != IDENTITY_TYPE:
            raise ParseError(f"expected type {IDENTITY_TYPE!r}", structure="identity", field="type")
        seed = _unb64(obj.get("private_key"), "private_key", 32)
        name = obj.get("name", "")
        identity = cls(Ed25519PrivateKey.from_private_bytes(seed), name if isinstance(name, str) else "")
        if obj.get("public_key") != identity.public.public_base64:
            raise ParseError("public key does not belong to the private key", structure="identity")
        return identity


MAX_IDENTITY_FILE = 64 * 1024
"""An identity file is about 300 bytes; a larger one is not one (and is not read whole)."""


def load_identity(path: Path) -> Identity:
    """The identity file at ``path``: a regular file of mode 0600 (no group or other bits), at
    most :data:`MAX_IDENTITY_FILE` bytes. The checks judge the descriptor that is read (opened
    without blocking, then ``fstat``), not an earlier look at the path: a FIFO or a
    world-readable file put there in between is refused, never waited on or loaded."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # refused before any open (a device's open may act)
            raise UsageError(f"--identity: {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--identity: cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or a device would block or never end; neither is an identity file.
            raise UsageError(f"--identity: {path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_IDENTITY_FILE and (chunk := os.read(fd, MAX_IDENTITY_FILE + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UsageError(f"--identity: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_IDENTITY_FILE:
        raise UsageError(f"--identity: {path} is larger than {MAX_IDENTITY_FILE} bytes: not an identity file")
    hint = "`confide identity create --out FILE` writes one"
    try:
        identity = Identity.from_json(b"".join(chunks))
    except ParseError as exc:
        if st.st_mode & 0o077:
            # Another file in its place (a policy file, arguments swapped): "chmod 600" would
            # send the user after the wrong problem. Still a usage error, as a loose mode is.
            raise UsageError(f"--identity: {path} is not an identity file ({hint})") from None
        raise ParseError(f"--identity: {path} is not an identity file ({exc.message}; {hint})") from None
    if st.st_mode & 0o077:
        mode = st.st_mode & 0o777
        raise UsageError(f"--identity: {path} is readable by others (mode {mode:o}); chmod 600 it")
    return identity
