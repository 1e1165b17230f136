"""``$$SCONE::name$$`` entries in ``access_policy`` (sconedocs "Governance", Access Control: the
entry stands for the value of the secret "at permission evaluation time"; docs/policy.md
"access_policy"): the entry names the identity whose Ed25519 key is the secret's public key (a
public-key, private-key, x509 or x509-ca secret, the policy's own or imported), resolved by the
CAS from the version in force when it decides read, update and create_sessions and when it
counts a board; an entry that could name no one is refused at load or apply time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cas_inproc import InProcessCas
from confide import errors
from confide.cas.core import APPROVAL_TYPE, READ_TYPE, sign_document
from confide.cas.db import raw_execute
from confide.identity import Identity
from confide.policy import is_authorized, loads_policy
from confide.policy.access import placeholder_names, resolve_rules


def pem(who: Identity) -> str:
    """``who``'s public key as a PEM SubjectPublicKeyInfo (a public-key secret's value)."""
    key = Ed25519PublicKey.from_public_bytes(who.public.public_raw)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def text(
    name: str, access: dict[str, Any], secrets: list[dict[str, Any]], predecessor: str | None = None
) -> str:
    """A policy as JSON (valid YAML; PEM values need no indentation care)."""
    doc: dict[str, Any] = {"name": name, "version": "0.3", "access_policy": access, "secrets": secrets}
    if predecessor:
        doc["predecessor"] = predecessor
    return json.dumps(doc)


def key(name: str, who: Identity) -> dict[str, Any]:
    return {"name": name, "kind": "public-key", "value": pem(who)}


def head(cas: InProcessCas, name: str) -> str:
    with cas.cas.db.read() as conn:
        row = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()
    return str(row[0])


def approve(cas: InProcessCas, name: str, digest: str, who: Identity) -> str:
    body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": cas.cas.tls_spki_sha256}
    return str(cas.cas.approve(sign_document(body, who.sign, who.public.public_base64)).state)


def show(cas: InProcessCas, name: str, who: Identity) -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": name, "nonce": cas.cas.new_read_nonce(name, "show"),
            "cas": cas.cas.tls_spki_sha256, "route": "show"}  # fmt: skip
    return cas.cas.show(sign_document(body, who.sign, who.public.public_base64))


def may_read(cas: InProcessCas, name: str, who: Identity) -> bool:
    try:
        return show(cas, name, who)["name"] == name
    except errors.AccessDeniedError:
        return False


@pytest.fixture
def cas(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path, "")


# -- decisions ---------------------------------------------------------------------------------


def test_read_and_update_through_a_public_key_secret(cas: InProcessCas) -> None:
    owner, auditor, deployer, stranger = (Identity.generate() for _ in range(4))
    access = {"read": ["CREATOR", "$$SCONE::auditor$$"], "update": [{"signer": "$$SCONE::deployer$$"}]}
    secrets = [key("auditor", auditor), key("deployer", deployer)]
    assert cas.apply(text("p", access, secrets), owner).state == "active"
    assert may_read(cas, "p", auditor) and may_read(cas, "p", owner)
    assert not may_read(cas, "p", stranger) and not may_read(cas, "p", deployer)
    # The deployer's key, named through the secret, updates alone; the owner is not on the list.
    update = text("p", access, [*secrets, {"name": "x", "kind": "ascii"}], head(cas, "p"))
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy p "):
        cas.apply(update, owner)
    assert cas.apply(update, deployer).state == "active"


def test_board_members_named_by_secrets_count_once_each(cas: InProcessCas) -> None:
    owner, a, b, c = (Identity.generate() for _ in range(4))
    # a is named twice (by a secret and by its fingerprint): one signature, one vote.
    board = {"require-at-least-2": ["$$SCONE::a$$", {"signer": a.fingerprint}, "$$SCONE::b$$"]}
    secrets = [key("a", a), key("b", b)]
    cas.apply(text("gov", {"update": [board]}, secrets), owner)
    update = text("gov", {"update": [board]}, [*secrets, {"name": "x", "kind": "ascii"}], head(cas, "gov"))
    result = cas.apply(update, a)
    assert result.state == "pending"  # a member (through the secret), and alone not enough
    with pytest.raises(errors.AccessDeniedError, match="on no board that decides it"):
        approve(cas, "gov", result.hash, c)
    assert approve(cas, "gov", result.hash, a) == "pending"
    assert approve(cas, "gov", result.hash, b) == "active"


def test_the_board_is_the_version_in_force_not_the_update_it_judges(cas: InProcessCas) -> None:
    owner, a, b, mallory = (Identity.generate() for _ in range(4))
    board = {"require-all": ["$$SCONE::a$$", "$$SCONE::b$$"]}
    cas.apply(text("gov", {"update": [board]}, [key("a", a), key("b", b)]), owner)
    first = head(cas, "gov")
    # An update that puts mallory's key into secret b: while it is judged, b is still b's key.
    takeover = text("gov", {"update": [board]}, [key("a", a), key("b", mallory)], first)
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy gov "):
        cas.apply(takeover, mallory)
    result = cas.apply(takeover, a)
    assert result.state == "pending"
    with pytest.raises(errors.AccessDeniedError, match="on no board that decides it"):
        approve(cas, "gov", result.hash, mallory)
    assert approve(cas, "gov", result.hash, b) == "active"
    # From now on the version in force names mallory, and b no longer.
    nxt = text("gov", {"update": [board]}, [key("a", a), key("b", mallory), {"name": "x", "kind": "ascii"}],
               head(cas, "gov"))  # fmt: skip
    pending = cas.apply(nxt, a)
    with pytest.raises(errors.AccessDeniedError, match="on no board that decides it"):
        approve(cas, "gov", pending.hash, b)
    assert approve(cas, "gov", pending.hash, mallory) == "active"


def test_create_sessions_through_a_generated_key(cas: InProcessCas) -> None:
    """A private-key the CAS generates (key_type Ed25519) and a certificate for it: the identity
    is the key's, which only what the policy releases it to holds (an automated policy
    checker). Taken here from the CAS's own store to sign with it."""
    owner, stranger = Identity.generate(), Identity.generate()
    secrets = [
        {"name": "checker_key", "kind": "private-key", "key_type": "Ed25519"},
        {"name": "checker", "kind": "x509", "private_key": "checker_key", "common_name": "checker"},
    ]
    access = {"update": ["CREATOR"], "create_sessions": ["$$SCONE::checker$$"]}
    cas.apply(text("ns", access, secrets), owner)
    with cas.cas.db.read() as conn:
        row = cas.cas._latest_secret(conn, "ns", "checker_key")
    assert row is not None
    der = cas.cas._unseal(row).data
    private = serialization.load_der_private_key(der, None)
    assert isinstance(private, Ed25519PrivateKey)
    checker = Identity(private)
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy ns/app "):
        cas.apply(text("ns/app", {}, []), owner)  # create_sessions names the checker only
    with pytest.raises(errors.AccessDeniedError, match="may not create or update policy ns/app "):
        cas.apply(text("ns/app", {}, []), stranger)
    assert cas.apply(text("ns/app", {}, []), checker).state == "active"


def test_imported_key_follows_the_exporter(cas: InProcessCas) -> None:
    keeper, owner, auditor, successor = (Identity.generate() for _ in range(4))
    exported = {**key("auditor", auditor), "export_public": True}
    cas.apply(text("keys", {}, [exported]), keeper)
    imported = [{"name": "aud", "import": {"session": "keys", "secret": "auditor"}}]
    cas.apply(text("app", {"read": ["CREATOR", "$$SCONE::aud$$"]}, imported), owner)
    assert may_read(cas, "app", auditor) and not may_read(cas, "app", successor)
    # The exporter replaces the key: the importer's readers follow its version in force.
    cas.apply(
        text("keys", {}, [{**key("auditor", successor), "export_public": True}], head(cas, "keys")), keeper
    )
    assert may_read(cas, "app", successor) and not may_read(cas, "app", auditor)
    # It stops sharing it: the entry names no one now (fail closed), the creator still reads.
    cas.apply(text("keys", {}, [key("auditor", successor)], head(cas, "keys")), keeper)
    assert not may_read(cas, "app", successor) and may_read(cas, "app", owner)


# -- refused at apply time -----------------------------------------------------------------------


def test_unresolvable_imports_are_refused_at_apply(cas: InProcessCas) -> None:
    keeper, owner = Identity.generate(), Identity.generate()
    token = {"name": "token", "kind": "ascii", "export": [{"session": "app"}]}
    cas.apply(text("keys", {}, [key("private", keeper), token]), keeper)
    for secret, why in (
        (
            "private",
            "no policy keys (at the version the import pins, if it pins one) shares a secret private",
        ),
        ("token", "a secret of kind ascii has no public key"),
        (
            "missing",
            "no policy keys (at the version the import pins, if it pins one) shares a secret missing",
        ),
    ):
        imported = [{"name": "k", "import": {"session": "keys", "secret": secret}}]
        with pytest.raises(
            errors.PolicyError, match=r"access_policy entry \$\$SCONE::k\$\$ names no identity"
        ) as e:
            cas.apply(text("app", {"read": ["$$SCONE::k$$"]}, imported), owner)
        assert why in e.value.message

    # One refusal whether the exporter does not exist, is not at the version the import pins or
    # does not share the secret: a submitter learns nothing of another's policy.
    def refusal(imp: dict[str, Any]) -> str:
        with pytest.raises(errors.PolicyError) as e:
            cas.apply(
                text("app", {"update": [{"signer": "$$SCONE::k$$"}]}, [{"name": "k", "import": imp}]), owner
            )
        return e.value.message.replace(imp["session"], "S")

    cases = [{"session": "nowhere", "secret": "x"}, {"session": "keys", "secret": "x"},
             {"session": "keys", "secret": "private", "session_hash": "0" * 64}]  # fmt: skip
    assert len({refusal(imp).replace("private", "x") for imp in cases}) == 1
    with cas.cas.db.read() as conn:  # nothing was stored
        assert raw_execute(conn, "SELECT count(*) FROM policies WHERE name = 'app'").fetchone()[0] == 0


# -- refused at load time -------------------------------------------------------------------------


def _problem(access: dict[str, Any], secrets: list[dict[str, Any]]) -> str:
    with pytest.raises(errors.PolicyError) as e:
        loads_policy(text("p", access, secrets))
    assert len(e.value.problems) == 1, e.value.problems
    return str(e.value.problems[0])


def test_entries_that_could_name_no_one_are_refused_at_load() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p256_pem = p256.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    small = (
        Ed25519PublicKey.from_public_bytes(b"\x01" + bytes(31))
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    read = {"read": ["$$SCONE::k$$"]}
    assert "got a secret of kind ascii" in _problem(read, [{"name": "k", "kind": "ascii", "value": "x"}])
    assert "got a secret of kind binary" in _problem(read, [{"name": "k", "kind": "binary"}])
    assert "key_type P-256 (the default is P-256), expected key_type: Ed25519" in _problem(
        read, [{"name": "k", "kind": "private-key"}]
    )
    assert "its private_key 'kk': got a private-key secret the CAS generates with key_type P-384" in _problem(
        {"update": [{"signer": "$$SCONE::k$$"}]},
        [{"name": "kk", "kind": "private-key", "key_type": "P-384"}, {"name": "k", "kind": "x509-ca",
                                                                     "private_key": "kk"}],
    )  # fmt: skip
    assert "its value: got a secp256r1 EC key, expected an Ed25519 key" in _problem(
        read, [{"name": "k", "kind": "public-key", "value": p256_pem}]
    )
    assert "its value: got an Ed25519 key of small order" in _problem(
        read, [{"name": "k", "kind": "public-key", "value": small}]
    )
    assert "certificate issued to the runtime" in _problem(
        read,
        [{"name": "ca_key", "kind": "private-key", "key_type": "Ed25519"},
         {"name": "ca", "kind": "x509-ca", "private_key": "ca_key"},
         {"name": "k", "kind": "x509", "issuer": "ca", "issue_to_runtime": True}],
    )  # fmt: skip
    assert "expected the entry to be exactly one $$SCONE::name$$" in _problem(
        {"read": ["CREATOR", "x$$SCONE::k$$"]}, [{"name": "k", "kind": "private-key", "key_type": "Ed25519"}]
    )
    assert "expected no format suffix" in _problem(
        {"read": ["$$SCONE::k:pem$$"]}, [{"name": "k", "kind": "private-key", "key_type": "Ed25519"}]
    )
    # Where: the entry's position in the file (a board member's, through its nesting).
    where = _problem({"update": [{"require-all": ["CREATOR", {"signer": "$$SCONE::k$$"}]}]},
                     [{"name": "k", "kind": "ascii"}])  # fmt: skip
    assert where.startswith("<policy>:1:") and "access_policy.update[0].require-all[1].signer" in where


def test_suitable_entries_load_and_stored_versions_keep_loading() -> None:
    who = Identity.generate()
    cert_key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "member")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(cert_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(cert_key, None)
    )  # fmt: skip
    secrets = [
        key("pub", who),
        {"name": "gen", "kind": "private-key", "key_type": "Ed25519"},
        {"name": "crt", "kind": "x509", "value": cert.public_bytes(serialization.Encoding.PEM).decode()},
        {"name": "imp", "import": {"session": "elsewhere", "secret": "k"}},  # checked when applied
    ]
    access = {"read": ["$$SCONE::pub$$", "$$SCONE::crt$$"],
              "update": [{"require-at-least-2": ["$$SCONE::gen$$", {"signer": "$$SCONE::imp$$"}, "CREATOR"]}]}  # fmt: skip
    policy = loads_policy(text("p", access, secrets))
    ap = policy.access_policy
    assert placeholder_names((*ap.read, *ap.update)) == ["pub", "crt", "gen", "imp"]
    # An entry that was accepted before and names no one still loads from the store.
    old = text("p", {"read": ["$$SCONE::t$$"]}, [{"name": "t", "kind": "ascii"}])
    with pytest.raises(errors.PolicyError):
        loads_policy(old)
    assert loads_policy(old, stored=True).access_policy.read == ("$$SCONE::t$$",)


def test_resolve_rules_substitutes_at_every_depth() -> None:
    ap = loads_policy(
        text("p", {"update": [{"require-all": [{"require-at-least-1": ["$$SCONE::a$$", {"signer": "$$SCONE::b$$"}]},
                                               "$$SCONE::a$$"]}]},
             [{"name": "a", "kind": "private-key", "key_type": "Ed25519"},
              {"name": "b", "kind": "private-key", "key_type": "Ed25519"}])
    ).access_policy  # fmt: skip
    resolved = resolve_rules(ap.update, {"a": "fa", "b": "fb"}.get)
    assert is_authorized(resolved, {"fa"}, creator=None)
    assert not is_authorized(resolved, {"fb"}, creator=None)
    assert not is_authorized(ap.update, {"fa", "fb"}, creator=None)  # unresolved: no one
    unresolved = resolve_rules(ap.update, {"b": "fb"}.get)  # a names no one
    assert not is_authorized(unresolved, {"fa", "fb", "$$SCONE::a$$"}, creator=None)


# -- a certificate whose key cryptography cannot load --------------------------------------------


def _certificate_of_an_unknown_key_type() -> str:
    """A self-signed certificate (PEM) whose subject key's algorithm is an OID no library knows
    (1.3.101.127 in place of Ed25519's 1.3.101.112): it loads as a certificate, but its
    ``public_key()`` raises ``UnsupportedAlgorithm``, which is not a ``ValueError``."""
    signer = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "odd")])
    at = datetime(2026, 1, 1, tzinfo=UTC)
    der = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(signer.public_key())
        .serial_number(1).not_valid_before(at).not_valid_after(at + timedelta(days=3650))
        .sign(signer, None).public_bytes(serialization.Encoding.DER)
    )  # fmt: skip
    ed25519_oid = bytes.fromhex("06032b6570")  # signature algorithm, subject key, signature algorithm
    first = der.index(ed25519_oid)
    second = der.index(ed25519_oid, first + 1)
    edited = der[:second] + bytes.fromhex("06032b657f") + der[second + len(ed25519_oid) :]
    cert = x509.load_der_x509_certificate(edited)
    assert cert.subject == name
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_of_an_unknown_key_type_names_no_identity_at_load() -> None:
    odd = _certificate_of_an_unknown_key_type()
    problem = _problem({"read": ["$$SCONE::c$$"]}, [{"name": "c", "kind": "x509", "value": odd}])
    assert (
        "access_policy.read[0]" in problem and "a certificate whose key is of an unsupported type" in problem
    )
