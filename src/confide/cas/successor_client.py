"""The client side of the successor board: what ``confide cas successor`` and
:mod:`confide.sdk` check, sign and post (one implementation for both).

Each check refuses what the CAS would refuse before anything is signed or sent, with a
:class:`~confide.errors.UsageError` naming the input (``what``: the command's option, or the
SDK's argument). The signing and posting is :class:`~confide.cas.client.CasClient`'s; the
functions here add what the command did around it: reading the key id and the board's
generation the approval names, and checking that a change or retirement listed under an id
hashes to it before a member signs it (docs/cas.md "Handing over to a successor version",
"Changing the successor board", "Retiring a version on its own").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confide.cas import answer
from confide.errors import UsageError

if TYPE_CHECKING:
    from confide.cas.client import CasClient
    from confide.cas.successor_board import Board
    from confide.identity import Identity
    from confide.verify.result import VerifiedEvidence

__all__ = [
    "BoardChangeDraft",
    "RetirementDraft",
    "approve_successor",
    "attested_identity_claims",
    "check_code_claims",
    "check_expiry",
    "check_hex_id",
    "check_successor_claims",
    "listed_board_change",
    "listed_retirement",
    "named_claims",
    "new_board_change",
    "new_retirement",
    "parse_expiry",
    "sign_board_change",
    "sign_retirement",
    "withdraw_successor",
]

_UNITS = {"m": 60, "h": 3600, "d": 86400}


def check_expiry(at: int, now: int, shown: str, what: str = "--expires") -> int:
    """``at`` (Unix seconds), refused unless it is ahead of ``now`` and at most 90 days away, as
    the CAS would refuse it; ``shown``: the value as given, for the message."""
    from confide.cas.successor_board import MAX_LIFETIME  # noqa: PLC0415

    if not now < at <= now + MAX_LIFETIME:
        raise UsageError(f"{what}: got {shown[:40]!r}, expected a time ahead, at most 90 days from now")
    return at


def parse_expiry(text: str, now: int, what: str = "--expires") -> int:
    """``--expires``: an ISO 8601 time with a zone, or ``N`` followed by ``m``, ``h`` or ``d``
    from ``now``; checked by :func:`check_expiry`."""
    if text[-1:] in _UNITS and text[:-1].isascii() and text[:-1].isdigit() and len(text) <= 8:
        at = now + int(text[:-1]) * _UNITS[text[-1]]
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(f"{what}: got {text[:40]!r}, expected an ISO 8601 time or 12h, 7d") from None
        if when.tzinfo is None:
            raise UsageError(f"{what}: give the time zone (e.g. 2027-01-31T00:00:00Z)")
        at = int(when.timestamp())
    return check_expiry(at, now, text, what)


def named_claims(what: str, items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` items (``--claim``, the web page's claims field) as claims in text form
    (values lower-case), each name once."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or name in named:
            raise UsageError(f"{what}: got {item[:80]!r}, expected NAME=VALUE, each name once")
        named[name] = value.strip().lower()
    return named


def _claim_texts(what: str, claims: Mapping[str, str]) -> None:
    from confide.cas.successor import claim_text_ok  # noqa: PLC0415

    for name, value in claims.items():
        if not isinstance(value, str) or not claim_text_ok(value):
            raise UsageError(
                f"{what}: {name}={str(value)[:80]!r}: expected its text form (lower-case hex or decimal:"
                " 0-9 a-z _ . : -, at most 256 characters)"
            )


def check_successor_claims(
    platform: str,
    claims: Mapping[str, str],
    retire: Mapping[str, str] | None = None,
    *,
    retire_given: bool = True,
    what: tuple[str, str, str] = ("--platform", "--claim", "--retire-claim"),
) -> None:
    """An approval of the successor ``platform`` ``claims`` (all the identity claims the join
    rule compares for the platform, in text form) that also retires ``retire`` (``None``: none),
    refused as the CAS would refuse it: an unknown platform, other claims, a retirement of the
    successor's own code. ``retire_given``: ``retire`` came from the caller (checked like
    ``claims``), not from verified evidence (:func:`attested_identity_claims`). ``what``: the
    names of the three inputs in messages."""
    from confide.cas.key_release import IDENTITY_CLAIMS  # noqa: PLC0415
    from confide.cas.successor import CODE_CLAIMS, code_identity  # noqa: PLC0415
    from confide.verify.result import Platform  # noqa: PLC0415

    platform_what, claims_what, retire_what = what
    known = {p.value: names for p, names in IDENTITY_CLAIMS.items()}
    if platform not in known:
        raise UsageError(
            f"{platform_what}: got {platform[:40]!r}, expected one of {', '.join(sorted(known))}"
        )
    if set(claims) != set(known[platform]):
        raise UsageError(f"{claims_what}: {platform} needs exactly {', '.join(known[platform])}")
    if retire is not None and retire_given and set(retire) != set(known[platform]):
        raise UsageError(f"{retire_what}: {platform} needs exactly {', '.join(known[platform])}")
    _claim_texts(claims_what, claims)
    if retire is not None and retire_given:
        _claim_texts(retire_what, retire)
    if retire is not None and code_identity(platform, dict(retire)) == code_identity(platform, dict(claims)):
        code = ", ".join(CODE_CLAIMS[Platform(platform)])
        raise UsageError(f"{retire_what}: the successor has the same code ({code}): it would be retired too")


def attested_identity_claims(
    evidence: VerifiedEvidence, platform: str, what: str = "--retire-attested"
) -> dict[str, str]:
    """The identity claims (text form) of a CAS's verified ``evidence``: the version an approver
    attested, to retire; a :class:`UsageError` unless it runs on ``platform`` with every one."""
    from confide.cas.key_release import IDENTITY_CLAIMS  # noqa: PLC0415
    from confide.cas.successor import claim_text  # noqa: PLC0415

    names = IDENTITY_CLAIMS.get(evidence.platform, ())
    if evidence.platform.value != platform or not names or any(n not in evidence.claims for n in names):
        raise UsageError(f"{what}: the CAS runs on {evidence.platform.value}, not {platform}")
    return {n: claim_text(evidence.claims[n]) for n in names}


def _successor_shown(client: CasClient) -> tuple[str, int]:
    """The master key id and the board's generation (0 when absent) the CAS's successor answer
    reports; a ``ParseError`` (the CAS's answer, not the person's input) when it does not have
    that shape."""
    what = "the CAS's successor answer"
    shown = answer.obj(client.successor(), what)
    return answer.text(shown, "master_key_id", what), answer.integer(shown, "generation", what, absent=0)


def approve_successor(
    client: CasClient,
    identity: Identity,
    platform: str,
    claims: Mapping[str, str],
    expires: int,
    *,
    master_key_id: str | None = None,
    retire: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Sign and submit an approval of the successor ``platform`` ``claims`` (checked before with
    :func:`check_successor_claims`) for the CAS ``master_key_id`` (default: the id the CAS
    reports) under the board's current generation; the CAS's answer."""
    reported, generation = _successor_shown(client)
    key_id = master_key_id.lower() if master_key_id else reported
    return client.approve_successor(
        key_id,
        platform,
        dict(claims),
        expires,
        identity,
        generation=generation,
        retire=None if retire is None else dict(retire),
    )


def withdraw_successor(
    client: CasClient, identity: Identity, approval: str, *, master_key_id: str | None = None
) -> dict[str, Any]:
    """Sign and submit the withdrawal of one's own approval ``approval`` (its SHA-256) for the
    CAS ``master_key_id`` (default: the id the CAS reports); the CAS's answer."""
    key_id = master_key_id.lower() if master_key_id else _successor_shown(client)[0]
    return client.withdraw_successor_approval(key_id, approval.strip().lower(), identity)


def check_hex_id(text: str, what: str, kind: str) -> str:
    """A change or retirement id (64 hex digits), lower-cased; ``kind``: what it is, for the
    message."""
    wanted = text.strip().lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise UsageError(f"{what}: got {text[:80]!r}, expected the {kind} id (64 hex digits)")
    return wanted


@dataclass(frozen=True)
class BoardChangeDraft:
    """A change of the successor board to ``board``, replacing the board of ``generation`` of
    the CAS ``key_id``: what an approval signs."""

    key_id: str
    generation: int
    board: Board


def _board_answer(current: object, listed: str, structure: str) -> tuple[str, int, list[dict[str, Any]]]:
    """The key id, the board's generation and the pending ``listed`` items (objects) of the
    CAS's answer ``current``; a ``ParseError`` (the CAS's answer, not the person's input) when
    it does not have that shape."""
    shown = answer.obj(current, structure)
    items = answer.objects(shown, listed, structure)
    key_id, generation = (
        answer.text(shown, "master_key_id", structure),
        answer.integer(shown, "generation", structure),
    )
    return key_id, generation, [dict(item) for item in items]


def _pending(
    current: object, noun: str, wanted: str, what: str, where: str, command: str
) -> tuple[str, int, dict[str, Any]]:
    """The key id, the generation and the pending ``noun`` (``change``, ``retirement``) the
    CAS's answer ``current`` lists under the id ``wanted``; a ``UsageError`` when it lists none."""
    structure = "the CAS's successor board" if noun == "change" else "the CAS's retirements"
    key_id, generation, items = _board_answer(current, f"{noun}s", structure)
    listed = [item for item in items if item.get(noun) == wanted]
    if not listed:
        raise UsageError(
            f"{what}: no pending {noun} {wanted[:16]}… {where} the current board (generation "
            f"{generation}); cas successor {command} show lists them"
        )
    return key_id, generation, listed[0]


def new_board_change(client: CasClient, board: Board, what: str = "--board") -> BoardChangeDraft:
    """A proposal of ``board`` against the CAS's current board; refused when it is that board."""
    current = client.successor_board()
    key_id, generation, _ = _board_answer(current, "changes", "the CAS's successor board")
    if board.to_json() == current.get("board"):
        raise UsageError(f"{what}: that is the current successor board")
    return BoardChangeDraft(key_id, generation, board)


def listed_board_change(client: CasClient, change: str, what: str = "--change") -> BoardChangeDraft:
    """The pending change the CAS lists under the id ``change`` (:func:`check_hex_id`), checked
    to hash to it (its board, generation and key id): the member signs the board the id names,
    whatever the CAS says. A :class:`UsageError` when none is listed or it does not hash to it."""
    from confide.cas.board_change import change_id  # noqa: PLC0415
    from confide.cas.successor_board import board_from_json  # noqa: PLC0415

    key_id, generation, found = _pending(client.successor_board(), "change", change, what, "of", "board")
    board = board_from_json(found.get("board"), "listed board change")
    if change_id(key_id, generation, board) != change:
        raise UsageError(
            f"the CAS lists a change {change[:16]}… whose board, generation and key id do not hash to "
            "it: nothing signed"
        )
    return BoardChangeDraft(key_id, generation, board)


def sign_board_change(
    client: CasClient, identity: Identity, draft: BoardChangeDraft, expires: int
) -> dict[str, Any]:
    """Sign and submit an approval of ``draft``; the CAS's answer."""
    return client.approve_board_change(
        draft.key_id, draft.generation, draft.board.to_json(), expires, identity
    )


def check_code_claims(
    platform: str, code: Mapping[str, str], what: tuple[str, str] = ("--platform", "--claim")
) -> None:
    """The code identity claims of a version to retire: exactly those of ``platform``, each in
    its text form."""
    from confide.cas.successor import CODE_CLAIMS  # noqa: PLC0415

    platform_what, code_what = what
    known = {p.value: names for p, names in CODE_CLAIMS.items()}
    if platform not in known:
        raise UsageError(
            f"{platform_what}: got {platform[:40]!r}, expected one of {', '.join(sorted(known))}"
        )
    if set(code) != set(known[platform]):
        raise UsageError(
            f"{code_what}: the code identity of {platform} is exactly {', '.join(known[platform])}"
        )
    _claim_texts(code_what, code)


@dataclass(frozen=True)
class RetirementDraft:
    """Retiring the version of ``platform`` whose code identity claims are ``code``, under the
    board of ``generation`` of the CAS ``key_id``: what an approval signs."""

    key_id: str
    generation: int
    platform: str
    code: Mapping[str, str]


def new_retirement(client: CasClient, platform: str, code: Mapping[str, str]) -> RetirementDraft:
    """A proposal to retire ``platform`` ``code`` (checked with :func:`check_code_claims`)
    under the CAS's current board."""
    key_id, generation, _ = _board_answer(
        client.successor_retirements(), "retirements", "the CAS's retirements"
    )
    return RetirementDraft(key_id, generation, platform, dict(code))


def listed_retirement(client: CasClient, retirement: str, what: str = "--retirement") -> RetirementDraft:
    """The pending retirement the CAS lists under the id ``retirement`` (:func:`check_hex_id`),
    checked to hash to it (platform, code claims, the board's generation and the key id): the
    member signs the version the id names, whatever the CAS says."""
    from confide.cas.retirement import retirement_id  # noqa: PLC0415
    from confide.cas.successor import CODE_CLAIMS, claim_text_ok  # noqa: PLC0415
    from confide.verify.result import Platform  # noqa: PLC0415

    key_id, generation, found = _pending(
        client.successor_retirements(), "retirement", retirement, what, "under", "retire"
    )
    platform, code = str(found.get("platform")), found.get("code", {})
    names = CODE_CLAIMS.get(Platform(platform)) if platform in {p.value for p in Platform} else None
    well_formed = (
        names is not None and isinstance(code, dict) and set(code) == set(names)
        and all(isinstance(v, str) and claim_text_ok(v) for v in code.values())
    )  # fmt: skip
    if not well_formed or retirement_id(key_id, generation, platform, code) != retirement:
        raise UsageError(
            f"the CAS lists a retirement {retirement[:16]}… whose platform, code claims, generation and "
            "key id do not hash to it: nothing signed"
        )
    return RetirementDraft(key_id, generation, platform, {str(k): str(v) for k, v in code.items()})


def sign_retirement(
    client: CasClient, identity: Identity, draft: RetirementDraft, expires: int
) -> dict[str, Any]:
    """Sign and submit an approval of ``draft``; the CAS's answer."""
    return client.approve_retirement(
        draft.key_id, draft.generation, draft.platform, dict(draft.code), expires, identity
    )
