"""A CAS's error answer names the class the client raises (``{"error": {"class", "message"}}``):
whatever class a hostile CAS names, the client raises a ``ConfideError`` (one line, its exit
code), never a Python traceback, and never a class that belongs to this process alone."""

from __future__ import annotations

import json

import httpx2
import pytest

from confide import errors
from confide.cas.client import CasClient
from confide.errors import ConfideError, NetworkError


def _client(status: int, body: object) -> CasClient:
    client = CasClient("http://cas.test", None, plain_http_for_tests=True)
    client.http.close()
    content = json.dumps(body).encode()
    client.http = httpx2.Client(
        base_url="http://cas.test",
        transport=httpx2.MockTransport(lambda request: httpx2.Response(status, content=content)),
    )
    return client


_CLASSES = sorted(
    name
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), ConfideError)
)


@pytest.mark.parametrize("name", _CLASSES)
def test_every_error_class_a_cas_names_is_raised_as_a_confide_error(name: str) -> None:
    client = _client(409, {"error": {"class": name, "message": "refused"}})
    with pytest.raises(ConfideError) as info:
        client.nonce()
    assert isinstance(info.value, ConfideError)


def test_a_stop_signal_error_named_by_a_cas_is_not_taken_from_it() -> None:
    """``WaitStoppedError`` is a stop signal this process got while it waited for a volume's lock
    (``confide run`` then ends by that signal): a CAS never sends it, and one that names it gets
    the error answer's generic refusal, not a traceback (its constructor needs the signal) nor
    a signal of its choosing."""
    client = _client(400, {"error": {"class": "WaitStoppedError", "message": "stopped"}})
    with pytest.raises(NetworkError, match="CAS answered HTTP 400") as info:
        client.nonce()
    assert not isinstance(info.value, errors.WaitStoppedError)
