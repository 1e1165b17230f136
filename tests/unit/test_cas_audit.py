"""The --full policy checker on hand-built logs (what a log-key holder could forge)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from confide.cas.audit import PolicyChainChecker
from confide.cas.client import policy_submission
from confide.cas.core import POLICY_TYPE, POLICY_V1_TYPE, sign_document
from confide.errors import EntryMismatchError, EntryMissingError
from confide.identity import Identity
from confide.ledger.encoding import Entry, EntryType
from confide.policy import loads_policy, policy_hash
from confide.policy.canonical import canonical_json, jcs

BASE = 'name: p\nversion: "0.3"\nservices:\n  - name: s\n    attestation:\n      tdx:\n        mr_td: "{m}"\n'


def _entry(type_: EntryType, payload: dict[str, object]) -> bytes:
    return Entry.create(type_, datetime.now(UTC), payload, "p").to_bytes()


CAS = "ab" * 32  # the SHA-256 of a CAS's TLS key, as a v2 submission names it


def _version(
    ident: Identity, m: str, predecessor: str | None, kind: str = POLICY_TYPE
) -> tuple[str, dict[str, object]]:
    text = BASE.format(m=m) + (f"predecessor: {predecessor}\n" if predecessor else "")
    policy = loads_policy(text)
    sub = policy_submission(policy, ident, cas=CAS)
    if kind != POLICY_TYPE:  # as a client signed it before submissions named their CAS
        body = {k: v for k, v in sub.items() if k not in ("cas", "signature", "signer")}
        sub = sign_document({**body, "type": kind}, ident.sign, ident.public.public_base64)
    digest = policy_hash(policy)
    return digest, {"hash": digest, "predecessor": predecessor, "signer": ident.fingerprint,
                    "submission": jcs(sub).decode()}  # fmt: skip


def test_linear_history_passes_and_forks_fail() -> None:
    alice = Identity.generate()
    h1, p1 = _version(alice, "aa" * 48, None)
    h2, p2 = _version(alice, "bb" * 48, h1)
    h3, p3 = _version(alice, "cc" * 48, h1)  # a second child of h1: a fork
    check = PolicyChainChecker()
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    check(1, _entry(EntryType.POLICY_UPDATED, p2))
    with pytest.raises(EntryMismatchError, match="entry 2"):
        check(2, _entry(EntryType.POLICY_UPDATED, p3))
    assert h2 != h3


def test_wrong_signer_hash_or_second_creation_fail() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    _, p1 = _version(alice, "aa" * 48, None)
    with pytest.raises(EntryMismatchError, match="signed by"):
        PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, {**p1, "signer": mallory.fingerprint}))
    with pytest.raises(EntryMismatchError, match="hash"):
        PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, {**p1, "hash": "00" * 32}))
    sub = json.loads(str(p1["submission"]))
    sub["signature"] = sub["signature"][:-4] + "AAA="
    with pytest.raises(EntryMismatchError):
        PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, {**p1, "submission": json.dumps(sub)}))
    check = PolicyChainChecker()
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    with pytest.raises(EntryMismatchError, match="created twice"):
        check(1, _entry(EntryType.POLICY_CREATED, p1))


@pytest.mark.parametrize("kind", ["confide/approval/v1", "confide/approval/v2"])
def test_approvals_of_both_versions_are_checked(kind: str) -> None:
    # v1 (no cas) is what entries recorded before approvals named their CAS hold; the CAS now
    # takes v2 only, but the ledger's older entries must still audit.
    alice, bob = Identity.generate(), Identity.generate()
    h1, _ = _version(alice, "aa" * 48, None)
    body: dict[str, object] = {"type": kind, "name": "p", "hash": h1}
    if kind.endswith("v2"):
        body["cas"] = "ab" * 32
    approval = sign_document(body, bob.sign, bob.public.public_base64)
    entry = {"hash": h1, "signer": bob.fingerprint, "approval": jcs(approval).decode()}
    PolicyChainChecker()(0, _entry(EntryType.POLICY_APPROVED, entry))
    with pytest.raises(EntryMismatchError, match="does not match"):
        PolicyChainChecker()(0, _entry(EntryType.POLICY_APPROVED, {**entry, "hash": "00" * 32}))
    forged = {**approval, "type": "confide/approval/v1" if kind.endswith("v2") else "confide/approval/v2"}
    with pytest.raises(EntryMismatchError):
        PolicyChainChecker()(
            0, _entry(EntryType.POLICY_APPROVED, {**entry, "approval": jcs(forged).decode()})
        )


def test_submissions_of_both_versions_are_checked() -> None:
    # A log whose policy was created by a v1 submission (no cas: recorded before submissions
    # named their CAS) and updated by a v2 one audits as one chain; each is checked as signed.
    alice, mallory = Identity.generate(), Identity.generate()
    h1, p1 = _version(alice, "aa" * 48, None, kind=POLICY_V1_TYPE)
    assert "cas" not in json.loads(str(p1["submission"]))
    _h2, p2 = _version(alice, "bb" * 48, h1)
    assert json.loads(str(p2["submission"]))["cas"] == CAS
    check = PolicyChainChecker()
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    check(1, _entry(EntryType.POLICY_UPDATED, p2))
    # The version hash is the policy's own: the same with either envelope.
    assert _version(alice, "aa" * 48, None)[0] == h1
    for kind in (POLICY_V1_TYPE, POLICY_TYPE):
        _, p = _version(alice, "cc" * 48, None, kind=kind)
        with pytest.raises(EntryMismatchError, match="signed by"):
            PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, {**p, "signer": mallory.fingerprint}))
        # The type rewritten to the other version: the signature no longer verifies.
        sub = json.loads(str(p["submission"]))
        sub["type"] = POLICY_TYPE if kind == POLICY_V1_TYPE else POLICY_V1_TYPE
        with pytest.raises(EntryMismatchError):
            PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, {**p, "submission": jcs(sub).decode()}))
    # A v2 submission without cas was never taken by a CAS: an entry holding one does not audit.
    policy = loads_policy(BASE.format(m="dd" * 48))
    body = {"type": POLICY_TYPE, "policy": json.loads(canonical_json(policy))}
    unbound = sign_document(body, alice.sign, alice.public.public_base64)
    entry = {"hash": policy_hash(policy), "predecessor": None, "signer": alice.fingerprint,
             "submission": jcs(unbound).decode()}  # fmt: skip
    with pytest.raises(EntryMismatchError, match="names no CAS"):
        PolicyChainChecker()(0, _entry(EntryType.POLICY_CREATED, entry))


def test_a_view_names_a_gap_in_the_chain_as_missing() -> None:
    """``view=True`` (``ledger verify --full --identity``: the entries the CAS returned to one
    stakeholder): an update from a version no entry before made is an entry left out (64); a
    fork (an update from a version seen, not the current one) stays a mismatch (63), as without
    ``view``, where the same gap is a mismatch too."""
    alice = Identity.generate()
    h1, p1 = _version(alice, "aa" * 48, None)
    _h2, p2 = _version(alice, "bb" * 48, h1)
    h3, p3 = _version(alice, "cc" * 48, _h2)
    _, p4 = _version(alice, "dd" * 48, h1)  # a second child of h1
    with pytest.raises(EntryMissingError, match=r"entry 1: .* its chain is left out"):
        PolicyChainChecker(view=True)(1, _entry(EntryType.POLICY_UPDATED, p2))  # the creation left out
    check = PolicyChainChecker(view=True)
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    with pytest.raises(EntryMissingError, match="entry 2"):
        check(2, _entry(EntryType.POLICY_UPDATED, p3))  # the update to h2 left out
    check = PolicyChainChecker(view=True)
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    check(1, _entry(EntryType.POLICY_UPDATED, p2))
    with pytest.raises(EntryMismatchError, match="entry 2") as fork:
        check(2, _entry(EntryType.POLICY_UPDATED, p4))
    assert type(fork.value) is EntryMismatchError
    with pytest.raises(EntryMismatchError) as whole:  # the whole log: a broken chain, not a view
        PolicyChainChecker()(1, _entry(EntryType.POLICY_UPDATED, p2))
    assert type(whole.value) is EntryMismatchError
    # An activation without its submission (in a pending entry before it): left out in a view.
    bare = {k: v for k, v in p1.items() if k != "submission"}
    with pytest.raises(EntryMissingError, match="submission's entry is left out"):
        PolicyChainChecker(view=True)(0, _entry(EntryType.POLICY_CREATED, bare))
    assert h3 != h1


def test_a_view_without_an_activation_names_it_missing() -> None:
    """Board governance: a version submitted (pending), then activated by an update entry without
    the submission. A view that leaves out that activation and shows the next update from the
    submitted version is missing an entry (64), not a fork: the submission made no version
    current. A version that was current once and is updated from again stays a fork (63)."""
    alice = Identity.generate()
    h1, p1 = _version(alice, "aa" * 48, None)
    h2, p2 = _version(alice, "bb" * 48, h1)
    _h3, p3 = _version(alice, "cc" * 48, h2)
    check = PolicyChainChecker(view=True)
    check(0, _entry(EntryType.POLICY_CREATED, p1))
    check(1, _entry(EntryType.POLICY_SUBMITTED, p2))  # pending; its activation (entry 2) left out
    with pytest.raises(EntryMissingError, match=r"entry 3: .* an entry of its chain is left out"):
        check(3, _entry(EntryType.POLICY_UPDATED, p3))
    # the whole log: the same is a broken chain (63)
    whole = PolicyChainChecker()
    whole(0, _entry(EntryType.POLICY_CREATED, p1))
    whole(1, _entry(EntryType.POLICY_SUBMITTED, p2))
    with pytest.raises(EntryMismatchError) as broken:
        whole(3, _entry(EntryType.POLICY_UPDATED, p3))
    assert type(broken.value) is EntryMismatchError
