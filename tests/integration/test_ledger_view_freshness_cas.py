"""``confide ledger history|accesses --witness VKEY --max-age DURATION`` (and the SDK's
``Cas.history``/``accesses`` with ``witnesses``, ``max_age``, ``now``) against a real CAS over
TLS whose witness (a ``WitnessServer`` in the test process) dates its cosignatures two hours
back: the log looks frozen. ``--max-age 1h`` refuses it (exit 69, one line, a state file left
as it was), ``--max-age 3h`` accepts it with the output of a run without the options; a bad
duration, ``--max-age`` without ``--witness`` and a witness that did not cosign are clear
errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import pytest
from test_cas_e2e import apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess, wait_for_log
from confide import errors
from confide.identity import load_identity
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, NoteVerifier
from confide.sdk import Cas
from witness_servers import Witnesses

BEHIND = timedelta(hours=2)


class LateWitnessTime(datetime):
    """The witness server's clock (``datetime.now`` in confide.ledger.witness_http), two hours
    behind: every cosignature it makes is dated then."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> LateWitnessTime:
        return cls.fromtimestamp(time.time() - BEHIND.total_seconds(), tz)


@pytest.fixture
def cas_with_late_witness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CasProcess, Witnesses]]:
    monkeypatch.setattr("confide.ledger.witness_http.datetime", LateWitnessTime)
    first = CasProcess(tmp_path / "cas", None).start()  # the log key, for the witness
    first.stop()
    witnesses = Witnesses(tmp_path, NoteVerifier.from_vkey(first.env["CONFIDE_LOG_KEY"]), 1)
    cas = CasProcess(tmp_path / "cas", None, extra_args=witnesses.args())
    try:
        cas.start()
        yield cas, witnesses
    finally:
        cas.stop()
        witnesses.close()


def test_history_and_accesses_refuse_a_frozen_log_and_accept_a_fresh_one(
    tmp_path: Path, cas_with_late_witness: tuple[CasProcess, Witnesses]
) -> None:
    cas, witnesses = cas_with_late_witness
    alice, _ = identity(cas, tmp_path, "alice")
    m = measure(cas, "/bin/true")
    assert apply(cas, tmp_path, policy_yaml("fresh", m), alice).returncode == 0
    size = wait_for_log(cas.env, 1)
    deadline = time.time() + 30
    while witnesses.size() < size:  # the CAS has its witness cosign each new checkpoint
        assert time.time() < deadline, "the witness did not cosign the checkpoint"
        time.sleep(0.1)
    (_, key) = witnesses.specs[0]
    state = tmp_path / "view.json"

    def run(command: str, target: str, *extra: str) -> object:
        return confide(cas, "ledger", command, target, "--identity", str(alice), *extra)

    for command, target in (("history", "fresh"), ("accesses", "fresh")):
        plain = run(command, target)
        assert plain.returncode == 0, plain.stderr  # type: ignore[attr-defined]
        stale = run(command, target, "--witness", key.vkey, "--max-age", "1h", "--state", str(state))
        assert stale.returncode == errors.FreshnessError.exit_code == 69, stale.stderr  # type: ignore[attr-defined]
        lines = stale.stderr.splitlines()  # type: ignore[attr-defined]
        assert len(lines) == 1 and lines[0].startswith("error: FreshnessError: ") and "frozen" in lines[0]
        assert stale.stdout == "" and not state.exists()  # type: ignore[attr-defined]
        fresh = run(command, target, "--witness", key.vkey, "--max-age", "3 hours")
        assert fresh.returncode == 0, fresh.stderr  # type: ignore[attr-defined]
        assert fresh.stdout == plain.stdout  # type: ignore[attr-defined]
        # The cosignature is required even without --max-age; another witness did not cosign.
        other = NoteSigner.generate("other.example", SIG_TYPE_COSIGNATURE_V1).verifier
        missing = run(command, target, "--witness", other.vkey)
        assert missing.returncode == errors.UnknownKeyError.exit_code, missing.stderr  # type: ignore[attr-defined]
        assert "no cosignature by witness" in missing.stderr  # type: ignore[attr-defined]
        for bad, message in (
            (("--witness", key.vkey, "--max-age", "soon"), "--max-age: got 'soon'"),
            (
                ("--witness", key.vkey, "--max-age", "10s"),
                "--max-age: got 10 seconds, expected a duration from 60 seconds",
            ),
            (("--max-age", "1h"), "--max-age goes with --witness"),
        ):
            r = run(command, target, *bad)
            assert r.returncode == 2 and message in r.stderr, r.stderr  # type: ignore[attr-defined]
            assert len(r.stderr.splitlines()) == 1  # type: ignore[attr-defined]

    # The SDK, given the time: judged at it, whatever the clock says.
    sdk = Cas.from_env(cas.env)
    me = load_identity(alice)
    cosigned_at = datetime.now(UTC) - BEHIND
    try:
        soon = cosigned_at + timedelta(minutes=10)
        assert sdk.history("fresh", me, witnesses=[key.vkey], max_age="1h", now=soon).checkpoint_size >= size
        assert (
            sdk.accesses("fresh", me, witnesses=[key.vkey], max_age=timedelta(hours=1), now=soon) is not None
        )
        for call in (sdk.history, sdk.accesses):
            with pytest.raises(errors.FreshnessError):
                call(
                    "fresh",
                    me,
                    witnesses=[key.vkey],
                    max_age="1h",
                    now=cosigned_at + timedelta(hours=1, minutes=5),
                )
        with pytest.raises(errors.UsageError, match="max_age goes with witnesses"):
            sdk.history("fresh", me, max_age="1h")
        with pytest.raises(errors.UsageError, match="max_age: got"):
            sdk.accesses("fresh", me, witnesses=[key.vkey], max_age=timedelta(seconds=5))
    finally:
        sdk.close()
