"""Handing the master key over to a successor version end to end: two ``cas serve --dev``
processes over real TLS sharing one PostgreSQL database (docs/cas.md "Handing over to a
successor version").

The first CAS is initialised with a successor board (``--successor-board``: two of alice, bob
and carol). The successor runs other code: a copy of the sources with one more file, so its
simulated measurement (its code, :mod:`confide.cas.dev_measurement`) really differs. It joins
with ``--join URL --join-as-successor`` and is refused until two members have approved exactly
its measurement (``confide cas successor approve``); a non-member's approval, one for other
claims and an expired one do not count. Then it gets the key, and the ledger shows the
approvals, the release naming the authorisation and the successor's start. An edited board row
makes the first CAS refuse to use the board. With a ``require-all`` board, a member's
withdrawal of their approval (``confide cas successor withdraw``) makes the successor refused
until that member approves again. The board is changed with its own quorum (``confide cas
successor board propose``/``approve``, the first CAS restarted in between; an approval signed
under the old board no longer counts), and the new board hands the key over with ``--retire-claim``:
the first CAS then releases its key to no one, its version does not start again on the
database, and the successor does not release the key to it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import confide

from cas_harness import ROOT, CasProcess, PostgresCluster
from confide import errors
from confide.cas.client import CasClient
from confide.cas.core import sign_document
from confide.cas.db import Database, raw_connection, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement, measure_package
from confide.cas.ledger_sink import ENTRY_TYPES
from confide.cas.server import DEV_KEY_RELEASE_CLOCK_SKEW_ENV
from confide.cas.successor import APPROVAL_TYPE, identity_digest, target_of
from confide.identity import Identity
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger

KINDS = (
    "successor-board-set", "successor-approved", "successor-approval-refused",
    "successor-withdrawn", "successor-withdrawal-refused",
    "successor-board-change-approved", "successor-board-change-refused", "successor-board-changed",
    "successor-version-retired", "master-key-released", "master-key-release-refused",
    "successor-retirement-approved", "successor-retirement-refused",
)  # fmt: skip


@pytest.fixture
def board(tmp_path: Path) -> dict[str, tuple[Path, Identity]]:
    """alice, bob and carol on the board (two of them needed); mallory is not on it."""
    people = {}
    for name in ("alice", "bob", "carol", "mallory"):
        ident = Identity.generate(name)
        ident.save(tmp_path / f"{name}.id")
        people[name] = (tmp_path / f"{name}.id", ident)
    members = [people[n][1].public.public_base64 for n in ("alice", "bob")] + [people["carol"][1].fingerprint]
    (tmp_path / "board.yaml").write_text("require-at-least-2:\n" + "".join(f"  - {m}\n" for m in members))
    return people


@pytest.fixture
def skew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file of seconds the CAS processes started by the test add to their key-release and
    successor documents' clock (``$CONFIDE_DEV_KEY_RELEASE_CLOCK_SKEW_FILE``, ``--dev`` only;
    docs/cas.md "Test knobs"): :func:`_past` moves that clock past an approval's expiry instead
    of sleeping until it."""
    path = tmp_path / "clock-skew"
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(path))
    return path


def _past(skew: Path, when: int) -> None:
    """The CAS processes' key-release clock moved to ``when`` + 1 s or later: what waiting until
    then did (the file replaced at once: a CAS reading it meanwhile sees the old or new skew)."""
    tmp = skew.with_suffix(".tmp")
    tmp.write_text(repr(max(0.0, when + 1 - time.time())))
    os.replace(tmp, skew)


@pytest.fixture
def first(
    postgres: PostgresCluster, tmp_path: Path, board: dict[str, Any], skew: Path
) -> Iterator[CasProcess]:
    cas = CasProcess(
        tmp_path / "a",
        postgres.new_database(),
        extra_args=("--successor-board", str(tmp_path / "board.yaml")),
    ).start()
    try:
        yield cas
    finally:
        cas.stop()


@pytest.fixture
def successor_src(tmp_path: Path) -> tuple[Path, str]:
    """A new version: a copy of the sources with one more file, and its simulated measurement."""
    src = tmp_path / "src-v2"
    shutil.copytree(ROOT / "src" / "confide", src / "confide", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "confide" / "release_notes.py").write_text('"""Version 2."""\n')
    measurement = measure_package(src / "confide", Path(sys.executable).resolve()).hex()
    assert measurement != cas_dev_measurement().hex()
    return src, measurement


def _successor(first: CasProcess, data_dir: Path, src: Path) -> CasProcess:
    data_dir.mkdir(mode=0o700)
    shutil.copytree(first.data_dir / "sim", data_dir / "sim")  # the simulated platform both trust
    url = first.env["CONFIDE_CAS_URL"]
    return CasProcess(
        data_dir, first.db_url, extra_args=("--join", url, "--join-as-successor"), pythonpath=src
    )


def _refused(first: CasProcess, data_dir: Path, src: Path, match: str) -> None:
    joiner = _successor(first, data_dir, src)
    with pytest.raises(RuntimeError, match=match):
        joiner.start()
    assert joiner.proc is not None and joiner.proc.returncode in (
        errors.AppraisalError.exit_code, errors.StorageError.exit_code,
    )  # fmt: skip
    assert not list(data_dir.glob("master.key*")) and not (data_dir / "cas-key.pem").exists()


def _approve(first: CasProcess, who: Path, measurement: str, expires: str = "7d") -> Any:
    return confide(
        first, "cas", "successor", "approve", "--platform", "sim", "--claim", f"measurement={measurement}",
        "--expires", expires, "--identity", str(who),
    )  # fmt: skip


def _events(db_url: str) -> list[tuple[str, dict[str, Any]]]:
    """The successor and key-release events, each checked against its ledger entry."""
    db = Database(db_url)
    try:
        with db.read() as conn:
            marks = ", ".join("?" for _ in KINDS)
            rows = raw_execute(
                conn, f"SELECT seq, type, payload FROM events WHERE type IN ({marks}) ORDER BY seq", KINDS
            ).fetchall()
            out = []
            for seq, type_, payload in rows:
                entry = Entry.from_bytes(Ledger.entry(raw_connection(conn), seq - 1) or b"")
                assert entry.type is ENTRY_TYPES[type_] and entry.payload == json.loads(payload)
                out.append((str(type_), json.loads(payload)))
            return out
    finally:
        db.dispose()


def test_a_successor_gets_the_key_only_with_the_boards_quorum(
    first: CasProcess,
    tmp_path: Path,
    board: dict[str, tuple[Path, Identity]],
    successor_src: tuple[Path, str],
    skew: Path,
) -> None:
    assert first.db_url is not None
    src, measurement = successor_src
    alice, bob, carol, mallory = (board[n] for n in ("alice", "bob", "carol", "mallory"))
    with CasClient(first.env["CONFIDE_CAS_URL"], Path(first.env["CONFIDE_CAS_CERT"])) as client:
        shown = client.successor()
    key_id = shown["master_key_id"]
    assert shown["needed"] == 2 and shown["approvals"] == []
    target = target_of(key_id, "sim", {"measurement": measurement})

    # No approval: refused (the joiner's AppraisalError carries the releasing CAS's reasons).
    _refused(first, tmp_path / "j1", src, "no successor authorisation for these claims")

    # A non-member's approval is refused at the door and recorded ...
    r = _approve(first, mallory[0], measurement)
    assert r.returncode == errors.AccessDeniedError.exit_code and "not on the successor board" in r.stderr
    # ... and one written into the database by the operator is not counted either (below).
    body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim",
            "claims": {"measurement": measurement}, "expires": int(time.time()) + 3600}  # fmt: skip
    forged = sign_document(body, mallory[1].sign, mallory[1].public.public_base64)
    db = Database(first.db_url)
    try:
        with db.write() as conn:
            raw_execute(
                conn,
                "INSERT INTO successor_approvals (target, signer, document, expires_at, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (target, mallory[1].fingerprint, json.dumps(forged), body["expires"], time.time()),
            )
    finally:
        db.dispose()

    # alice approves the successor's measurement; bob approves other claims (the current code).
    r = _approve(first, alice[0], measurement)
    assert r.returncode == 0 and r.stdout.split() == [target, "pending", "(1", "of", "2", "approvals)"], (
        r.stderr
    )
    r = _approve(first, bob[0], cas_dev_measurement().hex())
    assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr
    # carol approves it, but her approval expires before the successor asks.
    soon = int(time.time()) + 10
    r = _approve(first, carol[0], measurement, datetime.fromtimestamp(soon, UTC).isoformat())
    assert r.returncode == 0 and r.stdout.split()[1] == "authorised", r.stdout + r.stderr
    _past(skew, soon)
    _refused(
        first,
        tmp_path / "j2",
        src,
        r"no successor authorisation .* 1 valid approval\(s\), the successor board needs 2",
    )

    # bob approves the right claims: two members, unexpired: the key is handed over.
    r = _approve(first, bob[0], measurement)
    assert r.returncode == 0 and r.stdout.split()[1] == "authorised", r.stderr
    successor = _successor(first, tmp_path / "j3", src).start()
    try:
        assert successor.log is not None
        lines = [json.loads(x) for x in successor.log.read_text().splitlines() if x.startswith("{")]
        (joined,) = [x for x in lines if x["event"] == "cas-joined"]
        assert joined["identity"] == {"measurement": measurement}
        assert joined["successor_of"] == {"measurement": cas_dev_measurement().hex()}
        assert joined["master_key_id"] == key_id
        # The successor serves the same database: the board is the first CAS's, under the same key.
        with CasClient(successor.env["CONFIDE_CAS_URL"], Path(successor.env["CONFIDE_CAS_CERT"])) as client:
            assert client.successor()["board_sha256"] == shown["board_sha256"]
    finally:
        successor.stop()

    # The ledger: the board, every approval and refusal, the refused and the granted release.
    events = _events(first.db_url)
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "successor-board-set",
        "master-key-release-refused",  # j1: no approval
        "successor-approval-refused",  # mallory
        "successor-approved", "successor-approved", "successor-approved",  # alice, bob (other), carol
        "master-key-release-refused",  # j2: carol's expired
        "successor-approved",  # bob
        "master-key-released",
    ]  # fmt: skip
    assert events[0][1]["board_sha256"] == shown["board_sha256"] and events[0][1]["master_key_id"] == key_id
    assert (
        events[2][1]["signer"] == mallory[1].fingerprint
        and events[2][1]["reason_class"] == "AccessDeniedError"
    )
    assert events[4][1]["target"] != target and events[4][1]["claims"] == {
        "measurement": cas_dev_measurement().hex()
    }
    released = events[-1][1]
    assert released["identity"] == {"measurement": measurement} and released["master_key_id"] == key_id
    assert released["successor"]["authorisation"] == target
    assert released["successor"]["approvers"] == sorted([alice[1].fingerprint, bob[1].fingerprint])
    assert released["successor"]["board_sha256"] == shown["board_sha256"]


def test_an_edited_board_is_not_used(
    first: CasProcess,
    tmp_path: Path,
    board: dict[str, tuple[Path, Identity]],
    successor_src: tuple[Path, str],
) -> None:
    assert first.db_url is not None
    src, measurement = successor_src
    alice, mallory = board["alice"], board["mallory"]
    assert _approve(first, alice[0], measurement).returncode == 0
    # The operator replaces the board by one of mallory alone, keeping the stored MAC.
    db = Database(first.db_url)
    try:
        with db.write() as conn:
            (record,) = raw_execute(conn, "SELECT record FROM successor_board", ()).fetchone()
            edited = json.loads(record)
            edited["board"] = {"require-all": [mallory[1].fingerprint]}
            raw_execute(conn, "UPDATE successor_board SET record = ?", (json.dumps(edited),))
    finally:
        db.dispose()
    r = _approve(first, mallory[0], measurement)
    assert r.returncode == errors.StorageError.exit_code and "database was altered" in r.stderr, r.stderr
    r = confide(first, "cas", "successor", "show")
    assert r.returncode == errors.StorageError.exit_code and "database was altered" in r.stderr
    _refused(first, tmp_path / "j", src, "successor board does not authenticate")
    refused = [p for kind, p in _events(first.db_url) if kind == "master-key-release-refused"]
    assert refused[-1]["reason_class"] == "StorageError"


def test_a_withdrawn_approval_no_longer_counts(
    postgres: PostgresCluster,
    tmp_path: Path,
    board: dict[str, tuple[Path, Identity]],
    successor_src: tuple[Path, str],
) -> None:
    src, measurement = successor_src
    alice, bob = board["alice"], board["bob"]
    (tmp_path / "all.yaml").write_text(
        f"require-all:\n  - {alice[1].fingerprint}\n  - {bob[1].fingerprint}\n"
    )
    first = CasProcess(
        tmp_path / "a", postgres.new_database(), extra_args=("--successor-board", str(tmp_path / "all.yaml"))
    ).start()
    try:
        assert first.db_url is not None
        r = _approve(first, alice[0], measurement)
        assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr
        (digest,) = [w for w in r.stderr.split() if len(w) == 64]
        target = r.stdout.split()[0]
        r = _approve(first, bob[0], measurement)
        assert r.returncode == 0 and r.stdout.split()[1] == "authorised", r.stderr

        # bob cannot withdraw alice's approval; alice can, once.
        withdraw = ("cas", "successor", "withdraw", "--approval", digest, "--identity")
        r = confide(first, *withdraw, str(bob[0]))
        assert r.returncode == errors.AccessDeniedError.exit_code and "only its signer" in r.stderr, r.stderr
        r = confide(first, *withdraw, str(alice[0]))
        assert r.returncode == 0 and r.stdout.split() == [
            digest, "withdrawn:", target, "pending", "(1", "of", "2", "approvals)"
        ], r.stderr  # fmt: skip
        r = confide(first, *withdraw, str(alice[0]))
        assert r.returncode == errors.ConflictError.exit_code and "withdrawn already" in r.stderr, r.stderr
        (shown,) = json.loads(confide(first, "cas", "successor", "show", check=True).stdout)["approvals"]
        assert shown["authorised"] is False and [w["approval"] for w in shown["withdrawn"]] == [digest]
        assert [a["signer"] for a in shown["approvers"]] == [bob[1].fingerprint]

        _refused(first, tmp_path / "j1", src, r"1 valid approval\(s\), the successor board needs 2")

        # alice approves again (a new document): the key is handed over.
        r = _approve(first, alice[0], measurement, "6d")
        assert r.returncode == 0 and r.stdout.split()[1] == "authorised", r.stderr
        _successor(first, tmp_path / "j2", src).start().stop()

        events = _events(first.db_url)
        assert [kind for kind, _ in events] == [
            "successor-board-set", "successor-approved", "successor-approved",
            "successor-withdrawal-refused",  # bob, alice's approval
            "successor-withdrawn",
            "successor-withdrawal-refused",  # alice, twice
            "master-key-release-refused", "successor-approved", "master-key-released",
        ]  # fmt: skip
        withdrawn = events[4][1]
        assert withdrawn["approval"] == digest and withdrawn["signer"] == alice[1].fingerprint
        assert withdrawn["target"] == target and withdrawn["authorised"] is False
        assert events[-1][1]["successor"]["approvers"] == sorted([alice[1].fingerprint, bob[1].fingerprint])
    finally:
        first.stop()


def test_the_board_changes_with_its_quorum_and_the_old_version_is_retired(
    first: CasProcess,
    tmp_path: Path,
    board: dict[str, tuple[Path, Identity]],
    successor_src: tuple[Path, str],
) -> None:
    """docs/cas.md "Changing the successor board" and "Retiring the old version", end to end."""
    assert first.db_url is not None
    src, measurement = successor_src
    alice, bob, carol, mallory = (board[n] for n in ("alice", "bob", "carol", "mallory"))
    # alice approves the successor under the first board (generation 0): it will not survive.
    r = _approve(first, alice[0], measurement)
    assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr

    # The new board: carol and mallory, both needed. alice proposes it ...
    (tmp_path / "new.yaml").write_text(
        f"require-all:\n  - {carol[1].fingerprint}\n  - {mallory[1].public.public_base64}\n"
    )
    r = confide(first, "cas", "successor", "board", "propose", "--board", str(tmp_path / "new.yaml"),
                "--expires", "2d", "--identity", str(alice[0]))  # fmt: skip
    assert r.returncode == 0 and r.stdout.split()[1:] == ["pending", "(1", "of", "2", "approvals)"], r.stderr
    change = r.stdout.split()[0]
    # ... mallory, not on the current board, cannot approve it ...
    approve_change = (
        "cas",
        "successor",
        "board",
        "approve",
        "--change",
        change,
        "--expires",
        "2d",
        "--identity",
    )
    r = confide(first, *approve_change, str(mallory[0]))
    assert r.returncode == errors.AccessDeniedError.exit_code and "not on the successor board" in r.stderr
    # ... the CAS restarts (the approval is kept) ...
    first.stop()
    restarted = CasProcess(first.data_dir, first.db_url).start()
    try:
        (pending,) = json.loads(confide(restarted, "cas", "successor", "board", "show", check=True).stdout)[
            "changes"
        ]
        assert pending["change"] == change and [a["signer"] for a in pending["approvers"]] == [
            alice[1].fingerprint
        ]
        # ... and bob's approval meets the first board's rule: applied.
        r = confide(restarted, *approve_change, str(bob[0]))
        assert r.returncode == 0 and r.stdout.split()[1] == "applied", r.stderr
        assert "require-all" in r.stderr  # the board bob signed, shown to him
        shown = json.loads(confide(restarted, "cas", "successor", "show", check=True).stdout)
        assert shown["generation"] == 1 and shown["needed"] == 2 and shown["approvals"] == []
        # A replay of the change (alice again, generation 0) is stale; alice is off the board.
        r = confide(restarted, *approve_change, str(alice[0]))
        assert r.returncode == errors.UsageError.exit_code and "no pending change" in r.stderr, r.stderr
        r = _approve(restarted, alice[0], measurement)
        assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr

        # The new board approves the successor and the retirement of the releasing version.
        old = {"measurement": cas_dev_measurement().hex()}
        # carol names it by its claims, mallory by the CAS she attested (its evidence, verified).
        retire = {
            carol: ("--retire-claim", f"measurement={old['measurement']}"),
            mallory: ("--retire-attested",),
        }
        for who in (carol, mallory):
            r = confide(restarted, "cas", "successor", "approve", "--platform", "sim", "--claim",
                        f"measurement={measurement}", "--expires", "7d", "--identity", str(who[0]),
                        *retire[who])  # fmt: skip
            assert r.returncode == 0, r.stderr
        shown_retire = ["(retires", identity_digest("sim", old), "when", "it", "hands", "over)"]
        assert r.stdout.split()[1:] == ["authorised", *shown_retire], r.stdout
        assert f"measurement={old['measurement']}" in r.stderr  # what is retired, shown before signing
        # One that would retire the successor's own code is refused before anything is signed.
        r = confide(restarted, "cas", "successor", "approve", "--platform", "sim", "--claim",
                    f"measurement={measurement}", "--expires", "7d", "--identity", str(carol[0]),
                    "--retire-claim", f"measurement={measurement}")  # fmt: skip
        assert r.returncode == errors.UsageError.exit_code and "retired too" in r.stderr, r.stderr
        successor = _successor(restarted, tmp_path / "j1", src).start()
        try:
            # The retired CAS hands the key over again to the approved successor's version (a
            # successor whose answer was lost asks again: docs/cas.md "What "retired" means") ...
            _successor(restarted, tmp_path / "j2", src).start().stop()
            # ... but to no other version: not to another successor ...
            other = tmp_path / "src-v3"
            shutil.copytree(src, other, ignore=shutil.ignore_patterns("__pycache__"))
            (other / "confide" / "release_notes.py").write_text('"""Version 3."""\n')
            _refused(restarted, tmp_path / "j4", other, "this CAS's version .* was retired")
            # ... and not to its own version.
            old_joiner = tmp_path / "j3"
            old_joiner.mkdir(mode=0o700)
            shutil.copytree(first.data_dir / "sim", old_joiner / "sim")
            joiner = CasProcess(
                old_joiner, first.db_url, extra_args=("--join", restarted.env["CONFIDE_CAS_URL"])
            )
            with pytest.raises(RuntimeError, match="was retired"):
                joiner.start()
            # The successor does not release the key to the old version either.
            shutil.rmtree(old_joiner)
            old_joiner.mkdir(mode=0o700)
            shutil.copytree(first.data_dir / "sim", old_joiner / "sim")
            joiner = CasProcess(
                old_joiner,
                first.db_url,
                extra_args=("--join", successor.env["CONFIDE_CAS_URL"], "--join-as-successor"),
            )
            with pytest.raises(RuntimeError, match=r"the joining CAS's version .* was retired"):
                joiner.start()
            assert joiner.proc is not None and joiner.proc.returncode == errors.AppraisalError.exit_code
            with CasClient(
                successor.env["CONFIDE_CAS_URL"], Path(successor.env["CONFIDE_CAS_CERT"])
            ) as client:
                (retired,) = client.successor()["retired"]
            assert retired["claims"] == {"measurement": cas_dev_measurement().hex()}
        finally:
            successor.stop()
    finally:
        restarted.stop()
    # The old version does not start again on this database.
    again = CasProcess(first.data_dir, first.db_url)
    with pytest.raises(RuntimeError, match="was retired on this database"):
        again.start()
    assert again.proc is not None and again.proc.returncode == errors.AppraisalError.exit_code

    events = _events(first.db_url)
    assert [kind for kind, _ in events] == [
        "successor-board-set", "successor-approved",  # alice, generation 0
        "successor-board-change-approved",  # alice proposes
        "successor-board-change-refused",  # mallory
        "successor-board-change-approved", "successor-board-changed",  # bob: applied
        "successor-approval-refused",  # alice, off the board
        "successor-approved", "successor-approved",  # carol, mallory (retire)
        "master-key-released", "successor-version-retired",
        "master-key-released",  # j2: the approved successor's version again, nothing retired again
        "master-key-release-refused",  # j4: another version, not approved
        "master-key-release-refused",  # j3 to the retired CAS
        "master-key-release-refused",  # j3 to the successor
    ]  # fmt: skip
    changed = events[5][1]
    assert (
        changed["change"] == change
        and changed["generation"] == 1
        and changed["voided_successor_approvals"] == 1
    )
    released, retired_event = events[9][1], events[10][1]
    assert released["successor"]["retire"] is True and released["successor"]["generation"] == 1
    assert retired_event["claims"] == {"measurement": cas_dev_measurement().hex()}
    assert retired_event["successor"] == released["successor"]["authorisation"]
    assert retired_event["approvers"] == sorted([carol[1].fingerprint, mallory[1].fingerprint])
    again_released = events[11][1]["successor"]
    assert again_released["retire"] is False and again_released["retired_before"] is True


def test_a_version_is_retired_on_its_own_by_the_boards_quorum(
    first: CasProcess,
    tmp_path: Path,
    board: dict[str, tuple[Path, Identity]],
    successor_src: tuple[Path, str],
    skew: Path,
) -> None:
    """docs/cas.md "Retiring a version on its own", end to end: the successor is handed the key
    (plain approvals: the first version keeps it), then the board retires the first version's
    code through the successor's CAS (the first CAS refuses to retire itself). A withdrawn
    approval and an expired one do not count; at the quorum the first version is retired: it
    releases to no one, the successor releases nothing to it, it does not start again. A board
    change voids a pending retirement; ``--retire-attested --expect`` with a wrong value signs and
    sends nothing."""
    assert first.db_url is not None
    src, measurement = successor_src
    alice, bob, carol = (board[n] for n in ("alice", "bob", "carol"))
    old = {"measurement": cas_dev_measurement().hex()}
    for who in (alice, bob):
        assert _approve(first, who[0], measurement).returncode == 0
    successor = _successor(first, tmp_path / "s", src).start()
    try:
        # The first CAS does not retire its own code: refused before anything is stored.
        propose = ("cas", "successor", "retire", "propose", "--platform", "sim", "--claim",
                   f"measurement={old['measurement']}", "--expires", "2d", "--identity")  # fmt: skip
        r = confide(first, *propose, str(alice[0]))
        assert r.returncode == errors.UsageError.exit_code and "this CAS's own code" in r.stderr, r.stderr
        # alice proposes it to the successor's CAS, then withdraws her approval.
        r = confide(successor, *propose, str(alice[0]))
        assert r.returncode == 0 and r.stdout.split()[1:] == ["pending", "(1", "of", "2", "approvals)"], (
            r.stderr
        )
        retirement = r.stdout.split()[0]
        digest = r.stderr.split("\napproval ")[-1].split()[0]
        confide(successor, "cas", "successor", "withdraw", "--approval", digest, "--identity", str(alice[0]),
                check=True)  # fmt: skip
        approve = ("cas", "successor", "retire", "approve", "--retirement", retirement, "--expires")
        # carol approves, her approval expiring soon.
        soon = int(time.time()) + 8
        r = confide(successor, *approve, datetime.fromtimestamp(soon, UTC).isoformat(), "--identity",
                    str(carol[0]))  # fmt: skip
        assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr
        assert f"measurement={old['measurement']}" in r.stderr  # what carol signs, shown to her
        # Below the quorum nothing is retired: the first CAS still releases to its own version.
        replica = tmp_path / "j1"
        replica.mkdir(mode=0o700)
        shutil.copytree(first.data_dir / "sim", replica / "sim")
        CasProcess(replica, first.db_url, extra_args=("--join", first.env["CONFIDE_CAS_URL"])).start().stop()
        _past(skew, soon)
        # bob: his is the only approval that counts (alice's withdrawn, carol's expired).
        r = confide(successor, *approve, "2d", "--identity", str(bob[0]))
        assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr
        shown = json.loads(confide(successor, "cas", "successor", "retire", "show", check=True).stdout)
        assert shown["retired"] == [] and [a["approval"] for a in shown["retirements"][0]["withdrawn"]] == [
            digest
        ]
        # alice approves again (a new document): the quorum, applied.
        r = confide(successor, *approve, "3d", "--identity", str(alice[0]))
        assert r.returncode == 0 and r.stdout.split()[1] == "applied", r.stderr
        (retired,) = json.loads(confide(successor, "cas", "successor", "retire", "show", check=True).stdout)[
            "retired"
        ]
        assert (
            retired["claims"] == old
            and retired["retired_by"] == "board"
            and retired["retirement"] == retirement
        )
        # The first CAS releases to no one now, and the successor releases nothing to its version.
        for releaser, match in ((first, "this CAS's version .* was retired"),
                                (successor, "the joining CAS's version .* was retired")):  # fmt: skip
            joiner_dir = tmp_path / f"j-{releaser.data_dir.name}"
            joiner_dir.mkdir(mode=0o700)
            shutil.copytree(first.data_dir / "sim", joiner_dir / "sim")
            extra = ("--join-as-successor",) if releaser is successor else ()
            joiner = CasProcess(
                joiner_dir, first.db_url, extra_args=("--join", releaser.env["CONFIDE_CAS_URL"], *extra)
            )
            with pytest.raises(RuntimeError, match=match):
                joiner.start()
            assert joiner.proc is not None and joiner.proc.returncode == errors.AppraisalError.exit_code

        # --retire-attested --expect with a value the attested CAS does not have: nothing sent.
        before = len(_events(first.db_url))
        r = confide(successor, "cas", "successor", "approve", "--platform", "sim", "--claim",
                    f"measurement={'ab' * 48}", "--expires", "1d", "--identity", str(carol[0]),
                    "--retire-attested", "--expect", f"measurement={old['measurement']}")  # fmt: skip
        assert (
            r.returncode == errors.MeasurementError.exit_code and f"expected {old['measurement']}" in r.stderr
        )
        assert len(_events(first.db_url)) == before

        # A pending retirement is voided by a board change.
        r = confide(successor, "cas", "successor", "retire", "propose", "--platform", "sim", "--claim",
                    f"measurement={'ab' * 48}", "--expires", "2d", "--identity", str(carol[0]))  # fmt: skip
        assert r.returncode == 0 and "pending (1 of 2" in r.stdout, r.stderr
        (tmp_path / "new.yaml").write_text(
            f"require-all:\n  - {alice[1].fingerprint}\n  - {bob[1].fingerprint}\n"
        )
        r = confide(successor, "cas", "successor", "board", "propose", "--board", str(tmp_path / "new.yaml"),
                    "--expires", "2d", "--identity", str(alice[0]))  # fmt: skip
        r = confide(successor, "cas", "successor", "board", "approve", "--change", r.stdout.split()[0],
                    "--expires", "2d", "--identity", str(bob[0]))  # fmt: skip
        assert r.returncode == 0 and r.stdout.split()[1] == "applied", r.stderr
        shown = json.loads(confide(successor, "cas", "successor", "retire", "show", check=True).stdout)
        assert shown["retirements"] == [] and shown["generation"] == 1 and len(shown["retired"]) == 1
    finally:
        successor.stop()
    first.stop()
    # The first version does not start again on this database.
    again = CasProcess(first.data_dir, first.db_url)
    with pytest.raises(RuntimeError, match="was retired on this database"):
        again.start()
    assert again.proc is not None and again.proc.returncode == errors.AppraisalError.exit_code

    events = [(k, p) for k, p in _events(first.db_url) if k.startswith("successor-") and "board" not in k]
    kinds = [k for k, _ in events if k != "successor-approved"]
    assert kinds == [
        "successor-retirement-refused",  # the first CAS, its own code
        "successor-retirement-approved", "successor-withdrawn",  # alice
        "successor-retirement-approved",  # carol
        "successor-retirement-approved",  # bob
        "successor-retirement-approved", "successor-version-retired",  # alice again: applied
        "successor-retirement-approved",  # carol's proposal, voided by the board change
    ]  # fmt: skip
    applied = next(p for k, p in events if k == "successor-version-retired")
    assert applied["retirement"] == retirement and applied["claims"] == old
    assert applied["approvers"] == sorted([alice[1].fingerprint, bob[1].fingerprint])
    changed = next(p for k, p in _events(first.db_url) if k == "successor-board-changed")
    assert changed["voided_retirement_approvals"] == 1
