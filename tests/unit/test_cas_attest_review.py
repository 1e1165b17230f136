"""Adversarial review of the attestation flow (docs/cas.md "The attestation flow"): what an
attacker who controls a runtime and the network between it and the CAS could do with sessions,
nonces and evidence."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from test_cas_volume_update_policy import TAG0, TAG1, current_tag, events, owner_policy, report

from cas_inproc import MEASUREMENT, InProcessCas, last_attestation, refused
from confide import errors
from confide.cas import core
from confide.cas.core import decrypt_release
from confide.cas.db import raw_connection, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.identity import Identity
from confide.ledger.store import Ledger
from confide.policy._types import _check_policy_name, is_policy_name


def test_a_session_of_a_removed_service_cannot_report_a_tag(tmp_path: Path) -> None:
    """A session whose service the policy no longer has is refused (AccessDeniedError, nothing
    recorded), not an internal error: the service was removed after its release."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    owner = Identity.generate()
    first = ipc.apply(owner_policy(), owner)
    body, key = ipc.request(policy="hospital", service="writer")
    got = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    renamed = owner_policy().replace("name: writer", "name: reader") + f"predecessor: {first.hash}\n"
    ipc.apply(renamed, owner)
    with pytest.raises(errors.AccessDeniedError, match="policy hospital has no service writer"):
        report(ipc, "hospital", "records", got["session"], TAG0, TAG1)
    assert current_tag(ipc) == (TAG0, 0)
    assert [e["generation"] for e in events(ipc, "volume-tag")] == [0]


def _attestation_events(ipc: InProcessCas) -> int:
    with ipc.cas.db.read() as conn:
        return int(raw_execute(conn, "SELECT count(*) FROM events WHERE type = 'attestation'").fetchone()[0])


@pytest.mark.parametrize(
    ("policy", "service"),
    [
        ("app", "s" * 70_000),  # over the ledger's entry limit: it failed the whole transaction
        ("app", "s" * 129),
        ("p" * 70_000, "svc"),
        ("app/../app", "svc"),
        ("app", "svc/x"),
        ("app", 5),
        (["app"], "svc"),
    ],
)
def test_a_name_no_policy_can_have_is_refused_unrecorded(
    tmp_path: Path, policy: object, service: object
) -> None:
    """The policy and service names of an attestation request are read as names a policy can
    have (docs/policy.md): anything else is a malformed request (ParseError), recorded nowhere.
    Before, any text (of any length, even with a nonce the CAS never issued) went into the
    refusal's ledger entry, and one over the ledger's entry limit (64 KiB) made the group commit
    roll back the transaction of every attestation that shared it."""
    ipc = InProcessCas.start(tmp_path / "cas")
    body, _ = ipc.request()
    body["nonce"] = "00" * 32  # not the CAS's: the name alone decides
    body["policy"], body["service"] = policy, service
    before = _attestation_events(ipc)
    with pytest.raises(errors.ParseError, match="names a policy can have"):
        ipc.cas.attest(body)
    assert _attestation_events(ipc) == before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (TAG0, ""),  # the next release would say "no tag yet": any authentic version, an old one too
        (TAG0, "AB" * 32),
        (TAG0, " " + TAG1),
        (TAG0, TAG1[:32]),
        (TAG0, TAG1 * 2),
        (TAG0, 5),
        ("ab" * 40_000, TAG1),  # into the ledger's entry as based_on
        (" " + TAG0, TAG1),
    ],
)
def test_a_tag_report_is_a_volume_tag(tmp_path: Path, old: object, new: object) -> None:
    """A session reports the tag of the volume it sealed (the lower-case hex SHA-256 of its
    manifest) starting from the tag it was given: anything else is a ParseError and the tag stays.
    Before, any hex text was taken as the new tag, the empty one too, which the next release
    handed out as "no tag yet", so that its runtime mounted any authentic version of the volume,
    an old one included (no rollback protection any more)."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(owner_policy("no_rollback_protection"))
    body, key = ipc.request(policy="hospital", service="writer")
    got = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    with pytest.raises(errors.ParseError, match="new_tag"):
        ipc.cas.update_volume_tag(
            {
                "policy": "hospital",
                "volume": "records",
                "session": got["session"],
                "old_tag": old,
                "new_tag": new,
            }
        )
    assert current_tag(ipc) == (TAG0, 0)
    assert report(ipc, "hospital", "records", got["session"], TAG0, TAG1)["generation"] == 1


def test_a_key_release_nonce_is_no_attestation_nonce(tmp_path: Path) -> None:
    """The two nonces are MAC'd under keys derived for different purposes (docs/cas.md "Joining
    a running CAS"): a key-release nonce bound into genuine evidence does not attest a service,
    and the refusal leaves that nonce unspent for its own purpose (it was never this CAS's
    attestation nonce)."""
    ipc = InProcessCas.start(tmp_path / "cas")
    assert ipc.cas.key_release is not None
    nonce = ipc.cas.key_release.new_nonce()
    body, _ = ipc.request(nonce)
    with pytest.raises(errors.BindingError, match="nonce was not issued by this CAS"):
        ipc.cas.attest(body)
    with ipc.cas.db.read() as conn:
        spent = raw_execute(conn, "SELECT count(*) FROM nonces WHERE nonce = ?", (nonce,)).fetchone()[0]
    assert spent == 0


def _many_secrets(name: str, count: int) -> str:
    """A policy whose service releases ``count`` secrets (one environment variable each)."""
    secrets = "".join(f"  - name: secret{i:03}\n    kind: ascii\n" for i in range(count))
    env = "".join(f'      S{i}: "$$SCONE::secret{i:03}$$"\n' for i in range(count))
    return f"""name: {name}
version: "0.3"
services:
  - name: svc
    command: svc
    environment:
{env}    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
{secrets}security:
  attestation:
    tolerate: [simulation]
"""


# 80 secrets of a policy with a long (namespaced) name: a release record of ~80 KB
LONG_NAME = "/".join(["n" * 120] * 8)


def test_a_release_too_large_for_a_ledger_entry_is_a_recorded_refusal(tmp_path: Path) -> None:
    """A release whose ``secret-release`` record would exceed a ledger entry (64 KiB) is refused
    with the reason (PolicyError, recorded, the nonce spent); before, recording it raised the
    ledger's UsageError out of the write transaction: the service could never be released, and
    nothing of the attempt was recorded."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(_many_secrets(LONG_NAME, 80))
    body, _ = ipc.request(policy=LONG_NAME, service="svc")
    refused(ipc.cas, body, errors.PolicyError, "does not fit in one ledger entry")
    with ipc.cas.db.read() as conn:
        spent = raw_execute(conn, "SELECT count(*) FROM nonces WHERE nonce = ?", (body["nonce"],)).fetchone()[
            0
        ]
    assert spent == 1
    # a release that fits is made as before
    ipc.apply(_many_secrets("small", 80))
    body, key = ipc.request(policy="small", service="svc")
    got = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    assert len(got["environment"]) == 80


def test_a_release_too_large_does_not_fail_its_group_commit(tmp_path: Path) -> None:
    """Two attestations in one group-commit transaction (the ledger append batched, as
    ``cas serve`` runs them): the one too large to record is refused, the other released in
    that same transaction. Before, the batched append raised at the end of the transaction and
    rolled back both."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.apply(_many_secrets(LONG_NAME, 80))
    large, _ = ipc.request(policy=LONG_NAME, service="svc")
    good, key = ipc.request()
    pendings = [ipc.cas.attest_begin(large), ipc.cas.attest_begin(good)]
    sink = ipc.cas.events
    assert isinstance(sink, LedgerEventSink)
    with ipc.cas.db.write() as conn, sink.batched(conn):
        for pending in pendings:
            pending.commit(conn)
    assert [p.accepted for p in pendings] == [False, True]
    assert isinstance(pendings[0].error, errors.PolicyError)
    config = decrypt_release(key, pendings[1].result(), bytes.fromhex(good["nonce"]))
    assert config["command"][0] == "svc"
    assert last_attestation(ipc.cas)["verdict"] == "accepted"


@pytest.mark.parametrize("count", [1, 80, 350])
def test_the_release_record_bound_holds_the_entry(tmp_path: Path, count: int) -> None:
    """The bound the check uses is never below the entry recorded, and close to it (within the
    room it keeps for the entry's other members and the longest measurement)."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(_many_secrets("policy-" + "x" * 100, count))
    body, _ = ipc.request(policy="policy-" + "x" * 100, service="svc")
    pending = ipc.cas.attest_begin(body)
    assert pending.refused is None
    bound = core._release_record_bound(pending.policy, pending.service, pending.released, pending.config)
    with ipc.cas.db.write() as conn:
        pending.commit(conn)
    assert pending.accepted
    with ipc.cas.db.read() as conn:
        seq = raw_execute(conn, "SELECT max(seq) FROM events WHERE type = 'secret-release'").fetchone()[0]
        entry = Ledger.entry(raw_connection(conn), seq - 1)
    assert entry is not None
    assert len(entry) <= bound < len(entry) + 400


def _validator_takes(text: str) -> bool:
    try:
        _check_policy_name(text)
    except ValueError:
        return False
    return True


def test_is_policy_name_is_the_validators_rule() -> None:
    """The attestation path's one-expression check of a policy name agrees with the policy
    validator: every text of up to 6 characters over an alphabet with the separators and dots,
    and the length bounds of a segment and of the whole name."""
    texts = ["".join(t) for n in range(7) for t in itertools.product("a.~/é", repeat=n)]
    texts += [
        "a" * 128,
        "a" * 129,
        "/".join(["a" * 128] * 8),
        "/".join(["a" * 127] * 8) + "/a",
        "a\n",
        "a/\n",
    ]
    texts += ["." * 3, "a/...", ".../a", "a/./b", "a/../b", "a//b", "/a", "a/"]
    for text in texts:
        assert is_policy_name(text) is _validator_takes(text), text
    assert not is_policy_name(None) and not is_policy_name(b"a")
