"""The parts of ``confide ui`` that need no server: escaping, ``--listen``, form bodies, the names
errors are shown with (tests/integration/test_ui.py drives the whole page)."""

from __future__ import annotations

import pytest

from confide import errors
from confide.ui.app import MAX_FIELDS, _parse_form, _Refused, describe
from confide.ui.cli import default_state_file, parse_listen
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
    for content_type, data, status in [
        ("application/x-www-form-urlencoded", too_many, 400),
        ("application/x-www-form-urlencoded", b"a=%ff", 200),  # replaced, not refused: no field of ours
        ("application/json", b"{}", 415),
        ("multipart/form-data; boundary=XX", b"not multipart", 400),
    ]:
        if status == 200:
            assert _parse_form(content_type, data).fields["a"] == "\ufffd"
            continue
        with pytest.raises(_Refused) as refused:
            _parse_form(content_type, data)
        assert refused.value.status == status


def test_errors_are_named_in_words_and_as_the_cli_names_them() -> None:
    headline, name = describe(errors.AccessDeniedError("no policy x readable by ab…"))
    assert headline.startswith("Access denied") and name == "AccessDeniedError, exit 33"
    assert describe(errors.EntryMissingError("entry 3"))[0].startswith("Omission")
    assert describe(errors.RollbackError("older"))[1] == "RollbackError, exit 60"
    assert describe(errors.LogRollbackError("w"))[0].startswith("Rollback")  # by its parent class
    assert describe(errors.ConfideError("x")) == ("confide failed", "ConfideError, exit 1")
