"""The transparency ledger: an RFC 9162 Merkle log with C2SP checkpoints, tiles and witnesses.

Modules: :mod:`.merkle` (hashing, proofs), :mod:`.encoding` (canonical entries),
:mod:`.note` (signed notes, keys), :mod:`.checkpoint`, :mod:`.tiles`, :mod:`.store`
(SQLite storage, group commit), :mod:`.serve` (tlog-tiles resources), :mod:`.auditor`,
:mod:`.witness`, :mod:`.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confide.ledger.auditor import (
        Auditor,
        AuditorState,
        LocalLogClient,
        LogClient,
        verify_checkpoint_update,
    )
    from confide.ledger.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, sign_checkpoint
    from confide.ledger.encoding import Entry, EntryType, canonical_json
    from confide.ledger.note import NoteSigner, NoteVerifier
    from confide.ledger.store import GroupCommitter, Ledger, connect, write_transaction
    from confide.ledger.witness import Witness

# Loaded on first use (PEP 562): a command that needs the entry encoding does not import the
# auditor, the store and their database drivers (docs/performance.md "CLI start-up").
_LAZY = {
    "Auditor": "auditor", "AuditorState": "auditor", "LocalLogClient": "auditor", "LogClient": "auditor",
    "verify_checkpoint_update": "auditor", "Checkpoint": "checkpoint", "SignedCheckpoint": "checkpoint",
    "open_checkpoint": "checkpoint", "sign_checkpoint": "checkpoint", "Entry": "encoding",
    "EntryType": "encoding", "canonical_json": "encoding", "NoteSigner": "note", "NoteVerifier": "note",
    "GroupCommitter": "store", "Ledger": "store", "connect": "store", "write_transaction": "store",
    "Witness": "witness",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
