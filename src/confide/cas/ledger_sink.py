"""The CAS's events, appended to the transparency ledger in the transaction of the change.

The narrow interface between the CAS and the ledger is :meth:`EventSink.record`: the CAS calls
it inside the write transaction of every state change and attestation outcome; this sink turns
the event into a canonical ledger entry (``confide.ledger.encoding.Entry``) and appends it to
the RFC 9162 Merkle log stored in the same database, through the same connection. The
``events`` table keeps a per-policy index of the entries (``seq`` = ledger index + 1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from confide.cas.db import EventSink, insert_events, raw_connection
from confide.cas.entry_types import ENTRY_TYPES
from confide.errors import StorageError, UsageError
from confide.ledger.encoding import SALT_SIZE, encode_entry, format_time
from confide.ledger.merkle import hash_leaf
from confide.ledger.store import Ledger

__all__ = ["ENTRY_TYPES", "LedgerEventSink"]


class _Batch:
    """Events recorded on one connection inside :meth:`LedgerEventSink.batched`, encoded and
    waiting to be appended (``start``: the ledger's size when the first was recorded)."""

    __slots__ = ("conn", "entries", "events", "payloads", "start")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.start: int | None = None
        self.entries: list[bytes] = []
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.payloads: list[str] = []


def _encode(
    events: Sequence[tuple[str, str | None, dict[str, Any]]], at: str, salts: bytes
) -> tuple[list[bytes], list[str]]:
    """The canonical ledger entries of ``events`` (time ``at``, the i-th salted with the i-th
    :data:`SALT_SIZE` bytes of ``salts``) and their payloads' canonical JSON."""
    entries, payloads = [], []
    for i, (type_, policy, payload) in enumerate(events):
        salt = salts[i * SALT_SIZE : (i + 1) * SALT_SIZE]
        entry, payload_json = encode_entry(ENTRY_TYPES[type_], at, policy, payload, salt)
        entries.append(entry)
        payloads.append(payload_json.decode("utf-8"))
    return entries, payloads


class LedgerEventSink(EventSink):
    """``random(n)``: n random bytes, the entries' salts (docs/ledger.md "Entries"); the
    operating system's CSPRNG unless a test gives fixed bytes."""

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self.ledger = Ledger()
        self.random = random
        self._local = threading.local()  # .batch: the _Batch of this thread's transaction

    def record_many(self, conn: Connection, events: Sequence[tuple[str, str | None, dict[str, Any]]]) -> int:
        at = format_time(datetime.now(UTC))  # one time for the events of one change
        # every entry's salt drawn at once (one getrandom(2) for a change's entries)
        salts = self.random(SALT_SIZE * len(events))
        entries, payloads = _encode(events, at, salts)
        return self._append(conn, events, entries, payloads)

    def record_linked(
        self,
        conn: Connection,
        events: Sequence[tuple[str, str | None, dict[str, Any]]],
        linked: Sequence[tuple[str, str | None, dict[str, Any]]],
    ) -> int:
        """:meth:`EventSink.record_linked`: ``linked`` name the first of ``events`` by its ledger
        index and leaf hash (a release filed under an exporter names the attestation entry filed
        under the importer), all appended together in the caller's transaction."""
        at = format_time(datetime.now(UTC))
        salts = self.random(SALT_SIZE * (len(events) + len(linked)))
        entries, payloads = _encode(events, at, salts)
        raw = raw_connection(conn)
        batch = self._batch(conn)
        if batch is not None:
            if batch.start is None:
                batch.start = Ledger.size(raw, lock=True)
            index = batch.start + len(batch.entries)
        else:
            index = Ledger.size(raw, lock=True)  # the head row locked: the append starts here
        link = {"index": index, "leaf_hash": hash_leaf(entries[0]).hex()}
        linked = [(t, p, {**d, "attestation": link}) for t, p, d in linked]
        more, more_payloads = _encode(linked, at, salts[SALT_SIZE * len(events) :])
        first = self._append(conn, [*events, *linked], entries + more, payloads + more_payloads)
        if first != index + 1:
            raise StorageError("the ledger grew during a linked append")
        return first

    def _batch(self, conn: Connection) -> _Batch | None:
        batch: _Batch | None = getattr(self._local, "batch", None)
        return batch if batch is not None and batch.conn is conn else None

    def _append(
        self,
        conn: Connection,
        events: Sequence[tuple[str, str | None, dict[str, Any]]],
        entries: list[bytes],
        payloads: list[str],
    ) -> int:
        batch = self._batch(conn)
        if batch is not None:
            # In a group commit: appended with the others of its transaction (batched)
            if batch.start is None:
                batch.start = Ledger.size(raw_connection(conn))
            first = batch.start + len(batch.entries) + 1
            batch.entries += entries
            batch.events += events
            batch.payloads += payloads
            return first
        first = self.ledger.append_batch(raw_connection(conn), entries) + 1
        # the events index keeps the payload as the entry has it (canonical JSON)
        insert_events(conn, first, events, payloads)
        return first

    @contextmanager
    def batched(self, conn: Connection) -> Iterator[None]:
        """The events recorded on ``conn`` inside are encoded at once and appended together when
        the block ends without an exception, still inside the caller's write transaction: one
        ledger append (head, tiles) and one ``events`` insert for a group commit's attestations
        instead of one each. Nothing else may append to the ledger in that transaction meanwhile
        (the group commit's jobs are attestations, which only record events)."""
        if getattr(self._local, "batch", None) is not None:
            raise UsageError("LedgerEventSink.batched: already batching in this thread")
        batch = self._local.batch = _Batch(conn)
        try:
            yield
        finally:
            self._local.batch = None
        if batch.entries:
            first = self.ledger.append_batch(raw_connection(conn), batch.entries) + 1
            if batch.start is not None and first != batch.start + 1:
                raise StorageError("the ledger grew during a batched append")
            insert_events(conn, first, batch.events, batch.payloads)
