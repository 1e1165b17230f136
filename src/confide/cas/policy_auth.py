"""Authenticated policy heads, version states and approvals (docs/cas.md "What a policy's
current version rests on").

The database is the operator's. Which version of a policy is current (``policy_heads``), the
state of each version (``policies.state``: ``active``, ``pending``, ``superseded``, ``stale``)
and who submitted it decide what the CAS releases and whether a board's approvals are needed;
without more, someone who can write the database could make a pending version current without
its approvals. So, from schema 15, each of those rows carries a MAC:

- the key: HKDF-SHA256 of the master key (RFC 5869 §2: no salt, info :data:`HEADS_INFO`, §2.3;
  :meth:`confide.cas.secrets.Sealer.derive_key`) with the id the row's ``key_id`` names (the
  database's ``master_key_id`` when the row is written);
- a head's ``mac``: HMAC-SHA256 (RFC 2104) over the key id, the policy's name, the current
  version's hash, the revision and the creator (:func:`head_mac`; ``updated_at`` is shown only);
- a version's ``mac``: over the key id, the name, the hash, the sequence number, the predecessor,
  the submitter, the creator and the state (:func:`version_mac`; ``created_at`` is shown only);
- an approval's ``mac``: over the key id, the name, the hash, the signer and the SHA-256 of the
  signed document as stored (:func:`approval_mac`), written when the CAS accepts the approval
  (after checking its signature and the CAS it names).

A head verifies (:meth:`PolicyAuth.head`) only when its own MAC and its version's MAC do, that
version is ``active``, and it is the version the policy's latest ``policy.created`` or
``policy.updated`` ledger entry names (its payload's ``hash``; the entry is appended in the
transaction that moves the head, :meth:`confide.cas.core.Cas._activate`'s callers): a head row
copied back from before an update names a version that is now ``superseded`` under a MAC the
operator cannot forge, and the head and version rows both written back as they were before an
update (each with its genuine MAC) name a version older than the later ``policy.updated``
entry, so both are refused. A head with no such entry at all is refused too (every version of
the code recorded one, with the hash, at each creation and update). From schema 17 the entry
is found in the ledger's entries themselves, each checked against its leaf hash
(:mod:`confide.cas.head_index`), not in the ``events`` rows, which are an unauthenticated
copy: deleting or editing the later events rows changes nothing. A row that does
not verify is :class:`PolicyRowsAltered` (a :class:`~confide.errors.StorageError`): the CAS
neither releases under that policy nor changes it until the row is restored.

An approval counts (:meth:`confide.cas.core.Cas._approvers`) only when its MAC verifies and its
document verifies again (signature by the row's signer, the name and hash): a row the operator
inserted, or copied from another version, signer or CAS, is not counted. The MAC, not the
document's ``cas``, says that a CAS of this deployment accepted it: the replicas of one
database share the master key but each has its own TLS key, so an approval accepted by one
replica names that replica, and is counted by another.

**Migration.** The schema 15 migration runs without the master key; the rows of an older
database are MAC'd as found at the next start (:func:`bind_unbound`, in the start's write
transaction, recorded as a ``policy-rows-bound`` event), once: only when no row has a MAC, the
``meta`` row :data:`BOUND_META` is absent and the log records no earlier binding. The binding
trusts the rows as they are at that moment.

**Rotation.** :func:`reauthenticate_rows` verifies every row (and the snapshot of
:mod:`confide.cas.head_index`) under the old key and MACs it under the new one, in the
rotation's transaction (offline, and the online switch-over); an approval that does not verify
is left as it is (still not counted), a head, a version or the snapshot aborts it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection

from confide.cas.db import POLICY_ROWS_BOUND_META, raw_execute, raw_executemany
from confide.cas.head_index import (
    HeadIndex,
    HeadRefused,
    HeadView,
    VerifiedHeads,
    reauthenticate_anchor,
    reread_behind_ledger,
)
from confide.cas.secrets import Sealer
from confide.errors import StorageError

if TYPE_CHECKING:
    from confide.cas.db import Database

__all__ = [
    "BOUND_META",
    "EVENT_BOUND",
    "HEADS_INFO",
    "Head",
    "PolicyAuth",
    "PolicyRowsAltered",
    "Version",
    "approval_mac",
    "bind_unbound",
    "head_mac",
    "reauthenticate_rows",
    "version_mac",
]

HEADS_INFO = b"confide-policy-heads/v1"  # the HKDF info of the MAC key (RFC 5869 §2.3)
EVENT_BOUND = "policy-rows-bound"
BOUND_META = POLICY_ROWS_BOUND_META
STATES = frozenset({"active", "pending", "superseded", "stale"})
_KEY_ID_META = "master_key_id"  # confide.cas.rotation.KEY_ID_META (rotation imports this module)
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_LOG = logging.getLogger("confide.cas")

_JOINED = (
    "SELECT h.name, h.hash, h.revision, h.creator, h.key_id, h.mac, p.seq, p.predecessor, p.submitter, "
    "p.creator, p.state, p.key_id, p.mac FROM policy_heads h LEFT JOIN policies p "
    "ON p.name = h.name AND p.hash = h.hash"
)
_HEAD = _JOINED + " WHERE h.name = ?"
_VERSIONS = "SELECT name, hash, seq, predecessor, submitter, creator, state, key_id, mac FROM policies"
_VERSION = _VERSIONS + " WHERE name = ? AND hash = ?"
_VERSIONS_OF = _VERSIONS + " WHERE name = ? ORDER BY seq"
_COUNTS = (
    "SELECT (SELECT COUNT(*) FROM policy_heads) + (SELECT COUNT(*) FROM policies) "
    "+ (SELECT COUNT(*) FROM approvals), (SELECT COUNT(mac) FROM policy_heads) "
    "+ (SELECT COUNT(mac) FROM policies) + (SELECT COUNT(mac) FROM approvals)"
)


class PolicyRowsAltered(HeadRefused):
    """A policy's head or a version's row does not authenticate under the master key. Names the
    policy (and the version) and which row, never a value of it. ``ledger``: the head is not
    the version the policy's latest ledger entry (index ``ledger_at``) names
    (:func:`~confide.cas.head_index.reread_behind_ledger`)."""

    def __init__(self, name: str, what: str, *, ledger: bool = False, ledger_at: int | None = None) -> None:
        super().__init__(
            f"the stored {what} of policy {name[:128]!r} does not authenticate under the master key: "
            "the database was altered; the CAS does not use or change that policy until it is restored"
        )
        self.name = name
        self.what = what
        self.ledger = ledger
        self.ledger_at = ledger_at


class Head(NamedTuple):
    """A policy's current version, authenticated: its hash, the revision (one more at every
    owner's revocation) and the policy's creator."""

    hash: str
    revision: int
    creator: str


class Version(NamedTuple):
    """A version's row as authenticated (the sealed document and submission aside)."""

    name: str
    hash: str
    seq: int
    predecessor: str | None
    submitter: str
    creator: str
    state: str


def _hmac(key: bytes, kind: bytes, fields: list[Any]) -> str:
    message = HEADS_INFO + b"\x00" + kind + b"\x00" + json.dumps(fields, separators=(",", ":")).encode()
    return hmac.new(key, message, "sha256").hexdigest()


def head_mac(key: bytes, key_id: str, name: str, head: Head) -> str:
    """HMAC-SHA256 of a head (module docstring)."""
    return _hmac(key, b"head", [key_id, name, head.hash, head.revision, head.creator])


def version_mac(key: bytes, key_id: str, version: Version) -> str:
    """HMAC-SHA256 of a version's row (module docstring)."""
    v = version
    fields = [key_id, v.name, v.hash, v.seq, v.predecessor, v.submitter, v.creator, v.state]
    return _hmac(key, b"version", fields)


def approval_mac(key: bytes, key_id: str, name: str, digest: str, signer: str, document: str) -> str:
    """HMAC-SHA256 of an approval row (module docstring)."""
    text_sha256 = hashlib.sha256(document.encode()).hexdigest()
    return _hmac(key, b"approval", [key_id, name, digest, signer, text_sha256])


def _integer(value: object) -> bool:
    """An integer column as stored (SQLite keeps whatever type was written)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object) -> bool:
    return isinstance(value, str)


class PolicyAuth:
    """Reads and writes the authenticated rows for one CAS (its sealer). A verified head is
    cached per policy with its exact stored values (a row read again with the same values, MACs
    included, under a key the sealer still holds, verified before), so the attestation path
    computes no MAC and scans no ledger entry for a head it has seen; any change to the row is a
    miss. One entry per policy, replaced at each verification and dropped when this process
    moves the head (:meth:`put_head`) or a scan of the ledger finds a head entry of the policy
    (:class:`~confide.cas.head_index.HeadIndex`, ``index``): a row written back from before a
    change this process has seen is a miss, checked against the ledger again; a head judged
    against a view older than such a scan is not cached after it
    (:class:`~confide.cas.head_index.VerifiedHeads`). A head refused for a later ledger entry is
    read once more (:func:`~confide.cas.head_index.reread_behind_ledger`: PostgreSQL's READ
    COMMITTED). ``db``: the database a scan in a write transaction reads the committed entries
    from (the index's)."""

    def __init__(self, sealer: Sealer, *, cache: int = 1024, db: Database | None = None) -> None:
        self.sealer = sealer
        self._keys: dict[str, bytes] = {}
        self._heads: VerifiedHeads[str, tuple[tuple[object, ...], Head]] = VerifiedHeads(cache)
        self.index = HeadIndex(sealer, self.predecessor, db)
        self.index.on_change = self._heads.forget

    def predecessor(self, conn: Connection, name: str, digest: str) -> str | None:
        """The predecessor version ``digest`` of ``name`` names, as its row says, verified (the
        head index checks each head entry against it); PolicyRowsAltered when there is no such
        row or it does not verify."""
        version = self.version(conn, name, digest)
        if version is None:
            raise PolicyRowsAltered(name, f"version {digest[:16]}… (named by a ledger entry)")
        return version.predecessor

    # --- keys ------------------------------------------------------------------------------------

    def key(self, key_id: object, name: str, what: str) -> bytes:
        """The MAC key under master key ``key_id`` (a PolicyRowsAltered when this CAS does not
        hold it: the row names a key it was never MAC'd under, or one rotated away)."""
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id) or key_id not in self.sealer.key_ids:
            raise PolicyRowsAltered(name, what)
        key = self._keys.get(key_id)
        if key is None:
            key = self._keys[key_id] = self.sealer.only(key_id).derive_key(HEADS_INFO)
        return key

    def writing_key_id(self, conn: Connection) -> str:
        """The id of the master key new MACs are made under: the one the database names."""
        row = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (_KEY_ID_META,)).fetchone()
        return self.sealer.sealing_key_id if row is None or row[0] is None else str(row[0])

    # --- reading ---------------------------------------------------------------------------------

    def head(self, conn: Connection, name: str) -> Head | None:
        """``name``'s current version, its head and version rows verified (``None``: no such
        policy); PolicyRowsAltered when either does not verify or the version is not active."""
        return reread_behind_ledger(self._head, conn, name)

    def _head(self, conn: Connection, name: str, refusal: HeadRefused | None) -> Head | None:
        row = raw_execute(conn, _HEAD, (name,)).fetchone()
        return None if row is None else self._checked_head(conn, name, tuple(row[1:]), None, refusal)

    def heads(self, conn: Connection) -> dict[str, Head]:
        """Every policy's current version, verified as :meth:`head` does (one scan)."""
        return reread_behind_ledger(self._all_heads, conn)

    def _all_heads(self, conn: Connection, refusal: HeadRefused | None) -> dict[str, Head]:
        rows = raw_execute(conn, _JOINED).fetchall()
        view: list[HeadView] = []
        return {str(r[0]): self._checked_head(conn, str(r[0]), tuple(r[1:]), view, refusal) for r in rows}

    def _checked_head(
        self,
        conn: Connection,
        name: str,
        row: tuple[object, ...],
        view: list[HeadView] | None = None,
        refusal: HeadRefused | None = None,
    ) -> Head:
        """``name``'s head row (``row``: head and version columns) verified. ``refusal``: the
        first read's refusal, when this is the second (:meth:`head`): for this policy, a head row
        that is the version of the refusing entry or of a later accepted one is current (it was
        read after that entry was committed)."""
        cached = self._heads.get(name)
        if cached is not None and cached[0] == row:
            held = self.sealer.key_ids  # a key rotated away: verified again (and refused)
            if row[3] in held and row[10] in held:
                return cached[1]
        digest, revision, creator, key_id, mac = row[:5]
        if not (_text(digest) and _integer(revision) and _text(creator) and _text(mac)):
            raise PolicyRowsAltered(name, "current version (policy_heads)")
        assert isinstance(digest, str) and isinstance(revision, int) and isinstance(creator, str)
        head = Head(digest, revision, creator)
        expected = head_mac(self.key(key_id, name, "current version (policy_heads)"), str(key_id), name, head)
        if not hmac.compare_digest(expected.encode(), str(mac).encode()):
            raise PolicyRowsAltered(name, "current version (policy_heads)")
        if row[5] is None:  # the LEFT JOIN found no version row
            raise PolicyRowsAltered(name, f"version {digest[:16]}… it names as current")
        version = self._checked_version(name, digest, row[5:])
        if version.state != "active":
            raise PolicyRowsAltered(name, f"current version {digest[:16]}… (it is {version.state})")
        # The ledger's entries appended since the last scan, scanned now (a miss only)
        if view is None:
            current = self.index.view(conn)
        else:  # one scan for all the heads read by the caller (heads())
            if not view:
                view.append(self.index.view(conn))
            current = view[0]
        latest, waiting = current.latest(name)
        if waiting is not None:
            raise PolicyRowsAltered(
                name,
                f"current version {digest[:16]}… (its ledger entry {waiting} names a version that does "
                "not authenticate)",
            )
        if latest is None or latest.hash != digest or latest.predecessor != version.predecessor:
            since = (
                refusal.ledger_at if isinstance(refusal, PolicyRowsAltered) and refusal.name == name else None
            )
            if since is not None and current.accepted_since(name, since, digest, version.predecessor):
                return head  # a second read: current after the refusing entry; not cached
            # rows rolled back together, each with its genuine MAC (module docstring)
            raise PolicyRowsAltered(
                name,
                f"current version {digest[:16]}… (not the one its latest ledger entry names)",
                ledger=latest is not None,
                ledger_at=None if latest is None else latest.at,
            )
        self._heads.put(name, (row, head), current.size)
        return head

    def _checked_version(self, name: str, digest: str, row: Sequence[object]) -> Version:
        what = f"version {digest[:16]}…"
        seq, predecessor, submitter, creator, state, key_id, mac = row
        if not (_integer(seq) and (predecessor is None or _text(predecessor)) and _text(submitter)
                and _text(creator) and state in STATES and _text(mac)):  # fmt: skip
            raise PolicyRowsAltered(name, what)
        version = Version(name, digest, int(str(seq)), None if predecessor is None else str(predecessor),
                          str(submitter), str(creator), str(state))  # fmt: skip
        expected = version_mac(self.key(key_id, name, what), str(key_id), version)
        if not hmac.compare_digest(expected.encode(), str(mac).encode()):
            raise PolicyRowsAltered(name, what)
        return version

    def version(self, conn: Connection, name: str, digest: str) -> Version | None:
        """Version ``digest`` of ``name``, verified (``None``: no such row)."""
        row = raw_execute(conn, _VERSION, (name, digest)).fetchone()
        return None if row is None else self._checked_version(name, digest, tuple(row[2:]))

    def versions(self, conn: Connection, name: str) -> list[Version]:
        """Every version of ``name`` by sequence number, each verified."""
        rows = raw_execute(conn, _VERSIONS_OF, (name,)).fetchall()
        return [self._checked_version(name, str(r[1]), tuple(r[2:])) for r in rows]

    # --- writing (in the write transaction of the change) ----------------------------------------

    def put_version(self, conn: Connection, version: Version) -> None:
        """MAC ``version`` (a row already written, or just inserted, with these values) and store
        the MAC (an update of ``state`` too)."""
        key_id = self.writing_key_id(conn)
        mac = version_mac(self.key(key_id, version.name, "version"), key_id, version)
        raw_execute(
            conn,
            "UPDATE policies SET state = ?, key_id = ?, mac = ? WHERE name = ? AND hash = ?",
            (version.state, key_id, mac, version.name, version.hash),
        )

    def put_head(self, conn: Connection, name: str, head: Head, updated_at: float, *, new: bool) -> None:
        """Write ``name``'s head (insert it when ``new``) with its MAC; the caller records the
        ``policy-created`` / ``policy-updated`` event naming ``head.hash`` in the same transaction."""
        self._heads.drop(name)
        key_id = self.writing_key_id(conn)
        mac = head_mac(self.key(key_id, name, "current version"), key_id, name, head)
        if new:
            raw_execute(
                conn,
                "INSERT INTO policy_heads (name, hash, creator, updated_at, revision, key_id, mac) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, head.hash, head.creator, updated_at, head.revision, key_id, mac),
            )
        else:
            raw_execute(
                conn,
                "UPDATE policy_heads SET hash = ?, creator = ?, revision = ?, updated_at = ?, key_id = ?, "
                "mac = ? WHERE name = ?",
                (head.hash, head.creator, head.revision, updated_at, key_id, mac, name),
            )

    def put_approval(
        self, conn: Connection, name: str, digest: str, signer: str, document: str, at: float
    ) -> None:
        """Store ``signer``'s approval of version ``digest`` of ``name`` (accepted: signature and
        CAS checked) with its MAC, replacing any row stored under the signer's name."""
        key_id = self.writing_key_id(conn)
        mac = approval_mac(self.key(key_id, name, "approval"), key_id, name, digest, signer, document)
        raw_execute(
            conn, "DELETE FROM approvals WHERE name = ? AND hash = ? AND signer = ?", (name, digest, signer)
        )
        raw_execute(
            conn,
            "INSERT INTO approvals (name, hash, signer, document, created_at, key_id, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, digest, signer, document, at, key_id, mac),
        )

    def approval_verifies(self, name: str, digest: str, signer: object, document: object,
                          key_id: object, mac: object) -> bool:  # fmt: skip
        """Whether a stored approval row's MAC verifies (``False`` for a key this CAS does not
        hold, a value of the wrong type, a missing MAC)."""
        if not (_text(signer) and _text(document) and _text(mac)):
            return False
        try:
            key = self.key(key_id, name, "approval")
        except PolicyRowsAltered:
            return False
        expected = approval_mac(key, str(key_id), name, digest, str(signer), str(document))
        return hmac.compare_digest(expected.encode(), str(mac).encode())

    def bump_revision(self, conn: Connection, name: str, now: float) -> Head:
        """One more revision of ``name``'s head (an owner's revocation), verified first."""
        head = self.head(conn, name)
        if head is None:
            raise StorageError(f"policy {name[:128]!r} has no current version")
        bumped = head._replace(revision=head.revision + 1)
        self.put_head(conn, name, bumped, now, new=False)
        return bumped


def _all_versions(conn: Connection, auth: PolicyAuth) -> list[Version]:
    rows = raw_execute(conn, _VERSIONS).fetchall()
    return [auth._checked_version(str(r[0]), str(r[1]), tuple(r[2:])) for r in rows]


def _write_all(
    conn: Connection, sealer: Sealer, key_id: str, heads: dict[str, Head], versions: list[Version]
) -> None:
    """MAC every head and version under ``key_id`` (the rows hold these values)."""
    key = sealer.only(key_id).derive_key(HEADS_INFO)
    if versions:
        raw_executemany(
            conn,
            "UPDATE policies SET key_id = ?, mac = ? WHERE name = ? AND hash = ?",
            [(key_id, version_mac(key, key_id, v), v.name, v.hash) for v in versions],
        )
    if heads:
        raw_executemany(
            conn,
            "UPDATE policy_heads SET key_id = ?, mac = ? WHERE name = ?",
            [(key_id, head_mac(key, key_id, name, head), name) for name, head in heads.items()],
        )


def _approvals(conn: Connection) -> list[Any]:
    rows = raw_execute(conn, "SELECT name, hash, signer, document, key_id, mac FROM approvals").fetchall()
    return list(rows)


def _write_approvals(conn: Connection, sealer: Sealer, key_id: str, rows: Sequence[Any]) -> None:
    key = sealer.only(key_id).derive_key(HEADS_INFO)
    if rows:
        raw_executemany(
            conn,
            "UPDATE approvals SET key_id = ?, mac = ? WHERE name = ? AND hash = ? AND signer = ?",
            [(key_id, approval_mac(key, key_id, str(r[0]), str(r[1]), str(r[2]), str(r[3])), r[0], r[1], r[2])
             for r in rows],
        )  # fmt: skip


def reauthenticate_rows(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> int:
    """In a master-key rotation's transaction: verify every head and version under the old key
    (``old``: a sealer of it; PolicyRowsAltered aborts the rotation) and MAC them under the new
    one (``new``, id ``new_key_id``); likewise every approval whose MAC verifies (one that does
    not is left as it is: it stays uncounted), and the stored snapshot of the head entries
    (:func:`confide.cas.head_index.reauthenticate_anchor`; one that does not verify aborts).
    Returns the number of heads, versions and approvals MAC'd."""
    auth = PolicyAuth(old, cache=0)
    heads = auth.heads(conn)
    versions = _all_versions(conn, auth)
    approvals = [r for r in _approvals(conn) if auth.approval_verifies(str(r[0]), str(r[1]), *r[2:])]
    _write_all(conn, new, new_key_id, heads, versions)
    _write_approvals(conn, new, new_key_id, approvals)
    # the snapshot of the head entries too (confide.cas.head_index): verified, MAC'd anew
    reauthenticate_anchor(conn, old, new, new_key_id)
    return len(heads) + len(versions) + len(approvals)


def bind_unbound(conn: Connection, sealer: Sealer) -> dict[str, Any] | None:
    """The schema 15 migration of the heads, versions and approvals, at a start, in its write transaction:
    once per database, MAC every row as found and record :data:`BOUND_META`. Returns what the
    ``policy-rows-bound`` event says (``None``: nothing to record).

    Only a database none of whose rows has a MAC, without :data:`BOUND_META` and whose log has
    no earlier ``policy-rows-bound`` event, is bound (one written before schema 15). Otherwise
    nothing is bound (logged, ``policy-rows-not-bound``, when some row lacks a MAC): rows without
    a MAC stay refused at use."""
    if raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (BOUND_META,)).fetchone() is not None:
        return None
    rows, macs = (int(c) for c in raw_execute(conn, _COUNTS).fetchone())
    raw_execute(conn, "INSERT INTO meta (key, value) VALUES (?, ?)", (BOUND_META, "1"))
    if not rows:
        return None
    earlier = raw_execute(conn, "SELECT 1 FROM events WHERE type = ? LIMIT 1", (EVENT_BOUND,)).fetchone()
    if macs == rows:
        return None  # all bound already (a database this code created, the marker removed)
    if macs or earlier is not None:
        _LOG.warning(json.dumps({"event": "policy-rows-not-bound", "rows": rows, "with_mac": macs,
                                 "bound_before": earlier is not None}))  # fmt: skip
        return None
    key_id = PolicyAuth(sealer).writing_key_id(conn)
    head_rows = raw_execute(conn, "SELECT name, hash, revision, creator FROM policy_heads").fetchall()
    version_rows = raw_execute(conn, _VERSIONS).fetchall()
    try:
        heads = {str(r[0]): Head(str(r[1]), _as_int(r[2]), str(r[3])) for r in head_rows}
        versions = [
            Version(str(r[0]), str(r[1]), _as_int(r[2]), None if r[3] is None else str(r[3]), str(r[4]),
                    str(r[5]), str(r[6]))
            for r in version_rows
        ]  # fmt: skip
    except ValueError:
        raise StorageError("a policy row of the database to migrate is malformed: not bound") from None
    approvals = _approvals(conn)
    if not all(_text(r[2]) and _text(r[3]) for r in approvals):
        raise StorageError("an approval row of the database to migrate is malformed: not bound")
    _write_all(conn, sealer, key_id, heads, versions)
    _write_approvals(conn, sealer, key_id, approvals)
    names = sorted([[v.name, v.hash, v.state] for v in versions])
    return {
        "heads": len(heads), "versions": len(versions), "approvals": len(approvals), "master_key_id": key_id,
        "digest_sha256": hashlib.sha256(json.dumps(names, separators=(",", ":")).encode()).hexdigest(),
    }  # fmt: skip


def _as_int(value: object) -> int:
    if not _integer(value):
        raise ValueError("not an integer")
    return int(str(value))
