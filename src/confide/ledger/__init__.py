"""The transparency ledger: an RFC 9162 Merkle log with C2SP checkpoints, tiles and witnesses.

Modules: :mod:`.merkle` (hashing, proofs), :mod:`.encoding` (canonical entries),
:mod:`.note` (signed notes, keys), :mod:`.checkpoint`, :mod:`.tiles`, :mod:`.store`
(SQLite storage, group commit), :mod:`.serve` (tlog-tiles resources), :mod:`.auditor`,
:mod:`.witness`, :mod:`.cli`.
"""

from __future__ import annotations

from confide.ledger.auditor import Auditor, AuditorState, LocalLogClient, LogClient, verify_checkpoint_update
from confide.ledger.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, sign_checkpoint
from confide.ledger.encoding import Entry, EntryType, canonical_json
from confide.ledger.note import NoteSigner, NoteVerifier
from confide.ledger.store import GroupCommitter, Ledger, connect, write_transaction
from confide.ledger.witness import Witness

__all__ = [
    "Auditor",
    "AuditorState",
    "Checkpoint",
    "Entry",
    "EntryType",
    "GroupCommitter",
    "Ledger",
    "LocalLogClient",
    "LogClient",
    "NoteSigner",
    "NoteVerifier",
    "SignedCheckpoint",
    "Witness",
    "canonical_json",
    "connect",
    "open_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint_update",
    "write_transaction",
]
