"""A C2SP witness (c2sp.org/tlog-witness) issuing tlog-cosignature ``cosignature/v1``.

For each log it knows (origin -> pinned log key) the witness remembers the latest
checkpoint it cosigned, in a small JSON state file replaced atomically. It cosigns a new
checkpoint only if the log's signature verifies, the request's old size equals the size it
remembers, and the consistency proof from that checkpoint to the new one verifies; it
persists the new checkpoint *before* returning the cosignature, under a lock, so two
concurrent requests cannot roll it back.

Errors and their tlog-witness HTTP statuses (:func:`http_status`): unknown origin 404
(:class:`UnknownKeyError`), no valid log signature 403 (:class:`UnknownKeyError` /
:class:`SignatureError`), old size above the checkpoint size 400 (:class:`RollbackError`),
old size not the remembered one, or same size with another root 409
(:class:`WitnessConflictError`, with ``known_size``), invalid proof 422
(:class:`ConsistencyError`), malformed request 400 (:class:`ParseError`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from confide import jsonstrict
from confide.errors import (
    ConfideError,
    ConsistencyError,
    ParseError,
    RollbackError,
    SignatureError,
    StorageError,
    UnknownKeyError,
)
from confide.fsutil import lock_beside, read_regular
from confide.ledger.auditor import atomic_write
from confide.ledger.checkpoint import Checkpoint, open_checkpoint
from confide.ledger.merkle import EMPTY_ROOT, verify_consistency
from confide.ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    b64decode_strict,
    parse_note,
)

__all__ = [
    "MAX_CHECKPOINT_TEXT",
    "MAX_PROOF_LINES",
    "Witness",
    "WitnessConflictError",
    "http_status",
    "parse_add_checkpoint",
]

MAX_PROOF_LINES = 63
MAX_REQUEST_SIZE = 1 << 20
# The state file holds per witnessed log the checkpoint it cosigned last with the log's signature
# (not the other lines of the request's note), each at most MAX_CHECKPOINT_TEXT: far below this
# for up to a few hundred logs.
MAX_STATE_SIZE = 16 << 20
# A checkpoint is three short lines (c2sp.org/tlog-checkpoint) and rarely has extension lines;
# one of a log's checkpoints is kept in the state, shared by every log: a log whose checkpoints
# filled a request (1 MiB) would make a few of them fill the state, and the witness refuse all.
MAX_CHECKPOINT_TEXT = 64 << 10


class WitnessConflictError(ConsistencyError):
    """409 Conflict: the request's old size (or root) is not what the witness cosigned last.

    A subclass of :class:`ConsistencyError` (same exit code); ``known_size`` is the size of
    the latest checkpoint the witness cosigned for the origin (the 409 response body).
    """

    def __init__(self, message: str, *, known_size: int) -> None:
        super().__init__(message)
        self.known_size = known_size


def http_status(exc: ConfideError, *, origin_known: bool = True) -> int:
    """The tlog-witness HTTP status for an error raised by :meth:`Witness.add_checkpoint`."""
    if isinstance(exc, WitnessConflictError):
        return 409
    if isinstance(exc, UnknownKeyError):
        return 403 if origin_known else 404
    if isinstance(exc, SignatureError):
        return 403
    if isinstance(exc, ConsistencyError):
        return 422
    if isinstance(exc, RollbackError | ParseError):
        return 400
    return 500


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], bytes]:
    """Split an ``add-checkpoint`` request body into (old size, proof, checkpoint note)."""
    if len(body) > MAX_REQUEST_SIZE:
        raise ParseError(
            f"request of {len(body)} bytes, expected at most {MAX_REQUEST_SIZE}", structure="add-checkpoint"
        )
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise ParseError("no empty line before the checkpoint", structure="add-checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ParseError("non-ASCII header lines", structure="add-checkpoint") from None
    first = lines[0]
    size_text = first[4:]
    if (
        not first.startswith("old ")
        or not size_text.isdigit()
        or (size_text != "0" and size_text.startswith("0"))
        or len(size_text) > 19
    ):
        raise ParseError(
            f"got {first[:40]!r}, expected 'old <size>'", structure="add-checkpoint", field="old"
        )
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise ParseError(
            f"got {len(proof_lines)} proof lines, expected at most 63", structure="add-checkpoint"
        )
    proof = [b64decode_strict(line, "add-checkpoint proof line") for line in proof_lines]
    return int(size_text), proof, note


class Witness:
    def __init__(self, signer: NoteSigner, state_path: Path, logs: dict[str, NoteVerifier]) -> None:
        if signer.verifier.sig_type != SIG_TYPE_COSIGNATURE_V1:
            raise ValueError("a witness key must have signature type 0x04 (cosignature/v1)")
        self.signer = signer
        self.state_path = Path(state_path)
        self.logs = dict(logs)
        self._lock = threading.Lock()

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, lock_beside(self.state_path):
            yield

    def _load(self) -> dict[str, str]:
        try:
            data = read_regular(self.state_path, MAX_STATE_SIZE)  # a FIFO: refused, not waited on
        except FileNotFoundError:
            return {}
        except OSError as exc:
            why = exc.strerror or exc
            raise StorageError(f"witness state {str(self.state_path)!r} unreadable: {why}") from None
        if len(data) > MAX_STATE_SIZE:
            raise StorageError(f"witness state {str(self.state_path)!r}: larger than {MAX_STATE_SIZE} bytes")
        try:
            doc = jsonstrict.loads(data, structure="witness state")
        except ParseError as exc:
            raise StorageError(f"witness state {str(self.state_path)!r} unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("logs"), dict):
            raise StorageError(f"witness state {str(self.state_path)!r}: unexpected content")
        logs = doc["logs"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in logs.items()):
            raise StorageError(f"witness state {str(self.state_path)!r}: unexpected content")
        return {str(k): str(v) for k, v in logs.items()}

    def _known(self, logs: dict[str, str], origin: str) -> Checkpoint | None:
        """The checkpoint of ``origin`` in the state ``logs``: one of the witness's own file that
        is no checkpoint of that origin is a :class:`StorageError` (a 500, not a 400 blaming the
        request, as a ParseError of it would be)."""
        note = logs.get(origin)
        if note is None:
            return None
        try:
            known = Checkpoint.from_text(parse_note(note.encode("utf-8")).text)
        except ParseError as exc:
            raise StorageError(
                f"witness state {str(self.state_path)!r}: the checkpoint of {origin!r} is unreadable: "
                f"{exc.message}"
            ) from None
        if known.origin != origin:
            raise StorageError(
                f"witness state {str(self.state_path)!r}: the checkpoint kept for {origin!r} is one of "
                f"{known.origin!r}"
            )
        return known

    def _save(self, logs: dict[str, str]) -> None:
        data = json.dumps({"version": 1, "logs": logs}, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(self.state_path, data.encode("utf-8"))
        except OSError as exc:
            raise StorageError(
                f"cannot write witness state {str(self.state_path)!r}: {exc.strerror}"
            ) from None

    def latest(self, origin: str) -> Checkpoint | None:
        """The latest checkpoint cosigned for ``origin``."""
        with self._locked():
            return self._known(self._load(), origin)

    def add_checkpoint(
        self, old_size: int, proof: list[bytes], checkpoint: bytes, *, at: datetime
    ) -> NoteSignature:
        """Verify and cosign ``checkpoint``; returns the cosignature (one note signature line)."""
        note = parse_note(checkpoint)
        origin = Checkpoint.from_text(note.text).origin
        log_key = self.logs.get(origin)
        if log_key is None:  # tlog-witness: an unknown origin is a 404, whatever else is wrong
            raise UnknownKeyError(f"unknown log origin {origin!r}")
        if len(note.text) > MAX_CHECKPOINT_TEXT:
            raise ParseError(
                f"checkpoint of {len(note.text)} characters, expected at most {MAX_CHECKPOINT_TEXT}",
                structure="add-checkpoint",
            )
        signed = open_checkpoint(checkpoint, log_key, origin=origin)
        new = signed.checkpoint
        if old_size > new.size:
            raise RollbackError(f"old size {old_size} is above the checkpoint size {new.size}")
        with self._locked():
            logs = self._load()
            known = self._known(logs, origin)
            known_size = 0 if known is None else known.size
            if old_size != known_size:
                raise WitnessConflictError(
                    f"old size {old_size}, but the witness last cosigned size {known_size} for {origin!r}",
                    known_size=known_size,
                )
            if known is None:
                if proof:
                    raise ConsistencyError("the consistency proof must be empty when the old size is 0")
                # RFC 9162 §2.1.1: a checkpoint of size 0 must have the empty tree's root.
                verify_consistency(0, new.size, EMPTY_ROOT, new.root, [])
            elif new.size == known.size:
                # tlog-witness: same size, another root is a 409 (a fork); the same root with a
                # proof is a consistency proof that does not verify (RFC 9162 §2.1.4: from a
                # size to itself it is empty), a 422, not a claim of a fork.
                if new.root != known.root:
                    raise WitnessConflictError(
                        f"a different root for size {new.size} than the one cosigned before: fork",
                        known_size=known_size,
                    )
                if proof:
                    raise ConsistencyError(
                        f"the consistency proof from size {new.size} to itself must be empty"
                    )
            else:
                verify_consistency(known.size, new.size, known.root, new.root, proof)
            cosignature = self.signer.sign(note.text, timestamp=int(at.timestamp()))
            # Only the log's own signature is kept with the text: the request's other lines
            # (unknown keys, up to the 1 MiB of a request) are not the witness's to store.
            logs[origin] = Note(note.text, signed.verified).to_bytes().decode("utf-8")
            self._save(logs)  # persisted before the cosignature is returned
        return cosignature
