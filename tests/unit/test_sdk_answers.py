"""confide.sdk against hostile answers of a CAS (no server: what the client's
calls return is given):
whatever the answer, a call raises a ConfideError or returns a read-only result."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from confide import jsonstrict
from confide.cas.client import CasClient
from confide.errors import AccessDeniedError, ConfideError, NetworkError, ParseError, UsageError
from confide.identity import Identity
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.http import client_tls_context
from confide.ledger.note import NoteSigner
from confide.policy import load_policy
from confide.sdk import MAX_ANSWER_DEPTH, Cas


@pytest.fixture
def cas() -> Iterator[Cas]:
    client = CasClient("http://127.0.0.1:1", None, plain_http_for_tests=True)  # never connects
    with Cas(client) as c:
        yield c


def _answer(cas: Cas, monkeypatch: pytest.MonkeyPatch, text: bytes) -> None:
    answer = jsonstrict.loads(text, structure="CAS answer")  # as the client reads it
    for method in ("events", "show"):  # what the client returns, its request not made
        monkeypatch.setattr(cas._client, method, lambda *_a, **_k: answer)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b'{"k": 1}' + b"]" * depth


@pytest.mark.parametrize("depth", [150, MAX_ANSWER_DEPTH - 5, MAX_ANSWER_DEPTH - 4, 700, 900])
def test_an_answer_nested_as_deep_as_the_json_reader_takes_is_frozen_or_a_parse_error(
    cas: Cas, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """The JSON reader takes nesting up to about the recursion limit; freezing it raised
    RecursionError (not a ConfideError: it escaped every caller's except clause). An answer
    nested up to MAX_ANSWER_DEPTH is frozen (and its repr works), deeper is a ParseError."""
    ident = Identity.generate()
    # answer, events, event, payload, `depth` lists, {"k": 1}: nested depth + 5 deep
    event = b'{"seq": 1, "index": 0, "at": 1.5, "type": "t", "payload": {"deep": ' + _nested(depth) + b"}}"
    _answer(cas, monkeypatch, b'{"events": [' + event + b"]}")
    if depth + 5 > MAX_ANSWER_DEPTH:
        with pytest.raises(ParseError, match="nested deeper than"):
            cas.events("p", ident)
    else:
        (got,) = cas.events("p", ident)
        value: Any = got.payload["deep"]
        for _ in range(depth):
            assert isinstance(value, tuple) and len(value) == 1
            value = value[0]
        assert isinstance(value, Mapping) and dict(value) == {"k": 1}
        with pytest.raises(TypeError):
            value["k"] = 2  # type: ignore[index]
        assert "'k': 1" in repr(got)
    # answer, policy, `depth` lists, {"k": 1}: depth + 3
    _answer(
        cas,
        monkeypatch,
        b'{"name": "p", "hash": "h", "creator": "c", "policy": {"x": ' + _nested(depth) + b"}}",
    )
    if depth + 3 > MAX_ANSWER_DEPTH:
        with pytest.raises(ParseError, match="nested deeper than"):
            cas.show("p", ident)
    else:
        assert isinstance(cas.show("p", ident).document["x"], tuple)


def test_a_malformed_answer_is_a_confide_error(cas: Cas, monkeypatch: pytest.MonkeyPatch) -> None:
    ident = Identity.generate()
    for text in (b"[]", b'{"events": 5}', b'{"events": [5]}', b'{"events": [{"seq": "1"}]}'):
        _answer(cas, monkeypatch, text)
        with pytest.raises(ConfideError):
            cas.events("p", ident)


@pytest.mark.parametrize(
    "text",
    [
        b"[1, 2]",
        b"{}",
        b'{"master_key_id": "k", "generation": "0", "changes": [], "retirements": []}',
        b'{"master_key_id": "k", "generation": true, "changes": [], "retirements": []}',
        b'{"master_key_id": 5, "generation": 0, "changes": [], "retirements": []}',
        b'{"master_key_id": "k", "generation": 0, "changes": [5], "retirements": [5]}',
        b'{"master_key_id": "k", "generation": 0, "changes": {}, "retirements": {}}',
    ],
)
def test_a_malformed_board_answer_is_a_parse_error_before_anything_is_signed(
    cas: Cas, monkeypatch: pytest.MonkeyPatch, text: bytes
) -> None:
    """The successor board's and the retirements' answers read by the four calls that sign a
    board change or a retirement (and the commands, which share successor_client): a list, a
    missing key, a generation that is no integer, listed items that are no objects were a
    TypeError or KeyError (a traceback; a 500 on the web page)."""
    answer = jsonstrict.loads(text, structure="CAS answer")
    for method in ("successor_board", "successor_retirements"):
        monkeypatch.setattr(cas._client, method, lambda *_a, **_k: answer)
    signed: list[object] = []
    for method in ("approve_board_change", "approve_retirement"):
        monkeypatch.setattr(cas._client, method, lambda *a, **_k: signed.append(a))
    ident = Identity.generate()
    calls = (
        lambda: cas.propose_board_change(
            {"require-all": [ident.fingerprint]}, ident, expires=timedelta(days=7)
        ),
        lambda: cas.approve_board_change("0" * 64, ident, expires=timedelta(days=7)),
        lambda: cas.propose_retirement("sim", {"measurement": "ab" * 32}, ident, expires=timedelta(days=7)),
        lambda: cas.approve_retirement("0" * 64, ident, expires=timedelta(days=7)),
    )
    for call in calls:
        with pytest.raises(ParseError, match=r"^the CAS's (successor board|retirements)"):
            call()
    assert signed == []


UNREACHABLE = "https://127.0.0.1:1"
# a dcap-qvl collateral bundle: it has no TCB evaluation data numbers
BUNDLE = (
    Path(__file__).parents[1]
    / "assets/sgx/automata-dcap-attestation/collateral_0825_00606a000000.dcapqvl.json"
)  # a call that got as far as connecting would be a NetworkError


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "measurements: give the CAS's expected measurement"),  # any CAS in a TEE would do
        ({"expect": {"vmpl": ["0"]}}, "measurements: give"),  # not the measurement claim
        ({"any_measurement": True, "tolerate": ["simulation"]}, "tolerate: 'simulation'"),
        ({"any_measurement": True, "tolerate": ["gpu-only"]}, "tolerate: 'gpu-only'"),
        ({"expect": {"measurement": "ab" * 48}}, "expect: 'measurement': got a string"),
        # cas attest takes --expect-witnesses N >= 1: -1 let a quorum that guarantees no trusted
        # witness's cosignature pass, 0 was taken as 1, "2" was a TypeError after the CAS was asked
        ({"any_measurement": True, "expect_witnesses": -1}, "expect_witnesses: got -1"),
        ({"any_measurement": True, "expect_witnesses": 0}, "expect_witnesses: got 0"),
        ({"any_measurement": True, "expect_witnesses": "2"}, "expect_witnesses: got '2'"),
        ({"any_measurement": True, "expect_witnesses": True}, "expect_witnesses: got True"),
        # and --min-tcb-eval-number N in 1..2**32-1
        ({"any_measurement": True, "min_tcb_eval_number": 0}, "min_tcb_eval_number: got 0"),
        ({"any_measurement": True, "min_tcb_eval_number": "17"}, "min_tcb_eval_number: got '17'"),
        ({"any_measurement": True, "min_tcb_eval_number": 1 << 32}, "min_tcb_eval_number: got 4294967296"),
        ({"any_measurement": True, "min_tcb_eval_number": True}, "min_tcb_eval_number: got True"),
        # or "auto" (cas attest --min-tcb-eval-number auto), with a PCS directory or URL only
        ({"any_measurement": True, "min_tcb_eval_number": "Auto"}, "min_tcb_eval_number: got 'Auto'"),
        ({"any_measurement": True, "min_tcb_eval_number": "auto"}, "needs collateral= a PCS directory or URL"),
        ({"any_measurement": True, "min_tcb_eval_number": "auto", "collateral": str(BUNDLE)},
         "min_tcb_eval_number='auto' needs collateral= a PCS directory or URL"),
        ({"any_measurement": True, "min_tcb_eval_number": "auto", "tcb_recovery_grace_days": -1},
         "tcb_recovery_grace_days: got -1"),
        ({"any_measurement": True, "min_tcb_eval_number": "auto", "tcb_recovery_grace_days": "30"},
         "tcb_recovery_grace_days: got '30'"),
        ({"any_measurement": True, "min_tcb_eval_number": 17, "tcb_recovery_grace_days": 30},
         "tcb_recovery_grace_days is for min_tcb_eval_number auto"),
    ],
)  # fmt: skip
def test_attested_refuses_what_cas_attest_would_not_check(options: dict[str, Any], match: str) -> None:
    """cas attest without --measurement prints the measurement for a person to check; a script
    gets no such line, so Cas.attested wants the measurement (or any_measurement=True). Its
    tolerances are those of cas attest --tolerate, and an expected claim's values a list."""
    with pytest.raises(UsageError, match=match):
        Cas.attested(UNREACHABLE, sim_key=b"unused", **options)


def test_attested_with_a_measurement_claim_or_any_measurement_goes_on_to_connect(tmp_path: Path) -> None:
    for options in (
        {"measurements": ["ab" * 48]},
        {"expect": {"mr_td": ["ab" * 48]}},
        {"any_measurement": True},
        {"any_measurement": True, "min_tcb_eval_number": "auto", "collateral": str(tmp_path)},
        {"any_measurement": True, "min_tcb_eval_number": "auto", "tcb_recovery_grace_days": 0,
         "collateral": "https://pccs.example:8081"},
    ):  # fmt: skip
        with pytest.raises(NetworkError):
            Cas.attested(UNREACHABLE, sim_key=b"unused", timeout=5.0, **options)  # type: ignore[arg-type]


def _refused_at_once(call: Any, fifo: Path) -> BaseException:
    """``call()``'s exception, which must come at once: a read that waits for a writer of
    ``fifo`` is failed (and freed by opening the FIFO for writing)."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10.0)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
        thread.join(10.0)
        pytest.fail("waited on a FIFO")
    assert outcome, "no error"
    return outcome[0]


def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(cas: Cas, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ident = Identity.generate()
    calls = {
        "policy file": lambda: cas.apply(fifo, ident),
        "client.env": lambda: Cas.from_env_file(fifo),
        "sim_key": lambda: Cas.attested(UNREACHABLE, sim_key=fifo, any_measurement=True),
        "load_policy": lambda: load_policy(fifo),  # confide policy apply's reader
        # a certificate path went straight to OpenSSL as a cafile, which waited on the FIFO
        "ca_cert": lambda: Cas.connect("https://127.0.0.1:9", ca_cert=fifo),
        "CONFIDE_CAS_CERT": lambda: Cas.from_env(
            {"CONFIDE_CAS_URL": "https://127.0.0.1:9", "CONFIDE_CAS_CERT": str(fifo)}
        ),
        "--cacert": lambda: client_tls_context(fifo),  # ledger verify, request-cosignature
    }
    for what, call in calls.items():
        error = _refused_at_once(call, fifo)
        assert isinstance(error, UsageError), (what, error)
        assert "not a regular file" in error.message, what


def test_an_event_time_too_large_for_a_float_is_a_parse_error(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integer ``at`` beyond a double's range was converted with float(): OverflowError, not
    a ConfideError."""
    ident = Identity.generate()
    event = b'{"seq": 1, "index": 0, "at": 1' + b"0" * 400 + b', "type": "t", "payload": {}}'
    _answer(cas, monkeypatch, b'{"events": [' + event + b"]}")
    with pytest.raises(ParseError, match="time"):
        cas.events("p", ident)


def _release(secrets: object, volumes: object = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"service": "s", "secrets": secrets}
    if volumes is not None:
        payload["volumes"] = volumes
    entry = Entry(EntryType.SECRET_RELEASED, "2026-12-06T00:00:00.000000Z", "p", payload).to_bytes()
    return {
        "index": 0,
        "type": "secret-release",
        "entry": base64.b64encode(entry).decode(),
        "payload": payload,
    }


@pytest.mark.parametrize(
    ("secrets", "volumes"),
    [(5, None), ("ab", None), ([5], None), ({"name": "k"}, None), ([], 5), ([], [5]), ([], "ab")],
)
def test_a_release_entry_of_another_shape_is_a_parse_error(
    cas: Cas, monkeypatch: pytest.MonkeyPatch, secrets: object, volumes: object
) -> None:
    """A release whose ``secrets`` or ``volumes`` is not a list of objects (the CAS writes the
    entries it returns) raised TypeError or AttributeError from Cas.accesses and ``ledger
    accesses`` (with a secret, and in its text output)."""
    ident = Identity.generate()
    answer = {"events": [_release(secrets, volumes)]}
    monkeypatch.setattr(cas._client, "events", lambda *_a, **_k: answer)
    key = NoteSigner.generate("example.org/log").verifier.vkey
    for secret in (None, "k"):
        with pytest.raises(ParseError, match="entry 0"):
            cas.accesses("p", ident, secret=secret, log_key=key)


@pytest.mark.parametrize("args", [["p"], ["p/k"], ["p", "--json"]])
def test_ledger_accesses_of_a_release_entry_of_another_shape_exits_10(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """``confide ledger accesses`` read such a release outside its error handling: a traceback."""
    from click.testing import CliRunner

    from confide.ledger import cli

    client = CasClient("http://127.0.0.1:1", None, plain_http_for_tests=True)  # never connects
    answer = {"events": [_release(["k"])]}

    def events(name: str, _identity: Identity) -> object:
        if name != "p":
            raise AccessDeniedError("no such policy")  # POLICY/SECRET: the policy is read next
        return answer

    monkeypatch.setattr(client, "events", events)
    verifier = NoteSigner.generate("example.org/log").verifier
    monkeypatch.setattr(cli, "_cas_inputs", lambda *_a: (client, Identity.generate(), verifier))
    result = CliRunner().invoke(cli.ledger, ["accesses", *args, "--identity", "unused"])
    assert result.exit_code == 10, result.output
    assert "entry 0: the release's secrets are not a list of objects" in result.output


# --- the successor board's answers ---------------------------------------------------------------

BOARD = b'"board": {"require-all": ["aa"]}, "board_sha256": "s", "generation": 1, "needed": 1, "master_key_id": "k"'


def _given(cas: Cas, monkeypatch: pytest.MonkeyPatch, method: str, text: bytes) -> None:
    answer = jsonstrict.loads(text, structure="CAS answer")
    monkeypatch.setattr(cas._client, method, lambda *_a, **_k: answer)


def test_the_successor_boards_answers_are_typed_and_read_only(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    approver = b'{"signer": "aa", "expires": 9, "approval": "d", "retire": null}'
    _given(cas, monkeypatch, "successor", b"{" + BOARD + b', "approvals": [{"target": "t", "platform": "sim", '
           b'"claims": {"measurement": "ab"}, "authorised": false, "approvers": [' + approver + b'], '
           b'"withdrawn": [], "retire": ["r"]}], "retired": [], "void": []}')  # fmt: skip
    shown = cas.successor()
    assert (shown.generation, shown.needed, shown.master_key_id, shown.board["require-all"]) == (
        1,
        1,
        "k",
        ("aa",),
    )
    (target,) = shown.approvals
    assert (target.target, target.retire, target.approvers[0].signer, target.approvers[0].expires) == (
        "t", ("r",), "aa", 9
    )  # fmt: skip
    with pytest.raises(TypeError):
        target.claims["measurement"] = "x"  # type: ignore[index]
    _given(cas, monkeypatch, "successor_board", b"{" + BOARD + b', "changes": [{"change": "c", "board": {}, '
           b'"board_sha256": "b", "generation": 1, "approvers": [], "withdrawn": []}]}')  # fmt: skip
    (change,) = cas.board_changes().changes
    assert (change.change, change.generation, change.approvers) == ("c", 1, ())
    _given(cas, monkeypatch, "successor_retirements", b"{" + BOARD + b', "retirements": [], "retired": []}')
    assert cas.retirements().retirements == ()


@pytest.mark.parametrize(
    ("method", "call", "text"),
    [
        ("successor", "successor", b"{" + BOARD + b', "approvals": [{"target": 5}]}'),
        ("successor", "successor", b'{"board": [], "generation": 0}'),
        ("successor_board", "board_changes", b"{" + BOARD + b', "changes": [{"change": "c"}]}'),
        ("successor_board", "board_changes", b"{" + BOARD.replace(b', "master_key_id": "k"', b"") + b"}"),
        (
            "successor_retirements",
            "retirements",
            b"{" + BOARD + b', "retirements": [{"retirement": "r", '
            b'"platform": "sim", "code": {}, "generation": "1"}]}',
        ),
        ("successor_retirements", "retirements", b"[]"),
    ],
)
def test_a_malformed_board_answer_is_a_parse_error(
    cas: Cas, monkeypatch: pytest.MonkeyPatch, method: str, call: str, text: bytes
) -> None:
    _given(cas, monkeypatch, method, text)
    with pytest.raises(ParseError):
        getattr(cas, call)()


def test_an_approvals_answer_is_checked_and_expiry_refused_before_anything_is_sent(
    cas: Cas, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = Identity.generate()
    _given(cas, monkeypatch, "successor", b'{"master_key_id": "k", "generation": 0}')
    _given(cas, monkeypatch, "approve_successor", b'{"target": "t", "digest": "d", "approvers": [1], '
           b'"needed": 2, "authorised": false, "retire": []}')  # fmt: skip
    with pytest.raises(ParseError, match="list of strings"):
        cas.approve_successor("sim", {"measurement": "ab" * 48}, ident, expires=timedelta(hours=1))
    sent: list[object] = []
    monkeypatch.setattr(cas._client, "approve_successor", lambda *a, **_k: sent.append(a))
    for expires in (timedelta(days=90, seconds=5), timedelta(0), datetime(2030, 1, 1), 5):
        with pytest.raises(UsageError, match="expires"):
            cas.approve_successor("sim", {"measurement": "ab" * 48}, ident, expires=expires)  # type: ignore[arg-type]
    assert sent == []


def test_async_attested_takes_the_automatic_minimum() -> None:
    """AsyncCas.attested passes min_tcb_eval_number='auto' and tcb_recovery_grace_days through to
    Cas.attested (the same checks, in its worker thread)."""
    import asyncio

    from confide.sdk import AsyncCas

    for options, error, match in (
        ({"min_tcb_eval_number": "auto", "collateral": str(BUNDLE)}, UsageError, "needs collateral="),
        (
            {"min_tcb_eval_number": 17, "tcb_recovery_grace_days": 1},
            UsageError,
            "tcb_recovery_grace_days is for",
        ),
        ({"min_tcb_eval_number": "auto", "collateral": str(BUNDLE.parent)}, NetworkError, ""),
    ):
        with pytest.raises(error, match=match or None):
            asyncio.run(
                AsyncCas.attested(
                    UNREACHABLE, sim_key=b"unused", any_measurement=True, timeout=5.0, **options
                )
            )  # type: ignore[arg-type]
