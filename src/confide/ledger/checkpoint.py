"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the signed tree head.

Note text::

    <origin>\\n
    <tree size, decimal, no leading zeroes>\\n
    <base64 root hash>\\n
    [<extension line>\\n ...]

wrapped in a signed note (:mod:`confide.ledger.note`) signed by the log's Ed25519 key,
whose key name is the origin.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from confide.errors import ParseError, VerificationError
from confide.ledger.merkle import HASH_SIZE
from confide.ledger.note import Note, NoteSignature, NoteSigner, NoteVerifier, b64decode_strict, open_note

__all__ = ["Checkpoint", "SignedCheckpoint", "open_checkpoint", "sign_checkpoint"]

MAX_TREE_SIZE = (1 << 63) - 1
_STRUCTURE = "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ParseError(f"origin {self.origin[:60]!r}, expected a non-empty line", structure=_STRUCTURE)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ParseError(f"tree size {self.size}, expected 0..2**63-1", structure=_STRUCTURE)
        if len(self.root) != HASH_SIZE:
            raise ParseError(
                f"root hash is {len(self.root)} bytes, expected {HASH_SIZE}", structure=_STRUCTURE
            )
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise ParseError("extension lines must be non-empty single lines", structure=_STRUCTURE)

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise ParseError("text must end with a newline", structure=_STRUCTURE)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ParseError(f"got {len(lines)} lines, expected at least 3", structure=_STRUCTURE)
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise ParseError("empty origin line", structure=_STRUCTURE, field="origin")
        if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0"):
            raise ParseError(
                f"got {size_text[:30]!r}, expected a decimal without leading zeroes",
                structure=_STRUCTURE,
                field="size",
            )
        if len(size_text) > 19 or int(size_text) > MAX_TREE_SIZE:
            raise ParseError("tree size exceeds 2**63-1", structure=_STRUCTURE, field="size")
        root = b64decode_strict(root_text, "checkpoint root hash")
        return cls(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint together with the note it came in (raw bytes kept for re-serving)."""

    checkpoint: Checkpoint
    note: Note
    raw: bytes
    verified: tuple[NoteSignature, ...]


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    """The signed note of ``checkpoint``."""
    text = checkpoint.to_text()
    return Note(text, (signer.sign(text),)).to_bytes()


def open_checkpoint(raw: bytes, log_key: NoteVerifier, *, origin: str | None = None) -> SignedCheckpoint:
    """Verify a checkpoint note against the pinned log key and parse it.

    Raises :class:`ParseError` for malformed input, :class:`SignatureError` for a bad
    signature by the pinned key, :class:`UnknownKeyError` when the pinned key did not sign,
    :class:`VerificationError` when the origin is not the expected one.
    """
    note, verified = open_note(raw, [log_key])
    checkpoint = Checkpoint.from_text(note.text)
    expected = origin if origin is not None else log_key.name
    if checkpoint.origin != expected:
        raise VerificationError(f"checkpoint origin {checkpoint.origin!r}, expected {expected!r}")
    return SignedCheckpoint(checkpoint=checkpoint, note=note, raw=raw, verified=tuple(verified))
