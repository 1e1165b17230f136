"""``require-at-least-N`` is met by N distinct signers (docs/policy.md "access_policy"): one
signature never counts twice, also where one identity stands in two entries of a board under
two names (``CREATOR`` and the creator's fingerprint) or again inside a nested board. The loader
refuses a member listed twice by the same name only; the evaluation covers the rest."""

from __future__ import annotations

import pytest

from cas_inproc import InProcessCas
from confide.cas.core import APPROVAL_TYPE, sign_document
from confide.identity import Identity
from confide.policy import access, loads_policy
from confide.policy.access import is_authorized

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _update_rules(update: str) -> tuple[object, ...]:
    text = f'name: p\nversion: "0.3"\naccess_policy:\n  update: {update}\n'
    return tuple(loads_policy(text).access_policy.update)


@pytest.mark.parametrize(
    ("update", "have", "creator", "expected"),
    [
        # CREATOR and the creator's own fingerprint: one person, one voice.
        (f"{{require-at-least-2: [CREATOR, '{A}', '{B}']}}", {A}, A, False),
        (f"{{require-at-least-2: [CREATOR, '{A}', '{B}']}}", {A, B}, A, True),
        (f"{{require-at-least-2: [CREATOR, '{A}', '{B}']}}", {A}, C, False),
        (f"{{require-at-least-2: [CREATOR, '{A}', '{B}']}}", {A, C}, C, True),  # two people
        (f"{{require-at-least-3: [CREATOR, '{A}', '{B}']}}", {A, B}, A, False),
        # a member named again inside a nested board
        (f"{{require-at-least-2: ['{A}', {{require-at-least-1: ['{A}', '{B}']}}]}}", {A}, None, False),
        (f"{{require-at-least-2: ['{A}', {{require-at-least-1: ['{A}', '{B}']}}]}}", {A, B}, None, True),
        (f"{{require-at-least-2: ['{A}', {{require-all: ['{A}']}}, '{B}']}}", {A}, None, False),
        (f"{{require-at-least-2: ['{A}', {{require-all: ['{A}']}}, '{B}']}}", {A, B}, None, True),
        (
            f"{{require-at-least-2: ['{A}', {{signer: '{B}'}}, {{require-all: ['{A}', '{B}']}}]}}",
            {A, B},
            None,
            True,
        ),
        # the nested board needs A and C; A cannot serve it and the plain A entry at once
        (f"{{require-at-least-2: [{{require-all: [CREATOR, '{C}']}}, '{A}', '{B}']}}", {A, C}, A, False),
        # ...but a nested board C alone meets leaves A to the other entry
        (
            f"{{require-at-least-2: [{{require-at-least-1: [CREATOR, '{C}']}}, '{A}', '{B}']}}",
            {A, C},
            A,
            True,
        ),
        # nested twice: the inner board's own count is of distinct signers too
        (f"{{require-all: [{{require-at-least-2: [CREATOR, '{A}']}}]}}", {A}, A, False),
        (f"{{require-all: [{{require-at-least-2: [CREATOR, '{A}']}}]}}", {A, B}, B, True),
    ],
)
def test_require_at_least_counts_distinct_signers(
    update: str, have: set[str], creator: str | None, expected: bool
) -> None:
    assert is_authorized(_update_rules(update), have, creator=creator) is expected


def test_a_shared_member_is_given_to_the_entry_that_needs_it() -> None:
    # A is named by all three entries; B and C by one each: A must go to the first entry for
    # three distinct signers to meet the three (A, B, C), whatever order they are tried in.
    rules = _update_rules(
        f"{{require-at-least-3: [{{require-all: ['{A}']}}, {{require-at-least-1: ['{A}', '{B}']}}, "
        f"{{require-at-least-1: ['{A}', '{C}']}}]}}"
    )
    assert is_authorized(rules, {A, B, C}, creator=None)
    assert not is_authorized(rules, {A, B}, creator=None)


def test_the_evaluation_budget_refuses_rather_than_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = _update_rules(f"{{require-at-least-2: [CREATOR, '{A}', '{B}']}}")
    assert is_authorized(rules, {A, B}, creator=A)
    monkeypatch.setattr(access._Budget, "LIMIT", 3)
    assert not is_authorized(rules, {A, B}, creator=A)  # out of budget: not satisfied


def test_a_hostile_board_is_judged_within_the_budget() -> None:
    # 12 entries each naming the same 12 members: 12^12 ways to share them out, far more than
    # the budget allows; the answer is a refusal (never a grant), reached within the budget.
    members = [f"{i:064x}" for i in range(1, 13)]
    entry = "{require-at-least-1: [" + ", ".join(f"'{m}'" for m in members) + "]}"
    rules = _update_rules(
        "{require-at-least-12: ["
        + ", ".join([entry] * 1)
        + ", "
        + ", ".join(
            "{require-all: [{require-at-least-1: [" + ", ".join(f"'{m}'" for m in members) + "]}]}"
            for _ in range(11)
        )
        + "]}"
    )
    assert is_authorized(rules, set(members[:11]), creator=None) is False


def _approve(cas: InProcessCas, name: str, digest: str, who: Identity) -> str:
    body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": cas.cas.tls_spki_sha256}
    return str(cas.cas.approve(sign_document(body, who.sign, who.public.public_base64)).state)


def test_the_creator_alone_does_not_meet_a_board_naming_them_twice(cas: InProcessCas) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    board = f"access_policy:\n  update:\n    require-at-least-2: [CREATOR, {alice.fingerprint}, {bob.fingerprint}]\n"
    first = cas.apply(f'name: gov\nversion: "0.3"\n{board}', alice)
    assert first.state == "active"
    update = f'name: gov\nversion: "0.3"\npredecessor: {first.hash}\n{board}services: []\n'
    second = cas.apply(update + "secrets:\n  - name: s\n    kind: ascii\n", alice)
    assert second.state == "pending"  # alice's submission is one voice, not two
    assert _approve(cas, "gov", second.hash, alice) == "pending"  # nor is her approval a second
    assert _approve(cas, "gov", second.hash, bob) == "active"


def test_a_namespace_board_naming_its_creator_twice(cas: InProcessCas) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    rules = f"access_policy:\n  create_sessions:\n    require-at-least-2: [CREATOR, {alice.fingerprint}, {bob.fingerprint}]\n"
    cas.apply(f'name: org\nversion: "0.3"\n{rules}', alice)
    child = cas.apply('name: org/team\nversion: "0.3"\n', alice)
    assert child.state == "pending"
    assert _approve(cas, "org/team", child.hash, bob) == "active"


@pytest.fixture
def cas(tmp_path: object) -> InProcessCas:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    return InProcessCas.start(tmp_path, "")


def test_an_upper_case_fingerprint_is_refused_at_load_and_kept_when_stored() -> None:
    from confide.errors import PolicyError

    text = f'name: p\nversion: "0.3"\naccess_policy:\n  update:\n    require-all: [CREATOR, {{signer: "{"AB" * 32}"}}]\n'
    with pytest.raises(PolicyError, match=r"5:\d+: .*in upper case, expected lower-case hex") as info:
        loads_policy(text, source="p.yaml")
    assert len(info.value.problems) == 1
    stored = loads_policy(text, stored=True)  # a version the CAS accepted before this check
    assert not is_authorized(stored.access_policy.update, {"ab" * 32, A}, creator=A)  # matches no one
    mixed = text.replace("AB" * 32, "ab" * 31 + "Ab")
    with pytest.raises(PolicyError, match="in upper case"):
        loads_policy(mixed)
    assert loads_policy(text.replace("AB" * 32, "ab" * 32))  # lower case: fine


@pytest.mark.parametrize(
    "entry",
    [
        "alice",  # a name
        "data-owner-dpo",
        "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----",  # SCONE's certificate form
        "ab" * 31,  # 62 hex digits: a truncated fingerprint
        "ab" * 32 + " ",
        "creator",  # CREATOR in lower case
    ],
)
def test_an_entry_that_names_no_identity_is_refused_at_load_and_kept_when_stored(entry: str) -> None:
    """An access entry the CAS can never match (it compares the signers' fingerprints, lower-case
    SHA-256 hex) granted nothing and made a board that needs it impossible to meet; it is refused
    where it is written (read, update, a board's signer), with its line, and still loads from a
    version the CAS stored before."""
    from confide.errors import PolicyError

    for text in (
        f'name: p\nversion: "0.3"\naccess_policy:\n  read: [CREATOR, "{entry}"]\n',
        f'name: p\nversion: "0.3"\naccess_policy:\n  update:\n    require-all: [CREATOR, {{signer: "{entry}"}}]\n',
    ):
        line = 4 if "read" in text else 5
        with pytest.raises(PolicyError, match=rf"{line}:\d+: .*expected an identity's fingerprint") as info:
            loads_policy(text, source="p.yaml")
        assert len(info.value.problems) == 1
        stored = loads_policy(text, stored=True)  # a version the CAS accepted before this check
        assert not is_authorized(stored.access_policy.update, {entry.strip(), "ab" * 32}, creator=None)
    for fine in ("ab" * 32, "CREATOR", "ANY", "NONE"):
        text = f'name: p\nversion: "0.3"\naccess_policy:\n  read: ["{fine}"]\n'
        assert loads_policy(text)
