"""``GET /v1/read/policies`` (route ``list`` of a ``confide/read/v3`` request, docs/cas.md
"Reading a policy"): the policies the signer may read, by the rule every read applies, over a
single-use nonce issued for the name ``""`` and route ``list`` only."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas_inproc import InProcessCas
from confide import errors
from confide.cas.core import READ_TYPE, sign_document
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
