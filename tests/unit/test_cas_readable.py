"""``GET /v1/read/policies`` (route ``list`` of a ``confide/read/v3`` request, docs/cas.md
"Reading a policy"): the policies the signer may read, by the rule every read applies, over a
single-use nonce issued for the name ``""`` and route ``list`` only."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest

from asgi_call import call, call_async
from cas_inproc import InProcessCas
from confide import errors
from confide.cas.app import create_app
from confide.cas.client import CasClient
from confide.cas.core import READ_TYPE, READABLE_PATH, sign_document
from confide.cas.db import raw_execute
from confide.httpserve.ratelimit import Rate, RateLimiter
from confide.identity import Identity

POLICY = """name: {name}
version: "0.3"
access_policy:
  read: [CREATOR{readers}]
  update: [CREATOR]
"""


def _listing(who: Identity, ipc: InProcessCas, *, name: str = "", route: str = "list") -> dict[str, object]:
    body = {"type": READ_TYPE, "name": name, "route": route, "cas": ipc.cas.tls_spki_sha256,
            "nonce": ipc.cas.new_read_nonce("", "list")}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def test_each_signer_is_listed_the_policies_it_may_read(tmp_path: Path) -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="team/a", readers=f", {bob.fingerprint}"), alice)
    ipc.apply(POLICY.format(name="team/b", readers=""), alice)
    ipc.apply(POLICY.format(name="other", readers=""), bob)
    assert ipc.cas.readable(_listing(alice, ipc)) == {"policies": ["team/a", "team/b"]}
    assert ipc.cas.readable(_listing(bob, ipc)) == {"policies": ["other", "team/a"]}
    assert ipc.cas.readable(_listing(carol, ipc)) == {"policies": []}
    request = _listing(alice, ipc)
    ipc.cas.readable(request)
    with pytest.raises(errors.AccessDeniedError, match="served before"):
        ipc.cas.readable(request)  # single use


def test_the_list_nonce_is_for_the_empty_name_and_the_list_route_only(tmp_path: Path) -> None:
    alice = Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="mine", readers=""), alice)
    for name, route in (("mine", "list"), ("", "show"), ("", "events"), ("", "crl")):
        with pytest.raises(errors.ParseError, match='"" for route list'):
            ipc.cas.new_read_nonce(name, route)
    with pytest.raises(errors.ParseError, match="another policy"):
        ipc.cas.readable(_listing(alice, ipc, name="mine"))
    with pytest.raises(errors.AccessDeniedError, match="read request is for show, not list"):
        ipc.cas.readable(_listing(alice, ipc, route="show"))
    # a list nonce reads no policy: it was issued for the name ""
    shown = _listing(alice, ipc, name="mine", route="show")
    with pytest.raises(errors.AccessDeniedError, match="not issued by this CAS for policy 'mine'"):
        ipc.cas.show(shown)


def _restart(ipc: InProcessCas, data: Path) -> InProcessCas:
    ipc.cas.db.dispose()
    return InProcessCas.start(data, "")


def _list_header(ipc: InProcessCas, who: Identity) -> list[tuple[bytes, bytes]]:
    doc = _listing(who, ipc)
    return [(b"x-confide-read", base64.b64encode(json.dumps(doc).encode()))]


def test_the_list_route_is_held_to_the_write_rate_per_client(tmp_path: Path) -> None:
    """Each list looks at every current policy: a client is held to ``--write-rate`` (a bucket
    of one here), before its request is read; the attestation bucket does not count it."""
    alice = Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="mine", readers=""), alice)
    app = create_app(ipc.cas, write_limiter=RateLimiter(Rate(0.001, 1)))
    status, body = call(app, READABLE_PATH, [b""], method="GET", headers=_list_header(ipc, alice))
    assert (status, json.loads(body)) == (200, {"policies": ["mine"]})
    status, body = call(app, READABLE_PATH, [b""], method="GET", headers=_list_header(ipc, alice))
    assert status == 429 and "too many requests" in json.loads(body)["error"]["message"]
    attest_only = create_app(ipc.cas, attest_limiter=RateLimiter(Rate(0.001, 1)))
    for _ in range(2):
        assert (
            call(attest_only, READABLE_PATH, [b""], method="GET", headers=_list_header(ipc, alice))[0] == 200
        )


def test_one_list_is_answered_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list sent while another is answered: 429 (Retry-After 1), its nonce not spent, so the
    same request sent again is answered."""
    alice = Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="mine", readers=""), alice)
    app = create_app(ipc.cas)
    entered, release = threading.Event(), threading.Event()
    real = ipc.cas.readable

    def slow(request: Any, run: Any = None) -> dict[str, Any]:
        entered.set()
        assert release.wait(30)
        return real(request, run)

    monkeypatch.setattr(ipc.cas, "readable", slow)
    first, second = _list_header(ipc, alice), _list_header(ipc, alice)

    async def both() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        task = asyncio.ensure_future(call_async(app, READABLE_PATH, [b""], "GET", first))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        busy = await call_async(app, READABLE_PATH, [b""], "GET", second)
        release.set()
        return await task, busy

    answered, busy = asyncio.run(both())
    assert answered[0] == 200
    assert busy[0] == 429 and "another list of readable policies" in json.loads(busy[1])["error"]["message"]
    status, body = call(app, READABLE_PATH, [b""], method="GET", headers=second)
    assert (status, json.loads(body)) == (200, {"policies": ["mine"]})


def test_a_list_walk_neither_parses_again_nor_evicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read rules of each version are kept: a second list parses no policy document, and a
    list does not fill the parsed-policy cache the attestations use."""
    alice = Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    for i in range(3):
        ipc.apply(POLICY.format(name=f"p{i}", readers=""), alice)
    ipc = _restart(ipc, tmp_path / "cas")  # caches empty
    cas = ipc.cas
    assert cas.readable(_listing(alice, ipc)) == {"policies": ["p0", "p1", "p2"]}
    assert len(cas._policies) == 0
    loads: list[str] = []
    real = cas._load

    def counted(conn: Any, name: str, digest: str, **kw: Any) -> Any:
        loads.append(name)
        return real(conn, name, digest, **kw)

    monkeypatch.setattr(cas, "_load", counted)
    assert cas.readable(_listing(Identity.generate(), ipc)) == {"policies": []}
    assert loads == []


def test_an_altered_policy_is_not_named_to_a_lister(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another stakeholder's policy whose rows were altered: the list is refused (503, nothing
    left out of an answer) without its name, which the operator's log holds."""
    alice, bob = Identity.generate(), Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="alices-secret-project", readers=""), alice)
    ipc.apply(POLICY.format(name="bobs", readers=""), bob)
    with ipc.cas.db.write() as conn:
        raw_execute(
            conn, "UPDATE policy_heads SET mac = ? WHERE name = ?", ("00" * 32, "alices-secret-project")
        )
    ipc = _restart(ipc, tmp_path / "cas")
    with caplog.at_level(logging.WARNING, logger="confide.cas"), pytest.raises(errors.StorageError) as exc:
        ipc.cas.readable(_listing(bob, ipc))
    assert "alices-secret-project" not in exc.value.message and "log says which" in exc.value.message
    (line,) = [
        json.loads(r.getMessage()) for r in caplog.records if "readable-policies-refused" in r.getMessage()
    ]
    assert "alices-secret-project" in line["why"]


def _mock_client(handler: Any) -> CasClient:
    client = CasClient("http://cas.test", None, plain_http_for_tests=True)
    client.http.close()
    client.http = httpx2.Client(base_url="http://cas.test", transport=httpx2.MockTransport(handler))
    client.cas_spki_sha256 = "00" * 32
    return client


@pytest.mark.parametrize("names", [["../../v1/x"], ["ok", "a//b"], [""], ["x" * 200]])
def test_a_list_of_names_no_policy_can_have_is_refused(names: list[str]) -> None:
    """The CAS's list names policies the client next reads (a URL path) and remembers (a state
    file): a name no policy can have is a malformed answer."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/read/nonce":
            return httpx2.Response(200, json={"nonce": "00" * 32, "expires_in": 60})
        return httpx2.Response(200, json={"policies": names})

    with _mock_client(answer) as client, pytest.raises(errors.ParseError, match="list of policy names"):
        client.readable(Identity.generate())


def test_the_cas_s_own_storage_error_reaches_the_user() -> None:
    """A 503 error object of a StorageError class the client does not know (the CAS's database
    altered): a StorageError (50) with the CAS's message, not a bare 'HTTP 503' (40)."""
    error = {
        "class": "LedgerEntriesAltered",
        "message": "ledger entry 7 does not hash: altered",
        "exit_code": 50,
    }

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/read/nonce":
            return httpx2.Response(200, json={"nonce": "00" * 32, "expires_in": 60})
        return httpx2.Response(503, json={"error": error})

    storage = pytest.raises(errors.StorageError, match="the CAS: LedgerEntriesAltered: ledger entry 7")
    with _mock_client(answer) as client, storage:
        client.events("p", Identity.generate())
    # another status, or another exit code, stays a NetworkError naming the status
    for status, code in ((500, 50), (503, 40)):
        other = {"error": {**error, "exit_code": code}}
        client = _mock_client(lambda r, s=status, o=other: httpx2.Response(s, json=o))
        with client, pytest.raises(errors.NetworkError, match=f"HTTP {status}"):
            client.read_nonce("p", "show")


def test_a_deleted_head_row_does_not_drop_a_policy_from_the_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator deletes a policy's current-version row: the policy would vanish from its
    readers' lists (and go unchecked). The ledger's head entries name it: every list is refused
    (503, without the name), the log names it."""
    alice, bob = Identity.generate(), Identity.generate()
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(POLICY.format(name="alices", readers=""), alice)
    ipc.apply(POLICY.format(name="bobs", readers=""), bob)
    assert ipc.cas.readable(_listing(alice, ipc)) == {"policies": ["alices"]}
    with ipc.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM policy_heads WHERE name = ?", ("alices",))
    for cas in (ipc, _restart(ipc, tmp_path / "cas")):  # the running CAS, and one started anew
        for who in (alice, bob):
            with (
                caplog.at_level(logging.WARNING, logger="confide.cas"),
                pytest.raises(errors.StorageError) as exc,
            ):
                cas.cas.readable(_listing(who, cas))
            assert "alices" not in exc.value.message
        refused = [
            json.loads(r.getMessage())
            for r in caplog.records
            if "readable-policies-refused" in r.getMessage()
        ]
        assert "'alices'" in refused[-1]["why"] and "no row" in refused[-1]["why"]
        caplog.clear()
