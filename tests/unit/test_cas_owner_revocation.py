"""Certificates issued to runtimes and owners' revocations (confide.cas.owner_revocation,
confide.cas.crl; docs/cas.md "Revocation"): the real in-process CAS on SQLite and on PostgreSQL
(a throwaway cluster), with an injected clock; CRLs parsed with ``cryptography``. The CLI against
a CAS process: tests/integration/test_cas_crl_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parents[1]))
from asgi_call import call
from cas_inproc import submission
from confide.cas import cli
from confide.cas.app import create_app
from confide.cas.core import APPROVAL_TYPE, decrypt_release, sign_document
from confide.cas.crl import REASONS
from confide.cas.db import SCHEMA_VERSION, Database, raw_connection, raw_execute
from confide.errors import AccessDeniedError, ConflictError, ParseError, PolicyError
from confide.identity import Identity
from confide.ledger.encoding import EntryType
from confide.ledger.store import Ledger
from crl_env import FILES, T0, TWO_LEVEL, Env, check_signed_by_ca, number, policy, revoked, started

RT = "rt.local"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """Policy ``tls`` with a CA, a leaf ``srv`` and a runtime certificate ``rt``, on either database."""
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    with started(tmp_path / "cas", db_url, policy(runtime=RT)) as out:
        yield out


def runtime_cert(files: dict[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files[f"{FILES}/rt.pem"])


def recorded(env: Env) -> list[tuple[Any, ...]]:
    with env.cas.db.read() as conn:
        return [
            tuple(r)
            for r in raw_execute(
                conn,
                "SELECT serial, name, service, ca_name, ca_version, not_after, session_sha256, "
                "certificate_sha256 FROM runtime_certificates ORDER BY issued_at, serial",
            ).fetchall()
        ]


def test_each_runtime_certificate_is_recorded_in_its_release_and_dropped_past_its_not_after(env: Env) -> None:
    files = env.release()
    cert = runtime_cert(files)
    ((serial, name, service, ca, ca_version, not_after, session, digest),) = recorded(env)
    assert (int(serial, 16), name, service, ca, ca_version) == (cert.serial_number, "rt", "svc", "ca", 1)
    assert not_after == cert.not_valid_after_utc.timestamp()
    assert digest == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert len(session) == 64
    (release,) = env.events("secret-release", EntryType.SECRET_RELEASED)
    assert {"policy": "tls", "name": "rt", "issued_to_runtime": True, "serial": serial} in release["secrets"]
    # A refused attestation records nothing (a release that did not happen).
    body, _ = env.request(policy="tls", measurement="cd" * 48)
    with pytest.raises(Exception, match="mismatch"):
        env.cas.attest(body)
    assert len(recorded(env)) == 1
    # Past its notAfter the next attestation's sweep drops it; a fresh one is recorded.
    env.clock.now = cert.not_valid_after_utc.timestamp() + 1
    second = runtime_cert(env.release())
    assert [int(r[0], 16) for r in recorded(env)] == [second.serial_number]


def test_a_policy_update_revokes_the_runtime_certificates_of_a_changed_or_removed_declaration(
    env: Env,
) -> None:
    first, second = runtime_cert(env.release()), runtime_cert(env.release())
    env.clock.now = T0 + 60
    env.apply_text(policy(runtime=RT, dns="new.local", predecessor=env.head()))  # rt unchanged
    assert set(revoked(env.crl())) == {env.serial(version=1)}
    env.clock.now = T0 + 120
    env.apply_text(policy(runtime="rt2.local", dns="new.local", predecessor=env.head()))  # rt changed
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    at = datetime.fromtimestamp(T0 + 120, UTC)
    assert (
        revoked(crl)[first.serial_number]
        == revoked(crl)[second.serial_number]
        == (
            x509.ReasonFlags.superseded,
            at,
        )
    )
    third = runtime_cert(env.release())
    expired = runtime_cert(env.release())
    with env.cas.db.write() as conn:  # one that expired before the update is not listed
        raw_execute(conn, "UPDATE runtime_certificates SET not_after = ? WHERE serial = ?",
                    (T0, format(expired.serial_number, "x")))  # fmt: skip
    env.clock.now = T0 + 180
    env.apply_text(policy(dns="new.local", predecessor=env.head()))  # rt removed
    crl = env.crl()
    assert revoked(crl)[third.serial_number][0] is x509.ReasonFlags.cessation_of_operation
    assert expired.serial_number not in revoked(crl)
    events = env.events("certificates-revoked", EntryType.CERTIFICATES_REVOKED)
    runtime = [c for e in events for c in e["certificates"] if c.get("issued_to_runtime")]
    assert {(c["serial"], c["reason"], c["service"]) for c in runtime} == {
        (format(first.serial_number, "x"), "superseded", "svc"),
        (format(second.serial_number, "x"), "superseded", "svc"),
        (format(third.serial_number, "x"), "cessationOfOperation", "svc"),
    }


def test_a_regenerated_issuer_supersedes_the_runtime_certificates_it_signed(env: Env) -> None:
    issued = runtime_cert(env.release())
    env.apply_text(policy(runtime=RT, key_type="P-384", predecessor=env.head()))  # a new CA key
    with env.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT serial, version, reason FROM revoked_certificates ORDER BY serial"
        ).fetchall()
    assert (format(issued.serial_number, "x"), 0, "superseded") in [tuple(r) for r in rows]


def test_the_owner_revokes_a_superseded_version_by_serial_with_its_reason_once(env: Env) -> None:
    env.release()
    first = env.serial()
    env.clock.now = T0 + 21 * 86400  # due: the release renews it (renewal revokes nothing)
    env.release()
    second = env.serial()
    before = number(env.crl())
    env.clock.now += 60
    result = env.cas.revoke_certificates(env.revocation(serial=first, reason="affiliationChanged"))
    assert [c["serial"] for c in result["revoked"]] == [format(first, "x")]
    assert result["reissued"] == [] and result["crls"] == [{"ca": "ca", "number": before + 1}]
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert number(crl) == before + 1
    assert revoked(crl) == {
        first: (x509.ReasonFlags.affiliation_changed, datetime.fromtimestamp(env.clock.now, UTC))
    }
    assert env.serial() == second  # the current version was not touched
    (event,) = env.events("certificates-revoked", EntryType.CERTIFICATES_REVOKED)
    assert event["signer"] == env.owner.fingerprint and event["request"] == {"serial": format(first, "x")}
    assert event["reason"] == "affiliationChanged" and len(event["request_sha256"]) == 64
    assert "certificate" not in json.dumps(event).replace("certificate_sha256", "").replace(
        "certificates", ""
    )
    # Idempotent: a new request for the same serial changes nothing (no CRL, no event).
    again = env.cas.revoke_certificates(env.revocation(serial=first, reason="keyCompromise"))
    assert again["revoked"] == [] and number(env.crl()) == before + 1
    assert revoked(env.crl())[first][0] is x509.ReasonFlags.affiliation_changed  # the first stands
    assert len(env.events("certificates-revoked", EntryType.CERTIFICATES_REVOKED)) == 1


def test_revoking_the_current_version_issues_the_next_one_with_the_same_key(env: Env) -> None:
    files = env.release()
    current = env.serial()
    served = x509.load_pem_x509_certificates(files[f"{FILES}/srv.pem"])[0]
    assert served.serial_number == current
    crl_before = x509.load_pem_x509_crl(files[f"{FILES}/ca.crl"])
    env.clock.now += 30
    result = env.cas.revoke_certificates(env.revocation(serial=current, reason="superseded"))
    assert result["reissued"] == [{"name": "srv", "version": 2, "kind": "x509"}]
    (v1, old), (v2, new) = env.versions("srv")
    assert (v1, v2) == (1, 2) and new["public_key"] == old["public_key"] and new["serial"] != old["serial"]
    # The next release hands out the new certificate and the new CRL, which lists the old one.
    files = env.release()
    served = x509.load_pem_x509_certificates(files[f"{FILES}/srv.pem"])[0]
    assert served.serial_number == int(new["serial"], 16)
    injected = x509.load_pem_x509_crl(files[f"{FILES}/ca.crl"])
    assert injected == env.crl() and number(injected) == number(crl_before) + 1
    assert set(revoked(injected)) == {current}
    assert served.verify_directly_issued_by(env.ca_cert()) is None
    generated = env.events("secrets-generated", EntryType.SECRETS_GENERATED)
    assert generated[-1]["cause"] == "revocation" and generated[-1]["secrets"] == result["reissued"]


def test_key_compromise_replaces_the_key_and_revokes_every_certificate_with_it(env: Env) -> None:
    first = env.serial()
    env.clock.now = T0 + 21 * 86400
    env.release()  # renewed: the same key, a second valid certificate
    second = env.serial()
    env.clock.now += 60
    # The old version's key is the current one's: both are compromised.
    result = env.cas.revoke_certificates(env.revocation(serial=first, reason="keyCompromise"))
    assert result["key_replaced"] is True
    assert {c["serial"] for c in result["revoked"]} == {format(first, "x"), format(second, "x")}
    assert {c["name"] for c in result["reissued"]} == {"srv_key", "srv"}
    crl = env.crl()
    assert {s: r for s, (r, _) in revoked(crl).items()} == {
        first: x509.ReasonFlags.key_compromise,
        second: x509.ReasonFlags.key_compromise,
    }
    (_, old), *_, (_, new) = env.versions("srv")
    assert new["public_key"] != old["public_key"]
    key = serialization.load_pem_public_key(new["public_key"].encode())
    served = x509.load_pem_x509_certificates(env.release()[f"{FILES}/srv.pem"])[0]
    assert served.public_key() == key and served.serial_number not in revoked(env.crl())


def test_unspecified_is_listed_without_a_reason_code(env: Env) -> None:
    serial = env.serial()
    env.cas.revoke_certificates(env.revocation(serial=serial, reason="unspecified"))
    (entry,) = list(env.crl())
    assert entry.serial_number == serial
    with pytest.raises(x509.ExtensionNotFound):  # RFC 5280 §5.3.1
        entry.extensions.get_extension_for_class(x509.CRLReason)


def test_the_owner_revokes_runtime_certificates_by_serial_or_all_valid(env: Env) -> None:
    one, two, three = (runtime_cert(env.release()) for _ in range(3))
    result = env.cas.revoke_certificates(
        env.revocation("rt", serial=one.serial_number, reason="keyCompromise")
    )
    (entry,) = result["revoked"]
    assert entry["issued_to_runtime"] is True and entry["service"] == "svc" and entry["version"] == 0
    assert result["reissued"] == [] and "key_not_replaced" not in result
    assert revoked(env.crl())[one.serial_number][0] is x509.ReasonFlags.key_compromise
    env.clock.now += 10
    result = env.cas.revoke_certificates(env.revocation("rt", reason="privilegeWithdrawn"))
    assert {int(c["serial"], 16) for c in result["revoked"]} == {two.serial_number, three.serial_number}
    crl = env.crl()
    assert {s: r for s, (r, _) in revoked(crl).items()} == {
        one.serial_number: x509.ReasonFlags.key_compromise,
        two.serial_number: x509.ReasonFlags.privilege_withdrawn,
        three.serial_number: x509.ReasonFlags.privilege_withdrawn,
    }
    fresh = runtime_cert(env.release())  # the next release issues a fresh one, not revoked
    assert fresh.serial_number not in revoked(env.crl())


def test_a_serial_of_another_ca_or_secret_and_out_of_scope_secrets_are_refused(env: Env) -> None:
    env.apply_text(policy(name="other"))
    theirs = int(env.versions("srv", "other")[-1][1]["serial"], 16)
    rt = runtime_cert(env.release())
    cases = [
        (env.revocation(serial=theirs), "no valid certificate with serial"),  # another CA's
        (env.revocation(serial=rt.serial_number), "no valid certificate with serial"),  # rt's, not srv's
        (env.revocation("rt", serial=env.serial()), "no valid certificate with serial"),  # srv's, not rt's
        (env.revocation("ca"), "not a certificate under a CA"),  # self-signed: on no CRL
        (env.revocation("ca_key"), "not a certificate under a CA"),
        (env.revocation("nope"), "declares no such secret"),
    ]
    for request, message in cases:
        with pytest.raises(PolicyError, match=message):
            env.cas.revoke_certificates(request)
    assert number(env.crl()) == 1 and number(env.crl("other")) == 1
    expired = env.serial()
    env.clock.now = T0 + 31 * 86400  # srv v1 has expired (renewed meanwhile by no release)
    with pytest.raises(PolicyError, match="no valid certificate"):
        env.cas.revoke_certificates(env.revocation(serial=expired))


def test_who_may_revoke_follows_the_update_rules(env: Env) -> None:
    stranger, member, reader = Identity.generate(), Identity.generate(), Identity.generate()
    refusals, grown = [], []
    for request in (
        env.revocation(who=stranger),
        # No such policy: the same refusal, and recorded too (filed under no policy): the
        # public checkpoint's size grows by one entry either way, so it tells nobody whether
        # the policy exists.
        env.revocation(who=stranger, name="ghost"),
    ):
        with env.cas.db.read() as conn:
            before = Ledger.size(raw_connection(conn))
        with pytest.raises(AccessDeniedError) as err:
            env.cas.revoke_certificates(request)
        with env.cas.db.read() as conn:
            grown.append(Ledger.size(raw_connection(conn)) - before)
        refusals.append(err.value.message.replace("ghost", "tls"))
    assert len(set(refusals)) == 1
    assert grown == [1, 1]
    with env.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT policy, payload FROM events WHERE type = 'revocation-refused' ORDER BY seq"
        ).fetchall()
    assert [(r[0], json.loads(r[1])["signer"]) for r in rows] == [
        ("tls", stranger.fingerprint),
        (None, stranger.fingerprint),
    ]
    assert json.loads(rows[1][1])["name"] == "ghost"
    (entry,) = env.events("revocation-refused", EntryType.POLICY_REFUSED)  # checked against the ledger
    assert entry["secret"] == "srv"
    # An update board: one member alone revokes at once (no approvals); a reader may not.
    board = f"""access_policy:
  read: [CREATOR, {reader.fingerprint}]
  update:
    - require-all: [CREATOR, {member.fingerprint}]
"""
    env.apply_text(policy(runtime=RT, access=board, predecessor=env.head()))
    with pytest.raises(AccessDeniedError):
        env.cas.revoke_certificates(env.revocation(who=reader))
    result = env.cas.revoke_certificates(
        env.revocation(who=member, serial=env.serial(), reason="keyCompromise")
    )
    assert result["revoked"] and result["key_replaced"]
    # An immutable policy (update: NONE): nobody, its creator included.
    text = policy(runtime=RT, access="access_policy:\n  update: NONE\n", predecessor=env.head())
    pending = env.cas.apply(submission(env.cas, text, env.owner))
    assert pending.state == "pending"  # the board's rule still governs updates
    approval = {"type": APPROVAL_TYPE, "name": "tls", "hash": pending.hash, "cas": env.cas.tls_spki_sha256}
    assert (
        env.cas.approve(sign_document(approval, member.sign, member.public.public_base64)).state == "active"
    )
    with pytest.raises(AccessDeniedError):
        env.cas.revoke_certificates(env.revocation())


def test_a_board_member_is_an_identity_of_the_rules_not_a_substring_of_them(env: Env) -> None:
    """Membership (which lets an identity revoke alone, or submit for approval) is an identity
    of the update rules compared whole: the creator is not a member because a secret named in
    the rules contains ``CREATOR``, nor another identity because an entry contains its
    fingerprint. (The entries name the keys the CAS generates for those secrets, which neither
    holds.)"""
    alice, mallory = Identity.generate(), Identity.generate()
    ids = (
        "  - name: CREATOR_id\n    kind: private-key\n    key_type: Ed25519\n"
        f"  - name: id_{mallory.fingerprint}\n    kind: private-key\n    key_type: Ed25519\n"
    )
    rules = (
        f"access_policy:\n  update:\n    - {alice.fingerprint}\n"
        f'    - "$$SCONE::CREATOR_id$$"\n    - "$$SCONE::id_{mallory.fingerprint}$$"\n'
    )
    env.apply_text(policy(runtime=RT, access=rules, ca_extra=ids, predecessor=env.head()))
    for who in (env.owner, mallory):  # the creator, and the fingerprint inside a secret's name
        with pytest.raises(AccessDeniedError):
            env.cas.revoke_certificates(env.revocation(who=who))
        text = policy(runtime=RT, access=rules, ca_extra=ids, dns="x.local", predecessor=env.head())
        with pytest.raises(AccessDeniedError):
            env.cas.apply(submission(env.cas, text, who))
    assert env.cas.revoke_certificates(env.revocation(who=alice))["revoked"]


def test_requests_are_fresh_single_use_and_well_formed(env: Env) -> None:
    request = env.revocation(serial=env.serial())
    env.cas.revoke_certificates(request)
    with pytest.raises(ConflictError, match="replay"):
        env.cas.revoke_certificates(request)
    with pytest.raises(AccessDeniedError, match="from the CAS clock"):
        env.cas.revoke_certificates(env.revocation(at=T0 - 301))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"reason": "certificateHold"}, "expected one of"),  # a hold could be lifted: not offered
        ({"reason": "removeFromCRL"}, "expected one of"),
        ({"serial": "zz"}, "hex digits"),
        ({"serial": "0"}, "hex digits"),
        ({"serial": "a" * 41}, "hex digits"),
        ({"serial": 5}, "hex digits"),
        ({"all_valid": True}, "exactly one of serial and all_valid"),
        ({"serial": None, "all_valid": False}, "all_valid must be true"),
        ({"serial": None}, "exactly one of serial and all_valid"),
        ({"secret": ""}, "non-empty string"),
        ({"time": "now"}, "integer"),
    ]
    for change, message in bad:
        doc = env.revocation(serial=1)
        body = {k: v for k, v in doc.items() if k not in ("signature", "signer")}
        body.update(change)
        signed = sign_document(body, env.owner.sign, env.owner.public.public_base64)
        with pytest.raises(ParseError, match=message):
            env.cas.revoke_certificates(signed)
    tampered = env.revocation(serial=1)
    tampered["serial"] = "2"  # the signature no longer matches
    with pytest.raises(Exception, match="signature"):
        env.cas.revoke_certificates(tampered)


def test_a_release_rendered_before_a_revocation_is_rendered_again_at_commit(env: Env) -> None:
    env.release()  # a snapshot of what phase 1 reads is kept
    body, key = env.request(policy="tls")
    pending = env.cas.attest_begin(body)  # phase 1 rendered the current srv
    revoked_serial = env.serial()
    env.cas.revoke_certificates(env.revocation(serial=revoked_serial))
    with env.cas.db.write() as conn:
        pending.commit(conn)
    # Phase 2 saw the revision move: it rendered again, in its write transaction, so the
    # revoked certificate is not released; the re-issued one is.
    assert pending.rendered_at_commit
    config = decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))
    served = x509.load_pem_x509_certificates(base64.b64decode(config["files"][f"{FILES}/srv.pem"]))[0]
    assert served.serial_number == env.serial() != revoked_serial
    assert served.serial_number not in revoked(env.crl()) and revoked_serial in revoked(env.crl())
    (*_, release) = env.events("secret-release", EntryType.SECRET_RELEASED)
    assert {"policy": "tls", "name": "srv", "version": env.versions()[-1][0]} in release["secrets"]
    files = env.release()  # the next attestation reads afresh and gets the same
    assert x509.load_pem_x509_certificates(files[f"{FILES}/srv.pem"])[0].serial_number == env.serial()


def test_the_cli_offers_the_reasons_the_crl_lists() -> None:
    assert tuple(REASONS) == cli.REVOCATION_REASONS


def test_the_sdk_and_the_web_page_offer_the_reasons_the_crl_lists() -> None:
    from typing import get_args

    from confide.sdk import RevocationReason
    from confide.ui.app import REASONS as UI_REASONS

    assert get_args(RevocationReason) == tuple(REASONS) == UI_REASONS


def test_the_http_route(env: Env) -> None:
    app = create_app(env.cas)
    stranger = Identity.generate()
    status, body = call(
        app, "/v1/policies/tls/revocations", [json.dumps(env.revocation(who=stranger)).encode()]
    )
    assert status == 403 and json.loads(body)["error"]["class"] == "AccessDeniedError"
    status, body = call(app, "/v1/policies/other/revocations", [json.dumps(env.revocation()).encode()])
    assert status == 400 and "another policy" in json.loads(body)["error"]["message"]
    status, body = call(
        app, "/v1/policies/tls/revocations", [json.dumps(env.revocation(reason="keyCompromise")).encode()]
    )
    assert status == 200 and json.loads(body)["key_replaced"] is True
    assert len(env.crl()) == 1


def test_ca_compromise_of_an_intermediate_rekeys_it_and_reissues_its_leaf(env: Env) -> None:
    env.apply_text(TWO_LEVEL)
    old_int = env.versions("int", "pki")[-1][1]["serial"]
    result = env.cas.revoke_certificates(
        env.revocation("int", serial=old_int, reason="cACompromise", name="pki")
    )
    assert result["key_replaced"] is True
    assert {c["name"] for c in result["reissued"]} == {"int_key", "int", "srv"}
    root_crl = env.crl("pki", "root")
    check_signed_by_ca(root_crl, env.ca_cert("pki", "root"))
    assert {s: r for s, (r, _) in revoked(root_crl).items()} == {
        int(old_int, 16): x509.ReasonFlags.ca_compromise
    }
    new_int = env.ca_cert("pki", "int")
    assert int(env.versions("int", "pki")[-1][1]["serial"], 16) == new_int.serial_number != int(old_int, 16)
    leaf = env.certificate("srv", policy="pki")
    assert leaf.verify_directly_issued_by(new_int) is None
    check_signed_by_ca(env.crl("pki", "int"), new_int)  # the new key signs the intermediate's CRL


def test_key_compromise_of_an_explicit_key_revokes_without_reissuing(env: Env) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    declared = "  - name: srv_key\n    kind: private-key\n"
    value = "    value: |\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    env.apply_text(policy(runtime=RT, predecessor=env.head()).replace(declared, declared + value))
    current = env.serial()
    result = env.cas.revoke_certificates(env.revocation(serial=current, reason="keyCompromise"))
    assert result["reissued"] == [] and result["key_not_replaced"] == "srv_key" and not result["key_replaced"]
    assert env.serial() == current and revoked(env.crl())[current][0] is x509.ReasonFlags.key_compromise


def test_schema_5_migrates_a_schema_3_database_on_postgresql(postgres: Any) -> None:
    db = Database(postgres.new_database())
    try:
        assert db.migrate() == SCHEMA_VERSION
        with db.write() as conn:  # back to what a schema-3 CAS left, with a policy head
            raw_execute(conn, "DROP TABLE runtime_certificates")
            raw_execute(conn, "DROP TABLE revocation_requests")
            raw_execute(conn, "ALTER TABLE policy_heads DROP COLUMN revision")
            raw_execute(conn, "DROP INDEX crls_distribution_id")  # schema 6
            raw_execute(conn, "ALTER TABLE crls DROP COLUMN distribution_id")
            raw_execute(
                conn, "INSERT INTO policy_heads (name, hash, creator, updated_at) VALUES ('p', 'h', 'c', 0)"
            )
            raw_execute(conn, "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        assert db.migrate() == SCHEMA_VERSION
        with db.read() as conn:
            assert raw_execute(conn, "SELECT revision FROM policy_heads WHERE name = 'p'").fetchone()[0] == 0
            assert raw_execute(conn, "SELECT COUNT(*) FROM runtime_certificates").fetchone()[0] == 0
            assert raw_execute(conn, "SELECT COUNT(*) FROM revocation_requests").fetchone()[0] == 0
            assert raw_execute(conn, "SELECT COUNT(distribution_id) FROM crls").fetchone()[0] == 0
    finally:
        db.dispose()
