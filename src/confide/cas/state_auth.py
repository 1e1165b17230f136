"""A file of CAS state that may only grow, MAC'd under the master key, with its history in the
ledger: what the DCAP TCB evaluation floor (:mod:`confide.cas.tcb_floor`, docs/cas.md "What the
floor rests on") and the rollback memory of Google's CRLs (:mod:`confide.cas.gce_crl`) share.

The operator owns the data directory: such a file edited down would let older data pass. So
the file carries ``macs``: for each master key the CAS holds, its id and HMAC-SHA256 (RFC 2104)
of the state under HKDF-SHA256 of that key (RFC 5869 §2, no salt, the kind's own info: one
derived key per kind; the derivation of :mod:`confide.cas.revocation_auth`,
``Sealer.only(id).derive_key``), compared in constant time (:func:`hmac.compare_digest`). One MAC
per held key, so that a master-key rotation, offline (:func:`rebind_state_file`, before its
commit) or online (:meth:`AuthenticatedState.rewrite` once the sealer holds the new key, before
the database names it), leaves a file that verifies whether or not the rotation's commit
happened. Each raise is also a ledger entry (:func:`record_state`: the whole state merged with
the ledger's, also kept in a ``meta`` row): the ledger's history, which a file replayed from a
backup (a valid MAC over an older state) cannot roll back.

At each start, once the master key is open (:meth:`AuthenticatedState.authenticate`, in the
start transaction), the state is the merge of the file's and of the latest the ledger recorded
(so neither a file nor a database rolled back alone lowers it):

- a file whose MAC verifies under a held key is used as it is; if the ledger's state is ahead
  (a backup of the file restored, a replica on a shared database whose peers raised it), or
  there is no file (a new replica, a deleted file), the ledger's state is taken and written
  back, logged (``…-from-ledger``), no ledger entry (it holds them);
- a file whose MAC does not verify (edited, forged, the MAC removed, under a key the CAS does
  not hold) fails closed: the CAS keeps running with the merge (an edit down is undone as far as
  the ledger knows, an edit up is kept), writes it back MAC'd, logs a warning that says what to
  do, and records ``…-altered`` (what failed; whether the ledger restored anything);
- a file of the version before the MAC is MAC'd as found (merged with the ledger's state) at
  the first start, once (``…-bound``, saying whether the ledger raised anything);
- a verified file ahead of the ledger (a raise whose entry a crash lost) is recorded then.

A kind is a subclass: its file's name, version and parser, its HKDF info, its event names, its
``meta`` row, and how states merge and compare.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Connection

from confide.cas.db import EventSink, raw_execute
from confide.cas.secrets import Sealer
from confide.errors import ConfideError
from confide.fsutil import write_atomic

__all__ = [
    "MACS_EXPECTED",
    "AuthenticatedState",
    "Found",
    "ledger_state",
    "parse_macs",
    "rebind_state_file",
    "record_state",
    "state_mac",
]

S = TypeVar("S")
_LOG = logging.getLogger("confide.cas")
_KEY_ID_LEN, _MAC_LEN = 32, 64
_HEX = frozenset("0123456789abcdef")


def state_mac(sealer: Sealer, key_id: str, info: bytes, members: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of ``members`` (in their order) under HKDF-SHA256 of the master key ``key_id``
    (one ``sealer`` holds; :class:`KeyError` otherwise), info ``info`` (module docstring)."""
    key = sealer.only(key_id).derive_key(info)
    message = json.dumps([key_id, *members.values()], sort_keys=True, separators=(",", ":"))
    return hmac.new(key, info + b"\x00" + message.encode(), "sha256").hexdigest()


def _hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


MACS_EXPECTED = "macs: expected key id (32 hex) -> MAC (64 hex)"


def parse_macs(value: object) -> dict[str, str] | None:
    """A file's ``macs`` member: key id (32 hex) -> MAC (64 hex); ``None`` if it is not that (the
    caller raises its :class:`~confide.errors.ParseError`, :data:`MACS_EXPECTED`)."""
    if not isinstance(value, dict) or not all(
        _hex(k, _KEY_ID_LEN) and _hex(v, _MAC_LEN) for k, v in value.items()
    ):
        return None
    return dict(value)


class Found(Generic[S]):
    """A file as parsed: its version, state and MACs (not yet checked)."""

    __slots__ = ("macs", "state", "version")

    def __init__(self, version: int, state: S, macs: dict[str, str]) -> None:
        self.version, self.state, self.macs = version, state, macs


class AuthenticatedState(Generic[S]):
    """The state (module docstring), kept in ``path`` (``None``: in memory only). Thread-safe
    (``_lock`` guards ``_state``). Until :meth:`authenticate` the file's state is used unchecked
    and a raise is held in memory only."""

    VERSION: ClassVar[int]  # the file's version with MACs; VERSION - 1: before the MAC
    INFO: ClassVar[bytes]  # the HKDF info of the MAC key (RFC 5869 §2.3)
    META: ClassVar[str]  # the meta row of the ledger's merged state (record_state)
    EVENT_RAISED: ClassVar[str]
    EVENT_ALTERED: ClassVar[str]
    EVENT_BOUND: ClassVar[str]
    EVENT_FROM_LEDGER: ClassVar[str]  # a log line, not a ledger entry
    EVENT_NOT_WRITTEN: ClassVar[str]  # a log line: the file could not be written
    EVENT_NOT_RECORDED: ClassVar[str]  # a log line: a raise's ledger entry could not be written
    FILE_MODE: ClassVar[int] = 0o644
    ACTION: ClassVar[str]  # what the altered warning says was done

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sealer: Sealer | None = None
        # Called after each raise, outside the lock, with what the entry says besides the state
        # (cas serve records a ledger entry).
        self.on_raise: Callable[[dict[str, Any]], None] | None = None
        self._file = self.read(path) if path is not None else None
        self._state: S = self._file.state if self._file is not None else self.empty()

    # --- the kind ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read(cls, path: Path) -> Found[S] | None:
        """The file at ``path`` parsed strictly (:class:`ParseError`); ``None`` without one."""

    @staticmethod
    @abstractmethod
    def members(state: S) -> dict[str, Any]:
        """The state as the file's members (besides ``v`` and ``macs``), the MAC's input and
        the ledger entries' payload: JSON, public data only."""

    @staticmethod
    @abstractmethod
    def from_members(payload: object) -> S | None:
        """The state of a ledger entry's payload or the meta row; ``None`` if it does not parse."""

    @staticmethod
    @abstractmethod
    def merge(a: S, b: S) -> S:
        """The state that is ahead of both."""

    @staticmethod
    @abstractmethod
    def below(a: S, b: S) -> bool:
        """Whether ``b`` holds something ``a`` lacks or has lower."""

    @staticmethod
    @abstractmethod
    def empty() -> S: ...

    # --- MACs ---------------------------------------------------------------------------------

    @classmethod
    def mac(cls, sealer: Sealer, key_id: str, state: S) -> str:
        """The MAC of ``state`` under the master key ``key_id`` (module docstring)."""
        return state_mac(sealer, key_id, cls.INFO, cls.members(state))

    @classmethod
    def encode(cls, sealer: Sealer, state: S) -> bytes:
        """The file: the state with a MAC under each key ``sealer`` holds."""
        macs = {kid: cls.mac(sealer, kid, state) for kid in sorted(sealer.key_ids)}
        doc = {"v": cls.VERSION, **cls.members(state), "macs": macs}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def verifies(cls, found: Found[S], sealer: Sealer) -> bool:
        """Whether a MAC under a master key ``sealer`` holds verifies (constant-time compare)."""
        held = [kid for kid in sorted(found.macs) if kid in sealer.key_ids]
        return any(hmac.compare_digest(found.macs[kid], cls.mac(sealer, kid, found.state)) for kid in held)

    # --- the start ----------------------------------------------------------------------------

    def authenticate(self, sealer: Sealer, recorded: S | None) -> tuple[str, dict[str, Any]] | None:
        """Check the file under ``sealer``'s keys against ``recorded`` (:func:`ledger_state`),
        from now on MAC every write under them; returns the ledger event to record (type,
        payload) or ``None`` (module docstring). A write that fails is logged (the state in
        memory is still the restored one)."""
        empty = self.empty()
        with self._lock:
            self._sealer = sealer
            found = self._file
            current = self._state
            check: str | None = None
            if found is None:
                check = "missing" if recorded is not None and recorded != empty else None
            elif found.version != self.VERSION:
                check = "unbound"  # a file of before the MAC (module docstring)
            elif not self.verifies(found, sealer):
                check = "mac"
            elif recorded is not None and self.below(found.state, recorded):
                check = "behind-ledger"
            if check is None:
                on_disk = (found.state, set(found.macs)) if found is not None else None
                if on_disk != (current, set(sealer.key_ids)) and (found is not None or current != empty):
                    # MACs under exactly the keys now held (after a rotation), and a raise held in
                    # memory before the master key was open (a joining CAS verifying its peer)
                    self._write(current)
                if self.below(recorded if recorded is not None else empty, current):
                    # A raise whose ledger entry was not written (a crash): recorded now.
                    return self.EVENT_RAISED, self.members(current)
                return None
            restored = self.merge(current, recorded if recorded is not None else empty)
            self._state = restored
            self._write(restored)
            payload = self.members(restored)
            lowered = recorded is not None and self.below(current, recorded)
            if check == "unbound":
                _LOG.info(
                    json.dumps(
                        {"event": self.EVENT_BOUND, "file": str(self.path), "restored_from_ledger": lowered}
                    )
                )
                return self.EVENT_BOUND, {**payload, "restored_from_ledger": lowered}
            if check in ("missing", "behind-ledger"):
                # Nothing altered that the ledger does not already undo: a replica on a shared
                # database (a new one has no file; another raised it), a backup restored.
                _LOG.info(
                    json.dumps({"event": self.EVENT_FROM_LEDGER, "check": check, "file": str(self.path)})
                )
                return None
            event = {"event": self.EVENT_ALTERED, "check": check, "restored_from_ledger": lowered}
            _LOG.warning(json.dumps({**event, "file": str(self.path), "action": self.ACTION}))
            return self.EVENT_ALTERED, {**payload, "check": check, "restored_from_ledger": lowered}

    def payload(self) -> dict[str, Any]:
        """The state now, as the ledger entries record it."""
        with self._lock:
            return self.members(self._state)

    def rewrite(self) -> None:
        """Write the state again with MACs under every key the sealer holds now: an online
        rotation calls it once the sealer holds the new key, before the database names it."""
        with self._lock:
            if self._sealer is not None and self.path is not None:
                write_atomic(self.path, self.encode(self._sealer, self._state), mode=self.FILE_MODE)

    def _write(self, state: S) -> bool:
        """Write ``state`` MAC'd (the caller holds the lock); ``False`` (logged) when it cannot be
        written. Before :meth:`authenticate` (no key to MAC under) nothing is written and the
        state is held in memory only (``True``)."""
        if self.path is None or self._sealer is None:
            return True
        try:
            write_atomic(self.path, self.encode(self._sealer, state), mode=self.FILE_MODE)
        except (OSError, ConfideError) as exc:
            event = {"event": self.EVENT_NOT_WRITTEN, "file": str(self.path), "error": type(exc).__name__}
            _LOG.warning(json.dumps(event))
            return False
        return True


# --- the ledger --------------------------------------------------------------------------------


def ledger_state(conn: Connection, kind: type[AuthenticatedState[S]], *, store: bool = False) -> S | None:
    """The state the ledger recorded for ``kind``: the merge of its raised, altered and bound
    entries (each records the merged state as it then was, so the latest is the merge of all),
    read from the ``meta`` row ``kind.META`` that :func:`record_state` writes in the same
    transaction (one row, not a scan of the events at every start); without that row, from the
    entries themselves, and with ``store`` (in a write transaction: the start's) the row is
    written then, an empty state included, so the scan happens once. ``None`` when the ledger
    recorded none. A payload that does not parse counts for nothing (it cannot lower anything:
    the file's state still counts)."""
    row = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (kind.META,)).fetchone()
    merged: S | None = None
    if row is not None:
        try:
            merged = kind.from_members(json.loads(row[0]))
        except ValueError:
            merged = None
    if merged is None:
        rows = raw_execute(
            conn,
            "SELECT payload FROM events WHERE type IN (?, ?, ?)",
            (kind.EVENT_RAISED, kind.EVENT_ALTERED, kind.EVENT_BOUND),
        ).fetchall()
        merged = kind.empty()
        for (payload,) in rows:
            try:
                state = kind.from_members(json.loads(payload))
            except ValueError:
                state = None
            if state is not None:
                merged = kind.merge(merged, state)
        if store:
            _store(conn, kind, merged)
    return merged if merged != kind.empty() else None


def _store(conn: Connection, kind: type[AuthenticatedState[S]], state: S) -> None:
    value = json.dumps(kind.members(state), sort_keys=True, separators=(",", ":"))
    if raw_execute(conn, "SELECT 1 FROM meta WHERE key = ?", (kind.META,)).fetchone() is None:
        raw_execute(conn, "INSERT INTO meta (key, value) VALUES (?, ?)", (kind.META, value))
    else:
        raw_execute(conn, "UPDATE meta SET value = ? WHERE key = ?", (value, kind.META))


def record_state(
    conn: Connection,
    events: EventSink,
    kind: type[AuthenticatedState[S]],
    type_: str,
    payload: dict[str, Any],
) -> None:
    """Record the entry ``type_`` in the caller's write transaction: ``payload``'s state merged
    with the ledger's (:func:`ledger_state`; replicas on one database each record their own
    raises), its other members as they are; and the merged state in the ``meta`` row."""
    state = kind.from_members(payload)
    merged = kind.merge(
        state if state is not None else kind.empty(), ledger_state(conn, kind) or kind.empty()
    )
    events.record(conn, type_, None, {**payload, **kind.members(merged)})
    _store(conn, kind, merged)


def rebind_state_file(
    kind: type[AuthenticatedState[S]], path: Path, old_key: bytes, new_key: bytes
) -> str | None:
    """For an offline master-key rotation (:func:`confide.cas.rotation.rotate_master_key`, before
    its commit): a file whose MAC verifies under ``old_key`` is written again with MACs under
    both keys, so it verifies whichever key the database ends up naming. A file that does not
    verify (or of the version before the MAC) is left as it is: the next start judges it.
    Returns what was done (``"re-authenticated"``, ``"unverified"``) or ``None`` without a file."""
    found = kind.read(path)
    if found is None:
        return None
    if found.version != kind.VERSION or not kind.verifies(found, Sealer(old_key)):
        return "unverified"
    both = Sealer(old_key)
    both.add_key(new_key)
    write_atomic(path, kind.encode(both, found.state), mode=kind.FILE_MODE)
    return "re-authenticated"
