"""Hostile or broken witness answers to ``cas serve --witness-quorum`` (review of
docs/adr/0005-witness-quorum.md): a 409 whose size is not ASCII digits, a 200 whose body is more
than signature lines (c2sp.org/tlog-witness "add-checkpoint": "one or more note signature
lines"), a cosignature replayed to refresh ``--witness-max-lag``, and a halt that happens while
a POST's body is still arriving. The witness is an ``httpx2.MockTransport`` signing with a real
cosignature/v1 key, so each answer is exactly what the test says; logs in SQLite files."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cas_inproc import sim_policy, submission
from confide import errors
from confide.cas.app import create_app
from confide.cas.server import prepare
from confide.cas.witness_quorum import WitnessGuard, WitnessQuorum
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import parse_add_checkpoint
from confide.ledger.witness_http import request_cosignatures

ORIGIN = "cas.example/log"
URL = "http://witness.test"


def _log(path: Path) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    return conn


def _grow(conn: Any, signer: NoteSigner, tag: str, n: int) -> bytes:
    with write_transaction(conn):
        Ledger().append_batch(conn, [f"{tag}-{i}".encode() for i in range(n)])
    return Ledger().sign_checkpoint(conn, signer)


def _client(answer: Callable[[str], httpx2.Response]) -> httpx2.Client:
    """A client whose witness answers ``answer(checkpoint text)`` to every add-checkpoint."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        _old, _proof, note = parse_add_checkpoint(request.content)
        return answer(parse_note(note).text)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("size", ["²", "①", "٣"])
def test_a_409_size_that_is_not_ascii_digits_is_a_network_error(tmp_path: Path, size: str) -> None:
    """str.isdigit() accepts superscripts, circled and Arabic-Indic digits; int() refuses the
    first two (a ValueError that aborted the whole round, the other witnesses not asked, and at
    startup a traceback) and reads the third. tlog-witness: the body is the size "in decimal"."""
    log_signer = NoteSigner.generate(ORIGIN)
    conn = _log(tmp_path / "log.db")
    _grow(conn, log_signer, "e", 3)
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    reply = httpx2.Response(409, content=f"{size}\n".encode(), headers={"content-type": "text/x.tlog.size"})
    with pytest.raises(errors.NetworkError, match="expected a number"):
        request_cosignatures(conn, URL, key, client=_client(lambda _text: reply))


def test_a_cosignature_of_another_text_is_not_counted_or_stored(tmp_path: Path) -> None:
    """The answer is appended to the checkpoint and opened as a note: a body with a blank line
    of its own moved the note's text past the checkpoint, so the witness's cosignature of *that*
    text verified, was counted towards the quorum and stored with the checkpoint (where it
    does not verify)."""
    log_signer = NoteSigner.generate(ORIGIN)
    witness = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1)
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, log_signer, "e", 3)  # the checkpoint as sent: the log's signature only

    def answer(_text: str) -> httpx2.Response:
        extra = "\nsomething else\n"  # a blank line, then more text
        text = parse_note(note).text + "\n" + parse_note(note).signatures[0].line() + extra
        return httpx2.Response(200, content=(extra + "\n" + witness.sign(text, timestamp=1).line()).encode())

    guard = WitnessGuard(WitnessQuorum(((URL, witness.verifier),), 1), monotonic=Monotonic())
    outcome = guard.round(conn, note, _client(answer))
    assert (outcome.cosigned, guard.quorum_size) == (0, -1)
    assert outcome.failures and "signature lines" in outcome.failures[0][2]
    assert Ledger.checkpoint_note(conn, 3) == note  # nothing stored with it

    # Its negative twin: the same witness answering one cosignature line of the checkpoint.
    def good(text: str) -> httpx2.Response:
        return httpx2.Response(200, content=witness.sign(text, timestamp=1).line().encode())

    assert guard.round(conn, note, _client(good)).cosigned == 1 and guard.quorum_size == 3


def test_a_replayed_cosignature_does_not_refresh_max_lag(tmp_path: Path) -> None:
    """With --witness-max-lag a quiet log is cosigned again every half bound, to show that the
    witnesses still see it. The checkpoint text is the same each time, so the witness's earlier
    answer (its cosignature, with its earlier timestamp) verifies again: replayed by whoever is
    on the path to a firewalled witness, it kept the quorum 'fresh' forever. A re-cosignature of
    the same checkpoint counts only with a later timestamp than the one the witness gave."""
    log_signer = NoteSigner.generate(ORIGIN)
    witness = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1)
    clock = Monotonic()
    guard = WitnessGuard(WitnessQuorum(((URL, witness.verifier),), 1, max_lag=60), monotonic=clock)
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, log_signer, "e", 2)
    stamp = [1_700_000_000]

    def answer(text: str) -> httpx2.Response:
        return httpx2.Response(200, content=witness.sign(text, timestamp=stamp[0]).line().encode())

    client = _client(answer)
    assert guard.round(conn, note, client).cosigned == 1 and guard.refusal() is None
    clock.now += 50
    assert guard.due(2)
    replayed = guard.round(conn, note, client)  # the same cosignature again
    assert replayed.cosigned == 0 and "not later than" in replayed.failures[0][2]
    clock.now += 11  # 61 s since the only fresh cosignature
    refusal = guard.refusal()
    assert isinstance(refusal, errors.NetworkError) and "61 s old" in refusal.message
    stamp[0] += 61  # the witness cosigns it again, now
    assert guard.round(conn, note, client).cosigned == 1 and guard.refusal() is None
    # A new checkpoint is a new text: its first cosignature counts whatever its timestamp.
    stamp[0] -= 5
    new = _grow(conn, log_signer, "f", 1)
    assert guard.round(conn, new, client).cosigned == 1 and guard.quorum_size == 3


def test_a_halt_while_a_posts_body_arrives_refuses_it(tmp_path: Path) -> None:
    """The guard was asked before the body was read (up to --body-timeout, 30 s): a POST whose
    head came before a witness's fork answer and whose body came after was served, a change
    made on the database the witness said was forked. It is asked again once the body is in."""
    cas, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    guard = WitnessGuard(WitnessQuorum(((URL, key),), 1))
    app = create_app(cas, witness_guard=guard)
    body = json.dumps(submission(cas, sim_policy()))

    def post(halt: bool) -> tuple[int, bytes]:
        out: list[dict[str, Any]] = []
        sent = [False]

        async def receive() -> dict[str, Any]:
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            if halt:  # the witness's fork answer arrives while the body is on its way
                guard.halted = "witness w.example cosigned another tree of size 5 (forked)"
            return {"type": "http.request", "body": body.encode(), "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            out.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "https", "path": "/v1/policies", "raw_path": b"/v1/policies", "root_path": "",
            "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        asyncio.run(app(scope, receive, send))
        status = next(m["status"] for m in out if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")

    status, reply = post(halt=True)
    assert status == 503, reply
    assert re.search(r"LogRollbackError|forked", reply.decode())
    guard.halted = None  # its negative twin: no halt, the same POST is served
    status, reply = post(halt=False)
    assert status == 200, reply


def test_a_quorums_age_counts_from_before_the_first_witness_was_asked(tmp_path: Path) -> None:
    """The witnesses are asked one after the other (each up to 10 s, a 409 retried up to three
    times): the first cosignature of a round can be much older than its end. A quorum's age was
    measured from the round's end, so --witness-max-lag let a quorum whose first cosignature was
    older than the bound count as recent. It is measured from the round's start (no cosignature
    of the round is older)."""
    log_signer = NoteSigner.generate(ORIGIN)
    first = NoteSigner.generate("w1.example", SIG_TYPE_COSIGNATURE_V1)
    slow = NoteSigner.generate("w2.example", SIG_TYPE_COSIGNATURE_V1)
    clock = Monotonic()
    specs = (("http://w1.test", first.verifier), ("http://w2.test", slow.verifier))
    guard = WitnessGuard(WitnessQuorum(specs, 2, max_lag=30), monotonic=clock, wall=lambda: clock.now)
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, log_signer, "e", 2)

    def handler(request: httpx2.Request) -> httpx2.Response:
        _old, _proof, sent = parse_add_checkpoint(request.content)
        text = parse_note(sent).text
        if request.url.host == "w2.test":
            clock.now += 25  # the second witness answers 25 s after the first cosigned
            return httpx2.Response(200, content=slow.sign(text, timestamp=int(clock.now)).line().encode())
        return httpx2.Response(200, content=first.sign(text, timestamp=int(clock.now)).line().encode())

    started = clock.now
    assert guard.round(conn, note, httpx2.Client(transport=httpx2.MockTransport(handler))).cosigned == 2
    assert guard.quorum_at == started and guard.quorum_wall == started and guard.age() == 25.0
    clock.now += 6  # the first cosignature is 31 s old
    refusal = guard.refusal()
    assert isinstance(refusal, errors.NetworkError) and "the newest is 31 s old" in refusal.message
