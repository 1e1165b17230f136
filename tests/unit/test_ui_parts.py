"""The parts of ``confide ui`` that need no server: escaping, ``--listen``, form bodies, the names
errors are shown with (tests/integration/test_ui.py drives the whole page)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from typing import Any

import pytest

from confide import errors
from confide.cas.client import CasClient
from confide.sdk import Cas
from confide.ui.app import MAX_BODY, MAX_FIELDS, Guard, UiState, _body, _parse_form, _Refused, describe
from confide.ui.cli import bind_default, default_state_file, parse_listen, random_loopback_host
from confide.ui.html import Html, esc, h, join, page


def test_values_are_escaped_markup_is_not() -> None:
    hostile = "<script>alert('x')</script>\"&"
    out = h('<p title="{}">{}</p>', hostile, hostile)
    assert (
        "<script>" not in out
        and out.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&amp;") == 2
    )
    assert h("<div>{}</div>", h("<b>{}</b>", "<i>")) == "<div><b>&lt;i&gt;</b></div>"
    assert isinstance(esc("a"), Html) and esc(Html("<b>")) == "<b>"
    assert join([h("<li>{}</li>", "<"), Html("<li>ok</li>")]) == "<li>&lt;</li><li>ok</li>"
    whole = page("<title>", h("<p>{}</p>", "body"), who="<fp>", cas_url="https://cas/<x>")
    assert "<title><title>" not in whole and "&lt;title&gt;" in whole and "&lt;fp&gt;" in whole
    assert "<script>" not in whole and '<script src="/static/ui.js" defer></script>' in whole


@pytest.mark.parametrize(
    ("listen", "host", "port", "names"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0, {"127.0.0.1", "localhost"}),
        ("127.0.0.2:8765", "127.0.0.2", 8765, {"127.0.0.2", "localhost"}),
        ("localhost:9000", "127.0.0.1", 9000, {"127.0.0.1", "localhost"}),
        ("[::1]:9000", "::1", 9000, {"[::1]", "localhost"}),
    ],
)
def test_loopback_listen_addresses(listen: str, host: str, port: int, names: set[str]) -> None:
    assert parse_listen(listen) == (host, port, frozenset(names))


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("0.0.0.0:8000", "not a loopback"),
        ("[::]:8000", "not a loopback"),
        ("192.168.1.2:8000", "not a loopback"),
        ("example.com:80", "expected a loopback IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
        ("127.0.0.1:²", "expected HOST:PORT"),
    ],
)
def test_other_listen_addresses_are_refused(listen: str, why: str) -> None:
    with pytest.raises(errors.UsageError, match=why):
        parse_listen(listen)


def test_the_default_host_is_a_random_loopback_address_away_from_127_0_0_1() -> None:
    assert random_loopback_host(lambda n: 0) == "127.1.1.1"
    assert random_loopback_host(lambda n: n - 1) == "127.254.254.254"
    rng = random.Random(7)  # the octets' range is tested here, not their randomness
    seen = set()
    for _ in range(2000):
        host = random_loopback_host(rng.randrange)
        address = ipaddress.ip_address(host)
        assert address.is_loopback and address not in ipaddress.ip_network("127.0.0.0/24")
        assert all(0 < int(octet) < 255 for octet in host.split(".")[1:])
        seen.add(host)
    assert len(seen) > 1990
    assert (
        random_loopback_host() != random_loopback_host() or random_loopback_host() != random_loopback_host()
    )


def test_the_default_address_falls_back_to_127_0_0_1_with_a_warning() -> None:
    tried: list[str] = []

    def bind_ok(host: str) -> str:
        tried.append(host)
        return f"server on {host}"

    server, host, warning = bind_default(bind_ok, platform="linux", pick=lambda: "127.9.8.7")
    assert (server, host, warning, tried) == ("server on 127.9.8.7", "127.9.8.7", None, ["127.9.8.7"])

    def unavailable(host: str) -> str:  # a kernel that does not route 127.9.8.7 to loopback
        tried.append(host)
        if host != "127.0.0.1":
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        return f"server on {host}"

    tried.clear()
    server, host, warning = bind_default(unavailable, platform="linux", pick=lambda: "127.9.8.7")
    assert (server, host, tried) == ("server on 127.0.0.1", "127.0.0.1", ["127.9.8.7", "127.0.0.1"])
    assert warning is not None and "\n" not in warning
    assert "cannot listen on 127.9.8.7" in warning and "sent the page's cookie" in warning

    tried.clear()  # not Linux: 127.0.0.1 at once
    server, host, warning = bind_default(bind_ok, platform="darwin", pick=lambda: "127.9.8.7")
    assert (host, tried) == ("127.0.0.1", ["127.0.0.1"])
    assert warning is not None and "Linux only" in warning and "cookie" in warning

    def denied(host: str) -> str:  # any other failure is not a reason to fall back
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError, match="Permission denied"):
        bind_default(denied, platform="linux", pick=lambda: "127.9.8.7")


def test_the_default_state_file_is_one_per_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "/cfg")
    a, b = default_state_file("log-a+1+AAAA"), default_state_file("log-b+1+AAAA")
    assert a.parent.as_posix() == "/cfg/confide/ui" and a != b
    assert default_state_file(" log-a+1+AAAA\n") == a


def test_form_bodies() -> None:
    form = _parse_form("application/x-www-form-urlencoded", b"csrf=t&yaml=a%3Cb%3E%0Ac&empty=")
    assert dict(form.fields) == {"csrf": "t", "yaml": "a<b>\nc", "empty": ""} and not form.files
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="csrf"\r\n\r\ntok\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="p.yaml"\r\n'
        b'Content-Type: application/yaml\r\n\r\nname: x\r\nversion: "0.3"\r\n\r\n--XX--\r\n'
    )
    form = _parse_form("multipart/form-data; boundary=XX", body)
    assert dict(form.fields) == {"csrf": "tok"}
    assert dict(form.files) == {"file": b'name: x\r\nversion: "0.3"\r\n'}
    too_many = "&".join(f"f{i}=1" for i in range(MAX_FIELDS + 1)).encode()
    too_many_parts = (
        b"".join(
            b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n' % i
            for i in range(MAX_FIELDS + 1)
        )
        + b"--XX--\r\n"
    )
    twice = (
        b'--XX\r\nContent-Disposition: form-data; name="file"\r\n\r\npasted\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="p.yaml"\r\n\r\nname: x\r\n--XX--\r\n'
    )
    for content_type, data, status, text in [
        ("application/x-www-form-urlencoded", too_many, 400, f"more than {MAX_FIELDS} form fields"),
        ("multipart/form-data; boundary=XX", too_many_parts, 400, f"more than {MAX_FIELDS} form fields"),
        ("application/x-www-form-urlencoded", b"a=\xff", 400, "the form is not UTF-8"),
        ("application/x-www-form-urlencoded", b"csrf=t&yaml=a&yaml=b", 400, "form field 'yaml' given twice"),
        ("multipart/form-data; boundary=XX", twice, 400, "form field 'file' given twice"),
        ("application/x-www-form-urlencoded", b"a=%ff", 200, ""),  # replaced, not refused: no field of ours
        ("application/json", b"{}", 415, "expected a form"),
        ("multipart/form-data; boundary=XX", b"not multipart", 400, "malformed multipart form"),
    ]:
        if status == 200:
            assert _parse_form(content_type, data).fields["a"] == "\ufffd"
            continue
        with pytest.raises(_Refused) as refused:
            _parse_form(content_type, data)
        assert refused.value.status == status and refused.value.text.startswith(text), data[:20]


@pytest.mark.parametrize(
    ("length", "status", "text"),
    [
        (b"12x", 400, "malformed Content-Length"),
        (b"-1", 400, "malformed Content-Length"),
        (b"", 400, "malformed Content-Length"),
        (str(MAX_BODY + 1).encode(), 413, f"request body over {MAX_BODY} bytes"),
        (b"9" * 13, 413, f"request body over {MAX_BODY} bytes"),
    ],
)
def test_a_bad_content_length_is_named(length: bytes, status: int, text: str) -> None:
    async def receive() -> Any:
        raise AssertionError("the body is not read")

    with pytest.raises(_Refused) as refused:
        asyncio.run(_body({b"content-length": length}, receive))
    assert refused.value.status == status and refused.value.text.startswith(text)


def test_errors_are_named_in_words_and_as_the_cli_names_them() -> None:
    headline, name = describe(errors.AccessDeniedError("no policy x readable by ab…"))
    assert headline.startswith("Access denied") and name == "AccessDeniedError, exit 33"
    assert describe(errors.EntryMissingError("entry 3"))[0].startswith("Omission")
    assert describe(errors.RollbackError("older"))[1] == "RollbackError, exit 60"
    assert describe(errors.LogRollbackError("w"))[0].startswith("Rollback")  # by its parent class
    assert describe(errors.ConfideError("x")) == ("confide failed", "ConfideError, exit 1")


def _guarded() -> tuple[Guard, UiState]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    cas = Cas(CasClient("http://127.0.0.1:1", None, plain_http_for_tests=True))  # never connects
    state = UiState(cas, None, None, None, allowed_hosts=frozenset({"127.0.0.1:8765"}), port=8765)
    return Guard(app, state), state


def _ask(guard: Guard, path: str, query: str = "", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(),
             "headers": [(b"host", b"127.0.0.1:8765"), *headers]}  # fmt: skip
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"])


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/policy", b"/policy?name=p"),
        ("//evil.example/x", b"/evil.example/x"),  # as it was: a URL of another host
        ("///evil.example", b"/evil.example"),
        ("/x\r\nX-Injected: 1", b"/x%0D%0AX-Injected%3A%201"),  # a decoded CR LF stays out of the head
    ],
)
def test_the_token_redirects_to_a_path_of_this_page(path: str, location: bytes) -> None:
    guard, state = _guarded()
    status, headers = _ask(
        guard, path, f"name=p&token={state.token}" if path == "/policy" else f"token={state.token}"
    )
    assert status == 303 and headers[b"location"] == location
    assert headers[b"set-cookie"].startswith(
        f"confide-ui-8765-{state.cookie_suffix}={state.session};".encode()
    )
    assert len(state.cookie_suffix) == 8


def test_the_token_is_single_use_and_other_sites_are_refused() -> None:
    guard, state = _guarded()
    assert _ask(guard, "/", f"token={state.token}", ((b"sec-fetch-site", b"same-site"),))[0] == 403
    assert not state.token_used  # a refused request does not use it
    assert _ask(guard, "/", f"token={state.token}", ((b"sec-fetch-site", b"none"),))[0] == 303
    assert _ask(guard, "/", f"token={state.token}")[0] == 403  # used
    cookie = (b"cookie", f"{state.cookie}={state.session}".encode())
    assert _ask(guard, "/", "", ((b"cookie", f"confide-ui-8765={state.session}".encode()),))[0] == 403
    for site, status in [(b"same-origin", 200), (b"none", 200), (b"same-site", 403), (b"cross-site", 403)]:
        assert _ask(guard, "/", "", (cookie, (b"sec-fetch-site", site)))[0] == status, site
    assert _ask(guard, "/", "", (cookie,))[0] == 200  # not a browser: no Sec-Fetch-Site


@pytest.mark.parametrize("at", [b"1e300", b"-1e20", b"1e12", b"1700000000"])
def test_an_event_time_no_date_has_is_shown_not_a_server_error(
    monkeypatch: pytest.MonkeyPatch, at: bytes
) -> None:
    """The events page turned a CAS's event time into a date with datetime.fromtimestamp: a
    time beyond its range raised OverflowError or ValueError (an internal server error)."""
    from confide import jsonstrict
    from confide.identity import Identity
    from confide.ui.app import create_app

    _, state = _guarded()
    state.identity = Identity.generate()
    answer = jsonstrict.loads(
        b'{"events": [{"seq": 1, "index": 0, "at": ' + at + b', "type": "t", "payload": {}}]}', structure="x"
    )
    monkeypatch.setattr(state.cas._client, "events", lambda *_a, **_k: answer)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    cookie = f"{state.cookie}={state.session}".encode()
    scope = {"type": "http", "method": "GET", "path": "/policy/events", "query_string": b"name=p",
             "headers": [(b"host", b"127.0.0.1:8765"), (b"cookie", cookie)]}  # fmt: skip
    asyncio.run(create_app(state)(scope, receive, send))
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    if at == b"1700000000":
        assert "<td>2023-11-14T22:13:20+00:00</td>" in body
    else:
        assert f"<td>{float(at)!r} (Unix seconds: no date)</td>" in body
