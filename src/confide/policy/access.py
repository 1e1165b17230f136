"""Access control of a policy: who may read and update it, and policy boards."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    model_serializer,
    model_validator,
)
from pydantic_core.core_schema import SerializerFunctionWrapHandler

from confide.policy import placeholders as ph
from confide.policy._base import (
    _Model,
    _one_or_many,
)
from confide.policy._types import (
    short,
)

__all__ = [
    "KEYWORDS",
    "AccessList",
    "AccessPolicy",
    "AccessRule",
    "Identity",
    "RequireAll",
    "RequireAtLeast",
    "SignerRule",
    "is_authorized",
    "placeholder_names",
    "resolve_rules",
]


# --------------------------------------------------------------------------------------------
# Access control ("Access Control"; sconedocs "Governance" > "Policy Board")
# --------------------------------------------------------------------------------------------

KEYWORDS = frozenset({"CREATOR", "ANY", "NONE"})
_AT_LEAST = re.compile(r"require-at-least-([0-9]{1,4})")


def _identity(value: str) -> str:
    if not value.strip() or "\x00" in value or len(value) > 16384:
        raise ValueError(
            f"got {short(value)}, expected an identity's fingerprint (64 lower-case hex digits), "
            "CREATOR, ANY, NONE or $$SCONE::name$$"
        )
    ph.find_placeholders(value)
    return value


Identity = Annotated[StrictStr, AfterValidator(_identity)]


class SignerRule(_Model):
    """``signer: <public key>``: a stakeholder identity whose signature is required."""

    signer: Identity


class RequireAll(_Model):
    require_all: Annotated[tuple[AccessRule, ...], Field(min_length=1)] = Field(alias="require-all")


class RequireAtLeast(_Model):
    """``require-at-least-N: [rules]`` (serialised back to that form)."""

    n: Annotated[StrictInt, Field(ge=1)]
    rules: Annotated[tuple[AccessRule, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _from_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1:
            ((key, rules),) = data.items()
            m = _AT_LEAST.fullmatch(key) if isinstance(key, str) else None
            if m:
                return {"n": int(m.group(1)), "rules": rules}
        return data

    @model_validator(mode="after")
    def _threshold(self) -> RequireAtLeast:
        if self.n > len(self.rules):
            raise ValueError(
                f"got require-at-least-{self.n} of {len(self.rules)} rules, expected N <= {len(self.rules)}"
            )
        identities = [_identity_of(r) for r in self.rules if _identity_of(r) is not None]
        if len(set(identities)) != len(identities):
            raise ValueError(
                f"got an identity listed twice in require-at-least-{self.n}, expected distinct members "
                "(one signature must not count twice)"
            )
        return self

    @model_serializer(mode="wrap")
    def _to_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if isinstance(data, dict) and "rules" in data:
            return {f"require-at-least-{self.n}": data["rules"]}
        return data  # type: ignore[no-any-return]


def _identity_of(rule: Any) -> str | None:
    if isinstance(rule, str):
        return rule
    if isinstance(rule, SignerRule):
        return rule.signer
    return None


def _rule_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "identity"
    if isinstance(value, SignerRule | RequireAll | RequireAtLeast):
        return {SignerRule: "signer", RequireAll: "require-all", RequireAtLeast: "require-at-least"}[
            type(value)
        ]
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        if key in ("signer", "require-all"):
            return str(key)
        if isinstance(key, str) and _AT_LEAST.fullmatch(key):
            return "require-at-least"
    return None


AccessRule = Annotated[
    Annotated[Identity, Tag("identity")]
    | Annotated[SignerRule, Tag("signer")]
    | Annotated[RequireAll, Tag("require-all")]
    | Annotated[RequireAtLeast, Tag("require-at-least")],
    Discriminator(
        _rule_tag,
        custom_error_type="access_rule",
        custom_error_message=(
            "expected an identity string, {signer: KEY}, {require-all: [...]} or {require-at-least-N: [...]}"
        ),
    ),
]
RequireAll.model_rebuild()
RequireAtLeast.model_rebuild()

AccessList = Annotated[tuple[AccessRule, ...], BeforeValidator(_one_or_many), Field(min_length=1)]


def _rules_have_board(rules: tuple[Any, ...]) -> bool:
    return any(isinstance(r, RequireAll | RequireAtLeast) for r in rules)


class AccessPolicy(_Model):
    """Who may read, update, and create policies in the namespace of this one. ``CREATOR`` is
    the identity that created the policy; ``ANY``/``NONE`` must stand alone; boards
    (``require-all``, ``require-at-least-N``) are allowed in update and create_sessions."""

    read: AccessList = ("CREATOR",)
    update: AccessList = ("CREATOR",)
    create_sessions: AccessList | None = None
    """Defaults to the ``update`` rules."""

    @model_validator(mode="after")
    def _checks(self) -> AccessPolicy:
        for op in ("read", "update", "create_sessions"):
            rules = getattr(self, op)
            if rules is None:
                continue
            for word in ("ANY", "NONE"):
                if word in rules and len(rules) > 1:
                    raise ValueError(f"got {word} with other entries in {op}, expected {word} alone")
        if _rules_have_board(self.read):
            raise ValueError(
                "got a require-all/require-at-least rule in read, expected boards only in update"
            )
        return self

    @property
    def effective_create_sessions(self) -> tuple[Any, ...]:
        return self.create_sessions if self.create_sessions is not None else self.update


def is_authorized(
    rules: Sequence[Any],
    identities: Collection[str],
    *,
    creator: str | None,
    resolve: Callable[[str], str | None] | None = None,
) -> bool:
    """Whether the ``identities`` that authenticated or signed a request satisfy ``rules``
    (one operation's list: any entry suffices, as in SCONE).

    ``CREATOR`` is satisfied by ``creator``; ``ANY`` always, ``NONE`` never; ``signer: X`` and a
    plain ``X`` by X; ``require-all`` by all its rules; ``require-at-least-N`` by N of them, met
    by N *distinct* signers: one signature counts for one of the N at most, also where one
    identity stands in two of them (``CREATOR`` and the creator's own fingerprint, or a member
    that a nested board names again; docs/policy.md "access_policy"). A ``$$SCONE::name$$``
    entry is replaced by ``resolve(name)`` (the identity the secret names); without a resolver,
    or when it gives ``None``, the entry stands for no one. The CAS resolves the entries first
    (:func:`resolve_rules`), so that board membership is judged on the same identities.
    """
    have = frozenset(identities)
    budget = _Budget()
    return any(_satisfied(r, have, creator, resolve, budget) for r in rules)


def _placeholder_name(identity: str) -> str | None:
    """The secret a leaf entry that is exactly one ``$$SCONE::name$$`` names, else ``None``."""
    found = ph.find_placeholders(identity)
    if len(found) != 1 or found[0].start != 0 or found[0].end != len(identity) or found[0].format:
        return None
    return found[0].name


def placeholder_names(rules: Sequence[Any]) -> list[str]:
    """The secrets the ``$$SCONE::name$$`` entries of ``rules`` name, at any depth of their
    boards, in order, each once."""
    out: list[str] = []
    for rule in rules:
        if isinstance(rule, RequireAll | RequireAtLeast):
            nested = rule.require_all if isinstance(rule, RequireAll) else rule.rules
            out += [n for n in placeholder_names(nested) if n not in out]
            continue
        identity = _identity_of(rule)
        name = None if identity is None else _placeholder_name(identity)
        if name is not None and name not in out:
            out.append(name)
    return out


def resolve_rules(rules: Sequence[Any], resolve: Callable[[str], str | None]) -> tuple[Any, ...]:
    """``rules`` with every ``$$SCONE::name$$`` entry replaced by ``resolve(name)``, the
    identity (fingerprint) the secret names (sconedocs "Governance", Access Control: the value
    of the secret "at permission evaluation time"), at any depth of their boards, ``signer:``
    entries included. An entry ``resolve`` gives ``None`` for is kept as it is: it stands for
    no one (:func:`is_authorized`, and no board member). The result is what
    :func:`is_authorized` and board-membership checks judge; it is not validated again: two
    entries may now name one identity, which counts once (distinct signers)."""

    def one(rule: Any) -> Any:
        if isinstance(rule, RequireAll):
            return RequireAll.model_construct(require_all=tuple(one(r) for r in rule.require_all))
        if isinstance(rule, RequireAtLeast):
            return RequireAtLeast.model_construct(n=rule.n, rules=tuple(one(r) for r in rule.rules))
        identity = _identity_of(rule)
        name = None if identity is None else _placeholder_name(identity)
        found = None if name is None else resolve(name)
        if found is None:
            return rule
        return SignerRule.model_construct(signer=found) if isinstance(rule, SignerRule) else found

    return tuple(one(r) for r in rules)


class _Budget:
    """How many rule evaluations one :func:`is_authorized` may make. Counting distinct signers
    tries the ways to share out identities that several entries of a board name; a hostile
    policy could make that exponential, so past this many evaluations every further one is
    "not satisfied": the rules are monotone, so that can only refuse, never grant."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.left = self.LIMIT

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _leaf_identity(rule: Any, creator: str | None, resolve: Callable[[str], str | None] | None) -> str | None:
    """The identity a leaf rule stands for, a placeholder resolved and ``CREATOR`` replaced by
    the creator; ``ANY`` itself; ``None`` when it stands for no one (``NONE``, an unresolvable
    placeholder, ``CREATOR`` without a creator, a board)."""
    identity = _identity_of(rule)
    if identity is None:
        return None
    found = ph.find_placeholders(identity)
    if found:
        if resolve is None or len(found) != 1 or found[0].start != 0 or found[0].end != len(identity):
            return None
        resolved = resolve(found[0].name)
        if resolved is None or ph.find_placeholders(resolved):
            return None
        identity = resolved
    if identity == "NONE":
        return None
    if identity == "CREATOR":
        return creator
    return identity


def _signers(rule: Any, creator: str | None, resolve: Callable[[str], str | None] | None) -> frozenset[str]:
    """Every identity that can take part in satisfying ``rule`` (``ANY`` names none)."""
    if isinstance(rule, RequireAll | RequireAtLeast):
        nested = rule.require_all if isinstance(rule, RequireAll) else rule.rules
        return frozenset().union(*(_signers(r, creator, resolve) for r in nested))
    identity = _leaf_identity(rule, creator, resolve)
    return frozenset() if identity is None or identity == "ANY" else frozenset({identity})


def _satisfied(
    rule: Any,
    have: frozenset[str],
    creator: str | None,
    resolve: Callable[[str], str | None] | None,
    budget: _Budget,
) -> bool:
    if not budget.spend():
        return False
    if isinstance(rule, RequireAll):
        return all(_satisfied(r, have, creator, resolve, budget) for r in rule.require_all)
    if isinstance(rule, RequireAtLeast):
        return _distinct(rule.rules, rule.n, have, creator, resolve, budget) >= rule.n
    identity = _leaf_identity(rule, creator, resolve)
    if identity is None:
        return False
    return identity == "ANY" or identity in have


def _distinct(
    rules: Sequence[Any],
    n: int,
    have: frozenset[str],
    creator: str | None,
    resolve: Callable[[str], str | None] | None,
    budget: _Budget,
) -> int:
    """How many of ``rules`` (the entries of a ``require-at-least-n``) distinct signers satisfy,
    up to ``n``: each identity of ``have`` that two or more satisfied entries name is given to
    one of them, every way in turn, and the others are judged without it. A loader check
    already refuses one member listed twice; this also covers ``CREATOR`` next to the creator's
    fingerprint and members repeated inside nested boards, where one signature would
    otherwise count twice (docs/policy.md "access_policy")."""
    met = [r for r in rules if _satisfied(r, have, creator, resolve, budget)]
    if len(met) < n:
        return len(met)
    named = [_signers(r, creator, resolve) & have for r in met]
    holders: dict[str, list[int]] = {}
    for i, whom in enumerate(named):
        for who in whom:
            holders.setdefault(who, []).append(i)
    shared = sorted(who for who, held in holders.items() if len(held) > 1)
    if not shared:
        return len(met)
    best = 0
    for owners in itertools.product(*(holders[who] for who in shared)):
        count = 0
        for i, r in enumerate(met):
            withheld = frozenset(who for who, owner in zip(shared, owners, strict=True) if owner != i)
            if not withheld & named[i] or _satisfied(r, have - withheld, creator, resolve, budget):
                count += 1
        best = max(best, count)
        if best >= n or budget.left < 0:
            break
    return best
