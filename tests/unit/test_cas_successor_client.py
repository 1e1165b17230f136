"""confide.cas.successor_client: the person's --expires and the CAS's successor answer."""

from __future__ import annotations

from typing import Any

import pytest

from confide.cas.successor_client import approve_successor, parse_expiry, withdraw_successor
from confide.errors import ParseError, UsageError
from confide.identity import Identity

NOW = 1_800_000_000


@pytest.mark.parametrize("text", ["\u00b2h", "\u0662d", "\uff11m"])
def test_an_expiry_in_other_digits_is_a_usage_error(text: str) -> None:
    """A superscript two was a ValueError from int() (a traceback); other Unicode digits were
    taken as numbers though the message asks for 12h or 7d."""
    with pytest.raises(UsageError, match="expected an ISO 8601 time or 12h, 7d"):
        parse_expiry(text, NOW)


def test_an_expiry_in_ascii_digits_is_read() -> None:
    assert parse_expiry("12h", NOW) == NOW + 12 * 3600
    assert parse_expiry("7d", NOW) == NOW + 7 * 86400


class _Client:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.signed: list[tuple[Any, ...]] = []

    def successor(self) -> object:
        return self.answer

    def approve_successor(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.signed.append((args, kwargs))
        return {}


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {},
        {"generation": 0},
        {"master_key_id": 5, "generation": 0},
        {"master_key_id": "k", "generation": "1"},
        {"master_key_id": "k", "generation": True},
    ],
)
def test_a_malformed_successor_answer_is_a_parse_error_before_anything_is_signed(answer: object) -> None:
    """A missing master_key_id was a KeyError, a generation that is no integer a ValueError or
    taken (True as 1): the CAS's answer, a ParseError, and nothing signed."""
    client = _Client(answer)
    with pytest.raises(ParseError, match=r"^the CAS's successor answer"):
        approve_successor(client, Identity.generate(), "sim", {}, NOW + 3600)  # type: ignore[arg-type]
    assert client.signed == []


def test_a_successor_answer_without_a_generation_signs_under_generation_0() -> None:
    client = _Client({"master_key_id": "k"})
    approve_successor(client, Identity.generate(), "sim", {}, NOW + 3600)  # type: ignore[arg-type]
    (args, kwargs) = client.signed[0]
    assert args[0] == "k" and kwargs["generation"] == 0


@pytest.mark.parametrize("answer", [[], {}, {"master_key_id": 5}, {"master_key_id": "k", "generation": "0"}])
def test_a_malformed_successor_answer_withdraws_nothing(answer: object) -> None:
    """cas successor withdraw without --master-key-id: a list was a TypeError, a missing key a
    KeyError, a number was sent as the key id."""
    client = _Client(answer)
    withdrawn: list[object] = []
    client.withdraw_successor_approval = lambda *a: withdrawn.append(a)  # type: ignore[attr-defined]
    with pytest.raises(ParseError, match=r"^the CAS's successor answer"):
        withdraw_successor(client, Identity.generate(), "0" * 64)  # type: ignore[arg-type]
    assert withdrawn == []
