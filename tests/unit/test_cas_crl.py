"""Revocation and CRLs of CAS-generated CAs (confide.cas.crl; docs/cas.md "Revocation"): the real
in-process CAS (SQLite, ledger sink, simulated platform) with an injected clock. PostgreSQL and
the HTTP API, CLI and ``openssl verify -crl_check``: tests/integration/test_cas_crl_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide.cas.app import create_app
from confide.cas.crl import DEFAULT_CRL_VALIDITY, parse_crl_validity
from confide.cas.db import raw_execute
from confide.cas.renewal import CertificateRenewer, due_policies
from confide.cas.secrets import SecretValue, render
from confide.errors import AccessDeniedError, PolicyError, UsageError
from confide.identity import Identity
from confide.ledger.encoding import EntryType
from confide.policy.loader import loads_policy
from confide.policy.placeholders import Encoding
from crl_env import (
    DAY,
    FILES,
    T0,
    TWO_LEVEL,
    Env,
    check_signed_by_ca,
    header,
    number,
    policy,
    revoked,
    started,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with started(tmp_path / "cas") as out:
        yield out


def test_a_generated_ca_has_a_signed_empty_crl_from_the_start(env: Env) -> None:
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert number(crl) == 1 and len(crl) == 0
    assert crl.last_update_utc == datetime.fromtimestamp(T0, UTC)
    assert crl.next_update_utc == datetime.fromtimestamp(T0 + DEFAULT_CRL_VALIDITY, UTC)
    shown = env.cas.show(env.read_request())["secrets"]
    assert shown["ca"]["crl"]["number"] == 1 and "crl" not in shown["srv"]
    assert shown["ca"]["crl"]["next_update"] == crl.next_update_utc.isoformat()
    issued = env.events("crl-issued", EntryType.CRL_ISSUED)
    assert [[c["ca"], c["number"], c["revoked"]] for e in issued for c in e["crls"]] == [["ca", 1, 0]]
    # Another CA's key does not verify it (the negative twin of is_signature_valid).
    env.apply_text(policy(name="other"))
    assert not crl.is_signature_valid(env.ca_cert("other").public_key())


def test_renewal_revokes_nothing_and_an_update_revokes_every_valid_version(env: Env) -> None:
    """A renewal leaves the previous certificate valid (a service still running with it keeps
    working until it attests again); a later policy update that changes the declaration revokes
    every version still valid, the renewed ones included, in its own transaction."""
    env.release()
    first = env.serial()
    before = env.crl()
    env.clock.now = T0 + 21 * DAY  # the leaf (30 days) is due a third of its validity before
    env.release()  # renews it (phase 1 finds it due)
    second = env.serial()
    assert second != first
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert revoked(crl) == {} and number(crl) >= number(before)  # nothing revoked (re-issued when due)
    with env.cas.db.read() as conn:
        types = [r[0] for r in raw_execute(conn, "SELECT type FROM events WHERE policy = 'tls' ORDER BY seq")]
    assert "certificates-renewed" in types and "certificates-revoked" not in types
    # A changed declaration: every version still valid is superseded at once, the renewed
    # first one included (valid until T0 + 30 days), in the update's transaction.
    env.clock.now = T0 + 22 * DAY
    env.apply_text(policy(dns="new.local", predecessor=env.head()))
    third = env.serial()
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    at = datetime.fromtimestamp(T0 + 22 * DAY, UTC)
    assert revoked(crl) == {
        first: (x509.ReasonFlags.superseded, at),
        second: (x509.ReasonFlags.superseded, at),
    }
    assert third not in revoked(crl)
    (event,) = env.events("certificates-revoked", EntryType.CERTIFICATES_REVOKED)
    listed = {(e["name"], e["serial"], e["reason"]) for e in event["certificates"]}
    assert listed == {("srv", format(first, "x"), "superseded"), ("srv", format(second, "x"), "superseded")}
    assert all("certificate_sha256" in e for e in event["certificates"])


def test_a_changed_declaration_supersedes_and_a_removed_secret_ceases(env: Env) -> None:
    first = env.serial()
    env.clock.now = T0 + 60
    env.apply_text(policy(dns="new.local", predecessor=env.head()))  # a new version of srv
    second = env.serial()
    crl = env.crl()
    assert number(crl) == 2
    assert revoked(crl) == {first: (x509.ReasonFlags.superseded, datetime.fromtimestamp(T0 + 60, UTC))}
    env.clock.now = T0 + 120
    env.apply_text(policy(leaf=False, predecessor=env.head()))  # srv removed
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert number(crl) == 3
    assert revoked(crl) == {
        first: (x509.ReasonFlags.superseded, datetime.fromtimestamp(T0 + 60, UTC)),
        second: (x509.ReasonFlags.cessation_of_operation, datetime.fromtimestamp(T0 + 120, UTC)),
    }
    # An update that changes nothing revocable issues no CRL; re-adding srv revokes nothing
    # twice (its previous version was revoked when it was removed).
    env.clock.now = T0 + 180
    env.apply_text(policy(predecessor=env.head()))
    crl = env.crl()
    assert number(crl) == 3 and set(revoked(crl)) == {first, second}


def test_a_secret_re_declared_unchanged_gets_a_new_certificate_not_the_revoked_one(env: Env) -> None:
    """A revocation is final (docs/cas.md "Revocation"): a certificate removed by one update
    (revoked, cessationOfOperation) and declared again, exactly as before, by a later one gets
    a new version; the stored, revoked certificate is never released again."""
    first = env.serial()
    released = env.release()[f"{FILES}/srv.pem"]
    assert env.certificate().public_bytes(serialization.Encoding.PEM) in released
    env.clock.now = T0 + 60
    env.apply_text(policy(leaf=False, predecessor=env.head()))  # srv removed: revoked
    assert set(revoked(env.crl())) == {first}
    env.clock.now = T0 + 120
    env.apply_text(policy(predecessor=env.head()))  # the same declaration as at first
    assert [v for v, _ in env.versions()] == [1, 2]
    second = env.serial()
    assert second != first and second not in revoked(env.crl())
    released = env.release()[f"{FILES}/srv.pem"]
    assert env.certificate().public_bytes(serialization.Encoding.PEM) in released
    assert env.certificate(version=1).public_bytes(serialization.Encoding.PEM) not in released
    # An update that keeps it declared keeps its value (secrets survive updates).
    env.clock.now = T0 + 180
    env.apply_text(policy(access="access_policy:\n  read: [CREATOR]\n", predecessor=env.head()))
    assert [v for v, _ in env.versions()] == [1, 2] and env.serial() == second


def test_an_importer_never_gets_a_certificate_its_exporter_no_longer_holds(env: Env) -> None:
    """An exported certificate that an update turns into one issued to runtimes is revoked
    (superseded) and no longer held by the CAS: an importer's release is refused, and never
    carries the stored, revoked certificate (or its key)."""
    exported = "    valid_for: 30 days\n    export:\n      - session: imp\n"
    env.apply_text(policy(predecessor=env.head()).replace("    valid_for: 30 days\n", exported, 1))
    importer = header("imp") + (
        "secrets:\n  - name: s\n    import:\n      session: tls\n      secret: srv\n"
        f"images:\n  - name: img\n    injection_files:\n      - path: {FILES}/imp.pem\n"
        '        content: "$$SCONE::s:privatekey$$$$SCONE::s:crt$$"\n'
        "security:\n  attestation:\n    tolerate: [simulation]\n"
    )
    env.apply_text(importer)
    first = env.serial()
    pem = env.certificate().public_bytes(serialization.Encoding.PEM)
    assert pem in env.release("imp")[f"{FILES}/imp.pem"]
    env.clock.now = T0 + 60
    runtime = (
        policy(predecessor=env.head())
        .replace("    valid_for: 30 days\n", exported, 1)
        .replace(
            "    private_key: srv_key\n    issuer: ca\n", "    issue_to_runtime: true\n    issuer: ca\n", 1
        )
    )
    env.apply_text(runtime)
    assert first in revoked(env.crl())
    with pytest.raises(PolicyError, match="tls/srv is issued to runtimes"):
        env.release("imp")


def test_a_regenerated_ca_starts_a_new_scope(env: Env) -> None:
    """A changed CA declaration is a new key: its leaf is superseded (recorded under the old
    key), and the new CA's CRL, numbered on, lists nothing of the old key's."""
    first = env.serial()
    env.apply_text(policy(key_type="P-384", predecessor=env.head()))
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert number(crl) == 2 and len(crl) == 0
    with env.cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT serial, reason FROM revoked_certificates").fetchall()
    assert rows == [(format(first, "x"), "superseded")]


def test_the_sweep_refreshes_a_crl_after_half_its_validity(env: Env) -> None:
    half = DEFAULT_CRL_VALIDITY / 2
    env.clock.now = T0 + half - 1
    assert due_policies(env.cas, env.clock.now) == []
    env.clock.now = T0 + half
    assert due_policies(env.cas, env.clock.now) == ["tls"]
    CertificateRenewer(env.cas).sweep_once()
    crl = env.crl()
    assert number(crl) == 2 and crl.last_update_utc == datetime.fromtimestamp(T0 + half, UTC)
    assert due_policies(env.cas, env.clock.now) == []
    # A CA from before revocation existed (no CRL row): the sweep issues its first.
    with env.cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM crls")
    assert due_policies(env.cas, env.clock.now) == ["tls"]
    CertificateRenewer(env.cas).sweep_once()
    assert number(env.crl()) == 1


def test_the_crl_placeholder_injects_the_current_crl(env: Env) -> None:
    files = env.release()
    injected = x509.load_pem_x509_crl(files[f"{FILES}/ca.crl"])
    assert injected == x509.load_der_x509_crl(files[f"{FILES}/ca.crl.der"]) == env.crl()
    check_signed_by_ca(injected, x509.load_pem_x509_certificate(files[f"{FILES}/ca.pem"]))
    # Past half its validity, a release issues the next CRL first (as a due certificate is renewed).
    env.clock.now = T0 + DEFAULT_CRL_VALIDITY / 2 + 1
    files = env.release()
    assert number(x509.load_pem_x509_crl(files[f"{FILES}/ca.crl"])) == 2


def test_crl_format_is_for_cas(env: Env) -> None:
    text = policy().replace("$$SCONE::ca:crl:der$$", "$$SCONE::srv:crl$$")
    with pytest.raises(Exception, match="format 'crl' for a x509 secret"):
        loads_policy(text)


def test_an_explicit_ca_has_no_crl(env: Env) -> None:
    pem = env.ca_cert().public_bytes(serialization.Encoding.PEM).decode()
    value = "    value: |\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    text = policy(leaf=False, name="explicit").replace(
        "    private_key: ca_key\n    common_name: Test CA\n    valid_for: 90 days\n    renew_before: 30 days\n",
        value,
    )
    # ``:crl`` of it is refused when the policy is loaded, not at the release
    with pytest.raises(PolicyError, match="crl format for a CA given as an explicit value"):
        loads_policy(text)
    for placeholder in ("$$SCONE::ca:crl$$", "$$SCONE::ca:crl:der$$"):
        text = text.replace(placeholder, "$$SCONE::ca:crt$$")
    env.apply_text(text)
    with pytest.raises(PolicyError, match="not a CA the CAS generated"):
        env.cas.crl("explicit", "ca", env.read_request("explicit", route="crl"))


def test_who_may_fetch_a_crl(env: Env) -> None:
    stranger = Identity.generate()
    refusals = []
    for name, ca, request in [
        ("tls", "ca", None),  # a reader may; the public may not (the CA is not export_public)
        ("ghost", "ca", None),  # no such policy: the same refusal
        ("tls", "nope", None),  # no such secret: the same refusal
    ]:
        with pytest.raises(AccessDeniedError) as err:
            env.cas.crl(name, ca, request)
        refusals.append(err.value.message.replace(f"{name}/{ca}", "X"))
    assert len(set(refusals)) == 1
    refusals = []
    for name in ("tls", "ghost"):
        with pytest.raises(AccessDeniedError) as err:
            env.cas.crl(name, "ca", env.read_request(name, stranger, route="crl"))
        refusals.append(err.value.message.replace(f"{name}/ca", "X"))
    assert len(set(refusals)) == 1
    with pytest.raises(Exception, match="another policy"):
        env.cas.crl("tls", "ca", env.read_request("other", route="crl"))
    env.crl()  # the owner reads it
    # export_public: the CA's public parts are every policy's, and so is its CRL.
    env.apply_text(policy(ca_extra="    export_public: true", predecessor=env.head()))
    der, next_update, public = env.cas.crl("tls", "ca", None)
    assert public and next_update == T0 + DEFAULT_CRL_VALIDITY
    assert x509.load_der_x509_crl(der).is_signature_valid(env.ca_cert().public_key())


def test_crl_validity_option() -> None:
    assert parse_crl_validity("7 days") == 7 * DAY
    assert parse_crl_validity("90s") == 90
    for bad in ("59s", "367 days", "soon", ""):
        with pytest.raises(UsageError):
            parse_crl_validity(bad)


def test_an_ed25519_ca_signs_its_crl(env: Env) -> None:
    env.apply_text(policy(key_type="Ed25519", predecessor=env.head()))
    crl = env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    assert crl.last_update_utc == datetime.fromtimestamp(T0, UTC)


def _get(
    app: Any, path: str, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI app in process: status, headers, body."""
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "https",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in out if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_the_http_route(env: Env) -> None:
    app = create_app(env.cas)

    def read_header(name: str, route: str = "crl") -> dict[str, str]:
        doc = env.read_request(name, route=route)
        return {"X-Confide-Read": base64.b64encode(json.dumps(doc).encode()).decode()}

    status, headers, body = _get(app, "/v1/policies/tls/crl/ca", headers=read_header("tls"))
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    assert headers["cache-control"] == "private, no-store"
    assert x509.load_der_x509_crl(body) == env.crl()
    status, headers, body = _get(app, "/v1/policies/tls/crl/ca", "format=pem", read_header("tls"))
    assert status == 200 and x509.load_pem_x509_crl(body) == env.crl()
    assert _get(app, "/v1/policies/tls/crl/ca", "format=xml", read_header("tls"))[0] == 400
    status, _, body = _get(app, "/v1/policies/tls/crl/ca")
    assert status == 403 and json.loads(body)["error"]["class"] == "AccessDeniedError"
    # A policy whose name ends in /crl/<secret> is still shown to its readers.
    env.apply_text(policy(name="tls/crl/ca", leaf=False))
    status, _, body = _get(app, "/v1/policies/tls/crl/ca", headers=read_header("tls/crl/ca", "show"))
    assert status == 200 and json.loads(body)["name"] == "tls/crl/ca"
    # export_public: served to anyone, cacheable briefly (a revocation is published at once).
    env.apply_text(policy(ca_extra="    export_public: true", predecessor=env.head()))
    status, headers, body = _get(app, "/v1/policies/tls/crl/ca")
    assert status == 200 and headers["cache-control"] == "public, max-age=300"
    assert x509.load_der_x509_crl(body) == env.crl()


def test_a_template_rendered_at_start_has_no_crl() -> None:
    """The CRL is not part of a secret's value: ``confide run`` cannot render ``:crl`` in a
    path-only template (the CAS renders it in ``content``)."""
    value = SecretValue("x509-ca", b"", b"\x30\x00")
    for encoding in (Encoding.CRL_PEM, Encoding.CRL_DER):
        with pytest.raises(PolicyError, match="injected by the CAS"):
            render(value, encoding)


IMPORTER = f"""{header("client")}secrets:
  - name: their_ca
    import:
      session: tls
      secret: ca
images:
  - name: img
    injection_files:
      - path: {FILES}/their.crl
        content: "$$SCONE::their_ca:crl$$"
security:
  attestation:
    tolerate: [simulation]
"""


def test_an_importer_receives_the_exporters_crl(env: Env) -> None:
    env.apply_text(IMPORTER)
    with pytest.raises(AccessDeniedError, match="does not export"):
        env.release("client")  # not exported: neither the certificate nor its CRL
    env.apply_text(policy(ca_extra="    export_public: true", predecessor=env.head()))
    first = env.serial()
    env.apply_text(policy(ca_extra="    export_public: true", dns="www.local", predecessor=env.head()))
    crl = x509.load_pem_x509_crl(env.release("client")[f"{FILES}/their.crl"])
    assert crl == env.crl() and [e.serial_number for e in crl] == [first]


def test_an_entry_leaves_the_crl_after_one_crl_beyond_the_certificates_validity(env: Env) -> None:
    """RFC 5280 §3.3: listed until it appeared on one scheduled CRL after its notAfter."""
    first = env.serial()  # valid 30 days from T0
    env.clock.now = T0 + 60
    env.apply_text(policy(dns="new.local", predecessor=env.head()))
    assert set(revoked(env.crl())) == {first}
    env.clock.now = T0 + 30 * DAY - 10  # still valid: the scheduled CRL lists it
    CertificateRenewer(env.cas).sweep_once()  # (also renews the second leaf, revoking nothing)
    assert set(revoked(env.crl())) == {first}
    env.clock.now = T0 + 30 * DAY + DEFAULT_CRL_VALIDITY / 2  # the first CRL beyond its validity
    CertificateRenewer(env.cas).sweep_once()
    crl = env.crl()
    assert set(revoked(crl)) == {first}
    assert crl.last_update_utc > datetime.fromtimestamp(T0 + 30 * DAY, UTC)
    before = number(crl)
    third = env.serial()  # valid until T0 + 60 days; the second (renewed) expired at T0 + 30 days
    env.clock.now += 60
    env.apply_text(policy(predecessor=env.head()))  # supersedes the third
    crl = env.crl()  # the next CRL leaves out the expired one, lists the valid one
    assert number(crl) == before + 1 and set(revoked(crl)) == {third}
    check_signed_by_ca(crl, env.ca_cert())


def test_a_changed_intermediate_is_on_its_roots_crl_and_openssl_checks_the_whole_chain(
    env: Env, tmp_path: Path
) -> None:
    env.apply_text(TWO_LEVEL)

    def cert(name: str, version: int) -> x509.Certificate:
        return env.certificate(name, version, policy="pki")

    env.clock.now = T0 + 61 * DAY  # the intermediate's window; its leaf follows (issuer-renewed)
    CertificateRenewer(env.cas).sweep_once()
    assert revoked(env.crl("pki", "root")) == {} and revoked(env.crl("pki", "int")) == {}  # renewal
    # The owner changes the intermediate: every version still valid is superseded (on the
    # root's CRL), and so is every valid leaf it issued (re-issued by the new version).
    env.clock.now = T0 + 62 * DAY
    changed = TWO_LEVEL.replace("valid_for: 90 days", "valid_for: 91 days")  # same key and subject
    env.apply_text(changed.replace('version: "0.3"', f'version: "0.3"\npredecessor: "{env.head("pki")}"'))
    root, int1, int2, int3, srv1, srv2, srv3 = (
        cert("root", 1),
        cert("int", 1),
        cert("int", 2),
        cert("int", 3),
        cert("srv", 1),
        cert("srv", 2),
        cert("srv", 3),
    )
    root_crl = env.crl("pki", "root")
    int_crl = env.crl("pki", "int")
    check_signed_by_ca(root_crl, root)
    check_signed_by_ca(int_crl, int3)
    assert set(revoked(root_crl)) == {int1.serial_number, int2.serial_number}
    assert set(revoked(int_crl)) == {srv1.serial_number, srv2.serial_number}
    srv2, int2 = srv3, int3  # the current pair below; srv1/int1 are superseded ones

    def pem(*items: x509.Certificate | x509.CertificateRevocationList) -> Path:
        path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.pem"
        path.write_bytes(b"".join(i.public_bytes(serialization.Encoding.PEM) for i in items))
        return path

    def verify(leaf: x509.Certificate, intermediate: x509.Certificate) -> subprocess.CompletedProcess[str]:
        at = str(int(env.clock.now))  # the CAS clock, not the machine's
        cmd = ["openssl", "verify", "-attime", at, "-crl_check_all", "-CAfile", str(pem(root)),
               "-untrusted", str(pem(intermediate)), "-CRLfile", str(pem(root_crl, int_crl)), str(pem(leaf))]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    ok = verify(srv2, int2)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for leaf, intermediate in ((srv1, int2), (srv2, int1)):  # the old leaf; the old intermediate
        r = verify(leaf, intermediate)
        assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr, r.stdout + r.stderr
