"""NVIDIA GPU attestation reports for ``confide run --gpus``: the :class:`GpuSource` interface,
its NVML implementation (:class:`NvmlGpuSource`, ``libnvidia-ml.so.1`` through ctypes) and the
composite provider :class:`GpuQuoteProvider`.

A confidential VM (TDX, SEV-SNP, an Azure vTPM CVM, or the simulator) that owns NVIDIA H100
GPUs in confidential-computing mode sends its CPU evidence with one SPDM report per GPU in
``aux`` (the CAS's composite attestation, ``confide.cas.verifier``): ``gpu<k>`` the report,
``gpu<k>.certs`` the GPU's attestation certificate chain. Every report is requested with the
SPDM requester nonce ``report_data[:32]`` (the first 32 bytes of the SHA-512 binding, DSP0274
Table 40: the nonce is covered by the GPU's signature), which is what the CAS checks.

OCSP stapling (``confide run --gpu-ocsp URL|DIR``, an :class:`~confide.collateral.nvidia_ocsp.OcspSource`):
for every certificate of each GPU's chain whose revocation the CAS checks (those between the leaf
and the root, :func:`~confide.verify.nvidia.ocsp_targets`), the runtime fetches the OCSP response
(RFC 6960; from NVIDIA's responder with a fresh nonce of its own) and sends its DER as
``gpu<k>.ocsp:<i>``, ``i`` the certificate's position in ``gpu<k>.certs``, so that a CAS that
cannot or would rather not reach the responder (``cas serve --nvidia-ocsp stapled``, or
``URL|DIR``, which then asks less) checks revocation all the same. Each response is verified
here first (:func:`~confide.verify.ocsp.verify_ocsp_response` at the runtime's clock, its nonce
included; and it must have a ``nextUpdate``, without which the CAS cannot use it): a revoked
certificate (``RevocationError``) or an unusable answer is reported before anything is sent.
The CAS verifies them again, as hostile input; a certificate shared by several GPUs (their
intermediates) is asked about once per attestation.

NVML (``nvml.h``, "Confidential Computing" section), as NVIDIA's nvtrust local GPU verifier
uses it through pynvml:

- ``nvmlInit_v2()``, ``nvmlDeviceGetCount_v2(unsigned *)``,
  ``nvmlDeviceGetHandleByIndex_v2(unsigned, nvmlDevice_t *)``;
- ``nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *)``: ``ccFeature`` must be
  ``NVML_CC_SYSTEM_FEATURE_ENABLED`` (else the report calls fail with NOT_SUPPORTED);
- ``nvmlDeviceGetConfComputeGpuAttestationReport(device, nvmlConfComputeGpuAttestationReport_t *)``:
  the caller writes the 32-byte ``nonce`` into the structure, the driver fills
  ``attestationReport[attestationReportSize]`` (and the CEC report, which confide does not use);
- ``nvmlDeviceGetConfComputeGpuCertificate(device, nvmlConfComputeGpuCertificate_t *)``:
  ``attestationCertChain[attestationCertChainSize]`` is the attestation key's chain, leaf
  first (PEM); ``certChain`` (the device identity chain) is not used.

Every size the driver returns is hostile input: it must fit the structure's array, else
:class:`~confide.errors.ParseError`. NVML return codes map to errors by kind
(:data:`NVML_USAGE_ERRORS`): :class:`~confide.errors.UsageError` when this machine is not set up
for GPU attestation (no driver, driver too old, no permission, not in CC mode, no such GPU),
:class:`~confide.errors.StorageError` when the device or driver failed (timeouts, lost GPU,
unknown codes); the message names the NVML function, the GPU and the return code.

Nothing here has run against a real GPU: the layer is tested against a fake library object.
"""

from __future__ import annotations

import ctypes
import hmac
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from confide.collateral.nvidia_ocsp import OcspSource
from confide.errors import BindingError, CollateralExpiredError, ParseError, StorageError, UsageError
from confide.evidence.nvidia import NONCE_SIZE, NvidiaAttestationReport
from confide.policy.attestation import GPU_HOSTS, MAX_GPUS
from confide.runtime.quote import Evidence, QuoteProvider, check_report_data
from confide.verify.nvidia import ocsp_targets
from confide.verify.ocsp import verify_ocsp_response
from confide.verify.x509util import load_certificate_chain

__all__ = [
    "NVML_LIBRARY",
    "NVML_USAGE_ERRORS",
    "GpuQuoteProvider",
    "GpuSource",
    "NvmlGpuSource",
    "nvml_error",
]

NVML_LIBRARY = "libnvidia-ml.so.1"

# nvml.h: GPU Certificate Details / GPU Attestation Report.
NVML_GPU_CERT_CHAIN_SIZE = 0x1000
NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE = 0x1400
NVML_CC_GPU_CEC_NONCE_SIZE = 0x20
NVML_CC_GPU_ATTESTATION_REPORT_SIZE = 0x2000
NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE = 0x1000
NVML_CC_SYSTEM_FEATURE_ENABLED = 1
NVML_SUCCESS = 0
# nvml.h caps the devices a system reports far below this; a larger count is a lying driver.
_MAX_DEVICE_COUNT = 1024

# nvml.h nvmlReturn_t.
_NVML_RETURN_NAMES = {
    1: "NVML_ERROR_UNINITIALIZED",
    2: "NVML_ERROR_INVALID_ARGUMENT",
    3: "NVML_ERROR_NOT_SUPPORTED",
    4: "NVML_ERROR_NO_PERMISSION",
    5: "NVML_ERROR_ALREADY_INITIALIZED",
    6: "NVML_ERROR_NOT_FOUND",
    7: "NVML_ERROR_INSUFFICIENT_SIZE",
    8: "NVML_ERROR_INSUFFICIENT_POWER",
    9: "NVML_ERROR_DRIVER_NOT_LOADED",
    10: "NVML_ERROR_TIMEOUT",
    11: "NVML_ERROR_IRQ_ISSUE",
    12: "NVML_ERROR_LIBRARY_NOT_FOUND",
    13: "NVML_ERROR_FUNCTION_NOT_FOUND",
    14: "NVML_ERROR_CORRUPTED_INFOROM",
    15: "NVML_ERROR_GPU_IS_LOST",
    16: "NVML_ERROR_RESET_REQUIRED",
    17: "NVML_ERROR_OPERATING_SYSTEM",
    18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    19: "NVML_ERROR_IN_USE",
    20: "NVML_ERROR_MEMORY",
    21: "NVML_ERROR_NO_DATA",
    22: "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
    23: "NVML_ERROR_INSUFFICIENT_RESOURCES",
    24: "NVML_ERROR_FREQ_NOT_SUPPORTED",
    25: "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
    26: "NVML_ERROR_DEPRECATED",
    27: "NVML_ERROR_NOT_READY",
    28: "NVML_ERROR_GPU_NOT_FOUND",
    29: "NVML_ERROR_INVALID_STATE",
    999: "NVML_ERROR_UNKNOWN",
}

NVML_USAGE_ERRORS = {
    2: "no such GPU, or a request this driver does not take",
    3: "not supported: is this a Hopper GPU in confidential-computing mode?",
    4: "no permission (GPU attestation needs access to /dev/nvidia*)",
    6: "no such GPU",
    9: "the NVIDIA kernel driver is not loaded",
    12: "the NVIDIA driver library is incomplete",
    13: "this driver has no confidential-computing attestation (R535 or newer is needed)",
    17: "the GPU is blocked by the operating system (cgroups?)",
    18: "the NVML library and the kernel driver are of different versions",
    25: "this driver does not take the structure version confide uses",
    26: "deprecated in this driver",
    28: "no GPU found",
}
"""NVML return codes that mean "this machine is not set up for GPU attestation" (UsageError),
with a hint each; every other code (and an unknown one) is a device failure (StorageError)."""


def nvml_error(function: str, code: int, where: str = "") -> UsageError | StorageError:
    """The error for NVML ``function`` returning ``code`` (see :data:`NVML_USAGE_ERRORS`)."""
    name = _NVML_RETURN_NAMES.get(code, "an unknown return code")
    place = f" ({where})" if where else ""
    hint = NVML_USAGE_ERRORS.get(code)
    if hint is not None:
        return UsageError(f"NVML {function}{place}: {name} ({code}): {hint}")
    return StorageError(f"NVML {function}{place}: {name} ({code})")


class _ConfComputeSystemState(ctypes.Structure):
    """nvml.h ``nvmlConfComputeSystemState_t``."""

    _fields_ = (
        ("environment", ctypes.c_uint),
        ("ccFeature", ctypes.c_uint),
        ("devToolsMode", ctypes.c_uint),
    )


class _ConfComputeGpuAttestationReport(ctypes.Structure):
    """nvml.h ``nvmlConfComputeGpuAttestationReport_t`` (12 + 32 + 8192 + 4096 = 12332 bytes)."""

    _fields_ = (
        ("isCecAttestationReportPresent", ctypes.c_uint),
        ("attestationReportSize", ctypes.c_uint),
        ("cecAttestationReportSize", ctypes.c_uint),
        ("nonce", ctypes.c_ubyte * NVML_CC_GPU_CEC_NONCE_SIZE),
        ("attestationReport", ctypes.c_ubyte * NVML_CC_GPU_ATTESTATION_REPORT_SIZE),
        ("cecAttestationReport", ctypes.c_ubyte * NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE),
    )


class _ConfComputeGpuCertificate(ctypes.Structure):
    """nvml.h ``nvmlConfComputeGpuCertificate_t`` (8 + 4096 + 5120 = 9224 bytes)."""

    _fields_ = (
        ("certChainSize", ctypes.c_uint),
        ("attestationCertChainSize", ctypes.c_uint),
        ("certChain", ctypes.c_ubyte * NVML_GPU_CERT_CHAIN_SIZE),
        ("attestationCertChain", ctypes.c_ubyte * NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE),
    )


_Device = ctypes.c_void_p  # nvml.h: typedef struct nvmlDevice_st *nvmlDevice_t

# The prototypes confide calls (all return nvmlReturn_t, an int).
_PROTOTYPES: dict[str, list[Any]] = {
    "nvmlInit_v2": [],
    "nvmlDeviceGetCount_v2": [ctypes.POINTER(ctypes.c_uint)],
    "nvmlDeviceGetHandleByIndex_v2": [ctypes.c_uint, ctypes.POINTER(_Device)],
    "nvmlSystemGetConfComputeState": [ctypes.POINTER(_ConfComputeSystemState)],
    "nvmlDeviceGetConfComputeGpuAttestationReport": [
        _Device,
        ctypes.POINTER(_ConfComputeGpuAttestationReport),
    ],
    "nvmlDeviceGetConfComputeGpuCertificate": [_Device, ctypes.POINTER(_ConfComputeGpuCertificate)],
}


class GpuSource(Protocol):
    """Where GPU attestation reports come from (the driver, or a fake in tests)."""

    def devices(self) -> int:
        """How many GPUs this VM has."""
        ...

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        """GPU ``index``'s SPDM attestation report for requester nonce ``nonce`` (32 bytes)."""
        ...

    def certificate_chain(self, index: int) -> bytes:
        """GPU ``index``'s attestation certificate chain, leaf first (PEM or concatenated DER)."""
        ...


def _load_library() -> Any:
    try:
        return ctypes.CDLL(NVML_LIBRARY)
    except OSError as exc:
        raise UsageError(f"no NVIDIA driver ({NVML_LIBRARY}): {exc}") from None


def _sized(array: Any, size: int, what: str) -> bytes:
    """``array[:size]`` after checking ``size`` against the array (driver output is hostile)."""
    if not 0 < size <= len(array):
        raise ParseError(f"got {size} bytes, expected 1 to {len(array)}", structure=what)
    return bytes(array[:size])


class NvmlGpuSource:
    """:class:`GpuSource` over NVML (``libnvidia-ml.so.1``). ``library`` is the loaded library,
    or any object with the NVML functions as attributes (tests); absent, it is loaded here and
    its absence is a :class:`UsageError`."""

    def __init__(self, library: Any | None = None) -> None:
        self._lib = _load_library() if library is None else library
        self._functions: dict[str, Callable[..., int]] = {}
        self._initialised = False
        self._lock = threading.Lock()

    def _function(self, name: str) -> Callable[..., int]:
        cached = self._functions.get(name)
        if cached is not None:
            return cached
        try:
            fn: Any = getattr(self._lib, name)
        except AttributeError:
            raise nvml_error(name, 13) from None  # FUNCTION_NOT_FOUND: an older driver
        fn.argtypes = _PROTOTYPES[name]
        fn.restype = ctypes.c_int
        self._functions[name] = fn
        return fn  # type: ignore[no-any-return]

    def _call(self, name: str, *args: Any, where: str = "") -> None:
        code = self._function(name)(*args)
        if code != NVML_SUCCESS:
            raise nvml_error(name, int(code), where)

    def _init(self) -> None:
        with self._lock:
            if self._initialised:
                return
            self._call("nvmlInit_v2")
            state = _ConfComputeSystemState()
            self._call("nvmlSystemGetConfComputeState", ctypes.pointer(state))
            if state.ccFeature != NVML_CC_SYSTEM_FEATURE_ENABLED:
                raise UsageError(
                    f"NVML: confidential computing is off on this system's GPUs (ccFeature "
                    f"{state.ccFeature}, expected {NVML_CC_SYSTEM_FEATURE_ENABLED}): a GPU outside "
                    "CC mode has no attestation report"
                )
            self._initialised = True

    def devices(self) -> int:
        self._init()
        count = ctypes.c_uint()
        self._call("nvmlDeviceGetCount_v2", ctypes.pointer(count))
        if count.value > _MAX_DEVICE_COUNT:
            raise ParseError(
                f"got {count.value} devices, expected at most {_MAX_DEVICE_COUNT}",
                structure="nvmlDeviceGetCount_v2",
            )
        return int(count.value)

    def _handle(self, index: int) -> Any:
        self._init()
        handle = _Device()
        self._call("nvmlDeviceGetHandleByIndex_v2", index, ctypes.pointer(handle), where=f"GPU {index}")
        return handle

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        if len(nonce) != NVML_CC_GPU_CEC_NONCE_SIZE:
            raise UsageError(f"GPU nonce: got {len(nonce)} bytes, expected {NVML_CC_GPU_CEC_NONCE_SIZE}")
        handle = self._handle(index)
        report = _ConfComputeGpuAttestationReport()
        ctypes.memmove(report.nonce, nonce, len(nonce))
        function = "nvmlDeviceGetConfComputeGpuAttestationReport"
        self._call(function, handle, ctypes.pointer(report), where=f"GPU {index}")
        return _sized(
            report.attestationReport,
            report.attestationReportSize,
            f"GPU {index} nvmlConfComputeGpuAttestationReport_t.attestationReportSize",
        )

    def certificate_chain(self, index: int) -> bytes:
        handle = self._handle(index)
        certificate = _ConfComputeGpuCertificate()
        function = "nvmlDeviceGetConfComputeGpuCertificate"
        self._call(function, handle, ctypes.pointer(certificate), where=f"GPU {index}")
        return _sized(
            certificate.attestationCertChain,
            certificate.attestationCertChainSize,
            f"GPU {index} nvmlConfComputeGpuCertificate_t.attestationCertChainSize",
        )


class GpuQuoteProvider:
    """The CPU provider's evidence plus every GPU's report and certificate chain in ``aux``
    (``gpu<k>``, ``gpu<k>.certs``), each report requested with nonce ``report_data[:32]`` and
    checked to carry it before it is returned. ``count``: exactly that many GPUs (the first
    ones), or all of them when None. ``ocsp``: staple the OCSP responses about each chain
    (``gpu<k>.ocsp:<i>``, module docstring), verified at ``clock()`` first; ``None``: none."""

    def __init__(
        self,
        cpu: QuoteProvider,
        source: GpuSource,
        *,
        count: int | None = None,
        ocsp: OcspSource | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if count is not None and not 1 <= count <= MAX_GPUS:
            raise UsageError(f"GPU count: got {count}, expected 1 to {MAX_GPUS}")
        self._cpu = cpu
        self._source = source
        self._count = count
        self._ocsp = ocsp
        self._clock = clock

    def _gpu_count(self) -> int:
        available = self._source.devices()
        if available == 0:
            raise UsageError("no NVIDIA GPU on this machine")
        if self._count is None:
            if available > MAX_GPUS:
                raise UsageError(
                    f"got {available} GPUs, expected at most {MAX_GPUS} (the CAS takes at most "
                    f"{MAX_GPUS} GPU reports): give their number with --gpus"
                )
            return available
        if self._count > available:
            raise UsageError(f"--gpus {self._count}: this machine has only {available} GPU(s)")
        return self._count

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        cpu = self._cpu.get_evidence(report_data)
        if cpu.platform not in GPU_HOSTS:
            hosts = ", ".join(sorted(p.value for p in GPU_HOSTS))
            raise UsageError(f"GPU reports go with {hosts} evidence, not with {cpu.platform.value}")
        clash = sorted(k for k in cpu.aux if k.startswith("gpu"))
        if clash:
            raise UsageError(f"the CPU evidence already has aux {clash[0]!r}: cannot add GPU reports")
        nonce = report_data[:NONCE_SIZE]
        aux = dict(cpu.aux)
        stapled: dict[tuple[x509.Certificate, x509.Certificate], bytes] = {}  # shared intermediates
        for k in range(self._gpu_count()):
            report = self._source.attestation_report(k, nonce)
            # The CAS's check (DSP0274 Table 40 requester nonce = binding[:32]), made here too so
            # that a report for another nonce is never sent.
            got = NvidiaAttestationReport.from_bytes(report).nonce
            if not hmac.compare_digest(got, nonce):
                raise BindingError(
                    f"gpu{k}: the GPU's report carries SPDM nonce {got.hex()}, expected {nonce.hex()} "
                    "(the first 32 bytes of the report data)"
                )
            aux[f"gpu{k}"] = report
            aux[f"gpu{k}.certs"] = self._source.certificate_chain(k)
            if self._ocsp is not None:
                aux |= self._staple(f"gpu{k}", aux[f"gpu{k}.certs"], self._ocsp, stapled)
        return Evidence(platform=cpu.platform, raw=cpu.raw, provider=f"{cpu.provider}+nvml", aux=aux)

    def _staple(
        self,
        slot: str,
        chain_bytes: bytes,
        source: OcspSource,
        stapled: dict[tuple[x509.Certificate, x509.Certificate], bytes],
    ) -> dict[str, bytes]:
        """``{slot}.ocsp:<i>`` for every certificate of the chain the CAS checks, each response
        fetched (once per attestation for a certificate shared by several GPUs) and verified."""
        chain = load_certificate_chain(chain_bytes, f"{slot} certificate chain")  # the driver's: hostile
        out: dict[str, bytes] = {}
        for i, (cert, issuer) in enumerate(ocsp_targets(chain), start=1):
            der = stapled.get((cert, issuer))
            if der is None:
                response = source.fetch(cert, issuer)
                check = verify_ocsp_response(response, cert, issuer, at=self._clock())
                if check.next_update is None:  # accepted here only for the nonce, which the CAS cannot check
                    raise CollateralExpiredError(
                        f"{slot}: the OCSP response about {check.subject!r} has no nextUpdate: the CAS"
                        " cannot tell whether a stapled copy is current (RFC 6960 §4.2.2.1)"
                    )
                der = stapled[(cert, issuer)] = response.der
            out[f"{slot}.ocsp:{i}"] = der
        return out
