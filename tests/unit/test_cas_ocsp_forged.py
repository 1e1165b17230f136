"""The OCSP responder's ``good`` rests on authenticated data only (docs/cas.md "OCSP", "What
``good`` rests on"): rows forged or edited in the database by someone without the master key
(a certificate-like public part, a runtime certificate record, a CA row showing another key)
never make it answer ``good`` for a serial the CA never signed. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from test_cas_ocsp import OCSP, ask, ca_id, checked, request

from confide.cas.crl import DEFAULT_CRL_VALIDITY
from confide.cas.db import SCHEMA_VERSION, raw_execute
from confide.cas.ocsp_responder import OcspResponder
from confide.cas.renewal import renew_due
from crl_env import Env, check_signed_by_ca, number, policy, started

S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    with started(tmp_path / "cas", db_url=db_url, text=policy(ca_extra=OCSP, runtime="rt.local")) as out:
        yield out


def forged(
    ca: x509.Certificate, serial: int, *, key: ec.EllipticCurvePrivateKey | None = None
) -> x509.Certificate:
    """A certificate that names ``ca`` as issuer (its subject, its key identifier as
    authorityKeyIdentifier) with ``serial``, signed by another key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    start = ca.not_valid_before_utc
    return (
        x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=forged.local"))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(start).not_valid_after(start + timedelta(days=60))
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def public_of(cert: x509.Certificate) -> str:
    return json.dumps({"certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                       "serial": format(cert.serial_number, "x")})  # fmt: skip


def refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        json.loads(r.getMessage()) for r in caplog.records if "ocsp-certificate-refused" in r.getMessage()
    ]


def test_forged_rows_are_not_good(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A secret row whose public part shows a certificate under the CA's name and key
    identifier that the CA's key did not sign, a genuine row's public part replaced by one, and
    runtime certificate records (forged, or from before schema 12 without the certificate):
    ``unknown`` (warning ``ocsp-certificate-refused`` for the forged signatures); genuine ones
    next to them stay ``good``."""
    ca, leaf = env.ca_cert(), env.certificate()
    assert checked(env, ask(env, request(leaf, ca)), leaf.serial_number).certificate_status == C.GOOD
    files = env.release()
    rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    new_row, edited, runtime, legacy = (forged(ca, s) for s in (0x5EED01, 0x5EED02, 0x5EED03, 0x5EED04))
    with env.cas.db.write() as conn:
        sealed = env.cas._latest_secret(conn, "tls", "srv")
        assert sealed is not None
        raw_execute(conn, "INSERT INTO secrets (policy, name, version, kind, sealed, public, created_at) "
                    "VALUES ('tls', 'forged', 1, 'x509', ?, ?, 0)", (sealed.sealed, public_of(new_row)))  # fmt: skip
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = 'srv' AND version = ?",
                    (public_of(edited), sealed.version))  # fmt: skip
        for cert, der in ((runtime, runtime.public_bytes(serialization.Encoding.DER)), (legacy, None)):
            raw_execute(
                conn,
                "INSERT INTO runtime_certificates (policy, issuer_key_id, serial, name, service, session_sha256, "
                "ca_policy, ca_name, ca_version, issued_at, not_after, certificate_sha256, der) "
                "VALUES ('tls', ?, ?, 'rt', 'svc', ?, 'tls', 'ca', 1, 0, ?, ?, ?)",
                (key_id, format(cert.serial_number, "x"), "0" * 64, cert.not_valid_after_utc.timestamp(),
                 "0" * 64, der),
            )  # fmt: skip
    responder = OcspResponder.of(env.cas)
    with caplog.at_level("WARNING", logger="confide.cas"):
        for cert in (new_row, edited, runtime, legacy):
            answer = checked(env, ask(env, request(cert, ca)), cert.serial_number)
            assert answer.certificate_status == C.UNKNOWN, cert.serial_number
    assert {(r["name"], r["serial"]) for r in refusals(caplog)} == {
        ("forged", "5eed01"),
        ("srv", "5eed02"),
        ("rt", "5eed03"),
    }
    assert responder.refused_certificates == 3
    # The genuine runtime certificate next to the forged record is good; the edited row's own
    # serial is unknown once its cached answer (signed while it was genuine) is not used (a
    # nonce): its certificate is no longer shown.
    assert checked(env, ask(env, request(rt, ca)), rt.serial_number).certificate_status == C.GOOD
    assert ask(env, request(leaf, ca)).certificate_status == C.GOOD  # cached (same CRL number)
    assert ask(env, request(leaf, ca, nonce=b"x" * 8)).certificate_status == C.UNKNOWN
    # A refusal is remembered: asked again (another CertID hash, not cached), no second warning.
    caplog.clear()
    with caplog.at_level("WARNING", logger="confide.cas"):
        again = ask(env, request(new_row, ca, algorithm=hashes.SHA256()))
    assert again.certificate_status == C.UNKNOWN and refusals(caplog) == []


def test_a_ca_row_showing_another_key_gets_try_later(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The CA row's public part replaced by a certificate with the CA's subject and key
    identifier but another key (the id of the URL stays the same): CertIDs about the genuine CA
    name no issuer served (``unauthorized``); CertIDs computed from the shown certificate, for
    a leaf that key signed, are not answered at all (``tryLater``, warning ``ocsp-ca-refused``):
    the responder's signer was authenticated under the CA's real key."""
    ca, leaf = env.ca_cert(), env.certificate()
    assert ask(env, request(leaf, ca)).certificate_status == C.GOOD  # the responder loaded
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    fake_ca = (
        x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(ca.serial_number).not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc).add_extension(ski, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    fake_leaf = forged(fake_ca, 0xBAD, key=key)
    with env.cas.db.write() as conn:
        row = env.cas._latest_secret(conn, "tls", "ca")
        assert row is not None
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = 'ca' AND version = ?",
                    (public_of(fake_ca), row.version))  # fmt: skip
        raw_execute(conn, "INSERT INTO secrets (policy, name, version, kind, sealed, public, created_at) "
                    "VALUES ('tls', 'forged', 1, 'x509', ?, ?, 0)", (row.sealed, public_of(fake_leaf)))  # fmt: skip
    assert ca_id(fake_ca) == ca_id(ca)
    assert ask(env, request(leaf, ca, nonce=b"n" * 8)).response_status == S.UNAUTHORIZED
    with caplog.at_level("WARNING", logger="confide.cas"):
        # The CRL row is the CA's, signed by its real key: not the shown certificate's.
        assert ask(env, request(fake_leaf, fake_ca)).response_status == S.TRY_LATER
        # A CRL signed by the shown key, with a far higher number: the signer was authenticated
        # under the real key, so the shown one is refused (and its CRL number not remembered).
        current = env.crl()
        crl = (
            x509.CertificateRevocationListBuilder().issuer_name(fake_ca.subject)
            .last_update(current.last_update_utc).next_update(current.next_update_utc + timedelta(days=300))
            .add_extension(x509.CRLNumber(number(current) + 10**6), critical=False).sign(key, hashes.SHA256())
        )  # fmt: skip
        with env.cas.db.write() as conn:
            raw_execute(conn, "UPDATE crls SET der = ? WHERE policy = 'tls' AND ca = 'ca'",
                        (crl.public_bytes(serialization.Encoding.DER),))  # fmt: skip
        assert ask(env, request(fake_leaf, fake_ca)).response_status == S.TRY_LATER
    warned = [json.loads(r.getMessage()) for r in caplog.records if "-refused" in r.getMessage()]
    assert warned == [
        {"event": "ocsp-crl-refused", "policy": "tls", "name": "ca", "check": "signature"},
        {"event": "ocsp-ca-refused", "policy": "tls", "name": "ca", "version": 1, "check": "key"},
    ]
    # The rows put back: answered again, the real CRL not taken for a rollback.
    with env.cas.db.write() as conn:
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = 'ca' AND version = ?",
                    (row.public, row.version))  # fmt: skip
        raw_execute(conn, "UPDATE crls SET der = ? WHERE policy = 'tls' AND ca = 'ca'",
                    (current.public_bytes(serialization.Encoding.DER),))  # fmt: skip
    assert ask(env, request(leaf, ca, nonce=b"o" * 8)).certificate_status == C.GOOD


def test_revoked_stays_revoked_while_its_crl_is_current(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A revocation's row deleted (or its serial edited): the CA's current CRL, signed, still
    lists it, so the answer stays ``revoked`` with the CRL's time and reason. A CRL row written
    back to an earlier CRL (the CA's own, signed, from before the revocation) is refused
    (``tryLater``, ``ocsp-crl-refused`` ``rollback``) by a responder that verified the newer one."""
    ca, leaf = env.ca_cert(), env.certificate()
    columns = "number, ca_version, entries_sha256, this_update, next_update, der"
    with env.cas.db.read() as conn:
        before = raw_execute(
            conn, f"SELECT {columns} FROM crls WHERE policy = 'tls' AND ca = 'ca'"
        ).fetchone()
    env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="keyCompromise"))
    revoked = ask(env, request(leaf, ca))
    assert revoked.certificate_status == C.REVOKED
    with env.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM revoked_certificates WHERE policy = 'tls'")
    again = ask(env, request(leaf, ca, nonce=b"r" * 8))
    assert again.certificate_status == C.REVOKED
    assert again.revocation_reason == x509.ReasonFlags.key_compromise
    assert again.revocation_time_utc == revoked.revocation_time_utc
    with env.cas.db.write() as conn:  # the DER alone: the row's other columns find the current CRL
        raw_execute(conn, "UPDATE crls SET der = ? WHERE policy = 'tls' AND ca = 'ca'", (bytes(before[5]),))
    assert ask(env, request(leaf, ca, nonce=b"t" * 8)).certificate_status == C.REVOKED
    with env.cas.db.write() as conn:  # the whole row
        raw_execute(conn, "UPDATE crls SET number = ?, ca_version = ?, entries_sha256 = ?, this_update = ?, "
                    "next_update = ?, der = ? WHERE policy = 'tls' AND ca = 'ca'", tuple(before))  # fmt: skip
    with caplog.at_level("WARNING", logger="confide.cas"):
        assert ask(env, request(leaf, ca, nonce=b"s" * 8)).response_status == S.TRY_LATER
    warned = [json.loads(r.getMessage()) for r in caplog.records if "ocsp-crl-refused" in r.getMessage()]
    assert warned == [{"event": "ocsp-crl-refused", "policy": "tls", "name": "ca", "check": "rollback"}]


def test_schema_12_adds_the_runtime_certificate_column(env: Env) -> None:
    """A database of schema 11 (no ``runtime_certificates.der``) is migrated: the column is
    added, the rows recorded before keep it NULL and their serials are ``unknown``, the next
    release records the certificate and it is ``good``."""
    ca = env.ca_cert()
    files = env.release()
    before = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    with env.cas.db.write() as conn:
        raw_execute(conn, "ALTER TABLE runtime_certificates DROP COLUMN der")
        raw_execute(conn, "UPDATE meta SET value = '11' WHERE key = 'schema_version'")
    assert env.cas.db.migrate() == SCHEMA_VERSION
    assert ask(env, request(before, ca, nonce=b"m" * 8)).certificate_status == C.UNKNOWN
    files = env.release()
    after = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    assert checked(env, ask(env, request(after, ca)), after.serial_number).certificate_status == C.GOOD


def test_a_ca_row_showing_another_key_identifier_does_not_empty_the_next_crl(env: Env) -> None:
    """The next CRL lists the revocations of the key that signs it (the CA's sealed
    certificate's key identifier), not of the identifier its row's public part shows: a public
    part edited to another subjectKeyIdentifier does not make it leave them out."""
    ca, leaf = env.ca_cert(), env.certificate()
    env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="keyCompromise"))
    before = env.crl()
    key = ec.generate_private_key(ec.SECP256R1())
    shown = (
        x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject).public_key(ca.public_key())
        .serial_number(ca.serial_number).not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(x509.SubjectKeyIdentifier(b"\x01" * 20), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    with env.cas.db.write() as conn:
        raw_execute(conn, "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = 'ca'",
                    (json.dumps({**env.versions("ca")[-1][1], "certificate": shown.public_bytes(serialization.Encoding.PEM).decode()}),))  # fmt: skip
    env.clock.now += DEFAULT_CRL_VALIDITY / 2 + 60  # the CRL is due: the sweep issues the next one
    renew_due(env.cas, ["tls"])
    after = env.crl()
    assert number(after) == number(before) + 1
    check_signed_by_ca(after, ca)
    assert after.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
