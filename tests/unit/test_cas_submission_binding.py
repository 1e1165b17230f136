"""Policy submissions name the CAS they are for (``confide/policy/v2``'s ``cas``: the SHA-256 of
its TLS SubjectPublicKeyInfo, as approvals and read requests name it; docs/cas.md "Policies and
governance"): a submission signed for one CAS (a staging CAS whose policy tolerates simulation)
is refused at another with the same policy history (production), as a creation of a free name,
as an update under a plain update list and as the signer's voice before a board; before any
policy is looked at, with one answer for an existing and a missing policy, storing and recording
nothing. The former ``confide/policy/v1`` is refused, yet what an older CAS stored and recorded
with it still loads, updates and audits. The same goes for an owner's revocation request
(``confide/revoke/v2``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, sim_policy, submission
from confide import errors
from confide.cas.audit import PolicyChainChecker
from confide.cas.core import POLICY_TYPE, POLICY_V1_TYPE, Cas, sign_document
from confide.cas.db import raw_connection, raw_execute
from confide.cas.owner_revocation import REVOKE_TYPE, REVOKE_V1_TYPE
from confide.cas.policy_rows import open_column
from confide.identity import Identity
from confide.ledger.store import Ledger
from confide.policy import policy_hash
from confide.policy.canonical import canonical_json
from confide.policy.loader import loads_policy

MORE = "  - name: more\n    kind: ascii\n"


def _version(predecessor: str | None = None, extra: str = "", access: str = "", name: str = "staged") -> str:
    """A staging policy (the simulated platform tolerated, docs/policy.md "tolerate") naming
    ``predecessor``, with the secrets ``extra`` added and ``access`` rules."""
    text = sim_policy(name=name)
    if predecessor is not None:
        text = text.replace('version: "0.3"\n', f'version: "0.3"\npredecessor: "{predecessor}"\n', 1)
    return text.replace("secrets:\n", "secrets:\n" + extra, 1) + access


def _snapshot(cas: Cas) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """Everything a submission could change: versions, heads, events and the ledger's size."""
    with cas.db.read() as conn:
        policies = [
            tuple(r) for r in raw_execute(conn, "SELECT name, hash, state FROM policies ORDER BY name, seq")
        ]
        heads = [tuple(r) for r in raw_execute(conn, "SELECT name, hash FROM policy_heads ORDER BY name")]
        events = [tuple(r) for r in raw_execute(conn, "SELECT seq, type, policy FROM events ORDER BY seq")]
        size = Ledger.size(raw_connection(conn))
    return policies, heads, events, size


def _unbound(doc: dict[str, Any], who: Identity, kind: str) -> dict[str, Any]:
    """``doc`` signed again by ``who`` as ``kind`` and without ``cas`` (as a client signed it
    before documents named their CAS, or a v2 document missing it)."""
    body = {k: v for k, v in doc.items() if k not in ("cas", "signature", "signer")}
    return sign_document({**body, "type": kind}, who.sign, who.public.public_base64)


@pytest.fixture
def two(tmp_path: Path) -> tuple[InProcessCas, InProcessCas]:
    staging = InProcessCas.start(tmp_path / "staging", "")
    production = InProcessCas.start(tmp_path / "production", "")
    assert staging.cas.tls_spki_sha256 != production.cas.tls_spki_sha256
    return staging, production


def test_a_submission_for_one_cas_is_refused_at_another(two: tuple[InProcessCas, InProcessCas]) -> None:
    staging, production = two
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    # The same content has the same version hash at both: the binding is in the envelope only.
    at_staging = submission(staging.cas, _version(), alice)
    at_production = submission(production.cas, _version(), alice)
    assert at_staging["policy"] == at_production["policy"] and at_staging["cas"] != at_production["cas"]
    first = staging.cas.apply(at_staging)
    assert first.hash == policy_hash(loads_policy(_version()))

    def refused_at_production(doc: dict[str, Any]) -> str:
        before = _snapshot(production.cas)
        with pytest.raises(errors.AccessDeniedError, match="is for another CAS") as info:
            production.cas.apply(doc)
        assert type(info.value) is errors.AccessDeniedError
        assert _snapshot(production.cas) == before
        return info.value.message

    # 1. A creation of a name free at production: alice's staging policy is not created there
    # (with alice as CREATOR, tolerating simulation).
    messages = [refused_at_production(at_staging)]
    assert _snapshot(production.cas)[1] == []
    # Production's own history: the same policy, created by alice for production (same hash).
    assert production.cas.apply(at_production).hash == first.hash
    # 2. An update under a plain update list: the same signed update is refused at production,
    # though alice may update there alone and its predecessor is production's current version.
    plain = _version(first.hash, MORE)
    updated = staging.cas.apply(submission(staging.cas, plain, alice))
    assert updated.state == "active"
    messages.append(refused_at_production(submission(staging.cas, plain, alice)))
    # ...and an update naming a predecessor production never had: the same answer (the refusal
    # comes before the policy is looked at).
    messages.append(refused_at_production(submission(staging.cas, _version("00" * 32, MORE), alice)))
    assert production.cas.apply(submission(production.cas, plain, alice)).hash == updated.hash
    # 3. The signer's voice before a board: a version submitted by bob at staging, pending there,
    # is not pending at production on bob's word.
    board = f"access_policy:\n  update:\n    require-all: [{bob.fingerprint}, {carol.fingerprint}]\n"
    boarded = _version(updated.hash, MORE, board)
    for cas in (staging, production):
        assert cas.cas.apply(submission(cas.cas, boarded, alice)).state == "active"
    governed = _version(policy_hash(loads_policy(boarded)), MORE + "  - name: most\n    kind: ascii\n", board)
    pending = staging.cas.apply(submission(staging.cas, governed, bob))
    assert pending.state == "pending"
    messages.append(refused_at_production(submission(staging.cas, governed, bob)))
    # 4. A name that exists nowhere: the same answer again.
    messages.append(refused_at_production(submission(staging.cas, _version(name="nowhere"), carol)))
    assert len(set(messages)) == 1, messages


def test_cas_is_required_and_signed(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path, "")
    alice = Identity.generate()
    good = submission(cas.cas, _version(), alice)
    before = _snapshot(cas.cas)
    # The former confide/policy/v1 (no cas), and v2 without cas: malformed.
    with pytest.raises(errors.ParseError, match="names no CAS"):
        cas.cas.apply(_unbound(good, alice, POLICY_V1_TYPE))
    with pytest.raises(errors.ParseError, match="cas must be a string"):
        cas.cas.apply(_unbound(good, alice, POLICY_TYPE))
    with pytest.raises(errors.ParseError, match="cas must be a string"):
        body = {"type": POLICY_TYPE, "policy": good["policy"], "cas": 1}
        cas.cas.apply(sign_document(body, alice.sign, alice.public.public_base64))
    # cas is under the signature: a submission for another CAS rewritten to name this one no
    # longer verifies.
    forged = json.loads(json.dumps(submission("ab" * 32, _version(), alice)))
    forged["cas"] = cas.cas.tls_spki_sha256
    with pytest.raises(errors.SignatureError):
        cas.cas.apply(forged)
    assert _snapshot(cas.cas) == before
    result = cas.cas.apply(good)
    assert result.state == "active"
    # Stored and recorded as signed: the row and the ledger entry hold the cas.
    with cas.cas.db.read() as conn:
        stored = raw_execute(
            conn, "SELECT submission FROM policies WHERE hash = ?", (result.hash,)
        ).fetchone()[0]
        payload = raw_execute(conn, "SELECT payload FROM events WHERE type = 'policy-created'").fetchone()[0]
    row = json.loads(open_column(cas.cas.sealer, "submission", "staged", result.hash, stored))
    assert row == good and json.loads(json.loads(payload)["submission"])["cas"] == cas.cas.tls_spki_sha256


def test_what_an_older_cas_stored_with_v1_still_loads_updates_and_audits(tmp_path: Path) -> None:
    # A CAS from before submissions named their CAS stored and recorded a v1 submission: the
    # same code path without the v1 refusal (Cas._apply, as apply called it then).
    cas = InProcessCas.start(tmp_path, "")
    alice = Identity.generate()
    policy = loads_policy(_version())
    old = _unbound(submission(cas.cas, policy, alice), alice, POLICY_V1_TYPE)
    assert old["type"] == POLICY_V1_TYPE and "cas" not in old
    digest = policy_hash(policy)
    cas.cas._apply(old, policy, digest, canonical_json(policy).decode(), alice.fingerprint, cas.cas.clock())
    # Attested against, and updated with a current submission (the same hash as ever).
    assert cas.cas.attest(cas.request(policy="staged")[0])
    update = cas.cas.apply(submission(cas.cas, _version(digest, MORE), alice))
    assert update.state == "active" and update.hash == policy_hash(loads_policy(_version(digest, MORE)))
    # The ledger holds both envelopes, and the --full checker (confide ledger verify --full)
    # audits the whole log: the v1 submission's signature, hash and chain included.
    with cas.cas.db.read() as conn:
        entries = Ledger.entries(raw_connection(conn), 0, Ledger.size(raw_connection(conn)))
        kinds = [
            json.loads(json.loads(payload)["submission"])["type"]
            for (payload,) in raw_execute(
                conn,
                "SELECT payload FROM events WHERE type IN ('policy-created', 'policy-updated') ORDER BY seq",
            )
        ]
    assert kinds == [POLICY_V1_TYPE, POLICY_TYPE]
    check = PolicyChainChecker()
    for index, data in entries:
        check(index, data)
    assert check.heads["staged"] == update.hash


def test_a_revocation_for_one_cas_is_refused_at_another(two: tuple[InProcessCas, InProcessCas]) -> None:
    staging, production = two
    owner = Identity.generate()
    ca = _version(
        name="tls",
        extra="  - name: ca_key\n    kind: private-key\n  - name: ca\n    kind: x509-ca\n"
        "    private_key: ca_key\n    common_name: Test CA\n  - name: srv_key\n    kind: private-key\n"
        "  - name: srv\n    kind: x509\n    private_key: srv_key\n    issuer: ca\n    common_name: srv.local\n",
    )
    for cas in (staging, production):
        assert cas.cas.apply(submission(cas.cas, ca, owner)).state == "active"

    def request(for_cas: Cas, name: str = "tls", kind: str = REVOKE_TYPE) -> dict[str, Any]:
        body = {"type": kind, "name": name, "secret": "srv", "reason": "superseded", "all_valid": True,
                "time": int(production.cas.clock()), "cas": for_cas.tls_spki_sha256}  # fmt: skip
        doc = sign_document(body, owner.sign, owner.public.public_base64)
        return doc if kind == REVOKE_TYPE else _unbound(doc, owner, kind)

    before = _snapshot(production.cas)
    messages = []
    for name in ("tls", "missing"):
        with pytest.raises(errors.AccessDeniedError, match="is for another CAS") as info:
            production.cas.revoke_certificates(request(staging.cas, name))
        messages.append(info.value.message)
    assert len(set(messages)) == 1
    with pytest.raises(errors.ParseError, match="names no CAS"):
        production.cas.revoke_certificates(request(production.cas, kind=REVOKE_V1_TYPE))
    with pytest.raises(errors.ParseError, match="cas must be a non-empty string"):
        production.cas.revoke_certificates(_unbound(request(production.cas), owner, REVOKE_TYPE))
    assert _snapshot(production.cas) == before
    assert production.cas.revoke_certificates(request(production.cas))["revoked"]
