"""``cas serve --witness-quorum`` in process: what a witness's answers mean
(``request_cosignatures``: a rollback or fork is a LogRollbackError, an unreachable witness a
NetworkError), the guard's quorum, halt and ``--witness-max-lag`` (an injected monotonic clock),
and the v2 binding of the witness set with ``confide cas attest``'s checks of it. Real witness
servers (``WitnessServer``) on 127.0.0.1, logs in SQLite files. A real ``cas serve`` with
witnesses: tests/integration/test_cas_witness_quorum_cli.py."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cli import run_confide
from confide import errors
from confide.cas.pin import AttestedWitnesses, WitnessExpectation, cas_binding, verify_cas_evidence
from confide.cas.server import prepare
from confide.cas.witness_quorum import RETRY_SECONDS, WitnessGuard, WitnessQuorum, parse_max_lag
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, NoteVerifier, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness_http import request_cosignatures
from pki import self_signed_pem
from witness_servers import Witnesses

ORIGIN = "cas.example/log"


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witnesses(tmp_path: Path, log_signer: NoteSigner) -> Iterator[Witnesses]:
    found = Witnesses(tmp_path, log_signer.verifier, 3)
    try:
        yield found
    finally:
        found.close()


def _log(path: Path) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    return conn


def _copy(conn: Any, path: Path) -> Any:
    """A consistent copy of the open log (its WAL included), opened."""
    with sqlite3.connect(path) as target:
        conn.backup(target)
    target.close()
    return _log(path)


def _grow(conn: Any, signer: NoteSigner, entries: list[bytes]) -> bytes:
    with write_transaction(conn):
        Ledger().append_batch(conn, entries)
    return Ledger().sign_checkpoint(conn, signer)


def _entries(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- what a witness's answers mean ---------------------------------------------------------


def test_a_rolled_back_log_is_a_log_rollback_error(
    tmp_path: Path, log_signer: NoteSigner, witnesses: Witnesses
) -> None:
    url, key = witnesses.specs[0]
    conn = _log(tmp_path / "log.db")
    _grow(conn, log_signer, _entries("e", 5))
    conn.close()
    shutil.copy(tmp_path / "log.db", tmp_path / "old.db")  # the backup, at size 5
    conn = _log(tmp_path / "log.db")
    request_cosignatures(conn, url, key)
    note = _grow(conn, log_signer, _entries("f", 4))
    request_cosignatures(conn, url, key, note=note)  # the witness is at 9
    conn.close()
    old = _log(tmp_path / "old.db")
    with pytest.raises(
        errors.LogRollbackError, match=re.escape("cosigned size 9 of cas.example/log, this log holds 5")
    ):
        request_cosignatures(old, url, key)
    # Its negative twin: the log itself, at 9, is cosigned again (same size, same root).
    conn = _log(tmp_path / "log.db")
    assert request_cosignatures(conn, url, key).name == key.name
    assert witnesses.witnesses[0].latest(ORIGIN).size == 9  # type: ignore[union-attr]


@pytest.mark.parametrize("extra", [0, 3])
def test_a_forked_log_is_a_log_rollback_error(
    tmp_path: Path, log_signer: NoteSigner, witnesses: Witnesses, extra: int
) -> None:
    """Two copies of the log diverge; the witness cosigned one. The other, at the same size (the
    witness answers 409 twice) or larger (it refuses the consistency proof: 422), is a fork."""
    url, key = witnesses.specs[0]
    conn = _log(tmp_path / "a.db")
    _grow(conn, log_signer, _entries("e", 5))
    conn.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    a, b = _log(tmp_path / "a.db"), _log(tmp_path / "b.db")
    request_cosignatures(a, url, key, note=_grow(a, log_signer, _entries("a", 3)))
    forked = _grow(b, log_signer, _entries("b", 3 + extra))
    with pytest.raises(errors.LogRollbackError, match="forked") as info:
        request_cosignatures(b, url, key, note=forked)
    assert info.value.exit_code == 67
    assert witnesses.witnesses[0].latest(ORIGIN).size == 8  # type: ignore[union-attr]
    # The honest copy grows on: still cosigned.
    request_cosignatures(a, url, key, note=_grow(a, log_signer, _entries("a2", 2)), old_size=8)


def test_an_unreachable_witness_is_a_network_error(
    tmp_path: Path, log_signer: NoteSigner, refused_port: int
) -> None:
    conn = _log(tmp_path / "log.db")
    _grow(conn, log_signer, _entries("e", 2))
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    with pytest.raises(errors.NetworkError, match=re.escape("witness http://127.0.0.1:")):
        request_cosignatures(conn, f"http://127.0.0.1:{refused_port}", key)


def test_cosignatures_of_several_witnesses_are_all_kept(
    tmp_path: Path, log_signer: NoteSigner, witnesses: Witnesses
) -> None:
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, log_signer, _entries("e", 3))
    for url, key in witnesses.specs:
        request_cosignatures(conn, url, key, note=note)  # the note given has no cosignature
    stored = Ledger.checkpoint_note(conn, 3)
    assert stored is not None
    assert len(parse_note(stored).signatures) == 4  # the log's and three witnesses'


# --- the guard ---------------------------------------------------------------------------------


def test_guard_counts_a_quorum_without_a_dead_witness_and_halts_on_a_fork(
    tmp_path: Path, log_signer: NoteSigner, witnesses: Witnesses, refused_port: int
) -> None:
    clock = Monotonic()
    dead = (
        f"http://127.0.0.1:{refused_port}",
        NoteSigner.generate("dead.example", SIG_TYPE_COSIGNATURE_V1).verifier,
    )
    guard = WitnessGuard(WitnessQuorum((*witnesses.specs[:2], dead), 2), monotonic=clock)
    assert guard.refusal() is None and guard.age() is None and guard.due(1)
    conn = _log(tmp_path / "log.db")
    outcome = guard.round(conn, _grow(conn, log_signer, _entries("e", 4)))
    assert (outcome.size, outcome.cosigned, [f[0] for f in outcome.failures]) == (4, 2, ["dead.example"])
    assert guard.quorum_size == 4 and guard.age() == 0.0
    assert dict((n, (c, f)) for n, c, f in guard.witnesses) == {
        "w0.example": (1, 0), "w1.example": (1, 0), "dead.example": (0, 1),
    }  # fmt: skip
    assert not guard.due(4)  # cosigned by a quorum, no --witness-max-lag: nothing to do
    assert guard.due(5)
    clock.now += 30
    assert guard.age() == 30.0 and guard.refusal() is None  # no lag bound: age alone refuses nothing

    # A copy of the database forks and reaches the witnesses first: the guard halts for good.
    copy = _copy(conn, tmp_path / "copy.db")
    url, key = witnesses.specs[0]
    request_cosignatures(copy, url, key, note=_grow(copy, log_signer, _entries("c", 1)), old_size=4)
    with pytest.raises(errors.LogRollbackError):
        guard.round(conn, _grow(conn, log_signer, _entries("e2", 1)))
    refusal = guard.refusal()
    assert isinstance(refusal, errors.LogRollbackError) and "forked" in refusal.message
    assert guard.quorum_size == 4 and not guard.due(6)  # no more rounds: restart to try again


class WitnessTime(datetime):
    """The witness servers' clock (``datetime.now`` in confide.ledger.witness_http), moved with
    the test's monotonic clock: the cosignatures' timestamps follow the test's time."""

    clock: Monotonic | None = None

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> WitnessTime:
        assert cls.clock is not None
        return cls.fromtimestamp(1_800_000_000 + cls.clock.now, tz)


def test_guard_max_lag_refuses_until_the_next_quorum(
    tmp_path: Path, log_signer: NoteSigner, witnesses: Witnesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Monotonic()
    monkeypatch.setattr(WitnessTime, "clock", clock)
    monkeypatch.setattr("confide.ledger.witness_http.datetime", WitnessTime)
    guard = WitnessGuard(WitnessQuorum(witnesses.specs, 3, max_lag=60), monotonic=clock)
    refusal = guard.refusal()
    assert isinstance(refusal, errors.NetworkError) and "(none yet)" in refusal.message
    conn = _log(tmp_path / "log.db")
    note = _grow(conn, log_signer, _entries("e", 2))
    assert guard.round(conn, note).cosigned == 3
    assert guard.refusal() is None
    clock.now += 29
    assert not guard.due(2)
    clock.now += 1  # half the bound: a quiet log is cosigned again
    assert guard.due(2)
    clock.now += 31
    refusal = guard.refusal()
    assert isinstance(refusal, errors.NetworkError) and "the newest is 61 s old" in refusal.message
    assert guard.round(conn, note).cosigned == 3  # the same checkpoint, cosigned again
    assert guard.refusal() is None and guard.halted is None
    # A round that misses the quorum is retried, not at once.
    witnesses.servers[2].shutdown()
    witnesses.servers[2].server_close()
    new = _grow(conn, log_signer, _entries("f", 1))
    assert guard.round(conn, new).cosigned == 2 and guard.quorum_size == 2
    assert not guard.due(3)
    clock.now += RETRY_SECONDS
    assert guard.due(3)


@pytest.mark.parametrize(
    ("quorum", "n", "message"),
    [(0, 2, "expected 1 to 2"), (3, 2, "expected 1 to 2"), (1, 0, "needs --witness")],
)
def test_quorum_out_of_range_is_refused(quorum: int, n: int, message: str) -> None:
    specs = tuple(
        (
            f"http://127.0.0.1:{9000 + i}",
            NoteSigner.generate(f"w{i}.example", SIG_TYPE_COSIGNATURE_V1).verifier,
        )
        for i in range(n)
    )
    with pytest.raises(errors.UsageError, match=message):
        WitnessQuorum(specs, quorum)


def test_one_witness_key_twice_is_refused() -> None:
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    again = NoteVerifier("other.example", SIG_TYPE_COSIGNATURE_V1, key.public_key)  # same key, other name
    with pytest.raises(errors.UsageError, match=re.escape("the key of 'other.example' is given twice")):
        WitnessQuorum((("http://a", key), ("http://b", again)), 2)
    with pytest.raises(errors.UsageError, match="each witness counts once"):
        WitnessQuorum((("http://a", key), ("http://b", key)), 2)
    log_key = NoteSigner.generate("log.example").verifier
    with pytest.raises(errors.UsageError, match="not a cosignature/v1 witness key"):
        WitnessQuorum((("http://a", log_key),), 1)


@pytest.mark.parametrize(
    ("text", "ok"), [("10", True), ("2592000", True), ("9", False), ("1e3", False), ("", False)]
)
def test_max_lag_values(text: str, ok: bool) -> None:
    if ok:
        assert parse_max_lag(text) == int(text)
    else:
        with pytest.raises(errors.UsageError, match="--witness-max-lag: got"):
            parse_max_lag(text)


def test_cli_refuses_quorum_options_without_what_they_need(tmp_path: Path) -> None:
    serve = ("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0", "--dev")
    r = run_confide(*serve, "--witness-quorum", "1")
    assert r.returncode == errors.UsageError.exit_code and "--witness-quorum needs --witness" in r.stderr
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier.vkey
    r = run_confide(*serve, "--witness", f"http://127.0.0.1:9={key}", "--witness-max-lag", "60")
    assert (
        r.returncode == errors.UsageError.exit_code and "--witness-max-lag needs --witness-quorum" in r.stderr
    )
    r = run_confide(*serve, "--witness", f"http://127.0.0.1:9={key}", "--witness-quorum", "2")
    assert (
        r.returncode == errors.UsageError.exit_code and "--witness-quorum: got 2, expected 1 to 1" in r.stderr
    )
    assert not (tmp_path / "cas").exists()  # refused before anything was created


# --- the v2 binding and `cas attest` -----------------------------------------------------------


def _keys(n: int) -> tuple[str, ...]:
    return tuple(
        sorted(NoteSigner.generate(f"w{i}.example", SIG_TYPE_COSIGNATURE_V1).verifier.vkey for i in range(n))
    )


def test_the_v1_binding_is_unchanged_and_v2_covers_every_witness_and_the_quorum() -> None:
    cert, log_key = b"\x30\x03\x02\x01\x01", "log.example+01234567+AQ"
    assert (
        cas_binding(cert, log_key) == hashlib.sha512(b"confide-cas/v1\x00" + cert + log_key.encode()).digest()
    )
    keys = _keys(3)
    v2 = cas_binding(cert, log_key, AttestedWitnesses(2, keys))
    config = f"quorum 2\nwitness {keys[0]}\nwitness {keys[1]}\nwitness {keys[2]}\n".encode()
    assert v2 == hashlib.sha512(b"confide-cas/v2\x00" + cert + log_key.encode() + b"\x00" + config).digest()
    others = {
        cas_binding(cert, log_key, AttestedWitnesses(q, k))
        for q, k in [(1, keys), (3, keys), (2, keys[:2]), (2, _keys(3))]
    }
    assert v2 not in others and len(others) == 4


@pytest.mark.parametrize(
    "value",
    [None, [], {"quorum": 1}, {"quorum": True, "keys": "K"}, {"quorum": "1", "keys": "K"}, {"quorum": 1, "keys": "K", "x": 1},
     {"quorum": 0, "keys": "K"}, {"quorum": 3, "keys": "K"}, {"quorum": 1, "keys": []}, {"quorum": 1, "keys": "R"},
     {"quorum": 1, "keys": "D"}, {"quorum": 1, "keys": ["not a key"]}, {"quorum": 1, "keys": "L"}],
)  # fmt: skip
def test_malformed_witness_members_are_refused(value: Any) -> None:
    keys = _keys(2)
    log_key = NoteSigner.generate("log.example").verifier.vkey
    if isinstance(value, dict) and isinstance(value.get("keys"), str):
        value = {
            **value,
            "keys": {"K": list(keys), "R": list(reversed(keys)), "D": [keys[0]] * 2, "L": [log_key]}[
                value["keys"]
            ],
        }
    with pytest.raises(errors.ParseError):
        AttestedWitnesses.from_json(value)


@pytest.fixture
def dev_cas_with_witnesses(tmp_path: Path) -> tuple[dict[str, Any], bytes, bytes, AttestedWitnesses]:
    """A --dev CAS's evidence document (prepare(), as ``cas serve`` with ``--witness-quorum 2``)."""
    attested = AttestedWitnesses(2, _keys(3))
    cas, evidence, _key, cert_path, env, _signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None, witnesses=attested
    )
    cas.db.dispose()
    assert evidence is not None
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    sim_key = (Path(env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem").read_bytes()
    return evidence.document, cert_der, sim_key, attested


def test_attest_reads_the_bound_witnesses(dev_cas_with_witnesses: Any) -> None:
    document, cert_der, sim_key, attested = dev_cas_with_witnesses
    assert document["witnesses"] == {"quorum": 2, "keys": list(attested.keys)}
    assert document["binding"].startswith("SHA-512('confide-cas/v2'")
    body = json.dumps(document).encode()
    pinned = verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=_at(document))
    assert pinned.witnesses == attested
    expect = WitnessExpectation(2)
    assert verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=_at(document), expect_witnesses=expect)
    with pytest.raises(errors.AppraisalError, match=r"witness quorum is 2 \(of 3\), expected at least 3"):
        verify_cas_evidence(
            cert_der, body, sim_key_pem=sim_key, at=_at(document), expect_witnesses=WitnessExpectation(3)
        )
    # Of a quorum of 2 over 3, one may be a witness the client does not trust.
    trusted = WitnessExpectation(1, attested.keys[:2])
    assert verify_cas_evidence(
        cert_der, body, sim_key_pem=sim_key, at=_at(document), expect_witnesses=trusted
    )
    with pytest.raises(
        errors.AppraisalError, match="guarantees 0 cosignatures by the witnesses of --expect-witness"
    ):
        verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=_at(document),
                            expect_witnesses=WitnessExpectation(1, attested.keys[:1]))  # fmt: skip


@pytest.mark.parametrize("tamper", ["drop", "quorum", "key", "add"])
def test_a_tampered_witness_claim_does_not_verify(dev_cas_with_witnesses: Any, tamper: str) -> None:
    """The operator cannot present the CAS's evidence with another witness set (or none): the
    member decides which binding is checked, and each one differs."""
    document, cert_der, sim_key, attested = dev_cas_with_witnesses
    claimed = dict(document)
    if tamper == "drop":
        del claimed["witnesses"]
    elif tamper == "quorum":
        claimed["witnesses"] = {"quorum": 3, "keys": list(attested.keys)}
    elif tamper == "key":
        claimed["witnesses"] = {"quorum": 2, "keys": sorted([*attested.keys[:2], *_keys(1)])}
    else:
        claimed["witnesses"] = {"quorum": 2, "keys": sorted([*attested.keys, *_keys(1)])}
    with pytest.raises(errors.BindingError, match="not bound to the TLS certificate"):
        verify_cas_evidence(cert_der, json.dumps(claimed).encode(), sim_key_pem=sim_key, at=_at(document))


def test_a_cas_without_witnesses_fails_an_expectation(tmp_path: Path) -> None:
    cas, evidence, _key, cert_path, env, _signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    cas.db.dispose()
    assert evidence is not None
    document = evidence.document
    assert "witnesses" not in document and document["binding"].startswith("SHA-512('confide-cas/v1'")
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    sim_key = (Path(env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem").read_bytes()
    body = json.dumps(document).encode()
    assert verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=_at(document)).witnesses is None
    with pytest.raises(errors.AppraisalError, match="has no witness quorum"):
        verify_cas_evidence(
            cert_der, body, sim_key_pem=sim_key, at=_at(document), expect_witnesses=WitnessExpectation(1)
        )
    # Claiming witnesses it did not bind does not verify either.
    claimed = {**document, "witnesses": {"quorum": 1, "keys": list(_keys(1))}}
    with pytest.raises(errors.BindingError):
        verify_cas_evidence(cert_der, json.dumps(claimed).encode(), sim_key_pem=sim_key, at=_at(document))


def _at(document: dict[str, Any]) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(document["obtained_at"][:-1]).replace(tzinfo=UTC)


@pytest.mark.parametrize("with_witnesses", [True, False])
def test_cas_attest_prints_the_witness_quorum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, with_witnesses: bool
) -> None:
    """``confide cas attest`` says which witnesses a CAS binds, or that it has none, and hands
    ``--expect-witnesses``/``--expect-witness`` (keys read as verifier keys) to the check."""
    from datetime import UTC, datetime

    from click.testing import CliRunner

    from confide.cas import cli, pin
    from confide.verify.result import Platform, VerifiedEvidence

    attested = AttestedWitnesses(2, _keys(3)) if with_witnesses else None
    evidence = VerifiedEvidence(
        platform=Platform.SIMULATED, claims={"measurement": "cd" * 48}, verified_at=datetime.now(UTC),
        evidence_digest="00" * 32, simulated=True,
    )  # fmt: skip
    pinned = pin.PinnedCas(
        "https://cas",
        self_signed_pem(tmp_path / "cas.pem").read_bytes(),
        "ab" * 32,
        "log-key",
        evidence,
        witnesses=attested,
    )
    seen: list[object] = []

    def attest(url: str, **kw: Any) -> pin.PinnedCas:
        seen.append(kw["expect_witnesses"])
        return pinned

    monkeypatch.setattr(pin, "attest_cas", attest)
    result = CliRunner().invoke(cli.cas, ["attest", "https://cas.example"])
    assert result.exit_code == 0, result.output
    if attested is None:
        assert "witness quorum: none (the CAS does not check its database against witnesses)" in result.stderr
    else:
        assert "witness quorum: 2 of 3\n" in result.stderr
        assert all(f"    witness: {k}\n" in result.stderr for k in attested.keys)
    keys = _keys(1)
    result = CliRunner().invoke(
        cli.cas, ["attest", "https://cas.example", "--expect-witness", f" {keys[0]} "]
    )
    assert result.exit_code == 0, result.output
    assert seen[-1] == WitnessExpectation(1, keys)
    result = CliRunner().invoke(cli.cas, ["attest", "https://cas.example", "--expect-witness", "nope"])
    assert result.exit_code != 0 and isinstance(result.exception, errors.UsageError)
    assert "--expect-witness: " in result.exception.message
