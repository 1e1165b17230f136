"""confide.cas.successor_client: the person's --expires."""

from __future__ import annotations

import pytest

from confide.cas.successor_client import parse_expiry
from confide.errors import UsageError

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
