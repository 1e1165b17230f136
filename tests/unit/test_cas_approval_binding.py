"""Policy approvals name the CAS they are for (``confide/approval/v2``'s ``cas``: the SHA-256 of
its TLS SubjectPublicKeyInfo, as a read request names it; docs/cas.md "Policies and
governance"): an approval given at one CAS does not count at another where the same version is
pending before the same board, and the former ``confide/approval/v1``, which named no CAS, is
refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import InProcessCas, submission
from confide import errors
from confide.cas.core import APPROVAL_TYPE, APPROVAL_V1_TYPE, sign_document
from confide.cas.db import raw_execute
from confide.identity import Identity


def _board(alice: Identity, bob: Identity) -> str:
    return (
        f'name: shared\nversion: "0.3"\naccess_policy:\n  update:\n    require-all: '
        f"[{alice.fingerprint}, {bob.fingerprint}]\n"
    )


def _approval(who: Identity, digest: str, cas: str, kind: str = APPROVAL_TYPE) -> dict[str, Any]:
    body = {"type": kind, "name": "shared", "hash": digest, "cas": cas}
    if kind == APPROVAL_V1_TYPE:
        del body["cas"]
    return sign_document(body, who.sign, who.public.public_base64)


def _state(cas: InProcessCas, digest: str) -> tuple[str, int, list[str]]:
    with cas.cas.db.read() as conn:
        state = raw_execute(conn, "SELECT state FROM policies WHERE hash = ?", (digest,)).fetchone()[0]
        approvals = raw_execute(conn, "SELECT COUNT(*) FROM approvals WHERE hash = ?", (digest,)).fetchone()[
            0
        ]
        events = [
            r[0] for r in raw_execute(conn, "SELECT type FROM events WHERE policy = 'shared' ORDER BY seq")
        ]
    return state, approvals, events


def test_an_approval_given_at_one_cas_does_not_count_at_another(tmp_path: Path) -> None:
    # Two CAS (a staging and a production one, say) with the same policy history: the same
    # signed creation and the same signed update, pending before the same board at both.
    staging = InProcessCas.start(tmp_path / "staging", "")
    production = InProcessCas.start(tmp_path / "production", "")
    assert staging.cas.tls_spki_sha256 != production.cas.tls_spki_sha256
    # (Alice signs each submission for its CAS: confide/policy/v2 names it too; the versions'
    # hashes are the same at both.)
    alice, bob = Identity.generate(), Identity.generate()
    first = staging.cas.apply(submission(staging.cas, _board(alice, bob), alice))
    assert production.cas.apply(submission(production.cas, _board(alice, bob), alice)).hash == first.hash
    update = _board(alice, bob) + f"predecessor: {first.hash}\nsecrets:\n  - name: k\n    kind: binary\n"
    pending = staging.cas.apply(submission(staging.cas, update, alice))
    at_production = production.cas.apply(submission(production.cas, update, alice))
    assert pending.state == at_production.state == "pending" and at_production.hash == pending.hash
    # Bob approves at staging only.
    at_staging = _approval(bob, pending.hash, staging.cas.tls_spki_sha256)
    assert staging.cas.approve(at_staging).state == "active"
    # Replayed at production (from staging's ledger, say): refused, nothing stored or recorded.
    before = _state(production, pending.hash)
    with pytest.raises(errors.AccessDeniedError, match="approval is for another CAS"):
        production.cas.approve(at_staging)
    assert _state(production, pending.hash) == before == ("pending", 0, ["policy-created", "policy-pending"])
    # Bob's approval for production is his own decision there.
    assert (
        production.cas.approve(_approval(bob, pending.hash, production.cas.tls_spki_sha256)).state == "active"
    )


def test_an_approval_naming_no_cas_is_refused(tmp_path: Path) -> None:
    cas = InProcessCas.start(tmp_path, "")
    alice, bob = Identity.generate(), Identity.generate()
    first = cas.cas.apply(submission(cas.cas, _board(alice, bob), alice))
    update = _board(alice, bob) + f"predecessor: {first.hash}\nsecrets:\n  - name: k\n    kind: ascii\n"
    pending = cas.cas.apply(submission(cas.cas, update, alice))
    with pytest.raises(errors.ParseError, match="names no CAS"):
        cas.cas.approve(_approval(bob, pending.hash, "", kind=APPROVAL_V1_TYPE))
    body = {"type": APPROVAL_TYPE, "name": "shared", "hash": pending.hash}  # v2 without cas
    with pytest.raises(errors.ParseError, match="cas must be strings"):
        cas.cas.approve(sign_document(body, bob.sign, bob.public.public_base64))
    # cas under the signature: changing it breaks the signature.
    forged = json.loads(json.dumps(_approval(bob, pending.hash, "ab" * 32)))
    forged["cas"] = cas.cas.tls_spki_sha256
    with pytest.raises(errors.SignatureError):
        cas.cas.approve(forged)
    assert _state(cas, pending.hash)[:2] == ("pending", 0)
    assert cas.cas.approve(_approval(bob, pending.hash, cas.cas.tls_spki_sha256)).state == "active"
