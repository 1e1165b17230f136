"""The CAS's evidence verifier: dispatches to the platform verifiers (no I/O of its own;
collateral sources are configured when the CAS starts: DCAP collateral, :mod:`confide.cas.pcs`
for a URL, and AMD KDS for SEV-SNP evidence sent without its VCEK, :mod:`confide.cas.kds`).

What each platform's ``evidence`` and ``aux`` blobs are (all hostile input):

- ``sim``: a simulated report; ``sgx``/``tdx``: a DCAP quote, ``aux["collateral"]`` optionally a
  dcap-qvl JSON collateral bundle (else the CAS's DCAP source: from a URL, fetched before
  phase 1 and kept in memory, :mod:`confide.cas.pcs`; a local file or directory, read before
  phase 1 at every attestation; under ``--min-tcb-eval-number auto`` a bundle, which has no
  TCB evaluation data numbers, gets the CAS's source's list for the TEE type, read before
  phase 1 and then kept in memory until its nextUpdate: :meth:`PlatformVerifier._with_list`);
  ``sev-snp``: the report,
  ``aux["auxblob"]`` (configfs-tsm's certificate table) or ``aux["vcek"]``; without a VCEK/VLEK
  in either, the CAS fetches the VCEK from AMD KDS when it has a KDS source (``cas serve --kds
  URL``), else refuses.
- ``nvidia-gpu``: the SPDM attestation report (GET_MEASUREMENTS request ‖ MEASUREMENTS
  response ‖ signature); ``aux["certs"]`` the GPU's certificate chain, leaf first, as a PEM
  bundle or concatenated DER; ``aux["rim:<name>"]`` optional RIMs (raw SWID XML), verified under
  the pinned NVIDIA RIM root before their golden values are compared; ``aux["ocsp:<i>"]``
  optional stapled OCSP responses (DER, RFC 6960) about certificate ``i`` of the chain (0 the
  leaf: ``i`` from 1 to the root's position minus one, the certificates whose revocation is
  checked), at most :data:`~confide.verify.ocsp.MAX_STAPLED`, each at most
  :data:`~confide.verify.ocsp.MAX_RESPONSE_SIZE` bytes ("Revocation" below). Other keys are
  refused.
- ``aws-nitro``: the attestation document (COSE_Sign1, binary); its chain is inside it.
- ``az-snp-vtpm`` / ``az-tdx-vtpm``: an Azure confidential VM's evidence JSON (``docs/azure-vtpm.md``:
  HCL report, vTPM quote and PCRs, and the VCEK or the TD quote); ``az-tdx-vtpm`` takes
  ``aux["collateral"]`` like ``tdx``, else the CAS's DCAP collateral source. No other aux blobs.
- ``gce-tpm``: a Google Compute Engine vTPM attestation (go-tpm-tools ``attest.Attestation``,
  binary protobuf, ``docs/gce-tpm.md``): the AK certificate (to the pinned Google roots), its
  intermediates, the quotes and the event log are all inside it. A Confidential VM's SEV-SNP
  report (field 8) or TDX quote (field 9) is verified as ``sev-snp`` / ``tdx`` evidence is: the
  VCEK/VLEK of its certificate chain, else AMD KDS's (``--kds``), under the same AMD roots; the
  TDX quote with ``aux["collateral"]`` (only then allowed) or the CAS's DCAP source, prefetched
  alike. No other aux blobs. With ``cas serve --gce-crl FILE|fetch`` (``gce_crl``) the AK
  certificate and its intermediates are checked against Google's CRLs in that file, or fetched
  from their distribution points once the chain verified (kept until their nextUpdate), read or
  fetched before phase 1 (:mod:`confide.cas.gce_crl`; fail closed: a certificate without a
  current CRL of its issuer is refused).

Composite attestation (a confidential VM with GPUs, :func:`split_gpu_aux`): with ``tdx``,
``sev-snp`` or ``sim`` evidence, ``aux`` may also carry up to :data:`MAX_GPUS` GPU reports,
``gpu<k>`` for k = 0, 1, ... without gaps, each with its own ``gpu<k>.certs`` and optional
``gpu<k>.rim:<name>`` and ``gpu<k>.ocsp:<i>`` blobs (the ``nvidia-gpu`` blobs above, per GPU).
Every other key that starts with ``gpu`` is refused.

Revocation (``cas serve --nvidia-ocsp URL|DIR``, the ``nvidia_ocsp`` cache): every NVIDIA report,
GPU-only or in a composite request, has its device chain checked by OCSP (RFC 6960; the links
between the leaf and the root, as ``evidence verify --ocsp`` checks them) and, when RIMs were
sent, each RIM's signing chain. The chains are verified to their pinned roots before any
responder is asked about them (a request cannot make the CAS ask about certificates of its own
making). A revoked or unknown certificate is a ``RevocationError``; an unreachable responder
(``NetworkError``), a missing stored response (``CollateralMissingError``) or a response that does
not verify (wrong signer, nonce or CertID, out of its validity window, malformed: their own
classes, a malformed response as ``CollateralError``) refuse too, their messages starting with
"revocation check". The fetches run before phase 1, off the event loop
(:meth:`PlatformVerifier.collateral_job`); :meth:`PlatformVerifier.verify` takes the responses
from what that prefetch handed it (:class:`Prefetched`; the prefetch reads responses kept on
disk before it asks the responder), then from memory (:mod:`confide.cas.revocation`). Without
it nothing is fetched and the claims say ``revocation_checked: false``.

Stapled responses (``ocsp:<i>``, fetched by the runtime: ``confide run --gpu-ocsp``) stand for
the device chain's certificates they are about. Each is verified as a fetched one is
(:func:`~confide.verify.ocsp.verify_ocsp_response`: its CertID names exactly that certificate
and issuer, it is signed by the issuer or a delegated responder the issuer authorised, status
``good``, current at ``at``) and, as its nonce is not the CAS's, its ``thisUpdate`` must be no
older than ``nvidia_ocsp_max_age`` (default :data:`~confide.verify.ocsp.STAPLED_MAX_AGE`).
With a source (``--nvidia-ocsp URL|DIR``), a certificate without a stapled response, or whose
stapled response is stale (past its ``nextUpdate`` or too old), is asked about as before, and
a usable stapled one is never asked about (nothing is prefetched for it); every other fault of a
stapled response (revoked, another certificate's, an unauthorised signer, a bad signature,
malformed: a ``ParseError``) refuses. Stapled only (``--nvidia-ocsp stapled``,
``nvidia_ocsp_stapled_only``): no source at all; every certificate of the device chain checked
needs a usable stapled response (else ``CollateralMissingError`` or the response's refusal), and
RIM signing chains are not checked (``rim_revocation_checked: false``). Without revocation checks
the stapled responses are checked for shape (keys, count, sizes) only and not used. The details
say where the device chain's status came from (``ocsp_source``: ``stapled``, ``responder``,
``dir``, or ``stapled+responder`` / ``stapled+dir`` when both served; ``None``: not checked).

RIMs (``cas serve --nvidia-rim URL|DIR``, the ``nvidia_rim`` source): every NVIDIA report, GPU-only
or in a composite request, gets the driver and VBIOS RIMs the runtime did not send (a sent RIM
stands for the one of its version; RIM IDs from the report's opaque data,
:func:`~confide.collateral.nvidia_rim.rim_targets`) from the source, verified
and cached by :class:`~confide.cas.rims.RimCache`, and is compared with them by
:func:`verify_nvidia_report` exactly as with sent RIMs (which verifies them again, and with
``nvidia_ocsp`` checks their signing chains). The report must parse and its chain verify to the
pinned root before the source is asked. A RIM that cannot be fetched (``CollateralMissingError``)
or verified (its own class) refuses: the CAS fails closed. The details say which were used
(``rims_source``: ``sent``, ``service``, ``dir``, ``sent+service``, ``sent+dir``; ``None``: none).

Prefetch (all four fetching sources: DCAP collateral from a URL, AMD KDS VCEKs, OCSP, NVIDIA RIMs; and the
local DCAP source, ``--collateral FILE|DIR``, whose read is disk I/O): the job
of :meth:`PlatformVerifier.collateral_job` runs in a worker thread before phase 1 and returns a
:class:`Prefetched`, this attestation's own outcomes (what was in memory when the job was made,
what it fetched, or the error it ran into), which phase 1 gets as ``verify(..., prefetched=)``.
Phase 1 takes from it first, so it does not depend on the shared caches still holding the
entries (another attestation's fetch may evict them meanwhile, or they may fall due); with a
``prefetched`` it never asks a source itself: what is neither in it nor in memory is refused
(:class:`~confide.errors.CollateralMissingError`, "attest again"). Without one (in-process
callers that ran no prefetch) it fetches what is missing, blocking.

Roots are the embedded, pinned ones; the constructor's overrides exist for test PKIs and are
never taken from a request.
"""

from __future__ import annotations

import copy
import dataclasses
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509

from confide.cas.fetch_stats import FetchStats
from confide.cas.gce_crl import GceCrlFetcher, GceCrlFile
from confide.cas.kds import FetchedVek, KdsVcekCache, vek_key, vek_request
from confide.cas.pcs import DcapCollateralCache, DcapKey
from confide.cas.revocation import OcspCache, ocsp_key
from confide.cas.rims import RimCache
from confide.cas.tcb_floor import TcbEvaluationFloor
from confide.collateral import public_url
from confide.collateral.amd_kds import AmdCollateralRequest, AmdCollateralSource
from confide.collateral.dcap import (
    DcapCollateralSource,
    PckCertificateSource,
    PcsHttpSource,
    TcbEvaluationNumbersSource,
)
from confide.collateral.nvidia_ocsp import DirOcspSource
from confide.collateral.nvidia_rim import DirRimSource, RimSource, rim_targets
from confide.errors import (
    BindingError,
    CollateralError,
    CollateralMissingError,
    ConfideError,
    MeasurementError,
    ParseError,
    RevocationError,
    UsageError,
)
from confide.evidence.azure_vtpm import HclReportType, parse_evidence
from confide.evidence.dcap import PckCertId, Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate, TcbEvaluationNumbersText
from confide.evidence.gce_tee import GceSnpAttestation, GceTdxAttestation
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.evidence.nvidia import NONCE_SIZE as SPDM_NONCE_SIZE
from confide.evidence.nvidia import NvidiaAttestationReport
from confide.evidence.nvidia_rim import ReferenceManifest
from confide.evidence.sev_snp import AttestationReport, SigningKey
from confide.evidence.snp_certs import VCEK_GUID, VLEK_GUID, parse_cert_table
from confide.platforms import AutoTcbEvaluation, TcbEvaluationMinimum, require_minimum
from confide.platforms.sev_snp import embedded_roots
from confide.policy.attestation import GPU_HOSTS, MAX_GPUS
from confide.verify._pinned_chain import subject_cn, verify_pinned_chain
from confide.verify.azure_vtpm import verify_azure_snp, verify_azure_tdx
from confide.verify.dcap import DcapVerifier, missing_pck_error
from confide.verify.gce_tpm import GceTeeCollateral, verified_ak_chain, verify_gce_attestation
from confide.verify.nitro import verify_nitro_document
from confide.verify.nvidia import RimMismatchError, nvidia_device_root, ocsp_targets, verify_nvidia_report
from confide.verify.nvidia_rim import nvidia_rim_root, rim_ocsp_targets
from confide.verify.ocsp import (
    MAX_RESPONSE_SIZE,
    MAX_STAPLED,
    STAPLED_MAX_AGE,
    OcspResponse,
    stapled_is_stale,
)
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdRootStore, SnpVerifier
from confide.verify.sim import SimPlatformPublicKey, verify_sim
from confide.verify.x509util import load_certificate_chain

__all__ = [
    "MAX_GPUS",
    "MAX_RIMS",
    "CollateralJob",
    "GpuEvidence",
    "PlatformVerifier",
    "Prefetched",
    "check_binding",
    "split_gpu_aux",
]

NVIDIA_CERTS = "certs"
NVIDIA_RIM_PREFIX = "rim:"
NVIDIA_OCSP_PREFIX = "ocsp:"
_OCSP_KEY = re.compile(r"ocsp:([1-9][0-9]?)")
MAX_RIMS = 16
GPU_PREFIX = "gpu"
_GPU_KEY = re.compile(r"gpu(0|[1-9][0-9]{0,2})(?:\.(certs|rim:.*|ocsp:.*))?", re.DOTALL)


_VekKey = tuple[str, str, str, int]
_OcspKey = tuple[bytes, int]
_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(items: Mapping[_K, _V] | None = None) -> Mapping[_K, _V]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True)
class Prefetched:
    """The collateral fetched (or found in memory) for one attestation before its phase 1, or
    the error its fetch ran into, per key (module docstring, "Prefetch"): VCEKs by
    :func:`~confide.cas.kds.vek_key`, DCAP collateral by :class:`DcapKey`, OCSP responses by
    :func:`~confide.cas.revocation.ocsp_key`, NVIDIA RIMs by RIM ID, the PCK certificates of
    DCAP quotes that only name theirs (certification data types 1-4) by
    :class:`~confide.evidence.dcap.PckCertId`. Immutable; an error is raised as a copy."""

    veks: Mapping[_VekKey, FetchedVek | ConfideError] = field(default_factory=_frozen)
    dcap: Mapping[DcapKey, DcapCollateral | ConfideError] = field(default_factory=_frozen)
    ocsp: Mapping[_OcspKey, OcspResponse | ConfideError] = field(default_factory=_frozen)
    rims: Mapping[str, ReferenceManifest | ConfideError] = field(default_factory=_frozen)
    pck: Mapping[PckCertId, PckCertificate | ConfideError] = field(default_factory=_frozen)
    tcb_eval: Mapping[TeeType, TcbEvaluationNumbersResponse | ConfideError] = field(default_factory=_frozen)
    """Intel's TCB evaluation data numbers (response, issuer chain) by TEE type, for a request's
    own collateral bundle under ``--min-tcb-eval-number auto`` (:meth:`PlatformVerifier._with_list`)."""
    gce_crls: tuple[x509.CertificateRevocationList, ...] | ConfideError | None = None
    """Google's CRLs as ``cas serve --gce-crl`` read them for this attestation (``None``: not read)."""

    def merged(self, other: Prefetched) -> Prefetched:
        """Both; ``other``'s outcome where both have one (it is the later)."""
        return Prefetched(
            _frozen({**self.veks, **other.veks}),
            _frozen({**self.dcap, **other.dcap}),
            _frozen({**self.ocsp, **other.ocsp}),
            _frozen({**self.rims, **other.rims}),
            _frozen({**self.pck, **other.pck}),
            _frozen({**self.tcb_eval, **other.tcb_eval}),
            gce_crls=other.gce_crls if other.gce_crls is not None else self.gce_crls,
        )


TcbEvaluationNumbersResponse = tuple[bytes, tuple[bytes, ...]]
"""Intel PCS's TCB evaluation data numbers response and its issuer chain (DER, leaf first)."""


@dataclass(frozen=True)
class CollateralJob:
    """What :meth:`PlatformVerifier.collateral_job` made for one request: ``found``, what phase
    1 will use that was in memory already (taken without I/O), and ``fetch``, the blocking job
    that fetches the rest (run it off the event loop; ``None``: nothing to fetch)."""

    found: Prefetched
    fetch: Callable[[], Prefetched] | None = None

    def run(self) -> Prefetched:
        """Blocking when :attr:`fetch` is set: everything phase 1 is to be handed."""
        return self.found if self.fetch is None else self.found.merged(self.fetch())


def _outcome(value: _V | ConfideError) -> _V:
    """A prefetched value, or its error raised (a copy: a refusal's message may be amended)."""
    if isinstance(value, ConfideError):
        raise copy.copy(value)
    return value


def _not_read(what: str) -> CollateralMissingError:
    return CollateralMissingError(
        f"{what} was not read before this attestation's verification, and the CAS reads no"
        " collateral during verification: attest again"
    )


def _not_prefetched(what: str) -> CollateralMissingError:
    return CollateralMissingError(
        f"{what} was not fetched before this attestation's verification (it left memory"
        " meanwhile), and the CAS does not fetch it during verification: attest again"
    )


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's blobs from a composite request: ``slot`` (``gpu<k>``), the SPDM report and its
    ``nvidia-gpu`` aux (``certs``, ``rim:<name>``)."""

    slot: str
    report: bytes
    aux: dict[str, bytes] = field(default_factory=dict)


def split_gpu_aux(platform: Platform, aux: dict[str, bytes]) -> tuple[dict[str, bytes], list[GpuEvidence]]:
    """Split a request's ``aux`` into the CPU evidence's blobs and the GPUs' (module docstring).
    Hostile input: a malformed or unknown ``gpu`` key, a gap in the numbering, blobs of a GPU
    without its report, more than :data:`MAX_GPUS` GPUs or GPUs with evidence of another
    platform than :data:`~confide.policy.attestation.GPU_HOSTS` raise :class:`ParseError`."""
    cpu: dict[str, bytes] = {}
    gpus: dict[int, dict[str, bytes]] = {}
    for key, blob in aux.items():
        if not key.startswith(GPU_PREFIX):
            cpu[key] = blob
            continue
        match = _GPU_KEY.fullmatch(key)
        if match is None:
            raise ParseError(
                f"got aux {key[:40]!r}, expected gpu<k>, gpu<k>.certs, gpu<k>.rim:<name> or"
                " gpu<k>.ocsp:<i> (k = 0, 1, ...)",
                structure="attestation request",
            )
        index = int(match.group(1))
        if index >= MAX_GPUS:
            raise ParseError(
                f"got aux {key[:40]!r}, expected at most {MAX_GPUS} GPUs (gpu0..gpu{MAX_GPUS - 1})",
                structure="attestation request",
            )
        gpus.setdefault(index, {})[match.group(2) or ""] = blob
    if not gpus:
        return cpu, []
    if platform not in GPU_HOSTS:
        hosts = ", ".join(sorted(p.value for p in GPU_HOSTS))
        raise ParseError(
            f"got GPU reports (aux gpu<k>) with {platform} evidence,"
            f" expected them only with {hosts} evidence",
            structure="attestation request",
        )
    slots: list[GpuEvidence] = []
    for index in range(max(gpus) + 1):
        blobs = dict(gpus.get(index, {}))
        report = blobs.pop("", None)
        if report is None:
            raise ParseError(
                f"got no aux gpu{index} (the GPU's report), expected gpu0..gpu{max(gpus)} without gaps",
                structure="attestation request",
            )
        slots.append(GpuEvidence(f"gpu{index}", report, blobs))
    return cpu, slots


class PlatformVerifier:
    """Verifies evidence for the CAS. ``sim_key`` enables the simulator (development only);
    ``dcap_source`` supplies Intel collateral (``aux["collateral"]`` may carry a dcap-qvl JSON
    bundle instead); ``dcap_remote``: it goes to the network (``None``: when it is a
    :class:`~confide.collateral.dcap.PcsHttpSource`, ``--collateral URL``), so its collateral is
    fetched before phase 1 and kept in memory (``dcap_cache``, :mod:`confide.cas.pcs`). ``kds``
    supplies AMD VCEKs for SEV-SNP evidence sent without one (AMD KDS:
    ``cas serve --kds URL``), cached in memory and in ``kds_cache`` (a directory; ``None``: memory
    only) by a :class:`~confide.cas.kds.KdsVcekCache` that verifies them under the same roots as
    the evidence; ``kds_where`` names the source in refusals. ``nvidia_ocsp``: check NVIDIA
    chains for revocation with the responses of this cache (module docstring; ``None``: not
    checked, unless ``nvidia_ocsp_stapled_only``: checked with stapled responses only, module
    docstring, "Stapled responses"); ``nvidia_ocsp_max_age``: how old a stapled response's
    ``thisUpdate`` may be. ``nvidia_rim``: where the RIMs NVIDIA reports were not sent with come from
    (module docstring, "RIMs"; ``nvidia_rim_where`` names it in refusals), verified and cached
    by a :class:`~confide.cas.rims.RimCache`, in memory and in ``nvidia_rim_cache`` (a
    directory; ``None``: memory only); without a source such reports are not compared with
    RIMs. ``nvidia_root``, ``nvidia_rim_root``, ``nitro_root``, ``amd_roots`` and ``gce_roots``
    (the Google vTPM AK roots) replace the embedded pinned roots: for test PKIs only.
    ``gce_crl``: Google's CRLs (``cas serve --gce-crl FILE|fetch``, :mod:`confide.cas.gce_crl`),
    read or fetched before phase 1 of every ``gce-tpm`` attestation; with it the AK certificate
    and its intermediates are checked for revocation (:mod:`confide.verify.gce_crl`, fail
    closed), without it they are not."""

    def __init__(
        self,
        *,
        sim_key: SimPlatformPublicKey | None = None,
        dcap_source: DcapCollateralSource | None = None,
        nvidia_root: x509.Certificate | None = None,
        nvidia_rim_root: x509.Certificate | None = None,
        nitro_root: x509.Certificate | None = None,
        amd_roots: AmdRootStore | None = None,
        kds: AmdCollateralSource | None = None,
        kds_cache: Path | None = None,
        kds_where: str = "AMD KDS",
        nvidia_ocsp: OcspCache | None = None,
        dcap_remote: bool | None = None,
        nvidia_rim: RimSource | None = None,
        nvidia_rim_where: str = "NVIDIA RIM service",
        nvidia_rim_cache: Path | None = None,
        nvidia_ocsp_stapled_only: bool = False,
        nvidia_ocsp_max_age: timedelta = STAPLED_MAX_AGE,
        min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
        tcb_floor: TcbEvaluationFloor | None = None,
        gce_roots: tuple[x509.Certificate, ...] | None = None,
        gce_crl: GceCrlFile | GceCrlFetcher | None = None,
    ) -> None:
        if nvidia_ocsp_stapled_only and nvidia_ocsp is not None:
            raise ValueError("nvidia_ocsp_stapled_only takes no nvidia_ocsp source")
        if nvidia_ocsp_max_age <= timedelta(0):
            raise ValueError("nvidia_ocsp_max_age must be positive")
        self.sim_key = sim_key
        self.dcap_source = dcap_source
        self.min_tcb_evaluation_data_number = min_tcb_evaluation_data_number
        self.tcb_floor = tcb_floor
        if dcap_remote is None:
            dcap_remote = isinstance(dcap_source, PcsHttpSource)
        self.dcap_cache: DcapCollateralCache | None = None
        if dcap_source is not None and dcap_remote:
            where = (
                f"Intel PCS/PCCS {public_url(dcap_source.base_url)}"
                if isinstance(dcap_source, PcsHttpSource)
                else "Intel PCS"
            )
            self.dcap_cache = DcapCollateralCache(dcap_source, where=where, floor=tcb_floor)
        self.nvidia_ocsp = nvidia_ocsp
        self.nvidia_ocsp_stapled_only = nvidia_ocsp_stapled_only
        self.nvidia_ocsp_max_age = nvidia_ocsp_max_age
        # ocsp_source of what the cache serves (module docstring, "Stapled responses")
        self._ocsp_kind = (
            "dir"
            if nvidia_ocsp is not None and isinstance(nvidia_ocsp.source, DirOcspSource)
            else "responder"
        )
        self.nvidia_root = nvidia_root
        self.nvidia_rim_root = nvidia_rim_root
        self.nvidia_rims = (
            RimCache(
                nvidia_rim,
                where=nvidia_rim_where,
                kind="dir" if isinstance(nvidia_rim, DirRimSource) else "service",
                root=nvidia_rim_root,
                directory=nvidia_rim_cache,
            )
            if nvidia_rim is not None
            else None
        )
        self.nitro_root = nitro_root
        self.gce_roots = gce_roots
        self.gce_crl = gce_crl
        self.dcap = DcapVerifier()
        # --min-tcb-eval-number auto, a request's own bundle: the source's TCB evaluation data
        # numbers per TEE type, kept once their signature leads to the pinned root, until their
        # nextUpdate (_kept_list); the verification judges them (dates, id, CRL) at every use
        self._lists: dict[TeeType, tuple[TcbEvaluationNumbersResponse, datetime]] = {}
        self.snp = SnpVerifier(amd_roots if amd_roots is not None else embedded_roots())
        self.kds = KdsVcekCache(kds, kds_cache, self.snp.roots, where=kds_where) if kds is not None else None

    def collateral_job(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], *, at: datetime
    ) -> CollateralJob | None:
        """The collateral :meth:`verify` would take from a source for this evidence (module
        docstring, "Prefetch"), or ``None`` when it takes none: SEV-SNP evidence without a
        VCEK/VLEK (``kds``); NVIDIA reports (``nvidia-gpu`` evidence, or the ``gpu<k>`` reports
        of a composite request, whose whole ``aux`` this takes) with ``nvidia_ocsp``; SGX, TDX
        and Azure TDX vTPM quotes sent without collateral (``dcap_cache``). What is in memory
        now is taken at once (no I/O: ``found``); the rest is fetched by the job's blocking
        ``fetch`` (``None`` when all was in memory). Pass :meth:`CollateralJob.run`'s result to
        :meth:`verify` as ``prefetched``. Never raises: :meth:`verify` refuses what is
        malformed."""
        jobs = [
            job
            for job in (
                self._dcap_job(platform, evidence, aux, at),
                self._kds_job(platform, evidence, aux, at),
                self._rim_job(platform, evidence, aux, at),
                self._ocsp_job(platform, evidence, aux, at),
                self._gce_crl_job(platform, evidence, at),
            )
            if job is not None
        ]
        if not jobs:
            return None
        if len(jobs) == 1:
            return jobs[0]
        found = Prefetched()
        for job in jobs:
            found = found.merged(job.found)
        fetches = [job.fetch for job in jobs if job.fetch is not None]
        if not fetches:
            return CollateralJob(found)

        def fetch_all() -> Prefetched:
            fetched = Prefetched()
            for fetch in fetches:
                fetched = fetched.merged(fetch())
            return fetched

        return CollateralJob(found, fetch_all)

    def _gce_crl_job(self, platform: Platform, evidence: bytes, at: datetime) -> CollateralJob | None:
        """Google's CRLs for ``gce-tpm`` evidence: the ``--gce-crl`` file read (disk I/O, before
        phase 1 as a local DCAP source's), or the CRLs of the AK chain's distribution points
        (``fetch``: in memory now, else fetched by the job). Nothing is asked about a chain that
        does not verify: phase 1 refuses it without asking."""
        source = self.gce_crl
        if platform is not Platform.GCE_TPM or source is None:
            return None
        if isinstance(source, GceCrlFile):
            file = source

            def read() -> Prefetched:
                try:
                    return Prefetched(gce_crls=file.load())
                except ConfideError as exc:
                    return Prefetched(gce_crls=exc)

            return CollateralJob(Prefetched(), read)
        fetcher = source
        try:
            chain = verified_ak_chain(evidence, at=at, roots=self.gce_roots)
        except ConfideError:
            return None
        hit = fetcher.cached(chain, at)
        if hit is not None:
            return CollateralJob(Prefetched(gce_crls=hit))

        def fetch() -> Prefetched:
            try:
                return Prefetched(gce_crls=fetcher.crls(chain, at))
            except ConfideError as exc:
                return Prefetched(gce_crls=exc)

        return CollateralJob(Prefetched(), fetch)

    def _gce_crls(
        self, evidence: bytes, at: datetime, prefetched: Prefetched | None
    ) -> tuple[x509.CertificateRevocationList, ...] | None:
        """Google's CRLs for this attestation (``None``: revocation is not checked)."""
        source = self.gce_crl
        if source is None:
            return None
        if prefetched is not None and prefetched.gce_crls is not None:
            return _outcome(prefetched.gce_crls)
        if isinstance(source, GceCrlFile):
            if prefetched is None:  # an in-process caller that ran no prefetch: read now
                return source.load()
            raise _not_read("Google's CRLs (--gce-crl)")
        # fetch: the chain's own refusal first (no prefetch was made for a chain that fails)
        chain = verified_ak_chain(evidence, at=at, roots=self.gce_roots)
        if prefetched is None:
            return source.crls(chain, at)
        hit = source.cached(chain, at)
        if hit is None:
            raise _not_prefetched("Google's CRLs (--gce-crl fetch)")
        return hit

    def _dcap_job(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], at: datetime
    ) -> CollateralJob | None:
        """The prefetch of the platform's DCAP collateral. The PCK chain must verify to the
        pinned Intel root first (as in phase 1): the source is never asked about an FMSPC that a
        request made up. A quote that only names its PCK certificate (certification data types
        1-4) has it fetched first (by what the quote names; with a request's own collateral
        bundle, only it), and its chain verified, before the collateral is asked for. A local
        source (``--collateral FILE|DIR``) is read by the job's ``fetch`` at every attestation
        (disk I/O, off the event loop; nothing is kept), a remote one through
        :attr:`dcap_cache`. A request's own bundle under ``--min-tcb-eval-number auto``: the
        source's TCB evaluation data numbers, kept in memory until their ``nextUpdate`` once
        read and their signature checked (:meth:`_kept_list`)."""
        source = self.dcap_source
        if source is None or platform not in (
            Platform.SGX,
            Platform.TDX,
            Platform.AZURE_TDX_VTPM,
            Platform.GCE_TPM,
        ):
            return None
        try:
            quote = self._dcap_quote(platform, evidence)
            cert_id = quote.pck_cert_id()
        except ConfideError:
            return None
        if "collateral" in aux and self._adds_list(source):
            # a request's own bundle under --min-tcb-eval-number auto: the CAS's list for it
            # (and, for a type 1-4 quote, the PCK certificate it names)
            pck_job = (
                self._pck_job(source, quote, cert_id, at, pck_only=True) if cert_id is not None else None
            )
            return _both(pck_job, self._list_job(source, quote.tee, at))
        if cert_id is not None:
            return self._pck_job(source, quote, cert_id, at, pck_only="collateral" in aux)
        if "collateral" in aux:
            return None
        try:
            key = self._dcap_key(quote)
        except ConfideError:
            return None
        cache = self.dcap_cache
        if cache is None:
            return CollateralJob(Prefetched(), partial(_read_local, source, key))
        found = cache.found(key, at)
        if found is not None:
            return CollateralJob(Prefetched(dcap=_frozen({key: found})))
        return CollateralJob(Prefetched(), lambda: Prefetched(dcap=_frozen({key: cache.prefetch(key, at)})))

    def _adds_list(self, source: DcapCollateralSource | None) -> bool:
        """Whether a request's own collateral bundle gets this CAS's TCB evaluation data numbers:
        under ``--min-tcb-eval-number auto``, from a source that has them (a PCS directory or
        URL: ``cas serve`` refuses another)."""
        return isinstance(self.min_tcb_evaluation_data_number, AutoTcbEvaluation) and isinstance(
            source, TcbEvaluationNumbersSource
        )

    def _list_job(self, source: DcapCollateralSource, tee: TeeType, at: datetime) -> CollateralJob:
        """The TCB evaluation data numbers of ``tee`` from memory (:meth:`_kept_list`: no I/O),
        else a blocking fetch (the source's disk cache, else the network; a directory: disk)
        of them from this CAS's source, or the error it ran into."""
        kept = self._kept_list(tee, at)
        if kept is not None:
            return CollateralJob(Prefetched(tcb_eval=_frozen({tee: kept})))

        def fetch() -> Prefetched:
            return Prefetched(tcb_eval=_frozen({tee: self._read_list(source, tee)}))

        return CollateralJob(Prefetched(), fetch)

    def _kept_list(self, tee: TeeType, at: datetime) -> TcbEvaluationNumbersResponse | None:
        """The TCB evaluation data numbers of ``tee`` kept in memory while ``at`` is before
        their ``nextUpdate`` (after it, or none kept: ``None``, the source is read again)."""
        kept = self._lists.get(tee)
        return kept[0] if kept is not None and at < kept[1] else None

    def _read_list(
        self, source: DcapCollateralSource, tee: TeeType
    ) -> TcbEvaluationNumbersResponse | ConfideError:
        """Blocking: :func:`_list_outcome`, and the answer kept in memory (:meth:`_kept_list`)
        when it is for ``tee`` and its signature leads to the pinned root (signatures only, as
        the HTTP source's disk cache keeps answers; no dates: the verification judges them at
        every use). One that does not is not kept: it is read again at the next request, and
        the verification refuses it with its own error."""
        assert isinstance(source, TcbEvaluationNumbersSource)
        outcome = _list_outcome(source, tee)
        if isinstance(outcome, ConfideError):
            return outcome
        body, chain = outcome
        try:
            parsed = TcbEvaluationNumbersText.from_response(body)
            self.dcap.check_signed_json(chain, parsed.text, parsed.signature, "TCB evaluation data numbers")
        except ConfideError:
            return outcome
        if parsed.id == ("TDX" if tee == TeeType.TDX else "SGX"):
            self._lists[tee] = (outcome, parsed.next_update)
        return outcome

    def _with_list(
        self, sent: DcapCollateral, tee: TeeType, at: datetime, prefetched: Prefetched | None
    ) -> DcapCollateral:
        """A request's own collateral bundle (``aux["collateral"]``, which has no TCB evaluation
        data numbers) under ``--min-tcb-eval-number auto``: with this CAS's source's list for the
        TEE type (what the prefetch found in memory or read; without a prefetch, from memory, else
        read here, blocking: :meth:`_kept_list`). Intel signs
        the list, and the verifier checks it with the rest of the collateral (its chain to the
        pinned root, the bundle's Root CA CRL, its dates, its id), so where it came from does not
        matter; the CAS never judges a request's bundle by a list the request chose."""
        source = self.dcap_source
        if sent.tcb_evaluation_numbers is not None or not self._adds_list(source):
            return sent
        assert isinstance(source, TcbEvaluationNumbersSource)
        outcome = prefetched.tcb_eval.get(tee) if prefetched is not None else None
        if outcome is None:
            if prefetched is not None:
                raise _not_read(f"Intel's TCB evaluation data numbers for {tee.name} from --collateral")
            outcome = self._kept_list(tee, at) or self._read_list(source, tee)
        body, chain = _outcome(outcome)
        return dataclasses.replace(
            sent, tcb_evaluation_numbers=body, tcb_evaluation_numbers_issuer_chain=chain
        )

    def _pck_job(
        self, source: DcapCollateralSource, quote: Quote, cert_id: PckCertId, at: datetime, *, pck_only: bool
    ) -> CollateralJob | None:
        """The prefetch of a type 1-4 quote's PCK certificate, then (unless ``pck_only``) of the
        collateral of the platform it names once it verifies for the quote (phase 1 refuses a
        certificate that does not; nothing more is asked about it)."""
        if not isinstance(source, PckCertificateSource):
            return None  # phase 1 refuses: nothing to fetch it from

        def then_collateral(found: Prefetched, pck: PckCertificate | ConfideError) -> CollateralJob:
            if pck_only or isinstance(pck, ConfideError):
                return CollateralJob(found)
            try:
                key = self._dcap_key(quote, pck)
            except ConfideError:
                return CollateralJob(found)
            cache = self.dcap_cache
            if cache is None:
                return CollateralJob(found, partial(_read_local, source, key))
            hit = cache.found(key, at)
            if hit is not None:
                return CollateralJob(found.merged(Prefetched(dcap=_frozen({key: hit}))))
            return CollateralJob(found, lambda: Prefetched(dcap=_frozen({key: cache.prefetch(key, at)})))

        cache = self.dcap_cache
        hit = cache.pck_found(cert_id) if cache is not None else None
        if hit is not None:
            return then_collateral(Prefetched(pck=_frozen({cert_id: hit})), hit)

        def fetch() -> Prefetched:
            outcome: PckCertificate | ConfideError
            if cache is not None:
                outcome = cache.pck_prefetch(cert_id)
            else:
                try:
                    outcome = source.get_pck_certificate(cert_id)
                except ConfideError as exc:
                    outcome = exc
            return then_collateral(Prefetched(pck=_frozen({cert_id: outcome})), outcome).run()

        return CollateralJob(Prefetched(), fetch)

    def _dcap_quote(self, platform: Platform, evidence: bytes) -> Quote:
        if platform is Platform.GCE_TPM:
            tee = parse_gce_attestation(evidence).tee
            if not isinstance(tee, GceTdxAttestation):
                raise ParseError("no tdx_attestation", structure="GCE attestation")
            return tee.parsed
        if platform is Platform.AZURE_TDX_VTPM:
            parsed = parse_evidence(evidence, HclReportType.TDX)
            if parsed.td_quote is None:  # parse_evidence requires it for TDX; kept for the type
                raise ParseError("no td_quote", structure="Azure vTPM evidence")
            return Quote.from_bytes(parsed.td_quote)
        return Quote.from_bytes(evidence)

    def _dcap_key(self, quote: Quote, pck: PckCertificate | None = None) -> DcapKey:
        chain = self.dcap.pck_chain(quote, pck)  # verified to the pinned root (signatures)
        return DcapKey(chain.extension.fmspc, chain.ca, quote.tee)

    def fetch_stats(self) -> dict[str, FetchStats]:
        """The collateral fetches of the configured sources, by source (``/metrics``)."""
        stats: dict[str, FetchStats] = {}
        if self.dcap_cache is not None:
            stats["pcs"] = self.dcap_cache.stats
        if self.kds is not None:
            stats["kds"] = self.kds.stats
        if isinstance(self.gce_crl, GceCrlFetcher):
            stats["gce-crl"] = self.gce_crl.stats
        if self.nvidia_ocsp is not None:
            stats["ocsp"] = self.nvidia_ocsp.stats
        if self.nvidia_rims is not None:
            stats["rim"] = self.nvidia_rims.stats
        return stats

    def _kds_job(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], at: datetime
    ) -> CollateralJob | None:
        if platform not in (Platform.SEV_SNP, Platform.GCE_TPM) or self.kds is None:
            return None
        kds = self.kds
        try:
            if platform is Platform.GCE_TPM:
                tee = parse_gce_attestation(evidence).tee
                if not isinstance(tee, GceSnpAttestation) or _gce_sent_vek(tee) is not None:
                    return None
                request = vek_request(tee.report)
            elif _sent_vek(aux, evidence) is not None:
                return None
            else:
                request = vek_request(evidence)
        except ConfideError:
            return None
        key = vek_key(request)
        hit = kds.cached(request, at)
        if hit is not None:
            return CollateralJob(Prefetched(veks=_frozen({key: hit})))
        return CollateralJob(Prefetched(), lambda: Prefetched(veks=_frozen({key: kds.prefetch(request, at)})))

    def _ocsp_job(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], at: datetime
    ) -> CollateralJob | None:
        """The prefetch of the OCSP responses that phase 1 would miss: for each chain with a
        missing response, the chain is verified first (as in phase 1), and nothing is asked
        about one that does not verify (phase 1 then refuses it without asking)."""
        cache = self.nvidia_ocsp
        if cache is None:
            return None
        try:
            if platform is Platform.NVIDIA_GPU:
                reports = [(evidence, aux)]
            else:
                reports = [(gpu.report, gpu.aux) for gpu in split_gpu_aux(platform, aux)[1]]
        except ConfideError:
            return None
        missing: list[tuple[Callable[[], None], list[tuple[x509.Certificate, x509.Certificate]]]] = []
        found: dict[_OcspKey, OcspResponse | ConfideError] = {}
        seen: set[tuple[x509.Certificate, x509.Certificate]] = set()  # GPUs share intermediates
        for report, gpu_aux in reports:
            try:
                certs, rims, stapled = _nvidia_aux(gpu_aux)
                if self.nvidia_rims is not None:
                    # The RIMs the CAS fetches: those in memory now; the RIM job's prefetch
                    # asks about the chains of those it fetches (_rim_job).
                    found_rims = [self.nvidia_rims.cached(i, at) for i in _missing_rim_ids(report, rims)]
                    rims = [*rims, *(rim for rim in found_rims if rim is not None)]
                chains = self._revocation_chains(report, certs, rims)
            except ConfideError:
                continue  # phase 1 refuses this GPU before it asks anything about it
            # Device-chain certificates with a stapled response that is not stale: phase 1 uses
            # it (or refuses it) and asks nobody about them.
            covered = {
                pair
                for pair, response in zip(chains[0][0], self._stapled(certs, stapled), strict=True)
                if response is not None and not stapled_is_stale(response, at)
            }
            for targets, check in chains:
                todo = []
                for pair in targets:
                    if pair in seen or pair in covered:
                        continue
                    seen.add(pair)
                    hit = cache.cached(*pair, at=at)
                    if hit is None:
                        todo.append(pair)
                    else:
                        found[ocsp_key(*pair)] = hit
                if todo:
                    missing.append((partial(check, at), todo))
        if not missing:
            return CollateralJob(Prefetched(ocsp=_frozen(found))) if found else None

        def prefetch() -> Prefetched:
            # In phase 1's order, up to the first failure: phase 1 refuses there, so nothing
            # after it is needed (and a slow responder is not waited for again and again).
            fetched: dict[_OcspKey, OcspResponse | ConfideError] = {}
            for check, todo in missing:
                try:
                    check()
                except ConfideError:
                    break
                for cert, issuer in todo:
                    outcome = cache.prefetch(cert, issuer, at=at)
                    fetched[ocsp_key(cert, issuer)] = outcome
                    if isinstance(outcome, ConfideError):
                        return Prefetched(ocsp=_frozen(fetched))
            return Prefetched(ocsp=_frozen(fetched))

        return CollateralJob(Prefetched(ocsp=_frozen(found)), prefetch)

    def _recent_enough(self, verified: VerifiedEvidence, *, sent: bool) -> VerifiedEvidence:
        """With ``min_tcb_evaluation_data_number`` (``cas serve --min-tcb-eval-number``): DCAP
        evidence verified with collateral of an older TCB evaluation is refused
        (:class:`~confide.errors.CollateralOutdatedError`), whatever its source (the request's
        own bundle, a file or directory, a PCS/PCCS), before any policy sees it. With a
        ``tcb_floor``, so is collateral older than collateral this CAS already verified; the
        CAS's own source's (``sent`` false) raises the floor, a request's bundle never does
        (:mod:`confide.cas.tcb_floor`)."""
        if self.min_tcb_evaluation_data_number is not None:
            verified = require_minimum(
                verified, self.min_tcb_evaluation_data_number, "cas serve --min-tcb-eval-number"
            )
        if self.tcb_floor is not None:
            self.tcb_floor.judge(verified, raise_floor=not sent)
        return verified

    def verify(
        self,
        platform: Platform,
        evidence: bytes,
        aux: dict[str, bytes],
        *,
        at: datetime,
        prefetched: Prefetched | None = None,
        snp_crl: x509.CertificateRevocationList | None = None,
    ) -> VerifiedEvidence:
        """Verify ``evidence`` (module docstring). ``prefetched``: what this attestation's
        :meth:`collateral_job` handed over; with it, nothing is fetched here (module docstring,
        "Prefetch"); without it, collateral missing from memory is fetched, blocking.
        ``snp_crl``: an AMD CRL to check the chain of a *sent* SEV-SNP VCEK/VLEK with (it must
        be signed by the pinned ARK, current at ``at``, and not revoke the ASK/ASVK:
        :func:`~confide.verify.sev_snp.verify_vek_chain`); ``confide cas attest`` passes the one
        the CAS published with its own evidence. A :class:`UsageError` with other evidence, or
        with SEV-SNP evidence whose VCEK is fetched from AMD KDS (its own CRL is checked)."""
        if snp_crl is not None and platform is not Platform.SEV_SNP:
            raise UsageError(f"an AMD CRL (snp_crl) checks sev-snp evidence only, got {platform} evidence")
        if platform is Platform.SIMULATED:
            if self.sim_key is None:
                raise UsageError("this CAS does not accept simulated evidence (start it with --dev)")
            return verify_sim(evidence, self.sim_key, at=at)
        if platform in (Platform.SGX, Platform.TDX):
            quote = Quote.from_bytes(evidence)
            collateral, pck = self._dcap_collateral(quote, aux, at, prefetched)
            verified = self.dcap.verify_parsed(quote, evidence, collateral, at=at, pck=pck)
            return self._recent_enough(verified, sent="collateral" in aux)
        if platform is Platform.AZURE_SNP_VTPM:
            _no_aux(platform, aux, allowed=frozenset())
            return verify_azure_snp(parse_evidence(evidence, HclReportType.SNP), self.snp, at=at)
        if platform is Platform.AZURE_TDX_VTPM:
            _no_aux(platform, aux, allowed=frozenset({"collateral"}))
            parsed = parse_evidence(evidence, HclReportType.TDX)
            if parsed.td_quote is None:  # parse_evidence requires it for TDX; kept for the type
                raise ParseError("no td_quote", structure="Azure vTPM evidence")
            collateral, pck = self._dcap_collateral(Quote.from_bytes(parsed.td_quote), aux, at, prefetched)
            verified = verify_azure_tdx(parsed, self.dcap, collateral, at=at, pck=pck)
            return self._recent_enough(verified, sent="collateral" in aux)
        if platform is Platform.SEV_SNP:
            # The VCEK/VLEK comes with the evidence: configfs-tsm's auxblob (certificate table)
            # or a "vcek" blob; the ASK/ARK chain is the embedded, pinned one.
            vek = _sent_vek(aux, evidence)
            if vek is not None:
                return _vcek_source(self.snp.verify(evidence, vek, at=at, crl=snp_crl), "sent")
            if self.kds is None:
                raise CollateralMissingError(
                    "SEV-SNP evidence came without its VCEK/VLEK (auxblob or vcek), and this CAS"
                    " fetches none (start it with --kds URL to fetch VCEKs from AMD KDS)"
                )
            if snp_crl is not None:  # the KDS's own CRL is checked below
                raise UsageError("an AMD CRL (snp_crl) checks the chain of a sent VCEK/VLEK only")
            # Else the VCEK from AMD KDS (AMD 57230), with the KDS's ASK+ARK and the ARK's CRL,
            # verified exactly as a sent one: the chain must lead to the pinned ARK.
            fetched = self._vek(self.kds, vek_request(evidence), at, prefetched)
            verified = self.snp.verify(evidence, fetched.vek, at=at, chain=fetched.chain, crl=fetched.crl)
            return _vcek_source(verified, "kds")
        if platform is Platform.NVIDIA_GPU:
            # The nonce is not checked here: the CAS compares it with the key binding
            # (check_binding), as it does every platform's report data.
            certs, rims, stapled = _nvidia_aux(aux)
            rims_source = "sent" if rims else None
            if self.nvidia_rims is not None:
                missing = _missing_rim_ids(evidence, rims)
                if missing:
                    from_source = self._fetched_rims(self.nvidia_rims, missing, certs, at, prefetched)
                    kind = self.nvidia_rims.kind
                    rims_source = kind if not rims else f"sent+{kind}"
                    rims = [*rims, *from_source]
            ocsp: list[OcspResponse] | None = None
            rim_ocsp: list[list[OcspResponse]] | None = None
            ocsp_source: str | None = None
            if self.nvidia_ocsp is not None or self.nvidia_ocsp_stapled_only:
                ocsp, rim_ocsp, ocsp_source = self._nvidia_revocation(
                    self.nvidia_ocsp, evidence, certs, rims, stapled, at, prefetched
                )
            try:
                verified = verify_nvidia_report(
                    evidence, certs, at=at, root=self.nvidia_root, rims=rims, rim_root=self.nvidia_rim_root,
                    ocsp=ocsp, rim_ocsp=rim_ocsp,
                )  # fmt: skip
                details = {**verified.details, "rims_source": rims_source, "ocsp_source": ocsp_source}
                return dataclasses.replace(verified, details=details)
            except RimMismatchError as exc:
                # Refusals cross the wire by class name: keep to the public tree (confide.errors).
                raise MeasurementError(exc.message) from None
        if platform is Platform.AWS_NITRO:
            return verify_nitro_document(evidence, at=at, root=self.nitro_root)
        if platform is Platform.GCE_TPM:
            # The nonce is not checked here: check_binding compares every quote's extraData (the
            # verifier requires them all equal) with the key binding; the verifier binds a TEE
            # report's REPORT_DATA to that extraData.
            tee = parse_gce_attestation(evidence).tee
            _no_aux(
                platform, aux, allowed=frozenset({"collateral"} if isinstance(tee, GceTdxAttestation) else ())
            )
            ctx: GceTeeCollateral | None = None
            vcek_source: str | None = None
            if isinstance(tee, GceSnpAttestation):
                ctx = GceTeeCollateral(snp=self.snp)
                vcek_source = "sent"
                if _gce_sent_vek(tee) is None and self.kds is not None:
                    vcek_source = "kds"
                    fetched = self._vek(self.kds, vek_request(tee.report), at, prefetched)
                    ctx = GceTeeCollateral(
                        snp=self.snp, vek=fetched.vek, vek_chain=fetched.chain, vek_crl=fetched.crl
                    )
            elif isinstance(tee, GceTdxAttestation):
                collateral, pck = self._dcap_collateral(tee.parsed, aux, at, prefetched)
                ctx = GceTeeCollateral(dcap=self.dcap, tdx_collateral=collateral, tdx_pck=pck)
            crls = self._gce_crls(evidence, at, prefetched)
            verified = verify_gce_attestation(evidence, at=at, roots=self.gce_roots, tee=ctx, crls=crls)
            if vcek_source is not None:
                verified = dataclasses.replace(
                    verified, details={**verified.details, "tee_vcek_source": vcek_source}
                )
            if isinstance(tee, GceTdxAttestation):
                return self._recent_enough(verified, sent="collateral" in aux)
            return verified
        raise UsageError(f"this CAS does not verify {platform.value} evidence yet")

    def _fetched_rims(
        self,
        cache: RimCache,
        ids: list[str],
        certs: list[x509.Certificate],
        at: datetime,
        prefetched: Prefetched | None,
    ) -> list[ReferenceManifest]:
        """The RIMs ``ids`` of a report (those the runtime did not send, module docstring,
        "RIMs"): the prefetch's (or its error), else from memory; else, once the report's chain
        verifies to the pinned root (the source is never asked about a GPU a request made up),
        the prefetch's error, or without a prefetch :meth:`RimCache.get`'s (blocking)."""
        known = prefetched.rims if prefetched is not None else {}
        found: list[ReferenceManifest | ConfideError | None] = []
        for rim_id in ids:
            outcome = known.get(rim_id)
            found.append(outcome if outcome is not None else cache.cached(rim_id, at))
        if all(isinstance(rim, ReferenceManifest) for rim in found):
            return [rim for rim in found if isinstance(rim, ReferenceManifest)]
        verify_pinned_chain(certs, self.nvidia_root or nvidia_device_root(), at)
        rims = []
        for rim, rim_id in zip(found, ids, strict=True):
            if isinstance(rim, ReferenceManifest):
                rims.append(rim)
            elif rim is not None:
                rims.append(_outcome(rim))
            elif prefetched is None:
                rims.append(cache.get(rim_id, at))
            else:
                raise _not_prefetched(f"RIM {rim_id} from {cache.where}")
        return rims

    def _rim_job(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], at: datetime
    ) -> CollateralJob | None:
        """The prefetch of the RIMs phase 1 would miss (those not sent with a report), and, with
        ``nvidia_ocsp``, of the OCSP responses about the signing chains of those it fetches. A
        report whose chain does not verify to the pinned root gets nothing asked about it."""
        cache = self.nvidia_rims
        if cache is None:
            return None
        try:
            if platform is Platform.NVIDIA_GPU:
                reports = [(evidence, aux)]
            else:
                reports = [(gpu.report, gpu.aux) for gpu in split_gpu_aux(platform, aux)[1]]
        except ConfideError:
            return None
        found: dict[str, ReferenceManifest | ConfideError] = {}
        missing: list[tuple[Callable[[], None], list[str]]] = []
        for report, gpu_aux in reports:
            try:
                certs, sent, _ = _nvidia_aux(gpu_aux)
                ids = _missing_rim_ids(report, sent)
            except ConfideError:
                continue  # phase 1 refuses this GPU before it asks anything about it
            todo = []
            for rim_id in ids:
                hit = cache.cached(rim_id, at)
                if hit is not None:
                    found[rim_id] = hit
                elif rim_id not in found and all(rim_id not in t for _, t in missing):
                    todo.append(rim_id)
            if todo:
                root = self.nvidia_root or nvidia_device_root()
                missing.append((partial(verify_pinned_chain, certs, root, at), todo))
        if not missing:
            return CollateralJob(Prefetched(rims=_frozen(found))) if found else None

        def prefetch() -> Prefetched:
            fetched: dict[str, ReferenceManifest | ConfideError] = {}
            for check, todo in missing:
                try:
                    check()
                except ConfideError:
                    continue  # phase 1 refuses this GPU before it asks anything about it
                for rim_id in todo:  # in phase 1's order, up to the first failure (refused there)
                    fetched[rim_id] = cache.prefetch(rim_id, at)
                    if isinstance(fetched[rim_id], ConfideError):
                        break
            ocsp = self._rim_ocsp_prefetch(
                [r for r in fetched.values() if isinstance(r, ReferenceManifest)], at
            )
            return Prefetched(rims=_frozen(fetched), ocsp=_frozen(ocsp))

        return CollateralJob(Prefetched(rims=_frozen(found)), prefetch)

    def _rim_ocsp_prefetch(
        self, rims: list[ReferenceManifest], at: datetime
    ) -> dict[_OcspKey, OcspResponse | ConfideError]:
        """Blocking: with ``nvidia_ocsp``, the responses about the signing chains of fetched
        (verified) RIMs that are not in memory, up to the first failure."""
        cache = self.nvidia_ocsp
        out: dict[_OcspKey, OcspResponse | ConfideError] = {}
        if cache is None:
            return out
        rim_root = self.nvidia_rim_root or nvidia_rim_root()
        for rim in rims:
            try:
                targets = rim_ocsp_targets(rim.raw, rim_root)
            except ConfideError:  # pragma: no cover - the cache verified its chain
                return out
            for cert, issuer in targets:
                if cache.cached(cert, issuer, at=at) is not None:
                    continue
                outcome = cache.prefetch(cert, issuer, at=at)
                out[ocsp_key(cert, issuer)] = outcome
                if isinstance(outcome, ConfideError):
                    return out
        return out

    def _nvidia_revocation(
        self,
        cache: OcspCache | None,
        evidence: bytes,
        certs: list[x509.Certificate],
        rims: list[ReferenceManifest],
        stapled: dict[int, bytes],
        at: datetime,
        prefetched: Prefetched | None,
    ) -> tuple[list[OcspResponse], list[list[OcspResponse]] | None, str]:
        """OCSP responses for the GPU chain's links and each RIM's signing chain (module
        docstring), for :func:`verify_nvidia_report` to check (it verifies every chain before
        it uses a response about it), and where the device chain's came from (``ocsp_source``).
        A device-chain certificate with a stapled response takes it, unless it is stale and
        ``cache`` can stand in; the others take what the prefetch of :meth:`collateral_job`
        handed over (a response or the error it got), else from memory. Before a responder is
        asked anything, and before a missing stapled response is refused, the report must parse
        and the chain must verify to its pinned root. ``cache`` ``None`` (stapled only): no RIM
        signing chain is checked (``None`` for them)."""
        chains = self._revocation_chains(evidence, certs, rims if cache is not None else [])
        targets, device_chain = chains[0]
        # A stale stapled response gives way to the cache's when there is one.
        device = [
            response
            if response is not None and (cache is None or not stapled_is_stale(response, at))
            else None
            for response in self._stapled(certs, stapled)
        ]
        need = [pair for pair, response in zip(targets, device, strict=True) if response is None]
        used = {"stapled" if r is not None else self._ocsp_kind for r in device}
        kinds = [kind for kind in ("stapled", self._ocsp_kind) if kind in used]
        if cache is None:
            if need:
                device_chain(at)  # a chain that does not verify is refused as such
                cert = need[0][0]
                raise CollateralMissingError(
                    f"revocation check: no stapled OCSP response about certificate"
                    f" {certs.index(cert)} ({subject_cn(cert)!r}, serial {cert.serial_number:x}) of the"
                    f" GPU chain (aux {NVIDIA_OCSP_PREFIX}{certs.index(cert)}), and this CAS asks no"
                    " responder (--nvidia-ocsp stapled): run the runtime with --gpu-ocsp"
                )
            return [r for r in device if r is not None], None, "stapled"
        fetched = iter(_responses(cache, need, partial(device_chain, at), at, prefetched))
        responses = [r if r is not None else next(fetched) for r in device]
        rim_responses = [
            _responses(cache, pairs, partial(check, at), at, prefetched) for pairs, check in chains[1:]
        ]
        return responses, rim_responses, "+".join(kinds) or self._ocsp_kind

    def _stapled(self, certs: list[x509.Certificate], stapled: dict[int, bytes]) -> list[OcspResponse | None]:
        """Per pair of :func:`ocsp_targets` (chain position ``i`` = index + 1), the stapled
        response about it (bounded by :attr:`nvidia_ocsp_max_age`), or ``None``."""
        return [
            OcspResponse(stapled[i], None, self.nvidia_ocsp_max_age) if i in stapled else None
            for i in range(1, len(certs) - 1)
        ]

    def _revocation_chains(
        self, evidence: bytes, certs: list[x509.Certificate], rims: list[ReferenceManifest]
    ) -> list[tuple[list[tuple[x509.Certificate, x509.Certificate]], Callable[[datetime], None]]]:
        """(certificate, issuer) pairs whose OCSP status is checked, per chain (the GPU's, then
        each RIM's), each with the check to pass before a responder is asked about them: the
        report parses and the chain verifies to its pinned root."""

        def device_chain(at: datetime) -> None:
            NvidiaAttestationReport.from_bytes(evidence)
            verify_pinned_chain(certs, self.nvidia_root or nvidia_device_root(), at)

        chains: list[tuple[list[tuple[x509.Certificate, x509.Certificate]], Callable[[datetime], None]]]
        chains = [(ocsp_targets(certs), device_chain)]
        if rims:
            rim_root = self.nvidia_rim_root or nvidia_rim_root()
            for rim in rims:
                targets = rim_ocsp_targets(rim.raw, rim_root)
                chain = [cert for cert, _ in targets] + [rim_root]
                chains.append((targets, partial(verify_pinned_chain, chain, rim_root)))
        return chains

    def _vek(
        self, kds: KdsVcekCache, request: AmdCollateralRequest, at: datetime, prefetched: Prefetched | None
    ) -> FetchedVek:
        """The VCEK for ``request``: the prefetch's (or its error), else from memory; without a
        prefetch, :meth:`KdsVcekCache.get` (which may fetch, blocking)."""
        if prefetched is None:
            return kds.get(request, at)
        outcome = prefetched.veks.get(vek_key(request))
        if outcome is not None:
            return _outcome(outcome)
        hit = kds.cached(request, at)
        if hit is None:
            raise _not_prefetched(f"the VCEK of SEV-SNP chip {request.hwid[:16]}... from {kds.where}")
        return hit

    def _dcap_collateral(
        self, quote: Quote, aux: dict[str, bytes], at: datetime, prefetched: Prefetched | None
    ) -> tuple[DcapCollateral, PckCertificate | None]:
        """A quote's collateral and, for a quote that only names its PCK certificate (types
        1-4), that certificate (:meth:`_pck_certificate`). The collateral: the request's
        dcap-qvl bundle, else the configured source's: what the prefetch of
        :meth:`collateral_job` handed over (or its error); else, for a remote source, from
        memory (without a prefetch: fetched when missing). A local source is read here only
        without a prefetch: with one, this touches no disk (what the prefetch did not read is
        refused, "attest again")."""
        pck = self._pck_certificate(quote, prefetched)
        if "collateral" in aux:
            sent = DcapCollateral.from_dcap_qvl_json(aux["collateral"])
            return self._with_list(sent, quote.tee, at, prefetched), pck
        if self.dcap_source is None:
            raise CollateralMissingError("this CAS has no DCAP collateral source configured")
        if self.dcap_cache is not None:
            cache, key = self.dcap_cache, self._dcap_key(quote, pck)
            if prefetched is None:
                return cache.get(key, at), pck
            outcome = prefetched.dcap.get(key)
            if outcome is not None:
                return _outcome(outcome), pck
            found = cache.found(key, at)
            if found is None:
                raise _not_prefetched(f"the DCAP collateral of {key} from {cache.where}")
            return found, pck
        key = self._dcap_key(quote, pck)
        if prefetched is None:
            return self.dcap_source.get_collateral(fmspc=key.fmspc, ca=key.ca, tee=key.tee), pck
        outcome = prefetched.dcap.get(key)
        if outcome is None:
            raise _not_read(f"the DCAP collateral of {key} from --collateral")
        return _outcome(outcome), pck

    def _pck_certificate(self, quote: Quote, prefetched: Prefetched | None) -> PckCertificate | None:
        """``None`` for a quote that carries its PCK chain (type 5); else the PCK certificate it
        names, from the configured source: the prefetch's (or its error), else from memory
        (remote source); without a prefetch, fetched or read (blocking)."""
        cert_id = quote.pck_cert_id()
        if cert_id is None:
            return None
        source = self.dcap_source
        if not isinstance(source, PckCertificateSource):
            error = missing_pck_error(cert_id)
            error.message += (
                "; this CAS has no source of PCK certificates (start it with --collateral URL|DIR)"
            )
            error.args = (error.message,)
            raise error
        outcome = prefetched.pck.get(cert_id) if prefetched is not None else None
        if outcome is not None:
            return _outcome(outcome)
        cache = self.dcap_cache
        if cache is not None:
            found = cache.pck_found(cert_id)
            if found is not None:
                return found
            if prefetched is None:
                return cache.pck_get(cert_id)
            raise _not_prefetched(
                f"the PCK certificate for the quote's {cert_id.describe()} from {cache.where}"
            )
        if prefetched is None:
            return source.get_pck_certificate(cert_id)
        raise _not_read(f"the PCK certificate for the quote's {cert_id.describe()} from --collateral")


def _missing_rim_ids(evidence: bytes, sent: list[ReferenceManifest]) -> list[str]:
    """The RIM IDs (:func:`~confide.collateral.nvidia_rim.rim_targets`) of an NVIDIA report's
    driver and VBIOS RIMs that no sent RIM stands for: none of ``sent`` has that version (a sent
    RIM is verified before it is compared; one that claims a version it is not signed for is
    refused then). A runtime cannot leave out the VBIOS (or driver) comparison by sending only
    the other RIM."""
    versions = {rim.version.lower() for rim in sent}
    targets = rim_targets(NvidiaAttestationReport.from_bytes(evidence))
    return [rim_id for rim_id, version in targets if version.lower() not in versions]


def _both(first: CollateralJob | None, second: CollateralJob) -> CollateralJob:
    """One job of two: what both found, and both fetches one after the other."""
    if first is None:
        return second
    fetches = [job.fetch for job in (first, second) if job.fetch is not None]

    def fetch() -> Prefetched:
        fetched = Prefetched()
        for one in fetches:
            fetched = fetched.merged(one())
        return fetched

    return CollateralJob(first.found.merged(second.found), fetch if fetches else None)


def _list_outcome(
    source: TcbEvaluationNumbersSource, tee: TeeType
) -> TcbEvaluationNumbersResponse | ConfideError:
    """Blocking: the TCB evaluation data numbers of ``tee`` from ``source``, or its error."""
    try:
        return source.get_tcb_evaluation_numbers(tee)
    except ConfideError as exc:
        return exc


def _read_local(source: DcapCollateralSource, key: DcapKey) -> Prefetched:
    """Blocking (disk): the collateral of ``key`` from a local source (``--collateral FILE|DIR``),
    or the error reading it ran into (raised by phase 1 as a copy: the same class and message as
    when phase 1 read it)."""
    outcome: DcapCollateral | ConfideError
    try:
        outcome = source.get_collateral(fmspc=key.fmspc, ca=key.ca, tee=key.tee)
    except ConfideError as exc:
        outcome = exc
    return Prefetched(dcap=_frozen({key: outcome}))


def _responses(
    cache: OcspCache,
    targets: list[tuple[x509.Certificate, x509.Certificate]],
    checked: Callable[[], None],
    at: datetime,
    prefetched: Prefetched | None,
) -> list[OcspResponse]:
    """One response per (certificate, issuer): the prefetch's, else the cache's; else (once
    ``checked()``, the chain verified, has passed: its failure is the refusal) the prefetch's
    error, or without a prefetch :meth:`OcspCache.get`'s. A failed fetch is a refusal whose
    message starts with "revocation check" (a revoked certificate keeps its own)."""
    known = prefetched.ocsp if prefetched is not None else {}
    found: list[OcspResponse | ConfideError | None] = []
    for cert, issuer in targets:
        outcome = known.get(ocsp_key(cert, issuer))
        found.append(outcome if outcome is not None else cache.cached(cert, issuer, at=at))
    if all(isinstance(response, OcspResponse) for response in found):
        return [response for response in found if isinstance(response, OcspResponse)]
    checked()
    responses = []
    for response, (cert, issuer) in zip(found, targets, strict=True):
        if isinstance(response, OcspResponse):
            responses.append(response)
        elif response is not None:
            responses.append(_get(partial(_outcome, response)))
        elif prefetched is None:
            responses.append(_get(partial(cache.get, cert, issuer, at=at)))
        else:
            raise _not_prefetched(f"the OCSP response about certificate serial {cert.serial_number:x}")
    return responses


def _get(get: Callable[[], OcspResponse]) -> OcspResponse:
    try:
        return get()
    except RevocationError:
        raise
    except ParseError as exc:
        # The responder's bytes, not the request's: not a malformed request (HTTP 400).
        raise CollateralError(f"revocation check: {exc.message}") from None
    except ConfideError as exc:
        exc.message = f"revocation check: {exc.message}"
        exc.args = (exc.message,)
        raise


def _vcek_source(verified: VerifiedEvidence, source: str) -> VerifiedEvidence:
    """``verified`` with the detail ``vcek_source``: ``sent`` (by the runtime) or ``kds``
    (fetched from AMD KDS), for the attestation event."""
    return dataclasses.replace(verified, details={**verified.details, "vcek_source": source})


def _sent_vek(aux: dict[str, bytes], evidence: bytes) -> bytes | None:
    """The VCEK/VLEK a runtime sent with SEV-SNP evidence: aux ``vcek``, else the one in
    configfs-tsm's certificate table (``auxblob``; an empty table is no VEK). A table may hold
    both (GHCB specification, "SNP Extended Guest Request"): the one the report's SIGNING_KEY
    names (ABI Table 23, 0x048 bits 4:2: 0 VCEK, 1 VLEK) comes first, the other is the fallback
    (verification then names the mismatch)."""
    vek = aux.get("vcek")
    if vek is None and aux.get("auxblob"):
        table = parse_cert_table(aux["auxblob"])
        first, second = (VLEK_GUID, VCEK_GUID) if _signed_by_vlek(evidence) else (VCEK_GUID, VLEK_GUID)
        vek = table.get(first) or table.get(second)
    return vek


def _gce_sent_vek(tee: GceSnpAttestation) -> bytes | None:
    """The VCEK/VLEK (as the report's SIGNING_KEY names) a GCE attestation's SEV-SNP report came
    with (``None``: none; AMD KDS may serve a VCEK)."""
    return tee.vlek if tee.parsed.signing_key is SigningKey.VLEK else tee.vcek


def _signed_by_vlek(evidence: bytes) -> bool:
    """Whether the report's SIGNING_KEY says VLEK (False for what does not parse: verification
    reports that)."""
    try:
        return AttestationReport.from_bytes(evidence).signing_key is SigningKey.VLEK
    except ParseError:
        return False


def _no_aux(platform: Platform, aux: dict[str, bytes], *, allowed: frozenset[str]) -> None:
    unknown = sorted(k for k in aux if k not in allowed)
    if unknown:
        expected = ", ".join(repr(k) for k in sorted(allowed)) or "none"
        raise ParseError(
            f"got aux {', '.join(repr(k[:40]) for k in unknown[:4])} with {platform} evidence,"
            f" expected {expected}",
            structure="attestation request",
        )


def _nvidia_aux(
    aux: dict[str, bytes],
) -> tuple[list[x509.Certificate], list[ReferenceManifest], dict[int, bytes]]:
    """The GPU's certificate chain, the RIMs and the stapled OCSP responses (by chain position)
    sent with NVIDIA evidence (see the module docstring); unknown keys are refused so that a
    misspelt RIM is not silently skipped. Hostile input: counts, sizes and positions are checked
    (``ParseError``) before anything is parsed."""
    unknown = sorted(
        k
        for k in aux
        if k != NVIDIA_CERTS and not k.startswith(NVIDIA_RIM_PREFIX) and not k.startswith(NVIDIA_OCSP_PREFIX)
    )
    if unknown:
        raise ParseError(
            f"got aux {', '.join(repr(k[:40]) for k in unknown[:4])}, expected"
            f" {NVIDIA_CERTS!r}, {NVIDIA_RIM_PREFIX!r}<name> and {NVIDIA_OCSP_PREFIX!r}<i> blobs",
            structure="nvidia-gpu evidence",
        )
    stapled: dict[int, bytes] = {}
    for key in sorted(k for k in aux if k.startswith(NVIDIA_OCSP_PREFIX)):
        match = _OCSP_KEY.fullmatch(key)
        if match is None:
            raise ParseError(
                f"got aux {key[:40]!r}, expected {NVIDIA_OCSP_PREFIX}<i>, i the position of a"
                " certificate in the chain (1 to 99, no leading zero)",
                structure="nvidia-gpu evidence",
            )
        if len(stapled) == MAX_STAPLED:
            raise ParseError(
                f"got more than {MAX_STAPLED} stapled OCSP responses, expected at most {MAX_STAPLED}",
                structure="nvidia-gpu evidence",
            )
        if len(aux[key]) > MAX_RESPONSE_SIZE:
            raise ParseError(
                f"aux {key!r}: got {len(aux[key])} bytes, expected at most {MAX_RESPONSE_SIZE}",
                structure="nvidia-gpu evidence",
            )
        stapled[int(match.group(1))] = aux[key]
    certs = aux.get(NVIDIA_CERTS)
    if certs is None:
        raise CollateralMissingError(
            f"NVIDIA evidence came without the GPU's certificate chain (aux {NVIDIA_CERTS!r}, leaf first)"
        )
    chain = load_certificate_chain(certs, f"aux {NVIDIA_CERTS!r}")
    beyond = [i for i in stapled if i > len(chain) - 2]
    if beyond:
        raise ParseError(
            f"got aux {NVIDIA_OCSP_PREFIX}{beyond[0]}, expected stapled responses about certificates 1"
            f" to {len(chain) - 2} of the {len(chain)}-certificate chain (between the leaf and the root)",
            structure="nvidia-gpu evidence",
        )
    names = sorted(k for k in aux if k.startswith(NVIDIA_RIM_PREFIX))
    if len(names) > MAX_RIMS:
        raise ParseError(
            f"got {len(names)} RIMs, expected at most {MAX_RIMS}", structure="nvidia-gpu evidence"
        )
    return chain, [ReferenceManifest.from_bytes(aux[name]) for name in names], stapled


def check_binding(verified: VerifiedEvidence, binding: bytes) -> None:
    """Raise :class:`BindingError` unless ``verified`` commits to ``binding`` (the 64 bytes of
    :func:`binding_report_data`), compared in constant time. Where each platform carries it:

    - ``nvidia-gpu``: the SPDM GET_MEASUREMENTS requester nonce (DSP0274 Table 40, 32 bytes,
      covered by the GPU's signature) must be ``binding[:32]``;
    - ``aws-nitro``: the document's ``nonce`` must be all 64 bytes;
    - ``az-snp-vtpm`` / ``az-tdx-vtpm``: both the vTPM quote's extraData (``nonce``, signed by
      the AK) and the runtime claims' ``user-data`` (``hcl_user_data``, hashed into the hardware
      report's REPORT_DATA) must be all 64 bytes (``docs/azure-vtpm.md``, "What binds what");
    - ``gce-tpm``: the quotes' extraData (qualifyingData of TPM2_Quote, signed by the AK the
      Google-issued certificate names; ``nonce``) must be all 64 bytes;
    - every other platform: its 64 bytes of report data (``report_data`` claim)."""
    if verified.platform is Platform.NVIDIA_GPU:
        checks = [("nonce", binding[:SPDM_NONCE_SIZE])]
    elif verified.platform in (Platform.AWS_NITRO, Platform.GCE_TPM):
        checks = [("nonce", binding)]
    elif verified.platform in (Platform.AZURE_SNP_VTPM, Platform.AZURE_TDX_VTPM):
        checks = [("nonce", binding), ("hcl_user_data", binding)]
    else:
        checks = [("report_data", binding)]
    for claim, expected in checks:
        _check_bound(verified, claim, expected, binding)


def _check_bound(verified: VerifiedEvidence, claim: str, expected: bytes, binding: bytes) -> None:
    value = verified.claims.get(claim)
    try:
        got = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        got = b""
    if not hmac.compare_digest(got, expected):
        shown = f"{value[:32]}…" if isinstance(value, str) and value else "none"
        part = f"the first {len(expected)} bytes of " if len(expected) < len(binding) else ""
        raise BindingError(
            f"{verified.platform} {claim.replace('_', ' ')} got {shown}, expected {part}the SHA-512"
            " binding of the key and nonce"
        )
