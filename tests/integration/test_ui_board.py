"""``confide ui``'s successor board pages end to end: a real ``confide cas serve --dev`` with a
successor board (alice, bob and carol, two needed; mallory not on it: the fixtures of
test_sdk_board_log.py) and ``confide ui`` as a subprocess (test_ui.py's ``start_ui``), driven
over HTTP: the page shows the board; a member approves a successor and withdraws the approval
through the page, and the SDK and the command see it; a board change and a retirement proposed
with the command are approved through the page; a non-member's approval is refused with the
CAS's error; a POST without the CSRF token or from another site is refused; bad input is shown
as the page shows errors. A hostile CAS's strings (served by a fake CAS to the page's
application in process) reach the page escaped."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import test_sdk_board_log
from test_sdk_board_log import OTHER, SUCCESSOR, cli, cli_json
from test_ui import HOSTILE, Ui, assert_secured, csrf_of, start_ui

from cas_harness import CasProcess
from confide import errors
from confide.cas.client import CasClient
from confide.sdk import Cas, Identity
from confide.ui.app import UiState, create_app
from http_fake import RouteServer

People = dict[str, tuple[Path, Identity]]

# test_sdk_board_log.py's fixtures: alice, bob and carol on the board (two needed), mallory not;
# a --dev CAS with that board (one of this module's own)
people = test_sdk_board_log.people
board_cas = test_sdk_board_log.board_cas


@pytest.fixture(scope="module")
def board_ui(board_cas: CasProcess, people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """``confide ui`` on the board's CAS, as alice (another identity is loaded by its path)."""
    started = start_ui(
        board_cas, tmp_path_factory.mktemp("ui-board"), "--identity", str(people["alice"][0]), identity=False
    )
    try:
        yield started
    finally:
        started.stop()


def load(client: httpx2.Client, path: Path) -> None:
    """The page's identity, loaded by its path (the home page's form)."""
    loaded = client.post("/identity", data={"csrf": csrf_of(client.get("/").text), "path": str(path)})
    assert loaded.status_code == 303, loaded.text


def post(client: httpx2.Client, path: str, **fields: str) -> httpx2.Response:
    return client.post(path, data={"csrf": csrf_of(client.get("/successor").text), **fields})


def text_of(html: str) -> str:
    """The page's text without its markup (what a person reads)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_shows_the_board_and_a_member_approves_and_withdraws(
    board_ui: Ui, board_cas: CasProcess, people: People
) -> None:
    alice, bob = people["alice"], people["bob"]
    with board_ui.logged_in() as client, Cas.from_env(board_cas.env) as cas:
        load(client, alice[0])
        shown = client.get("/successor")
        assert shown.status_code == 200, shown.text
        assert_secured(shown)
        board = cas.successor()
        page = shown.text
        for fingerprint in (people[n][1].fingerprint for n in ("alice", "bob", "carol")):
            assert fingerprint in page
        assert people["mallory"][1].fingerprint not in page
        words = text_of(page)
        assert "require-at-least-2" in words and "approvals needed 2" in words
        assert f"generation {board.generation} " in words and board.master_key_id in words
        assert board.board_sha256 in words and "you a member of the board" in words
        assert f"{alice[1].fingerprint} (you)" in words
        assert 'action="/successor/approve"' in page and "data-confirm=" in page
        assert re.search(r'href="/successor"', page)  # every page's header links it

        # approve a successor through the page: the SDK and the command see the approval
        done = post(client, "/successor/approve", platform="sim", claims=f"measurement={SUCCESSOR.upper()}\n",
                    retire="", expires="7d")  # fmt: skip
        assert done.status_code == 200, done.text
        assert "pending (1 of 2 approvals)" in done.text
        (target,) = cas.successor().approvals
        assert (target.platform, dict(target.claims), target.authorised) == (
            "sim", {"measurement": SUCCESSOR}, False
        )  # fmt: skip
        (approver,) = target.approvers
        assert approver.signer == alice[1].fingerprint and approver.approval in done.text
        assert abs(approver.expires - (time.time() + 7 * 86400)) < 300  # "7d": seven days ahead
        (listed,) = cli_json(board_cas.env, "cas", "successor", "show")["approvals"]
        assert [a["approval"] for a in listed["approvers"]] == [approver.approval]

        # the page lists it, with who approved, and a withdrawal form for one's own approval only
        bob_digest = cas.approve_successor(
            "sim", {"measurement": SUCCESSOR}, bob[1], expires=timedelta(days=3)
        ).digest
        words = text_of(client.get("/successor").text)
        assert target.target in words and f"measurement={SUCCESSOR}" in words
        assert "authorised yes" in words and "you you approved it" in words
        assert approver.approval in words and bob_digest in words
        page = client.get("/successor").text
        assert page.count('action="/successor/withdraw"') == 1
        assert f'name="approval" value="{approver.approval}"' in page

        # withdraw it: the SDK sees it withdrawn
        gone = post(client, "/successor/withdraw", approval=approver.approval)
        assert gone.status_code == 200, gone.text
        assert "pending (1 of 2 approvals)" in gone.text
        (target,) = cas.successor().approvals
        assert [a.signer for a in target.approvers] == [bob[1].fingerprint]
        assert [a.approval for a in target.withdrawn] == [approver.approval]
        again = post(client, "/successor/withdraw", approval=approver.approval)
        assert again.status_code == 409 and "ConflictError, exit 32" in again.text
        assert "withdrawn already" in again.text
        # another's approval: the CAS refuses it, the page names the refusal
        other = post(client, "/successor/withdraw", approval=bob_digest)
        assert other.status_code == 403 and "AccessDeniedError, exit 33" in other.text
        assert [a.signer for a in cas.successor().approvals[0].approvers] == [bob[1].fingerprint]


def test_bad_input_is_refused_before_anything_is_signed(
    board_ui: Ui, board_cas: CasProcess, people: People
) -> None:
    with board_ui.logged_in() as client, Cas.from_env(board_cas.env) as cas:
        load(client, people["alice"][0])
        before = cas.successor().approvals
        for fields, match in (
            ({"platform": "vax", "claims": f"measurement={SUCCESSOR}"}, "platform: got &#x27;vax&#x27;"),
            ({"platform": "sim", "claims": ""}, "claims: sim needs exactly measurement"),
            ({"platform": "sim", "claims": "measurement"}, "claims: got &#x27;measurement&#x27;, expected NAME=VALUE"),
            ({"platform": "sim", "claims": f"measurement={SUCCESSOR}", "retire": f"measurement={SUCCESSOR}"},
             "retire: the successor has the same code"),
            ({"platform": "sim", "claims": f"measurement={SUCCESSOR}", "expires": "91d"}, "at most 90 days"),
            ({"platform": "sim", "claims": f"measurement={SUCCESSOR}", "expires": "2030-01-01T00:00:00"},
             "give the time zone"),
            ({"platform": "sim", "claims": f"measurement={SUCCESSOR}", "expires": ""}, "expires: give when"),
        ):  # fmt: skip
            answer = post(client, "/successor/approve", **{"expires": "7d", **fields})
            assert answer.status_code == 400, (fields, answer.text)
            assert "UsageError, exit 2" in answer.text and match in answer.text, (match, answer.text)
            # the form again, with what was given
            assert 'action="/successor/approve"' in answer.text
            assert f">{fields['claims']}</textarea>" in answer.text
        for path, field in (("/successor/change", "change"), ("/successor/retirement", "retirement")):
            answer = post(client, path, **{field: "xyz", "expires": "7d"})
            assert answer.status_code == 400 and f"{field}: got &#x27;xyz&#x27;" in answer.text, answer.text
            answer = post(client, path, **{field: "0" * 64, "expires": "7d"})
            assert answer.status_code == 400 and f"no pending {field}" in answer.text, answer.text
        # proposals: a rule that is none, the current board, another platform's code claims
        wrong = post(client, "/successor/change/propose", rule="require-most",
                     members=people["alice"][1].fingerprint, expires="7d")  # fmt: skip
        # the rule typed does not parse: the person's input (422), not a bad answer of the CAS (502)
        assert wrong.status_code == 422 and "ParseError, exit 10" in wrong.text, wrong.text
        assert f">{people['alice'][1].fingerprint}</textarea>" in wrong.text  # the form, kept
        stranger = post(
            client, "/successor/change/propose", rule="require-all", members="not-a-key", expires="7d"
        )
        assert (
            stranger.status_code == 422 and "got &#x27;not-a-key&#x27;, expected an identity" in stranger.text
        )
        assert ">not-a-key</textarea>" in stranger.text
        current = cas.board_changes().board
        ((rule_name, listed),) = current.items()
        same = post(client, "/successor/change/propose", rule=rule_name, members="\n".join(map(str, listed)),
                    expires="7d")  # fmt: skip
        assert same.status_code == 400 and "board: that is the current successor board" in same.text
        other = post(
            client, "/successor/retirement/propose", platform="sim", code=f"mr_td={OTHER}", expires="7d"
        )
        assert other.status_code == 400, other.text
        assert "code: the code identity of sim is exactly measurement" in other.text
        assert cas.board_changes().changes == () and cas.retirements().retirements == ()
        # the field's own HTML is escaped in the message and in the form kept
        hostile = post(client, "/successor/approve", platform=HOSTILE, claims=HOSTILE, expires="7d")
        assert hostile.status_code == 400 and "<script>" not in hostile.text
        assert "&lt;script&gt;" in hostile.text
        assert cas.successor().approvals == before


def test_an_identity_file_that_does_not_parse_is_the_input_s_fault(board_ui: Ui, tmp_path: Path) -> None:
    """The home page's identity path names a file that is no identity: 422 (what the person
    gave), as the command names it (ParseError, exit 10); the identity loaded before stays."""
    bad = tmp_path / "not-an-identity"
    bad.write_text("not json")
    bad.chmod(0o600)
    with board_ui.logged_in() as client:
        refused = client.post("/identity", data={"csrf": csrf_of(client.get("/").text), "path": str(bad)})
        assert refused.status_code == 422, refused.text
        assert "ParseError, exit 10" in refused.text and "is not an identity file" in refused.text
        assert client.get("/successor").status_code == 200


def test_refused_without_the_csrf_token_from_another_site_and_for_a_non_member(
    board_ui: Ui, board_cas: CasProcess, people: People
) -> None:
    with board_ui.logged_in() as client, Cas.from_env(board_cas.env) as cas:
        load(client, people["carol"][0])
        before = cas.successor().approvals
        fields = {"platform": "sim", "claims": f"measurement={OTHER}", "expires": "7d"}
        for path in (
            "/successor/approve",
            "/successor/withdraw",
            "/successor/change",
            "/successor/retirement",
        ):
            refused = client.post(path, data=fields)
            assert refused.status_code == 403 and "CSRF" in refused.text, path
            forged = client.post(path, data={**fields, "csrf": "x" * 43})
            assert forged.status_code == 403 and "CSRF" in forged.text, path
        csrf = csrf_of(client.get("/successor").text)
        for site in ("cross-site", "same-site"):
            made = client.post(
                "/successor/approve", data={**fields, "csrf": csrf}, headers={"Sec-Fetch-Site": site}
            )
            assert made.status_code == 403 and "another site" in made.text
        assert client.get("/successor", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        with board_ui.client() as anonymous:  # no cookie
            assert anonymous.get("/successor").status_code == 403
            assert anonymous.post("/successor/approve", data={**fields, "csrf": csrf}).status_code == 403
        assert client.get("/successor", headers={"Host": "attacker.example:80"}).status_code == 403
        assert client.get("/successor/approve").status_code == 405  # only a POST signs
        assert cas.successor().approvals == before  # nothing was signed

        # a non-member sees the page; its approval is refused by the CAS, the page names it
        load(client, people["mallory"][0])
        words = text_of(client.get("/successor").text)
        assert "you not a member of the board" in words
        refused = post(client, "/successor/approve", **fields)
        assert refused.status_code == 403, refused.text
        assert "AccessDeniedError, exit 33" in refused.text and "not on the successor board" in refused.text
        proposed = post(client, "/successor/retirement/propose", platform="sim", code=f"measurement={OTHER}",
                        expires="7d")  # fmt: skip
        assert proposed.status_code == 403 and "AccessDeniedError, exit 33" in proposed.text
        assert cas.successor().approvals == before and cas.retirements().retirements == ()


def test_a_board_change_and_a_retirement_proposed_with_the_command_approved_on_the_page(
    board_ui: Ui, board_cas: CasProcess, people: People, tmp_path: Path
) -> None:
    env = board_cas.env
    alice, bob, carol = (people[n] for n in ("alice", "bob", "carol"))
    dave = Identity.generate("dave")
    # a new board of alice, bob, carol and dave, two needed (mallory stays off it)
    new_board = tmp_path / "board.yaml"
    new_board.write_text(
        "require-at-least-2:\n"
        + "".join(f"  - {i.fingerprint}\n" for i in (alice[1], bob[1], carol[1], dave))
    )
    proposed = cli(env, "cas", "successor", "board", "propose", "--board", str(new_board), "--expires", "2d",
                   "--identity", str(bob[0]))  # fmt: skip
    assert proposed.returncode == 0, proposed.stderr
    change = proposed.stdout.split()[0]
    with board_ui.logged_in() as client, Cas.from_env(env) as cas:
        load(client, alice[0])
        generation = cas.board_changes().generation
        page = client.get("/successor").text
        words = text_of(page)
        # what it is, before the confirmation: the id, the new board, who approved
        assert change in words and dave.fingerprint in words and f"replaces generation {generation}" in words
        assert bob[1].fingerprint in words.split("Pending board changes", 1)[1]  # its proposer approved
        confirm = re.search(r'<form [^>]*action="/successor/change" data-confirm="([^"]*)"', page)
        assert confirm and change[:16] in confirm.group(1) and dave.fingerprint in confirm.group(1)
        done = post(client, "/successor/change", change=change, expires="3d")
        assert done.status_code == 200, done.text
        assert f"applied: the board is now generation {generation + 1}" in done.text
        printed = cli_json(env, "cas", "successor", "board", "show")
        assert printed["generation"] == generation + 1 and printed["changes"] == []
        assert dave.fingerprint in printed["board"]["require-at-least-2"]
        assert f"generation {generation + 1} " in text_of(client.get("/successor").text)

        # a retirement carol proposes with the command, alice approves on the page
        proposed = cli(env, "cas", "successor", "retire", "propose", "--platform", "sim",
                       "--claim", f"measurement={OTHER}", "--expires", "2d", "--identity", str(carol[0]))  # fmt: skip
        assert proposed.returncode == 0, proposed.stderr
        retirement = proposed.stdout.split()[0]
        page = client.get("/successor").text
        words = text_of(page)
        assert (
            retirement in words
            and f"measurement={OTHER}" in words
            and "you you have not approved it" in words
        )
        confirm = re.search(r'<form [^>]*action="/successor/retirement" data-confirm="([^"]*)"', page)
        assert confirm and retirement[:16] in confirm.group(1) and OTHER in confirm.group(1)
        done = post(client, "/successor/retirement", retirement=retirement, expires="3d")
        assert done.status_code == 200, done.text
        assert "applied: the version" in done.text and "is retired" in done.text
        after = cas.retirements()
        assert after.retirements == () and [v["platform"] for v in after.retired] == ["sim"]
        retired = text_of(client.get("/successor").text)
        assert OTHER in retired.split("Retired versions", 1)[1]

        # proposals made on the page (bob named by his public key): the command lists them
        made = post(client, "/successor/change/propose", rule="require-all",
                    members=f"{alice[1].fingerprint}\n{bob[1].public.public_base64}\n", expires="1d")  # fmt: skip
        assert made.status_code == 200 and "pending (1 of 2 approvals)" in made.text, made.text
        (listed,) = cli_json(env, "cas", "successor", "board", "show")["changes"]
        assert listed["change"] in made.text and listed["generation"] == generation + 1
        assert sorted(listed["board"]["require-all"]) == sorted([alice[1].fingerprint, bob[1].fingerprint])
        assert [a["signer"] for a in listed["approvers"]] == [alice[1].fingerprint]
        third = "ef" * 48
        made = post(client, "/successor/retirement/propose", platform="sim", code=f"measurement={third}",
                    expires="1d")  # fmt: skip
        assert made.status_code == 200 and "pending (1 of 2 approvals)" in made.text, made.text
        (listed,) = cli_json(env, "cas", "successor", "retire", "show")["retirements"]
        assert listed["retirement"] in made.text and listed["code"] == {"measurement": third}
        assert "you you approved it" in text_of(client.get("/successor").text)


# --- a hostile CAS ---------------------------------------------------------------------------------


def _hostile_answers() -> dict[str, Any]:
    approver = {"signer": HOSTILE, "expires": 1_900_000_000, "approval": HOSTILE}
    board = {"board": {"require-all": [HOSTILE]}, "board_sha256": HOSTILE, "generation": 0, "needed": 1,
             "master_key_id": HOSTILE}  # fmt: skip
    return {
        "/v1/cas/successor": {
            **board,
            "approvals": [
                {
                    "target": HOSTILE,
                    "platform": HOSTILE,
                    "claims": {HOSTILE: HOSTILE},
                    "authorised": False,
                    "approvers": [approver],
                    "withdrawn": [approver],
                    "retire": [HOSTILE],
                }
            ],
            "retired": [{"platform": HOSTILE}],
            "void": [{"why": HOSTILE}],
        },
        "/v1/cas/successor/board": {
            **board,
            "changes": [
                {
                    "change": HOSTILE,
                    "board": {HOSTILE: [HOSTILE]},
                    "board_sha256": HOSTILE,
                    "generation": 0,
                    "approvers": [approver],
                    "withdrawn": [],
                }
            ],
        },
        "/v1/cas/successor/retirements": {
            **board,
            "retirements": [
                {
                    "retirement": HOSTILE,
                    "platform": HOSTILE,
                    "code": {HOSTILE: HOSTILE},
                    "generation": 0,
                    "approvers": [approver],
                    "withdrawn": [],
                }
            ],
            "retired": [{"platform": HOSTILE}],
        },
    }


def _get(app: Any, state: UiState, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    """One GET through the page's application (its guard included), with its cookie; with
    ``form``, a POST of it (its CSRF token added)."""
    sent: list[Any] = []
    body = b"" if form is None else urllib.parse.urlencode({"csrf": state.csrf, **form}).encode()

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    cookie = f"{state.cookie}={state.session}".encode()
    headers = [(b"host", b"127.0.0.1:8765"), (b"cookie", cookie)]
    if form is not None:
        headers += [(b"content-type", b"application/x-www-form-urlencoded"),
                    (b"content-length", str(len(body)).encode())]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET" if form is None else "POST", "scheme": "http", "path": path,
             "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8765)}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], answer.decode()


def test_a_hostile_cas_strings_are_escaped(people: People) -> None:
    with RouteServer.running() as fake:
        for path, answer in _hostile_answers().items():
            fake.route(path, json.dumps(answer).encode(), headers={"Content-Type": "application/json"})
        cas = Cas(CasClient(fake.url, None, plain_http_for_tests=True))
        state = UiState(cas, people["alice"][1], None, None, allowed_hosts=frozenset({"127.0.0.1:8765"}),
                        port=8765)  # fmt: skip
        app = create_app(state)
        status, page = _get(app, state, "/successor")
        assert status == 200, page
        assert "<script>" not in page and "alert(" in page
        # every string the CAS gave is on the page, as text
        assert page.count("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;") >= 15
        assert "data-confirm" in page  # the forms are there, their questions escaped too
        # an error the CAS words is shown escaped
        error = {"error": {"class": "AccessDeniedError", "message": HOSTILE}}
        fake.route("/v1/cas/successor", json.dumps(error).encode(), 403, {"Content-Type": "application/json"})
        status, page = _get(app, state, "/successor")
        assert status == 403 and "AccessDeniedError, exit 33" in page
        assert "<script>" not in page and "&lt;script&gt;" in page
        # a malformed answer of the CAS is the CAS's fault: 502, also on a form the person filled in
        fake.route("/v1/cas/successor", b"[1, 2]", 200, {"Content-Type": "application/json"})
        status, page = _get(app, state, "/successor")
        assert status == 502 and "ParseError, exit 10" in page, page
        fake.route("/v1/cas/successor/board", b"[1, 2]", 200, {"Content-Type": "application/json"})
        rule = {"rule": "require-all", "members": people["bob"][1].fingerprint, "expires": "7d"}
        status, page = _get(app, state, "/successor/change/propose", rule)
        assert status == 502 and "ParseError, exit 10" in page, page
        status, page = _get(app, state, "/successor/change/propose", {**rule, "members": "not-a-key"})
        assert status == 422 and "ParseError, exit 10" in page, page
        cas.close()


def test_the_page_of_a_cas_without_a_board(people: People, tmp_path: Path) -> None:
    """A CAS without a successor board: the page says so as the command does (UsageError)."""
    from cas_harness import running_cas

    with running_cas(tmp_path / "cas", None) as proc:
        started = start_ui(proc, tmp_path / "w")
        try:
            with started.logged_in() as client:
                shown = client.get("/successor")
                assert shown.status_code == 400 and "UsageError, exit 2" in shown.text, shown.text
                r = cli(proc.env, "cas", "successor", "show")
                assert r.returncode == errors.UsageError.exit_code
                assert text_of(shown.text).count("successor board") >= 1
        finally:
            started.stop()
