"""Renewal of CAS-held certificates (confide.cas.renewal), with an injected clock: the real
in-process CAS (SQLite, ledger sink, simulated platform), attestations bound to fresh keys."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import MEASUREMENT, Clock, InProcessCas, submission
from confide.cas.core import READ_TYPE, decrypt_release, sign_document
from confide.cas.db import raw_connection, raw_execute
from confide.cas.renewal import CertificateRenewer, due_policies, renew_due
from confide.cas.secrets import renewal_window
from confide.errors import UsageError
from confide.identity import Identity
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.store import Ledger
from confide.policy.secret import Secret

DAY = 86400.0
T0 = 1_900_000_000.0  # 2030-03-17: far from the wall clock, so nothing reads it unnoticed
FILES = "/dev/shm/tls"


def tls_policy(*, leaf_validity: str = "valid_for: 30 days", name: str = "tls", export: str = "") -> str:
    return f"""name: {name}
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
    valid_for: 90 days
    renew_before: 30 days
{export}
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
    {leaf_validity}
images:
  - name: img
    injection_files:
      - path: {FILES}/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
      - path: {FILES}/ca.pem
        content: "$$SCONE::ca:crt$$"
      - path: {FILES}/srv.key
        content: "$$SCONE::srv:privatekey$$"
security:
  attestation:
    tolerate: [simulation]
"""


IMPORTER = f"""name: client
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: their_ca
    import:
      session: tls
      secret: ca
images:
  - name: img
    injection_files:
      - path: {FILES}/their-ca.pem
        content: "$$SCONE::their_ca:crt$$"
security:
  attestation:
    tolerate: [simulation]
"""


class Release:
    """What a service receives: its injected files, parsed."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    @property
    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.files[f"{FILES}/srv.pem"])

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.files[f"{FILES}/ca.pem"])

    @property
    def key_pem(self) -> bytes:
        return self.files[f"{FILES}/srv.key"]


@pytest.fixture
def clock() -> Clock[float]:
    return Clock(T0)


class Env(InProcessCas):
    """The in-process CAS and the stakeholder who creates, updates and reads its policies."""

    owner: Identity


@pytest.fixture
def env(tmp_path: Path, clock: Clock[float]) -> Env:
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.clock = clock  # before the policy: its certificates are issued at T0
    ipc.cas.crl_validity = 400 * DAY  # CRLs are not due within these tests (tests/unit/test_cas_crl.py)
    out = Env(ipc.cas, ipc.platform)
    out.owner = Identity.generate()
    apply(out, tls_policy())
    return out


def apply(env: Env, text: str) -> None:
    env.cas.apply(submission(env.cas, text, env.owner))


def head(env: Env, name: str) -> str:
    with env.cas.db.read() as conn:
        return str(raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()[0])


def release(ipc: Env, policy: str = "tls") -> Release:
    body, key = ipc.request(policy=policy)
    config = decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))
    return Release({path: base64.b64decode(b64) for path, b64 in config["files"].items()})


def versions(ipc: Env, name: str, policy: str = "tls") -> list[int]:
    with ipc.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT version FROM secrets WHERE policy = ? AND name = ? ORDER BY version", (policy, name)
        ).fetchall()
    return [r[0] for r in rows]


def renewal_events(ipc: Env) -> list[tuple[dict[str, Any], bytes]]:
    """Every certificates-renewed event with its ledger entry (checked to match)."""
    out = []
    with ipc.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT seq, payload FROM events WHERE type = 'certificates-renewed' ORDER BY seq"
        ).fetchall()
        for seq, payload in rows:
            entry = Ledger.entry(raw_connection(conn), seq - 1)
            assert entry is not None
            parsed = Entry.from_bytes(entry)
            assert parsed.type is EntryType.CERTIFICATES_RENEWED and parsed.payload == json.loads(payload)
            out.append((json.loads(payload), entry))
    return out


def verify_server(leaf: x509.Certificate, intermediates: list[x509.Certificate], root: x509.Certificate,
                  at: float) -> None:  # fmt: skip
    """Path validation with cryptography's verifier (RFC 5280 + CA/B profile), at ``at``."""
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.fromtimestamp(at, UTC))
        .build_server_verifier(x509.DNSName("srv.local"))
    )
    verifier.verify(leaf, intermediates)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_window_is_renew_before_else_a_third_of_the_validity() -> None:
    def spec(**kw: Any) -> Secret:
        return Secret.model_validate({"name": "c", "kind": "x509", "private_key": "k", **kw})

    assert renewal_window(spec(valid_for="30 days", renew_before="2 days")) == timedelta(days=2)
    assert renewal_window(spec(valid_for="30 days")) == timedelta(days=10)
    assert renewal_window(spec()) == timedelta(days=365) / 3  # the default validity is a year


def test_before_the_window_the_same_certificate_is_released(env: Env, clock: Clock[float]) -> None:
    first = release(env)
    assert first.leaf.not_valid_after_utc == datetime.fromtimestamp(T0 + 30 * DAY, UTC)  # the CAS clock
    clock.now = T0 + 19 * DAY  # the leaf is due at 30 - 10 days (a third of valid_for)
    again = release(env)
    assert again.leaf == first.leaf and again.ca == first.ca
    assert versions(env, "srv") == [1] and versions(env, "ca") == [1]
    assert renewal_events(env) == []
    assert due_policies(env.cas, clock.now) == []


def test_inside_the_window_the_leaf_is_renewed_with_the_same_key(env: Env, clock: Clock[float]) -> None:
    first = release(env)
    clock.now = T0 + 21 * DAY
    assert due_policies(env.cas, clock.now) == ["tls"]
    renewed = release(env)
    leaf = renewed.leaf
    assert leaf.serial_number != first.leaf.serial_number
    assert leaf.not_valid_after_utc == datetime.fromtimestamp(T0 + 51 * DAY, UTC)
    assert leaf.not_valid_before_utc <= datetime.fromtimestamp(clock.now, UTC)
    assert spki(leaf) == spki(first.leaf)  # same private key
    assert renewed.key_pem == first.key_pem
    assert leaf.subject == first.leaf.subject and leaf.issuer == first.leaf.issuer
    for ext in (x509.SubjectAlternativeName, x509.ExtendedKeyUsage, x509.AuthorityKeyIdentifier):
        assert leaf.extensions.get_extension_for_class(ext) == first.leaf.extensions.get_extension_for_class(
            ext
        )
    assert renewed.ca == first.ca  # the CA is not due yet
    assert renewed.chain[1] == renewed.ca
    verify_server(leaf, renewed.chain[1:], renewed.ca, clock.now)
    assert versions(env, "srv") == [1, 2] and versions(env, "ca") == [1]
    # the next release uses the renewed version as it is
    assert release(env).leaf == leaf and versions(env, "srv") == [1, 2]


def test_ca_renewal_keeps_existing_leaf_chains_valid(env: Env, clock: Clock[float]) -> None:
    first = release(env)
    clock.now = T0 + 45 * DAY  # the leaf was due at 20 days: renewed, valid until 75 days
    running = release(env)  # what a service that started now keeps using
    assert running.ca == first.ca
    clock.now = T0 + 61 * DAY  # the CA is due (at 60 days)
    renewed = release(env)
    old_ca, new_ca = first.ca, renewed.ca
    assert new_ca.serial_number != old_ca.serial_number
    assert new_ca.subject == old_ca.subject and spki(new_ca) == spki(old_ca)
    assert new_ca.not_valid_after_utc == datetime.fromtimestamp(T0 + 151 * DAY, UTC)
    # the leaf the service receives chains to the CA version it receives
    assert renewed.chain[1] == new_ca
    verify_server(renewed.leaf, [], new_ca, clock.now)
    # a leaf issued under the old CA certificate verifies under the renewed one, and the other
    # way round: clients holding either CA certificate accept either leaf
    verify_server(running.leaf, [], new_ca, clock.now)
    verify_server(renewed.leaf, [], old_ca, clock.now)
    first.leaf.verify_directly_issued_by(new_ca)
    payloads = [p for p, _ in renewal_events(env)]
    assert [[(c["name"], c["reason"], c["version"]) for c in p["certificates"]] for p in payloads] == [
        [("srv", "due", 2)],
        [("ca", "due", 2), ("srv", "issuer-renewed", 3)],
    ]


def test_a_ca_renewal_reissues_what_it_signed(env: Env, clock: Clock[float]) -> None:
    """A leaf that is not due itself is re-issued with a renewed issuer, so that its chain always
    holds the CA version released next to it."""
    apply(env, tls_policy(leaf_validity="valid_for: 300 days", name="long"))
    first = release(env, "long")
    clock.now = T0 + 61 * DAY  # the CA is due; the leaf (due at 200 days) is not
    renewed = release(env, "long")
    assert renewed.ca != first.ca and renewed.chain[1] == renewed.ca
    assert renewed.leaf.serial_number != first.leaf.serial_number
    assert spki(renewed.leaf) == spki(first.leaf)
    verify_server(renewed.leaf, [], renewed.ca, clock.now)
    payload = next(p for p, _ in renewal_events(env) if p["certificates"][0]["name"] == "ca")
    assert [(c["name"], c["reason"]) for c in payload["certificates"]] == [
        ("ca", "due"),
        ("srv", "issuer-renewed"),
    ]


def test_an_expired_certificate_is_never_released(env: Env, clock: Clock[float]) -> None:
    release(env)
    clock.now = T0 + 400 * DAY  # the CAS was down for more than a year: everything expired
    renewed = release(env)
    at = datetime.fromtimestamp(clock.now, UTC)
    for cert in (renewed.leaf, renewed.ca):
        assert cert.not_valid_before_utc <= at < cert.not_valid_after_utc
    verify_server(renewed.leaf, [], renewed.ca, clock.now)


def test_concurrent_attestations_create_one_renewal(env: Env, clock: Clock[float]) -> None:
    release(env)
    clock.now = T0 + 21 * DAY
    requests = [env.request(policy="tls") for _ in range(6)]
    barrier = threading.Barrier(len(requests))
    leaves: list[x509.Certificate] = []
    errors: list[BaseException] = []

    def attest(body: dict[str, Any], key: Any) -> None:
        try:
            barrier.wait()
            config = decrypt_release(key, env.cas.attest(body), bytes.fromhex(body["nonce"]))
            leaves.append(
                x509.load_pem_x509_certificates(base64.b64decode(config["files"][f"{FILES}/srv.pem"]))[0]
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attest, args=r) for r in requests]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert versions(env, "srv") == [1, 2]
    assert len({leaf.serial_number for leaf in leaves}) == 1 and len(leaves) == len(requests)
    assert len(renewal_events(env)) == 1


def test_concurrent_sweeps_create_one_renewal(env: Env, clock: Clock[float]) -> None:
    clock.now = T0 + 21 * DAY
    barrier = threading.Barrier(4)
    results: list[dict[str, Any]] = []

    def sweep() -> None:
        barrier.wait()
        results.append(renew_due(env.cas))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert versions(env, "srv") == [1, 2] and len(renewal_events(env)) == 1


def test_the_ledger_entry_names_the_renewal_and_holds_no_secret_value(env: Env, clock: Clock[float]) -> None:
    first = release(env)
    clock.now = T0 + 21 * DAY
    renewed = release(env)
    [(payload, entry)] = renewal_events(env)
    with env.cas.db.read() as conn:
        head = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = 'tls'").fetchone()[0]
    assert payload["hash"] == head
    [cert] = payload["certificates"]
    der = renewed.leaf.public_bytes(serialization.Encoding.DER)
    assert cert == {
        "name": "srv", "kind": "x509", "version": 2, "previous_version": 1, "reason": "due",
        "serial": format(renewed.leaf.serial_number, "x"),
        "not_before": renewed.leaf.not_valid_before_utc.isoformat(),
        "not_after": renewed.leaf.not_valid_after_utc.isoformat(),
        "certificate_sha256": hashlib.sha256(der).hexdigest(),
    }  # fmt: skip
    key = serialization.load_pem_private_key(first.key_pem, None)
    secret_forms = [
        first.key_pem,
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    ]  # fmt: skip
    for form in secret_forms:
        for shown in (form, form.hex().encode(), base64.b64encode(form)):
            assert shown[-40:] not in entry
    raw_scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    assert raw_scalar not in entry and raw_scalar.hex().encode() not in entry


def test_importers_receive_the_current_version(env: Env, clock: Clock[float]) -> None:
    exporter = tls_policy(export="    export:\n      - session: client").replace(
        'version: "0.3"', f'version: "0.3"\npredecessor: "{head(env, "tls")}"'
    )
    apply(env, exporter)  # an update: only `export` changed, so the secrets keep their versions
    assert versions(env, "ca") == [1]
    apply(env, IMPORTER)
    before = x509.load_pem_x509_certificate(release(env, "client").files[f"{FILES}/their-ca.pem"])
    clock.now = T0 + 61 * DAY
    after = x509.load_pem_x509_certificate(release(env, "client").files[f"{FILES}/their-ca.pem"])
    assert after.serial_number != before.serial_number and spki(after) == spki(before)
    assert after.not_valid_after_utc > datetime.fromtimestamp(clock.now, UTC)
    assert release(env).ca == after  # the exporter's own service gets the same version


def test_the_sweep_renews_ahead_of_any_release(env: Env, clock: Clock[float]) -> None:
    waits: list[float] = []
    renewer = CertificateRenewer(env.cas, 30, wait=lambda s: waits.append(s) or len(waits) > 1)
    clock.now = T0 + 21 * DAY
    renewer.run()  # one sweep at start, one after the first period, then stop
    assert waits == [30, 30]
    assert versions(env, "srv") == [1, 2] and versions(env, "ca") == [1]
    assert len(renewal_events(env)) == 1  # the second sweep found nothing due
    with env.cas.db.read() as conn:
        attestations = raw_execute(conn, "SELECT COUNT(*) FROM events WHERE type = 'attestation'").fetchone()
    assert attestations[0] == 0
    assert renewer.failures == 0
    with pytest.raises(UsageError):
        CertificateRenewer(env.cas, 0)


def test_a_failing_sweep_is_logged_and_retried(
    env: Env, clock: Clock[float], caplog: pytest.LogCaptureFixture
) -> None:
    clock.now = T0 + 21 * DAY
    renewer = CertificateRenewer(env.cas, 30)
    sealer = env.cas.sealer
    env.cas.sealer = type(sealer)(b"\x01" * 32)  # a wrong master key: nothing unseals
    assert renewer.sweep_once() == {}
    assert renewer.failures == 1
    assert "certificate-renewal-failed" in caplog.text and "SignatureError" in caplog.text
    assert versions(env, "srv") == [1]
    env.cas.sealer = sealer
    assert list(renewer.sweep_once()) == ["tls"]


def test_show_gives_validity_and_version_never_private_values(env: Env, clock: Clock[float]) -> None:
    first = release(env)
    clock.now = T0 + 21 * DAY
    release(env)
    read = {"type": READ_TYPE, "name": "tls", "nonce": env.cas.new_read_nonce("tls", "show"),
            "cas": env.cas.tls_spki_sha256, "route": "show"}  # fmt: skip
    shown = env.cas.show(sign_document(read, env.owner.sign, env.owner.public.public_base64))
    srv = shown["secrets"]["srv"]
    assert srv["version"] == 2
    assert srv["not_after"] == datetime.fromtimestamp(T0 + 51 * DAY, UTC).isoformat()
    assert srv["renew_at"] == datetime.fromtimestamp(T0 + 41 * DAY, UTC).isoformat()
    assert shown["secrets"]["ca"]["renew_at"] == datetime.fromtimestamp(T0 + 60 * DAY, UTC).isoformat()
    assert "renew_at" not in shown["secrets"]["srv_key"]
    text = json.dumps(shown)
    assert first.key_pem.decode().splitlines()[1] not in text


def test_an_update_that_changes_the_ca_reissues_its_leaf(env: Env, clock: Clock[float]) -> None:
    """A changed CA declaration is a new CA version; the leaf it signed is issued again with it,
    or its chain would name an issuer that no longer exists."""
    first = release(env)
    updated = tls_policy().replace("common_name: Test CA", "common_name: Renamed CA")
    apply(env, updated.replace('version: "0.3"', f'version: "0.3"\npredecessor: "{head(env, "tls")}"'))
    clock.now = T0 + DAY
    now = release(env)
    assert now.ca.subject.rfc4514_string() == "CN=Renamed CA" and spki(now.ca) == spki(first.ca)
    assert now.chain[1] == now.ca and now.leaf.issuer == now.ca.subject
    assert spki(now.leaf) == spki(first.leaf)
    verify_server(now.leaf, [], now.ca, clock.now)
    assert versions(env, "srv") == [1, 2] and versions(env, "srv_key") == [1]


def test_the_sweep_skips_a_policy_whose_head_does_not_authenticate(
    env: Env, clock: Clock[float], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/cas.md "What a policy's current version rests on": a head the operator edited stops
    that policy's renewal (logged), not the other policies'."""
    apply(env, tls_policy(name="other"))
    with env.cas.db.write() as conn:
        raw_execute(conn, "UPDATE policy_heads SET revision = revision + 7 WHERE name = 'tls'")
    clock.now = T0 + 21 * DAY
    with caplog.at_level("WARNING", logger="confide.cas"):
        assert due_policies(env.cas, clock.now) == ["other"]
        assert list(renew_due(env.cas)) == ["other"]
    assert any("policy-rows-altered" in r.getMessage() for r in caplog.records)
    assert versions(env, "srv") == [1] and versions(env, "srv", policy="other") == [1, 2]
