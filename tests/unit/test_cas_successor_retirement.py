"""Retiring a version on its own (confide.cas.retirement; docs/cas.md "Retiring a version on its
own"), in process on a ``--dev`` CAS with a board of two of alice, bob and carol: below the quorum
nothing is retired; at the quorum the named code is retired in the approval's transaction (it
then releases to no one, is released to by no one, does not start); withdrawn and expired
approvals do not count; a board change voids pending retirement approvals; a CAS refuses to
retire its own code; documents are read strictly; schema 11 migrates a schema-10 retirement.
``cas successor approve --retire-attested --expect``: a mismatch is refused before anything is
signed or sent. The same end to end over TLS: tests/integration/test_cas_successor.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_cas_key_release import Joiner, Releaser, _refused
from test_cas_successor_release import NEW, _approve, board_cas, people
from test_cas_successor_retire import OTHER, _sim_own

from confide import errors
from confide.cas.board_change import CHANGE_TYPE
from confide.cas.core import sign_document
from confide.cas.db import SCHEMA_VERSION, Database, raw_connection, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement
from confide.cas.key_release import KeyReleaser
from confide.cas.ledger_sink import ENTRY_TYPES
from confide.cas.retirement import RETIREMENT_TYPE, parse_retirement_approval, retirement_id
from confide.cas.server import prepare
from confide.cas.successor import WITHDRAWAL_TYPE, Successors, code_identity, identity_digest
from confide.cas.successor_board import board_from_json
from confide.identity import Identity
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger

__all__ = ["board_cas", "people"]  # fixtures, re-used

KINDS = ("successor-retirement-approved", "successor-retirement-refused", "successor-version-retired")


def _successors(r: Releaser) -> Successors:
    successors = r.releaser.successors
    assert successors is not None
    return successors


def _retirement(
    r: Releaser, who: Identity, code: bytes, *, expires: float | None = None, generation: int = 0
) -> dict[str, Any]:
    body = {"type": RETIREMENT_TYPE, "master_key_id": r.cas.sealer.sealing_key_id, "generation": generation,
            "platform": "sim", "code": {"measurement": code.hex()},
            "expires": int(time.time() + 600 if expires is None else expires)}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _events(r: Releaser) -> list[tuple[str, dict[str, Any]]]:
    """The retirement events, each checked against its ledger entry."""
    with r.cas.db.read() as conn:
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


def _count(r: Releaser, table: str) -> int:
    with r.cas.db.read() as conn:
        return int(raw_execute(conn, f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _as(r: Releaser, measurement: bytes) -> KeyReleaser:
    """A CAS of the version ``measurement`` on the same database (another version holding the key)."""
    return KeyReleaser(r.cas, _sim_own(r, measurement), successors=_successors(r))


def test_a_retirement_applies_at_the_quorum_and_the_version_is_retired(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """OTHER, another old version holding the key, is retired by the board from the dev CAS: not
    with one approval of two; with the second, in its transaction. Then OTHER releases to no one,
    no CAS releases to it (not even with the board's successor approvals of its claims), and it
    does not start; the dev CAS still releases to its own version."""
    r = board_cas
    s = _successors(r)
    alice, bob, carol = people
    other = {"measurement": OTHER.hex()}
    # Before: OTHER releases the key to its own version.
    releaser = _as(r, OTHER)
    joiner = Joiner(releaser.new_nonce())
    joiner.open(releaser.release(joiner.sim_request(r.sim, OTHER)))

    first = s.retirements.approve(_retirement(r, alice, OTHER))
    rid = retirement_id(r.cas.sealer.sealing_key_id, 0, "sim", other)
    assert (
        first["retirement"] == rid and first["applied"] is False and first["approvers"] == [alice.fingerprint]
    )
    assert _count(r, "successor_retired") == 0
    (pending,) = s.retirements.show()["retirements"]
    assert pending["code"] == other and [a["signer"] for a in pending["approvers"]] == [alice.fingerprint]
    s.refuse_retired_start(_sim_own(r, OTHER))  # one approval: OTHER still starts ...
    joiner = Joiner(releaser.new_nonce())  # ... and releases
    joiner.open(releaser.release(joiner.sim_request(r.sim, OTHER)))

    second = s.retirements.approve(_retirement(r, bob, OTHER))
    assert second["applied"] is True and second["identity"] == identity_digest("sim", other)
    assert s.retirements.show()["retirements"] == []  # applied: its approvals are gone
    (retired,) = s.retirements.show()["retired"]
    assert retired["claims"] == other and retired["retired_by"] == "board" and retired["retirement"] == rid
    assert s.show()["retired"] == [retired]
    # OTHER releases to no one, not even to its own version ...
    dev, r.releaser = r.releaser, releaser
    joiner = Joiner(releaser.new_nonce())
    _refused(r, joiner.sim_request(r.sim, OTHER), errors.AppraisalError, "this CAS's version .* was retired")
    r.releaser = dev
    # ... does not start on the database ...
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        s.refuse_retired_start(_sim_own(r, OTHER))
    # ... and the dev CAS releases to it not even with the board's approval of its claims.
    for who in (alice, bob):
        _approve(r, who, "sim", other, time.time() + 600)
    joiner = Joiner(r.releaser.new_nonce())
    _refused(
        r, joiner.sim_request(r.sim, OTHER), errors.AppraisalError, "the joining CAS's version .* was retired"
    )
    # The dev CAS's own version is not retired: it releases to it, and NEW is still approvable.
    joiner = Joiner(r.releaser.new_nonce())
    joiner.open(r.releaser.release(joiner.sim_request(r.sim, cas_dev_measurement())))
    s.refuse_retired_start(_sim_own(r, cas_dev_measurement()))
    # Retiring it again is refused; so is a non-member's approval (recorded).
    with pytest.raises(errors.ConflictError, match="retired already"):
        s.retirements.approve(_retirement(r, carol, OTHER))
    with pytest.raises(errors.AccessDeniedError, match="not on the successor board"):
        s.retirements.approve(_retirement(r, Identity.generate("mallory"), NEW))
    # OTHER's CAS, retired but still running, takes no retirement: it could not hand the key on.
    retired_cas = Successors(r.cas, own=_sim_own(r, OTHER))
    with pytest.raises(errors.AppraisalError, match="own version was retired"):
        retired_cas.retirements.approve(_retirement(r, carol, NEW))
    assert _count(r, "successor_retirement_approvals") == 0
    kinds = [k for k, _ in _events(r)]
    assert kinds == [
        "successor-retirement-approved", "successor-retirement-approved", "successor-version-retired",
        "successor-retirement-refused", "successor-retirement-refused", "successor-retirement-refused",
    ]  # fmt: skip
    applied = _events(r)[2][1]
    assert applied["retirement"] == rid and applied["claims"] == other and applied["retired_by"] == "board"
    assert (
        applied["approvers"] == sorted([alice.fingerprint, bob.fingerprint])
        and len(applied["approvals"]) == 2
    )
    # Deleting the retirement is detected (the board's MAC covers it).
    with r.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_retired")
    with pytest.raises(errors.StorageError):
        s.refuse_retired_start(_sim_own(r, OTHER))


def test_withdrawn_and_expired_approvals_do_not_count(board_cas: Releaser, people: list[Identity]) -> None:
    r = board_cas
    s = _successors(r)
    alice, bob, carol = people
    key_id = r.cas.sealer.sealing_key_id
    # carol's approval expires before bob's comes: one of two that count, nothing retired.
    now = time.time()
    s.retirements.approve(_retirement(r, carol, OTHER, expires=now + 60))
    s.clock = lambda: now + 120
    bobs = _retirement(r, bob, OTHER, expires=now + 600)
    first = s.retirements.approve(bobs)
    assert first["applied"] is False and first["approvers"] == [bob.fingerprint]
    with pytest.raises(errors.UsageError, match="expired already"):
        s.retirements.approve(_retirement(r, carol, OTHER, expires=now + 60))

    def withdrawal(who: Identity, digest: str) -> dict[str, Any]:
        body = {"type": WITHDRAWAL_TYPE, "approval": digest, "master_key_id": key_id, "time": int(now + 120)}
        return sign_document(body, who.sign, who.public.public_base64)

    # bob withdraws his: alice's then is one of two that count, nothing retired.
    with pytest.raises(errors.AccessDeniedError, match="only its signer"):
        s.withdraw(withdrawal(alice, first["digest"]))
    w = s.withdraw(withdrawal(bob, first["digest"]))
    assert w["target"] == first["retirement"] and w["approvers"] == [] and w["authorised"] is False
    assert w["approval"] == first["digest"]
    assert s.retirements.approve(_retirement(r, alice, OTHER, expires=now + 600))["applied"] is False
    (listed,) = s.retirements.show()["retirements"]
    assert [a["approval"] for a in listed["withdrawn"]] == [first["digest"]]
    assert [a["signer"] for a in listed["approvers"]] == [alice.fingerprint]
    with pytest.raises(errors.ConflictError, match="was withdrawn"):  # bob's document, replayed
        s.retirements.approve(bobs)
    assert _count(r, "successor_retired") == 0
    s.refuse_retired_start(_sim_own(r, OTHER))
    (withdrawn,) = (p for k, p in _event_rows(r, "successor-withdrawn"))
    assert withdrawn["retirement"] == first["retirement"] and withdrawn["code"] == {
        "measurement": OTHER.hex()
    }
    # bob signs again (a new document): two that count, applied.
    assert s.retirements.approve(_retirement(r, bob, OTHER, expires=now + 900))["applied"] is True
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        s.refuse_retired_start(_sim_own(r, OTHER))


def _event_rows(r: Releaser, kind: str) -> list[tuple[str, dict[str, Any]]]:
    with r.cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (kind,)).fetchall()
    return [(kind, json.loads(row[0])) for row in rows]


def test_a_board_change_voids_pending_retirement_approvals(
    board_cas: Releaser, people: list[Identity]
) -> None:
    r = board_cas
    s = _successors(r)
    alice, bob, carol = people
    key_id = r.cas.sealer.sealing_key_id
    pending = _retirement(r, alice, OTHER)
    s.retirements.approve(pending)
    new = board_from_json({"require-all": [alice.fingerprint, bob.fingerprint]})
    for who in (alice, bob):
        body = {"type": CHANGE_TYPE, "master_key_id": key_id, "generation": 0, "board": new.to_json(),
                "expires": int(time.time()) + 600}  # fmt: skip
        result = s.board_changes.approve(sign_document(body, who.sign, who.public.public_base64))
    assert result["applied"] is True
    assert _count(r, "successor_retirement_approvals") == 0
    with r.cas.db.read() as conn:
        (payload,) = raw_execute(
            conn, "SELECT payload FROM events WHERE type = 'successor-board-changed'"
        ).fetchone()
    assert json.loads(payload)["voided_retirement_approvals"] == 1
    # bob's approval of the old generation is stale; the operator writing alice's back counts nothing.
    with pytest.raises(errors.ConflictError, match="board changed since"):
        s.retirements.approve(_retirement(r, bob, OTHER))
    approval = parse_retirement_approval(pending)
    with r.cas.db.write() as conn:
        raw_execute(
            conn,
            "INSERT INTO successor_retirement_approvals (retirement, signer, document, expires_at, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (approval.retirement, alice.fingerprint, json.dumps(pending), float(approval.expires), 0.0),
        )
    assert s.retirements.show()["retirements"] == []
    # carol, off the new board, is refused; alice and bob under generation 1 retire OTHER.
    with pytest.raises(errors.AccessDeniedError):
        s.retirements.approve(_retirement(r, carol, OTHER, generation=1))
    assert s.retirements.approve(_retirement(r, alice, OTHER, generation=1))["applied"] is False
    assert s.retirements.approve(_retirement(r, bob, OTHER, generation=1))["applied"] is True
    (retired,) = s.retirements.show()["retired"]
    assert retired["claims"] == {"measurement": OTHER.hex()}


def test_a_cas_does_not_retire_its_own_code(board_cas: Releaser, people: list[Identity]) -> None:
    """The dev CAS refuses an approval naming its own code (recorded; nothing stored), so it never
    applies its own retirement; a CAS without evidence of its own takes no retirement approval."""
    r = board_cas
    s = _successors(r)
    alice, _bob, _carol = people
    with pytest.raises(errors.UsageError, match="this CAS's own code"):
        s.retirements.approve(_retirement(r, alice, cas_dev_measurement()))
    assert _count(r, "successor_retirement_approvals") == 0
    ((kind, refused),) = _events(r)
    assert kind == "successor-retirement-refused" and refused["signer"] == alice.fingerprint
    blind = Successors(r.cas)  # no own evidence
    with pytest.raises(errors.UsageError, match="no evidence of its own"):
        blind.retirements.approve(_retirement(r, alice, OTHER))
    assert _count(r, "successor_retirement_approvals") == 0


def _signed(who: Identity, **changes: Any) -> dict[str, Any]:
    body = {"type": RETIREMENT_TYPE, "master_key_id": "ab" * 16, "generation": 0, "platform": "sim",
            "code": {"measurement": "cd" * 48}, "expires": int(time.time()) + 600, **changes}  # fmt: skip
    return sign_document({k: v for k, v in body.items() if v is not ...}, who.sign, who.public.public_base64)


@pytest.mark.parametrize(
    "changes",
    [
        {"generation": ...},  # generation is always named (0 too)
        {"generation": True},
        {"generation": -1},
        {"expires": "soon"},
        {"master_key_id": "AB" * 16},
        {"platform": "az-vtpm"},
        {"code": {"measurement": "CD" * 48}},  # not the text form
        {"code": {}},
        {"code": {"measurement": "cd" * 48, "policy": "0"}},  # a host-set claim is not code
        {"platform": "tdx", "code": {"mr_td": "00" * 48}},  # TDX needs mr_td, rtmr1 and rtmr2
        {"retire": True},  # an unknown field
    ],
)
def test_retirement_documents_are_read_strictly(people: list[Identity], changes: dict[str, Any]) -> None:
    with pytest.raises(errors.ParseError):
        parse_retirement_approval(_signed(people[0], **changes))


def test_a_forged_retirement_document_does_not_verify(people: list[Identity]) -> None:
    good = _signed(people[0])
    assert parse_retirement_approval(good).code == {"measurement": "cd" * 48}
    with pytest.raises(errors.SignatureError):
        parse_retirement_approval({**good, "code": {"measurement": "ef" * 48}})
    tdx = {"mr_td": "00" * 48, "rtmr1": "11" * 48, "rtmr2": "22" * 48}
    approval = parse_retirement_approval(_signed(people[0], platform="tdx", code=tdx))
    assert approval.code_identity == code_identity("tdx", {**tdx, "rtmr0": "33" * 48, "mr_owner": "44" * 48})


def test_schema_11_keeps_a_schema_10_retirement(board_cas: Releaser, people: list[Identity]) -> None:
    """A schema-10 database (no ``retired_by``, no retirement approvals table) with a hand-over's
    retirement migrates to schema 11: the retirement holds, listed as a hand-over's."""
    r = board_cas
    s = _successors(r)
    old = {"measurement": cas_dev_measurement().hex()}
    for who in people[:2]:
        body = {"type": "confide/successor-approval/v1", "master_key_id": r.cas.sealer.sealing_key_id,
                "platform": "sim", "claims": {"measurement": NEW.hex()}, "expires": int(time.time()) + 600,
                "retire": old}  # fmt: skip
        s.approve(sign_document(body, who.sign, who.public.public_base64))
    joiner = Joiner(r.releaser.new_nonce())
    joiner.open(r.releaser.release(joiner.sim_request(r.sim, NEW)))
    with r.cas.db.write() as conn:  # back to what a schema-10 CAS left
        raw_execute(conn, "DROP TABLE successor_retirement_approvals")
        raw_execute(conn, "ALTER TABLE successor_retired DROP COLUMN retired_by")
        raw_execute(conn, "UPDATE meta SET value = '10' WHERE key = 'schema_version'")
    assert r.cas.db.migrate() == SCHEMA_VERSION
    (retired,) = s.show()["retired"]
    assert retired["claims"] == old and retired["retired_by"] == "hand-over" and "successor" in retired
    assert s.retirements.show()["retirements"] == []
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        s.refuse_retired_start(_sim_own(r, cas_dev_measurement()))


def test_schema_11_migrates_a_schema_10_database_on_postgresql(postgres: Any) -> None:
    db = Database(postgres.new_database())
    try:
        assert db.migrate() == SCHEMA_VERSION
        with db.write() as conn:  # back to what a schema-10 CAS left, with a retirement
            raw_execute(conn, "DROP TABLE successor_retirement_approvals")
            raw_execute(conn, "ALTER TABLE successor_retired DROP COLUMN retired_by")
            raw_execute(conn, "INSERT INTO successor_retired (identity, platform, claims, successor, created_at)"
                        " VALUES (?, ?, ?, ?, ?)", ("ab" * 32, "sim", "{}", "cd" * 32, 0.0))  # fmt: skip
            raw_execute(conn, "UPDATE meta SET value = '10' WHERE key = 'schema_version'")
        assert db.migrate() == SCHEMA_VERSION
        with db.read() as conn:
            assert raw_execute(conn, "SELECT retired_by FROM successor_retired").fetchall() == [(None,)]
            assert raw_execute(conn, "SELECT COUNT(*) FROM successor_retirement_approvals").fetchone()[0] == 0
    finally:
        db.dispose()


def test_retirement_routes_have_their_own_rate_limit_label() -> None:
    from confide.cas.app import _write_route

    path = "/v1/cas/successor/retirements/approvals"
    assert _write_route(path) == path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "propose",
                "--platform",
                "sim",
                "--claim",
                "measurement=ab",
                "--claim",
                "policy=0",
                "--expires",
                "7d",
            ],
            "exactly measurement",
        ),
        (["propose", "--platform", "tdx", "--claim", "mr_td=00", "--expires", "7d"], "mr_td, rtmr1, rtmr2"),
        (["propose", "--platform", "nitro", "--claim", "pcr0=00", "--expires", "7d"], "--platform"),
        (["propose", "--platform", "sim", "--claim", "measurement=a b", "--expires", "7d"], "text form"),
        (
            ["propose", "--platform", "sim", "--claim", "measurement=ab", "--expires", "100d"],
            "at most 90 days",
        ),
        (["approve", "--retirement", "xyz", "--expires", "7d"], "expected the retirement id"),
    ],
)
def test_retire_commands_refuse_bad_arguments_before_contacting_the_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, people: list[Identity], args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from confide.cas import client
    from confide.cas.cli import cas as cas_group

    def no_client() -> object:
        raise AssertionError("nothing may be sent")

    monkeypatch.setattr(client.CasClient, "from_env", staticmethod(no_client))
    identity = tmp_path / "a.id"
    people[0].save(identity)
    result = CliRunner().invoke(cas_group, ["successor", "retire", *args, "--identity", str(identity)])
    assert isinstance(result.exception, errors.ConfideError), result.exception
    assert message in result.exception.message


def test_retire_attested_with_expect_refuses_a_mismatch_before_signing(
    tmp_path: Path, people: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cas successor approve --retire-attested --expect CLAIM=VALUE``: the attested CAS's
    evidence (a real dev CAS's, verified again) must have the claims expected; otherwise a
    MeasurementError before anything is signed or sent. ``--expect`` alone is refused."""
    from click.testing import CliRunner

    from confide.cas import client, pin
    from confide.cas.cli import cas as cas_group

    cas, evidence, _key, cert_path, *_ = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    assert evidence is not None
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    fetched: list[str] = []

    def fetch(url: str, path: str, **_kw: object) -> tuple[bytes, bytes]:
        fetched.append(path)
        return der, evidence.body

    def no_client() -> object:
        raise AssertionError("nothing may be sent")

    monkeypatch.setattr(pin, "fetch_unverified", fetch)
    monkeypatch.setattr(client.CasClient, "from_env", staticmethod(no_client))
    alice_file = tmp_path / "alice.id"
    people[0].save(alice_file)
    env = {"CONFIDE_CAS_URL": "https://127.0.0.1:9", "CONFIDE_CAS_CERT": str(cert_path),
           "CONFIDE_SIM_DIR": str(tmp_path / "cas" / "sim")}  # fmt: skip
    approve = ["successor", "approve", "--platform", "sim", "--claim", f"measurement={NEW.hex()}",
               "--expires", "1d", "--identity", str(alice_file)]  # fmt: skip
    result = CliRunner().invoke(
        cas_group, [*approve, "--retire-attested", "--expect", f"measurement={OTHER.hex()}"], env=env
    )
    assert fetched == ["/v1/cas/evidence"]  # the evidence was fetched and verified ...
    assert isinstance(result.exception, errors.MeasurementError), result.exception
    assert f"expected {OTHER.hex()}" in result.exception.message  # ... and did not match: nothing sent
    # The expected claim: the check passes and the CLI goes on to the CAS (stopped here).
    result = CliRunner().invoke(
        cas_group,
        [*approve, "--retire-attested", "--expect", f"measurement={cas_dev_measurement().hex().upper()}"],
        env=env,
    )
    assert isinstance(result.exception, AssertionError) and "nothing may be sent" in str(result.exception)
    assert "has the expected measurement" in result.stderr
    result = CliRunner().invoke(cas_group, [*approve, "--expect", f"measurement={OTHER.hex()}"], env=env)
    assert isinstance(result.exception, errors.UsageError) and "only with --retire-attested" in (
        result.exception.message
    )
    cas.db.dispose()
