"""Authenticated secret heads (schema 19; docs/cas.md "What a secret's current version rests on").

A release hands out a secret's current version: the highest ``version`` row of the secret in
``secrets``. That table is the operator's: without more, deleting a secret's newest row (a
password rotated after a leak, a key regenerated after a ``keyCompromise`` revocation, a renewed
certificate) made the CAS hand out the previous, superseded value. So, from schema 19, every
write of a secret version also writes the secret's row in ``secret_heads``: the version it makes
current, under a MAC

- key: HKDF-SHA256 of the master key (RFC 5869 §2: no salt, info :data:`SECRET_HEADS_INFO`;
  :meth:`confide.cas.secrets.Sealer.derive_key`) with the id the row's ``key_id`` names (the
  database's ``master_key_id`` when the row is written);
- ``mac``: HMAC-SHA256 (RFC 2104) over the key id, the policy's name, the secret's name and the
  version (:func:`secret_head_mac`; ``updated_at`` is shown only).

A secret's newest row is used (:meth:`SecretHeads.checked`, from
:meth:`confide.cas.core.Cas._latest_secret`, which every release, import resolution, update,
renewal and revocation reads through) only when its head verifies and names exactly that
version; a secret whose head verifies but has no row at all is refused too, and so is a row
without a head. A refusal is :class:`SecretRowsAltered` (a :class:`~confide.errors.StorageError`,
naming the policy and the secret, never a value): the CAS neither releases that secret nor
writes a new version of it until the rows are restored.

**Against the ledger** (schema 20, :mod:`confide.cas.secret_ledger`): a head not verified
before (:meth:`SecretHeads.checked`, a miss of the cache) older than the newest version the
ledger's entries record for the secret (:attr:`SecretHeads.ledger`), or no row and no head for
a secret the ledger records, is refused too: the head row written back as it was before the
newest version (its genuine MAC) together with that version's row deleted. A scan of the ledger
that finds a newer version of a secret drops its cached head (:meth:`SecretHeads.forget`).
What remains (docs/limitations.md "CAS"): versions the ledger never recorded (a volume key's
before schema 20) are trusted as found.

**Migration.** The schema 19 migration runs without the master key; at the next start
(:func:`bind_unbound`, in the start's write transaction, recorded as a ``secret-heads-bound``
event) each secret's head is written for the newest row present then, once: only when the
``meta`` row :data:`BOUND_META` is absent, ``secret_heads`` is empty and neither the ``events``
table nor the ledger records an earlier binding. That binding takes the rows as they are at
that moment (trust on first migration), but a newest row deleted before it is refused at use
when the ledger records its version.

**Rotation.** :func:`reauthenticate_heads` verifies every head under the old key and MACs it
under the new one, in the rotation's transaction (offline, and the online switch-over).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection

from confide.cas.db import SECRET_HEADS_BOUND_META, raw_connection, raw_execute, raw_executemany
from confide.cas.head_index import HeadRefused, HeadView, VerifiedHeads, scan
from confide.cas.secrets import Sealer
from confide.errors import StorageError
from confide.ledger.store import Ledger

__all__ = [
    "BOUND_META",
    "EVENT_BOUND",
    "SECRET_HEADS_INFO",
    "SecretHeads",
    "SecretRowsAltered",
    "bind_unbound",
    "reauthenticate_heads",
    "secret_head_mac",
]

SECRET_HEADS_INFO = b"confide-secret-heads/v1"  # the HKDF info of the MAC key (RFC 5869 §2.3)
EVENT_BOUND = "secret-heads-bound"
BOUND_META = SECRET_HEADS_BOUND_META
_KEY_ID_META = "master_key_id"  # confide.cas.rotation.KEY_ID_META (rotation imports this module)
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_LOG = logging.getLogger("confide.cas")
# recorded(conn): the ledger as conn's transaction sees it (HeadView.secret: the newest version
# the ledger records for a secret and its entry's index; HeadView.size: the size it is judged
# as of), read only when a head is not the one verified last (confide.cas.secret_ledger;
# confide.cas.head_index.HeadIndex.view)
Recorded = Callable[[Connection], HeadView]
_HEAD = "SELECT version, key_id, mac FROM secret_heads WHERE policy = ? AND name = ?"
_UPSERT = (
    "INSERT INTO secret_heads (policy, name, version, updated_at, key_id, mac) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (policy, name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at, "
    "key_id = excluded.key_id, mac = excluded.mac"
)


class SecretRowsAltered(HeadRefused):
    """A secret's newest row is not the version its authenticated head names (deleted, rolled
    back, or a head that does not verify). Names the policy and the secret, never a value."""

    def __init__(
        self,
        policy: str,
        name: str,
        why: str,
        *,
        deleted_after: int | None = None,
        ledger: bool = False,
        ledger_at: int | None = None,
    ) -> None:
        super().__init__(
            f"the stored versions of secret {name[:128]!r} of policy {policy[:128]!r} do not match its "
            f"current version authenticated under the master key ({why}): the database was altered; the "
            "CAS does not release or change that secret until it is restored"
        )
        self.policy = policy
        self.name = name
        self.why = why
        # the verified current version when the refusal is for rows deleted (no row of it, or
        # only older ones): what a CAS-internal row re-issued when missing continues from
        self.deleted_after = deleted_after
        # refused because the ledger records a newer version (confide.cas.secret_ledger;
        # confide.cas.head_index.reread_behind_ledger)
        self.ledger = ledger
        # that version's entry's index: a second read judges against the entries up to it
        # (committed before it began), not against ones committed since
        self.ledger_at = ledger_at


def secret_head_mac(key: bytes, key_id: str, policy: str, name: str, version: int) -> str:
    """HMAC-SHA256 of a secret's head (module docstring)."""
    message = (
        SECRET_HEADS_INFO
        + b"\x00"
        + json.dumps([key_id, policy, name, version], separators=(",", ":")).encode()
    )
    return hmac.new(key, message, "sha256").hexdigest()


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _writing_key_id(conn: Connection, sealer: Sealer) -> str:
    row = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (_KEY_ID_META,)).fetchone()
    return sealer.sealing_key_id if row is None or row[0] is None else str(row[0])


class SecretHeads:
    """Reads and writes the secrets' heads for one CAS (its sealer). A verified head is cached
    per secret with its exact stored values (a row read again with the same values, MAC
    included, under a key the sealer still holds), so the attestation path computes no MAC for
    a head it has seen; any change to the row is a miss, and so is a secret whose newer version
    a scan of the ledger found (:meth:`forget`). ``ledger``: the newest version the ledger
    records for a secret, as a view of the ledger (:data:`Recorded`), checked on a miss (``None``: not
    checked)."""

    def __init__(self, sealer: Sealer, *, cache: int = 4096, ledger: Recorded | None = None) -> None:
        self.sealer = sealer
        self.ledger = ledger
        self._keys: dict[str, bytes] = {}
        self._verified: VerifiedHeads[tuple[str, str], tuple[object, object, object]] = VerifiedHeads(cache)

    def _key(self, key_id: object) -> bytes | None:
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id) or key_id not in self.sealer.key_ids:
            return None
        key = self._keys.get(key_id)
        if key is None:
            key = self._keys[key_id] = self.sealer.only(key_id).derive_key(SECRET_HEADS_INFO)
        return key

    def forget(self, keys: Iterable[tuple[str, str]], size: int) -> None:
        """Drop the verified heads of these secrets (policy, name): a scan of the ledger up to
        size ``size`` found a newer version of each (:attr:`~confide.cas.head_index.HeadIndex.on_secrets`);
        a head judged against a smaller view is not cached after it
        (:class:`~confide.cas.head_index.VerifiedHeads`)."""
        self._verified.forget(keys, size)

    def verifies(self, policy: str, name: str, version: object, key_id: object, mac: object) -> bool:
        """Whether a stored head's values verify (``False`` for a key this CAS does not hold, a
        value of the wrong type, a missing MAC)."""
        if self._cached(policy, name, (version, key_id, mac)):
            return True
        key = self._key(key_id)
        if key is None or not _integer(version) or not isinstance(mac, str):
            return False
        expected = secret_head_mac(key, str(key_id), policy, name, int(str(version)))
        return hmac.compare_digest(expected.encode(), mac.encode())

    def _cached(self, policy: str, name: str, stored: tuple[object, ...]) -> bool:
        return self._verified.get((policy, name)) == stored and stored[1] in self.sealer.key_ids

    def checked(
        self,
        conn: Connection,
        policy: str,
        name: str,
        row_version: int | None,
        head: tuple[object, ...] | None,
        below: int | None = None,
    ) -> None:
        """Refuse (:class:`SecretRowsAltered`) unless the secret's newest row (``row_version``;
        ``None``: no row) is the version its head (``head``: version, key id, MAC as stored;
        ``None``: no head row) names, the head verifies and, for a head not verified before,
        is not older than the newest version the ledger records for the secret, as ``conn``'s
        transaction sees the ledger (:attr:`ledger`; :mod:`confide.cas.secret_ledger`; only its
        entries below index ``below`` when given: a second read after a refusal, judged against
        the entries up to the one that refused). Neither row nor head: no secret yet, unless the
        ledger records a version of it."""
        if head is None:
            if row_version is None:
                recorded = None if self.ledger is None else self.ledger(conn).secret(policy, name, below)
                if recorded is not None:
                    raise SecretRowsAltered(
                        policy,
                        name,
                        f"it has neither rows nor a current version, ledger entry {recorded[1]} records "
                        f"version {recorded[0]}",
                        deleted_after=recorded[0],
                        ledger=True,
                        ledger_at=recorded[1],
                    )
                return
            raise SecretRowsAltered(policy, name, "its current version is not recorded")
        version, key_id, mac = head
        if not self._cached(policy, name, head):
            if not self.verifies(policy, name, version, key_id, mac):
                raise SecretRowsAltered(policy, name, "its recorded current version does not authenticate")
            assert _integer(version)  # verified
            view = None if self.ledger is None else self.ledger(conn)
            recorded = None if view is None else view.secret(policy, name, below)
            if recorded is not None and recorded[0] > int(str(version)):
                # an earlier genuine head written back with the later rows deleted
                raise SecretRowsAltered(
                    policy,
                    name,
                    f"its current version is {version}, ledger entry {recorded[1]} records version "
                    f"{recorded[0]}",
                    deleted_after=recorded[0],
                    ledger=True,
                    ledger_at=recorded[1],
                )
            # judged as of the view's size, or of the entries below ``below`` (a second read)
            as_of = None if view is None else view.size if below is None else min(view.size, below)
            self._verified.put((policy, name), (version, key_id, mac), as_of)
        assert _integer(version)  # verified
        if row_version is None or row_version < int(str(version)):
            raise SecretRowsAltered(
                policy,
                name,
                f"the row of its current version {version} is missing",
                deleted_after=int(str(version)),
            )
        if row_version != version:
            raise SecretRowsAltered(
                policy, name, f"its newest row is version {row_version}, its current version is {version}"
            )

    def head(self, conn: Connection, policy: str, name: str) -> tuple[object, ...] | None:
        """The stored head of a secret, as stored (version, key id, MAC), unverified."""
        row = raw_execute(conn, _HEAD, (policy, name)).fetchone()
        return None if row is None else tuple(row)

    def put(self, conn: Connection, policy: str, name: str, version: int, now: float) -> None:
        """Make ``version`` the secret's current version (in the write transaction that inserted
        its row)."""
        key_id = _writing_key_id(conn, self.sealer)
        key = self._key(key_id)
        if key is None:
            raise StorageError(f"the database's master key id {key_id} is not one this CAS holds")
        mac = secret_head_mac(key, key_id, policy, name, version)
        self._verified.drop((policy, name))
        raw_execute(conn, _UPSERT, (policy, name, version, now, key_id, mac))


def reauthenticate_heads(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> int:
    """In a master-key rotation's transaction: verify every secret head under the old key
    (``old``; one that does not verify aborts the rotation with :class:`SecretRowsAltered`) and
    MAC it under the new one (``new``, id ``new_key_id``). Returns how many."""
    checker = SecretHeads(old, cache=0)
    rows = raw_execute(conn, "SELECT policy, name, version, key_id, mac FROM secret_heads").fetchall()
    for policy, name, version, key_id, mac in rows:
        if not checker.verifies(str(policy), str(name), version, key_id, mac):
            raise SecretRowsAltered(
                str(policy), str(name), "its recorded current version does not authenticate"
            )
    key = new.only(new_key_id).derive_key(SECRET_HEADS_INFO)
    if rows:
        raw_executemany(
            conn,
            "UPDATE secret_heads SET key_id = ?, mac = ? WHERE policy = ? AND name = ?",
            [
                (new_key_id, secret_head_mac(key, new_key_id, str(p), str(n), int(v)), p, n)
                for p, n, v, _, _ in rows
            ],
        )
    return len(rows)


def bind_unbound(conn: Connection, sealer: Sealer, now: float) -> dict[str, Any] | None:
    """The schema 19 migration of the secrets' heads, at a start, in its write transaction: once
    per database, write each secret's head for its newest row as found and record
    :data:`BOUND_META`. Returns what the ``secret-heads-bound`` event says (``None``: nothing to
    record). Only a database without :data:`BOUND_META` whose ``secret_heads`` is empty and whose
    ``events`` table records no earlier ``secret-heads-bound`` event, nor its ledger an earlier
    ``secrets.heads-bound`` entry (:func:`confide.cas.head_index.scan`, each entry checked
    against its leaf hash; this binding's only scan of the whole ledger), is bound (one written
    before schema 19; as :func:`confide.cas.policy_auth.bind_unbound`); otherwise nothing is (logged,
    ``secret-heads-not-bound``, when the marker is absent but heads or an earlier binding exist):
    a row without a head stays refused at use."""
    if raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (BOUND_META,)).fetchone() is not None:
        return None
    raw_execute(conn, "INSERT INTO meta (key, value) VALUES (?, ?)", (BOUND_META, "1"))
    existing = int(raw_execute(conn, "SELECT COUNT(*) FROM secret_heads").fetchone()[0])
    rows = raw_execute(
        conn, "SELECT policy, name, MAX(version) FROM secrets GROUP BY policy, name ORDER BY policy, name"
    ).fetchall()
    if not rows:
        return None
    earlier = raw_execute(conn, "SELECT 1 FROM events WHERE type = ? LIMIT 1", (EVENT_BOUND,)).fetchone()
    if not existing and earlier is None:
        # The events rows are the operator's; the ledger's entries are not (each checked against
        # its leaf hash): a secrets.heads-bound entry there says the heads were bound before.
        raw = raw_connection(conn)
        if scan(raw, 0, Ledger.size(raw)).bound:
            earlier = (1,)
    if existing or earlier is not None:
        # Heads exist, or the heads were bound before and then removed with the marker (an
        # operator's way to have a deleted newest row taken as found): bind nothing.
        _LOG.warning(json.dumps({"event": "secret-heads-not-bound", "secrets": len(rows), "heads": existing,
                                 "bound_before": earlier is not None}))  # fmt: skip
        return None
    if not all(isinstance(p, str) and isinstance(n, str) and _integer(v) for p, n, v in rows):
        raise StorageError("a secret row of the database to migrate is malformed: its heads are not bound")
    key_id = _writing_key_id(conn, sealer)
    key = sealer.only(key_id).derive_key(SECRET_HEADS_INFO)
    raw_executemany(
        conn,
        "INSERT INTO secret_heads (policy, name, version, updated_at, key_id, mac) VALUES (?, ?, ?, ?, ?, ?)",
        [(p, n, int(v), now, key_id, secret_head_mac(key, key_id, p, n, int(v))) for p, n, v in rows],
    )
    listed = [[str(p), str(n), int(v)] for p, n, v in rows]
    return {
        "secrets": len(rows),
        "master_key_id": key_id,
        "digest_sha256": hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest(),
    }
