"""Revocation end to end (docs/cas.md "Revocation"): a real CAS process over TLS, SQLite and
PostgreSQL (fixture ``cas``). A certificate renewed while services run (``confide run``) and one
superseded by a policy update: the update (not the renewal) puts every still-valid version on the CA's CRL, which services receive (``$$SCONE::ca:crl$$``)
and stakeholders fetch (``confide policy crl``); ``openssl verify -crl_check`` refuses the old
certificates and accepts the current one; fetching is refused as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_e2e import SHM, app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess
from confide import errors

NAME = "pki/web"  # namespaced: the route takes the slash


# The leaf's validity: due for renewal 5 s after it is issued (the renewal test), or not for a day
# (tests that compare a served certificate with the one they saw earlier, which a renewal in
# between, on a loaded machine, would replace).
RENEWING = "valid_for: 120s\n    renew_before: 115s"
STABLE = "valid_for: 1 day"


def secrets_body(inject: Path, dns: str, ca_extra: str = "", leaf_validity: str = RENEWING) -> str:
    return f"""secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Web CA
    valid_for: 1 day
{ca_extra}
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [{dns}]
    {leaf_validity}
images:
  - name: img
    injection_files:
      - path: {inject}/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
      - path: {inject}/ca.pem
        content: "$$SCONE::ca:crt$$"
      - path: {inject}/ca.crl
        content: "$$SCONE::ca:crl$$"
"""


def clear(inject: Path) -> None:
    """Remove the directory of injected files (a path on /dev/shm shared by the test's runs)."""
    for f in inject.iterdir() if inject.exists() else ():
        f.unlink()
    if inject.exists():
        inject.rmdir()


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def openssl_verify(
    tmp: Path, ca: Path, crl: Path, leaf: x509.Certificate
) -> subprocess.CompletedProcess[str]:
    path = tmp / f"leaf-{leaf.serial_number:x}.pem"
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(ca), "-CRLfile", str(crl), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_superseded_certificates_are_on_the_crl_and_refused_by_openssl(
    cas: CasProcess, tmp_path: Path
) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    bob, _ = identity(cas, tmp_path, "bob")
    script = app_script(tmp_path)
    inject = SHM / f"confide-crl-{os.getpid()}-{tmp_path.name}"
    m = measure(cas, "/bin/sh", str(script))
    service = f"    image_name: img\n    command: /bin/sh {script}\n"

    def policy(dns: str, ca_extra: str = "") -> str:
        text = policy_yaml(NAME, m, extra_service=service, body=secrets_body(inject, dns, ca_extra))
        current = confide(cas, "policy", "show", NAME, "--identity", str(alice))
        if current.returncode == 0:
            head = json.loads(current.stdout)["hash"]
            text = text.replace('version: "0.3"', f'version: "0.3"\npredecessor: "{head}"')
        return text

    def run() -> tuple[x509.Certificate, x509.CertificateRevocationList]:
        r = confide(cas, "run", "--config-id", f"{NAME}/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        (tmp_path / "ca.pem").write_bytes((inject / "ca.pem").read_bytes())
        leaf = x509.load_pem_x509_certificates((inject / "srv.pem").read_bytes())[0]
        return leaf, x509.load_pem_x509_crl((inject / "ca.crl").read_bytes())

    def fetch(*args: str) -> subprocess.CompletedProcess[str]:
        return confide(cas, "policy", "crl", *args)

    assert apply(cas, tmp_path, policy("srv.local"), alice).returncode == 0
    try:
        leaf1, crl1 = run()
        assert crl_number(crl1) == 1 and len(crl1) == 0
        # Renewal: the leaf is due 5 s after it was issued; the next release renews it.
        due = leaf1.not_valid_after_utc.timestamp() - 115
        time.sleep(max(0.0, due - time.time()) + 1.0)
        leaf2, crl2 = run()
    finally:
        clear(inject)
    assert leaf2.serial_number != leaf1.serial_number
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    # A renewal revokes nothing: a service still running with the first leaf keeps working.
    assert crl2.is_signature_valid(ca.public_key()) and len(crl2) == 0

    # A changed declaration supersedes every version still valid: the renewed leaf and, unless
    # it expired meanwhile (valid for 120 s), the first one.
    applied_from = time.time()
    assert apply(cas, tmp_path, policy("www.local"), alice).returncode == 0
    applied_to = time.time()
    shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
    leaf3 = x509.load_pem_x509_certificate(shown["secrets"]["srv"]["certificate"].encode())
    crl_path = tmp_path / "ca.crl"
    fetch(NAME, "ca", "--identity", str(alice), "--out", str(crl_path)).check_returncode()
    crl3 = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl3.is_signature_valid(ca.public_key()) and crl_number(crl3) > crl_number(crl2)
    listed = {e.serial_number for e in crl3}
    assert leaf2.serial_number in listed and leaf3.serial_number not in listed
    first_expiry = leaf1.not_valid_after_utc.timestamp()
    if first_expiry > applied_to + 1:
        assert listed == {leaf1.serial_number, leaf2.serial_number}
    elif first_expiry < applied_from - 1:
        assert listed == {leaf2.serial_number}
    reasons = {e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in crl3}
    assert reasons == {x509.ReasonFlags.superseded}
    der = tmp_path / "ca.crl.der"
    fetch(NAME, "ca", "--identity", str(alice), "--der", "--out", str(der)).check_returncode()
    assert x509.load_der_x509_crl(der.read_bytes()) == crl3

    # A relying party with the CA and the CRL: the superseded certificates are refused, the
    # current one accepted.
    for old in (leaf for leaf in (leaf1, leaf2) if leaf.serial_number in listed):
        r = openssl_verify(tmp_path, tmp_path / "ca.pem", crl_path, old)
        assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr, r.stdout + r.stderr
    r = openssl_verify(tmp_path, tmp_path / "ca.pem", crl_path, leaf3)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr

    # Who may fetch: readers of the policy; without an identity only a CA declared export_public.
    # A stranger, the public, and a policy or CA that does not exist get the same refusal.
    refused = [
        fetch(NAME, "ca"),
        fetch("pki/ghost", "ca"),
        fetch(NAME, "nope"),
        fetch(NAME, "ca", "--identity", str(bob)),
        fetch("pki/ghost", "ca", "--identity", str(bob)),
    ]
    for r in refused:
        assert r.returncode == errors.AccessDeniedError.exit_code, r.stdout + r.stderr
        assert r.stdout == ""
    public = {r.stderr.replace("pki/ghost/ca", "X").replace(f"{NAME}/nope", "X").replace(f"{NAME}/ca", "X")
              for r in refused[:3]}  # fmt: skip
    by_bob = {r.stderr.replace("pki/ghost/ca", "X").replace(f"{NAME}/ca", "X") for r in refused[3:]}
    assert len(public) == 1 and len(by_bob) == 1, (public, by_bob)
    assert apply(cas, tmp_path, policy("www.local", "    export_public: true"), alice).returncode == 0
    public_crl = tmp_path / "public.crl"
    fetch(NAME, "ca", "--out", str(public_crl)).check_returncode()
    assert x509.load_pem_x509_crl(public_crl.read_bytes()) == crl3  # nothing changed since: the same CRL


def test_an_owner_revokes_one_certificate_from_the_cli(cas: CasProcess, tmp_path: Path) -> None:
    """``confide policy revoke``: a stranger is refused; the owner revokes the current leaf for
    key compromise (a new key and certificate at once, the CRL issued at once, its entry with
    reasonCode keyCompromise), which ``confide run`` then receives with the new CRL."""
    alice, _ = identity(cas, tmp_path, "alice")
    bob, _ = identity(cas, tmp_path, "bob")
    script = app_script(tmp_path)
    inject = SHM / f"confide-revoke-{os.getpid()}-{tmp_path.name}"
    m = measure(cas, "/bin/sh", str(script))
    service = f"    image_name: img\n    command: /bin/sh {script}\n"
    assert apply(cas, tmp_path, policy_yaml(NAME, m, extra_service=service,
                                            body=secrets_body(inject, "srv.local", leaf_validity=STABLE)), alice).returncode == 0  # fmt: skip

    def show() -> dict[str, Any]:
        return dict(
            json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        )

    leaf = x509.load_pem_x509_certificate(show()["secrets"]["srv"]["certificate"].encode())
    serial = format(leaf.serial_number, "x")
    r = confide(cas, "policy", "revoke", NAME, "srv", "--serial", serial, "--identity", str(bob))
    assert r.returncode == errors.AccessDeniedError.exit_code and r.stdout == "", r.stdout + r.stderr
    r = confide(
        cas, "policy", "revoke", NAME, "srv", "--serial", serial, "--all-valid", "--identity", str(alice)
    )
    assert r.returncode == errors.UsageError.exit_code, r.stdout + r.stderr
    r = confide(cas, "policy", "revoke", NAME, "srv", "--serial", serial, "--reason", "keyCompromise",
                "--identity", str(alice), check=True)  # fmt: skip
    result = json.loads(r.stdout)
    assert [c["serial"] for c in result["revoked"]] == [serial] and result["key_replaced"] is True
    crl_path = tmp_path / "revoked.crl"
    confide(cas, "policy", "crl", NAME, "ca", "--identity", str(alice), "--out", str(crl_path), check=True)
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    (entry,) = list(crl)
    assert entry.serial_number == leaf.serial_number
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        is x509.ReasonFlags.key_compromise
    )
    current = x509.load_pem_x509_certificate(show()["secrets"]["srv"]["certificate"].encode())
    assert current.public_key() != leaf.public_key()
    # The next start receives the re-issued certificate and the new CRL.
    try:
        r = confide(cas, "run", "--config-id", f"{NAME}/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        served = x509.load_pem_x509_certificates((inject / "srv.pem").read_bytes())[0]
        injected = x509.load_pem_x509_crl((inject / "ca.crl").read_bytes())
    finally:
        clear(inject)
    assert served == current and injected == crl
    ca = x509.load_pem_x509_certificate(show()["secrets"]["ca"]["certificate"].encode())
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    r = openssl_verify(tmp_path, tmp_path / "ca.pem", crl_path, leaf)
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr, r.stdout + r.stderr
    r = openssl_verify(tmp_path, tmp_path / "ca.pem", crl_path, served)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cas_serve_public_url_puts_the_distribution_point_in_certificates(tmp_path: Path) -> None:
    """``cas serve --public-url`` (a real process over TLS, SQLite): a leaf under a CA declared
    ``crl_distribution`` names the CRL's public URL, which the CAS serves to anyone (DER,
    ``application/pkix-crl``), the same CRL a reader fetches; ``policy show`` gives it. A
    malformed ``--public-url`` is refused at start (exit 2)."""
    import ssl
    import urllib.error
    import urllib.request

    bad = CasProcess(tmp_path / "bad", None, extra_args=("--public-url", "ftp://crl.invalid"))
    with pytest.raises(RuntimeError, match="--public-url"):
        bad.start()
    assert bad.proc is not None and bad.proc.returncode == errors.UsageError.exit_code

    cas = CasProcess(tmp_path / "cas", None, extra_args=("--public-url", "http://crl.invalid/pki/")).start()
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        body = secrets_body(tmp_path / "unused", "srv.local", "    crl_distribution: true")
        assert apply(cas, tmp_path, policy_yaml(NAME, "00" * 32, body=body), alice).returncode == 0
        shown = json.loads(confide(cas, "policy", "show", NAME, "--identity", str(alice), check=True).stdout)
        leaf = x509.load_pem_x509_certificate(shown["secrets"]["srv"]["certificate"].encode())
        (point,) = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert point.full_name is not None
        (uri,) = point.full_name
        crl_info = shown["secrets"]["ca"]["crl"]
        assert (
            uri.value == crl_info["distribution_point"] == "http://crl.invalid/pki" + crl_info["public_path"]
        )
        ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
        url = cas.env["CONFIDE_CAS_URL"] + crl_info["public_path"]
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:  # no identity
            assert r.headers["Content-Type"] == "application/pkix-crl"
            served = x509.load_der_x509_crl(r.read())
        der = tmp_path / "ca.crl.der"
        confide(
            cas, "policy", "crl", NAME, "ca", "--identity", str(alice), "--der", "--out", str(der), check=True
        )
        assert served == x509.load_der_x509_crl(der.read_bytes())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(cas.env["CONFIDE_CAS_URL"] + "/v1/crl/" + "0" * 32 + ".crl", context=ctx)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        cas.stop()
