"""Revocation checks of NVIDIA GPU chains by the CAS (``cas serve --nvidia-ocsp``): GPU-only and
composite attestations through ``Cas.attest`` (in process, real SQLite and ledger) and through
the API, against a fake OCSP responder on 127.0.0.1 (``tests/ocsp_responder.py``) that signs
under the forged test PKIs (``nvidia_forge``, ``rim_pki``) and counts the requests it gets.

The CAS's clock is the test's: the cache's expiry (``confide.cas.revocation``) is driven by it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from snp_fakes import make_fake_amd

from asgi_call import call, call_async
from cas_inproc import (
    Clock,
    InProcessCas,
    RuntimeKey,
    evict_before_phase_one,
    last_attestation,
    production_cas,
    refused,
)
from confide import errors
from confide.cas.app import create_app
from confide.cas.revocation import FAILURE_GRACE, NO_NEXT_UPDATE_TTL, OcspCache
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.collateral.amd_kds import KdsHttpCollateral
from confide.collateral.nvidia_ocsp import DirOcspSource, HttpOcspSource
from confide.evidence.sev_snp import Product
from confide.verify.ocsp import OcspResponse
from gpu_cas import (
    FWID,
    GPU_POLICY,
    NOW,
    NV_MEASUREMENTS,
    NV_REPORT,
    OCSP_KNOWN,
    PKI,
    RIM_PKI,
    accepted,
    driver_rim,
)
from gpu_cas import GpuRuntime as Runtime
from kds_fake import fake_kds
from nvidia_forge import NvidiaPki, make_ca, make_leaf, make_responder, ocsp_response, resign
from nvidia_forge import make_pki as make_nvidia_pki
from ocsp_responder import FakeOcsp
from pki import Issuer

RIM = driver_rim()
M22 = NV_MEASUREMENTS[22].hex()
KNOWN = OCSP_KNOWN  # what the responder is asked about

POLICY = GPU_POLICY


class Responder(FakeOcsp):
    """The fake responder, answering as an honest one by default: signed by the issuer,
    thisUpdate a minute before the CAS's clock, nextUpdate ``valid_for`` after it (``None``:
    no nextUpdate), the nonce echoed, status ``status``."""

    def __init__(self, clock: Clock[float]) -> None:
        super().__init__(KNOWN, self.honest)
        self.clock = clock
        self.valid_for: timedelta | None = timedelta(hours=1)
        self.status = ocsp.OCSPCertStatus.GOOD
        self.revoked: set[int] = set()
        self.answers: list[bytes] = []  # what honest() answered, in order

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def honest(self, cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        self.answers.append(self.response(cert, issuer, nonce, issuer))
        return 200, self.answers[-1]

    def response(
        self, cert: x509.Certificate, issuer: Issuer, nonce: bytes | None, signer: Issuer, **changes: Any
    ) -> bytes:
        status = ocsp.OCSPCertStatus.REVOKED if cert.serial_number in self.revoked else self.status
        args: dict[str, Any] = {
            "this_update": self.now - timedelta(minutes=1),
            "next_update": None if self.valid_for is None else self.now + self.valid_for,
            "nonce": nonce, "status": status,
        }  # fmt: skip
        args.update(changes)
        return ocsp_response(cert, issuer[0], signer, **args)


@pytest.fixture
def clock() -> Clock[float]:
    return Clock(NOW.timestamp())


@pytest.fixture
def responder(clock: Clock[float]) -> Iterator[Responder]:
    server = Responder(clock).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cache(responder: Responder) -> Iterator[OcspCache]:
    with HttpOcspSource(responder.url, timeout=30) as source:
        yield OcspCache(source)


@pytest.fixture
def cas(tmp_path: Path, clock: Clock[float], cache: OcspCache) -> InProcessCas:
    """A CAS started with revocation checks against the fake responder."""
    inproc = InProcessCas.start(tmp_path / "cas", POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root, nvidia_ocsp=cache
    )
    inproc.cas.clock = clock
    return inproc


# --- good ------------------------------------------------------------------------------------------


def test_good_responses_accept_and_the_second_attestation_is_served_from_the_cache(
    cas: InProcessCas, responder: Responder, cache: OcspCache
) -> None:
    rt = Runtime(cas)
    job = cas.cas.collateral_job(rt.gpu_only())
    assert job is not None and job.fetch is not None  # nothing cached yet: a prefetch
    event = accepted(cas, rt.gpu_only(), rt)
    assert event["revocation_checked"] is True and event["rim_revocation_checked"] is False
    # One request, about the ICA (the leaf is not asked about, as NVIDIA's verifier does not).
    assert responder.requests == [("application/ocsp-request", PKI.ica[0].serial_number)]
    # Another attestation (new nonce, new report) of the same GPU: the cached response serves.
    rt2 = Runtime(cas)
    job = cas.cas.collateral_job(rt2.gpu_only())
    assert job is not None and job.fetch is None  # all in memory: nothing to prefetch
    assert accepted(cas, rt2.gpu_only(), rt2)["revocation_checked"] is True
    # A composite request with two GPUs under the same ICA: no new request either.
    rt3 = Runtime(cas)
    event = accepted(cas, rt3.composite(), rt3)
    assert [(g["slot"], g["revocation_checked"]) for g in event["gpus"]] == [("gpu0", True), ("gpu1", True)]
    assert responder.served() == [PKI.ica[0].serial_number]
    assert (cache.fetches, len(cache)) == (1, 1)


def test_rim_signing_chains_are_checked_too(cas: InProcessCas, responder: Responder) -> None:
    rt = Runtime(cas)
    event = accepted(cas, rt.gpu_only(driver=RIM), rt)
    assert event["revocation_checked"] is True and event["rim_revocation_checked"] is True
    assert sorted(responder.served()) == sorted(KNOWN)
    # The RIM signer revoked: the cached good answer serves until its nextUpdate, then not.
    responder.revoked.add(RIM_PKI.leaf.serial_number)
    rt2 = Runtime(cas)
    accepted(cas, rt2.gpu_only(driver=RIM), rt2)
    cas.cas.clock.now += 3600  # type: ignore[attr-defined]
    rt3 = Runtime(cas)
    refused(cas.cas, rt3.gpu_only(driver=RIM), errors.RevocationError, r"'Test CAS RIM Signer' .* is revoked")


# --- revoked --------------------------------------------------------------------------------------


def test_a_revoked_device_certificate_refuses_with_the_revocation_class(
    cas: InProcessCas, responder: Responder, cache: OcspCache
) -> None:
    responder.revoked.add(PKI.ica[0].serial_number)
    rt = Runtime(cas)
    error = refused(
        cas.cas,
        rt.gpu_only(),
        errors.RevocationError,
        r"certificate 'Test ICA' \(serial .*\) is revoked since",
    )
    assert error.exit_code == 23  # as `confide evidence verify --ocsp` exits
    # In a composite request the refusal names the GPU's slot; a revoked answer is not cached.
    rt2 = Runtime(cas)
    refused(cas.cas, rt2.composite(), errors.RevocationError, r"^gpu0: certificate 'Test ICA' .* is revoked")
    assert len(responder.requests) == 2 and len(cache) == 0
    # Through the API: the error class and its exit code cross the wire.
    rt3 = Runtime(cas)
    status, body = call(create_app(cas.cas), "/v1/attest", [json.dumps(rt3.gpu_only()).encode()])
    error_body = json.loads(body)["error"]
    assert (status, error_body["class"], error_body["exit_code"]) == (403, "RevocationError", 23)


def test_unknown_status_is_refused_as_revocation(cas: InProcessCas, responder: Responder) -> None:
    responder.status = ocsp.OCSPCertStatus.UNKNOWN
    rt = Runtime(cas)
    refused(cas.cas, rt.gpu_only(), errors.RevocationError, "status UNKNOWN, expected GOOD")


# --- fail closed -----------------------------------------------------------------------------------


def test_an_unreachable_responder_refuses(cas: InProcessCas, responder: Responder) -> None:
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)  # cached until nextUpdate (an hour)
    responder.stop()
    rt2 = Runtime(cas)
    accepted(cas, rt2.gpu_only(), rt2)  # the cache answers: the responder is not needed
    cas.cas.clock.now += 3600  # type: ignore[attr-defined]
    rt3 = Runtime(cas)
    refused(
        cas.cas, rt3.gpu_only(), errors.NetworkError, r"^revocation check: OCSP responder http://127\.0\.0\.1"
    )
    rt4 = Runtime(cas)
    refused(
        cas.cas, rt4.composite(), errors.NetworkError, r"^gpu0: revocation check: OCSP responder .*Connect"
    )
    # /metrics counts the responder's answer and the two failed fetches.
    status, text = call(create_app(cas.cas), "/metrics", [b""], method="GET")
    assert status == 200
    assert 'confide_cas_collateral_fetches_total{outcome="ok",source="ocsp"} 1.0' in text.decode()
    assert 'confide_cas_collateral_fetches_total{outcome="error",source="ocsp"} 2.0' in text.decode()
    assert 'confide_cas_collateral_fetch_seconds_count{source="ocsp"} 3.0' in text.decode()


def test_http_errors_and_malformed_responses_refuse(cas: InProcessCas, responder: Responder) -> None:
    responder.behaviour = lambda cert, issuer, nonce: (500, b"oops")
    rt = Runtime(cas)
    refused(cas.cas, rt.gpu_only(), errors.NetworkError, "revocation check: .* got HTTP 500, expected 200")
    # Asked once, by the prefetch: phase 1 reports its error without asking again.
    assert len(responder.requests) == 1
    # The responder's bytes are not the request's: a CollateralError, not a ParseError (HTTP 400).
    responder.behaviour = lambda cert, issuer, nonce: (200, b"\x30\x03\x0a\x01")
    rt2 = Runtime(cas)
    refused(cas.cas, rt2.gpu_only(), errors.CollateralError, "revocation check: OCSP response .* not a DER")
    # A replayed answer: another request's nonce.
    responder.behaviour = lambda cert, issuer, nonce: (
        200,
        responder.response(cert, issuer, b"\x07" * 32, issuer),
    )
    rt3 = Runtime(cas)
    refused(
        cas.cas,
        rt3.gpu_only(),
        errors.CollateralError,
        r"revocation check: .* nonce 0707.* is not the request's [0-9a-f]{64} \(§4\.4\.1\)",
    )


def test_a_response_by_an_unauthorised_responder_refuses(cas: InProcessCas, responder: Responder) -> None:
    # A delegate of the issuer without id-kp-OCSPSigning (RFC 6960 §4.2.2.2).
    no_eku = make_responder(PKI.root, NOW, eku=False)
    responder.behaviour = lambda cert, issuer, nonce: (
        200, responder.response(cert, issuer, nonce, no_eku, carry=True)
    )  # fmt: skip
    rt = Runtime(cas)
    refused(
        cas.cas, rt.gpu_only(), errors.CertificateChainError, "revocation check: .* lacks extended key usage"
    )
    # A delegate issued by another CA, and a key that is nobody's.
    stranger = make_ca("Test Device Identity CA", NOW)
    for signer, carry, message in [
        (make_responder(stranger, NOW), True, "was not issued by|does not verify"),
        (stranger, False, "neither 'Test Device Identity CA' nor a certificate carried"),
    ]:
        responder.behaviour = lambda cert, issuer, nonce, s=signer, c=carry: (  # type: ignore[misc]
            200, responder.response(cert, issuer, nonce, s, carry=c)
        )  # fmt: skip
        rt = Runtime(cas)
        refused(cas.cas, rt.gpu_only(), errors.CertificateChainError, f"revocation check: .*({message})")
    # Nothing unverified was cached: an honest answer is fetched and accepted.
    responder.behaviour = responder.honest
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 4


def test_a_chain_that_does_not_verify_is_not_asked_about(cas: InProcessCas, responder: Responder) -> None:
    other = make_nvidia_pki(NV_REPORT, NOW)  # same names, another root
    rt = Runtime(cas)
    request = rt.body(
        policy="app",
        service="gpu",
        platform="nvidia-gpu",
        evidence=rt.gpu(other),
        aux={"certs": other.chain_pem()},
    )
    refused(cas.cas, request, errors.CertificateChainError, "expected the pinned root")
    assert responder.requests == []


def test_a_cached_response_does_not_vouch_for_a_chain_that_does_not_verify(
    cas: InProcessCas, responder: Responder
) -> None:
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)  # the ICA's response is cached
    # A leaf that names the ICA as its issuer but was signed by another key: the cached response
    # about the ICA is found, and the chain is refused all the same.
    impostor_ica = make_ca("Test ICA", NOW, PKI.root)
    forged = NvidiaPki(PKI.root, PKI.ica, make_leaf(impostor_ica, FWID, NOW))
    rt2 = Runtime(cas)
    request = rt2.body(
        policy="app",
        service="gpu",
        platform="nvidia-gpu",
        evidence=rt2.gpu(forged),
        aux={"certs": forged.chain_pem()},
    )
    refused(cas.cas, request, errors.CertificateChainError, r"signature of .*Test GPU FMC.* by .*Test ICA")
    assert len(responder.requests) == 1


# --- expiry ----------------------------------------------------------------------------------------


def test_an_expired_cached_response_is_fetched_again(
    cas: InProcessCas, responder: Responder, clock: Clock[float], cache: OcspCache
) -> None:
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    clock.now += 3599  # one second before nextUpdate: cached
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 1
    clock.now += 1  # at nextUpdate: never used at or after it
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 2 and cache.fetches == 2
    # A clock set back before the entry was stored misses too.
    clock.now -= 7200
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 3


def test_a_response_without_next_update_is_cached_for_five_minutes(
    cas: InProcessCas, responder: Responder, clock: Clock[float]
) -> None:
    responder.valid_for = None  # accepted only because its nonce is the request's
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    clock.now += NO_NEXT_UPDATE_TTL.total_seconds() - 1
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 1
    clock.now += 1
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert len(responder.requests) == 2


def test_the_cache_is_bounded(responder: Responder) -> None:
    with HttpOcspSource(responder.url) as source:
        small = OcspCache(source, max_entries=1)
        small.get(PKI.ica[0], PKI.root[0], at=NOW)
        small.get(RIM_PKI.ica, RIM_PKI.root, at=NOW)
        small.get(PKI.ica[0], PKI.root[0], at=NOW)  # dropped for the RIM ICA: fetched again
    assert len(small) == 1 and small.fetches == 3


def test_a_failed_fetch_is_reported_for_a_while_then_asked_again(responder: Responder) -> None:
    responder.behaviour = lambda cert, issuer, nonce: (503, b"busy")
    monotonic = Clock(100.0)
    with HttpOcspSource(responder.url) as source:
        cache = OcspCache(source, monotonic=monotonic)
        failed = cache.prefetch(PKI.ica[0], PKI.root[0], at=NOW)  # returned, and kept
        assert isinstance(failed, errors.NetworkError)
        monotonic.now += FAILURE_GRACE - 1
        with pytest.raises(errors.NetworkError, match="got HTTP 503"):
            cache.get(PKI.ica[0], PKI.root[0], at=NOW)
        assert len(responder.requests) == 1  # phase 1 did not ask again
        responder.behaviour = responder.honest
        monotonic.now += 1
        cache.get(PKI.ica[0], PKI.root[0], at=NOW)  # past the grace: asked
        assert len(responder.requests) == 2 and len(cache) == 1
        assert cache.prefetch(PKI.ica[0], PKI.root[0], at=NOW) is cache.cached(
            PKI.ica[0], PKI.root[0], at=NOW
        )
        assert len(responder.requests) == 2


def test_the_prefetch_stops_at_the_first_failure(cas: InProcessCas, responder: Responder) -> None:
    """GPU-only with a RIM: three responses to fetch; the first fails, so nothing else is asked
    (phase 1 refuses there)."""
    responder.behaviour = lambda cert, issuer, nonce: (503, b"busy")
    rt = Runtime(cas)
    refused(cas.cas, rt.gpu_only(driver=RIM), errors.NetworkError, "revocation check: .* got HTTP 503")
    assert responder.served() == [PKI.ica[0].serial_number]


def test_one_prefetch_fetches_a_vcek_from_kds_and_the_gpu_responses(
    tmp_path: Path, responder: Responder, clock: Clock[float], cache: OcspCache
) -> None:
    """SEV-SNP evidence sent without its VCEK (``--kds``) with a GPU report (``--nvidia-ocsp``):
    the one collateral job fetches both, and phase 1 finds both in memory."""
    amd = make_fake_amd(Product.MILAN)
    policy = f"""name: app
version: "0.3"
services:
  - name: snp-gpu
    command: serve
    attestation:
      sev-snp: {{measurement: "{"cd" * 48}"}}
      nvidia-gpu: {{measurements: {{22: "{M22}"}}}}
"""
    with fake_kds() as kds:
        kds.serve_amd(
            amd, crl=amd.crl(this_update=NOW - timedelta(days=1), next_update=NOW + timedelta(days=30))
        )
        verifier = PlatformVerifier(
            amd_roots=amd.roots(), kds=KdsHttpCollateral(None, base_url=kds.url, timeout=5, crl_required=False),
            nvidia_root=PKI.root[0], nvidia_ocsp=cache,
        )  # fmt: skip
        cas = production_cas(tmp_path / "cas", verifier, policy)
        cas.clock = clock
        rt = RuntimeKey(cas)
        aux = {"gpu0": resign(NV_REPORT, PKI.leaf[1], nonce=rt.binding[:32]), "gpu0.certs": PKI.chain_pem()}
        request = rt.body(
            policy="app", service="snp-gpu", platform="sev-snp",
            evidence=amd.sign(amd.report(report_data=rt.binding)), aux=aux,
        )  # fmt: skip
        job = cas.collateral_job(request)
        assert job is not None and job.fetch is not None
        prefetched = job.run()
        assert len(kds.requests) == 3 and responder.served() == [PKI.ica[0].serial_number]
        assert len(prefetched.veks) == 1 and len(prefetched.ocsp) == 1
        pending = cas.attest_begin(request, prefetched=prefetched)  # phase 1: nothing more is asked
        assert len(kds.requests) == 3 and len(responder.requests) == 1
        with cas.db.write() as conn:
            pending.commit(conn)
        assert rt.open(pending.result())["command"] == ["serve"]
        event = last_attestation(cas)
        assert event["verdict"] == "accepted" and event["gpus"][0]["revocation_checked"] is True


# --- off ------------------------------------------------------------------------------------------


def test_without_the_option_nothing_is_asked_and_the_ledger_says_not_checked(
    tmp_path: Path, responder: Responder
) -> None:
    inproc = InProcessCas.start(tmp_path / "cas", POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root
    )
    rt = Runtime(inproc)
    assert inproc.cas.collateral_job(rt.gpu_only()) is None
    event = accepted(inproc, rt.gpu_only(driver=RIM), rt)
    assert event["revocation_checked"] is False and event["rim_revocation_checked"] is False
    rt2 = Runtime(inproc)
    event = accepted(inproc, rt2.composite(), rt2)
    assert [g["revocation_checked"] for g in event["gpus"]] == [False, False]
    assert "revocation_checked" not in event  # the CPU evidence is not a GPU
    # A revoked certificate goes unnoticed without the option (docs/limitations.md).
    responder.revoked.add(PKI.ica[0].serial_number)
    rt3 = Runtime(inproc)
    accepted(inproc, rt3.gpu_only(), rt3)
    assert responder.requests == []


# --- the API: phase 1 off the event loop -----------------------------------------------------------


def test_the_api_waits_for_the_responder_off_the_event_loop(cas: InProcessCas, responder: Responder) -> None:
    """While the responder holds a GPU attestation, the event loop serves other requests."""
    app = create_app(cas.cas)
    asked, release = threading.Event(), threading.Event()
    waited_out: list[bool] = []

    def slow(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        asked.set()
        waited_out.append(not release.wait(30))  # True: nobody released it (the loop was stuck)
        return responder.honest(cert, issuer, nonce)

    responder.behaviour = slow
    rt = Runtime(cas)

    async def scenario() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        attest = asyncio.create_task(call_async(app, "/v1/attest", [json.dumps(rt.gpu_only()).encode()]))
        await asyncio.to_thread(asked.wait, 30)
        nonce = await call_async(app, "/v1/attest/nonce", [b""])
        release.set()
        return nonce, await attest

    (nonce_status, _), (status, body) = asyncio.run(scenario())
    assert nonce_status == 200 and waited_out == [False]
    assert status == 200, body
    assert rt.open(json.loads(body))["command"]
    assert last_attestation(cas.cas)["revocation_checked"] is True


@pytest.mark.parametrize("case", ["good", "composite", "revoked", "down"])
def test_phase_one_uses_its_prefetch_when_the_responses_left_memory(
    tmp_path: Path, responder: Responder, clock: Clock[float], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Through the ASGI app: the responses (or the failure record) leave memory after the
    prefetch, before phase 1. Phase 1 takes the prefetch's outcomes: no fetch on the event loop,
    and the verdict of an attestation without the eviction."""
    if case == "revoked":
        responder.revoked.add(PKI.ica[0].serial_number)
    if case == "down":
        responder.behaviour = lambda cert, issuer, nonce: (503, b"busy")
    verdicts = []
    with HttpOcspSource(responder.url, timeout=30) as source:
        for name, evicting in (("plain", False), ("evicted", True)):
            threads: list[str] = []

            class Recording:
                def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> OcspResponse:
                    threads.append(threading.current_thread().name)
                    return source.fetch(cert, issuer)

            cache = OcspCache(Recording())
            inproc = InProcessCas.start(tmp_path / name, POLICY).verify_with(
                nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root, nvidia_ocsp=cache
            )
            inproc.cas.clock = clock

            def evict(cache: OcspCache = cache) -> None:
                cache._entries.clear()
                cache._failures.clear()

            ran = evict_before_phase_one(inproc.cas, monkeypatch, evict) if evicting else []
            rt = Runtime(inproc)
            body = rt.composite() if case == "composite" else rt.gpu_only(driver=RIM)
            status, _out = call(create_app(inproc.cas), "/v1/attest", [json.dumps(body).encode()])
            assert threads and threading.main_thread().name not in threads
            assert len(threads) == (3 if case == "good" else 1) and ran == ([1] if evicting else [])
            event = last_attestation(inproc.cas)
            verdicts.append((status, event["verdict"], event.get("reason_class")))
    assert verdicts[0] == verdicts[1]
    expected = {
        "good": (200, "accepted", None),
        "composite": (200, "accepted", None),
        "revoked": (403, "refused", "RevocationError"),
        "down": (502, "refused", "NetworkError"),
    }
    assert verdicts[0] == expected[case]


# --- cas serve --nvidia-ocsp ------------------------------------------------------------------------


def test_prepare_takes_a_url_or_a_directory(tmp_path: Path, responder: Responder) -> None:
    cas, *_ = prepare(
        tmp_path / "a", host="127.0.0.1", dev=True, db_url=None, collateral=None, nvidia_ocsp=responder.url
    )
    assert isinstance(cas.verifier, PlatformVerifier) and cas.verifier.nvidia_ocsp is not None
    assert isinstance(cas.verifier.nvidia_ocsp.source, HttpOcspSource)
    assert cas.verifier.nvidia_ocsp.directory == tmp_path / "a" / "ocsp-cache"  # kept across restarts
    stored = tmp_path / "ocsp"
    stored.mkdir()
    cas, *_ = prepare(
        tmp_path / "b", host="127.0.0.1", dev=True, db_url=None, collateral=None, nvidia_ocsp=str(stored)
    )
    assert isinstance(cas.verifier, PlatformVerifier) and cas.verifier.nvidia_ocsp is not None
    assert isinstance(cas.verifier.nvidia_ocsp.source, DirOcspSource)
    assert cas.verifier.nvidia_ocsp.directory is None  # the directory is read as it is now
    with pytest.raises(errors.UsageError, match=r"--nvidia-ocsp: .* is not a directory"):
        prepare(
            tmp_path / "c", host="127.0.0.1", dev=True, db_url=None, collateral=None,
            nvidia_ocsp=str(tmp_path / "absent"),
        )  # fmt: skip
    cas, *_ = prepare(tmp_path / "d", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    assert isinstance(cas.verifier, PlatformVerifier) and cas.verifier.nvidia_ocsp is None


def test_stored_responses_from_a_directory(tmp_path: Path, responder: Responder, clock: Clock[float]) -> None:
    """``--nvidia-ocsp DIR``: responses saved without a nonce, bounded by their nextUpdate."""
    stored = tmp_path / "ocsp"
    stored.mkdir()
    cert, issuer = KNOWN[PKI.ica[0].serial_number]
    (stored / f"{cert.serial_number:x}.der").write_bytes(responder.response(cert, issuer, None, issuer))
    inproc = InProcessCas.start(tmp_path / "cas", POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_ocsp=OcspCache(DirOcspSource(stored))
    )
    inproc.cas.clock = clock
    rt = Runtime(inproc)
    assert accepted(inproc, rt.gpu_only(), rt)["revocation_checked"] is True
    clock.now += 3600  # the stored response's nextUpdate has passed
    rt = Runtime(inproc)
    refused(
        inproc.cas,
        rt.gpu_only(),
        errors.CollateralExpiredError,
        "revocation check: .* nextUpdate .* is not after",
    )
    (stored / f"{cert.serial_number:x}.der").unlink()
    rt = Runtime(inproc)
    refused(
        inproc.cas,
        rt.gpu_only(),
        errors.CollateralMissingError,
        "revocation check: no OCSP response for serial",
    )


# --- the disk cache (DATA_DIR/ocsp-cache) -----------------------------------------------------------

ICA, ROOT = PKI.ica[0], PKI.root


@pytest.fixture
def refused_url(refused_port: int) -> str:
    """An OCSP responder that is down: its port refuses connections."""
    return f"http://127.0.0.1:{refused_port}/"


def restarted(inproc: InProcessCas, directory: Path, url: str) -> OcspCache:
    """The CAS's revocation cache as after a restart (nothing in memory) with ``directory``,
    asking the responder at ``url``."""
    cache = OcspCache(HttpOcspSource(url, timeout=30), directory=directory)
    inproc.verify_with(nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root, nvidia_ocsp=cache)
    return cache


def ica_file(directory: Path) -> Path:
    (path,) = directory.iterdir()  # one file, no temporary file left behind
    assert path.name.endswith(f"-{ICA.serial_number:x}.der")
    return path


def test_a_restarted_cas_uses_the_responses_on_disk_while_the_responder_is_down(
    cas: InProcessCas, responder: Responder, clock: Clock[float], tmp_path: Path, refused_url: str
) -> None:
    directory = tmp_path / "ocsp-cache"
    first = restarted(cas, directory, responder.url)
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert first.fetches == 1
    stored = ica_file(directory).read_bytes()
    assert stored == responder.answers[-1]  # the responder's DER, as it answered
    # Restarted, with the responder unreachable: the file is verified and used, while it is valid.
    cache = restarted(cas, directory, refused_url)
    clock.now += 3599  # one second before its nextUpdate
    rt = Runtime(cas)
    job = cas.cas.collateral_job(rt.gpu_only())
    assert job is not None and job.fetch is not None  # the disk is read by the prefetch, off the loop
    assert accepted(cas, rt.gpu_only(), rt)["revocation_checked"] is True
    assert (cache.fetches, cache.rejected_files, len(cache)) == (0, 0, 1)
    rt = Runtime(cas)
    assert cas.cas.collateral_job(rt.gpu_only()).fetch is None  # type: ignore[union-attr]  # in memory now
    accepted(cas, rt.gpu_only(), rt)
    # At its nextUpdate: not used, and removed; the responder is asked (and is down): refused.
    cache = restarted(cas, directory, refused_url)
    clock.now += 1
    rt = Runtime(cas)
    refused(cas.cas, rt.gpu_only(), errors.NetworkError, "^revocation check: OCSP responder")
    assert (cache.fetches, cache.rejected_files) == (1, 1)
    assert list(directory.iterdir()) == []


def _flip_last_byte(der: bytes) -> bytes:
    return der[:-1] + bytes([der[-1] ^ 1])


TAMPERINGS = {
    # the signature no longer verifies
    "flipped": lambda responder, good: _flip_last_byte(good),
    "garbage": lambda responder, good: b"\x30\x03\x0a\x01\x00",
    "oversized": lambda responder, good: good + bytes(64 * 1024),
    # a genuine response about another certificate (the RIM ICA's), renamed
    "other-certificate": lambda responder, good: responder.response(
        RIM_PKI.ica, (RIM_PKI.root, RIM_PKI.root_key), None, (RIM_PKI.root, RIM_PKI.root_key)
    ),
    # signed by a key that is not the issuer's
    "stranger": lambda responder, good: responder.response(
        ICA, ROOT, None, make_ca("Test Device Identity CA", NOW)
    ),
    # genuine, but its validity is over
    "expired": lambda responder, good: responder.response(
        ICA, ROOT, None, ROOT, this_update=NOW - timedelta(days=2), next_update=NOW - timedelta(days=1)
    ),
    # genuine and current, but revoked: never written by the CAS (it keeps good answers only)
    "revoked": lambda responder, good: responder.response(
        ICA, ROOT, None, ROOT, status=ocsp.OCSPCertStatus.REVOKED
    ),
    # genuine, without nextUpdate and without the nonce of a request: cannot tell it is current
    "no-next-update": lambda responder, good: responder.response(ICA, ROOT, None, ROOT, next_update=None),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_file_that_does_not_verify_is_not_used_and_is_removed(
    cas: InProcessCas, responder: Responder, tmp_path: Path, tampering: str, refused_url: str
) -> None:
    directory = tmp_path / "ocsp-cache"
    restarted(cas, directory, responder.url)
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    path = ica_file(directory)
    path.write_bytes(TAMPERINGS[tampering](responder, path.read_bytes()))
    # Restarted with the responder down: the file is not trusted (refused, as with no file).
    cache = restarted(cas, directory, refused_url)
    rt = Runtime(cas)
    refused(cas.cas, rt.gpu_only(), errors.NetworkError, "^revocation check: OCSP responder")
    assert (cache.rejected_files, cache.fetches) == (1, 1)
    assert not path.exists()
    # With the responder up, the same: the file is not used; the responder's answer replaces it.
    path.write_bytes(TAMPERINGS[tampering](responder, responder.answers[-1]))
    asked = len(responder.requests)
    cache = restarted(cas, directory, responder.url)
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert (cache.rejected_files, cache.fetches, len(responder.requests)) == (1, 1, asked + 1)
    assert ica_file(directory).read_bytes() == responder.answers[-1]


def test_responses_without_next_update_are_not_written(
    cas: InProcessCas, responder: Responder, tmp_path: Path
) -> None:
    directory = tmp_path / "ocsp-cache"
    restarted(cas, directory, responder.url)
    responder.valid_for = None  # accepted only for its nonce: nothing to keep beyond 5 minutes
    rt = Runtime(cas)
    accepted(cas, rt.gpu_only(), rt)
    assert not directory.exists() or list(directory.iterdir()) == []


def test_the_disk_cache_is_bounded(responder: Responder, tmp_path: Path) -> None:
    directory = tmp_path / "ocsp-cache"
    with HttpOcspSource(responder.url) as source:
        cache = OcspCache(source, directory=directory, disk_entries=1)
        cache.get(ICA, ROOT[0], at=NOW)
        (first,) = directory.iterdir()
        os.utime(first, (1, 1))  # older
        cache.get(RIM_PKI.ica, RIM_PKI.root, at=NOW)
    (kept,) = directory.iterdir()
    assert kept.name.endswith(f"-{RIM_PKI.ica.serial_number:x}.der")
    assert oct(kept.stat().st_mode & 0o777) == "0o600" and oct(directory.stat().st_mode & 0o777) == "0o700"


def test_an_unwritable_directory_keeps_the_response_in_memory(responder: Responder, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with HttpOcspSource(responder.url) as source:
        cache = OcspCache(source, directory=blocker / "ocsp-cache")
        cache.get(ICA, ROOT[0], at=NOW)
        assert cache.cached(ICA, ROOT[0], at=NOW) is not None
