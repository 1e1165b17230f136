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
  first (PEM); ``certChain`` (the device identity chain) is not used;
- ``nvmlSystemGetConfComputeGpusReadyState(unsigned int *isAcceptingWork)`` and
  ``nvmlSystemSetConfComputeGpusReadyState(unsigned int isAcceptingWork)``: the *system's* GPU
  ready state, ``NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE`` (1) or ``_FALSE`` (0). In CC mode the
  GPUs take no client (CUDA) work until it is set; NVIDIA's verifier sets it after a successful
  attestation, and so does ``confide run`` (:meth:`GpuQuoteProvider.mark_ready`): after the CAS
  accepted the composite attestation, right before the program starts, never before. It is one
  state for all of the system's GPUs, so it is set only when every one of them was attested.

GPU selection: ``count`` (``--gpus N``) takes the first N GPUs, ``indices`` (``--gpu-index
0,2``) the GPUs with those NVML indices, in that order; slot ``gpu<k>`` carries the k-th.

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
import logging
import threading
from collections.abc import Callable, Sequence
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

log = logging.getLogger(__name__)

__all__ = [
    "NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE",
    "NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE",
    "NVML_LIBRARY",
    "NVML_USAGE_ERRORS",
    "GpuQuoteProvider",
    "GpuSource",
    "NvmlGpuSource",
    "nvml_error",
    "parse_gpu_indices",
]

NVML_LIBRARY = "libnvidia-ml.so.1"

# nvml.h: GPU Certificate Details / GPU Attestation Report.
NVML_GPU_CERT_CHAIN_SIZE = 0x1000
NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE = 0x1400
NVML_CC_GPU_CEC_NONCE_SIZE = 0x20
NVML_CC_GPU_ATTESTATION_REPORT_SIZE = 0x2000
NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE = 0x1000
NVML_CC_SYSTEM_FEATURE_ENABLED = 1
# nvml.h: Confidential Compute GPUs/System Ready State values.
NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE = 0
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = 1
NVML_SUCCESS = 0
_SET_READY_STATE = "nvmlSystemSetConfComputeGpusReadyState"
_GET_READY_STATE = "nvmlSystemGetConfComputeGpusReadyState"
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


def _ready_state_error(exc: UsageError | StorageError) -> UsageError | StorageError:
    """``exc`` (from reading or setting the GPUs' ready state) with what the user can do."""
    return type(exc)(
        f"{exc.message}; the GPUs' ready state was not set (--gpu-ready-state skip leaves it to you)"
    )


def _names(indices: Sequence[int]) -> str:
    return ", ".join(map(str, indices))


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
    _GET_READY_STATE: [ctypes.POINTER(ctypes.c_uint)],  # unsigned int *isAcceptingWork
    _SET_READY_STATE: [ctypes.c_uint],  # unsigned int isAcceptingWork, by value
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

    def ready_state(self) -> bool:
        """Whether the system's GPUs accept client requests (their CC ready state is set)."""
        ...

    def set_ready_state(self) -> None:
        """Set the system's GPUs' CC ready state: from now on they accept client requests."""
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

    def ready_state(self) -> bool:
        self._init()
        # Both functions came with the same drivers: looking the setter up here makes a driver
        # without it fail before the attestation rather than after the CAS accepted it.
        self._function(_SET_READY_STATE)
        state = ctypes.c_uint(0xFFFFFFFF)
        self._call(_GET_READY_STATE, ctypes.pointer(state))
        if state.value not in (
            NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE,
            NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
        ):
            raise ParseError(
                f"got {state.value}, expected {NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE} or "
                f"{NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE}",
                structure=f"{_GET_READY_STATE} isAcceptingWork",
            )
        return state.value == NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE

    def set_ready_state(self) -> None:
        self._init()
        code = int(self._function(_SET_READY_STATE)(NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE))
        if code == 4:  # NO_PERMISSION: nvtrust's verifier, too, must run as root to set it
            raise UsageError(f"NVML {_SET_READY_STATE}: NVML_ERROR_NO_PERMISSION (4): setting it needs root")
        if code != NVML_SUCCESS:
            raise nvml_error(_SET_READY_STATE, code)


def _check_indices(indices: Sequence[int], what: str) -> tuple[int, ...]:
    """``indices`` as a tuple after checking that there are 1 to MAX_GPUS of them, each a GPU
    index NVML could report, none twice."""
    out = tuple(indices)
    if not 1 <= len(out) <= MAX_GPUS:
        raise UsageError(f"{what}: got {len(out)} GPUs, expected 1 to {MAX_GPUS}")
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < _MAX_DEVICE_COUNT:
            raise UsageError(f"{what}: got {i!r}, expected GPU indices 0 to {_MAX_DEVICE_COUNT - 1}")
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise UsageError(f"{what}: got GPU {twice[0]} twice, expected each GPU once")
    return out


def parse_gpu_indices(text: str) -> tuple[int, ...]:
    """``confide run --gpu-index``: NVML GPU indices separated by commas (``0,2``), in the order
    their reports are sent; 1 to MAX_GPUS of them, none twice. That they exist is checked when
    NVML is asked (:meth:`GpuQuoteProvider.get_evidence`)."""
    items = text.split(",")
    if len(items) > MAX_GPUS:
        raise UsageError(f"--gpu-index: got {len(items)} GPUs, expected 1 to {MAX_GPUS}")
    for item in items:
        if not (item.isascii() and item.isdigit() and len(item) <= 4):
            raise UsageError(
                f"--gpu-index: got {item[:20]!r} in {text[:40]!r}, expected GPU indices separated by "
                "commas (e.g. 0,2)"
            )
    return _check_indices([int(item) for item in items], "--gpu-index")


class GpuQuoteProvider:
    """The CPU provider's evidence plus every GPU's report and certificate chain in ``aux``
    (``gpu<k>``, ``gpu<k>.certs``), each report requested with nonce ``report_data[:32]`` and
    checked to carry it before it is returned. Which GPUs: ``count`` (exactly that many, the
    first ones), ``indices`` (exactly those NVML indices, ``gpu<k>`` carrying the k-th), or all of
    them when neither is given. ``ocsp``: staple the OCSP responses about each chain
    (``gpu<k>.ocsp:<i>``, module docstring), verified at ``clock()`` first; ``None``: none.

    ``ready``: the caller will set the GPUs' ready state with :meth:`mark_ready` once the CAS
    accepted the evidence. The state is one for all of the system's GPUs, so
    :meth:`get_evidence` then refuses to attest fewer than all of them, and it reads the state
    before anything is sent (a driver without the ready-state functions fails there): a state
    already set is reported through ``warn`` (the GPUs took work before any attestation)."""

    def __init__(
        self,
        cpu: QuoteProvider,
        source: GpuSource,
        *,
        count: int | None = None,
        indices: Sequence[int] | None = None,
        ocsp: OcspSource | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ready: bool = False,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        if count is not None and indices is not None:
            raise UsageError("give a GPU count or GPU indices, not both")
        if count is not None and not 1 <= count <= MAX_GPUS:
            raise UsageError(f"GPU count: got {count}, expected 1 to {MAX_GPUS}")
        self._cpu = cpu
        self._source = source
        self._count = count
        self._indices = _check_indices(indices, "GPU indices") if indices is not None else None
        self._ocsp = ocsp
        self._clock = clock
        self._ready = ready
        self._warn = warn
        self._attested: tuple[int, ...] | None = None  # NVML indices, once their reports were made
        self._available = 0  # the system's GPUs then

    def _gpu_indices(self) -> tuple[list[int], int]:
        """The NVML indices to attest, and how many GPUs the system has."""
        available = self._source.devices()
        if available == 0:
            raise UsageError("no NVIDIA GPU on this machine")
        if self._indices is not None:
            absent = [i for i in self._indices if i >= available]
            if absent:
                raise UsageError(
                    f"--gpu-index: got GPU {absent[0]}, expected 0 to {available - 1} (this machine has "
                    f"{available} GPU(s))"
                )
            return list(self._indices), available
        if self._count is None:
            if available > MAX_GPUS:
                raise UsageError(
                    f"got {available} GPUs, expected at most {MAX_GPUS} (the CAS takes at most "
                    f"{MAX_GPUS} GPU reports): give their number with --gpus"
                )
            return list(range(available)), available
        if self._count > available:
            raise UsageError(f"--gpus {self._count}: this machine has only {available} GPU(s)")
        return list(range(self._count)), available

    def _check_ready_state(self, indices: list[int], available: int) -> None:
        """Before anything is sent: every GPU is attested, and the ready state can be read."""
        if sorted(indices) != list(range(available)):
            raise UsageError(
                f"the GPUs' ready state is one for the whole system ({_SET_READY_STATE}): setting it "
                f"would let all {available} GPUs take work, but only GPU(s) {_names(indices)} are "
                "attested; attest every GPU (--gpus all) or give --gpu-ready-state skip"
            )
        try:
            already = self._source.ready_state()
        except (UsageError, StorageError) as exc:
            raise _ready_state_error(exc) from None
        if already:
            self._warn(
                "the GPUs' ready state is set already, before this attestation: they accept client "
                "requests (CUDA work) that nothing attested; confide run leaves it set"
            )

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        cpu = self._cpu.get_evidence(report_data)
        if cpu.platform not in GPU_HOSTS:
            hosts = ", ".join(sorted(p.value for p in GPU_HOSTS))
            raise UsageError(f"GPU reports go with {hosts} evidence, not with {cpu.platform.value}")
        clash = sorted(k for k in cpu.aux if k.startswith("gpu"))
        if clash:
            raise UsageError(f"the CPU evidence already has aux {clash[0]!r}: cannot add GPU reports")
        indices, available = self._gpu_indices()
        if self._ready:
            self._check_ready_state(indices, available)
        nonce = report_data[:NONCE_SIZE]
        aux = dict(cpu.aux)
        stapled: dict[tuple[x509.Certificate, x509.Certificate], bytes] = {}  # shared intermediates
        for k, index in enumerate(indices):
            slot = f"gpu{k}" if k == index else f"gpu{k} (GPU {index})"
            report = self._source.attestation_report(index, nonce)
            # The CAS's check (DSP0274 Table 40 requester nonce = binding[:32]), made here too so
            # that a report for another nonce is never sent.
            got = NvidiaAttestationReport.from_bytes(report).nonce
            if not hmac.compare_digest(got, nonce):
                raise BindingError(
                    f"{slot}: the GPU's report carries SPDM nonce {got.hex()}, expected {nonce.hex()} "
                    "(the first 32 bytes of the report data)"
                )
            aux[f"gpu{k}"] = report
            aux[f"gpu{k}.certs"] = self._source.certificate_chain(index)
            if self._ocsp is not None:
                aux |= self._staple(f"gpu{k}", aux[f"gpu{k}.certs"], self._ocsp, stapled)
        self._attested, self._available = tuple(indices), available
        return Evidence(platform=cpu.platform, raw=cpu.raw, provider=f"{cpu.provider}+nvml", aux=aux)

    @property
    def attested(self) -> tuple[int, ...]:
        """The NVML indices of the GPUs whose reports the last evidence carries (empty before)."""
        return self._attested or ()

    def mark_ready(self) -> bool:
        """Set the GPUs' ready state (NVIDIA's verifier does so after a successful attestation):
        call it once the CAS accepted the evidence :meth:`get_evidence` made (its release
        arrived and decrypted), right before the program starts, and never otherwise. Returns
        True when the state was set already (it is left so), False when this call set it (and
        read it back). Raises when this provider was made without ``ready``, has made no evidence,
        the system's GPU count changed since, or NVML fails (the error says how to skip it)."""
        if not self._ready:
            raise UsageError("this GPU provider was made without ready=True: it does not set the ready state")
        if self._attested is None:
            raise UsageError("the GPUs' ready state is set only after they were attested")
        try:
            available = self._source.devices()
            if available != self._available:
                raise StorageError(
                    f"the system has {available} GPU(s) now, {self._available} when they were "
                    "attested: not every GPU that would take work was attested"
                )
            if self._source.ready_state():
                return True
            self._source.set_ready_state()
            if not self._source.ready_state():
                raise StorageError(
                    f"NVML {_SET_READY_STATE} returned success, but the state is still not set"
                )
        except (UsageError, StorageError) as exc:
            raise _ready_state_error(exc) from None
        return False

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
