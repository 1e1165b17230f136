"""The CAS client reads a CAS's answer only up to ``MAX_ANSWER`` bytes (docs/limitations.md:
a hostile CAS must not make ``confide run``, which holds its ephemeral key, read without bound)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from confide import httpbody
from confide.cas import client as client_module
from confide.cas.client import CasClient
from confide.errors import NetworkError, ParseError

LIMIT = 1000


class _Endless(httpx2.SyncByteStream):
    """A body without a declared length that never ends; counts the chunks read from it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.read += 1
            yield b" " * 100


def _client(handler: httpx2.MockTransport) -> CasClient:
    client = CasClient("http://cas.test", None, plain_http_for_tests=True)
    client.http.close()
    client.http = httpx2.Client(base_url="http://cas.test", transport=handler)
    return client


@pytest.fixture(autouse=True)
def _small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_ANSWER", LIMIT)


def test_an_answer_within_the_limit_is_read() -> None:
    body = b'{"ok": "' + b"x" * (LIMIT - 10) + b'"}'
    assert len(body) == LIMIT
    client = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, content=body)))
    assert client._call("GET", "/v1/anything") == {"ok": "x" * (LIMIT - 10)}
    crl = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, content=b"c" * LIMIT)))
    assert crl.crl("p", "ca", None) == b"c" * LIMIT


def test_an_answer_one_byte_over_the_limit_is_a_parse_error() -> None:
    body = b'{"ok": "' + b"x" * (LIMIT - 9) + b'"}'
    client = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, content=body)))
    with pytest.raises(ParseError, match="declares 1001 bytes"):
        client._call("GET", "/v1/anything")
    crl = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, content=b"c" * (LIMIT + 1))))
    with pytest.raises(ParseError, match="more than 1000"):
        crl.crl("p", "ca", None)


def test_an_endless_answer_without_a_length_is_read_no_further_than_the_limit() -> None:
    stream = _Endless()
    client = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, stream=stream)))
    with pytest.raises(ParseError, match="larger than 1000 bytes"):
        client._call("POST", "/v1/attest", json={})
    assert stream.read == LIMIT // 100 + 1  # stopped at the first chunk past the limit


@pytest.mark.parametrize("declared", [str(10**12), "9" * 5000])
def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(declared: str) -> None:
    stream = _Endless()
    client = _client(
        httpx2.MockTransport(
            lambda request: httpx2.Response(200, headers={"content-length": declared}, stream=stream)
        )
    )
    with pytest.raises(ParseError, match="declares"):
        client._call("GET", "/v1/anything")
    assert stream.read == 0


def test_an_error_answer_still_raises_its_class_and_a_transport_failure_is_a_network_error() -> None:
    body = b'{"error": {"class": "AccessDeniedError", "message": "no"}}'
    client = _client(httpx2.MockTransport(lambda request: httpx2.Response(403, content=body)))
    with pytest.raises(Exception, match="no") as info:
        client._call("GET", "/v1/anything")
    assert type(info.value).__name__ == "AccessDeniedError"

    def fail(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(NetworkError, match="cannot reach the CAS"):
        _client(httpx2.MockTransport(fail))._call("GET", "/v1/anything")


def test_an_answer_trickling_in_past_the_time_limit_is_a_network_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk comes within the read timeout, but the whole answer takes longer than
    ``MAX_ANSWER_TIME``: the client stops reading (a CAS must not hold ``confide run`` for as
    long as the size limit allows at a byte per read timeout)."""
    now = [0.0]

    def clock() -> float:
        now[0] += 7.0  # each look at the clock: 7 s later (a chunk per read timeout, or so)
        return now[0]

    monkeypatch.setattr(httpbody, "monotonic", clock)
    monkeypatch.setattr(client_module, "MAX_ANSWER_TIME", 30.0)
    stream = _Endless()
    client = _client(httpx2.MockTransport(lambda request: httpx2.Response(200, stream=stream)))
    with pytest.raises(NetworkError, match="took more than 30 s to arrive"):
        client._call("POST", "/v1/attest", json={})
    assert stream.read < LIMIT // 100  # stopped by the clock, not by the size
