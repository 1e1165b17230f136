"""Namespaces (SCONE's ``access_policy.create_sessions``): a policy named ``a/b`` is created only
by identities the nearest existing policy of its namespace (``a``) allows, directly or through a
board; refusals are recorded in the ledger under the namespace."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cas_inproc import MEASUREMENT, InProcessCas, submission
from confide import errors
from confide.cas.core import APPROVAL_TYPE, decrypt_release, sign_document
from confide.cas.db import raw_execute
from confide.identity import Identity


def _policy(name: str, access: str = "") -> str:
    return f'name: {name}\nversion: "0.3"\n' + access


def _approve(cas: InProcessCas, name: str, digest: str, who: Identity) -> str:
    body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": cas.cas.tls_spki_sha256}
    return cas.cas.approve(sign_document(body, who.sign, who.public.public_base64)).state


def _events(cas: InProcessCas, policy: str) -> list[tuple[str, dict[str, object]]]:
    with cas.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT type, payload FROM events WHERE policy = ? ORDER BY seq", (policy,)
        ).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


@pytest.fixture
def cas(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path)


def test_namespace_owner_decides_who_creates_below_it(cas: InProcessCas) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    assert cas.apply(_policy("acme"), alice).state == "active"
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy acme/shop "):
        cas.apply(_policy("acme/shop"), bob)
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy acme/deep/er "):
        cas.apply(_policy("acme/deep/er"), bob)  # the nearest existing ancestor decides
    # Refusals are recorded under the namespace (the names do not exist), nothing was created.
    refused = [p for t, p in _events(cas, "acme") if t == "policy-create-refused"]
    assert refused == [
        {"signer": bob.fingerprint, "name": "acme/shop"},
        {"signer": bob.fingerprint, "name": "acme/deep/er"},
    ]
    assert _events(cas, "acme/shop") == []
    # The owner (CREATOR through the default: create_sessions falls back to update) may.
    assert cas.apply(_policy("acme/shop"), alice).state == "active"
    # Names outside any existing policy's namespace stay first come.
    assert cas.apply(_policy("free/standing"), bob).state == "active"
    # A child's own creator governs its own namespace.
    assert cas.apply(_policy("acme/shop/cart"), alice).state == "active"


def test_create_sessions_grants_others_and_nearest_ancestor_wins(cas: InProcessCas) -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    cas.apply(_policy("org", f"access_policy:\n  create_sessions: [CREATOR, {bob.fingerprint}]\n"), alice)
    assert cas.apply(_policy("org/team"), bob).state == "active"  # bob becomes its creator
    # org/team's own (default) rules govern below it: bob yes, alice no, even as org's owner.
    assert cas.apply(_policy("org/team/svc"), bob).state == "active"
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy org/team/other "):
        cas.apply(_policy("org/team/other"), alice)
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy org/x "):
        cas.apply(_policy("org/x"), carol)
    # ANY opens a namespace to everyone.
    cas.apply(_policy("pub", "access_policy:\n  create_sessions: ANY\n"), alice)
    assert cas.apply(_policy("pub/mine"), carol).state == "active"
    # The creator of the child is its submitter: carol may update it, alice may not.
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy pub/mine "):
        cas.apply(
            _policy("pub/mine", "secrets:\n  - name: s\n    kind: ascii\n") + _pred(cas, "pub/mine"), alice
        )
    assert [t for t, _ in _events(cas, "pub/mine")][-1] == "policy-update-refused"  # recorded


def _pred(cas: InProcessCas, name: str) -> str:
    with cas.cas.db.read() as conn:
        (head,) = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()
    return f"predecessor: {head}\n"


def test_create_sessions_board_approves_a_pending_creation(cas: InProcessCas) -> None:
    alice, bob, carol, dave = (Identity.generate() for _ in range(4))
    board = (
        "access_policy:\n  create_sessions:\n    - require-all:\n"
        f"        - signer: {alice.fingerprint}\n        - signer: {carol.fingerprint}\n"
    )
    cas.apply(_policy("lab", board), alice)
    pending = cas.apply(_policy("lab/trial"), alice)
    assert pending.state == "pending"
    with pytest.raises(errors.AccessDeniedError, match=r"may not approve version .* of policy lab/trial"):
        _approve(cas, "lab/trial", pending.hash, dave)
    assert _approve(cas, "lab/trial", pending.hash, carol) == "active"
    types = [t for t, _ in _events(cas, "lab/trial")]
    assert types == ["policy-pending", "policy-approved", "policy-created"], types
    # alice submitted it, so alice is its creator and may update it alone.
    updated = cas.apply(
        _policy("lab/trial", "secrets:\n  - name: s\n    kind: ascii\n") + _pred(cas, "lab/trial"), alice
    )
    assert updated.state == "active"
    # Someone not on the board at all is refused outright, not left pending.
    with pytest.raises(errors.AccessDeniedError):
        cas.apply(_policy("lab/other"), bob)


def test_a_pending_creation_goes_stale_when_the_name_is_taken(cas: InProcessCas) -> None:
    alice, carol, dave = (Identity.generate() for _ in range(3))
    rules = (
        "access_policy:\n  create_sessions:\n    - require-all:\n"
        f"        - signer: {alice.fingerprint}\n        - signer: {carol.fingerprint}\n"
        f"    - {dave.fingerprint}\n"
    )
    cas.apply(_policy("ns", rules), alice)
    pending = cas.apply(_policy("ns/app"), alice)
    assert pending.state == "pending"
    assert cas.apply(_policy("ns/app", "secrets:\n  - name: t\n    kind: ascii\n"), dave).state == "active"
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(cas, "ns/app", pending.hash, carol)
    # The stale mark is kept (committed), so a second approval says so.
    with pytest.raises(errors.ConflictError, match="is stale, not pending"):
        _approve(cas, "ns/app", pending.hash, carol)
    assert ("policy-stale", {"hash": pending.hash}) in _events(cas, "ns/app")


def test_refused_update_is_recorded_in_the_ledger(cas: InProcessCas) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    created = cas.apply(_policy("solo"), alice)
    text = _policy("solo", "secrets:\n  - name: s\n    kind: ascii\n") + f"predecessor: {created.hash}\n"
    with pytest.raises(errors.AccessDeniedError):
        cas.cas.apply(submission(cas.cas, text, mallory))
    assert _events(cas, "solo")[-1] == ("policy-update-refused", {"signer": mallory.fingerprint})


def _with_service(name: str, secrets: str, content: str = "x") -> str:
    return f"""name: {name}
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
{secrets}
images:
  - name: img
    injection_files:
      - path: /dev/shm/ns-export/out
        content: "{content}"
security:
  attestation:
    tolerate: [simulation]
"""


def _released(cas: InProcessCas, policy: str) -> bytes:
    body, key = cas.request(policy=policy)
    release = decrypt_release(key, cas.cas.attest(body), bytes.fromhex(body["nonce"]))
    return base64.b64decode(release["files"]["/dev/shm/ns-export/out"])


def test_a_secret_exported_to_a_namespace_is_imported_by_its_policies(cas: InProcessCas) -> None:
    """``export: {namespace: N}`` (docs/cas.md "Secrets"): every policy named ``N/...`` may
    import the secret, while a policy named N exists (it governs who creates names in N); a
    name merely starting with N, or N when nobody claimed it, may not."""
    owner, lab = Identity.generate(), Identity.generate()
    token = "s3cr3t-token-value-42"
    exported = f"  - name: tok\n    kind: ascii\n    value: {token}\n    export:\n      - namespace: lab\n"
    cas.apply(_with_service("owner", exported), owner)
    importing = "  - name: t\n    import:\n      session: owner\n      secret: tok\n"
    cas.apply(_with_service("lab/app", importing, "$$SCONE::t$$"), lab)  # namespace lab unclaimed
    with pytest.raises(errors.AccessDeniedError, match="does not export tok to this version of lab/app"):
        _released(cas, "lab/app")
    cas.apply(_policy("lab"), lab)  # claimed: creating names in it is now governed
    assert _released(cas, "lab/app") == token.encode()
    cas.apply(_with_service("lab/app/deep", importing, "$$SCONE::t$$"), lab)
    assert _released(cas, "lab/app/deep") == token.encode()
    cas.apply(_with_service("labx", importing, "$$SCONE::t$$"), lab)
    with pytest.raises(errors.AccessDeniedError, match="does not export tok to this version of labx"):
        _released(cas, "labx")


def test_an_identity_on_no_board_learns_nothing_from_an_approval(cas: InProcessCas) -> None:
    """An approval signed by someone on no board that decides the name is refused with one
    error, whether the policy or the version exists and whatever its state (``policy show``
    tells a non-reader nothing either), and changes nothing: it does not mark a stale version."""
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    board = (
        "access_policy:\n  update:\n    - require-all:\n"
        f"        - signer: {alice.fingerprint}\n        - signer: {bob.fingerprint}\n"
        f"    - {alice.fingerprint}\n"
    )
    created = cas.apply(_policy("vault", board), alice)
    pending = cas.apply(
        _policy("vault", board + "secrets:\n  - name: s\n    kind: ascii\n") + _pred(cas, "vault"), bob
    )
    assert pending.state == "pending"
    cas.apply(
        _policy("vault", board + "secrets:\n  - name: t\n    kind: ascii\n") + _pred(cas, "vault"), alice
    )
    # pending's predecessor is no longer current: stale for a board member, nothing to mallory
    for name, digest in [
        ("vault", pending.hash),  # pending (now stale)
        ("vault", created.hash),  # superseded
        ("vault", "ab" * 32),  # no such version
        ("nothing", "ab" * 32),  # no such policy
    ]:
        with pytest.raises(errors.AccessDeniedError) as refused:
            _approve(cas, name, digest, mallory)
        assert refused.value.message == (
            f"identity {mallory.fingerprint[:16]}… may not approve version {digest[:16]}… of policy {name} "
            "(it is on no board that decides it)"
        )
    assert ("policy-stale", {"hash": pending.hash}) not in _events(cas, "vault")
    with pytest.raises(errors.ConflictError, match="changed since"):
        _approve(cas, "vault", pending.hash, bob)
    assert ("policy-stale", {"hash": pending.hash}) in _events(cas, "vault")


def test_a_refused_submitter_learns_neither_the_current_hash_nor_the_versions(cas: InProcessCas) -> None:
    """A submission by an identity that may not update the policy (or create in its
    namespace) is refused before any conflict is reported: the conflict messages name the
    current version's hash and say which versions were submitted, which only those who may
    submit need (``policy show`` tells a non-reader nothing)."""
    alice, mallory = Identity.generate(), Identity.generate()
    created = cas.apply(_policy("solo"), alice)
    attempts = [
        _policy("solo", "secrets:\n  - name: s\n    kind: ascii\n"),  # no predecessor
        _policy("solo", "secrets:\n  - name: s\n    kind: ascii\n") + f"predecessor: {'ab' * 32}\n",
        _policy("solo"),  # the current version itself
    ]
    for text in attempts:
        with pytest.raises(errors.AccessDeniedError) as refused:
            cas.cas.apply(submission(cas.cas, text, mallory))
        assert created.hash not in refused.value.message and created.hash[:16] not in refused.value.message
    # a policy in a namespace: the same
    cas.apply(_policy("corp"), alice)
    inner = cas.apply(_policy("corp/x"), alice)
    for text in [_policy("corp/x"), _policy("corp/x") + f"predecessor: {inner.hash}\n"]:
        with pytest.raises(errors.AccessDeniedError):
            cas.cas.apply(submission(cas.cas, text, mallory))
    # those who may submit still get the conflict, with the current hash to rebase on
    with pytest.raises(errors.ConflictError, match=created.hash):
        cas.cas.apply(submission(cas.cas, attempts[0], alice))


def test_a_refused_submission_does_not_tell_whether_the_name_exists(cas: InProcessCas) -> None:
    """An identity that may neither create in a namespace nor update a policy in it gets one
    refusal for an existing and a missing name (docs/cas.md "Policies and governance"), as
    ``policy show`` and approvals do."""
    alice, mallory = Identity.generate(), Identity.generate()
    cas.apply(_policy("acme"), alice)
    cas.apply(_policy("acme/secret-project"), alice)
    messages = []
    for name in ("acme/secret-project", "acme/nothing-here"):
        with pytest.raises(errors.AccessDeniedError) as info:
            cas.apply(_policy(name), mallory)
        messages.append(info.value.message.replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_a_namespace_export_skips_policies_its_namespace_did_not_govern(cas: InProcessCas) -> None:
    """Hostile review of 2026-12-07: ``export: {namespace: N}`` reaches the policies named ``N/...``
    because N governs who creates them. A name taken under N before anyone claimed N (first come)
    was not created under N's rules: its creator gets nothing once N is claimed, and neither do the
    policies it then lets others (or itself) create below it. Those N's rules allow, directly or
    through a board that approved the creation, still receive the secret."""
    owner, lab, carol, mallory = (Identity.generate() for _ in range(4))
    token = "s3cr3t-token-value-43"
    exported = f"  - name: tok\n    kind: ascii\n    value: {token}\n    export:\n      - namespace: lab\n"
    cas.apply(_with_service("owner", exported), owner)
    importing = "  - name: t\n    import:\n      session: owner\n      secret: tok\n"
    # mallory squats a name under the unclaimed namespace, and one level more
    cas.apply(_with_service("lab/squat", importing, "$$SCONE::t$$"), mallory)
    cas.apply(_policy("lab/m"), mallory)
    # a member of the board that will govern lab, alone, before the claim: no board approved it
    cas.apply(_with_service("lab/early", importing, "$$SCONE::t$$"), carol)
    board = (
        "access_policy:\n  create_sessions:\n    - require-all:\n"
        f"        - signer: {lab.fingerprint}\n        - signer: {carol.fingerprint}\n"
    )
    cas.apply(_policy("lab", board), lab)  # claimed, by a board of two
    # created below mallory's own lab/m after the claim: governed by mallory, not by lab
    cas.apply(_with_service("lab/m/x", importing, "$$SCONE::t$$"), mallory)
    for name in ("lab/squat", "lab/m/x", "lab/early"):
        with pytest.raises(errors.AccessDeniedError, match=f"does not export tok to this version of {name}"):
            _released(cas, name)
    # a creation the board approved receives it
    pending = cas.apply(_with_service("lab/ok", importing, "$$SCONE::t$$"), carol)
    assert pending.state == "pending"
    assert _approve(cas, "lab/ok", pending.hash, lab) == "active"
    assert _released(cas, "lab/ok") == token.encode()
    # and the policies a governed child's own rules allow below it (delegation)
    cas.apply(_policy("lab/ok/sub"), carol)
    cas.apply(_with_service("lab/ok/sub/svc", importing, "$$SCONE::t$$"), carol)
    assert _released(cas, "lab/ok/sub/svc") == token.encode()
    assert _released(cas, "lab/ok") == token.encode()  # again (phase 1 from its snapshot)
    # lab's rules now name someone else: what lab and carol created is no longer what lab's
    # rules allow, and the next release (its snapshot's answers read again at commit) gets nothing
    other = f"access_policy:\n  create_sessions: [{owner.fingerprint}]\n"
    cas.apply(_policy("lab", other) + _pred(cas, "lab"), lab)
    for name in ("lab/ok", "lab/ok/sub/svc"):
        with pytest.raises(errors.AccessDeniedError, match=f"does not export tok to this version of {name}"):
            _released(cas, name)
