"""The ledger's HTTP clients (``ledger verify --url``, the SDK's ``verify_log``, a witness's
``--witness-url``) take the URL they are given: one whose port is not a number, or a broken
IPv6 address, is a ``UsageError`` (exit 2), not a Python traceback (httpx2's ``InvalidURL`` is
no ``HTTPError``)."""

from __future__ import annotations

import socket

import pytest

from confide.errors import NetworkError, UsageError
from confide.ledger.http import HttpLogClient


@pytest.mark.parametrize("url", ["https://127.0.0.1:abc", "https://[::1", "http://127.0.0.1:1x/log"])
def test_a_malformed_log_url_is_a_usage_error(url: str) -> None:
    with HttpLogClient(url) as client, pytest.raises(UsageError, match="not a valid URL"):
        client.fetch("checkpoint")


def test_a_log_nothing_listens_at_says_where_its_address_comes_from() -> None:
    """`ledger verify` after a CAS stopped or moved to another port: "Connection refused"
    alone does not say what to do; the error names client.env, where `cas serve` writes it."""
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with HttpLogClient(f"http://127.0.0.1:{port}/v1/log") as client, pytest.raises(NetworkError) as caught:
        client.fetch("checkpoint")
    message = str(caught.value)
    assert message.startswith(f"GET http://127.0.0.1:{port}/v1/log/checkpoint: ")
    assert "CONFIDE_LOG_URL" in message and "client.env" in message, message
