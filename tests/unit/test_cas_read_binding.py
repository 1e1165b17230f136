"""A signed read request (``confide/read/v3``, docs/cas.md "Reading a policy") is for one CAS,
named by the SHA-256 of its TLS certificate's SubjectPublicKeyInfo (``cas``), for one route
(``show``, ``events`` or ``crl``) and is served once: it carries a nonce that CAS issued for
that route and policy, spent when the read is served. One captured where it was sent cannot be
replayed there, nor at another CAS the signer reads, nor for another of the answers. A request
without them is malformed; a ``confide/read/v2`` request (a time, no nonce) is refused with a
message to upgrade."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cas_inproc import InProcessCas
from confide import errors
from confide.cas.client import CasClient
from confide.cas.core import (
    NONCE_TTL,
    READ_ROUTES,
    READ_TYPE,
    READ_V2_TYPE,
    SWEEP_GRACE,
    Cas,
    sign_document,
    spki_sha256,
)
from confide.cas.db import raw_execute
from confide.cas.server import prepare
from confide.identity import Identity

POLICY = """name: shared
version: "0.3"
secrets:
  - name: pw
    kind: ascii
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


def read_request(who: Identity, issuer: Cas, **fields: Any) -> dict[str, Any]:
    """``who``'s read request of ``fields`` (``None``: left out), over a nonce ``issuer`` issued
    for its name and route (``show`` for a route that is no route) unless ``nonce`` is given."""
    body = {"type": READ_TYPE, "name": "shared", **fields}
    if "nonce" not in fields:
        route = body.get("route")
        body["nonce"] = issuer.new_read_nonce(body["name"], route if route in READ_ROUTES else "show")
    return sign_document({k: v for k, v in body.items() if v is not None}, who.sign, who.public.public_base64)


def served_spki(data_dir: Path) -> str:
    return spki_sha256(x509.load_pem_x509_certificate((data_dir / "cas-cert.pem").read_bytes()))


@pytest.fixture
def two(tmp_path: Path) -> tuple[InProcessCas, InProcessCas, Identity]:
    """Two CAS, each with a policy ``shared`` the same owner reads (the replay's target)."""
    owner = Identity.generate()
    a = InProcessCas.start(tmp_path / "a", "")
    b = InProcessCas.start(tmp_path / "b", "")
    a.apply(POLICY, owner)
    b.apply(POLICY, owner)
    return a, b, owner


def test_the_cas_names_the_key_of_the_certificate_it_serves(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path / "cas", "")
    assert ipc.cas.tls_spki_sha256 == served_spki(tmp_path / "cas")
    # Restarted on the same data directory: the same TLS key, so requests in flight stay valid.
    again = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)[0]
    assert again.tls_spki_sha256 == ipc.cas.tls_spki_sha256


def test_a_request_for_this_cas_and_route_is_served(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    cas = a.cas.tls_spki_sha256
    assert a.cas.show(read_request(owner, a.cas, cas=cas, route="show"))["name"] == "shared"
    assert a.cas.events_for(read_request(owner, a.cas, cas=cas, route="events"))["events"]


def test_a_request_for_another_cas_is_refused_like_a_missing_policy(
    two: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, b, owner = two
    assert a.cas.tls_spki_sha256 != b.cas.tls_spki_sha256
    for_a = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show")
    assert a.cas.show(for_a)["name"] == "shared"
    # The same request replayed at b, where the signer reads a policy of the same name.
    with pytest.raises(errors.AccessDeniedError, match="another CAS") as replayed:
        b.cas.show(for_a)
    missing = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show", name="none")
    with pytest.raises(errors.AccessDeniedError) as refused:
        b.cas.show(missing)
    assert str(replayed.value) == str(refused.value)  # whether the policy exists or not
    with pytest.raises(errors.AccessDeniedError, match="another CAS"):
        b.cas.events_for(read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="events"))
    with pytest.raises(errors.AccessDeniedError, match="another CAS"):
        a.cas.show(read_request(owner, a.cas, cas="00" * 32, route="show"))


def test_a_request_for_another_route_is_refused(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    cas = a.cas.tls_spki_sha256
    with pytest.raises(errors.AccessDeniedError, match="read request is for show, not events"):
        a.cas.events_for(read_request(owner, a.cas, cas=cas, route="show"))
    with pytest.raises(errors.AccessDeniedError, match="read request is for events, not show"):
        a.cas.show(read_request(owner, a.cas, cas=cas, route="events"))
    with pytest.raises(errors.AccessDeniedError, match="read request is for show, not crl"):
        a.cas.crl("shared", "pw", read_request(owner, a.cas, cas=cas, route="show"))


@pytest.mark.parametrize(
    "fields",
    [
        {"cas": None, "route": "show"},  # the old format: no CAS
        {"route": None},  # no route
        {"cas": None, "route": None},
        {"cas": 7, "route": "show"},
        {"route": "everything"},
        {"route": ["show"]},
        {"nonce": None},  # the v2 fields under the v3 type: no nonce
        {"nonce": 7},
        {"nonce": "AB" * 32},  # one text per nonce: lowercase hex
        {"nonce": "ab" * 31},
        {"nonce": "ab" * 33},
    ],
)
def test_a_request_missing_its_binding_is_malformed(
    two: tuple[InProcessCas, InProcessCas, Identity], fields: dict[str, Any]
) -> None:
    a, _b, owner = two
    doc = read_request(owner, a.cas, **{"cas": a.cas.tls_spki_sha256, **fields})
    with pytest.raises(errors.ParseError, match=r"name, nonce .*, cas and route"):
        a.cas.show(doc)


def test_a_version_1_request_is_refused(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    old = {"type": "confide/read/v1", "name": "shared", "time": int(time.time())}
    with pytest.raises(errors.ParseError, match="expected 'confide/read/v3'"):
        a.cas.show(sign_document(old, owner.sign, owner.public.public_base64))


def test_the_client_signs_for_the_certificate_it_trusts(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path / "cas", "")
    cert = tmp_path / "cas" / "cas-cert.pem"
    owner = Identity.generate()
    ipc.apply(POLICY, owner)
    for trusted in (cert, cert.read_bytes()):  # a file (CONFIDE_CAS_CERT) or pinned PEM bytes
        with CasClient("https://127.0.0.1:1", trusted) as client:
            # the nonce the CAS would answer POST /v1/read/nonce with (no server listens here)
            client.read_nonce = ipc.cas.new_read_nonce  # type: ignore[method-assign]
            header = client._read_header("shared", owner, "events")
        doc = json.loads(base64.b64decode(header["X-Confide-Read"]))
        assert doc["cas"] == ipc.cas.tls_spki_sha256 and doc["route"] == "events"
        assert ipc.cas.events_for(doc)["events"]  # served, once
    # Two certificates: which CAS the requests are for is not clear.
    other = tmp_path / "other"
    prepare(other, host="127.0.0.1", dev=True, db_url=None, collateral=None)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert.read_bytes() + (other / "cas-cert.pem").read_bytes())
    with pytest.raises(errors.UsageError, match="holds 2 certificates"):
        CasClient("https://127.0.0.1:1", bundle)
    # Plain HTTP (tests only) has no certificate: nothing to bind a read to.
    with (
        CasClient("http://127.0.0.1:1", None, plain_http_for_tests=True) as plain,
        pytest.raises(errors.UsageError, match="reading needs the CAS's certificate"),
    ):
        plain.show("shared", owner)


def test_every_cas_needs_its_key_hash() -> None:
    # Keyword-only and required: no CAS that takes reads bound to nothing.
    with pytest.raises(TypeError, match="tls_spki_sha256"):
        Cas(None, None, None)  # type: ignore[arg-type,call-arg]


# -- read nonces (docs/cas.md "Reading a policy") ---------------------------------------------


def test_a_request_sent_again_is_refused(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    cas = a.cas.tls_spki_sha256
    for route, read, answered in (("show", a.cas.show, "name"), ("events", a.cas.events_for, "events")):
        doc = read_request(owner, a.cas, cas=cas, route=route)
        assert read(doc)[answered]
        with pytest.raises(errors.AccessDeniedError, match=r"served before .*replay"):
            read(doc)
    doc = read_request(owner, a.cas, cas=cas, route="crl")
    # The crl route spends its nonce before the CA is looked at: a second send is a replay.
    with pytest.raises(errors.PolicyError, match="not a CA the CAS generated"):
        a.cas.crl("shared", "pw", doc)
    with pytest.raises(errors.AccessDeniedError, match="served before"):
        a.cas.crl("shared", "pw", doc)


def test_a_refused_read_spends_its_nonce_too(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    """Whether the signer may read or not, and whether the policy exists or not, the request is
    spent: sending it again (after the reader was added, say) reads nothing."""
    a, _b, _owner = two
    stranger = Identity.generate()
    for name in ("shared", "none"):
        doc = read_request(stranger, a.cas, cas=a.cas.tls_spki_sha256, route="show", name=name)
        with pytest.raises(errors.AccessDeniedError, match="readable by") as first:
            a.cas.show(doc)
        with pytest.raises(errors.AccessDeniedError, match="served before") as again:
            a.cas.show(doc)
        assert str(first.value) != str(again.value)


def test_a_nonce_for_another_route_or_policy_is_refused(
    two: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, _b, owner = two
    cas = a.cas.tls_spki_sha256
    for_show = a.cas.new_read_nonce("shared", "show")
    with pytest.raises(errors.AccessDeniedError, match="read nonce was issued for show, not events"):
        a.cas.events_for(read_request(owner, a.cas, cas=cas, route="events", nonce=for_show))
    with pytest.raises(errors.AccessDeniedError, match="read nonce was issued for show, not crl"):
        a.cas.crl("shared", "pw", read_request(owner, a.cas, cas=cas, route="crl", nonce=for_show))
    a.apply(POLICY.replace("name: shared", "name: other"), owner)
    with pytest.raises(errors.AccessDeniedError, match="not issued by this CAS for policy 'other'"):
        a.cas.show(read_request(owner, a.cas, cas=cas, route="show", name="other", nonce=for_show))
    # None of the refusals spent it: the read it was issued for is served.
    assert a.cas.show(read_request(owner, a.cas, cas=cas, route="show", nonce=for_show))["name"] == "shared"


def test_a_nonce_of_another_cas_or_purpose_or_forged_is_refused(
    two: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, b, owner = two
    cas = a.cas.tls_spki_sha256
    good = a.cas.new_read_nonce("shared", "show")
    forged = good[:-2] + ("00" if good[-2:] != "00" else "01")  # the MAC's last byte changed
    for nonce in (
        b.cas.new_read_nonce("shared", "show"),  # b's master key
        a.cas.new_nonce(),  # an attestation nonce
        forged,
        good[:16] + "03" + good[18:],  # a route byte that names no route
    ):
        with pytest.raises(errors.AccessDeniedError, match="not issued by this CAS for policy 'shared'"):
            a.cas.show(read_request(owner, a.cas, cas=cas, route="show", nonce=nonce))


def test_an_expired_nonce_is_refused(
    two: tuple[InProcessCas, InProcessCas, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b, owner = two
    now = time.time()
    monkeypatch.setattr(a.cas, "clock", lambda: now)
    doc = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show")
    monkeypatch.setattr(a.cas, "clock", lambda: now + NONCE_TTL + 1)
    with pytest.raises(errors.AccessDeniedError, match="read nonce has expired"):
        a.cas.show(doc)
    # Within its time it is served (the refusal spent nothing).
    monkeypatch.setattr(a.cas, "clock", lambda: now + NONCE_TTL - 1)
    assert a.cas.show(doc)["name"] == "shared"


def test_a_nonce_expiring_before_its_spend_is_refused(
    two: tuple[InProcessCas, InProcessCas, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before the write and again in it (the write may wait for the lock)."""
    a, _b, owner = two
    now = time.time()
    monkeypatch.setattr(a.cas, "clock", lambda: now)
    doc = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show")

    def late(job: Any) -> Any:
        monkeypatch.setattr(a.cas, "clock", lambda: now + NONCE_TTL + 1)
        with a.cas.db.write() as conn:
            return job(conn)

    with pytest.raises(errors.AccessDeniedError, match="read nonce has expired"):
        a.cas.show(doc, late)


def test_spent_nonces_are_swept_once_expired(
    two: tuple[InProcessCas, InProcessCas, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b, owner = two
    now = time.time()
    monkeypatch.setattr(a.cas, "clock", lambda: now)
    doc = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show")
    a.cas.show(doc)
    nonce = doc["nonce"]

    def spent() -> bool:
        with a.cas.db.read() as conn:
            return raw_execute(conn, "SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone() is not None

    assert spent()
    # Kept SWEEP_GRACE past its expiry (for a replica's clock behind this one's), then swept.
    monkeypatch.setattr(a.cas, "clock", lambda: now + NONCE_TTL + 2)
    a.cas.show(read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show"))
    assert spent()
    monkeypatch.setattr(a.cas, "clock", lambda: now + NONCE_TTL + SWEEP_GRACE + 4)
    a.cas.show(read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show"))  # sweeps
    assert not spent()
    # Its row gone, the request is still refused: by its nonce's MAC'd expiry.
    with pytest.raises(errors.AccessDeniedError, match="read nonce has expired"):
        a.cas.show(doc)


def test_a_version_2_request_is_refused_with_a_message_to_upgrade(
    two: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, _b, owner = two
    old = {"type": READ_V2_TYPE, "name": "shared", "time": int(time.time()), "cas": a.cas.tls_spki_sha256,
           "route": "show"}  # fmt: skip
    doc = sign_document(old, owner.sign, owner.public.public_base64)
    for read in (a.cas.show, a.cas.events_for, lambda d: a.cas.crl("shared", "pw", d)):
        with pytest.raises(errors.ParseError, match=r"carries no nonce .* upgrade the client") as refused:
            read(doc)
        assert refused.value.exit_code == errors.ParseError.exit_code


@pytest.mark.parametrize(
    "name, route",
    [(None, "show"), ("", "show"), (7, "show"), ("x", "all"), ("x", None), ("x" * 2000, "show"),
     ("a//b", "show"), ("a b", "show"), ("\udc80", "show")],
)  # fmt: skip
def test_a_nonce_is_issued_only_for_a_name_and_route(
    two: tuple[InProcessCas, InProcessCas, Identity], name: Any, route: Any
) -> None:
    with pytest.raises(errors.ParseError, match=r"expected name .* and route"):
        two[0].cas.new_read_nonce(name, route)
