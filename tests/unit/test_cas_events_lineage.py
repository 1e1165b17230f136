"""A policy's events (``policy events``, ``ledger history|accesses``; docs/cas.md "A policy's
events") are its own lineage's: a namespace board member's pending creation of the name, turned
``stale`` when someone else created the name first, stays filed under the name in the ledger, but
the readers of the policy that was created read neither it, nor its approvals, nor its stale mark;
the policy's own pending and stale updates, approvals, attestations and releases are still listed,
with inclusion proofs that verify. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, sim_policy
from confide import errors
from confide.cas import core
from confide.cas.audit import accesses, history, verified_events
from confide.cas.core import APPROVAL_TYPE, READ_TYPE, sign_document
from confide.cas.db import raw_connection, raw_execute
from confide.cas.ledger_sink import ENTRY_TYPES
from confide.cas.policy_auth import PolicyRowsAltered
from confide.cas.server import prepare
from confide.identity import Identity
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger
from confide.sim.platform import SimPlatform

# Ledger entry types never filed under a policy (recorded with no policy name): the CAS's own
# events and those of its successor board. Every type is either this or classified in
# confide.cas.core (_VERSION_EVENTS, _POLICY_EVENTS), so a new type cannot go unshown unnoticed.
UNFILED = {
    "cas-start", "revocations-bound", "dcap-tcb-evaluation-floor-raised",
    "dcap-tcb-evaluation-floor-altered", "dcap-tcb-evaluation-floor-bound", "master-key-rotated",
    "master-key-released", "master-key-release-refused", "successor-board-set", "successor-approved",
    "successor-approval-refused", "successor-withdrawn", "successor-withdrawal-refused",
    "successor-board-change-approved", "successor-board-change-refused", "successor-board-changed",
    "successor-version-retired", "successor-retirement-approved", "successor-retirement-refused", "policy-rows-bound",
    "secret-heads-bound", "gce-crl-newest-raised", "gce-crl-newest-altered", "gce-crl-newest-bound",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def cas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[InProcessCas, NoteSigner]]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    cas, _evidence, _key, _cert, env, signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=db_url, collateral=None
    )
    try:
        yield InProcessCas(cas, SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))), signer
    finally:
        cas.db.dispose()


def _approve(ipc: InProcessCas, name: str, digest: str, who: Identity) -> str:
    body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": ipc.cas.tls_spki_sha256}
    return ipc.cas.approve(sign_document(body, who.sign, who.public.public_base64)).state


def _read(ipc: InProcessCas, name: str, who: Identity, route: str) -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": name, "nonce": ipc.cas.new_read_nonce(name, route),
            "cas": ipc.cas.tls_spki_sha256, "route": route}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _filed(ipc: InProcessCas, name: str) -> list[tuple[int, str, dict[str, Any]]]:
    """Every event filed under ``name`` in the database (what the ledger holds for it)."""
    with ipc.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT seq, type, payload FROM events WHERE policy = ? ORDER BY seq", (name,)
        ).fetchall()
    return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]


class _Client:
    """What confide.cas.audit needs of a CasClient: the CAS's answer to a signed read request."""

    def __init__(self, ipc: InProcessCas) -> None:
        self.ipc = ipc

    def events(self, name: str, identity: Identity) -> dict[str, Any]:
        return self.ipc.cas.events_for(_read(self.ipc, name, identity, "events"))


def test_every_entry_type_is_classified() -> None:
    version, policy = core._VERSION_EVENTS, core._POLICY_EVENTS
    assert not (version & policy) and not (version & UNFILED) and not (policy & UNFILED)
    assert version | policy | UNFILED == set(ENTRY_TYPES)


def test_readers_do_not_read_a_competing_creation(cas: tuple[InProcessCas, NoteSigner]) -> None:
    ipc, signer = cas
    owner, alice, bob, carol, erin, frank, reader, mallory = (Identity.generate() for _ in range(8))
    ipc.apply(
        'name: ns\nversion: "0.3"\naccess_policy:\n  create_sessions:\n    - require-all:\n'
        f"        - signer: {bob.fingerprint}\n        - signer: {carol.fingerprint}\n"
        f"        - signer: {erin.fingerprint}\n    - {alice.fingerprint}\n",
        owner,
    )
    # bob, a member of the namespace's board, proposes ns/app; carol approves; erin has not yet.
    proposal = ipc.apply('name: ns/app\nversion: "0.3"\nsecrets:\n  - name: bobs\n    kind: ascii\n', bob)
    assert proposal.state == "pending"
    assert _approve(ipc, "ns/app", proposal.hash, carol) == "pending"
    # alice, allowed alone, creates the name first: her policy, readable by reader, updated by
    # alice and frank together.
    mine = (
        sim_policy("ns/app")
        + f"access_policy:\n  read: [CREATOR, {reader.fingerprint}]\n"
        + f"  update:\n    require-all: [{alice.fingerprint}, {frank.fingerprint}]\n"
    )
    root = ipc.apply(mine, alice)
    assert root.state == "active"
    # erin's approval now finds bob's proposal stale (recorded under ns/app after the creation).
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(ipc, "ns/app", proposal.hash, erin)
    # alice's own governance: an update approved by frank, then two competing updates of which
    # one wins and the other turns stale (her lineage's: listed).
    first = ipc.apply(mine + f"predecessor: {root.hash}\n", alice)
    assert first.state == "pending" and _approve(ipc, "ns/app", first.hash, frank) == "active"
    request, _key = ipc.request(policy="ns/app")
    ipc.cas.attest(request)  # an attestation of her service and its release
    won, lost = (
        ipc.apply(mine.replace("svc --token", f"svc --{n} --token") + f"predecessor: {first.hash}\n", alice)
        for n in ("won", "lost")
    )
    assert (won.state, lost.state) == ("pending", "pending")
    assert _approve(ipc, "ns/app", won.hash, frank) == "active"
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(ipc, "ns/app", lost.hash, frank)
    # A refused creation in the namespace is the namespace owner's to read, as before.
    with pytest.raises(errors.AccessDeniedError):
        ipc.apply('name: ns/other\nversion: "0.3"\n', mallory)
    with ipc.cas.db.write() as conn:
        Ledger().sign_checkpoint(raw_connection(conn), signer)

    filed = _filed(ipc, "ns/app")
    bobs = [(seq, type_) for seq, type_, p in filed if p.get("hash") == proposal.hash]
    # The ledger still holds bob's proposal, carol's approval and the stale mark under the name.
    assert [type_ for _, type_ in bobs] == ["policy-pending", "policy-approved", "policy-stale"]
    answer = ipc.cas.events_for(_read(ipc, "ns/app", reader, "events"))
    listed = answer["events"]
    # Everything else filed under the name is listed, in order: nothing but bob's is left out.
    assert [e["seq"] for e in listed] == [seq for seq, type_, _ in filed if (seq, type_) not in bobs]
    # Nor anywhere in what is listed (64 hex digits each: no chance match in the entries' base64).
    text = json.dumps(listed)
    for absent in (proposal.hash, bob.fingerprint, carol.fingerprint, erin.fingerprint):
        assert absent not in text
    versions = {e["payload"].get("hash") for e in listed if e["type"].startswith("policy-")}
    assert versions == {root.hash, first.hash, won.hash, lost.hash}
    types = [e["type"] for e in listed]
    for expected in ("policy-created", "policy-pending", "policy-approved", "policy-updated",
                     "policy-stale", "secrets-generated", "attestation", "secret-release"):  # fmt: skip
        assert expected in types, (expected, types)
    assert ("policy-stale", lost.hash) in [(e["type"], e["payload"].get("hash")) for e in listed]
    # policy show lists the lineage's versions only, as alice sees them too.
    for who in (reader, alice):
        shown = ipc.cas.show(_read(ipc, "ns/app", who, "show"))
        assert [v["hash"] for v in shown["versions"]] == [root.hash, first.hash, won.hash, lost.hash]
        assert ipc.cas.events_for(_read(ipc, "ns/app", who, "events"))["events"] == listed
    # ledger history|accesses: every listed entry is proven in the signed checkpoint.
    signed, verified = verified_events(_Client(ipc), "ns/app", reader, signer.verifier)  # type: ignore[arg-type]
    assert signed is not None and len(verified) == len(listed) and all(v.included for v in verified)
    assert {r["hash"] for r in history(verified)} == versions
    assert [r["service"] for r in accesses(verified)] == ["svc"]
    # The namespace owner still reads the refusal of a creation filed under ns.
    refused = [
        e["payload"]
        for e in ipc.cas.events_for(_read(ipc, "ns", owner, "events"))["events"]
        if e["type"] == "policy-create-refused"
    ]
    assert refused == [{"signer": mallory.fingerprint, "name": "ns/other"}]


def test_a_creation_approved_by_the_board_is_the_lineage(cas: tuple[InProcessCas, NoteSigner]) -> None:
    """The version that created the policy may itself have been pending: its submission and
    approvals are the policy's own (only a creation that lost the name is left out)."""
    ipc, _signer = cas
    owner, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    ipc.apply(
        'name: lab\nversion: "0.3"\naccess_policy:\n  create_sessions:\n    - require-all:\n'
        f"        - signer: {bob.fingerprint}\n        - signer: {carol.fingerprint}\n",
        owner,
    )
    loser = ipc.apply('name: lab/x\nversion: "0.3"\nsecrets:\n  - name: a\n    kind: ascii\n', carol)
    winner = ipc.apply('name: lab/x\nversion: "0.3"\nsecrets:\n  - name: b\n    kind: ascii\n', bob)
    assert (loser.state, winner.state) == ("pending", "pending")
    assert _approve(ipc, "lab/x", winner.hash, carol) == "active"
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(ipc, "lab/x", loser.hash, bob)
    listed = ipc.cas.events_for(_read(ipc, "lab/x", bob, "events"))["events"]
    assert [(e["type"], e["payload"].get("hash")) for e in listed] == [
        ("policy-pending", winner.hash), ("policy-approved", winner.hash),
        ("policy-created", winner.hash), ("secrets-generated", winner.hash),
    ]  # fmt: skip
    assert [v["hash"] for v in ipc.cas.show(_read(ipc, "lab/x", bob, "show"))["versions"]] == [winner.hash]
    assert [t for _, t, p in _filed(ipc, "lab/x") if p.get("hash") == loser.hash] == [
        "policy-pending", "policy-stale",
    ]  # fmt: skip


def test_events_verify_the_head_they_read(
    cas: tuple[InProcessCas, NoteSigner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``policy events`` reads the head again after the read check (its own transaction): that
    read is MAC-verified too, so a head pointed at a competing creation's version between the two
    is refused (PolicyRowsAltered), not used to list the other stakeholder's proposal."""
    ipc, _signer = cas
    owner, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    ipc.apply(
        'name: lab\nversion: "0.3"\naccess_policy:\n  create_sessions:\n    - require-all:\n'
        f"        - signer: {bob.fingerprint}\n        - signer: {carol.fingerprint}\n",
        owner,
    )
    loser = ipc.apply('name: lab/x\nversion: "0.3"\nsecrets:\n  - name: a\n    kind: ascii\n', carol)
    winner = ipc.apply('name: lab/x\nversion: "0.3"\nsecrets:\n  - name: b\n    kind: ascii\n', bob)
    assert _approve(ipc, "lab/x", winner.hash, carol) == "active"
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(ipc, "lab/x", loser.hash, bob)
    shown = ipc.cas._show

    def show_then_alter(body: dict[str, Any], signer: Any) -> dict[str, Any]:
        info = shown(body, signer)
        with ipc.cas.db.write() as conn:  # the operator swaps the head once the reader passed
            raw_execute(conn, "UPDATE policy_heads SET hash = ? WHERE name = ?", (loser.hash, "lab/x"))
        return info

    monkeypatch.setattr(ipc.cas, "_show", show_then_alter)
    with pytest.raises(PolicyRowsAltered):
        ipc.cas.events_for(_read(ipc, "lab/x", bob, "events"))
