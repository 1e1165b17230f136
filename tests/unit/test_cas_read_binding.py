"""A signed read request (``confide/read/v2``, docs/cas.md "Policies and governance") is for one
CAS, named by the SHA-256 of its TLS certificate's SubjectPublicKeyInfo (``cas``), and for one
route (``show``, ``events`` or ``crl``): one captured where it was sent cannot be replayed at
another CAS the signer reads, nor for another of the answers. A request without them (the old
format) is malformed."""

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
from confide.cas.core import READ_TYPE, Cas, sign_document, spki_sha256
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


def read_request(who: Identity, **fields: Any) -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": "shared", "time": int(time.time()), **fields}
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
    assert a.cas.show(read_request(owner, cas=cas, route="show"))["name"] == "shared"
    assert a.cas.events_for(read_request(owner, cas=cas, route="events"))["events"]


def test_a_request_for_another_cas_is_refused_like_a_missing_policy(
    two: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, b, owner = two
    assert a.cas.tls_spki_sha256 != b.cas.tls_spki_sha256
    for_a = read_request(owner, cas=a.cas.tls_spki_sha256, route="show")
    assert a.cas.show(for_a)["name"] == "shared"
    # The same request replayed at b, where the signer reads a policy of the same name.
    with pytest.raises(errors.AccessDeniedError, match="another CAS") as replayed:
        b.cas.show(for_a)
    missing = read_request(owner, cas=a.cas.tls_spki_sha256, route="show", name="none")
    with pytest.raises(errors.AccessDeniedError) as refused:
        b.cas.show(missing)
    assert str(replayed.value) == str(refused.value)  # whether the policy exists or not
    with pytest.raises(errors.AccessDeniedError, match="another CAS"):
        b.cas.events_for(read_request(owner, cas=a.cas.tls_spki_sha256, route="events"))
    with pytest.raises(errors.AccessDeniedError, match="another CAS"):
        a.cas.show(read_request(owner, cas="00" * 32, route="show"))


def test_a_request_for_another_route_is_refused(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    cas = a.cas.tls_spki_sha256
    with pytest.raises(errors.AccessDeniedError, match="read request is for show, not events"):
        a.cas.events_for(read_request(owner, cas=cas, route="show"))
    with pytest.raises(errors.AccessDeniedError, match="read request is for events, not show"):
        a.cas.show(read_request(owner, cas=cas, route="events"))
    with pytest.raises(errors.AccessDeniedError, match="read request is for show, not crl"):
        a.cas.crl("shared", "pw", read_request(owner, cas=cas, route="show"))


@pytest.mark.parametrize(
    "fields",
    [
        {"cas": None, "route": "show"},  # the old format: no CAS
        {"route": None},  # no route
        {"cas": None, "route": None},
        {"cas": 7, "route": "show"},
        {"route": "everything"},
        {"route": ["show"]},
    ],
)
def test_a_request_missing_its_binding_is_malformed(
    two: tuple[InProcessCas, InProcessCas, Identity], fields: dict[str, Any]
) -> None:
    a, _b, owner = two
    doc = read_request(owner, **{"cas": a.cas.tls_spki_sha256, **fields})
    with pytest.raises(errors.ParseError, match="name, time, cas and route"):
        a.cas.show(doc)


def test_a_version_1_request_is_refused(two: tuple[InProcessCas, InProcessCas, Identity]) -> None:
    a, _b, owner = two
    old = {"type": "confide/read/v1", "name": "shared", "time": int(time.time())}
    with pytest.raises(errors.ParseError, match="expected 'confide/read/v2'"):
        a.cas.show(sign_document(old, owner.sign, owner.public.public_base64))


def test_the_client_signs_for_the_certificate_it_trusts(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path / "cas", "")
    cert = tmp_path / "cas" / "cas-cert.pem"
    owner = Identity.generate()
    for trusted in (cert, cert.read_bytes()):  # a file (CONFIDE_CAS_CERT) or pinned PEM bytes
        with CasClient("https://127.0.0.1:1", trusted) as client:
            header = client._read_header("shared", owner, "events")
        doc = json.loads(base64.b64decode(header["X-Confide-Read"]))
        assert doc["cas"] == ipc.cas.tls_spki_sha256 and doc["route"] == "events"
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
