"""The AWS Nitro quote provider (``confide.runtime.nitro``) against a fake NSM that decodes the
real CBOR request and answers with a document forged under a test PKI (``tests/nitro_forge.py``),
end to end through an in-process CAS that verifies under that PKI's root; the response decoder
on hostile responses; the real ``/dev/nsm`` transport on paths that are not the device and on a
simulated driver behind ``fcntl.ioctl``; and ``confide run --tee aws-nitro`` without ``/dev/nsm``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest

from cas_inproc import InProcessClient, RuntimeKey, last_attestation, production_cas, refused
from cli import run_confide
from confide import errors
from confide.cas.core import Cas
from confide.cas.verifier import PlatformVerifier
from confide.evidence.nitro import NitroDocument
from confide.runtime import nitro
from confide.runtime.nitro import (
    NSM_IOCTL_RAW,
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    DeviceNsmTransport,
    NitroQuoteProvider,
    attestation_request,
    parse_attestation_response,
)
from confide.runtime.run import attest_and_prepare
from confide.verify.result import Platform
from nitro_forge import forge_document, make_pki

NOW = datetime.now(UTC)
PKI = make_pki(NOW)
PCRS = {i: bytes([i]) * 48 for i in range(16)}  # the forged documents' PCRs

POLICY = f"""name: enclaves
version: "0.3"
services:
  - name: enclave
    command: enclave --token $$SCONE::token$$
    attestation:
      aws-nitro:
        pcrs: {{0: "{PCRS[0].hex()}", 8: "{PCRS[8].hex()}"}}
secrets:
  - name: token
    kind: ascii
"""


def _text(s: str) -> bytes:
    """A CBOR text string of fewer than 24 bytes, by hand (RFC 8949 §3.1, major type 3)."""
    assert len(s) < 24
    return bytes([0x60 | len(s)]) + s.encode()


def _response(item: Any) -> bytes:
    return cbor2.dumps(item)


def _attestation(document: bytes) -> bytes:
    return _response({"Attestation": {"document": document}})


class FakeNsm:
    """An NSM behind the transport interface: decodes the request exactly as the Rust API's
    serde layout has it and answers ``answer(nonce)`` (by default a document for that nonce)."""

    def __init__(self, answer: Callable[[bytes], bytes] | None = None) -> None:
        self.requests: list[bytes] = []
        self.answer = answer or (lambda nonce: _attestation(forge_document(PKI, nonce=nonce, user_data=None)))

    def request(self, cbor: bytes) -> bytes:
        self.requests.append(cbor)
        item = cbor2.loads(cbor)
        assert list(item) == ["Attestation"]
        fields = item["Attestation"]
        assert list(fields) == ["user_data", "nonce", "public_key"]
        assert fields["user_data"] is None and fields["public_key"] is None
        return self.answer(fields["nonce"])


# --- the request ----------------------------------------------------------------------------------


def test_request_is_the_serde_cbor_of_request_attestation() -> None:
    nonce = bytes(range(64))
    expected = (
        b"\xa1"  # map(1): externally tagged enum variant
        + b"\x6bAttestation"
        + b"\xa3"  # map(3): the struct variant's fields, in declaration order
        + _text("user_data")
        + b"\xf6"  # null: Option::None
        + _text("nonce")
        + b"\x58\x40"  # bytes(64): ByteBuf
        + nonce
        + _text("public_key")
        + b"\xf6"
    )
    assert attestation_request(nonce) == expected
    fake = FakeNsm()
    NitroQuoteProvider(fake).get_evidence(nonce)
    assert fake.requests == [expected]


def test_ioctl_number_is_iowr_0x0a_0_nsm_raw() -> None:
    # _IOWR(0x0A, 0, struct nsm_raw): read|write, 32 bytes, type 0x0A, nr 0.
    assert NSM_IOCTL_RAW == 0xC0200A00


@pytest.mark.parametrize("size", [0, 63, 65])
def test_report_data_must_be_64_bytes(size: int) -> None:
    fake = FakeNsm()
    with pytest.raises(errors.UsageError, match="expected 64"):
        NitroQuoteProvider(fake).get_evidence(bytes(size))
    assert fake.requests == []


# --- end to end through the CAS ---------------------------------------------------------------------


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return production_cas(tmp_path / "cas", PlatformVerifier(nitro_root=PKI.root_cert), POLICY)


def test_evidence_is_accepted_by_the_cas(cas: Cas) -> None:
    fake = FakeNsm()
    plan = attest_and_prepare(InProcessClient(cas), NitroQuoteProvider(fake), "enclaves", "enclave", [])  # type: ignore[arg-type]
    assert plan.argv[0] == "enclave" and plan.argv[1] == "--token" and plan.argv[2]
    event = last_attestation(cas)
    assert event["verdict"] == "accepted" and event["platform"] == "aws-nitro"
    assert len(fake.requests) == 1


def test_evidence_fields(cas: Cas) -> None:
    rt = RuntimeKey(cas)
    evidence = NitroQuoteProvider(FakeNsm()).get_evidence(rt.binding)
    assert (evidence.platform, evidence.provider, dict(evidence.aux)) == (Platform.AWS_NITRO, "nsm", {})
    doc = NitroDocument.from_bytes(evidence.raw).document
    assert doc.nonce == rt.binding and doc.user_data is None and doc.public_key is None
    release = cas.attest(
        rt.body(policy="enclaves", service="enclave", platform=evidence.platform.value, evidence=evidence.raw)
    )
    assert rt.open(release)["command"][0] == "enclave"


def test_a_document_for_another_nonce_is_refused_by_provider_and_cas(cas: Cas) -> None:
    earlier = RuntimeKey(cas)
    replayed = forge_document(PKI, nonce=earlier.binding)
    rt = RuntimeKey(cas)
    with pytest.raises(errors.BindingError, match=r"nonce is [0-9a-f]+, expected") as info:
        NitroQuoteProvider(FakeNsm(lambda _nonce: _attestation(replayed))).get_evidence(rt.binding)
    assert type(info.value) is errors.BindingError
    # Had the runtime sent it anyway, the CAS refuses it at its own binding check.
    request = rt.body(policy="enclaves", service="enclave", platform="aws-nitro", evidence=replayed)
    refused(cas, request, errors.BindingError, "aws-nitro nonce got .*, expected the SHA-512 binding")


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param(lambda n: None, id="none"),
        pytest.param(lambda n: n[:32], id="half"),
        pytest.param(lambda n: n + b"\x00", id="longer"),
        pytest.param(lambda n: bytes(64), id="zero"),
    ],
)
def test_document_nonce_must_be_the_report_data(nonce: Callable[[bytes], bytes | None]) -> None:
    fake = FakeNsm(lambda n: _attestation(forge_document(PKI, nonce=nonce(n))))
    with pytest.raises(errors.BindingError, match="expected " + "ab" * 64):
        NitroQuoteProvider(fake).get_evidence(b"\xab" * 64)


# --- hostile responses ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(nitro.NSM_ERROR_CODES)[1:])
def test_error_response_names_the_error_code(code: str) -> None:
    fake = FakeNsm(lambda _n: _response({"Error": code}))
    with pytest.raises(errors.StorageError, match=f"ErrorCode {code} \\(") as info:
        NitroQuoteProvider(fake).get_evidence(bytes(64))
    assert type(info.value) is errors.StorageError


@pytest.mark.parametrize(
    ("response", "match"),
    [
        pytest.param(b"", "empty response", id="empty"),
        pytest.param(b"\xa1\x6bAttest", "invalid CBOR", id="truncated"),
        pytest.param(b"\xff", "invalid CBOR", id="break"),
        pytest.param(_attestation(b"x") + b"\x00", "trailing bytes", id="trailing"),
        pytest.param(
            b"\xa2" + _text("Error") + b"\x61a" + _text("Error") + b"\x61b",
            "Duplicate map key",
            id="duplicate-key",
        ),
        pytest.param(_response(cbor2.CBORTag(24, b"")), "tag", id="tag"),
        pytest.param(_response([{"Attestation": {"document": b"x"}}]), "expected a map", id="array"),
        pytest.param(_response({}), "expected a map of one", id="no-variant"),
        pytest.param(_response({"Attestation": {"document": b"x"}, "Error": "x"}), "one", id="two-variants"),
        pytest.param(_response("LockPCR"), "'LockPCR' response", id="unit-variant"),
        pytest.param(
            _response({"GetRandom": {"random": b"x" * 32}}), "'GetRandom' response", id="get-random"
        ),
        pytest.param(_response({"DescribePCR": {"lock": False, "data": b"x"}}), "'DescribePCR'", id="pcr"),
        pytest.param(_response({1: {"document": b"x"}}), "'int' response", id="int-variant"),
        pytest.param(_response({"Attestation": {}}), "exactly the key 'document'", id="no-document"),
        pytest.param(_response({"Attestation": {"document": b"x", "x": 1}}), "exactly", id="extra-key"),
        pytest.param(_response({"Attestation": [b"x"]}), "exactly", id="tuple-variant"),
        pytest.param(_response({"Attestation": {"document": "x"}}), "byte string", id="text-document"),
        pytest.param(_response({"Attestation": {"document": b""}}), "byte string", id="empty-document"),
        pytest.param(_response({"Error": "Teapot"}), "ErrorCode 'Teapot'", id="unknown-code"),
        pytest.param(_response({"Error": 4}), "ErrorCode 4", id="numeric-code"),
        pytest.param(_response({"Error": "Success"}), "ErrorCode Success", id="error-success"),
        pytest.param(b"\x81" * 20 + b"\x80", "nesting depth", id="deep"),
        pytest.param(_attestation(b"\xa0"), "COSE_Sign1", id="not-cose"),
        pytest.param(_attestation(b"\x84\x40\xa0\x41\x00\x40"), "alg None", id="bad-alg"),
        pytest.param(
            b"\x00" * (NSM_RESPONSE_MAX_SIZE + 1), f"at most {NSM_RESPONSE_MAX_SIZE}", id="oversized"
        ),
    ],
)
def test_malformed_responses_are_parse_errors(response: bytes, match: str) -> None:
    with pytest.raises(errors.ParseError, match=match) as info:
        NitroQuoteProvider(FakeNsm(lambda _n: response)).get_evidence(bytes(64))
    assert type(info.value) is errors.ParseError


def test_oversized_document_inside_a_well_formed_response() -> None:
    document = forge_document(PKI, nonce=bytes(64), user_data=b"u" * 512)
    padded = _attestation(document + b"\x00" * (NSM_RESPONSE_MAX_SIZE - len(document)))
    assert len(padded) > NSM_RESPONSE_MAX_SIZE
    with pytest.raises(errors.ParseError, match="at most"):
        parse_attestation_response(padded)


# --- the /dev/nsm transport ---------------------------------------------------------------------


def test_device_transport_on_paths_that_are_not_the_nsm(tmp_path: Path) -> None:
    request = attestation_request(bytes(64))
    with pytest.raises(errors.UsageError, match="does not exist: not inside a Nitro enclave"):
        DeviceNsmTransport(tmp_path / "nsm").request(request)
    with pytest.raises(errors.UsageError, match="does not exist: not inside a Nitro enclave"):
        DeviceNsmTransport(tmp_path / "nsm").check()
    with pytest.raises(errors.UsageError, match="is a directory"):
        DeviceNsmTransport(tmp_path).request(request)
    # /dev/null answers every ioctl with ENOTTY: the real call path, up to the kernel.
    with pytest.raises(errors.UsageError, match="does not accept NSM_IOCTL_RAW"):
        DeviceNsmTransport(Path("/dev/null")).request(request)
    DeviceNsmTransport(Path("/dev/null")).check()  # opens: the device check is only a first filter
    with pytest.raises(errors.UsageError, match="does not accept NSM_IOCTL_RAW"):
        NitroQuoteProvider(DeviceNsmTransport(Path("/dev/null"))).get_evidence(bytes(64))


def test_device_transport_permission_denied(tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    device.chmod(0o000)
    try:
        with open(device, "rb"):
            pytest.skip("running as root: file permissions are not enforced")
    except PermissionError:
        pass
    with pytest.raises(errors.UsageError, match="permission denied"):
        DeviceNsmTransport(device).request(attestation_request(bytes(64)))


@pytest.mark.parametrize(
    ("err", "error", "match"),
    [
        (errno.EACCES, errors.UsageError, "permission denied"),
        (errno.ENXIO, errors.UsageError, "not inside a Nitro enclave"),
        (errno.ENODEV, errors.UsageError, "not inside a Nitro enclave"),
        (errno.EBUSY, errors.StorageError, "cannot open"),
    ],
)
def test_device_transport_open_errors(
    device: Path, monkeypatch: pytest.MonkeyPatch, err: int, error: type[errors.ConfideError], match: str
) -> None:
    real_open = os.open

    def failing_open(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == device:
            raise OSError(err, os.strerror(err))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(error, match=match) as info:
        DeviceNsmTransport(device).request(attestation_request(bytes(64)))
    assert type(info.value) is error


@pytest.mark.parametrize("size", [0, NSM_REQUEST_MAX_SIZE + 1])
def test_device_transport_refuses_request_sizes(size: int) -> None:
    with pytest.raises(errors.UsageError, match=f"got {size} bytes"):
        DeviceNsmTransport(Path("/dev/null")).request(b"\xa0" * size)


class FakeDriver:
    """``fcntl.ioctl`` as the NSM driver does it: reads the request from ``nsm_raw.request``,
    writes the response (truncated to the buffer) to ``nsm_raw.response`` and its length back
    into ``response.len``; or fails with ``errno``, or reports ``length``."""

    def __init__(self, *, err: int = 0, length: int | None = None) -> None:
        self.err = err
        self.length = length
        self.seen: list[tuple[int, bytes, int]] = []

    def __call__(self, fd: int, request: int, arg: bytearray, mutate: bool = True) -> int:
        assert request == NSM_IOCTL_RAW and mutate and len(arg) == 32
        req_addr, req_len, resp_addr, resp_len = nitro._NSM_RAW.unpack(bytes(arg))
        cbor = ctypes.string_at(req_addr, req_len)
        self.seen.append((request, cbor, resp_len))
        if self.err:
            raise OSError(self.err, "fake driver")
        response = FakeNsm().request(cbor)[:resp_len]
        ctypes.memmove(resp_addr, response, len(response))
        length = len(response) if self.length is None else self.length
        arg[:] = nitro._NSM_RAW.pack(req_addr, req_len, resp_addr, length)
        return 0


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    return path


def test_device_transport_marshals_the_ioctl(device: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver()
    monkeypatch.setattr(fcntl, "ioctl", driver)
    report_data = bytes(range(64))
    evidence = NitroQuoteProvider(DeviceNsmTransport(device)).get_evidence(report_data)
    assert NitroDocument.from_bytes(evidence.raw).document.nonce == report_data
    assert driver.seen == [(NSM_IOCTL_RAW, attestation_request(report_data), NSM_RESPONSE_MAX_SIZE)]


@pytest.mark.parametrize("length", [0, NSM_RESPONSE_MAX_SIZE + 1, 2**64 - 1])
def test_device_transport_refuses_impossible_lengths(
    device: Path, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", FakeDriver(length=length))
    with pytest.raises(errors.ParseError, match=f"response of {length} bytes"):
        DeviceNsmTransport(device).request(attestation_request(bytes(64)))


@pytest.mark.parametrize(
    ("err", "error", "match"),
    [
        (errno.EIO, errors.StorageError, "failed: Input/output error"),
        (errno.EMSGSIZE, errors.StorageError, "too large for the driver"),
        (errno.EFAULT, errors.StorageError, "failed: Bad address"),
        (errno.ENOTTY, errors.UsageError, "not the NSM device"),
        (errno.EPERM, errors.UsageError, "permission denied"),
    ],
)
def test_device_transport_ioctl_errors(
    device: Path, monkeypatch: pytest.MonkeyPatch, err: int, error: type[errors.ConfideError], match: str
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", FakeDriver(err=err))
    with pytest.raises(error, match=match) as info:
        NitroQuoteProvider(DeviceNsmTransport(device)).get_evidence(bytes(64))
    assert type(info.value) is error


# --- confide run --tee aws-nitro ---------------------------------------------------------------------


def test_cli_run_without_the_nsm_device() -> None:
    if nitro.NSM_DEVICE.exists():
        pytest.skip(f"{nitro.NSM_DEVICE} exists on this machine")
    r = run_confide("run", "--config-id", "enclaves/enclave", "--tee", "aws-nitro", "--", "/bin/true",
                    drop=("CONFIDE_CAS_URL", "CONFIDE_CAS_CERT"))  # fmt: skip
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'/dev/nsm' does not exist: not inside a Nitro enclave" in lines[0], r.stderr
