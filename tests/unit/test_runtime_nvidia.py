"""``confide run --gpus``: the composite provider (``confide.runtime.nvidia.GpuQuoteProvider``)
end to end through ``attest_and_prepare`` into an in-process CAS that verifies GPU reports under
a test NVIDIA PKI (``tests/nvidia_forge.py``), with simulated CPU evidence; the NVML ctypes
layer's structure layouts, its marshalling and its error mapping against a fake library object
(no real NVML here); and the CLI's refusals.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cas_inproc import InProcessCas, InProcessClient, RuntimeKey, last_attestation
from cli import run_confide
from confide import errors
from confide.cas.core import binding_report_data
from confide.cas.verifier import MAX_GPUS
from confide.evidence.nvidia import NvidiaAttestationReport
from confide.runtime import nvidia
from confide.runtime.nvidia import GpuQuoteProvider, NvmlGpuSource, nvml_error
from confide.runtime.quote import Evidence, SimQuoteProvider
from confide.runtime.run import attest_and_prepare
from confide.verify.result import Platform
from gpu_cas import CPU, NOW, NV_MEASUREMENTS, NV_REPORT, PKI
from nvml_fakes import GPUS, FakeGpus, FakeNvml, build_stub

M22 = NV_MEASUREMENTS[22].hex()

POLICY = f"""name: app
version: "0.3"
services:
  - name: ai
    command: serve --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{CPU}"
      nvidia-gpu:
        count: 2
        measurements: {{22: "{M22}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.fixture
def cas(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas", POLICY).verify_with(nvidia_root=PKI.root[0])


def sim_cpu(cas: InProcessCas) -> SimQuoteProvider:
    return SimQuoteProvider(cas.platform, bytes.fromhex(CPU), clock=lambda: NOW)


# --- end to end into the CAS -------------------------------------------------------------------


def test_two_gpus_are_accepted_for_a_count_2_policy(cas: InProcessCas) -> None:
    client = InProcessClient(cas.cas)
    gpus = FakeGpus(2)
    plan = attest_and_prepare(client, GpuQuoteProvider(sim_cpu(cas), gpus), "app", "ai", [])  # type: ignore[arg-type]
    assert plan.argv[:2] == ["serve", "--token"] and plan.argv[2]
    event = last_attestation(cas.cas)
    assert event["verdict"] == "accepted" and event["platform"] == "sim"
    assert [g["slot"] for g in event["gpus"]] == ["gpu0", "gpu1"]
    assert len({g["attestation_key_sha256"] for g in event["gpus"]}) == 2
    # Each GPU was asked once, for the first 32 bytes of the binding of this request.
    assert [k for k, _ in gpus.asked] == [0, 1] and len({n for _, n in gpus.asked}) == 1
    assert len(gpus.asked[0][1]) == 32


def test_evidence_shape(cas: InProcessCas) -> None:
    rt = RuntimeKey(cas.cas)
    evidence = GpuQuoteProvider(sim_cpu(cas), FakeGpus(3), count=2).get_evidence(rt.binding)
    assert evidence.platform is Platform.SIMULATED and evidence.provider == "sim+nvml"
    assert sorted(evidence.aux) == ["gpu0", "gpu0.certs", "gpu1", "gpu1.certs"]
    assert evidence.aux["gpu1.certs"] == GPUS[1].chain_pem()
    assert NvidiaAttestationReport.from_bytes(evidence.aux["gpu1"]).nonce == rt.binding[:32]


def test_a_gpu_report_for_another_nonce_is_refused_before_anything_is_sent(cas: InProcessCas) -> None:
    client = InProcessClient(cas.cas)
    other = binding_report_data(b"another key", bytes.fromhex(cas.cas.new_nonce()))[:32]
    gpus = FakeGpus(2, lambda k, n: other if k == 1 else n)
    provider = GpuQuoteProvider(sim_cpu(cas), gpus)
    with pytest.raises(
        errors.BindingError, match=f"^gpu1: the GPU's report carries SPDM nonce {other.hex()}"
    ):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 0


def test_fewer_gpus_than_the_policy_wants_are_refused_by_the_cas(cas: InProcessCas) -> None:
    client = InProcessClient(cas.cas)
    provider = GpuQuoteProvider(sim_cpu(cas), FakeGpus(2), count=1)
    with pytest.raises(errors.AppraisalError, match=r"got 1 distinct GPU report\(s\), expected 2"):
        attest_and_prepare(client, provider, "app", "ai", [])  # type: ignore[arg-type]
    assert client.attested == 1
    event = last_attestation(cas.cas)
    assert event["verdict"] == "refused" and len(event["gpus"]) == 1


def test_end_to_end_through_the_nvml_layer(cas: InProcessCas) -> None:
    lib = FakeNvml(2)
    provider = GpuQuoteProvider(sim_cpu(cas), NvmlGpuSource(lib))
    plan = attest_and_prepare(InProcessClient(cas.cas), provider, "app", "ai", [])  # type: ignore[arg-type]
    assert plan.argv[0] == "serve"
    assert len(last_attestation(cas.cas)["gpus"]) == 2
    assert lib.calls.count("nvmlInit_v2") == 1


# --- the provider's own refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "count", "match"),
    [
        (0, None, "no NVIDIA GPU on this machine"),
        (1, 2, r"--gpus 2: this machine has only 1 GPU\(s\)"),
        (MAX_GPUS + 1, None, f"got {MAX_GPUS + 1} GPUs, expected at most {MAX_GPUS}"),
    ],
)
def test_gpu_counts_that_cannot_be_served(
    cas: InProcessCas, available: int, count: int | None, match: str
) -> None:
    provider = GpuQuoteProvider(sim_cpu(cas), FakeGpus(available), count=count)
    with pytest.raises(errors.UsageError, match=match):
        provider.get_evidence(RuntimeKey(cas.cas).binding)


@pytest.mark.parametrize("count", [0, -1, MAX_GPUS + 1])
def test_count_out_of_range(cas: InProcessCas, count: int) -> None:
    with pytest.raises(errors.UsageError, match=f"got {count}, expected 1 to {MAX_GPUS}"):
        GpuQuoteProvider(sim_cpu(cas), FakeGpus(1), count=count)


def test_most_gpus_the_cas_takes(cas: InProcessCas) -> None:
    evidence = GpuQuoteProvider(sim_cpu(cas), FakeGpus(MAX_GPUS)).get_evidence(RuntimeKey(cas.cas).binding)
    assert len(evidence.aux) == 2 * MAX_GPUS


class _FixedCpu:
    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence

    def get_evidence(self, report_data: bytes) -> Evidence:
        return self.evidence


@pytest.mark.parametrize(
    ("cpu", "match"),
    [
        (Evidence(Platform.SGX, b"q", "gramine/dcap"), "not with sgx"),
        (Evidence(Platform.AWS_NITRO, b"d", "nsm"), "not with aws-nitro"),
        (Evidence(Platform.TDX, b"q", "x", aux={"gpu0": b"x"}), "already has aux 'gpu0'"),
    ],
)
def test_cpu_evidence_that_cannot_carry_gpus(cpu: Evidence, match: str) -> None:
    with pytest.raises(errors.UsageError, match=match):
        GpuQuoteProvider(_FixedCpu(cpu), FakeGpus(1)).get_evidence(bytes(64))


def test_cpu_aux_is_kept() -> None:
    cpu = Evidence(Platform.SEV_SNP, b"r", "configfs-tsm/sev_guest", aux={"auxblob": b"certs"})
    nonce = bytes(range(64))
    evidence = GpuQuoteProvider(_FixedCpu(cpu), FakeGpus(1)).get_evidence(nonce)
    assert evidence.aux["auxblob"] == b"certs" and evidence.raw == b"r"
    assert sorted(evidence.aux) == ["auxblob", "gpu0", "gpu0.certs"]


def test_a_malformed_gpu_report_is_a_parse_error() -> None:
    gpus = FakeGpus(1)
    gpus.attestation_report = lambda index, nonce: NV_REPORT[:-1]  # type: ignore[method-assign]
    cpu = Evidence(Platform.TDX, b"q", "configfs-tsm/tdx_guest")
    with pytest.raises(errors.ParseError, match="expected a 96-byte signature"):
        GpuQuoteProvider(_FixedCpu(cpu), gpus).get_evidence(bytes(64))


@pytest.mark.parametrize("size", [0, 63, 65])
def test_report_data_must_be_64_bytes(size: int) -> None:
    cpu = Evidence(Platform.TDX, b"q", "configfs-tsm/tdx_guest")
    with pytest.raises(errors.UsageError, match=f"got {size} bytes, expected 64"):
        GpuQuoteProvider(_FixedCpu(cpu), FakeGpus(1)).get_evidence(bytes(size))


# --- the NVML ctypes layer ----------------------------------------------------------------------


def _offsets(structure: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(structure, name).offset for name, *_ in structure._fields_}


def test_structure_layouts_match_nvml_h() -> None:
    report = nvidia._ConfComputeGpuAttestationReport
    assert ctypes.sizeof(report) == 4 + 4 + 4 + 0x20 + 0x2000 + 0x1000 == 12332
    assert _offsets(report) == {
        "isCecAttestationReportPresent": 0,
        "attestationReportSize": 4,
        "cecAttestationReportSize": 8,
        "nonce": 12,
        "attestationReport": 44,
        "cecAttestationReport": 44 + 8192,
    }
    cert = nvidia._ConfComputeGpuCertificate
    assert ctypes.sizeof(cert) == 4 + 4 + 0x1000 + 0x1400 == 9224
    assert _offsets(cert) == {
        "certChainSize": 0,
        "attestationCertChainSize": 4,
        "certChain": 8,
        "attestationCertChain": 4104,
    }
    assert ctypes.sizeof(nvidia._ConfComputeSystemState) == 12
    assert ctypes.sizeof(ctypes.c_uint) == 4


def test_nvml_marshalling() -> None:
    lib = FakeNvml(2)
    source = NvmlGpuSource(lib)
    assert source.devices() == 2
    nonce = bytes(range(32))
    report = source.attestation_report(1, nonce)
    assert lib.nonces == [nonce]  # written into the structure before the call
    parsed = NvidiaAttestationReport.from_bytes(report)
    assert parsed.nonce == nonce and len(report) == len(NV_REPORT)
    assert source.certificate_chain(1) == GPUS[1].chain_pem()
    assert source.ready_state() is False
    source.set_ready_state()
    assert lib.set_values == [1]  # NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE, by value
    assert source.ready_state() is True
    assert lib.calls.count("nvmlInit_v2") == 1 and lib.calls.count("nvmlSystemGetConfComputeState") == 1
    for name in nvidia._PROTOTYPES:
        assert getattr(lib, name).restype is ctypes.c_int


def test_ready_state_prototypes_match_nvml_h() -> None:
    # nvmlSystemGetConfComputeGpusReadyState(unsigned int *isAcceptingWork),
    # nvmlSystemSetConfComputeGpusReadyState(unsigned int isAcceptingWork)
    assert nvidia._PROTOTYPES["nvmlSystemGetConfComputeGpusReadyState"] == [ctypes.POINTER(ctypes.c_uint)]
    assert nvidia._PROTOTYPES["nvmlSystemSetConfComputeGpusReadyState"] == [ctypes.c_uint]
    assert (
        nvidia.NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE,
        nvidia.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
    ) == (0, 1)


@pytest.mark.parametrize("value", [2, 0xFFFFFFFF])
def test_a_ready_state_other_than_0_or_1_is_a_parse_error(value: int) -> None:
    with pytest.raises(errors.ParseError, match=f"isAcceptingWork: got {value}, expected 0 or 1"):
        NvmlGpuSource(FakeNvml(1, ready=value)).ready_state()


@pytest.mark.parametrize(
    ("code", "error", "match"),
    [
        (4, errors.UsageError, r"^NVML nvmlSystemSetConfComputeGpusReadyState: NVML_ERROR_NO_PERMISSION \(4\): setting it needs root$"),
        (3, errors.UsageError, r"NVML_ERROR_NOT_SUPPORTED \(3\): not supported"),
        (19, errors.StorageError, r"NVML_ERROR_IN_USE \(19\)$"),
    ],
)  # fmt: skip
def test_setting_the_ready_state_fails(code: int, error: type[Exception], match: str) -> None:
    lib = FakeNvml(1, codes={"nvmlSystemSetConfComputeGpusReadyState": code})
    with pytest.raises(error, match=match) as info:
        NvmlGpuSource(lib).set_ready_state()
    assert type(info.value) is error
    assert lib.calls[-1] == "nvmlSystemSetConfComputeGpusReadyState" and lib.ready == 0


@pytest.mark.parametrize(
    "missing", ["nvmlSystemGetConfComputeGpusReadyState", "nvmlSystemSetConfComputeGpusReadyState"]
)
def test_a_driver_without_the_ready_state_fails_when_it_is_read(missing: str) -> None:
    # Reading it (before the attestation) looks the setter up too: an old driver fails there.
    lib = FakeNvml(1, missing=(missing,))
    with pytest.raises(errors.UsageError, match=f"NVML {missing}: NVML_ERROR_FUNCTION_NOT_FOUND"):
        NvmlGpuSource(lib).ready_state()
    assert "nvmlSystemSetConfComputeGpusReadyState" not in lib.calls


@pytest.mark.parametrize(
    ("function", "code", "error", "match"),
    [
        ("nvmlInit_v2", 9, errors.UsageError, r"NVML nvmlInit_v2: NVML_ERROR_DRIVER_NOT_LOADED \(9\)"),
        ("nvmlDeviceGetCount_v2", 4, errors.UsageError, r"NVML_ERROR_NO_PERMISSION \(4\): no permission"),
        ("nvmlDeviceGetHandleByIndex_v2", 2, errors.UsageError, r"\(GPU 0\): NVML_ERROR_INVALID_ARGUMENT \(2\)"),
        ("nvmlDeviceGetConfComputeGpuAttestationReport", 3, errors.UsageError, "NOT_SUPPORTED.*confidential-computing mode"),
        ("nvmlDeviceGetConfComputeGpuAttestationReport", 10, errors.StorageError, r"\(GPU 0\): NVML_ERROR_TIMEOUT \(10\)$"),
        ("nvmlDeviceGetConfComputeGpuCertificate", 15, errors.StorageError, r"NVML_ERROR_GPU_IS_LOST \(15\)$"),
        ("nvmlDeviceGetConfComputeGpuCertificate", 999, errors.StorageError, r"NVML_ERROR_UNKNOWN \(999\)$"),
        ("nvmlDeviceGetConfComputeGpuCertificate", 4242, errors.StorageError, r"an unknown return code \(4242\)$"),
    ],
)  # fmt: skip
def test_nvml_return_codes_map_to_errors(
    function: str, code: int, error: type[Exception], match: str
) -> None:
    source = NvmlGpuSource(FakeNvml(1, codes={function: code}))
    with pytest.raises(error, match=match) as info:
        source.devices()
        source.attestation_report(0, bytes(32))
        source.certificate_chain(0)
    assert type(info.value) is error


def test_every_named_code_has_a_kind() -> None:
    for code in nvidia._NVML_RETURN_NAMES:
        expected = errors.UsageError if code in nvidia.NVML_USAGE_ERRORS else errors.StorageError
        assert type(nvml_error("f", code)) is expected
    assert set(nvidia.NVML_USAGE_ERRORS) <= set(nvidia._NVML_RETURN_NAMES)


def test_a_driver_without_the_cc_functions() -> None:
    source = NvmlGpuSource(FakeNvml(1, missing=("nvmlDeviceGetConfComputeGpuAttestationReport",)))
    assert source.devices() == 1
    with pytest.raises(errors.UsageError, match=r"NVML_ERROR_FUNCTION_NOT_FOUND .*R535 or newer"):
        source.attestation_report(0, bytes(32))


def test_cc_mode_off() -> None:
    with pytest.raises(errors.UsageError, match=r"confidential computing is off .*ccFeature 0, expected 1"):
        NvmlGpuSource(FakeNvml(1, cc_feature=0)).devices()


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"report": 0}, "attestationReportSize: got 0 bytes, expected 1 to 8192"),
        ({"report": 8193}, "got 8193 bytes, expected 1 to 8192"),
        ({"report": 2**32 - 1}, f"got {2**32 - 1} bytes"),
        ({"certs": 0}, "attestationCertChainSize: got 0 bytes, expected 1 to 5120"),
        ({"certs": 5121}, "got 5121 bytes, expected 1 to 5120"),
        ({"count": 2**32 - 1}, f"got {2**32 - 1} devices"),
    ],
)
def test_driver_sizes_are_bounded(sizes: dict[str, int], match: str) -> None:
    source = NvmlGpuSource(FakeNvml(1, sizes=sizes))
    with pytest.raises(errors.ParseError, match=match):
        source.devices()
        source.attestation_report(0, bytes(32))
        source.certificate_chain(0)


def test_the_largest_sizes_the_structures_hold_are_taken() -> None:
    source = NvmlGpuSource(FakeNvml(1, sizes={"report": 8192, "certs": 5120}))
    assert len(source.attestation_report(0, bytes(32))) == 8192  # not a valid report: the provider parses it
    assert len(source.certificate_chain(0)) == 5120


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_the_nonce_is_32_bytes(size: int) -> None:
    with pytest.raises(errors.UsageError, match=f"GPU nonce: got {size} bytes, expected 32"):
        NvmlGpuSource(FakeNvml(1)).attestation_report(0, bytes(size))


def test_library_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(nvidia.ctypes, "CDLL", absent)
    with pytest.raises(errors.UsageError, match=r"^no NVIDIA driver \(libnvidia-ml\.so\.1\): "):
        NvmlGpuSource()


def test_the_library_is_loaded_by_its_soname(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(nvidia.ctypes, "CDLL", lambda name: loaded.append(name) or SimpleNamespace())
    NvmlGpuSource()
    assert loaded == ["libnvidia-ml.so.1"]


# --- confide run --gpus -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--gpus", "all", "--tee", "sgx-gramine"), "--gpus: got --tee sgx-gramine, expected one of tdx, sev-snp"),
        (("--gpus", "2", "--tee", "aws-nitro"), "--gpus: got --tee aws-nitro"),
        (("--gpus", "all", "--tee", "sgx-gramine"), "belong to confidential VMs, not to enclaves"),
        (("--gpus", "all", "--tee", "gce-tpm"), "--gpus: got --tee gce-tpm, expected one of tdx"),
        (("--gpu-index", "0", "--tee", "gce-tpm"), "a GCE vTPM's quote is not a confidential VM's hardware report"),
        (("--gpus", "0", "--tee", "tdx"), "--gpus: got '0', expected 'all' or a number from 1 to 8"),
        (("--gpus", "9", "--tee", "sev-snp"), "--gpus: got '9'"),
        (("--gpus", "two", "--tee", "az-vtpm"), "--gpus: got 'two'"),
        (("--gpus", "0,2", "--tee", "tdx"), "--gpus: got '0,2', expected 'all' or a number from 1 to 8 (to name GPUs: --gpu-index)"),
        (("--gpu-index", "0", "--tee", "sgx-gramine"), "--gpu-index: got --tee sgx-gramine, expected one of tdx"),
        (("--gpus", "2", "--gpu-index", "0,1", "--tee", "tdx"), "give --gpus (all or a number) or --gpu-index (which GPUs), not both"),
        (("--gpu-index", "0,0", "--tee", "tdx"), "--gpu-index: got GPU 0 twice, expected each GPU once"),
        (("--gpu-index", "0,", "--tee", "tdx"), "--gpu-index: got '' in '0,', expected GPU indices separated by commas"),
        (("--gpu-index", "all", "--tee", "tdx"), "--gpu-index: got 'all' in 'all'"),
        (("--gpu-index", ",".join(map(str, range(9))), "--tee", "tdx"), "--gpu-index: got 9 GPUs, expected 1 to 8"),
        (("--gpu-ready-state", "skip", "--tee", "tdx"), "--gpu-ready-state needs --gpus or --gpu-index"),
        (("--gpu-ocsp", "/nonexistent", "--tee", "tdx"), "--gpu-ocsp needs --gpus or --gpu-index"),
    ],
)  # fmt: skip
def test_cli_refuses_gpus_where_they_cannot_be(args: tuple[str, ...], match: str) -> None:
    r = run_confide("run", "--config-id", "app/ai", *args, "--", "/bin/true",
                    drop=("CONFIDE_CAS_URL", "CONFIDE_CAS_CERT"))  # fmt: skip
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr


def test_cli_gpus_without_the_nvidia_driver() -> None:
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("libnvidia-ml is installed on this machine")
    r = run_confide("run", "--config-id", "app/ai", "--gpus", "all", "--tee", "tdx", "--", "/bin/true",
                    drop=("CONFIDE_CAS_URL", "CONFIDE_CAS_CERT"))  # fmt: skip
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no NVIDIA driver (libnvidia-ml.so.1)" in lines[0], r.stderr


# --- the real ctypes calls, into a C library with NVML's symbols ------------------------------------


@pytest.fixture(scope="module")
def stub_library(tmp_path_factory: pytest.TempPathFactory) -> Any:
    library = build_stub(tmp_path_factory.mktemp("nvml"))
    if library is None:
        pytest.skip("no C compiler to build the NVML stand-in")
    return ctypes.CDLL(str(library))


def test_real_ctypes_calls_into_c(stub_library: Any) -> None:
    source = NvmlGpuSource(stub_library)
    assert source.devices() == 2
    nonce = bytes(range(100, 132))
    assert source.attestation_report(0, nonce) == nonce + b"\x00"
    with pytest.raises(errors.StorageError, match=r"\(GPU 1\): NVML_ERROR_TIMEOUT \(10\)$"):
        source.attestation_report(1, nonce)
    with pytest.raises(errors.UsageError, match=r"\(GPU 2\): NVML_ERROR_INVALID_ARGUMENT \(2\)"):
        source.attestation_report(2, nonce)
    assert source.certificate_chain(0) == b"C" * 0x1400
    with pytest.raises(errors.ParseError, match="got 5121 bytes, expected 1 to 5120"):
        source.certificate_chain(1)


def test_the_ready_state_through_real_ctypes_calls(stub_library: Any) -> None:
    state, calls, value, code = (
        ctypes.c_uint.in_dll(stub_library, "ready_state"),
        ctypes.c_uint.in_dll(stub_library, "ready_set_calls"),
        ctypes.c_uint.in_dll(stub_library, "ready_set_value"),
        ctypes.c_int.in_dll(stub_library, "ready_set_code"),
    )
    source = NvmlGpuSource(stub_library)
    try:
        assert source.ready_state() is False  # the pointer reached C and came back written
        code.value = 4
        with pytest.raises(
            errors.UsageError, match=r"NVML_ERROR_NO_PERMISSION \(4\): setting it needs root$"
        ):
            source.set_ready_state()
        assert (calls.value, value.value, state.value) == (1, 1, 0)
        code.value = 0
        source.set_ready_state()
        assert (calls.value, value.value, state.value) == (2, 1, 1)  # 1 = ACCEPTING_CLIENT_REQUESTS_TRUE
        assert source.ready_state() is True
        state.value = 7
        with pytest.raises(errors.ParseError, match="got 7, expected 0 or 1"):
            source.ready_state()
    finally:
        state.value, calls.value, value.value, code.value = 0, 0, 0xFFFFFFFF, 0
