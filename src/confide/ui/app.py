"""``confide ui``: a stakeholder's web page over :mod:`confide.sdk`, served on their own machine.

The CAS's operator is not trusted, so the page is not served by the CAS (the operator could
change its code and take the identity key loaded into it): this ASGI application runs in the
stakeholder's ``confide ui`` process, holds the identity there, and talks to the CAS through
:class:`confide.sdk.Cas` as the commands do (docs/ui.md).

The guard (:class:`Guard`) in front of every route: the ``Host`` header must be one of the
listen address's names (DNS rebinding); a browser's request must be the page's own or the
user's (``Sec-Fetch-Site`` ``same-origin`` or ``none``); a request must carry the per-launch
access token (``?token=``, single use, exchanged for an HttpOnly, SameSite=Strict cookie, then
redirected away) or that cookie, both compared in constant time; the only method that
changes anything is ``POST``, whose body is bounded (:data:`MAX_BODY`) and must carry the
CSRF token; every answer carries a Content-Security-Policy without inline script,
``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import difflib
import email.parser
import email.policy
import hashlib
import hmac
import json
import secrets
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from confide import errors
from confide.errors import ConfideError, UsageError
from confide.identity import Identity, load_identity
from confide.sdk import Cas, PolicyInfo, RevocationReason
from confide.ui.html import CSS, JS, Html, h, join, page

__all__ = ["MAX_BODY", "Guard", "UiState", "create_app"]

MAX_BODY = 4 << 20
"""The largest request body (bytes): a policy of the loader's 1 MiB limit, form-encoded."""

MAX_FIELDS = 32
_EMPTY = Html("")
TOKEN_COOKIE = "confide-ui-{port}-{suffix}"  # noqa: S105 - a cookie name (per launch)

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

REASONS: tuple[str, ...] = get_args(RevocationReason)  # RFC 5280 §5.3.1, as the SDK names them

# What each error class means to a person, most specific class first (looked up along the MRO).
_HUMAN: dict[type[ConfideError], str] = {
    errors.UsageError: "The request cannot be carried out as given",
    errors.ParseError: "Malformed data: an answer of the CAS, the state file or a document",
    errors.PolicyError: "The policy is invalid",
    errors.AppraisalError: "The evidence does not satisfy the policy",
    errors.ConflictError: (
        "Conflict: the policy changed meanwhile (rebase on its current version), the version was "
        "submitted already, or it is no longer pending"
    ),
    errors.AccessDeniedError: (
        "Access denied: this identity may not do that, or there is no such policy (the CAS gives "
        "one answer for both)"
    ),
    errors.NetworkError: ("The CAS could not be reached, answered badly, or is not the CAS this page trusts"),
    errors.StorageError: "A file or the CAS's database failed",
    errors.VerificationError: "Something could not be verified",
    errors.SignatureError: "A signature does not verify",
    errors.RollbackError: (
        "Rollback: the CAS shows an older log than it showed this page before (its database was "
        "restored from a copy?)"
    ),
    errors.ConsistencyError: "Fork: the CAS's log does not extend the log it showed this page before",
    errors.EntryMismatchError: "Log tampering: an entry does not match what the log commits to",
    errors.EntryMissingError: "Omission: the CAS left out an entry of this policy it showed before",
    errors.UnknownKeyError: (
        "Wrong log key: the log is not signed by the CAS's pinned log key (or the state file is "
        "another CAS's)"
    ),
}

_STATUS: dict[type[ConfideError], int] = {
    errors.UsageError: 400,
    errors.PolicyError: 422,
    errors.ConflictError: 409,
    errors.AccessDeniedError: 403,
    errors.StorageError: 500,
    errors.ConfideError: 502,  # the CAS, its answers or its log
}


def _lookup(table: Mapping[type[ConfideError], Any], exc: ConfideError, default: Any) -> Any:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def status_of(exc: ConfideError, *, typed: bool = False) -> int:
    """The HTTP status the page answers ``exc`` with. ``typed``: ``exc`` arose from what the
    person typed or named in a form (a board rule, an identity file), checked before the CAS
    is asked, so a ``ParseError`` is their input's fault (422), not a malformed answer of the
    CAS, the state file or the log (502)."""
    if typed and isinstance(exc, errors.ParseError):
        return 422
    status: int = _lookup(_STATUS, exc, 502)
    return status


def describe(exc: ConfideError) -> tuple[str, str]:
    """A person's headline for ``exc`` and the CLI's name for it (``AccessDeniedError, exit 33``)."""
    return _lookup(_HUMAN, exc, "confide failed"), f"{exc.kind}, exit {exc.exit_code}"


# --- the state of one launch ---------------------------------------------------------------------


@dataclass
class UiState:
    """What one ``confide ui`` process holds: the CAS connection, the identity (in this
    process only), the state file of the policies' views, the launch's secrets."""

    cas: Cas
    identity: Identity | None
    state_file: Path | None
    cert_sha256: str | None
    allowed_hosts: frozenset[str] = frozenset()
    port: int = 0
    cert_file: str | None = None
    """The certificate file the CAS is trusted by (``CONFIDE_CAS_CERT``); ``None`` when the CAS
    was pinned by its attestation (``cas.attestation``)."""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    token_used: bool = False
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    cookie_suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    known: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cookie(self) -> str:
        return TOKEN_COOKIE.format(port=self.port, suffix=self.cookie_suffix)

    @property
    def trust(self) -> str:
        """How the CAS is trusted, in one line (every page's header)."""
        pinned = self.cas.attestation
        if pinned is None:
            return f"its certificate file {self.cert_file or '(CONFIDE_CAS_CERT)'}"
        ev = pinned.evidence
        simulated = ", SIMULATED" if ev.simulated else ""
        measured = str(ev.claims.get(pinned.measurement_claim, ""))
        claim = pinned.measurement_claim
        return f"its attestation: {claim} {measured[:16]}… ({ev.platform.value}{simulated})"

    def trust_rows(self) -> list[tuple[str, object]]:
        """How the CAS is trusted, in detail (the home page)."""
        pinned = self.cas.attestation
        if pinned is None:
            return [
                ("trusted by", "the certificate file given (CONFIDE_CAS_CERT), not by attestation"),
                ("certificate file", h("<code>{}</code>", self.cert_file or "(unknown)")),
            ]
        ev = pinned.evidence
        rows: list[tuple[str, object]] = [
            (
                "trusted by",
                "its attestation (confide ui --attest): the evidence verified at launch, bound to "
                "the TLS certificate and the log key pinned below (CONFIDE_CAS_CERT is not used)",
            ),
            ("platform", f"{ev.platform.value}{' (SIMULATED)' if ev.simulated else ''}"),
            (
                f"{pinned.measurement_claim} (checked)",
                h("<code>{}</code>", str(ev.claims.get(pinned.measurement_claim, ""))),
            ),
        ]
        if ev.tcb_status is not None:
            rows.append(("TCB status", ev.tcb_status.value))
        witnesses = pinned.witnesses
        rows.append(
            (
                "witness quorum",
                "none" if witnesses is None else f"{witnesses.quorum} of {len(witnesses.keys)}",
            )
        )
        return rows

    def known_policies(self) -> list[str]:
        """The policies this run opened or applied, and those the state file remembers."""
        names = set(self.known)
        if self.state_file is not None and self.cas.log_key:
            from confide.ledger.auditor import AuditorState  # noqa: PLC0415
            from confide.ledger.note import NoteVerifier  # noqa: PLC0415

            state = AuditorState(self.state_file)
            with state.locked():
                state.load(NoteVerifier.from_vkey(self.cas.log_key.strip()))
            names.update(state.policies or {})
        return sorted(names)


T = TypeVar("T")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


# --- the guard -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    fields: Mapping[str, str]
    files: Mapping[str, bytes]


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _parse_form(content_type: str, body: bytes) -> Form:
    """An ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body (bounded)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    fields: dict[str, str] = {}
    if kind == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "the form is not UTF-8") from None
        try:
            pairs = urllib.parse.parse_qsl(
                text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
            )
        except ValueError:  # the only one parse_qsl raises when not strict: over max_num_fields
            raise _Refused(400, f"more than {MAX_FIELDS} form fields") from None
        for key, value in pairs:
            _once(fields, key)
            fields[key] = value
        return Form(fields, {})
    if kind == "multipart/form-data":
        head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n"
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise _Refused(400, "malformed multipart form")
        files: dict[str, bytes] = {}
        for n, part in enumerate(message.iter_parts()):
            if n >= MAX_FIELDS:
                raise _Refused(400, f"more than {MAX_FIELDS} form fields")
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            _once(fields, name)
            _once(files, name)
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            if part.get_filename() is not None:
                files[name] = data
            else:
                try:
                    fields[name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Refused(400, f"form field {name[:40]!r} is not UTF-8") from None
        return Form(fields, files)
    raise _Refused(415, "expected a form (application/x-www-form-urlencoded or multipart/form-data)")


def _once(seen: Mapping[str, object], name: str) -> None:
    """A field given twice is refused: no value of the person's is dropped for another."""
    if name in seen:
        raise _Refused(400, f"form field {name[:40]!r} given twice")


class Guard:
    """The ASGI application in front of the routes (the module docstring says what it checks).
    The parsed form of a POST is in ``scope["confide.form"]``."""

    def __init__(self, app: Any, state: UiState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            redirect = await self._check(scope, receive)
        except _Refused as refused:
            await _plain(send_secured, refused.status, refused.text)
            return
        if redirect is not None:
            await send_secured({"type": "http.response.start", "status": 303, "headers": redirect})
            await send_secured({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, _no_body, send_secured)

    async def _check(self, scope: Any, receive: Any) -> list[tuple[bytes, bytes]] | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in headers and key in (b"host", b"cookie", b"content-type", b"content-length"):
                raise _Refused(400, f"header {key.decode()} given twice")
            headers[key] = value
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if host not in self.state.allowed_hosts:
            raise _Refused(403, "this page answers only to its own address (Host header refused)")
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            raise _Refused(405, "method not allowed")
        path = scope["path"]
        if path.startswith("/static/") and method != "POST":
            return None  # the page's style and script: nothing of the user's
        # A browser says who made the request (Sec-Fetch-Site, on http://127.0.0.1 and
        # localhost too): only this page's own links and forms (same-origin) and what the user
        # opened (none: the printed URL). A page on another port of this machine is same-site,
        # and SameSite=Strict cookies go with its requests: refused here.
        site = headers.get(b"sec-fetch-site", b"none").decode("latin-1").lower()
        if site not in ("same-origin", "none"):
            raise _Refused(
                403,
                f"refused a request made by another site ({site}): open the URL confide ui printed "
                "in the address bar",
            )
        try:
            query = urllib.parse.parse_qsl(
                scope.get("query_string", b"").decode("latin-1"), max_num_fields=MAX_FIELDS
            )
        except ValueError:
            raise _Refused(400, f"more than {MAX_FIELDS} query parameters") from None
        token = [v for k, v in query if k == "token"]
        if token:
            if len(token) != 1 or not _same(token[0], self.state.token) or method != "GET":
                raise _Refused(403, "wrong access token: open the URL confide ui printed")
            # Single use: the browser keeps the URL it opened (its history, its session, synced
            # history), and the redirect below does not take it out of them.
            if self.state.token_used:
                raise _Refused(
                    403,
                    "this URL was opened already: the browser that opened it holds the page's cookie; "
                    "for another browser, restart confide ui (a new URL)",
                )
            self.state.token_used = True
            rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "token"])
            # the path re-encoded: a decoded %0d%0a must not become a line of the answer's head
            # and one leading slash: "//host/..." would be a URL of another host
            location = "/" + urllib.parse.quote(path.lstrip("/"), safe="/") + (f"?{rest}" if rest else "")
            cookie = f"{self.state.cookie}={self.state.session}; HttpOnly; SameSite=Strict; Path=/"
            return [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1"))]
        if not _same(_cookie(headers.get(b"cookie", b""), self.state.cookie), self.state.session):
            raise _Refused(403, "no access token: open the URL confide ui printed (it holds ?token=...)")
        if method == "POST":
            form = _parse_form(
                headers.get(b"content-type", b"").decode("latin-1"), await _body(headers, receive)
            )
            if not _same(form.fields.get("csrf"), self.state.csrf):
                raise _Refused(403, "missing or wrong CSRF token: reload the page and submit its form again")
            scope["confide.form"] = form
        return None


def _cookie(header: bytes, name: str) -> str | None:
    for item in header.decode("latin-1").split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value
    return None


async def _body(headers: Mapping[bytes, bytes], receive: Any) -> bytes:
    length = headers.get(b"content-length")
    if length is not None and not length.isdigit():
        raise _Refused(400, "malformed Content-Length (expected a number of bytes)")
    if length is not None and (len(length) > 12 or int(length) > MAX_BODY):
        raise _Refused(413, f"request body over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _plain(send: Any, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- rendering helpers ---------------------------------------------------------------------------


def _q(**params: str) -> str:
    return urllib.parse.urlencode(params)


def _dl(rows: list[tuple[str, object]]) -> Html:
    return h("<dl>{}</dl>", join(h("<dt>{}</dt><dd>{}</dd>", k, v) for k, v in rows))


def _json(value: object) -> Html:
    return h("<pre>{}</pre>", json.dumps(_plain_json(value), indent=2, sort_keys=True, ensure_ascii=False))


def _plain_json(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain_json(v) for v in value]
    return value


def _error_block(exc: ConfideError) -> Html:
    headline, name = describe(exc)
    problems = [p for p in getattr(exc, "problems", ()) if getattr(p, "message", None) is not None]
    listed = Html("")
    if problems:
        from confide.policy.problems import format_path  # noqa: PLC0415

        items = []
        for p in problems:
            where = (
                f"line {p.line}, column {p.column}" if getattr(p, "line", None) is not None else "(no line)"
            )
            items.append(
                h(
                    "<li><b>{}</b>: <code>{}</code>: {}</li>",
                    where,
                    format_path(p.path) or "(document)",
                    p.message,
                )
            )
        listed = h('<ul class="problems">{}</ul>', join(items))
        message = Html("")
    else:
        message = h("<p><code>{}</code></p>", exc.message)
    return h('<div class="error"><p><b>{}</b> ({})</p>{}{}</div>', headline, name, message, listed)


def _date(seconds: float) -> str:
    """Unix ``seconds`` (a time the CAS gave) as a UTC date, or as the number when no date is
    that far (``datetime`` covers the years 1 to 9999)."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{seconds!r} (Unix seconds: no date)"


def _short(value: str | None) -> str:
    return "" if value is None else (value[:16] + "…" if len(value) > 16 else value)


def _csrf(state: UiState) -> Html:
    return h('<input type="hidden" name="csrf" value="{}">', state.csrf)


# --- the application -----------------------------------------------------------------------------


def create_app(state: UiState) -> Guard:
    """The page's ASGI application, behind its :class:`Guard`."""

    def render(title: str, body: Html, status: int = 200) -> Response:
        who = state.identity.fingerprint if state.identity is not None else None
        whole = page(title, body, who=who, cas_url=state.cas.url, trust=state.trust)
        return Response(whole, status, media_type="text/html")

    def failed(title: str, exc: ConfideError, extra: Html = _EMPTY, *, typed: bool = False) -> Response:
        return render(title, h("{}{}", _error_block(exc), extra), status_of(exc, typed=typed))

    async def call(fn: Callable[[], T]) -> T:
        def locked() -> T:
            with state.lock:
                return fn()

        return await run_in_threadpool(locked)

    def need_identity() -> Identity:
        if state.identity is None:
            raise UsageError("no identity loaded: give the path of your identity file on the home page")
        return state.identity

    def form_of(request: Request) -> Form:
        form = request.scope.get("confide.form")
        assert isinstance(form, Form)  # the guard parsed it
        return form

    def name_of(request: Request) -> str:
        name = request.query_params.get("name", "").strip()
        if not name:
            raise UsageError("give a policy name")
        return name

    def policy_nav(name: str) -> Html:
        links = [
            ("show", "/policy"),
            ("events", "/policy/events"),
            ("verified history", "/policy/history"),
            ("accesses", "/policy/accesses"),
        ]
        return h(
            "<p>{}</p>",
            join((h('<a href="{}?{}">{}</a>', path, _q(name=name), label) for label, path in links), " · "),
        )

    async def home(request: Request) -> Response:
        identity_rows: list[tuple[str, object]]
        if state.identity is not None:
            identity_rows = [
                ("fingerprint", h("<code>{}</code>", state.identity.fingerprint)),
                ("name", state.identity.name or "(none)"),
            ]
        else:
            identity_rows = [("fingerprint", "no identity loaded")]
        load = h(
            '<form method="post" action="/identity">{}<label>identity file (on this machine): '
            '<input name="path" size="50" required></label> <button>load</button></form>',
            _csrf(state),
        )
        cas_rows: list[tuple[str, object]] = [
            ("URL", h("<code>{}</code>", state.cas.url)),
            *state.trust_rows(),
            ("certificate SHA-256 (pinned)", h("<code>{}</code>", state.cert_sha256 or "(unknown)")),
            (
                "TLS key SHA-256 (what signed documents name)",
                h("<code>{}</code>", state.cas.cas_key_sha256 or ""),
            ),
            (
                "log key",
                h(
                    "<code>{}</code>",
                    state.cas.log_key or "(none: CONFIDE_LOG_KEY is not set, the ledger cannot be verified)",
                ),
            ),
            ("state file", h("<code>{}</code>", state.state_file or "(none)")),
        ]
        try:
            names = await call(state.known_policies)
            listed = (
                h(
                    "<ul>{}</ul>",
                    join(h('<li><a href="/policy?{}">{}</a></li>', _q(name=n), n) for n in names),
                )
                if names
                else Html("<p>None yet: open one by name, or apply one.</p>")
            )
        except ConfideError as exc:
            listed = _error_block(exc)
        body = h(
            "<h2>You</h2>{}{}<h2>The CAS</h2>{}<h2>Policies</h2>"
            "<p>The CAS lists no policies; these are the ones opened or applied here and those the "
            "state file remembers.</p>{}"
            '<form method="get" action="/policy"><label>policy name: <input name="name" required></label> '
            "<button>open</button></form>",
            _dl(identity_rows),
            load,
            _dl(cas_rows),
            listed,
        )
        return render("Home", body)

    async def load_identity_route(request: Request) -> Response:
        path = form_of(request).fields.get("path", "").strip()
        try:
            if not path:
                raise UsageError("give the path of an identity file")
            state.identity = await call(lambda: load_identity(Path(path).expanduser()))
        except ConfideError as exc:  # the file the person named: its parse error is theirs
            return failed("Identity not loaded", exc, typed=True)
        return RedirectResponse("/", 303)

    async def show(request: Request) -> Response:
        try:
            name = name_of(request)
            ident = need_identity()
            info = await call(lambda: state.cas.show(name, ident))
        except ConfideError as exc:
            return failed("Policy", exc)
        state.known.add(name)
        return render(f"Policy {name}", h("{}{}", policy_nav(name), _policy_body(state, info)))

    async def events(request: Request) -> Response:
        try:
            name = name_of(request)
            ident = need_identity()
            found = await call(lambda: state.cas.events(name, ident))
        except ConfideError as exc:
            return failed("Events", exc)
        rows = join(
            h(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.seq,
                e.index,
                _date(e.at),
                e.type,
                _json(e.payload),
            )
            for e in found
        )
        body = h(
            "{}<p>As the CAS lists them (<code>confide policy events</code>), not checked against the log: "
            'the <a href="/policy/history?{}">verified history</a> and '
            '<a href="/policy/accesses?{}">accesses</a> '
            "are.</p><table><tr><th>seq</th><th>log index</th><th>time (UTC)</th><th>type"
            "</th><th>payload</th>"
            "</tr>{}</table>",
            policy_nav(name),
            _q(name=name),
            _q(name=name),
            rows,
        )
        return render(f"Events of {name}", body)

    def view_note(history_state: Any) -> Html:
        if state.state_file is None:
            return Html('<p class="note">No state file: nothing is remembered between visits.</p>')
        if history_state is None:
            return Html("")
        if history_state.previous_size is None:
            return h(
                '<p class="note">First visit with the state file <code>{}</code>: it now remembers '
                "this checkpoint and the {} entries of the policy in the log (of every kind, not only "
                "those this page lists).</p>",
                state.state_file,
                history_state.entries_remembered,
            )
        return h(
            '<p class="ok">Consistent with your last visit: the log extends the checkpoint of size {} '
            "remembered in <code>{}</code>, and all {} entries of the policy remembered (of every kind, "
            "not only its versions) were returned again "
            "(now {} remembered).</p>",
            history_state.previous_size,
            state.state_file,
            history_state.entries_known,
            history_state.entries_remembered,
        )

    async def history(request: Request) -> Response:
        try:
            name = name_of(request)
            ident = need_identity()
            found = await call(lambda: state.cas.history(name, ident, state=state.state_file))
        except ConfideError as exc:
            return failed("Verified history", exc)
        state.known.add(name)
        rows = join(
            h(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>"
                "<td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                e.index,
                e.time,
                e.event,
                e.hash or "",
                _short(e.predecessor),
                _short(e.signer),
                join((h("<code>{}</code>", _short(a)) for a in e.approvers), " "),
                "yes" if e.included else "not yet (newer than the checkpoint)",
            )
            for e in found.entries
        )
        body = h(
            "{}{}<p>Each entry proven included in the checkpoint (size {}) signed by the log key, or newer "
            "than it (<code>confide ledger history</code>).</p><table><tr><th>log index</th><th>time</th>"
            "<th>event</th><th>hash</th><th>predecessor</th><th>signer</th><th>approvers"
            "</th><th>in the log</th>"
            "</tr>{}</table>",
            policy_nav(name),
            view_note(found.state),
            found.checkpoint_size,
            rows,
        )
        return render(f"Verified history of {name}", body)

    async def accesses(request: Request) -> Response:
        try:
            name = name_of(request)
            secret = request.query_params.get("secret") or None
            ident = need_identity()
            found = await call(lambda: state.cas.accesses(name, ident, secret=secret, state=state.state_file))
        except ConfideError as exc:
            return failed("Accesses", exc)
        state.known.add(name)
        rows = join(
            h(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                a.index,
                a.time,
                # a service of another policy that imports the secret: named with it
                (a.service or "") if a.importer is None else f"{a.service} (importer {a.importer})",
                _short(a.measurement),
                join((h("<code>{}/{} v{}</code>", s.policy, s.name, s.version) for s in a.secrets), " "),
                "yes" if a.included else "not yet",
            )
            for a in found
        )
        which = h(" of secret <code>{}</code>", secret) if secret else Html("")
        body = h(
            "{}{}<p>Releases{} to attested services, each proven included in the checkpoint (size {}) "
            "signed by the log key, or newer than it (<code>confide ledger "
            "accesses</code>).</p><table><tr><th>log index</th><th>time</th><th>service</th>"
            "<th>measurement</th>"
            "<th>secrets</th><th>in the log</th></tr>{}</table>{}",
            policy_nav(name),
            view_note(found.state),
            which,
            found.checkpoint_size,
            rows,
            Html("") if found else Html("<p>No releases.</p>"),
        )
        return render(f"Accesses of {name}", body)

    def apply_form(text: str = "") -> Html:
        return h(
            '<form method="post" action="/apply" enctype="multipart/form-data" '
            'data-confirm="Sign and submit this policy?">{}'
            "<p><label>Paste the policy (YAML):<br>"
            '<textarea name="yaml" spellcheck="false">{}</textarea></label></p>'
            "<p><label>or upload a file: "
            '<input type="file" name="file" accept=".yaml,.yml,text/yaml"></label></p>'
            "<p><button>sign and apply</button></p></form>",
            _csrf(state),
            text,
        )

    async def apply_page(request: Request) -> Response:
        return render("Apply a policy", apply_form())

    async def apply_post(request: Request) -> Response:
        form = form_of(request)
        uploaded = form.files.get("file", b"")
        data: bytes = uploaded if uploaded else form.fields.get("yaml", "").encode("utf-8")
        shown = data.decode("utf-8", errors="replace")
        try:
            ident = need_identity()
            if not data.strip():
                raise UsageError("paste a policy or choose a file")
            result = await call(lambda: state.cas.apply(data, ident))
        except ConfideError as exc:
            return failed("Apply a policy", exc, h("{}{}", _listing(shown, exc), apply_form(shown)))
        state.known.add(result.name)
        what = "pending: the policy's update board must approve it" if result.pending else "active"
        body = h(
            '<div class="ok"><p>Applied <a href="/policy?{}">{}</a>: version <code>{}</code> ({}).</p></div>'
            "{}",
            _q(name=result.name),
            result.name,
            result.hash,
            what,
            join(h('<p class="note">{}</p>', warning) for warning in result.warnings),
        )
        return render("Applied", body)

    async def approve_page(request: Request) -> Response:
        try:
            name = name_of(request)
            digest = request.query_params.get("hash", "").strip().lower()
            if not digest:
                raise UsageError("give the hash of the version to approve")
            ident = need_identity()
            info = await call(lambda: state.cas.show(name, ident))
        except ConfideError as exc:
            return failed("Approve", exc)
        version = next((v for v in info.versions if v.hash == digest), None)
        if version is None:
            return failed("Approve", errors.ConflictError(f"policy {name} has no version {digest}"))
        try:
            diff = await call(lambda: _diff(state, name, ident, info, digest))
        except ConfideError as exc:
            diff = h('<p class="note">No diff: {} ({})</p>', exc.message, exc.kind)
        button = (
            h(
                '<form method="post" action="/approve" data-confirm="Sign your approval of this version?">{}'
                '<input type="hidden" name="name" value="{}">'
                '<input type="hidden" name="hash" value="{}">'
                "<button>sign my approval of this version</button></form>",
                _csrf(state),
                name,
                digest,
            )
            if version.state == "pending"
            else h(
                '<p class="note">This version is {}, not pending: there is nothing to approve.</p>',
                version.state,
            )
        )
        body = h(
            "{}{}<h2>Changes against the current version</h2>{}{}",
            policy_nav(name),
            _dl(
                [
                    ("policy", name),
                    ("version (what you sign)", h("<code>{}</code>", digest)),
                    ("state", version.state),
                    ("submitted by", h("<code>{}</code>", version.submitter or "(unknown)")),
                    ("replaces", h("<code>{}</code>", version.predecessor or "(nothing)")),
                    ("current version", h("<code>{}</code>", info.hash)),
                ]
            ),
            diff,
            button,
        )
        return render(f"Approve a version of {name}", body)

    async def approve_post(request: Request) -> Response:
        fields = form_of(request).fields
        name, digest = fields.get("name", "").strip(), fields.get("hash", "").strip().lower()
        try:
            ident = need_identity()
            if not name or not digest:
                raise UsageError("give the policy name and the version's hash")
            result = await call(lambda: state.cas.approve(name, digest, ident))
        except ConfideError as exc:
            return failed("Approve", exc)
        what = (
            "active: the board's rule is met" if result.active else "still pending: more approvals are needed"
        )
        body = h(
            '<div class="ok"><p>Approved <a href="/policy?{}">{}</a> version <code>{}</code>: {}.</p></div>',
            _q(name=name),
            result.name,
            result.hash,
            what,
        )
        return render("Approved", body)

    async def revoke_post(request: Request) -> Response:
        fields = form_of(request).fields
        name, secret = fields.get("name", "").strip(), fields.get("secret", "").strip()
        serial = fields.get("serial", "").strip() or None
        all_valid = fields.get("all_valid") == "1"
        reason = fields.get("reason", "unspecified")
        try:
            ident = need_identity()
            if reason not in REASONS:
                raise UsageError(f"reason: got {reason[:40]!r}, expected one of {', '.join(REASONS)}")
            why = cast("RevocationReason", reason)
            done = await call(
                lambda: state.cas.revoke(name, secret, ident, serial=serial, all_valid=all_valid, reason=why)
            )
        except ConfideError as exc:
            return failed("Revoke", exc)
        body = h(
            '<div class="ok"><p>Revoked ({}) under <a href="/policy?{}">{}</a> / {}:</p></div>'
            "<h2>Revoked</h2>{}<h2>Re-issued</h2>{}<p>Key replaced: {}.</p><h2>CRLs issued</h2>{}",
            done.reason,
            _q(name=name),
            done.name,
            done.secret,
            _json(done.revoked),
            _json(done.reissued),
            "yes" if done.key_replaced else "no",
            _json(done.crls),
        )
        return render("Revoked", body)

    async def crl(request: Request) -> Response:
        try:
            name = name_of(request)
            secret = request.query_params.get("secret", "").strip()
            if not secret:
                raise UsageError("give the name of the CA secret")
            ident = state.identity  # without one, as the public (a CA declared export_public)
            der = await call(lambda: state.cas.crl(name, secret, ident))
        except ConfideError as exc:
            return failed("CRL", exc)
        return Response(
            der,
            media_type="application/pkix-crl",
            headers={"content-disposition": f'attachment; filename="{_filename(name, secret)}.crl"'},
        )

    async def static(request: Request) -> Response:
        which = request.path_params["file"]
        if which == "ui.css":
            return Response(CSS, media_type="text/css")
        if which == "ui.js":
            return Response(JS, media_type="text/javascript")
        return Response(b"not found\n", 404, media_type="text/plain")

    async def not_found(request: Request, exc: Exception) -> Response:
        return render("Not found", Html('<p>No such page. <a href="/">Home</a>.</p>'), 404)

    routes = [
        Route("/", home),
        Route("/identity", load_identity_route, methods=["POST"]),
        Route("/policy", show),
        Route("/policy/events", events),
        Route("/policy/history", history),
        Route("/policy/accesses", accesses),
        Route("/policy/crl", crl),
        Route("/apply", apply_page),
        Route("/apply", apply_post, methods=["POST"]),
        Route("/approve", approve_page),
        Route("/approve", approve_post, methods=["POST"]),
        Route("/revoke", revoke_post, methods=["POST"]),
        Route("/static/{file}", static),
        *_board_routes(
            state,
            render=render,
            failed=failed,
            call=call,
            need_identity=need_identity,
            fields=lambda request: form_of(request).fields,
        ),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    return Guard(app, state)


def _board_routes(
    state: UiState,
    *,
    render: Callable[..., Response],
    failed: Callable[..., Response],
    call: Callable[[Callable[[], Any]], Awaitable[Any]],
    need_identity: Callable[[], Identity],
    fields: Callable[[Request], Mapping[str, str]],
) -> list[Route]:
    """The successor board's routes (:mod:`confide.ui.board`), with this page's helpers."""
    from confide.ui.board import PageKit, board_routes  # noqa: PLC0415

    kit = PageKit(
        cas=lambda: state.cas,
        identity=lambda: state.identity,
        render=render,
        failed=failed,
        call=call,
        need_identity=need_identity,
        fields=fields,
        csrf=lambda: _csrf(state),
        dl=_dl,
        date=_date,
        json=_json,
    )
    return board_routes(kit)


def _policy_body(state: UiState, info: PolicyInfo) -> Html:
    versions = join(
        h(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>"
            "<code>{}</code></td>"
            "<td>{}</td></tr>",
            v.seq,
            v.hash,
            v.state,
            _short(v.predecessor),
            _short(v.submitter),
            h('<a href="/approve?{}">review and approve</a>', _q(name=info.name, hash=v.hash))
            if v.state == "pending"
            else "",
        )
        for v in info.versions
    )
    secret_rows = []
    for s in info.secrets.values():
        actions = Html("")
        if s.certificate is not None:
            reasons = join(h('<option value="{}">{}</option>', r, r) for r in REASONS)
            base = h(
                '{}<input type="hidden" name="name" value="{}">'
                '<input type="hidden" name="secret" value="{}">',
                _csrf(state),
                info.name,
                s.name,
            )
            one = (
                h(
                    '<form class="inline" method="post" action="/revoke" data-confirm="Revoke'
                    ' certificate {}?">{}'
                    '<input type="hidden" name="serial" value="{}"><select name="reason">{}</select> '
                    "<button>revoke this certificate</button></form> ",
                    s.serial,
                    base,
                    s.serial,
                    reasons,
                )
                if s.serial
                else Html("")
            )
            every = h(
                '<form class="inline" method="post" action="/revoke" data-confirm="Revoke every valid '
                'certificate of {}?">{}<input type="hidden" name="all_valid" value="1">'
                '<select name="reason">{}'
                "</select> <button>revoke all valid</button></form>",
                s.name,
                base,
                reasons,
            )
            pem = h("<details><summary>certificate</summary><pre>{}</pre></details>", s.certificate)
            actions = h("{}{}{}", pem, one, every)
        elif s.public_key is not None:
            actions = h("<details><summary>public key</summary><pre>{}</pre></details>", s.public_key)
        current_crl = s.details.get("crl")
        if isinstance(current_crl, Mapping):  # a generated CA: its CRL, as policy crl fetches it
            actions = h(
                '{}<p><a href="/policy/crl?{}" download>download the CRL</a> (DER, number {}, '
                "next update {})</p>",
                actions,
                _q(name=info.name, secret=s.name),
                current_crl.get("number", "?"),
                current_crl.get("next_update", "?"),
            )
        renew = s.details.get("renew_at")
        secret_rows.append(
            h(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}"
                "</td><td>{}</td>"
                '<td><a href="/policy/accesses?{}">accesses</a></td></tr>',
                s.name,
                s.kind or "",
                s.version,
                s.serial or "",
                s.not_after or "",
                renew if isinstance(renew, str) else "",
                actions,
                _q(name=info.name, secret=s.name),
            )
        )
    return h(
        "{}<h2>Versions</h2><table><tr><th>seq</th><th>hash</th><th>state</th><th>predecessor</th>"
        "<th>submitter</th><th></th></tr>{}</table>"
        '<form method="get" action="/approve"><input type="hidden" name="name" value="{}">'
        '<label>review a version by its hash: <input name="hash" size="66" required></label> '
        "<button>review</button></form><h2>Secrets (public parts only)</h2>"
        "<table><tr><th>name</th><th>kind</th><th>version</th><th>serial</th><th>not after</th>"
        "<th>renewed at</th><th></th><th></th></tr>{}</table>"
        "<h2>Document</h2><p>As the CAS stores it; explicit secret values and volume keys read "
        "<code>(withheld)</code>.</p>{}",
        _dl(
            [
                ("current version", h("<code>{}</code>", info.hash)),
                ("creator", h("<code>{}</code>", info.creator)),
            ]
        ),
        versions,
        info.name,
        join(secret_rows),
        _json(info.document),
    )


def _filename(*parts: str) -> str:
    """A download's file name from names of the CAS's: letters, digits, ``. _ -`` only (a quote
    or a line break would end the header's value), joined by ``-``."""
    return "-".join(
        "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in part) for part in parts
    )


def _listing(text: str, exc: ConfideError) -> Html:
    """The submitted YAML with line numbers, the lines of the problems marked."""
    lines = {getattr(p, "line", None) for p in getattr(exc, "problems", ())}
    if not text or not lines - {None}:
        return Html("")
    rows = join(
        h('<tr class="{}"><td>{}</td><td><code>{}</code></td></tr>', "bad" if n in lines else "", n, line)
        for n, line in enumerate(text.splitlines()[:2000], 1)
    )
    return h("<h2>The policy as given</h2><table>{}</table>", rows)


def _submitted_policy(events: Any, digest: str) -> tuple[dict[str, Any], str] | None:
    """The policy of version ``digest`` from its ledger entry's signed submission and the
    fingerprint of its signer, checked: the signature verifies and the policy hashes to
    ``digest`` (so the document shown is the one the hash names, whatever the CAS says);
    ``None`` when the entry withholds it."""
    from confide import jsonstrict  # noqa: PLC0415
    from confide.cas.core import verify_signed  # noqa: PLC0415
    from confide.cas.documents import POLICY_TYPE  # noqa: PLC0415
    from confide.policy import loads_policy, policy_hash  # noqa: PLC0415

    for ev in events:
        if ev.payload.get("hash") != digest or not isinstance(ev.payload.get("submission"), str):
            continue
        doc = jsonstrict.loads(str(ev.payload["submission"]).encode(), structure="the signed submission")
        body, signer = verify_signed(doc, POLICY_TYPE)
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise errors.ParseError("expected the policy", structure="the signed submission")
        if policy_hash(loads_policy(json.dumps(policy), source="the submission", stored=True)) != digest:
            raise errors.EntryMismatchError(f"the submission of {digest[:16]}… does not hash to it")
        return policy, signer.fingerprint
    return None


def _diff(state: UiState, name: str, identity: Identity, info: PolicyInfo, digest: str) -> Html:
    """The pending version ``digest`` against the current one, from the policy's ledger entries
    (the signed submissions; each checked against its hash)."""
    found = state.cas.events(name, identity)
    submitted = _submitted_policy(found, digest)
    if submitted is None:
        raise UsageError("the ledger withholds this version's document (it holds explicit secret values)")
    new, signer = submitted
    current = _submitted_policy(found, info.hash) if info.hash != digest else submitted
    old = None if current is None else current[0]
    old_text = json.dumps(old if old is not None else _plain_json(info.document), indent=2, sort_keys=True)
    new_text = json.dumps(new, indent=2, sort_keys=True)
    lines = list(
        difflib.unified_diff(
            old_text.splitlines(),
            new_text.splitlines(),
            f"current {info.hash[:16]}…",
            f"pending {digest[:16]}…",
            lineterm="",
        )
    )
    signed = h("<p>Submitted and signed by <code>{}</code> (signature verified).</p>", signer)
    if not lines:
        return h('{}<p class="note">No difference in the document.</p>', signed)

    def cls(line: str) -> str:
        return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")

    shown = join((h('<span class="{}">{}</span>', cls(line), line) for line in lines), "\n")
    source = (
        ""
        if old is not None
        else " (the current version's document as the CAS shows it: its submission is withheld)"
    )
    return h(
        "{}<p>The document whose hash you sign, checked against that hash{}:</p><pre>{}</pre>",
        signed,
        source,
        shown,
    )


def cert_sha256(pem_path: str | None) -> str | None:
    """The SHA-256 of the pinned CAS certificate (DER), hex; ``None`` when it does not load."""
    if not pem_path:
        return None
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    from confide.cas.client import read_cert_file  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate(read_cert_file(Path(pem_path)))
    except (UsageError, ValueError):
        return None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
