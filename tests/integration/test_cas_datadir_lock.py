"""One ``confide cas serve`` per data directory (docs/cas.md "The data directory"): real CAS
processes. A second ``cas serve`` on the directory of a running one, or an offline
``cas rotate-master-key``, is refused at once (exit 2, one line naming the directory and the
holder's pid) and changes nothing in the directory; a CAS stopped by SIGTERM or killed by
SIGKILL leaves no lock behind; a symlink in the lock file's place is refused before anything
is written."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess
from cli import run_confide
from confide import errors
from confide.cas.runlock import LOCK_NAME, run_lock

ONE_CAS = "one cas serve per data directory; replicas share a database (--db), each with its own --data-dir"
FILES = ("client.env", "master.key", "cas-key.pem", "cas-cert.pem", "log.key", LOCK_NAME)


def serve(data_dir: Path) -> tuple[int, str]:
    out = run_confide("cas", "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--dev", timeout=60)
    return out.returncode, out.stderr


def snapshot(data_dir: Path) -> dict[str, object]:
    """The directory's names, its key, TLS, log-key, client.env and lock files' bytes, and the
    database's ledger events and meta rows (read through a read-only connection)."""
    db = sqlite3.connect(f"file:{data_dir / 'cas.db'}?mode=ro", uri=True)
    try:
        events = db.execute("SELECT * FROM events ORDER BY seq").fetchall()
        meta = db.execute("SELECT * FROM meta ORDER BY 1").fetchall()
    finally:
        db.close()
    return {
        "names": sorted(p.name for p in data_dir.iterdir()),
        **{name: (data_dir / name).read_bytes() if (data_dir / name).exists() else None for name in FILES},
        "events": events,
        "meta": meta,
    }


def test_a_second_serve_and_an_offline_rotation_are_refused_and_change_nothing(tmp_path: Path) -> None:
    first = CasProcess(tmp_path / "cas", None).start()
    try:
        assert first.proc is not None
        pid = first.proc.pid
        data = first.data_dir
        lock = data / LOCK_NAME
        assert lock.read_text() == f"{pid} cas serve\n"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        before = snapshot(data)

        code, err = serve(data)
        assert code == errors.UsageError.exit_code, err
        assert err == (
            f"error: UsageError: the data directory {str(data)!r} is in use by another CAS (pid {pid}, "
            f"confide cas serve): {ONE_CAS}\n"
        )
        out = run_confide("cas", "rotate-master-key", "--data-dir", data)
        assert out.returncode == errors.UsageError.exit_code, out.stderr
        assert out.stderr == (
            f"error: UsageError: a CAS is running on the data directory {str(data)!r} (pid {pid}, "
            "confide cas serve): stop it (every replica) first\n"
        )
        assert snapshot(data) == before  # client.env, keys, database, lock file: untouched
        assert first._ready()  # the first serves on, at the address client.env names
    finally:
        first.stop()


def test_a_stopped_or_killed_cas_leaves_no_lock_behind(tmp_path: Path) -> None:
    cas = CasProcess(tmp_path / "cas", None).start()
    cas.stop(signal.SIGTERM)
    cas.start()  # at once: the kernel released the lock with the process
    assert cas.proc is not None
    assert (cas.data_dir / LOCK_NAME).read_text() == f"{cas.proc.pid} cas serve\n"
    cas.stop(signal.SIGKILL)  # no clean-up at all
    assert cas.proc.returncode == -signal.SIGKILL
    cas.start()
    try:
        assert (cas.data_dir / LOCK_NAME).read_text() == f"{cas.proc.pid} cas serve\n"
    finally:
        cas.stop()
    assert (cas.data_dir / LOCK_NAME).is_file()  # never deleted


def test_a_serve_is_refused_while_a_rotation_holds_the_directory(tmp_path: Path) -> None:
    cas = CasProcess(tmp_path / "cas", None).start()
    cas.stop()
    before = snapshot(cas.data_dir)
    # This process takes the lock as `confide cas rotate-master-key` does while it runs.
    with run_lock(cas.data_dir, None, exclusive=True):
        code, err = serve(cas.data_dir)
        during = snapshot(cas.data_dir)
    assert code == errors.UsageError.exit_code, err
    assert err == (
        f"error: UsageError: a master-key rotation is running on the data directory {str(cas.data_dir)!r} "
        f"(pid {os.getpid()}, confide cas rotate-master-key): start the CAS when it has finished\n"
    )
    assert {k: v for k, v in during.items() if k != LOCK_NAME} == {
        k: v for k, v in before.items() if k != LOCK_NAME
    }
    cas.start()  # and afterwards it starts
    cas.stop()


def test_a_symlinked_lock_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    data.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    (data / LOCK_NAME).symlink_to(target)
    code, err = serve(data)
    assert code == errors.UsageError.exit_code, err
    assert f"{LOCK_NAME} is a symbolic link" in err and err.count("\n") == 1, err
    assert [p.name for p in data.iterdir()] == [LOCK_NAME] and not target.exists()  # no key, nothing
    # a rotation reaches the lock only in a directory with a master key (else refused before it)
    (data / "master.key").write_bytes(b"stand-in: never read, the lock is refused first")
    out = run_confide("cas", "rotate-master-key", "--data-dir", data)
    assert out.returncode == errors.UsageError.exit_code and "symbolic link" in out.stderr, out.stderr
    assert sorted(p.name for p in data.iterdir()) == ["master.key", LOCK_NAME] and not target.exists()


def test_a_start_removes_the_client_env_of_the_run_before(tmp_path: Path) -> None:
    """README's `until [ -e DIR/client.env ]` waits for the CAS it started: the client.env a
    stopped CAS left is removed once the new process holds the run lock, and the new one is
    written when it listens, so a start that fails (here: --join to an address nothing listens
    on) leaves none naming a CAS that is not there."""
    cas = CasProcess(tmp_path / "cas", None).start()
    env_file = cas.data_dir / "client.env"
    cas.stop(signal.SIGKILL)  # no chance to clean up
    assert env_file.is_file()  # the killed CAS's, naming its port
    join = tmp_path / "joining"
    join.mkdir(mode=0o700)
    (join / "client.env").write_bytes(env_file.read_bytes())  # as a run before would have left it
    out = run_confide(
        "cas", "serve", "--data-dir", join, "--listen", "127.0.0.1:0", "--dev",
        "--join", cas.env["CONFIDE_CAS_URL"], timeout=60,
    )  # fmt: skip
    assert out.returncode == errors.NetworkError.exit_code, out.stderr
    assert "cannot obtain the master key, not starting" in out.stderr, out.stderr
    assert not (join / "client.env").exists()


def test_a_stopped_cas_removes_its_client_env(tmp_path: Path) -> None:
    """README's `cas serve ... &` then `until [ -e DIR/client.env ]`, on a directory a CAS ran
    in before: the check runs before the new process (a second or more of imports) holds the run
    lock and removes the earlier file, so a stopped CAS's file would let it go on at once with the
    stopped CAS's address. A CAS stopped by SIGTERM or SIGINT removes the file it wrote."""
    cas = CasProcess(tmp_path / "cas", None).start()
    env_file = cas.data_dir / "client.env"
    assert env_file.is_file()
    cas.stop(signal.SIGTERM)
    assert cas.proc is not None and cas.proc.returncode == -signal.SIGTERM
    assert not env_file.exists()
    cas.start()
    assert env_file.is_file()
    cas.stop(signal.SIGINT)
    assert not env_file.exists()
    assert (cas.data_dir / LOCK_NAME).is_file()  # the lock file stays (never deleted)
