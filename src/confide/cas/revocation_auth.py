"""Authenticated revocation records (docs/cas.md "Revocation", "What the revocation records rest on").

The database is the operator's: without more, someone who can edit it could delete a row of
``revoked_certificates`` (the revocation would be gone from the next CRL) or add one. So every
row carries a MAC, and the *set* of rows is bound too:

- the key: HKDF-SHA256 of the master key (RFC 5869 §2: no salt, info :data:`REVOCATIONS_INFO`,
  §2.3; :meth:`confide.cas.secrets.Sealer.derive_key`) named by the records' ``key_id``;
- a row's ``mac``: HMAC-SHA256 (RFC 2104) over the key id and everything the row says that does
  not change: policy, issuer key identifier, serial, secret, version, reason, revocation time and
  the certificate's notAfter (:func:`row_mac`). ``expiry_listed_at`` is written later (by the
  first CRL issued past notAfter) and is not covered; it is honoured only when it lies after the
  MAC'd notAfter and not in the future (so setting it does not drop an unexpired certificate);
- one record per (policy, issuer key identifier), ``revocation_sets``: the number of rows and the
  sum of their MACs modulo 2^256, MAC'd (:func:`_set_mac`);
- one anchor record (``policy`` and ``issuer_key_id`` empty): the number of per-CA records, the
  sum of their counts and of their sums, MAC'd; so the deletion of all rows and the record of one
  CA is seen too.

A revocation (:func:`add_revocation`, called by :func:`confide.cas.crl.revoke_serial` in the write
transaction that inserts the row) adds its row's MAC to its CA's record and to the anchor, from
their stored values once their MACs verify: it never re-reads the rows, so it cannot launder an
edit. :func:`verified_rows` checks a CA's rows against both records: a row whose MAC does not
verify (edited, or forged), a row missing (count or sum), a record or anchor that does not verify
is :class:`RevocationsAltered` (a StorageError). What the CAS does then (it fails closed): no new
CRL for that CA (the current one, signed when the rows still verified, stays served), a policy
update or an owner revocation touching it fails, the OCSP responder answers ``tryLater`` rather
than ``good`` (:mod:`confide.cas.crl`, :mod:`confide.cas.ocsp_responder`).

A master-key rotation verifies everything under the old key and MACs it under the new one in its
transaction (:func:`reauthenticate_revocations`). Rows from before schema 13 (no ``mac``) are
MAC'd as found at the first start of a CAS of schema 13 (:func:`bind_unbound`), once: after
that, a row without a MAC is an altered one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection

from confide.cas.db import raw_execute
from confide.cas.secrets import Sealer
from confide.errors import StorageError

__all__ = [
    "EVENT_ALTERED",
    "EVENT_BOUND",
    "REVOCATIONS_INFO",
    "RevocationRow",
    "RevocationsAltered",
    "add_revocation",
    "bind_unbound",
    "reauthenticate_revocations",
    "row_mac",
    "verified_rows",
]

REVOCATIONS_INFO = b"confide-revocations/v1"  # the HKDF info of the MAC key (RFC 5869 §2.3)
EVENT_ALTERED = "revocations-altered"
EVENT_BOUND = "revocations-bound"
_MODULUS = 2**256
_MAC = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_ANCHOR = ("", "")  # the (policy, issuer_key_id) of the anchor record
_KEY_ID_META = "master_key_id"  # confide.cas.rotation.KEY_ID_META (rotation imports this module)


class RevocationsAltered(StorageError):
    """The revocation records of a CA do not authenticate under the master key. ``policy`` and
    ``issuer_key_id`` name the CA, ``check`` what failed (``row``, ``count``, ``record``,
    ``anchor``, ``expiry``): no value of a row."""

    def __init__(self, policy: str, issuer_key_id: str, check: str) -> None:
        super().__init__(
            f"the revocation records of policy {policy[:128]!r}, CA key {issuer_key_id[:40]!r} do not "
            f"authenticate under the master key ({check}): the database was altered; no CRL is issued "
            "for that CA until it is restored"
        )
        self.policy = policy
        self.issuer_key_id = issuer_key_id
        self.check = check

    def summary(self) -> dict[str, str]:
        """What the warning and the ledger event say: names and the check, no row's values."""
        return {"policy": self.policy, "issuer_key_id": self.issuer_key_id[:40], "check": self.check}


class RevocationRow(NamedTuple):
    serial: str
    name: str
    version: int
    reason: str
    revoked_at: float
    not_after: float
    expiry_listed_at: float | None


def _key(sealer: Sealer, key_id: str, policy: str, issuer: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the master key with id ``key_id``, info :data:`REVOCATIONS_INFO`."""
    try:
        return sealer.only(key_id).derive_key(REVOCATIONS_INFO)
    except (KeyError, ValueError):
        raise RevocationsAltered(policy, issuer, "record") from None


def _current_key_id(conn: Connection, sealer: Sealer) -> str:
    row = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (_KEY_ID_META,)).fetchone()
    return sealer.sealing_key_id if row is None or row[0] is None else str(row[0])


def row_mac(key: bytes, key_id: str, policy: str, issuer: str, row: RevocationRow) -> str:
    """HMAC-SHA256 of a row's content that never changes (module docstring). Times as Python's
    shortest round-trip text of the stored double (exact)."""
    message = json.dumps(
        [key_id, policy, issuer, row.serial, row.name, int(row.version), row.reason,
         repr(float(row.revoked_at)), repr(float(row.not_after))],
        separators=(",", ":"), ensure_ascii=True,
    )  # fmt: skip
    return hmac.new(key, REVOCATIONS_INFO + b"\x00row\x00" + message.encode(), "sha256").hexdigest()


def _set_mac(key: bytes, key_id: str, policy: str, issuer: str, count: int, total: str, records: int) -> str:
    message = json.dumps([key_id, policy, issuer, count, total, records], separators=(",", ":"))
    return hmac.new(key, REVOCATIONS_INFO + b"\x00set\x00" + message.encode(), "sha256").hexdigest()


class _Set(NamedTuple):
    entries: int
    total: int
    records: int  # the anchor: how many per-CA records; 0 for a per-CA record
    key_id: str


def _read_set(conn: Connection, sealer: Sealer, policy: str, issuer: str) -> _Set | None:
    """The record of (``policy``, ``issuer``) (the anchor for ``("", "")``), its MAC verified;
    ``None`` when there is none."""
    row = raw_execute(
        conn,
        "SELECT entries, mac_sum, records, key_id, mac FROM revocation_sets "
        "WHERE policy = ? AND issuer_key_id = ?",
        (policy, issuer),
    ).fetchone()
    if row is None:
        return None
    count, total, records, key_id, mac = row
    check = "anchor" if (policy, issuer) == _ANCHOR else "record"
    if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) and isinstance(total, str)
            and _MAC.fullmatch(total) and isinstance(mac, str)
            and _integer(count) and _integer(records)):  # fmt: skip
        raise RevocationsAltered(policy, issuer, check)
    expected = _set_mac(_key(sealer, key_id, policy, issuer), key_id, policy, issuer, int(count), total,
                        int(records))  # fmt: skip
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        raise RevocationsAltered(policy, issuer, check)
    return _Set(int(count), int(total, 16), int(records), key_id)


def _write_set(
    conn: Connection, sealer: Sealer, policy: str, issuer: str, new: _Set, *, exists: bool
) -> None:
    total = format(new.total % _MODULUS, "064x")
    mac = _set_mac(_key(sealer, new.key_id, policy, issuer), new.key_id, policy, issuer, new.entries, total,
                   new.records)  # fmt: skip
    if exists:
        raw_execute(
            conn,
            "UPDATE revocation_sets SET entries = ?, mac_sum = ?, records = ?, key_id = ?, mac = ? "
            "WHERE policy = ? AND issuer_key_id = ?",
            (new.entries, total, new.records, new.key_id, mac, policy, issuer),
        )
    else:
        raw_execute(
            conn,
            "INSERT INTO revocation_sets (policy, issuer_key_id, entries, mac_sum, records, key_id, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (policy, issuer, new.entries, total, new.records, new.key_id, mac),
        )


def _check_anchor(conn: Connection, sealer: Sealer, policy: str, issuer: str) -> _Set | None:
    """The anchor, verified and matching the per-CA records it sums (``None``: neither exists)."""
    anchor = _read_set(conn, sealer, *_ANCHOR)
    rows = raw_execute(
        conn, "SELECT entries, mac_sum FROM revocation_sets WHERE NOT (policy = '' AND issuer_key_id = '')"
    ).fetchall()
    if anchor is None:
        if rows:
            raise RevocationsAltered(policy, issuer, "anchor")
        return None
    if not all(_integer(r[0]) for r in rows):
        raise RevocationsAltered(policy, issuer, "anchor")
    count = sum(int(r[0]) for r in rows)
    total = sum(int(str(r[1]), 16) for r in rows if _MAC.fullmatch(str(r[1]))) % _MODULUS
    if (anchor.records, anchor.entries, anchor.total) != (len(rows), count, total):
        raise RevocationsAltered(policy, issuer, "anchor")
    return anchor


def add_revocation(conn: Connection, sealer: Sealer, policy: str, issuer: str, row: RevocationRow) -> str:
    """In the write transaction that records a revocation: its row's MAC (to store in the row),
    added to its CA's record and the anchor (created when there are none), whose stored values
    are verified first (RevocationsAltered otherwise). Call it only for a row that is inserted."""
    anchor = _check_anchor(conn, sealer, policy, issuer)
    current = _read_set(conn, sealer, policy, issuer)
    key_id = _current_key_id(conn, sealer) if anchor is None else anchor.key_id
    mac = row_mac(_key(sealer, key_id, policy, issuer), key_id, policy, issuer, row)
    value = int(mac, 16)
    before = _Set(0, 0, 0, key_id) if current is None else current
    _write_set(conn, sealer, policy, issuer, _Set(before.entries + 1, before.total + value, 0, key_id),
               exists=current is not None)  # fmt: skip
    top = _Set(0, 0, 0, key_id) if anchor is None else anchor
    grown = _Set(top.entries + 1, top.total + value, top.records + (current is None), key_id)
    _write_set(conn, sealer, *_ANCHOR, grown, exists=anchor is not None)
    return mac


def _integer(value: object) -> bool:
    """An integer column as stored (SQLite keeps whatever type was written)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _rows(conn: Connection, policy: str, issuer: str) -> list[tuple[RevocationRow, Any]]:
    found = raw_execute(
        conn,
        "SELECT serial, name, version, reason, revoked_at, not_after, expiry_listed_at, mac "
        "FROM revoked_certificates WHERE policy = ? AND issuer_key_id = ? ORDER BY serial",
        (policy, issuer),
    ).fetchall()
    try:
        return _parsed(found)
    except (TypeError, ValueError):  # SQLite keeps whatever type was written
        raise RevocationsAltered(policy, issuer, "row") from None


def _parsed(found: Sequence[Any]) -> list[tuple[RevocationRow, Any]]:
    """The rows as :class:`RevocationRow`; a ``version`` that is not an integer as stored (``1.5``
    would read as 1, a second stored form of the row under the same MAC) is a ValueError."""
    if not all(_integer(r[2]) for r in found):
        raise ValueError("a version that is not an integer")
    return [
        (RevocationRow(str(r[0]), str(r[1]), int(r[2]), str(r[3]), float(r[4]), float(r[5]),
                       None if r[6] is None else float(r[6])), r[7])
        for r in found
    ]  # fmt: skip


def verified_rows(
    conn: Connection, sealer: Sealer, policy: str, issuer: str, now: float
) -> list[RevocationRow]:
    """Every revocation recorded for the CA key ``issuer`` of ``policy`` (those already listed past
    their notAfter too), each row's MAC and the set (count, sum, the CA's record, the anchor)
    verified; RevocationsAltered otherwise (module docstring)."""
    _check_anchor(conn, sealer, policy, issuer)
    record = _read_set(conn, sealer, policy, issuer)
    rows = _rows(conn, policy, issuer)
    if record is None:
        if rows:
            raise RevocationsAltered(policy, issuer, "record")
        return []
    key = _key(sealer, record.key_id, policy, issuer)
    total = 0
    for row, mac in rows:
        expected = row_mac(key, record.key_id, policy, issuer, row)
        if not (isinstance(mac, str) and hmac.compare_digest(expected.encode(), mac.encode())):
            raise RevocationsAltered(policy, issuer, "row")
        listed = row.expiry_listed_at
        if listed is not None and not row.not_after < listed <= now:
            raise RevocationsAltered(policy, issuer, "expiry")  # would drop an unexpired certificate
        total += int(mac, 16)
    if len(rows) != record.entries or total % _MODULUS != record.total:
        raise RevocationsAltered(policy, issuer, "count")
    return [row for row, _mac in rows]


def _all_cas(conn: Connection) -> list[tuple[str, str]]:
    rows = raw_execute(
        conn,
        "SELECT policy, issuer_key_id FROM revocation_sets UNION "
        "SELECT policy, issuer_key_id FROM revoked_certificates",
    ).fetchall()
    return sorted({(str(p), str(i)) for p, i in rows} - {_ANCHOR})


def _rebuild(
    conn: Connection, sealer: Sealer, key_id: str, contents: Sequence[tuple[str, str, list[RevocationRow]]]
) -> None:
    """MAC every row of ``contents`` and write the per-CA records and the anchor under ``key_id``
    (replacing those there are)."""
    raw_execute(conn, "DELETE FROM revocation_sets")
    key = sealer.only(key_id).derive_key(REVOCATIONS_INFO)
    grand_count = grand_total = records = 0
    for policy, issuer, rows in contents:
        total = 0
        for row in rows:
            mac = row_mac(key, key_id, policy, issuer, row)
            raw_execute(
                conn,
                "UPDATE revoked_certificates SET mac = ? "
                "WHERE policy = ? AND issuer_key_id = ? AND serial = ?",
                (mac, policy, issuer, row.serial),
            )
            total += int(mac, 16)
        if rows:
            _write_set(conn, sealer, policy, issuer, _Set(len(rows), total, 0, key_id), exists=False)
            grand_count, grand_total, records = grand_count + len(rows), grand_total + total, records + 1
    if records:
        _write_set(conn, sealer, *_ANCHOR, _Set(grand_count, grand_total, records, key_id), exists=False)


def reauthenticate_revocations(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> int:
    """In a master-key rotation's transaction: verify every CA's revocation records under the old
    key (``old``: a sealer of it; RevocationsAltered aborts the rotation) and MAC them under the new
    one (``new``, id ``new_key_id``). Returns the number of rows. (``expiry_listed_at``, which
    the MACs do not cover, is checked against the time where it is used, not here.)"""
    contents = [(p, i, verified_rows(conn, old, p, i, math.inf)) for p, i in _all_cas(conn)]
    _rebuild(conn, new, new_key_id, contents)
    return sum(len(rows) for _p, _i, rows in contents)


def bind_unbound(conn: Connection, sealer: Sealer) -> dict[str, Any] | None:
    """At a CAS start, in a write transaction: when the database has rows recorded before schema
    13 (no ``mac``) and no revocation record at all, MAC them as found (the migration, which runs
    without the master key, only added the columns). Returns what the ``revocations-bound`` event
    says (``None``: nothing to do). A database with both records and rows without a MAC is left as
    it is: those rows do not authenticate (:func:`verified_rows`)."""
    unbound = raw_execute(conn, "SELECT COUNT(*) FROM revoked_certificates WHERE mac IS NULL").fetchone()[0]
    if not unbound or raw_execute(conn, "SELECT COUNT(*) FROM revocation_sets").fetchone()[0]:
        return None
    key_id = _current_key_id(conn, sealer)
    contents = [(p, i, [row for row, _mac in _rows(conn, p, i)]) for p, i in _all_cas(conn)]
    _rebuild(conn, sealer, key_id, contents)
    return {"rows": int(unbound), "cas": len(contents), "digest_sha256": _digest(contents)}


def _digest(contents: Sequence[tuple[str, str, list[RevocationRow]]]) -> str:
    """SHA-256 of the (policy, issuer, serial) bound, for the ledger event (no other values)."""
    names = [[p, i, r.serial] for p, i, rows in contents for r in rows]
    return hashlib.sha256(json.dumps(names, separators=(",", ":")).encode()).hexdigest()
