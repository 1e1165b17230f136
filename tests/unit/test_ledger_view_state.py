"""``ledger history|accesses --state``: a policy's view of the log remembered across runs
(:func:`confide.ledger.auditor.audit_view`, the version 2 :class:`AuditorState`), over a local
ledger; the CAS end to end is in tests/integration/test_ledger_view_state_cas.py."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from confide.errors import (
    ConfideError,
    ConsistencyError,
    EntryMissingError,
    ParseError,
    RollbackError,
    SignatureError,
    StorageError,
    UnknownKeyError,
)
from confide.ledger.auditor import AuditorState, LocalLogClient, ViewUpdate, audit_once, audit_view
from confide.ledger.checkpoint import SignedCheckpoint, open_checkpoint
from confide.ledger.db import Conn
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction

ORIGIN = "cas.example/ledger"


class _Log:
    def __init__(self, path: Path, signer: NoteSigner, tag: bytes = b"") -> None:
        self.conn: Conn = connect(path)
        Ledger.init_schema(self.conn)
        self.signer, self.tag, self.size = signer, tag, 0

    def grow(self, n: int) -> SignedCheckpoint:
        """``n`` entries more, and a checkpoint of them."""
        with write_transaction(self.conn):
            Ledger().append_batch(self.conn, [self.tag + b"entry-%d" % (self.size + i) for i in range(n)])
        self.size += n
        note = Ledger().sign_checkpoint(self.conn, self.signer)
        return open_checkpoint(note, self.signer.verifier)


def _run(log: _Log, state: AuditorState, signed: SignedCheckpoint | None, proven: list[int]) -> ViewUpdate:
    with state.locked():
        previous = state.load(log.signer.verifier)
        return audit_view(LocalLogClient(log.conn), log.signer.verifier, state, previous, "p", signed, proven)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def test_a_view_is_remembered_extended_and_checked(tmp_path: Path, signer: NoteSigner) -> None:
    log = _Log(tmp_path / "l.db", signer)
    state = AuditorState(tmp_path / "state.json")
    first_cp = log.grow(300)
    first = _run(log, state, first_cp, [1, 3, 299])
    assert first == ViewUpdate(None, 0, 3)
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state.json.lock").stat().st_mode) == 0o600
    doc = json.loads(state.path.read_text())
    assert doc["version"] == 2 and doc["log_key"] == signer.verifier.vkey
    assert doc["policies"] == {"p": [1, 3, 299]} and "\n300\n" in doc["checkpoint"]

    grown = log.grow(500)
    second = _run(log, state, grown, [1, 3, 299, 700])
    assert second.previous is not None and second.previous.size == 300
    assert (second.known, second.remembered) == (3, 4)
    # The same checkpoint again: nothing new, still consistent.
    assert _run(log, state, grown, [1, 3, 299, 700]) == ViewUpdate(grown.checkpoint, 4, 4)
    kept = state.path.read_bytes()

    # An entry shown before, now left out: refused, nothing written.
    with pytest.raises(EntryMissingError, match=r"p: the log no longer returns entry 3, shown before"):
        _run(log, state, grown, [1, 299, 700])
    # The older checkpoint again (a database restored from a copy): a rollback.
    with pytest.raises(RollbackError, match="size 800 was seen before"):
        _run(log, state, first_cp, [1, 3, 299])
    # No checkpoint at all, after one was seen: also a rollback.
    with pytest.raises(RollbackError, match="no checkpoint"):
        _run(log, state, None, [])
    assert state.path.read_bytes() == kept

    # Another tree under the same key (a copy of the database that went its own way): a fork.
    fork = _Log(tmp_path / "fork.db", signer, tag=b"other-")
    forked = fork.grow(900)
    with pytest.raises(ConsistencyError, match="fork"):
        _run(fork, state, forked, [1, 3, 299, 700])
    assert state.path.read_bytes() == kept


def test_another_policy_shares_the_file_and_verify_keeps_the_views(
    tmp_path: Path, signer: NoteSigner
) -> None:
    log = _Log(tmp_path / "l.db", signer)
    state = AuditorState(tmp_path / "state.json")
    # ledger verify first: a version 1 file, as before
    log.grow(5)
    audit_once(LocalLogClient(log.conn), signer.verifier, state)
    log.grow(5)
    audit_once(LocalLogClient(log.conn), signer.verifier, state)
    assert json.loads(state.path.read_text())["version"] == 1
    # the view takes it over (version 2) ...
    cp = log.grow(10)
    assert _run(log, state, cp, [2, 15]).previous is not None
    with state.locked():
        state.load(signer.verifier)
        audit_view(LocalLogClient(log.conn), signer.verifier, state, cp.checkpoint, "q", cp, [4])
    # ... and ledger verify moves the checkpoint on, the views kept
    log.grow(5)
    old, new = audit_once(LocalLogClient(log.conn), signer.verifier, AuditorState(state.path))
    assert old is not None and (old.size, new.checkpoint.size) == (20, 25)
    doc = json.loads(state.path.read_text())
    assert (
        doc["version"] == 2 and doc["policies"] == {"p": [2, 15], "q": [4]} and "\n25\n" in doc["checkpoint"]
    )
    # the next view run starts from the checkpoint ledger verify remembered
    cp = log.grow(1)
    assert _run(log, state, cp, [2, 15, 25]).previous.size == 25  # type: ignore[union-attr]


def _v2(signer: NoteSigner, note: bytes, **members: object) -> dict[str, object]:
    doc: dict[str, object] = {"version": 2, "log_key": signer.verifier.vkey, "checkpoint": note.decode(),
                              "policies": {"p": [1, 2]}}  # fmt: skip
    doc.update(members)
    return doc


def test_a_state_file_is_hostile_input(tmp_path: Path, signer: NoteSigner) -> None:
    log = _Log(tmp_path / "l.db", signer)
    cp = log.grow(10)
    note = cp.raw
    other = NoteSigner.generate("other.example/log")
    other_note = _Log(tmp_path / "o.db", other).grow(3).raw
    cases: list[tuple[bytes, type[ConfideError], str]] = [
        (b"", ParseError, "auditor state file"),
        (json.dumps(_v2(signer, note)).encode()[:-7], ParseError, "auditor state file"),
        (b'{"version": 2, "version": 2}', ParseError, "auditor state file"),
        (b"[1, 2]", ParseError, "version 2"),
        (json.dumps({"version": 3, "checkpoint": note.decode()}).encode(), ParseError, "version 2"),
        (json.dumps({"version": 1, "checkpoint": note.decode(), "x": 1}).encode(), ParseError, "version"),
        (json.dumps(_v2(signer, note, extra=1)).encode(), ParseError, "log_key"),
        (json.dumps(_v2(signer, note, log_key=7)).encode(), ParseError, "log_key"),
        (json.dumps(_v2(signer, note, checkpoint=None)).encode(), ParseError, "checkpoint as a string"),
        (json.dumps(_v2(signer, note, policies=[])).encode(), ParseError, "policies as an object"),
        (json.dumps(_v2(signer, note, policies={"p": [2, 1]})).encode(), ParseError, "increasing"),
        (json.dumps(_v2(signer, note, policies={"p": [1, 1]})).encode(), ParseError, "increasing"),
        (json.dumps(_v2(signer, note, policies={"p": [-1]})).encode(), ParseError, "increasing"),
        (json.dumps(_v2(signer, note, policies={"p": [True]})).encode(), ParseError, "increasing"),
        (
            json.dumps(_v2(signer, note, policies={"p": [10]})).encode(),
            ParseError,
            "below the checkpoint's size 10",
        ),
        (json.dumps(_v2(signer, note, policies={"p": "1"})).encode(), ParseError, "increasing"),
        (json.dumps(_v2(signer, note, policies={"": []})).encode(), ParseError, "increasing"),
        (json.dumps(_v2(signer, note.replace(b"\n10\n", b"\n9\n"))).encode(), SignatureError, "state file"),
        (json.dumps(_v2(signer, b"not a note")).encode(), ParseError, "state file"),
        # another log's state file, by its key or (version 1) by its checkpoint
        (json.dumps(_v2(other, other_note)).encode(), UnknownKeyError, "not of the pinned"),
        (json.dumps(_v2(signer, other_note)).encode(), UnknownKeyError, "state file"),
        (
            json.dumps({"version": 1, "checkpoint": other_note.decode()}).encode(),
            UnknownKeyError,
            "state file",
        ),
    ]
    path = tmp_path / "state.json"
    for body, error, message in cases:
        path.write_bytes(body)
        with pytest.raises(error, match=message) as caught:
            _run(log, AuditorState(path), cp, [1, 2])
        assert "\n" not in caught.value.diagnostics(), body
        assert path.read_bytes() == body  # nothing overwritten
    path.unlink()
    os.mkfifo(path)  # not a regular file: refused, not read for ever
    with pytest.raises(StorageError, match="state file"):
        _run(log, AuditorState(path), cp, [1, 2])


def test_runs_sharing_a_state_file_wait_for_each_other(tmp_path: Path, signer: NoteSigner) -> None:
    """The lock on ``FILE.lock``: a run that read the file finishes (and writes) before another
    reads it, so neither's update is lost."""
    import threading

    log = _Log(tmp_path / "l.db", signer)
    cp = log.grow(5)
    path = tmp_path / "state.json"
    holder = AuditorState(path)
    finished = threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        conn = connect(tmp_path / "l.db")
        try:
            state = AuditorState(path)
            with state.locked():
                previous = state.load(signer.verifier)
                audit_view(LocalLogClient(conn), signer.verifier, state, previous, "q", cp, [4])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            conn.close()
            finished.set()

    with holder.locked():
        previous = holder.load(signer.verifier)
        thread = threading.Thread(target=other)
        thread.start()
        assert not finished.wait(0.3)  # it waits for the lock
        audit_view(LocalLogClient(log.conn), signer.verifier, holder, previous, "p", cp, [1, 2])
    thread.join(30)
    assert finished.is_set() and not errors
    assert json.loads(path.read_text())["policies"] == {"p": [1, 2], "q": [4]}


def test_a_state_path_that_names_no_file_or_a_planted_lock_link_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--state /`` (or ``.``, ``..``, an empty path) was a ValueError traceback, and ``..``
    locked a ``...lock`` in the working directory; a symlink at ``FILE.lock`` is not followed."""
    monkeypatch.chdir(tmp_path)
    for given in ("/", ".", "..", "", str(tmp_path / "d" / "..")):
        with (
            pytest.raises(StorageError, match=r"cannot lock state file .*: Is a directory"),
            AuditorState(Path(given)).locked(),
        ):
            pytest.fail("locked")
    assert list(tmp_path.iterdir()) == []
    target = tmp_path / "elsewhere"
    (tmp_path / "state.json.lock").symlink_to(target)
    with (
        pytest.raises(StorageError, match="cannot lock state file"),
        AuditorState(tmp_path / "state.json").locked(),
    ):
        pytest.fail("locked")
    assert not target.exists()
