"""CRL distribution points (docs/cas.md "CRL distribution points"): ``crl_distribution`` on a
generated CA, ``cas serve --public-url``, the public ``GET /v1/crl/<id>.crl``, and ``openssl
verify -crl_download -crl_check`` fetching the CRL by itself from a CAS served over plain HTTP on
loopback. The real in-process CAS (SQLite, ledger sink, simulated platform) with an injected
clock (tests/crl_env.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_crl import _get

from confide.cas.app import create_app
from confide.cas.crl import parse_public_url
from confide.cas.db import SCHEMA_VERSION, raw_execute
from confide.cas.secrets import crl_distribution_id
from confide.errors import PolicyError, UsageError
from confide.policy.canonical import canonical_json
from confide.policy.loader import loads_policy
from crl_env import DAY, T0, TWO_LEVEL, Env, check_signed_by_ca, policy, revoked, started

BASE = "http://crl.example:8080/pki"
OPT_IN = "    crl_distribution: true"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    with started(tmp_path / "cas", db_url) as out:
        yield out


def cdp(cert: x509.Certificate) -> x509.Extension[x509.CRLDistributionPoints] | None:
    try:
        return cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return None


def expected_url(ca: x509.Certificate, base: str = BASE) -> str:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return f"{base}/v1/crl/{crl_distribution_id(ca.subject, ski)}.crl"


def check_cdp(cert: x509.Certificate, ca: x509.Certificate, base: str = BASE) -> str:
    """RFC 5280 §4.2.1.13: non-critical, one DistributionPoint whose fullName is the URI of the
    CA's CRL, no reasons or cRLIssuer; the certificate's issuer and AKI are the CA's."""
    ext = cdp(cert)
    assert ext is not None and not ext.critical
    (point,) = ext.value
    assert point.relative_name is None and point.reasons is None and point.crl_issuer is None
    assert point.full_name is not None
    (uri,) = point.full_name
    assert isinstance(uri, x509.UniformResourceIdentifier)
    assert uri.value == expected_url(ca, base)
    assert cert.issuer == ca.subject
    assert cert.verify_directly_issued_by(ca) is None
    return uri.value.removeprefix(base)


def test_the_option_is_for_generated_cas_and_leaves_existing_hashes_alone() -> None:
    with_flag = loads_policy(policy(ca_extra=OPT_IN))
    assert with_flag.secret("ca").crl_distribution
    plain = loads_policy(policy())
    assert b"crl_distribution" not in canonical_json(plain)  # a default: hashes unchanged
    assert b'"crl_distribution":true' in canonical_json(with_flag)
    leaf = policy().replace("    common_name: srv.local\n", "    common_name: srv.local\n" + OPT_IN + "\n")
    with pytest.raises(PolicyError, match=r"crl_distribution for a x509 secret"):
        loads_policy(leaf)
    explicit = policy(ca_extra=OPT_IN, leaf=False).replace(
        "    private_key: ca_key\n    common_name: Test CA\n    valid_for: 90 days\n    renew_before: 30 days\n",
        "    value: x\n",
    )
    with pytest.raises(PolicyError, match="got crl_distribution with an explicit value"):
        loads_policy(explicit)
    imported = policy().replace(
        "  - name: ca\n    kind: x509-ca\n",
        "  - name: other\n    kind: x509-ca\n    import:\n      session: a\n      secret: b\n" + OPT_IN + "\n"
        "  - name: ca\n    kind: x509-ca\n",
    )
    with pytest.raises(PolicyError, match="got crl_distribution on an imported secret"):
        loads_policy(imported)


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("https://cas.example", "https://cas.example"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://xn--bcher-kva.example/pki/", "https://xn--bcher-kva.example/pki"),
    ],
)
def test_public_url_accepted(given: str, base: str) -> None:
    assert parse_public_url(given) == base


@pytest.mark.parametrize(
    "given",
    ["ftp://cas.example", "cas.example", "https://", "https://user@cas.example", "https://cas.example/?a=1",
     "https://cas.example/#x", "https://cas.example:99999", "https://cas.example:0", "https://bücher.example",
     "https://cas example", "https://cas.example/\x00", "https://" + "a" * 300, "https://cas.example/<a>",
     'https://cas.example/"', "https://cas.example/a\\b", "https://cas.example/{x}"],
)  # fmt: skip
def test_public_url_refused(given: str) -> None:
    with pytest.raises(UsageError, match="--public-url"):
        parse_public_url(given)


def test_certificates_get_the_distribution_point_at_their_next_version(env: Env) -> None:
    """Opting in changes no certificate (no new version, no revocation); the leaf gets the
    extension at its renewal, keeps it at the next one and at a new version; the self-signed
    CA never has one."""
    before = env.certificate()
    assert cdp(before) is None
    env.cas.public_url = parse_public_url(BASE + "/")
    env.apply_text(policy(ca_extra=OPT_IN, predecessor=env.head()))
    assert env.certificate() == before and revoked(env.crl()) == {}  # not regenerated
    env.clock.now = T0 + 21 * DAY  # the leaf (30 days) is due a third of its validity before
    env.release()
    renewed = env.certificate()
    assert renewed.serial_number != before.serial_number
    path = check_cdp(renewed, env.ca_cert())
    env.clock.now = T0 + 42 * DAY
    env.release()
    again = env.certificate()
    assert again.serial_number != renewed.serial_number and check_cdp(again, env.ca_cert()) == path
    env.apply_text(policy(ca_extra=OPT_IN, dns="new.local", predecessor=env.head()))
    assert check_cdp(env.certificate(), env.ca_cert()) == path
    assert cdp(env.ca_cert()) is None  # self-signed: nothing above it publishes a CRL
    # Opting out: the next version has none (and the URL is no longer served, below).
    env.apply_text(policy(dns="other.local", predecessor=env.head()))
    assert cdp(env.certificate()) is None


def test_without_public_url_no_certificate_gets_one(env: Env) -> None:
    env.apply_text(policy(ca_extra=OPT_IN, dns="new.local", predecessor=env.head()))
    assert cdp(env.certificate()) is None
    assert _get(create_app(env.cas), "/v1/crl/" + _id(env) + ".crl")[0] == 200  # served anyway


def _id(env: Env, name: str = "tls", ca: str = "ca") -> str:
    ski = env.ca_cert(name, ca).extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return crl_distribution_id(env.ca_cert(name, ca).subject, ski)


def test_runtime_certificates_and_intermediates_point_to_their_issuers_crl(env: Env) -> None:
    env.cas.public_url = BASE
    env.apply_text(policy(ca_extra=OPT_IN, runtime="rt.local", predecessor=env.head()))
    files = env.release()
    rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    check_cdp(rt, env.ca_cert())
    # An intermediate under an opted-in root points to the root's CRL; a leaf under the
    # intermediate (not opted in) has none.
    env.apply_text(
        TWO_LEVEL.replace("    common_name: Root CA\n", "    common_name: Root CA\n" + OPT_IN + "\n")
    )
    check_cdp(env.certificate("int", policy="pki"), env.ca_cert("pki", "root"))
    assert cdp(env.certificate("srv", policy="pki")) is None


def test_the_public_endpoint(env: Env) -> None:
    app = create_app(env.cas)
    env.cas.public_url = BASE
    crl_id = _id(env)
    path = f"/v1/crl/{crl_id}.crl"
    not_found = _get(app, path)
    assert not_found == (404, {"cache-control": "no-store", "content-length": "0"}, b"")  # not opted in
    env.apply_text(policy(ca_extra=OPT_IN, predecessor=env.head()))
    status, headers, body = _get(app, path)
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    assert headers["cache-control"] == "public, max-age=300"
    crl = x509.load_der_x509_crl(body)
    assert crl == env.crl()
    check_signed_by_ca(crl, env.ca_cert())
    shown = env.cas.show(env.read_request())["secrets"]["ca"]["crl"]
    assert shown["public_path"] == path and shown["distribution_point"] == BASE + path
    # A revocation is served at once (a new CRL in the revocation's transaction).
    serial = env.serial()
    env.cas.revoke_certificates(env.revocation(serial=serial))
    assert serial in revoked(x509.load_der_x509_crl(_get(app, path)[2]))
    # Near nextUpdate the CRL may be cached only until then; once due, a new one is issued.
    row = env.cas.distributed_crl(crl_id)
    assert row is not None
    env.clock.now = row.next_update - 100
    status, headers, body = _get(app, path)
    assert status == 200 and x509.load_der_x509_crl(body).last_update_utc.timestamp() == env.clock.now
    assert headers["cache-control"] == "public, max-age=300"
    # Unknown and malformed ids, other suffixes: the same bare 404, whether the CA exists or not.
    for other in ("0" * 32 + ".crl", crl_id.upper() + ".crl", crl_id, crl_id + ".pem", crl_id + ".crl.crl",
                  crl_id[:-1] + ".crl", "..%2f.crl", crl_id + "0.crl"):  # fmt: skip
        assert _get(app, "/v1/crl/" + other) == not_found, other
    # Opted out again: the same 404 as an unknown id.
    env.apply_text(policy(predecessor=env.head()))
    assert _get(app, path) == not_found
    assert "public_path" not in env.cas.show(env.read_request())["secrets"]["ca"]["crl"]


def test_two_cas_with_the_same_subject_and_key_are_not_served(env: Env) -> None:
    """Their certificates cannot be told apart by a relying party: neither CRL is served."""
    text = policy(ca_extra=OPT_IN, leaf=False)
    twin = text.replace("  - name: ca\n", "  - name: ca2\n    kind: x509-ca\n    private_key: ca_key\n"
                        "    common_name: Test CA\n" + OPT_IN + "\n  - name: ca\n", 1)  # fmt: skip
    env.apply_text(twin.replace("name: tls\n", "name: twins\n", 1))
    assert _id(env, "twins", "ca") == _id(env, "twins", "ca2")
    assert env.cas.distributed_crl(_id(env, "twins")) is None


def test_schema_6_fills_the_ids_of_existing_crls(env: Env) -> None:
    env.apply_text(policy(ca_extra=OPT_IN, predecessor=env.head()))
    with env.cas.db.write() as conn:  # back to what a schema-5 CAS left
        raw_execute(conn, "DROP INDEX crls_distribution_id")
        raw_execute(conn, "ALTER TABLE crls DROP COLUMN distribution_id")
        raw_execute(conn, "UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    assert env.cas.db.migrate() == SCHEMA_VERSION
    row = env.cas.distributed_crl(_id(env))
    assert row is not None and x509.load_der_x509_crl(row.der) == env.crl()


@pytest.fixture
def http_cas(env: Env) -> Iterator[tuple[Env, str]]:
    """The CAS's app served over plain HTTP on loopback (uvicorn), with its public URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(env.cas), loop="asyncio", log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    env.cas.public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield env, env.cas.public_url
    finally:
        server.should_exit = True
        thread.join(10)


def openssl_verify(tmp: Path, ca: x509.Certificate, leaf: x509.Certificate, *extra: str) -> Any:
    """``openssl verify`` as a relying party given only the CA certificate, at the CAS clock."""
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        ["openssl", "verify", "-attime", str(int(T0 + 3600)), "-CAfile", str(tmp / "ca.pem"), *extra,
         str(tmp / "leaf.pem")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_openssl_downloads_the_crl_and_refuses_a_revoked_certificate(
    http_cas: tuple[Env, str], tmp_path: Path
) -> None:
    env, base = http_cas
    env.apply_text(policy(ca_extra=OPT_IN, dns="new.local", predecessor=env.head()))
    leaf, ca = env.certificate(), env.ca_cert()
    check_cdp(leaf, ca, base)
    # Without -crl_download a relying party asked to check has no CRL: the control.
    no_crl = openssl_verify(tmp_path, ca, leaf, "-crl_check")
    assert no_crl.returncode != 0 and "unable to get certificate CRL" in no_crl.stdout + no_crl.stderr
    ok = openssl_verify(tmp_path, ca, leaf, "-crl_check", "-crl_download")
    assert ok.returncode == 0 and "leaf.pem: OK" in ok.stdout, ok.stdout + ok.stderr
    env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="keyCompromise"))
    refused = openssl_verify(tmp_path, ca, leaf, "-crl_check", "-crl_download")
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    # The certificate the revocation re-issued is accepted (under the same CA key: no
    # keyCompromise of the CA), fetched from the same URL.
    current = env.certificate()
    assert current.serial_number != leaf.serial_number
    assert check_cdp(current, env.ca_cert(), base) == check_cdp(leaf, ca, base)
    again = openssl_verify(tmp_path, env.ca_cert(), current, "-crl_check", "-crl_download")
    assert again.returncode == 0, again.stdout + again.stderr
