"""Each policy's latest ``policy.created`` / ``policy.updated`` entry, read from the ledger's
entries themselves (docs/cas.md "What a policy's current version rests on").

A policy's head row is current only when it names the version (and that version's predecessor)
the policy's latest head entry names (:mod:`confide.cas.policy_auth`). Up to schema 16 that
entry was looked up in the ``events`` table, an unauthenticated copy of the ledger's entries:
whoever writes the database could roll one policy's rows back to an earlier consistent state
(each row with its genuine MAC) and delete the later ``policy-updated`` rows. The ledger keeps
the later entry (its leaf hash is in the tiles, under every checkpoint signed since), so the
answer is read there:

- :class:`HeadIndex` keeps, per process, every policy's head entries (:class:`Event`: ledger
  index, ``hash``, ``predecessor``) for the ledger entries it has scanned, as a :class:`Chain`:
  the first a creation without predecessor, each later one an update whose predecessor is the
  version the entry before made current, each checked against its version's row verified under
  the master key (``validate``). The ledger is append-only but whoever writes the database can
  append a well-formed entry: one that does not continue the chain is ignored (logged
  ``policy-head-entry-ignored``), one whose version's row is missing or does not verify, or
  names another predecessor, is held with everything after it (logged
  ``policy-head-entry-held``; the policy is refused) until the row verifies. A version's hash
  covers its predecessor, so an appended entry can only move a chain forward, to a version
  never activated (no ``active`` MAC): the policy refused, never an older version current
  (docs/cas.md).
- it scans only the entries appended since its last scan (:meth:`HeadIndex.view`: on a head
  read that misses the verified-head cache, and every few seconds in ``cas serve``,
  :class:`HeadIndexRefresher`). An attestation whose head is cached scans nothing.
- each scanned entry's bytes must hash (RFC 9162 ``hash_leaf``) to the leaf hash stored in the
  level-0 tile at its index, and a missing entry or tile is tampering:
  :class:`LedgerEntriesAltered`, logged (``ledger-entries-altered``) and counted
  (:attr:`HeadIndex.refusals`); no head is judged until the entry is restored.
- the ledger is append-only, so a genuine snapshot "each policy's last accepted head entry (and
  its held ones) as of size N" plus a scan from N to the current size gives the true answer
  whichever genuine snapshot an operator writes back: the one-row table ``policy_head_anchor``
  holds such a snapshot, MAC'd under the master key (HMAC-SHA256 with an HKDF-SHA256 key, info
  :data:`ANCHOR_INFO`, over the key id, the size and the SHA-256 of the snapshot's texts;
  :func:`anchor_mac`). A process starts from it (bounded work); a row that does not verify is
  :class:`HeadAnchorAltered`, a snapshot larger than the ledger is a rolled-back ledger (also
  refused), and a missing row means a scan from the ledger's first entry (that is how a
  schema-16 database is upgraded). :meth:`HeadIndex.store` writes a newer snapshot (``cas
  serve``: at the start and when the index is :data:`STORE_EVERY` entries ahead of the stored
  one).

The same scan keeps the successor board's entries (schema 18; :mod:`confide.cas.board_ledger`:
board set and changed, version retired, approval withdrawn), in the same snapshot (its
``board`` text, under the same MAC): :meth:`HeadView.board` is what a read of the board is
judged against.

It keeps the secrets' versions too (schema 20; :mod:`confide.cas.secret_ledger`: each secret's
highest version a ``secrets.generated``, ``certificates.renewed`` or ``volume.key`` entry
records, and the first ``secrets.heads-bound`` entry), in the same snapshot (its ``secrets``
text, under the same MAC): :meth:`HeadView.secret` is what a secret's head is judged against
(:attr:`HeadIndex.on_secrets` drops the cached heads of the secrets a scan raised).

Only committed entries are kept: a scan inside a write transaction (which may append entries of
its own and then roll back) brings the index up to date through a read transaction of its own
when it has the :class:`~confide.cas.db.Database`, and treats the entries only that transaction
sees as an overlay for that call, never kept. A reader is answered as of the ledger size its
own transaction sees (:meth:`HeadView.latest`), so a read transaction that began before another
thread's scan is not judged against entries it cannot see.

Both kinds of heads are read the same two ways against it. **A refusal for a newer ledger
entry is read once more** (:func:`reread_behind_ledger`): PostgreSQL's reads are READ
COMMITTED, so a version another transaction commits (rows, head and entry together) between a
reader's read of the rows and its read of the ledger's size is in the ledger only for that
reader; read again after that size, the rows include it. **A verified head is cached only when
no scan dropped it since the view it was judged against** (:class:`VerifiedHeads`): each scan
that changes a policy's chain or raises a secret's version drops their cached heads and records
the ledger size it reached; a head judged against a smaller view (a read transaction that began
before the update, or whose check ran while another thread scanned) is not cached, or it would
outlive the drop meant for it.

What remains (docs/limitations.md): a running process judges a head it has cached (same row,
same MACs) without scanning, so a row written back to exactly the values it last verified is
accepted until its next scan (:data:`REFRESH_SECONDS` in ``cas serve``); a whole-database
rollback (entries, tiles and snapshot together) is what ``--witness-quorum`` detects; an entry
and its tile hash both rewritten is only caught by the checkpoints (the CAS refuses to sign a
checkpoint inconsistent with the last one; auditors and witnesses check them)."""

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
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, TypeVarTuple

from sqlalchemy import Connection

from confide.cas.board_ledger import BOARD_SUFFIXES, BoardLedger, BoardMarks, Mark, board_mark
from confide.cas.db import READ_OPTION, raw_connection
from confide.cas.periodic import PeriodicTask
from confide.cas.secret_ledger import SECRET_SUFFIXES, SecretMark, SecretVersions, secret_marks
from confide.cas.secrets import Sealer
from confide.errors import ConfideError, ParseError, StorageError
from confide.ledger.db import Conn, execute
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.merkle import HASH_SIZE, hash_leaf
from confide.ledger.store import Ledger
from confide.ledger.tiles import TILE_WIDTH
from confide.lru import Lru

if TYPE_CHECKING:
    from confide.cas.db import Database

__all__ = [
    "ANCHOR_INFO",
    "REFRESH_SECONDS",
    "STORE_EVERY",
    "HeadAnchorAltered",
    "HeadIndex",
    "HeadIndexRefresher",
    "HeadRefused",
    "HeadView",
    "LedgerEntriesAltered",
    "VerifiedHeads",
    "anchor_mac",
    "check_leaf",
    "reauthenticate_anchor",
    "reread_behind_ledger",
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
# the entries a scan parses: head, successor board and secret version entries
_WANTED = _SUFFIXES + BOARD_SUFFIXES + SECRET_SUFFIXES


Ts = TypeVarTuple("Ts")
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class HeadRefused(StorageError):
    """A policy's or a secret's current version refused (:class:`~confide.cas.policy_auth.PolicyRowsAltered`,
    :class:`~confide.cas.secret_heads.SecretRowsAltered`). ``ledger``: refused because the ledger
    records a newer version than the rows read, in entry ``ledger_at``
    (:func:`reread_behind_ledger`)."""

    ledger = False
    ledger_at: int | None = None


def reread_behind_ledger(read: Callable[[*Ts, HeadRefused | None], T], *args: *Ts) -> T:
    """``read(*args, None)`` (rows read, then judged against the ledger), read once more as
    ``read(*args, refusal)`` when it refuses for a newer ledger entry (:attr:`HeadRefused.ledger`).
    PostgreSQL's reads are READ COMMITTED: a version committed between the rows' read and the
    ledger size's is in the ledger only. Read again, after that size, the rows include the
    refusing entry's version or a later one: the second read is judged against that entry, not
    the ledger as read anew (a further version committed meanwhile would be the same race
    again): a secret's head against the entries up to it, a policy's head as the version of
    that entry or of a later one. What the ledger recorded before it is committed, so a refusal
    then stands (SQLite, a write transaction: one snapshot, the same answer)."""
    try:
        return read(*args, None)
    except HeadRefused as exc:
        if not exc.ledger or exc.ledger_at is None:
            raise
        refusal = exc
    return read(*args, refusal)


class VerifiedHeads(Generic[K, V]):
    """Heads verified against the ledger, cached per process (at most ``size``; module
    docstring). :meth:`forget` (a scan's) drops heads and records the ledger size the scan
    reached; :meth:`put` caches a head only when the view it was judged against is at least
    that large, so a head judged before a scan's drop is not cached after it."""

    get: Callable[[K], V | None]  # the cached head (``None``: none); the attestation path's hit

    def __init__(self, size: int) -> None:
        self._lru: Lru[K, V] = Lru(size)
        self._lock = threading.Lock()
        self._dropped_at = 0  # the largest ledger size a scan dropped heads at
        self.get = self._lru.get  # no frame of its own

    def put(self, key: K, value: V, as_of: int | None) -> None:
        """Cache ``value``, verified against the ledger's entries below ``as_of`` (``None``: judged
        against no ledger, by a checker no scan drops heads of)."""
        with self._lock:
            if as_of is None or as_of >= self._dropped_at:
                self._lru.put(key, value)

    def drop(self, key: K) -> None:
        """Drop ``key``'s head (this process moves it, in a write transaction)."""
        self._lru.pop(key)

    def forget(self, keys: Iterable[K], size: int) -> None:
        """Drop these heads: a scan up to ledger size ``size`` found a newer version of each
        (:attr:`HeadIndex.on_change`, :attr:`HeadIndex.on_secrets`)."""
        with self._lock:
            self._dropped_at = max(self._dropped_at, size)
            for key in keys:
                self._lru.pop(key)


class Event(NamedTuple):
    """A head entry as the ledger has it: its index (``at``), the version it makes current (``hash``),
    that version's predecessor (``None`` for a creation) and whether it is ``policy.created``."""

    at: int
    hash: str
    predecessor: str | None
    created: bool


class Chain:
    """One policy's head entries: ``accepted``, each continuing the one before (module
    docstring) and checked against its version's authenticated row, in ledger order (a
    snapshot keeps only the last); ``held``, the entries from the first that could not be
    checked yet (its version's row missing or not authenticating), waiting."""

    __slots__ = ("accepted", "held")

    def __init__(self, accepted: list[Event], held: list[Event]) -> None:
        self.accepted, self.held = accepted, held

    def copy(self) -> Chain:
        return Chain(list(self.accepted), list(self.held))


Chains = dict[str, Chain]
# predecessor_of(conn, name, hash): the predecessor of version ``hash`` of ``name`` as its row,
# verified under the master key, says; a StorageError when there is no such row or it does
# not verify (confide.cas.policy_auth.PolicyAuth.predecessor)
Validate = Callable[[Connection, str, str], "str | None"]


class LedgerEntriesAltered(StorageError):
    """A ledger entry's bytes do not hash to the leaf hash stored at its index (or the entry or
    its tile is missing): the database was altered."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(
            f"ledger entry {index} {why}: the database was altered; the CAS judges no policy's "
            "current version until the entry is restored"
        )
        self.index = index


class HeadAnchorAltered(StorageError):
    """The stored snapshot of the policies' head entries (``policy_head_anchor``) does not
    authenticate under the master key, or is larger than the ledger."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the stored snapshot of the policies' current versions (policy_head_anchor) {why}: the "
            "database was altered; the CAS judges no policy's current version until it is restored "
            "or deleted (a deleted snapshot is rebuilt from the ledger's entries)"
        )


def anchor_mac(key: bytes, key_id: str, size: int, heads: str, board: str, secrets: str) -> str:
    """HMAC-SHA256 of a snapshot (module docstring): ``heads``, ``board`` and ``secrets`` are its
    stored texts (the policies' head entries; the successor board's entries, schema 18; the
    secrets' versions, schema 20). A snapshot of an earlier schema (no ``board`` or no
    ``secrets``) does not verify: the migrations to 18 and 20 delete it."""
    digests = [hashlib.sha256(text.encode()).hexdigest() for text in (heads, board, secrets)]
    fields = json.dumps([key_id, size, *digests], separators=(",", ":")).encode()
    message = ANCHOR_INFO + b"\x00anchor\x00" + fields
    return hmac.new(key, message, "sha256").hexdigest()


def _is_write(conn: Connection) -> bool:
    return not conn.get_execution_options().get(READ_OPTION, False)


def _event_json(e: Event) -> list[object]:
    return [e.at, e.hash, e.predecessor, e.created]


def _encode(chains: Chains) -> str:
    out = {
        name: {"latest": _event_json(c.accepted[-1]) if c.accepted else None,
               "held": [_event_json(e) for e in c.held]}
        for name, c in chains.items() if c.accepted or c.held
    }  # fmt: skip
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def _event_of(item: object) -> Event:
    if not (isinstance(item, list) and len(item) == 4 and type(item[0]) is int and isinstance(item[1], str)
            and (item[2] is None or isinstance(item[2], str)) and type(item[3]) is bool):  # fmt: skip
        raise HeadAnchorAltered("is malformed")
    return Event(item[0], item[1], item[2], item[3])


def _decode(text: str) -> Chains:
    try:
        value = json.loads(text)
    except ValueError:
        raise HeadAnchorAltered("is not JSON") from None
    if not isinstance(value, dict):
        raise HeadAnchorAltered("is malformed")
    out: Chains = {}
    for name, item in value.items():
        if not (
            isinstance(item, dict) and set(item) == {"latest", "held"} and isinstance(item["held"], list)
        ):
            raise HeadAnchorAltered("is malformed")
        latest = item["latest"]
        out[name] = Chain([] if latest is None else [_event_of(latest)], [_event_of(e) for e in item["held"]])
    return out


def _head_event(index: int, data: bytes) -> tuple[str, Event] | None:
    """The policy and :class:`Event` of a head entry (``None``: not one, or malformed: logged,
    and never a link of a chain)."""
    try:
        entry = Entry.from_bytes(data)
    except ParseError:
        entry = None
    if entry is None or entry.type not in _HEAD_TYPES or entry.policy is None:
        _ignored(index, "is not a well-formed head entry")
        return None
    digest, predecessor = entry.payload.get("hash"), entry.payload.get("predecessor", 0)
    if not (isinstance(digest, str) and (predecessor is None or isinstance(predecessor, str))):
        _ignored(index, "names no version or no predecessor")
        return None
    return entry.policy, Event(index, digest, predecessor, entry.type is EntryType.POLICY_CREATED)


class Scanned(NamedTuple):
    """What :func:`scan` found, in ledger order: the head entries (policy, :class:`Event`), the
    successor board's entries, the secrets' versions (:mod:`confide.cas.secret_ledger`), the
    indexes of the ``secrets.heads-bound`` entries, and the number of entries scanned."""

    found: list[tuple[str, Event]]
    marks: list[Mark]
    secrets: list[SecretMark]
    bound: list[int]
    entries: int


def scan(raw: Conn, start: int, end: int) -> Scanned:
    """The head entries, the successor board's entries (:func:`~confide.cas.board_ledger.board_mark`)
    and the secrets' versions (:func:`~confide.cas.secret_ledger.secret_marks`) among ledger
    entries ``start`` to ``end`` (exclusive), in order, each entry's bytes checked against the
    leaf hash of its level-0 tile; ``LedgerEntriesAltered`` otherwise."""
    found: list[tuple[str, Event]] = []
    marks: list[Mark] = []
    secrets: list[SecretMark] = []
    bound: list[int] = []
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
            if not data.endswith(_WANTED):  # most entries (attestations): one test
                continue
            if data.endswith(_SUFFIXES):
                if (event := _head_event(index, data)) is not None:
                    found.append(event)
            elif data.endswith(SECRET_SUFFIXES):
                versions, heads_bound = secret_marks(index, data)
                secrets += versions
                if heads_bound:
                    bound.append(index)
            elif (mark := board_mark(index, data)) is not None:
                marks.append(mark)
        if expected != stop:
            raise _altered(expected, "is missing")
        at = stop
    return Scanned(found, marks, secrets, bound, end - start)


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


def _ignored(index: int, why: str) -> None:
    _LOG.warning(json.dumps({"event": "policy-head-entry-ignored", "index": index, "why": why}))


def _continues(chain: Chain, event: Event) -> bool:
    """Whether ``event`` continues ``chain``: the first is a creation without predecessor, each
    later one an update whose predecessor is the version the one before made current."""
    if not chain.accepted:
        return event.created and event.predecessor is None
    return not event.created and event.predecessor == chain.accepted[-1].hash


def _resolve(name: str, chain: Chain, validate: Validate, conn: Connection) -> int:
    """Accept ``chain``'s held entries in order while each continues the chain and its version's
    authenticated row names the same predecessor; drop (logged) one that does not continue.
    Returns the number dropped."""
    dropped = 0
    while chain.held:
        event = chain.held[0]
        if not _continues(chain, event):
            _ignored(event.at, f"does not continue the chain of policy {name[:128]!r}")
            chain.held.pop(0)
            dropped += 1
            continue
        try:
            fits = validate(conn, name, event.hash) == event.predecessor
        except StorageError:
            fits = False
        if not fits:
            _LOG.warning(
                json.dumps({"event": "policy-head-entry-held", "index": event.at, "policy": name[:128]})
            )
            return dropped
        chain.accepted.append(chain.held.pop(0))
    return dropped


def _index(event: Event) -> int:
    return event.at


class HeadView:
    """The head entries as one transaction sees the ledger (its size ``size``), and the
    successor board's entries (``marks``, committed ones; :meth:`board`), and the secrets'
    versions (``secrets``, the overlay's included; :meth:`secret`)."""

    __slots__ = ("chains", "marks", "overlay", "refused", "secrets", "size")

    def __init__(
        self,
        chains: Chains,
        overlay: Chains,
        size: int,
        marks: BoardMarks | None = None,
        refused: Callable[[], None] = lambda: None,
        secrets: SecretVersions | None = None,
    ) -> None:
        self.chains, self.overlay, self.size = chains, overlay, size
        self.marks, self.refused = marks or BoardMarks(), refused
        self.secrets = secrets or SecretVersions()

    def secret(self, policy: str, name: str, below: int | None = None) -> tuple[int, int] | None:
        """The newest version of secret ``name`` of ``policy`` an entry below this view's size
        (and below ``below`` when given) records, and that entry's index (``None``: none;
        :mod:`confide.cas.secret_ledger`). The entries only a write transaction sees are
        included: a version its caller wrote and recorded is the newest."""
        return self.secrets.newest(policy, name, self.size if below is None else min(self.size, below))

    def board(self) -> BoardLedger:
        """The successor board as the ledger's committed entries below this view's size record
        it (:mod:`confide.cas.board_ledger`). The entries only a write transaction sees (the
        overlay) are left out: that transaction wrote them, with their rows, so the rows are
        at least as new, and the check only refuses rows older than the entries."""
        return self.marks.as_of(self.size, self.refused)

    def current(self) -> list[str]:
        """The names of the policies with an accepted head entry below this view's size: every
        policy that has a current version (a head is never deleted)."""
        names = set(self.chains).union(self.overlay)
        return sorted(n for n in names if self.latest(n)[0] is not None)

    def accepted_since(self, name: str, at: int, digest: str, predecessor: str | None) -> bool:
        """Whether an accepted head entry of ``name`` at index ``at`` or later, below this view's
        size, makes version ``digest`` (with ``predecessor``) current: a head row read after
        entry ``at`` was committed that is not the latest (a later update committed since) was
        current when it was read (:func:`reread_behind_ledger`)."""
        chain = self.overlay.get(name) or self.chains.get(name)
        if chain is None:
            return False
        accepted = chain.accepted  # only ever appended to
        start = bisect.bisect_left(accepted, at, key=_index)
        return any(
            e.at < self.size and e.hash == digest and e.predecessor == predecessor for e in accepted[start:]
        )

    def latest(self, name: str) -> tuple[Event | None, int | None]:
        """``name``'s latest accepted head entry below this view's size (``None``: none), and
        the index of its first held entry below it (``None``: none)."""
        chain = self.overlay.get(name) or self.chains.get(name)
        if chain is None:
            return None, None
        first = chain.held[:1]  # one copy: another thread's scan may accept it meanwhile
        held = first[0].at if first and first[0].at < self.size else None
        accepted = chain.accepted  # only ever appended to
        if accepted and accepted[-1].at < self.size:  # the usual case: visible to this reader
            return accepted[-1], held
        at = bisect.bisect_left(accepted, self.size, key=_index) - 1
        return (None if at < 0 else accepted[at]), held


class HeadIndex:
    """Per process: every policy's chain of head entries in the ledger entries scanned so far
    (module docstring). ``db``: where a write transaction's caller reads the committed entries
    from (``None``: such a scan is an overlay only, as in a rotation's own :class:`PolicyAuth`).
    ``validate``: the predecessor a version's authenticated row names (:data:`Validate`).
    ``on_change(names, size)``: called (under the index's lock) with the policies whose chains a
    scan changed and the ledger size the index reached, so the verified-head cache drops them
    (:meth:`VerifiedHeads.forget`); ``on_secrets(keys, size)``: likewise with the secrets
    (policy, name) whose newest recorded version a scan raised."""

    def __init__(self, sealer: Sealer, validate: Validate, db: Database | None = None) -> None:
        self.sealer = sealer
        self.validate = validate
        self.db = db
        self.on_change: Callable[[Iterable[str], int], None] = lambda names, size: None
        self.on_secrets: Callable[[Iterable[tuple[str, str]], int], None] = lambda keys, size: None
        self._lock = threading.RLock()
        self._size: int | None = None  # entries absorbed (all committed); None: not loaded
        self._chains: Chains = {}
        self._board = BoardMarks()  # the successor board's entries (confide.cas.board_ledger)
        self._secrets = SecretVersions()  # the secrets' versions (confide.cas.secret_ledger)
        self._stored = 0  # the size of the snapshot last read or written
        self.scanned = 0  # entries scanned (metric)
        self.refusals = 0  # altered entries or snapshots met (metric)
        self.ignored = 0  # head entries that do not continue their chain (metric)
        self.board_refusals = 0  # successor board rows older than the ledger, refused (metric)

    @property
    def size(self) -> int | None:
        return self._size

    def _key(self, key_id: str) -> bytes:
        return self.sealer.only(key_id).derive_key(ANCHOR_INFO)

    # --- loading and scanning -------------------------------------------------------------------

    def _load(self, raw: Conn, ledger_size: int) -> int:
        """Start from the stored snapshot (verified), or from the ledger's first entry. Returns
        the ledger size the snapshot was judged against: ``ledger_size``, or the ledger's size
        read again after the snapshot when the snapshot is larger (below)."""
        row = execute(raw, _SELECT_ANCHOR).fetchone()
        if row is None:
            _LOG.info(json.dumps({"event": "policy-head-anchor-missing", "ledger_size": ledger_size}))
            self._size, self._chains, self._board, self._stored = 0, {}, BoardMarks(), 0
            self._secrets = SecretVersions()
            return ledger_size
        size, heads, board, secrets, key_id, mac = row
        if not _verified(self.sealer, size, heads, board, secrets, key_id, mac):
            raise self._refuse(HeadAnchorAltered("does not authenticate under the master key"))
        if size > ledger_size:
            # PostgreSQL reads are READ COMMITTED: another replica may have committed entries
            # and a newer snapshot after this transaction read the ledger's size. A snapshot
            # never covers more than the ledger had committed when it was written, and the
            # ledger only grows, so the size read after the snapshot covers it, unless the
            # ledger was rolled back under it. (SQLite, or a write transaction: the same
            # snapshot, the same size.)
            ledger_size = Ledger.size(raw)
        if size > ledger_size:
            why = f"covers {size} ledger entries, the ledger has {ledger_size}"
            raise self._refuse(HeadAnchorAltered(why))
        marks = BoardMarks.decode(board, lambda: HeadAnchorAltered("is malformed"))
        versions = SecretVersions.decode(secrets, lambda: HeadAnchorAltered("is malformed"))
        self._chains, self._board, self._size, self._stored = _decode(heads), marks, size, size
        self._secrets = versions
        return ledger_size

    def _refuse(self, exc: StorageError) -> StorageError:
        self.refusals += 1
        if isinstance(exc, HeadAnchorAltered):
            _LOG.warning(json.dumps({"event": "policy-head-anchor-altered"}))
        return exc

    def _scan(self, raw: Conn, start: int, end: int) -> Scanned:
        started = time.monotonic()
        try:
            got = scan(raw, start, end)
        except LedgerEntriesAltered:
            self.refusals += 1
            raise
        self.scanned += got.entries
        if got.entries >= CHUNK:
            _LOG.info(json.dumps({"event": "policy-head-index-scanned", "entries": got.entries,
                                  "seconds": round(time.monotonic() - started, 3)}))  # fmt: skip
        return got

    def _extend(
        self, chains: Chains, found: list[tuple[str, Event]], conn: Connection, *, copy: bool
    ) -> set[str]:
        """Queue ``found`` on their policies' chains in ``chains`` (copies of the shared ones
        when ``copy``) and resolve them. Returns the policies changed."""
        changed: set[str] = set()
        for name, event in found:
            chain = chains.get(name)
            if chain is None:
                chain = chains[name] = Chain([], [])
            elif copy and name not in changed:
                chain = chains[name] = chain.copy()
            changed.add(name)
            chain.held.append(event)
        for name in changed:
            self.ignored += _resolve(name, chains[name], self.validate, conn)
        return changed

    def _absorb(self, conn: Connection, ledger_size: int) -> int:
        """Load if need be, then keep the committed entries up to ``ledger_size`` (``conn``: a
        transaction that sees only committed entries), and try the held ones again. Under the
        lock. Returns the ledger size absorbed: ``ledger_size``, or the one the load read
        again (:meth:`_load`)."""
        raw = raw_connection(conn)
        if self._size is None:
            ledger_size = self._load(raw, ledger_size)
        assert self._size is not None
        changed: set[str] = set()
        raised: set[tuple[str, str]] = set()
        for name, chain in self._chains.items():
            if chain.held:  # tampering met before: its version's row may be restored now
                before = len(chain.accepted), len(chain.held)
                self.ignored += _resolve(name, chain, self.validate, conn)
                if (len(chain.accepted), len(chain.held)) != before:
                    changed.add(name)
        if ledger_size > self._size:
            got = self._scan(raw, self._size, ledger_size)
            found = got.found
            # Resolved on copies of the chains they touch, installed once all are: an error
            # midway (the database failing under a version row's read) leaves the index as it
            # was, so the next scan does not meet these entries again as ones that do not
            # continue their chains (logged and counted as tampering).
            staged: Chains = {}
            for name, _event in found:
                if name not in staged:
                    shared = self._chains.get(name)
                    staged[name] = shared.copy() if shared is not None else Chain([], [])
            ignored = self.ignored
            try:
                changed |= self._extend(staged, found, conn, copy=False)
            except BaseException:
                self.ignored = ignored
                raise
            self._chains.update(staged)
            self._board = self._board.extended(got.marks)
            self._secrets, raised = self._secrets.extended(got.secrets, got.bound)
            self._size = ledger_size
        if changed:
            self.on_change(changed, self._size)
        if raised:
            self.on_secrets(raised, self._size)
        return ledger_size

    def refresh(self, conn: Connection) -> int:
        """Bring the index up to the ledger's committed size (``conn``: a read transaction, or
        a write transaction when the index has its database). Returns the index's size."""
        self.view(conn)
        assert self._size is not None
        return self._size

    def view(self, conn: Connection) -> HeadView:
        """The head entries as ``conn``'s transaction sees the ledger: the committed entries
        kept, and in a write transaction the entries only it sees as an overlay (module
        docstring)."""
        raw = raw_connection(conn)
        ledger_size = Ledger.size(raw)
        write = _is_write(conn)
        with self._lock:
            if not write:
                # the view is as of the size the load judged the snapshot against (a larger
                # one when another replica stored a newer snapshot meanwhile: _load)
                ledger_size = self._absorb(conn, ledger_size)
            elif self.db is not None and (self._size is None or self._size < ledger_size):
                with self.db.read() as other:
                    self._absorb(other, Ledger.size(raw_connection(other)))
            elif self._size is None:
                # no database to read committed entries from: the snapshot only (it describes
                # committed entries whoever wrote it), the rest an overlay
                self._load(raw, ledger_size)
            assert self._size is not None
            base, chains, marks, secrets = self._size, self._chains, self._board, self._secrets
            overlay: Chains = {}
            if ledger_size > base:
                ignored = self.ignored
                got = self._scan(raw, base, ledger_size)
                secrets = secrets.extended(got.secrets, got.bound)[0]
                for name, event in got.found:
                    if name not in overlay:
                        shared = chains.get(name)
                        overlay[name] = shared.copy() if shared is not None else Chain([], [])
                    overlay[name].held.append(event)
                for name, chain in overlay.items():
                    _resolve(name, chain, self.validate, conn)
                self.ignored = ignored  # counted when the entries are kept, not per overlay
        return HeadView(chains, overlay, ledger_size, marks, self._board_refused, secrets)

    def _board_refused(self) -> None:
        self.board_refusals += 1

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
            size, text, board = self._size, _encode(self._chains), self._board.encode()
            secrets = self._secrets.encode()
        row = execute(raw, _SELECT_ANCHOR).fetchone()
        if row is not None:
            stored_size = row[0]
            if not _verified(self.sealer, *row):
                self.refusals += 1
                _LOG.warning(json.dumps({"event": "policy-head-anchor-altered", "action": "not-rewritten"}))
                return False
            if stored_size >= size:
                self._stored = max(self._stored, stored_size)
                return False
        key_id = _writing_key_id(raw, self.sealer)
        mac = anchor_mac(self._key(key_id), key_id, size, text, board, secrets)
        if row is None:
            execute(
                raw,
                "INSERT INTO policy_head_anchor (id, size, heads, board, secrets, updated_at, key_id, mac) "
                "VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (size, text, board, secrets, now, key_id, mac),
            )
        else:
            execute(
                raw,
                "UPDATE policy_head_anchor SET size = ?, heads = ?, board = ?, secrets = ?, updated_at = ?, "
                "key_id = ?, mac = ? WHERE id = 1",
                (size, text, board, secrets, now, key_id, mac),
            )
        self._stored = size
        return True

    def metrics(self) -> dict[str, Any]:
        return {"size": self._size or 0, "stored": self._stored, "scanned": self.scanned,
                "refusals": self.refusals, "board_refusals": self.board_refusals}  # fmt: skip


_SELECT_ANCHOR = "SELECT size, heads, board, secrets, key_id, mac FROM policy_head_anchor WHERE id = 1"


def _verified(
    sealer: Sealer, size: object, heads: object, board: object, secrets: object, key_id: object, mac: object
) -> bool:
    """Whether a stored snapshot's row authenticates under the master key it names (one of
    ``sealer``'s): its MAC over its key id, size and texts (:func:`anchor_mac`)."""
    if not (type(size) is int and isinstance(heads, str) and isinstance(board, str)
            and isinstance(secrets, str) and isinstance(key_id, str) and isinstance(mac, str)
            and _KEY_ID.fullmatch(key_id) and key_id in sealer.key_ids):  # fmt: skip
        return False
    try:
        key = sealer.only(key_id).derive_key(ANCHOR_INFO)
    except (ConfideError, KeyError, ValueError):
        return False
    return hmac.compare_digest(anchor_mac(key, key_id, size, heads, board, secrets).encode(), mac.encode())


def _writing_key_id(raw: Conn, sealer: Sealer) -> str:
    got = execute(raw, "SELECT value FROM meta WHERE key = ?", (_KEY_ID_META,)).fetchone()
    return sealer.sealing_key_id if got is None or got[0] is None else str(got[0])


def reauthenticate_anchor(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> bool:
    """In a master-key rotation's transaction: verify the stored snapshot under the old key
    (``old``; :class:`HeadAnchorAltered` aborts the rotation, as an altered head does) and MAC
    it under the new one. Returns whether there was one."""
    raw = raw_connection(conn)
    row = execute(raw, _SELECT_ANCHOR).fetchone()
    if row is None:
        return False
    size, heads, board, secrets, _key_id, _mac = row
    if not _verified(old, *row):
        raise HeadAnchorAltered("does not authenticate under the master key")
    key = new.only(new_key_id).derive_key(ANCHOR_INFO)
    new_mac = anchor_mac(key, new_key_id, size, heads, board, secrets)
    execute(raw, "UPDATE policy_head_anchor SET key_id = ?, mac = ? WHERE id = 1", (new_key_id, new_mac))
    return True


class HeadIndexRefresher(PeriodicTask):
    """``cas serve``: every ``interval`` seconds, scan the entries appended since (other
    replicas' too) in a read transaction, and store a newer snapshot when one is due. A
    failure (a database driver's error included) is logged and tried again at the next tick (a
    head read refuses meanwhile)."""

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
        except Exception as exc:  # a driver's error too (raw statements are not mapped to
            # StorageError): the thread must go on, or no scan bounds the window again
            failed = {"event": "policy-head-index-refresh-failed", "error": type(exc).__name__}
            _LOG.warning(json.dumps(failed))
            return False
        return True
