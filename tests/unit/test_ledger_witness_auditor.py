"""The witness (tlog-witness / cosignature/v1) and the auditor core."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _ledger_ref import MemNodes
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from confide.errors import (
    ConfideError,
    ConsistencyError,
    ParseError,
    RollbackError,
    SignatureError,
    StorageError,
    UnknownKeyError,
)
from confide.ledger.auditor import Auditor, AuditorState, LocalLogClient, verify_checkpoint_update
from confide.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from confide.ledger.merkle import consistency_proof, mth
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, open_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import (
    MAX_STATE_SIZE,
    Witness,
    WitnessConflictError,
    http_status,
    parse_add_checkpoint,
)

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ORIGIN = "cas.example/ledger"


def _leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") for i in range(n)]


def _cp(log: NoteSigner, leaves: list[bytes]) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), mth(leaves)), log)


@pytest.fixture
def log() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witness(tmp_path: Path, log: NoteSigner) -> Witness:
    return Witness(NoteSigner.generate("witness.example/w1", SIG_TYPE_COSIGNATURE_V1), tmp_path / "w.json",
                   {ORIGIN: log.verifier})  # fmt: skip


def test_witness_cosigns_consistent_checkpoints_and_persists_first(witness: Witness, log: NoteSigner) -> None:
    leaves = _leaves(40)
    cp10 = _cp(log, leaves[:10])
    sig = witness.add_checkpoint(0, [], cp10, at=AT)
    # The cosignature verifies as a note signature of type 0x04 over the checkpoint.
    _, verified = open_note(cp10 + sig.line().encode(), [witness.verifier])
    assert verified == [sig] and int.from_bytes(sig.signature[:8], "big") == int(AT.timestamp())
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size == 10
    proof = consistency_proof(MemNodes(leaves), 10, 40)
    witness.add_checkpoint(10, proof, _cp(log, leaves), at=AT)
    assert json.loads(witness.state_path.read_text())["logs"][ORIGIN].startswith(ORIGIN + "\n40\n")
    # Same checkpoint again (old size 40, empty proof) is fine; a second witness object shares the state.
    again = Witness(witness.signer, witness.state_path, witness.logs)
    again.add_checkpoint(40, [], _cp(log, leaves), at=AT)


def test_witness_refuses_forks_rollbacks_and_conflicts(witness: Witness, log: NoteSigner) -> None:
    leaves = _leaves(40)
    witness.add_checkpoint(0, [], _cp(log, leaves[:20]), at=AT)
    # Fork: the log signs a different history of 30 entries (entry 5 changed).
    forked = list(leaves[:30])
    forked[5] = b"rewritten"
    fork_proof = consistency_proof(MemNodes(forked), 20, 30)
    with pytest.raises(ConsistencyError) as fork:
        witness.add_checkpoint(20, fork_proof, _cp(log, forked), at=AT)
    assert http_status(fork.value) == 422
    # Same size, different root.
    with pytest.raises(WitnessConflictError) as same:
        witness.add_checkpoint(20, [], _cp(log, forked[:20]), at=AT)
    assert http_status(same.value) == 409
    # Rollback: old size above the checkpoint's size.
    with pytest.raises(RollbackError) as rb:
        witness.add_checkpoint(20, [], _cp(log, leaves[:10]), at=AT)
    assert http_status(rb.value) == 400
    # Stale old size: 409 with the size the witness knows.
    with pytest.raises(WitnessConflictError) as stale:
        witness.add_checkpoint(10, consistency_proof(MemNodes(leaves), 10, 30), _cp(log, leaves[:30]), at=AT)
    assert stale.value.known_size == 20 and http_status(stale.value) == 409
    # Another key, unknown origin.
    with pytest.raises(UnknownKeyError) as other:
        witness.add_checkpoint(20, [], _cp(NoteSigner.generate(ORIGIN), leaves[:20]), at=AT)
    assert http_status(other.value) == 403
    stranger = sign_checkpoint(Checkpoint("other.example/log", 1, mth(leaves[:1])), log)
    with pytest.raises(UnknownKeyError):
        witness.add_checkpoint(0, [], stranger, at=AT)
    # State unchanged by all the refusals; the honest extension still works.
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size == 20
    witness.add_checkpoint(20, consistency_proof(MemNodes(leaves), 20, 40), _cp(log, leaves), at=AT)


def test_add_checkpoint_request_body(log: NoteSigner) -> None:
    leaves = _leaves(8)
    proof = consistency_proof(MemNodes(leaves), 3, 8)
    body = b"old 3\n" + b"".join(base64.b64encode(p) + b"\n" for p in proof) + b"\n" + _cp(log, leaves)
    old, parsed_proof, note = parse_add_checkpoint(body)
    assert (old, parsed_proof, note) == (3, proof, _cp(log, leaves))
    for bad in (b"old 03\n\n" + note, b"old x\n\n" + note, b"new 3\n\n" + note, b"old 3\n" + note,
                b"old 3\n" + b"AAAA\n" * 64 + b"\n" + note):  # fmt: skip
        with pytest.raises(ParseError):
            parse_add_checkpoint(bad)


def test_verify_checkpoint_update_distinct_errors(log: NoteSigner) -> None:
    leaves = _leaves(30)
    old = Checkpoint(ORIGIN, 10, mth(leaves[:10]))
    good = _cp(log, leaves)
    proof = consistency_proof(MemNodes(leaves), 10, 30)
    assert verify_checkpoint_update(old, good, proof, log.verifier).checkpoint.size == 30
    with pytest.raises(RollbackError):
        verify_checkpoint_update(old, _cp(log, leaves[:9]), [], log.verifier)
    forked = list(leaves)
    forked[0] = b"x"
    with pytest.raises(ConsistencyError, match="fork"):
        verify_checkpoint_update(
            old, _cp(log, forked), consistency_proof(MemNodes(forked), 10, 30), log.verifier
        )
    with pytest.raises(UnknownKeyError):
        verify_checkpoint_update(old, _cp(NoteSigner.generate(ORIGIN), leaves), proof, log.verifier)
    with pytest.raises(SignatureError):
        verify_checkpoint_update(old, good.replace(b"\n30\n", b"\n31\n"), proof, log.verifier)
    with pytest.raises(ParseError):
        verify_checkpoint_update(old, b"garbage", proof, log.verifier)


def test_auditor_over_a_local_log_and_its_state_file(tmp_path: Path, log: NoteSigner) -> None:
    conn = connect(tmp_path / "l.db")
    Ledger.init_schema(conn)
    entries = [f"e{i}".encode() for i in range(700)]
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[:300])
    Ledger().sign_checkpoint(conn, log)
    state = AuditorState(tmp_path / "state.json")
    auditor = Auditor(LocalLogClient(conn), log.verifier)
    first = auditor.update(state.load(log.verifier))
    state.save(first)
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[300:])
    Ledger().sign_checkpoint(conn, log)
    old = state.load(log.verifier)
    assert old is not None and old.size == 300
    second = auditor.update(old)
    assert second.checkpoint.size == 700
    assert auditor.verify_entries(second.checkpoint) == 700
    # A state file whose checkpoint was edited is refused (it is re-verified with the pinned key).
    doc = json.loads(state.path.read_text())
    doc["checkpoint"] = doc["checkpoint"].replace("\n300\n", "\n200\n")
    state.path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="state file"):
        state.load(log.verifier)
    assert open_checkpoint(second.raw, log.verifier).checkpoint.root == mth(entries)


class _Recorder:
    """Every resource an honest log served to the auditor, by path."""

    def __init__(self, real: LocalLogClient) -> None:
        self.real, self.served = real, dict[str, bytes]()

    def fetch(self, path: str) -> bytes | None:
        body = self.real.fetch(path)
        if body is not None:
            self.served[path] = body
        return body


class _Tampering:
    """The served resources, one of them replaced."""

    def __init__(self, served: dict[str, bytes], path: str, body: bytes) -> None:
        self.served, self.path, self.body = served, path, body

    def fetch(self, path: str) -> bytes | None:
        return self.body if path == self.path else self.served.get(path)


def _served_log(tmp: Path) -> tuple[NoteSigner, Checkpoint, dict[str, bytes]]:
    log = NoteSigner.generate(ORIGIN)
    conn = connect(tmp / "l.db")
    Ledger.init_schema(conn)
    entries = [b"entry-%d" % i * (1 + i % 3) for i in range(300)]
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[:40])
    Ledger().sign_checkpoint(conn, log)
    old = Auditor(LocalLogClient(conn), log.verifier).update(None).checkpoint
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[40:])
    Ledger().sign_checkpoint(conn, log)
    recorder = _Recorder(LocalLogClient(conn))
    auditor = Auditor(recorder, log.verifier)
    auditor.verify_entries(auditor.update(old).checkpoint)
    conn.close()
    return log, old, recorder.served


@pytest.fixture(scope="module")
def served_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[NoteSigner, Checkpoint, dict[str, bytes]]:
    return _served_log(tmp_path_factory.mktemp("auditor"))


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, 100),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_a_tampered_served_resource_is_never_accepted(
    served_log: tuple[NoteSigner, Checkpoint, dict[str, bytes]],
    which: int,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    """The log serves the checkpoint, hash tiles and entry bundles; one of them changed (bytes
    flipped, or cut short) makes the auditor fail with a confide error, never pass."""
    log, old, served = served_log
    path = sorted(served)[which % len(served)]
    body = bytearray(served[path])
    for at, mask in edits:
        body[at % len(body)] ^= mask
    if cut is not None:
        del body[cut % len(body) :]
    assume(body != served[path])  # two edits of one byte may cancel out
    auditor = Auditor(_Tampering(served, path, bytes(body)), log.verifier)
    with pytest.raises(ConfideError):
        auditor.verify_entries(auditor.update(old).checkpoint)


def test_a_fifo_as_the_witness_state_is_refused_at_once(witness: Witness) -> None:
    os.mkfifo(witness.state_path, 0o600)
    with pytest.raises(StorageError, match="unreadable: not a regular file"):
        witness.latest(ORIGIN)


def test_an_oversized_witness_state_is_refused(witness: Witness) -> None:
    witness.state_path.write_bytes(b" " * (MAX_STATE_SIZE + 1))
    with pytest.raises(StorageError, match="larger than"):
        witness.latest(ORIGIN)
