"""Each policy's latest ``policy.created`` / ``policy.updated`` entry, read from the ledger's
entries themselves (docs/cas.md "What a policy's current version rests on").

A policy's head row is current only when it names the version the policy's latest head event
names (:mod:`confide.cas.policy_auth`). Up to schema 16 that event was looked up in the
``events`` table, an unauthenticated copy of the ledger's entries: whoever writes the database
could roll one policy's rows back to an earlier consistent state (each row with its genuine
MAC) and delete the later ``policy-updated`` rows. The ledger keeps the later entry (its leaf
hash is in the tiles, under every checkpoint signed since), so the answer is read there:

- :class:`HeadIndex` keeps, per process, every policy's head events (ledger index, ``hash``)
  for the ledger entries it has scanned, and scans only the entries appended since its last
  scan (:meth:`HeadIndex.view`: on a head read that misses the verified-head cache, and every
  few seconds in ``cas serve``, :class:`HeadIndexRefresher`). An attestation whose head is
  cached scans nothing.
- each scanned entry's bytes must hash (RFC 9162 ``hash_leaf``) to the leaf hash stored in the
  level-0 tile at its index, and a missing entry or tile, or a head entry that does not parse,
  is tampering: :class:`LedgerEntriesAltered`, logged (``ledger-entries-altered``) and counted
  (:attr:`HeadIndex.refusals`); no head is judged until the entry is restored.
- the ledger is append-only, so a genuine snapshot "each policy's latest head event as of size
  N" plus a scan from N to the current size gives the true answer whichever genuine snapshot an
  operator writes back: the one-row table ``policy_head_anchor`` holds such a snapshot, MAC'd
  under the master key (HMAC-SHA256 with an HKDF-SHA256 key, info :data:`ANCHOR_INFO`, over
  the key id, the size and the SHA-256 of the snapshot's text; :func:`anchor_mac`). A process
  starts from it (bounded work); a row that does not verify is :class:`HeadAnchorAltered`, a
  snapshot larger than the ledger is a rolled-back ledger (also refused), and a missing row
  means a scan from the ledger's first entry (that is how a schema-16 database is upgraded).
  :meth:`HeadIndex.store` writes a newer snapshot (``cas serve``: at the start and when the
  index is :data:`STORE_EVERY` entries ahead of the stored one).

Only committed entries are kept: a scan inside a write transaction (which may append entries
of its own and then roll back) brings the index up to date through a read transaction of its
own when it has the :class:`~confide.cas.db.Database`, and treats the entries only that
transaction sees as an overlay for that call, never kept. A reader is answered as of the ledger
size its own transaction sees (:meth:`HeadView.latest`), so a read transaction that began before
another thread's scan is not judged against entries it cannot see.

What remains (docs/limitations.md): a running process judges a head it has cached (same row,
same MACs) without scanning, so a row written back to exactly the values it last verified is
accepted until its next scan (:data:`REFRESH_SECONDS` in ``cas serve``); a whole-database
rollback (entries, tiles and snapshot together) is what ``--witness-quorum`` detects; an entry
and its tile hash both rewritten is only caught by the checkpoints (the CAS refuses to sign a
checkpoint inconsistent with the last one; auditors and witnesses check them).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from confide.cas.db import READ_OPTION, raw_connection
from confide.cas.periodic import PeriodicTask
from confide.cas.secrets import Sealer
from confide.errors import ConfideError, ParseError, StorageError
from confide.ledger.db import Conn, execute
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.merkle import HASH_SIZE, hash_leaf
from confide.ledger.store import Ledger
from confide.ledger.tiles import TILE_WIDTH

if TYPE_CHECKING:
    from confide.cas.db import Database

__all__ = [
    "ANCHOR_INFO",
    "REFRESH_SECONDS",
    "STORE_EVERY",
    "HeadAnchorAltered",
    "HeadIndex",
    "HeadIndexRefresher",
    "HeadView",
    "LedgerEntriesAltered",
    "anchor_mac",
    "check_leaf",
    "reauthenticate_anchor",
]

ANCHOR_INFO = b"confide-policy-head-anchor/v1"  # the HKDF info of the snapshot's MAC key
STORE_EVERY = 10_000  # entries the index gets ahead of the stored snapshot before it is rewritten
REFRESH_SECONDS = 5.0  # cas serve's scan interval (HeadIndexRefresher)
CHUNK = 4096  # entries read per statement
_KEY_ID_META = "master_key_id"
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_LOG = logging.getLogger("confide.cas")
# Canonical JSON sorts an entry's members, ``type`` and ``v`` last (confide.ledger.encoding):
# a head entry is recognised by its last bytes and only those are parsed.
_HEAD_TYPES = (EntryType.POLICY_CREATED, EntryType.POLICY_UPDATED)
_SUFFIXES = tuple(f',"type":"{t.value}","v":{v}}}'.encode() for t in _HEAD_TYPES for v in (1, 2))

Events = dict[str, list[tuple[int, str | None]]]


class LedgerEntriesAltered(StorageError):
    """A ledger entry's bytes do not hash to the leaf hash stored at its index (or the entry or
    its tile is missing, or a head entry does not parse): the database was altered."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(
            f"ledger entry {index} {why}: the database was altered; the CAS judges no policy's "
            "current version until the entry is restored"
        )
        self.index = index


class HeadAnchorAltered(StorageError):
    """The stored snapshot of the policies' head events (``policy_head_anchor``) does not
    authenticate under the master key, or is larger than the ledger."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the stored snapshot of the policies' current versions (policy_head_anchor) {why}: the "
            "database was altered; the CAS judges no policy's current version until it is restored "
            "or deleted (a deleted snapshot is rebuilt from the ledger's entries)"
        )


def anchor_mac(key: bytes, key_id: str, size: int, heads: str) -> str:
    """HMAC-SHA256 of a snapshot (module docstring): ``heads`` is its stored text."""
    digest = hashlib.sha256(heads.encode()).hexdigest()
    fields = json.dumps([key_id, size, digest], separators=(",", ":")).encode()
    message = ANCHOR_INFO + b"\x00anchor\x00" + fields
    return hmac.new(key, message, "sha256").hexdigest()


def _is_write(conn: Connection) -> bool:
    return not conn.get_execution_options().get(READ_OPTION, False)


def _latest(events: Events) -> dict[str, tuple[int, str | None]]:
    return {name: found[-1] for name, found in events.items() if found}


def _encode(latest: dict[str, tuple[int, str | None]]) -> str:
    return json.dumps({n: [i, h] for n, (i, h) in latest.items()}, sort_keys=True, separators=(",", ":"))


def _decode(text: str) -> Events:
    try:
        value = json.loads(text)
    except ValueError:
        raise HeadAnchorAltered("is not JSON") from None
    if not isinstance(value, dict):
        raise HeadAnchorAltered("is malformed")
    out: Events = {}
    for name, item in value.items():
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                and (item[1] is None or isinstance(item[1], str))):  # fmt: skip
            raise HeadAnchorAltered("is malformed")
        out[name] = [(item[0], item[1])]
    return out


def scan(raw: Conn, start: int, end: int) -> tuple[Events, int]:
    """The head events among ledger entries ``start`` to ``end`` (exclusive), each entry's bytes
    checked against the leaf hash of its level-0 tile; ``LedgerEntriesAltered`` otherwise.
    Returns the events and the number of entries scanned."""
    found: Events = {}
    at = start
    while at < end:
        stop = min(end, at + CHUNK)
        rows = execute(
            raw, "SELECT idx, data FROM ledger_entries WHERE idx >= ? AND idx < ? ORDER BY idx", (at, stop)
        ).fetchall()
        first_tile, last_tile = at // TILE_WIDTH, (stop - 1) // TILE_WIDTH
        tiles = {
            int(i): bytes(h)
            for i, h in execute(
                raw,
                "SELECT idx, hashes FROM ledger_tiles WHERE level = 0 AND idx >= ? AND idx <= ?",
                (first_tile, last_tile),
            ).fetchall()
        }
        expected = at
        for idx, blob in rows:
            index, data = int(idx), bytes(blob)
            if index != expected:
                raise _altered(expected, "is missing")
            expected += 1
            tile = tiles.get(index // TILE_WIDTH)
            slot = (index % TILE_WIDTH) * HASH_SIZE
            if tile is None or len(tile) < slot + HASH_SIZE:
                raise _altered(index, "has no leaf hash in the tiles")
            if not hmac.compare_digest(hash_leaf(data), tile[slot : slot + HASH_SIZE]):
                raise _altered(index, "does not hash to the leaf hash stored for it")
            if data.endswith(_SUFFIXES):
                try:
                    entry = Entry.from_bytes(data)
                except ParseError:
                    raise _altered(index, "is a head entry that does not parse") from None
                if entry.type in _HEAD_TYPES and entry.policy is not None:
                    digest = entry.payload.get("hash")
                    named = digest if isinstance(digest, str) else None
                    found.setdefault(entry.policy, []).append((index, named))
        if expected != stop:
            raise _altered(expected, "is missing")
        at = stop
    return found, end - start


def check_leaf(raw: Conn, index: int, data: bytes) -> None:
    """``LedgerEntriesAltered`` unless ``data`` hashes to the leaf hash stored for entry
    ``index`` (its level-0 tile)."""
    row = execute(
        raw, "SELECT hashes FROM ledger_tiles WHERE level = 0 AND idx = ?", (index // TILE_WIDTH,)
    ).fetchone()
    slot = (index % TILE_WIDTH) * HASH_SIZE
    tile = b"" if row is None else bytes(row[0])
    if len(tile) < slot + HASH_SIZE:
        raise _altered(index, "has no leaf hash in the tiles")
    if not hmac.compare_digest(hash_leaf(data), tile[slot : slot + HASH_SIZE]):
        raise _altered(index, "does not hash to the leaf hash stored for it")


def _altered(index: int, why: str) -> LedgerEntriesAltered:
    _LOG.warning(json.dumps({"event": "ledger-entries-altered", "index": index, "why": why}))
    return LedgerEntriesAltered(index, why)


def _index(event: tuple[int, str | None]) -> int:
    return event[0]


class HeadView:
    """The head events as one transaction sees the ledger (its size ``size``)."""

    __slots__ = ("events", "overlay", "size")

    def __init__(self, events: Events, overlay: Events, size: int) -> None:
        self.events, self.overlay, self.size = events, overlay, size

    def latest(self, name: str) -> str | None:
        """The ``hash`` of ``name``'s latest head event below this view's size (``None``: none,
        or one without a hash)."""
        mine = self.overlay.get(name)
        if mine:
            return mine[-1][1]
        found = self.events.get(name)
        if not found:
            return None
        if found[-1][0] < self.size:  # the usual case: the latest is visible to this reader
            return found[-1][1]
        at = bisect.bisect_left(found, self.size, key=_index) - 1
        return None if at < 0 else found[at][1]

    def latest_index(self, name: str) -> int | None:
        """The ledger index of ``name``'s latest head event below this view's size."""
        mine = self.overlay.get(name)
        if mine:
            return mine[-1][0]
        found = self.events.get(name) or []
        at = bisect.bisect_left(found, self.size, key=_index) - 1
        return None if at < 0 else found[at][0]


class HeadIndex:
    """Per process: every policy's head events in the ledger entries scanned so far (module
    docstring). ``db``: where a write transaction's caller reads the committed entries from
    (``None``: such a scan is an overlay only, as in a rotation's own :class:`PolicyAuth`).
    ``on_change(names)``: called (under the index's lock) with the policies whose head events a
    scan found, so the verified-head cache drops them."""

    def __init__(self, sealer: Sealer, db: Database | None = None) -> None:
        self.sealer = sealer
        self.db = db
        self.on_change: Callable[[Iterable[str]], None] = lambda names: None
        self._lock = threading.RLock()
        self._size: int | None = None  # entries absorbed (all committed); None: not loaded
        self._events: Events = {}
        self._stored = 0  # the size of the snapshot last read or written
        self.scanned = 0  # entries scanned (metric)
        self.refusals = 0  # altered entries or snapshots met (metric)

    @property
    def size(self) -> int | None:
        return self._size

    def _key(self, key_id: str) -> bytes:
        return self.sealer.only(key_id).derive_key(ANCHOR_INFO)

    # --- loading and scanning -------------------------------------------------------------------

    def _load(self, raw: Conn, ledger_size: int) -> None:
        """Start from the stored snapshot (verified), or from the ledger's first entry."""
        row = execute(raw, "SELECT size, heads, key_id, mac FROM policy_head_anchor WHERE id = 1").fetchone()
        if row is None:
            _LOG.info(json.dumps({"event": "policy-head-anchor-missing", "ledger_size": ledger_size}))
            self._size, self._events, self._stored = 0, {}, 0
            return
        size, heads, key_id, mac = row
        if not (type(size) is int and isinstance(heads, str) and isinstance(key_id, str)
                and isinstance(mac, str) and _KEY_ID.fullmatch(key_id)
                and key_id in self.sealer.key_ids):  # fmt: skip
            raise self._refuse(HeadAnchorAltered("does not authenticate under the master key"))
        if not hmac.compare_digest(anchor_mac(self._key(key_id), key_id, size, heads).encode(), mac.encode()):
            raise self._refuse(HeadAnchorAltered("does not authenticate under the master key"))
        if size > ledger_size:
            why = f"covers {size} ledger entries, the ledger has {ledger_size}"
            raise self._refuse(HeadAnchorAltered(why))
        self._events, self._size, self._stored = _decode(heads), size, size

    def _refuse(self, exc: StorageError) -> StorageError:
        self.refusals += 1
        if isinstance(exc, HeadAnchorAltered):
            _LOG.warning(json.dumps({"event": "policy-head-anchor-altered"}))
        return exc

    def _absorb(self, raw: Conn, ledger_size: int) -> None:
        """Load if need be, then keep the committed entries up to ``ledger_size`` (``raw``: a
        connection that sees only committed entries). Under the lock."""
        if self._size is None:
            self._load(raw, ledger_size)
        assert self._size is not None
        if ledger_size <= self._size:
            return
        started = time.monotonic()
        try:
            found, count = scan(raw, self._size, ledger_size)
        except LedgerEntriesAltered:
            self.refusals += 1
            raise
        for name, events in found.items():
            self._events.setdefault(name, []).extend(events)
        self.scanned += count
        self._size = ledger_size
        if found:
            self.on_change(found)
        if count >= CHUNK:
            _LOG.info(json.dumps({"event": "policy-head-index-scanned", "entries": count,
                                  "seconds": round(time.monotonic() - started, 3)}))  # fmt: skip

    def refresh(self, conn: Connection) -> int:
        """Bring the index up to the ledger's committed size (``conn``: a read transaction, or
        a write transaction when the index has its database). Returns the index's size."""
        self.view(conn)
        assert self._size is not None
        return self._size

    def view(self, conn: Connection) -> HeadView:
        """The head events as ``conn``'s transaction sees the ledger: the committed entries
        kept, and in a write transaction the entries only it sees as an overlay (module
        docstring)."""
        raw = raw_connection(conn)
        ledger_size = Ledger.size(raw)
        write = _is_write(conn)
        with self._lock:
            if not write:
                self._absorb(raw, ledger_size)
            elif self.db is not None and (self._size is None or self._size < ledger_size):
                with self.db.read() as other:
                    other_raw = raw_connection(other)
                    self._absorb(other_raw, Ledger.size(other_raw))
            elif self._size is None:
                # no database to read committed entries from: the snapshot only (it describes
                # committed entries whoever wrote it), the rest an overlay
                self._load(raw, ledger_size)
            assert self._size is not None
            base, events = self._size, self._events
        overlay: Events = {}
        if ledger_size > base:
            try:
                overlay, _ = scan(raw, base, ledger_size)
            except LedgerEntriesAltered:
                self.refusals += 1
                raise
        return HeadView(events, overlay, ledger_size)

    # --- the stored snapshot ----------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the index is :data:`STORE_EVERY` entries ahead of the stored snapshot."""
        return self._size is not None and self._size - self._stored >= STORE_EVERY

    def store(self, conn: Connection, now: float) -> bool:
        """Write the index as the stored snapshot in ``conn``'s write transaction, MAC'd under
        the master key the database names, when it is newer than the one stored (a stored row
        that does not verify is left as it is, logged: the next start refuses it). Returns
        whether it wrote."""
        raw = raw_connection(conn)
        with self._lock:
            if self._size is None:
                return False
            size, text = self._size, _encode(_latest(self._events))
        row = execute(raw, "SELECT size, heads, key_id, mac FROM policy_head_anchor WHERE id = 1").fetchone()
        if row is not None:
            stored_size, heads, stored_key, mac = row
            try:
                verified = (type(stored_size) is int and isinstance(heads, str) and isinstance(mac, str)
                            and isinstance(stored_key, str) and stored_key in self.sealer.key_ids
                            and hmac.compare_digest(anchor_mac(self._key(stored_key), stored_key, stored_size,
                                                               heads).encode(), mac.encode()))  # fmt: skip
            except ConfideError:
                verified = False
            if not verified:
                self.refusals += 1
                _LOG.warning(json.dumps({"event": "policy-head-anchor-altered", "action": "not-rewritten"}))
                return False
            if stored_size >= size:
                self._stored = max(self._stored, stored_size)
                return False
        key_id = _writing_key_id(raw, self.sealer)
        mac = anchor_mac(self._key(key_id), key_id, size, text)
        if row is None:
            execute(
                raw,
                "INSERT INTO policy_head_anchor (id, size, heads, updated_at, key_id, mac) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (size, text, now, key_id, mac),
            )
        else:
            execute(
                raw,
                "UPDATE policy_head_anchor SET size = ?, heads = ?, updated_at = ?, key_id = ?, mac = ? "
                "WHERE id = 1",
                (size, text, now, key_id, mac),
            )
        self._stored = size
        return True

    def metrics(self) -> dict[str, Any]:
        return {"size": self._size or 0, "stored": self._stored, "scanned": self.scanned,
                "refusals": self.refusals}  # fmt: skip


def _writing_key_id(raw: Conn, sealer: Sealer) -> str:
    got = execute(raw, "SELECT value FROM meta WHERE key = ?", (_KEY_ID_META,)).fetchone()
    return sealer.sealing_key_id if got is None or got[0] is None else str(got[0])


def reauthenticate_anchor(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> bool:
    """In a master-key rotation's transaction: verify the stored snapshot under the old key
    (``old``; :class:`HeadAnchorAltered` aborts the rotation, as an altered head does) and MAC
    it under the new one. Returns whether there was one."""
    raw = raw_connection(conn)
    row = execute(raw, "SELECT size, heads, key_id, mac FROM policy_head_anchor WHERE id = 1").fetchone()
    if row is None:
        return False
    size, heads, key_id, mac = row
    if not (type(size) is int and isinstance(heads, str) and isinstance(key_id, str) and isinstance(mac, str)
            and key_id in old.key_ids):  # fmt: skip
        raise HeadAnchorAltered("does not authenticate under the master key")
    if not hmac.compare_digest(
        anchor_mac(old.only(key_id).derive_key(ANCHOR_INFO), key_id, size, heads).encode(), mac.encode()
    ):
        raise HeadAnchorAltered("does not authenticate under the master key")
    new_mac = anchor_mac(new.only(new_key_id).derive_key(ANCHOR_INFO), new_key_id, size, heads)
    execute(raw, "UPDATE policy_head_anchor SET key_id = ?, mac = ? WHERE id = 1", (new_key_id, new_mac))
    return True


class HeadIndexRefresher(PeriodicTask):
    """``cas serve``: every ``interval`` seconds, scan the entries appended since (other
    replicas' too) in a read transaction, and store a newer snapshot when one is due. A
    failure is logged and tried again at the next tick (a head read refuses meanwhile)."""

    def __init__(
        self,
        index: HeadIndex,
        db: Database,
        interval: float = REFRESH_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(interval, what="head index refresh interval", thread_name="head-index", wait=wait)
        self.index, self.db, self.clock = index, db, clock

    def tick(self) -> bool:
        try:
            with self.db.read() as conn:
                self.index.refresh(conn)
            if self.index.due():
                with self.db.write() as conn:
                    self.index.store(conn, self.clock())
        except ConfideError as exc:
            failed = {"event": "policy-head-index-refresh-failed", "error": type(exc).__name__}
            _LOG.warning(json.dumps(failed))
            return False
        return True
