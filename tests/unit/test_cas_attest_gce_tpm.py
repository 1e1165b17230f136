"""The CAS accepts Google Compute Engine vTPM evidence (``gce-tpm``): the evidence of
``confide run --tee gce-tpm``'s provider on a real swtpm provisioned like a GCE VM's vTPM
(``tests/gce_fakes.py``: the AK template and an AK certificate under a test Google-like PKI whose
root the CAS's verifier is given), the binding of the runtime key and nonce through the quote's
extraData, the ``gce-tpm`` policy factors, and the refusals (another PCR, a replay, another
binding, a tampered quote or AK certificate, a certificate of another PKI). End to end: a CAS
served over real TLS and ``confide run --tee gce-tpm`` as a child process on its own swtpm."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cas_inproc import RuntimeKey, last_attestation, production_cas, refused, submission
from cli import run_confide
from confide import errors
from confide.cas.app import create_app
from confide.cas.client import CasClient
from confide.cas.core import Cas
from confide.cas.server import prepare, uvicorn_server
from confide.cas.verifier import PlatformVerifier
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.httpserve.limits import HttpLimits
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import TcpTransport, Tpm
from confide.verify.result import Platform
from gce_fakes import INSTANCE, FakeGoogle, Instance, clear_gce_indices, provision_gce_vtpm
from tpm_fakes import pcr_extend, start_swtpm

ASSETS = Path(__file__).parent.parent / "assets" / "tpm" / "google-go-tpm-tools"
GOOGLE = FakeGoogle.make()
OTHER_GOOGLE = FakeGoogle.make()


def policy_text(
    pcrs: list[bytes],
    *,
    name: str = "app",
    project: str = INSTANCE.project_id,
    command: str = "vm --token $$SCONE::token$$",
    instance_id: int | None = None,
) -> str:
    instance = "" if instance_id is None else f"\n        instance_id: {instance_id}"
    return f"""name: {name}
version: "0.3"
services:
  - name: vm
    command: {command}
    environment:
      TOKEN: $$SCONE::token$$
    attestation:
      gce-tpm:
        pcrs:
          "0": "{pcrs[0].hex()}"
          "7": ["{"00" * 32}", "{pcrs[7].hex()}"]
        project_id: {project}
        project_number: {INSTANCE.project_number}
        zone: {INSTANCE.zone}
        instance_name: {INSTANCE.instance_name}{instance}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [vtpm-only]
"""


@pytest.fixture
def vm(swtpm_tpm: Tpm) -> Iterator[GceTpmQuoteProvider]:
    """The vTPM of a GCE VM (RSA AK, production instance), and the guest's provider."""
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        yield GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
    finally:
        clear_gce_indices(swtpm_tpm)


@pytest.fixture
def cas(tmp_path: Path, swtpm_tpm: Tpm) -> Cas:
    pcrs = swtpm_tpm.pcr_read(range(24))
    return production_cas(tmp_path / "cas", PlatformVerifier(gce_roots=(GOOGLE.root,)), policy_text(pcrs))


def attest(
    cas: Cas, vm: GceTpmQuoteProvider, rt: RuntimeKey | None = None
) -> tuple[RuntimeKey, dict[str, object]]:
    rt = rt or RuntimeKey(cas)
    evidence = vm.get_evidence(rt.binding)
    assert evidence.platform is Platform.GCE_TPM
    return rt, rt.body(policy="app", service="vm", platform="gce-tpm", evidence=evidence.raw)


def test_bound_evidence_is_accepted_and_recorded(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt, body = attest(cas, vm)
    config = rt.open(cas.attest(body))
    assert config["command"][0] == "vm" and len(config["command"][2]) > 0
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["platform"] == "gce-tpm"
    assert event["gce_instance"] == {
        "project_id": INSTANCE.project_id,
        "project_number": str(INSTANCE.project_number),
        "zone": INSTANCE.zone,
        "instance_name": INSTANCE.instance_name,
        "instance_id": str(INSTANCE.instance_id),
    }
    assert event["evidence_sha256"] == hashlib.sha256(base64.b64decode(str(body["evidence"]))).hexdigest()


def test_an_ecc_ak_is_accepted(cas: Cas, swtpm_tpm: Tpm) -> None:
    provision_gce_vtpm(swtpm_tpm, GOOGLE, kind="ecc")
    try:
        vm = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        rt, body = attest(cas, vm)
        assert vm.get_evidence(rt.binding).provider == "gce-tpm/ecc"
        rt.open(cas.attest(body))
    finally:
        clear_gce_indices(swtpm_tpm)


def test_another_pcr_is_refused_with_the_pcr_named(cas: Cas, vm: GceTpmQuoteProvider, swtpm_tpm: Tpm) -> None:
    assert isinstance(swtpm_tpm.transport, TcpTransport)
    pcr_extend(swtpm_tpm.transport, 7, hashlib.sha256(b"an unsigned boot loader").digest())
    _, body = attest(cas, vm)
    error = refused(cas, body, errors.AppraisalError, "gce-tpm.pcrs.7")
    assert "1 mismatch" in error.message


def test_another_instance_is_refused(tmp_path: Path, vm: GceTpmQuoteProvider, swtpm_tpm: Tpm) -> None:
    pcrs = swtpm_tpm.pcr_read(range(24))
    cas = production_cas(
        tmp_path / "cas",
        PlatformVerifier(gce_roots=(GOOGLE.root,)),
        policy_text(pcrs, project="prod-project"),
    )
    _, body = attest(cas, vm)
    refused(
        cas, body, errors.AppraisalError, r"gce-tpm.project_id: got 'confide-test', expected prod-project"
    )


def test_the_instance_id_is_pinned_through_the_cas(
    tmp_path: Path, vm: GceTpmQuoteProvider, swtpm_tpm: Tpm
) -> None:
    """A GCE instance id has 19 digits, beyond 2^53 - 1: the policy pinning it is applied (its
    canonical JSON writes it as a string; before, applying it failed with a ParseError), and
    the CAS reads it back as the number it compares with the AK certificate's."""
    assert INSTANCE.instance_id > 2**53
    pcrs = swtpm_tpm.pcr_read(range(24))
    verifier = PlatformVerifier(gce_roots=(GOOGLE.root,))
    cas = production_cas(tmp_path / "cas", verifier, policy_text(pcrs, instance_id=INSTANCE.instance_id))
    rt, body = attest(cas, vm)
    rt.open(cas.attest(body))
    other = production_cas(
        tmp_path / "other", verifier, policy_text(pcrs, instance_id=INSTANCE.instance_id + 1)
    )
    _, body = attest(other, vm)
    refused(other, body, errors.AppraisalError, rf"gce-tpm.instance_id: got {INSTANCE.instance_id}, expected")


def test_a_test_instance_proves_no_instance(cas: Cas, swtpm_tpm: Tpm) -> None:
    """An AK certificate of a non-production instance: no instance claim (as go-tpm-tools), so
    a policy that pins the project refuses it."""
    provision_gce_vtpm(swtpm_tpm, GOOGLE, instance=Instance(production=False))
    try:
        vm = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        _, body = attest(cas, vm)
        refused(cas, body, errors.AppraisalError, "no production instance in the AK certificate")
        assert last_attestation(cas)["gce_instance"] is None
    finally:
        clear_gce_indices(swtpm_tpm)


def test_replayed_evidence_is_refused(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt, body = attest(cas, vm)
    rt.open(cas.attest(body))
    refused(cas, body, errors.BindingError, "nonce was already used")
    # the same evidence with a fresh nonce: not bound to it
    fresh = RuntimeKey(cas)
    body2 = fresh.body(
        policy="app", service="vm", platform="gce-tpm", evidence=base64.b64decode(str(body["evidence"]))
    )
    refused(cas, body2, errors.BindingError, "gce-tpm nonce got")


def test_evidence_bound_to_another_key_and_nonce_is_refused(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt, other = RuntimeKey(cas), RuntimeKey(cas)
    evidence = vm.get_evidence(other.binding)
    body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=evidence.raw)
    refused(cas, body, errors.BindingError, f"gce-tpm nonce got {other.binding.hex()[:32]}")


def _flip(blob: bytes, part: bytes, at: int) -> bytes:
    assert blob.count(part) == 1
    out = bytearray(blob)
    out[blob.index(part) + at] ^= 0x01
    return bytes(out)


def test_a_tampered_quote_is_refused(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt = RuntimeKey(cas)
    raw = vm.get_evidence(rt.binding).raw
    quote = parse_gce_attestation(raw).quotes[0]
    # the quote's clock (TPMS_CLOCK_INFO, after magic, type, signer and extraData), then its signature
    at = 4 + 2 + 2 + len(quote.attest.qualified_signer) + 2 + 64 + 3
    for tampered, error, match in (
        (_flip(raw, quote.raw_attest, at), errors.SignatureError, "does not verify with the AK"),
        (_flip(raw, quote.raw_signature, 40), errors.SignatureError, "does not verify with the AK"),
    ):
        body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=tampered)
        refused(cas, body, error, match)
        rt = RuntimeKey(cas)
        raw = vm.get_evidence(rt.binding).raw
        quote = parse_gce_attestation(raw).quotes[0]


def test_a_tampered_ak_certificate_is_refused(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt = RuntimeKey(cas)
    raw = vm.get_evidence(rt.binding).raw
    cert = parse_gce_attestation(raw).ak_cert
    assert cert is not None
    body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=_flip(raw, cert, len(cert) - 5))
    refused(cas, body, errors.CertificateChainError, "signature")


def test_an_ak_certificate_of_a_look_alike_pki_is_refused(cas: Cas, swtpm_tpm: Tpm) -> None:
    """Another PKI with the same names: its intermediate's signature does not verify."""
    provision_gce_vtpm(swtpm_tpm, OTHER_GOOGLE)
    try:
        vm = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[OTHER_GOOGLE.intermediate_der])
        _, body = attest(cas, vm)
        refused(cas, body, errors.CertificateChainError, "Intermediate.* signature does not verify")
    finally:
        clear_gce_indices(swtpm_tpm)


@pytest.mark.parametrize(
    ("ca", "digital_signature", "match"),
    [
        (True, True, "AK certificate '' is a CA certificate, expected an end entity"),
        (False, False, "AK certificate '': KeyUsage lacks digitalSignature"),
    ],
)
def test_an_ak_certificate_that_is_not_a_signing_end_entity_is_refused(
    cas: Cas, swtpm_tpm: Tpm, ca: bool, digital_signature: bool, match: str
) -> None:
    """Google's EK/AK CAs issue EK certificates too: a certificate issued under the pinned root
    for the AK's key, but as a CA's or without digitalSignature (an EK certificate's key
    encrypts), does not vouch for the quotes' signer."""
    key = provision_gce_vtpm(swtpm_tpm, GOOGLE)
    cert = GOOGLE.ak_cert(key, ca=ca, digital_signature=digital_signature)
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=cert)
    try:
        vm = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        _, body = attest(cas, vm)
        refused(cas, body, errors.CertificateChainError, re.escape(match))
    finally:
        clear_gce_indices(swtpm_tpm)


def test_the_production_cas_pins_googles_roots(
    tmp_path: Path, swtpm_tpm: Tpm, vm: GceTpmQuoteProvider
) -> None:
    """Without injected roots (production), the test PKI's AK certificate does not verify."""
    pcrs = swtpm_tpm.pcr_read(range(24))
    cas = production_cas(tmp_path / "cas", PlatformVerifier(), policy_text(pcrs))
    _, body = attest(cas, vm)
    refused(cas, body, errors.CertificateChainError, "no path to a pinned Google root")


def test_aux_blobs_are_refused(cas: Cas, vm: GceTpmQuoteProvider) -> None:
    rt = RuntimeKey(cas)
    evidence = vm.get_evidence(rt.binding).raw
    body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=evidence, aux={"ak_cert": b"x"})
    refused(cas, body, errors.ParseError, "aux 'ak_cert'")


def test_malformed_evidence_is_refused(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    refused(
        cas,
        rt.body(policy="app", service="vm", platform="gce-tpm", evidence=b"\x0a\x01"),
        errors.ParseError,
        "GCE attestation",
    )


def test_real_gce_evidence_is_verified_up_to_the_binding(tmp_path: Path) -> None:
    """go-tpm-tools' real GCE Shielded VM attestation (extraData 9009) verifies under Google's
    pinned roots, and is then refused: it is not bound to this request's key and nonce."""
    cas = production_cas(tmp_path / "cas", PlatformVerifier(), policy_text([bytes(32)] * 24))
    cas.clock = lambda: datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    rt = RuntimeKey(cas)
    body = rt.body(
        policy="app",
        service="vm",
        platform="gce-tpm",
        evidence=(ASSETS / "gce-cos-85-nonce9009.pb").read_bytes(),
    )
    refused(cas, body, errors.BindingError, "gce-tpm nonce got 9009")


# --- end to end: a CAS over TLS, and confide run --tee gce-tpm on its own swtpm ------------------


def _serve(cas_dir: Path) -> Iterator[tuple[Cas, str, Path]]:
    cas, evidence, key_path, cert_path, _env, _signer = prepare(
        cas_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None
    )
    cas.verifier = PlatformVerifier(gce_roots=(GOOGLE.root,))
    limits = HttpLimits()
    app = create_app(cas, cas_evidence=evidence, http_limits=limits)
    server = uvicorn_server(app, key_path, cert_path, None, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield cas, f"https://127.0.0.1:{sock.getsockname()[1]}", cert_path
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        cas.db.dispose()


def _replayed_and_tampered_over_tls(cas: Cas, url: str, cert: Path, port: int) -> None:
    """The VM's evidence for a fresh nonce and key, sent with a CAS client over TLS: accepted
    once, then refused replayed; with its quote's signature or its AK certificate edited,
    refused."""
    tpm = Tpm(TcpTransport("127.0.0.1", port))
    provider = GceTpmQuoteProvider(tpm, event_log=None)
    try:
        with CasClient(url, cert) as client:
            rt = RuntimeKey(cas, nonce=client.nonce())
            raw = provider.get_evidence(rt.binding).raw
            body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=raw)
            assert rt.open(client.attest(body))["command"] == ["/usr/bin/env"]
            with pytest.raises(errors.BindingError, match="nonce was already used"):
                client.attest(body)
            edits: list[tuple[type[errors.ConfideError], str]] = [
                (errors.SignatureError, "does not verify with the AK"),
                (errors.CertificateChainError, "signature does not verify"),
            ]
            for error, match in edits:
                rt = RuntimeKey(cas, nonce=client.nonce())
                raw = provider.get_evidence(rt.binding).raw
                att = parse_gce_attestation(raw)
                assert att.ak_cert is not None
                part = att.quotes[0].raw_signature if error is errors.SignatureError else att.ak_cert
                edited = _flip(raw, part, len(part) - 5)
                body = rt.body(policy="app", service="vm", platform="gce-tpm", evidence=edited)
                with pytest.raises(error, match=match):
                    client.attest(body)
                assert last_attestation(cas)["verdict"] == "refused"
    finally:
        tpm.close()


def test_confide_run_on_a_gce_vtpm_over_tls(tmp_path: Path) -> None:
    """``confide run --tee gce-tpm`` (a child process, ``$CONFIDE_TPM`` = an swtpm provisioned like a
    GCE VM's vTPM, the AK certificate issued straight by the test root) against a CAS served over
    TLS: accepted and the program runs with its secret; the same VM's evidence sent over that
    TLS API replayed, or with its quote or AK certificate edited, refused; after PCR 7 changes,
    ``confide run`` refused (exit 31, one line)."""
    if subprocess.run(["which", "swtpm"], capture_output=True, check=False).returncode:
        pytest.skip("swtpm is not installed")
    direct = FakeGoogle(GOOGLE.root, GOOGLE.root_key, GOOGLE.root, GOOGLE.root_key)
    with start_swtpm() as emulator:
        tpm = Tpm(TcpTransport("127.0.0.1", emulator.port))
        tpm.startup()
        provision_gce_vtpm(tpm, direct)
        pcrs = tpm.pcr_read(range(24))
        tpm.close()  # swtpm serves one connection at a time: confide run's
        served = _serve(tmp_path / "cas")
        cas, url, cert = next(served)
        try:
            cas.apply(submission(cas, policy_text(pcrs, command="/usr/bin/env")))
            env = {
                "CONFIDE_CAS_URL": url,
                "CONFIDE_CAS_CERT": str(cert),
                "CONFIDE_TPM": f"swtpm:127.0.0.1:{emulator.port}",
            }
            run = (
                "run",
                "--config-id",
                "app/vm",
                "--tee",
                "gce-tpm",
                "--",
                "/usr/bin/env",
            )
            ok = run_confide(*run, env=env)
            assert ok.returncode == 0, ok.stderr
            token = [line for line in ok.stdout.splitlines() if line.startswith("TOKEN=")]
            assert len(token) == 1 and len(token[0]) > len("TOKEN="), ok.stdout
            event = last_attestation(cas)
            assert event["verdict"] == "accepted" and event["platform"] == "gce-tpm"
            _replayed_and_tampered_over_tls(cas, url, cert, emulator.port)
            # the VM boots something else: PCR 7 changes, the same policy refuses it
            tpm = Tpm(TcpTransport("127.0.0.1", emulator.port))
            pcr_extend(tpm.transport, 7, hashlib.sha256(b"another boot loader").digest())  # type: ignore[arg-type]
            tpm.close()
            bad = run_confide(*run, env=env)
            assert bad.returncode == errors.AppraisalError.exit_code, bad.stderr
            assert bad.stderr.count("\n") == 1 and "gce-tpm.pcrs.7" in bad.stderr, bad.stderr
            assert "TOKEN=" not in bad.stdout
        finally:
            next(served, None)
