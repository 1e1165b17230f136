"""Bounded mutation tests of the hostile-input surfaces added with the witness quorum, the
successor board's documents, the DCAP TCB evaluation floor and the CA-signed OCSP responder (the
fuzz8 mutation campaign, CHANGELOG, which ran them at larger counts). Every mutation is drawn
from a ``random.Random`` with a fixed seed (``fuzz8/<surface>/<kind>``), so a failure reproduces
exactly. ``CONFIDE_MUTATION_SCALE=N`` multiplies every count by N.

Invariants:

- witness answers (:func:`~confide.ledger.witness_http.request_cosignatures`, through
  :class:`~confide.cas.witness_quorum.WitnessGuard`): an answer mutated from a real witness's
  is a cosignature only if it verifies under the witness's key for the checkpoint asked (and
  only then is it stored); anything else raises a :class:`~confide.errors.ConfideError`, a
  :class:`~confide.errors.LogRollbackError` only for a 409 or 422 (the witness's word);
- witness and tiles servers (the ASGI apps of ``ledger witness serve`` and ``ledger serve``):
  every request gets a 4xx or the honest answer, never a 5xx, and the witness's state changes
  only with a 200 for a checkpoint the log signed;
- successor-board documents (successor, board-change, retirement approvals, withdrawals) through
  the API: never 5xx; taken only when a member would have signed them so (the oracle); a refusal
  changes no approval row; stored rows edited to anything SQLite keeps: the ``show`` routes and
  a new approval answer 200 or 503, never 500, and an edited row never counts for more;
- DCAP collateral: no byte edit of a signed TCB Info or QE Identity verifies; values edited and
  signed again under a test PKI verify only with the numbers of their texts and, when dcap-qvl
  (a peer) takes them too, its TCB status; the CAS's floor file loads only when it is what the
  CAS writes, and never hangs;
- OCSP for a CA that signs its own responses: every answer is what the request calls for
  (fuzz4's oracle), signed by the CA's key; stored revocation records edited: never ``good`` of
  a revoked serial nor ``revoked`` of a good one (``tryLater`` instead), restored: the truth
  again; owners' revocation requests mutated: carried out only when well formed and the owner's,
  the records authenticating after each.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
import dcap_qvl._dcap_qvl as qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from test_cas_ocsp import _call, ca_id
from test_cas_successor_release import board_cas, people
from test_mutation_ocsp_keyrelease_public import (
    ALL_PUBLIC,
    Truth,
    _ours,
    expected_ocsp,
    mutate_der,
    ocsp_request,
    truth_of,
)
from test_mutation_revocation_admin_crl import (
    base_body,
    mutate_body,
    post,
    revocation_state,
    signed_or_not,
    well_formed,
)

from asgi_call import call
from confide import errors, jsonstrict
from confide.cas.app import create_app
from confide.cas.board_change import CHANGE_TYPE
from confide.cas.core import sign_document
from confide.cas.db import Database, raw_execute
from confide.cas.ocsp_der import ParsedRequest, parse_ocsp_request
from confide.cas.ocsp_responder import MAX_REQUEST, OcspResponder
from confide.cas.public_http import PublicApp
from confide.cas.retirement import RETIREMENT_TYPE
from confide.cas.revocation_auth import verified_rows
from confide.cas.secrets import Sealer
from confide.cas.successor import APPROVAL_TYPE, WITHDRAWAL_TYPE
from confide.cas.successor_board import board_from_json
from confide.cas.tcb_floor import EVENT_ALTERED, FLOOR_FILE, TcbEvaluationFloor, floor_mac
from confide.cas.witness_quorum import WitnessGuard, WitnessQuorum
from confide.evidence.dcap_collateral import DcapCollateral
from confide.identity import Identity
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.http import TilesApp
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, NoteVerifier, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from confide.ledger.witness_http import SIZE_CONTENT_TYPE, WitnessApp, request_cosignatures
from confide.policy.canonical import jcs
from confide.verify.dcap import DcapVerifier, verify_quote
from crl_env import T0, Env, policy, started
from dcap_cases import CASES
from dcap_forge import ForgedPki

__all__ = ["board_cas", "people"]  # fixtures, re-used

SCALE = int(os.environ.get("CONFIDE_MUTATION_SCALE", "1"))
S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus
ORIGIN = "cas.example/log"

HOSTILE_TOKENS = [
    b"", b"\n", b"\n\n", b"\r\n", b"\x00", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b" ", b"\t", b"+",
    "—".encode(), "— ".encode(), b"=", b"==", b"0", b"-1", b"\xc2\xb2", "\u0663".encode(),
    "\uff11".encode(), b"9" * 25, b"18446744073709551616", b"9223372036854775808", b"1e3", b"0x10",
    b"00", b"007", b"NaN", b"{", b"[]", b"null", b"\\u0000", b"\xe2\x80\xa8",
]  # fmt: skip


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to three byte-level edits: flips, cuts, hostile tokens inserted or replacing a span,
    lines duplicated, dropped or swapped."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out = out[:at] if rng.random() < 0.5 else out[at:]
        elif op == 2:
            out[at:at] = rng.choice(HOSTILE_TOKENS)
        elif op == 3:
            end = min(len(out), at + rng.randrange(1, 12))
            out[at:end] = rng.choice(HOSTILE_TOKENS)
        elif op in (4, 5, 6):
            lines = bytes(out).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 4:
                lines.insert(i, lines[j])
            elif op == 5 and len(lines) > 1:
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            out = bytearray(b"\n".join(lines))
        else:
            out += rng.randbytes(rng.randrange(1, 40))
    return bytes(out)


# --- witness answers, read by the CAS ------------------------------------------------------------


def _log(path: Path) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    return conn


def _grow(conn: Any, signer: NoteSigner, tag: str, n: int) -> bytes:
    if n:
        with write_transaction(conn):
            Ledger().append_batch(conn, [f"{tag}-{i}".encode() for i in range(n)])
    return Ledger().sign_checkpoint(conn, signer)


class MutatingWitness:
    """An httpx2 transport in front of a real :class:`Witness` (its ASGI app's answer), whose
    answer is mutated with probability ``rate``: the status, the content type, the body (bytes
    edited, or another witness's or an older answer, or a 409 with a hostile size)."""

    def __init__(self, witness: Witness, rng: random.Random, rate: float) -> None:
        self.app = WitnessApp(witness, prefix="", limiter=None)
        self.rng, self.rate = rng, rate
        self.answers: list[tuple[int, bytes, bytes]] = []  # (status, body, content type) sent
        self.honest: list[int] = []  # the honest statuses
        self.older: list[bytes] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        status, body, ctype, _origin = self.app._add_checkpoint(request.read())
        self.honest.append(status)
        if status == 200:
            self.older.append(body)
        rng = self.rng
        if rng.random() < self.rate:
            roll = rng.randrange(7)
            if roll == 0:
                status = rng.choice([200, 201, 204, 400, 403, 404, 409, 422, 429, 500, 503])
            elif roll == 1:
                ctype = rng.choice([b"", SIZE_CONTENT_TYPE.encode(), b"text/plain", b"text/x.tlog.sizeX"])
            elif roll == 2 and self.older:
                body = rng.choice(self.older)
            elif roll == 3:
                status, ctype = 409, SIZE_CONTENT_TYPE.encode()
                body = rng.choice(
                    [*HOSTILE_TOKENS, b"3", b"5", b" 4\n", b"4\n\n", b"+4", b"4.0", b"\xef\xbb\xbf4"]
                )
            else:
                body = mutate_bytes(body, rng)
        self.answers.append((status, body, ctype))
        return httpx2.Response(status, content=body, headers={"content-type": ctype.decode("latin-1")})


def _stored_cosignatures(conn: Any, size: int, key: NoteVerifier) -> list[bytes]:
    stored = Ledger.checkpoint_note(conn, size)
    assert stored is not None
    return [s.signature for s in parse_note(stored).signatures if s.name == key.name]


@pytest.mark.parametrize("seed", range(2))
def test_witness_answers_mutated(tmp_path: Path, seed: int) -> None:
    rng = random.Random(f"fuzz8/witness-answer/{seed}")
    signer = NoteSigner.generate(ORIGIN)
    wsigner = NoteSigner.generate("w0.example", SIG_TYPE_COSIGNATURE_V1)
    witness = Witness(wsigner, tmp_path / "w.json", {ORIGIN: signer.verifier})
    conn = _log(tmp_path / "log.db")
    mutating = MutatingWitness(witness, rng, 0.7)
    client = httpx2.Client(transport=httpx2.MockTransport(mutating))
    key = wsigner.verifier
    outcomes: dict[str, int] = {}
    for step in range(60 * SCALE):
        note = _grow(conn, signer, f"s{step}", rng.randrange(0, 3) if step else 1)
        text = parse_note(note).text
        size = Checkpoint.from_text(text).size
        before = _stored_cosignatures(conn, size, key)
        first = len(mutating.answers)
        try:
            sig = request_cosignatures(conn, "http://w0.example", key, client=client, note=note,
                                       old_size=rng.choice([0, size, max(size - 1, 0), size + 1]))  # fmt: skip
        except errors.LogRollbackError:
            assert mutating.answers[-1][0] in (409, 422), mutating.answers[first:]
            outcomes["rollback"] = outcomes.get("rollback", 0) + 1
            assert _stored_cosignatures(conn, size, key) == before
            continue
        except errors.ConfideError as exc:
            outcomes[exc.kind] = outcomes.get(exc.kind, 0) + 1
            assert _stored_cosignatures(conn, size, key) == before
            continue
        outcomes["cosigned"] = outcomes.get("cosigned", 0) + 1
        assert key.verify(text, sig.signature) and sig.key_id == key.key_id
        assert _stored_cosignatures(conn, size, key) == [sig.signature]
    assert outcomes.get("cosigned", 0) > 0 and len(outcomes) > 2, outcomes


def test_witness_guard_survives_mutated_answers(tmp_path: Path) -> None:
    """Through the guard (the CAS's start and its checkpointer): every answer is a counted
    failure, a cosignature, or a halt by a 409/422; nothing else escapes."""
    rng = random.Random("fuzz8/witness-guard/0")
    signer = NoteSigner.generate(ORIGIN)
    signers = [NoteSigner.generate(f"w{i}.example", SIG_TYPE_COSIGNATURE_V1) for i in range(3)]
    witnesses = [
        Witness(s, tmp_path / f"w{i}.json", {ORIGIN: signer.verifier}) for i, s in enumerate(signers)
    ]
    transports = {f"w{i}.example": MutatingWitness(w, rng, 0.5) for i, w in enumerate(witnesses)}

    def route(request: httpx2.Request) -> httpx2.Response:
        return transports[request.url.host](request)

    client = httpx2.Client(transport=httpx2.MockTransport(route))
    conn = _log(tmp_path / "log.db")
    config = WitnessQuorum(tuple((f"http://w{i}.example", s.verifier) for i, s in enumerate(signers)), 2)
    halts = 0
    for step in range(40 * SCALE):
        guard = WitnessGuard(config) if step % 10 == 0 else guard  # noqa: F821 (set at step 0)
        note = _grow(conn, signer, f"g{step}", rng.randrange(1, 3))
        try:
            outcome = guard.round(conn, note, client)
        except errors.LogRollbackError:
            halts += 1
            assert guard.halted is not None
            continue
        assert outcome.cosigned + len(outcome.failures) == 3
    assert halts < 40 * SCALE


@pytest.mark.parametrize("size", ["\u00b2", "\u0663", "\uff11", "1\u0663", "\U0001d7d9"])
def test_a_409_size_in_other_digits_is_a_network_error(tmp_path: Path, size: str) -> None:
    """Found by this campaign: a 409 whose size is a Unicode digit other than ASCII's (``str.isdigit``
    is true for them) raised ``int``'s ValueError (``²``: a traceback ending ``cas serve``'s start)
    or read as a size (``٣`` as 3)."""
    signer = NoteSigner.generate(ORIGIN)
    key = NoteSigner.generate("w0.example", SIG_TYPE_COSIGNATURE_V1).verifier
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, signer, "e", 5)
    answer = httpx2.Response(409, content=size.encode(), headers={"content-type": SIZE_CONTENT_TYPE})
    client = httpx2.Client(transport=httpx2.MockTransport(lambda request: answer))
    with pytest.raises(errors.NetworkError, match="expected a number"):
        request_cosignatures(conn, "http://w0.example", key, client=client, note=note, old_size=3)
    guard = WitnessGuard(WitnessQuorum((("http://w0.example", key),), 1))
    outcome = guard.round(conn, note, client)
    assert (outcome.cosigned, [f[1] for f in outcome.failures]) == (0, ["NetworkError"])


# --- the witness and tiles servers' requests ------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, NoteSigner, list[bytes]]]:
    """A log of 40 entries with checkpoints at 10, 20, 40 (their notes)."""
    path = tmp_path_factory.mktemp("fuzz8-ledger") / "log.db"
    signer = NoteSigner.generate(ORIGIN)
    conn = _log(path)
    notes = [_grow(conn, signer, "a", 10), _grow(conn, signer, "b", 10), _grow(conn, signer, "c", 20)]
    conn.close()
    yield path, signer, notes


def _add_body(conn: Any, old: int, new_note: bytes) -> bytes:
    size = Checkpoint.from_text(parse_note(new_note).text).size
    proof = Ledger().consistency_proof(conn, old, size) if old else []
    lines = [f"old {old}\n".encode()] + [base64.b64encode(p) + b"\n" for p in proof]
    return b"".join(lines) + b"\n" + new_note


@pytest.mark.parametrize("seed", range(2))
def test_witness_server_requests_mutated(
    tmp_path: Path, served: tuple[Path, NoteSigner, list[bytes]], seed: int
) -> None:
    rng = random.Random(f"fuzz8/witness-server/{seed}")
    path, signer, notes = served
    conn = connect(path)
    wsigner = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1)
    state = tmp_path / "w.json"
    witness = Witness(wsigner, state, {ORIGIN: signer.verifier, "other.example": wsigner.verifier})
    app = WitnessApp(witness, prefix="", limiter=None)
    sizes = [10, 20, 40]
    known = 0
    statuses: dict[int, int] = {}
    for _ in range(150 * SCALE):
        i = rng.randrange(3)
        old = rng.choice([known, known, 0, 10, 20])
        if old > sizes[i]:
            old = 0
        honest = _add_body(conn, old, notes[i])
        body = mutate_bytes(honest, rng) if rng.random() < 0.85 else honest
        before = state.read_bytes() if state.exists() else b""
        headers = [(b"content-length", str(len(body)).encode())]
        status, answer = call(app, "/add-checkpoint", [body], headers=headers)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 400, 403, 404, 409, 422), (status, answer, body)
        after = state.read_bytes() if state.exists() else b""
        if status != 200:
            assert after == before
            continue
        # A cosignature: for one of the log's own checkpoints, extending what the witness knew.
        cosig = parse_note(b"x\n\n" + answer).signatures[0]
        latest = witness.latest(ORIGIN)
        assert latest is not None and latest.size >= known
        text = latest.to_text()
        assert text in [parse_note(n).text for n in notes] and wsigner.verifier.verify(text, cosig.signature)
        known = latest.size
    assert statuses.get(200, 0) > 0 and len(statuses) >= 4, statuses
    conn.close()


def test_tiles_server_paths_mutated(served: tuple[Path, NoteSigner, list[bytes]]) -> None:
    rng = random.Random("fuzz8/tiles-server/0")
    path, _, _ = served
    app = TilesApp(path, prefix="/log", serve_entries=rng.random() < 2, limiter=None)
    honest = ["/log/checkpoint", "/log/tile/0/000", "/log/tile/0/000.p/40", "/log/tile/1/000.p/1",
              "/log/tile/entries/000.p/40", "/log/tile/0/x001/000", "/log/tile/entries/000"]  # fmt: skip
    for _ in range(400 * SCALE):
        target = rng.choice(honest).encode()
        if rng.random() < 0.9:
            target = mutate_bytes(target, rng)
        text = target.decode("latin-1")
        scope_path = text.split("?", 1)[0] or "/"
        status, _ = asyncio.run(_get(app, scope_path, target))
        assert status in (200, 404), (status, target)


async def _get(app: Any, path: str, raw: bytes) -> tuple[int, bytes]:
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    raw_path, _, query = raw.partition(b"?")
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": raw_path, "query_string": query,
             "headers": [], "client": ("127.0.0.1", 1)}  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")


# --- successor-board documents, posted and stored -------------------------------------------------

SUCCESSOR_ROUTES = {
    APPROVAL_TYPE: "/v1/cas/successor/approvals",
    CHANGE_TYPE: "/v1/cas/successor/board/approvals",
    RETIREMENT_TYPE: "/v1/cas/successor/retirements/approvals",
    WITHDRAWAL_TYPE: "/v1/cas/successor/withdrawals",
}
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 1.5, 2**53, 2**64, -(2**63), "", " ", "x" * 2000, [], {}, [[[[]]]],
    {"a": {"b": {"c": []}}}, "0" * 32, "AB" * 16, "ab" * 15 + "a", " " + "ab" * 16, "ab" * 16 + "\n",
    "\u0663" * 32, "sim", "SIM", "sim\u0000", "tdx", "sgx", "az-vtpm", "\ud800", "1e9", "NaN",
    {"measurement": "EE" * 48}, {"measurement": "ee" * 47}, {"measurement": "ee" * 48, "x": "1"},
    {"measurement": 5}, {"measurement": ["ee" * 48]}, {"mr_td": "00" * 48}, {"require-all": []},
    {"require-all": ["00" * 32]}, {"require-at-least-0": ["11" * 32]}, {"require-at-least-9": ["11" * 32]},
    {"require-all": [{"signer": None}]}, {"signer": "x"}, 10**400 // 10**390, 1_000_000_000,
]  # fmt: skip
NOT_OURS = ("type", "signer", "signature")  # fields a mutation of which the signature catches


def _doc_body(kind: str, key_id: str, board: list[str], now: int) -> dict[str, Any]:
    if kind == APPROVAL_TYPE:
        return {"type": kind, "master_key_id": key_id, "platform": "sim",
                "claims": {"measurement": ("ee" * 48)}, "expires": now + 600}  # fmt: skip
    if kind == CHANGE_TYPE:
        return {"type": kind, "master_key_id": key_id, "generation": 0,
                "board": {"require-at-least-2": board}, "expires": now + 600}  # fmt: skip
    return {"type": kind, "master_key_id": key_id, "generation": 0, "platform": "sim",
            "code": {"measurement": "dd" * 48}, "expires": now + 600}  # fmt: skip


_CLAIMS_FIELDS = {(APPROVAL_TYPE, "claims"), (APPROVAL_TYPE, "retire"), (RETIREMENT_TYPE, "code")}


def _claims_text(value: Any) -> bool:
    """Whether ``value`` names a simulated version (its ``measurement`` in text form: any
    lower-case hex or decimal, a version that may never have run)."""
    return (isinstance(value, dict) and set(value) == {"measurement"} and isinstance(value["measurement"], str)
            and re.fullmatch(r"[0-9a-f]+|[0-9]+", value["measurement"]) is not None)  # fmt: skip


def _a_board(value: Any) -> bool:
    """Whether a board change may propose ``value`` (any board the CAS could be given)."""
    try:
        board_from_json(value)
    except errors.ConfideError:
        return False
    return True


def _tables(r: Any) -> dict[str, list[tuple[Any, ...]]]:
    with r.cas.db.read() as conn:
        return {
            t: list(map(tuple, raw_execute(conn, f"SELECT * FROM {t} ORDER BY rowid").fetchall()))
            for t in ("successor_approvals", "successor_board_approvals",
                      "successor_retirement_approvals", "successor_withdrawals", "successor_retired",
                      "successor_board")
        }  # fmt: skip


def _post_json(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    return call(app, path, [body], headers=[(b"content-length", str(len(body)).encode())])


def test_successor_documents_mutated(board_cas: Any, people: list[Identity]) -> None:
    """Approvals of a successor, of a board change and of a retirement, signed by a member (never
    two: no quorum is reached) or a stranger, each field set to hostile JSON values, removed or
    added and signed again, or the signed bytes edited; through the CAS's ASGI app. Never 5xx;
    a document is taken only when it is what a member would sign (the oracle: unmutated, or
    mutated bytes that parse to the same document); a refusal changes no approval row."""
    rng = random.Random("fuzz8/successor/documents")
    app = create_app(board_cas.cas)
    key_id = board_cas.cas.sealer.sealing_key_id
    members = sorted(p.fingerprint for p in people)
    alice, stranger = people[0], Identity.generate("mallory")
    statuses: dict[int, int] = {}
    for step in range(150 * SCALE):
        kind = rng.choice([APPROVAL_TYPE, CHANGE_TYPE, RETIREMENT_TYPE])
        body = _doc_body(kind, key_id, members, int(time.time()))
        who = alice if rng.random() < 0.8 else stranger
        roll = rng.random()
        benign = False
        if roll < 0.5:  # a field's value replaced, the field removed or another added; signed again
            name = rng.choice([*body, "generation", "retire", "extra"])
            if rng.random() < 0.2:
                benign = body.pop(name, None) is None  # (absent: no change)
            else:
                body[name] = rng.choice(HOSTILE_VALUES)
                benign = (kind == CHANGE_TYPE and name == "board" and _a_board(body[name])) or (
                    (kind, name) in _CLAIMS_FIELDS
                    and _claims_text(body[name])
                    and body[name] != body.get("claims")
                )
            try:
                doc = sign_document(body, who.sign, who.public.public_base64)
            except errors.ConfideError:
                continue  # not signable (JCS refuses the value): nothing to post
            text = jcs(doc)
        elif roll < 0.9:  # the signed bytes edited
            doc = sign_document(body, who.sign, who.public.public_base64)
            original = json.dumps(doc).encode()
            text = mutate_bytes(original, rng)
            try:
                benign = json.loads(text) == doc
            except (ValueError, RecursionError):
                benign = False
        else:  # as signed
            doc = sign_document(body, who.sign, who.public.public_base64)
            text, benign = jcs(doc), True
        before = _tables(board_cas)
        status, answer = _post_json(app, SUCCESSOR_ROUTES[kind], text)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (step, status, answer, text)
        if status == 200:
            assert benign and who is alice, f"{step}: {str(json.loads(text))[:300]} {kind}"
        else:
            after = _tables(board_cas)
            assert {t: v for t, v in after.items() if t != "successor_board"} == {
                t: v for t, v in before.items() if t != "successor_board"
            }, (step, text)
    assert statuses.get(200, 0) > 0 and len(statuses) >= 3, statuses


STORED_HOSTILE: list[Any] = [
    None, "", "x", "{}", "[]", "null", "1e400", "NaN", '{"type": 1}', b"\xff\xfe", b"{}", 0, -1, 1.5,
    2**62, "9" * 40, "ab" * 32, "AB" * 32, "ab" * 32 + "\n" + "cd" * 32, "\ud800".encode("utf-8", "surrogatepass"),
    "[" * 5000 + "]" * 5000,
]  # fmt: skip


def test_successor_stored_rows_mutated(board_cas: Any, people: list[Identity]) -> None:
    """Stored approvals (of each kind), a withdrawal, a retirement and the board row, one column
    of one row at a time set to hostile SQLite values (text, blobs, numbers, NULL): the three
    ``show`` routes and a new approval answer 200 or a 4xx/503 with a confide error, never 500;
    an edited approval row never counts for more than its signer."""
    rng = random.Random("fuzz8/successor/stored")
    app = create_app(board_cas.cas)
    key_id = board_cas.cas.sealer.sealing_key_id
    members = sorted(p.fingerprint for p in people)
    alice, bob, carol = people
    now = int(time.time())
    for kind in (APPROVAL_TYPE, CHANGE_TYPE, RETIREMENT_TYPE):
        for who in (alice, carol):
            body = _doc_body(kind, key_id, members, now)
            if kind == CHANGE_TYPE:
                body["board"] = {"require-at-least-2": members[:2]}
                if who is carol:
                    continue  # no quorum: the board stays
            status, answer = _post_json(
                app, SUCCESSOR_ROUTES[kind], jcs(sign_document(body, who.sign, who.public.public_base64))
            )
            assert status == 200, answer
    first = json.loads(_post_json(app, SUCCESSOR_ROUTES[APPROVAL_TYPE], jcs(sign_document(
        {**_doc_body(APPROVAL_TYPE, key_id, members, now), "claims": {"measurement": "cc" * 48}},
        bob.sign, bob.public.public_base64)))[1])  # fmt: skip
    withdrawal = {"type": WITHDRAWAL_TYPE, "approval": first["digest"], "master_key_id": key_id, "time": now}
    status, answer = _post_json(
        app,
        SUCCESSOR_ROUTES[WITHDRAWAL_TYPE],
        jcs(sign_document(withdrawal, bob.sign, bob.public.public_base64)),
    )
    assert status == 200, answer
    db = Database(f"sqlite:///{board_cas.data_dir / 'cas.db'}")
    honest = _tables(board_cas)
    shown = {p: _get_json(app, p) for p in SHOW_ROUTES}
    statuses: dict[int, int] = {}
    try:
        for step in range(60 * SCALE):
            table = rng.choice([t for t, rows in honest.items() if rows])
            with db.write() as conn:
                columns = [c[1] for c in raw_execute(conn, f"PRAGMA table_info({table})").fetchall()]
                rowid = rng.choice([r[0] for r in raw_execute(conn, f"SELECT rowid FROM {table}").fetchall()])
                column = rng.choice(columns)
                value = rng.choice(STORED_HOSTILE)
                try:
                    raw_execute(conn, f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value, rowid))
                except Exception:  # a constraint (NOT NULL, primary key): not this edit
                    continue
            for path in SHOW_ROUTES:
                status, answer = call(app, path, [b""], method="GET")
                statuses[status] = statuses.get(status, 0) + 1
                assert status in (200, 503), (step, table, column, value, status, answer)
                if status == 200 and path == "/v1/cas/successor":
                    for entry in json.loads(answer)["approvals"]:
                        honest_entry = [e for e in shown[path]["approvals"] if e["target"] == entry["target"]]
                        assert honest_entry and len(entry["approvers"]) <= len(honest_entry[0]["approvers"])
            body = _doc_body(APPROVAL_TYPE, key_id, members, now)
            status, answer = _post_json(
                app,
                SUCCESSOR_ROUTES[APPROVAL_TYPE],
                jcs(sign_document(body, alice.sign, alice.public.public_base64)),
            )
            assert status in (200, 503), (step, table, column, value, status, answer)
            _restore(db, honest)
            for p in SHOW_ROUTES:
                again = _get_json(app, p)
                assert again == shown[p], [
                    (k, again[k], shown[p][k]) for k in again if again[k] != shown[p][k]
                ]
    finally:
        db.dispose()
    assert statuses.get(200, 0) > 0 and statuses.get(503, 0) > 0, statuses


@pytest.mark.parametrize("value", ["{}", b"\xff", "1e400", 1e300, -5])
def test_stored_times_that_are_not_numbers_are_shown_as_null(
    board_cas: Any, people: list[Identity], value: Any
) -> None:
    """Found by this campaign: a withdrawal's or a retired version's ``created_at`` edited to
    text or a blob (SQLite keeps it in the REAL column) made every ``show`` route, every
    approval and every release by the board raise ``float()``'s ValueError (HTTP 500). The time
    is not authenticated and is shown only: now ``null``; the withdrawal and the retirement stand."""
    app = create_app(board_cas.cas)
    key_id = board_cas.cas.sealer.sealing_key_id
    members = sorted(p.fingerprint for p in people)
    alice, bob, _ = people
    now = int(time.time())
    for who in (alice, bob):
        doc = sign_document(
            _doc_body(RETIREMENT_TYPE, key_id, members, now), who.sign, who.public.public_base64
        )
        assert _post_json(app, SUCCESSOR_ROUTES[RETIREMENT_TYPE], jcs(doc))[0] == 200
    doc = sign_document(
        _doc_body(APPROVAL_TYPE, key_id, members, now), alice.sign, alice.public.public_base64
    )
    digest = json.loads(_post_json(app, SUCCESSOR_ROUTES[APPROVAL_TYPE], jcs(doc))[1])["digest"]
    withdrawal = {"type": WITHDRAWAL_TYPE, "approval": digest, "master_key_id": key_id, "time": now}
    signed = sign_document(withdrawal, alice.sign, alice.public.public_base64)
    assert _post_json(app, SUCCESSOR_ROUTES[WITHDRAWAL_TYPE], jcs(signed))[0] == 200
    db = Database(f"sqlite:///{board_cas.data_dir / 'cas.db'}")
    with db.write() as conn:
        raw_execute(conn, "UPDATE successor_withdrawals SET created_at = ?", (value,))
        raw_execute(conn, "UPDATE successor_retired SET created_at = ?", (value,))
    db.dispose()
    shown = _get_json(app, "/v1/cas/successor")
    ((entry,),) = [shown["approvals"]]
    assert entry["approvers"] == [] and [w["withdrawn_at"] for w in entry["withdrawn"]] == [None]
    assert [r["retired_at"] for r in shown["retired"]] == [None]
    assert _get_json(app, "/v1/cas/successor/retirements")["retired"] == shown["retired"]
    # The withdrawn approval is refused again, as before the edit.
    status, answer = _post_json(app, SUCCESSOR_ROUTES[APPROVAL_TYPE], jcs(doc))
    assert status == 409 and b"withdrawn" in answer


SHOW_ROUTES = ("/v1/cas/successor", "/v1/cas/successor/board", "/v1/cas/successor/retirements")


def _get_json(app: Any, path: str) -> Any:
    status, answer = call(app, path, [b""], method="GET")
    assert status == 200, answer
    return json.loads(answer)


def _restore(db: Database, tables: dict[str, list[tuple[Any, ...]]]) -> None:
    with db.write() as conn:
        for table, rows in tables.items():
            raw_execute(conn, f"DELETE FROM {table}")
            for row in rows:
                marks = ", ".join("?" for _ in row)
                raw_execute(conn, f"INSERT INTO {table} VALUES ({marks})", row)


# --- DCAP collateral with TCB evaluation numbers, and the CAS's floor file ------------------------


def _json_paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into a JSON tree, the root's children first."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*at, key))
        out.extend(_json_paths(child, (*at, key)))
    return out


def _edit_json(obj: Any, rng: random.Random) -> tuple[Any, tuple[Any, ...], str]:
    """``obj`` (a copy) with one value replaced by a hostile one, removed, or a member added;
    the path and what was done."""
    obj = json.loads(json.dumps(obj))
    path = rng.choice(_json_paths(obj))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    roll = rng.random()
    if roll < 0.15:
        del parent[last]
        return obj, path, "removed"
    if roll < 0.25 and isinstance(parent, dict):
        parent[rng.choice(["x", "tcbStatus", "tcbEvaluationDataNumber", "advisoryIDs"]) + "_"] = 1
        return obj, path, "added"
    parent[last] = rng.choice([*HOSTILE_VALUES, "UpToDate", "OutOfDate", "Revoked", "TDRelaunchAdvised",
                               "2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2024-03-13T00:00:00",
                               255, 256, 65535, 65536, 2**32 - 1, 2**32, -0, 17, 18, 19])  # fmt: skip
    return obj, path, "replaced"


def _dcap_qvl_status(pki: Any, raw: bytes, coll: Any, at: datetime) -> str:
    """dcap-qvl's verdict (a peer): its TCB status, or ``refused: <why>``."""
    when = int(at.timestamp())
    policy = qvl.PyQuotePolicy.strict(when).allow_dynamic_platform(True).allow_cached_keys(True)
    policy = policy.allow_smt(True).platform_grace_period(1 << 40).qe_grace_period(1 << 40)
    try:
        claims = qvl.PyQuoteVerifier(pki.root_der).verify_with_policy(
            raw, qvl.PyQuoteCollateralV3.from_json(coll.to_dcap_qvl_json()), when, policy
        )
    except (ValueError, RuntimeError) as exc:
        return f"refused: {exc}"
    return str(json.loads(claims.to_json())["tcb"]["status"])


@pytest.mark.parametrize("case_id", ["tdx", "sgx"])
def test_dcap_signed_texts_mutated(case_id: str) -> None:
    """Real collateral (SGX and TDX), its signed TCB Info and QE Identity texts edited byte by byte
    (not signed again), and the dcap-qvl bundle around them edited: nothing but the unmutated
    texts verifies, and a bundle that still verifies gives the same status and numbers."""
    rng = random.Random(f"fuzz8/dcap/signed/{case_id}")
    case = _dcap_case(case_id)
    real = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    honest = verify_quote(case.quote_bytes(), real, at=case.time)
    bundle = case.collateral_bytes()
    for _ in range(120 * SCALE):
        roll = rng.random()
        if roll < 0.7:
            piece = rng.choice(["tcb_info", "qe_identity"])
            edited = mutate_bytes(getattr(real, piece), rng)
            coll = dataclasses.replace(real, **{piece: edited})
            try:
                got = verify_quote(case.quote_bytes(), coll, at=case.time)
            except errors.ConfideError:
                continue
            assert edited == getattr(real, piece), (piece, edited[:200])
        else:
            mutated = mutate_bytes(bundle, rng)
            try:
                coll = DcapCollateral.from_dcap_qvl_json(mutated)
                got = verify_quote(case.quote_bytes(), coll, at=case.time)
            except errors.ConfideError:
                continue
        assert (got.tcb_status, got.tcb_evaluation, got.claims) == (
            honest.tcb_status,
            honest.tcb_evaluation,
            honest.claims,
        )


def test_dcap_resigned_fields_mutated() -> None:
    """The TCB Info and QE Identity of a real TDX quote's collateral, one value at a time set to a
    hostile JSON value, removed or added, and signed again under a test PKI: verification refuses
    with a confide error or reports the numbers of the signed texts; when dcap-qvl (a peer) takes
    the same collateral, the TCB status is its (TDX relaunch advice aside: dcap-qvl 0.7 reports the
    level's status)."""
    rng = random.Random("fuzz8/dcap/resigned")
    case = _dcap_case("tdx")
    pki = ForgedPki(at=case.time)
    raw = pki.forge_quote(case.quote_bytes())
    real = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    outcomes: dict[str, int] = {}
    for step in range(150 * SCALE):
        piece = rng.choice(["tcb_info", "qe_identity"])
        obj, path, what = _edit_json(json.loads(getattr(real, piece)), rng)
        text = json.dumps(obj, separators=(",", ":")).encode()
        coll = pki.forge_collateral(dataclasses.replace(real, **{piece: text}))
        try:
            got = verifier.verify(raw, coll, at=case.time)
        except errors.ConfideError as exc:
            outcomes[exc.kind] = outcomes.get(exc.kind, 0) + 1
            continue
        outcomes["verified"] = outcomes.get("verified", 0) + 1
        numbers = (json.loads(coll.tcb_info)["tcbEvaluationDataNumber"],
                   json.loads(coll.qe_identity)["tcbEvaluationDataNumber"])  # fmt: skip
        assert got.tcb_evaluation is not None
        assert (got.tcb_evaluation.tcb_info, got.tcb_evaluation.qe_identity) == numbers
        assert all(type(n) is int for n in numbers)
        theirs = _dcap_qvl_status(pki, raw, coll, case.time)
        if not theirs.startswith("refused"):
            assert got.details["platform_tcb_status"] == theirs or got.tcb_status.value == theirs, (
                step, piece, path, what, got.tcb_status, theirs)  # fmt: skip
    assert outcomes.get("verified", 0) > 0 and len(outcomes) > 2, outcomes


FLOOR_HOSTILE: list[bytes] = [
    b"", b"{}", b"[]", b"null", b'{"v":1}', b'{"v":1,"tcb_info":{},"qe_identity":{}}',
    b'{"v":true,"tcb_info":{},"qe_identity":{}}', b'{"v":1.0,"tcb_info":{},"qe_identity":{}}',
    b'{"v":2,"tcb_info":{},"qe_identity":{}}', b'{"v":1,"tcb_info":[],"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":18},"qe_identity":{"sgx":18},"x":1}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":18},"tcb_info":{},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00A067110000":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"SGX:00a067110000":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a06711000":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000 ":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sev:00a067110000":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{},"qe_identity":{"SGX":18}}', b'{"v":1,"tcb_info":{},"qe_identity":{"sgx ":18}}',
    b'{"v":1,"tcb_info":{},"qe_identity":{"sgx:00a067110000":18}}',
    b'{"v":1,"tcb_info":{"sgx":18},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":-1},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":4294967296},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":18.0},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":"18"},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":true},"qe_identity":{}}',
    b'{"v":1,"tcb_info":{"sgx:00a067110000":1e400},"qe_identity":{}}', b"\xff\xfe{}", b"{" * 100000,
]  # fmt: skip
_FLOOR_KEY = re.compile(r"(sgx|tdx):[0-9a-f]{12}")


def _floor_well_formed(raw: bytes) -> bool:
    """The oracle: a floor file the CAS may load (module tcb_floor: members v (the integer 1 or 2),
    tcb_info keyed ``<tee>:<fmspc, 12 lower-case hex>``, qe_identity keyed ``<tee>``, numbers
    0..2^32-1, and in version 2 optionally macs, key id (32 hex) -> MAC (64 hex))."""
    try:
        doc = jsonstrict.loads(raw, structure="oracle")
    except errors.ParseError:
        return False
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] not in (1, 2):
        return False
    members = {"v", "tcb_info", "qe_identity"}
    if not members <= set(doc) <= members | ({"macs"} if doc["v"] == 2 else set()):
        return False
    tables, macs = (doc["tcb_info"], doc["qe_identity"]), doc.get("macs", {})
    if not all(isinstance(t, dict) for t in tables) or not isinstance(macs, dict):
        return False
    numbers = [*tables[0].values(), *tables[1].values()]
    return (all(_FLOOR_KEY.fullmatch(k) for k in tables[0]) and all(k in ("sgx", "tdx") for k in tables[1])
            and all(type(n) is int and 0 <= n < 2**32 for n in numbers)
            and all(re.fullmatch("[0-9a-f]{32}", k) and isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)
                    for k, v in macs.items()))  # fmt: skip


FLOOR_SEALER = Sealer(bytes(range(32)))
FLOOR_TABLES = ({"sgx:00a067110000": 17, "tdx:b0c06f000000": 18}, {"sgx": 17, "tdx": 18})


def test_dcap_floor_file_mutated(tmp_path: Path) -> None:
    """``DIR/dcap-tcb-evaluation.json`` (version 1, and version 2 with its MAC) hostile or edited
    byte by byte: the CAS loads it only when it is well formed (the oracle), else a ParseError (or
    a StorageError for what cannot be read); a loaded floor holds exactly the file's numbers; once
    authenticated, a version-2 file passes its MAC only with the tables it was MAC'd with, and
    the floor is never below the file's numbers."""
    rng = random.Random("fuzz8/dcap/floor")
    path = tmp_path / FLOOR_FILE
    macs = {kid: floor_mac(FLOOR_SEALER, kid, *FLOOR_TABLES) for kid in FLOOR_SEALER.key_ids}
    v1 = json.dumps({"v": 1, "tcb_info": FLOOR_TABLES[0], "qe_identity": FLOOR_TABLES[1]}).encode()
    v2 = json.dumps(
        {"v": 2, "tcb_info": FLOOR_TABLES[0], "qe_identity": FLOOR_TABLES[1], "macs": macs}
    ).encode()
    candidates = [
        *FLOOR_HOSTILE,
        *(mutate_bytes(rng.choice([v1, v2]), rng) for _ in range(300 * SCALE)),
        v1,
        v2,
    ]
    verified = 0
    for raw in candidates:
        path.write_bytes(raw)
        try:
            floor = TcbEvaluationFloor(path)
        except (errors.ParseError, errors.StorageError):
            assert not _floor_well_formed(raw), raw[:200]
            continue
        assert _floor_well_formed(raw), raw[:200]
        doc = json.loads(raw)
        for key, number in doc["tcb_info"].items():
            tee, fmspc = key.split(":")
            assert floor.floors(tee, fmspc)[0] == number
        for tee, number in doc["qe_identity"].items():
            assert floor.floors(tee, "000000000000")[1] == number
        event = floor.authenticate(FLOOR_SEALER, None)
        if doc["v"] == 2 and (event is None or event[0] != EVENT_ALTERED):  # its MAC verified
            # (no ledger floor given: a verified file's numbers are recorded, EVENT_RAISED)
            verified += 1
            assert (doc["tcb_info"], doc["qe_identity"]) == FLOOR_TABLES, raw[:200]
        tables = floor.tables()
        assert all(tables["tcb_info"].get(k, 0) >= n for k, n in doc["tcb_info"].items())
        assert all(tables["qe_identity"].get(k, 0) >= n for k, n in doc["qe_identity"].items())
    assert verified > 0


def test_dcap_floor_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """Found by this campaign: a FIFO at ``DIR/dcap-tcb-evaluation.json`` made ``cas serve`` hang
    at the start (an open for reading waits for a writer); a directory gave a StorageError. Now
    both are a StorageError at once."""
    path = tmp_path / FLOOR_FILE
    os.mkfifo(path)
    done: list[BaseException | None] = []

    def load() -> None:
        try:
            TcbEvaluationFloor(path)
        except BaseException as exc:
            done.append(exc)
        else:
            done.append(None)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # release the reader, then fail
        with open(path, "wb"):
            pass
        thread.join(5)
        pytest.fail("loading a FIFO floor file hung")
    assert isinstance(done[0], errors.StorageError) and "regular file" in done[0].message
    path.unlink()
    path.mkdir()
    with pytest.raises(errors.StorageError):
        TcbEvaluationFloor(path)


def _dcap_case(case_id: str) -> Any:
    if case_id == "tdx":
        return next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")
    return next(c for c in CASES if isinstance(c.expected, tuple) and c.quote.startswith("sgx"))


# --- OCSP signed by the CA itself, owner revocations, stored revocation records -------------------


@pytest.fixture(scope="module")
def ca_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Policy ``tls``: CA ``ca`` declared ``ocsp: {signer: ca}`` (and the other public options),
    leaf ``srv`` and runtime certificate ``rt``; the first ``srv`` revoked (keyCompromise)."""
    text = policy(ca_extra=ALL_PUBLIC + "\n    ocsp:\n      signer: ca", runtime="rt.local")
    text = text.replace("    ocsp: true\n", "")
    with started(tmp_path_factory.mktemp("fuzz8-ocsp") / "cas", None, text) as out:
        out.release()
        first = out.certificate()
        out.clock.now = T0 + 3600
        out.cas.revoke_certificates(out.revocation(serial=first.serial_number, reason="keyCompromise"))
        out.clock.now = T0 + 3700
        out.release()
        yield out


def check_ca_signed(der_out: bytes, der_in: bytes, truth: Truth) -> S:
    """:func:`check_answer`'s oracle, for a CA that signs its own responses: no certificate, the
    responderID the CA's key hash, the signature the CA key's."""
    response = ocsp.load_der_ocsp_response(der_out)
    want, req = expected_ocsp(der_in, truth)
    got = response.response_status
    if got != want and {got, want} == {S.MALFORMED_REQUEST, S.UNAUTHORIZED}:
        assert _oracle_differs(der_in), (got, want, der_in.hex())
        return got
    assert got == want, (got, want, der_in.hex())
    if got != S.SUCCESSFUL:
        return got
    assert response.certificates == []
    assert (
        response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(truth.ca.public_key()).digest
    )
    public = truth.ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and response.signature_hash_algorithm is not None
    public.verify(
        response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm)
    )
    singles = list(response.responses)
    entries = req.entries if isinstance(req, ParsedRequest) else None
    if entries is None:
        assert req is not None and len(singles) == 1
        asked = [(req.serial_number, req.issuer_name_hash, req.issuer_key_hash, True)]
    else:
        asked = [(e.serial, e.name_hash, e.key_hash, _ours(truth, e)) for e in entries]
    assert len(singles) == len(asked)
    for single, (serial, name_hash, key_hash, ours) in zip(singles, asked, strict=True):
        assert (single.serial_number, single.issuer_name_hash, single.issuer_key_hash) == (
            serial,
            name_hash,
            key_hash,
        )
        truly = truth.status.get(serial, C.UNKNOWN) if ours else C.UNKNOWN
        assert single.certificate_status == truly, der_in.hex()
    return got


def _oracle_differs(der: bytes) -> bool:
    """Where the oracle (``cryptography``) and the responder's reader read a CertID apart, both
    answering with an error and no certStatus (docs/limitations.md, the fuzz4 and fuzz8 notes):
    the parameters of a hash algorithm the reader does not compute (not read: ``unauthorized``,
    the entry names no issuer; ``cryptography`` types them, e.g. a NULL with content, and refuses),
    or an issuer hash whose length is not its algorithm's digest size (the reader refuses:
    ``malformedRequest``; ``cryptography`` reads it, and it matches no issuer)."""
    try:
        ocsp.load_der_ocsp_request(der)
    except ValueError as exc:
        return "AlgorithmIdentifier::params" in str(exc)
    try:
        parse_ocsp_request(der)
    except errors.ParseError as exc:
        return "expected an OCTET STRING hash" in exc.message
    return False


def test_ca_signed_ocsp_requests_mutated(ca_env: Env) -> None:
    """fuzz4's DER mutations of OCSP requests (truncation, lying lengths, tag flips, several
    Requests, nonces of every size, critical extensions, hostile serials and hash algorithms) to
    a CA declared ``signer: ca``, in process and through the API's and the public listener's
    routes: every answer is the one the request calls for, signed by the CA's own key."""
    responder = OcspResponder(ca_env.cas, signature_rate=None)
    OcspResponder._by_cas[ca_env.cas] = responder
    truth = truth_of(ca_env)
    rng = random.Random("fuzz8/ocsp-ca/der")
    seen: dict[S, int] = {}
    serials = [*truth.status, 12345, truth.ca.serial_number]
    for _ in range(300 * SCALE):
        der = mutate_der(ocsp_request(truth.ca, rng.choice(serials), rng), rng)
        got = check_ca_signed(responder.respond(truth.ca_id, der, "192.0.2.1").der, der, truth)
        seen[got] = seen.get(got, 0) + 1
    apps = [create_app(ca_env.cas), PublicApp(ca_env.cas)]
    for _ in range(60 * SCALE):
        der = mutate_der(ocsp_request(truth.ca, rng.choice(serials), rng), rng)
        app = rng.choice(apps)
        status, _, body = _call(app, "POST", f"/v1/ocsp/{truth.ca_id}", der,
                                {"content-type": "application/ocsp-request"})  # fmt: skip
        if status == 413:  # larger than a request may be: refused unread
            assert len(der) > MAX_REQUEST
            continue
        assert status == 200, (status, body[:200])
        check_ca_signed(body, der, truth)
    assert seen.get(S.SUCCESSFUL, 0) > 20 and seen.get(S.MALFORMED_REQUEST, 0) > 20, seen


REVOCATION_HOSTILE: list[Any] = [
    None, "", "x", "00", "0" * 64, "AB" * 32, "ab" * 32 + "\n", b"\xff", 0, -1, 1.5, 2**62, 1e300,
    "keyCompromise", "removeFromCRL", "unspecified", "superseded", "tls", "ca", "srv", "rt",
]  # fmt: skip


def test_revocation_records_mutated(ca_env: Env) -> None:
    """The stored revocation records (``revoked_certificates`` rows and ``revocation_sets``), one
    column of one row at a time set to hostile SQLite values: OCSP answers parse, never say
    ``good`` of the revoked serial nor ``revoked`` of a good one (``tryLater`` when the records do
    not authenticate), the CRL and owner-revocation routes answer without a 5xx but 503, and
    nothing changes the records but an accepted revocation, which the restore undoes."""
    responder = OcspResponder(ca_env.cas, signature_rate=None)
    OcspResponder._by_cas[ca_env.cas] = responder
    truth = truth_of(ca_env)
    rng = random.Random("fuzz8/revocation/stored")
    app = create_app(ca_env.cas)
    db = ca_env.cas.db
    with db.read() as conn:
        honest = {t: list(map(tuple, raw_execute(conn, f"SELECT * FROM {t} ORDER BY rowid").fetchall()))
                  for t in ("revoked_certificates", "revocation_sets")}  # fmt: skip
    revoked = {s for s, c in truth.status.items() if c == C.REVOKED}
    good = {s for s, c in truth.status.items() if c == C.GOOD}
    statuses: dict[str, int] = {}
    for step in range(40 * SCALE):
        table = rng.choice(list(honest))
        with db.write() as conn:
            columns = [c[1] for c in raw_execute(conn, f"PRAGMA table_info({table})").fetchall()]
            rowid = rng.choice([r[0] for r in raw_execute(conn, f"SELECT rowid FROM {table}").fetchall()])
            column, value = rng.choice(columns), rng.choice(REVOCATION_HOSTILE)
            try:
                raw_execute(conn, f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value, rowid))
            except Exception:  # a constraint: not this edit
                continue
        for serial in [*revoked, *good]:
            name = _ocsp_status(responder, truth, serial, rng)
            assert name in ("TRY_LATER", "REVOKED" if serial in revoked else "GOOD"), (
                step,
                table,
                column,
                value,
            )
            statuses[name] = statuses.get(name, 0) + 1
        status, _ = call(app, f"/v1/crl/{truth.ca_id}.crl", [b""], method="GET")
        assert status in (200, 404, 503), (step, table, column, value, status)
        ca_env.clock.now += 1
        # A revocation of a serial the CA never issued (one that goes through would change the
        # records, which the restore below would then roll back: refused as a rollback).
        request = ca_env.revocation(serial=rng.choice([999, 2**100]), reason="superseded")
        status, answer = call(app, "/v1/policies/tls/revocations", [json.dumps(request).encode()])
        assert status == 503 or 400 <= status < 500, (step, table, column, value, status, answer)
        with db.write() as conn:
            for t, rows in honest.items():
                raw_execute(conn, f"DELETE FROM {t}")
                for row in rows:
                    raw_execute(conn, f"INSERT INTO {t} VALUES ({', '.join('?' for _ in row)})", row)
        # Restored: every answer is again the truth (nothing was lost).
        assert {s: _ocsp_status(responder, truth, s, rng) for s in truth.status} == {
            s: c.name for s, c in truth.status.items()
        }, (step, table, column, value)
    assert statuses.get("TRY_LATER", 0) > 0 and statuses.get("GOOD", 0) > 0, statuses


def _ocsp_status(responder: OcspResponder, truth: Truth, serial: int, rng: random.Random) -> str:
    """The certStatus (or the responseStatus when not successful) the responder gives ``serial``
    now: a request with a nonce, so not a cached answer."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(*_hashes(truth.ca), serial, hashes.SHA1())
    builder = builder.add_extension(x509.OCSPNonce(rng.randbytes(16)), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)
    response = ocsp.load_der_ocsp_response(responder.respond(truth.ca_id, der, None).der)
    if response.response_status != S.SUCCESSFUL:
        return response.response_status.name
    return response.certificate_status.name


def _key_id(ca: x509.Certificate) -> str:
    return ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def _issued(env: Env) -> Truth:
    """Every certificate the CA issued (``srv``'s versions, the runtime's), ``revoked`` when the
    CAS's authenticated records list it, else ``good``."""
    ca = env.ca_cert()
    with env.cas.db.read() as conn:
        listed = {
            int(r.serial, 16) for r in verified_rows(conn, env.cas.sealer, "tls", _key_id(ca), env.clock.now)
        }
        runtime = [
            int(r[0], 16) for r in raw_execute(conn, "SELECT serial FROM runtime_certificates").fetchall()
        ]
    serials = [
        x509.load_pem_x509_certificate(p["certificate"].encode()).serial_number for _, p in env.versions()
    ]
    status = {s: C.REVOKED if s in listed else C.GOOD for s in [*serials, *runtime]}
    return Truth(ca, status, ca_id(ca))


def _hashes(ca: x509.Certificate) -> tuple[bytes, bytes]:
    probe = ocsp.OCSPRequestBuilder().add_certificate(ca, ca, hashes.SHA1()).build()
    return probe.issuer_name_hash, probe.issuer_key_hash


def test_owner_revocations_mutated_with_authenticated_records(ca_env: Env) -> None:
    """fuzz3's mutations of owners' revocation requests (hostile values, fields removed or added,
    serials edited as text, every reason, times moved), signed by the owner or a stranger, posted
    to a CAS whose CA signs its own OCSP responses and whose revocation records are authenticated
    (run last: it revokes). Never 5xx; carried out only when well formed and the owner's; after
    each, the records still authenticate, and the CA's responses and CRL say ``revoked`` of exactly
    the certificates revoked (the responder answering for every one of them)."""
    env = ca_env
    responder = OcspResponder(env.cas, signature_rate=None)
    OcspResponder._by_cas[env.cas] = responder
    app = create_app(env.cas)
    stranger = Identity.generate()
    rng = random.Random("fuzz8/revoke/api")
    done = 0
    for _ in range(60 * SCALE):
        truth = _issued(env)
        good = sorted(s for s, c in truth.status.items() if c == C.GOOD) or [12345]
        serial = rng.choice([format(rng.choice(good), "x"), format(rng.choice(good), "X"), "1f", None])
        body = mutate_body(
            base_body(
                secret=rng.choice(["srv", "rt"]),
                serial=serial,
                at=int(env.clock.now),
                cas=env.cas.tls_spki_sha256,
            ),
            rng,
        )
        body.pop("signer", None)
        who = env.owner if rng.random() < 0.8 else stranger
        before = revocation_state(env)
        status, reply = post(app, json.dumps(signed_or_not(body, who)).encode())
        if status == 200:
            done += 1
            assert who is env.owner and well_formed({**body, "signer": "x"}), body
        else:
            assert revocation_state(env) == before, body
        with env.cas.db.read() as conn:
            rows = verified_rows(conn, env.cas.sealer, "tls", _key_id(truth.ca), env.clock.now)
        listed = {int(r.serial, 16) for r in rows}  # what the CAS has revoked: authenticated
        assert {s for s, c in truth.status.items() if c == C.REVOKED} <= listed
        if status == 200:  # what it revoked is listed (nothing when all was revoked before: idempotent)
            assert {int(r["serial"], 16) for r in reply["revoked"]} <= listed, reply
        for s in rng.sample(sorted(truth.status), min(3, len(truth.status))):
            want = C.REVOKED if s in listed else C.GOOD
            assert _ocsp_status(responder, truth, s, rng) == want.name
        env.clock.now += 1
    assert done > 0
