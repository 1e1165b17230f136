"""The two databases the ledger runs on, behind a handful of functions.

* SQLite (stdlib ``sqlite3``): connections from :func:`connect` are in autocommit mode;
  a write transaction is ``BEGIN IMMEDIATE`` (the database write lock) ... ``COMMIT``.
* PostgreSQL (``psycopg`` 3): connections from :func:`connect_postgres` are in autocommit
  mode; a write transaction is ``conn.transaction()``, and appenders serialise on the head
  row read with ``SELECT ... FOR UPDATE``. Under READ COMMITTED (the default) a waiting
  appender then sees the previous appender's committed tiles; under REPEATABLE READ or
  SERIALIZABLE it gets a serialisation error and must retry its transaction.

SQL in the ledger is written once with ``?`` parameters and portable statements
(``INSERT ... ON CONFLICT``); :func:`sql` adapts it for psycopg.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import psycopg

from confide.errors import StorageError

__all__ = [
    "Conn",
    "connect",
    "connect_postgres",
    "db_errors",
    "execute",
    "executemany",
    "in_transaction",
    "is_postgres",
    "lock_clause",
    "schema",
    "write_transaction",
]

Conn: TypeAlias = "sqlite3.Connection | psycopg.Connection[Any]"


def db_errors() -> tuple[type[Exception], ...]:
    """The drivers' error classes (``except db_errors():``): psycopg's only once it is loaded,
    which it is before any PostgreSQL connection exists (:func:`connect_postgres`), so a command
    that reads an SQLite ledger or none does not import it."""
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if pg is None else (sqlite3.Error, pg.Error)


def _pg_connection(conn: object) -> bool:
    pg = sys.modules.get("psycopg")  # not loaded: no connection can be one of its
    return pg is not None and isinstance(conn, pg.Connection)


BUSY_TIMEOUT_MS = 30_000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger_head (id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL)",
    "INSERT INTO ledger_head (id, size) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS ledger_entries (idx BIGINT PRIMARY KEY, leaf_key BIGINT NOT NULL, "
    "data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_entries_leaf_key ON ledger_entries (leaf_key)",
    "CREATE TABLE IF NOT EXISTS ledger_tiles (level INTEGER NOT NULL, idx BIGINT NOT NULL, "
    "hashes BLOB NOT NULL, interior BLOB NOT NULL, PRIMARY KEY (level, idx))",
    "CREATE TABLE IF NOT EXISTS ledger_checkpoints (size BIGINT PRIMARY KEY, note BLOB NOT NULL)",
)


def is_postgres(conn: Conn) -> bool:
    return _pg_connection(conn)


def schema(conn: Conn) -> list[str]:
    if is_postgres(conn):
        return [s.replace(" BLOB ", " BYTEA ") for s in _SCHEMA]
    # SQLite: "INTEGER PRIMARY KEY" makes idx the rowid; BIGINT would not.
    return [s.replace("BIGINT PRIMARY KEY", "INTEGER PRIMARY KEY") for s in _SCHEMA]


def sql(conn: Conn, statement: str) -> str:
    return statement.replace("?", "%s") if is_postgres(conn) else statement


def lock_clause(conn: Conn) -> str:
    return " FOR UPDATE" if is_postgres(conn) else ""


def execute(conn: Conn, statement: str, params: Sequence[object] = ()) -> Any:
    """Run one statement; returns the cursor (``fetchone``/``fetchall``/``rowcount``)."""
    return conn.execute(sql(conn, statement), params)


def executemany(conn: Conn, statement: str, rows: Sequence[Sequence[object]]) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.executemany(statement, rows)
    else:
        with conn.cursor() as cur:
            cur.executemany(sql(conn, statement), rows)


def in_transaction(conn: Conn) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    from psycopg.pq import TransactionStatus  # noqa: PLC0415 - loaded with its connection

    return conn.info.transaction_status == TransactionStatus.INTRANS


def connect(
    path: str | Path, *, durable: bool = True, timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """An SQLite connection in autocommit mode (explicit transactions), WAL, busy timeout.

    ``durable=True`` sets ``synchronous=FULL``: a commit returns only after the WAL is
    fsynced, so an acknowledged append survives a crash of the process or the machine.
    """
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, timeout=timeout_ms / 1000, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open ledger database {str(path)!r}: {exc}") from None
    return conn


def connect_postgres(conninfo: str) -> psycopg.Connection[Any]:
    """A PostgreSQL connection in autocommit mode (transactions via :func:`write_transaction`)."""
    import psycopg  # noqa: PLC0415 - only for a PostgreSQL database

    try:
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {exc}") from None


@contextlib.contextmanager
def write_transaction(conn: Conn) -> Iterator[Conn]:
    """A write transaction: SQLite ``BEGIN IMMEDIATE`` (write lock first), PostgreSQL
    ``conn.transaction()``; committed on success, rolled back on any exception."""
    if not isinstance(conn, sqlite3.Connection):
        import psycopg  # noqa: PLC0415 - loaded already: the connection is one of its

        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise StorageError(f"transaction failed: {exc}") from None
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot begin a write transaction: {exc}") from None
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise StorageError(f"commit failed: {exc}") from None
