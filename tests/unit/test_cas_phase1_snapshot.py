"""Phase 1 of an attestation from a snapshot of what an earlier one read (docs/cas.md "Phase 1
from a snapshot"): no read transaction, and phase 2 reads every answer used again inside its
write transaction, so a snapshot older than a change (made by this CAS or by another one
sharing the database) never releases what the current state does not allow."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, last_attestation, submission
from confide import errors
from confide.cas import core
from confide.cas.core import Cas, PendingAttestation, decrypt_release
from confide.cas.db import Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.identity import Identity

OTHER = "cd" * 48


def policy(command: str = "svc --token $$SCONE::token$$", measurement: str = "ab" * 48,
           token_size: int = 16, services: tuple[str, ...] = ("svc",)) -> str:  # fmt: skip
    listed = "".join(
        f"""  - name: {name}
    command: {command}
    attestation:
      sim:
        measurement: "{measurement}"
"""
        for name in services
    )
    return f"""name: app
version: "0.3"
services:
{listed}secrets:
  - name: token
    kind: ascii
    size: {token_size}
security:
  attestation:
    tolerate: [simulation]
"""


class Pair:
    """Two CAS instances sharing one database (as two `cas serve` processes would): ``a`` attests,
    ``b`` changes the state; ``owner`` submits the policy updates."""

    def __init__(self, a: InProcessCas, b: Cas, owner: Identity) -> None:
        self.a, self.b, self.owner = a, b, owner

    def update_through_b(self, text: str) -> None:
        with self.b.db.read() as conn:
            row = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = 'app'").fetchone()
        if row is not None:
            text = text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: "{row[0]}"\n')
        self.b.apply(submission(self.b, text, self.owner))

    def begin(self, service: str = "svc") -> tuple[PendingAttestation, dict[str, Any], Any]:
        body, key = self.a.request(policy="app", service=service)
        return self.a.cas.attest_begin(body), body, key

    def commit(self, pending: PendingAttestation) -> None:
        with self.a.cas.db.write() as conn:
            pending.commit(conn)

    def release(self, service: str = "svc") -> dict[str, Any]:
        pending, body, key = self.begin(service)
        self.commit(pending)
        return decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))


@contextmanager
def no_read_transaction(cas: Cas) -> Iterator[None]:
    """Fail any read transaction of ``cas`` (phase 1 from a snapshot opens none)."""

    def refuse() -> Any:
        raise AssertionError("phase 1 opened a read transaction")

    original = cas.db.read
    cas.db.read = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        cas.db.read = original  # type: ignore[method-assign]


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    a = InProcessCas.start(tmp_path / "cas", "", db_url=db_url)
    owner = Identity.generate()
    b = Cas(
        Database(a.cas.db.url), a.cas.sealer, a.cas.verifier, events=LedgerEventSink(),
        tls_spki_sha256=a.cas.tls_spki_sha256,
    )  # fmt: skip
    out = Pair(a, b, owner)
    out.update_through_b(policy())
    try:
        yield out
    finally:
        out.b.db.dispose()
        a.cas.db.dispose()


def token(config: dict[str, Any]) -> str:
    return str(config["command"][-1])


def test_phase_1_opens_no_read_transaction_once_a_snapshot_is_kept(pair: Pair) -> None:
    first = pair.release()  # reads afresh, keeps the snapshot
    with no_read_transaction(pair.a.cas):
        pending, body, key = pair.begin()
    assert pending.refused is None and pending.reads is not None and pending.reads.source is not None
    pair.commit(pending)
    assert not pending.rendered_at_commit
    second = decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))
    assert token(second) == token(first) and second["session"] != first["session"]


def test_an_update_through_another_cas_is_honoured_at_the_next_attestation(pair: Pair) -> None:
    old = pair.release()
    # b changes the command and the token's declaration (a new version of the secret)
    pair.update_through_b(policy(command="svc --v2 --token $$SCONE::token$$", token_size=24))
    new = pair.release()
    assert new["command"][:2] == ["svc", "--v2"] and token(new) != token(old) and len(token(new)) == 24
    # ... and a measurement the policy no longer accepts is refused, though a's snapshot of the
    # previous version accepted it
    pair.release()
    pair.update_through_b(policy(measurement=OTHER))
    pending, _, _ = pair.begin()
    assert pending.refused is None  # the snapshot still holds the old version
    pair.commit(pending)
    assert pending.rendered_at_commit
    with pytest.raises(errors.AppraisalError, match="mismatch"):
        pending.result()
    event = last_attestation(pair.a.cas)
    assert event["verdict"] == "refused" and event["policy_hash"] == head(pair.b)


def test_a_conflicting_update_between_the_two_phases_does_not_release_the_old_state(pair: Pair) -> None:
    old = pair.release()
    pending, body, key = pair.begin()  # phase 1 rendered the old token (from the snapshot)
    assert token(pending.config) == token(old)
    pair.update_through_b(policy(token_size=32))  # a new version of the token, through b
    pair.commit(pending)
    assert pending.rendered_at_commit
    got = decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))
    assert token(got) != token(old) and len(token(got)) == 32
    # the ledger names the version released (the current one) and the current policy version
    release = last_release(pair.a.cas)
    assert [s["version"] for s in release["secrets"]] == [2] and release["policy_hash"] == head(pair.b)
    # the stale snapshot was dropped; the next attestation reads afresh and keeps the new state
    assert token(pair.release()) == token(got)
    with no_read_transaction(pair.a.cas):
        again, _, _ = pair.begin()
    pair.commit(again)
    assert not again.rendered_at_commit and token(again.config) == token(got)


def test_a_revision_bump_alone_renders_again(pair: Pair) -> None:
    """An owner's revocation moves only the head's revision (same policy version): phase 2 sees
    that too."""
    pair.release()
    pending, _, _ = pair.begin()
    with pair.b.db.write() as conn:  # as confide.cas.owner_revocation does (the MAC'd head)
        pair.b.policy_auth.bump_revision(conn, "app", time.time())
    pair.commit(pending)
    assert pending.rendered_at_commit and pending.refused is None
    assert pending.result()


def test_the_snapshots_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "SNAPSHOTS", 2)
    ipc = InProcessCas.start(tmp_path / "cas", policy(services=("s1", "s2", "s3")))
    pair = Pair(ipc, ipc.cas, Identity.generate())
    for service in ("s1", "s2", "s3"):
        pair.release(service)
    assert len(ipc.cas._snapshots) == 2
    assert ipc.cas._snapshots.get(("app", "s1")) is None  # the least recently used went first
    # refusals before the service is known keep nothing (random names cannot fill the cache)
    for name in ("nope", "nada"):
        body, _ = ipc.request(policy=name)
        with pytest.raises(errors.AccessDeniedError):
            ipc.cas.attest(body)
    body, _ = ipc.request(policy="app", service="unknown")
    with pytest.raises(errors.AccessDeniedError):
        ipc.cas.attest(body)
    assert {k for k in (("app", "s2"), ("app", "s3")) if ipc.cas._snapshots.get(k) is not None} == {
        ("app", "s2"),
        ("app", "s3"),
    }


def head(cas: Cas, name: str = "app") -> str:
    with cas.db.read() as conn:
        (digest,) = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()
    return str(digest)


def last_release(cas: Cas) -> dict[str, Any]:
    with cas.db.read() as conn:
        (payload,) = raw_execute(
            conn, "SELECT payload FROM events WHERE type = 'secret-release' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return dict(json.loads(payload))
