"""CAS storage: one code path for embedded SQLite and PostgreSQL (SQLAlchemy Core).

Every state change runs in :meth:`Database.write`, a transaction that holds the CAS write lock:
``BEGIN IMMEDIATE`` on SQLite (WAL, ``busy_timeout``), ``SELECT ... FOR UPDATE`` of the single
``cas_lock`` row on PostgreSQL. State changes and the events that record them are written in
the same transaction, so either both are durable or neither is. Reads use plain transactions.

Schema versions are applied in order by :func:`migrate` (recorded in ``meta``), under the lock,
so several CAS replicas starting together on one PostgreSQL migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from confide.cas.secrets import crl_distribution_id_of
from confide.errors import StorageError
from confide.ledger.db import Conn
from confide.ledger.db import execute as ledger_execute
from confide.ledger.db import executemany as ledger_executemany
from confide.ledger.db import schema as ledger_schema

__all__ = [
    "Database",
    "EventSink",
    "WriteBatcher",
    "insert_events",
    "metadata",
    "raw_execute",
    "raw_executemany",
]

metadata = MetaData()

cas_lock = Table("cas_lock", metadata, Column("id", Integer, primary_key=True))
meta = Table(
    "meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False)
)
policies = Table(
    "policies",
    metadata,
    Column("name", String(128), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("predecessor", String(64)),
    # Both sealed at rest from schema 14 (confide.cas.policy_rows): read only through
    # policy_rows.open_column.
    Column("document", Text, nullable=False),  # canonical policy JSON
    Column("submission", Text, nullable=False),  # the signed submission as received
    Column("submitter", String(64), nullable=False),
    Column("creator", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # active | pending | superseded | stale
    Column("created_at", Float, nullable=False),
    # HMAC-SHA256 of the row but its sealed texts and created_at, under the master key
    # ``key_id`` names (schema 15; confide.cas.policy_auth): NULL only for rows of schema 14
    # not yet bound at a start.
    Column("key_id", String(32)),
    Column("mac", String(64)),
    PrimaryKeyConstraint("name", "hash"),
)
policy_heads = Table(
    "policy_heads",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("hash", String(64), nullable=False),
    Column("creator", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
    # One more with every owner's revocation (docs/cas.md "Revocation"): a release rendered
    # before one is refused at commit, as one rendered before a policy update is.
    Column("revision", BigInteger, nullable=False, server_default="0"),
    # HMAC-SHA256 of name, hash, revision and creator under the master key ``key_id`` names
    # (schema 15; confide.cas.policy_auth): NULL only for rows of schema 14 not yet bound.
    Column("key_id", String(32)),
    Column("mac", String(64)),
)
approvals = Table(
    "approvals",
    metadata,
    Column("name", String(128), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("signer", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # HMAC-SHA256 of name, hash, signer and the document's SHA-256 under the master key
    # ``key_id`` names (schema 15; confide.cas.policy_auth): NULL only for rows of schema 14
    # not yet bound at a start.
    Column("key_id", String(32)),
    Column("mac", String(64)),
    PrimaryKeyConstraint("name", "hash", "signer"),
)
secrets = Table(
    "secrets",
    metadata,
    Column("policy", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    Column("public", Text, nullable=False),  # JSON: non-secret parts (certificate, public key)
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("policy", "name", "version"),
)
# Schema 19 (confide.cas.secret_heads, docs/cas.md "What a secret's current version rests on"):
# each secret's current version, written with every new version's row, HMAC-SHA256 of the key
# id, policy, name and version under the master key ``key_id`` names. A release refuses a
# secret whose newest row is not this version.
secret_heads = Table(
    "secret_heads",
    metadata,
    Column("policy", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("mac", String(64), nullable=False),
    PrimaryKeyConstraint("policy", "name"),
)
nonces = Table(
    "nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("used", Integer, nullable=False),
)
evidence_seen = Table(
    "evidence_seen",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("seen_at", Float, nullable=False),
)
# docs/cas.md "What a policy's current version rests on" (schema 17; confide.cas.head_index):
# one row, a snapshot of each policy's latest ``policy.created`` / ``policy.updated`` ledger
# entry and the entries held back from its chain (``heads``: canonical JSON {name: {"latest":
# event or null, "held": [event, ...]}}, an event being a list as
# head_index._event_json writes it: index, hash, predecessor, created) as of ledger size ``size``, MAC'd
# under the master key ``key_id`` names. Only a starting point: the ledger's entries are the
# truth, and an older genuine snapshot gives the same answer after a longer scan. Schema 18:
# ``board``, the successor board's entries as of the same size (canonical JSON [[index, kind,
# value, generation], ...]; confide.cas.board_ledger), covered by the same MAC (NULL only in a
# row written before 18, which does not verify: the migration deletes it). Schema 20: ``secrets``,
# each secret's newest version the ledger's entries record as of the same size (canonical JSON
# {"bound": index or null, "versions": [[policy, name, index, version], ...]};
# confide.cas.secret_ledger), under the same MAC (NULL only in a row written before 20: deleted).
policy_head_anchor = Table(
    "policy_head_anchor",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("heads", Text, nullable=False),
    Column("board", Text),
    Column("secrets", Text),
    Column("updated_at", Float, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("mac", String(64), nullable=False),
)
events = Table(
    "events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("type", String(48), nullable=False),
    Column("policy", String(128)),
    Column("payload", Text, nullable=False),
)
volume_tags = Table(
    "volume_tags",
    metadata,
    Column("policy", String(128), nullable=False),
    Column("volume", String(128), nullable=False),
    Column("tag", String(64), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("policy", "volume"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("policy", String(128), nullable=False),
    Column("service", String(128), nullable=False),
    Column("measurement", String(128)),
    Column("expires_at", Float, nullable=False),
    # 1: every volume released to the session has its session_volumes row (schema 4 on); NULL:
    # opened before schema 4, its tag reports are judged by the current policies (docs/policy.md,
    # "Frozen at release").
    Column("volumes_frozen", Integer),
)
# What governs a session's tag reports, frozen when its volumes were released (docs/policy.md,
# "Volume update policies", "Frozen at release"): one row per volume of the release, removed
# with the session (sessions are swept when they expire).
session_volumes = Table(
    "session_volumes",
    metadata,
    Column(
        "token_sha256",
        String(64),
        ForeignKey("sessions.token_sha256", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("volume", String(128), nullable=False),  # the name the session's policy mounts
    Column("update_policy", String(32), nullable=False),  # the effective mode released
    Column("owner_policy", String(128), nullable=False),
    Column("owner_volume", String(128), nullable=False),
    # JSON: {"links": [{policy, volume, hash}, ...] from the session's policy to the owner,
    # "ephemeral_by": the exporter whose export made the mode ephemeral, or null}
    Column("chain", Text, nullable=False),
    Column("released_tag", String(64), nullable=False),
    Column("released_generation", BigInteger, nullable=False),
    # the tag the session's next report under rollback_protected must start from: the released
    # one, then the session's own last accepted report
    Column("tag", String(64), nullable=False),
    PrimaryKeyConstraint("token_sha256", "volume"),
)
revoked_certificates = Table(
    "revoked_certificates",
    metadata,
    Column("policy", String(128), nullable=False),
    Column("issuer_key_id", String(128), nullable=False),  # hex of the certificate's AKI keyIdentifier
    Column("serial", String(64), nullable=False),  # hex, RFC 5280 §4.1.2.2: at most 20 octets
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("reason", String(32), nullable=False),  # RFC 5280 §5.3.1 name
    Column("revoked_at", Float, nullable=False),
    Column("not_after", Float, nullable=False),  # the revoked certificate's
    # thisUpdate of the first CRL that listed it after its notAfter: later CRLs leave it out
    # (RFC 5280 §3.3).
    Column("expiry_listed_at", Float),
    # HMAC-SHA256 of the row's other columns but expiry_listed_at (schema 13;
    # confide.cas.revocation_auth): NULL only for rows of schema 12 not yet bound at a start.
    Column("mac", String(64)),
    PrimaryKeyConstraint("policy", "issuer_key_id", "serial"),
)
revocation_sets = Table(
    "revocation_sets",
    metadata,
    # Schema 13 (confide.cas.revocation_auth): per CA key of a policy, how many revocation rows
    # and the sum of their MACs (mod 2^256, 64 hex digits), MAC'd under the master key ``key_id``
    # names; the row with empty policy and issuer_key_id is the anchor over all the others
    # (``records``: how many).
    Column("policy", String(128), nullable=False),
    Column("issuer_key_id", String(128), nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("mac_sum", String(64), nullable=False),
    Column("records", BigInteger, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("mac", String(64), nullable=False),
    PrimaryKeyConstraint("policy", "issuer_key_id"),
)
crls = Table(
    "crls",
    metadata,
    Column("policy", String(128), nullable=False),
    Column("ca", String(128), nullable=False),
    Column("number", BigInteger, nullable=False),  # RFC 5280 §5.2.3, grows with every CRL
    Column("ca_version", Integer, nullable=False),
    Column("entries_sha256", String(64), nullable=False),
    Column("this_update", Float, nullable=False),
    Column("next_update", Float, nullable=False),
    Column("der", LargeBinary, nullable=False),
    # The opaque id of the CRL's public URL (confide.cas.secrets.crl_distribution_id: the CA's
    # subject and key identifier); NULL only for rows of schema 5 not re-issued since.
    Column("distribution_id", String(64)),
    PrimaryKeyConstraint("policy", "ca"),
)
runtime_certificates = Table(
    "runtime_certificates",
    metadata,
    # A certificate issued at a release to the runtime's own key (``issue_to_runtime``), so that
    # it can be revoked (docs/cas.md "Revocation"). Public data only; dropped past not_after.
    Column("policy", String(128), nullable=False),
    Column("issuer_key_id", String(128), nullable=False),  # hex of the certificate's AKI keyIdentifier
    Column("serial", String(64), nullable=False),  # hex
    Column("name", String(128), nullable=False),  # the issue_to_runtime secret
    Column("service", String(128), nullable=False),
    Column("session_sha256", String(64), nullable=False),  # sessions.token_sha256 of the release
    Column("ca_policy", String(128), nullable=False),  # the issuing CA (an import: the exporter's)
    Column("ca_name", String(128), nullable=False),
    Column("ca_version", Integer, nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("not_after", Float, nullable=False),
    Column("certificate_sha256", String(64), nullable=False),
    # The certificate, DER (schema 12): what the OCSP responder answers ``good`` from, once its
    # signature verifies under the CA's key (the other columns are not authenticated). NULL for
    # rows recorded before schema 12.
    Column("der", LargeBinary),
    PrimaryKeyConstraint("policy", "issuer_key_id", "serial"),
)
revocation_requests = Table(
    "revocation_requests",
    metadata,
    # Signed revocation requests already carried out (single use); dropped once their time window
    # has passed, after which the request is refused as stale anyway.
    Column("digest", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)
successor_board = Table(
    "successor_board",
    metadata,
    # docs/cas.md "Handing over to a successor version" (confide.cas.successor): one row, set
    # when the CAS is initialised; ``record`` is authenticated by ``mac`` under a key derived
    # from the master key ``key_id`` names.
    Column("id", Integer, primary_key=True),
    Column("record", Text, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("mac", String(64), nullable=False),
)
successor_approvals = Table(
    "successor_approvals",
    metadata,
    # A board member's signed approval of a successor (``target``: the SHA-256 that names the
    # master key id, platform and identity claims approved); re-checked at every use.
    Column("target", String(64), nullable=False),
    Column("signer", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("target", "signer"),
)
successor_withdrawals = Table(
    "successor_withdrawals",
    metadata,
    # docs/cas.md "Withdrawing an approval": a member's signed withdrawal of their own approval
    # (``approval``: the SHA-256 of the approval's RFC 8785 JSON). Kept for good: an approval
    # whose digest is here is never counted or accepted again.
    Column("approval", String(64), primary_key=True),
    Column("signer", String(64), nullable=False),
    Column("target", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
successor_board_approvals = Table(
    "successor_board_approvals",
    metadata,
    # docs/cas.md "Changing the successor board": a current member's signed approval of a board
    # change (``change``: the SHA-256 that names the new board, the generation it replaces and
    # the master key id); re-checked at every use; emptied when a change is applied.
    Column("change", String(64), nullable=False),
    Column("signer", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("change", "signer"),
)
successor_retired = Table(
    "successor_retired",
    metadata,
    # docs/cas.md "Retiring the old version": the identities (``identity``: SHA-256 of RFC 8785
    # JSON of the platform and identity claims) that no CAS of this database releases the
    # master key to or from. The set of ``identity`` values is covered by the board's MAC.
    Column("identity", String(64), primary_key=True),
    Column("platform", String(16), nullable=False),
    Column("claims", Text, nullable=False),
    # the successor's target (a hand-over's retirement) or the retirement id (one the board
    # approved on its own, ``retired_by`` "board"; docs/cas.md "Retiring a version on its own")
    Column("successor", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    # "hand-over" or "board" (schema 11; NULL: a hand-over's, stored before). Not authenticated:
    # shown, never used to decide (the MAC covers the set of ``identity`` values).
    Column("retired_by", String(16), nullable=True),
)
successor_retirement_approvals = Table(
    "successor_retirement_approvals",
    metadata,
    # docs/cas.md "Retiring a version on its own": a member's signed approval of retiring a
    # version named by its code identity claims (``retirement``: the SHA-256 that names the code
    # claims, platform, board generation and master key id); re-checked at every use; a
    # retirement's rows are deleted when it is applied, all of them when the board changes.
    Column("retirement", String(64), nullable=False),
    Column("signer", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("retirement", "signer"),
)

SCHEMA_VERSION = 20
# meta key: the heads and versions of a database from before schema 15 were MAC'd (once;
# confide.cas.policy_auth.bind_unbound)
POLICY_ROWS_BOUND_META = "policy_rows_bound"
# meta key: the secrets' heads of a database from before schema 19 were written (once;
# confide.cas.secret_heads.bind_unbound)
SECRET_HEADS_BOUND_META = "secret_heads_bound"  # noqa: S105 - a meta key name, not a secret

T = TypeVar("T")


def raw_connection(conn: Connection) -> Conn:
    """The DB-API connection under a SQLAlchemy connection (same transaction)."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise StorageError("the database connection is closed")
    return cast(Conn, raw)


def raw_execute(conn: Connection, statement: str, params: Sequence[object] = ()) -> Any:
    """One statement on the DB-API connection under ``conn`` (same transaction), written once
    with ``?`` parameters for both databases. The attestation hot path uses it: building and
    compiling a SQLAlchemy construct costs ~20x the statement itself on SQLite."""
    return ledger_execute(raw_connection(conn), statement, params)


def raw_executemany(conn: Connection, statement: str, rows: Sequence[Sequence[object]]) -> None:
    ledger_executemany(raw_connection(conn), statement, rows)


def init_ledger_schema(conn: Connection) -> None:
    """The transparency ledger's tables live in the CAS database (same transactions)."""
    raw = raw_connection(conn)
    for statement in ledger_schema(raw):
        ledger_execute(raw, statement)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)
    init_ledger_schema(conn)


def _v2(conn: Connection) -> None:
    """Indexes for the periodic expiry sweeps (nonces, sessions, spent evidence)."""
    for statement in (
        "CREATE INDEX IF NOT EXISTS nonces_expires_at ON nonces (expires_at)",
        "CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at)",
        "CREATE INDEX IF NOT EXISTS evidence_seen_seen_at ON evidence_seen (seen_at)",
    ):
        raw_execute(conn, statement)


def _v3(conn: Connection) -> None:
    """Revocation (docs/cas.md "Revocation"): the revoked certificates and the current CRL of
    each CAS-generated CA. Certificates superseded before this version are not recorded."""
    revoked_certificates.create(conn, checkfirst=True)
    crls.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """Volume modes frozen at release (docs/policy.md, "Frozen at release"): the
    ``session_volumes`` table and ``sessions.volumes_frozen``. Sessions opened before this
    version keep ``volumes_frozen`` NULL and are judged by the current policies, as before."""
    if "volumes_frozen" not in {c["name"] for c in inspect(conn).get_columns("sessions")}:
        raw_execute(conn, "ALTER TABLE sessions ADD COLUMN volumes_frozen INTEGER")
    session_volumes.create(conn, checkfirst=True)


def _v5(conn: Connection) -> None:
    """Certificates issued to runtimes (``issue_to_runtime``) and owners' revocation requests
    (docs/cas.md "Revocation"). Runtime certificates issued before this version are not recorded."""
    runtime_certificates.create(conn, checkfirst=True)
    revocation_requests.create(conn, checkfirst=True)
    if "revision" not in {c["name"] for c in inspect(conn).get_columns("policy_heads")}:
        raw_execute(conn, "ALTER TABLE policy_heads ADD COLUMN revision BIGINT NOT NULL DEFAULT 0")
    for statement in (
        "CREATE INDEX IF NOT EXISTS runtime_certificates_not_after ON runtime_certificates (not_after)",
        "CREATE INDEX IF NOT EXISTS runtime_certificates_name ON runtime_certificates (policy, name)",
    ):
        raw_execute(conn, statement)


def _v6(conn: Connection) -> None:
    """CRL distribution points (docs/cas.md "CRL distribution points"): ``crls.distribution_id``,
    filled from each stored CRL's issuer and authorityKeyIdentifier (what it is derived from)."""
    if "distribution_id" not in {c["name"] for c in inspect(conn).get_columns("crls")}:
        raw_execute(conn, "ALTER TABLE crls ADD COLUMN distribution_id VARCHAR(64)")
    raw_execute(conn, "CREATE INDEX IF NOT EXISTS crls_distribution_id ON crls (distribution_id)")
    rows = raw_execute(conn, "SELECT policy, ca, der FROM crls").fetchall()
    found = [(crl_distribution_id_of(bytes(der)), policy, ca) for policy, ca, der in rows]
    if found:
        raw_executemany(conn, "UPDATE crls SET distribution_id = ? WHERE policy = ? AND ca = ?", found)


def _v7(conn: Connection) -> None:
    """Successor hand-over (docs/cas.md "Handing over to a successor version"): the successor
    board and the board's approvals. A database from before this version has no board."""
    successor_board.create(conn, checkfirst=True)
    successor_approvals.create(conn, checkfirst=True)


def _v8(conn: Connection) -> None:
    """Withdrawn successor approvals (docs/cas.md "Withdrawing an approval"): the
    ``successor_withdrawals`` table. Approvals stored before this version stay as they were."""
    successor_withdrawals.create(conn, checkfirst=True)


def _v9(conn: Connection) -> None:
    """Board changes and retired versions (docs/cas.md "Changing the successor board",
    "Retiring the old version"): the ``successor_board_approvals`` and ``successor_retired``
    tables. A board stored before this version is generation 0."""
    successor_board_approvals.create(conn, checkfirst=True)
    successor_retired.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    """Retirements match on code identity, approvals name the version they retire (docs/cas.md
    "Retiring the old version"). No table changes: a ``successor_retired`` row keeps all the
    retired version's identity claims, from which its code identity is derived; a stored
    ``"retire": true`` approval (schema 9) counts for nothing from now on. The version itself is
    the change: code from before schema 10 refuses a newer schema and so no longer starts on
    the database, where it would match retirements on all the claims, host-set ones included
    (the retired code relaunched with another of them would start)."""
    del conn


def _v11(conn: Connection) -> None:
    """Retiring a version on its own (docs/cas.md "Retiring a version on its own"): the
    ``successor_retirement_approvals`` table and ``successor_retired.retired_by`` (NULL for the
    retirements stored before, all of them by a hand-over). Code from before schema 11 refuses
    the database, so a board change by it cannot leave pending retirement approvals behind."""
    if "retired_by" not in {c["name"] for c in inspect(conn).get_columns("successor_retired")}:
        raw_execute(conn, "ALTER TABLE successor_retired ADD COLUMN retired_by VARCHAR(16)")
    successor_retirement_approvals.create(conn, checkfirst=True)


def _v12(conn: Connection) -> None:
    """``runtime_certificates.der``: the certificate issued to a runtime, so that the OCSP
    responder answers ``good`` only for a certificate whose signature verifies under the CA's key
    (docs/cas.md "OCSP"). Rows recorded before have none and are answered ``unknown`` (they
    expire within their ``valid_for``; their revocation is unchanged)."""
    if "der" not in {c["name"] for c in inspect(conn).get_columns("runtime_certificates")}:
        kind = "BLOB" if conn.dialect.name == "sqlite" else "BYTEA"
        raw_execute(conn, f"ALTER TABLE runtime_certificates ADD COLUMN der {kind}")


def _v13(conn: Connection) -> None:
    """Authenticated revocations (confide.cas.revocation_auth, docs/cas.md "What the revocation
    records rest on"): ``revoked_certificates.mac`` and ``revocation_sets``. The migration runs
    without the master key: the rows recorded before are MAC'd at the next start
    (``revocation_auth.bind_unbound``, in the start's write transaction). Code from before
    schema 13 refuses the database, so it cannot add a revocation without its MAC."""
    if "mac" not in {c["name"] for c in inspect(conn).get_columns("revoked_certificates")}:
        raw_execute(conn, "ALTER TABLE revoked_certificates ADD COLUMN mac VARCHAR(64)")
    revocation_sets.create(conn, checkfirst=True)


def _v14(conn: Connection) -> None:
    """Policy documents sealed at rest (confide.cas.policy_rows, docs/cas.md "Policies at
    rest"): ``policies.document`` and ``policies.submission`` hold sealed values (still
    ``TEXT``). The migration runs without the master key: the rows stored before are sealed at
    the next start (``policy_rows.seal_clear_rows``, in the start's write transaction, once).
    Code from before schema 14 refuses the database, so it never reads a sealed value as a
    policy nor stores a clear one next to them."""
    del conn


def _v15(conn: Connection) -> None:
    """Authenticated policy heads, version states and approvals (confide.cas.policy_auth,
    docs/cas.md "What a policy's current version rests on"): ``policy_heads``, ``policies`` and
    ``approvals`` get ``key_id`` and ``mac``. The migration runs without the master key: the
    rows stored before are MAC'd as found at the next start (``policy_auth.bind_unbound``, in
    the start's write transaction, once). Code from before schema 15 refuses the database, so
    it cannot change a head, a state or an approval without its MAC."""
    for table in ("policy_heads", "policies", "approvals"):
        columns = {c["name"] for c in inspect(conn).get_columns(table)}
        if "key_id" not in columns:
            raw_execute(conn, f"ALTER TABLE {table} ADD COLUMN key_id VARCHAR(32)")
        if "mac" not in columns:
            raw_execute(conn, f"ALTER TABLE {table} ADD COLUMN mac VARCHAR(64)")


# The events that move a policy's head (confide.cas.core.Cas._activate records one in the same
# transaction), and the partial index that finds a policy's latest (schema 16): the statement
# reading it must repeat this ``type IN`` term as written for SQLite to use the index.
HEAD_EVENT_TYPES = "type IN ('policy-created', 'policy-updated')"


def _v16(conn: Connection) -> None:
    """A policy's current version is checked against its latest ``policy-created`` /
    ``policy-updated`` event (docs/cas.md "What a policy's current version rests on",
    confide.cas.policy_auth): a partial index over those events by policy and sequence number,
    so the check is one index probe and the attestations' events are not indexed."""
    raw_execute(
        conn,
        f"CREATE INDEX IF NOT EXISTS events_head_changes ON events (policy, seq) WHERE {HEAD_EVENT_TYPES}",
    )


def _v17(conn: Connection) -> None:
    """A policy's current version is checked against its latest ``policy.created`` /
    ``policy.updated`` entry in the ledger itself, not the ``events`` rows (confide.cas.head_index,
    docs/cas.md "What a policy's current version rests on"): ``policy_head_anchor`` holds the
    MAC'd snapshot a process starts its scan of the ledger from. The migration runs without the
    master key and leaves the table empty: the next start scans the whole ledger once and writes
    the first snapshot (nothing is trusted but the ledger's entries, so nothing is recorded).
    Schema 16's partial index of the head events is no longer read: dropped."""
    policy_head_anchor.create(conn, checkfirst=True)
    raw_execute(conn, "DROP INDEX IF EXISTS events_head_changes")


def _v18(conn: Connection) -> None:
    """The successor board's rows are checked against the ledger's board entries too
    (confide.cas.board_ledger, docs/cas.md "What the successor board rests on"): the snapshot
    ``policy_head_anchor`` gets ``board``, the board's entries as of its size, under its MAC.
    The migration runs without the master key: it deletes the schema-17 snapshot (its MAC
    covers no board entries), so the next start scans the whole ledger once and writes one
    that covers both (as the upgrade to 17 did)."""
    if "board" not in {c["name"] for c in inspect(conn).get_columns("policy_head_anchor")}:
        raw_execute(conn, "ALTER TABLE policy_head_anchor ADD COLUMN board TEXT")
    raw_execute(conn, "DELETE FROM policy_head_anchor")


def _v19(conn: Connection) -> None:
    """Each secret's current version authenticated (confide.cas.secret_heads, docs/cas.md "What
    a secret's current version rests on"): the ``secret_heads`` table. The migration runs
    without the master key and leaves it empty: the next start writes each secret's head for
    the newest row present then (``secret_heads.bind_unbound``, in the start's write
    transaction, once; trust on first migration). Code from before schema 19 refuses the
    database, so it cannot write a secret version without its head."""
    secret_heads.create(conn, checkfirst=True)


def _v20(conn: Connection) -> None:
    """Each secret's head is checked against the newest version the ledger's entries record for
    it (confide.cas.secret_ledger, docs/cas.md "What a secret's current version rests on"): the
    snapshot ``policy_head_anchor`` gets ``secrets``, those versions as of its size, under its
    MAC. The migration runs without the master key: it deletes the schema-19 snapshot (its MAC
    covers no versions), so the next start scans the whole ledger once and writes one that
    covers them (as the upgrades to 17 and 18 did). Versions written before without an entry (a
    volume key's) are trusted as found (trust on first migration). Code from before schema 20
    refuses the database, so it cannot write a volume key without its ``volume.key`` entry."""
    if "secrets" not in {c["name"] for c in inspect(conn).get_columns("policy_head_anchor")}:
        raw_execute(conn, "ALTER TABLE policy_head_anchor ADD COLUMN secrets TEXT")
    raw_execute(conn, "DELETE FROM policy_head_anchor")


_MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7, 8: _v8, 9: _v9, 10: _v10, 11: _v11, 12: _v12,
    13: _v13, 14: _v14, 15: _v15, 16: _v16, 17: _v17, 18: _v18, 19: _v19, 20: _v20,
}  # fmt: skip


class EventSink:
    """The narrow interface between CAS state changes and the transparency log: ``record`` is
    called inside the write transaction of the change it describes. Values are never secret:
    callers pass names, hashes, versions and fingerprints only."""

    def record(self, conn: Connection, type_: str, policy: str | None, payload: dict[str, Any]) -> int:
        return self.record_many(conn, [(type_, policy, payload)])

    def record_many(self, conn: Connection, events_: Sequence[tuple[str, str | None, dict[str, Any]]]) -> int:
        """Record several events in order; returns the sequence number of the first."""
        last = raw_execute(conn, "SELECT MAX(seq) FROM events").fetchone()[0]
        first = (last or 0) + 1
        insert_events(conn, first, events_)
        return first

    def record_linked(
        self,
        conn: Connection,
        events_: Sequence[tuple[str, str | None, dict[str, Any]]],
        linked: Sequence[tuple[str, str | None, dict[str, Any]]],
    ) -> int:
        """Record ``events_`` and then ``linked``, each of whose payloads gets the member
        ``attestation``: ``{"index": I, "leaf_hash": H}``, the ledger index of the first of
        ``events_`` and the hex RFC 9162 leaf hash of its entry (``None`` here: no ledger; the
        ledger's sink, confide.cas.ledger_sink, computes it). Returns the first's seq."""
        last = raw_execute(conn, "SELECT MAX(seq) FROM events").fetchone()[0]
        link = {"index": last or 0, "leaf_hash": None}
        return self.record_many(conn, [*events_, *((t, p, {**d, "attestation": link}) for t, p, d in linked)])


def insert_events(
    conn: Connection,
    first: int,
    events_: Sequence[tuple[str, str | None, dict[str, Any]]],
    payloads: Sequence[str] | None = None,
) -> None:
    """The ``events`` rows of ``events_``; ``payloads``: their payloads as JSON text already
    (the ledger entries' canonical JSON), else written here."""
    now = time.time()
    if payloads is None:
        payloads = [json.dumps(payload, sort_keys=True) for _, _, payload in events_]
    raw_executemany(
        conn,
        "INSERT INTO events (seq, at, type, policy, payload) VALUES (?, ?, ?, ?, ?)",
        [
            (first + i, now, type_, policy, text)
            for i, ((type_, policy, _), text) in enumerate(zip(events_, payloads, strict=True))
        ],
    )


# The execution option that marks a read transaction's connection (Database.read; SQLite: a
# plain BEGIN; confide.cas.head_index keeps only what such a transaction sees: committed entries)
READ_OPTION = "confide_read"

_USER_INFO = re.compile(r"[^:/@]*(?::.*)?@", re.DOTALL)
SQLITE_BUSY_TIMEOUT_MS = 30000  # every SQLite connection's busy_timeout (rotation._scrub restores it)


DISPOSE_WAIT = 2.0  # seconds Database.dispose waits for connections other threads have checked out


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            if self.is_sqlite:
                # A small pool: connections (and their PRAGMAs) are reused; SQLite serialises
                # writers with BEGIN IMMEDIATE anyway.
                self.engine: Engine = create_engine(
                    url,
                    connect_args={"check_same_thread": False, "timeout": 30},
                    poolclass=QueuePool,
                    pool_size=4,
                    max_overflow=8,
                )
                self._sqlite_hooks()
            else:
                if url.startswith("postgresql://"):
                    url = "postgresql+psycopg://" + url[len("postgresql://") :]
                self.engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=16)
        except (SQLAlchemyError, ValueError) as exc:
            raise StorageError(f"cannot open database {self.redacted_url}: {type(exc).__name__}") from None
        # Read transactions: the option set once (``execution_options`` per connection copies
        # the connection's options on every read).
        self._reader = self.engine.execution_options(**{READ_OPTION: True})
        # SQLite: one read connection kept open and used by whichever caller finds it free
        # (the attestation path reads once per attestation; a pool checkout, the connection's
        # set-up and its reset cost ~3x the read). Callers that find it busy take a pooled one.
        # Not on PostgreSQL, where the pool's pre-ping replaces connections the server dropped.
        self._kept_read: Connection | None = None
        self._kept_lock = threading.Lock()

    @property
    def redacted_url(self) -> str:
        """``url`` as the start line and database errors show it: the user info (``user:password@``)
        as ``***@``, and the value of every query parameter whose name holds ``password`` (libpq
        also takes ``password`` and ``sslpassword`` there) as ``***``."""
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        head, qsep, query = rest.partition("?")
        if qsep:
            query, hsep, fragment = query.partition("#")
            params = []
            for param in query.split("&"):
                name, eq, _value = param.partition("=")
                params.append(f"{name}=***" if eq and "password" in name.lower() else param)
            query = "&".join(params) + hsep + fragment
        rest = f"{head}{qsep}{query}"
        # The user info as SQLAlchemy reads it (a user name without ':' or '/', then ':' and a
        # password up to the last '@': one left unencoded in the password, or a '?', '#' or '/',
        # is the password's too); none in a file's path (sqlite:////p)
        if not rest.startswith("/") and (info := _USER_INFO.match(rest)):
            rest = "***@" + rest[info.end() :]
        return f"{scheme}://{rest}"

    def _sqlite_hooks(self) -> None:
        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _begin(conn: Connection) -> None:
            # On the DB-API connection: the same statement without SQLAlchemy's execution
            # machinery (events, result objects), which cost ~5x the BEGIN itself per transaction.
            read = conn.get_execution_options().get(READ_OPTION)
            raw_connection(conn).execute("BEGIN" if read else "BEGIN IMMEDIATE")

    @contextmanager
    def write(self, on: Connection | None = None) -> Iterator[Connection]:
        """A serialised read-write transaction (the CAS write lock is held until commit), on a
        connection from the pool or on ``on``, a connection the caller keeps open."""
        try:
            with self.engine.begin() if on is None else _begun(on) as conn:
                if not self.is_sqlite:
                    conn.execute(select(cas_lock.c.id).where(cas_lock.c.id == 1).with_for_update())
                yield conn
        except OperationalError as exc:
            raise StorageError(f"database error: {type(exc.orig).__name__ if exc.orig else exc}") from None

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read-only transaction. SQLite's is one snapshot; PostgreSQL's is READ COMMITTED
        (each statement sees what was committed before it) unless ``snapshot``: then REPEATABLE
        READ (PostgreSQL 16 §13.2.2: every statement sees the snapshot of the first), for reads
        whose rows must agree with each other whatever commits meanwhile."""
        kept = self.is_sqlite and self._kept_lock.acquire(blocking=False)
        try:
            if kept:
                if self._kept_read is None or self._kept_read.invalidated:
                    self._kept_read = self._reader.connect()
                with self._kept_read.begin():
                    yield self._kept_read
            else:
                with self._reader.connect() as conn:
                    if snapshot and not self.is_sqlite:
                        conn.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        yield conn
        except OperationalError as exc:
            raise StorageError(f"database error: {type(exc.orig).__name__ if exc.orig else exc}") from None
        finally:
            if kept:
                self._kept_lock.release()

    def migrate(self) -> int:
        """Apply pending schema migrations; returns the schema version."""
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS cas_lock (id INTEGER PRIMARY KEY)"))
                conn.execute(text("INSERT INTO cas_lock (id) VALUES (1) ON CONFLICT DO NOTHING"))
        with self.write() as conn:
            meta.create(conn, checkfirst=True)
            current = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            version = int(current) if current else 0
            if version > SCHEMA_VERSION:
                raise StorageError(f"database schema {version} is newer than this CAS ({SCHEMA_VERSION})")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[v](conn)
            if version == 0:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                # A new database has no row to bind (confide.cas.policy_auth.bind_unbound).
                conn.execute(insert(meta).values(key=POLICY_ROWS_BOUND_META, value="1"))
                conn.execute(insert(meta).values(key=SECRET_HEADS_BOUND_META, value="1"))
                if self.is_sqlite:
                    conn.execute(insert(cas_lock).values(id=1))
            elif version != SCHEMA_VERSION:
                conn.execute(
                    meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
                )
        return SCHEMA_VERSION

    def dispose(self, *, wait: float = DISPOSE_WAIT) -> None:
        """Close the pool's connections. A connection another thread still has checked out (a
        write that is just committing, e.g. the TCB floor's ledger entry, confide.cas.server
        ``_state_recorder``) is waited for, up to ``wait`` seconds: one returned to a pool
        already disposed would never be closed, only garbage-collected (psycopg warns)."""
        with self._kept_lock:
            if self._kept_read is not None:
                self._kept_read.close()
                self._kept_read = None
        checkedout = getattr(self.engine.pool, "checkedout", None)
        deadline = time.monotonic() + wait
        while checkedout is not None and checkedout() > 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        self.engine.dispose()


@contextmanager
def _begun(conn: Connection) -> Iterator[Connection]:
    with conn.begin():
        yield conn


_STOP = object()


class WriteBatcher:
    """Group commit for short write jobs: one writer thread runs every queued job in one write
    transaction and commits once, so concurrent attestations share one ``BEGIN IMMEDIATE``
    (or the PostgreSQL lock row) and one fsync, and the event loop never waits on the disk.

    A job is a function of the open connection; its future resolves after the commit that made
    its writes durable. Jobs must not raise for expected outcomes (the attestation job records
    a refusal and returns it). If one does raise, the batch is rolled back and every job of it
    runs again alone, in its own transaction, so one failing job never fails or loses another.

    Under load the writer commits at most once per ``interval`` seconds: a job that arrives
    within ``interval`` of the previous commit waits for the rest of it (sleeping, so the jobs
    queued meanwhile cost no wake-ups), and every job queued by then shares the transaction. An
    idle writer commits a job at once. Each transaction has a fixed cost (the write lock, the
    ledger head and tiles, the WAL header, the fsync and the cold caches after it) that a
    larger batch shares. The writer keeps one connection open (a pooled one per transaction
    would be checked out, reset and, on SQLite, have its page cache invalidated by the other
    pooled connections' commits); after a failed transaction it takes a fresh one.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 256,
        interval: float = 0.008,
        around: Callable[[Connection], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.db, self.max_batch, self.interval = db, max_batch, interval
        # entered around each transaction's jobs (e.g. LedgerEventSink.batched: one ledger
        # append per transaction); its exit runs before the commit
        self.around = around
        self._conn: Connection | None = None
        self._last_commit = 0.0
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0
        self.committed_jobs = 0

    def submit(self, job: Callable[[Connection], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._put((job, fut))
        return fut

    def submit_async(self, job: Callable[[Connection], T]) -> asyncio.Future[T]:
        """:meth:`submit` for a caller on an event loop: an ``asyncio`` future of that loop,
        resolved after the commit. The writer resolves all of a batch's futures of one loop
        with one ``call_soon_threadsafe`` (one wake-up of the loop per transaction, not per job,
        and no ``concurrent.futures.Future`` with its lock and chained callbacks per job)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put((job, _LoopSlot(loop, fut)))
        return fut

    def _put(self, item: object) -> None:
        with self._lock:
            if self._closed:
                raise StorageError("the CAS is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cas-group-commit", daemon=True)
                self._thread.start()
            self._queue.put(item)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                stop = self._next()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _next(self) -> bool:
        """Wait for jobs and commit them; returns whether the writer was told to stop."""
        stop = False
        item = self._queue.get()
        wait = self._last_commit + self.interval - time.monotonic()
        if wait > 0 and item is not _STOP:
            time.sleep(wait)
        batch: list[tuple[Callable[[Connection], Any], Any]] = []
        while True:
            if item is _STOP:
                stop = True
            else:
                batch.append(cast("tuple[Callable[[Connection], Any], Any]", item))
            if stop or len(batch) >= self.max_batch or self._queue.empty():
                break
            item = self._queue.get()
        batch = [(job, fut) for job, fut in batch if _start(fut)]
        if batch:
            self._commit(batch)
            self._last_commit = time.monotonic()
        return stop

    def _commit(self, batch: list[tuple[Callable[[Connection], Any], Any]]) -> None:
        results: list[Any] = []
        reused = self._conn is not None
        try:
            if self._conn is None:
                self._conn = self.db.engine.connect()
            with (
                self.db.write(self._conn) as conn,
                self.around(conn) if self.around is not None else contextlib.nullcontext(),
            ):
                for job, _ in batch:
                    results.append(job(conn))
        except Exception as exc:
            stale, self._conn = self._conn, None  # a fresh connection for the next transaction
            lost = reused and stale is not None and stale.invalidated
            if stale is not None:
                with contextlib.suppress(Exception):
                    stale.close()
            if lost:  # the kept connection had gone (e.g. PostgreSQL restarted): again, afresh
                self._commit(batch)
                return
            if len(batch) == 1:
                _resolve([(batch[0][1], None, exc)])
                return
            logging.getLogger("confide.cas").warning(
                json.dumps({"event": "group-commit-retry", "jobs": len(batch), "error": type(exc).__name__})
            )
            for one in batch:  # alone, so the failure stays with the job that caused it
                self._commit([one])
            return
        self.commits += 1
        self.committed_jobs += len(batch)
        _resolve([(fut, result, None) for (_, fut), result in zip(batch, results, strict=True)])


class _LoopSlot:
    """A job's ``asyncio`` future and its loop (:meth:`WriteBatcher.submit_async`)."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> None:
        self.loop, self.fut = loop, fut


def _start(slot: Future[Any] | _LoopSlot) -> bool:
    """Whether the job is still wanted (its caller did not cancel it before it ran)."""
    if isinstance(slot, _LoopSlot):
        return not slot.fut.cancelled()  # a cancellation after this is benign: the result is dropped
    return slot.set_running_or_notify_cancel()


def _resolve(outcomes: list[tuple[Future[Any] | _LoopSlot, Any, BaseException | None]]) -> None:
    """Hand the jobs their results: ``concurrent.futures`` futures at once, ``asyncio`` ones in
    one callback per loop (runs on the writer thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for slot, result, exc in outcomes:
        if isinstance(slot, _LoopSlot):
            by_loop.setdefault(slot.loop, []).append((slot.fut, result, exc))
        elif exc is not None:
            slot.set_exception(exc)
        else:
            slot.set_result(result)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
            loop.call_soon_threadsafe(_set_all, futures)


def _set_all(futures: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in futures:
        if fut.done():  # cancelled meanwhile
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
