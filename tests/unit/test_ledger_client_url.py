"""The ledger's HTTP clients (``ledger verify --url``, the SDK's ``verify_log``, a witness's
``--witness-url``) take the URL they are given: one whose port is not a number, or a broken
IPv6 address, is a ``UsageError`` (exit 2), not a Python traceback (httpx2's ``InvalidURL`` is
no ``HTTPError``)."""

from __future__ import annotations

import pytest

from confide.errors import UsageError
from confide.ledger.http import HttpLogClient


@pytest.mark.parametrize("url", ["https://127.0.0.1:abc", "https://[::1", "http://127.0.0.1:1x/log"])
def test_a_malformed_log_url_is_a_usage_error(url: str) -> None:
    with HttpLogClient(url) as client, pytest.raises(UsageError, match="not a valid URL"):
        client.fetch("checkpoint")
