"""The releasing side of a successor hand-over, in process (docs/cas.md "Handing over to a
successor version"): a dev CAS initialised with a successor board releases its key to another
measurement once the board's quorum approved exactly its claims, and every other check of the
join rule still applies (debug, another simulated platform, the binding). SEV-SNP with reports
signed by a private AMD-shaped PKI (snp_fakes.py), verified for real: a new launch measurement
approved gets the key; the same approval does not cover another HOST_DATA, nor a debug guest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from snp_fakes import AT
from test_cas_key_release import AMD, Joiner, Releaser, _refused, _snp, _vcek

from confide import errors
from confide.cas import key_release
from confide.cas.board_change import CHANGE_TYPE
from confide.cas.board_ledger import BoardRolledBack
from confide.cas.core import sign_document
from confide.cas.db import raw_execute
from confide.cas.dev_measurement import cas_dev_measurement
from confide.cas.key_release import EVENT_RELEASED, IDENTITY_CLAIMS, KeyReleaser
from confide.cas.server import prepare
from confide.cas.successor import (
    APPROVAL_TYPE,
    EVENT_RETIRED,
    WITHDRAWAL_TYPE,
    Successors,
    claim_text,
    identity_digest,
    parse_approval,
    target_of,
)
from confide.cas.successor_board import board_from_json
from confide.cas.verifier import PlatformVerifier
from confide.evidence.sev_snp import GuestPolicy
from confide.identity import Identity
from confide.runtime.quote import SimQuoteProvider
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform, VerifiedEvidence

NEW = bytes([0xEE]) * 48  # the successor's simulated measurement


@pytest.fixture
def people() -> list[Identity]:
    return [Identity.generate(n) for n in ("alice", "bob", "carol")]


@pytest.fixture
def board_cas(tmp_path: Path, people: list[Identity]) -> Iterator[Releaser]:
    board = board_from_json({"require-at-least-2": [p.fingerprint for p in people]})
    cas, evidence, *_ = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None, successor_board=board
    )
    assert cas.key_release is not None and evidence is not None
    yield Releaser(cas, cas.key_release, SimPlatform.load(tmp_path / "cas" / "sim"), tmp_path / "cas")
    cas.db.dispose()


def _approve(r: Releaser, who: Identity, platform: str, claims: dict[str, str], expires: float) -> Any:
    successors = r.releaser.successors
    assert successors is not None
    body = {"type": APPROVAL_TYPE, "master_key_id": r.cas.sealer.sealing_key_id, "platform": platform,
            "claims": claims, "expires": int(expires)}  # fmt: skip
    return successors.approve(sign_document(body, who.sign, who.public.public_base64))


def test_an_approved_successor_gets_the_key_and_the_rest_of_the_rule_still_applies(
    board_cas: Releaser, people: list[Identity]
) -> None:
    claims = {"measurement": NEW.hex()}
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "0 valid approval")
    for who in people[:2]:
        _approve(board_cas, who, "sim", claims, time.time() + 600)
    # Debug evidence of the approved measurement, or evidence of another simulated platform: no.
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW, debug=True), errors.AppraisalError, "debug")
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(SimPlatform.generate(), NEW), errors.SignatureError, None)
    # Approved, not debug, bound to the joiner's key and nonce: released, naming the authorisation.
    joiner = Joiner(board_cas.releaser.new_nonce())
    key, key_id = joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    assert key == (board_cas.data_dir / "master.key").read_bytes()
    kind, payload = board_cas.events()[-1]
    assert kind == EVENT_RELEASED and payload["identity"] == claims
    assert payload["successor"]["authorisation"] == target_of(key_id, "sim", claims)
    assert payload["successor"]["approvers"] == sorted(p.fingerprint for p in people[:2])
    # The same CAS (no successor) needs no approval, and gets no "successor" in its entry.
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim)))
    assert "successor" not in board_cas.events()[-1][1]


def test_without_successors_another_version_is_refused_as_before(
    board_cas: Releaser, people: list[Identity]
) -> None:
    for who in people:
        _approve(board_cas, who, "sim", {"measurement": NEW.hex()}, time.time() + 600)
    board_cas.releaser = KeyReleaser(board_cas.cas, board_cas.releaser.own, successors=None)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(
        board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "measurement: got eeee"
    )


def _withdraw(r: Releaser, who: Identity, digest: str) -> Any:
    successors = r.releaser.successors
    assert successors is not None
    body = {"type": WITHDRAWAL_TYPE, "approval": digest, "master_key_id": r.cas.sealer.sealing_key_id,
            "time": int(time.time())}  # fmt: skip
    return successors.withdraw(sign_document(body, who.sign, who.public.public_base64))


def test_a_withdrawal_committed_before_the_releases_transaction_wins(
    board_cas: Releaser, people: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = {"measurement": NEW.hex()}
    alice, bob, carol = people
    a = _approve(board_cas, alice, "sim", claims, time.time() + 600)
    assert _approve(board_cas, bob, "sim", claims, time.time() + 600)["authorised"] is True
    # alice withdraws while the release is under way: after the joiner's evidence was appraised
    # (approvals are not read there), before the release's write transaction.
    appraise = key_release.appraise_peer

    def appraise_then_withdraw(own: Any, peer: Any, **options: Any) -> Any:
        reasons = appraise(own, peer, **options)
        _withdraw(board_cas, alice, a["digest"])
        return reasons

    monkeypatch.setattr(key_release, "appraise_peer", appraise_then_withdraw)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "1 valid approval")
    monkeypatch.undo()
    # carol approves: two members again, the key is released, alice not among the approvers.
    _approve(board_cas, carol, "sim", claims, time.time() + 600)
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    _kind, payload = board_cas.events()[-1]
    assert payload["successor"]["approvers"] == sorted([bob.fingerprint, carol.fingerprint])
    assert (
        a["digest"] not in payload["successor"]["approvals"] and len(payload["successor"]["approvals"]) == 2
    )


@pytest.fixture
def snp_board_cas(board_cas: Releaser) -> Releaser:
    """The board CAS as a CAS in an SEV-SNP guest of ``AMD.report()``'s measurement, at ``AT``."""
    board_cas.cas.verifier = PlatformVerifier(amd_roots=AMD.roots())
    own_report = _snp(AMD, bytes(64))

    def own(at: datetime) -> VerifiedEvidence:
        return board_cas.cas.verifier.verify(Platform.SEV_SNP, own_report, _vcek(AMD), at=at)

    successors = Successors(board_cas.cas, clock=AT.timestamp)
    board_cas.releaser = KeyReleaser(board_cas.cas, own, successors=successors, clock=AT.timestamp)
    return board_cas


def test_sev_snp_an_approved_launch_measurement_gets_the_key(
    snp_board_cas: Releaser, people: list[Identity]
) -> None:
    r = snp_board_cas
    new_image = bytes([0x77]) * 48
    probe = r.cas.verifier.verify(
        Platform.SEV_SNP, _snp(AMD, bytes(64), measurement=new_image), _vcek(AMD), at=AT
    )
    claims = {n: claim_text(probe.claims[n]) for n in IDENTITY_CLAIMS[Platform.SEV_SNP]}
    assert claims["measurement"] == new_image.hex() and claims["policy"].isdigit()
    for who in people[1:]:
        _approve(r, who, "sev-snp", claims, AT.timestamp() + 600)
    # The approval names the claims exactly: another HOST_DATA is another target; debug is refused.
    joiner = Joiner(r.releaser.new_nonce())
    other = _snp(AMD, joiner.binding, measurement=new_image, host_data=bytes(32))
    _refused(r, joiner.request("sev-snp", other, _vcek(AMD)), errors.AppraisalError, "0 valid approval")
    joiner = Joiner(r.releaser.new_nonce())
    debug = _snp(AMD, joiner.binding, measurement=new_image, policy=GuestPolicy(0x30000 | 1 << 19))
    _refused(r, joiner.request("sev-snp", debug, _vcek(AMD)), errors.AppraisalError, "debug")
    joiner = Joiner(r.releaser.new_nonce())
    request = joiner.request("sev-snp", _snp(AMD, joiner.binding, measurement=new_image), _vcek(AMD))
    key, _ = joiner.open(r.releaser.release(request))
    assert key == (r.data_dir / "master.key").read_bytes()
    _kind, payload = r.events()[-1]
    assert payload["simulated"] is False and payload["successor"]["claims"] == claims


def _approve_retiring(r: Releaser, who: Identity, claims: dict[str, str]) -> Any:
    successors = r.releaser.successors
    assert successors is not None
    body = {"type": APPROVAL_TYPE, "master_key_id": r.cas.sealer.sealing_key_id, "platform": "sim",
            "claims": claims, "expires": int(time.time()) + 600,
            "retire": {"measurement": cas_dev_measurement().hex()}}  # fmt: skip
    return successors.approve(sign_document(body, who.sign, who.public.public_base64))


def _retired(r: Releaser) -> list[dict[str, Any]]:
    with r.cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (EVENT_RETIRED,))
        return [json.loads(row[0]) for row in rows.fetchall()]


def test_a_hand_over_approved_with_retire_retires_the_releasing_version(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """docs/cas.md "Retiring the old version": with the quorum's ``retire``, the release retires
    the releasing CAS's version in its transaction; then that CAS releases to no one (its own
    version, the successor, another successor), no CAS of the database releases to the old
    version, the old version does not start again, and deleting the retirement is detected."""
    alice, bob, _carol = people
    claims = {"measurement": NEW.hex()}
    old = {"measurement": cas_dev_measurement().hex()}
    assert _approve_retiring(board_cas, alice, claims)["retire"] == []  # one of two
    result = _approve_retiring(board_cas, bob, claims)
    assert result["authorised"] is True and result["retire"] == [identity_digest("sim", old)]
    assert _retired(board_cas) == []  # approving retires nothing yet: the hand-over does
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    _kind, released = board_cas.events()[-1]
    assert released["successor"]["retire"] is True
    (retired,) = _retired(board_cas)
    assert retired["claims"] == old and retired["platform"] == "sim"
    assert retired["identity"] == identity_digest("sim", old)
    assert retired["successor"] == released["successor"]["authorisation"]
    assert retired["approvers"] == sorted([alice.fingerprint, bob.fingerprint])
    successors = board_cas.releaser.successors
    assert successors is not None
    assert [x["claims"] for x in successors.show()["retired"]] == [old]
    # The retired CAS releases to no one else: not to its own version, not to another successor
    # (even with a quorum of plain approvals of its claims). The successor it handed over to may
    # ask again (test_a_lost_hand_over_answer_can_be_asked_for_again).
    other = {"measurement": (bytes([0xDD]) * 48).hex()}
    for who in (alice, bob):
        _approve(board_cas, who, "sim", other, time.time() + 600)
    for measurement in (None, bytes([0xDD]) * 48):
        joiner = Joiner(board_cas.releaser.new_nonce())
        _refused(board_cas, joiner.sim_request(board_cas.sim, measurement), errors.AppraisalError,
                 "this CAS's version .* was retired")  # fmt: skip
    # Another CAS of the database (the successor's code, in process: its own evidence is NEW)
    # does not release to the old version, even with the board's approval of its claims.
    successor_own = SimQuoteProvider(board_cas.sim, NEW)

    def own_new(at: datetime) -> VerifiedEvidence:
        evidence = successor_own.get_evidence(bytes(64))
        return board_cas.cas.verifier.verify(Platform.SIMULATED, evidence.raw, {}, at=at)

    board_cas.releaser = KeyReleaser(board_cas.cas, own_new, successors=successors)
    for who in (alice, bob):
        _approve(board_cas, who, "sim", old, time.time() + 600)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim), errors.AppraisalError,
             "the joining CAS's version .* was retired")  # fmt: skip
    # ... but releases to its own version (a replica of the successor).
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    # The old version does not start again on this database.
    board_cas.cas.db.dispose()
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        prepare(board_cas.data_dir, host="127.0.0.1", dev=True, db_url=None, collateral=None)


def test_a_lost_hand_over_answer_can_be_asked_for_again(board_cas: Releaser, people: list[Identity]) -> None:
    """A retiring hand-over's transaction retires the releasing version before the successor has
    the key: when the answer is lost (the connection drops, the successor stops before it seals
    the key), the successor asks again and the retired CAS hands the key over again, to that
    successor only and while the approvals retiring it still meet the board's rule; nothing is
    retired twice. Before, the retired CAS refused it and no CAS could ever release the key: the
    secrets were lost with the old CAS's memory (docs/cas.md "What "retired" means")."""
    alice, bob, _carol = people
    claims = {"measurement": NEW.hex()}
    for who in (alice, bob):
        _approve_retiring(board_cas, who, claims)
    lost = Joiner(board_cas.releaser.new_nonce())
    board_cas.releaser.release(lost.sim_request(board_cas.sim, NEW))  # the answer never arrives
    assert len(_retired(board_cas)) == 1
    again = Joiner(board_cas.releaser.new_nonce())
    key, _ = again.open(board_cas.releaser.release(again.sim_request(board_cas.sim, NEW)))
    assert key == (board_cas.data_dir / "master.key").read_bytes()
    kind, released = board_cas.events()[-1]
    assert kind == EVENT_RELEASED and released["successor"]["retire"] is False
    assert released["successor"]["retired_before"] is True
    assert released["successor"]["approvers"] == sorted([alice.fingerprint, bob.fingerprint])
    assert len(_retired(board_cas)) == 1  # retired once
    # Its own version still gets nothing; nor does the successor once a retiring approval is
    # withdrawn (the rule is no longer met by the approvals naming the retired version).
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(
        board_cas,
        joiner.sim_request(board_cas.sim),
        errors.AppraisalError,
        "this CAS's version .* was retired",
    )
    successors = board_cas.releaser.successors
    assert successors is not None
    (entry,) = successors.show()["approvals"]
    _withdraw(
        board_cas, alice, next(a["approval"] for a in entry["approvers"] if a["signer"] == alice.fingerprint)
    )
    # A plain approval of another member does not stand in for the withdrawn retiring one.
    _approve(board_cas, people[2], "sim", claims, time.time() + 600)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "was retired")
    assert len(_retired(board_cas)) == 1


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("DELETE FROM successor_retired", errors.StorageError),  # the board's MAC covers them
        # the board with it: the ledger's retirement entry (confide.cas.board_ledger)
        ("DELETE FROM successor_board", BoardRolledBack),
    ],
)
def test_deleting_a_retirement_is_detected(
    board_cas: Releaser, people: list[Identity], statement: str, error: type[errors.StorageError]
) -> None:
    claims = {"measurement": NEW.hex()}
    for who in people[:2]:
        _approve_retiring(board_cas, who, claims)
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    with board_cas.cas.db.write() as conn:
        raw_execute(conn, statement)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim), error, "database was altered")
    board_cas.cas.db.dispose()
    with pytest.raises(errors.StorageError):
        prepare(board_cas.data_dir, host="127.0.0.1", dev=True, db_url=None, collateral=None)


def test_without_the_quorums_retire_the_old_version_is_not_retired(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """ADR 0004, amendment: an approval naming a version to retire counts only in a release that
    retires it. One member's ``retire`` of the two needed, with another's plain approval, is
    neither the retirement nor the hand-over: counting it would hand the key over without the
    retirement its signer tied the approval to (a plain approval from a member below the quorum
    would undo it). With a second plain approval the hand-over goes ahead, retiring nothing."""
    alice, bob, carol = people
    claims = {"measurement": NEW.hex()}
    assert _approve_retiring(board_cas, alice, claims)["authorised"] is False
    result = _approve(board_cas, bob, "sim", claims, time.time() + 600)
    assert result["retire"] == [] and result["authorised"] is False
    successors = board_cas.releaser.successors
    assert successors is not None
    (entry,) = successors.show()["approvals"]
    assert entry["authorised"] is False and entry["retire"] == []
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "1 valid approval")
    assert _retired(board_cas) == []
    assert _approve(board_cas, carol, "sim", claims, time.time() + 600)["authorised"] is True
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    _kind, released = board_cas.events()[-1]
    assert released["successor"]["retire"] is False
    assert released["successor"]["approvers"] == sorted([bob.fingerprint, carol.fingerprint])
    assert released["successor"]["retire_approvers"] == []
    assert _retired(board_cas) == []
    joiner = Joiner(board_cas.releaser.new_nonce())  # still releases to its own version
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim)))


def test_retire_is_read_strictly(people: list[Identity]) -> None:
    body = {"type": APPROVAL_TYPE, "master_key_id": "ab" * 16, "platform": "sim",
            "claims": {"measurement": NEW.hex()}, "expires": int(time.time()) + 600}  # fmt: skip
    for extra in (
        {"retire": False},
        {"retire": 1},
        {"retire": True},
        {"generation": 0},
        {"generation": -1},
        {"generation": "1"},
    ):
        doc = sign_document({**body, **extra}, people[0].sign, people[0].public.public_base64)
        with pytest.raises(errors.ParseError):
            parse_approval(doc)
    doc = sign_document(
        {**body, "retire": {"measurement": "00" * 48}, "generation": 2},
        people[0].sign,
        people[0].public.public_base64,
    )
    approval = parse_approval(doc)
    assert approval.retire == {"measurement": "00" * 48} and approval.generation == 2
    assert approval.target == target_of("ab" * 16, "sim", {"measurement": NEW.hex()}, 2)


def test_a_board_change_committed_before_the_releases_transaction_wins(
    board_cas: Releaser, people: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change racing with a release: applied after the joiner's evidence was appraised and
    before the release's transaction, it voids the approvals the release would have counted."""
    alice, bob, carol = people
    claims = {"measurement": NEW.hex()}
    for who in (alice, bob):
        _approve(board_cas, who, "sim", claims, time.time() + 600)
    successors = board_cas.releaser.successors
    assert successors is not None
    key_id = board_cas.cas.sealer.sealing_key_id
    new = board_from_json({"require-all": [bob.fingerprint, carol.fingerprint]})

    def change(who: Identity) -> Any:
        body = {"type": CHANGE_TYPE, "master_key_id": key_id, "generation": 0, "board": new.to_json(),
                "expires": int(time.time()) + 600}  # fmt: skip
        return successors.board_changes.approve(sign_document(body, who.sign, who.public.public_base64))

    change(alice)
    appraise = key_release.appraise_peer

    def appraise_then_change(own: Any, peer: Any, **options: Any) -> Any:
        reasons = appraise(own, peer, **options)
        assert change(carol)["applied"] is True
        return reasons

    monkeypatch.setattr(key_release, "appraise_peer", appraise_then_change)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "0 valid approval")
    monkeypatch.undo()
    # The new board approves under generation 1: released, naming generation 1.
    for who in (bob, carol):
        body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim", "claims": claims,
                "expires": int(time.time()) + 600, "generation": 1}  # fmt: skip
        successors.approve(sign_document(body, who.sign, who.public.public_base64))
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    _kind, payload = board_cas.events()[-1]
    assert payload["successor"]["generation"] == 1
    assert payload["successor"]["approvers"] == sorted([bob.fingerprint, carol.fingerprint])
    assert payload["successor"]["authorisation"] == target_of(key_id, "sim", claims, 1)
