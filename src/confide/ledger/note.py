"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A note is UTF-8 text ending in a newline, a blank line, and one or more signature lines
``— <key name> base64(key ID || signature)``. The key ID is
``SHA-256(key name || 0x0A || signature type || public key)[:4]`` (big-endian uint32).

Two signature types are implemented:

* ``0x01`` Ed25519 over the note text (the log's checkpoint signature);
* ``0x04`` timestamped Ed25519 cosignatures (c2sp.org/tlog-cosignature ``cosignature/v1``):
  the signature is ``u64 timestamp || Ed25519(msg)`` with
  ``msg = "cosignature/v1\\ntime <timestamp>\\n" || note text``.

Keys are written as Go's ``golang.org/x/mod/sumdb/note`` writes them: verifier keys
``<name>+<key ID, 8 hex>+base64(type || public key)`` and signer keys
``PRIVATE+KEY+<name>+<key ID>+base64(type || seed)``.

Parsing is hostile-input safe: anything malformed raises :class:`ParseError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from confide.errors import ParseError, SignatureError, UnknownKeyError
from confide.identity import is_small_order

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "b64decode_strict",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

SIG_TYPE_ED25519 = 0x01  # signed-note "Ed25519 signatures"
SIG_TYPE_COSIGNATURE_V1 = 0x04  # tlog-cosignature, timestamped Ed25519
ED25519_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
KEY_ID_SIZE = 4
TIMESTAMP_SIZE = 8
MAX_SIGNATURES = 100  # the spec asks for at least 16; Go's note package allows 100
MAX_NOTE_SIZE = 1 << 20
SIG_PREFIX = "— "  # em dash U+2014, space
COSIGNATURE_HEADER = "cosignature/v1\n"
_STRUCTURE = "signed note"


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4), padded, canonical; anything else is a ParseError."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ParseError(f"got {text[:64]!r}, expected standard base64", structure=what) from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ParseError(f"got {text[:64]!r}, expected canonical base64", structure=what)
    return raw


def _valid_name(name: str) -> bool:
    # signed-note: non-empty, no Unicode spaces, no plus.
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name) and "\n" not in name


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:KEY_ID_SIZE], "big")


def _check_note_text(text: str, what: str) -> None:
    if not text.endswith("\n"):
        raise ParseError("text must end with a newline", structure=what)
    for i, ch in enumerate(text):
        if ch != "\n" and ord(ch) < 0x20:
            raise ParseError(f"control character U+{ord(ch):04X} in text", structure=what, offset=i)
        if unicodedata.category(ch) == "Cs":
            raise ParseError("lone surrogate in text", structure=what, offset=i)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: int
    signature: bytes  # without the 4-byte key ID

    def line(self) -> str:
        blob = self.key_id.to_bytes(KEY_ID_SIZE, "big") + self.signature
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class Note:
    """A parsed (not yet verified) signed note."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")


def parse_note(data: bytes) -> Note:
    """Split a signed note into text and signature lines; ParseError on any malformation."""
    if len(data) > MAX_NOTE_SIZE:
        raise ParseError(f"note is {len(data)} bytes, expected at most {MAX_NOTE_SIZE}", structure=_STRUCTURE)
    try:
        msg = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("not valid UTF-8", structure=_STRUCTURE, offset=exc.start) from None
    for i, ch in enumerate(msg):
        if ch != "\n" and ord(ch) < 0x20:
            raise ParseError(f"control character U+{ord(ch):04X}", structure=_STRUCTURE, offset=i)
    split = msg.rfind("\n\n")
    if split < 0:
        raise ParseError("no blank line before the signatures", structure=_STRUCTURE)
    text, sig_block = msg[: split + 1], msg[split + 2 :]
    if not sig_block or not sig_block.endswith("\n"):
        raise ParseError("signature block must be non-empty and end with a newline", structure=_STRUCTURE)
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ParseError(
            f"got {len(lines)} signatures, expected at most {MAX_SIGNATURES}", structure=_STRUCTURE
        )
    sigs: list[NoteSignature] = []
    for n, line in enumerate(lines):
        field = f"signature[{n}]"
        if not line.startswith(SIG_PREFIX):
            raise ParseError(
                f"got {line[:40]!r}, expected '— <name> <base64>'", structure=_STRUCTURE, field=field
            )
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not _valid_name(name):
            raise ParseError(f"invalid key name {name[:40]!r}", structure=_STRUCTURE, field=field)
        blob = b64decode_strict(b64, f"{_STRUCTURE} {field}")
        if len(blob) < KEY_ID_SIZE + 1:
            raise ParseError(
                f"signature is {len(blob)} bytes, expected at least 5", structure=_STRUCTURE, field=field
            )
        sigs.append(NoteSignature(name, int.from_bytes(blob[:KEY_ID_SIZE], "big"), blob[KEY_ID_SIZE:]))
    return Note(text=text, signatures=tuple(sigs))


@dataclass(frozen=True)
class NoteVerifier:
    """A verifier key: name, signature type and public key (``name+hash+base64``)."""

    name: str
    sig_type: int
    public_key: bytes

    SUPPORTED: ClassVar[frozenset[int]] = frozenset({SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1})

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ParseError(f"invalid key name {self.name[:40]!r}", structure="verifier key")
        if self.sig_type not in self.SUPPORTED:
            raise ParseError(
                f"signature type {self.sig_type:#04x}, expected 0x01 (Ed25519) or 0x04 (cosignature/v1)",
                structure="verifier key",
            )
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise ParseError(
                f"public key is {len(self.public_key)} bytes, expected {ED25519_KEY_SIZE}",
                structure="verifier key",
            )
        # RFC 8032 §5.1.7 (cofactorless, as OpenSSL verifies): with a public key A of small
        # order, R of small order and S = 0 satisfy [S]B = R + [k]A for one message in eight or
        # more (every message for the identity point): "signatures" nobody made. A log key like
        # that would let anyone forge its checkpoints (and make a fork it signed deniable), a
        # witness key like that any cosignature; no seed gives one (RFC 8032 §5.1.5 clamps the
        # scalar to a multiple of 8), so such a key is refused wherever it is given.
        if is_small_order(self.public_key):
            raise ParseError(
                "an Ed25519 public key of small order, whose signatures anyone can make without a "
                "private key",
                structure="verifier key",
            )

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.sig_type, self.public_key)

    @property
    def vkey(self) -> str:
        b64 = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{b64}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise ParseError(f"got {vkey[:80]!r}, expected <name>+<8 hex>+<base64>", structure="verifier key")
        name, hash_hex, b64 = parts
        if len(hash_hex) != 8 or any(c not in "0123456789abcdef" for c in hash_hex):
            raise ParseError(
                f"key ID {hash_hex!r}, expected 8 lower-case hex digits", structure="verifier key"
            )
        raw = b64decode_strict(b64, "verifier key")
        if not raw:
            raise ParseError("empty key", structure="verifier key")
        verifier = cls(name=name, sig_type=raw[0], public_key=raw[1:])
        if verifier.key_id != int(hash_hex, 16):
            raise ParseError(
                f"key ID {hash_hex} does not match the key (computed {verifier.key_id:08x})",
                structure="verifier key",
            )
        return verifier

    def _ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def verify(self, text: str, signature: bytes) -> bool:
        """Whether ``signature`` (without key ID) is valid for the note ``text``."""
        if self.sig_type == SIG_TYPE_ED25519:
            message = text.encode("utf-8")
            sig = signature
            if len(sig) != ED25519_SIG_SIZE:
                return False
        else:
            if len(signature) != TIMESTAMP_SIZE + ED25519_SIG_SIZE:
                return False
            (timestamp,) = struct.unpack(">Q", signature[:TIMESTAMP_SIZE])
            if timestamp >= 1 << 63:
                return False
            message = cosignature_message(text, timestamp)
            sig = signature[TIMESTAMP_SIZE:]
        try:
            self._ed25519().verify(sig, message)
        except InvalidSignature:
            return False
        return True


def cosignature_message(text: str, timestamp: int) -> bytes:
    """tlog-cosignature "Ed25519 signed message": header, time line, whole checkpoint body."""
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


class NoteSigner:
    """An Ed25519 signing key with a note key name (type 0x01 or 0x04)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey, sig_type: int = SIG_TYPE_ED25519) -> None:
        pub = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = NoteVerifier(name=name, sig_type=sig_type, public_key=pub)
        self._key = private_key

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    @classmethod
    def generate(cls, name: str, sig_type: int = SIG_TYPE_ED25519) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate(), sig_type)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hash>+base64(type || seed)``. Never echoes the key."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise ParseError("expected PRIVATE+KEY+<name>+<8 hex>+<base64>", structure="signer key")
        name, hash_hex, b64 = parts[2], parts[3], parts[4]
        try:
            raw = base64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ParseError("key material is not base64", structure="signer key") from None
        if len(raw) != 1 + ED25519_KEY_SIZE or raw[0] not in NoteVerifier.SUPPORTED:
            raise ParseError(
                "expected 33 bytes: type 0x01 or 0x04 and a 32-byte seed", structure="signer key"
            )
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), raw[0])
        if len(hash_hex) != 8 or f"{signer.key_id:08x}" != hash_hex:
            raise ParseError("key ID does not match the key", structure="signer key")
        return signer

    @property
    def skey(self) -> str:
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        b64 = base64.b64encode(bytes([self.verifier.sig_type]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64}"

    def sign(self, text: str, *, timestamp: int | None = None) -> NoteSignature:
        """Sign note ``text``; cosigners (type 0x04) need the POSIX ``timestamp``."""
        _check_note_text(text, _STRUCTURE)
        if self.verifier.sig_type == SIG_TYPE_ED25519:
            sig = self._key.sign(text.encode("utf-8"))
        else:
            if timestamp is None or not 0 <= timestamp < 1 << 63:
                raise ValueError("a cosignature needs a timestamp in [0, 2**63)")
            sig = struct.pack(">Q", timestamp) + self._key.sign(cosignature_message(text, timestamp))
        return NoteSignature(self.name, self.key_id, sig)

    def __repr__(self) -> str:  # never show key material
        return f"NoteSigner({self.verifier.vkey!r})"


def sign_note(text: str, signers: list[NoteSigner], *, timestamp: int | None = None) -> bytes:
    """A note with ``text`` signed by each of ``signers``."""
    return Note(text, tuple(s.sign(text, timestamp=timestamp) for s in signers)).to_bytes()


def open_note(data: bytes, verifiers: list[NoteVerifier]) -> tuple[Note, list[NoteSignature]]:
    """Parse and verify a note against known keys (signed-note §Signatures).

    Signatures by unknown keys (name or key ID differ) are ignored. A signature by a known
    key that fails raises :class:`SignatureError`; no verified signature at all raises
    :class:`UnknownKeyError`. Returns the note and its verified signatures: one per key (the
    first), however many lines that key signed, so a count of them is a count of keys.
    """
    note = parse_note(data)
    _check_note_text(note.text, _STRUCTURE)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        # signed-note "Signatures": a signature whose name and ID match a known key MUST be
        # verified, and one that fails rejects the whole note, repeated lines included.
        if not verifier.verify(note.text, sig.signature):
            raise SignatureError(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        # The tuple of key name and key ID identifies the key: a key that signed twice (two
        # cosignature/v1 lines with other timestamps are both valid) is one signer, as in Go's
        # note.Open ("Drop repeated signatures by a single verifier").
        if (sig.name, sig.key_id) not in seen:
            seen.add((sig.name, sig.key_id))
            verified.append(sig)
    if not verified:
        present = ", ".join(f"{s.name}+{s.key_id:08x}" for s in note.signatures)
        wanted = ", ".join(f"{v.name}+{v.key_id:08x}" for v in verifiers) or "none"
        raise UnknownKeyError(f"note signed by {present}, expected a signature by {wanted}")
    return note, verified
