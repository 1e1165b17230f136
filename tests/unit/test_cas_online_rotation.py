"""Online master-key rotation (confide.cas.online_rotation, confide.cas.admin): a crash at every
step, then a start, leaves a CAS that reads every secret and resumes or completes the rotation;
rows name the key they are sealed under; the admin channel refuses other uids, bad requests and
a second rotation; a run lock shared with another process refuses online rotation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cas_rotation import (
    PLAIN_NAME,
    SEALED_NAME,
    Setup,
    gramine,
    make_setup,
    no_pending,
    opened,
    secret_rows,
)

from confide.cas import admin, online_rotation
from confide.cas.core import Cas
from confide.cas.db import Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import unseal_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import (
    EVENT_TYPE,
    PENDING_SUFFIX,
    finish_interrupted_rotation,
    master_key_id,
    rotate_master_key,
    stored_master_key_id,
    stored_next_key_id,
)
from confide.cas.runlock import run_lock
from confide.cas.secrets import Sealer, SecretValue, row_key_id
from confide.cas.server import prepare
from confide.errors import SignatureError, StorageError, UsageError

STEPS = (
    "locked",
    "key-written",
    "files-written",
    "begun",
    "batch",
    "resealed",
    "committed",
    "scrubbed",
    "done",
)
BEGUN = {"begun", "batch", "resealed"}  # the database names the new key, not yet switched over
COMMITTED = {"committed", "scrubbed", "done"}


class Crash(BaseException):
    """A simulated crash: not an Exception, so no handler of the code under test runs."""


def crash_at(name: str, nth: int = 1) -> object:
    seen = {"n": 0}

    def step(current: str) -> None:
        if current == name:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(name)

    return step


def start(s: Setup) -> Cas:
    cas, *_ = prepare(s.data, host="127.0.0.1", dev=True, db_url=None, collateral=None, seal=s.seal)
    return cas


def rotation(s: Setup, cas: Cas, **kw: object) -> OnlineRotation:
    return OnlineRotation(s.data, cas.db, cas.sealer, s.seal, cas.events, None, **kw)  # type: ignore[arg-type]


def key_file(s: Setup) -> Path:
    files = [s.data / n for n in (PLAIN_NAME, SEALED_NAME) if (s.data / n).exists()]
    assert len(files) == 1, files
    return files[0]


def current_key(s: Setup) -> bytes:
    path = key_file(s)
    raw = path.read_bytes()
    return raw if path.name == PLAIN_NAME else unseal_master_key(raw, s.seal)  # type: ignore[arg-type]


def assert_settled(s: Setup) -> str:
    """One key file, nothing pending, the database names it, every row under it, same values."""
    no_pending(s.data)
    key = current_key(s)
    kid = master_key_id(key)
    assert s.stored_id() == kid
    db = Database(s.url)
    try:
        assert stored_next_key_id(db) is None
    finally:
        db.dispose()
    rows = secret_rows(s.url)
    assert {row_key_id(r) for r in rows.values()} == {kid}
    assert opened(Sealer(key), rows) == s.values
    return kid


@pytest.fixture(params=("file", "gramine"))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    seal = gramine(tmp_path) if request.param == "gramine" else None
    return make_setup(tmp_path, seal, seal)


def test_online_rotation_reseals_in_batches_and_records_ids_only(setup: Setup) -> None:
    s = setup
    old_id = master_key_id(s.old_key)
    cas = start(s)
    try:
        rot = rotation(s, cas, batch_size=2, pause=0)
        status = rot.run()
    finally:
        cas.db.dispose()
    assert status.state == "done" and status.old_key_id == old_id and status.new_key_id != old_id
    # 6 secrets in 3 batches of 2, then the one policy version in a batch of its own
    assert status.resealed == 6 and status.batches == 4 and status.stragglers == 0
    assert status.policy_versions == 1
    assert assert_settled(s) == status.new_key_id
    assert cas.sealer.key_ids == {status.new_key_id}  # the old key is forgotten
    for (policy, name, version), row in secret_rows(s.url).items():  # the old key opens nothing
        with pytest.raises(SignatureError):
            Sealer(s.old_key).unseal(row, policy=policy, name=name, version=version)
    for path in s.data.rglob("*"):
        if path.is_file():
            assert s.old_key not in path.read_bytes(), path
    db = Database(s.url)
    try:
        with db.read() as conn:
            from confide.cas.db import raw_execute

            (payload,) = raw_execute(
                conn, "SELECT payload FROM events WHERE type = ?", (EVENT_TYPE,)
            ).fetchone()
    finally:
        db.dispose()
    event = json.loads(payload)
    assert (
        event["online"] is True and event["old_key_id"] == old_id and event["new_key_id"] == status.new_key_id
    )
    assert event["secrets"] == 6 and event["policy_versions"] == 1
    assert s.old_key.hex() not in payload and current_key(s).hex() not in payload
    # The restarted CAS opens everything with the new key alone.
    cas = start(s)
    try:
        assert cas.sealer.key_ids == {status.new_key_id}
    finally:
        cas.db.dispose()


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_then_restart_reads_everything_and_finishes(setup: Setup, step: str) -> None:
    s = setup
    old_id = master_key_id(s.old_key)
    cas = start(s)
    try:
        with pytest.raises(Crash):
            rotation(s, cas, batch_size=2, pause=0, step=crash_at(step, 2 if step == "batch" else 1)).run()
    finally:
        cas.db.dispose()
    if step == "batch":  # half the rows are under the new key, half under the old
        assert len({row_key_id(r) for r in secret_rows(s.url).values()}) == 2
    cas = start(s)  # the restart
    try:
        assert opened(cas.sealer, secret_rows(s.url)) == s.values  # every secret readable
        rot = rotation(s, cas)
        assert rot.in_progress() == (step in BEGUN)
        if step in BEGUN:
            rot.run()  # what the served CAS does at start (confide.cas.server._serve)
        elif step not in COMMITTED:
            assert s.stored_id() == old_id  # rolled back: nothing changed; a new request rotates
            rot.run()
    finally:
        cas.db.dispose()
    new_id = assert_settled(s)
    assert new_id != old_id


def test_rows_written_during_the_rotation_are_sealed_under_the_new_key(setup: Setup) -> None:
    s = setup
    cas = start(s)
    written: list[str | None] = []

    def step(name: str) -> None:
        if name == "batch" and not written:  # a CAS write between two batches
            sealed = cas.sealer.seal(SecretValue("ascii", b"x"), policy="p", name="n", version=1)
            written.append(row_key_id(sealed))

    try:
        status = rotation(s, cas, batch_size=2, pause=0, step=step).run()
    finally:
        cas.db.dispose()
    assert written == [status.new_key_id]


def test_a_second_rotation_is_refused_while_one_runs(setup: Setup) -> None:
    s = setup
    cas = start(s)
    gate, release = threading.Event(), threading.Event()

    def step(name: str) -> None:
        if name == "batch":
            gate.set()
            release.wait(10)

    try:
        rot = rotation(s, cas, batch_size=2, pause=0, step=step)
        rot.start()
        assert gate.wait(10)
        with pytest.raises(UsageError, match="already running"):
            rot.start()
        release.set()
        assert rot.wait(30).state == "done"
    finally:
        release.set()
        cas.db.dispose()
    assert_settled(s)


def test_start_returns_the_status_as_it_started(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """What start() returns (the admin channel's reply) is the status as the rotation began, not
    the object its thread goes on changing: when the thread was quicker than the reply, the reply
    said "done" (or showed a status half updated). Here the thread ends before start() returns."""

    class Joined(threading.Thread):
        def start(self) -> None:
            super().start()
            self.join()

    monkeypatch.setattr(online_rotation.threading, "Thread", Joined)
    cas = start(setup)
    try:
        rot = rotation(setup, cas, batch_size=2, pause=0)
        started = rot.start()
        assert rot.status.state == "done"  # the thread has ended
        assert (started.state, started.resealed, started.finished_at) == ("running", 0, None)
    finally:
        cas.db.dispose()
    assert_settled(setup)


def test_offline_rotation_and_a_cas_without_the_new_key_refuse_an_online_rotation_in_progress(
    setup: Setup,
) -> None:
    s = setup
    cas = start(s)
    try:
        with pytest.raises(Crash):
            rotation(s, cas, batch_size=2, pause=0, step=crash_at("batch")).run()
    finally:
        cas.db.dispose()
    db = Database(s.url)
    try:
        next_id = stored_next_key_id(db)
        assert next_id is not None
        with pytest.raises(UsageError, match="online rotation"):
            rotate_master_key(s.data, db, seal=s.seal, to_seal=s.seal, events=LedgerEventSink())
        # Another data directory (a replica's) without the pending key: refused, nothing changed.
        pend = next(
            p for p in s.data.iterdir() if p.name.startswith("master.key") and p.name.endswith(PENDING_SUFFIX)
        )
        moved = pend.with_name("elsewhere")
        pend.rename(moved)
        with pytest.raises(UsageError, match="in progress"):
            finish_interrupted_rotation(s.data, stored_master_key_id(db), s.seal, next_id=next_id)
        with pytest.raises(UsageError, match="in progress"):
            start(s)
        moved.rename(pend)
    finally:
        db.dispose()
    cas = start(s)
    try:
        rotation(s, cas).run()
    finally:
        cas.db.dispose()
    assert_settled(s)


# --- the run lock ------------------------------------------------------------------------------


def test_exclusive_keeps_the_directory_locked_throughout(tmp_path: Path) -> None:
    # The directory's lock is exclusive from the start (one CAS per directory); exclusive()
    # concerns the database's advisory lock (PostgreSQL: tests/integration), and with SQLite
    # neither another CAS nor a rotation can start before, during or after it.
    with run_lock(tmp_path, None, exclusive=False) as mine:
        for _ in range(2):
            with (
                pytest.raises(UsageError, match="in use by another CAS"),
                run_lock(tmp_path, None, exclusive=False),
            ):
                pass
            with (
                pytest.raises(UsageError, match="a CAS is running"),
                run_lock(tmp_path, None, exclusive=True),
            ):
                pass
            with (
                mine.exclusive(),
                pytest.raises(UsageError, match="in use by another CAS"),
                run_lock(tmp_path, None, exclusive=False),
            ):
                pass
    with run_lock(tmp_path, None, exclusive=True):  # released with the block
        pass


# --- the admin channel -------------------------------------------------------------------------


@pytest.fixture
def channel(setup: Setup) -> tuple[Setup, Cas, admin.AdminChannel]:
    s = setup
    cas = start(s)
    ch = admin.AdminChannel(s.data, rotation(s, cas, batch_size=2, pause=0))
    ch.start()
    yield s, cas, ch  # type: ignore[misc]
    ch.stop()
    cas.db.dispose()


def test_admin_socket_rotates_and_reports(channel: tuple[Setup, Cas, admin.AdminChannel]) -> None:
    s, _cas, ch = channel
    assert (os.stat(ch.path).st_mode & 0o777) == 0o600
    reply = admin.request(s.data, {"op": "rotate-master-key", "batch_size": 1, "pause_ms": 0})
    assert reply["status"]["state"] == "running"
    deadline = time.time() + 30
    while (status := admin.request(s.data, {"op": "rotation-status"})["status"])["state"] == "running":
        assert time.time() < deadline
        time.sleep(0.05)
    assert status["state"] == "done" and status["batches"] == 7  # 6 secrets, 1 policy version
    assert assert_settled(s) == status["new_key_id"]


@pytest.mark.parametrize(
    "req",
    [
        {"op": "rotate-master-key", "extra": 1},
        {"op": "rotation-status", "batch_size": 1},
        {"op": "unknown"},
        {"op": "rotate-master-key", "batch_size": 0},
        {"op": "rotate-master-key", "batch_size": True},
        {"op": "rotate-master-key", "pause_ms": 10**9},
        [1, 2],
    ],
)
def test_admin_socket_refuses_bad_requests(
    channel: tuple[Setup, Cas, admin.AdminChannel], req: object
) -> None:
    s, *_ = channel
    with pytest.raises(UsageError, match="refused"):
        admin.request(s.data, req)  # type: ignore[arg-type]
    assert s.stored_id() == master_key_id(s.old_key)  # nothing rotated


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"x" * (admin.MAX_REQUEST + 10), "longer than"),
        (b"[" * 4000 + b"\n", "bad request"),
        (b"\xff\xfe{}\n", "bad request"),
        (b"", "bad request"),
    ],
)
def test_admin_socket_treats_the_request_as_hostile(
    channel: tuple[Setup, Cas, admin.AdminChannel], raw: bytes, error: str
) -> None:
    s, _cas, ch = channel
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(ch.path))
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is False and error in reply["error"]
    assert admin.request(s.data, {"op": "rotation-status"})["ok"]  # still serving


def test_no_cas_no_socket(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot reach the CAS"):
        admin.request(tmp_path, {"op": "rotation-status"})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_another_uid_is_refused_even_with_access_to_the_socket(
    channel: tuple[Setup, Cas, admin.AdminChannel],
) -> None:
    s, cas, _ch = channel
    # A directory every uid can reach the parents of (tmp_path's are 0700), as a data directory.
    where = Path(tempfile.mkdtemp(prefix="confide-admin-"))
    ch = admin.AdminChannel(where, rotation(s, cas))
    ch.start()

    def as_nobody() -> str:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody, try the socket
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    result = json.dumps(admin.request(where, {"op": "rotate-master-key"}))
                except UsageError as exc:
                    result = str(exc)
                os.write(write, result.encode()[:4000])
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        return out

    try:
        # The permissions keep another uid out (0700 directory, 0600 socket) ...
        assert (os.stat(ch.path).st_mode & 0o777) == 0o600
        assert "Permission denied" in as_nobody()
        # ... and if they were opened up, the peer-credential check refuses it.
        os.chmod(where, 0o755)
        os.chmod(ch.path, 0o666)
        assert "refused: only the CAS's own uid" in as_nobody()
    finally:
        ch.stop()
        shutil.rmtree(where, ignore_errors=True)
    assert s.stored_id() == master_key_id(s.old_key)


def test_a_second_cas_on_the_directory_does_not_take_over_the_socket(
    channel: tuple[Setup, Cas, admin.AdminChannel],
) -> None:
    s, cas, _ch = channel
    other = admin.AdminChannel(s.data, rotation(s, cas))
    with pytest.raises(UsageError, match="another CAS process"):
        other.start()
    assert other.start(required=False) is False  # cas serve: serves on, without the channel
    assert admin.request(s.data, {"op": "rotation-status"})["ok"]


def test_a_directory_without_sockets_serves_without_the_channel(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = tmp_path / ("d" * 200)  # too long for sun_path: bound through /proc/self/fd
    where.mkdir()
    s = make_setup(tmp_path, None, None)
    cas = start(s)
    try:
        ch = admin.AdminChannel(where, rotation(s, cas))
        assert ch.start() is True
        assert admin.request(where, {"op": "rotation-status"})["status"]["state"] == "idle"
        ch.stop()
        assert not ch.path.exists()
        (where / admin.SOCKET_NAME).mkdir()  # not a socket, and in the way
        ch = admin.AdminChannel(where, rotation(s, cas))
        assert ch.start(required=False) is False
        assert "admin-channel-unavailable" in caplog.text
    finally:
        cas.db.dispose()


# --- the command line ----------------------------------------------------------------------------


def cli(*args: str) -> tuple[object, str]:
    from click.testing import CliRunner

    from confide.cas.cli import cas as cas_group

    result = CliRunner().invoke(cas_group, ["rotate-master-key", *args])
    return result.exception, result.stdout


def test_cli_rotates_the_running_cas_online(channel: tuple[Setup, Cas, admin.AdminChannel]) -> None:
    s, *_ = channel
    exc, out = cli("--online", "--data-dir", str(s.data), "--batch-size", "2", "--batch-pause-ms", "0")
    assert exc is None, exc
    assert out.strip() == assert_settled(s) != master_key_id(s.old_key)


def test_cli_online_warns_when_a_reader_keeps_the_old_wal(
    channel: tuple[Setup, Cas, admin.AdminChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 5 of the online rotation could not truncate the WAL (a reader holds a snapshot from
    before the switch-over): the status and the CLI say so; the rotation itself is done."""
    from click.testing import CliRunner

    from confide.cas import rotation as offline
    from confide.cas.cli import cas as cas_group

    monkeypatch.setattr(offline, "WAL_TRUNCATE_ATTEMPTS", 2)
    monkeypatch.setattr(offline, "WAL_TRUNCATE_WAIT_MS", 0)
    s, _cas, ch = channel
    reader = sqlite3.connect(s.data / "cas.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT sealed FROM secrets").fetchall()
        result = CliRunner().invoke(
            cas_group, ["rotate-master-key", "--online", "--data-dir", str(s.data), "--batch-pause-ms", "0"]
        )
    finally:
        reader.close()
    assert result.exception is None, result.exception
    assert result.stdout.strip() == ch.rotation.status.new_key_id
    assert "warning: the old WAL could not be truncated after 2 checkpoints" in result.stderr
    assert ch.rotation.status.state == "done" and ch.rotation.status.wal_warning is not None
    assert assert_settled(s) == ch.rotation.status.new_key_id


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--seal", "gramine"), "--seal cannot be given"),
        (("--to-seal", "gramine"), "--to-seal cannot be given"),
        (("--db", "sqlite:///x"), "--db cannot be given"),
    ],
)
def test_cli_online_takes_the_running_cas_own_options(
    channel: tuple[Setup, Cas, admin.AdminChannel], args: tuple[str, ...], error: str
) -> None:
    s, *_ = channel
    exc, _ = cli("--online", "--data-dir", str(s.data), *args)
    assert isinstance(exc, UsageError) and error in str(exc)
    assert s.stored_id() == master_key_id(s.old_key)


def test_cli_online_without_a_cas_and_batch_options_offline_are_refused(tmp_path: Path) -> None:
    exc, _ = cli("--online", "--data-dir", str(tmp_path))
    assert isinstance(exc, UsageError) and "cannot reach the CAS" in str(exc)
    exc, _ = cli("--data-dir", str(tmp_path), "--batch-size", "5")
    assert isinstance(exc, UsageError) and "are for --online" in str(exc)


def test_a_failed_begin_commit_leaves_no_row_under_the_discarded_key(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 3's commit fails (injected: the transaction is rolled back). That releases the write
    lock, and a writer waiting for it (injected just there, before the rotation's handler runs)
    seals its row. The rotation then discards the new key: the row must not be under it."""
    s = setup
    cas = start(s)
    real_write = cas.db.write
    failed: list[bool] = []

    @contextlib.contextmanager
    def write(on: Any = None) -> Iterator[Any]:
        with real_write(on) as conn:
            yield conn
            begun = raw_execute(conn, "SELECT value FROM meta WHERE key = 'master_key_next'").fetchone()
            if begun is not None and not failed:
                failed.append(True)
                raise StorageError("database error: the commit failed (injected)")

    monkeypatch.setattr(cas.db, "write", write)
    rot = rotation(s, cas, batch_size=2, pause=0)
    real_maybe = rot._maybe_committed

    def writer_then_check(new_id: str) -> bool:
        with real_write() as conn:  # the writer that was waiting for the lock
            sealed = cas.sealer.seal(SecretValue("ascii", b"late"), policy="p", name="late", version=1)
            raw_execute(
                conn,
                "INSERT INTO secrets (policy, name, version, kind, sealed, public, created_at)"
                " VALUES ('p', 'late', 1, 'ascii', ?, '{}', 0)",
                (sealed,),
            )
        return real_maybe(new_id)

    monkeypatch.setattr(rot, "_maybe_committed", writer_then_check)
    try:
        with pytest.raises(StorageError, match="injected"):
            rot.run()
        assert failed
        late = secret_rows(s.url)[("p", "late", 1)]
        assert cas.sealer.unseal(late, policy="p", name="late", version=1).data == b"late"
    finally:
        cas.db.dispose()
    no_pending(s.data)
    key = current_key(s)
    assert s.stored_id() == master_key_id(key)
    assert Sealer(key).unseal(late, policy="p", name="late", version=1).data == b"late"


def test_a_begin_commit_that_reports_failure_but_happened_resumes_in_the_same_cas(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 3's transaction commits, then the commit reports an error (injected): the database
    names the new key, so the rotation keeps it, and the next request of the running CAS
    resumes and completes it."""
    s = setup
    cas = start(s)
    real_write = cas.db.write
    failed: list[bool] = []

    @contextlib.contextmanager
    def write(on: Any = None) -> Iterator[Any]:
        with real_write(on) as conn:
            yield conn
            begun = raw_execute(conn, "SELECT value FROM meta WHERE key = 'master_key_next'").fetchone()
        if begun is not None and not failed:  # after the commit
            failed.append(True)
            raise StorageError("database error: the commit's answer was lost (injected)")

    monkeypatch.setattr(cas.db, "write", write)
    try:
        rot = rotation(s, cas, batch_size=2, pause=0)
        with pytest.raises(StorageError, match="injected"):
            rot.run()
        assert rot.in_progress()
        assert opened(cas.sealer, secret_rows(s.url)) == s.values
        status = rot.run()  # the next request
        assert status.state == "done"
    finally:
        cas.db.dispose()
    assert assert_settled(s) == status.new_key_id
