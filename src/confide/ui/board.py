"""The successor board's pages of ``confide ui`` (docs/ui.md "The successor board"): the board,
the pending approvals of successor versions, board changes and retirements, and the forms a
member signs with, all through :class:`confide.sdk.Cas` (``confide cas successor``'s calls).

Every route is behind the page's :class:`~confide.ui.app.Guard` (the ``Host``, the cookie,
``Sec-Fetch-Site``, the CSRF token of every ``POST``); every form that signs asks first
(``data-confirm``). What the CAS lists is the operator's words: it reaches the page only
through :func:`~confide.ui.html.h`, and each list is cut at :data:`MAX_ROWS`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from confide.errors import ConfideError, UsageError
from confide.identity import Identity
from confide.sdk import BoardApprover, BoardChanges, Cas, Retirements, SuccessorBoard
from confide.ui.html import Html, h, join

__all__ = ["MAX_ROWS", "PageKit", "board_routes"]

MAX_ROWS = 500
"""The most rows of one list (approvals, approvers, changes, retirements) a page shows."""

DEFAULT_EXPIRY = "7d"
_EMPTY = Html("")
T = TypeVar("T")


@dataclass(frozen=True)
class PageKit:
    """What the board's routes share with the page's others (``confide.ui.app.create_app``)."""

    cas: Callable[[], Cas]
    identity: Callable[[], Identity | None]
    render: Callable[..., Response]
    failed: Callable[..., Response]
    call: Callable[[Callable[[], Any]], Awaitable[Any]]
    need_identity: Callable[[], Identity]
    fields: Callable[[Request], Mapping[str, str]]
    csrf: Callable[[], Html]
    dl: Callable[[list[tuple[str, object]]], Html]
    date: Callable[[float], str]
    json: Callable[[object], Html]


def _bounded(items: Sequence[T]) -> tuple[Sequence[T], Html]:
    """The first :data:`MAX_ROWS` of ``items`` and a note of how many more there are."""
    if len(items) <= MAX_ROWS:
        return items, _EMPTY
    return items[:MAX_ROWS], h('<p class="note">{} more not shown.</p>', len(items) - MAX_ROWS)


def members(board: Mapping[str, object]) -> list[str]:
    """The members a board rule names (fingerprints, as the CAS lists them)."""
    found: list[str] = []
    for value in board.values():
        if isinstance(value, tuple | list):
            found.extend(str(v) for v in value)
    return found


def _claims(claims: Mapping[str, object]) -> Html:
    return join((h("<code>{}={}</code>", k, v) for k, v in claims.items()), "<br>")


def _expiry(text: str) -> datetime:
    """The expiry field as ``--expires`` takes it (an ISO 8601 time with a zone, or ``12h``,
    ``7d``; ahead, at most 90 days), checked as the command checks it."""
    from confide.cas.successor_client import parse_expiry  # noqa: PLC0415

    given = text.strip()
    if not given:
        raise UsageError("expires: give when the approval expires (e.g. 7d, or 2027-01-31T00:00:00Z)")
    return datetime.fromtimestamp(parse_expiry(given, int(time.time()), "expires"), UTC)


def _claim_lines(what: str, text: str) -> dict[str, str]:
    """A textarea of ``NAME=VALUE`` lines (blank lines skipped), as ``--claim`` items."""
    from confide.cas.successor_client import named_claims  # noqa: PLC0415

    return named_claims(what, [line.strip() for line in text.splitlines() if line.strip()])


def _board_rule(rule_name: str, listed: str) -> dict[str, list[str]]:
    """The rule field and the members' textarea (one a line, blank lines skipped) as the board
    ``propose_board_change`` takes, parsed here as it parses it (``ParseError``: not a rule)."""
    from confide.cas.successor_board import board_from_json  # noqa: PLC0415

    if not rule_name:
        raise UsageError("rule: give require-all or require-at-least-N")
    board = {rule_name: [line.strip() for line in listed.splitlines() if line.strip()]}
    board_from_json(board, "board")
    return board


def board_routes(kit: PageKit) -> list[Route]:
    """``GET /successor`` and the ``POST`` routes of its forms."""

    def me() -> str | None:
        ident = kit.identity()
        return None if ident is None else ident.fingerprint

    def who(signer: str) -> Html:
        return h("<code>{}</code>{}", signer, Html(" <b>(you)</b>") if signer == me() else _EMPTY)

    def expiry_input(given: str = "") -> Html:
        return h(
            '<label>expires: <input name="expires" value="{}" size="24" required></label> '
            "(<code>12h</code>, <code>7d</code>, or an ISO 8601 time with its zone; at most 90 days)",
            given or DEFAULT_EXPIRY,
        )

    def withdraw_form(approval: str, what: str) -> Html:
        return h(
            '<form class="inline" method="post" action="/successor/withdraw" '
            'data-confirm="Sign the withdrawal of your approval {}… of {}?">{}'
            '<input type="hidden" name="approval" value="{}"><button>withdraw my approval</button></form>',
            approval[:16],
            what,
            kit.csrf(),
            approval,
        )

    def approvers(listed: Sequence[BoardApprover], what: str, *, withdrawn: bool = False) -> Html:
        if not listed:
            return Html("<em>none</em>")
        shown, more = _bounded(listed)
        rows = join(
            h(
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                who(a.signer),
                kit.date(a.expires),
                a.approval,
                withdraw_form(a.approval, what) if a.signer == me() and not withdrawn else _EMPTY,
            )
            for a in shown
        )
        return h(
            "<table><tr><th>signer</th><th>expires (UTC)</th><th>approval</th><th></th></tr>{}</table>{}",
            rows,
            more,
        )

    def yours(listed: Sequence[BoardApprover], is_member: bool) -> str:
        mine = me()
        if mine is None:
            return "no identity loaded"
        if any(a.signer == mine for a in listed):
            return "you approved it"
        return "you have not approved it" if is_member else "you are not on the board"

    def rule(board: Mapping[str, object]) -> Html:
        return join(
            h(
                "<p><code>{}</code>:</p><ul>{}</ul>",
                name,
                join(h("<li>{}</li>", who(str(m))) for m in value)
                if isinstance(value, tuple | list)
                else h("<li><code>{}</code></li>", value),
            )
            for name, value in board.items()
        )

    def approve_successor_form(
        platform: str = "sim", claims: str = "", retire: str = "", expires: str = ""
    ) -> Html:
        from confide.cas.key_release import IDENTITY_CLAIMS  # noqa: PLC0415

        options = join(
            h(
                '<option value="{}"{}>{}</option>',
                p.value,
                Html(" selected") if p.value == platform else _EMPTY,
                p.value,
            )
            for p in IDENTITY_CLAIMS
        )
        needs = join(
            h("<li><code>{}</code>: {}</li>", p.value, join((h("<code>{}</code>", n) for n in names), ", "))
            for p, names in IDENTITY_CLAIMS.items()
        )
        return h(
            '<form method="post" action="/successor/approve" '
            'data-confirm="Sign your approval of this successor version (it may receive the master key)?">{}'
            '<p><label>platform: <select name="platform">{}</select></label></p>'
            "<p><label>the successor's identity claims, one <code>NAME=VALUE</code> a line (every claim "
            'of its platform):<br><textarea name="claims" class="short" spellcheck="false">{}</textarea>'
            "</label></p><details><summary>the claims of each platform</summary><ul>{}</ul></details>"
            "<p><label>optional: the identity claims of the version that hands the key over, to retire "
            'its code (<code>--retire-claim</code>):<br><textarea name="retire" class="short" '
            'spellcheck="false">{}</textarea></label></p><p>{}</p>'
            "<p><button>sign my approval of this successor</button></p></form>",
            kit.csrf(),
            options,
            claims,
            needs,
            retire,
            expiry_input(expires),
        )

    def propose_change_form(
        rule_name: str = "require-at-least-2", listed: str = "", expires: str = ""
    ) -> Html:
        return h(
            '<form method="post" action="/successor/change/propose" '
            'data-confirm="Sign the proposal of this new successor board (your approval of it)?">{}'
            '<p><label>rule: <input name="rule" value="{}" size="24" required></label> '
            "(<code>require-all</code> or <code>require-at-least-N</code>)</p>"
            "<p><label>members, one a line (identity fingerprints or base64 public keys):<br>"
            '<textarea name="members" class="short" spellcheck="false">{}</textarea></label></p>'
            "<p>{}</p><p><button>sign my proposal of this board</button></p></form>",
            kit.csrf(),
            rule_name,
            listed,
            expiry_input(expires),
        )

    def propose_retirement_form(platform: str = "sim", code: str = "", expires: str = "") -> Html:
        from confide.cas.successor import CODE_CLAIMS  # noqa: PLC0415

        options = join(
            h(
                '<option value="{}"{}>{}</option>',
                p.value,
                Html(" selected") if p.value == platform else _EMPTY,
                p.value,
            )
            for p in CODE_CLAIMS
        )
        needs = join(
            h("<li><code>{}</code>: {}</li>", p.value, join((h("<code>{}</code>", n) for n in names), ", "))
            for p, names in CODE_CLAIMS.items()
        )
        return h(
            '<form method="post" action="/successor/retirement/propose" data-confirm="Sign the proposal '
            'to retire this version (it then never receives or releases the master key)?">{}'
            '<p><label>platform: <select name="platform">{}</select></label></p>'
            "<p><label>the code identity claims of the version to retire, one <code>NAME=VALUE</code> "
            'a line:<br><textarea name="code" class="short" spellcheck="false">{}</textarea></label></p>'
            "<details><summary>the code claims of each platform</summary><ul>{}</ul></details>"
            "<p>{}</p><p><button>sign my proposal of this retirement</button></p></form>",
            kit.csrf(),
            options,
            code,
            needs,
            expiry_input(expires),
        )

    async def show(request: Request) -> Response:
        try:
            shown: tuple[SuccessorBoard, BoardChanges, Retirements] = await kit.call(
                lambda: (kit.cas().successor(), kit.cas().board_changes(), kit.cas().retirements())
            )
        except ConfideError as exc:
            return kit.failed("Successor board", exc)
        board, changes, retirements = shown
        listed = members(board.board)
        mine = me()
        is_member = mine is not None and mine in listed
        you = (
            "no identity loaded: load one on the home page to approve"
            if mine is None
            else (
                "a member of the board"
                if is_member
                else "not a member of the board (the CAS refuses your approvals)"
            )
        )
        about = kit.dl(
            [
                ("rule", rule(board.board)),
                ("approvals needed", board.needed),
                ("generation", h("{} (how many changes made this board)", board.generation)),
                ("board SHA-256", h("<code>{}</code>", board.board_sha256)),
                ("master key id (what approvals sign)", h("<code>{}</code>", board.master_key_id)),
                ("you", you),
            ]
        )
        targets, more_targets = _bounded(board.approvals)
        target_blocks = join(
            h(
                "<h3>Successor <code>{}</code></h3>{}<h4>Approvers</h4>{}<h4>Withdrawn</h4>{}",
                t.target,
                kit.dl(
                    [
                        ("platform", t.platform),
                        ("identity claims", _claims(t.claims)),
                        (
                            "authorised",
                            "yes: the approvals that count meet the rule" if t.authorised else "not yet",
                        ),
                        ("retires", join((h("<code>{}</code>", r) for r in t.retire), ", ") or "nothing"),
                        ("you", yours(t.approvers, is_member)),
                    ]
                ),
                approvers(t.approvers, f"successor {t.target[:16]}…"),
                approvers(t.withdrawn, "", withdrawn=True),
            )
            for t in targets
        )
        change_list, more_changes = _bounded(changes.changes)
        change_blocks = join(
            h(
                "<h3>Change <code>{}</code></h3>{}<h4>Approvers</h4>{}<h4>Withdrawn</h4>{}{}",
                c.change,
                kit.dl(
                    [
                        ("new board", rule(c.board)),
                        ("new board SHA-256", h("<code>{}</code>", c.board_sha256)),
                        ("replaces generation", c.generation),
                        ("you", yours(c.approvers, is_member)),
                    ]
                ),
                approvers(c.approvers, f"board change {c.change[:16]}…"),
                approvers(c.withdrawn, "", withdrawn=True),
                h(
                    '<form method="post" action="/successor/change" data-confirm="Sign your approval of '
                    'the board change {}…: the new board {} (replacing generation {})?">{}'
                    '<input type="hidden" name="change" value="{}">{} '
                    "<button>sign my approval of this board change</button></form>",
                    c.change[:16],
                    _rule_text(c.board),
                    c.generation,
                    kit.csrf(),
                    c.change,
                    expiry_input(),
                ),
            )
            for c in change_list
        )
        pending, more_pending = _bounded(retirements.retirements)
        retirement_blocks = join(
            h(
                "<h3>Retirement <code>{}</code></h3>{}<h4>Approvers</h4>{}<h4>Withdrawn</h4>{}{}",
                r.retirement,
                kit.dl(
                    [
                        ("platform", r.platform),
                        ("code identity claims", _claims(r.code)),
                        ("board generation", r.generation),
                        ("you", yours(r.approvers, is_member)),
                    ]
                ),
                approvers(r.approvers, f"retirement {r.retirement[:16]}…"),
                approvers(r.withdrawn, "", withdrawn=True),
                h(
                    '<form method="post" action="/successor/retirement" data-confirm="Sign your approval '
                    "of retirement {}…: the version on {} with {} never receives or releases the master "
                    'key again?">{}<input type="hidden" name="retirement" value="{}">{} '
                    "<button>sign my approval of this retirement</button></form>",
                    r.retirement[:16],
                    r.platform,
                    ", ".join(f"{k}={v}" for k, v in r.code.items()),
                    kit.csrf(),
                    r.retirement,
                    expiry_input(),
                ),
            )
            for r in pending
        )
        retired, more_retired = _bounded(retirements.retired)
        body = h(
            "<p>The board that authorises handing the CAS's master key over to a successor version, "
            "changing the board and retiring versions (<code>confide cas successor</code>; docs/cas.md "
            '"Handing over to a successor version").</p><h2>The board</h2>{}'
            "<h2>Approve a successor version</h2>{}"
            "<h2>Approvals of successor versions</h2><p>Those that have not expired.</p>{}{}{}"
            "<h2>Pending board changes</h2>{}{}{}<h3>Propose a board change</h3>{}"
            "<h2>Pending retirements</h2>{}{}{}<h3>Propose a retirement</h3>{}"
            "<h2>Retired versions</h2>{}{}{}",
            about,
            approve_successor_form(),
            target_blocks,
            more_targets,
            Html("") if targets else Html("<p>None.</p>"),
            change_blocks,
            more_changes,
            Html("") if change_list else Html("<p>None.</p>"),
            propose_change_form(),
            retirement_blocks,
            more_pending,
            Html("") if pending else Html("<p>None.</p>"),
            propose_retirement_form(),
            kit.json(retired) if retired else Html("<p>None.</p>"),
            more_retired,
            h("<h2>Void approvals</h2>{}", kit.json(board.void)) if board.void else _EMPTY,
        )
        return kit.render("Successor board", body)

    back = Html('<p><a href="/successor">back to the successor board</a></p>')

    async def approve(request: Request) -> Response:
        fields = kit.fields(request)
        platform = fields.get("platform", "").strip()
        claims_text, retire_text = fields.get("claims", ""), fields.get("retire", "")
        expires_text = fields.get("expires", "")
        try:
            ident = kit.need_identity()
            claims = _claim_lines("claims", claims_text)
            retire = _claim_lines("retire", retire_text) or None
            at = _expiry(expires_text)
            done = await kit.call(
                lambda: kit.cas().approve_successor(platform, claims, ident, expires=at, retire=retire)
            )
        except ConfideError as exc:
            kept = approve_successor_form(platform, claims_text, retire_text, expires_text or DEFAULT_EXPIRY)
            return kit.failed(
                "Approve a successor version", exc, h("{}<h2>Approve a successor version</h2>{}", back, kept)
            )
        body = h(
            '<div class="ok"><p>Approved the successor <code>{}</code>: {}.</p></div>{}{}',
            done.target,
            _state(
                done.authorised, len(done.approvers), done.needed, "authorised: it may receive the master key"
            ),
            kit.dl(
                [
                    ("your approval (what a withdrawal names)", h("<code>{}</code>", done.digest)),
                    ("approvers that count", join((who(a) for a in done.approvers), "<br>")),
                    ("retires", join((h("<code>{}</code>", r) for r in done.retire), ", ") or "nothing"),
                ]
            ),
            back,
        )
        return kit.render("Successor approved", body)

    async def withdraw(request: Request) -> Response:
        approval = kit.fields(request).get("approval", "").strip()
        try:
            ident = kit.need_identity()
            if not approval:
                raise UsageError("approval: give the digest of your approval")
            done = await kit.call(lambda: kit.cas().withdraw_successor_approval(approval, ident))
        except ConfideError as exc:
            return kit.failed("Withdraw an approval", exc, back)
        body = h(
            '<div class="ok"><p>Withdrew the approval <code>{}</code> of <code>{}</code>: {}.</p></div>{}',
            done.approval,
            done.target,
            _state(done.authorised, len(done.approvers), done.needed, "still authorised"),
            back,
        )
        return kit.render("Approval withdrawn", body)

    async def approve_change(request: Request) -> Response:
        fields = kit.fields(request)
        change = fields.get("change", "").strip()
        try:
            ident = kit.need_identity()
            at = _expiry(fields.get("expires", ""))
            done = await kit.call(lambda: kit.cas().approve_board_change(change, ident, expires=at))
        except ConfideError as exc:
            return kit.failed("Approve a board change", exc, back)
        state = _change_state(done.applied, done.generation, len(done.approvers), done.needed)
        body = h(
            '<div class="ok"><p>Approved the board change <code>{}</code>: {}.</p></div>{}{}',
            done.change,
            state,
            kit.dl([("your approval (what a withdrawal names)", h("<code>{}</code>", done.digest))]),
            back,
        )
        return kit.render("Board change approved", body)

    async def approve_retirement(request: Request) -> Response:
        fields = kit.fields(request)
        retirement = fields.get("retirement", "").strip()
        try:
            ident = kit.need_identity()
            at = _expiry(fields.get("expires", ""))
            done = await kit.call(lambda: kit.cas().approve_retirement(retirement, ident, expires=at))
        except ConfideError as exc:
            return kit.failed("Approve a retirement", exc, back)
        state = _retirement_state(done.applied, done.identity, len(done.approvers), done.needed)
        body = h(
            '<div class="ok"><p>Approved the retirement <code>{}</code>: {}.</p></div>{}{}',
            done.retirement,
            state,
            kit.dl([("your approval (what a withdrawal names)", h("<code>{}</code>", done.digest))]),
            back,
        )
        return kit.render("Retirement approved", body)

    async def propose_change(request: Request) -> Response:
        fields = kit.fields(request)
        rule_name, listed = fields.get("rule", "").strip(), fields.get("members", "")
        expires_text = fields.get("expires", "")
        kept = h(
            "{}<h2>Propose a board change</h2>{}", back, propose_change_form(rule_name, listed, expires_text)
        )
        try:  # the form's fields, before the CAS is asked: a rule that does not parse is the input's fault
            ident = kit.need_identity()
            board = _board_rule(rule_name, listed)
            at = _expiry(expires_text)
        except ConfideError as exc:
            return kit.failed("Propose a board change", exc, kept, typed=True)
        try:
            done = await kit.call(lambda: kit.cas().propose_board_change(board, ident, expires=at))
        except ConfideError as exc:
            return kit.failed("Propose a board change", exc, kept)
        body = h(
            '<div class="ok"><p>Proposed the board change <code>{}</code>: {}.</p></div>{}{}',
            done.change,
            _change_state(done.applied, done.generation, len(done.approvers), done.needed),
            kit.dl(
                [
                    ("the change id (what the other members approve)", h("<code>{}</code>", done.change)),
                    ("your approval (what a withdrawal names)", h("<code>{}</code>", done.digest)),
                ]
            ),
            back,
        )
        return kit.render("Board change proposed", body)

    async def propose_retirement(request: Request) -> Response:
        fields = kit.fields(request)
        platform, code_text = fields.get("platform", "").strip(), fields.get("code", "")
        expires_text = fields.get("expires", "")
        try:
            ident = kit.need_identity()
            code = _claim_lines("code", code_text)
            at = _expiry(expires_text)
            done = await kit.call(lambda: kit.cas().propose_retirement(platform, code, ident, expires=at))
        except ConfideError as exc:
            kept = propose_retirement_form(platform, code_text, expires_text)
            return kit.failed("Propose a retirement", exc, h("{}<h2>Propose a retirement</h2>{}", back, kept))
        body = h(
            '<div class="ok"><p>Proposed the retirement <code>{}</code>: {}.</p></div>{}{}',
            done.retirement,
            _retirement_state(done.applied, done.identity, len(done.approvers), done.needed),
            kit.dl(
                [
                    (
                        "the retirement id (what the other members approve)",
                        h("<code>{}</code>", done.retirement),
                    ),
                    ("your approval (what a withdrawal names)", h("<code>{}</code>", done.digest)),
                ]
            ),
            back,
        )
        return kit.render("Retirement proposed", body)

    return [
        Route("/successor", show),
        Route("/successor/change/propose", propose_change, methods=["POST"]),
        Route("/successor/retirement/propose", propose_retirement, methods=["POST"]),
        Route("/successor/approve", approve, methods=["POST"]),
        Route("/successor/withdraw", withdraw, methods=["POST"]),
        Route("/successor/change", approve_change, methods=["POST"]),
        Route("/successor/retirement", approve_retirement, methods=["POST"]),
    ]


def _state(authorised: bool, have: int, needed: int, yes: str) -> str:
    return yes if authorised else f"pending ({have} of {needed} approvals)"


def _change_state(applied: bool, generation: int, have: int, needed: int) -> str:
    return (
        f"applied: the board is now generation {generation}" if applied else _state(False, have, needed, "")
    )


def _retirement_state(applied: bool, identity: str | None, have: int, needed: int) -> str:
    return f"applied: the version {identity} is retired" if applied else _state(False, have, needed, "")


def _rule_text(board: Mapping[str, object]) -> str:
    """A board rule in one line (the confirmation's question)."""

    def items(value: object) -> Iterable[str]:
        return (str(v) for v in value) if isinstance(value, tuple | list) else (str(value),)

    return "; ".join(f"{name}: {', '.join(items(value))}" for name, value in board.items())
