"""The GCE vTPM quote provider (``confide.runtime.gce_tpm``, ``confide run --tee gce-tpm``) on a
real swtpm provisioned like a GCE VM's vTPM (``tests/gce_fakes.py``): its evidence verifies
with the verifier under the test PKI's root; the firmware event log is sent and replays (Secure
Boot read from it); what is not a GCE vTPM, an AK certificate of another key, a certificate
index with more than zero padding after the certificate, and a log that does not replay are
refused; ``$CONFIDE_TPM`` and ``confide run --tee gce-tpm`` without a TPM."""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from confide.errors import BindingError, MeasurementError, ParseError, UsageError
from confide.evidence.ccel import Event, HeaderEvent, SpecIdEvent
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.runtime import gce_tpm
from confide.runtime.gce_tpm import GceTpmQuoteProvider, encode_attestation
from confide.runtime.tpm import DeviceTransport, TcpTransport, Tpm, transport_from_env
from confide.verify.gce_tpm import verify_gce_attestation
from confide.verify.result import Platform
from gce_fakes import FakeGoogle, clear_gce_indices, provision_gce_vtpm
from tpm_fakes import pcr_extend, start_swtpm

GOOGLE = FakeGoogle.make()
REPORT_DATA = bytes(range(64))


@pytest.fixture
def fresh_tpm() -> Iterator[Tpm]:
    """An swtpm of its own (PCRs as after startup), provisioned like a GCE VM's vTPM."""
    with start_swtpm() as emulator:
        tpm = Tpm(TcpTransport("127.0.0.1", emulator.port))
        tpm.startup()
        provision_gce_vtpm(tpm, GOOGLE)
        try:
            yield tpm
        finally:
            tpm.close()


def verify(raw: bytes) -> dict[str, object]:
    result = verify_gce_attestation(
        raw, at=datetime.now(UTC), expected_nonce=REPORT_DATA, roots=[GOOGLE.root]
    )
    return dict(result.claims)


def test_gce_nv_indices_are_go_tpm_tools() -> None:
    # go-tpm-tools client/handles.go: GceAKCertNVIndexRSA .. GceAKTemplateNVIndexECC
    assert (gce_tpm.AK_CERT_NV_INDEX_RSA, gce_tpm.AK_TEMPLATE_NV_INDEX_RSA) == (0x01C10000, 0x01C10001)
    assert (gce_tpm.AK_CERT_NV_INDEX_ECC, gce_tpm.AK_TEMPLATE_NV_INDEX_ECC) == (0x01C10002, 0x01C10003)


def test_evidence_verifies_and_carries_the_report_data(swtpm_tpm: Tpm) -> None:
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        evidence = provider.get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)
    assert evidence.platform is Platform.GCE_TPM and evidence.provider == "gce-tpm/rsa" and not evidence.aux
    att = parse_gce_attestation(evidence.raw)
    assert [q.hash_alg for q in att.quotes] == [0x000B] and sorted(att.quotes[0].pcrs) == list(range(24))
    assert att.event_log is None and att.intermediate_certs == (GOOGLE.intermediate_der,)
    claims = verify(evidence.raw)
    assert claims["nonce"] == REPORT_DATA.hex() and claims["ak_restricted_signing"] is True
    assert claims["instance"]["project_id"] == "confide-test"  # type: ignore[index]


def test_zero_padding_after_the_certificate_is_dropped(swtpm_tpm: Tpm) -> None:
    provision_gce_vtpm(swtpm_tpm, GOOGLE, padding=200)
    try:
        provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        verify(provider.get_evidence(REPORT_DATA).raw)
    finally:
        clear_gce_indices(swtpm_tpm)


def test_anything_else_after_the_certificate_is_refused(swtpm_tpm: Tpm) -> None:
    ak = provision_gce_vtpm(swtpm_tpm, GOOGLE)
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=GOOGLE.ak_cert(ak) + b"\x00\x01")
    try:
        provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None)
        with pytest.raises(ParseError, match="anything after it must be zero padding"):
            provider.get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)


def test_an_ak_certificate_of_another_key_is_refused(swtpm_tpm: Tpm) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    provision_gce_vtpm(swtpm_tpm, GOOGLE, cert=GOOGLE.ak_cert(other))
    try:
        with pytest.raises(BindingError, match="is not the key of the AK certificate"):
            GceTpmQuoteProvider(swtpm_tpm, event_log=None).get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)


def test_not_a_gce_vtpm(swtpm_tpm: Tpm) -> None:
    clear_gce_indices(swtpm_tpm)
    with pytest.raises(UsageError, match=r"no GCE AK certificate \(NV index 0x01c10000 or 0x01c10002\)"):
        GceTpmQuoteProvider(swtpm_tpm, event_log=None).get_evidence(REPORT_DATA)


def test_a_certificate_without_its_template_is_refused(swtpm_tpm: Tpm) -> None:
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    swtpm_tpm.nv_undefine_space(gce_tpm.AK_TEMPLATE_NV_INDEX_RSA)
    try:
        with pytest.raises(UsageError, match="no AK template at NV index 0x01c10001"):
            GceTpmQuoteProvider(swtpm_tpm, event_log=None).get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(swtpm_tpm: Tpm, size: int) -> None:
    with pytest.raises(UsageError):
        GceTpmQuoteProvider(swtpm_tpm, event_log=None).get_evidence(bytes(size))


# --- the firmware event log ---------------------------------------------------------------------

EV_SEPARATOR = 0x4
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")


def _secure_boot_data(value: int) -> bytes:
    """UEFI_VARIABLE_DATA (TCG PFP §10.4.4.3 / UEFI 2.10 §3.3) of the SecureBoot variable."""
    name = "SecureBoot".encode("utf-16-le")
    return EFI_GLOBAL_VARIABLE.bytes_le + struct.pack("<QQ", len(name) // 2, 1) + name + bytes([value])


def _event_log(events: list[tuple[int, int, bytes]]) -> bytes:
    """A crypto-agile (SHA-256 only) TCG event log of (PCR, type, data), digests of the data."""
    spec = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, ((0x000B, 32),), b"")
    header = HeaderEvent(0, 0x3, bytes(20), spec.to_bytes())
    body = [
        Event(n, 0, pcr, kind, ((0x000B, hashlib.sha256(data).digest()),), data)
        for n, (pcr, kind, data) in enumerate(events, start=1)
    ]
    return header.to_bytes() + b"".join(e.to_bytes() for e in body)


FIRMWARE_EVENTS = [
    (7, EV_EFI_VARIABLE_DRIVER_CONFIG, _secure_boot_data(1)),
    (7, EV_SEPARATOR, bytes(4)),
]


def _measure(tpm: Tpm, events: list[tuple[int, int, bytes]]) -> None:
    assert isinstance(tpm.transport, TcpTransport)
    for pcr, _, data in events:
        pcr_extend(tpm.transport, pcr, hashlib.sha256(data).digest())


def test_the_event_log_is_sent_and_replays(fresh_tpm: Tpm, tmp_path: Path) -> None:
    _measure(fresh_tpm, FIRMWARE_EVENTS)
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(_event_log(FIRMWARE_EVENTS))
    provider = GceTpmQuoteProvider(fresh_tpm, event_log=log, intermediates=[GOOGLE.intermediate_der])
    claims = verify(provider.get_evidence(REPORT_DATA).raw)
    summary = claims["event_log"]
    assert isinstance(summary, dict)
    assert summary["secure_boot"] is True and summary["reproduced_pcrs"] == [7]


def test_a_log_that_does_not_replay_is_refused(fresh_tpm: Tpm, tmp_path: Path) -> None:
    _measure(fresh_tpm, FIRMWARE_EVENTS)
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(
        _event_log([(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _secure_boot_data(0)), FIRMWARE_EVENTS[1]])
    )
    provider = GceTpmQuoteProvider(fresh_tpm, event_log=log)
    with pytest.raises(MeasurementError, match=r"PCR 7 replayed from the event log is .* the quote says"):
        provider.get_evidence(REPORT_DATA)


def test_no_event_log_file_sends_none(fresh_tpm: Tpm, tmp_path: Path) -> None:
    provider = GceTpmQuoteProvider(
        fresh_tpm, event_log=tmp_path / "absent", intermediates=[GOOGLE.intermediate_der]
    )
    assert verify(provider.get_evidence(REPORT_DATA).raw)["event_log"] is None


def test_encoding_is_what_the_verifier_parses() -> None:
    with pytest.raises(ParseError):  # an ak_pub that is not a TPMT_PUBLIC
        parse_gce_attestation(
            encode_attestation(ak_pub=b"\x00", quote=b"", signature=b"", pcrs=[], event_log=b"", ak_cert=b"x")
        )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "no SEQUENCE"),
        (b"\x04\x03abc", "no SEQUENCE"),
        (b"\x30\x84\x00\x00\x00\x10" + bytes(16), "length"),  # a 4-byte length: no certificate is that long
        (b"\x30\x82\x10\x00" + bytes(16), "the index holds 20"),  # longer than the index
        (b"\x30\x03\x02\x01\x00", "not a DER certificate: "),  # a SEQUENCE, not a certificate
    ],
)
def test_what_is_not_a_certificate_in_the_index_is_refused(content: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        gce_tpm._der_certificate(content, gce_tpm.AK_CERT_NV_INDEX_RSA)


# --- $CONFIDE_TPM and the CLI ---------------------------------------------------------------------


def test_transport_from_env() -> None:
    default = transport_from_env({})
    assert isinstance(default, DeviceTransport) and str(default.path) == "/dev/tpmrm0"
    device = transport_from_env({"CONFIDE_TPM": "/dev/tpm0"})
    assert isinstance(device, DeviceTransport) and str(device.path) == "/dev/tpm0"
    tcp = transport_from_env({"CONFIDE_TPM": "swtpm:127.0.0.1:2321"})
    assert isinstance(tcp, TcpTransport) and (tcp.host, tcp.port) == ("127.0.0.1", 2321)
    for bad in ("swtpm:127.0.0.1", "swtpm::1", "swtpm:h:0", "swtpm:h:65536", "swtpm:h:x", "tpm0"):
        with pytest.raises(UsageError, match=r"\$CONFIDE_TPM: got"):
            transport_from_env({"CONFIDE_TPM": bad})


def test_cli_run_gce_tpm_uses_the_vtpm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``confide run --tee gce-tpm`` reaches for the TPM (here: a path that does not exist) after
    asking the CAS for a nonce, and refuses in one line."""
    from confide.cas import cli
    from confide.cas.client import CasClient

    class FakeCas:
        def nonce(self) -> str:
            return "00" * 32

        def close(self) -> None:
            pass

    monkeypatch.setattr(CasClient, "from_env", classmethod(lambda cls: FakeCas()))
    monkeypatch.setenv("CONFIDE_TPM", str(tmp_path / "tpmrm0"))
    result = CliRunner().invoke(cli.run, ["--config-id", "p/s", "--tee", "gce-tpm", "--", "/bin/true"])
    assert result.exit_code == UsageError.exit_code, result.output
    assert result.output.startswith("error: UsageError: ") and result.output.count("\n") == 1, result.output
    assert f"{str(tmp_path / 'tpmrm0')!r} does not exist: this machine has no (v)TPM" in result.output


def test_cli_gce_tee_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--gce-tee configfs-tsm`` without configfs-tsm is refused before the CAS is asked (as
    ``--tee sev-snp`` is); ``--gce-tee`` goes with ``--tee gce-tpm`` only; ``auto`` without
    configfs-tsm sends the vTPM quote alone (here: on to the missing TPM)."""
    from confide.cas import cli
    from confide.cas.client import CasClient
    from confide.runtime import quote

    def no_cas(cls: object) -> None:
        raise AssertionError("the CAS must not be asked")

    monkeypatch.setattr(quote, "CONFIGFS_TSM_ROOT", tmp_path / "no-tsm")
    monkeypatch.setattr(CasClient, "from_env", classmethod(no_cas))
    monkeypatch.setenv("CONFIDE_TPM", str(tmp_path / "tpmrm0"))
    args = ["--config-id", "p/s", "--tee", "gce-tpm", "--gce-tee", "configfs-tsm", "--", "/bin/true"]
    result = CliRunner().invoke(cli.run, args)
    assert isinstance(result.exception, UsageError), result.output
    assert "configfs-tsm" in str(result.exception) and "not found" in str(result.exception)
    result = CliRunner().invoke(
        cli.run, ["--config-id", "p/s", "--tee", "sim", "--gce-tee", "none", "--", "x"]
    )
    assert isinstance(result.exception, UsageError)
    assert "--gce-tee goes with --tee gce-tpm" in str(result.exception)
    # auto, without configfs-tsm: no TEE report is asked for; the vTPM is (and is missing)
    monkeypatch.setattr(CasClient, "from_env", classmethod(lambda cls: _NonceOnly()))
    result = CliRunner().invoke(cli.run, ["--config-id", "p/s", "--tee", "gce-tpm", "--", "/bin/true"])
    assert result.exit_code == UsageError.exit_code and "has no (v)TPM" in result.output, result.output


class _NonceOnly:
    def nonce(self) -> str:
        return "00" * 32

    def close(self) -> None:
        pass
