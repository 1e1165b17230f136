"""Rotating the CAS master key, and the start-up check that the data directory holds the
database's master key (docs/cas.md, "Rotating the master key").

**Key id.** ``HKDF-SHA256(master key, no salt, info "confide-cas-master/v1 master-key-id")``,
first 16 bytes, in hex: a one-way name for a key, never the key. The database stores the id of
the key its secrets are sealed under (``meta`` row ``master_key_id``); a CAS whose key has
another id does not start, and a database without one (created before rotation existed)
records it on the next start, after checking that the key opens one of its secrets.

**Rotation** (:func:`rotate_master_key`; the CAS is stopped, :mod:`confide.cas.runlock`), step
by step, with the name the ``step`` hook is called with after each:

1. ``checked``: finish an interrupted rotation, open the current key K0 and record or check
   its id in the database, so that pending files are only ever written next to a database
   that names its key.
2. ``key-written``: a fresh K1, written as ``master.key.sealed.new`` (sealed under the target
   provider) or, with ``--seal file``, ``master.key.new``; temporary file, fsync, rename, fsync
   of the directory; read back and opened with a fresh sealing key.
3. ``files-written``: with sealing, the TLS key and the log key protected under K1 (the same
   key pairs: pinned clients see no change) as ``cas-key.pem.new`` and ``log.key.sealed.new``.
4. ``resealed`` (inside the transaction, before its commit) and ``committed``: one database
   write transaction checks that the database still names K0, re-seals every secret and every
   policy version's document and submission (:mod:`confide.cas.policy_rows`; a database migrated
   to schema 14 but not started since has them sealed first) under K1 with a fresh data key each
   (so K0 and an old copy of a row open nothing of the new row),
   sets ``master_key_id`` to K1's id and records a ``master-key-rotated`` event (ledger entry
   ``key.rotated``: both ids, counts, how each key is held; never key bytes).
5. ``scrubbed``: SQLite: the re-sealed rows were written with ``secure_delete`` (old content
   zeroed) and the WAL is checkpointed and truncated; PostgreSQL: ``VACUUM FULL`` of
   ``secrets`` and ``policies``.
6. ``done``: :func:`finish_interrupted_rotation` rolls forward: the pending TLS and log keys
   are renamed into place, the old master key file(s) overwritten with zeros, fsynced and
   unlinked, and the pending key renamed into place last.

**After a crash** at any point, the next start (or rotation) calls
:func:`finish_interrupted_rotation` with the database's id before opening any key: a pending key
whose id is the database's is rolled forward (the commit happened); otherwise, if the current
key's id is the database's, the pending files are destroyed (it did not); anything else (a
pending key that cannot be opened with this ``--seal`` while the current key is not the
database's, or a database that names no key) is a :class:`~confide.errors.UsageError` that
changes nothing. A key file is destroyed only once the other key is durable and named by the
committed database, so there is always exactly one key that opens the database's secrets.

**Online rotation** (:mod:`confide.cas.online_rotation`) uses the same pending files and the
same roll-forward, and one more ``meta`` row, ``master_key_next``: while it names the pending
key, rows may be sealed under either key, so the pending key is kept (never rolled back), a
start opens both, and the offline rotation refuses to run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, inspect, select, text
from sqlalchemy.exc import OperationalError

from confide.cas.db import SQLITE_BUSY_TIMEOUT_MS, Database, EventSink, meta, raw_execute
from confide.cas.db import policies as policies_table
from confide.cas.db import secrets as secrets_table
from confide.cas.gce_crl import STATE_NAME as GCE_CRL_STATE
from confide.cas.gce_crl import RollbackMemory
from confide.cas.keyfiles import (
    LOG_KEY_NAME,
    SEALED_LOG_KEY_NAME,
    TLS_KEY_NAME,
    reprotect_tls_key,
    reseal_log_key,
)
from confide.cas.master_key import (
    MASTER_KEY_SIZE,
    PLAIN_NAME,
    SEALED_NAME,
    SealedMasterKey,
    load_master_key,
    seal_master_key,
    unseal_master_key,
)
from confide.cas.policy_auth import EVENT_BOUND as POLICY_ROWS_BOUND
from confide.cas.policy_auth import bind_unbound as bind_policy_rows
from confide.cas.policy_auth import reauthenticate_rows as reauthenticate_policy_rows
from confide.cas.policy_rows import all_rows, reseal_rows, seal_clear_rows
from confide.cas.revocation_auth import reauthenticate_revocations
from confide.cas.sealing import SealingKeyProvider
from confide.cas.secret_heads import EVENT_BOUND as SECRET_HEADS_BOUND
from confide.cas.secret_heads import bind_unbound as bind_secret_heads
from confide.cas.secret_heads import reauthenticate_heads as reauthenticate_secret_heads
from confide.cas.secrets import Sealer, key_id
from confide.cas.state_auth import rebind_state_file
from confide.cas.successor_board import reauthenticate_board
from confide.cas.tcb_floor import rebind_floor_file
from confide.errors import ConfideError, ParseError, StorageError, UsageError
from confide.fsutil import TMP_PREFIX, fsync_dir, read_bounded, write_atomic

__all__ = [
    "EVENT_TYPE",
    "KEY_ID_META",
    "NEXT_KEY_META",
    "PENDING_SUFFIX",
    "RotationResult",
    "bind_master_key",
    "finish_interrupted_rotation",
    "master_key_id",
    "open_master_key",
    "rotate_master_key",
    "stored_master_key_id",
    "stored_next_key_id",
]

KEY_ID_META = "master_key_id"
NEXT_KEY_META = "master_key_next"  # an online rotation's new key, while rows are re-sealed
PENDING_SUFFIX = ".new"
EVENT_TYPE = "master-key-rotated"
_KEY_ID_SIZE = 16
_KEY_FILE_MAX = 4096
_PENDING = tuple(n + PENDING_SUFFIX for n in (PLAIN_NAME, SEALED_NAME, TLS_KEY_NAME, SEALED_LOG_KEY_NAME))

Step = Callable[[str], None]


def master_key_id(key: bytes) -> str:
    """The key id of a master key (module docstring): 32 hex digits, one-way."""
    return key_id(key).hex()


def describe(provider: SealingKeyProvider | None) -> str:
    """How a master key is held, as the ``cas-start`` entry says it."""
    return f"sealed: {provider.name} ({provider.binding})" if provider is not None else "plain file"


# --- the database's key id ---------------------------------------------------------------------


def _checked_id(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 2 * _KEY_ID_SIZE
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise StorageError(
            f"the database's {KEY_ID_META} is malformed: expected {2 * _KEY_ID_SIZE} hex digits"
        )
    return value


def _read_id(conn: Connection, name: str = KEY_ID_META) -> str | None:
    value = conn.execute(select(meta.c.value).where(meta.c.key == name)).scalar()
    return None if value is None else _checked_id(value)


def _write_id(conn: Connection, key_id: str | None, name: str = KEY_ID_META) -> None:
    if key_id is None:
        conn.execute(meta.delete().where(meta.c.key == name))
    elif _read_id(conn, name) is None:
        conn.execute(insert(meta).values(key=name, value=key_id))
    else:
        conn.execute(meta.update().where(meta.c.key == name).values(value=key_id))


def _sqlite_path(database: Database) -> Path | None:
    return Path(database.url.split("sqlite:///", 1)[1]) if database.is_sqlite else None


def stored_master_key_id(database: Database, name: str = KEY_ID_META) -> str | None:
    """The key id the database names; ``None`` for a database that names none (new, or
    created before rotation existed). Creates nothing (an absent SQLite file stays absent)."""
    path = _sqlite_path(database)
    if path is not None and not path.exists():
        return None
    with database.read() as conn:
        if not inspect(conn).has_table(meta.name):
            return None
        return _read_id(conn, name)


def stored_next_key_id(database: Database) -> str | None:
    """The new key of an online rotation in progress (:mod:`confide.cas.online_rotation`):
    rows may be sealed under it or under :func:`stored_master_key_id`'s."""
    return stored_master_key_id(database, NEXT_KEY_META)


def bind_master_key(conn: Connection, key: bytes) -> str:
    """In a write transaction at start: check that the database names ``key``'s id, or record it
    if the database names none, after checking that ``key`` opens one of its secrets."""
    key_id = master_key_id(key)
    stored = _read_id(conn)
    if stored == key_id:
        return key_id
    if stored is not None:
        raise UsageError(_mismatch(key_id, stored))
    row = conn.execute(
        select(secrets_table.c.policy, secrets_table.c.name, secrets_table.c.version, secrets_table.c.sealed)
        .order_by(secrets_table.c.policy, secrets_table.c.name, secrets_table.c.version)
        .limit(1)
    ).first()
    if row is not None:
        try:
            Sealer(key).unseal(row.sealed, policy=row.policy, name=row.name, version=row.version)
        except ConfideError:
            raise UsageError(
                f"the database's secrets do not open with this master key (id {key_id}): it is not "
                "the key they were sealed under (another data directory or --db?)"
            ) from None
    _write_id(conn, key_id)
    return key_id


def _mismatch(key_id: str, stored: str) -> str:
    return (
        f"the master key in the data directory has id {key_id}, but the database's secrets are "
        f"sealed under master key id {stored}: this is not the database's key (a rotation through "
        "another data directory, an old key file restored, or another --db)"
    )


# --- key files ---------------------------------------------------------------------------------


def _open_key_file(path: Path, provider: SealingKeyProvider | None) -> bytes:
    raw = read_bounded(path, _KEY_FILE_MAX, label=None, expected="a small key file", structure=str(path))
    if path.name.startswith(SEALED_NAME):
        if provider is None:
            raise UsageError(f"{str(path)!r} is sealed: give the --seal it was sealed with")
        return unseal_master_key(raw, provider)
    if len(raw) != MASTER_KEY_SIZE:
        raise ParseError(f"got {len(raw)} bytes, expected {MASTER_KEY_SIZE}", structure=str(path))
    return raw


def _try_open(path: Path, provider: SealingKeyProvider | None) -> bytes | None:
    try:
        return _open_key_file(path, provider) if path.exists() else None
    except ConfideError:
        return None


def _sealed_by(path: Path) -> str:
    try:
        sealed = SealedMasterKey.from_bytes(
            read_bounded(path, _KEY_FILE_MAX, label=None, expected="a small key file", structure=str(path))
        )
    except ConfideError:
        return "the --seal of the rotation"
    return f"--seal {sealed.provider} ({sealed.binding})"


def _overwrite(path: Path) -> None:
    """Best effort: zeros over the file's bytes, fsynced. Journals, snapshots, backups and flash
    translation layers may still hold the old bytes (docs/limitations.md)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            view = memoryview(bytes(size))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def _destroy(path: Path) -> None:
    _overwrite(path)
    path.unlink(missing_ok=True)


def _replace(pending: Path, target: Path) -> None:
    if target.exists():
        _overwrite(target)
    os.replace(pending, target)


def _key_files(data_dir: Path) -> list[Path]:
    return [data_dir / n for n in (PLAIN_NAME, SEALED_NAME) if (data_dir / n).exists()]


# --- resolving an interrupted rotation ---------------------------------------------------------


def finish_interrupted_rotation(
    data_dir: Path,
    expected: str | None,
    provider: SealingKeyProvider | None,
    current_provider: SealingKeyProvider | None = None,
    next_id: str | None = None,
) -> str | None:
    """Roll an interrupted rotation in ``data_dir`` forward or back, as the database's key id
    ``expected`` says (module docstring); ``provider`` opens a pending sealed key,
    ``current_provider`` (default: the same) the current one. Returns ``"rolled-forward"``,
    ``"rolled-back"``, ``"online"`` or ``None`` (nothing was pending).

    ``next_id``: the database names the new key of an online rotation in progress: rows may be
    sealed under it, so the pending key must open to it and is kept, with the pending TLS and
    log keys (``"online"``: the rotation resumes); anything else is a
    :class:`~confide.errors.UsageError` that changes nothing."""
    current_provider = provider if current_provider is None else current_provider
    for entry in data_dir.iterdir():  # temporaries of a pending file: never the live one
        if entry.name.startswith(TMP_PREFIX) and entry.name[len(TMP_PREFIX) :].rsplit("-", 1)[0] in _PENDING:
            _destroy(entry)
    pending = [data_dir / n for n in (PLAIN_NAME + PENDING_SUFFIX, SEALED_NAME + PENDING_SUFFIX)]
    pending = [p for p in pending if p.exists()]
    if next_id is not None:
        opened = _try_open(pending[0], provider) if len(pending) == 1 else None
        if opened is None or master_key_id(opened) != next_id:
            raise UsageError(
                f"an online master-key rotation to key id {next_id} is in progress on this database, "
                f"but {str(data_dir)!r} holds no pending key that opens to it with this --seal: some "
                "secrets are sealed under it. Start the CAS whose data directory ran the rotation "
                "(with its --seal). Nothing was changed"
            )
        fsync_dir(data_dir)
        return "online"
    if not pending:
        # The TLS and log keys are renamed before the master key and destroyed before it, so a
        # pending one without a pending master key is not the database's: the current files are.
        for name in (TLS_KEY_NAME, SEALED_LOG_KEY_NAME):
            _destroy(data_dir / (name + PENDING_SUFFIX))
        fsync_dir(data_dir)
        return None
    if len(pending) > 1:
        raise UsageError(f"{str(data_dir)!r} holds two pending master keys: a human must decide")
    (pend,) = pending
    if expected is None:
        raise UsageError(
            f"{str(pend)!r} is left from an interrupted master-key rotation, but the database names "
            "no master key: is --db the database the rotation ran on? Nothing was changed"
        )
    new_key = _try_open(pend, provider)
    if new_key is not None and master_key_id(new_key) == expected:
        _roll_forward(data_dir, pend)
        return "rolled-forward"
    if any(
        (key := _try_open(path, current_provider)) is not None and master_key_id(key) == expected
        for path in _key_files(data_dir)
    ):
        _roll_back(data_dir, pend)
        return "rolled-back"
    how = _sealed_by(pend) if pend.name.startswith(SEALED_NAME) else "--seal file"
    raise UsageError(
        f"a master-key rotation was interrupted in {str(data_dir)!r}, and neither {pend.name} nor the "
        f"current key opens to the database's key id {expected} with this --seal: start with {how} "
        "to finish it. Nothing was changed"
    )


def _roll_forward(data_dir: Path, pend: Path) -> None:
    target = data_dir / pend.name.removesuffix(PENDING_SUFFIX)
    if (data_dir / (TLS_KEY_NAME + PENDING_SUFFIX)).exists():
        _replace(data_dir / (TLS_KEY_NAME + PENDING_SUFFIX), data_dir / TLS_KEY_NAME)
    if (data_dir / (SEALED_LOG_KEY_NAME + PENDING_SUFFIX)).exists():
        _replace(data_dir / (SEALED_LOG_KEY_NAME + PENDING_SUFFIX), data_dir / SEALED_LOG_KEY_NAME)
        # The plain log key it was sealed from (--seal file to a provider): the same signer key.
        # After a crash just here, the next start's load_log_signer removes it (same key).
        _destroy(data_dir / LOG_KEY_NAME)
    fsync_dir(data_dir)
    for old in _key_files(data_dir):  # K0: the committed database no longer needs it
        _destroy(old)
    fsync_dir(data_dir)
    os.replace(pend, target)  # last: while it is pending, the rotation is not finished
    fsync_dir(data_dir)


def _roll_back(data_dir: Path, pend: Path) -> None:
    for name in (TLS_KEY_NAME, SEALED_LOG_KEY_NAME):
        _destroy(data_dir / (name + PENDING_SUFFIX))
    fsync_dir(data_dir)
    _destroy(pend)  # last, for the same reason
    fsync_dir(data_dir)


def open_master_key(data_dir: Path, provider: SealingKeyProvider | None, database: Database) -> bytes:
    """At start, before anything else reads a key: finish an interrupted rotation (and its
    step 5), then open (create, migrate: :func:`~confide.cas.master_key.load_master_key`) the
    master key, which must have the id the database names, if it names one."""
    expected = stored_master_key_id(database)
    settled = finish_interrupted_rotation(data_dir, expected, provider, next_id=stored_next_key_id(database))
    if settled == "rolled-forward":
        _scrub(database)
    if expected is not None and not _key_files(data_dir):
        raise UsageError(
            f"the database's secrets are sealed under master key id {expected}, but "
            f"{str(data_dir)!r} holds no master key: a fresh one would open none of them"
        )
    migrating = provider is not None and (data_dir / PLAIN_NAME).exists()
    key = load_master_key(data_dir, provider)
    if expected is not None and master_key_id(key) != expected:
        raise UsageError(_mismatch(master_key_id(key), expected))
    if migrating:
        # The key is sealed from now on, but it was plain: the host may have kept a copy.
        logging.getLogger("confide.cas").warning(
            json.dumps(
                {
                    "event": "master-key-was-plain",
                    "advice": "the sealed key was a plain file before: stop the CAS and run "
                    "confide cas rotate-master-key with the same --seal",
                }
            )
        )
    return key


# --- rotation ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What a rotation did (ids only: never key bytes)."""

    old_key_id: str
    new_key_id: str
    secrets: int
    tls_key: str
    log_key: str
    sealing_from: str
    sealing_to: str
    event_seq: int
    policy_versions: int = 0  # policy rows re-sealed (confide.cas.policy_rows)
    wal_warning: str | None = None  # step 5 could not scrub: SQLite's WAL, PostgreSQL (_scrub)


def _no_step(_name: str) -> None:
    return None


def _reseal(conn: Connection, old: Sealer, new: Sealer) -> int:
    t = secrets_table
    rows = conn.execute(select(t.c.policy, t.c.name, t.c.version, t.c.sealed)).all()
    updates = []
    for row in rows:
        where = {"policy": row.policy, "name": row.name, "version": row.version}
        value = old.unseal(row.sealed, **where)  # a row that does not open aborts the rotation
        updates.append({**{f"b_{k}": v for k, v in where.items()}, "b_sealed": new.seal(value, **where)})
    write_sealed(conn, updates)
    return len(updates)


def write_sealed(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Replace the ``sealed`` value of secret rows, one executemany: each update names its row
    (``b_policy``, ``b_name``, ``b_version``) and its new ``b_sealed``."""
    if not updates:
        return
    t = secrets_table
    conn.execute(
        t.update()
        .where(t.c.policy == bindparam("b_policy"))
        .where(t.c.name == bindparam("b_name"))
        .where(t.c.version == bindparam("b_version"))
        .values(sealed=bindparam("b_sealed")),
        updates,
    )


WAL_TRUNCATE_ATTEMPTS = 5  # step 5 on SQLite: checkpoints tried before the warning
WAL_TRUNCATE_WAIT_MS = 1000  # each waits this long for readers of an older snapshot
EVENT_WAL_NOT_TRUNCATED = "master-key-rotation-wal-not-truncated"
EVENT_OLD_SNAPSHOT = "master-key-rotation-old-snapshot"  # the same on PostgreSQL (_vacuum_full)
VACUUM_LOCK_TIMEOUT_MS = 10000  # PostgreSQL: each VACUUM FULL's wait for its lock (_vacuum_full)


def _scrub(database: Database) -> str | None:
    """Old row contents out of the database files (step 5; free blocks are another matter).
    Returns ``None``, or a warning (also logged as ``master-key-rotation-wal-not-truncated``) when
    SQLite's WAL could not be truncated (PostgreSQL: :func:`_vacuum_full`): ``PRAGMA
    wal_checkpoint(TRUNCATE)`` answers ``(busy, log, checkpointed)`` (SQLite "PRAGMA
    wal_checkpoint"), and while a reader holds a snapshot older
    than the re-sealing commit it is busy and the WAL keeps the frames written before it, rows
    sealed under the old key among them. It is tried :data:`WAL_TRUNCATE_ATTEMPTS` times, each
    waiting :data:`WAL_TRUNCATE_WAIT_MS` for such readers; a later checkpoint (the next rotation,
    or the last connection's close when the CAS stops) truncates it."""
    attempts = max(1, WAL_TRUNCATE_ATTEMPTS)
    if database.is_sqlite:
        raw = database.engine.raw_connection()
        row: tuple[int, int, int] | None = None
        try:
            driver = raw.driver_connection
            assert driver is not None
            driver.execute(f"PRAGMA busy_timeout={int(WAL_TRUNCATE_WAIT_MS)}")
            try:
                for _ in range(attempts):
                    busy, log_frames, checkpointed = driver.execute(
                        "PRAGMA wal_checkpoint(TRUNCATE)"
                    ).fetchone()
                    row = (int(busy), int(log_frames), int(checkpointed))
                    if row[0] == 0 and row[1] <= 0:  # log -1: not in WAL mode; 0: truncated
                        return None
            finally:
                driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            raw.close()
        busy, log_frames, checkpointed = row if row is not None else (1, -1, -1)
        warning = (
            f"the old WAL could not be truncated after {attempts} checkpoints (busy {busy}, "
            f"{log_frames} frames, {checkpointed} checkpointed): a reader holds an older snapshot, so "
            "the WAL file may still hold rows sealed under the old master key until the next "
            "checkpoint (restart the CAS, or close long-running readers)"
        )
        logging.getLogger("confide.cas").warning(
            json.dumps(
                {
                    "event": EVENT_WAL_NOT_TRUNCATED,
                    "busy": busy,
                    "log_frames": log_frames,
                    "checkpointed": checkpointed,
                    "attempts": attempts,
                }
            )
        )
        return warning
    return _vacuum_full(database, attempts)


# PostgreSQL "Monitoring Database Activity" (pg_stat_activity.backend_xid, backend_xmin) and
# "Transaction IDs and Snapshot Information Functions" (pg_current_snapshot, pg_snapshot_xmax):
# the sessions of this database whose transaction or snapshot began before ``:horizon``, the
# snapshot's xmax taken after the re-sealing commit, as 32-bit xids compared by age().
_OLDER_SESSIONS = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND ("
    "(backend_xmin IS NOT NULL AND age(backend_xmin) > age(CAST(:horizon AS xid))) OR "
    "(backend_xid IS NOT NULL AND age(backend_xid) > age(CAST(:horizon AS xid)))) ORDER BY pid"
)


def _vacuum_full(database: Database, attempts: int) -> str | None:
    """Step 5 on PostgreSQL: ``VACUUM FULL`` copies the row versions some session may still see
    ("recently dead") into the rewritten table, so a transaction begun before the re-sealing
    commit (an open reader, a backup, autovacuum's ANALYZE) would keep rows sealed under the old
    key in the files. The sessions of this database whose transaction or snapshot is older than
    the commit are waited for (:data:`WAL_TRUNCATE_ATTEMPTS` times
    :data:`WAL_TRUNCATE_WAIT_MS`): once none is left, no later snapshot can see the old rows
    either. Each ``VACUUM FULL`` waits at most :data:`VACUUM_LOCK_TIMEOUT_MS` for its exclusive
    lock (``lock_timeout``; a session in a transaction that read the table holds it off, and
    the CAS's own queries on the table queue behind the wait). If such sessions are still there,
    the tables are rewritten all the same (those that could be locked) and the warning returned
    (and logged as ``master-key-rotation-old-snapshot``); the next ``VACUUM FULL`` (the next
    rotation) drops the rows once those sessions have ended."""
    older: list[int] = []
    locked: list[str] = []
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        xmax = int(conn.execute(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")).scalar_one())
        horizon = str(xmax % (1 << 32))  # the xid8's epoch dropped: pg_stat_activity shows xids
        for attempt in range(attempts):
            older = [int(pid) for (pid,) in conn.execute(_OLDER_SESSIONS, {"horizon": horizon})]
            if not older:
                break
            if attempt + 1 < attempts:
                time.sleep(max(0, WAL_TRUNCATE_WAIT_MS) / 1000)
        conn.execute(text(f"SET lock_timeout = {max(1, int(VACUUM_LOCK_TIMEOUT_MS))}"))
        for table in (secrets_table.name, policies_table.name):
            try:
                conn.execute(text(f"VACUUM FULL {table}"))
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                    raise
                locked.append(table)
        conn.execute(text("RESET lock_timeout"))
    if not older and not locked:
        return None
    logging.getLogger("confide.cas").warning(
        json.dumps(
            {"event": EVENT_OLD_SNAPSHOT, "pids": older, "attempts": attempts, "not_rewritten": locked}
        )
    )
    parts = []
    if older:
        parts.append(
            f"{len(older)} session(s) of this database (pid {', '.join(map(str, older))}) still had "
            f"a transaction from before the re-sealing commit after {attempts} checks, so VACUUM "
            "FULL kept row versions sealed under the old master key that they may still read"
        )
    if locked:
        parts.append(
            f"VACUUM FULL of {', '.join(locked)} could not take its lock within "
            f"{int(VACUUM_LOCK_TIMEOUT_MS)} ms (a session in a transaction read the table), so the "
            "table was not rewritten and its files may still hold rows sealed under the old master key"
        )
    return "; ".join(parts) + (
        "; the next VACUUM FULL (the next rotation) drops them once those sessions have ended"
    )


def rotate_master_key(
    data_dir: Path,
    database: Database,
    *,
    seal: SealingKeyProvider | None,
    to_seal: SealingKeyProvider | None,
    events: EventSink,
    step: Step = _no_step,
) -> RotationResult:
    """Rotate the master key of the stopped CAS in ``data_dir`` (hold
    :func:`~confide.cas.runlock.run_lock` exclusively around it): ``seal`` opens the current key,
    ``to_seal`` seals the new one (``None``: a plain file, only when the current one is plain
    too). ``step`` is called after each step (module docstring): the tests crash there."""
    if seal is not None and to_seal is None:
        raise UsageError("--to-seal file: the new master key would be written in plain; refused")
    if not _key_files(data_dir):
        raise UsageError(f"{str(data_dir)!r} holds no master key: nothing to rotate")
    path = _sqlite_path(database)
    if path is not None and not path.exists():
        raise UsageError(f"no database at {str(path)!r}: nothing to rotate (give --db if it is elsewhere)")
    database.migrate()
    if (next_id := stored_next_key_id(database)) is not None:
        raise UsageError(
            f"an online rotation to master key id {next_id} is in progress: start the CAS (with "
            "the data directory that ran it) and it completes the rotation; nothing was changed"
        )
    # 1. The current key, named by the database before anything pending is written.
    finish_interrupted_rotation(data_dir, stored_master_key_id(database), seal)
    old_key = load_master_key(data_dir, seal)  # a key file exists: never a fresh key
    old = Sealer(old_key)
    with database.write() as conn:
        old_id = bind_master_key(conn, old_key)
    step("checked")
    new_key = os.urandom(MASTER_KEY_SIZE)
    new, new_id = Sealer(new_key), master_key_id(new_key)
    pend = data_dir / ((SEALED_NAME if to_seal is not None else PLAIN_NAME) + PENDING_SUFFIX)
    tls_key = log_key = "plain"
    try:
        # 2. The new key, durable under its pending name, read back with a fresh sealing key.
        write_atomic(pend, seal_master_key(new_key, to_seal) if to_seal is not None else new_key, mode=0o600)
        if _open_key_file(pend, to_seal) != new_key:
            raise StorageError(f"{str(pend)!r}: re-read after writing does not hold the new key")
        step("key-written")
        # 3. The TLS key and the log key under the new key (the same key pairs).
        if to_seal is not None:
            protect = old if seal is not None else None
            if (data_dir / TLS_KEY_NAME).exists():
                pem = reprotect_tls_key(data_dir / TLS_KEY_NAME, protect, new)
                write_atomic(data_dir / (TLS_KEY_NAME + PENDING_SUFFIX), pem, mode=0o600)
                tls_key = "re-protected"
            sealed_log = reseal_log_key(data_dir, protect, new)
            if sealed_log is not None:
                write_atomic(data_dir / (SEALED_LOG_KEY_NAME + PENDING_SUFFIX), sealed_log, mode=0o600)
                log_key = "re-sealed"
        # The DCAP TCB evaluation floor file, MAC'd under both keys: it verifies whether or not
        # the commit below happens (confide.cas.tcb_floor).
        tcb_floor = rebind_floor_file(data_dir, old_key, new_key)
        # The rollback memory of Google's CRLs (--gce-crl fetch), likewise (confide.cas.gce_crl).
        gce_crl_newest = rebind_state_file(RollbackMemory, data_dir / GCE_CRL_STATE, old_key, new_key)
        step("files-written")
        # 4. Every secret re-sealed, the new id and the ledger entry: one transaction.
        with database.write() as conn:
            if database.is_sqlite:
                raw_execute(conn, "PRAGMA secure_delete = ON")  # freed cell content is zeroed
            stored = _read_id(conn)
            if stored != old_id:
                raise UsageError(f"the database's master key id changed during the rotation (now {stored})")
            count = _reseal(conn, old, new)
            # The policy documents (confide.cas.policy_rows): rows of a database migrated but
            # not started since are sealed first, as a start would; then all re-sealed.
            seal_clear_rows(conn, old)
            policy_rows = reseal_rows(conn, old, new, all_rows(conn))
            # The policy heads, version states and approvals (confide.cas.policy_auth): a database migrated
            # but not started since is bound first under K0, as a start would; then all are
            # checked under K0 and MAC'd under K1.
            heads_bound = bind_policy_rows(conn, old)
            if heads_bound is not None:
                events.record(conn, POLICY_ROWS_BOUND, None, heads_bound)
            heads = reauthenticate_policy_rows(conn, old, new, new_id)
            # Each secret's current version (confide.cas.secret_heads): bound first under K0 for a
            # database migrated but not started since, as a start would; then checked under K0
            # and MAC'd under K1.
            secrets_bound = bind_secret_heads(conn, old, time.time())
            if secrets_bound is not None:
                events.record(conn, SECRET_HEADS_BOUND, None, secrets_bound)
            secret_heads = reauthenticate_secret_heads(conn, old, new, new_id)
            # The successor board, checked under K0 and authenticated under K1 (confide.cas.successor).
            board = reauthenticate_board(conn, old, new, new_id)
            # The revocation records, checked under K0 and MAC'd under K1 (confide.cas.revocation_auth).
            revocations = reauthenticate_revocations(conn, old, new, new_id)
            _write_id(conn, new_id)
            payload = {
                "old_key_id": old_id, "new_key_id": new_id, "secrets": count,
                "policy_versions": policy_rows, "policy_rows_authenticated": heads,
                "secret_heads_authenticated": secret_heads,
                **({"successor_board": "re-authenticated"} if board else {}),
                **({"revocations": revocations} if revocations else {}),
                **({"tcb_floor": tcb_floor} if tcb_floor else {}),
                **({"gce_crl_newest": gce_crl_newest} if gce_crl_newest else {}),
                "sealing": {"from": describe(seal), "to": describe(to_seal)},
                "tls_key": tls_key, "log_key": log_key,
            }  # fmt: skip
            seq = events.record(conn, EVENT_TYPE, None, payload)
            step("resealed")
        step("committed")
    except Exception:
        # Not a crash: settle now as the next start would, by what the database says.
        with contextlib.suppress(Exception):
            finish_interrupted_rotation(data_dir, stored_master_key_id(database), to_seal, seal)
        raise
    wal_warning = _scrub(database)
    step("scrubbed")
    # 6. Switch the files over (what a start after a crash here would do).
    finish_interrupted_rotation(data_dir, new_id, to_seal, seal)
    step("done")
    return RotationResult(
        old_id,
        new_id,
        count,
        tls_key,
        log_key,
        describe(seal),
        describe(to_seal),
        seq,
        policy_rows,
        wal_warning,
    )
