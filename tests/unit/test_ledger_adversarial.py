"""Adversarial review of the transparency ledger's verifiers (signed notes, checkpoints, the
auditor's and the log's HTTP clients, the witness, ``confide ledger history|accesses``): each
test is a hostile input that was accepted, crashed or read without bound before its fix, or a
rule of the specifications checked here once more (c2sp.org/signed-note, tlog-checkpoint,
tlog-witness; RFC 9162 §2.1)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from confide.cas.audit import verified_events
from confide.errors import (
    AccessDeniedError,
    ConsistencyError,
    EntryMismatchError,
    NetworkError,
    ParseError,
    RollbackError,
    UnknownKeyError,
)
from confide.ledger import http as ledger_http
from confide.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from confide.ledger.encoding import EntryType, encode_entry
from confide.ledger.http import HttpLogClient
from confide.ledger.merkle import EMPTY_ROOT, mth
from confide.ledger.note import (
    MAX_NOTE_SIZE,
    SIG_TYPE_COSIGNATURE_V1,
    Note,
    NoteSigner,
    NoteVerifier,
    open_note,
    parse_note,
)
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from confide.ledger.witness_http import request_cosignatures

ORIGIN = "cas.example/log"
ROOT = bytes(range(32))
TEXT = f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n"


class _Stream(httpx2.SyncByteStream):
    """A body without a declared length of ``chunks`` chunks of 64 KiB; counts those read."""

    def __init__(self, chunks: int) -> None:
        self.chunks, self.read = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        block = b"x" * 65536
        for _ in range(self.chunks):
            self.read += 1
            yield block


# --- signed notes (c2sp.org/signed-note "Signatures") --------------------------------------


def test_a_key_that_signed_twice_is_one_verified_signature() -> None:
    """Two cosignature/v1 lines of one witness (other timestamps: both valid) were both returned
    as verified signatures: a caller counting them counted one witness twice. The tuple of key
    name and key ID identifies the key; Go's note.Open keeps the first."""
    w1 = NoteSigner.generate("w.example/1", SIG_TYPE_COSIGNATURE_V1)
    w2 = NoteSigner.generate("w.example/2", SIG_TYPE_COSIGNATURE_V1)
    sigs = (w1.sign(TEXT, timestamp=100), w1.sign(TEXT, timestamp=200), w2.sign(TEXT, timestamp=100))
    note = Note(TEXT, sigs).to_bytes()
    _, verified = open_note(note, [w1.verifier, w2.verifier])
    assert verified == [sigs[0], sigs[2]]
    _, only = open_note(note, [w1.verifier])
    assert only == [sigs[0]]
    # an identical line twice (the case handled before) stays one as well
    _, same = open_note(Note(TEXT, (sigs[0], sigs[0])).to_bytes(), [w1.verifier])
    assert same == [sigs[0]]


def test_a_signature_by_the_same_key_under_another_name_is_ignored() -> None:
    """The key ID covers the name (SHA-256(name || 0x0A || type || key)): the log's own private
    key signing under another name is another key, ignored, and the note has no signature by
    the pinned one."""
    log = NoteSigner.generate(ORIGIN)
    alias = NoteSigner(f"{ORIGIN}-alias", log._key)  # the same Ed25519 key, another name
    note = Note(TEXT, (alias.sign(TEXT),)).to_bytes()
    with pytest.raises(UnknownKeyError):
        open_checkpoint(note, log.verifier)
    # The line with the pinned key's name but the alias's key ID: unknown too (name and ID).
    forged = Note(TEXT, (type(alias.sign(TEXT))(ORIGIN, alias.key_id, alias.sign(TEXT).signature),))
    with pytest.raises(UnknownKeyError):
        open_checkpoint(forged.to_bytes(), log.verifier)


@pytest.mark.parametrize(
    "size_line", ["+5", " 5", "5 ", "05", "00", "5\r", "５", "²", "0x5", "5e0", "-0", "", "1_0"]
)
def test_checkpoint_sizes_are_plain_ascii_decimals(size_line: str) -> None:
    """tlog-checkpoint "Note text" 2: ASCII decimal, no leading zeroes (unless 0)."""
    with pytest.raises(ParseError):
        Checkpoint.from_text(f"{ORIGIN}\n{size_line}\n{base64.b64encode(ROOT).decode()}\n")


@pytest.mark.parametrize(
    "root_line",
    [
        base64.b64encode(ROOT + b"\x00").decode(),  # 33 bytes
        base64.b64encode(ROOT[:31]).decode(),  # 31 bytes
        base64.b64encode(ROOT).decode().rstrip("="),  # unpadded
        base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode(),  # URL-safe alphabet
        base64.b64encode(ROOT).decode()[:-2] + "B=",  # non-zero padding bits: not canonical
        " " + base64.b64encode(ROOT).decode(),
    ],
)
def test_checkpoint_roots_are_canonical_base64_of_32_bytes(root_line: str) -> None:
    with pytest.raises(ParseError):
        Checkpoint.from_text(f"{ORIGIN}\n5\n{root_line}\n")


def test_checkpoint_text_and_signature_block_take_nothing_more() -> None:
    log = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), log)
    assert open_checkpoint(note, log.verifier).checkpoint.size == 5
    for bad in (
        note + b"trailing garbage\n",  # after the signatures
        note + b"\n",  # a blank line after them: then the signatures are text, none follows
        note[:-1],  # no final newline
        note.replace(b"\xe2\x80\x94 ", b"-- "),  # not an em dash
        note.replace(b"\xe2\x80\x94 ", b"\xe2\x80\x93 "),  # an en dash
    ):
        with pytest.raises((ParseError, UnknownKeyError)):
            open_checkpoint(bad, log.verifier)
    # An empty extension line (a blank line inside the text) is not a checkpoint.
    with pytest.raises(ParseError):
        Checkpoint.from_text(TEXT + "\next\n")


# --- the auditor's HTTP client ---------------------------------------------------------------


def test_the_auditors_client_reads_no_further_than_the_largest_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HttpLogClient read a whole answer into memory and only then compared it with
    MAX_RESOURCE (16 MiB): a hostile log server could make the auditor read without bound."""
    monkeypatch.setattr(ledger_http, "MAX_RESOURCE", 4 * 65536)
    stream = _Stream(64)  # 4 MiB offered
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, stream=stream))
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    with pytest.raises(NetworkError, match="larger than 262144 bytes"):
        client.fetch("tile/0/000")
    assert stream.read == 5  # stopped at the first chunk past the limit
    declared = _Stream(64)
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, headers={"content-length": str(10**12)}, stream=declared)
    )
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    with pytest.raises(NetworkError, match="declares"):
        client.fetch("checkpoint")
    assert declared.read == 0
    # within the limit: read, and a 404 is None
    ok = httpx2.MockTransport(
        lambda request: httpx2.Response(404 if request.url.path.endswith("missing") else 200, content=b"ok")
    )
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=ok))
    assert client.fetch("checkpoint") == b"ok"
    assert client.fetch("missing") is None


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        (b'{"error": {"class": "AccessDeniedError", "message": "entry bundles are not public"}}',
         "tile/entries/000", AccessDeniedError),
        (b"<html>403 Forbidden</html>", "tile/entries/000", NetworkError),  # a proxy's, say
        (b'{"error": {"class": "UsageError", "message": "x"}}', "tile/entries/000", NetworkError),
        (b"\xff\xfe", "tile/entries/000", NetworkError),
        (b"[" * 200_000, "tile/entries/000", NetworkError),  # json: RecursionError, not ValueError
        (b'{"error": {"class": "AccessDeniedError", "message": "x"}}', "tile/0/000", NetworkError),
    ],
)  # fmt: skip
def test_only_the_cas_refusing_entry_bundles_is_reported_as_such(
    body: bytes, path: str, expected: type[Exception]
) -> None:
    """`ledger verify --full` at a CAS: its 403 AccessDeniedError for tile/entries/ means that this
    log serves no entries (--log-db); any other 403 stays an HTTP failure that says its status."""
    transport = httpx2.MockTransport(lambda request: httpx2.Response(403, content=body))
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    with pytest.raises(expected) as raised:
        client.fetch(path)
    assert type(raised.value) is expected
    if expected is AccessDeniedError:
        assert "--log-db" in str(raised.value)
    else:
        assert "HTTP 403, expected 200" in str(raised.value)


# --- the log's witness client ----------------------------------------------------------------


def _log(path: Path, signer: NoteSigner, n: int) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [f"e-{i}".encode() for i in range(n)])
    Ledger().sign_checkpoint(conn, signer)
    return conn


def test_the_log_reads_a_witness_answer_no_further_than_a_note(tmp_path: Path) -> None:
    """request_cosignatures (the CAS's checkpointer and witness quorum, and `ledger
    request-cosignature`) read a witness's whole answer: one hostile witness could make the CAS
    read without bound. An answer is signature lines (or a size): at most a note's 1 MiB."""
    conn = _log(tmp_path / "log.db", NoteSigner.generate(ORIGIN), 3)
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    chunks = 4 * MAX_NOTE_SIZE // 65536
    stream = _Stream(chunks)
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(200, stream=stream)))
    with pytest.raises(NetworkError, match="larger than 1048576 bytes"):
        request_cosignatures(conn, "http://witness.test", key, client=http)
    assert stream.read == MAX_NOTE_SIZE // 65536 + 1
    conn.close()


# --- the witness (c2sp.org/tlog-witness "add-checkpoint") ------------------------------------


def test_the_witness_refuses_a_tree_of_size_0_with_another_root(tmp_path: Path) -> None:
    """RFC 9162 §2.1.1: the tree of size 0 has the root SHA-256(). A checkpoint of size 0 with
    any other root was cosigned (the witness's first checkpoint of a log is taken as it is), and
    every later proof from it accepted: verify_consistency took any root for size 0."""
    log = NoteSigner.generate(ORIGIN)
    witness = Witness(NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1), tmp_path / "w.json",
                      {ORIGIN: log.verifier})  # fmt: skip
    at = datetime(2026, 12, 6, tzinfo=UTC)
    bogus = sign_checkpoint(Checkpoint(ORIGIN, 0, ROOT), log)
    with pytest.raises(ConsistencyError, match="size 0"):
        witness.add_checkpoint(0, [], bogus, at=at)
    assert witness.latest(ORIGIN) is None  # nothing remembered
    witness.add_checkpoint(0, [], sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), log), at=at)
    leaves = [b"a", b"b", b"c"]
    witness.add_checkpoint(0, [], sign_checkpoint(Checkpoint(ORIGIN, 3, mth(leaves)), log), at=at)
    assert witness.latest(ORIGIN) == Checkpoint(ORIGIN, 3, mth(leaves))


# --- confide ledger history|accesses (confide.cas.audit.verified_events) ---------------------

POLICY = "team/db"
TIME = "2026-12-06T07:00:00.000000Z"


class _FakeCas:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def events(self, name: str, identity: Any) -> Any:
        return self.answer


def _events(tmp_path: Path) -> tuple[NoteVerifier, dict[str, Any]]:
    """A log of four entries of POLICY, a checkpoint of it, and the CAS's answer as
    ``Cas.events_for`` writes it (index, type, payload, entry, inclusion proof)."""
    signer = NoteSigner.generate(ORIGIN)
    conn = connect(tmp_path / "log.db")
    Ledger.init_schema(conn)
    entries = [
        encode_entry(EntryType.POLICY_CREATED, TIME, POLICY, {"hash": "aa" * 32, "n": 0})[0],
        encode_entry(EntryType.SECRET_RELEASED, TIME, POLICY, {"service": "s", "secrets": [], "n": 1})[0],
        encode_entry(EntryType.SECRET_RELEASED, TIME, POLICY, {"service": "s", "secrets": [], "n": 2})[0],
        encode_entry(EntryType.POLICY_UPDATED, TIME, POLICY, {"hash": "bb" * 32, "n": 3})[0],
    ]
    with write_transaction(conn):
        Ledger().append_batch(conn, entries)
    note = Ledger().sign_checkpoint(conn, signer)
    types = ["policy-created", "secret-release", "secret-release", "policy-updated"]
    events = []
    for index, (entry, type_) in enumerate(zip(entries, types, strict=True)):
        payload = json.loads(entry)["payload"]
        proof = [h.hex() for h in Ledger().inclusion_proof(conn, index, len(entries))]
        events.append({"seq": index + 1, "index": index, "at": TIME, "type": type_, "payload": payload,
                       "entry": base64.b64encode(entry).decode(), "inclusion_proof": proof})  # fmt: skip
    conn.close()
    return signer.verifier, {"checkpoint": note.decode(), "size": len(entries), "events": events}


def test_history_events_verify_as_sent(tmp_path: Path) -> None:
    key, answer = _events(tmp_path)
    signed, events = verified_events(_FakeCas(answer), POLICY, None, key)  # type: ignore[arg-type]
    assert signed is not None and signed.checkpoint.size == 4
    assert [(e.index, e.type, e.included) for e in events] == [
        (0, "policy.created", True), (1, "secret.released", True), (2, "secret.released", True),
        (3, "policy.updated", True),
    ]  # fmt: skip


def test_an_event_sent_twice_or_out_of_order_is_refused(tmp_path: Path) -> None:
    """The CAS could send one release (or approval) twice, each with its valid inclusion proof:
    `ledger accesses` then listed two accesses where the log holds one."""
    key, answer = _events(tmp_path)
    events = answer["events"]
    for listed in ([events[0], events[1], events[1], events[3]], [events[0], events[2], events[1]]):
        with pytest.raises(EntryMismatchError, match="indices must increase"):
            verified_events(_FakeCas({**answer, "events": listed}), POLICY, None, key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "proof",
    ["zz", ["zz" * 32], [5], ["ab" * 31], ["ab" * 32 + " "], ["AB" * 32], ["ab" * 32] * 64, {"a": 1}, None],
)
def test_a_malformed_inclusion_proof_is_a_parse_error(tmp_path: Path, proof: Any) -> None:
    """bytes.fromhex() of a CAS's proof element raised ValueError or TypeError: a traceback."""
    key, answer = _events(tmp_path)
    answer["events"][2]["inclusion_proof"] = proof
    with pytest.raises(ParseError, match="entry 2: the inclusion proof"):
        verified_events(_FakeCas(answer), POLICY, None, key)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", ["1", 1.0, True, -1, None, [1]])
def test_an_index_that_is_not_a_natural_number_is_a_parse_error(tmp_path: Path, index: Any) -> None:
    """int() took "1", 1.9 and True for index 1 (and -1 was only refused by the proof check)."""
    key, answer = _events(tmp_path)
    answer["events"] = [answer["events"][0], {**answer["events"][1], "index": index}]
    with pytest.raises(ParseError, match="without its ledger entry"):
        verified_events(_FakeCas(answer), POLICY, None, key)  # type: ignore[arg-type]


def test_a_proof_of_another_entry_or_size_is_refused(tmp_path: Path) -> None:
    """Each event's entry is proven at its own index in the signed tree: another event's proof,
    or its entry at another index, does not verify."""
    key, answer = _events(tmp_path)
    events = answer["events"]
    swapped = [events[0], {**events[1], "inclusion_proof": events[2]["inclusion_proof"]}]
    with pytest.raises(EntryMismatchError, match="inclusion proof"):
        verified_events(_FakeCas({**answer, "events": swapped}), POLICY, None, key)  # type: ignore[arg-type]
    moved = [events[0], {**events[2], "index": 1}]
    with pytest.raises(EntryMismatchError, match="inclusion proof"):
        verified_events(_FakeCas({**answer, "events": moved}), POLICY, None, key)  # type: ignore[arg-type]


def test_the_cas_answer_must_be_an_object_with_a_list(tmp_path: Path) -> None:
    key, answer = _events(tmp_path)
    for bad in ([], "x", {**answer, "events": {"0": answer["events"][0]}}):
        with pytest.raises(ParseError):
            verified_events(_FakeCas(bad), POLICY, None, key)  # type: ignore[arg-type]
    parse_note(answer["checkpoint"].encode())  # the fixture's checkpoint itself is well formed


@pytest.mark.parametrize("wait", ["²", "9" * 5000, "1.5", "-1", "11", "٩٩"])
def test_a_retry_after_that_is_not_a_small_ascii_number_is_a_network_error(wait: str) -> None:
    """HttpLogClient waited out a 429's Retry-After when str.isdigit() said so: "²" and 5,000
    nines passed that test and int() raised ValueError (a traceback of `ledger verify --url`).
    RFC 9110 §10.2.3: delay-seconds is 1*DIGIT (ASCII); over 10 s is refused."""
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(429, headers=[(b"retry-after", wait.encode())], content=b"")
    )
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    with pytest.raises(NetworkError, match="429"):
        client.fetch("checkpoint")


@pytest.mark.parametrize("port", ["²", "9" * 5000, "٩٩٩٩٩٩", "65536", "", "80a"])
def test_a_listen_port_that_is_not_an_ascii_number_is_a_usage_error(port: str) -> None:
    """`ledger serve --listen 127.0.0.1:²` was a ValueError traceback (str.isdigit()). (No port
    here is one the old code would bind: this test must not start a server when it fails.)"""
    from click.testing import CliRunner

    from confide.ledger.cli import ledger

    result = CliRunner().invoke(ledger, ["serve", "--log-db", __file__, "--listen", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert "expected HOST:PORT" in result.output
    assert not isinstance(result.exception, ValueError)


def test_the_witness_answers_a_proof_to_the_same_size_with_422_not_a_fork(tmp_path: Path) -> None:
    """tlog-witness: a checkpoint of the size cosigned last with another root is a 409 (fork);
    with the same root and a non-empty proof it was a 409 too, which the log's client reads as
    "forked" (LogRollbackError, a halted CAS). A proof from a size to itself is empty
    (RFC 9162 §2.1.4): one that is not does not verify, a 422."""
    from confide.ledger.witness import WitnessConflictError, http_status

    log = NoteSigner.generate(ORIGIN)
    witness = Witness(NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1), tmp_path / "w.json",
                      {ORIGIN: log.verifier})  # fmt: skip
    at = datetime(2026, 12, 6, tzinfo=UTC)
    leaves = [b"a", b"b", b"c"]
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, mth(leaves)), log)
    witness.add_checkpoint(0, [], note, at=at)
    with pytest.raises(ConsistencyError, match="to itself") as info:
        witness.add_checkpoint(3, [EMPTY_ROOT], note, at=at)
    assert not isinstance(info.value, WitnessConflictError)
    assert http_status(info.value) == 422
    with pytest.raises(WitnessConflictError) as conflict:
        witness.add_checkpoint(
            3, [], sign_checkpoint(Checkpoint(ORIGIN, 3, mth([b"x", b"b", b"c"])), log), at=at
        )
    assert http_status(conflict.value) == 409
    witness.add_checkpoint(3, [], note, at=at)  # the same checkpoint again: cosigned


@pytest.mark.parametrize("command", ["checkpoint", "request-cosignature"])
def test_a_missing_log_database_is_a_usage_error_and_not_created(tmp_path: Path, command: str) -> None:
    """`ledger checkpoint --log-db typo.db` created an empty database and signed the empty tree
    with the log's key (a checkpoint of another log than the one meant); `request-cosignature`
    created one too before failing."""
    from click.testing import CliRunner

    from confide.ledger.cli import ledger

    key = tmp_path / "log.key"
    key.write_text(NoteSigner.generate(ORIGIN).skey + "\n")
    witness = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier.vkey
    missing = tmp_path / "typo.db"
    args = {
        "checkpoint": ["checkpoint", "--log-db", str(missing), "--signing-key", str(key)],
        "request-cosignature": ["request-cosignature", "--log-db", str(missing), "--witness-url",
                                "http://127.0.0.1:9", "--witness-key", witness],
    }[command]  # fmt: skip
    result = CliRunner().invoke(ledger, args)
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output
    assert not missing.exists()


class _PrunedPartials:
    """A tlog-tiles log that deleted every partial tile and bundle whose full one exists (the
    spec allows it), serving an older checkpoint (as a cache would)."""

    def __init__(self, inner: Any, checkpoint: bytes) -> None:
        self.inner, self.checkpoint = inner, checkpoint

    def fetch(self, path: str) -> bytes | None:
        if path == "checkpoint":
            return self.checkpoint
        if ".p/" in path and self.inner.fetch(path.partition(".p/")[0]) is not None:
            return None
        return self.inner.fetch(path)


def test_the_auditor_takes_a_full_tile_for_a_deleted_partial_one(tmp_path: Path) -> None:
    """tlog-tiles "Partial Tiles": a log MAY delete a partial tile once the full tile is
    available, and clients may fetch the full one. The auditor asked only for the partial tile
    and reported a fork (ConsistencyError, exit 61) for a log that did so."""
    from confide.ledger.auditor import LocalLogClient, audit_once

    signer = NoteSigner.generate(ORIGIN)
    conn = connect(tmp_path / "log.db")
    Ledger.init_schema(conn)
    entries = [encode_entry(EntryType.CAS_STARTED, TIME, None, {"n": i})[0] for i in range(600)]
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[:300])
    old = Ledger().sign_checkpoint(conn, signer)
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[300:])
    Ledger().sign_checkpoint(conn, signer)
    client = _PrunedPartials(LocalLogClient(conn), old)
    assert client.fetch("tile/0/001.p/44") is None and client.fetch("tile/entries/001.p/44") is None
    _, signed = audit_once(client, signer.verifier, None, full=True)
    assert signed.checkpoint.size == 300
    # Neither the partial tile nor the full one: missing, as before.
    inner = LocalLogClient(conn)

    class _NoTile1:
        def fetch(self, path: str) -> bytes | None:
            return None if path.startswith("tile/0/001") else inner.fetch(path)

    with pytest.raises(ConsistencyError, match=r"does not serve tile/0/001\.p/44"):
        audit_once(_PrunedPartials(_NoTile1(), old), signer.verifier, None)
    conn.close()


# --- entries: one encoding per event, fork at equal sizes -------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        b'{"payload":{"n":1,"n":2},"policy":null,"time":"' + TIME.encode() + b'","type":"cas.started","v":1}',
        b'{"payload":{"n":1,"\\u006e":2},"policy":null,"time":"'
        + TIME.encode()
        + b'","type":"cas.started","v":1}',
        b'{"payload":{"n":1.0},"policy":null,"time":"' + TIME.encode() + b'","type":"cas.started","v":1}',
        b'{"payload":{"n":1},"policy":null,"time":"' + TIME.encode() + b'","type":"cas.started","v":1.0}',
        b'{"payload":{"n":1},"policy":null,"time":"' + TIME.encode() + b'","type":"cas.started","v":true}',
        b'{"payload":{"n":1}, "policy":null,"time":"' + TIME.encode() + b'","type":"cas.started","v":1}',
        b'{"policy":null,"payload":{"n":1},"time":"' + TIME.encode() + b'","type":"cas.started","v":1}',
        b'{"payload":{"n":1},"policy":null,"time":"' + TIME.encode() + b'","type":"cas.\\u0073tarted","v":1}',
        b'\xef\xbb\xbf{"payload":{"n":1},"policy":null,"time":"'
        + TIME.encode()
        + b'","type":"cas.started","v":1}',
    ],
)
def test_an_entry_has_one_encoding(variant: bytes) -> None:
    """RFC 8785: an event is one byte string, so one leaf; duplicate names (also escaped), a
    float for an integer, a boolean for the version, spacing, member order, needless escapes and
    a byte order mark are refused rather than read as the same event."""
    from confide.ledger.encoding import Entry

    canonical = encode_entry(EntryType.CAS_STARTED, TIME, None, {"n": 1})[0]
    assert Entry.from_bytes(canonical).to_bytes() == canonical
    with pytest.raises(ParseError):
        Entry.from_bytes(variant)


def test_two_checkpoints_of_one_size_with_different_roots_are_a_fork() -> None:
    from confide.ledger.auditor import verify_checkpoint_update

    log = NoteSigner.generate(ORIGIN)
    old = Checkpoint(ORIGIN, 3, mth([b"a", b"b", b"c"]))
    other = sign_checkpoint(Checkpoint(ORIGIN, 3, mth([b"a", b"x", b"c"])), log)
    with pytest.raises(ConsistencyError, match="fork: two different roots for tree size 3"):
        verify_checkpoint_update(old, other, [], log.verifier)
    smaller = sign_checkpoint(Checkpoint(ORIGIN, 2, mth([b"a", b"b"])), log)
    with pytest.raises(RollbackError):
        verify_checkpoint_update(old, smaller, [], log.verifier)


def test_a_key_file_is_read_as_a_small_regular_file(tmp_path: Path) -> None:
    """``--key FILE`` (``ledger verify``, ``history``, ``accesses``; ``--witness``, ``--log``,
    ``--signing-key``) was read with ``read_text``: a FIFO was waited on for ever, a binary file
    was a UnicodeDecodeError traceback (exit 1) and a file of any size was read whole. Each is a
    UsageError (exit 2) at once."""
    import os
    import threading

    from click.testing import CliRunner

    from confide.ledger.cli import ledger

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00" * 10)
    huge = tmp_path / "huge"
    huge.write_bytes(b"a" * (2 << 20))
    for path, message in [(fifo, "not a regular file"), (binary, "not UTF-8"), (huge, "larger than")]:
        outcome: list[Any] = []

        def run(key: Path = path) -> None:
            outcome.append(CliRunner().invoke(ledger, ["verify", "--log-db", "unused.db", "--key", str(key)]))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10.0)
        if thread.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
            thread.join(10.0)
            pytest.fail(f"waited on {path.name}")
        result = outcome[0]
        assert result.exit_code == 2, (path.name, result.output, result.exception)
        assert message in result.output, path.name
