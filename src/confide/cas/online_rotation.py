"""Online master-key rotation: a running CAS replaces its master key while it keeps serving
(docs/cas.md "Online rotation"; the offline path is :mod:`confide.cas.rotation`).

**Trigger.** ``confide cas rotate-master-key --online --data-dir DIR`` asks the running CAS over
its admin channel (:mod:`confide.cas.admin`), a unix socket in the data directory that only the
CAS's uid can use. The network API has no such operation.

**Steps**, with the name the ``step`` hook is called with after each (the tests crash there):

1. ``locked``: the CAS raises its run lock to exclusive (:meth:`~confide.cas.runlock.RunLock.
   exclusive`; the data directory's is exclusive from the CAS's start): refused if another
   replica uses the PostgreSQL database; while held, no CAS starts and no offline rotation
   runs. The database must name this CAS's key and no other rotation.
2. ``key-written``: a fresh K1, sealed with the CAS's own ``--seal`` provider, durable as
   ``master.key.sealed.new`` (``master.key.new`` with ``--seal file``), read back and opened
   with a fresh sealing key. ``files-written``: with sealing, the TLS key and the log key under
   K1 as ``cas-key.pem.new`` and ``log.key.sealed.new`` (the same key pairs).
3. ``begun``: one transaction records K1's id as ``meta.master_key_next``. From then on rows may
   be sealed under K1, so every start keeps and opens both keys
   (:func:`~confide.cas.rotation.finish_interrupted_rotation`, ``next_id``). The CAS's sealer
   holds both keys and seals new rows under K1 once that transaction has committed (not
   before: a commit that fails releases the write lock, and a writer waiting for it would
   seal under a key the failed rotation then discards); a row sealed under K0 just after the
   commit is re-sealed by step 4 or 5 like every other.
4. ``batch``: the rows are re-sealed under K1 in primary-key order, ``batch_size`` rows per
   write transaction, each row with a fresh data key; a row already under K1 (its
   :func:`~confide.cas.secrets.row_key_id`) is left alone, so a resumed rotation redoes nothing.
   Attestations run between the batches and read rows under either key. Then the policy
   versions (:mod:`confide.cas.policy_rows`) the same way, in batches of their own.
5. ``resealed`` (before the commit) and ``committed``: the switch-over transaction checks that
   the database still names K0 and K1, re-seals any row (secret or policy version) still not
   under K1, sets ``master_key_id`` to K1, deletes ``master_key_next`` and records
   ``master-key-rotated`` (ledger ``key.rotated``: both ids, counts, ``online``; never key
   bytes).
6. ``scrubbed``: as offline (SQLite WAL checkpoint; PostgreSQL ``VACUUM FULL`` of ``secrets``
   and ``policies``).
7. ``done``: the files switch over as after an offline rotation (the pending TLS and log keys
   renamed into place, K0's file overwritten with zeros and unlinked, K1 renamed into place
   last), and the sealer forgets K0.

**After a crash** the next start settles the files by what the database says: before step 3
committed, the pending files are destroyed (no row is under K1); from step 3 until step 5
committed, both keys are opened and the rotation resumes in the background at step 4; after
it, the files roll forward. A key file is destroyed only when the committed database no longer
has a row under it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, tuple_

from confide.cas.db import Database, EventSink, raw_execute
from confide.cas.db import secrets as secrets_table
from confide.cas.gce_crl import RollbackMemory
from confide.cas.keyfiles import SEALED_LOG_KEY_NAME, TLS_KEY_NAME, reprotect_tls_key, reseal_log_key
from confide.cas.master_key import MASTER_KEY_SIZE, PLAIN_NAME, SEALED_NAME, seal_master_key
from confide.cas.policy_auth import reauthenticate_rows as reauthenticate_policy_rows
from confide.cas.policy_rows import all_rows, reseal_rows
from confide.cas.revocation_auth import reauthenticate_revocations
from confide.cas.rotation import (
    EVENT_TYPE,
    KEY_ID_META,
    NEXT_KEY_META,
    PENDING_SUFFIX,
    _open_key_file,
    _read_id,
    _scrub,
    _write_id,
    describe,
    finish_interrupted_rotation,
    master_key_id,
    stored_next_key_id,
    write_sealed,
)
from confide.cas.runlock import RunLock
from confide.cas.sealing import SealingKeyProvider
from confide.cas.secret_heads import reauthenticate_heads as reauthenticate_secret_heads
from confide.cas.secrets import Sealer, row_key_id
from confide.cas.successor_board import reauthenticate_board
from confide.cas.tcb_floor import TcbEvaluationFloor
from confide.errors import ConfideError, StorageError, UsageError
from confide.fsutil import write_atomic

__all__ = ["DEFAULT_BATCH", "MAX_BATCH", "MAX_PAUSE", "OnlineRotation", "RotationStatus", "add_pending_key"]

DEFAULT_BATCH = 100
MAX_BATCH = 10_000
MAX_PAUSE = 10.0
_LOG = logging.getLogger("confide.cas")

Step = Callable[[str], None]


def _no_step(_name: str) -> None:
    return None


def _pending_key_path(data_dir: Path, provider: SealingKeyProvider | None) -> Path:
    return data_dir / ((SEALED_NAME if provider is not None else PLAIN_NAME) + PENDING_SUFFIX)


def add_pending_key(
    sealer: Sealer, data_dir: Path, provider: SealingKeyProvider | None, database: Database
) -> str | None:
    """At start, after :func:`~confide.cas.rotation.open_master_key`: if an online rotation is
    in progress (the database names its new key), the sealer also opens rows under the new key
    and seals new rows under it. Returns the new key's id, or ``None``."""
    next_id = stored_next_key_id(database)
    if next_id is None:
        return None
    key = _open_key_file(_pending_key_path(data_dir, provider), provider)  # checked by open_master_key
    if master_key_id(key) != next_id:
        raise UsageError(f"the pending master key does not have the database's new key id {next_id}")
    sealer.add_key(key)
    sealer.seal_with(next_id)
    return next_id


@dataclass
class RotationStatus:
    """What an online rotation is doing (ids and counts only: never key bytes)."""

    state: str = "idle"  # idle | running | done | failed
    old_key_id: str | None = None
    new_key_id: str | None = None
    resealed: int = 0
    batches: int = 0
    stragglers: int = 0
    policy_versions: int = 0  # policy rows re-sealed (confide.cas.policy_rows)
    event_seq: int | None = None
    error: str | None = None
    wal_warning: str | None = None  # step 5 could not scrub: SQLite's WAL, PostgreSQL (rotation._scrub)
    started_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class OnlineRotation:
    """The online rotation of one running CAS (module docstring). At most one runs at a time:
    :meth:`start` refuses a second."""

    def __init__(
        self,
        data_dir: Path,
        database: Database,
        sealer: Sealer,
        provider: SealingKeyProvider | None,
        events: EventSink,
        lock: RunLock | None,
        *,
        batch_size: int = DEFAULT_BATCH,
        pause: float = 0.005,
        step: Step = _no_step,
        floor: TcbEvaluationFloor | None = None,
        rollback_memory: RollbackMemory | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError("batch size must be at least 1")
        self.data_dir, self.database, self.sealer, self.provider = data_dir, database, sealer, provider
        self.events, self.lock, self.batch_size, self.pause, self.step = events, lock, batch_size, pause, step
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.status = RotationStatus()
        # The DCAP TCB evaluation floor and the rollback memory of Google's CRLs, MAC'd under
        # both keys (_prepare).
        self.floor, self.rollback_memory = floor, rollback_memory

    def in_progress(self) -> bool:
        """Whether the database names the new key of a rotation not yet switched over."""
        return stored_next_key_id(self.database) is not None

    def start(self, *, batch_size: int | None = None, pause: float | None = None) -> RotationStatus:
        """Start (or resume) the rotation in a background thread, optionally with another
        ``batch_size`` (rows per transaction) and ``pause`` (seconds between batches); returns
        its status as it starts (a copy: the thread goes on changing :attr:`status`, and may
        even finish before the caller reads it). A :class:`~confide.errors.UsageError` if one
        is already running here."""
        if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
            raise UsageError(f"batch size: got {batch_size}, expected 1..{MAX_BATCH}")
        if pause is not None and not 0 <= pause <= MAX_PAUSE:
            raise UsageError(f"pause: got {pause} s, expected 0..{MAX_PAUSE}")
        with self._mutex:
            if self._thread is not None and self._thread.is_alive():
                raise UsageError("a master-key rotation is already running in this CAS")
            if batch_size is not None:
                self.batch_size = batch_size
            if pause is not None:
                self.pause = pause
            self.status = RotationStatus(state="running", started_at=time.time())
            started = replace(self.status)
            self._thread = threading.Thread(target=self._background, name="cas-key-rotation", daemon=True)
            self._thread.start()
            return started

    def wait(self, timeout: float | None = None) -> RotationStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status

    def _background(self) -> None:
        try:
            self.run()
        except Exception as exc:  # reported through status and the log; the CAS keeps serving
            self.status.state, self.status.error = "failed", _describe(exc)
            self.status.finished_at = time.time()
            _LOG.error(json.dumps({"event": "master-key-rotation-failed", "error": self.status.error}))

    def run(self) -> RotationStatus:
        """The rotation, in the calling thread (module docstring)."""
        status = self.status
        status.state = "running"
        with self.lock.exclusive() if self.lock is not None else contextlib.nullcontext():
            self.step("locked")
            self.database.migrate()
            with self.database.read() as conn:
                old_id, next_id = _read_id(conn), _read_id(conn, NEXT_KEY_META)
            mine = self.sealer.key_ids
            if old_id is None or old_id not in mine:
                raise UsageError(f"the database names master key id {old_id}, which this CAS does not hold")
            status.old_key_id = old_id
            if next_id is None:
                next_id = self._prepare(old_id)
            elif next_id not in mine:
                raise UsageError(
                    f"the database names new master key id {next_id}, which this CAS does not hold"
                )
            else:
                # Resumed: the database names it, so new rows are sealed under it (again, or for
                # the first time after a step 3 whose commit reported a failure but happened).
                self.sealer.seal_with(next_id)
            status.new_key_id = next_id
            _LOG.info(
                json.dumps({"event": "master-key-rotation", "old_key_id": old_id, "new_key_id": next_id})
            )
            self._reseal_batches(next_id)
            self._switch(old_id, next_id)
            status.wal_warning = _scrub(self.database)
            self.step("scrubbed")
            finish_interrupted_rotation(self.data_dir, next_id, self.provider)
            self.sealer.drop_key(old_id)
            self.step("done")
        status.state, status.finished_at = "done", time.time()
        _LOG.info(json.dumps({"event": "master-key-rotated", **status.to_json()}))
        return status

    # --- steps 2 and 3 ---------------------------------------------------------------------------

    def _prepare(self, old_id: str) -> str:
        """A new key, durable as a pending file, then named by the database (steps 2, 3)."""
        # Leftovers of an earlier attempt that never reached step 3: no row is under them.
        finish_interrupted_rotation(self.data_dir, old_id, self.provider)
        new_key = os.urandom(MASTER_KEY_SIZE)
        new_id = master_key_id(new_key)
        pend = _pending_key_path(self.data_dir, self.provider)
        provider = self.provider
        begun = False
        try:
            write_atomic(
                pend, seal_master_key(new_key, provider) if provider is not None else new_key, mode=0o600
            )
            if _open_key_file(pend, provider) != new_key:
                raise StorageError(f"{str(pend)!r}: re-read after writing does not hold the new key")
            self.step("key-written")
            if provider is not None:
                new = Sealer(new_key)
                tls = self.data_dir / TLS_KEY_NAME
                if tls.exists():
                    pem = reprotect_tls_key(tls, self.sealer.only(old_id), new)
                    write_atomic(self.data_dir / (TLS_KEY_NAME + PENDING_SUFFIX), pem, mode=0o600)
                sealed_log = reseal_log_key(self.data_dir, self.sealer.only(old_id), new)
                if sealed_log is not None:
                    write_atomic(
                        self.data_dir / (SEALED_LOG_KEY_NAME + PENDING_SUFFIX), sealed_log, mode=0o600
                    )
            self.step("files-written")
            self.sealer.add_key(new_key)
            for state in (self.floor, self.rollback_memory):
                if state is not None:
                    # MAC'd under both keys before the database names the new one: the file
                    # verifies whichever key a crash leaves (confide.cas.state_auth).
                    state.rewrite()
            with self.database.write() as conn:
                if _read_id(conn) != old_id or _read_id(conn, NEXT_KEY_META) is not None:
                    raise UsageError("the database's master key changed meanwhile: rotation abandoned")
                _write_id(conn, new_id, NEXT_KEY_META)
                begun = True  # from here the commit may have happened, even if it raises
            # Only once committed: a commit that fails releases the write lock before the handler
            # below runs, and a writer waiting for it would seal its row under a key that is then
            # discarded. A row sealed under the old key between the commit and this line is
            # re-sealed by the batches or the switch-over, like every other.
            self.sealer.seal_with(new_id)
            self.step("begun")
        except Exception:
            if begun and self._maybe_committed(new_id):
                raise  # rows may be under the new key: keep it (the next start resumes)
            with contextlib.suppress(ValueError):
                self.sealer.seal_with(old_id)
                self.sealer.drop_key(new_id)
            # Not a crash: settle now as the next start would, by what the database says.
            with contextlib.suppress(Exception):
                finish_interrupted_rotation(self.data_dir, old_id, self.provider)
            raise
        return new_id

    def _maybe_committed(self, new_id: str) -> bool:
        try:
            return stored_next_key_id(self.database) == new_id
        except Exception:  # unknown: keep everything, the next start settles it by the database
            return True

    # --- step 4 ----------------------------------------------------------------------------------

    def _reseal_batches(self, new_id: str) -> None:
        t = secrets_table
        last: tuple[str, str, int] | None = None
        while True:
            with self.database.write() as conn:
                query = select(t.c.policy, t.c.name, t.c.version, t.c.sealed)
                if last is not None:
                    query = query.where(tuple_(t.c.policy, t.c.name, t.c.version) > tuple_(*last))
                rows = conn.execute(
                    query.order_by(t.c.policy, t.c.name, t.c.version).limit(self.batch_size)
                ).all()
                if not rows:
                    break
                count = self._reseal_rows(conn, rows, new_id)
                last = (rows[-1].policy, rows[-1].name, rows[-1].version)
            self.status.resealed += count
            self.status.batches += 1
            self.step("batch")
            if self.pause > 0:
                time.sleep(self.pause)  # the attestations' turn at the write lock
        self._reseal_policy_batches(new_id)

    def _reseal_policy_batches(self, new_id: str) -> None:
        """The policy documents (confide.cas.policy_rows), as the secrets: in primary-key order,
        ``batch_size`` rows per transaction, a row already under the new key left alone."""
        after: tuple[str, str] | None = None
        while True:
            with self.database.write() as conn:
                rows = all_rows(conn, after=after, limit=self.batch_size)
                if not rows:
                    return
                count = self._reseal_policy_rows(conn, rows, new_id)
                after = (rows[-1].name, rows[-1].hash)
            self.status.policy_versions += count
            self.status.batches += 1
            self.step("batch")
            if self.pause > 0:
                time.sleep(self.pause)

    def _reseal_policy_rows(self, conn: Connection, rows: Any, new_id: str) -> int:
        if self.database.is_sqlite:
            raw_execute(conn, "PRAGMA secure_delete = ON")  # freed cell content is zeroed
        if self.sealer.sealing_key_id != new_id:
            raise StorageError("the sealer no longer seals under the new key: rotation abandoned")
        # a row that opens under neither key aborts
        return reseal_rows(conn, self.sealer, self.sealer, rows, skip=new_id)

    def _reseal_rows(self, conn: Connection, rows: Any, new_id: str) -> int:
        if self.database.is_sqlite:
            raw_execute(conn, "PRAGMA secure_delete = ON")  # freed cell content is zeroed
        updates = []
        for row in rows:
            if row_key_id(row.sealed) == new_id:
                continue
            where = {"policy": row.policy, "name": row.name, "version": row.version}
            value = self.sealer.unseal(row.sealed, **where)  # a row that opens under neither key aborts
            sealed = self.sealer.seal(value, **where)
            if row_key_id(sealed) != new_id:
                raise StorageError("the sealer no longer seals under the new key: rotation abandoned")
            updates.append({**{f"b_{k}": v for k, v in where.items()}, "b_sealed": sealed})
        write_sealed(conn, updates)
        return len(updates)

    # --- step 5 ----------------------------------------------------------------------------------

    def _switch(self, old_id: str, new_id: str) -> None:
        status = self.status
        with self.database.write() as conn:
            if _read_id(conn) != old_id or _read_id(conn, NEXT_KEY_META) != new_id:
                raise UsageError("the database's master key changed meanwhile: rotation abandoned")
            t = secrets_table
            rows = conn.execute(select(t.c.policy, t.c.name, t.c.version, t.c.sealed)).all()
            status.stragglers = self._reseal_rows(
                conn, [r for r in rows if row_key_id(r.sealed) != new_id], new_id
            )
            status.resealed += status.stragglers
            # The policy documents still not under the new key, in this transaction too.
            status.policy_versions += self._reseal_policy_rows(conn, all_rows(conn), new_id)
            # The successor board, checked under the old key and authenticated under the new one.
            board = reauthenticate_board(conn, self.sealer.only(old_id), self.sealer.only(new_id), new_id)
            # The revocation records, checked under the old key and MAC'd under the new one.
            revocations = reauthenticate_revocations(
                conn, self.sealer.only(old_id), self.sealer.only(new_id), new_id
            )
            # The policy heads, version states and approvals, checked under the old key and MAC'd
            # under the new one (confide.cas.policy_auth).
            old, new = self.sealer.only(old_id), self.sealer.only(new_id)
            heads = reauthenticate_policy_rows(conn, old, new, new_id)
            # Each secret's current version, likewise (confide.cas.secret_heads).
            secret_heads = reauthenticate_secret_heads(conn, old, new, new_id)
            _write_id(conn, new_id, KEY_ID_META)
            _write_id(conn, None, NEXT_KEY_META)
            tls = (self.data_dir / (TLS_KEY_NAME + PENDING_SUFFIX)).exists()
            log = (self.data_dir / (SEALED_LOG_KEY_NAME + PENDING_SUFFIX)).exists()
            payload = {
                "old_key_id": old_id, "new_key_id": new_id, "secrets": status.resealed,
                "policy_versions": status.policy_versions, "policy_rows_authenticated": heads,
                "secret_heads_authenticated": secret_heads,
                "sealing": {"from": describe(self.provider), "to": describe(self.provider)},
                "tls_key": "re-protected" if tls else "plain", "log_key": "re-sealed" if log else "plain",
                "online": True, "batches": status.batches,
                **({"successor_board": "re-authenticated"} if board else {}),
                **({"revocations": revocations} if revocations else {}),
            }  # fmt: skip
            status.event_seq = self.events.record(conn, EVENT_TYPE, None, payload)
            self.step("resealed")
        self.step("committed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConfideError):
        return str(exc)
    return type(exc).__name__
