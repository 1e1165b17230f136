"""Policy documents sealed at rest (docs/cas.md "Policies at rest").

The ``policies`` table keeps two texts per version: ``document`` (the canonical policy JSON) and
``submission`` (the signed submission as received). A policy may carry secret material in them
(an explicit secret ``value``, an explicit volume ``fspf_key``), so from schema 14 both columns
of every row are sealed under the CAS master key, the same envelope as the ``secrets`` table
(:meth:`confide.cas.secrets.Sealer.seal_record`: a fresh AES-256-GCM data key per value, wrapped
under the master key), bound as associated data to the table, the column, the policy's name and
its hash: a sealed value copied to another row or column does not open. Every row is sealed, not
only those with explicit values: a clear row is then always an alteration (never a row to take
as it stands), and opening costs one AES-GCM pair per version read from the database, which
:meth:`confide.cas.core.Cas._load` caches by (name, hash) (phase 1 of an attestation reads its
snapshot in memory).

Stored form: ``sealed:`` followed by the base64 of the ``CSL2`` envelope (the columns stay
``TEXT``). :func:`open_column` is the one reader: a value that is not sealed, or whose seal does
not open, is a :class:`~confide.errors.SignatureError` that names the row, never its content.

**Migration.** The schema 14 migration runs without the master key; the rows of an older
database are sealed at the next start (:func:`seal_clear_rows`, in the start's write
transaction, so all or none), once, and only when every row is clear: the ``meta`` row
``policies_sealed`` records it, and from then on a clear row is refused, never sealed. An
offline master-key rotation of a database that was migrated but not yet started does the same
first. Afterwards the old contents are scrubbed from the database files as after a rotation
(:func:`confide.cas.rotation._scrub`).

**Rotation.** :func:`reseal_rows` re-seals rows under the sealer's current key, in the same
transaction as the secrets (offline) or in batches and the switch-over transaction (online).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, tuple_

from confide.cas.db import meta, raw_execute
from confide.cas.db import policies as policies_table
from confide.cas.secrets import Sealer, row_key_id
from confide.errors import SignatureError

__all__ = [
    "COLUMNS",
    "PREFIX",
    "SEALED_META",
    "all_rows",
    "open_column",
    "reseal_rows",
    "row_key_ids",
    "seal_clear_rows",
    "seal_column",
]

PREFIX = "sealed:"
COLUMNS = ("document", "submission")
SEALED_META = "policies_sealed"
_LOG = logging.getLogger("confide.cas")


def _record(column: str, name: str, digest: str) -> tuple[str, ...]:
    return ("policies", column, name, digest)


def seal_column(sealer: Sealer, column: str, name: str, digest: str, text: str) -> str:
    """The stored form of ``text`` for column ``column`` of the row (``name``, ``digest``)."""
    blob = sealer.seal_record(text.encode(), record=_record(column, name, digest))
    return PREFIX + base64.b64encode(blob).decode()


def _blob(stored: str, what: str) -> bytes:
    if not stored.startswith(PREFIX):
        raise SignatureError(f"{what} is not sealed: the database was altered")
    try:
        return base64.b64decode(stored[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what} is malformed") from None


def open_column(sealer: Sealer, column: str, name: str, digest: str, stored: str) -> str:
    """The text of column ``column`` of the row (``name``, ``digest``) as stored (``stored``):
    the one way the CAS reads a policy document or submission. Raises
    :class:`~confide.errors.SignatureError` for a value that is not sealed, is malformed, or
    does not open (another row's, edited, or under a key this CAS does not hold)."""
    what = f"stored policy {name} version {digest[:16]}… ({column})"
    plain = sealer.unseal_record(_blob(stored, what), record=_record(column, name, digest), what=what)
    try:
        return plain.decode()
    except UnicodeDecodeError:  # authenticated, so written by a CAS holding the key: cannot happen
        raise SignatureError(f"{what} does not authenticate") from None


def row_key_ids(document: str, submission: str) -> set[str | None]:
    """The master-key ids a row's sealed values name (``None`` for a value that is not sealed)."""
    out: set[str | None] = set()
    for stored in (document, submission):
        try:
            out.add(row_key_id(_blob(stored, "policy row")))
        except SignatureError:
            out.add(None)
    return out


def _sealed_already(conn: Connection) -> bool:
    return conn.execute(select(meta.c.value).where(meta.c.key == SEALED_META)).scalar() is not None


def seal_clear_rows(conn: Connection, sealer: Sealer) -> int | None:
    """The schema 14 migration of the ``policies`` rows, at a start (or an offline rotation), in
    its write transaction: once per database, seal every row as found and record
    ``policies_sealed``. Returns the number of rows sealed, ``None`` when done before.

    Only a database whose rows are all clear is sealed (one written before schema 14). A value
    already sealed next to clear ones means the ``meta`` row was removed and clear values were
    written since (rows are only ever written sealed from schema 14): nothing is sealed, the
    ``meta`` row is recorded again and the clear values stay refused by :func:`open_column`
    (logged, ``policy-rows-not-sealed``)."""
    if _sealed_already(conn):
        return None
    t = policies_table
    rows = conn.execute(select(t.c.name, t.c.hash, t.c.document, t.c.submission)).all()
    stored = [getattr(row, c) for row in rows for c in COLUMNS]
    clear = sum(1 for value in stored if not value.startswith(PREFIX))
    conn.execute(insert(meta).values(key=SEALED_META, value="1"))
    if clear and clear != len(stored):
        _LOG.warning(json.dumps({"event": "policy-rows-not-sealed", "clear_values": clear}))
        return 0
    if not clear:
        return 0
    if conn.dialect.name == "sqlite":
        raw_execute(conn, "PRAGMA secure_delete = ON")  # the clear cells are zeroed when freed
    updates = [
        _update(row, {c: seal_column(sealer, c, row.name, row.hash, getattr(row, c)) for c in COLUMNS})
        for row in rows
    ]
    _write(conn, updates)
    _LOG.info(json.dumps({"event": "policies-sealed", "rows": len(updates)}))
    return len(updates)


def reseal_rows(
    conn: Connection, old: Sealer, new: Sealer, rows: Sequence[Any], *, skip: str | None = None
) -> int:
    """Re-seal ``rows`` (``name``, ``hash``, ``document``, ``submission``): opened with ``old``
    (a row that does not open aborts the transaction), sealed with ``new``, each value with a
    fresh data key; a row whose values are all under the key id ``skip`` is left alone. Returns
    the number of rows re-sealed."""
    updates = []
    for row in rows:
        if skip is not None and row_key_ids(row.document, row.submission) == {skip}:
            continue
        values = {
            c: seal_column(
                new, c, row.name, row.hash, open_column(old, c, row.name, row.hash, getattr(row, c))
            )
            for c in COLUMNS
        }
        updates.append(_update(row, values))
    _write(conn, updates)
    return len(updates)


def all_rows(
    conn: Connection, *, after: tuple[str, str] | None = None, limit: int | None = None
) -> list[Any]:
    """The ``policies`` rows (name, hash, document, submission) in primary-key order, from after
    ``after``, at most ``limit``."""
    t = policies_table
    query = select(t.c.name, t.c.hash, t.c.document, t.c.submission)
    if after is not None:
        query = query.where(tuple_(t.c.name, t.c.hash) > tuple_(*after))
    query = query.order_by(t.c.name, t.c.hash)
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query).all())


def _update(row: Any, values: dict[str, str]) -> dict[str, str]:
    return {"b_name": row.name, "b_hash": row.hash, **{f"b_{c}": values[c] for c in COLUMNS}}


def _write(conn: Connection, updates: list[dict[str, str]]) -> None:
    if not updates:
        return
    t = policies_table
    conn.execute(
        t.update()
        .where(t.c.name == bindparam("b_name"))
        .where(t.c.hash == bindparam("b_hash"))
        .values(document=bindparam("b_document"), submission=bindparam("b_submission")),
        updates,
    )
