"""The CAS end to end: real processes, real TLS, SQLite and PostgreSQL (fixture ``cas``)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, log_size, wait_for_log
from confide import errors
from confide.cas.client import CasClient
from confide.cas.core import binding_report_data
from confide.identity import Identity
from confide.ledger.cli import RELEASES_WHERE
from confide.policy import command_secret_warning, loads_policy
from confide.runtime.quote import SimQuoteProvider

SHM = Path("/dev/shm")


def confide(cas: CasProcess, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **cas.env}
    r = subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True, env=env,
                       timeout=120, check=False)  # fmt: skip
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def identity(cas: CasProcess, tmp: Path, name: str) -> tuple[Path, str]:
    path = tmp / f"{name}.id"
    fp = confide(cas, "identity", "create", "--out", str(path), "--name", name, check=True).stdout.strip()
    return path, fp


def app_script(tmp: Path, name: str = "app.sh", extra: str = "") -> Path:
    script = tmp / name
    script.write_text(
        'printf "ARGV=%s\\n" "$*"\n'
        'env | sort | sed "s/^/ENV /"\n'
        'for f in "$@"; do case "$f" in /dev/shm/*.pem) printf "FILE %s\\n" "$f"; cat "$f"; printf "\\n";; esac; done\n'
        + extra
    )
    return script


def measure(cas: CasProcess, *cmd: str) -> str:
    return confide(cas, "sim", "measure", "--", *cmd, check=True).stdout.strip()


def policy_yaml(
    name: str, measurement: str, body: str = "", *, extra_service: str = "", access: str = ""
) -> str:
    return f"""
name: {name}
version: "0.3"
services:
  - name: app
    attestation:
      sim:
        measurement: "{measurement}"
{extra_service}
{body}
{access}
security:
  attestation:
    tolerate: [simulation]
"""


def apply(cas: CasProcess, tmp: Path, text: str, ident: Path) -> subprocess.CompletedProcess[str]:
    f = tmp / f"policy-{abs(hash(text))}.yaml"
    f.write_text(text)
    return confide(cas, "policy", "apply", str(f), "--identity", str(ident))


def test_every_secret_kind_and_format_reaches_the_service(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    inject = SHM / f"confide-test-{os.getpid()}-{tmp_path.name}"
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml(
        "kinds", m,
        extra_service=f"""    image_name: img
    command: /bin/sh {script} a=$$SCONE::ascii_s$$ {inject}/cert.pem {inject}/key.der
    environment:
      HEX: "$$SCONE::bin_s:hex$$"
      B64: "$$SCONE::bin_s:base64$$"
      PUB: "$$SCONE::pub_s$$"
""",
        body=f"""secrets:
  - name: ascii_s
    kind: ascii
    size: 24
  - name: bin_s
    kind: binary
    size: 16
  - name: explicit_s
    kind: ascii
    value: "fixed-value-123"
  - name: key_s
    kind: private-key
    key_type: P-384
  - name: pub_s
    kind: public-key
    private_key: key_s
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
images:
  - name: img
    injection_files:
      - path: {inject}/cert.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$$$SCONE::explicit_s$$"
      - path: {inject}/key.der
        content: "$$SCONE::srv:privatekey:der$$"
""",
    )  # fmt: skip
    r = apply(cas, tmp_path, text, alice)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"[0-9a-f]{64}", r.stdout.strip())
    # the one secret in the command's arguments is warned about (docs/limitations.md "confide
    # run"), by name; those of the environment and the files are not
    warning = command_secret_warning("app", "ascii_s")
    assert r.stderr.splitlines() == [warning]
    r = confide(cas, "run", "--config-id", "kinds/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if "/proc/PID/cmdline" in line] == [warning]
    out = r.stdout
    ascii_value = re.search(r"ARGV=a=(\S+)", out).group(1)  # type: ignore[union-attr]
    assert len(ascii_value) == 24 and ascii_value.isalnum()
    hex_value = re.search(r"ENV HEX=([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    b64_value = re.search(r"ENV B64=(\S+)", out).group(1)  # type: ignore[union-attr]
    assert base64.b64decode(b64_value).hex() == hex_value and len(hex_value) == 32
    assert "-----BEGIN PUBLIC KEY-----" in out
    assert out.count("-----BEGIN CERTIFICATE-----") == 2  # leaf + CA chain
    assert "fixed-value-123" in out
    # only what the policy says reaches the environment: no host variables
    env_names = {m.group(1) for m in re.finditer(r"^ENV ([A-Za-z_][A-Za-z0-9_]*)=", out, re.M)}
    assert env_names <= {"HEX", "B64", "PUB", "PWD", "SHLVL", "_", "OLDPWD"}, env_names
    key_file = inject / "key.der"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    load_der_private_key(key_file.read_bytes(), None)
    # show never prints secret values
    shown = confide(cas, "policy", "show", "kinds", "--identity", str(alice), check=True).stdout
    assert (
        ascii_value not in shown
        and hex_value not in shown
        and "fixed-value-123" not in shown.split('"value"')[0]
    )
    assert "-----BEGIN CERTIFICATE-----" in shown  # certificates are public
    # neither the database nor the CAS log contains a generated secret value
    cas.stop()
    for blob in [p.read_bytes() for p in (cas.data_dir).glob("cas.db*")] + [cas.log.read_bytes()]:  # type: ignore[union-attr]
        assert ascii_value.encode() not in blob
        assert hex_value.encode() not in blob and bytes.fromhex(hex_value) not in blob
    for f in inject.iterdir():
        f.unlink()
    inject.rmdir()


def test_wrong_measurement_and_refusals_are_recorded(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    assert (
        apply(cas, tmp_path, policy_yaml("meas", measure(cas, "/bin/sh", str(script))), alice).returncode == 0
    )
    ok = confide(cas, "run", "--config-id", "meas/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert ok.returncode == 0, ok.stderr
    other = app_script(tmp_path, "other.sh", "echo changed\n")
    bad = confide(cas, "run", "--config-id", "meas/app", "--tee", "sim", "--", "/bin/sh", str(other))
    assert bad.returncode == errors.AppraisalError.exit_code
    assert "measurement" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2
    missing = confide(cas, "run", "--config-id", "nope/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert missing.returncode == errors.AccessDeniedError.exit_code
    events = [
        json.loads(line)
        for line in confide(
            cas, "policy", "events", "meas", "--identity", str(alice), check=True
        ).stdout.splitlines()
    ]
    verdicts = [e["payload"]["verdict"] for e in events if e["type"] == "attestation"]
    assert verdicts == ["accepted", "refused"]
    assert any(e["type"] == "secret-release" for e in events)


def test_simulation_needs_tolerance(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    text = policy_yaml("strict", "00" * 48).replace("    tolerate: [simulation]", "    tolerate: []")
    r = apply(cas, tmp_path, text, alice)
    assert r.returncode == errors.PolicyError.exit_code  # a sim variant without tolerance is refused at load


@pytest.fixture
def client(cas: CasProcess) -> Iterator[CasClient]:
    with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as c:
        yield c


def test_debug_needs_tolerance(cas: CasProcess, client: CasClient, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    assert apply(cas, tmp_path, policy_yaml("dbg", m), alice).returncode == 0
    provider = SimQuoteProvider.for_command(
        Path(cas.env["CONFIDE_SIM_DIR"]), ["/bin/sh", str(script)], debug=True
    )
    with pytest.raises(errors.AppraisalError, match="debug"):
        _attest(client, provider, "dbg", "app")
    text = policy_yaml("dbg2", m).replace("[simulation]", "[simulation, debug-mode]")
    assert apply(cas, tmp_path, text, alice).returncode == 0
    _attest(client, provider, "dbg2", "app")


def _attest(client: CasClient, provider: SimQuoteProvider, policy: str, service: str, nonce: str | None = None,
            evidence: bytes | None = None) -> tuple[dict[str, object], bytes]:  # fmt: skip
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = nonce or client.nonce()
    raw = evidence or provider.get_evidence(binding_report_data(der, bytes.fromhex(nonce))).raw
    request = {"policy": policy, "service": service, "platform": "sim", "evidence": base64.b64encode(raw).decode(),
               "public_key": base64.b64encode(der).decode(), "nonce": nonce}  # fmt: skip
    return client.attest(request), raw


def test_replayed_nonce_and_evidence(cas: CasProcess, client: CasClient, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    assert (
        apply(cas, tmp_path, policy_yaml("rep", measure(cas, "/bin/sh", str(script))), alice).returncode == 0
    )
    provider = SimQuoteProvider.for_command(Path(cas.env["CONFIDE_SIM_DIR"]), ["/bin/sh", str(script)])
    nonce = client.nonce()
    _, raw = _attest(client, provider, "rep", "app", nonce=nonce)
    with pytest.raises(errors.BindingError, match="nonce"):
        _attest(client, provider, "rep", "app", nonce=nonce)
    with pytest.raises(errors.BindingError):  # same evidence, fresh nonce: binding and replay both fail
        _attest(client, provider, "rep", "app", evidence=raw)
    with pytest.raises(errors.BindingError, match="nonce"):
        _attest(client, provider, "rep", "app", nonce="00" * 32)


def test_other_stakeholder_cannot_read_or_update(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    bob, _ = identity(cas, tmp_path, "bob")
    text = policy_yaml("mine", "00" * 48)
    digest = apply(cas, tmp_path, text, alice).stdout.strip()
    assert (
        confide(cas, "policy", "show", "mine", "--identity", str(bob)).returncode
        == errors.AccessDeniedError.exit_code
    )
    update = text + f"predecessor: {digest}\n"
    update = update.replace('version: "0.3"', 'version: "0.3"\nsecrets:\n  - name: extra\n    kind: ascii')
    r = apply(cas, tmp_path, update, bob)
    assert r.returncode == errors.AccessDeniedError.exit_code, r.stderr
    r = apply(cas, tmp_path, update, alice)
    assert r.returncode == 0, r.stderr
    stale = text.replace("00" * 48, "11" * 48) + f"predecessor: {digest}\n"
    assert apply(cas, tmp_path, stale, alice).returncode == errors.ConflictError.exit_code


def test_board_needs_enough_approvals(cas: CasProcess, tmp_path: Path) -> None:
    alice, a = identity(cas, tmp_path, "alice")
    bob, b = identity(cas, tmp_path, "bob")
    carol, c = identity(cas, tmp_path, "carol")
    dave, _ = identity(cas, tmp_path, "dave")
    access = f"""access_policy:
  read: [CREATOR, {b}, {c}]
  update:
    - require-at-least-2:
        - signer: {a}
        - signer: {b}
        - signer: {c}
"""
    text = policy_yaml("board", "00" * 48, access=access)
    digest = apply(cas, tmp_path, text, alice).stdout.strip()
    update = text.replace("00" * 48, "22" * 48) + f"predecessor: {digest}\n"
    r = apply(cas, tmp_path, update, alice)
    assert r.returncode == 0 and "pending" in r.stderr
    new = r.stdout.strip()
    shown = json.loads(confide(cas, "policy", "show", "board", "--identity", str(bob), check=True).stdout)
    assert shown["hash"] == digest  # one signature of a 2-of-3 board is not enough
    r = confide(cas, "policy", "approve", "board", "--hash", new, "--identity", str(dave))
    assert r.returncode == errors.AccessDeniedError.exit_code
    r = confide(cas, "policy", "approve", "board", "--hash", new, "--identity", str(carol), check=True)
    assert r.stdout.strip() == "active"
    shown = json.loads(confide(cas, "policy", "show", "board", "--identity", str(carol), check=True).stdout)
    assert shown["hash"] == new
    assert [v["state"] for v in shown["versions"]] == ["superseded", "active"]


def test_namespaces_decide_who_creates_policies_below_them(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    bob, b = identity(cas, tmp_path, "bob")
    carol, _ = identity(cas, tmp_path, "carol")
    ns = f'name: acme\nversion: "0.3"\naccess_policy:\n  create_sessions: [CREATOR, {b}]\n'
    assert apply(cas, tmp_path, ns, alice).returncode == 0
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml("acme/shop", m, extra_service="    environment:\n      S: \"$$SCONE::s$$\"\n",
                       body="secrets:\n  - name: s\n    kind: ascii\n")  # fmt: skip
    r = apply(cas, tmp_path, text, carol)
    assert (
        r.returncode == errors.AccessDeniedError.exit_code
        and "may not create or update policy acme/shop " in r.stderr
    ), r.stderr
    assert apply(cas, tmp_path, text, bob).returncode == 0
    # A namespaced policy runs: --config-id splits at the last "/" (service names have none).
    out = confide(cas, "run", "--config-id", "acme/shop/app", "--tee", "sim", "--", "/bin/sh", str(script),
                  check=True).stdout  # fmt: skip
    assert re.search(r"ENV S=\S+", out)
    # POLICY/SECRET for a namespaced policy; the whole name alone is the policy.
    acc = json.loads(
        confide(cas, "ledger", "accesses", "acme/shop/s", "--identity", str(bob), "--json", check=True).stdout
    )
    assert len(acc) == 1 and acc[0]["service"] == "app"
    whole = confide(cas, "ledger", "accesses", "acme/shop", "--identity", str(bob), "--json", check=True)
    assert json.loads(whole.stdout) == acc
    # Neither readable (carol may read neither acme/shop/s nor acme/shop): the target as given.
    denied = confide(cas, "ledger", "accesses", "acme/shop/s", "--identity", str(carol), "--json")
    assert denied.returncode == errors.AccessDeniedError.exit_code and "acme/shop/s" in denied.stderr
    # alice owns acme: she sees carol's refused attempt there, with the name it was for.
    hist = json.loads(
        confide(cas, "ledger", "history", "acme", "--identity", str(alice), "--json", check=True).stdout
    )
    assert "policy.refused" in [h["event"] for h in hist["history"]]
    # A policy whose last segment is "events" is shown, not mistaken for acme's events.
    assert apply(cas, tmp_path, policy_yaml("acme/events", m), bob).returncode == 0
    shown = json.loads(
        confide(cas, "policy", "show", "acme/events", "--identity", str(bob), check=True).stdout
    )
    assert shown["name"] == "acme/events"


def test_export_import_with_pinned_hashes(cas: CasProcess, tmp_path: Path) -> None:
    owner, _ = identity(cas, tmp_path, "owner")
    analyst, _ = identity(cas, tmp_path, "analyst")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    consumer = policy_yaml(
        "consumer", m,
        extra_service="    environment:\n      SHARED: \"$$SCONE::shared:hex$$\"\n",
        body="secrets:\n  - name: shared\n    import:\n      session: producer\n      secret: data_key\n",
    )  # fmt: skip
    consumer_hash = loads_policy(consumer).model_dump  # only to make sure it parses
    assert consumer_hash
    c_digest = apply(cas, tmp_path, consumer, analyst).stdout.strip()
    producer = policy_yaml(
        "producer", "00" * 48,
        body=f"secrets:\n  - name: data_key\n    kind: binary\n    size: 16\n    export:\n      - session: consumer\n        session_hash: {c_digest}\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, producer, owner).returncode == 0
    r = confide(cas, "run", "--config-id", "consumer/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == 0, r.stderr
    assert re.search(r"ENV SHARED=[0-9a-f]{32}", r.stdout)
    # the consumer changes its policy: the export was pinned to the old hash, so no release
    changed = consumer.replace("name: app", "name: app\n    pwd: /tmp") + f"predecessor: {c_digest}\n"
    assert apply(cas, tmp_path, changed, analyst).returncode == 0
    r = confide(cas, "run", "--config-id", "consumer/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == errors.AccessDeniedError.exit_code
    assert "does not export" in r.stderr


def test_concurrent_conflicting_updates_exactly_one_wins(
    cas: CasProcess, client: CasClient, tmp_path: Path
) -> None:
    alice_path, _ = identity(cas, tmp_path, "alice")
    alice = Identity.from_json(alice_path.read_text())
    base = loads_policy(policy_yaml("race", "00" * 48))
    digest = client.apply(base, alice)["hash"]
    results: list[object] = []

    def update(i: int) -> None:
        doc = loads_policy(policy_yaml("race", f"{i:02x}" * 48) + f"predecessor: {digest}\n")
        with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as c:
            try:
                results.append(c.apply(doc, alice)["hash"])
            except errors.ConflictError as exc:
                results.append(exc)

    threads = [threading.Thread(target=update, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1 and len(results) == 8
    assert client.show("race", alice)["hash"] == winners[0]


def test_restart_loses_nothing(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml("keep", m, extra_service="    environment:\n      S: \"$$SCONE::s$$\"\n",
                       body="secrets:\n  - name: s\n    kind: ascii\n")  # fmt: skip
    assert apply(cas, tmp_path, text, alice).returncode == 0
    first = confide(
        cas, "run", "--config-id", "keep/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    cas.stop()
    cas.start()
    second = confide(
        cas, "run", "--config-id", "keep/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    value = re.search(r"ENV S=(\S+)", first.stdout).group(1)  # type: ignore[union-attr]
    assert f"ENV S={value}" in second.stdout


def test_malformed_policy_files(cas: CasProcess, tmp_path: Path) -> None:
    alice, _ = identity(cas, tmp_path, "alice")
    for text, where in (
        ("name: x\nversion: '0.3'\nbogus: 1\n", ":3:"),
        ("name: x\nname: y\n", ":2:"),
        ("- [", ""),
    ):
        r = apply(cas, tmp_path, text, alice)
        assert r.returncode == errors.PolicyError.exit_code, r.stderr
        assert where in r.stderr


def test_unauthenticated_and_garbage_requests(cas: CasProcess, tmp_path: Path) -> None:
    import ssl

    import httpx2

    ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
    with httpx2.Client(base_url=cas.env["CONFIDE_CAS_URL"], verify=ctx) as client:
        _garbage(client)


def _garbage(client: object) -> None:
    assert isinstance(client, __import__("httpx2").Client)
    assert client.get("/v1/policies/x").status_code == 403
    assert client.get("/v1/policies/x", headers={"X-Confide-Read": "@@@"}).status_code == 400
    assert client.post("/v1/policies", json={"type": "confide/policy/v1"}).status_code == 400
    assert client.post("/v1/attest", json={"policy": 1}).status_code == 400
    assert client.post("/v1/policies", content=b"not json").status_code == 422
    metrics = client.get("/metrics").text
    assert "confide_requests_total" in metrics


def test_cas_attest_pins_the_tls_identity(cas: CasProcess, tmp_path: Path) -> None:
    pin = tmp_path / "pinned.pem"
    r = confide(cas, "cas", "attest", cas.env["CONFIDE_CAS_URL"], "--out", str(pin))
    assert r.returncode == 0, r.stderr
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    served = x509.load_pem_x509_certificate(Path(cas.env["CONFIDE_CAS_CERT"]).read_bytes())
    assert (
        r.stdout.strip()
        == __import__("hashlib").sha256(served.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert pin.read_bytes() == Path(cas.env["CONFIDE_CAS_CERT"]).read_bytes()
    assert "SIMULATED" in r.stderr
    # CONFIDE_CAS_SPKI pins the key, not the certificate: the value it takes is shown, and a
    # client pinned with it is accepted (the certificate's SHA-256 is refused, exit 40).
    key_line = re.search(r"TLS key SHA-256 \(CONFIDE_CAS_SPKI\): ([0-9a-f]{64})\n", r.stderr)
    assert key_line is not None, r.stderr
    shown = key_line.group(1)
    assert shown != r.stdout.strip()
    CasClient.from_env({**cas.env, "CONFIDE_CAS_SPKI": shown}).close()
    with pytest.raises(errors.NetworkError, match="TLS key SHA-256"):
        CasClient.from_env({**cas.env, "CONFIDE_CAS_SPKI": r.stdout.strip()})
    # The CAS says when it obtained the evidence (it refreshes it every --evidence-refresh).
    assert re.search(r"evidence obtained: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+ h \d+ min ago\)", r.stderr), (
        r.stderr
    )
    measured = re.search(r"measurement: ([0-9a-f]+)", r.stderr).group(1)  # type: ignore[union-attr]
    # The CAS verified that document itself before publishing it, and said so when it started.
    assert cas.log is not None
    lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["self_check"] == {
        "verified": True, "platform": "sim", "tcb_status": None, "advisory_ids": [], "debug": False,
        "simulated": True,
    }, listening  # fmt: skip
    r = confide(cas, "cas", "attest", cas.env["CONFIDE_CAS_URL"], "--measurement", measured.upper())
    assert r.returncode == 0 and "as expected" in r.stderr, r.stderr
    pin.unlink()
    r = confide(
        cas, "cas", "attest", cas.env["CONFIDE_CAS_URL"], "--measurement", "ab" * 48, "--out", str(pin)
    )
    assert r.returncode == errors.MeasurementError.exit_code, r.stderr
    assert not pin.exists()  # nothing pinned
    r = confide(cas, "cas", "attest", cas.env["CONFIDE_CAS_URL"], "--measurement", "xyz")
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    other = tmp_path / "other-sim"
    confide(cas, "sim", "init", "--dir", str(other), check=True)
    r = confide(
        cas, "cas", "attest", cas.env["CONFIDE_CAS_URL"], "--sim-key", str(other / "platform-key.pub.pem")
    )
    assert r.returncode == errors.SignatureError.exit_code, r.stderr


def test_ledger_records_everything_and_is_auditable(cas: CasProcess, tmp_path: Path) -> None:
    """Every change, attestation and release lands in the Merkle log in its own transaction; the
    auditor verifies checkpoints and consistency over HTTPS; stakeholders verify their entries'
    inclusion without seeing anyone else's."""

    alice, _ = identity(cas, tmp_path, "alice")
    bob, _ = identity(cas, tmp_path, "bob")
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml("audited", m, extra_service="    environment:\n      S: \"$$SCONE::s$$\"\n",
                       body="secrets:\n  - name: s\n    kind: ascii\n")  # fmt: skip
    assert apply(cas, tmp_path, text, alice).returncode == 0
    assert apply(cas, tmp_path, policy_yaml("other", "00" * 48), bob).returncode == 0
    out = confide(
        cas, "run", "--config-id", "audited/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    value = re.search(r"ENV S=(\S+)", out.stdout).group(1)  # type: ignore[union-attr]
    wait_for_log(cas.env, 6)  # a checkpoint covers every acknowledged entry within a second
    state = tmp_path / "auditor.state"
    args = ["ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key", cas.env["CONFIDE_LOG_KEY"],
            "--state", str(state), "--json"]  # fmt: skip
    first = json.loads(confide(cas, *args, check=True).stdout)
    assert first["verified"] and first["size"] >= 6
    confide(
        cas, "run", "--config-id", "audited/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
    )
    wait_for_log(cas.env, first["size"] + 2)
    second = json.loads(confide(cas, *args, check=True).stdout)
    assert second["size"] > first["size"] and second["previous_size"] == first["size"]
    hist = json.loads(
        confide(cas, "ledger", "history", "audited", "--identity", str(alice), "--json", check=True).stdout
    )
    assert [h["event"] for h in hist["history"]] == ["policy.created"] and hist["history"][0]["included"]
    acc = json.loads(
        confide(cas, "ledger", "accesses", "audited/s", "--identity", str(alice), "--json", check=True).stdout
    )
    assert len(acc) == 2 and all(a["included"] and a["measurement"] == m for a in acc)
    assert (
        confide(cas, "ledger", "accesses", "audited", "--identity", str(bob)).returncode
        == errors.AccessDeniedError.exit_code
    )
    # the log holds names and hashes, never secret values
    cas.stop()
    for blob in [p.read_bytes() for p in cas.data_dir.glob("cas.db*")]:
        assert value.encode() not in blob


def test_full_audit_rechecks_policy_signatures_and_chains(cas: CasProcess, tmp_path: Path) -> None:
    if cas.db_url:
        pytest.skip("--full reads the SQLite ledger database directly")
    import sqlite3

    alice, a = identity(cas, tmp_path, "alice")
    bob, b = identity(cas, tmp_path, "bob")
    access = f"access_policy:\n  read: [CREATOR]\n  update:\n    - require-all:\n        - signer: {a}\n        - signer: {b}\n"
    text = policy_yaml("chain", "00" * 48, access=access)
    digest = apply(cas, tmp_path, text, alice).stdout.strip()
    new = apply(
        cas, tmp_path, text.replace("00" * 48, "33" * 48) + f"predecessor: {digest}\n", alice
    ).stdout.strip()
    assert (
        confide(
            cas, "policy", "approve", "chain", "--hash", new, "--identity", str(bob), check=True
        ).stdout.strip()
        == "active"
    )
    wait_for_log(cas.env, log_size(cas.env) + 1, timeout=5)
    db = cas.data_dir / "cas.db"
    args = ["ledger", "verify", "--log-db", str(db), "--key", cas.env["CONFIDE_LOG_KEY"], "--full", "--json"]
    r = confide(cas, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    # The stakeholders' own --full at the CAS: the reader (alice) checks the chain through the
    # board's approval (pending, approved, updated), ending at the version now current; bob, on
    # the board but no reader, checks the tree only.
    r = confide(cas, "ledger", "verify", "--full", "--identity", str(alice), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (view,) = json.loads(r.stdout)["policies"]
    assert view["name"] == "chain" and view["head"] == new and view["entries"] >= 4
    r = confide(cas, "ledger", "verify", "--full", "--identity", str(bob), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["policies"] == [], r.stdout + r.stderr
    cas.stop()
    # an administrator rewrites the stored submission of the first version: detected
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT idx, data FROM ledger_entries ORDER BY idx").fetchall()
    idx, data = next((i, d) for i, d in rows if b'"policy.created"' in d and b'"chain"' in d)
    conn.execute(
        "UPDATE ledger_entries SET data = ? WHERE idx = ?", (data.replace(b"00000000", b"11111111", 1), idx)
    )
    conn.commit()
    conn.close()
    r = confide(cas, *args)
    assert r.returncode == errors.EntryMismatchError.exit_code, r.stdout + r.stderr
    assert f"entry {idx}" in r.stdout + r.stderr


def test_volume_keys_and_tags_stay_fresh(cas: CasProcess, client: CasClient, tmp_path: Path) -> None:
    """The CAS releases a volume's key with its current tag; a service reports the new tag after
    writing (compare-and-swap), so an old copy of the volume can never become current again."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from confide.cas.core import decrypt_release

    alice_path, _ = identity(cas, tmp_path, "alice")
    alice = Identity.from_json(alice_path.read_text())
    script = app_script(tmp_path)
    m = measure(cas, "/bin/sh", str(script))
    key_hex, tag0 = "ab" * 32, "01" * 32
    text = policy_yaml("vols", m, extra_service="    image_name: img\n",
                       body=f"volumes:\n  - name: data\n    fspf_key: {key_hex}\n    fspf_tag: \"{tag0}\"\n"
                            "images:\n  - name: img\n    volumes:\n      - name: data\n        path: /srv/data\n")  # fmt: skip
    client.apply(loads_policy(text), alice)
    provider = SimQuoteProvider.for_command(Path(cas.env["CONFIDE_SIM_DIR"]), ["/bin/sh", str(script)])

    def release() -> dict[str, object]:
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        nonce = client.nonce()
        raw = provider.get_evidence(binding_report_data(der, bytes.fromhex(nonce))).raw
        resp = client.attest({"policy": "vols", "service": "app", "platform": "sim", "nonce": nonce,
                              "evidence": base64.b64encode(raw).decode(), "public_key": base64.b64encode(der).decode()})  # fmt: skip
        return decrypt_release(key, resp, bytes.fromhex(nonce))

    first = release()
    [vol] = first["volumes"]  # type: ignore[misc]
    assert vol == {"name": "data", "path": "/srv/data", "key": key_hex, "tag": tag0, "generation": 0,
                   "update_policy": "rollback_protected"}  # fmt: skip
    session = str(first["session"])
    tag1 = "02" * 32
    assert client.report_volume_tag("vols", "data", session, tag0, tag1)["generation"] == 1
    with pytest.raises(errors.ConflictError):  # an update from an old state is refused
        client.report_volume_tag("vols", "data", session, tag0, "03" * 32)
    with pytest.raises(errors.AccessDeniedError):
        client.report_volume_tag("vols", "data", "00" * 32, tag1, "03" * 32)
    second = release()
    assert second["volumes"][0]["tag"] == tag1  # type: ignore[index]
    events = client.events("vols", alice)["events"]
    tags = [e["payload"]["tag"] for e in events if e["type"] == "volume-tag"]
    assert tags == [tag0, tag1]


def sealed_volume(cas: CasProcess, vol: Path, keyfile: Path, src: Path) -> str:
    """Create a volume from ``src`` with the CLI, seal it; return its tag."""
    confide(cas, "volume", "create", str(vol), "--key-out", str(keyfile), check=True)
    confide(cas, "volume", "add", str(vol), str(src), "--key", str(keyfile), check=True)
    sealed = confide(cas, "volume", "seal", str(vol), "--key", str(keyfile), check=True)
    return sealed.stdout.strip().split()[-1]


def volume_policy(name: str, measurement: str, key_hex: str, tag: str, vol: Path) -> str:
    """A policy whose service ``app`` gets volume ``data`` (at ``vol``) with key and tag."""
    return policy_yaml(
        name, measurement, extra_service="    image_name: img\n",
        body=f"volumes:\n  - name: data\n    fspf_key: {key_hex}\n    fspf_tag: \"{tag}\"\n"
             f"images:\n  - name: img\n    volumes:\n      - name: data\n        path: {vol}\n",
    )  # fmt: skip


def test_confide_run_mounts_volumes_and_keeps_them_fresh(cas: CasProcess, tmp_path: Path) -> None:
    """confide run mounts the released volume (FUSE or tmpfs), the service appends to a file,
    the new tag goes to the CAS; the next run sees the change; an old copy is refused."""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    import shutil

    alice, _ = identity(cas, tmp_path, "alice")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    tag0 = sealed_volume(cas, vol, keyfile, src)
    script = tmp_path / "writer.sh"
    script.write_text(
        'cat "$CONFIDE_VOLUME_DATA/notes.txt"\necho "run at $$" >> "$CONFIDE_VOLUME_DATA/notes.txt"\n'
    )
    m = measure(cas, "/bin/sh", str(script))
    key_hex = keyfile.read_text().strip()
    text = volume_policy("volrun", m, key_hex, tag0, vol)
    assert apply(cas, tmp_path, text, alice).returncode == 0
    old_copy = tmp_path / "old-copy"
    shutil.copytree(vol, old_copy)
    first = confide(cas, "run", "--config-id", "volrun/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("first line")
    second = confide(cas, "run", "--config-id", "volrun/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert second.returncode == 0, second.stderr
    assert "run at" in second.stdout  # the first run's write is there: the new tag was accepted
    tags = [e for e in json.loads("[" + ",".join(confide(cas, "policy", "events", "volrun", "--identity", str(alice),
                                                         check=True).stdout.splitlines()) + "]")
            if e["type"] == "volume-tag"]  # fmt: skip
    assert [t["payload"]["generation"] for t in tags] == [0, 1, 2]
    # the operator puts back the old copy of the volume: refused before anything is served
    shutil.rmtree(vol)
    shutil.copytree(old_copy, vol)
    third = confide(cas, "run", "--config-id", "volrun/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert third.returncode == errors.RollbackError.exit_code, third.stdout + third.stderr


def sim_release(cas: CasProcess, client: CasClient, policy: str, argv: list[str]) -> dict[str, object]:
    """Attest as service ``app`` of ``policy`` running ``argv`` (simulated TEE); the release."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from confide.cas.core import decrypt_release

    provider = SimQuoteProvider.for_command(Path(cas.env["CONFIDE_SIM_DIR"]), argv)
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = client.nonce()
    raw = provider.get_evidence(binding_report_data(der, bytes.fromhex(nonce))).raw
    resp = client.attest({"policy": policy, "service": "app", "platform": "sim", "nonce": nonce,
                          "evidence": base64.b64encode(raw).decode(), "public_key": base64.b64encode(der).decode()})  # fmt: skip
    return decrypt_release(key, resp, bytes.fromhex(nonce))


def volume_tags(cas: CasProcess, policy: str, ident: Path) -> list[dict[str, object]]:
    lines = confide(cas, "policy", "events", policy, "--identity", str(ident), check=True).stdout.splitlines()
    return [e["payload"] for e in map(json.loads, lines) if e["type"] == "volume-tag"]


APPEND = 'cat "$CONFIDE_VOLUME_DATA/notes.txt"\necho "run at $$" >> "$CONFIDE_VOLUME_DATA/notes.txt"\n'


def test_confide_run_discards_an_ephemeral_volumes_changes(
    cas: CasProcess, client: CasClient, tmp_path: Path
) -> None:
    """update_policy ephemeral: the service writes during its run, confide run discards the
    changes at exit and reports nothing; the next run sees the old data, the CAS's tag is
    unchanged, and a tag update sent directly (a tampered runtime) is refused by the CAS."""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    from confide.volume import VolumeKey
    from confide.volume.store import load_sealed

    alice, _ = identity(cas, tmp_path, "alice")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    tag0 = sealed_volume(cas, vol, keyfile, src)
    script = tmp_path / "writer.sh"
    script.write_text(APPEND + 'cat "$CONFIDE_VOLUME_DATA/notes.txt"\n')
    m = measure(cas, "/bin/sh", str(script))
    key_hex = keyfile.read_text().strip()
    text = volume_policy("ephem", m, key_hex, tag0, vol).replace(
        f"        path: {vol}\n", f"        path: {vol}\n        update_policy: ephemeral\n"
    )
    assert "update_policy: ephemeral" in text
    assert apply(cas, tmp_path, text, alice).returncode == 0
    for _ in range(2):
        r = confide(cas, "run", "--config-id", "ephem/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        # the write was visible during the run, and the run started from the old data
        assert r.stdout.startswith("first line\nfirst line\nrun at"), r.stdout
        assert r.stdout.count("run at") == 1, r.stdout
    assert [t["generation"] for t in volume_tags(cas, "ephem", alice)] == [0]
    manifest, tag = load_sealed(vol, VolumeKey(bytes.fromhex(key_hex)))
    assert tag == tag0 and list(manifest.by_path()) == ["notes.txt"]
    # a runtime that reports a tag anyway cannot persist: the CAS refuses, over TLS
    got = sim_release(cas, client, "ephem", ["/bin/sh", str(script)])
    assert got["volumes"][0]["update_policy"] == "ephemeral"  # type: ignore[index]
    with pytest.raises(errors.AccessDeniedError, match="volume data is ephemeral for service app"):
        client.report_volume_tag("ephem", "data", str(got["session"]), tag0, "02" * 32)
    assert [t["generation"] for t in volume_tags(cas, "ephem", alice)] == [0]
    # the verified ledger shows each release's mode
    acc = confide(cas, "ledger", "accesses", "ephem", "--identity", str(alice), "--json", check=True)
    rows = json.loads(acc.stdout)
    assert len(rows) == 3 and all(r["volumes"][0]["update_policy"] == "ephemeral" for r in rows)
    text = confide(cas, "ledger", "accesses", "ephem", "--identity", str(alice), check=True).stdout
    assert text.count("volumes=[data (ephemeral)]") == 3


def test_confide_run_without_rollback_protection_accepts_an_older_version(
    cas: CasProcess, tmp_path: Path
) -> None:
    """update_policy no_rollback_protection: an older authentic copy of the volume is mounted
    (it would be a RollbackError by default), and its new tag is recorded although the CAS's
    current tag was another one (no compare-and-swap: last writer wins)."""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    import shutil

    alice, _ = identity(cas, tmp_path, "alice")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    tag0 = sealed_volume(cas, vol, keyfile, src)
    script = tmp_path / "writer.sh"
    script.write_text(APPEND)
    m = measure(cas, "/bin/sh", str(script))
    text = volume_policy("norb", m, keyfile.read_text().strip(), tag0, vol).replace(
        f"        path: {vol}\n", f"        path: {vol}\n        update_policy: no_rollback_protection\n"
    )
    assert apply(cas, tmp_path, text, alice).returncode == 0
    old_copy = tmp_path / "old-copy"
    shutil.copytree(vol, old_copy)
    first = confide(cas, "run", "--config-id", "norb/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert first.returncode == 0, first.stderr
    tag1 = volume_tags(cas, "norb", alice)[-1]["tag"]
    assert tag1 != tag0
    # the operator puts back the old copy: accepted, the service sees the old data
    shutil.rmtree(vol)
    shutil.copytree(old_copy, vol)
    second = confide(cas, "run", "--config-id", "norb/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert second.returncode == 0, second.stderr
    assert second.stdout == "first line\n"
    tags = volume_tags(cas, "norb", alice)
    assert [t["generation"] for t in tags] == [0, 1, 2]
    last = tags[-1]
    assert (last["previous"], last["based_on"], last["update_policy"]) == (
        tag1,
        tag0,
        "no_rollback_protection",
    )
    third = confide(cas, "run", "--config-id", "norb/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert third.returncode == 0 and third.stdout.count("run at") == 1, third.stdout + third.stderr


def test_an_importer_cannot_persist_under_an_exporters_ephemeral(
    cas: CasProcess, client: CasClient, tmp_path: Path
) -> None:
    """The exporter exports the volume with update_policy ephemeral; the importer's image says
    rollback_protected. The importer's service may write during its run, but nothing persists,
    and its runtime cannot move the exporter's tag even by asking the CAS directly."""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    from confide.volume import VolumeKey
    from confide.volume.store import load_sealed

    owner, _ = identity(cas, tmp_path, "owner")
    analyst, _ = identity(cas, tmp_path, "analyst")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    tag0 = sealed_volume(cas, vol, keyfile, src)
    key_hex = keyfile.read_text().strip()
    exporter = policy_yaml(
        "producer", "00" * 48,
        body=f"volumes:\n  - name: data\n    fspf_key: {key_hex}\n    fspf_tag: \"{tag0}\"\n"
             "    export:\n      - to:\n          session: consumer\n        update_policy: ephemeral\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, exporter, owner).returncode == 0
    script = tmp_path / "writer.sh"
    script.write_text(APPEND)
    m = measure(cas, "/bin/sh", str(script))
    importer = policy_yaml(
        "consumer", m, extra_service="    image_name: img\n",
        body="volumes:\n  - name: data\n    import:\n      session: producer\n      volume: data\n"
             f"images:\n  - name: img\n    volumes:\n      - name: data\n        path: {vol}\n"
             "        update_policy: rollback_protected\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, importer, analyst).returncode == 0
    for _ in range(2):
        r = confide(cas, "run", "--config-id", "consumer/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "first line\n"  # the previous run's write did not persist
    assert load_sealed(vol, VolumeKey(bytes.fromhex(key_hex)))[1] == tag0
    got = sim_release(cas, client, "consumer", ["/bin/sh", str(script)])
    assert got["volumes"][0]["update_policy"] == "ephemeral"  # type: ignore[index]
    with pytest.raises(errors.AccessDeniedError, match="update_policy of the export by producer"):
        client.report_volume_tag("consumer", "data", str(got["session"]), tag0, "02" * 32)
    assert [t["generation"] for t in volume_tags(cas, "producer", owner)] == [0]


def test_confide_run_mounts_a_volume_re_exported_along_a_chain(cas: CasProcess, tmp_path: Path) -> None:
    """producer owns the volume and exports it to broker, which imports it and exports it on to
    consumer. consumer's confide run mounts the producer's volume, its writes move the
    producer's one tag (recorded under the producer, naming consumer and the chain), the ledger's
    accesses show the chain, and when broker stops exporting, consumer's next run is refused."""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    owner, _ = identity(cas, tmp_path, "owner")
    middle, _ = identity(cas, tmp_path, "middle")
    analyst, _ = identity(cas, tmp_path, "analyst")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    tag0 = sealed_volume(cas, vol, keyfile, src)
    key_hex = keyfile.read_text().strip()
    producer = policy_yaml(
        "producer", "00" * 48,
        body=f"volumes:\n  - name: data\n    fspf_key: {key_hex}\n    fspf_tag: \"{tag0}\"\n"
             "    export:\n      - session: broker\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, producer, owner).returncode == 0
    broker = policy_yaml(
        "broker", "00" * 48,
        body="volumes:\n  - name: shared\n    import:\n      session: producer\n      volume: data\n"
             "    export:\n      - session: consumer\n",
    )  # fmt: skip
    b_digest = apply(cas, tmp_path, broker, middle).stdout.strip()
    script = tmp_path / "writer.sh"
    script.write_text(APPEND.replace("CONFIDE_VOLUME_DATA", "CONFIDE_VOLUME_INPUT"))  # its own name
    m = measure(cas, "/bin/sh", str(script))
    consumer = policy_yaml(
        "consumer", m, extra_service="    image_name: img\n",
        body="volumes:\n  - name: input\n    import:\n      session: broker\n      volume: shared\n"
             f"images:\n  - name: img\n    volumes:\n      - name: input\n        path: {vol}\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, consumer, analyst).returncode == 0
    run = ["run", "--config-id", "consumer/app", "--tee", "sim", "--", "/bin/sh", str(script)]
    first = confide(cas, *run)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "first line\n"
    second = confide(cas, *run)
    assert second.returncode == 0, second.stderr
    assert "run at" in second.stdout  # the first run's tag moved the producer's current tag
    tags = volume_tags(cas, "producer", owner)
    assert [t["generation"] for t in tags] == [0, 1, 2]
    assert tags[-1]["by"] == {"policy": "consumer", "volume": "input"}
    assert tags[-1]["via"] == [{"policy": "broker", "volume": "shared"}]
    assert volume_tags(cas, "broker", middle) == [] and volume_tags(cas, "consumer", analyst) == []
    acc = confide(cas, "ledger", "accesses", "consumer", "--identity", str(analyst), "--json", check=True)
    rows = json.loads(acc.stdout)
    assert len(rows) == 2
    for row in rows:
        [v] = row["volumes"]
        assert v["owner"] == {"policy": "producer", "volume": "data"}
        assert v["via"] == [{"policy": "broker", "volume": "shared"}]
        assert "key" not in v
    # the producer (the owner) and the broker (the re-exporter) each list both releases, naming
    # the importer and the chain; each sees its own volume as released, nothing of consumer's
    for policy, who, volume in (("producer", owner, "data"), ("broker", middle, "shared")):
        acc = confide(cas, "ledger", "accesses", policy, "--identity", str(who), "--json", check=True)
        exported = json.loads(acc.stdout)
        assert [r["importer"] for r in exported] == ["consumer", "consumer"], policy
        assert [r["index"] for r in exported] > [r["index"] for r in rows]
        for row in exported:
            assert row["secrets"] == [{"policy": policy, "name": f"volume/{volume}", "version": 1}]
            [v] = row["volumes"]
            assert v["owner"] == {"policy": "producer", "volume": "data"} and "name" not in v
            assert v["via"] == [{"policy": "broker", "volume": "shared"}]
    # a policy without releases says where they would be (docs/ledger.md)
    mine = confide(cas, "ledger", "accesses", "consumer/nothing", "--identity", str(analyst), check=True)
    assert mine.stdout == ""
    assert mine.stderr == f"no release recorded under consumer's secret nothing: {RELEASES_WHERE}\n"
    # broker stops exporting: the chain is cut at consumer's next start
    withdrawn = broker.replace("    export:\n      - session: consumer\n", "") + f"predecessor: {b_digest}\n"
    assert apply(cas, tmp_path, withdrawn, middle).returncode == 0
    third = confide(cas, *run)
    assert third.returncode == errors.AccessDeniedError.exit_code, third.stdout + third.stderr
    assert "broker does not export volume shared" in third.stderr


def test_confide_run_stops_the_service_when_a_volume_file_was_tampered_with(
    cas: CasProcess, tmp_path: Path
) -> None:
    """The operator flips one byte of an encrypted file at rest. FUSE mounts verify lazily: the
    service's read gets EIO, confide run stops the service at once, discards the session's
    writes (no new tag) and exits with the integrity error. (tmpfs mounts refuse at mount.)"""
    if cas.db_url:
        pytest.skip("the volume flow is the same on both databases; run once")
    import time

    from confide.volume import VolumeKey
    from confide.volume.mount import fuse_usable
    from confide.volume.store import load_sealed, object_path

    alice, _ = identity(cas, tmp_path, "alice")
    vol, keyfile, src = tmp_path / "vol", tmp_path / "vol.key", tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(64 * 1024))
    tag0 = sealed_volume(cas, vol, keyfile, src)
    key_hex = keyfile.read_text().strip()
    manifest, _ = load_sealed(vol, VolumeKey(bytes.fromhex(key_hex)))
    obj = object_path(vol, manifest.by_path()["model.bin"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    obj.write_bytes(bytes(raw))
    script = tmp_path / "reader.sh"
    script.write_text(
        'echo started >> "$CONFIDE_VOLUME_DATA/log.txt"\n'
        'cat "$CONFIDE_VOLUME_DATA/model.bin" > /dev/null || echo "read failed"\n'
        "exec sleep 60\n"
    )
    m = measure(cas, "/bin/sh", str(script))
    text = volume_policy("tamper", m, key_hex, tag0, vol)
    assert apply(cas, tmp_path, text, alice).returncode == 0
    start = time.monotonic()
    run = confide(cas, "run", "--config-id", "tamper/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert run.returncode == errors.SignatureError.exit_code, run.stdout + run.stderr
    assert time.monotonic() - start < 40  # stopped, not left to finish its 60 s sleep
    assert "model.bin" in run.stderr and "integrity" in run.stderr.lower()
    if fuse_usable() is None:  # FUSE: the service started, its read failed, then it was stopped
        assert "read failed" in run.stdout and "service was stopped" in run.stderr, run.stderr
    events = [json.loads(line) for line in confide(cas, "policy", "events", "tamper", "--identity", str(alice),
                                                   check=True).stdout.splitlines()]  # fmt: skip
    assert [e["payload"]["generation"] for e in events if e["type"] == "volume-tag"] == [0]
    assert "log.txt" not in manifest.by_path()
    assert "log.txt" not in load_sealed(vol, VolumeKey(bytes.fromhex(key_hex)))[0].by_path()


def test_certificate_issued_to_the_runtime_key(cas: CasProcess, tmp_path: Path) -> None:
    """issue_to_runtime: the CAS certifies the attested runtime's own ephemeral key; the private
    key never leaves the runtime, which writes it where the policy asks."""
    if cas.db_url:
        pytest.skip("same on both databases")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    inject = SHM / f"confide-cert-{os.getpid()}-{tmp_path.name}"
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml(
        "tlsapp", m,
        extra_service=f"    image_name: img\n    command: /bin/sh {script} {inject}/cert.pem\n",
        body=f"""secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
  - name: mine
    kind: x509
    issuer: ca
    issue_to_runtime: true
    common_name: svc.local
    dns: [svc.local]
images:
  - name: img
    injection_files:
      - path: {inject}/cert.pem
        content: "$$SCONE::mine:crt$$"
      - path: {inject}/key.pem
        content: "$$SCONE::mine:privatekey$$"
""",
    )  # fmt: skip
    r = apply(cas, tmp_path, text, alice)
    assert r.returncode == 0 and r.stderr == ""  # the runtime's key goes into a file: no warning
    r = confide(cas, "run", "--config-id", "tlsapp/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == 0, r.stderr
    assert "/proc/PID/cmdline" not in r.stderr
    cert = x509.load_pem_x509_certificate((inject / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((inject / "key.pem").read_bytes(), None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert cert.issuer.rfc4514_string() == "CN=Test CA"
    cas.stop()
    # The private scalar, not the end of the PKCS#8 DER: that is the public point, which the
    # CAS keeps in the issued certificate it records (runtime_certificates.der, for OCSP).
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    size = (key.curve.key_size + 7) // 8
    scalar = key.private_numbers().private_value.to_bytes(size, "big")
    blobs = [p.read_bytes() for p in cas.data_dir.glob("cas.db*")]
    assert blobs
    public_point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert any(public_point in blob for blob in blobs)  # the search sees the file's certificate bytes
    for blob in blobs:
        assert scalar not in blob
    for f in inject.iterdir():
        f.unlink()
    inject.rmdir()


def test_confide_run_receives_the_renewed_certificate(cas: CasProcess, tmp_path: Path) -> None:
    """Time passes (for real: a leaf valid 40 s, renewed 35 s before its notAfter): the next
    ``confide run`` receives a renewed certificate for the same key, chaining to the CA it
    receives; ``policy show`` gives version and validity, the ledger the renewal, no values."""
    import time
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.verification import PolicyBuilder, Store

    alice, _ = identity(cas, tmp_path, "alice")
    script = app_script(tmp_path)
    inject = SHM / f"confide-renew-{os.getpid()}-{tmp_path.name}"
    m = measure(cas, "/bin/sh", str(script))
    text = policy_yaml(
        "renew", m,
        extra_service=f"    image_name: img\n    command: /bin/sh {script}\n",
        body=f"""secrets:
  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
    valid_for: 1 day
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [srv.local]
    valid_for: 40s
    renew_before: 35s
images:
  - name: img
    injection_files:
      - path: {inject}/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
      - path: {inject}/ca.pem
        content: "$$SCONE::ca:crt$$"
      - path: {inject}/srv.key
        content: "$$SCONE::srv:privatekey$$"
""",
    )  # fmt: skip
    assert apply(cas, tmp_path, text, alice).returncode == 0

    def run() -> tuple[list[x509.Certificate], x509.Certificate, bytes]:
        r = confide(cas, "run", "--config-id", "renew/app", "--tee", "sim", "--", "/bin/sh", str(script))
        assert r.returncode == 0, r.stderr
        chain = x509.load_pem_x509_certificates((inject / "srv.pem").read_bytes())
        return (
            chain,
            x509.load_pem_x509_certificate((inject / "ca.pem").read_bytes()),
            (inject / "srv.key").read_bytes(),
        )

    def spki(cert: x509.Certificate) -> bytes:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    try:
        chain1, ca1, key1 = run()
        due = chain1[0].not_valid_after_utc.timestamp() - 35
        time.sleep(max(0.0, due - time.time()) + 1.0)
        chain2, ca2, key2 = run()
    finally:
        for f in inject.iterdir() if inject.exists() else ():
            f.unlink()
        if inject.exists():
            inject.rmdir()
    leaf1, leaf2 = chain1[0], chain2[0]
    assert leaf2.serial_number != leaf1.serial_number
    assert leaf2.not_valid_after_utc > leaf1.not_valid_after_utc
    assert spki(leaf2) == spki(leaf1) and key2 == key1  # same private key
    assert ca2 == ca1 and chain2[1] == ca2
    verifier = (
        PolicyBuilder()
        .store(Store([ca2]))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("srv.local"))
    )
    verifier.verify(leaf2, chain2[1:])
    shown_text = confide(cas, "policy", "show", "renew", "--identity", str(alice), check=True).stdout
    shown = json.loads(shown_text)["secrets"]["srv"]
    assert shown["version"] >= 2 and shown["serial"] == format(leaf2.serial_number, "x")
    assert shown["not_after"] == leaf2.not_valid_after_utc.isoformat() and "renew_at" in shown
    events = [json.loads(line) for line in confide(cas, "policy", "events", "renew", "--identity", str(alice),
                                                   check=True).stdout.splitlines()]  # fmt: skip
    renewals = [
        c for e in events if e["type"] == "certificates-renewed" for c in e["payload"]["certificates"]
    ]
    assert any(c["serial"] == format(leaf2.serial_number, "x") for c in renewals)
    key_body = "".join(key1.decode().splitlines()[1:-1])
    assert key_body[-40:] not in shown_text and all(key_body[-40:] not in json.dumps(e) for e in events)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_witness_cosigns_every_cas_checkpoint(tmp_path: Path, scheme: str) -> None:
    """With --witness, every checkpoint the CAS signs is cosigned by the witness, which first
    checks it extends the last one it saw; an auditor can require that cosignature. Over HTTPS
    the CAS trusts the witness through --witness-cacert only."""
    import time as _time

    from pki import tls_server_files

    first = CasProcess(tmp_path / "cas", None).start()
    log_key = first.env["CONFIDE_LOG_KEY"]
    first.stop()
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    wkey = subprocess.run([sys.executable, "-m", "confide", "ledger", "keygen", "--name", "witness.example/w1",
                           "--witness", "--out", str(tmp_path / "w.key")], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()  # fmt: skip
    tls: tuple[str, ...] = ()
    cas_tls: tuple[str, ...] = ()
    if scheme == "https":
        ca, cert, key = tls_server_files(tmp_path, "witness")
        tls, cas_tls = ("--tls-cert", str(cert), "--tls-key", str(key)), ("--witness-cacert", str(ca))
    # The witness takes a free port itself and says which on its first stderr line, once it
    # listens; the CAS starts after it (it asks the witness at its start).
    witness_log = tmp_path / "witness.log"
    with witness_log.open("wb") as err:
        witness = subprocess.Popen(
            [sys.executable, "-m", "confide", "ledger", "witness", "serve", "--state", str(tmp_path / "w.state"),
             "--key", str(tmp_path / "w.key"), "--log", log_key, "--listen", "127.0.0.1:0", *tls],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    cas: CasProcess | None = None
    try:
        deadline = _time.time() + 60
        while "\n" not in (banner := witness_log.read_text()):
            assert witness.poll() is None and _time.time() < deadline, banner
            _time.sleep(0.05)
        port = int(banner.split("\n", 1)[0].rsplit(":", 1)[1].split("/", 1)[0])
        cas = CasProcess(
            tmp_path / "cas", None, extra_args=("--witness", f"{scheme}://127.0.0.1:{port}={wkey}", *cas_tls)
        )
        cas.start()
        alice, _ = identity(cas, tmp_path, "alice")
        assert apply(cas, tmp_path, policy_yaml("witnessed", "00" * 48), alice).returncode == 0
        args = ["ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key", log_key, "--json"]
        deadline = _time.time() + 30  # the checkpoint is signed, then sent to the witness
        while True:
            ok = confide(cas, *args, "--witness", wkey)
            if ok.returncode == 0 or _time.time() > deadline:
                break
            _time.sleep(0.3)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["witnesses"] == [wkey]
        fresh = confide(cas, *args, "--witness", wkey, "--max-age", "5 minutes")  # cosigned seconds ago
        assert fresh.returncode == 0 and json.loads(fresh.stdout)["max_age"] == 300, (
            fresh.stdout + fresh.stderr
        )
        other = subprocess.run([sys.executable, "-m", "confide", "ledger", "keygen", "--name", "other.example/w2",
                                "--witness", "--out", str(tmp_path / "w2.key")], capture_output=True, text=True,
                               env=env, check=True).stdout.strip()  # fmt: skip
        missing = confide(cas, *args, "--witness", other)
        assert missing.returncode == errors.UnknownKeyError.exit_code, missing.stdout + missing.stderr
    finally:
        if cas is not None:
            cas.stop()
        witness.terminate()
        witness.wait(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="binding over a persistent path needs root (CAP_SYS_ADMIN)")
def test_files_injected_at_persistent_paths_are_served_from_memory(cas: CasProcess, tmp_path: Path) -> None:
    """An injection path on a disk file system gets its content from a private tmpfs bound over
    it: the service reads the secret, the disk never holds it, an existing file is unchanged."""
    alice, _ = identity(cas, tmp_path, "alice")
    etc = tmp_path / "etc"  # ext4 or whatever backs the test directory: not memory
    existing = tmp_path / "existing.conf"
    existing.write_text("ORIGINAL\n")
    script = tmp_path / "show.sh"
    script.write_text(
        f'cat {etc}/app/new.conf; echo; cat {existing}; echo; stat -c "%a" {etc}/app/new.conf\n'
    )
    text = policy_yaml(
        "diskinject", measure(cas, "/bin/sh", str(script)),
        extra_service=f"""    image_name: img
    command: /bin/sh {script}
""",
        body=f"""secrets:
  - name: token
    kind: ascii
    size: 32
images:
  - name: img
    injection_files:
      - path: {etc}/app/new.conf
        content: "NEW=$$SCONE::token$$"
      - path: {existing}
        content: "REPLACED=$$SCONE::token$$"
""",
    )  # fmt: skip
    assert apply(cas, tmp_path, text, alice).returncode == 0
    r = confide(cas, "run", "--config-id", "diskinject/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == 0, r.stderr
    token = re.search(r"NEW=(\S{32})", r.stdout).group(1)  # type: ignore[union-attr]
    assert f"REPLACED={token}" in r.stdout and r.stdout.rstrip().endswith("600")
    # after the run: the new path is an empty mount point, the existing file untouched
    assert (etc / "app" / "new.conf").read_bytes() == b""
    assert existing.read_text() == "ORIGINAL\n"
    # nothing of the secret reached the disk under the test directory
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f


@pytest.mark.skipif(os.geteuid() != 0, reason="the template's path is on disk: binding over it needs root")
def test_a_template_in_the_image_is_rendered_at_start(cas: CasProcess, tmp_path: Path) -> None:
    """An injection file given by path only is a template read at start: the service reads it
    with the secrets substituted, while the file on disk keeps its placeholders."""
    alice, _ = identity(cas, tmp_path, "alice")
    template = tmp_path / "app.conf"
    template.write_text("user=svc\npassword=$$SCONE::token$$\n")
    script = tmp_path / "show.sh"
    script.write_text(f"cat {template}\n")
    text = policy_yaml(
        "templated", measure(cas, "/bin/sh", str(script)),
        extra_service=f"    image_name: img\n    command: /bin/sh {script}\n",
        body=f"secrets:\n  - name: token\n    kind: ascii\n    size: 24\n"
             f"images:\n  - name: img\n    injection_files:\n      - {template}\n",
    )  # fmt: skip
    assert apply(cas, tmp_path, text, alice).returncode == 0
    r = confide(cas, "run", "--config-id", "templated/app", "--tee", "sim", "--", "/bin/sh", str(script))
    assert r.returncode == 0, r.stderr
    token = re.search(r"^password=(\S{24})$", r.stdout, re.M)
    assert token is not None and "$$SCONE" not in r.stdout
    assert template.read_text() == "user=svc\npassword=$$SCONE::token$$\n"


def test_oversized_request_heads_and_bodies_are_refused(cas: CasProcess, client: CasClient) -> None:
    """Over real TLS: a request head past MAX_HEAD gets 431 and the connection is closed; a body
    past MAX_BODY gets 413 with the CAS's error shape (a ParseError for clients) without being
    read whole; the CAS goes on serving. Both used to be buffered without limit."""
    import socket
    import ssl

    import httpx2

    from confide.cas.app import MAX_BODY
    from confide.httpserve.limits import MAX_HEAD

    host, port = cas.env["CONFIDE_CAS_URL"].removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
    with ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host) as s:
        s.sendall(b"POST /v1/attest/nonce HTTP/1.1\r\nHost: cas\r\nX-Big: ")
        try:
            for _ in range(4 * MAX_HEAD // 4096):
                s.sendall(b"a" * 4096)
        except OSError:
            pass  # the CAS may close before all of it is sent
        s.settimeout(30)
        assert s.recv(4096).startswith(b"HTTP/1.1 431 ")
    with httpx2.Client(verify=ctx, timeout=60) as http:
        resp = http.post(f"{cas.env['CONFIDE_CAS_URL']}/v1/policies", content=b" " * (MAX_BODY + 1))
        assert resp.status_code == 413
        assert resp.json()["error"]["class"] == "ParseError"

        def chunks() -> Iterator[bytes]:  # chunked, no Content-Length: refused once past the limit
            for _ in range(MAX_BODY // (1 << 20) + 64):
                yield b" " * (1 << 20)

        try:
            resp = http.post(f"{cas.env['CONFIDE_CAS_URL']}/v1/attest", content=chunks())
            assert resp.status_code == 413
        except httpx2.TransportError:
            pass  # the CAS answered and closed while the client was still sending
    assert client.nonce()
