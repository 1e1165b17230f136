"""A real swtpm for the tests, provisioned like an Azure CVM's paravisor vTPM, and fakes.

- :func:`start_swtpm`: ``swtpm socket --tpm2`` on free loopback ports in a temporary state
  directory (the session fixture ``swtpm`` in conftest.py starts one per test session).
- :func:`provision_ak`: an RSA-2048 restricted signing key (RSASSA-SHA256), persisted at
  0x81000003 like Azure's vTPM attestation key.
- :func:`build_hcl_report`: a synthetic HCL report ("HCLA" header, SEV-SNP report or TD report
  whose REPORT_DATA starts with SHA-256 of the runtime-claims JSON, IGVM request data, the
  claims with the AK as ``HCLAkPub`` and a ``user-data``).
- :class:`EmulatedParavisor`: a transport in front of swtpm that, like the paravisor, rewrites
  the HCL report index after the guest writes its report data (optionally some reads later,
  or never).
- :class:`QuoteInterceptor`: a transport in front of swtpm that records TPM2_Quote commands and
  responses, can rewrite each command before the TPM sees it (:func:`with_pcr_selection`) and
  runs a hook after each response (e.g. :func:`pcr_extend`: a PCR changes between the quote and
  the PCR read).
- :class:`ScriptedTransport`: returns prepared responses (malformed-response tests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from confide.evidence.tpm import TPMA_OBJECT_RESTRICTED, TPMA_OBJECT_SIGN
from confide.runtime.azure_vtpm import AK_HANDLE, HCL_REPORT_NV_INDEX, REPORT_DATA_NV_INDEX
from confide.runtime.tpm import (
    TPM_RH_OWNER,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    Alg,
    CommandCode,
    TcpTransport,
    Tpm,
    TpmCommandError,
)

# The handles the guest runtime uses (test_runtime_azure_vtpm.py pins their values).
HCL_INDEX = HCL_REPORT_NV_INDEX
USER_DATA_INDEX = REPORT_DATA_NV_INDEX
HCL_NV_SIZE = 2048  # swtpm's TPM_PT_NV_INDEX_MAX (Azure's index holds 2600 bytes)

# Part 2 §8.3 TPMA_OBJECT (restricted and sign are the verifier's; the rest only provision)
_FIXED_TPM = 1 << 1
_FIXED_PARENT = 1 << 4
_SENSITIVE_DATA_ORIGIN = 1 << 5
_USER_WITH_AUTH = 1 << 6
_NO_DA = 1 << 10


@dataclass
class Swtpm:
    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_swtpm(exe: str, state: str) -> tuple[subprocess.Popen[bytes], int] | None:
    """swtpm serving on two ports found free; ``None`` when it exits at once (a port taken
    meanwhile: found free is not reserved)."""
    port = _free_port()
    ctrl = _free_port()
    while ctrl == port:
        ctrl = _free_port()
    process = subprocess.Popen(
        [
            exe, "socket", "--tpm2",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--flags", "not-need-init",
            "--tpmstate", f"dir={state}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"swtpm did not start: {err}") from None
            time.sleep(0.02)
            continue
        if process.poll() is None:  # serving (not another process on a port taken meanwhile)
            return process, port
    if process.stderr:
        process.stderr.close()
    return None


@contextmanager
def start_swtpm() -> Iterator[Swtpm]:
    exe = shutil.which("swtpm")
    if exe is None:
        raise FileNotFoundError("swtpm")
    with tempfile.TemporaryDirectory(prefix="confide-swtpm-") as state:
        for _ in range(5):
            started = _spawn_swtpm(exe, state)
            if started is not None:
                break
        else:
            raise RuntimeError("swtpm did not start (5 attempts)")
        process, port = started
        try:
            yield Swtpm(process, port, Path(state))
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()


def ak_template(scheme: int = Alg.RSASSA, hash_alg: int = Alg.SHA256) -> bytes:
    """TPMT_PUBLIC (Part 2 §12.2.4) of an RSA-2048 restricted signing key, by default
    RSASSA-SHA256 (Part 2 §12.2.3.5 TPMS_RSA_PARMS: the scheme is the key's, so TPM2_Quote with
    inScheme TPM_ALG_NULL signs with it)."""
    attributes = (
        _FIXED_TPM
        | _FIXED_PARENT
        | _SENSITIVE_DATA_ORIGIN
        | _USER_WITH_AUTH
        | _NO_DA
        | TPMA_OBJECT_RESTRICTED
        | TPMA_OBJECT_SIGN
    )
    return (
        struct.pack(">HHI", Alg.RSA, Alg.SHA256, attributes)
        + struct.pack(">H", 0)  # authPolicy
        + struct.pack(">HHHHIH", Alg.NULL, scheme, hash_alg, 2048, 0, 0)  # parms, empty unique
    )


def provision_ak(tpm: Tpm, handle: int = AK_HANDLE, template: bytes | None = None) -> rsa.RSAPublicKey:
    """Persist a primary key of ``template`` (default :func:`ak_template`) at ``handle``,
    replacing what is there. A primary key derives from the hierarchy's seed and the template
    (Part 3 §24.1 TPM2_CreatePrimary), so the same template gives the same key again."""
    try:
        tpm.read_public(handle)
        tpm.evict_control(handle, handle)  # an evict of a persistent handle removes it
    except TpmCommandError as exc:
        if exc.name != "TPM_RC_HANDLE":
            raise
    transient, _ = tpm.create_primary(TPM_RH_OWNER, template or ak_template())
    tpm.evict_control(transient, handle)
    tpm.flush_context(transient)
    key = tpm.read_public(handle).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _b64url_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def build_hcl_report(
    ak: rsa.RSAPublicKey,
    user_data: bytes,
    *,
    report_type: int = 2,
    size: int = HCL_NV_SIZE,
    sign_hw: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """A synthetic HCL report (layout: docs/azure-vtpm.md). ``sign_hw`` (SEV-SNP only) makes the
    hardware report from its 64-byte REPORT_DATA, e.g. signed by a test AMD PKI; without it the
    report is unsigned zeros around the REPORT_DATA."""
    numbers = ak.public_numbers()
    claims = {
        "keys": [
            {
                "kid": "HCLAkPub",
                "key_ops": ["sign"],
                "kty": "RSA",
                "e": _b64url_int(numbers.e),
                "n": _b64url_int(numbers.n),
            }
        ],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
        "user-data": user_data.hex().upper(),
    }
    var_data = json.dumps(claims, separators=(",", ":")).encode()
    report_data = hashlib.sha256(var_data).digest() + bytes(32)
    hw = bytearray(1184)
    if sign_hw is not None:
        hw[:] = sign_hw(report_data)
    elif report_type == 2:
        hw[0:4] = struct.pack("<I", 2)  # SNP report version
        hw[0x50:0x90] = report_data
    else:
        hw[0] = 0x81  # REPORTTYPE.type: TDX
        hw[128:192] = report_data
    igvm = struct.pack("<5I", 20 + len(var_data), 1, report_type, 1, len(var_data))
    report_size = 32 + 1184 + len(igvm) + len(var_data)
    header = b"HCLA" + struct.pack("<IIII", 1, report_size, 2, 0) + bytes(12)
    body = header + bytes(hw) + igvm + var_data
    assert len(body) <= size, len(body)
    return body + bytes(size - len(body))


def define_hcl_index(tpm: Tpm, report: bytes) -> None:
    clear_index(tpm, HCL_INDEX)
    tpm.nv_define_space(HCL_INDEX, len(report), TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD)
    tpm.nv_write(HCL_INDEX, report)


def clear_index(tpm: Tpm, index: int) -> None:
    try:
        tpm.nv_undefine_space(index)
    except TpmCommandError as exc:
        if exc.name != "TPM_RC_HANDLE":
            raise


@dataclass
class EmulatedParavisor:
    """swtpm plus the paravisor's side: after the guest writes the report-data index, the HCL
    report index is regenerated with that ``user-data`` when it has been read ``lag`` more times
    (never if ``stale``; in the middle of the next chunked read if ``tear``)."""

    inner: TcpTransport
    ak: rsa.RSAPublicKey
    report_type: int = 2
    lag: int = 0
    stale: bool = False
    tear: bool = False
    ak_in_report: rsa.RSAPublicKey | None = None
    sign_hw: Callable[[bytes], bytes] | None = None
    pending: bytes | None = None
    reads_left: int = 0
    writes: list[bytes] = field(default_factory=list)

    def transmit(self, command: bytes) -> bytes:
        cc = int.from_bytes(command[6:10], "big")
        handles = [int.from_bytes(command[10 + 4 * i : 14 + 4 * i], "big") for i in range(2)]
        if cc == CommandCode.NV_Read and handles[1] == HCL_INDEX and self.pending is not None:
            auth_size = int.from_bytes(command[18:22], "big")
            offset = int.from_bytes(command[22 + auth_size + 2 : 22 + auth_size + 4], "big")
            if self.tear:
                regenerate = offset != 0  # between two chunks of one read: a torn read
            elif offset == 0:
                regenerate = self.reads_left == 0
                self.reads_left -= 1
            else:
                regenerate = False
            if regenerate:
                report = build_hcl_report(
                    self.ak_in_report or self.ak,
                    self.pending,
                    report_type=self.report_type,
                    sign_hw=self.sign_hw,
                )
                self.pending = None
                Tpm(self.inner).nv_write(HCL_INDEX, report)
        response = self.inner.transmit(command)
        ok = int.from_bytes(response[6:10], "big") == 0
        if cc == CommandCode.NV_Write and handles[1] == USER_DATA_INDEX and ok:
            # handles (8), authorizationSize, auth area, then TPM2B data and offset
            auth_size = int.from_bytes(command[18:22], "big")
            params = command[22 + auth_size :]
            data = params[2 : 2 + int.from_bytes(params[:2], "big")]
            self.writes.append(data)
            if not self.stale:
                self.pending, self.reads_left = data, self.lag
        return response


@dataclass
class QuoteInterceptor:
    """Forwards every command to ``inner``; a TPM2_Quote command is first passed through
    ``rewrite`` (so the TPM really signs the rewritten request) and recorded with its response,
    then ``after_quote`` runs with the number of quotes so far."""

    inner: TcpTransport
    rewrite: Callable[[bytes], bytes] | None = None
    after_quote: Callable[[int], None] | None = None
    quotes: list[tuple[bytes, bytes]] = field(default_factory=list)

    def transmit(self, command: bytes) -> bytes:
        if int.from_bytes(command[6:10], "big") != CommandCode.Quote:
            return self.inner.transmit(command)
        if self.rewrite is not None:
            command = self.rewrite(command)
        response = self.inner.transmit(command)
        self.quotes.append((command, response))
        if self.after_quote is not None:
            self.after_quote(len(self.quotes))
        return response


def with_pcr_selection(command: bytes, selection: list[tuple[int, list[int]]]) -> bytes:
    """A TPM2_Quote command (Part 3 §18.4.2: header, signHandle, authorizationSize, auth area,
    qualifyingData, inScheme, PCRselect) whose PCRselect is replaced by the TPML_PCR_SELECTION
    (Part 2 §10.9.7) of ``selection`` ((bank, PCR indices), 3-byte bitmaps, §10.6.2); the
    commandSize is fixed up."""
    auth_size = int.from_bytes(command[14:18], "big")
    at = 18 + auth_size
    at += 2 + int.from_bytes(command[at : at + 2], "big") + 2  # qualifyingData, inScheme
    tpml = struct.pack(">I", len(selection))
    for bank, pcrs in selection:
        bitmap = bytearray(3)
        for pcr in pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        tpml += struct.pack(">HB", bank, 3) + bytes(bitmap)
    body = command[10:at] + tpml
    return command[:2] + struct.pack(">I", 10 + len(body)) + command[6:10] + body


def quote_response(response: bytes) -> tuple[bytes, bytes]:
    """The TPMS_ATTEST and the TPMT_SIGNATURE of a successful TPM2_Quote response (Part 3
    §18.4.3: header, parameterSize, then the parameters TPM2B_ATTEST quoted and signature)."""
    params = response[14 : 14 + int.from_bytes(response[10:14], "big")]
    size = int.from_bytes(params[:2], "big")
    return params[2 : 2 + size], params[2 + size :]


@dataclass
class ScriptedTransport:
    """Returns the prepared responses in order and records the commands."""

    responses: list[bytes]
    commands: list[bytes] = field(default_factory=list)

    def transmit(self, command: bytes) -> bytes:
        self.commands.append(command)
        return self.responses.pop(0)


def response(body: bytes = b"", *, rc: int = 0, tag: int = 0x8001, size: int | None = None) -> bytes:
    """A TPM response: header (Part 1 §18.2) + body, with an optionally wrong size."""
    total = 10 + len(body) if size is None else size
    return struct.pack(">HII", tag, total, rc) + body


def session_response(params: bytes = b"", *, auth: bytes = b"\x00\x00\x01\x00\x00") -> bytes:
    """A TPM_ST_SESSIONS response with parameterSize, parameters and one password auth."""
    return response(struct.pack(">I", len(params)) + params + auth, tag=0x8002)


def pcr_extend(transport: TcpTransport, pcr: int, digest: bytes) -> None:
    """TPM2_PCR_Extend (Part 3 §22.2) of the SHA-256 bank, with an empty password session: what
    a boot component does when it measures the next one (the client has no use for it)."""
    auth = struct.pack(">IHBH", 0x40000009, 0, 0, 0)  # TPM_RS_PW, no nonce, no attributes, no hmac
    body = struct.pack(">II", pcr, len(auth)) + auth + struct.pack(">IH", 1, 0x000B) + digest
    command = struct.pack(">HII", 0x8002, 10 + len(body), 0x182) + body
    response = transport.transmit(command)
    assert struct.unpack_from(">I", response, 6)[0] == 0, response.hex()
