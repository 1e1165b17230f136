"""confide.sdk's successor board and log audit end to end, over a real ``confide cas serve
--dev`` (SQLite, TLS): every call has the effect of its command (read back with the other one),
raises the class the command exits with, and ``Cas.verify_log`` with a state file refuses a
rolled-back and a forked log as ``confide ledger verify --state`` does, on the same file (the
database rolled back by putting a copy of its files back, as tests/integration/
test_ledger_view_state_cas.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_ledger_view_state_cas import _copy_db, _settled

from cas_harness import ROOT, CasProcess
from confide import errors
from confide.cas.dev_measurement import cas_dev_measurement
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner
from confide.sdk import (
    BoardChangeApproval,
    Cas,
    Identity,
    LogVerification,
    RetirementApproval,
    SuccessorApproval,
    SuccessorBoard,
)
from sdk_env import app_policy

WEEK = timedelta(days=7)
SUCCESSOR = "ab" * 48  # a successor version's simulated measurement (the claim's text form)
OTHER = "cd" * 48  # a version to retire on its own (not the running CAS's)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip


def thaw(value: object) -> Any:
    """A read-only SDK value as the JSON the command prints (mappings as dicts, tuples as lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def cli_json(env: dict[str, str], *args: str) -> Any:
    r = cli(env, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Identity]]:
    """alice, bob and carol on the board (two of them needed); mallory is not on it."""
    where = tmp_path_factory.mktemp("people")
    out = {}
    for name in ("alice", "bob", "carol", "mallory"):
        ident = Identity.generate(name)
        ident.save(where / f"{name}.id")
        out[name] = (where / f"{name}.id", ident)
    members = [out[n][1].fingerprint for n in ("alice", "bob", "carol")]
    (where / "board.yaml").write_text("require-at-least-2:\n" + "".join(f"  - {m}\n" for m in members))
    return out


@pytest.fixture(scope="module")
def board_cas(people: dict[str, tuple[Path, Identity]]) -> Iterator[CasProcess]:
    board_file = people["alice"][0].parent / "board.yaml"
    proc = CasProcess(
        people["alice"][0].parent / "cas", None, extra_args=("--successor-board", str(board_file))
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_the_successor_board_through_the_sdk_is_what_the_cli_does(
    board_cas: CasProcess, people: dict[str, tuple[Path, Identity]], tmp_path: Path
) -> None:
    env = board_cas.env
    alice, bob, carol, mallory = (people[n] for n in ("alice", "bob", "carol", "mallory"))
    with Cas.from_env(env) as cas:
        # show: what the command prints, typed
        shown = cas.successor()
        printed = cli_json(env, "cas", "successor", "show")
        assert isinstance(shown, SuccessorBoard)
        assert (thaw(shown.board), shown.board_sha256, shown.generation, shown.needed, shown.master_key_id) == (
            printed["board"], printed["board_sha256"], 0, 2, printed["master_key_id"]
        )  # fmt: skip
        assert shown.approvals == () and shown.retired == ()

        # refused before anything is signed or sent, as the command refuses it
        claims = {"measurement": SUCCESSOR}
        for bad, match in (
            ({"platform": "vax", "claims": claims}, "platform: got 'vax'"),
            ({"platform": "sim", "claims": {}}, "claims: sim needs exactly measurement"),
            (
                {"platform": "sim", "claims": {"measurement": SUCCESSOR.upper()}},
                "claims: measurement=.*text form",
            ),
            (
                {"platform": "sim", "claims": claims, "retire": claims},
                "retire: the successor has the same code",
            ),
            ({"platform": "sim", "claims": claims, "retire_attested": True}, "not made by Cas.attested"),
        ):
            with pytest.raises(errors.UsageError, match=match):
                cas.approve_successor(identity=alice[1], expires=WEEK, **bad)  # type: ignore[arg-type]
        for expires, match in (
            (timedelta(days=91), "at most 90 days"),
            (timedelta(seconds=-5), "a time ahead"),
            (datetime(2030, 1, 1), "time zone"),
        ):
            with pytest.raises(errors.UsageError, match=match):
                cas.approve_successor("sim", claims, alice[1], expires=expires)
        assert cli_json(env, "cas", "successor", "show")["approvals"] == []  # nothing was sent

        # approve: alice through the SDK, bob through the command: both count
        first = cas.approve_successor("sim", claims, alice[1], expires=datetime.now(UTC) + WEEK)
        assert isinstance(first, SuccessorApproval)
        assert (first.approvers, first.needed, first.authorised) == ((alice[1].fingerprint,), 2, False)
        (listed,) = cli_json(env, "cas", "successor", "show")["approvals"]
        assert listed["target"] == first.target and [a["approval"] for a in listed["approvers"]] == [
            first.digest
        ]
        with pytest.raises(errors.AccessDeniedError, match="not on the successor board"):
            cas.approve_successor("sim", claims, mallory[1], expires=WEEK)
        r = cli(env, "cas", "successor", "approve", "--platform", "sim", "--claim", f"measurement={SUCCESSOR}",
                "--expires", "7d", "--identity", str(mallory[0]))  # fmt: skip
        assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
        # withdraw: alice's own approval, read back by the command
        with pytest.raises(errors.AccessDeniedError, match="only its signer"):
            cas.withdraw_successor_approval(first.digest, bob[1])
        withdrawn = cas.withdraw_successor_approval(first.digest, alice[1])
        with pytest.raises(errors.ConflictError, match="withdrawn already"):
            cas.withdraw_successor_approval(first.digest, alice[1])
        assert (withdrawn.approval, withdrawn.target, withdrawn.approvers) == (first.digest, first.target, ())
        (listed,) = cli_json(env, "cas", "successor", "show")["approvals"]
        assert listed["approvers"] == [] and [a["approval"] for a in listed["withdrawn"]] == [first.digest]
        r = cli(env, "cas", "successor", "approve", "--platform", "sim", "--claim", f"measurement={SUCCESSOR}",
                "--expires", "7d", "--identity", str(bob[0]))  # fmt: skip
        assert r.returncode == 0 and "pending (1 of 2 approvals)" in r.stdout, r.stderr
        (target,) = cas.successor().approvals
        assert (target.target, target.platform, dict(target.claims), target.authorised) == (
            first.target, "sim", claims, False
        )  # fmt: skip
        assert [a.signer for a in target.approvers] == [bob[1].fingerprint]
        assert [a.approval for a in target.withdrawn] == [first.digest]

        # board change: alice proposes through the SDK, bob approves through it; the command
        # lists the change and sees the new board
        new = {"require-all": [carol[1].fingerprint, mallory[1].public.public_base64]}
        with pytest.raises(errors.UsageError, match="board: that is the current successor board"):
            cas.propose_board_change(dict(shown.board), alice[1], expires=WEEK)  # type: ignore[arg-type]
        with pytest.raises(errors.ParseError):
            cas.propose_board_change({"require-most": [carol[1].fingerprint]}, alice[1], expires=WEEK)
        with pytest.raises(errors.UsageError, match="a list, got a string"):
            cas.propose_board_change({"require-all": carol[1].fingerprint}, alice[1], expires=WEEK)
        proposed = cas.propose_board_change(new, alice[1], expires=WEEK)
        assert isinstance(proposed, BoardChangeApproval)
        assert (proposed.applied, proposed.approvers, proposed.generation) == (
            False,
            (alice[1].fingerprint,),
            0,
        )
        (change,) = cli_json(env, "cas", "successor", "board", "show")["changes"]
        assert change["change"] == proposed.change
        (typed,) = cas.board_changes().changes
        assert (typed.change, typed.generation, [a.signer for a in typed.approvers]) == (
            proposed.change, 0, [alice[1].fingerprint]
        )  # fmt: skip
        with pytest.raises(errors.UsageError, match="expected the change id"):
            cas.approve_board_change("xyz", bob[1], expires=WEEK)
        with pytest.raises(errors.UsageError, match="no pending change"):
            cas.approve_board_change("0" * 64, bob[1], expires=WEEK)
        with pytest.raises(errors.AccessDeniedError):
            cas.approve_board_change(proposed.change, mallory[1], expires=WEEK)
        applied = cas.approve_board_change(proposed.change.upper(), bob[1], expires=WEEK)
        assert (applied.change, applied.applied, applied.generation) == (proposed.change, True, 1)
        printed = cli_json(env, "cas", "successor", "show")
        assert printed["generation"] == 1 and printed["needed"] == 2
        assert sorted(printed["board"]["require-all"]) == sorted(
            [carol[1].fingerprint, mallory[1].fingerprint]
        )
        assert cas.successor().approvals == ()  # bob's approval was under the old board

        # retirement: carol proposes through the SDK (the board file form too is read), mallory
        # approves through the command; the SDK reads the retired version back
        with pytest.raises(errors.UsageError, match="code: the code identity of sim is exactly measurement"):
            cas.propose_retirement("sim", {"mr_td": OTHER}, carol[1], expires=WEEK)
        with pytest.raises(errors.UsageError):  # a CAS does not retire its own version
            cas.propose_retirement(
                "sim", {"measurement": cas_dev_measurement().hex()}, carol[1], expires=WEEK
            )
        pending = cas.propose_retirement("sim", {"measurement": OTHER}, carol[1], expires=WEEK)
        assert isinstance(pending, RetirementApproval)
        assert (pending.applied, pending.approvers, pending.identity) == (
            False,
            (carol[1].fingerprint,),
            None,
        )
        (listed_r,) = cas.retirements().retirements
        assert (listed_r.retirement, listed_r.platform, dict(listed_r.code)) == (
            pending.retirement, "sim", {"measurement": OTHER}
        )  # fmt: skip
        (cli_listed,) = cli_json(env, "cas", "successor", "retire", "show")["retirements"]
        assert cli_listed["retirement"] == pending.retirement
        r = cli(env, "cas", "successor", "retire", "approve", "--retirement", pending.retirement,
                "--expires", "2d", "--identity", str(mallory[0]))  # fmt: skip
        assert r.returncode == 0 and "applied" in r.stdout, r.stderr
        after = cas.retirements()
        assert after.retirements == () and [v["platform"] for v in after.retired] == ["sim"]
        assert after.retired == cas.successor().retired
        with pytest.raises(errors.UsageError, match="no pending retirement"):
            cas.approve_retirement(pending.retirement, carol[1], expires=WEEK)
        # a board change proposed from a file, as the command reads it
        (tmp_path / "b.yaml").write_text(f"require-at-least-1:\n  - {carol[1].fingerprint}\n")
        from_file = cas.propose_board_change(tmp_path / "b.yaml", carol[1], expires=WEEK)
        assert from_file.generation == 1 and not from_file.applied


# --- the auditor's log check ----------------------------------------------------------------------


def _apply(cas: Cas, who: Identity, name: str) -> None:
    cas.apply(app_policy(name, "00" * 48, secret_value="", explicit=False), who)


def test_verify_log_remembers_the_log_and_refuses_a_rollback_and_a_fork(tmp_path: Path) -> None:
    data_dir, backup = tmp_path / "cas", tmp_path / "backup"
    backup.mkdir()
    state = tmp_path / "auditor.json"
    alice = Identity.generate()
    proc = CasProcess(data_dir, None).start()
    try:
        with Cas.from_env(proc.env) as cas:
            _apply(cas, alice, "p0")
            size = _settled(proc)
            first = cas.verify_log(state=state)
            assert isinstance(first, LogVerification)
            assert first.size >= size and first.previous_size is None and first.entries_checked == 0
            assert len(first.root) == 64
            assert state.stat().st_mode & 0o777 == 0o600
            # the command continues from the same file, and says the same
            out = cli_json(proc.env, "ledger", "verify", "--state", str(state), "--json")
            assert (out["origin"], out["size"], out["root"]) == (first.origin, first.size, first.root)
            assert out["previous_size"] == first.size
            plain = cas.verify_log()  # without a file: nothing remembered, nothing compared
            assert plain.previous_size is None and plain.size >= first.size
            with pytest.raises(errors.UsageError, match="log_key: expected a log key"):
                cas.verify_log(log_key=NoteSigner.generate("w", SIG_TYPE_COSIGNATURE_V1).verifier.vkey)
            other = NoteSigner.generate(proc.env["CONFIDE_LOG_KEY"].split("+")[0]).verifier.vkey
            with pytest.raises(errors.VerificationError):
                cas.verify_log(log_key=other)
        with (
            Cas.connect(proc.env["CONFIDE_CAS_URL"], ca_cert=proc.env["CONFIDE_CAS_CERT"]) as keyless,
            pytest.raises(errors.UsageError, match="no log key"),
        ):
            keyless.verify_log()
    finally:
        proc.stop()
    _copy_db(data_dir, backup)  # the operator's copy

    proc.start()
    try:
        with Cas.from_env(proc.env) as cas:
            for i in range(3):
                _apply(cas, alice, f"p{i + 1}")
            grown = _settled(proc)
            second = cas.verify_log(state=state)
            assert second.previous_size == first.size and second.size >= grown > first.size
            remembered = second.size
    finally:
        proc.stop()
    kept = state.read_bytes()

    _copy_db(backup, data_dir)  # the database rolled back to the copy
    proc.start()
    try:
        with Cas.from_env(proc.env) as cas:
            with pytest.raises(errors.RollbackError, match=f"size {remembered}") as caught:
                cas.verify_log(state=state)
            assert caught.value.exit_code == errors.RollbackError.exit_code == 60
            assert state.read_bytes() == kept  # nothing written
            r = cli(proc.env, "ledger", "verify", "--state", str(state))
            assert r.returncode == 60 and "RollbackError" in r.stderr, r.stderr
            # the rolled-back log grows past what was seen: another tree of that size, a fork
            n = 10
            while _settled(proc) < remembered:
                _apply(cas, alice, f"fork{n}")
                n += 1
            with pytest.raises(errors.ConsistencyError) as forked:
                cas.verify_log(state=state)
            assert forked.value.exit_code == 61 and state.read_bytes() == kept
            r = cli(proc.env, "ledger", "verify", "--state", str(state))
            assert r.returncode == 61, r.stderr
    finally:
        proc.stop()
