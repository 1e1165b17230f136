"""``ledger verify --witness VKEY --max-age DURATION``: a checkpoint must carry a cosignature of
each required witness made within DURATION of the verifier's time (and none dated beyond the
clock skew in the future), else a FreshnessError (exit 69): a log frozen on an old, already
cosigned checkpoint is refused. Time is injected everywhere (``Freshness.now``, the witnesses'
``at``, the checkpointer's monotonic clock). A quiet CAS log kept fresh by re-cosigning: real
witness servers on 127.0.0.1 and a ``prepare()``'d dev CAS's checkpointer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
from _ledger_ref import MemNodes

from cli import run_confide
from confide import errors
from confide.cas.server import Checkpointer, prepare
from confide.cas.witness_quorum import RECOSIGN_SECONDS, WitnessGuard, WitnessQuorum
from confide.ledger.auditor import Auditor, AuditorState, LocalLogClient, verify_checkpoint_update, verify_log
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.freshness import MAX_SKEW, Freshness, cosignature_times, parse_max_age
from confide.ledger.merkle import consistency_proof, mth
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, Note, NoteSignature, NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from witness_servers import Witnesses

ORIGIN = "cas.example/log"
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") for i in range(n)]


def _cp(log: NoteSigner, leaves: list[bytes]) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), mth(leaves)), log)


@pytest.fixture
def log() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def _witness(tmp_path: Path, log: NoteSigner, name: str = "w1.example") -> Witness:
    signer = NoteSigner.generate(name, SIG_TYPE_COSIGNATURE_V1)
    return Witness(signer, tmp_path / f"{name}.json", {ORIGIN: log.verifier})


def _cosigned(note: bytes, witness: Witness, at: datetime) -> bytes:
    """``note`` with ``witness``'s cosignature made ``at`` (the witness has cosigned nothing, or
    this very checkpoint: no proof needed)."""
    latest = witness.latest(ORIGIN)
    return (
        note + witness.add_checkpoint(0 if latest is None else latest.size, [], note, at=at).line().encode()
    )


def _fresh(now: datetime, max_age: timedelta = HOUR) -> Freshness:
    return Freshness(now, max_age)


# --- the pure check --------------------------------------------------------------------------


def test_a_fresh_cosignature_is_accepted_up_to_the_max_age_inclusive(tmp_path: Path, log: NoteSigner) -> None:
    w = _witness(tmp_path, log)
    note = _cosigned(_cp(log, _leaves(5)), w, T0)
    for now in (T0, T0 + timedelta(minutes=59), T0 + HOUR):  # an age of exactly --max-age passes
        signed = verify_checkpoint_update(
            None, note, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(now)
        )
        assert signed.checkpoint.size == 5


def test_a_stale_cosignature_is_refused_one_second_past_the_max_age(tmp_path: Path, log: NoteSigner) -> None:
    w = _witness(tmp_path, log)
    note = _cosigned(_cp(log, _leaves(5)), w, T0)
    with pytest.raises(errors.FreshnessError) as caught:
        verify_checkpoint_update(
            None,
            note,
            [],
            log.verifier,
            witnesses=[w.verifier],
            freshness=_fresh(T0 + HOUR + timedelta(seconds=1)),
        )
    assert caught.value.exit_code == 69
    message = caught.value.message
    assert "checkpoint 5" in message and "w1.example" in message and "--max-age 60 min" in message
    assert "frozen" in message and "2026-12-07T12:00:00Z" in message
    # Without --max-age the same checkpoint passes, as before.
    verify_checkpoint_update(None, note, [], log.verifier, witnesses=[w.verifier])


def test_a_future_cosignature_is_refused_beyond_the_skew(tmp_path: Path, log: NoteSigner) -> None:
    w = _witness(tmp_path, log)
    note = _cp(log, _leaves(5))
    at_skew = _cosigned(note, w, T0 + MAX_SKEW)
    verify_checkpoint_update(None, at_skew, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0))
    beyond = _cosigned(note, w, T0 + MAX_SKEW + timedelta(seconds=1))
    with pytest.raises(errors.FreshnessError, match=r"61 s after now .* more than the 60 s of clock skew"):
        verify_checkpoint_update(None, beyond, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0))
    # Far in the future (a cosignature made to outlive its time) too, whatever the max age.
    far = _cosigned(note, w, T0 + timedelta(days=3650))
    with pytest.raises(errors.FreshnessError, match="after now"):
        verify_checkpoint_update(
            None, far, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0, timedelta(days=366))
        )


def test_a_required_witness_without_a_cosignature_is_an_unknown_key_error(
    tmp_path: Path, log: NoteSigner
) -> None:
    w1, w2 = _witness(tmp_path, log), _witness(tmp_path, log, "w2.example")
    note = _cosigned(_cp(log, _leaves(5)), w1, T0)
    with pytest.raises(errors.UnknownKeyError, match=r"no cosignature by witness w2\.example") as caught:
        verify_checkpoint_update(
            None, note, [], log.verifier, witnesses=[w1.verifier, w2.verifier], freshness=_fresh(T0)
        )
    # ... saying what to look at (a witness not asked yet, down, or not the log's), with or
    # without --max-age
    assert "run again later" in caught.value.message and "--witness list" in caught.value.message
    with pytest.raises(errors.UnknownKeyError, match="run again later"):
        verify_checkpoint_update(None, note, [], log.verifier, witnesses=[w1.verifier, w2.verifier])
    # Every required witness must be fresh: one stale witness among fresh ones is refused, named.
    both = (
        _cosigned(_cp(log, _leaves(5)), w1, T0)
        + w2.add_checkpoint(0, [], _cp(log, _leaves(5)), at=T0 - 2 * HOUR).line().encode()
    )
    with pytest.raises(errors.FreshnessError, match=r"witness w2\.example"):
        verify_checkpoint_update(
            None, both, [], log.verifier, witnesses=[w1.verifier, w2.verifier], freshness=_fresh(T0)
        )
    verify_checkpoint_update(None, both, [], log.verifier, witnesses=[w1.verifier, w2.verifier],
                             freshness=_fresh(T0, 3 * HOUR))  # fmt: skip


def test_the_newest_of_a_witness_s_cosignatures_counts_and_every_line_is_verified(
    tmp_path: Path, log: NoteSigner
) -> None:
    w = _witness(tmp_path, log)
    note = _cp(log, _leaves(5))
    old = w.add_checkpoint(0, [], note, at=T0 - 5 * HOUR)
    new = w.add_checkpoint(5, [], note, at=T0)  # the same checkpoint, cosigned again later
    both = note + old.line().encode() + new.line().encode()
    assert sorted(cosignature_times(parse_note(both), w.verifier)) == [
        int((T0 - 5 * HOUR).timestamp()),
        int(T0.timestamp()),
    ]
    verify_checkpoint_update(None, both, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0))
    # A line whose timestamp was moved (its signature no longer verifies) rejects the note.
    forged = bytearray(new.signature)
    forged[7] ^= 1
    bad = note + NoteSignature(new.name, new.key_id, bytes(forged)).line().encode()
    with pytest.raises(errors.SignatureError):
        verify_checkpoint_update(None, bad, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0))


def test_a_rollback_or_fork_is_named_before_staleness(tmp_path: Path, log: NoteSigner) -> None:
    w = _witness(tmp_path, log)
    leaves = _leaves(8)
    seen = Checkpoint(ORIGIN, 8, mth(leaves))
    stale_smaller = _cosigned(_cp(log, leaves[:5]), w, T0 - 3 * HOUR)
    with pytest.raises(errors.RollbackError):
        verify_checkpoint_update(
            seen, stale_smaller, [], log.verifier, witnesses=[w.verifier], freshness=_fresh(T0)
        )
    # Consistent and fresh: accepted with a proof.
    w2 = _witness(tmp_path, log, "w2.example")
    grown = _cosigned(_cp(log, _leaves(12)), w2, T0)
    proof = consistency_proof(MemNodes(_leaves(12)), 8, 12)
    verify_checkpoint_update(seen, grown, proof, log.verifier, witnesses=[w2.verifier], freshness=_fresh(T0))


def test_max_age_needs_a_witness_and_an_aware_now(tmp_path: Path, log: NoteSigner) -> None:
    with pytest.raises(errors.UsageError, match="--max-age goes with --witness"):
        verify_checkpoint_update(None, _cp(log, _leaves(1)), [], log.verifier, freshness=_fresh(T0))
    with pytest.raises(errors.UsageError, match="--max-age goes with --witness"):
        Auditor(LocalLogClient(None), log.verifier, freshness=_fresh(T0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        Freshness(datetime(2026, 12, 7, 12, 0), HOUR)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("30 minutes", 1800), ("60s", 60), ("2d", 172800), ("1 week", 604800), ("366d", 366 * 86400),
     ("59s", None), ("367 days", None), ("1.5h", None), ("", None), ("-1h", None), ("1 fortnight", None)],
)  # fmt: skip
def test_max_age_takes_the_duration_syntax_of_other_options(text: str, seconds: int | None) -> None:
    if seconds is None:
        with pytest.raises(errors.UsageError, match="--max-age: got"):
            parse_max_age(text)
    else:
        assert parse_max_age(text) == timedelta(seconds=seconds)


# --- a log database, a state file ------------------------------------------------------------


def _log_db(path: Path, log: NoteSigner, n: int) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, _leaves(n, b"e"))
    Ledger().sign_checkpoint(conn, log)
    return conn


def _store_cosigned(conn: Any, witness: Witness, at: datetime) -> None:
    note = Ledger.latest_checkpoint(conn)
    assert note is not None
    size = Checkpoint.from_text(parse_note(note).text).size
    with write_transaction(conn):
        Ledger.store_checkpoint_note(conn, size, _cosigned(note, witness, at))


def test_a_stale_log_leaves_the_state_file_as_it_was(tmp_path: Path, log: NoteSigner) -> None:
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 3)
    _store_cosigned(conn, w, T0)
    state = tmp_path / "audit.json"
    client = LocalLogClient(conn)
    first = verify_log(
        client, log.verifier, state, witnesses=[w.verifier], freshness=_fresh(T0 + timedelta(minutes=5))
    )
    assert first.size == 3 and first.max_age == 3600 and first.to_json()["max_age"] == 3600
    before = state.read_bytes()
    with pytest.raises(errors.FreshnessError):
        verify_log(client, log.verifier, state, witnesses=[w.verifier], freshness=_fresh(T0 + 2 * HOUR))
    assert state.read_bytes() == before
    assert AuditorState(state).load(log.verifier) is not None
    # Without --max-age: no "max_age" member (the JSON as before).
    assert "max_age" not in verify_log(client, log.verifier, None, witnesses=[w.verifier]).to_json()


def test_a_quiet_log_is_kept_fresh_by_its_witness_cosigning_the_same_checkpoint_again(
    tmp_path: Path, log: NoteSigner
) -> None:
    """tlog-witness: the same size and root again is cosigned, with a new timestamp; the log
    stores it in place of the old one. Nothing was appended in between."""
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 3)
    _store_cosigned(conn, w, T0)
    client = LocalLogClient(conn)
    later = T0 + 3 * HOUR
    with pytest.raises(errors.FreshnessError):
        verify_log(client, log.verifier, None, witnesses=[w.verifier], freshness=_fresh(later))
    latest = Ledger.latest_checkpoint(conn)
    assert latest is not None
    bare = parse_note(latest)
    sig = w.add_checkpoint(
        3, [], sign_checkpoint(Checkpoint.from_text(bare.text), log), at=later - timedelta(minutes=1)
    )
    with write_transaction(conn):
        kept = tuple(s for s in bare.signatures if s.name != w.verifier.name)
        Ledger.store_checkpoint_note(conn, 3, Note(bare.text, (*kept, sig)).to_bytes())
    assert Ledger.size(conn) == 3
    assert verify_log(client, log.verifier, None, witnesses=[w.verifier], freshness=_fresh(later)).size == 3


# --- the CAS asks its witnesses again while its log is quiet ---------------------------------


class Clock:
    """The test's monotonic clock; the witness servers' ``datetime.now`` follows it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime.fromtimestamp(1_800_000_000 + self.now, UTC)


class WitnessTime(datetime):
    clock: Clock | None = None

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> WitnessTime:
        assert cls.clock is not None
        return cls.fromtimestamp(1_800_000_000 + cls.clock.now, tz)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    found = Clock()
    monkeypatch.setattr(WitnessTime, "clock", found)
    monkeypatch.setattr("confide.ledger.witness_http.datetime", WitnessTime)
    return found


@pytest.fixture
def dev_cas(tmp_path: Path) -> Iterator[tuple[Any, NoteSigner]]:
    cas, _evidence, _key, _cert, _env, signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    try:
        yield cas, signer
    finally:
        cas.db.dispose()


@pytest.mark.parametrize("quorum", [None, 2])
def test_a_quiet_cas_log_has_its_checkpoint_cosigned_again(
    tmp_path: Path, clock: Clock, dev_cas: tuple[Any, NoteSigner], quorum: int | None
) -> None:
    cas, signer = dev_cas
    witnesses = Witnesses(tmp_path, signer.verifier, 2)
    try:
        guard = (
            None if quorum is None else WitnessGuard(WitnessQuorum(witnesses.specs, quorum), monotonic=clock)
        )
        cp = Checkpointer(cas, signer, witnesses=witnesses.specs, guard=guard, monotonic=clock)
        first = cp.tick(force=True)
        assert first is not None and first.wait(30) and first.cosigned == 2
        conn = connect(Path(cas.db.url.split("sqlite:///", 1)[1]))
        client = LocalLogClient(conn)
        keys = [key for _, key in witnesses.specs]
        size = Ledger.size(conn)
        assert (
            verify_log(client, signer.verifier, None, witnesses=keys, freshness=_fresh(clock.wall())).size
            == size
        )
        # Quiet: nothing appended. Before the interval nobody is asked; the cosignatures age.
        clock.now += RECOSIGN_SECONDS - 1
        assert cp.tick() is None
        short = Freshness(clock.wall(), timedelta(seconds=60))
        verify_log(client, signer.verifier, None, witnesses=keys, freshness=short)
        clock.now += 2
        with pytest.raises(errors.FreshnessError):  # 61 s old: a frozen log looks so
            verify_log(
                client,
                signer.verifier,
                None,
                witnesses=keys,
                freshness=Freshness(clock.wall(), timedelta(seconds=60)),
            )
        again = cp.tick()  # the interval passed: the same checkpoint is cosigned again, newer timestamps
        assert again is not None and again.wait(30) and again.cosigned == 2
        assert Ledger.size(conn) == size
        fresh = verify_log(
            client,
            signer.verifier,
            None,
            witnesses=keys,
            freshness=Freshness(clock.wall(), timedelta(seconds=60)),
        )
        assert fresh.size == size
        note = Ledger.latest_checkpoint(conn)
        assert note is not None
        stamps = {k.name: max(cosignature_times(parse_note(note), k)) for k in keys}
        assert set(stamps.values()) == {int(clock.wall().timestamp())}
        conn.close()
        cp.stop()
    finally:
        witnesses.close()


def test_the_guard_cosigns_a_quiet_log_again_without_a_max_lag() -> None:
    clock = Clock()
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    guard = WitnessGuard(WitnessQuorum((("http://127.0.0.1:1", key),), 1), monotonic=clock)
    guard.quorum_size, guard.quorum_at, guard.attempted_at, guard.attempted_size = 4, clock.now, clock.now, 4
    assert not guard.due(4)
    clock.now += RECOSIGN_SECONDS - 0.5
    assert not guard.due(4)
    clock.now += 0.5
    assert guard.due(4)


# --- the command line ------------------------------------------------------------------------


def _cli_log(tmp_path: Path, log: NoteSigner, at: datetime) -> tuple[Path, Witness]:
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 2)
    _store_cosigned(conn, w, at)
    conn.close()
    return tmp_path / "log.db", w


def test_cli_max_age(tmp_path: Path, log: NoteSigner) -> None:
    now = datetime.now(UTC)  # the CLI reads the clock: ages far from every boundary
    db, w = _cli_log(tmp_path, log, now - 2 * HOUR)
    base = ("ledger", "verify", "--log-db", db, "--key", log.verifier.vkey, "--witness", w.verifier.vkey)
    stale = run_confide(*base, "--max-age", "1h")
    assert stale.returncode == errors.FreshnessError.exit_code == 69, stale.stderr
    assert (
        len(stale.stderr.splitlines()) == 1 and "FreshnessError" in stale.stderr and "frozen" in stale.stderr
    )
    fresh = run_confide(*base, "--max-age", "3 hours")
    assert fresh.returncode == 0, fresh.stderr
    assert "at most 10800 s old (--max-age)" in fresh.stdout
    as_json = run_confide(*base, "--max-age", "1h", "--json")
    assert as_json.returncode == 69
    assert '"class": "FreshnessError"' in as_json.stdout and '"exit_code": 69' in as_json.stdout
    for bad in (("--max-age", "soon"), ("--max-age", "10s")):
        r = run_confide(*base, *bad)
        assert r.returncode == 2 and "--max-age: got" in r.stderr, r.stderr
    alone = run_confide("ledger", "verify", "--log-db", db, "--key", log.verifier.vkey, "--max-age", "1h")
    assert alone.returncode == 2 and "--max-age goes with --witness" in alone.stderr


@pytest.mark.parametrize("guarded", [False, True])
def test_a_witness_s_rollback_answer_is_logged_without_a_guard(
    dev_cas: tuple[Any, NoteSigner], guarded: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Without ``--witness-quorum`` nothing else reports a witness's rollback or fork answer (the
    guard logs ``witness-rollback`` itself): the checkpointer's loop logs it."""
    cas, signer = dev_cas
    key = NoteSigner.generate("w.example", SIG_TYPE_COSIGNATURE_V1).verifier
    specs = (("http://127.0.0.1:1", key),)
    guard = WitnessGuard(WitnessQuorum(specs, 1)) if guarded else None
    cp = Checkpointer(cas, signer, interval=0.001, witnesses=specs, guard=guard)

    def tick(*, force: bool = False) -> None:
        cp._stop.set()
        raise errors.LogRollbackError("witness w.example cosigned size 9, this log holds 5")

    cp.tick = tick  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="confide.cas"):
        cp._run()
    logged = [r.getMessage() for r in caplog.records if "checkpoint-failed" in r.getMessage()]
    assert (logged == []) if guarded else ("LogRollbackError" in logged[0] and "size 9" in logged[0])
