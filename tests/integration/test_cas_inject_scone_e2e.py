"""SCONE's ``:pkcs12-with-private-key`` format and injection-file ``permission`` end to end: a
policy applied to a ``cas serve`` (SQLite and PostgreSQL), ``confide run --tee sim`` writing the
files, the service reading them (fixtures of ``test_cas_e2e``)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from test_cas_e2e import SHM, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess
from confide.policy import injection_file_warning


def test_a_pkcs12_archive_and_file_modes_reach_the_service(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    shm = SHM / f"confide-p12-{os.getpid()}-{tmp_path.name}"
    shm.mkdir()
    template = shm / "tmpl.conf"
    template.write_text("token=$$SCONE::token$$\n")
    on_disk = tmp_path / "disk" / "srv.pem"  # not on a memory file system: bound over (root)
    files = [shm / "srv.p12", shm / "default.conf", shm / "exec.conf", template, on_disk]
    script = tmp_path / "app.sh"
    script.write_text(
        "".join(f"stat -c 'MODE %a %n' {f}\n" for f in files if f != on_disk or os.geteuid() == 0)
        + f"printf 'P12 '; base64 -w0 {shm / 'srv.p12'}; printf '\\n'\n"
        + f"printf 'CRT '; base64 -w0 {shm / 'srv.crt'}; printf '\\n'\n"
    )
    disk_entry = (
        f'      - path: {on_disk}\n        permission: 0o400\n        content: "$$SCONE::srv:crt$$"\n'
        if os.geteuid() == 0
        else ""
    )
    text = policy_yaml(
        "p12", measure(cas, "/bin/sh", str(script)),
        extra_service=f"    image_name: img\n    command: /bin/sh {script}\n",
        body=f"""secrets:
  - name: token
    kind: ascii
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
  - name: srv_key
    kind: private-key
    key_type: RSA-2048
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    dns: [srv.local]
images:
  - name: img
    injection_files:
      - path: {shm / "srv.p12"}
        permission: 0o400
        content: "$$SCONE::srv:pkcs12-with-private-key$$"
      - path: {shm / "srv.crt"}
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
      - path: {shm / "default.conf"}
        content: "plain"
      - path: {shm / "exec.conf"}
        permission: 0o710
        content: "plain"
      - path: {template}
        permission: 0o440
{disk_entry}""",
    )  # fmt: skip
    try:
        r = apply(cas, tmp_path, text, alice)
        assert r.returncode == 0, r.stderr
        # group read is allowed, with a warning (names and mode only); group execute alone
        # (exec.conf) is not warned about: it lets nobody else read the secrets
        assert r.stderr.splitlines() == [injection_file_warning("img", str(template), 0o440)]
        r = confide(cas, "run", "--config-id", "p12/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        modes = {Path(p): m for m, p in re.findall(r"^MODE (\d+) (\S+)$", r.stdout, re.M)}
        want = {
            shm / "srv.p12": "400",
            shm / "default.conf": "600",
            shm / "exec.conf": "710",
            template: "440",
        }
        if os.geteuid() == 0:
            want[on_disk] = "400"  # as the service sees it (bound over, in its mount namespace)
        assert modes == want
        assert template.read_text().startswith("token=") and "$$SCONE" not in template.read_text()
        archive = base64.b64decode(re.search(r"^P12 (\S+)$", r.stdout, re.M).group(1))  # type: ignore[union-attr]
        pem = base64.b64decode(re.search(r"^CRT (\S+)$", r.stdout, re.M).group(1))  # type: ignore[union-attr]
        loaded = pkcs12.load_pkcs12(archive, b"")
        leaf, ca = x509.load_pem_x509_certificates(pem)
        assert loaded.cert is not None and loaded.cert.certificate == leaf
        assert [c.certificate for c in loaded.additional_certs] == [ca]
        assert loaded.key is not None
        assert loaded.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if shutil.which("openssl"):
            info = subprocess.run(
                ["openssl", "pkcs12", "-info", "-nokeys", "-passin", "pass:", "-in", str(shm / "srv.p12")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert info.returncode == 0, info.stderr
            assert x509.load_pem_x509_certificates(info.stdout.encode()) == [leaf, ca]
        # a second run releases an archive of the same key and certificate
        again = confide(cas, "run", "--config-id", "p12/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert again.returncode == 0, again.stderr
        second = pkcs12.load_pkcs12((shm / "srv.p12").read_bytes(), b"")
        assert second.cert == loaded.cert
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.mark.parametrize("mode", ["0o660", "0o100"])
def test_a_policy_with_a_bad_permission_is_refused_before_it_is_sent(
    cas: CasProcess, tmp_path: Path, mode: str
) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    text = policy_yaml(
        "badmode", "00" * 32,
        extra_service="    image_name: img\n",
        body=f"images:\n  - name: img\n    injection_files:\n      - path: /dev/shm/x\n"
             f"        permission: {mode}\n        content: x\n",
    )  # fmt: skip
    r = apply(cas, tmp_path, text, alice)
    assert r.returncode != 0
    assert "images[0].injection_files[0].permission" in r.stderr and mode in r.stderr
