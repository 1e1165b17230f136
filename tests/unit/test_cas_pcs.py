"""The CAS fetches DCAP collateral from a URL (``cas serve --collateral https://...``: Intel PCS
or a PCCS) before phase 1, off the event loop, and keeps it in memory (:mod:`confide.cas.pcs`):
here a fake PCS on 127.0.0.1 (``tests/pcs_fake.py``, a real HTTP server that counts requests)
serving the real collateral of tests/assets for real SGX and TDX quotes.

A real quote cannot be bound to a fresh runtime key, so these attestations end in a
``BindingError`` after verification: the recorded event's TCB status shows that the quote was
verified with the collateral (as the KDS and OCSP tests do with their test PKIs, the binding is
what a test cannot forge here)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_call import call, call_async
from cas_inproc import (
    Clock,
    RuntimeKey,
    evict_before_phase_one,
    last_attestation,
    production_cas,
    refused,
    sim_policy,
)
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.pcs import FAILURE_GRACE, DcapCollateralCache, DcapKey
from confide.cas.server import prepare
from confide.cas.verifier import CollateralJob, PlatformVerifier
from confide.collateral.dcap import PcsHttpSource
from confide.evidence.dcap import Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from confide.verify.dcap import pck_info
from dcap_cases import ASSETS, CASES
from pcs_fake import FakePcs, fake_pcs

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")
TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")
NOW = datetime(2025, 6, 19, 11, 0, tzinfo=UTC)  # both quotes' collateral is current then
NEXT_UPDATE = datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)  # the earliest of the TDX collateral's
CASE = {"sgx": SGX, "tdx": TDX}
STATUS = {"sgx": "ConfigurationAndSWHardeningNeeded", "tdx": "UpToDate"}


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pcs() -> Iterator[FakePcs]:
    with fake_pcs() as server:
        for case in (SGX, TDX):
            server.serve(case.quote_bytes(), DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()))
        yield server


def pcs_verifier(url: str, cache_dir: Path, clock: Clock[float]) -> PlatformVerifier:
    """A verifier as ``cas serve --collateral URL`` builds it (the source's disk cache in
    ``cache_dir``), on the test's clock."""
    source = PcsHttpSource(url, cache_dir=cache_dir, clock=lambda: datetime.fromtimestamp(clock.now, UTC))
    return PlatformVerifier(dcap_source=source)


def pcs_cas(data_dir: Path, url: str, clock: Clock[float] | None = None) -> Cas:
    """A production CAS with ``--collateral url``; a CAS already in ``data_dir`` is started
    again (nothing in memory; the source's disk cache stays)."""
    clock = clock or Clock(NOW.timestamp())
    verifier = pcs_verifier(url, data_dir.parent / "pcs-cache", clock)
    if (data_dir / "cas.db").exists():
        cas, *_ = prepare(data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None)
        cas.verifier = verifier
    else:
        cas = production_cas(data_dir, verifier, sim_policy())
    cas.clock = clock
    return cas


def cache_of(cas: Cas) -> DcapCollateralCache:
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.dcap_cache is not None
    return verifier.dcap_cache


def request(cas: Cas, tee: str = "sgx", **aux: bytes) -> dict[str, Any]:
    return RuntimeKey(cas).body(
        policy="app", service="svc", platform=tee, evidence=CASE[tee].quote_bytes(), aux=aux or None
    )


def verified_then_unbound(cas: Cas, body: dict[str, Any], tee: str = "sgx") -> dict[str, Any]:
    """Attest ``body``: verified with the PCS's collateral (its TCB status is recorded), then
    refused because a real quote does not bind a fresh runtime key."""
    refused(cas, body, errors.BindingError, f"{tee} report data got")
    event = last_attestation(cas)
    assert event["tcb_status"] == STATUS[tee]
    # the TCB evaluation data numbers of the collateral that judged it (Intel PCS API v4)
    coll = DcapCollateral.from_dcap_qvl_json(CASE[tee].collateral_bytes())
    assert event["tcb_evaluation"] == {
        "tcb_info": json.loads(coll.tcb_info)["tcbEvaluationDataNumber"],
        "qe_identity": json.loads(coll.qe_identity)["tcbEvaluationDataNumber"],
    }
    return event


def fetching(job: CollateralJob | None) -> bool:
    """Whether ``job`` has anything to fetch (else phase 1 gets what was in memory)."""
    return job is not None and job.fetch is not None


def paths(tee: str, fmspc: str, ca: str) -> list[str]:
    return [
        f"/{tee}/certification/v4/tcb?fmspc={fmspc}",
        f"/{tee}/certification/v4/qe/identity",
        f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der",
        "/sgx/certification/v4/rootcacrl",
    ]


SGX_PATHS = paths("sgx", "00a067110000", "processor")
TDX_PATHS = paths("tdx", "b0c06f000000", "platform")


# --- fetched before phase 1, then from memory, then from the disk cache ------------------------------


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_fetched_by_the_prefetch_then_served_from_memory(pcs: FakePcs, tmp_path: Path, tee: str) -> None:
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    body = request(cas, tee)
    job = cas.collateral_job(body)
    assert job is not None and fetching(job) and pcs.requests == []
    job.run()
    assert pcs.requests == (SGX_PATHS if tee == "sgx" else TDX_PATHS)
    # Phase 1 finds it in memory: not one request more.
    refused(cas, body, errors.BindingError, "report data got")
    assert last_attestation(cas)["tcb_status"] == STATUS[tee]
    assert len(pcs.requests) == 4
    # The next attestation of the platform has nothing to prefetch, and asks nothing.
    again = request(cas, tee)
    assert not fetching(cas.collateral_job(again))
    verified_then_unbound(cas, again, tee)
    assert len(pcs.requests) == 4 and cache_of(cas).fetches == 1


def test_platforms_are_told_apart_by_fmspc_ca_and_tee(pcs: FakePcs, tmp_path: Path) -> None:
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    verified_then_unbound(cas, request(cas, "sgx"), "sgx")
    verified_then_unbound(cas, request(cas, "tdx"), "tdx")
    # The Root CA CRL is the same for both: the source's disk cache has it.
    assert pcs.requests == SGX_PATHS + TDX_PATHS[:3]
    verified_then_unbound(cas, request(cas, "sgx"), "sgx")
    verified_then_unbound(cas, request(cas, "tdx"), "tdx")
    assert len(pcs.requests) == 7 and cache_of(cas).fetches == 2


def test_a_restarted_cas_reads_the_current_collateral_from_the_disk_cache(
    pcs: FakePcs, tmp_path: Path
) -> None:
    verified_then_unbound(pcs_cas(tmp_path / "cas", pcs.url), request(pcs_cas(tmp_path / "cas", pcs.url)))
    assert len(pcs.requests) == 4
    cas = pcs_cas(tmp_path / "cas", pcs.url)  # nothing in memory
    body = request(cas)
    job = cas.collateral_job(body)
    assert job is not None and fetching(job)
    job.run()  # read from the source's disk cache (each response until its own nextUpdate)
    assert len(pcs.requests) == 4
    verified_then_unbound(cas, body)


def test_collateral_past_its_next_update_is_fetched_again_by_the_prefetch(
    pcs: FakePcs, tmp_path: Path
) -> None:
    """At the earliest nextUpdate the memory entry (and the disk cache's response) is due: the
    next attestation's prefetch asks the PCS again; phase 1 does not. What the PCS then
    serves is the same (now out of date) collateral, which the verifier refuses."""
    clock = Clock(NOW.timestamp())
    cas = pcs_cas(tmp_path / "cas", pcs.url, clock)
    monotonic = cache_of(cas).monotonic = Monotonic()
    verified_then_unbound(cas, request(cas, "tdx"), "tdx")
    assert len(pcs.requests) == 4
    monotonic.now += 30 * 86400  # a month later
    clock.now = (NEXT_UPDATE - timedelta(seconds=1)).timestamp()
    assert not fetching(cas.collateral_job(request(cas, "tdx")))  # still current
    clock.now = (NEXT_UPDATE + timedelta(seconds=1)).timestamp()
    body = request(cas, "tdx")
    assert fetching(cas.collateral_job(body))
    refused(
        cas, body, errors.CollateralExpiredError, "PCK CRL has expired: next update was 2025-07-19T10:00:35"
    )
    assert pcs.requests[4:] == [TDX_PATHS[2]]  # the PCK CRL was the first due; the others are on disk
    # What the PCS served is out of date too: not asked again for FAILURE_GRACE seconds.
    assert not fetching(cas.collateral_job(request(cas, "tdx")))
    monotonic.now += FAILURE_GRACE
    assert fetching(cas.collateral_job(request(cas, "tdx")))
    assert len(pcs.requests) == 5  # phase 1 took what the prefetch fetched


def test_collateral_sent_with_the_quote_is_used_and_nothing_is_fetched(pcs: FakePcs, tmp_path: Path) -> None:
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    body = request(cas, "sgx", collateral=SGX.collateral_bytes())
    assert cas.collateral_job(body) is None
    verified_then_unbound(cas, body)
    assert pcs.requests == []


def test_a_pck_chain_that_does_not_verify_is_not_asked_about(pcs: FakePcs, tmp_path: Path) -> None:
    """The FMSPC comes from the PCK certificate, which must verify to the pinned Intel root
    before the PCS is asked about it (a request cannot make the CAS ask about made-up ones)."""
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    quote = SGX.quote_bytes()
    certification = Quote.from_bytes(quote).signature_data.qe.certification.data
    start = quote.index(certification)
    # Flip one base64 character inside the PCK leaf's signature (its last lines).
    end = start + certification.index(b"-----END CERTIFICATE-----") - 8
    forged = quote[:end] + (b"A" if quote[end : end + 1] != b"A" else b"B") + quote[end + 1 :]
    body = RuntimeKey(cas).body(policy="app", service="svc", platform="sgx", evidence=forged)
    assert cas.collateral_job(body) is None
    with pytest.raises(errors.ConfideError):
        cas.attest(body)
    assert pcs.requests == []


def test_azure_tdx_vtpm_evidence_has_its_td_quotes_collateral_prefetched(tmp_path: Path) -> None:
    """``az-tdx-vtpm`` evidence (trustee's real Azure TDX CVM evidence, bound to the nonce
    "challenge"): the collateral of its TD quote's platform is fetched by the prefetch."""
    evidence = (ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json").read_bytes()
    case = next(
        c for c in CASES if c.quote == "tdx/trustee-az-tdx-vtpm/td-quote.bin" and "0625" in c.collateral
    )
    clock = Clock(case.time.timestamp())
    with fake_pcs() as pcs:
        asked = pcs.serve(case.quote_bytes(), DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()))
        cas = pcs_cas(tmp_path / "cas", pcs.url, clock)
        body = RuntimeKey(cas).body(policy="app", service="svc", platform="az-tdx-vtpm", evidence=evidence)
        job = cas.collateral_job(body)
        assert job is not None and fetching(job)
        job.run()
        assert pcs.requests == asked
        refused(cas, body, errors.BindingError, "az-tdx-vtpm nonce got 6368616c6c656e6765")
        assert pcs.requests == asked and last_attestation(cas)["tcb_status"] == "OutOfDate"


# --- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "match", "asked"),
    [
        (503, b"", "NetworkError: GET .*/sgx/certification/v4/tcb\\?fmspc=00a067110000: HTTP 503", 1),
        (404, b"", "CollateralMissingError: GET .*: 404, the collateral service has nothing", 1),
        (200, b"<html>maintenance</html>", "ParseError: .*tcbInfo", 4),
    ],
)
def test_a_failing_pcs_is_a_recorded_collateral_refusal(
    pcs: FakePcs, tmp_path: Path, status: int, body: bytes, match: str, asked: int
) -> None:
    pcs.behaviour = lambda path: (status, body, pcs.honest(path)[2])
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    exc = refused(
        cas,
        request(cas),
        errors.CollateralMissingError,
        f"fetching the DCAP collateral of FMSPC 00a067110000 \\(SGX, processor CA\\) from Intel PCS/PCCS"
        f" {pcs.url} failed: {match}",
    )
    assert exc.exit_code == 25
    assert len(pcs.requests) == asked  # the prefetch's; phase 1 reported its error without asking


def test_an_unreachable_pcs_is_refused_then_asked_again_after_the_grace(
    pcs: FakePcs, tmp_path: Path, refused_port: int
) -> None:
    cas = pcs_cas(tmp_path / "cas", f"http://127.0.0.1:{refused_port}")
    cache = cache_of(cas)
    monotonic = Monotonic()
    cache.monotonic = monotonic
    refused(cas, request(cas), errors.CollateralMissingError, "failed: NetworkError: GET .*ConnectError")
    # Within the grace, phase 1 alone (no prefetch) reports the error without asking.
    body = request(cas)
    assert isinstance(cas.attest_begin(body).refused, errors.CollateralMissingError)
    assert cache.fetches == 1
    # The PCS is back: the next attestation's prefetch asks again, whatever the grace.
    cache.source = PcsHttpSource(pcs.url, cache_dir=tmp_path / "pcs-cache", clock=lambda: NOW)
    verified_then_unbound(cas, request(cas))
    assert cache.fetches == 2 and len(pcs.requests) == 4
    # After the grace, a caller that ran no prefetch (in process) asks itself.
    monotonic.now += FAILURE_GRACE + 1
    assert cache.get(DcapKey(*pck_info(Quote.from_bytes(SGX.quote_bytes())), TeeType.SGX), NOW)


def test_concurrent_attestations_of_one_platform_share_one_fetch() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[bytes] = []
    collateral = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())

    class Slow:
        def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
            calls.append(fmspc)
            started.set()
            assert release.wait(30)
            return collateral

    cache = DcapCollateralCache(Slow())
    key = DcapKey(bytes.fromhex("00a067110000"), "processor", TeeType.SGX)
    results: list[DcapCollateral] = []
    first = threading.Thread(target=lambda: results.append(cache.fetch(key)))
    second = threading.Thread(target=lambda: (cache.prefetch(key, NOW), results.append(cache.get(key, NOW))))
    first.start()
    try:
        assert started.wait(30)
        second.start()
        second.join(timeout=0.5)  # it waits for the first fetch
        assert calls == [key.fmspc]
    finally:
        release.set()
        first.join(timeout=30)
        second.join(timeout=30)
    assert len(calls) == 1 and len(results) == 2 and results[0] is results[1] is collateral


def test_a_failed_fetch_is_shared_by_its_waiters() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    class Down:
        def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
            calls.append(1)
            started.set()
            assert release.wait(30)
            raise errors.NetworkError("GET https://pcs.example/...: HTTP 429, expected 200")

    cache = DcapCollateralCache(Down(), where="Intel PCS fake")
    key = DcapKey(bytes.fromhex("00a067110000"), "processor", TeeType.SGX)
    outcomes: list[str] = []

    def attest() -> None:
        try:
            cache.fetch(key)
        except errors.CollateralMissingError as exc:
            outcomes.append(exc.message)

    threads = [threading.Thread(target=attest) for _ in range(2)]
    threads[0].start()
    assert started.wait(30)
    threads[1].start()
    threads[1].join(timeout=0.5)
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert calls == [1] and len(outcomes) == 2
    assert outcomes[0] == outcomes[1] and "from Intel PCS fake failed: NetworkError: GET" in outcomes[0]


def test_the_memory_is_bounded() -> None:
    collateral = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())

    class Local:
        def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
            return collateral

    cache = DcapCollateralCache(Local(), max_entries=2)
    keys = [DcapKey(bytes([i]) * 6, "platform", TeeType.TDX) for i in range(3)]
    for key in keys:
        cache.prefetch(key, NOW)
    assert cache.cached(keys[0], NOW) is None and cache.cached(keys[2], NOW) is collateral
    assert cache.fetches == 3


# --- the API: off the event loop, refusals, metrics ----------------------------------------------------


def test_the_api_serves_other_requests_while_the_pcs_stalls(pcs: FakePcs, tmp_path: Path) -> None:
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    app = create_app(cas)
    asked, release = threading.Event(), threading.Event()
    waited_out: list[bool] = []

    def slow(path: str) -> tuple[int, bytes, dict[str, str]]:
        if not asked.is_set():
            asked.set()
            waited_out.append(not release.wait(30))  # True: nobody released it (the loop was stuck)
        return pcs.honest(path)

    pcs.behaviour = slow
    body = request(cas)

    async def scenario() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        attest = asyncio.create_task(call_async(app, "/v1/attest", [json.dumps(body).encode()]))
        await asyncio.to_thread(asked.wait, 30)
        nonce = await call_async(app, "/v1/attest/nonce", [b""])
        release.set()
        return nonce, await attest

    (nonce_status, _), (status, out) = asyncio.run(scenario())
    assert nonce_status == 200 and waited_out == [False]
    assert status == 403 and json.loads(out)["error"]["class"] == "BindingError"
    assert last_attestation(cas)["tcb_status"] == STATUS["sgx"]
    assert len(pcs.requests) == 4


def test_the_api_fetches_in_a_worker_thread_refuses_with_403_and_counts(pcs: FakePcs, tmp_path: Path) -> None:
    cas = pcs_cas(tmp_path / "cas", pcs.url)
    cache = cache_of(cas)
    source = cache.source
    threads: list[str] = []

    class Recording:
        def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
            threads.append(threading.current_thread().name)
            return source.get_collateral(fmspc=fmspc, ca=ca, tee=tee)

    cache.source = Recording()
    app = create_app(cas)
    status, out = call(app, "/v1/attest", [json.dumps(request(cas, "tdx")).encode()])
    assert status == 403 and json.loads(out)["error"]["class"] == "BindingError"
    assert last_attestation(cas)["tcb_status"] == STATUS["tdx"]
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    # The PCS goes down: the SGX platform's fetch fails; a 403 with the class, recorded.
    pcs.behaviour = lambda _path: (503, b"", {})
    status, out = call(app, "/v1/attest", [json.dumps(request(cas, "sgx")).encode()])
    assert status == 403
    error = json.loads(out)["error"]
    assert error["class"] == "CollateralMissingError" and error["exit_code"] == 25
    assert last_attestation(cas)["reason_class"] == "CollateralMissingError"
    status, text = call(app, "/metrics", [b""], method="GET")
    assert status == 200
    metrics = text.decode()
    assert 'confide_cas_collateral_fetches_total{outcome="ok",source="pcs"} 1.0' in metrics
    assert 'confide_cas_collateral_fetches_total{outcome="error",source="pcs"} 1.0' in metrics
    assert 'confide_cas_collateral_fetch_seconds_count{source="pcs"} 2.0' in metrics
    assert 'confide_cas_collateral_fetch_seconds_bucket{le="+Inf",source="pcs"} 2.0' in metrics
    assert 'source="kds"' not in metrics  # not configured


@pytest.mark.parametrize("up", [True, False])
def test_phase_one_uses_its_prefetch_when_the_collateral_left_memory(
    pcs: FakePcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: bool
) -> None:
    """Through the ASGI app: the collateral (or the failure record) leaves memory after the
    prefetch, before phase 1. Phase 1 takes the prefetch's outcome: no fetch on the event loop,
    and the verdict of an attestation without the eviction."""
    if not up:
        pcs.behaviour = lambda _path: (503, b"", {})
    verdicts = []
    for name, evicting in (("plain", False), ("evicted", True)):
        cas = pcs_cas(tmp_path / name / "cas", pcs.url)
        cache, threads = cache_of(cas), []
        source = cache.source

        class Recording:
            def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
                threads.append(threading.current_thread().name)
                return source.get_collateral(fmspc=fmspc, ca=ca, tee=tee)

        cache.source = Recording()

        def evict(cache: DcapCollateralCache = cache) -> None:
            cache._memory.clear()
            cache._failures.clear()

        ran = evict_before_phase_one(cas, monkeypatch, evict) if evicting else []
        status, _out = call(create_app(cas), "/v1/attest", [json.dumps(request(cas, "tdx")).encode()])
        assert threads and threading.main_thread().name not in threads
        assert len(threads) == 1 and ran == ([1] if evicting else [])
        event = last_attestation(cas)
        verdicts.append((status, event["verdict"], event.get("reason_class"), event.get("tcb_status")))
    assert verdicts[0] == verdicts[1]
    expected = ("BindingError", STATUS["tdx"]) if up else ("CollateralMissingError", None)
    assert verdicts[0] == (403, "refused", *expected)


def test_prepare_with_a_collateral_url_prefetches(tmp_path: Path) -> None:
    cas, *_ = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral="https://pccs.example:8081"
    )
    assert isinstance(cas.verifier, PlatformVerifier)
    cache = cache_of(cas)
    assert cache.where == "Intel PCS/PCCS https://pccs.example:8081"
    directory, *_ = prepare(
        tmp_path / "other", host="127.0.0.1", dev=False, db_url=None, collateral=str(tmp_path)
    )
    assert isinstance(directory.verifier, PlatformVerifier) and directory.verifier.dcap_cache is None


@pytest.fixture(scope="module")
def idle_cas(tmp_path_factory: pytest.TempPathFactory) -> Cas:
    """A CAS with --collateral pointing at a closed port (collateral_job never fetches)."""
    return pcs_cas(tmp_path_factory.mktemp("idle") / "cas", "http://127.0.0.1:9")


_B64 = st.binary(max_size=1300).map(lambda b: base64.b64encode(b).decode())


@settings(max_examples=200, deadline=None)
@given(
    platform=st.sampled_from(["sgx", "tdx", "az-tdx-vtpm"]),
    evidence=_B64 | st.text(max_size=20) | st.integers() | st.none(),
    aux=st.none() | st.dictionaries(st.text(max_size=12), _B64 | st.integers(), max_size=3),
)
def test_collateral_job_is_total_on_hostile_requests(
    idle_cas: Cas, platform: str, evidence: Any, aux: Any
) -> None:
    job = idle_cas.collateral_job({"platform": platform, "evidence": evidence, "aux": aux})
    assert job is None  # nothing in these parses to a quote whose PCK chain verifies


def test_collateral_job_for_a_quote_sent_without_collateral(idle_cas: Cas) -> None:
    assert fetching(idle_cas.collateral_job(request(idle_cas, "sgx")))
    assert fetching(idle_cas.collateral_job(request(idle_cas, "tdx")))
    assert idle_cas.collateral_job({**request(idle_cas, "sgx"), "platform": "sim"}) is None
