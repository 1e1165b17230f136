"""Stand-ins for the GPUs of ``confide run --gpus`` (``confide.runtime.nvidia``): a
:class:`~confide.runtime.nvidia.GpuSource` (:class:`FakeGpus`), a Python object with NVML's
functions (:class:`FakeNvml`, for :class:`~confide.runtime.nvidia.NvmlGpuSource`) and a C library
with NVML's symbols (:data:`STUB_C`, :func:`build_stub`). Reports are forged under the test
NVIDIA PKI of ``gpu_cas`` (one leaf per GPU, same ICA and firmware), so that an in-process CAS
given that PKI's root (``InProcessCas.verify_with(nvidia_root=...)``) accepts them.

Every fake has the system's CC ready state (``nvmlSystemGetConfComputeGpusReadyState`` /
``nvmlSystemSetConfComputeGpusReadyState``, one state for all GPUs, as in ``nvml.h``) and
records when it is set.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confide.cas.verifier import MAX_GPUS
from confide.runtime import nvidia
from gpu_cas import FWID, NOW, NV_REPORT, PKI
from nvidia_forge import NvidiaPki, make_leaf, resign

GPUS = [PKI] + [NvidiaPki(PKI.root, PKI.ica, make_leaf(PKI.ica, FWID, NOW)) for _ in range(MAX_GPUS)]
"""One test PKI leaf per GPU index (0..MAX_GPUS): distinct attestation keys, as distinct GPUs."""


class FakeGpus:
    """A :class:`~confide.runtime.nvidia.GpuSource` of ``count`` GPUs whose reports are forged
    under the test PKI for the nonce asked for (``nonce_for`` may change it per GPU). ``ready``
    is the system's ready state; ``events`` records the calls in order."""

    def __init__(
        self,
        count: int,
        nonce_for: Callable[[int, bytes], bytes] = lambda _k, n: n,
        *,
        ready: bool = False,
    ) -> None:
        self.count = count
        self.nonce_for = nonce_for
        self.ready = ready
        self.asked: list[tuple[int, bytes]] = []
        self.events: list[str] = []

    def devices(self) -> int:
        return self.count

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        self.asked.append((index, nonce))
        self.events.append(f"report {index}")
        return resign(NV_REPORT, GPUS[index].leaf[1], nonce=self.nonce_for(index, nonce))

    def certificate_chain(self, index: int) -> bytes:
        return GPUS[index].chain_pem()

    def ready_state(self) -> bool:
        self.events.append("get ready")
        return self.ready

    def set_ready_state(self) -> None:
        self.events.append("set ready")
        self.ready = True


class FakeNvml:
    """A stand-in for ``libnvidia-ml.so.1``: the NVML functions as attributes, called with the
    same ctypes arguments the real ones get. Reports are forged under the test PKI for the nonce
    written into the structure. ``codes[name]`` makes ``name`` return that code; ``sizes``
    overrides what the driver says it wrote; ``missing`` names absent symbols. ``ready`` is what
    ``nvmlSystemGetConfComputeGpusReadyState`` reports (any number: the driver is hostile);
    ``nvmlSystemSetConfComputeGpusReadyState`` appends its argument to ``set_values`` and, unless
    ``stuck``, makes it the state."""

    def __init__(
        self,
        count: int = 1,
        *,
        codes: dict[str, int] | None = None,
        sizes: dict[str, int] | None = None,
        cc_feature: int = 1,
        missing: tuple[str, ...] = (),
        ready: int = 0,
        stuck: bool = False,
    ) -> None:
        self.count, self.codes, self.sizes, self.cc_feature = count, codes or {}, sizes or {}, cc_feature
        self.ready, self.stuck = ready, stuck
        self.calls: list[str] = []
        self.nonces: list[bytes] = []
        self.set_values: list[int] = []
        for name in nvidia._PROTOTYPES:
            if name not in missing:
                setattr(self, name, self._entry(name, getattr(self, "_" + name)))

    def _entry(self, name: str, body: Callable[..., None]) -> Callable[..., int]:
        def call(*args: Any) -> int:
            self.calls.append(name)
            if name in self.codes:
                return self.codes[name]
            body(*args)
            return 0

        return call

    def _nvmlInit_v2(self) -> None:
        pass

    def _nvmlSystemGetConfComputeState(self, state: Any) -> None:
        state.contents.ccFeature = self.cc_feature

    def _nvmlDeviceGetCount_v2(self, count: Any) -> None:
        count.contents.value = self.sizes.get("count", self.count)

    def _nvmlDeviceGetHandleByIndex_v2(self, index: int, handle: Any) -> None:
        handle.contents.value = 0x1000 + index

    def _nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: Any, out: Any) -> None:
        report = out.contents
        nonce = bytes(report.nonce)
        self.nonces.append(nonce)
        data = resign(NV_REPORT, GPUS[handle.value - 0x1000].leaf[1], nonce=nonce)
        ctypes.memmove(report.attestationReport, data, len(data))
        report.attestationReportSize = self.sizes.get("report", len(data))

    def _nvmlDeviceGetConfComputeGpuCertificate(self, handle: Any, out: Any) -> None:
        chain = GPUS[handle.value - 0x1000].chain_pem()
        ctypes.memmove(out.contents.attestationCertChain, chain, len(chain))
        out.contents.attestationCertChainSize = self.sizes.get("certs", len(chain))

    def _nvmlSystemGetConfComputeGpusReadyState(self, is_accepting_work: Any) -> None:
        is_accepting_work.contents.value = self.ready

    def _nvmlSystemSetConfComputeGpusReadyState(self, is_accepting_work: int) -> None:
        self.set_values.append(is_accepting_work)
        if not self.stuck:
            self.ready = is_accepting_work


# A stand-in for libnvidia-ml.so.1 built from C with nvml.h's declarations (written out here,
# from the header's text): checks that the prototypes and pointers confide passes reach C as NVML
# expects them. Its report is "nonce echo": the 32 nonce bytes followed by the device index, so
# the Python side can check what C received. The ready-state globals are read and set from Python
# (ctypes in_dll): ``ready_state`` is what the getter reports, ``ready_set_calls`` and
# ``ready_set_value`` record the setter's calls, ``ready_set_code`` makes it fail.
STUB_C = r"""
#include <string.h>
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct { unsigned environment, ccFeature, devToolsMode; } nvmlConfComputeSystemState_t;
typedef struct {
    unsigned isCecAttestationReportPresent, attestationReportSize, cecAttestationReportSize;
    unsigned char nonce[0x20], attestationReport[0x2000], cecAttestationReport[0x1000];
} nvmlConfComputeGpuAttestationReport_t;
typedef struct {
    unsigned certChainSize, attestationCertChainSize;
    unsigned char certChain[0x1000], attestationCertChain[0x1400];
} nvmlConfComputeGpuCertificate_t;
static nvmlDevice_t devices[2] = {(nvmlDevice_t)0x1000, (nvmlDevice_t)0x1001};
unsigned ready_state = 0, ready_set_calls = 0, ready_set_value = 0xffffffffu;
int ready_set_code = 0;
int nvmlInit_v2(void) { return 0; }
int nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *s) { s->ccFeature = 1; return 0; }
int nvmlDeviceGetCount_v2(unsigned *count) { *count = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t *device) {
    if (index > 1) return 2;
    *device = devices[index];
    return 0;
}
int nvmlDeviceGetConfComputeGpuAttestationReport(nvmlDevice_t d, nvmlConfComputeGpuAttestationReport_t *r) {
    if (d == devices[1]) return 10;
    memcpy(r->attestationReport, r->nonce, 0x20);
    r->attestationReport[0x20] = (unsigned char)((unsigned long)d & 0xff);
    r->attestationReportSize = 0x21;
    r->cecAttestationReportSize = 0x1000;
    return 0;
}
int nvmlDeviceGetConfComputeGpuCertificate(nvmlDevice_t d, nvmlConfComputeGpuCertificate_t *c) {
    memset(c->attestationCertChain, 'C', 0x1400);
    c->attestationCertChainSize = d == devices[0] ? 0x1400 : 0x1401;
    return 0;
}
/* nvml.h: nvmlReturn_t nvmlSystemGetConfComputeGpusReadyState(unsigned int *isAcceptingWork); */
int nvmlSystemGetConfComputeGpusReadyState(unsigned *isAcceptingWork) {
    if (!isAcceptingWork) return 2;
    *isAcceptingWork = ready_state;
    return 0;
}
/* nvml.h: nvmlReturn_t nvmlSystemSetConfComputeGpusReadyState(unsigned int isAcceptingWork); */
int nvmlSystemSetConfComputeGpusReadyState(unsigned isAcceptingWork) {
    ready_set_calls++;
    ready_set_value = isAcceptingWork;
    if (ready_set_code) return ready_set_code;
    if (isAcceptingWork > 1) return 2;
    ready_state = isAcceptingWork;
    return 0;
}
"""


def build_stub(directory: Path) -> Path | None:
    """Compile :data:`STUB_C` into ``directory``; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    (directory / "stub.c").write_text(STUB_C)
    library = directory / "libnvml-stub.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(directory / "stub.c")], check=True)
    return library
