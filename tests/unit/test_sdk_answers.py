"""confide.sdk against hostile answers of a CAS (no server: what the client's
calls return is given):
whatever the answer, a call raises a ConfideError or returns a read-only result."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from confide import jsonstrict
from confide.cas.client import CasClient
from confide.errors import ConfideError
from confide.identity import Identity
from confide.sdk import Cas


@pytest.fixture
def cas() -> Iterator[Cas]:
    client = CasClient("http://127.0.0.1:1", None, plain_http_for_tests=True)  # never connects
    with Cas(client) as c:
        yield c


def _answer(cas: Cas, monkeypatch: pytest.MonkeyPatch, text: bytes) -> None:
    answer = jsonstrict.loads(text, structure="CAS answer")  # as the client reads it
    for method in ("events", "show"):  # what the client returns, its request not made
        monkeypatch.setattr(cas._client, method, lambda *_a, **_k: answer)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b'{"k": 1}' + b"]" * depth


@pytest.mark.parametrize("depth", [300, 700, 900])
def test_an_answer_nested_as_deep_as_the_json_reader_takes_is_frozen(
    cas: Cas, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """The JSON reader takes nesting up to about the recursion limit; freezing it must not
    raise RecursionError (not a ConfideError: it escaped every caller's except clause)."""
    ident = Identity.generate()
    event = b'{"seq": 1, "index": 0, "at": 1.5, "type": "t", "payload": {"deep": ' + _nested(depth) + b"}}"
    _answer(cas, monkeypatch, b'{"events": [' + event + b"]}")
    (got,) = cas.events("p", ident)
    value: Any = got.payload["deep"]
    for _ in range(depth):
        assert isinstance(value, tuple) and len(value) == 1
        value = value[0]
    assert isinstance(value, Mapping) and dict(value) == {"k": 1}
    with pytest.raises(TypeError):
        value["k"] = 2  # type: ignore[index]

    policy = b'{"name": "p", "hash": "h", "creator": "c", "policy": {"x": ' + _nested(depth) + b"}}"
    _answer(cas, monkeypatch, policy)
    assert isinstance(cas.show("p", ident).document["x"], tuple)


def test_a_malformed_answer_is_a_confide_error(cas: Cas, monkeypatch: pytest.MonkeyPatch) -> None:
    ident = Identity.generate()
    for text in (b"[]", b'{"events": 5}', b'{"events": [5]}', b'{"events": [{"seq": "1"}]}'):
        _answer(cas, monkeypatch, text)
        with pytest.raises(ConfideError):
            cas.events("p", ident)
