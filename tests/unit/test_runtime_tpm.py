"""confide.runtime.tpm: the TPM 2.0 client against a real swtpm, malformed responses from a
scripted transport, and the character-device transport against socketpair fakes."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ConfideError, ParseError, StorageError, UsageError
from confide.evidence.tpm import parse_attest, parse_signature
from confide.runtime.tpm import (
    PCR_COUNT,
    TPMA_NV_AUTHREAD,
    TPMA_NV_AUTHWRITE,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    TPMA_NV_WRITTEN,
    Alg,
    DeviceTransport,
    Tpm,
    TpmCommandError,
    describe_rc,
)
from tpm_fakes import ScriptedTransport, clear_index, provision_ak, response, session_response

TEST_INDEX = 0x01500010


@pytest.fixture(scope="module")
def ak(swtpm_tpm: Tpm) -> rsa.RSAPublicKey:
    return provision_ak(swtpm_tpm)


@pytest.fixture
def nv_index(swtpm_tpm: Tpm) -> Iterator[int]:
    clear_index(swtpm_tpm, TEST_INDEX)
    yield TEST_INDEX
    clear_index(swtpm_tpm, TEST_INDEX)


# --- against swtpm -------------------------------------------------------------------------------


def test_nv_define_write_read_in_chunks(swtpm_tpm: Tpm, nv_index: int) -> None:
    assert swtpm_tpm.nv_buffer_max() == 1024  # so a 2000-byte index needs two reads and writes
    swtpm_tpm.nv_define_space(nv_index, 2000, TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD)
    public = swtpm_tpm.nv_read_public(nv_index)
    assert public.index == nv_index and public.data_size == 2000
    assert public.attributes & TPMA_NV_WRITTEN == 0
    data = hashlib.shake_256(b"nv").digest(2000)
    swtpm_tpm.nv_write(nv_index, data)
    assert swtpm_tpm.nv_read_public(nv_index).attributes & TPMA_NV_WRITTEN
    assert swtpm_tpm.nv_read(nv_index) == data
    swtpm_tpm.nv_write(nv_index, b"patch", offset=1500)
    assert swtpm_tpm.nv_read(nv_index, 1505)[1500:] == b"patch"
    # The Name commits to the public area (checked by the client), so it changed when written.
    assert public.name != swtpm_tpm.nv_read_public(nv_index).name


def test_nv_errors_are_decoded(swtpm_tpm: Tpm, nv_index: int) -> None:
    with pytest.raises(
        TpmCommandError, match=r"TPM_RC_HANDLE \(handle 1\) \(0x18b\) for TPM2_NV_ReadPublic"
    ) as e:
        swtpm_tpm.nv_read_public(nv_index)
    assert isinstance(e.value, StorageError) and e.value.name == "TPM_RC_HANDLE"
    swtpm_tpm.nv_define_space(nv_index, 16, TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD)
    with pytest.raises(TpmCommandError, match=r"TPM_RC_NV_UNINITIALIZED .* for TPM2_NV_Read"):
        swtpm_tpm.nv_read(nv_index, auth=nv_index)
    with pytest.raises(TpmCommandError, match=r"TPM_RC_NV_DEFINED .* for TPM2_NV_DefineSpace"):
        swtpm_tpm.nv_define_space(nv_index, 16, TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD)
    with pytest.raises(TpmCommandError, match=r"TPM_RC_NV_RANGE .* for TPM2_NV_Write"):
        swtpm_tpm.nv_write(nv_index, bytes(17), auth=nv_index)
    with pytest.raises(UsageError):
        swtpm_tpm.nv_write(nv_index, b"")


def test_pcr_read_all_24_in_several_calls(swtpm_tpm: Tpm) -> None:
    commands: list[bytes] = []
    transport = swtpm_tpm.transport
    recording = Tpm(
        type("T", (), {"transmit": lambda self, c: commands.append(c) or transport.transmit(c)})()
    )
    pcrs = recording.pcr_read()
    assert len(pcrs) == PCR_COUNT and all(len(p) == 32 for p in pcrs)
    assert len(commands) == 3  # TPML_DIGEST carries at most 8 digests
    assert pcrs[17] == b"\xff" * 32 and pcrs[0] == bytes(32)  # PC Client: 17-22 start at -1
    assert recording.pcr_read([23, 0, 17]) == [pcrs[23], pcrs[0], pcrs[17]]


def test_quote_verifies_with_the_ak(swtpm_tpm: Tpm, ak: rsa.RSAPublicKey) -> None:
    area = swtpm_tpm.read_public(0x81000003)
    assert area.type == Alg.RSA and area.key_bits == 2048 and area.scheme == Alg.RSASSA
    assert area.restricted_signing and area.attribute_names[-2:] == ("restricted", "sign")
    qualifying = os.urandom(64)
    quote = swtpm_tpm.quote(0x81000003, qualifying)
    attest = parse_attest(quote.attest)
    assert attest.extra_data == qualifying
    assert attest.selected() == tuple((Alg.SHA256, i) for i in range(24))
    pcrs = swtpm_tpm.pcr_read()
    assert attest.pcr_digest == hashlib.sha256(b"".join(pcrs)).digest()
    signature = parse_signature(quote.signature)
    assert (signature.sig_alg, signature.hash_alg, len(signature.rsa)) == (Alg.RSASSA, Alg.SHA256, 256)
    ak.verify(signature.rsa, quote.attest, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):  # negative twin: another nonce is another message
        ak.verify(
            signature.rsa, quote.attest.replace(qualifying, bytes(64)), padding.PKCS1v15(), hashes.SHA256()
        )
    with pytest.raises(UsageError):
        swtpm_tpm.quote(0x81000003, bytes(65))


def test_missing_key_is_a_handle_error(swtpm_tpm: Tpm) -> None:
    with pytest.raises(TpmCommandError, match=r"TPM_RC_HANDLE .* for TPM2_ReadPublic"):
        swtpm_tpm.read_public(0x81000077)


# --- response codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "text"),
    [
        (0x000, "TPM_RC_SUCCESS"),
        (0x18B, "TPM_RC_HANDLE (handle 1)"),
        (0x28B, "TPM_RC_HANDLE (handle 2)"),
        (0x2D5, "TPM_RC_SIZE (parameter 2)"),
        (0x98E, "TPM_RC_AUTH_FAIL (session 1)"),
        (0x09D, "TPM_RC_POLICY_FAIL"),
        (0x14A, "TPM_RC_NV_UNINITIALIZED"),
        (0x101, "TPM_RC_FAILURE"),
        (0x922, "TPM_RC_RETRY"),
        (0x921, "TPM_RC_LOCKOUT"),
        (0x910, "TPM_RC_REFERENCE_H0"),
        (0x01E, "TPM 1.2 response code 0x1e"),
        (0x500, "vendor-defined response code 0x500"),
        (0x000B0101, "from software layer 0xb"),
        (0x0BF, "TPM_RC_0x0bf"),
    ],
)
def test_describe_rc(rc: int, text: str) -> None:
    assert text in describe_rc(rc)


# --- malformed responses -------------------------------------------------------------------------


def _tpm(*responses: bytes) -> tuple[Tpm, ScriptedTransport, list[float]]:
    sleeps: list[float] = []
    transport = ScriptedTransport(list(responses))
    return Tpm(transport, sleep=sleeps.append), transport, sleeps


def _nv_public(index: int = TEST_INDEX, size: int = 8, *, name: bytes | None = None) -> bytes:
    public = struct.pack(">IHI", index, Alg.SHA256, TPMA_NV_OWNERREAD) + b"\x00\x00" + struct.pack(">H", size)
    if name is None:
        name = struct.pack(">H", Alg.SHA256) + hashlib.sha256(public).digest()
    return struct.pack(">H", len(public)) + public + struct.pack(">H", len(name)) + name


def _property(prop: int, value: int) -> bytes:
    return b"\x00" + struct.pack(">III", 6, 1, prop) + struct.pack(">I", value)


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b"\x80\x01\x00\x00", ParseError, "at least the 10-byte header"),
        (response(_nv_public(), size=200), ParseError, "responseSize says 200"),
        (response(_nv_public(), tag=0x8002), ParseError, "got tag 0x8002"),
        (response(_nv_public() + b"\x00"), ParseError, "1 unexpected trailing bytes"),
        (response(_nv_public()[:-5]), ParseError, "needs 34 bytes"),
        (response(rc=0x18B), TpmCommandError, r"TPM_RC_HANDLE \(handle 1\) \(0x18b\) for TPM2_NV_ReadPublic"),
        (response(b"\x00\x00", rc=0x18B), ParseError, "an error response"),
        (response(_nv_public(name=b"\x00\x0b" + bytes(32))), ParseError, "is not nameAlg"),
        (response(_nv_public(index=TEST_INDEX + 1)), ParseError, "got NV index"),
        (bytes(64), ParseError, "responseSize says 0"),
    ],
)
def test_malformed_nv_read_public(raw: bytes, error: type[Exception], match: str) -> None:
    tpm, _, _ = _tpm(raw)
    with pytest.raises(error, match=match):
        tpm.nv_read_public(TEST_INDEX)


def test_retryable_warnings_are_retried() -> None:
    tpm, transport, sleeps = _tpm(response(rc=0x922), response(rc=0x90A), response(_nv_public()))
    assert tpm.nv_read_public(TEST_INDEX).data_size == 8
    assert len(transport.commands) == 3 and len(set(transport.commands)) == 1 and sleeps == [0.05, 0.1]
    tpm, _, _ = _tpm(*[response(rc=0x922)] * 5)
    with pytest.raises(TpmCommandError, match="TPM_RC_RETRY"):
        tpm.nv_read_public(TEST_INDEX)


def test_malformed_session_responses() -> None:
    # NV_Read: GetCapability, then one NV_Read chunk.
    cap = response(_property(0x12C, 1024))
    tpm, transport, _ = _tpm(cap, session_response(b"\x00\x04abcd"))
    assert tpm.nv_read(TEST_INDEX, 4) == b"abcd"
    # the command carries one password session (TPM_RS_PW, empty nonce, empty password)
    assert (
        transport.commands[1][18:31]
        == struct.pack(">I", 9) + struct.pack(">I", 0x40000009) + b"\x00\x00\x01\x00\x00"
    )
    for bad, match in [
        (session_response(b"\x00\x03abc"), "got 3 bytes at offset 0, expected 4"),
        (session_response(b"\x00\x04abcd", auth=b"\x00\x01x\x01\x00\x00"), "carries a nonce"),
        (session_response(b"\x00\x04abcd", auth=b"\x00\x00\x01\x00\x01x"), "carries an HMAC"),
        (session_response(b"\x00\x04abcd", auth=b""), "needs 2 bytes"),
        (session_response(b"\x00\x04abcd", auth=b"\x00\x00\x01\x00\x00\x00"), "trailing"),
        (response(b"\x00\x00\x00\x06\x00\x04abcd\x00\x00\x01\x00\x00"), "got tag 0x8001"),
        (session_response(b"\x00\x04abcdX"), "trailing"),
    ]:
        tpm, _, _ = _tpm(cap, bad)
        with pytest.raises(ParseError, match=match):
            tpm.nv_read(TEST_INDEX, 4)


def test_capability_must_answer_the_property_asked() -> None:
    tpm, _, _ = _tpm(response(_property(0x12D, 1024)))
    with pytest.raises(ParseError, match="got property 0x12d, expected 0x12c"):
        tpm.nv_buffer_max()
    tpm, _, _ = _tpm(response(_property(0x12C, 0)))
    with pytest.raises(ParseError, match="TPM_PT_NV_BUFFER_MAX 0"):
        tpm.nv_buffer_max()
    tpm, _, _ = _tpm(response(b"\x02" + _property(0x12C, 1)[1:]))
    with pytest.raises(ParseError, match="TPMI_YES_NO"):
        tpm.nv_buffer_max()


def _pcr_response(pcrs: list[int], digests: list[bytes], counter: int = 1, alg: int = Alg.SHA256) -> bytes:
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    body = struct.pack(">IIHB", counter, 1, alg, 3) + bytes(bitmap) + struct.pack(">I", len(digests))
    body += b"".join(struct.pack(">H", len(d)) + d for d in digests)
    return response(body)


def test_pcr_read_restarts_when_the_update_counter_moves() -> None:
    d = [bytes([i]) * 32 for i in range(24)]
    tpm, transport, _ = _tpm(
        _pcr_response(list(range(8)), d[:8], counter=1),
        _pcr_response(list(range(8, 16)), d[8:16], counter=2),  # changed: start again
        _pcr_response(list(range(8)), d[:8], counter=2),
        _pcr_response(list(range(8, 16)), d[8:16], counter=2),
        _pcr_response(list(range(16, 24)), d[16:], counter=2),
    )
    assert tpm.pcr_read() == d and len(transport.commands) == 5


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_pcr_response([0, 1], [bytes(32)] * 2), r"outside the requested \[5\]"),
        (_pcr_response([5], [bytes(20)]), "expected 32-byte digests"),
        (_pcr_response([5], [bytes(32)] * 2), "1 PCRs selected but 2 digests"),
        (_pcr_response([], []), "no PCR returned"),
        (_pcr_response([5], [bytes(32)], alg=Alg.SHA1), "outside the requested"),
        (_pcr_response([5], [bytes(32)] * 9), "expected at most 8"),
    ],
)
def test_malformed_pcr_read(raw: bytes, match: str) -> None:
    tpm, _, _ = _tpm(raw)
    with pytest.raises(ParseError, match=match):
        tpm.pcr_read([5])


def test_quote_signature_must_be_understood() -> None:
    attest = b"\x00\x04abcd"
    tpm, _, _ = _tpm(session_response(attest + struct.pack(">HH", Alg.RSASSA, Alg.SHA256) + b"\x00\x02xy"))
    quote = tpm.quote(0x81000003, b"n")
    assert quote.attest == b"abcd" and parse_signature(quote.signature).rsa == b"xy"
    for sig, match in [
        (struct.pack(">H", Alg.HMAC) + b"\x00\x0b" + bytes(32), "got 0x0005, expected rsassa"),
        (struct.pack(">HH", Alg.RSASSA, Alg.SHA256) + b"\x00\x00", "empty RSA signature"),
        (struct.pack(">HH", Alg.ECDSA, Alg.SHA256) + b"\x00\x01r\x00\x00", "empty ECDSA r or s"),
        (struct.pack(">HH", Alg.RSASSA, Alg.SHA256) + b"\x00\x05xy", "needs 5 bytes"),
        (struct.pack(">HH", Alg.RSASSA, Alg.SHA256) + b"\x00\x02xyz", "trailing"),
    ]:
        tpm, _, _ = _tpm(session_response(attest + sig))
        with pytest.raises(ParseError, match=match):
            tpm.quote(0x81000003, b"n")


_COMMANDS: list[Callable[[Tpm], object]] = [
    lambda t: t.nv_read_public(TEST_INDEX),
    lambda t: t.nv_read(TEST_INDEX, 8),
    lambda t: t.pcr_read(),
    lambda t: t.quote(0x81000003, b"n"),
    lambda t: t.read_public(0x81000003),
    lambda t: t.create_primary(0x40000001, b""),
    lambda t: t.get_tpm_property(0x12C),
]


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(_COMMANDS) - 1),
    body=st.binary(max_size=80),
    tag=st.sampled_from([0x8001, 0x8002]),
)
def test_garbage_responses_raise_only_confide_errors(which: int, body: bytes, tag: int) -> None:
    def transmit(command: bytes) -> bytes:
        return response(body, tag=tag)

    tpm = Tpm(type("T", (), {"transmit": staticmethod(transmit)})(), sleep=lambda _: None)
    try:
        _COMMANDS[which](tpm)
    except ConfideError:
        pass


# --- the character-device transport --------------------------------------------------------------


class _FakeDevice:
    """The far end of a socketpair that answers like a TPM device, served by a thread:
    one message in, ``answer(command)`` out (in ``pieces`` writes; then end of file if ``hang_up``)."""

    def __init__(
        self,
        answer: Callable[[bytes], bytes],
        *,
        kind: int = socket.SOCK_SEQPACKET,
        pieces: int = 1,
        hang_up: bool = False,
    ) -> None:
        self.near, self.far = socket.socketpair(socket.AF_UNIX, kind)
        self.answer = answer
        self.pieces = pieces
        self.hang_up = hang_up
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.far:
            while command := self.far.recv(1 << 16):
                reply = self.answer(command)
                step = max(1, -(-len(reply) // self.pieces))
                for i in range(0, len(reply), step):
                    self.far.send(reply[i : i + step])
                if self.hang_up:
                    break

    def opener(self, path: Path) -> int:
        return os.dup(self.near.fileno())

    def close(self) -> None:
        self.near.close()
        self.thread.join(5)


def test_device_transport_against_swtpm(swtpm_tpm: Tpm) -> None:
    device = _FakeDevice(swtpm_tpm.transport.transmit)
    transport = DeviceTransport(Path("/dev/tpmrm0"), opener=device.opener)
    try:
        tpm = Tpm(transport)
        assert tpm.pcr_read() == swtpm_tpm.pcr_read()
    finally:
        transport.close()
        device.close()


def test_device_transport_completes_partial_reads() -> None:
    good = response(_nv_public())
    device = _FakeDevice(lambda _: good, kind=socket.SOCK_STREAM, pieces=3)
    transport = DeviceTransport(Path("/dev/tpmrm0"), opener=device.opener)
    try:
        assert Tpm(transport).nv_read_public(TEST_INDEX).data_size == 8
    finally:
        transport.close()
        device.close()


def test_device_transport_truncated_response() -> None:
    # 20 of the announced bytes, then end of file
    device = _FakeDevice(lambda _: response(_nv_public())[:20], kind=socket.SOCK_STREAM, hang_up=True)
    transport = DeviceTransport(Path("/dev/tpmrm0"), opener=device.opener)
    try:
        with pytest.raises(ParseError, match="closed after 20 bytes"):
            Tpm(transport).nv_read_public(TEST_INDEX)
    finally:
        transport.close()
        device.close()


@pytest.mark.parametrize(
    ("err", "error", "match"),
    [
        (errno.ENOENT, UsageError, "does not exist"),
        (errno.EACCES, UsageError, "permission denied"),
        (errno.EIO, StorageError, "Input/output error"),
        (errno.EBUSY, StorageError, "busy"),
    ],
)
def test_device_open_errors(err: int, error: type[Exception], match: str) -> None:
    def opener(path: Path) -> int:
        raise OSError(err, os.strerror(err), str(path))

    with pytest.raises(error, match=match):
        DeviceTransport(Path("/dev/tpmrm0"), opener=opener).transmit(b"x" * 10)


def test_device_write_error_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    transport = DeviceTransport(path, opener=lambda p: os.open(p, os.O_RDONLY))
    with pytest.raises(StorageError, match="Bad file descriptor"):
        transport.transmit(b"x" * 10)
    transport.close()


def test_default_opener_wants_a_character_device(tmp_path: Path) -> None:
    regular = tmp_path / "tpm"
    regular.write_bytes(b"")
    with pytest.raises(UsageError, match="not a character device"):
        DeviceTransport(regular).transmit(b"x" * 10)
    with pytest.raises(UsageError, match="does not exist"):
        DeviceTransport(tmp_path / "absent").transmit(b"x" * 10)
    # /dev/null is a character device that answers nothing: end of file before a response
    null = DeviceTransport(Path("/dev/null"))
    with pytest.raises(ParseError, match="closed after 0 bytes"):
        Tpm(null).nv_read_public(TEST_INDEX)
    null.close()


def test_public_names_exist() -> None:
    import confide.runtime.azure_vtpm as azure_vtpm
    import confide.runtime.tpm as tpm_module

    for module in (tpm_module, azure_vtpm):
        assert len(set(module.__all__)) == len(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
